//! Release gates end to end: EvaluateGate over both stores on seeded lognormal data for
//! every verdict path (PASS, FAIL on durations, FAIL on success, INCONCLUSIVE below the
//! minimum and without data, several tasks, bad requests), and `tasktime gate` as a real
//! process: exit codes and output formats.

use std::process::Output;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rand_distr::{Distribution as _, LogNormal};
use tasktime::pb;
use tasktime::pb::gate_service_client::GateServiceClient;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

use crate::helpers::*;

crate::both_stores!(
    the_same_distribution_passes,
    a_slower_candidate_fails,
    an_absolute_allowance_fails_beyond_it_and_passes_within_it,
    a_success_rate_drop_fails,
    an_abandonment_rise_fails_once_it_is_known,
    an_arm_below_min_samples_is_inconclusive,
    an_arm_without_data_is_inconclusive_never_pass,
    several_tasks_share_one_verdict,
    a_bad_request_names_every_bad_field,
);

/// Median duration of the generated tasks, seconds, and their spread (p90/p50 = 1.9).
const MEDIAN_S: f64 = 30.0;
const SIGMA: f64 = 0.5;

type Gate = GateServiceClient<Channel>;

fn gate_client(app: &TestApp) -> Gate {
    GateServiceClient::new(app.channel.clone())
}

/// One arm's data: `n` completed instances of `task` labelled `release`, lognormal
/// durations (median 30 s, σ 0.5) times `scale`, a fraction `failed` of them failed;
/// finished at random times `ago` (default: in the last 50 minutes); plus `abandoned`
/// starts at such times that never finish.
struct Arm<'a> {
    task: &'a str,
    release: &'a str,
    n: usize,
    scale: f64,
    failed: f64,
    abandoned: usize,
    ago: std::ops::Range<i64>,
    seed: u64,
}

impl Arm<'_> {
    fn new<'a>(task: &'a str, release: &'a str, n: usize, seed: u64) -> Arm<'a> {
        Arm {
            task,
            release,
            n,
            scale: 1.0,
            failed: 0.0,
            abandoned: 0,
            ago: 10 * SEC..3000 * SEC,
            seed,
        }
    }

    fn abandoned(self, abandoned: usize) -> Self {
        Arm { abandoned, ..self }
    }

    fn ago(self, ago: std::ops::Range<i64>) -> Self {
        Arm { ago, ..self }
    }

    fn scale(self, scale: f64) -> Self {
        Arm { scale, ..self }
    }

    fn failed(self, failed: f64) -> Self {
        Arm { failed, ..self }
    }
}

/// What [`seed`] sent for one arm, to check the gate's figures against.
struct Seeded {
    /// Durations of the succeeded instances, µs, in the order sent.
    succeeded: Vec<i64>,
    /// Instances finished as failed.
    failed: usize,
    /// Starts that never finish.
    abandoned: usize,
}

impl Seeded {
    /// Every instance: what the gate counts as the arm's volume.
    fn instances(&self) -> usize {
        self.succeeded.len() + self.failed + self.abandoned
    }

    /// Mean duration of the succeeded instances, seconds, from the exact values sent.
    fn mean_seconds(&self) -> f64 {
        self.succeeded.iter().sum::<i64>() as f64 / self.succeeded.len() as f64 / 1e6
    }

    /// The percentile as an HDR histogram reads it from the raw values: the sample at
    /// rank ⌈q·n⌉, seconds, before bin rounding.
    fn percentile_seconds(&self, percentile: f64) -> f64 {
        let mut sorted = self.succeeded.clone();
        sorted.sort_unstable();
        let n = sorted.len();
        let rank = ((percentile / 100.0 * n as f64).ceil() as usize).clamp(1, n);
        sorted[rank - 1] as f64 / 1e6
    }
}

/// Relative width of an HDR bin at the default 2 significant digits: values from 128·2^k
/// to 256·2^k share bins 2^k wide, so a reported value (its bin's highest equivalent) is at
/// most 1/128 above the raw sample, and never below it.
const HDR_RELATIVE_WIDTH: f64 = 1.0 / 128.0;

/// Asserts that `reported` (seconds) is the raw value `raw` rounded up to its HDR bin.
#[track_caller]
fn assert_hdr_rounding(reported: f64, raw: f64, what: &str) {
    assert!(
        raw - 1e-6 <= reported && reported <= raw * (1.0 + HDR_RELATIVE_WIDTH) + 1e-6,
        "{what}: reported {reported} s is not the raw {raw} s rounded up to its bin"
    );
}

