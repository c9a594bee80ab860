//! `tasktime.v1.GateService`: validates a gate request, reads both arms of every task
//! from the store, and lets the pure [`crate::gate`] statistics judge them.

use std::collections::BTreeMap;

use tonic::{Request, Response, Status};

use crate::domain::{LabelFilter, MICROS_PER_SEC, Micros, Outcome, Selector, TaskName, Tenant, TimeRange, now_micros};
use crate::gate::{self, ArmData, ChangeUnit, CriterionKind, GateCriteria, GateError, PercentileCriterion};
use crate::grpc::convert::{self, DEFAULT_QUERY_WINDOW};
use crate::grpc::status::{self, Violation};
use crate::pb;
use crate::pb::gate_service_server::GateService;
use crate::query::{self, Merged, QuerySettings};
use crate::store::AnyStore;

/// Minimum samples per arm when the request says 0.
pub const DEFAULT_MIN_SAMPLES: u64 = 100;
/// Confidence of each one-sided bound when the request says 0.
pub const DEFAULT_CONFIDENCE: f64 = 0.95;
/// Tasks in one gate at most: each costs two store reads.
pub const MAX_GATE_TASKS: usize = 100;

/// The gate service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GateApi {
    store: AnyStore,
    settings: QuerySettings,
}

impl GateApi {
    /// A service reading `store`.
    pub fn new(store: AnyStore, settings: QuerySettings) -> Self {
        GateApi { store, settings }
    }

    /// Reads one arm of one task: the succeeded durations and every outcome count.
    async fn read_arm(&self, task: &TaskName, arm: &Arm, now: Micros) -> Result<Merged, Status> {
        let selector = Selector {
            tenant: Tenant::default_tenant(),
            task: task.clone(),
            filter: arm.filter.clone(),
            range: arm.range,
            outcome: Outcome::Succeeded,
            percentiles: Vec::new(),
        };
        query::read_merged(&self.store, &self.settings, &selector, &[arm.range], now)
            .await
            .map_err(|e| status::from_store(&e))?
            .into_iter()
            .next()
            .ok_or_else(|| Status::internal("the store returned no data for a gate arm"))
    }

    /// Judges one task: both arms read concurrently, then the pure statistics.
    async fn judge(&self, task: &TaskName, plan: &GatePlan, now: Micros) -> Result<Judged, Status> {
        let (baseline, candidate) = futures::try_join!(
            self.read_arm(task, &plan.baseline, now),
            self.read_arm(task, &plan.candidate, now)
        )?;
        let windows = (baseline.range, candidate.range);
        let (baseline, candidate) = (arm_data(baseline), arm_data(candidate));
        let mut outcome = gate::evaluate(&baseline, &candidate, &plan.criteria)
            .map_err(|e| status::invalid_argument(vec![gate_violation(&e)]))?;
        if let Some(allowed) = plan.criteria.max_abandonment_rise_pp {
            let decided = self.judge_abandonment(task, plan, allowed, now).await?;
            for slot in outcome
                .criteria
                .iter_mut()
                .filter(|r| r.kind == CriterionKind::AbandonmentRate)
            {
                *slot = decided.clone();
            }
            outcome.verdict = gate::Verdict::combine(outcome.criteria.iter().map(|r| r.verdict));
        }
        Ok(Judged {
            task: task.clone(),
            mean_delta_us: match (baseline.mean_duration_us(), candidate.mean_duration_us()) {
                (Some(b), Some(c)) => Some(c - b),
                _ => None,
            },
            baseline_instances: baseline.instances(),
            candidate_instances: candidate.instances(),
            windows,
            outcome,
        })
    }
}

