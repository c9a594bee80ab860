//! The increment journal of one task (Redis store).
//!
//! A commit round does not add its counter and histogram increments to the buckets
//! itself: it appends them, as one entry, to the task's journal list, in the same script
//! that writes the instance records. Appending one string is a fraction of the cost of
//! updating the hundred-odd fields a round touches, and it is just as durable and exactly
//! once: the entry is written if and only if the round's records are.
//!
//! A flusher then folds the journal into the buckets ([`crate::store::bucket`]): it reads
//! the oldest entries, adds up their increments, reads the buckets they touch, adds the
//! sums and runs `lua/flush.lua`, which writes the buckets and removes exactly those
//! entries, atomically, and only if the oldest entry is still the one it read (else
//! another flusher got there first and nothing happens). A query reads the journal beside
//! the buckets and adds it in, so it sees every acknowledged event, folded or not.
//!
//! An entry is text: a line with its token (unique per round), then one line per hash:
//! the key without the task prefix, its expiry (ms since the epoch) and `field delta`
//! pairs, separated by spaces (no key suffix or field contains one).

use std::fmt::Write as _;

use rustc_hash::FxHashMap;

use crate::ingest::plan::HashWrite;

/// The summed increments of one bucket: its expiry (ms since the epoch), field -> delta.
pub(crate) type BucketSums = (i64, FxHashMap<String, i64>);

/// The increments of one or more entries, summed: key suffix -> [`BucketSums`].
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Sums {
    pub(crate) hashes: FxHashMap<String, BucketSums>,
}

/// Encodes one round's increments as a journal entry. `prefix` (the task's key prefix
/// and its `:`) is left out of every key.
pub(crate) fn encode(token: &str, prefix: &str, writes: &[HashWrite]) -> String {
    let mut out = String::with_capacity(32 + writes.iter().map(|w| 48 + 12 * w.fields.len()).sum::<usize>());
    out.push_str(token);
    for w in writes {
        let suffix = w
            .key
            .strip_prefix(prefix)
            .and_then(|k| k.strip_prefix(':'))
            .unwrap_or(&w.key);
        out.push('\n');
        out.push_str(suffix);
        let _ = write!(out, " {}", w.expire_at_ms);
        for (field, delta) in &w.fields {
            let _ = write!(out, " {field} {delta}");
        }
    }
    out
}

/// The token of an entry (its first line).
pub(crate) fn token(entry: &str) -> &str {
    entry.split('\n').next().unwrap_or("")
}

/// One hash of an entry, parsed: key suffix, expiry ms, (field, delta) pairs.
type HashLine<'a> = (&'a str, i64, Vec<(&'a str, i64)>);

/// Why an entry could not be read.
#[derive(Debug, thiserror::Error)]
#[error("journal entry `{token}` is not readable by this version: {why}")]
pub(crate) struct BadEntry {
    token: String,
    why: String,
}

impl Sums {
    /// Adds one entry's increments.
    ///
    /// # Errors
    /// When the entry is not in the format [`encode`] writes; nothing of it is added.
    pub(crate) fn add_entry(&mut self, entry: &str) -> Result<(), BadEntry> {
        let bad = |why: String| BadEntry {
            token: token(entry).to_owned(),
            why,
        };
        // Parse everything first, so a bad entry adds nothing.
        let mut parsed: Vec<HashLine<'_>> = Vec::new();
        for line in entry.split('\n').skip(1) {
            let mut words = line.split(' ');
            let key = words
                .next()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| bad("empty line".into()))?;
            let expire: i64 = words
                .next()
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| bad(format!("no expiry for `{key}`")))?;
            let mut fields = Vec::new();
            while let Some(field) = words.next() {
                let delta: i64 = words
                    .next()
                    .and_then(|w| w.parse().ok())
                    .ok_or_else(|| bad(format!("no delta for `{key}` `{field}`")))?;
                fields.push((field, delta));
            }
            parsed.push((key, expire, fields));
        }
        for (key, expire, fields) in parsed {
            let slot = self
                .hashes
                .entry(key.to_owned())
                .or_insert_with(|| (expire, FxHashMap::default()));
            slot.0 = slot.0.max(expire);
            for (field, delta) in fields {
                // `entry(field.to_owned())` would allocate for every field seen again.
                match slot.1.get_mut(field) {
                    Some(v) => *v += delta,
                    None => {
                        slot.1.insert(field.to_owned(), delta);
                    }
                }
            }
        }
        Ok(())
    }

    /// How many fields the sums touch, over all hashes.
    pub(crate) fn fields(&self) -> usize {
        self.hashes.values().map(|(_, f)| f.len()).sum()
    }

    /// The sum of `field` of the hash `suffix`, if any entry touched it.
    #[cfg(test)]
    pub(crate) fn get(&self, suffix: &str, field: &str) -> Option<i64> {
        self.hashes.get(suffix)?.1.get(field).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(key: &str, expire: i64, fields: &[(&str, i64)]) -> HashWrite {
        HashWrite {
            key: key.to_owned(),
            expire_at_ms: expire,
            fields: fields.iter().map(|(f, d)| ((*f).to_owned(), *d)).collect(),
        }
    }

    const P: &str = "tt:v2:{default|checkout}";

    #[test]
    fn entries_round_trip_and_sum_per_hash_and_field() {
        let a = encode(
            "tok-1",
            P,
            &[
                write(
                    &format!("{P}:d2r1:b:m:60:0000000000000007"),
                    1000,
                    &[("started", 2), ("s:1234", 1)],
                ),
                write(&format!("{P}:d2r1:t:m:60"), 1000, &[("started", 2)]),
            ],
        );
        let b = encode(
            "tok-2",
            P,
            &[write(
                &format!("{P}:d2r1:b:m:60:0000000000000007"),
                1000,
                &[("s:1234", 3), ("sum:s", -5)],
            )],
        );
        assert_eq!(token(&a), "tok-1");
        assert_eq!(token(&b), "tok-2");
        let mut sums = Sums::default();
        sums.add_entry(&a).unwrap();
        sums.add_entry(&b).unwrap();
        assert_eq!(sums.hashes.len(), 2);
        assert_eq!(sums.get("d2r1:b:m:60:0000000000000007", "started"), Some(2));
        assert_eq!(sums.get("d2r1:b:m:60:0000000000000007", "s:1234"), Some(4));
        assert_eq!(sums.get("d2r1:b:m:60:0000000000000007", "sum:s"), Some(-5));
        assert_eq!(sums.get("d2r1:t:m:60", "started"), Some(2));
        assert_eq!(sums.hashes["d2r1:t:m:60"].0, 1000);
    }

    #[test]
    fn an_entry_with_no_increments_is_just_its_token() {
        let e = encode("tok", P, &[]);
        assert_eq!(e, "tok");
        let mut sums = Sums::default();
        sums.add_entry(&e).unwrap();
        assert!(sums.hashes.is_empty());
    }

    #[test]
    fn a_damaged_entry_is_refused_whole_and_named() {
        let mut sums = Sums::default();
        let err = sums
            .add_entry("tok-9\nd2r1:t:m:60 1000 started 1\nd2r1:t:h:0 1000 started")
            .unwrap_err();
        assert!(err.to_string().contains("tok-9"), "{err}");
        assert!(err.to_string().contains("no delta"), "{err}");
        assert!(sums.hashes.is_empty(), "nothing of a bad entry is added");
    }
}