async fn seed(app: &mut TestApp, arms: &[Arm<'_>]) -> Vec<Seeded> {
    let now = now();
    let mut seeded = Vec::with_capacity(arms.len());
    for arm in arms {
        let mut rng = StdRng::seed_from_u64(arm.seed);
        let dist = LogNormal::new((MEDIAN_S * 1e6).ln(), SIGMA).expect("lognormal");
        let mut events: Vec<pb::TaskEvent> = (0..arm.n)
            .map(|i| {
                let duration = ((dist.sample(&mut rng) * arm.scale) as i64).max(1);
                let at = now - rng.random_range(arm.ago.clone());
                let outcome = if rng.random_bool(arm.failed) {
                    pb::Outcome::Failed
                } else {
                    pb::Outcome::Succeeded
                };
                let id = format!("{}-{}-{i}", arm.release, arm.seed);
                completed(arm.task, &id, at, duration, outcome, &[("release", arm.release)])
            })
            .collect();
        events.extend((0..arm.abandoned).map(|i| {
            let at = now - rng.random_range(arm.ago.clone());
            let id = format!("{}-{}-abandoned-{i}", arm.release, arm.seed);
            start(arm.task, &id, at, &[("release", arm.release)])
        }));
        for chunk in events.chunks(5_000) {
            let r = record(&mut app.ingest, chunk.to_vec()).await;
            assert_eq!(r.accepted as usize, chunk.len(), "{:?}", r.rejected.first());
        }
        let mut sent = Seeded {
            succeeded: Vec::new(),
            failed: 0,
            abandoned: arm.abandoned,
        };
        for event in &events {
            if let Some(pb::task_event::Kind::Completed(c)) = &event.kind {
                match c.outcome() {
                    pb::Outcome::Succeeded => sent.succeeded.push(us(&c.duration)),
                    _ => sent.failed += 1,
                }
            }
        }
        seeded.push(sent);
    }
    seeded
}

fn selector(release: &str) -> Option<pb::Selector> {
    Some(pb::Selector {
        filter: labels(&[("release", release)]),
        from: None,
        to: None,
    })
}

fn p(percentile: f64, ratio: Option<f64>, absolute_s: Option<i64>) -> pb::PercentileCriterion {
    pb::PercentileCriterion {
        percentile,
        max_increase_ratio: ratio,
        max_increase: absolute_s.map(|s| prost_types::Duration { seconds: s, nanos: 0 }),
    }
}

/// A criterion with only an absolute allowance, in milliseconds.
fn p_abs_ms(percentile: f64, ms: i64) -> pb::PercentileCriterion {
    pb::PercentileCriterion {
        percentile,
        max_increase_ratio: None,
        max_increase: Some(dur(ms * 1000)),
    }
}

/// A gate of `tasks` from release `baseline` to `candidate`: p90 at most +10%, p99 (96 s)
/// at most +30 s, success at most 2 pp lower; default min_samples and confidence.
fn gate_request(tasks: &[&str], baseline: &str, candidate: &str) -> pb::EvaluateGateRequest {
    pb::EvaluateGateRequest {
        tasks: tasks.iter().map(|t| t.to_string()).collect(),
        baseline: selector(baseline),
        candidate: selector(candidate),
        percentiles: vec![p(90.0, Some(0.10), None), p(99.0, None, Some(30))],
        max_success_drop_pp: Some(2.0),
        max_abandonment_rise_pp: None,
        min_samples: 0,
        confidence: 0.0,
    }
}

async fn evaluate(gate: &mut Gate, request: pb::EvaluateGateRequest) -> pb::GateVerdict {
    gate.evaluate_gate(request)
        .await
        .expect("EvaluateGate succeeds")
        .into_inner()
}

fn criterion<'a>(v: &'a pb::GateVerdict, task: &str, kind: pb::CriterionKind) -> &'a pb::CriterionResult {
    v.criteria
        .iter()
        .find(|c| c.task == task && c.kind() == kind)
        .unwrap_or_else(|| panic!("no {kind:?} result for {task} in {v:#?}"))
}

fn task<'a>(v: &'a pb::GateVerdict, name: &str) -> &'a pb::TaskVerdict {
    v.tasks
        .iter()
        .find(|t| t.task == name)
        .unwrap_or_else(|| panic!("no verdict for {name}"))
}

/// Length of the candidate window the gate read (echoed in the verdict), seconds. The
/// default window is the 24 h before now, widened to whole minutes.
fn candidate_window_secs(v: &pb::GateVerdict) -> f64 {
    let c = v.candidate.as_ref().expect("candidate echoed");
    let (from, to) = (
        c.from.as_ref().expect("candidate.from"),
        c.to.as_ref().expect("candidate.to"),
    );
    let secs = (to.seconds - from.seconds) as f64 + f64::from(to.nanos - from.nanos) / 1e9;
    assert!((86_400.0..=86_520.0).contains(&secs), "candidate window {secs} s");
    secs
}

/// Checks the task's customer time against the values `seed` sent, by the formula of
/// `src/gate.rs`: (candidate mean − baseline mean duration of the successes) × the
/// candidate's instances (every outcome) per week of its window, in hours. Means come
/// from the exact sums the store keeps, not from HDR bins, so the tolerance is float
/// rounding only.
#[track_caller]
fn assert_customer_time(v: &pb::GateVerdict, task_name: &str, baseline: &Seeded, candidate: &Seeded) {
    let t = task(v, task_name);
    assert_eq!(
        (t.baseline_instances, t.candidate_instances),
        (baseline.instances() as u64, candidate.instances() as u64),
        "{t:?}"
    );
    let mean_delta = candidate.mean_seconds() - baseline.mean_seconds();
    assert!(
        (t.mean_delta_seconds - mean_delta).abs() < 1e-6,
        "{t:?} vs {mean_delta}"
    );
    let per_week = candidate.instances() as f64 / candidate_window_secs(v) * 604_800.0;
    let hours = mean_delta * per_week / 3600.0;
    assert!(t.has_customer_hours, "{t:?}");
    assert!(
        (t.customer_hours_per_week - hours).abs() <= 1e-9 * hours.abs().max(1.0),
        "customer-hours {} vs {hours} computed from the data",
        t.customer_hours_per_week
    );
}