impl GateApi {
    /// The abandonment check, on the part of each arm whose abandonment is known.
    ///
    /// A start counts as abandoned only once `abandon_after` has passed without a finish
    /// (see [`query::read_merged`]); until then it is in neither the numerator nor the
    /// denominator, while the instances that did finish are. Read over the whole window,
    /// a candidate rolled out less than `abandon_after` ago would show no abandonment at
    /// all, with tight bounds: a PASS the data do not support. So this check reads each
    /// arm only up to `now − abandon_after` (whole minutes), and is INCONCLUSIVE when that
    /// leaves nothing of an arm's window.
    async fn judge_abandonment(
        &self,
        task: &TaskName,
        plan: &GatePlan,
        allowed: f64,
        now: Micros,
    ) -> Result<gate::CriterionResult, Status> {
        let minute = 60 * MICROS_PER_SEC;
        let known_until = (now - self.settings.abandon_after).div_euclid(minute) * minute;
        let decided = |arm: &Arm| {
            let to = arm.range.to.min(known_until);
            (arm.range.from < to).then(|| Arm {
                filter: arm.filter.clone(),
                range: TimeRange {
                    from: arm.range.from,
                    to,
                },
            })
        };
        let note = format!(
            "abandonment is known only for starts at least {} old, so this check reads each arm up to {}",
            humantime::format_duration(std::time::Duration::from_micros(
                self.settings.abandon_after.unsigned_abs()
            )),
            fmt_ts(known_until)
        );
        let (Some(b), Some(c)) = (decided(&plan.baseline), decided(&plan.candidate)) else {
            let late: Vec<&str> = [("baseline", &plan.baseline), ("candidate", &plan.candidate)]
                .into_iter()
                .filter(|(_, arm)| arm.range.from >= known_until)
                .map(|(name, _)| name)
                .collect();
            return Ok(gate::CriterionResult {
                name: "abandonment rate".into(),
                kind: CriterionKind::AbandonmentRate,
                verdict: gate::Verdict::Inconclusive,
                baseline_value: None,
                candidate_value: None,
                change: None,
                interval: None,
                allowance: allowed,
                baseline_samples: 0,
                candidate_samples: 0,
                delta_seconds_per_task: None,
                reason: format!("the {} window starts too recently: {note}", late.join(" and ")),
            });
        };
        let (baseline, candidate) = futures::try_join!(self.read_arm(task, &b, now), self.read_arm(task, &c, now))?;
        let criteria = GateCriteria {
            percentiles: Vec::new(),
            max_success_drop_pp: None,
            max_abandonment_rise_pp: Some(allowed),
            ..plan.criteria.clone()
        };
        let mut result = gate::evaluate(&arm_data(baseline), &arm_data(candidate), &criteria)
            .map_err(|e| status::invalid_argument(vec![gate_violation(&e)]))?
            .criteria
            .pop()
            .ok_or_else(|| Status::internal("the abandonment check gave no result"))?;
        result.reason = format!("{} ({note})", result.reason);
        Ok(result)
    }
}

#[tonic::async_trait]
impl GateService for GateApi {
    #[tracing::instrument(skip_all, fields(tasks = request.get_ref().tasks.len()))]
    async fn evaluate_gate(
        &self,
        request: Request<pb::EvaluateGateRequest>,
    ) -> Result<Response<pb::GateVerdict>, Status> {
        let now = now_micros();
        let plan = parse_request(request.into_inner(), now).map_err(status::invalid_argument)?;
        let judged = futures::future::try_join_all(plan.tasks.iter().map(|task| self.judge(task, &plan, now))).await?;
        let verdict = gate::Verdict::combine(judged.iter().map(|j| j.outcome.verdict));
        tracing::info!(%verdict, "gate evaluated");
        Ok(Response::new(verdict_to_pb(&plan, verdict, &judged)))
    }
}

// ---------------------------------------------------------------- request

/// One validated arm: which series and which window.
#[derive(Debug, Clone, PartialEq)]
pub struct Arm {
    pub filter: LabelFilter,
    pub range: TimeRange,
}

/// A validated `EvaluateGateRequest`, defaults applied.
#[derive(Debug, Clone)]
pub struct GatePlan {
    pub tasks: Vec<TaskName>,
    pub baseline: Arm,
    pub candidate: Arm,
    pub criteria: GateCriteria,
}

