//! Stats over a selector: which buckets and series to read, and the pure merge of what
//! was read into counts, rates and percentiles.

use std::sync::Arc;

use hdrhistogram::Histogram;

use crate::buckets::{Retention, cover};
use crate::domain::{MICROS_PER_SEC, Micros, Outcome, Selector, SeriesId, TimeRange};
use crate::histogram::HistogramConfig;
use crate::store::keys::{self, field};
use crate::store::{Fields, Store, StoreError};

/// What queries need to know about the data's shape.
#[derive(Debug, Clone)]
pub struct QuerySettings {
    pub retention: Retention,
    pub abandon_after: Micros,
    pub histogram: Arc<HistogramConfig>,
}

/// Everything read for one selector and one time range, merged.
#[derive(Debug, Clone)]
pub struct Merged {
    /// Durations of the selector's outcome.
    pub durations: Histogram<u64>,
    /// Exact count and sum (µs) of those durations.
    pub n: u64,
    pub sum_us: i128,
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub abandoned: u64,
    pub over_range: u64,
    /// The range actually read, µs (see [`crate::buckets::cover`]).
    pub range: TimeRange,
}

/// `TaskStats` in domain form.
#[derive(Debug, Clone)]
pub struct Stats {
    pub merged: Merged,
    pub success_rate: f64,
    /// `(percentile, value in µs)`.
    pub percentiles: Vec<(f64, u64)>,
    pub min_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    pub significant_digits: u32,
}

fn round_down_minute(at: Micros) -> i64 {
    at.div_euclid(MICROS_PER_SEC).div_euclid(60) * 60
}

fn round_up_minute(at: Micros) -> i64 {
    let secs = at.div_euclid(MICROS_PER_SEC) + i64::from(at.rem_euclid(MICROS_PER_SEC) != 0);
    (secs + 59).div_euclid(60) * 60
}

/// Reads and merges the data of `selector` for each of `ranges`, in one store read.
///
/// # Errors
/// When the store is unavailable.
pub async fn read_merged<S: Store>(
    store: &S,
    settings: &QuerySettings,
    selector: &Selector,
    ranges: &[TimeRange],
    now: Micros,
) -> Result<Vec<Merged>, StoreError> {
    // With no label filter every series counts: each bucket's task total holds them all.
    let unfiltered = selector.filter.is_empty();
    let series: Vec<SeriesId> = if unfiltered {
        Vec::new()
    } else {
        store
            .series(&selector.tenant, &selector.task)
            .await?
            .into_iter()
            .filter(|(_, labels)| selector.filter.matches(labels))
            .map(|(id, _)| id)
            .collect()
    };
    let prefix = keys::task_prefix(&selector.tenant, &selector.task);
    let namespace = settings.histogram.namespace();
    let now_secs = now.div_euclid(MICROS_PER_SEC);
    let covers: Vec<_> = ranges
        .iter()
        .map(|r| {
            cover(
                round_down_minute(r.from),
                round_up_minute(r.to),
                now_secs,
                &settings.retention,
            )
        })
        .collect();
    let mut hash_keys = Vec::new();
    // Per cover, per bucket, how many hashes were read for it.
    let mut shape: Vec<Vec<usize>> = Vec::new();
    for c in &covers {
        let mut per_bucket = Vec::with_capacity(c.buckets.len());
        for bucket in &c.buckets {
            if unfiltered {
                hash_keys.push(keys::task_total(&prefix, &namespace, *bucket));
                per_bucket.push(1);
                continue;
            }
            for s in &series {
                hash_keys.push(keys::bucket(&prefix, &namespace, *bucket, *s));
            }
            per_bucket.push(series.len());
        }
        shape.push(per_bucket);
    }
    let maps = if hash_keys.is_empty() {
        Vec::new()
    } else {
        store.read_hashes(&selector.tenant, &selector.task, hash_keys).await?
    };
    let mut maps = maps.into_iter();
    let abandon_secs = settings.abandon_after.div_euclid(MICROS_PER_SEC);
    let mut out = Vec::with_capacity(covers.len());
    for (c, read) in covers.iter().zip(shape) {
        let mut m = Merged {
            durations: settings.histogram.empty(),
            n: 0,
            sum_us: 0,
            started: 0,
            succeeded: 0,
            failed: 0,
            cancelled: 0,
            abandoned: 0,
            over_range: 0,
            range: TimeRange {
                from: c.from * MICROS_PER_SEC,
                to: c.to * MICROS_PER_SEC,
            },
        };
        for (bucket, n) in c.buckets.iter().zip(read) {
            let closed_long_enough = bucket.end() + abandon_secs <= now_secs;
            for _ in 0..n {
                let hash = maps.next().unwrap_or_default();
                add_fields(&mut m, &hash, selector.outcome, &settings.histogram, closed_long_enough);
            }
        }
        out.push(m);
    }
    Ok(out)
}