async fn the_same_distribution_passes(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let arms = seed(
        &mut app,
        &[
            Arm::new("checkout", "1", 4_000, 1).failed(0.02),
            Arm::new("checkout", "2", 4_000, 2).failed(0.02),
        ],
    )
    .await;
    let v = evaluate(&mut gate_client(&app), gate_request(&["checkout"], "1", "2")).await;
    assert_eq!(v.verdict(), pb::Verdict::Pass, "{v:#?}");
    assert_eq!((v.confidence, v.min_samples), (0.95, 100));
    assert_eq!(
        v.baseline.as_ref().expect("baseline echoed").filter,
        labels(&[("release", "1")])
    );
    assert_eq!(v.criteria.len(), 3);
    for c in &v.criteria {
        assert_eq!(c.verdict(), pb::Verdict::Pass, "{}", c.reason);
        assert!(c.has_interval && c.has_change, "{c:?}");
        assert!(c.change_lower <= c.change && c.change <= c.change_upper, "{c:?}");
        assert!(c.change_upper <= c.allowance, "{c:?}");
        assert!(c.reason.contains("within the allowed"), "{}", c.reason);
    }
    let p90 = criterion(&v, "checkout", pb::CriterionKind::PercentileRelative);
    assert_eq!(
        (p90.unit.as_str(), p90.value_unit.as_str(), p90.percentile),
        ("ratio", "s", 90.0)
    );
    // The true p90 is 30 s · e^(0.5 · 1.2816) = 56.9 s.
    assert!((p90.baseline_value - 56.9).abs() < 5.0, "{p90:?}");
    assert!((3_800..=4_000).contains(&p90.baseline_samples), "{p90:?}");
    let p99 = criterion(&v, "checkout", pb::CriterionKind::PercentileAbsolute);
    assert_eq!((p99.unit.as_str(), p99.allowance), ("s", 30.0));
    let success = criterion(&v, "checkout", pb::CriterionKind::SuccessRate);
    assert_eq!((success.unit.as_str(), success.value_unit.as_str()), ("pp", "%"));
    assert_eq!(success.baseline_samples, 4_000);
    assert!((success.baseline_value - 98.0).abs() < 1.0, "{success:?}");
    let t = task(&v, "checkout");
    assert_eq!(
        (t.verdict(), t.baseline_instances, t.candidate_instances),
        (pb::Verdict::Pass, 4_000, 4_000)
    );
    assert!(t.has_customer_hours && t.mean_delta_seconds.abs() < 3.0, "{t:?}");
    // 2% failed: the volume counts them, the mean duration does not.
    assert!(arms[1].failed > 0 && arms[1].instances() == 4_000);
    assert_customer_time(&v, "checkout", &arms[0], &arms[1]);
    app.stop().await;
}

async fn a_slower_candidate_fails(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let arms = seed(
        &mut app,
        &[
            Arm::new("checkout", "1", 3_000, 3),
            Arm::new("checkout", "2", 3_000, 4).scale(1.5),
        ],
    )
    .await;
    let v = evaluate(&mut gate_client(&app), gate_request(&["checkout"], "1", "2")).await;
    assert_eq!(v.verdict(), pb::Verdict::Fail, "{v:#?}");
    let p90 = criterion(&v, "checkout", pb::CriterionKind::PercentileRelative);
    assert_eq!(p90.verdict(), pb::Verdict::Fail, "{}", p90.reason);
    assert!(p90.change_lower > 0.10 && (p90.change - 0.5).abs() < 0.1, "{p90:?}");
    assert!(p90.reason.starts_with("p90 rose"), "{}", p90.reason);
    assert!(p90.reason.ends_with("beyond the allowed +10%"), "{}", p90.reason);
    // p90 57 s → 85 s: each customer at p90 loses about 28 s per task.
    assert!((20.0..36.0).contains(&p90.delta_seconds_per_task), "{p90:?}");
    // Exactly the raw percentiles of the data sent, up to HDR bin rounding (each value
    // rounds up by at most 1/128, so their difference moves by at most that of the larger).
    let (b90, c90) = (arms[0].percentile_seconds(90.0), arms[1].percentile_seconds(90.0));
    assert_hdr_rounding(p90.baseline_value, b90, "baseline p90");
    assert_hdr_rounding(p90.candidate_value, c90, "candidate p90");
    assert!(
        (p90.delta_seconds_per_task - (c90 - b90)).abs() <= c90.max(b90) * HDR_RELATIVE_WIDTH + 1e-6,
        "{p90:?} vs raw {b90} s → {c90} s"
    );
    // p99 96 s → 144 s against +30 s allowed: clearly a rise, but p99 from 3000 samples
    // is too imprecise to say it is beyond 30 s for sure. Never PASS.
    let p99 = criterion(&v, "checkout", pb::CriterionKind::PercentileAbsolute);
    assert_ne!(p99.verdict(), pb::Verdict::Pass, "{}", p99.reason);
    assert!(p99.change_lower > 0.0 && p99.change > 30.0, "{p99:?}");
    // Nothing failed: success is unchanged and passes.
    let success = criterion(&v, "checkout", pb::CriterionKind::SuccessRate);
    assert_eq!(success.verdict(), pb::Verdict::Pass, "{}", success.reason);
    let t = task(&v, "checkout");
    assert_eq!(t.verdict(), pb::Verdict::Fail);
    // Mean 33.9 s → 50.8 s for 3000 instances in the 24 h window: 3000 × 7 a week, each
    // about 17 s slower, is about 100 customer-hours lost per week.
    assert!((12.0..22.0).contains(&t.mean_delta_seconds), "{t:?}");
    assert!((60.0..130.0).contains(&t.customer_hours_per_week), "{t:?}");
    assert_customer_time(&v, "checkout", &arms[0], &arms[1]);
    app.stop().await;
}

