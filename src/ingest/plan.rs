//! The pairing rules, as a pure function from (events, the instance records they refer
//! to) to a [`Plan`]: the new instance records, the counter and histogram increments,
//! and what to tell the client about each event.
//!
//! Both stores run the same plan: the embedded store under its lock, Redis inside a
//! script that first checks every instance record is still what the plan read (so a
//! concurrent replica, or a resent command, can never count an instance twice).
//!
//! Rules per instance `(tenant, task, instance_id)`:
//!
//! | record \ event | start | finish | completed |
//! |---|---|---|---|
//! | none | open; started +1 | pending finish | done; started +1, finished +1 |
//! | open | duplicate | done; finished +1 | rejected (id in use) |
//! | pending finish | done; started +1, finished +1 | duplicate | rejected (id in use) |
//! | done | duplicate | duplicate | duplicate |
//!
//! "started" is filed under the start's time; "finished" adds the outcome and duration
//! under the finish's time, and one finished-of-started under the start's time (which
//! is how abandonment is computed without a sweeper).

use std::collections::hash_map::Entry;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::buckets::{BucketRef, Resolution, Retention};
use crate::domain::{EventKind, MICROS_PER_SEC, Micros, Outcome, SeriesId, TaskEvent};
use crate::histogram::HistogramConfig;
use crate::store::keys::{self, field};

/// The rules' parameters.
#[derive(Debug, Clone)]
pub struct Semantics {
    /// A start with no finish within this long counts as abandoned.
    pub abandon_after: Micros,
    /// How long a completed instance is remembered to recognise retries.
    pub dedupe_horizon: Micros,
    pub retention: Retention,
    pub histogram: Arc<HistogramConfig>,
}

impl Semantics {
    /// Default abandonment threshold: 1 h.
    pub const DEFAULT_ABANDON_AFTER: Micros = 3600 * MICROS_PER_SEC;
    /// Default dedupe horizon: 1 h after the instance completed.
    pub const DEFAULT_DEDUPE_HORIZON: Micros = 3600 * MICROS_PER_SEC;

    /// How long an open start or a pending finish is kept waiting for its partner (the
    /// longest any record must be kept).
    pub fn open_ttl(&self) -> Micros {
        self.abandon_after + self.dedupe_horizon
    }
}

/// The stored record of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    /// Started, not finished.
    Open { start: Micros, series: SeriesId },
    /// Finished before its start arrived; waiting for it.
    PendingFinish { finish: Micros, outcome: Outcome },
    /// Counted; kept for the dedupe horizon.
    Done,
}

impl InstanceState {
    /// The stored form of [`InstanceState::Done`], the most common record.
    pub const DONE: &'static str = "D";

    /// Compact text form stored in Redis.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(40);
        self.encode_into(&mut out);
        out
    }

    /// Appends [`Self::encode`]'s text to `out` (one is written for every event: without
    /// `format!`, and into a buffer the caller reuses).
    pub fn encode_into(&self, out: &mut String) {
        let mut buf = itoa::Buffer::new();
        match self {
            InstanceState::Open { start, series } => {
                out.push_str("S|");
                out.push_str(buf.format(*start));
                out.push('|');
                series.push_hex(out);
            }
            InstanceState::PendingFinish { finish, outcome } => {
                out.push_str("F|");
                out.push_str(buf.format(*finish));
                out.push('|');
                out.push_str(outcome.code());
            }
            InstanceState::Done => out.push_str(Self::DONE),
        }
    }

    /// Inverse of [`Self::encode`]; `None` for text it did not write.
    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split('|');
        let state = match parts.next()? {
            "S" => InstanceState::Open {
                start: parts.next()?.parse().ok()?,
                series: SeriesId::from_hex(parts.next()?)?,
            },
            "F" => InstanceState::PendingFinish {
                finish: parts.next()?.parse().ok()?,
                outcome: Outcome::from_code(parts.next()?)?,
            },
            "D" => InstanceState::Done,
            _ => return None,
        };
        parts.next().is_none().then_some(state)
    }
}

/// What happened to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Newly applied. `over_range`: its duration was clamped to the highest trackable value.
    Accepted { over_range: bool },
    /// Already applied before; not counted again.
    Duplicate,
    /// Not applied, with the reason for the client.
    Rejected(String),
}

/// One instance record to write, guarded by the value the plan read. It borrows the id
/// from the event and keeps the new record unencoded: a round writes one per event, and
/// the Redis store encodes them straight into its command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceWrite<'a> {
    /// The instance id (the store names the record after it).
    pub id: &'a str,
    /// The value read before planning (`None` = absent); the write applies only if the
    /// record still holds it.
    pub expected: Option<String>,
    /// The new record ([`InstanceState::encode`] gives its stored form).
    pub state: InstanceState,
    pub ttl_ms: i64,
}

