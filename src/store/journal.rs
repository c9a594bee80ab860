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
//! sums, stages each new bucket value under a key of its own and runs `lua/flush.lua`,
//! which renames the staged values over the buckets and removes exactly those entries,
//! atomically, and only if the oldest entry is still the one it read (else another
//! flusher got there first and nothing happens but the staged values' deletion). A query reads the journal beside
//! the buckets and adds it in, so it sees every acknowledged event, folded or not.
//!
//! An entry is text: a line with its token (unique per round), then one line per series
//! and minute: the key of the series' minute bucket without the task prefix, then
//! `field delta` pairs, separated by spaces (no key or field contains one). Where an
//! entry is applied, each line is rolled up into the hour and the day holding its minute
//! and into the task's totals ([`crate::ingest::plan::roll_up_into`]), with the expiries
//! the folding replica's retention gives them.
//!
//! Entries of earlier versions named every bucket itself, with its expiry (`key expiry
//! field delta ...`: an even number of words where a line of this version has an odd
//! one); they are still read, so that journals left by a replica of an earlier version
//! (or appended by one during a rolling upgrade) are folded, not stuck.

use rustc_hash::{FxHashMap, FxHashSet};

use crate::buckets::{BucketRef, Resolution, Retention};
use crate::domain::SeriesId;
use crate::ingest::plan::{Increments, RolledUp, roll_up_into};
use crate::store::{self, keys, split_ascii, split_lines};

/// The summed increments of one bucket: its expiry (ms since the epoch), field -> delta.
pub(crate) type BucketSums = (i64, FxHashMap<String, i64>);

/// One histogram namespace's sums: (minute start, series) -> field -> delta.
type MinuteSums = FxHashMap<(i64, SeriesId), FxHashMap<String, i64>>;

/// The increments of one or more entries, summed per histogram namespace, series and
/// minute; [`Sums::buckets`] rolls them up into the buckets they are added to.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Sums {
    minutes: FxHashMap<String, MinuteSums>,
    /// Lines of earlier versions' entries: key without the task prefix -> its sums.
    whole: FxHashMap<String, BucketSums>,
    fields: usize,
}

/// Encodes one round's increments as a journal entry.
pub(crate) fn encode(token: &str, increments: &Increments) -> String {
    let mut out = String::with_capacity(1024);
    out.push_str(token);
    increments.write_lines(&mut out);
    out
}

/// The token of an entry (its first line).
pub(crate) fn token(entry: &str) -> &str {
    split_lines(entry).next().unwrap_or("")
}

/// A line's (field, delta) pairs.
type Fields<'a> = Vec<(&'a str, i64)>;

/// One line of an entry, parsed, with its (field, delta) pairs.
enum Line<'a> {
    /// One series' minute: namespace, (minute start, series).
    Minute(&'a str, (i64, SeriesId), Fields<'a>),
    /// An earlier version's line: one bucket, key without the task prefix, expiry ms.
    Bucket(&'a str, i64, Fields<'a>),
}

/// Why an entry could not be read.
#[derive(Debug, thiserror::Error)]
#[error("journal entry `{token}` is not readable by this version: {why}")]
pub(crate) struct BadEntry {
    token: String,
    why: String,
}

/// Parses the key of a series' minute bucket (`<namespace>:b:m:<start>:<series>`).
fn parse_minute_key(key: &str) -> Option<(&str, (i64, SeriesId))> {
    let mut parts = split_ascii(key, b':');
    let namespace = parts.next().filter(|n| !n.is_empty())?;
    if (parts.next(), parts.next()) != (Some("b"), Some(Resolution::Minute.code())) {
        return None;
    }
    let start: i64 = parts.next()?.parse().ok()?;
    let series = SeriesId::from_hex(parts.next()?)?;
    let minute = Resolution::Minute.secs();
    (parts.next().is_none() && start.rem_euclid(minute) == 0).then_some((namespace, (start, series)))
}