async fn an_absolute_allowance_fails_beyond_it_and_passes_within_it(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let arms = seed(
        &mut app,
        &[
            Arm::new("checkout", "1", 3_000, 30),
            Arm::new("checkout", "2", 3_000, 31).scale(1.5),
            Arm::new("checkout", "3", 3_000, 32).scale(1.2),
        ],
    )
    .await;
    let mut gate = gate_client(&app);
    let absolute_gate = |candidate: &str, p90_ms: i64, p99_ms: i64| pb::EvaluateGateRequest {
        percentiles: vec![p_abs_ms(90.0, p90_ms), p_abs_ms(99.0, p99_ms)],
        max_success_drop_pp: None,
        ..gate_request(&["checkout"], "1", candidate)
    };
    // Each absolute check against the data sent: values are the raw percentiles rounded
    // up to their HDR bins, the change is their difference in seconds, the interval holds
    // it, and the allowance comes back in seconds as sent.
    let check = |v: &pb::GateVerdict, percentile: f64, allowance_s: f64, candidate: &Seeded| {
        let c = v
            .criteria
            .iter()
            .find(|c| c.kind() == pb::CriterionKind::PercentileAbsolute && c.percentile == percentile)
            .unwrap_or_else(|| panic!("no absolute p{percentile} check in {v:#?}"));
        assert_eq!(
            (c.percentile, c.unit.as_str(), c.value_unit.as_str()),
            (percentile, "s", "s")
        );
        assert_eq!(c.allowance, allowance_s, "{c:?}");
        assert_eq!((c.baseline_samples, c.candidate_samples), (3_000, 3_000), "{c:?}");
        let (b_raw, c_raw) = (
            arms[0].percentile_seconds(percentile),
            candidate.percentile_seconds(percentile),
        );
        assert_hdr_rounding(c.baseline_value, b_raw, "baseline");
        assert_hdr_rounding(c.candidate_value, c_raw, "candidate");
        assert!(c.has_change && c.has_interval, "{c:?}");
        assert!(
            (c.change - (c.candidate_value - c.baseline_value)).abs() < 1e-6,
            "{c:?}"
        );
        assert!((c.delta_seconds_per_task - c.change).abs() < 1e-6, "{c:?}");
        assert!(c.change_lower <= c.change && c.change <= c.change_upper, "{c:?}");
        c.clone()
    };

    // 1.5 times slower: p90 57 s → 85 s (+28 s) against +2.5 s allowed, p99 96 s → 144 s
    // (+48 s) against +10 s. The change's lower bound is beyond each allowance: FAIL, and
    // the reason names the allowance in the unit it was given.
    let v = evaluate(&mut gate, absolute_gate("2", 2_500, 10_000)).await;
    assert_eq!(v.verdict(), pb::Verdict::Fail, "{v:#?}");
    assert_eq!(task(&v, "checkout").verdict(), pb::Verdict::Fail);
    assert_eq!(v.criteria.len(), 2, "{v:#?}");
    for (percentile, allowance, allowed) in [(90.0, 2.5, "+2.5 s"), (99.0, 10.0, "+10 s")] {
        let c = check(&v, percentile, allowance, &arms[1]);
        assert_eq!(c.verdict(), pb::Verdict::Fail, "{}", c.reason);
        assert!(c.change_lower > allowance, "{c:?}");
        assert!(c.reason.starts_with(&format!("p{percentile} rose ")), "{}", c.reason);
        assert!(c.reason.contains("one-sided 95% bounds"), "{}", c.reason);
        assert!(
            c.reason.ends_with(&format!("beyond the allowed {allowed}")),
            "{}",
            c.reason
        );
    }
    let p90 = check(&v, 90.0, 2.5, &arms[1]);
    assert!((20.0..36.0).contains(&p90.change), "{p90:?}");

    // 1.2 times slower: p90 +11 s against +30 s allowed, p99 +19 s against +60 s. A rise,
    // but the upper bound is within each allowance: PASS.
    let v = evaluate(&mut gate, absolute_gate("3", 30_000, 60_000)).await;
    assert_eq!(v.verdict(), pb::Verdict::Pass, "{v:#?}");
    for (percentile, allowance, allowed) in [(90.0, 30.0, "+30 s"), (99.0, 60.0, "+60 s")] {
        let c = check(&v, percentile, allowance, &arms[2]);
        assert_eq!(c.verdict(), pb::Verdict::Pass, "{}", c.reason);
        assert!(c.change > 0.0 && c.change_upper <= allowance, "{c:?}");
        assert!(
            c.reason.ends_with(&format!("within the allowed {allowed}")),
            "{}",
            c.reason
        );
    }

    // The same data with allowances just below the rise cannot PASS: the verdict follows
    // the allowance sent, not a default.
    let v = evaluate(&mut gate, absolute_gate("3", 500, 1_000)).await;
    assert_eq!(v.verdict(), pb::Verdict::Fail, "{v:#?}");
    let p90 = check(&v, 90.0, 0.5, &arms[2]);
    assert!(p90.reason.ends_with("beyond the allowed +500 ms"), "{}", p90.reason);

    // Relative and absolute on one percentile are two checks; either failing fails the
    // gate. p90 +20% breaks +5% while +11 s keeps within +30 s.
    let mut request = absolute_gate("3", 30_000, 60_000);
    request.percentiles = vec![p(90.0, Some(0.05), Some(30))];
    let v = evaluate(&mut gate, request).await;
    assert_eq!(v.verdict(), pb::Verdict::Fail, "{v:#?}");
    let relative = criterion(&v, "checkout", pb::CriterionKind::PercentileRelative);
    assert_eq!(relative.verdict(), pb::Verdict::Fail, "{}", relative.reason);
    assert!(
        relative.reason.starts_with("relative check: p90 rose") && relative.reason.ends_with("beyond the allowed +5%"),
        "{}",
        relative.reason
    );
    let absolute = check(&v, 90.0, 30.0, &arms[2]);
    assert_eq!(absolute.verdict(), pb::Verdict::Pass, "{}", absolute.reason);
    assert!(
        absolute.reason.starts_with("absolute check: p90 rose")
            && absolute.reason.ends_with("within the allowed +30 s"),
        "{}",
        absolute.reason
    );
    app.stop().await;
}