/// Increments to one hash (counters or histogram), with its absolute expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashWrite {
    pub key: String,
    pub expire_at_ms: i64,
    pub fields: Vec<(String, i64)>,
}

/// A new entry for the task's series index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesWrite {
    pub key: String,
    pub series: String,
    pub labels_json: String,
}

/// Everything one round does to one task's keys.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    /// `(index of the event in the caller's batch, disposition)`, in input order.
    pub dispositions: Vec<(usize, Disposition)>,
    pub instance_writes: Vec<InstanceWrite<'a>>,
    pub increments: Increments,
    pub series_writes: Vec<SeriesWrite>,
}

/// The stored records a round was planned from: instance id -> record (`None` = absent).
pub type RecordsRead<'a> = FxHashMap<&'a str, Option<StoredRecord>>;

/// A stored instance record as a round read it: its text (what the commit checks is
/// still stored) and what that decodes to (`None`: not readable by this version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub text: String,
    pub state: Option<InstanceState>,
}

impl StoredRecord {
    /// A record read from a store, decoded.
    pub fn from_text(text: String) -> Self {
        StoredRecord {
            state: InstanceState::decode(&text),
            text,
        }
    }

    /// A record whose state is known (the one this process wrote), encoded: no decoding.
    pub fn from_state(state: InstanceState) -> Self {
        StoredRecord {
            text: state.encode(),
            state: Some(state),
        }
    }
}

/// The distinct instance ids of the events `keep` selects (of one task's batch), in
/// first-seen order.
pub fn instance_ids<'a>(events: &[(usize, &'a TaskEvent)], keep: impl Fn(&TaskEvent) -> bool) -> Vec<&'a str> {
    let mut seen = rustc_hash::FxHashSet::with_capacity_and_hasher(events.len(), rustc_hash::FxBuildHasher);
    events
        .iter()
        .filter(|(_, e)| keep(e))
        .map(|(_, e)| e.instance_id.as_str())
        .filter(|id| seen.insert(*id))
        .collect()
}

/// One field of a bucket, before it is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Field {
    Started,
    FinishedOfStarted,
    OverRange,
    Count(Outcome),
    Sum(Outcome),
    Bin(Outcome, u64),
}

impl Field {
    /// The fields other than bins, in the order [`MinuteSums`] keeps them.
    const FIXED: [Field; 9] = [
        Field::Started,
        Field::FinishedOfStarted,
        Field::OverRange,
        Field::Count(Outcome::Succeeded),
        Field::Count(Outcome::Failed),
        Field::Count(Outcome::Cancelled),
        Field::Sum(Outcome::Succeeded),
        Field::Sum(Outcome::Failed),
        Field::Sum(Outcome::Cancelled),
    ];

    /// Where [`MinuteSums`] keeps the field.
    fn place(self) -> Place {
        let outcome = |o: Outcome| match o {
            Outcome::Succeeded => 0,
            Outcome::Failed => 1,
            Outcome::Cancelled => 2,
        };
        match self {
            Field::Started => Place::Fixed(0),
            Field::FinishedOfStarted => Place::Fixed(1),
            Field::OverRange => Place::Fixed(2),
            Field::Count(o) => Place::Fixed(3 + outcome(o)),
            Field::Sum(o) => Place::Fixed(6 + outcome(o)),
            Field::Bin(o, bin) => Place::Bin(o, bin),
        }
    }

    /// Appends the field's name to `out` (what `Display` writes, without `fmt`).
    fn push_name(self, out: &mut String, buf: &mut itoa::Buffer) {
        match self {
            Field::Started => out.push_str(field::STARTED),
            Field::FinishedOfStarted => out.push_str(field::FINISHED_OF_STARTED),
            Field::OverRange => out.push_str(field::OVER_RANGE),
            Field::Count(o) => out.push_str(keys::outcome_field(o)),
            Field::Sum(o) => out.push_str(keys::sum_field(o)),
            Field::Bin(o, bin) => {
                out.push_str(o.code());
                out.push(':');
                out.push_str(buf.format(bin));
            }
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Field::Started => f.write_str(field::STARTED),
            Field::FinishedOfStarted => f.write_str(field::FINISHED_OF_STARTED),
            Field::OverRange => f.write_str(field::OVER_RANGE),
            Field::Count(o) => f.write_str(keys::outcome_field(o)),
            Field::Sum(o) => f.write_str(keys::sum_field(o)),
            // As keys::bin_field names it.
            Field::Bin(o, bin) => write!(f, "{}:{bin}", o.code()),
        }
    }
}