/// Validates a request and applies the defaults (min_samples 100, confidence 0.95, each
/// arm's window the 24 h before now). Collects every violation, each naming its field as
/// the client sent it (`tasks[1]`, `percentiles[0].percentile`, `candidate.from`).
///
/// # Errors
/// The violations, when there is at least one.
pub fn parse_request(r: pb::EvaluateGateRequest, now: Micros) -> Result<GatePlan, Vec<Violation>> {
    let mut violations = Vec::new();
    let mut bad = |field: String, description: String| violations.push(Violation { field, description });

    let tasks = parse_tasks(r.tasks, &mut bad);
    let baseline = parse_arm("baseline", r.baseline, now, &mut bad);
    let candidate = parse_arm("candidate", r.candidate, now, &mut bad);
    if let (Some(b), Some(c)) = (&baseline, &candidate) {
        if b == c {
            bad(
                "candidate".into(),
                "candidate selects the same data as baseline (same filter and window): the gate would compare a \
                 release with itself; give the arms different filters (release=...) or windows"
                    .into(),
            );
        }
    }

    let mut percentiles = Vec::with_capacity(r.percentiles.len());
    for (i, c) in r.percentiles.into_iter().enumerate() {
        let percentile = c.percentile;
        if !(percentile.is_finite() && percentile > 0.0 && percentile < 100.0) {
            bad(
                format!("percentiles[{i}].percentile"),
                format!("percentiles[{i}]: {}", GateError::PercentileOutOfRange { percentile }),
            );
        }
        if let Some(ratio) = c.max_increase_ratio {
            if !(ratio.is_finite() && ratio >= 0.0) {
                bad(
                    format!("percentiles[{i}].max_increase_ratio"),
                    format!(
                        "percentiles[{i}]: {}",
                        GateError::BadRelativeAllowance { percentile, ratio }
                    ),
                );
            }
        }
        let max_increase_us = match &c.max_increase {
            None => None,
            Some(d) => match duration_micros(d) {
                Ok(us) => Some(us),
                Err(why) => {
                    bad(
                        format!("percentiles[{i}].max_increase"),
                        format!("percentiles[{i}].max_increase {why}"),
                    );
                    None
                }
            },
        };
        if c.max_increase_ratio.is_none() && c.max_increase.is_none() {
            bad(
                format!("percentiles[{i}]"),
                format!(
                    "percentiles[{i}]: {}; set max_increase_ratio and/or max_increase",
                    GateError::NoAllowance { percentile }
                ),
            );
        }
        percentiles.push(PercentileCriterion {
            percentile,
            max_increase_ratio: c.max_increase_ratio,
            max_increase_us,
        });
    }
    let rates = [
        (
            "max_success_drop_pp",
            "the allowed success-rate drop",
            r.max_success_drop_pp,
        ),
        (
            "max_abandonment_rise_pp",
            "the allowed abandonment-rate rise",
            r.max_abandonment_rise_pp,
        ),
    ];
    for (field, what, value) in rates {
        if let Some(value) = value {
            if !(0.0..=100.0).contains(&value) {
                bad(
                    field.into(),
                    format!("{field}: {}", GateError::BadRateAllowance { what, value }),
                );
            }
        }
    }
    if percentiles.is_empty() && r.max_success_drop_pp.is_none() && r.max_abandonment_rise_pp.is_none() {
        bad("percentiles".into(), GateError::NoCriteria.to_string());
    }
    let confidence = if r.confidence == 0.0 {
        DEFAULT_CONFIDENCE
    } else {
        r.confidence
    };
    if !(confidence > 0.5 && confidence < 1.0) {
        bad(
            "confidence".into(),
            GateError::ConfidenceOutOfRange { confidence }.to_string(),
        );
    }
    let min_samples = if r.min_samples == 0 {
        DEFAULT_MIN_SAMPLES
    } else {
        r.min_samples
    };

    match (baseline, candidate) {
        (Some(baseline), Some(candidate)) if violations.is_empty() => Ok(GatePlan {
            tasks,
            baseline,
            candidate,
            criteria: GateCriteria {
                percentiles,
                max_success_drop_pp: r.max_success_drop_pp,
                max_abandonment_rise_pp: r.max_abandonment_rise_pp,
                min_samples,
                confidence,
            },
        }),
        _ => Err(violations),
    }
}

fn parse_tasks(names: Vec<String>, bad: &mut impl FnMut(String, String)) -> Vec<TaskName> {
    if names.is_empty() {
        bad(
            "tasks".into(),
            "tasks is empty; name at least one task, e.g. \"checkout\"".into(),
        );
    }
    if names.len() > MAX_GATE_TASKS {
        bad(
            "tasks".into(),
            format!("tasks has {} entries; the limit is {MAX_GATE_TASKS}", names.len()),
        );
    }
    let mut tasks: Vec<TaskName> = Vec::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        let field = format!("tasks[{i}]");
        match TaskName::parse(&field, name) {
            Ok(task) => match tasks.iter().position(|t| *t == task) {
                Some(j) => bad(field.clone(), format!("{field} `{}` repeats tasks[{j}]", task.as_str())),
                None => tasks.push(task),
            },
            Err(e) => bad(field, e.to_string()),
        }
    }
    tasks
}