async fn a_success_rate_drop_fails(backend: Backend) {
    let mut app = spawn_app(backend).await;
    seed(
        &mut app,
        &[
            Arm::new("checkout", "1", 3_000, 5).failed(0.02),
            Arm::new("checkout", "2", 3_000, 6).failed(0.10),
        ],
    )
    .await;
    let mut request = gate_request(&["checkout"], "1", "2");
    request.max_success_drop_pp = Some(1.0);
    let v = evaluate(&mut gate_client(&app), request).await;
    assert_eq!(v.verdict(), pb::Verdict::Fail, "{v:#?}");
    let success = criterion(&v, "checkout", pb::CriterionKind::SuccessRate);
    assert_eq!(success.verdict(), pb::Verdict::Fail, "{}", success.reason);
    assert!(
        (success.change - 8.0).abs() < 2.0 && success.change_lower > 1.0,
        "{success:?}"
    );
    assert!(success.reason.starts_with("success rate fell"), "{}", success.reason);
    assert!(
        success.reason.ends_with("beyond the allowed drop of 1 pp"),
        "{}",
        success.reason
    );
    // The durations of the successes did not change.
    let p90 = criterion(&v, "checkout", pb::CriterionKind::PercentileRelative);
    assert_eq!(p90.verdict(), pb::Verdict::Pass, "{}", p90.reason);
    app.stop().await;
}

async fn an_abandonment_rise_fails_once_it_is_known(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let hours_ago = 2 * 3600 * SEC..3 * 3600 * SEC;
    seed(
        &mut app,
        &[
            Arm::new("checkout", "1", 2_000, 15)
                .abandoned(20)
                .ago(hours_ago.clone()),
            Arm::new("checkout", "2", 2_000, 16).abandoned(300).ago(hours_ago),
            // Started in the last 50 minutes and not finished (yet): not abandoned, and
            // not counted either way until abandon_after (1 h) has passed.
            Arm::new("checkout", "2", 0, 17).abandoned(500),
        ],
    )
    .await;
    let mut gate = gate_client(&app);
    let mut request = gate_request(&["checkout"], "1", "2");
    request.max_abandonment_rise_pp = Some(2.0);
    let v = evaluate(&mut gate, request.clone()).await;
    assert_eq!(v.verdict(), pb::Verdict::Fail, "{v:#?}");
    let abandonment = criterion(&v, "checkout", pb::CriterionKind::AbandonmentRate);
    assert_eq!(abandonment.verdict(), pb::Verdict::Fail, "{}", abandonment.reason);
    assert_eq!(
        (abandonment.baseline_samples, abandonment.candidate_samples),
        (2_020, 2_300)
    );
    // 20 / 2020 = 0.99% → 300 / 2300 = 13.04%.
    assert!((abandonment.change - 12.05).abs() < 0.01, "{abandonment:?}");
    assert!(
        abandonment.reason.starts_with("abandonment rate rose 12.05 pp"),
        "{}",
        abandonment.reason
    );
    assert!(
        abandonment
            .reason
            .contains("abandonment is known only for starts at least 1h old"),
        "{}",
        abandonment.reason
    );
    // The durations did not change.
    let p90 = criterion(&v, "checkout", pb::CriterionKind::PercentileRelative);
    assert_eq!(p90.verdict(), pb::Verdict::Pass, "{}", p90.reason);

    // A candidate window that began 30 minutes ago cannot know its abandonment yet:
    // INCONCLUSIVE, not the PASS that "no abandonment so far" would suggest.
    request.candidate.as_mut().expect("candidate").from = Some(ts(now() - 1800 * SEC));
    request.percentiles.clear();
    request.max_success_drop_pp = None;
    let v = evaluate(&mut gate, request).await;
    assert_eq!(v.verdict(), pb::Verdict::Inconclusive, "{v:#?}");
    let abandonment = criterion(&v, "checkout", pb::CriterionKind::AbandonmentRate);
    assert!(
        abandonment
            .reason
            .starts_with("the candidate window starts too recently"),
        "{}",
        abandonment.reason
    );
    app.stop().await;
}

async fn an_arm_below_min_samples_is_inconclusive(backend: Backend) {
    let mut app = spawn_app(backend).await;
    // Twice as slow, but only 150 instances against a minimum of 200: no verdict.
    seed(
        &mut app,
        &[
            Arm::new("checkout", "1", 3_000, 7),
            Arm::new("checkout", "2", 150, 8).scale(2.0),
        ],
    )
    .await;
    let mut request = gate_request(&["checkout"], "1", "2");
    request.min_samples = 200;
    let v = evaluate(&mut gate_client(&app), request).await;
    assert_eq!(v.verdict(), pb::Verdict::Inconclusive, "{v:#?}");
    assert_eq!(v.min_samples, 200);
    for c in &v.criteria {
        assert_eq!(c.verdict(), pb::Verdict::Inconclusive, "{}", c.reason);
        assert!(!c.has_interval);
        assert_eq!(c.candidate_samples, 150);
    }
    let p90 = criterion(&v, "checkout", pb::CriterionKind::PercentileRelative);
    assert_eq!(
        p90.reason,
        "candidate has 150 samples; at least 200 are needed (baseline has 3000)"
    );
    // The values are still reported, to show what the data say so far.
    assert!(p90.has_change && p90.candidate_value > p90.baseline_value, "{p90:?}");
    app.stop().await;
}