/// A round's counter and histogram increments, per series and minute: field -> delta.
///
/// They are filed under the minute only; where they are applied (the embedded store, or
/// the fold of the Redis journal) each minute's increments are rolled up into the hour
/// and the day holding it, and summed over the series into the task's totals (what a
/// query with no label filter reads). A round files each field once instead of six times,
/// and its journal entry is a sixth of the size. Keys and fields stay structured (and
/// hashed cheaply) until they are written out.
#[derive(Debug, Default)]
pub struct Increments {
    namespace: String,
    retention: Retention,
    now_secs: i64,
    minutes: FxHashMap<(i64, SeriesId), MinuteSums>,
}

/// Where [`MinuteSums`] keeps a field: its index in [`Field::FIXED`], or a bin.
#[derive(Debug, Clone, Copy)]
enum Place {
    Fixed(usize),
    Bin(Outcome, u64),
}

/// One series' increments in one minute. An event files four to six fields there, all
/// but its bin among the nine of [`Field::FIXED`]: those have a place each, and only the
/// bins are hashed (as a map of every field, this was a tenth of the service's CPU under
/// a stream of completed events).
#[derive(Debug, Default)]
struct MinuteSums {
    /// Deltas of [`Field::FIXED`], by [`Field::place`].
    fixed: [i64; 9],
    /// Which slots of `fixed` were filed (a sum of zero is filed all the same).
    filed: u16,
    bins: FxHashMap<(Outcome, u64), i64>,
}

impl MinuteSums {
    fn add(&mut self, field: Field, delta: i64) {
        match field.place() {
            Place::Fixed(slot) => {
                self.fixed[slot] += delta;
                self.filed |= 1 << slot;
            }
            Place::Bin(outcome, bin) => *self.bins.entry((outcome, bin)).or_default() += delta,
        }
    }

    /// Every filed field and its delta: the fixed ones in [`Field::FIXED`] order, then
    /// the bins.
    fn iter(&self) -> impl Iterator<Item = (Field, i64)> + '_ {
        let fixed = Field::FIXED
            .iter()
            .zip(self.fixed)
            .enumerate()
            .filter(|(slot, _)| self.filed & (1 << slot) != 0)
            .map(|(_, (field, delta))| (*field, delta));
        let bins = self.bins.iter().map(|(&(o, bin), &delta)| (Field::Bin(o, bin), delta));
        fixed.chain(bins)
    }
}

/// Increments rolled up into whole buckets: (bucket, series or `None` for the task's
/// total) -> (expiry, seconds since the epoch; field -> delta).
pub(crate) type RolledUp<F> = FxHashMap<(BucketRef, Option<SeriesId>), (i64, FxHashMap<F, i64>)>;

/// Adds one series' increments of the minute starting at `minute_start` to `out`: to the
/// series' minute, hour and day buckets and to the task's totals of each, those still
/// kept at `now_secs` ([`crate::buckets::roll_up`]).
pub(crate) fn roll_up_into<'f, F: Clone + Eq + std::hash::Hash + 'f>(
    out: &mut RolledUp<F>,
    retention: &Retention,
    now_secs: i64,
    (minute_start, series): (i64, SeriesId),
    fields: impl Iterator<Item = (&'f F, &'f i64)> + Clone,
) {
    for (bucket, expires) in crate::buckets::roll_up(retention, minute_start, now_secs) {
        for target in [Some(series), None] {
            let (_, sums) = out
                .entry((bucket, target))
                .or_insert_with(|| (expires, FxHashMap::default()));
            for (field, delta) in fields.clone() {
                match sums.get_mut(field) {
                    Some(sum) => *sum += *delta,
                    None => {
                        sums.insert(field.clone(), *delta);
                    }
                }
            }
        }
    }
}

impl Increments {
    /// Whether the round changes no counter.
    pub fn is_empty(&self) -> bool {
        self.minutes.is_empty()
    }

    /// Every hash's increments, rolled up, keyed by the hash's full key (task `prefix`
    /// included).
    pub fn hash_writes(&self, prefix: &str) -> Vec<HashWrite> {
        let mut rolled: RolledUp<Field> = FxHashMap::default();
        for (minute, sums) in &self.minutes {
            let fields: Vec<(Field, i64)> = sums.iter().collect();
            roll_up_into(
                &mut rolled,
                &self.retention,
                self.now_secs,
                *minute,
                fields.iter().map(|(f, d)| (f, d)),
            );
        }
        rolled
            .into_iter()
            .map(|((bucket, series), (expires, fields))| {
                let mut key = format!("{prefix}:");
                keys::write_bucket_suffix(&mut key, &self.namespace, bucket, series);
                HashWrite {
                    key,
                    expire_at_ms: expires * 1000,
                    fields: fields.iter().map(|(f, d)| (f.to_string(), *d)).collect(),
                }
            })
            .collect()
    }