fn parse_arm(
    name: &str,
    selector: Option<pb::Selector>,
    now: Micros,
    bad: &mut impl FnMut(String, String),
) -> Option<Arm> {
    let Some(s) = selector else {
        bad(
            name.into(),
            format!("{name} is missing: set its filter (e.g. release=2.3.1) and/or its window (from, to)"),
        );
        return None;
    };
    let filter_field = format!("{name}.filter");
    let filter = LabelFilter::parse(&filter_field, s.filter)
        .map_err(|e| bad(filter_field.clone(), e.to_string()))
        .ok();
    let to_field = format!("{name}.to");
    let to = match &s.to {
        Some(ts) => convert::timestamp_micros(&to_field, ts)
            .map_err(|e| bad(to_field.clone(), e))
            .ok(),
        None => Some(now),
    };
    let from_field = format!("{name}.from");
    let from = match &s.from {
        Some(ts) => convert::timestamp_micros(&from_field, ts)
            .map_err(|e| bad(from_field.clone(), e))
            .ok(),
        None => to.map(|t| t - DEFAULT_QUERY_WINDOW),
    };
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            bad(
                from_field.clone(),
                format!("{from_field} ({}) must be before {to_field} ({})", fmt_ts(f), fmt_ts(t)),
            );
            return None;
        }
    }
    Some(Arm {
        filter: filter?,
        range: TimeRange { from: from?, to: to? },
    })
}

/// A non-negative Duration in µs, or why not.
fn duration_micros(d: &prost_types::Duration) -> Result<u64, String> {
    if d.nanos.abs() >= 1_000_000_000 || (d.seconds > 0 && d.nanos < 0) || (d.seconds < 0 && d.nanos > 0) {
        return Err(format!("is not a valid duration ({} s, {} ns)", d.seconds, d.nanos));
    }
    if d.seconds < 0 || d.nanos < 0 {
        return Err(format!(
            "is negative ({} s); an allowed increase is at least 0",
            d.seconds
        ));
    }
    u64::try_from(d.seconds)
        .ok()
        .and_then(|s| s.checked_mul(MICROS_PER_SEC.unsigned_abs()))
        .and_then(|s| s.checked_add(u64::try_from(d.nanos / 1000).ok()?))
        .ok_or_else(|| format!("({} s) is out of range", d.seconds))
}

fn fmt_ts(at: Micros) -> String {
    match u64::try_from(at.div_euclid(MICROS_PER_SEC)) {
        Ok(s) => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s)).to_string()
        }
        Err(_) => format!("{at} µs"),
    }
}

/// Where a [`GateError`] points in the request. Validation above catches these first;
/// this keeps a mismatch between the two from becoming INTERNAL.
fn gate_violation(e: &GateError) -> Violation {
    let field = match e {
        GateError::ConfidenceOutOfRange { .. } => "confidence",
        GateError::BadRateAllowance { what, .. } if what.contains("success") => "max_success_drop_pp",
        GateError::BadRateAllowance { .. } => "max_abandonment_rise_pp",
        GateError::PercentileOutOfRange { .. }
        | GateError::NoAllowance { .. }
        | GateError::BadRelativeAllowance { .. }
        | GateError::NoCriteria => "percentiles",
    };
    Violation {
        field: field.into(),
        description: e.to_string(),
    }
}

// ---------------------------------------------------------------- response

/// One task's judgement and what explains it.
#[derive(Debug)]
struct Judged {
    task: TaskName,
    outcome: gate::GateOutcome,
    mean_delta_us: Option<f64>,
    baseline_instances: u64,
    candidate_instances: u64,
    /// The windows actually read, baseline then candidate.
    windows: (TimeRange, TimeRange),
}

/// The gate's store data in the pure layer's shape. `durations` are the succeeded
/// instances' (the arm's selector asks for that outcome), `sum_us` is their exact sum.
fn arm_data(m: Merged) -> ArmData {
    ArmData {
        total_time_us: u128::try_from(m.sum_us).unwrap_or(0),
        window_secs: (m.range.to - m.range.from) as f64 / MICROS_PER_SEC as f64,
        succeeded: m.succeeded,
        failed: m.failed,
        cancelled: m.cancelled,
        abandoned: m.abandoned,
        durations: m.durations,
    }
}