async fn an_arm_without_data_is_inconclusive_never_pass(backend: Backend) {
    let mut app = spawn_app(backend).await;
    seed(&mut app, &[Arm::new("checkout", "1", 2_000, 9)]).await;
    let mut gate = gate_client(&app);
    // Allowances so generous that any data would pass them.
    let mut request = gate_request(&["checkout"], "1", "2");
    request.percentiles = vec![p(90.0, Some(100.0), Some(3600))];
    request.max_success_drop_pp = Some(100.0);
    request.max_abandonment_rise_pp = Some(100.0);
    let v = evaluate(&mut gate, request.clone()).await;
    assert_eq!(v.verdict(), pb::Verdict::Inconclusive, "{v:#?}");
    assert_eq!(v.criteria.len(), 4);
    for c in &v.criteria {
        assert_eq!(c.verdict(), pb::Verdict::Inconclusive, "{}", c.reason);
        assert_eq!((c.candidate_samples, c.has_interval), (0, false));
        if c.kind() == pb::CriterionKind::AbandonmentRate {
            // Read up to an hour ago only, where neither arm has data.
            assert!(
                c.reason
                    .starts_with("baseline and candidate have no data (abandonment is known"),
                "{}",
                c.reason
            );
        } else {
            assert!(c.reason.ends_with("candidate has no data"), "{}", c.reason);
        }
    }
    assert!(!task(&v, "checkout").has_customer_hours);
    // A task nobody reported: both arms empty.
    request.tasks = vec!["never-seen".into()];
    let v = evaluate(&mut gate, request).await;
    assert_eq!(v.verdict(), pb::Verdict::Inconclusive, "{v:#?}");
    let success = criterion(&v, "never-seen", pb::CriterionKind::SuccessRate);
    assert_eq!(success.reason, "baseline and candidate have no data");
    app.stop().await;
}

async fn several_tasks_share_one_verdict(backend: Backend) {
    let mut app = spawn_app(backend).await;
    seed(
        &mut app,
        &[
            Arm::new("checkout", "1", 2_500, 10),
            Arm::new("checkout", "2", 2_500, 11),
            Arm::new("search", "1", 2_500, 12),
            Arm::new("search", "2", 2_500, 13).scale(1.5),
            Arm::new("login", "1", 2_500, 14),
        ],
    )
    .await;
    let mut gate = gate_client(&app);
    let verdict_of = |v: &pb::GateVerdict| {
        let mut tasks: Vec<_> = v.tasks.iter().map(|t| (t.task.clone(), t.verdict())).collect();
        tasks.sort();
        (v.verdict(), tasks)
    };
    use pb::Verdict::{Fail, Inconclusive, Pass};
    let s = |t: &str| t.to_string();

    let v = evaluate(&mut gate, gate_request(&["checkout"], "1", "2")).await;
    assert_eq!(verdict_of(&v), (Pass, vec![(s("checkout"), Pass)]), "{v:#?}");

    let v = evaluate(&mut gate, gate_request(&["checkout", "login"], "1", "2")).await;
    assert_eq!(
        verdict_of(&v),
        (Inconclusive, vec![(s("checkout"), Pass), (s("login"), Inconclusive)]),
        "{v:#?}"
    );

    let v = evaluate(&mut gate, gate_request(&["checkout", "search", "login"], "1", "2")).await;
    assert_eq!(
        verdict_of(&v),
        (
            Fail,
            vec![(s("checkout"), Pass), (s("login"), Inconclusive), (s("search"), Fail)]
        ),
        "{v:#?}"
    );
    // Every task's checks are listed under its name.
    assert_eq!(v.criteria.len(), 9);
    assert!(
        v.criteria
            .iter()
            .filter(|c| c.task == "search")
            .all(|c| c.kind() != pb::CriterionKind::Unspecified)
    );
    app.stop().await;
}

async fn a_bad_request_names_every_bad_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut gate = gate_client(&app);
    let t = now();
    let request = pb::EvaluateGateRequest {
        tasks: vec!["checkout".into(), "Check Out".into()],
        baseline: Some(pb::Selector {
            filter: labels(&[("release", "1")]),
            from: Some(ts(t)),
            to: Some(ts(t - 3600 * SEC)),
        }),
        candidate: selector("2"),
        percentiles: vec![p(100.0, Some(0.1), None), p(90.0, None, None)],
        max_success_drop_pp: Some(-1.0),
        max_abandonment_rise_pp: None,
        min_samples: 0,
        confidence: 1.5,
    };
    let status = gate.evaluate_gate(request).await.expect_err("a bad request is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let fields: Vec<String> = status
        .get_details_bad_request()
        .expect("BadRequest details")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        [
            "tasks[1]",
            "baseline.from",
            "percentiles[0].percentile",
            "percentiles[1]",
            "max_success_drop_pp",
            "confidence"
        ]
    );
    assert!(
        status.message().contains("percentile 100 is outside (0, 100)"),
        "{}",
        status.message()
    );

    // No tasks, no arms, no criteria.
    let status = gate
        .evaluate_gate(pb::EvaluateGateRequest::default())
        .await
        .expect_err("an empty request is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let fields: Vec<String> = status
        .get_details_bad_request()
        .expect("BadRequest details")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["tasks", "baseline", "candidate", "percentiles"]);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------
// `tasktime gate` as a process
// ---------------------------------------------------------------------------------------

