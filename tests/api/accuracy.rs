//! Accuracy: 100,000 random durations (lognormal, four series) through the service; every
//! percentile within the HDR precision of the exact quantile of the raw data, counts and
//! total time exact. Against both stores.

use futures::StreamExt as _;
use rand::SeedableRng as _;
use rand_distr::{Distribution as _, LogNormal};
use tasktime::pb;

use crate::helpers::*;

crate::both_stores!(percentiles_match_exact_quantiles_within_hdr_precision);

const PER_SERIES: usize = 25_000;
const PERCENTILES: [f64; 8] = [1.0, 10.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

/// The exact quantile under HdrHistogram's rank rule: the value at rank max(1, ceil(q n)).
fn exact_quantile(sorted: &[i64], percentile: f64) -> i64 {
    let n = sorted.len();
    let rank = ((percentile / 100.0) * n as f64).ceil().max(1.0) as usize;
    sorted[rank.min(n) - 1]
}

async fn percentiles_match_exact_quantiles_within_hdr_precision(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261125);
    let at = now() - 600 * SEC;
    // (release, median seconds, sigma): fast and slow, narrow and wide.
    let series = [("a", 2.0, 0.4), ("b", 30.0, 0.8), ("c", 300.0, 1.2), ("d", 0.05, 0.6)];
    let mut all = Vec::new();
    let mut per_series = Vec::new();
    let mut requests = Vec::new();
    for (release, median, sigma) in series {
        let dist = LogNormal::new(f64::ln(median * 1e6), sigma).expect("lognormal");
        let mut values = Vec::with_capacity(PER_SERIES);
        let mut batch = Vec::new();
        for i in 0..PER_SERIES {
            let v = (dist.sample(&mut rng) as i64).max(1);
            values.push(v);
            batch.push(completed(
                "accuracy",
                &format!("{release}-{i}"),
                at,
                v,
                pb::Outcome::Succeeded,
                &[("release", release)],
            ));
            if batch.len() == 2_000 {
                requests.push(pb::RecordRequest {
                    events: std::mem::take(&mut batch),
                });
            }
        }
        if !batch.is_empty() {
            requests.push(pb::RecordRequest { events: batch });
        }
        all.extend_from_slice(&values);
        per_series.push((release, values));
    }
    let responses: Vec<_> = app
        .ingest
        .record_stream(tokio_stream::iter(requests))
        .await
        .expect("stream")
        .into_inner()
        .collect()
        .await;
    let accepted: u32 = responses.into_iter().map(|r| r.expect("batch OK").accepted).sum();
    assert_eq!(accepted as usize, 4 * PER_SERIES);

    let mut checks: Vec<(Option<&str>, Vec<i64>)> = per_series.into_iter().map(|(r, v)| (Some(r), v)).collect();
    checks.push((None, all));
    for (release, mut values) in checks {
        values.sort_unstable();
        let mut req = stats_request("accuracy", at - 60 * SEC, now());
        req.percentiles = PERCENTILES.to_vec();
        if let Some(r) = release {
            req.filter = labels(&[("release", r)]);
        }
        let s = stats(&mut app.query, req).await;
        assert_eq!(s.count as usize, values.len(), "{release:?}: count is exact");
        assert_eq!(
            us(&s.total_time),
            values.iter().sum::<i64>(),
            "{release:?}: total time is exact"
        );
        // 2 significant digits: every value within 1% (HDR's bins are at most 1/128 wide).
        let tolerance = 10f64.powi(-(s.significant_digits as i32));
        for p in &s.percentiles {
            let got = us(&p.value);
            let exact = exact_quantile(&values, p.percentile);
            let err = (got - exact).abs() as f64 / exact as f64;
            assert!(
                err <= tolerance,
                "{release:?} p{}: got {got} µs, exact {exact} µs, error {:.3}% > {:.1}%",
                p.percentile,
                err * 100.0,
                tolerance * 100.0
            );
        }
        let min = us(&s.min);
        let max = us(&s.max);
        assert!(
            (min - values[0]).abs() as f64 <= values[0] as f64 * tolerance + 1.0,
            "min {min} vs {}",
            values[0]
        );
        let top = values[values.len() - 1];
        assert!((max - top).abs() as f64 <= top as f64 * tolerance, "max {max} vs {top}");
    }
    app.stop().await;
}