/// Parses the key of a bucket without the task prefix
/// (`<namespace>:<b|t>:<m|h|d>:<start>[:<series>]`, as [`keys::write_bucket_suffix`]).
fn parse_bucket_key(key: &str) -> Option<(&str, BucketRef, Option<SeriesId>)> {
    let mut parts = split_ascii(key, b':');
    let namespace = parts.next().filter(|n| !n.is_empty())?;
    let of_series = match parts.next()? {
        "b" => true,
        "t" => false,
        _ => return None,
    };
    let code = parts.next()?;
    let res = Resolution::ALL.into_iter().find(|r| r.code() == code)?;
    let start: i64 = parts.next()?.parse().ok()?;
    let series = if of_series {
        Some(SeriesId::from_hex(parts.next()?)?)
    } else {
        None
    };
    parts
        .next()
        .is_none()
        .then_some((namespace, BucketRef { res, start }, series))
}

/// Parses one line of an entry (after its token), splitting it into `words` (reused).
/// `minute`: its key, when the caller parsed it already as a series' minute's.
fn parse_line<'a>(
    line: &'a str,
    words: &mut Vec<&'a str>,
    minute: Option<(&'a str, (i64, SeriesId))>,
) -> Result<Line<'a>, String> {
    words.clear();
    words.extend(split_ascii(line, b' '));
    let key = words[0];
    let (expiry, pairs) = match earlier_versions_expiry(words) {
        Some(expiry) => {
            if parse_bucket_key(key).is_none() {
                return Err(format!("`{key}` is not the key of a bucket followed by its expiry"));
            }
            (Some(expiry), &words[2..])
        }
        None => (None, &words[1..]),
    };
    let mut fields = Vec::with_capacity(pairs.len() / 2);
    for pair in pairs.chunks(2) {
        let delta: i64 = pair
            .get(1)
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| format!("no delta for `{key}` `{}`", pair[0]))?;
        fields.push((pair[0], delta));
    }
    Ok(match expiry {
        Some(expiry) => Line::Bucket(key, expiry, fields),
        None => {
            let (namespace, minute) = minute
                .or_else(|| parse_minute_key(key))
                .ok_or_else(|| format!("`{key}` is not the key of a series' minute bucket"))?;
            Line::Minute(namespace, minute, fields)
        }
    })
}

/// The expiry of an earlier version's line, split into its `words`: it has one after
/// the key (an even word count, and a number where this version has a field name,
/// which is never a number).
fn earlier_versions_expiry(words: &[&str]) -> Option<i64> {
    words
        .get(1)
        .and_then(|w| w.parse::<i64>().ok())
        .filter(|_| words.len() % 2 == 0)
}

/// The buckets one read wants from the journal, by their keys without the task prefix
/// (as [`keys::write_bucket_suffix`] writes them), and where each is in the read.
///
/// A read adds each line straight into the buckets it reads: it skips, unparsed, the
/// lines of series and minutes it reads no bucket of, and rolls up no other bucket.
/// Summing the whole journal and rolling it up into every bucket it touches, as a fold
/// does, took 13 to 16 times as long for a 30-day query of one series and 3 to 4 times
/// for the task's total (the `query journal` microbenchmarks: 64 entries of 1,000
/// completed events each).
#[derive(Debug, Default)]
pub(crate) struct Wanted<'k> {
    /// (namespace, bucket, series or `None` for the task's total) -> positions in the read.
    buckets: FxHashMap<(&'k str, BucketRef, Option<SeriesId>), Vec<usize>>,
    /// Every key -> its positions, for the lines of earlier versions (a key each).
    keys: FxHashMap<&'k str, Vec<usize>>,
    /// The series of the buckets wanted; `None`: every series (a task total is wanted).
    series: Option<FxHashSet<SeriesId>>,
}