async fn tasktime_gate(server: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tasktime"));
    // Nothing from the environment of the test run may change the flags.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TASKTIME_") {
            cmd.env_remove(key);
        }
    }
    cmd.arg("gate")
        .args(args)
        .args(["--server", server])
        .env("RUST_LOG", "warn");
    cmd.output().await.expect("run tasktime gate")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

/// Checks that `xml` is well-formed as far as a report needs: one XML declaration,
/// balanced and properly nested elements, quoted attributes, and no `&` or `<` outside
/// tags and entities. Returns the element names in document order.
fn check_xml(xml: &str) -> Vec<String> {
    let body = xml
        .trim_start()
        .strip_prefix(r#"<?xml version="1.0" encoding="UTF-8"?>"#)
        .expect("an XML declaration");
    let mut open: Vec<String> = Vec::new();
    let mut names = Vec::new();
    let mut rest = body;
    while let Some(lt) = rest.find('<') {
        check_text(&rest[..lt]);
        let gt = rest[lt..].find('>').expect("every tag is closed") + lt;
        let tag = &rest[lt + 1..gt];
        assert!(!tag.contains('<'), "`<` inside a tag: {tag}");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(open.pop().as_deref(), Some(name), "mismatched </{name}>");
        } else {
            let self_closing = tag.ends_with('/');
            let tag = tag.trim_end_matches('/');
            let name = tag.split_whitespace().next().expect("element name").to_owned();
            let attributes = &tag[name.len()..];
            assert_eq!(attributes.matches('"').count() % 2, 0, "unbalanced quotes in <{tag}>");
            for value in attributes.split('"').skip(1).step_by(2) {
                check_text(value);
            }
            names.push(name.clone());
            if !self_closing {
                open.push(name);
            }
        }
        rest = &rest[gt + 1..];
    }
    check_text(rest);
    assert!(open.is_empty(), "unclosed elements: {open:?}");
    names
}