    /// Appends one line per series and minute to `out`, each after a newline: the key of
    /// the series' minute bucket without the task prefix, then `field delta` pairs,
    /// separated by spaces (the journal's entry format, `store/journal.rs`), formatted
    /// straight into `out`.
    pub fn write_lines(&self, out: &mut String) {
        // Numbers through itoa and names pushed as they are: `write!` per field was most
        // of the cost of a round's entry.
        let mut buf = itoa::Buffer::new();
        for ((minute_start, series), sums) in &self.minutes {
            out.push('\n');
            let bucket = BucketRef {
                res: Resolution::Minute,
                start: *minute_start,
            };
            keys::write_bucket_suffix(out, &self.namespace, bucket, Some(*series));
            for (f, d) in sums.iter() {
                out.push(' ');
                f.push_name(out, &mut buf);
                out.push(' ');
                out.push_str(buf.format(d));
            }
        }
    }
}

/// Files increments under their series and minute.
struct Filer<'a> {
    sem: &'a Semantics,
    inc: Increments,
    /// The last minute filed, and whether any resolution still keeps it.
    last_minute: Option<(i64, bool)>,
}

impl<'a> Filer<'a> {
    fn new(sem: &'a Semantics, now: Micros) -> Self {
        Filer {
            sem,
            inc: Increments {
                namespace: sem.histogram.namespace(),
                retention: sem.retention,
                now_secs: now.div_euclid(MICROS_PER_SEC),
                minutes: FxHashMap::default(),
            },
            last_minute: None,
        }
    }

    /// Adds each `(field, delta)` to `series` in the minute starting at `minute` (seconds),
    /// unless no resolution keeps that minute any more. The minute's fields are looked up
    /// once for all of them: an event files four to six fields, mostly in one minute.
    fn add(&mut self, minute: i64, series: SeriesId, fields: impl IntoIterator<Item = (Field, i64)>) {
        let kept = match self.last_minute {
            Some((m, kept)) if m == minute => kept,
            _ => {
                let inc = &self.inc;
                let kept = crate::buckets::roll_up(&inc.retention, minute, inc.now_secs)
                    .next()
                    .is_some();
                self.last_minute = Some((minute, kept));
                kept
            }
        };
        if kept {
            let sums = self.inc.minutes.entry((minute, series)).or_default();
            for (field, delta) in fields {
                sums.add(field, delta);
            }
        }
    }

    fn started(&mut self, at: Micros, series: SeriesId) {
        self.add(Resolution::Minute.bucket_start(at), series, [(Field::Started, 1)]);
    }

    /// Files a finished instance, and its start too when `and_started`; returns whether
    /// its duration was over range.
    fn finished(
        &mut self,
        start: Micros,
        finish: Micros,
        series: SeriesId,
        outcome: Outcome,
        and_started: bool,
    ) -> bool {
        let duration = u64::try_from(finish - start).unwrap_or(0);
        let (bin, over) = self.sem.histogram.bin(duration);
        let at_start = [(Field::Started, 1), (Field::FinishedOfStarted, 1)];
        let at_start = &at_start[usize::from(!and_started)..];
        let at_finish = [
            (Field::Count(outcome), 1),
            (Field::Sum(outcome), i64::try_from(duration).unwrap_or(i64::MAX)),
            (Field::Bin(outcome, bin), 1),
            (Field::OverRange, 1),
        ];
        let at_finish = &at_finish[..if over { 4 } else { 3 }];
        let (start_minute, finish_minute) = (
            Resolution::Minute.bucket_start(start),
            Resolution::Minute.bucket_start(finish),
        );
        if start_minute == finish_minute {
            self.add(finish_minute, series, at_start.iter().chain(at_finish).copied());
        } else {
            self.add(start_minute, series, at_start.iter().copied());
            self.add(finish_minute, series, at_finish.iter().copied());
        }
        over
    }
}

fn negative_duration(start: Micros, finish: Micros) -> Disposition {
    Disposition::Rejected(format!(
        "the finish (at {}) is earlier than its start (at {}): a duration cannot be negative",
        fmt_time(finish),
        fmt_time(start)
    ))
}

fn fmt_time(at: Micros) -> String {
    let secs = at.div_euclid(MICROS_PER_SEC);
    let nanos = u32::try_from(at.rem_euclid(MICROS_PER_SEC) * 1000).unwrap_or(0);
    match u64::try_from(secs) {
        Ok(secs) => {
            humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos)).to_string()
        }
        Err(_) => format!("{at} µs"),
    }
}