fn verdict_pb(v: gate::Verdict) -> pb::Verdict {
    match v {
        gate::Verdict::Pass => pb::Verdict::Pass,
        gate::Verdict::Fail => pb::Verdict::Fail,
        gate::Verdict::Inconclusive => pb::Verdict::Inconclusive,
    }
}

fn selector_pb(arm: &Arm, window: Option<TimeRange>) -> pb::Selector {
    let range = window.unwrap_or(arm.range);
    pb::Selector {
        filter: arm
            .filter
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect::<BTreeMap<_, _>>(),
        from: Some(convert::micros_timestamp(range.from)),
        to: Some(convert::micros_timestamp(range.to)),
    }
}

fn verdict_to_pb(plan: &GatePlan, verdict: gate::Verdict, judged: &[Judged]) -> pb::GateVerdict {
    // Windows round the same way for every task; the first task's are the gate's.
    let windows = judged.first().map(|j| j.windows);
    pb::GateVerdict {
        verdict: verdict_pb(verdict) as i32,
        tasks: judged
            .iter()
            .map(|j| pb::TaskVerdict {
                task: j.task.as_str().to_owned(),
                verdict: verdict_pb(j.outcome.verdict) as i32,
                customer_hours_per_week: j.outcome.customer_hours_per_week.unwrap_or(0.0),
                has_customer_hours: j.outcome.customer_hours_per_week.is_some(),
                mean_delta_seconds: j.mean_delta_us.map_or(0.0, |us| us / 1e6),
                baseline_instances: j.baseline_instances,
                candidate_instances: j.candidate_instances,
            })
            .collect(),
        criteria: judged
            .iter()
            .flat_map(|j| j.outcome.criteria.iter().map(|c| criterion_pb(&j.task, c)))
            .collect(),
        confidence: plan.criteria.confidence,
        min_samples: plan.criteria.min_samples,
        baseline: Some(selector_pb(&plan.baseline, windows.map(|w| w.0))),
        candidate: Some(selector_pb(&plan.candidate, windows.map(|w| w.1))),
    }
}

