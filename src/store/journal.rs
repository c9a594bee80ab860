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

use rustc_hash::FxHashMap;

use crate::ingest::plan::Increments;

/// The summed increments of one bucket: its expiry (ms since the epoch), field -> delta.
pub(crate) type BucketSums = (i64, FxHashMap<String, i64>);

/// The increments of one or more entries, summed: key suffix -> [`BucketSums`].
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Sums {
    pub(crate) hashes: FxHashMap<String, BucketSums>,
}

/// Encodes one round's increments as a journal entry.
pub(crate) fn encode(token: &str, increments: &Increments) -> String {
    let mut out = String::with_capacity(4096);
    out.push_str(token);
    increments.write_lines(&mut out);
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

    const P: &str = "tt:v2:{default|checkout}";

    #[test]
    fn entries_sum_per_hash_and_field() {
        let a = "tok-1\nd2r1:b:m:60:0000000000000007 1000 started 2 s:1234 1\nd2r1:t:m:60 1000 started 2";
        let b = "tok-2\nd2r1:b:m:60:0000000000000007 1000 s:1234 3 sum:s -5";
        assert_eq!(token(a), "tok-1");
        assert_eq!(token(b), "tok-2");
        let mut sums = Sums::default();
        sums.add_entry(a).unwrap();
        sums.add_entry(b).unwrap();
        assert_eq!(sums.hashes.len(), 2);
        assert_eq!(sums.fields(), 4);
        assert_eq!(sums.get("d2r1:b:m:60:0000000000000007", "started"), Some(2));
        assert_eq!(sums.get("d2r1:b:m:60:0000000000000007", "s:1234"), Some(4));
        assert_eq!(sums.get("d2r1:b:m:60:0000000000000007", "sum:s"), Some(-5));
        assert_eq!(sums.get("d2r1:t:m:60", "started"), Some(2));
        assert_eq!(sums.hashes["d2r1:t:m:60"].0, 1000);
    }

    /// A round's entry holds exactly the increments the plan names per hash (what the
    /// embedded store applies), with the keys less the task prefix.
    #[test]
    fn a_rounds_entry_holds_its_plans_increments() {
        use std::sync::Arc;

        use crate::buckets::Retention;
        use crate::domain::{EventKind, InstanceId, Labels, MICROS_PER_SEC, Outcome, TaskEvent, TaskName, Tenant};
        use crate::histogram::HistogramConfig;
        use crate::ingest::plan::{self, Semantics};

        let sem = Semantics {
            abandon_after: Semantics::DEFAULT_ABANDON_AFTER,
            dedupe_horizon: Semantics::DEFAULT_DEDUPE_HORIZON,
            retention: Retention::default(),
            histogram: Arc::new(HistogramConfig::new(HistogramConfig::DEFAULT_HIGHEST_US, 2).unwrap()),
        };
        let now = 1_800_000_000 * MICROS_PER_SEC;
        let event = |id: &str, release: &str, ms: i64, outcome| TaskEvent {
            tenant: Tenant::default_tenant(),
            task: TaskName::parse("task", "checkout".into()).unwrap(),
            instance_id: InstanceId::parse("id", id.into()).unwrap(),
            at: now - 3_600 * MICROS_PER_SEC,
            labels: Labels::parse("labels", [("release".to_owned(), release.to_owned())], 16, 128).unwrap(),
            kind: EventKind::Completed {
                duration: ms * 1000,
                outcome,
            },
        };
        let events = [
            event("a", "1", 1_500, Outcome::Succeeded),
            event("b", "1", 1_520, Outcome::Succeeded),
            event("c", "2", 90_000, Outcome::Failed),
        ];
        let indexed: Vec<_> = events.iter().enumerate().collect();
        let read = plan::instance_ids(&indexed, |_| true)
            .into_iter()
            .map(|id| (id, None))
            .collect();
        let plan = plan::plan_task(P, &indexed, &read, &sem, now);
        let entry = encode("tok", &plan.increments);
        let mut sums = Sums::default();
        sums.add_entry(&entry).unwrap();
        let writes = plan.increments.hash_writes(P);
        assert!(
            writes.len() >= 9,
            "2 series and the total, at 3 resolutions: {}",
            writes.len()
        );
        assert_eq!(sums.hashes.len(), writes.len());
        for w in writes {
            let suffix = w.key.strip_prefix(&format!("{P}:")).expect("the task's key");
            let (expire, fields) = &sums.hashes[suffix];
            assert_eq!(*expire, w.expire_at_ms, "{suffix}");
            let want: FxHashMap<String, i64> = w.fields.into_iter().collect();
            assert_eq!(fields, &want, "{suffix}");
        }
        let total_day = sums
            .hashes
            .iter()
            .find(|(k, _)| k.contains(":t:d:"))
            .expect("a day total");
        assert_eq!(total_day.1.1["started"], 3);
        assert_eq!(total_day.1.1["s"], 2);
        assert_eq!(total_day.1.1["f"], 1);
    }

    #[test]
    fn an_entry_with_no_increments_is_just_its_token() {
        let e = encode("tok", &Increments::default());
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
