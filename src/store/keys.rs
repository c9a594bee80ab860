//! The storage key schema (Redis keys, and the same names in the embedded store).
//!
//! Every key of one `(tenant, task)` carries the hash tag `{tenant|task}`, so one commit
//! script touches one Redis Cluster slot. Histogram keys also carry the histogram
//! configuration's namespace: data written under another configuration is never mixed.

use crate::buckets::{BucketRef, Resolution};
use crate::domain::{Outcome, SeriesId, TaskName, Tenant};

/// Version of the key schema; a change that is not backward compatible bumps it.
pub const SCHEMA: &str = "tt:v2";

/// Fields of a bucket. One bucket per (series, resolution, bucket start) holds the
/// counts and the duration histograms of every outcome, so a round touches one bucket
/// per series and resolution. (In Redis a bucket is one string of `name value` lines,
/// `store/bucket.rs`; in the embedded store a map.)
pub mod field {
    /// Instances started in this bucket.
    pub const STARTED: &str = "started";
    /// Instances started in this bucket that have since finished (any outcome).
    pub const FINISHED_OF_STARTED: &str = "fin";
    /// Durations clamped to the highest trackable value, filed under the finish.
    pub const OVER_RANGE: &str = "over";
}

/// Key prefix shared by every key of one task: `tt:v2:{tenant|task}`.
pub fn task_prefix(tenant: &Tenant, task: &TaskName) -> String {
    format!("{SCHEMA}:{{{}|{}}}", tenant.as_str(), task.as_str())
}

/// The record of one instance (open, pending finish, or done marker).
pub fn instance(prefix: &str, instance_id: &str) -> String {
    format!("{prefix}:i:{instance_id}")
}

/// The record hash of one generation of a task: instance id -> record (open start,
/// pending finish or done marker). See `store/lua/commit.lua`.
pub fn records(prefix: &str, generation: i64) -> String {
    format!("{prefix}:r:{generation}")
}

/// The task's increment journal (a list; see `store/journal.rs`).
pub fn journal(prefix: &str) -> String {
    format!("{prefix}:j")
}

/// Where a fold stages the new value of the bucket `key` before its script renames it
/// over the bucket (`store/lua/flush.lua`); `token` is unique per fold. Same hash slot
/// as `key`.
pub fn staged(key: &str, token: &str) -> String {
    format!("{key}:staged:{token}")
}

/// The tail of the bucket `key`: what folds appended to the bucket since it was last
/// written whole, as more `name value` lines (`store/bucket.rs`). Same hash slot as `key`.
pub fn tail(key: &str) -> String {
    format!("{key}:tail")
}

/// The task prefix of a [`journal`] key.
pub fn journal_prefix(key: &str) -> Option<&str> {
    key.strip_suffix(":j")
}

/// The task's series index: series id (hex) -> labels (JSON object).
pub fn series_index(prefix: &str) -> String {
    format!("{prefix}:series")
}

/// The tenant's task index (a set of task names). Its own slot: written outside the
/// commit script, idempotently.
pub fn task_index(tenant: &Tenant) -> String {
    format!("{SCHEMA}:tasks:{{{}}}", tenant.as_str())
}

/// The bucket of one series: counts, and per outcome the exact sum of durations and
/// the histogram bins. Carries the histogram namespace: bins of another histogram
/// configuration are never mixed in.
pub fn bucket(prefix: &str, namespace: &str, bucket: BucketRef, series: SeriesId) -> String {
    let mut key = format!("{prefix}:");
    write_bucket_suffix(&mut key, namespace, bucket, Some(series));
    key
}

/// Appends the part of a [`bucket`] key (`series` given) or a [`task_total`] key after
/// the task prefix and its `:` to `out`.
pub fn write_bucket_suffix(out: &mut String, namespace: &str, bucket: BucketRef, series: Option<SeriesId>) {
    out.push_str(namespace);
    out.push_str(if series.is_some() { ":b:" } else { ":t:" });
    out.push_str(bucket.res.code());
    out.push(':');
    out.push_str(itoa::Buffer::new().format(bucket.start));
    if let Some(series) = series {
        out.push(':');
        series.push_hex(out);
    }
}