fn check_text(text: &str) {
    assert!(!text.contains('>'), "raw `>` in text: {text}");
    for (i, _) in text.match_indices('&') {
        let entity = &text[i..text[i..].find(';').map_or(text.len(), |e| i + e + 1)];
        let known = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&entity)
            || (entity.starts_with("&#") && entity[2..entity.len() - 1].chars().all(|c| c.is_ascii_digit()));
        assert!(known, "bare `&` in text: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_command_exits_with_its_verdict_in_every_format() {
    let mut app = spawn_app(Backend::Memory).await;
    seed(
        &mut app,
        &[
            Arm::new("checkout", "1", 2_000, 20),
            Arm::new("checkout", "2", 2_000, 21),
            Arm::new("checkout", "3", 2_000, 22).scale(1.5),
            Arm::new("checkout", "4", 50, 23),
            // Old enough (2 to 3 h) for their abandonment to be known: 20 of 2020 and
            // 300 of 2300 instances abandoned, 0.99% → 13.04%.
            Arm::new("checkout", "5", 2_000, 24)
                .abandoned(20)
                .ago(2 * 3600 * SEC..3 * 3600 * SEC),
            Arm::new("checkout", "6", 2_000, 25)
                .abandoned(300)
                .ago(2 * 3600 * SEC..3 * 3600 * SEC),
        ],
    )
    .await;
    let server = format!("http://{}", app.addr);
    let gate = |candidate: &'static str, extra: &'static [&'static str]| {
        let server = server.clone();
        async move {
            let candidate = format!("release={candidate}");
            let mut args = vec![
                "--task",
                "checkout",
                "--baseline",
                "release=1",
                "--candidate",
                &candidate,
                "--max-increase",
                "p90=10%",
                "--max-increase",
                "p99=30s",
                "--max-success-drop",
                "1pp",
            ];
            args.extend_from_slice(extra);
            tasktime_gate(&server, &args).await
        }
    };

    // Same distribution: PASS, exit 0, a readable table.
    let out = gate("2", &[]).await;
    assert_eq!(code(&out), 0, "{out:?}");
    let text = stdout(&out);
    assert!(text.starts_with("gate        PASS"), "{text}");
    assert!(
        text.contains("p90 duration (relative)") && text.contains("p99 duration (absolute)"),
        "{text}"
    );

    // 1.5 times slower: FAIL, exit 1, whatever the format.
    let out = gate("3", &[]).await;
    assert_eq!(code(&out), 1, "{out:?}");
    assert!(stdout(&out).contains("beyond the allowed +10%"));

    let out = gate("3", &["--format", "junit"]).await;
    assert_eq!(code(&out), 1, "{out:?}");
    let xml = stdout(&out);
    let elements = check_xml(&xml);
    assert_eq!(elements.iter().filter(|e| *e == "testcase").count(), 3, "{xml}");
    assert!(elements.contains(&"failure".to_owned()), "{xml}");
    assert!(
        xml.contains(r#"classname="tasktime.gate.checkout" name="p90 duration (relative)""#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"failures="1""#) || xml.contains(r#"failures="2""#),
        "{xml}"
    );

    let out = gate("3", &["--format", "json"]).await;
    assert_eq!(code(&out), 1, "{out:?}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON output");
    assert_eq!(json["verdict"], "VERDICT_FAIL");
    assert_eq!(json["criteria"][0]["kind"], "CRITERION_KIND_PERCENTILE_RELATIVE");
    assert_eq!(json["baseline"]["filter"]["release"], "1");

    // 50 instances: INCONCLUSIVE, exit 3 unless --inconclusive-as maps it.
    let out = gate("4", &[]).await;
    assert_eq!(code(&out), 3, "{out:?}");
    assert_eq!(code(&gate("4", &["--inconclusive-as", "fail"]).await), 1);
    assert_eq!(code(&gate("4", &["--inconclusive-as", "pass"]).await), 0);

    let out = gate("4", &["--format", "markdown"]).await;
    assert_eq!(code(&out), 3, "{out:?}");
    let md = stdout(&out);
    assert!(md.contains("| task | check | verdict |"), "{md}");
    assert!(md.contains("|---|---|---|"), "{md}");
    assert!(
        md.contains("INCONCLUSIVE") && md.contains("candidate has 50 samples"),
        "{md}"
    );
    let rows = md.lines().filter(|l| l.starts_with("| checkout |")).count();
    assert_eq!(rows, 3, "{md}");

    let out = gate("4", &["--format", "junit"]).await;
    let elements = check_xml(&stdout(&out));
    assert_eq!(elements.iter().filter(|e| *e == "skipped").count(), 3);

    // --min-samples reaches the server: both arms have exactly 2000 samples, enough for a
    // minimum of 2000 (PASS) and one short of 2001, where every check is INCONCLUSIVE.
    assert_eq!(code(&gate("2", &["--min-samples", "2000"]).await), 0);
    let out = gate("2", &["--min-samples", "2001"]).await;
    assert_eq!(code(&out), 3, "{out:?}");
    let text = stdout(&out);
    assert!(text.starts_with("gate        INCONCLUSIVE"), "{text}");
    assert!(text.contains("at least 2001 samples per arm"), "{text}");
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("checkout  ")).collect();
    assert_eq!(rows.len(), 3, "{text}");
    assert!(rows.iter().all(|r| r.contains("INCONCLUSIVE")), "{text}");
    assert!(
        text.contains("baseline has 2000 samples and candidate has 2000; at least 2001 per arm are needed"),
        "{text}"
    );
    assert!(
        text.contains("success rate: baseline has 2000 instances and candidate has 2000; at least 2001"),
        "{text}"
    );
    // Below the minimum even a 1.5 times slower candidate (exit 1 above) is INCONCLUSIVE,
    // and --inconclusive-as maps it: each of these exits otherwise without the minimum.
    assert_eq!(code(&gate("3", &["--min-samples", "2001"]).await), 3);
    let out = gate("3", &["--min-samples", "2001", "--inconclusive-as", "pass"]).await;
    assert_eq!(code(&out), 0, "{out:?}");
    let out = gate("2", &["--min-samples", "2001", "--inconclusive-as", "fail"]).await;
    assert_eq!(code(&out), 1, "{out:?}");

    // --max-abandonment-rise on data from the last hour: abandonment is not known yet,
    // so the check is INCONCLUSIVE (never the PASS "none abandoned so far" would suggest)
    // and says why; the other checks still PASS.
    let out = gate("2", &["--max-abandonment-rise", "2pp"]).await;
    assert_eq!(code(&out), 3, "{out:?}");
    let text = stdout(&out);
    let row = text
        .lines()
        .find(|l| l.starts_with("checkout") && l.contains("abandonment rate"))
        .unwrap_or_else(|| panic!("no abandonment row in {text}"));
    assert!(
        row.contains("INCONCLUSIVE") && row.contains("+2pp") && row.contains("0 / 0"),
        "{row}"
    );
    assert!(
        text.contains(
            "abandonment rate: baseline and candidate have no data (abandonment is known only for starts at least 1h old"
        ),
        "{text}"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("checkout") && l.contains("PASS"))
            .count(),
        3,
        "{text}"
    );
    // On data old enough, the rise decides: 12.05 pp is beyond +2 pp (exit 1) and within
    // +20 pp (exit 0).
    let abandonment = |allowed: &'static str| {
        let server = server.clone();
        async move {
            let args = [
                "--task",
                "checkout",
                "--baseline",
                "release=5",
                "--candidate",
                "release=6",
                "--max-abandonment-rise",
                allowed,
            ];
            tasktime_gate(&server, &args).await
        }
    };
    let out = abandonment("2pp").await;
    assert_eq!(code(&out), 1, "{out:?}");
    let text = stdout(&out);
    let row = text
        .lines()
        .find(|l| l.starts_with("checkout") && l.contains("abandonment rate"))
        .unwrap_or_else(|| panic!("no abandonment row in {text}"));
    for cell in ["FAIL", "0.99%", "13.04%", "+12.05pp", "+2pp", "2020 / 2300"] {
        assert!(row.contains(cell), "{cell} missing from {row}");
    }
    assert!(
        text.contains("abandonment rate: abandonment rate rose 12.05 pp (0.99% → 13.04%"),
        "{text}"
    );
    assert!(text.contains("beyond the allowed rise of 2 pp"), "{text}");
    let out = abandonment("20pp").await;
    assert_eq!(code(&out), 0, "{out:?}");
    assert!(stdout(&out).contains("within the allowed rise of 20 pp"), "{out:?}");

    // Errors exit 2: a request the server refuses, usage, no server.
    let out = gate("2", &["--baseline-from", "now", "--baseline-to", "1h"]).await;
    assert_eq!(code(&out), 2, "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("baseline.from"),
        "{out:?}"
    );
    assert_eq!(code(&gate("2", &["--confidence", "2"]).await), 2);
    assert_eq!(code(&gate("2", &["--max-increase", "p90=fast"]).await), 2);
    assert_eq!(code(&tasktime_gate(&server, &["--baseline", "release=1"]).await), 2);
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let out = tasktime_gate(&nobody, &["--task", "checkout", "--max-increase", "p90=10%"]).await;
    assert_eq!(code(&out), 2, "{out:?}");
    app.stop().await;
}