/// What a round knows of one instance it touched.
#[derive(Debug, Default)]
struct Touched {
    /// Its state after the round's events so far (`None`: no record).
    state: Option<InstanceState>,
    /// The TTL its last change asks for; `None`: the round has not changed it.
    ttl: Option<Micros>,
    /// The stored record's text as read (`None`: read as absent, or not read).
    expected: Option<String>,
    /// Its stored record is not readable by this version: its events are rejected.
    unreadable: bool,
}

/// Plans one round for one task's events (all with the same tenant and task).
///
/// `read` holds the current record of every id [`instance_ids`] returned (`None` =
/// absent). Events are applied in order, each seeing the effect of the ones before.
pub fn plan_task<'a>(
    prefix: &str,
    events: &[(usize, &'a TaskEvent)],
    mut read: RecordsRead<'_>,
    sem: &Semantics,
    now: Micros,
) -> Plan<'a> {
    let mut plan = Plan {
        dispositions: Vec::with_capacity(events.len()),
        instance_writes: Vec::with_capacity(events.len()),
        ..Plan::default()
    };
    let mut inc = Filer::new(sem, now);
    // What the round knows of each instance it touched, in the order first touched, found
    // with one hash of its id per event (a lookup, then an insert, then a lookup in `read`
    // at the end hashed the id three times: 5 % of the service's CPU under a stream of
    // completed events). The map holds only each id's position in `touched_all`: with the
    // whole `Touched` in its slots (88 bytes each) its inserts missed the cache, and
    // `plan_task` was 9-10 % of the service's samples in that stream (5 % after).
    let mut position: FxHashMap<&'a str, usize> =
        FxHashMap::with_capacity_and_hasher(events.len(), rustc_hash::FxBuildHasher);
    let mut touched_all: Vec<(&'a str, Touched)> = Vec::with_capacity(events.len());
    let mut new_series: FxHashMap<SeriesId, String> = FxHashMap::default();

    for (index, event) in events {
        let key = event.instance_id.as_str();
        let at = match position.entry(key) {
            Entry::Occupied(o) => *o.get(),
            Entry::Vacant(v) => {
                // `remove` on an empty map (as on every first attempt) hashes the id all the same.
                let stored = if read.is_empty() {
                    None
                } else {
                    read.remove(key).flatten()
                };
                let at = touched_all.len();
                v.insert(at);
                touched_all.push((
                    key,
                    match stored {
                        None => Touched::default(),
                        Some(StoredRecord { text, state }) => Touched {
                            unreadable: state.is_none(),
                            state,
                            ttl: None,
                            expected: Some(text),
                        },
                    },
                ));
                at
            }
        };
        let touched = &mut touched_all[at].1;
        if touched.unreadable {
            plan.dispositions.push((
                *index,
                Disposition::Rejected(format!(
                    "the stored record of instance `{}` is not readable by this version",
                    crate::domain::quote(key)
                )),
            ));
            continue;
        }
        let state = touched.state;
        // Only a start or a completed event names its series (a finish's is in its record).
        let series = || event.labels.series_id();
        let (disposition, next) = match (state, event.kind) {
            (None, EventKind::Start) => {
                let series = series();
                inc.started(event.at, series);
                new_series.entry(series).or_insert_with(|| labels_json(event));
                (
                    Disposition::Accepted { over_range: false },
                    Some((
                        InstanceState::Open {
                            start: event.at,
                            series,
                        },
                        sem.open_ttl(),
                    )),
                )
            }
            (None, EventKind::Finish(outcome)) => (
                Disposition::Accepted { over_range: false },
                Some((
                    InstanceState::PendingFinish {
                        finish: event.at,
                        outcome,
                    },
                    sem.open_ttl(),
                )),
            ),
            (None, EventKind::Completed { duration, outcome }) => {
                let start = event.at - duration;
                let series = series();
                new_series.entry(series).or_insert_with(|| labels_json(event));
                let over_range = inc.finished(start, event.at, series, outcome, true);
                (
                    Disposition::Accepted { over_range },
                    Some((InstanceState::Done, sem.dedupe_horizon)),
                )
            }
            (Some(InstanceState::Open { start, series }), EventKind::Finish(outcome)) => {
                if event.at < start {
                    (negative_duration(start, event.at), None)
                } else {
                    let over_range = inc.finished(start, event.at, series, outcome, false);
                    (
                        Disposition::Accepted { over_range },
                        Some((InstanceState::Done, sem.dedupe_horizon)),
                    )
                }
            }
            (Some(InstanceState::PendingFinish { finish, outcome }), EventKind::Start) => {
                if finish < event.at {
                    (negative_duration(event.at, finish), None)
                } else {
                    let series = series();
                    new_series.entry(series).or_insert_with(|| labels_json(event));
                    let over_range = inc.finished(event.at, finish, series, outcome, true);
                    (
                        Disposition::Accepted { over_range },
                        Some((InstanceState::Done, sem.dedupe_horizon)),
                    )
                }
            }
            (Some(InstanceState::Open { .. } | InstanceState::PendingFinish { .. }), EventKind::Completed { .. }) => (
                Disposition::Rejected(format!(
                    "instance_id `{}` already belongs to a start or finish; a completed event needs an instance_id of its own",
                    crate::domain::quote(event.instance_id.as_str())
                )),
                None,
            ),
            (Some(_), _) => (Disposition::Duplicate, None),
        };
        if let Some((state, ttl)) = next {
            touched.state = Some(state);
            touched.ttl = Some(ttl);
        }
        plan.dispositions.push((*index, disposition));
    }

    for (key, touched) in touched_all {
        let (Some(state), Some(ttl)) = (touched.state, touched.ttl) else {
            continue; // unchanged
        };
        plan.instance_writes.push(InstanceWrite {
            expected: touched.expected,
            id: key,
            state,
            ttl_ms: ttl / 1000,
        });
    }
    plan.increments = inc.inc;
    let index_key = keys::series_index(prefix);
    plan.series_writes = new_series
        .into_iter()
        .map(|(series, labels_json)| SeriesWrite {
            key: index_key.clone(),
            series: series.to_hex(),
            labels_json,
        })
        .collect();
    plan
}

fn labels_json(event: &TaskEvent) -> String {
    // A BTreeMap<String, String> always serialises.
    serde_json::to_string(event.labels.as_map()).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::domain::{InstanceId, Labels, TaskName, Tenant};

    const T0: Micros = 1_800_000_000 * MICROS_PER_SEC;

    fn sem() -> Semantics {
        Semantics {
            abandon_after: Semantics::DEFAULT_ABANDON_AFTER,
            dedupe_horizon: Semantics::DEFAULT_DEDUPE_HORIZON,
            retention: Retention::default(),
            histogram: Arc::new(HistogramConfig::new(HistogramConfig::DEFAULT_HIGHEST_US, 2).unwrap()),
        }
    }

    fn event(id: &str, at: Micros, kind: EventKind) -> TaskEvent {
        TaskEvent {
            tenant: Tenant::default_tenant(),
            task: TaskName::parse("task", "checkout".into()).unwrap(),
            instance_id: InstanceId::parse("id", id.into()).unwrap(),
            at,
            labels: Labels::default(),
            kind,
        }
    }

    /// Runs events one round at a time against a map standing in for the store.
    fn run(rounds: &[Vec<TaskEvent>]) -> (Vec<Disposition>, HashMap<String, i64>) {
        let sem = sem();
        let prefix = "p";
        let mut records: HashMap<String, String> = HashMap::new();
        let mut totals = HashMap::new();
        let mut out = Vec::new();
        for round in rounds {
            let indexed: Vec<_> = round.iter().enumerate().collect();
            let read = instance_ids(&indexed, |_| true)
                .into_iter()
                .map(|id| (id, records.get(id).cloned().map(StoredRecord::from_text)))
                .collect();
            let plan = plan_task(prefix, &indexed, read, &sem, T0 + 10 * 3600 * MICROS_PER_SEC);
            for w in plan.instance_writes {
                assert_eq!(records.get(w.id), w.expected.as_ref(), "the plan read what is stored");
                records.insert(w.id.to_owned(), w.state.encode());
            }
            for h in plan.increments.hash_writes(prefix) {
                if h.key.contains(":b:m:") {
                    for (f, d) in h.fields {
                        *totals.entry(f).or_default() += d;
                    }
                }
            }
            out.extend(plan.dispositions.into_iter().map(|(_, d)| d));
        }
        (out, totals)
    }

    const OK: Disposition = Disposition::Accepted { over_range: false };

    #[test]
    fn a_start_and_its_finish_count_one_duration() {
        let (d, totals) = run(&[vec![
            event("a", T0, EventKind::Start),
            event("a", T0 + 5_000_000, EventKind::Finish(Outcome::Succeeded)),
        ]]);
        assert_eq!(d, vec![OK, OK]);
        assert_eq!(totals["started"], 1);
        assert_eq!(totals["fin"], 1);
        assert_eq!(totals["s"], 1, "one succeeded duration");
        assert_eq!(totals["sum:s"], 5_000_000);
        assert_eq!(
            totals
                .iter()
                .filter(|(k, _)| k.starts_with("s:"))
                .map(|(_, v)| v)
                .sum::<i64>(),
            1
        );
    }

    #[test]
    fn a_completed_event_files_its_start_under_the_start_minute_and_its_outcome_under_the_finish_minute() {
        let succeeded = |id: &str, finish: Micros, duration: Micros| {
            event(
                id,
                finish,
                EventKind::Completed {
                    duration,
                    outcome: Outcome::Succeeded,
                },
            )
        };
        // T0 starts a minute: "a" runs from T0 + 50 s into the next minute, "b" stays in
        // the first one.
        let events = [
            succeeded("a", T0 + 70 * MICROS_PER_SEC, 20 * MICROS_PER_SEC),
            succeeded("b", T0 + 30 * MICROS_PER_SEC, 10 * MICROS_PER_SEC),
        ];
        let indexed: Vec<_> = events.iter().enumerate().collect();
        let plan = plan_task(
            "p",
            &indexed,
            RecordsRead::default(),
            &sem(),
            T0 + 3600 * MICROS_PER_SEC,
        );
        let mut by_minute: HashMap<i64, HashMap<String, i64>> = HashMap::new();
        for h in plan.increments.hash_writes("p") {
            let Some((_, rest)) = h.key.split_once(":b:m:") else {
                continue;
            };
            let minute: i64 = rest.split(':').next().unwrap().parse().unwrap();
            by_minute.entry(minute).or_default().extend(h.fields);
        }
        let first = &by_minute[&(T0 / MICROS_PER_SEC)];
        let second = &by_minute[&(T0 / MICROS_PER_SEC + 60)];
        assert_eq!(
            (first["started"], first["fin"]),
            (2, 2),
            "both started in the first minute"
        );
        assert_eq!(
            (first["s"], first["sum:s"]),
            (1, 10_000_000),
            "b finished in the first minute"
        );
        assert_eq!(
            (second["s"], second["sum:s"]),
            (1, 20_000_000),
            "a finished in the second"
        );
        assert!(
            !second.contains_key("started") && !second.contains_key("fin"),
            "{second:?}"
        );
        let bins = |m: &HashMap<String, i64>| {
            m.iter()
                .filter(|(k, _)| k.starts_with("s:"))
                .map(|(_, v)| v)
                .sum::<i64>()
        };
        assert_eq!((bins(first), bins(second)), (1, 1));
    }

    #[test]
    fn a_finish_before_its_start_is_paired_when_the_start_arrives() {
        let (d, totals) = run(&[
            vec![event("a", T0 + 7_000_000, EventKind::Finish(Outcome::Failed))],
            vec![event("a", T0, EventKind::Start)],
        ]);
        assert_eq!(d, vec![OK, OK]);
        assert_eq!(totals["f"], 1);
        assert_eq!(totals["sum:f"], 7_000_000);
    }

    #[test]
    fn a_round_writes_each_instance_once_in_the_order_its_events_first_touched_it() {
        let sem = sem();
        let finish = EventKind::Finish(Outcome::Succeeded);
        let completed = EventKind::Completed {
            duration: 1_000_000,
            outcome: Outcome::Failed,
        };
        let events = [
            event("c", T0, EventKind::Start),
            event("a", T0, completed),
            event("b", T0 + 1, finish),
            event("c", T0 + 2, finish),
            event("a", T0 + 3, completed),
        ];
        let indexed: Vec<_> = events.iter().enumerate().collect();
        let plan = plan_task("p", &indexed, RecordsRead::default(), &sem, T0 + MICROS_PER_SEC);
        let writes: Vec<(&str, InstanceState)> = plan.instance_writes.iter().map(|w| (w.id, w.state)).collect();
        assert_eq!(
            writes,
            vec![
                ("c", InstanceState::Done),
                ("a", InstanceState::Done),
                (
                    "b",
                    InstanceState::PendingFinish {
                        finish: T0 + 1,
                        outcome: Outcome::Succeeded
                    }
                ),
            ]
        );
        assert_eq!(
            plan.dispositions,
            vec![(0, OK), (1, OK), (2, OK), (3, OK), (4, Disposition::Duplicate)]
        );
    }

    #[test]
    fn every_kind_of_duplicate_is_counted_once() {
        let start = || event("a", T0, EventKind::Start);
        let finish = || event("a", T0 + 1, EventKind::Finish(Outcome::Succeeded));
        let done = || {
            event(
                "b",
                T0,
                EventKind::Completed {
                    duration: 3,
                    outcome: Outcome::Succeeded,
                },
            )
        };
        let (d, totals) = run(&[
            vec![start(), start(), done()],
            vec![finish(), start(), done()],
            vec![finish(), finish(), done()],
        ]);
        use Disposition::Duplicate as Dup;
        assert_eq!(d, vec![OK, Dup, OK, OK, Dup, Dup, Dup, Dup, Dup]);
        assert_eq!(totals["started"], 2);
        assert_eq!(totals["s"], 2);
    }

    #[test]
    fn a_negative_duration_is_rejected_and_the_start_stays_open() {
        let (d, totals) = run(&[vec![
            event("a", T0, EventKind::Start),
            event("a", T0 - 1, EventKind::Finish(Outcome::Succeeded)),
            event("a", T0 + 1, EventKind::Finish(Outcome::Succeeded)),
        ]]);
        assert!(matches!(&d[1], Disposition::Rejected(r) if r.contains("earlier than its start")));
        assert_eq!(d[2], OK);
        assert_eq!(totals["s"], 1);
    }

    #[test]
    fn a_completed_event_cannot_reuse_an_open_instance() {
        let (d, _) = run(&[vec![
            event("a", T0, EventKind::Start),
            event(
                "a",
                T0,
                EventKind::Completed {
                    duration: 1,
                    outcome: Outcome::Succeeded,
                },
            ),
        ]]);
        assert!(matches!(&d[1], Disposition::Rejected(r) if r.contains("instance_id of its own")));
    }

    #[test]
    fn an_over_range_duration_is_clamped_and_counted() {
        let highest = HistogramConfig::DEFAULT_HIGHEST_US as i64;
        let (d, totals) = run(&[vec![event(
            "a",
            T0,
            EventKind::Completed {
                duration: highest + 1,
                outcome: Outcome::Succeeded,
            },
        )]]);
        assert_eq!(d, vec![Disposition::Accepted { over_range: true }]);
        assert_eq!(totals["over"], 1);
    }

    #[test]
    fn every_event_of_an_instance_whose_record_is_unreadable_is_rejected_and_it_is_not_written() {
        let sem = sem();
        let round = [
            event("a", T0, EventKind::Finish(Outcome::Succeeded)),
            event("b", T0, EventKind::Start),
            event("a", T0 + 1, EventKind::Finish(Outcome::Succeeded)),
        ];
        let indexed: Vec<_> = round.iter().enumerate().collect();
        let mut read = RecordsRead::default();
        read.insert("a", Some(StoredRecord::from_text("from a later version".into())));
        read.insert("b", None);
        let plan = plan_task("p", &indexed, read, &sem, T0);
        let unreadable =
            Disposition::Rejected("the stored record of instance `a` is not readable by this version".into());
        assert_eq!(
            plan.dispositions,
            vec![(0, unreadable.clone()), (1, OK), (2, unreadable)]
        );
        let written: Vec<_> = plan
            .instance_writes
            .iter()
            .map(|w| (w.id, w.expected.clone()))
            .collect();
        assert_eq!(
            written,
            vec![("b", None)],
            "only b's record is written, and it was absent"
        );
    }

    #[test]
    fn records_round_trip_through_their_text_form() {
        for s in [
            InstanceState::Open {
                start: -5,
                series: SeriesId(u64::MAX),
            },
            InstanceState::PendingFinish {
                finish: T0,
                outcome: Outcome::Cancelled,
            },
            InstanceState::Done,
        ] {
            assert_eq!(InstanceState::decode(&s.encode()), Some(s));
        }
        assert_eq!(InstanceState::decode("S|1"), None);
        assert_eq!(InstanceState::decode("D|x"), None);
    }

    fn any_field() -> impl proptest::strategy::Strategy<Value = Field> {
        use proptest::prelude::*;
        let outcome = prop::sample::select(Outcome::ALL.to_vec());
        prop_oneof![
            Just(Field::Started),
            Just(Field::FinishedOfStarted),
            Just(Field::OverRange),
            outcome.clone().prop_map(Field::Count),
            outcome.clone().prop_map(Field::Sum),
            // Few bins, so that they repeat.
            (outcome, 0u64..4).prop_map(|(o, b)| Field::Bin(o, b << 20)),
        ]
    }

    proptest::proptest! {
        /// A minute's sums are what a map of every field would hold: each field filed
        /// once with the sum of its deltas, a delta of zero included, none other.
        #[test]
        fn minute_sums_hold_what_a_map_of_every_field_would(
            adds in proptest::collection::vec((any_field(), -2i64..3), 0..40)
        ) {
            let mut sums = MinuteSums::default();
            let mut want: HashMap<Field, i64> = HashMap::new();
            for (field, delta) in &adds {
                sums.add(*field, *delta);
                *want.entry(*field).or_default() += delta;
            }
            let got: Vec<(Field, i64)> = sums.iter().collect();
            proptest::prop_assert_eq!(got.len(), want.len(), "each field once: {:?}", got);
            proptest::prop_assert_eq!(got.into_iter().collect::<HashMap<_, _>>(), want);
        }
    }
}
