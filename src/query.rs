//! Stats over a selector: which buckets and series to read, and the pure merge of what
//! was read into counts, rates and percentiles.

use std::sync::Arc;

use hdrhistogram::Histogram;

use crate::buckets::{BucketRef, Retention, cover};
use crate::domain::{MICROS_PER_SEC, Micros, Outcome, Selector, SeriesId, TimeRange};
use crate::histogram::HistogramConfig;
use crate::store::keys::{self, field};
use crate::store::{FieldMap, Store, StoreError};

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
    let series: Vec<SeriesId> = store
        .series(&selector.tenant, &selector.task)
        .await?
        .into_iter()
        .filter(|(_, labels)| selector.filter.matches(labels))
        .map(|(id, _)| id)
        .collect();
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
    let mut shape: Vec<Vec<BucketRef>> = Vec::new();
    for c in &covers {
        for bucket in &c.buckets {
            for s in &series {
                hash_keys.push(keys::bucket(&prefix, &namespace, *bucket, *s));
            }
        }
        shape.push(c.buckets.clone());
    }
    let maps = if hash_keys.is_empty() {
        Vec::new()
    } else {
        store.read_hashes(hash_keys).await?
    };
    let mut maps = maps.into_iter();
    let abandon_secs = settings.abandon_after.div_euclid(MICROS_PER_SEC);
    let mut out = Vec::with_capacity(covers.len());
    for (c, buckets) in covers.iter().zip(shape) {
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
        for bucket in buckets {
            let closed_long_enough = bucket.end() + abandon_secs <= now_secs;
            for _ in &series {
                let hash = maps.next().unwrap_or_default();
                add_counters(&mut m, &hash, closed_long_enough);
                add_histogram(&mut m, &hash, selector.outcome, &settings.histogram);
            }
        }
        out.push(m);
    }
    Ok(out)
}

fn get(map: &FieldMap, name: &str) -> u64 {
    map.get(name).map_or(0, |v| u64::try_from(*v).unwrap_or(0))
}

fn add_counters(m: &mut Merged, c: &FieldMap, closed_long_enough: bool) {
    let started = get(c, field::STARTED);
    m.started += started;
    m.succeeded += get(c, keys::outcome_field(Outcome::Succeeded));
    m.failed += get(c, keys::outcome_field(Outcome::Failed));
    m.cancelled += get(c, keys::outcome_field(Outcome::Cancelled));
    m.over_range += get(c, field::OVER_RANGE);
    if closed_long_enough {
        m.abandoned += started.saturating_sub(get(c, field::FINISHED_OF_STARTED));
    }
}

fn add_histogram(m: &mut Merged, h: &FieldMap, outcome: Outcome, config: &HistogramConfig) {
    if h.is_empty() {
        return;
    }
    m.n += get(h, keys::outcome_field(outcome));
    m.sum_us += i128::from(h.get(keys::sum_field(outcome)).copied().unwrap_or(0));
    let bins = h.iter().filter_map(|(k, v)| {
        let bin = keys::parse_bin_field(outcome, k)?;
        Some((bin, u64::try_from(*v).ok()?))
    });
    config.add_bins(&mut m.durations, bins);
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
}