/// One check on the wire. Durations leave in seconds, as everywhere else in the API.
fn criterion_pb(task: &TaskName, c: &gate::CriterionResult) -> pb::CriterionResult {
    let (kind, percentile) = match c.kind {
        CriterionKind::PercentileRelative { percentile } => (pb::CriterionKind::PercentileRelative, percentile),
        CriterionKind::PercentileAbsolute { percentile } => (pb::CriterionKind::PercentileAbsolute, percentile),
        CriterionKind::SuccessRate => (pb::CriterionKind::SuccessRate, 0.0),
        CriterionKind::AbandonmentRate => (pb::CriterionKind::AbandonmentRate, 0.0),
    };
    let (unit, scale) = match c.kind.unit() {
        ChangeUnit::Ratio => ("ratio", 1.0),
        ChangeUnit::Microseconds => ("s", 1e-6),
        ChangeUnit::PercentagePoints => ("pp", 1.0),
    };
    let (value_unit, value_scale) = match c.kind {
        CriterionKind::PercentileRelative { .. } | CriterionKind::PercentileAbsolute { .. } => ("s", 1e-6),
        CriterionKind::SuccessRate | CriterionKind::AbandonmentRate => ("%", 1.0),
    };
    pb::CriterionResult {
        task: task.as_str().to_owned(),
        name: c.name.clone(),
        verdict: verdict_pb(c.verdict) as i32,
        baseline_value: c.baseline_value.map_or(0.0, |v| v * value_scale),
        candidate_value: c.candidate_value.map_or(0.0, |v| v * value_scale),
        change_lower: c.interval.map_or(0.0, |i| i.lower * scale),
        change_upper: c.interval.map_or(0.0, |i| i.upper * scale),
        allowance: c.allowance * scale,
        unit: unit.into(),
        baseline_samples: c.baseline_samples,
        candidate_samples: c.candidate_samples,
        reason: c.reason.clone(),
        delta_seconds_per_task: c.delta_seconds_per_task.unwrap_or(0.0),
        kind: kind as i32,
        percentile,
        change: c.change.map_or(0.0, |x| x * scale),
        has_change: c.change.is_some(),
        has_interval: c.interval.is_some(),
        value_unit: value_unit.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::store::MemoryStore;

    const NOW: Micros = 1_800_000_000 * MICROS_PER_SEC;

    fn arm(release: &str) -> Option<pb::Selector> {
        Some(pb::Selector {
            filter: [("release".to_owned(), release.to_owned())].into(),
            from: None,
            to: None,
        })
    }

    fn request() -> pb::EvaluateGateRequest {
        pb::EvaluateGateRequest {
            tasks: vec!["checkout".into()],
            baseline: arm("1"),
            candidate: arm("2"),
            percentiles: vec![pb::PercentileCriterion {
                percentile: 90.0,
                max_increase_ratio: Some(0.1),
                max_increase: None,
            }],
            max_success_drop_pp: None,
            max_abandonment_rise_pp: None,
            min_samples: 0,
            confidence: 0.0,
        }
    }

    fn fields(r: pb::EvaluateGateRequest) -> Vec<String> {
        parse_request(r, NOW)
            .unwrap_err()
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn defaults_are_applied_to_a_minimal_request() {
        let plan = parse_request(request(), NOW).unwrap();
        assert_eq!(plan.criteria.min_samples, DEFAULT_MIN_SAMPLES);
        assert_eq!(plan.criteria.confidence, DEFAULT_CONFIDENCE);
        assert_eq!(
            plan.baseline.range,
            TimeRange {
                from: NOW - DEFAULT_QUERY_WINDOW,
                to: NOW
            }
        );
    }

    #[test]
    fn every_bad_field_is_named_at_once() {
        let mut r = request();
        r.tasks = vec!["checkout".into(), "Check Out".into(), "checkout".into()];
        r.candidate = Some(pb::Selector {
            filter: BTreeMap::new(),
            from: Some(convert::micros_timestamp(NOW)),
            to: Some(convert::micros_timestamp(NOW - 1)),
        });
        r.percentiles = vec![
            pb::PercentileCriterion {
                percentile: 100.0,
                max_increase_ratio: Some(-1.0),
                max_increase: None,
            },
            pb::PercentileCriterion {
                percentile: 50.0,
                max_increase_ratio: None,
                max_increase: None,
            },
            pb::PercentileCriterion {
                percentile: 99.0,
                max_increase_ratio: None,
                max_increase: Some(prost_types::Duration { seconds: -1, nanos: 0 }),
            },
        ];
        r.max_success_drop_pp = Some(150.0);
        r.confidence = 1.5;
        assert_eq!(
            fields(r),
            [
                "tasks[1]",
                "tasks[2]",
                "candidate.from",
                "percentiles[0].percentile",
                "percentiles[0].max_increase_ratio",
                "percentiles[1]",
                "percentiles[2].max_increase",
                "max_success_drop_pp",
                "confidence",
            ]
        );
    }

    #[test]
    fn a_gate_without_tasks_arms_or_criteria_is_refused() {
        let r = pb::EvaluateGateRequest::default();
        assert_eq!(fields(r), ["tasks", "baseline", "candidate", "percentiles"]);
        let mut r = request();
        r.candidate = r.baseline.clone();
        assert_eq!(fields(r), ["candidate"]);
    }

    #[tokio::test]
    async fn an_empty_store_is_inconclusive_never_pass() {
        let derived = Config::default().validate().unwrap();
        let api = GateApi::new(
            AnyStore::Memory(MemoryStore::new(derived.semantics.clone())),
            derived.query.clone(),
        );
        let mut r = request();
        r.max_success_drop_pp = Some(1.0);
        let v = api.evaluate_gate(Request::new(r)).await.unwrap().into_inner();
        assert_eq!(v.verdict(), pb::Verdict::Inconclusive);
        assert_eq!(v.min_samples, 100);
        assert_eq!(v.criteria.len(), 2);
        assert_eq!(v.criteria[0].reason, "baseline has no data; candidate has no data");
        assert_eq!(v.criteria[1].reason, "baseline and candidate have no data");
        assert!(v.criteria.iter().all(|c| !c.has_interval && !c.has_change));
        assert!(!v.tasks[0].has_customer_hours);
    }
}