/// Adds one bucket's fields to `m`, looking at each field once: its counters, and the
/// count, exact sum and bins of `outcome`. A counter below zero counts as zero.
fn add_fields(m: &mut Merged, h: &Fields, outcome: Outcome, config: &HistogramConfig, closed_long_enough: bool) {
    if h.is_empty() {
        return;
    }
    let (count_field, sum_field) = (keys::outcome_field(outcome), keys::sum_field(outcome));
    let succeeded = keys::outcome_field(Outcome::Succeeded);
    let failed = keys::outcome_field(Outcome::Failed);
    let cancelled = keys::outcome_field(Outcome::Cancelled);
    // Counters are summed over the bucket first (a name can occur twice, see `Fields`).
    let mut counters = [0i64; 6];
    let (mut n, mut sum_us) = (0i64, 0i128);
    let bins = h.iter().filter_map(|(name, v)| {
        if let Some(bin) = keys::parse_bin_field(outcome, name) {
            return Some((bin, u64::try_from(v).ok()?));
        }
        if name == count_field {
            n += v;
        }
        if name == sum_field {
            sum_us += i128::from(v);
        }
        let slot = match name {
            field::STARTED => 0,
            field::FINISHED_OF_STARTED => 1,
            field::OVER_RANGE => 2,
            _ if name == succeeded => 3,
            _ if name == failed => 4,
            _ if name == cancelled => 5,
            _ => return None,
        };
        counters[slot] += v;
        None
    });
    config.add_bins(&mut m.durations, bins);
    let [started, finished_of_started, over_range, s, f, c] = counters.map(|v| u64::try_from(v).unwrap_or(0));
    m.n += u64::try_from(n).unwrap_or(0);
    m.sum_us += sum_us;
    m.started += started;
    m.succeeded += s;
    m.failed += f;
    m.cancelled += c;
    m.over_range += over_range;
    if closed_long_enough {
        m.abandoned += started.saturating_sub(finished_of_started);
    }
}

