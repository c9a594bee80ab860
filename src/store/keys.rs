//! The storage key schema (Redis keys, and the same names in the embedded store).
//!
//! Every key of one `(tenant, task)` carries the hash tag `{tenant|task}`, so one commit
//! script touches one Redis Cluster slot. Histogram keys also carry the histogram
//! configuration's namespace: data written under another configuration is never mixed.

use crate::buckets::BucketRef;
use crate::domain::{Outcome, SeriesId, TaskName, Tenant};

/// Version of the key schema; a change that is not backward compatible bumps it.
pub const SCHEMA: &str = "tt:v1";

/// Counter fields of a counters hash.
pub mod field {
    /// Instances started in this bucket.
    pub const STARTED: &str = "started";
    /// Instances started in this bucket that have since finished (any outcome).
    pub const FINISHED_OF_STARTED: &str = "fin";
    /// Durations clamped to the highest trackable value, filed under the finish.
    pub const OVER_RANGE: &str = "over";
    /// Exact number of durations in a histogram hash.
    pub const N: &str = "n";
    /// Exact sum of durations in a histogram hash, µs.
    pub const SUM_US: &str = "sum";
}

/// Key prefix shared by every key of one task: `tt:v1:{tenant|task}`.
pub fn task_prefix(tenant: &Tenant, task: &TaskName) -> String {
    format!("{SCHEMA}:{{{}|{}}}", tenant.as_str(), task.as_str())
}

/// The record of one instance (open, pending finish, or done marker).
pub fn instance(prefix: &str, instance_id: &str) -> String {
    format!("{prefix}:i:{instance_id}")
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

/// Counters of one series in one bucket: started, finished-of-started, outcomes, over range.
pub fn counters(prefix: &str, bucket: BucketRef, series: SeriesId) -> String {
    format!("{prefix}:c:{}:{}:{:016x}", bucket.res.code(), bucket.start, series.0)
}

/// The duration histogram of one series, outcome and bucket: bin -> count, plus `n` and `sum`.
pub fn histogram(prefix: &str, namespace: &str, bucket: BucketRef, series: SeriesId, outcome: Outcome) -> String {
    format!(
        "{prefix}:{namespace}:h:{}:{}:{:016x}:{}",
        bucket.res.code(),
        bucket.start,
        series.0,
        outcome.code()
    )
}

/// The counters field holding the number of finishes with this outcome.
pub fn outcome_field(outcome: Outcome) -> &'static str {
    outcome.code()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buckets::Resolution;

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
            series_index(&p),
            counters(&p, b, SeriesId(7)),
            histogram(&p, "d2r1", b, SeriesId(7), Outcome::Failed),
        ] {
            assert!(key.starts_with("tt:v1:{default|checkout}:"), "{key}");
        }
        assert_eq!(
            counters(&p, b, SeriesId(7)),
            "tt:v1:{default|checkout}:c:h:3600:0000000000000007"
        );
    }
}