/// When the bucket of `suffix` ends (seconds since the epoch): `suffix` is the part of
/// a [`bucket`] or [`task_total`] key after the task prefix and its `:` (what
/// [`write_bucket_suffix`] writes); `None` for anything else.
pub fn bucket_end_of_suffix(suffix: &str) -> Option<i64> {
    let mut parts = suffix.split(':').skip(1);
    if !matches!(parts.next(), Some("b" | "t")) {
        return None;
    }
    let code = parts.next()?;
    let res = Resolution::ALL.into_iter().find(|r| r.code() == code)?;
    let start: i64 = parts.next()?.parse().ok()?;
    Some(start + res.secs())
}

/// One bucket of a task summed over all its series: the same fields as [`bucket`].
/// Folded with the series' buckets, in the same script; a query with no label filter
/// reads it instead of one bucket per series.
pub fn task_total(prefix: &str, namespace: &str, bucket: BucketRef) -> String {
    let mut key = format!("{prefix}:");
    write_bucket_suffix(&mut key, namespace, bucket, None);
    key
}

/// The field counting finishes with this outcome (also the number of its durations).
pub fn outcome_field(outcome: Outcome) -> &'static str {
    outcome.code()
}

/// The field holding the exact sum of this outcome's durations, µs.
pub fn sum_field(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded => "sum:s",
        Outcome::Failed => "sum:f",
        Outcome::Cancelled => "sum:c",
    }
}

/// The field counting this outcome's durations in one HDR bin (named by its lowest
/// equivalent value, µs): `s:1234`.
pub fn bin_field(outcome: Outcome, bin: u64) -> String {
    format!("{}:{bin}", outcome.code())
}

/// Parses [`bin_field`] output for `outcome`; `None` for any other field.
pub fn parse_bin_field(outcome: Outcome, field: &str) -> Option<u64> {
    field.strip_prefix(outcome.code())?.strip_prefix(':')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_task_shares_its_hash_tag() {
        let tenant = Tenant::default_tenant();
        let task = TaskName::parse("task", "checkout".into()).unwrap();
        let p = task_prefix(&tenant, &task);
        let b = BucketRef {
            res: Resolution::Hour,
            start: 3600,
        };
        for key in [
            instance(&p, "abc{x}"),
            records(&p, 123),
            journal(&p),
            series_index(&p),
            bucket(&p, "d2r1", b, SeriesId(7)),
            task_total(&p, "d2r1", b),
            tail(&bucket(&p, "d2r1", b, SeriesId(7))),
            staged(&task_total(&p, "d2r1", b), "f1"),
        ] {
            assert!(key.starts_with("tt:v2:{default|checkout}:"), "{key}");
        }
        assert_eq!(
            bucket(&p, "d2r1", b, SeriesId(7)),
            "tt:v2:{default|checkout}:d2r1:b:h:3600:0000000000000007"
        );
        assert_eq!(task_total(&p, "d2r1", b), "tt:v2:{default|checkout}:d2r1:t:h:3600");
    }

    #[test]
    fn a_bucket_key_says_when_its_bucket_ends() {
        let at = |res| BucketRef { res, start: 3600 };
        for (res, end) in [
            (Resolution::Minute, 3660),
            (Resolution::Hour, 7200),
            (Resolution::Day, 90_000),
        ] {
            let mut series = String::new();
            write_bucket_suffix(&mut series, "d2r1", at(res), Some(SeriesId(7)));
            let mut total = String::new();
            write_bucket_suffix(&mut total, "d2r1", at(res), None);
            assert_eq!(bucket_end_of_suffix(&series), Some(end), "{series}");
            assert_eq!(bucket_end_of_suffix(&total), Some(end), "{total}");
        }
        assert_eq!(bucket_end_of_suffix("d2r1:x:m:3600"), None);
        assert_eq!(bucket_end_of_suffix("d2r1:b:w:3600"), None);
        assert_eq!(bucket_end_of_suffix("d2r1:b:m:later"), None);
        assert_eq!(bucket_end_of_suffix("m"), None);
    }

    #[test]
    fn bin_fields_round_trip_and_belong_to_one_outcome() {
        let f = bin_field(Outcome::Succeeded, 1234);
        assert_eq!(f, "s:1234");
        assert_eq!(parse_bin_field(Outcome::Succeeded, &f), Some(1234));
        assert_eq!(parse_bin_field(Outcome::Failed, &f), None);
        assert_eq!(parse_bin_field(Outcome::Succeeded, "sum:s"), None);
        assert_eq!(parse_bin_field(Outcome::Succeeded, "s"), None);
    }
}