/// Turns merged data into stats: rates, percentiles, min, max and mean.
pub fn summarize(merged: Merged, percentiles: &[f64], config: &HistogramConfig) -> Stats {
    let decided = merged.succeeded + merged.failed + merged.cancelled + merged.abandoned;
    let success_rate = if decided == 0 {
        0.0
    } else {
        merged.succeeded as f64 / decided as f64
    };
    let h = &merged.durations;
    let empty = h.is_empty();
    let percentiles = percentiles
        .iter()
        .map(|p| {
            (
                *p,
                if empty {
                    0
                } else {
                    HistogramConfig::value_at_quantile(h, p / 100.0)
                },
            )
        })
        .collect();
    let mean_us = if merged.n == 0 {
        0.0
    } else {
        merged.sum_us as f64 / merged.n as f64
    };
    Stats {
        success_rate,
        percentiles,
        min_us: if empty { 0 } else { h.min() },
        max_us: if empty { 0 } else { h.highest_equivalent(h.max()) },
        mean_us,
        significant_digits: u32::from(config.sigfig()),
        merged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_outward_to_whole_minutes() {
        assert_eq!(round_down_minute(61 * MICROS_PER_SEC + 5), 60);
        assert_eq!(round_up_minute(60 * MICROS_PER_SEC), 60);
        assert_eq!(round_up_minute(60 * MICROS_PER_SEC + 1), 120);
        assert_eq!(round_up_minute(-1), 0);
    }

    #[test]
    fn success_rate_counts_abandoned_instances_as_unsuccessful() {
        let config = HistogramConfig::new(HistogramConfig::DEFAULT_HIGHEST_US, 2).unwrap();
        let merged = Merged {
            durations: config.empty(),
            n: 0,
            sum_us: 0,
            started: 10,
            succeeded: 6,
            failed: 1,
            cancelled: 1,
            abandoned: 2,
            over_range: 0,
            range: TimeRange { from: 0, to: 60 },
        };
        let stats = summarize(merged, &[50.0], &config);
        assert!((stats.success_rate - 0.6).abs() < 1e-12);
        assert_eq!(stats.percentiles, vec![(50.0, 0)]);
    }

    /// A store that counts the buckets a query reads.
    #[derive(Debug, Clone)]
    struct Counting {
        inner: crate::store::MemoryStore,
        bucket_reads: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Store for Counting {
        async fn apply(
            &self,
            events: &[crate::domain::TaskEvent],
            now: Micros,
        ) -> Result<Vec<crate::ingest::plan::Disposition>, StoreError> {
            self.inner.apply(events, now).await
        }
        async fn series(
            &self,
            tenant: &crate::domain::Tenant,
            task: &crate::domain::TaskName,
        ) -> Result<Vec<(SeriesId, crate::domain::Labels)>, StoreError> {
            self.inner.series(tenant, task).await
        }
        async fn read_hashes(
            &self,
            tenant: &crate::domain::Tenant,
            task: &crate::domain::TaskName,
            keys: Vec<String>,
        ) -> Result<Vec<Fields>, StoreError> {
            let buckets = keys.iter().filter(|k| k.contains(":b:") || k.contains(":t:")).count();
            self.bucket_reads
                .fetch_add(buckets, std::sync::atomic::Ordering::Relaxed);
            self.inner.read_hashes(tenant, task, keys).await
        }
        async fn tasks(&self, tenant: &crate::domain::Tenant) -> Result<Vec<String>, StoreError> {
            self.inner.tasks(tenant).await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_query_without_a_filter_reads_one_task_total_per_bucket() {
        use crate::domain::{EventKind, InstanceId, LabelFilter, Labels, TaskEvent, TaskName, Tenant};
        use crate::ingest::plan::Semantics;

        let histogram = Arc::new(HistogramConfig::new(HistogramConfig::DEFAULT_HIGHEST_US, 2).unwrap());
        let sem = Arc::new(Semantics {
            abandon_after: Semantics::DEFAULT_ABANDON_AFTER,
            dedupe_horizon: Semantics::DEFAULT_DEDUPE_HORIZON,
            retention: Retention::default(),
            histogram: Arc::clone(&histogram),
        });
        let store = Counting {
            inner: crate::store::MemoryStore::new(sem),
            bucket_reads: Arc::default(),
        };
        let now = crate::domain::now_micros();
        let task = TaskName::parse("task", "checkout".into()).unwrap();
        // 20 releases; release r{i} has one 2 s success, finished i minutes ago.
        let events: Vec<TaskEvent> = (0..20)
            .map(|i| TaskEvent {
                tenant: Tenant::default_tenant(),
                task: task.clone(),
                instance_id: InstanceId::parse("id", format!("i{i}")).unwrap(),
                at: now - i64::from(i) * 60 * MICROS_PER_SEC,
                labels: Labels::parse(
                    "labels",
                    [
                        ("release".to_owned(), format!("r{i}")),
                        ("platform".to_owned(), "web".to_owned()),
                    ],
                    16,
                    128,
                )
                .unwrap(),
                kind: EventKind::Completed {
                    duration: 2 * MICROS_PER_SEC,
                    outcome: Outcome::Succeeded,
                },
            })
            .collect();
        store.apply(&events, now).await.unwrap();
        let settings = QuerySettings {
            retention: Retention::default(),
            abandon_after: Semantics::DEFAULT_ABANDON_AFTER,
            histogram,
        };
        let range = TimeRange {
            from: now - 30 * 86_400 * MICROS_PER_SEC,
            to: now,
        };
        let mut selector = Selector {
            tenant: Tenant::default_tenant(),
            task,
            filter: LabelFilter::default(),
            range,
            outcome: Outcome::Succeeded,
            percentiles: vec![50.0],
        };
        let all = read_merged(&store, &settings, &selector, &[range], now).await.unwrap();
        assert_eq!(all[0].n, 20, "every release's duration is counted");
        assert_eq!(all[0].sum_us, 40 * i128::from(MICROS_PER_SEC));
        let buckets = cover(
            round_down_minute(range.from),
            round_up_minute(range.to),
            now.div_euclid(MICROS_PER_SEC),
            &settings.retention,
        )
        .buckets
        .len();
        let reads = || store.bucket_reads.swap(0, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(reads(), buckets, "no filter: one task total per bucket");

        // A filter that every series matches: the buckets of those series.
        selector.filter = LabelFilter::parse("filter", [("platform".to_owned(), "web".to_owned())]).unwrap();
        let web = read_merged(&store, &settings, &selector, &[range], now).await.unwrap();
        assert_eq!((web[0].n, web[0].sum_us), (all[0].n, all[0].sum_us));
        assert_eq!(web[0].durations.len(), all[0].durations.len());
        assert_eq!(reads(), buckets * 20);

        selector.filter = LabelFilter::parse("filter", [("release".to_owned(), "r3".to_owned())]).unwrap();
        let one = read_merged(&store, &settings, &selector, &[range], now).await.unwrap();
        assert_eq!(one[0].n, 1);
        assert_eq!(one[0].started, 1);
    }
}