impl<'k> Wanted<'k> {
    /// The buckets named by `keys`, at their positions; a key that names no bucket gets
    /// nothing added.
    pub(crate) fn of_keys(keys: impl IntoIterator<Item = (usize, &'k str)>) -> Self {
        let mut wanted = Wanted {
            series: Some(FxHashSet::default()),
            ..Wanted::default()
        };
        for (at, key) in keys {
            wanted.keys.entry(key).or_default().push(at);
            let Some((namespace, bucket, series)) = parse_bucket_key(key) else {
                continue;
            };
            match (series, &mut wanted.series) {
                (Some(id), Some(set)) => {
                    set.insert(id);
                }
                (None, _) => wanted.series = None,
                (Some(_), None) => {}
            }
            wanted.buckets.entry((namespace, bucket, series)).or_default().push(at);
        }
        wanted
    }

    /// Adds one entry's increments to the buckets of `read` it wants (at the positions
    /// [`Wanted::of_keys`] was given), those still kept at `now_secs`.
    ///
    /// # Errors
    /// When a line it reads is not in the format [`encode`] writes; then nothing of the
    /// entry is added. (A line it skips is not checked; the fold of the entry refuses it.)
    pub(crate) fn add_entry(
        &self,
        entry: &str,
        retention: &Retention,
        now_secs: i64,
        read: &mut [store::Fields],
    ) -> Result<(), BadEntry> {
        // Each line read: the positions of the buckets it adds to, and its fields.
        let mut parsed: Vec<(Vec<usize>, Fields<'_>)> = Vec::new();
        let mut words: Vec<&str> = Vec::new();
        for line in split_lines(entry).skip(1) {
            let mut head = split_ascii(line, b' ');
            let key = head.next().unwrap_or("");
            let mut targets = Vec::new();
            let mut minute_key = None;
            if head.next().is_some_and(|w| w.parse::<i64>().is_ok()) {
                // Most likely an earlier version's line: it adds to its own bucket only.
                // (Whether it is one, parse_line decides, by its word count.)
                words.clear();
                words.extend(split_ascii(line, b' '));
                if earlier_versions_expiry(&words).is_some() {
                    match self.keys.get(key) {
                        Some(at) => targets.extend_from_slice(at),
                        None => continue,
                    }
                }
            }
            if targets.is_empty() {
                // This version's line names a series' minute: the buckets it rolls up into.
                if let Some(parsed @ (namespace, (minute, series))) = parse_minute_key(key) {
                    if self.series.as_ref().is_some_and(|set| !set.contains(&series)) {
                        continue;
                    }
                    for (bucket, _) in crate::buckets::roll_up(retention, minute, now_secs) {
                        for target in [Some(series), None] {
                            if let Some(at) = self.buckets.get(&(namespace, bucket, target)) {
                                targets.extend_from_slice(at);
                            }
                        }
                    }
                    if targets.is_empty() {
                        continue;
                    }
                    minute_key = Some(parsed);
                }
            }
            let (Line::Bucket(_, _, fields) | Line::Minute(_, _, fields)) = parse_line(line, &mut words, minute_key)
                .map_err(|why| BadEntry {
                    token: token(entry).to_owned(),
                    why,
                })?;
            parsed.push((targets, fields));
        }
        for (targets, fields) in parsed {
            for at in targets {
                for (field, delta) in &fields {
                    read[at].add(field, *delta);
                }
            }
        }
        Ok(())
    }
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
        // Parse everything first, so a bad entry adds nothing. Each line is split into its
        // words once (three `str::split` passes per line, with a `char` searcher each,
        // were half of a fold's CPU: callgrind, the `fold_entries` microbenchmark).
        let mut parsed: Vec<Line<'_>> = Vec::new();
        let mut words: Vec<&str> = Vec::new();
        for line in split_lines(entry).skip(1) {
            parsed.push(parse_line(line, &mut words, None).map_err(bad)?);
        }
        for line in parsed {
            let (sums, fields) = match line {
                Line::Minute(namespace, minute, fields) => {
                    let minutes = match self.minutes.get_mut(namespace) {
                        Some(minutes) => minutes,
                        None => self.minutes.entry(namespace.to_owned()).or_default(),
                    };
                    (minutes.entry(minute).or_default(), fields)
                }
                Line::Bucket(key, expiry, fields) => {
                    let slot = self
                        .whole
                        .entry(key.to_owned())
                        .or_insert_with(|| (expiry, FxHashMap::default()));
                    slot.0 = slot.0.max(expiry);
                    (&mut slot.1, fields)
                }
            };
            for (field, delta) in fields {
                // `entry(field.to_owned())` would allocate for every field seen again.
                match sums.get_mut(field) {
                    Some(v) => *v += delta,
                    None => {
                        sums.insert(field.to_owned(), delta);
                        self.fields += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Sums entries from the first on, until the sums hold `max_fields` distinct fields
    /// (one entry at least): what one fold writes. Returns the sums and how many entries
    /// they hold.
    ///
    /// # Errors
    /// The first entry not in the format [`encode`] writes.
    pub(crate) fn of_head(entries: &[String], max_fields: usize) -> Result<(Self, usize), BadEntry> {
        let mut sums = Sums::default();
        let mut n = 0;
        for entry in entries {
            if n > 0 && sums.fields() >= max_fields {
                break;
            }
            sums.add_entry(entry)?;
            n += 1;
        }
        Ok((sums, n))
    }

    /// How many distinct (series, minute, field) the sums hold.
    pub(crate) fn fields(&self) -> usize {
        self.fields
    }

    /// Whether no entry added anything.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.minutes.is_empty() && self.whole.is_empty()
    }

    /// The sums rolled up into the buckets they are added to, those still kept at
    /// `now_secs`: key without the task prefix -> [`BucketSums`].
    pub(crate) fn buckets(&self, retention: &Retention, now_secs: i64) -> FxHashMap<String, BucketSums> {
        let mut out = FxHashMap::default();
        for (namespace, minutes) in &self.minutes {
            let mut rolled: RolledUp<String> = FxHashMap::default();
            for (minute, fields) in minutes {
                roll_up_into(&mut rolled, retention, now_secs, *minute, fields.iter());
            }
            for ((bucket, series), (expires, fields)) in rolled {
                let mut key = String::with_capacity(48);
                keys::write_bucket_suffix(&mut key, namespace, bucket, series);
                out.insert(key, (expires * 1000, fields));
            }
        }
        for (key, (expire_at_ms, fields)) in &self.whole {
            let slot = out
                .entry(key.clone())
                .or_insert_with(|| (*expire_at_ms, FxHashMap::default()));
            slot.0 = slot.0.max(*expire_at_ms);
            for (field, delta) in fields {
                *slot.1.entry(field.clone()).or_default() += delta;
            }
        }
        out
    }
}

/// A bucket named as [`Sums::buckets`] names it, for tests.
#[cfg(test)]
fn suffix(bucket: BucketRef, series: Option<SeriesId>) -> String {
    let mut key = String::new();
    keys::write_bucket_suffix(&mut key, "d2r1", bucket, series);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "tt:v2:{default|checkout}";

    #[test]
    fn entries_sum_per_series_minute_and_field_and_roll_up_into_hours_days_and_totals() {
        let a = "tok-1\nd2r1:b:m:60:0000000000000007 started 2 s:1234 1";
        let b = "tok-2\nd2r1:b:m:60:0000000000000007 s:1234 3 sum:s -5\nd2r1:b:m:120:0000000000000008 started 1";
        assert_eq!(token(a), "tok-1");
        assert_eq!(token(b), "tok-2");
        let mut sums = Sums::default();
        sums.add_entry(a).unwrap();
        sums.add_entry(b).unwrap();
        assert_eq!(sums.fields(), 4, "started, s:1234 and sum:s of series 7, started of 8");
        let retention = Retention::default();
        let buckets = sums.buckets(&retention, 1_000);
        let minute = |start| BucketRef {
            res: Resolution::Minute,
            start,
        };
        let (hour, day) = (
            BucketRef {
                res: Resolution::Hour,
                start: 0,
            },
            BucketRef {
                res: Resolution::Day,
                start: 0,
            },
        );
        let get = |key: String, field: &str| buckets.get(&key).and_then(|(_, f)| f.get(field).copied());
        let (s7, s8) = (Some(SeriesId(7)), Some(SeriesId(8)));
        assert_eq!(get(suffix(minute(60), s7), "started"), Some(2));
        assert_eq!(get(suffix(minute(60), s7), "s:1234"), Some(4));
        assert_eq!(get(suffix(minute(60), s7), "sum:s"), Some(-5));
        assert_eq!(get(suffix(minute(120), s8), "started"), Some(1));
        assert_eq!(get(suffix(minute(60), None), "started"), Some(2));
        for coarse in [hour, day] {
            assert_eq!(get(suffix(coarse, s7), "started"), Some(2));
            assert_eq!(get(suffix(coarse, s8), "started"), Some(1));
            assert_eq!(get(suffix(coarse, None), "started"), Some(3), "the task's total");
            assert_eq!(get(suffix(coarse, None), "s:1234"), Some(4));
        }
        // Minutes: two of series, two of the total; hour and day: two series and the total.
        assert_eq!(buckets.len(), 4 + 3 + 3, "{buckets:?}");
        assert_eq!(
            buckets[&suffix(minute(60), s7)].0,
            (60 + 60 + Retention::DEFAULT_MINUTE_SECS) * 1000
        );
        assert_eq!(
            buckets[&suffix(day, None)].0,
            (86_400 + Retention::DEFAULT_DAY_SECS) * 1000
        );
        // Once minute buckets of that age are no longer kept, only hours and days are.
        let later = sums.buckets(&retention, 120 + 60 + Retention::DEFAULT_MINUTE_SECS);
        assert!(later.keys().all(|k| !k.contains(":m:")), "{later:?}");
        assert_eq!(later.len(), 2 * 3);
    }

    /// A round's entry holds exactly the increments the plan names per hash (what the
    /// embedded store applies), with the keys less the task prefix.
    #[test]
    fn a_rounds_entry_holds_its_plans_increments() {
        use std::sync::Arc;

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
        let plan = plan::plan_task(P, &indexed, read, &sem, now);
        let entry = encode("tok", &plan.increments);
        let mut sums = Sums::default();
        sums.add_entry(&entry).unwrap();
        let buckets = sums.buckets(&sem.retention, now / MICROS_PER_SEC);
        let writes = plan.increments.hash_writes(P);
        assert!(
            writes.len() >= 9,
            "2 series and the total, at 3 resolutions: {}",
            writes.len()
        );
        assert_eq!(buckets.len(), writes.len());
        for w in writes {
            let suffix = w.key.strip_prefix(&format!("{P}:")).expect("the task's key");
            let (expire, fields) = &buckets[suffix];
            assert_eq!(*expire, w.expire_at_ms, "{suffix}");
            let want: FxHashMap<String, i64> = w.fields.into_iter().collect();
            assert_eq!(fields, &want, "{suffix}");
        }
        let total_day = buckets.iter().find(|(k, _)| k.contains(":t:d:")).expect("a day total");
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
        assert!(sums.is_empty());
        assert!(sums.buckets(&Retention::default(), 0).is_empty());
    }

    #[test]
    fn a_damaged_entry_is_refused_whole_and_named() {
        let mut sums = Sums::default();
        let err = sums
            .add_entry("tok-9\nd2r1:b:m:60:0000000000000007 started 1\nd2r1:b:m:0:0000000000000007 started")
            .unwrap_err();
        assert!(err.to_string().contains("tok-9"), "{err}");
        assert!(err.to_string().contains("no delta"), "{err}");
        assert!(sums.is_empty(), "nothing of a bad entry is added");
        // A line that does not name a series' minute (or, with an expiry, a bucket) is
        // refused, not misread.
        for (line, why) in [
            (
                "d2r1:b:h:0:0000000000000007 started 1",
                "not the key of a series' minute bucket",
            ),
            (
                "d2r1:b:m:61:0000000000000007 started 1",
                "not the key of a series' minute bucket",
            ),
            ("d2r1:b:m:60:xyz started 1", "not the key of a series' minute bucket"),
            (
                "d2r1:x:m:60 1000 started 1",
                "not the key of a bucket followed by its expiry",
            ),
            ("d2r1:t:m:60 soon started 1", "no delta for `d2r1:t:m:60` `soon`"),
        ] {
            let err = sums.add_entry(&format!("tok-8\n{line}")).unwrap_err();
            assert!(err.to_string().contains(why), "{line}: {err}");
        }
        assert!(sums.is_empty(), "nothing of a bad entry is added");
    }

    /// An entry of an earlier version (every bucket named, with its expiry) is still
    /// summed, beside this version's, so a journal left by one is folded, not stuck.
    #[test]
    fn an_earlier_versions_entry_is_still_read() {
        let mut sums = Sums::default();
        sums.add_entry("tok-old\nd2r1:b:h:0:0000000000000007 5000 started 2 s:1234 1\nd2r1:t:h:0 4000 started 2")
            .unwrap();
        sums.add_entry("tok-new\nd2r1:b:m:60:0000000000000007 started 1")
            .unwrap();
        let buckets = sums.buckets(&Retention::default(), 1_000);
        let hour = BucketRef {
            res: Resolution::Hour,
            start: 0,
        };
        let series = &buckets[&suffix(hour, Some(SeriesId(7)))];
        assert_eq!(series.1["started"], 3, "two from the old entry, one from the new");
        assert_eq!(series.1["s:1234"], 1);
        assert_eq!(
            series.0,
            (3600 + Retention::DEFAULT_HOUR_SECS) * 1000,
            "the later expiry"
        );
        assert_eq!(buckets[&suffix(hour, None)].1["started"], 3);
        assert_eq!(sums.fields(), 4);
    }
}
