//! Release-gate statistics: did the candidate release make a task slower or less
//! successful than the baseline, by more than the gate allows? Pure functions over merged
//! HDR histograms and exact outcome counts; no I/O.
//!
//! # The decision rule
//!
//! Every check turns into an interval `[lower, upper]` for the *change*, signed so that
//! positive is worse for customers (a percentile rose, the success rate dropped, the
//! abandonment rate rose), and an allowance in the same unit:
//!
//! - **FAIL** when `lower > allowance`: the data show the change is beyond the allowance;
//! - **PASS** when `upper <= allowance`: the data show it is within;
//! - **INCONCLUSIVE** otherwise, and whenever an arm has no data or too few samples.
//!
//! Each bound is a **one-sided** bound at `confidence`. FAIL is a one-sided test of "the
//! change is within the allowance" and PASS a one-sided test of "the change exceeds it"
//! (the two one-sided tests of equivalence testing); each verdict is therefore wrong with
//! probability at most `1 - confidence`, and since `lower <= upper` they never both fire.
//! A two-sided interval at `confidence` would spend half of the error on a tail that
//! cannot produce the verdict in question, holding each verdict to half the error rate
//! the caller asked for at a cost in power. The price is in the wording: the pair of bounds is a two-sided interval at
//! `2·confidence − 1` (90% at 0.95), so reasons say "one-sided 95% bounds", never
//! "95% CI".
//!
//! # Percentiles: order statistics per arm, MOVER across arms
//!
//! *One arm* (distribution-free). With `n` samples and quantile `q`, the number `B` of
//! samples at or below the true quantile `ξ_q` is Binomial(n, q). Take `l` the largest
//! rank with `P(B ≤ l−1) ≤ α` and `u` the smallest with `P(B ≥ u) ≤ α`; then
//! `P(X_(l) ≤ ξ_q) ≥ 1−α` and `P(X_(u) ≥ ξ_q) ≥ 1−α` for any continuous distribution
//! (conservatively so for discrete ones). The binomial tails are exact (summed from pmf
//! ratios around the mode) while `n·q·(1−q) ≤ 10⁶`, and a normal approximation with
//! continuity correction above, where its error is far below one rank. Rank `l` maps to
//! the *lowest* equivalent value of its histogram bin and rank `u` to the *highest*, so
//! the bin width widens the bounds instead of being ignored. The point estimate is the
//! sample at rank `⌈q·n⌉`, the rank [`Histogram::value_at_quantile`] uses, carried as its
//! whole bin `[low, high]`. Too few samples for a bound at that level (e.g. fewer than
//! 59 for a one-sided 95% upper bound of p95) make the check INCONCLUSIVE.
//!
//! *Two arms.* The change's bounds come from MOVER, the "method of variance estimates
//! recovery" (Zou & Donner 2008) — the same construction as Newcombe's method 10 for
//! rates below: with estimates `ĉ`, `b̂` and one-sided bounds `c_l, c_u, b_l, b_u`,
//!
//! ```text
//! lower = (ĉ − b̂) − √((ĉ − c_l)² + (b_u − b̂)²)
//! upper = (ĉ − b̂) + √((c_u − ĉ)² + (b̂ − b_l)²)
//! ```
//!
//! in µs for the absolute check and on the log scale for the relative one (then
//! `exp(·) − 1`; Price & Bonett 2002 do the same for a ratio of medians). Each arm's
//! distance to its bound estimates `z_α` times that arm's standard error without assuming
//! a distribution, and the two add in quadrature as independent errors do. For the
//! histogram, `lower` is evaluated with `ĉ` at its bin's low edge and `b̂` at its bin's high
//! edge (`upper` the other way round): `lower` increases with `ĉ` and `c_l` and decreases
//! with `b̂` and `b_u`, so these corners give bounds no tighter than the same method on
//! the raw, unbinned durations (a property test checks this).
//!
//! *Why not the simple construction.* Each arm at one-sided level `√confidence` and
//! `lower = c_l − b_u` is valid in finite samples without approximation, but it adds the
//! two arms' margins linearly instead of in quadrature. In 4,000-trial simulations
//! (lognormal, true p90 exactly at a +10% allowance, 100 to 5,000 samples per arm, equal
//! and unequal spreads, p50/p90/p99) its FAIL and PASS error rates were 0.05–0.5% where
//! 5% is allowed, and its power against a +25% p90 at 2,000 per arm was 96% at σ = 0.5,
//! 63% at σ = 0.7 and 29% at σ = 1.0, against 99.7%, 94% and 71% for MOVER; it needs
//! nearly twice the samples. MOVER is an asymptotic argument (quantile estimators are
//! asymptotically normal), so its validity is *shown by simulation*: in the same runs its
//! FAIL and PASS rates at the boundary were 1.2–3.8%, below the nominal 5% (rank
//! discreteness and bin widening make it slightly conservative); the tests repeat a
//! 400-trial version of this.
//!
//! # Rates
//!
//! Success rate is `succeeded / (succeeded + failed + cancelled + abandoned)`, abandonment
//! rate `abandoned /` the same. The difference of two independent proportions is bounded
//! by Newcombe's hybrid score method (method 10 of Newcombe 1998: MOVER over two Wilson
//! score intervals), in percentage points, with one-sided bounds as above.
//!
//! # Choices a reader should know
//!
//! - A percentile criterion with both a relative and an absolute allowance yields **two**
//!   results (one per check, each in its own unit, reasons prefixed "relative check" and
//!   "absolute check"); the gate FAILs if either FAILs, as the overall rule does. The
//!   stricter reading was chosen on purpose: a regression that breaks either promise is a
//!   regression.
//! - `min_samples` counts the durations histogram for percentile checks and all instances
//!   for rate checks; an arm below it, or with no data at all, is INCONCLUSIVE, never PASS.
//! - Nothing assumes 2 significant digits: bins come from the histogram's own
//!   `lowest_equivalent`/`highest_equivalent`, so 3 digits (or mixed arms) just narrow them.
//! - Durations of 0 µs make the relative check's bound on that side vacuous (a ratio to 0
//!   is undefined), so it cannot PASS or FAIL on it.

use std::fmt;

use hdrhistogram::Histogram;

/// Seconds in a week, for the weekly customer-time figure.
pub const SECONDS_PER_WEEK: f64 = 604_800.0;

/// Largest binomial variance `n·q·(1−q)` for which order-statistic ranks come from exact
/// binomial tails. Above it the normal approximation (with continuity correction) is used:
/// its skewness error is then below 10⁻³ standard deviations, far under one rank, while the
/// exact sum would cost a pass over ~80 standard deviations of ranks.
pub const EXACT_BINOMIAL_MAX_VARIANCE: f64 = 1.0e6;

/// Microseconds per hour, for customer-hours.
const MICROS_PER_HOUR: f64 = 3.6e9;

/// One arm of a gate: everything the store knows about a release's instances of a task in
/// the arm's time window.
///
/// Invariant expected from the caller: `durations` holds exactly the durations of the
/// `succeeded` instances (µs), and `total_time_us` is their exact sum; the mean used for
/// customer time is `total_time_us / durations.len()`.
#[derive(Debug, Clone)]
pub struct ArmData {
    /// Durations of succeeded instances, µs; the percentiles are about these.
    pub durations: Histogram<u64>,
    /// Instances that finished successfully.
    pub succeeded: u64,
    /// Instances that finished with a failure.
    pub failed: u64,
    /// Instances the customer cancelled.
    pub cancelled: u64,
    /// Instances started and never finished in time.
    pub abandoned: u64,
    /// Exact sum of the durations in `durations`, µs.
    pub total_time_us: u128,
    /// Length of the arm's time window, seconds; scales instance counts to a week.
    pub window_secs: f64,
}

impl ArmData {
    /// All instances, whatever their outcome: the denominator of both rates. Saturates at
    /// `u64::MAX` rather than wrapping.
    pub fn instances(&self) -> u64 {
        self.succeeded
            .saturating_add(self.failed)
            .saturating_add(self.cancelled)
            .saturating_add(self.abandoned)
    }

    /// Mean duration of the succeeded instances, µs; `None` without any.
    pub fn mean_duration_us(&self) -> Option<f64> {
        let n = self.durations.len();
        (n > 0).then(|| self.total_time_us as f64 / n as f64)
    }
}

/// A verdict, for one check or for the whole gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The data show the change is within the allowance.
    Pass,
    /// The data show the change is beyond the allowance.
    Fail,
    /// The data cannot tell, or there is not enough of it.
    Inconclusive,
}

impl Verdict {
    /// The gate's verdict from its checks: FAIL if any failed, else INCONCLUSIVE if any
    /// was, else PASS. No checks at all is INCONCLUSIVE: nothing checked is not a pass.
    pub fn combine(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
        let mut any = false;
        let mut inconclusive = false;
        for verdict in verdicts {
            any = true;
            match verdict {
                Verdict::Fail => return Verdict::Fail,
                Verdict::Inconclusive => inconclusive = true,
                Verdict::Pass => {}
            }
        }
        if inconclusive || !any {
            Verdict::Inconclusive
        } else {
            Verdict::Pass
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Inconclusive => "INCONCLUSIVE",
        })
    }
}

/// How much one duration percentile may rise. At least one allowance must be set; with
/// both, each is its own check and the gate fails if either is exceeded.
#[derive(Debug, Clone, PartialEq)]
pub struct PercentileCriterion {
    /// The percentile, in (0, 100), e.g. 90.0.
    pub percentile: f64,
    /// Allowed relative increase, e.g. 0.10 for +10%; finite and ≥ 0.
    pub max_increase_ratio: Option<f64>,
    /// Allowed absolute increase, µs, e.g. 500_000 for +500 ms.
    pub max_increase_us: Option<u64>,
}

/// What a gate checks. Validated by [`evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct GateCriteria {
    /// Duration percentiles that may not rise beyond their allowances.
    pub percentiles: Vec<PercentileCriterion>,
    /// Allowed drop of the success rate, percentage points, in [0, 100].
    pub max_success_drop_pp: Option<f64>,
    /// Allowed rise of the abandonment rate, percentage points, in [0, 100].
    pub max_abandonment_rise_pp: Option<f64>,
    /// Fewest samples per arm for a check to give PASS or FAIL.
    pub min_samples: u64,
    /// Confidence of each one-sided bound, in (0.5, 1); each verdict errs with
    /// probability at most `1 − confidence`.
    pub confidence: f64,
}

/// Criteria that cannot be evaluated. Messages name the bad value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GateError {
    /// A percentile outside the open interval (0, 100).
    #[error("percentile {percentile} is outside (0, 100)")]
    PercentileOutOfRange {
        /// The percentile given.
        percentile: f64,
    },
    /// A confidence outside the open interval (0.5, 1).
    #[error("confidence {confidence} must be between 0.5 and 1")]
    ConfidenceOutOfRange {
        /// The confidence given.
        confidence: f64,
    },
    /// A percentile criterion with no allowance at all.
    #[error("criterion for p{percentile} sets neither a relative nor an absolute allowance")]
    NoAllowance {
        /// The criterion's percentile.
        percentile: f64,
    },
    /// A relative allowance that is negative or not finite.
    #[error(
        "criterion for p{percentile} allows a relative increase of {ratio}; it must be a finite number of at least 0"
    )]
    BadRelativeAllowance {
        /// The criterion's percentile.
        percentile: f64,
        /// The allowance given.
        ratio: f64,
    },
    /// A rate allowance outside [0, 100] percentage points.
    #[error("{what} of {value} pp must be a finite number between 0 and 100")]
    BadRateAllowance {
        /// Which allowance.
        what: &'static str,
        /// The allowance given.
        value: f64,
    },
    /// Criteria that check nothing, which would otherwise pass vacuously.
    #[error("the gate has no criteria: set at least one percentile, success-rate or abandonment-rate criterion")]
    NoCriteria,
}

/// The unit of a check's change, its interval and its allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeUnit {
    /// `candidate / baseline − 1`; 0.10 is +10%.
    Ratio,
    /// Microseconds, `candidate − baseline`.
    Microseconds,
    /// Percentage points, signed so that positive is worse.
    PercentagePoints,
}

/// What a [`CriterionResult`] checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CriterionKind {
    /// A percentile's relative increase.
    PercentileRelative {
        /// The percentile, e.g. 90.0.
        percentile: f64,
    },
    /// A percentile's absolute increase.
    PercentileAbsolute {
        /// The percentile, e.g. 90.0.
        percentile: f64,
    },
    /// The success rate's drop (baseline − candidate).
    SuccessRate,
    /// The abandonment rate's rise (candidate − baseline).
    AbandonmentRate,
}

impl CriterionKind {
    /// The unit of this check's change, interval and allowance.
    pub fn unit(&self) -> ChangeUnit {
        match self {
            CriterionKind::PercentileRelative { .. } => ChangeUnit::Ratio,
            CriterionKind::PercentileAbsolute { .. } => ChangeUnit::Microseconds,
            CriterionKind::SuccessRate | CriterionKind::AbandonmentRate => ChangeUnit::PercentagePoints,
        }
    }
}

/// Bounds of a change, in the check's [`ChangeUnit`], positive = worse. Each bound is
/// one-sided at the gate's confidence; `lower <= upper` (either may be infinite when the
/// data cannot bound that side, e.g. a ratio to a 0 µs baseline).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChangeInterval {
    /// Lower bound of the change.
    pub lower: f64,
    /// Upper bound of the change.
    pub upper: f64,
}

/// One check's verdict and everything needed to explain it.
#[derive(Debug, Clone, PartialEq)]
pub struct CriterionResult {
    /// Human name, e.g. "p90 duration", "success rate", "abandonment rate".
    pub name: String,
    /// What was checked; fixes the unit of `change`, `interval` and `allowance`.
    pub kind: CriterionKind,
    /// This check's verdict.
    pub verdict: Verdict,
    /// Baseline value: the percentile in µs (the histogram's `value_at_quantile`), or the
    /// rate in percent; `None` without data.
    pub baseline_value: Option<f64>,
    /// Candidate value, as `baseline_value`.
    pub candidate_value: Option<f64>,
    /// Point estimate of the change, in the check's unit, positive = worse.
    pub change: Option<f64>,
    /// Bounds of the change; `None` when the check could not be computed.
    pub interval: Option<ChangeInterval>,
    /// The allowance, in the check's unit.
    pub allowance: f64,
    /// Baseline sample count: durations for percentiles, instances for rates.
    pub baseline_samples: u64,
    /// Candidate sample count, as `baseline_samples`.
    pub candidate_samples: u64,
    /// For percentile checks: candidate − baseline at that percentile, seconds, what one
    /// customer at that percentile gains (negative) or loses (positive) per task.
    pub delta_seconds_per_task: Option<f64>,
    /// One line a person can act on.
    pub reason: String,
}

/// A gate's verdict with one result per check.
#[derive(Debug, Clone, PartialEq)]
pub struct GateOutcome {
    /// FAIL if any check failed, else INCONCLUSIVE if any was, else PASS.
    pub verdict: Verdict,
    /// The confidence each one-sided bound was computed at.
    pub confidence: f64,
    /// One result per check, in the order: percentiles (relative before absolute), success
    /// rate, abandonment rate.
    pub criteria: Vec<CriterionResult>,
    /// `(candidate mean − baseline mean duration) × candidate instances per week`, hours;
    /// positive means customers lose time. `None` when either arm has no durations or the
    /// candidate's window is not a positive length.
    pub customer_hours_per_week: Option<f64>,
}

/// Distribution-free bounds of one quantile from a histogram, in µs.
///
/// Invariants: `lower_rank <= estimate_rank <= upper_rank`, and
/// `lower <= estimate_low <= estimate <= upper`. `lower` is the lowest equivalent value of
/// the bin holding the `lower_rank`-th sample, `upper` the highest equivalent of the bin
/// holding the `upper_rank`-th, and `estimate` equals `value_at_quantile(q)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantileInterval {
    /// Samples in the histogram.
    pub samples: u64,
    /// 1-based rank of the lower order statistic.
    pub lower_rank: u64,
    /// 1-based rank of the point estimate, `⌈q·n⌉` (at least 1).
    pub estimate_rank: u64,
    /// 1-based rank of the upper order statistic.
    pub upper_rank: u64,
    /// Lower bound, µs.
    pub lower: u64,
    /// Lowest equivalent value of the estimate's bin, µs.
    pub estimate_low: u64,
    /// Highest equivalent value of the estimate's bin, µs (the usual reported value).
    pub estimate: u64,
    /// Upper bound, µs.
    pub upper: u64,
}

/// One arm's ingredients for a MOVER interval, as reals: a lower bound, the point estimate
/// known only to lie in `[estimate_low, estimate_high]`, and an upper bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArmBounds {
    /// Lower bound.
    pub lower: f64,
    /// Lowest value the point estimate may have.
    pub estimate_low: f64,
    /// Highest value the point estimate may have.
    pub estimate_high: f64,
    /// Upper bound.
    pub upper: f64,
}

impl From<&QuantileInterval> for ArmBounds {
    fn from(iv: &QuantileInterval) -> Self {
        ArmBounds {
            lower: iv.lower as f64,
            estimate_low: iv.estimate_low as f64,
            estimate_high: iv.estimate as f64,
            upper: iv.upper as f64,
        }
    }
}

/// A difference of two proportions with its Newcombe bounds, as fractions (not percent).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProportionDifference {
    /// `p1 − p2`.
    pub estimate: f64,
    /// Lower bound of `p1 − p2`.
    pub lower: f64,
    /// Upper bound of `p1 − p2`.
    pub upper: f64,
}

/// Evaluates a release gate: each criterion's check against its allowance, and the
/// overall verdict.
///
/// Never PASSes a check without data: arms with no data, fewer than `min_samples`, or too
/// few samples to bound a percentile at `confidence` make that check INCONCLUSIVE with a
/// reason naming the arm and the counts.
///
/// # Errors
/// [`GateError`] when the criteria are invalid: a percentile outside (0, 100), a
/// confidence outside (0.5, 1), a percentile criterion without allowance or with a negative
/// one, a rate allowance outside [0, 100] pp, or no criteria at all.
pub fn evaluate(baseline: &ArmData, candidate: &ArmData, criteria: &GateCriteria) -> Result<GateOutcome, GateError> {
    validate(criteria)?;
    let mut results = Vec::new();
    for criterion in &criteria.percentiles {
        results.extend(evaluate_percentile(baseline, candidate, criterion, criteria));
    }
    if let Some(allowed) = criteria.max_success_drop_pp {
        results.push(evaluate_rate(
            RateCheck::SuccessDrop,
            baseline,
            candidate,
            allowed,
            criteria,
        ));
    }
    if let Some(allowed) = criteria.max_abandonment_rise_pp {
        results.push(evaluate_rate(
            RateCheck::AbandonmentRise,
            baseline,
            candidate,
            allowed,
            criteria,
        ));
    }
    Ok(GateOutcome {
        verdict: Verdict::combine(results.iter().map(|r| r.verdict)),
        confidence: criteria.confidence,
        criteria: results,
        customer_hours_per_week: customer_hours_per_week(baseline, candidate),
    })
}

fn validate(criteria: &GateCriteria) -> Result<(), GateError> {
    let confidence = criteria.confidence;
    if !(confidence > 0.5 && confidence < 1.0) {
        return Err(GateError::ConfidenceOutOfRange { confidence });
    }
    for c in &criteria.percentiles {
        let percentile = c.percentile;
        if !(percentile > 0.0 && percentile < 100.0) {
            return Err(GateError::PercentileOutOfRange { percentile });
        }
        if c.max_increase_ratio.is_none() && c.max_increase_us.is_none() {
            return Err(GateError::NoAllowance { percentile });
        }
        if let Some(ratio) = c.max_increase_ratio {
            if !(ratio.is_finite() && ratio >= 0.0) {
                return Err(GateError::BadRelativeAllowance { percentile, ratio });
            }
        }
    }
    let rates = [
        ("the allowed success-rate drop", criteria.max_success_drop_pp),
        ("the allowed abandonment-rate rise", criteria.max_abandonment_rise_pp),
    ];
    for (what, value) in rates {
        if let Some(value) = value {
            if !(0.0..=100.0).contains(&value) {
                return Err(GateError::BadRateAllowance { what, value });
            }
        }
    }
    if criteria.percentiles.is_empty()
        && criteria.max_success_drop_pp.is_none()
        && criteria.max_abandonment_rise_pp.is_none()
    {
        return Err(GateError::NoCriteria);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum PercentileCheck {
    Relative(f64),
    Absolute(u64),
}

fn evaluate_percentile(
    baseline: &ArmData,
    candidate: &ArmData,
    criterion: &PercentileCriterion,
    criteria: &GateCriteria,
) -> Vec<CriterionResult> {
    let p = criterion.percentile;
    let q = p / 100.0;
    let confidence = criteria.confidence;
    let alpha = 1.0 - confidence;
    let nb = baseline.durations.len();
    let nc = candidate.durations.len();
    let b_value = point_estimate(&baseline.durations, q);
    let c_value = point_estimate(&candidate.durations, q);
    let delta_seconds_per_task = match (b_value, c_value) {
        (Some(b), Some(c)) => Some((c as f64 - b as f64) / 1e6),
        _ => None,
    };
    let bounds = percentile_bounds(baseline, candidate, p, criteria.min_samples, alpha);

    let mut checks = Vec::new();
    if let Some(ratio) = criterion.max_increase_ratio {
        checks.push(PercentileCheck::Relative(ratio));
    }
    if let Some(us) = criterion.max_increase_us {
        checks.push(PercentileCheck::Absolute(us));
    }
    let both = checks.len() > 1;

    checks
        .into_iter()
        .map(|check| {
            let (kind, allowance, prefix) = match check {
                PercentileCheck::Relative(r) => (
                    CriterionKind::PercentileRelative { percentile: p },
                    r,
                    "relative check: ",
                ),
                PercentileCheck::Absolute(us) => (
                    CriterionKind::PercentileAbsolute { percentile: p },
                    us as f64,
                    "absolute check: ",
                ),
            };
            let prefix = if both { prefix } else { "" };
            let unit = kind.unit();
            let change = match (b_value, c_value, unit) {
                (Some(b), Some(c), ChangeUnit::Ratio) if b > 0 => Some(c as f64 / b as f64 - 1.0),
                (Some(b), Some(c), ChangeUnit::Microseconds) => Some(c as f64 - b as f64),
                _ => None,
            };
            let (verdict, interval, reason) = match &bounds {
                Err(why) => (Verdict::Inconclusive, None, format!("{prefix}{why}")),
                Ok((b, c)) => {
                    let (b, c) = (ArmBounds::from(b), ArmBounds::from(c));
                    let interval = match unit {
                        ChangeUnit::Ratio => mover_ratio(c, b),
                        _ => mover_difference(c, b),
                    };
                    let verdict = decide(interval, allowance);
                    let what = format!("p{p}");
                    let moved = match change {
                        Some(x) if x < 0.0 => format!("{what} fell {}", fmt_magnitude(unit, x)),
                        Some(x) => format!("{what} rose {}", fmt_magnitude(unit, x)),
                        None => format!("{what} changed by an undefined ratio"),
                    };
                    let reason = format!(
                        "{prefix}{moved} ({} {} .. {}), {}",
                        bounds_label(confidence),
                        fmt_change(unit, interval.lower),
                        fmt_change(unit, interval.upper),
                        verdict_clause(verdict, &fmt_allowance(unit, allowance), "samples"),
                    );
                    (verdict, Some(interval), reason)
                }
            };
            CriterionResult {
                name: format!("p{p} duration"),
                kind,
                verdict,
                baseline_value: b_value.map(|v| v as f64),
                candidate_value: c_value.map(|v| v as f64),
                change,
                interval,
                allowance,
                baseline_samples: nb,
                candidate_samples: nc,
                delta_seconds_per_task,
                reason,
            }
        })
        .collect()
}

/// Both arms' quantile bounds, or why the check cannot be decided.
fn percentile_bounds(
    baseline: &ArmData,
    candidate: &ArmData,
    p: f64,
    min_samples: u64,
    alpha: f64,
) -> Result<(QuantileInterval, QuantileInterval), String> {
    let q = p / 100.0;
    let arms = [("baseline", baseline), ("candidate", candidate)];
    let missing: Vec<String> = arms
        .iter()
        .filter(|(_, arm)| arm.durations.is_empty())
        .map(|(name, arm)| match arm.instances() {
            0 => format!("{name} has no data"),
            n => format!("{name} has no data for p{p}: none of its {n} instances succeeded"),
        })
        .collect();
    if !missing.is_empty() {
        return Err(missing.join("; "));
    }
    let (nb, nc) = (baseline.durations.len(), candidate.durations.len());
    if let Some(why) = too_few(nb, nc, min_samples, "samples") {
        return Err(why);
    }
    let bound = |name: &str, arm: &ArmData| {
        quantile_bounds(&arm.durations, q, alpha, alpha).ok_or_else(|| {
            format!(
                "{name}'s {} samples cannot bound p{p} at {}% confidence; at least {} are needed",
                arm.durations.len(),
                trim(100.0 * (1.0 - alpha)),
                min_samples_for_bounds(q, alpha, alpha),
            )
        })
    };
    Ok((bound("baseline", baseline)?, bound("candidate", candidate)?))
}

#[derive(Debug, Clone, Copy)]
enum RateCheck {
    SuccessDrop,
    AbandonmentRise,
}

fn evaluate_rate(
    check: RateCheck,
    baseline: &ArmData,
    candidate: &ArmData,
    allowance: f64,
    criteria: &GateCriteria,
) -> CriterionResult {
    let confidence = criteria.confidence;
    let (nb, nc) = (baseline.instances(), candidate.instances());
    let (kind, name, xb, xc) = match check {
        RateCheck::SuccessDrop => (
            CriterionKind::SuccessRate,
            "success rate",
            baseline.succeeded,
            candidate.succeeded,
        ),
        RateCheck::AbandonmentRise => (
            CriterionKind::AbandonmentRate,
            "abandonment rate",
            baseline.abandoned,
            candidate.abandoned,
        ),
    };
    let rate = |x: u64, n: u64| (n > 0).then(|| 100.0 * x as f64 / n as f64);
    let (b_rate, c_rate) = (rate(xb, nb), rate(xc, nc));
    // Positive = worse: a drop of the success rate, a rise of the abandonment rate.
    let worse_by = |b: f64, c: f64| match check {
        RateCheck::SuccessDrop => b - c,
        RateCheck::AbandonmentRise => c - b,
    };
    let change = match (b_rate, c_rate) {
        (Some(b), Some(c)) => Some(worse_by(b, c)),
        _ => None,
    };
    let z = inverse_normal_cdf(confidence);
    let difference = match check {
        RateCheck::SuccessDrop => newcombe_difference(xb, nb, xc, nc, z),
        RateCheck::AbandonmentRise => newcombe_difference(xc, nc, xb, nb, z),
    };

    let no_data: Vec<&str> = [("baseline", nb), ("candidate", nc)]
        .iter()
        .filter(|(_, n)| *n == 0)
        .map(|(arm, _)| *arm)
        .collect();
    let (verdict, interval, reason) = if !no_data.is_empty() {
        let who = no_data.join(" and ");
        let has = if no_data.len() > 1 { "have" } else { "has" };
        (Verdict::Inconclusive, None, format!("{who} {has} no data"))
    } else if let Some(why) = too_few(nb, nc, criteria.min_samples, "instances") {
        (Verdict::Inconclusive, None, why)
    } else if let (Some(d), Some(b), Some(c)) = (difference, b_rate, c_rate) {
        let interval = ChangeInterval {
            lower: 100.0 * d.lower,
            upper: 100.0 * d.upper,
        };
        let verdict = decide(interval, allowance);
        let worse = worse_by(b, c);
        let (direction, side) = match (check, worse < 0.0) {
            (RateCheck::SuccessDrop, false) => ("fell", "drop"),
            (RateCheck::SuccessDrop, true) => ("rose", "drop"),
            (RateCheck::AbandonmentRise, false) => ("rose", "rise"),
            (RateCheck::AbandonmentRise, true) => ("fell", "rise"),
        };
        let reason = format!(
            "{name} {direction} {:.2} pp ({b:.2}% → {c:.2}%; {} on the {side} {} .. {}), {}",
            worse.abs(),
            bounds_label(confidence),
            fmt_change(ChangeUnit::PercentagePoints, interval.lower),
            fmt_change(ChangeUnit::PercentagePoints, interval.upper),
            verdict_clause(verdict, &format!("{side} of {} pp", trim(allowance)), "instances"),
        );
        (verdict, Some(interval), reason)
    } else {
        (
            Verdict::Inconclusive,
            None,
            format!("{name} counts are inconsistent: more successes or abandonments than instances"),
        )
    };
    CriterionResult {
        name: name.to_owned(),
        kind,
        verdict,
        baseline_value: b_rate,
        candidate_value: c_rate,
        change,
        interval,
        allowance,
        baseline_samples: nb,
        candidate_samples: nc,
        delta_seconds_per_task: None,
        reason,
    }
}

fn customer_hours_per_week(baseline: &ArmData, candidate: &ArmData) -> Option<f64> {
    let mean_b = baseline.mean_duration_us()?;
    let mean_c = candidate.mean_duration_us()?;
    let window = candidate.window_secs;
    if !(window.is_finite() && window > 0.0) {
        return None;
    }
    let per_week = candidate.instances() as f64 / window * SECONDS_PER_WEEK;
    Some((mean_c - mean_b) * per_week / MICROS_PER_HOUR)
}

/// PASS when the whole interval is within the allowance, FAIL when it is wholly beyond,
/// INCONCLUSIVE otherwise (including NaN bounds).
fn decide(interval: ChangeInterval, allowance: f64) -> Verdict {
    if interval.lower > allowance {
        Verdict::Fail
    } else if interval.upper <= allowance {
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    }
}

/// Why an arm below `min` decides nothing; `None` when both arms have enough.
fn too_few(nb: u64, nc: u64, min: u64, noun: &str) -> Option<String> {
    match (nb < min, nc < min) {
        (true, true) => Some(format!(
            "baseline has {nb} {noun} and candidate has {nc}; at least {min} per arm are needed"
        )),
        (true, false) => Some(format!(
            "baseline has {nb} {noun}; at least {min} are needed (candidate has {nc})"
        )),
        (false, true) => Some(format!(
            "candidate has {nc} {noun}; at least {min} are needed (baseline has {nb})"
        )),
        (false, false) => None,
    }
}

// ---------------------------------------------------------------- percentile intervals

/// Two-sided, equal-tailed, distribution-free interval for a percentile of the histogram's
/// population at `level` (each tail `(1 − level)/2`), widened to bin edges.
///
/// `None` when the histogram is empty, `percentile` is not in (0, 100), `level` is not in
/// (0, 1), or there are too few samples for an interval at that level (see
/// [`min_samples_for_bounds`]).
pub fn percentile_interval(hist: &Histogram<u64>, percentile: f64, level: f64) -> Option<QuantileInterval> {
    if !(level > 0.0 && level < 1.0) {
        return None;
    }
    let tail = (1.0 - level) / 2.0;
    quantile_bounds(hist, percentile / 100.0, tail, tail)
}

/// Bounds for quantile `q` with `P(lower > ξ_q) ≤ alpha_lower` and
/// `P(upper < ξ_q) ≤ alpha_upper`, from order statistics, widened to bin edges.
///
/// `None` when the histogram is empty, `q` is not in (0, 1), an alpha is not in (0, 0.5),
/// or the sample is too small for either bound.
pub fn quantile_bounds(hist: &Histogram<u64>, q: f64, alpha_lower: f64, alpha_upper: f64) -> Option<QuantileInterval> {
    let n = hist.len();
    let alphas_ok = [alpha_lower, alpha_upper].iter().all(|a| *a > 0.0 && *a < 0.5);
    if n == 0 || !(q > 0.0 && q < 1.0) || !alphas_ok {
        return None;
    }
    let (lower_rank, upper_rank) = order_statistic_ranks(n, q, alpha_lower, alpha_upper);
    let (lower_rank, upper_rank) = (lower_rank?, upper_rank?);
    let estimate_rank = estimate_rank(n, q);
    let (lower, _) = bin_at_rank(hist, lower_rank)?;
    let (estimate_low, estimate) = bin_at_rank(hist, estimate_rank)?;
    let (_, upper) = bin_at_rank(hist, upper_rank)?;
    Some(QuantileInterval {
        samples: n,
        lower_rank,
        estimate_rank,
        upper_rank,
        lower,
        estimate_low,
        estimate,
        upper,
    })
}

/// The histogram's value at quantile `q` (as `value_at_quantile`), `None` when empty.
fn point_estimate(hist: &Histogram<u64>, q: f64) -> Option<u64> {
    let n = hist.len();
    if n == 0 {
        return None;
    }
    bin_at_rank(hist, estimate_rank(n, q)).map(|(_, high)| high)
}

/// The rank `Histogram::value_at_quantile` reads, so reported values match dashboards.
fn estimate_rank(n: u64, q: f64) -> u64 {
    ((q * n as f64).ceil() as u64).clamp(1, n)
}

/// The (lowest, highest) equivalent values of the bin holding the `rank`-th smallest sample
/// (1-based); `None` when `rank` is 0 or above the count.
fn bin_at_rank(hist: &Histogram<u64>, rank: u64) -> Option<(u64, u64)> {
    if rank == 0 {
        return None;
    }
    let mut seen: u64 = 0;
    for bin in hist.iter_recorded() {
        seen = seen.saturating_add(bin.count_at_value());
        if seen >= rank {
            let value = bin.value_iterated_to();
            return Some((hist.lowest_equivalent(value), hist.highest_equivalent(value)));
        }
    }
    None
}

/// Fewest samples for which both one-sided bounds of quantile `q` exist: the lower needs
/// `(1−q)ⁿ ≤ alpha_lower` (some rank has `P(B ≤ l−1) ≤ alpha`), the upper `qⁿ ≤ alpha_upper`.
pub fn min_samples_for_bounds(q: f64, alpha_lower: f64, alpha_upper: f64) -> u64 {
    let lower = alpha_lower.ln() / (1.0 - q).ln();
    let upper = alpha_upper.ln() / q.ln();
    lower.max(upper).ceil().max(1.0) as u64
}

/// Ranks `(l, u)` (1-based) of the order statistics bounding quantile `q` of `n` samples:
/// `l` is the largest rank with `P(B ≤ l−1) ≤ alpha_lower` and `u` the smallest with
/// `P(B ≥ u) ≤ alpha_upper`, for `B ~ Binomial(n, q)`. Either is `None` when no rank in
/// `1..=n` qualifies (too few samples).
///
/// Exact binomial tails while `n·q·(1−q) ≤` [`EXACT_BINOMIAL_MAX_VARIANCE`], the normal
/// approximation with continuity correction above. Expects `n ≥ 1`, `q` in (0, 1) and
/// alphas in (0, 0.5).
pub fn order_statistic_ranks(n: u64, q: f64, alpha_lower: f64, alpha_upper: f64) -> (Option<u64>, Option<u64>) {
    if n == 0 || !(q > 0.0 && q < 1.0) {
        return (None, None);
    }
    let nf = n as f64;
    let mean = nf * q;
    let variance = mean * (1.0 - q);
    if variance > EXACT_BINOMIAL_MAX_VARIANCE {
        normal_ranks(n, q, alpha_lower, alpha_upper)
    } else {
        exact_ranks(n, q, alpha_lower, alpha_upper)
    }
}

fn normal_ranks(n: u64, q: f64, alpha_lower: f64, alpha_upper: f64) -> (Option<u64>, Option<u64>) {
    let nf = n as f64;
    let mean = nf * q;
    let sd = (mean * (1.0 - q)).sqrt();
    // P(B ≤ k−1) ≈ Φ((k − 0.5 − nq)/sd) ≤ α  ⇔  k ≤ nq + 0.5 − z·sd
    let l = (mean + 0.5 - inverse_normal_cdf(1.0 - alpha_lower) * sd).floor();
    // P(B ≥ k) ≈ 1 − Φ((k − 0.5 − nq)/sd) ≤ α  ⇔  k ≥ nq + 0.5 + z·sd
    let u = (mean + 0.5 + inverse_normal_cdf(1.0 - alpha_upper) * sd).ceil();
    let l = (l >= 1.0).then(|| (l as u64).min(n));
    let u = (u <= nf).then(|| (u as u64).max(1));
    (l, u)
}

fn exact_ranks(n: u64, q: f64, alpha_lower: f64, alpha_upper: f64) -> (Option<u64>, Option<u64>) {
    let nf = n as f64;
    let mean = nf * q;
    let sd = (mean * (1.0 - q)).sqrt();
    // Outside mean ± (40 sd + 40) the pmf is below e⁻⁸⁰⁰ relative to the mode: nothing an
    // alpha in (0, 0.5) can see.
    let span = 40.0 * sd + 40.0;
    let lo = (mean - span).floor().max(0.0) as u64;
    let hi = ((mean + span).ceil().min(nf) as u64).max(lo);
    let mode = (((nf + 1.0) * q).floor() as u64).clamp(lo, hi);
    let len = usize::try_from(hi - lo + 1).unwrap_or(usize::MAX);
    // Weights relative to the mode, by the pmf ratio p(k+1)/p(k) = (n−k)/(k+1) · q/(1−q):
    // no factorials, no underflow near the mode, no overflow anywhere.
    let mut weight = vec![0.0_f64; len];
    let up = q / (1.0 - q);
    let down = (1.0 - q) / q;
    let at = |k: u64| (k - lo) as usize;
    weight[at(mode)] = 1.0;
    for k in mode..hi {
        weight[at(k + 1)] = weight[at(k)] * ((n - k) as f64 / (k + 1) as f64) * up;
    }
    for k in (lo + 1..=mode).rev() {
        weight[at(k - 1)] = weight[at(k)] * (k as f64 / (n - k + 1) as f64) * down;
    }
    let total: f64 = weight.iter().sum();

    // l: the largest k in 1..=n with P(B ≤ k−1) ≤ alpha_lower.
    let mut cdf = Vec::with_capacity(len);
    let mut running = 0.0;
    for w in &weight {
        running += w;
        cdf.push(running / total);
    }
    let top = hi.min(n - 1);
    let mut l = None;
    let mut j = top;
    loop {
        if j < lo {
            break;
        }
        if cdf[at(j)] <= alpha_lower {
            l = Some(j + 1);
            break;
        }
        if j == lo {
            break;
        }
        j -= 1;
    }
    if l.is_none() && lo >= 1 {
        // P(B ≤ lo − 1) is below anything representable.
        l = Some(lo);
    }

    // u: the smallest k in 1..=n with P(B ≥ k) ≤ alpha_upper.
    let mut tail = vec![0.0_f64; len];
    let mut running = 0.0;
    for k in (lo..=hi).rev() {
        running += weight[at(k)];
        tail[at(k)] = running / total;
    }
    let mut u = None;
    for k in lo.max(1)..=hi {
        if tail[at(k)] <= alpha_upper {
            u = Some(k);
            break;
        }
    }
    if u.is_none() && hi < n {
        // P(B ≥ hi + 1) is below anything representable.
        u = Some(hi + 1);
    }
    (l, u)
}

// ---------------------------------------------------------------- comparing two arms

/// MOVER bounds for `candidate − baseline` (Zou & Donner 2008), taking each estimate at
/// the edge of its possible range that makes the bound widest, so that binning never
/// tightens it: see the module doc.
pub fn mover_difference(candidate: ArmBounds, baseline: ArmBounds) -> ChangeInterval {
    let (c, b) = (candidate, baseline);
    let lower = (c.estimate_low - b.estimate_high) - (c.estimate_low - c.lower).hypot(b.upper - b.estimate_high);
    let upper = (c.estimate_high - b.estimate_low) + (c.upper - c.estimate_high).hypot(b.estimate_low - b.lower);
    ChangeInterval { lower, upper }
}

/// MOVER bounds for `candidate / baseline − 1`, computed on the log scale. A bound that
/// would need the logarithm of 0 is vacuous: `lower = −1`, `upper = +∞`.
pub fn mover_ratio(candidate: ArmBounds, baseline: ArmBounds) -> ChangeInterval {
    let (c, b) = (candidate, baseline);
    let ln = |a: ArmBounds| ArmBounds {
        lower: a.lower.ln(),
        estimate_low: a.estimate_low.ln(),
        estimate_high: a.estimate_high.ln(),
        upper: a.upper.ln(),
    };
    let logs = mover_difference(ln(c), ln(b));
    let lower = if c.lower > 0.0 && c.estimate_low > 0.0 && b.estimate_high > 0.0 {
        logs.lower.exp() - 1.0
    } else {
        -1.0
    };
    let upper = if b.lower > 0.0 && b.estimate_low > 0.0 && c.estimate_high > 0.0 {
        logs.upper.exp() - 1.0
    } else {
        f64::INFINITY
    };
    ChangeInterval { lower, upper }
}

// ---------------------------------------------------------------- rates

/// Wilson score interval for `successes / trials` with normal quantile `z` (1.96 for a
/// two-sided 95% interval, 1.645 for a one-sided 95% bound), clamped to [0, 1].
/// `None` without trials or with more successes than trials.
pub fn wilson_interval(successes: u64, trials: u64, z: f64) -> Option<(f64, f64)> {
    if trials == 0 || successes > trials {
        return None;
    }
    let n = trials as f64;
    let x = successes as f64;
    let z2 = z * z;
    let denominator = n + z2;
    let centre = (x + z2 / 2.0) / denominator;
    let half = z * (x * (n - x) / n + z2 / 4.0).sqrt() / denominator;
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// Newcombe's hybrid score interval (method 10, Newcombe 1998) for `x1/n1 − x2/n2` from two
/// independent samples: MOVER over the two Wilson intervals at quantile `z`. Chosen over
/// the Wald interval because it stays valid at rates near 0% or 100% and at small counts,
/// which is where gates on success and abandonment live. `None` as [`wilson_interval`].
pub fn newcombe_difference(x1: u64, n1: u64, x2: u64, n2: u64, z: f64) -> Option<ProportionDifference> {
    let (l1, u1) = wilson_interval(x1, n1, z)?;
    let (l2, u2) = wilson_interval(x2, n2, z)?;
    let p1 = x1 as f64 / n1 as f64;
    let p2 = x2 as f64 / n2 as f64;
    let estimate = p1 - p2;
    Some(ProportionDifference {
        estimate,
        lower: estimate - (p1 - l1).hypot(u2 - p2),
        upper: estimate + (u1 - p1).hypot(p2 - l2),
    })
}

/// The standard normal quantile Φ⁻¹(p), by Wichura's AS 241 (PPND16), accurate to about
/// 1e-16. ±∞ at 0 and 1, NaN outside [0, 1].
#[allow(clippy::excessive_precision)] // the published coefficients, digit for digit
pub fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 8] = [
        3.3871328727963666080e0,
        1.3314166789178437745e+2,
        1.9715909503065514427e+3,
        1.3731693765509461125e+4,
        4.5921953931549871457e+4,
        6.7265770927008700853e+4,
        3.3430575583588128105e+4,
        2.5090809287301226727e+3,
    ];
    const B: [f64; 8] = [
        1.0,
        4.2313330701600911252e+1,
        6.8718700749205790830e+2,
        5.3941960214247511077e+3,
        2.1213794301586595867e+4,
        3.9307895800092710610e+4,
        2.8729085735721942674e+4,
        5.2264952788528545610e+3,
    ];
    const C: [f64; 8] = [
        1.42343711074968357734e0,
        4.63033784615654529590e0,
        5.76949722146069140550e0,
        3.64784832476320460504e0,
        1.27045825245236838258e0,
        2.41780725177450611770e-1,
        2.27238449892691845833e-2,
        7.74545014278341407640e-4,
    ];
    const D: [f64; 8] = [
        1.0,
        2.05319162663775882187e0,
        1.67638483018380384940e0,
        6.89767334985100004550e-1,
        1.48103976427480074590e-1,
        1.51986665636164571966e-2,
        5.47593808499534494600e-4,
        1.05075007164441684324e-9,
    ];
    const E: [f64; 8] = [
        6.65790464350110377720e0,
        5.46378491116411436990e0,
        1.78482653991729133580e0,
        2.96560571828504891230e-1,
        2.65321895265761230930e-2,
        1.24266094738807843860e-3,
        2.71155556874348757815e-5,
        2.01033439929228813265e-7,
    ];
    const F: [f64; 8] = [
        1.0,
        5.99832206555887937690e-1,
        1.36929880922735805310e-1,
        1.48753612908506148525e-2,
        7.86869131145613259100e-4,
        1.84631831751005468180e-5,
        1.42151175831644588870e-7,
        2.04426310338993978564e-15,
    ];
    fn poly(c: &[f64; 8], x: f64) -> f64 {
        c.iter().rev().fold(0.0, |acc, &k| acc * x + k)
    }
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        let r = 0.180625 - q * q;
        return q * poly(&A, r) / poly(&B, r);
    }
    let tail = if q < 0.0 { p } else { 1.0 - p };
    let r = (-tail.ln()).sqrt();
    let value = if r <= 5.0 {
        let r = r - 1.6;
        poly(&C, r) / poly(&D, r)
    } else {
        let r = r - 5.0;
        poly(&E, r) / poly(&F, r)
    };
    if q < 0.0 { -value } else { value }
}

// ---------------------------------------------------------------- wording

fn bounds_label(confidence: f64) -> String {
    format!("one-sided {}% bounds", trim(100.0 * confidence))
}

/// A number with at most 4 decimals and no trailing zeros: 10, 97.5, 0.25.
fn trim(x: f64) -> String {
    let rounded = (x * 1e4).round() / 1e4;
    format!("{rounded}")
}

fn verdict_clause(verdict: Verdict, allowed: &str, more: &str) -> String {
    match verdict {
        Verdict::Pass => format!("within the allowed {allowed}"),
        Verdict::Fail => format!("beyond the allowed {allowed}"),
        Verdict::Inconclusive => {
            format!("which straddles the allowed {allowed}; more {more} are needed to decide")
        }
    }
}

/// An allowance as people write it: "+10%", "+500 ms", "+1.5 s".
fn fmt_allowance(unit: ChangeUnit, a: f64) -> String {
    match unit {
        ChangeUnit::Ratio => format!("+{}%", trim(100.0 * a)),
        ChangeUnit::PercentagePoints => format!("+{} pp", trim(a)),
        ChangeUnit::Microseconds if a >= 1e6 => format!("+{} s", trim(a / 1e6)),
        ChangeUnit::Microseconds if a >= 1e3 => format!("+{} ms", trim(a / 1e3)),
        ChangeUnit::Microseconds => format!("+{} µs", trim(a)),
    }
}

/// A signed change in its unit: "+24.8%", "-1.20 s", "+0.35 pp".
fn fmt_change(unit: ChangeUnit, x: f64) -> String {
    let sign = if x < 0.0 { "-" } else { "+" };
    format!("{sign}{}", fmt_magnitude(unit, x))
}

/// The magnitude of a change in its unit, without sign: "24.8%", "1.20 s".
fn fmt_magnitude(unit: ChangeUnit, x: f64) -> String {
    let a = x.abs();
    if !a.is_finite() {
        return "inf".to_owned();
    }
    match unit {
        ChangeUnit::Ratio => format!("{:.1}%", 100.0 * a),
        ChangeUnit::PercentagePoints => format!("{a:.2} pp"),
        ChangeUnit::Microseconds if a >= 1e6 => format!("{:.2} s", a / 1e6),
        ChangeUnit::Microseconds if a >= 1e3 => format!("{:.1} ms", a / 1e3),
        ChangeUnit::Microseconds => format!("{a:.0} µs"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use rand_distr::{Distribution, LogNormal};

    const HIGHEST: u64 = 2_592_000_000_000;
    const MEDIAN_US: f64 = 30e6;
    const WEEK: f64 = SECONDS_PER_WEEK;

    fn histogram(sigfig: u8) -> Histogram<u64> {
        Histogram::new_with_bounds(1, HIGHEST, sigfig).unwrap()
    }

    fn arm_with_sigfig(values: &[u64], sigfig: u8) -> ArmData {
        let mut durations = histogram(sigfig);
        let mut total: u128 = 0;
        for &v in values {
            let v = v.clamp(1, HIGHEST);
            durations.record(v).unwrap();
            total += u128::from(v);
        }
        ArmData {
            durations,
            succeeded: values.len() as u64,
            failed: 0,
            cancelled: 0,
            abandoned: 0,
            total_time_us: total,
            window_secs: WEEK,
        }
    }

    fn arm(values: &[u64]) -> ArmData {
        arm_with_sigfig(values, 2)
    }

    /// An "ideal" lognormal sample: the exact (i − ½)/n quantiles, no randomness.
    fn ideal_lognormal(n: usize, sigma: f64, scale: f64) -> Vec<u64> {
        (0..n)
            .map(|i| {
                let z = inverse_normal_cdf((i as f64 + 0.5) / n as f64);
                (MEDIAN_US * scale * (sigma * z).exp()).round() as u64
            })
            .collect()
    }

    fn random_lognormal(rng: &mut StdRng, n: usize, sigma: f64, scale: f64) -> Vec<u64> {
        let dist = LogNormal::new(MEDIAN_US.ln(), sigma).unwrap();
        (0..n).map(|_| (dist.sample(rng) * scale).round() as u64).collect()
    }

    fn p90_gate(ratio: f64, min_samples: u64) -> GateCriteria {
        GateCriteria {
            percentiles: vec![PercentileCriterion {
                percentile: 90.0,
                max_increase_ratio: Some(ratio),
                max_increase_us: None,
            }],
            max_success_drop_pp: None,
            max_abandonment_rise_pp: None,
            min_samples,
            confidence: 0.95,
        }
    }

    fn rate_gate(drop_pp: Option<f64>, rise_pp: Option<f64>) -> GateCriteria {
        GateCriteria {
            percentiles: vec![],
            max_success_drop_pp: drop_pp,
            max_abandonment_rise_pp: rise_pp,
            min_samples: 100,
            confidence: 0.95,
        }
    }

    fn counts(succeeded: u64, failed: u64, cancelled: u64, abandoned: u64) -> ArmData {
        ArmData {
            durations: histogram(2),
            succeeded,
            failed,
            cancelled,
            abandoned,
            total_time_us: 0,
            window_secs: WEEK,
        }
    }

    // ------------------------------------------------------------ building blocks

    #[test]
    fn inverse_normal_matches_reference_quantiles() {
        let cases = [
            (0.5, 0.0),
            (0.9, 1.2815515655446004),
            (0.95, 1.6448536269514722),
            (0.975, 1.959963984540054),
            (0.99, 2.3263478740408408),
            (0.999, 3.090232306167813),
            (1e-10, -6.361340902404056),
        ];
        for (p, z) in cases {
            let got = inverse_normal_cdf(p);
            assert!((got - z).abs() < 1e-9 * z.abs().max(1.0), "Φ⁻¹({p}) = {got}, want {z}");
        }
        assert_eq!(inverse_normal_cdf(0.3), -inverse_normal_cdf(0.7));
        // Far tails (AS 241's third branch): Φ(Φ⁻¹(p)) = p, with the upper tail
        // Q(x) = φ(x) / (x + 1/(x + 2/(x + 3/(x + …)))) by Laplace's continued fraction.
        let upper_tail = |x: f64| {
            let mut fraction = x;
            for k in (1..=300).rev() {
                fraction = x + k as f64 / fraction;
            }
            (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt() / fraction
        };
        for p in [1e-12, 1e-50, 1e-300] {
            let back = upper_tail(-inverse_normal_cdf(p));
            assert!(((back - p) / p).abs() < 1e-9, "Φ(Φ⁻¹({p:e})) = {back:e}");
        }
        assert!(inverse_normal_cdf(1.5).is_nan());
    }

    #[test]
    fn median_ranks_for_twenty_samples_are_the_textbook_six_and_fifteen() {
        // Bin(20, ½): P(B ≤ 5) = P(B ≥ 15) = 0.0207 ≤ 0.025 < P(B ≤ 6) = 0.0577.
        assert_eq!(order_statistic_ranks(20, 0.5, 0.025, 0.025), (Some(6), Some(15)));
    }

    #[test]
    fn exact_and_normal_ranks_agree_where_they_meet() {
        // Just below the switch both methods can be compared; they differ by at most a rank.
        for q in [0.5, 0.9, 0.99] {
            let n = (EXACT_BINOMIAL_MAX_VARIANCE / (q * (1.0 - q))).floor() as u64;
            let (el, eu) = exact_ranks(n, q, 0.05, 0.05);
            let (nl, nu) = normal_ranks(n, q, 0.05, 0.05);
            let (el, eu, nl, nu) = (el.unwrap(), eu.unwrap(), nl.unwrap(), nu.unwrap());
            assert!(
                el.abs_diff(nl) <= 1 && eu.abs_diff(nu) <= 1,
                "q {q}: exact {el}..{eu}, normal {nl}..{nu}"
            );
        }
    }

    #[test]
    fn ranks_exist_only_from_the_minimum_sample_size() {
        // One-sided 95% bounds of p95 need (0.95)ⁿ ≤ 0.05, i.e. n ≥ 59.
        assert_eq!(min_samples_for_bounds(0.95, 0.05, 0.05), 59);
        assert_eq!(order_statistic_ranks(58, 0.95, 0.05, 0.05).1, None);
        assert_eq!(order_statistic_ranks(59, 0.95, 0.05, 0.05).1, Some(59));
    }

    #[test]
    fn percentile_interval_reaches_the_bin_edges() {
        // Every sample in one bin: the interval is exactly that bin.
        let a = arm(&[123_456_789; 500]);
        let iv = percentile_interval(&a.durations, 90.0, 0.95).unwrap();
        assert_eq!(iv.lower, a.durations.lowest_equivalent(123_456_789));
        assert_eq!(iv.upper, a.durations.highest_equivalent(123_456_789));
        assert!(iv.lower < 123_456_789 && 123_456_789 < iv.upper);
        assert_eq!(iv.estimate, a.durations.value_at_quantile(0.9));
    }

    #[test]
    fn percentile_interval_covers_the_exact_quantile_at_its_level() {
        // 90% two-sided intervals for p90 of lognormal(median 30 s, σ 0.8), 400 samples:
        // each tail may miss the true p90 at most 5% of the time.
        let sigma = 0.8;
        let true_p90 = MEDIAN_US * (sigma * inverse_normal_cdf(0.9)).exp();
        let mut rng = StdRng::seed_from_u64(11);
        let trials = 1000;
        let (mut above, mut below) = (0, 0);
        for _ in 0..trials {
            let a = arm(&random_lognormal(&mut rng, 400, sigma, 1.0));
            let iv = percentile_interval(&a.durations, 90.0, 0.90).unwrap();
            if iv.lower as f64 > true_p90 {
                above += 1;
            }
            if (iv.upper as f64) < true_p90 {
                below += 1;
            }
        }
        let (above, below) = (above as f64 / trials as f64, below as f64 / trials as f64);
        eprintln!("p90 interval misses: lower above truth {above:.3}, upper below {below:.3} (each ≤ 0.05 nominal)");
        // 0.05 plus 2 standard errors of a 1000-trial rate.
        assert!(above <= 0.064 && below <= 0.064);
        // One deterministic case: the ideal sample's interval holds the exact p90.
        let ideal = arm(&ideal_lognormal(2000, sigma, 1.0));
        let iv = percentile_interval(&ideal.durations, 90.0, 0.95).unwrap();
        assert!((iv.lower as f64) <= true_p90 && true_p90 <= iv.upper as f64);
    }

    #[test]
    fn wilson_matches_newcombes_published_interval() {
        // Newcombe (1998), Table I: 81/263, score method, 0.2553 to 0.3662.
        let (lo, hi) = wilson_interval(81, 263, 1.959963984540054).unwrap();
        assert!((lo - 0.2553).abs() < 5e-5 && (hi - 0.3662).abs() < 5e-5, "{lo} {hi}");
        assert_eq!(wilson_interval(0, 10, 1.96).unwrap().0, 0.0);
        assert_eq!(wilson_interval(10, 10, 1.96).unwrap().1, 1.0);
        assert_eq!(wilson_interval(1, 0, 1.96), None);
    }

    #[test]
    fn newcombe_matches_published_worked_examples() {
        // Newcombe (1998), Table II, method 10, 95%:
        // (a) 56/70 − 48/80 = 0.2000, 0.0524 to 0.3339; (b) 9/10 − 3/10 = 0.6, 0.1705 to 0.8090.
        let z = inverse_normal_cdf(0.975);
        let a = newcombe_difference(56, 70, 48, 80, z).unwrap();
        assert!((a.estimate - 0.2).abs() < 1e-12);
        assert!(
            (a.lower - 0.0524).abs() < 5e-5 && (a.upper - 0.3339).abs() < 5e-5,
            "{a:?}"
        );
        let b = newcombe_difference(9, 10, 3, 10, z).unwrap();
        assert!(
            (b.lower - 0.1705).abs() < 5e-5 && (b.upper - 0.8090).abs() < 5e-5,
            "{b:?}"
        );
    }

    // ------------------------------------------------------------ verdict paths

    #[test]
    fn an_unchanged_release_passes() {
        let same = ideal_lognormal(20_000, 0.5, 1.0);
        let out = evaluate(&arm(&same), &arm(&same), &p90_gate(0.10, 100)).unwrap();
        let r = &out.criteria[0];
        assert_eq!(out.verdict, Verdict::Pass, "{}", r.reason);
        let iv = r.interval.unwrap();
        assert!(iv.lower < 0.0 && 0.0 < iv.upper && iv.upper <= 0.10);
        assert!(r.reason.contains("within the allowed +10%"), "{}", r.reason);
        assert_eq!(r.delta_seconds_per_task, Some(0.0));
    }

    #[test]
    fn a_clear_regression_fails_with_its_size_in_the_reason() {
        let b = arm(&ideal_lognormal(2000, 0.5, 1.0));
        let c = arm(&ideal_lognormal(2000, 0.5, 1.25));
        let out = evaluate(&b, &c, &p90_gate(0.10, 100)).unwrap();
        let r = &out.criteria[0];
        assert_eq!(out.verdict, Verdict::Fail, "{}", r.reason);
        assert!(r.interval.unwrap().lower > 0.10);
        assert!((r.change.unwrap() - 0.25).abs() < 0.02);
        assert!(r.reason.starts_with("p90 rose 2"), "{}", r.reason);
        assert!(r.reason.contains("one-sided 95% bounds +"), "{}", r.reason);
        assert!(r.reason.ends_with("beyond the allowed +10%"), "{}", r.reason);
        // Candidate p90 is ~14 s longer: each customer at p90 loses that much per task.
        let delta = r.delta_seconds_per_task.unwrap();
        assert!((12.0..16.0).contains(&delta), "{delta}");
        // Mean 30 s·e^(σ²/2)·0.25 ≈ 8.5 s more for 2000 instances a week ≈ 4.7 h.
        let hours = out.customer_hours_per_week.unwrap();
        assert!((4.0..5.5).contains(&hours), "{hours}");
    }

    #[test]
    fn a_change_at_the_allowance_is_inconclusive_by_width() {
        let b = arm(&ideal_lognormal(2000, 0.5, 1.0));
        let c = arm(&ideal_lognormal(2000, 0.5, 1.10));
        let out = evaluate(&b, &c, &p90_gate(0.10, 100)).unwrap();
        let r = &out.criteria[0];
        assert_eq!(out.verdict, Verdict::Inconclusive, "{}", r.reason);
        let iv = r.interval.unwrap();
        assert!(iv.lower <= 0.10 && 0.10 < iv.upper);
        assert!(r.reason.contains("straddles the allowed +10%"), "{}", r.reason);
    }

    #[test]
    fn too_few_samples_is_inconclusive_and_names_the_arm_and_counts() {
        let b = arm(&ideal_lognormal(5000, 0.5, 1.0));
        let c = arm(&ideal_lognormal(120, 0.5, 3.0));
        let out = evaluate(&b, &c, &p90_gate(0.10, 200)).unwrap();
        let r = &out.criteria[0];
        assert_eq!(out.verdict, Verdict::Inconclusive);
        assert_eq!(r.interval, None);
        assert_eq!(
            r.reason,
            "candidate has 120 samples; at least 200 are needed (baseline has 5000)"
        );
        assert_eq!((r.baseline_samples, r.candidate_samples), (5000, 120));
    }

    #[test]
    fn too_few_samples_to_bound_a_high_percentile_is_inconclusive() {
        let mut gate = p90_gate(0.10, 10);
        gate.percentiles[0].percentile = 99.0;
        let b = arm(&ideal_lognormal(150, 0.5, 1.0));
        let c = arm(&ideal_lognormal(150, 0.5, 2.0));
        let out = evaluate(&b, &c, &gate).unwrap();
        assert_eq!(out.verdict, Verdict::Inconclusive);
        assert_eq!(
            out.criteria[0].reason,
            "baseline's 150 samples cannot bound p99 at 95% confidence; at least 299 are needed"
        );
    }

    #[test]
    fn an_arm_without_data_is_inconclusive_never_pass() {
        let empty = arm(&[]);
        let full = arm(&ideal_lognormal(1000, 0.5, 1.0));
        let mut gate = p90_gate(0.10, 0);
        gate.max_success_drop_pp = Some(1.0);
        let out = evaluate(&empty, &full, &gate).unwrap();
        assert_eq!(out.verdict, Verdict::Inconclusive);
        assert_eq!(out.criteria.len(), 2);
        for r in &out.criteria {
            assert_eq!(r.verdict, Verdict::Inconclusive);
            assert_eq!(r.reason, "baseline has no data");
        }
        assert_eq!(out.customer_hours_per_week, None);
        let out = evaluate(&empty, &empty, &gate).unwrap();
        assert_eq!(out.criteria[1].reason, "baseline and candidate have no data");
        // Instances but no successes: the rates exist, the percentile does not.
        let failing = counts(0, 300, 0, 0);
        let out = evaluate(&full, &failing, &gate).unwrap();
        assert_eq!(
            out.criteria[0].reason,
            "candidate has no data for p90: none of its 300 instances succeeded"
        );
        assert_eq!(out.criteria[1].verdict, Verdict::Fail);
    }

    #[test]
    fn with_both_allowances_exceeding_either_one_fails_and_says_which() {
        // +25% of a ~57 s p90 is ~14 s: beyond +10% relative, within +60 s absolute.
        let mut gate = p90_gate(0.10, 100);
        gate.percentiles[0].max_increase_us = Some(60_000_000);
        let b = arm(&ideal_lognormal(2000, 0.5, 1.0));
        let c = arm(&ideal_lognormal(2000, 0.5, 1.25));
        let out = evaluate(&b, &c, &gate).unwrap();
        assert_eq!(out.verdict, Verdict::Fail);
        let [rel, abs] = &out.criteria[..] else {
            panic!("two checks expected")
        };
        assert_eq!(rel.kind, CriterionKind::PercentileRelative { percentile: 90.0 });
        assert_eq!(rel.verdict, Verdict::Fail);
        assert!(rel.reason.starts_with("relative check: p90 rose"), "{}", rel.reason);
        assert_eq!(abs.kind.unit(), ChangeUnit::Microseconds);
        assert_eq!(abs.verdict, Verdict::Pass);
        assert!(abs.reason.starts_with("absolute check: p90 rose"), "{}", abs.reason);
        assert!(abs.reason.ends_with("within the allowed +60 s"), "{}", abs.reason);
        // An absolute allowance of 5 s fails on its own, too.
        gate.percentiles[0].max_increase_ratio = Some(1.0);
        gate.percentiles[0].max_increase_us = Some(5_000_000);
        let out = evaluate(&b, &c, &gate).unwrap();
        assert_eq!(out.verdict, Verdict::Fail);
        assert_eq!(out.criteria[0].verdict, Verdict::Pass);
        assert_eq!(out.criteria[1].verdict, Verdict::Fail);
    }

    #[test]
    fn a_success_drop_beyond_the_allowance_fails() {
        let b = counts(9_800, 150, 30, 20);
        let c = counts(9_500, 400, 60, 40);
        let out = evaluate(&b, &c, &rate_gate(Some(1.0), None)).unwrap();
        let r = &out.criteria[0];
        assert_eq!(r.verdict, Verdict::Fail, "{}", r.reason);
        assert_eq!((r.baseline_value, r.candidate_value), (Some(98.0), Some(95.0)));
        assert!((r.change.unwrap() - 3.0).abs() < 1e-9);
        assert!(
            r.reason
                .starts_with("success rate fell 3.00 pp (98.00% → 95.00%; one-sided 95% bounds on the drop +2."),
            "{}",
            r.reason
        );
        assert!(r.reason.ends_with("beyond the allowed drop of 1 pp"), "{}", r.reason);
    }

    #[test]
    fn an_abandonment_rise_within_the_allowance_passes_and_a_small_sample_cannot() {
        let b = counts(19_000, 500, 100, 400);
        let c = counts(19_000, 500, 100, 420);
        let out = evaluate(&b, &c, &rate_gate(None, Some(1.0))).unwrap();
        let r = &out.criteria[0];
        assert_eq!(r.verdict, Verdict::Pass, "{}", r.reason);
        assert!(r.interval.unwrap().upper < 1.0);
        assert!(r.reason.contains("within the allowed rise of 1 pp"), "{}", r.reason);
        // The same rates from 300 instances are too imprecise to tell.
        let b = counts(285, 7, 2, 6);
        let c = counts(284, 7, 2, 7);
        let out = evaluate(&b, &c, &rate_gate(None, Some(1.0))).unwrap();
        assert_eq!(out.verdict, Verdict::Inconclusive);
        assert!(out.criteria[0].reason.contains("straddles"));
    }

    #[test]
    fn rates_count_every_outcome_and_respect_min_samples() {
        let b = counts(50, 10, 10, 10);
        let c = counts(900, 50, 25, 25);
        let out = evaluate(&b, &c, &rate_gate(Some(1.0), None)).unwrap();
        assert_eq!(
            out.criteria[0].reason,
            "baseline has 80 instances; at least 100 are needed (candidate has 1000)"
        );
        assert_eq!(out.criteria[0].baseline_value, Some(62.5));
    }

    #[test]
    fn the_gate_fails_if_any_check_fails_and_is_inconclusive_before_it_passes() {
        use Verdict::*;
        assert_eq!(Verdict::combine([Pass, Inconclusive, Fail]), Fail);
        assert_eq!(Verdict::combine([Pass, Inconclusive]), Inconclusive);
        assert_eq!(Verdict::combine([Pass, Pass]), Pass);
        assert_eq!(Verdict::combine([]), Inconclusive);
    }

    #[test]
    fn customer_hours_use_means_and_weekly_candidate_volume() {
        // Means 10 s and 12 s; candidate 1000 instances in 2 days = 3500 a week.
        let mut b = arm(&[10_000_000; 10]);
        let mut c = arm(&[12_000_000; 10]);
        c.failed = 990;
        c.window_secs = 2.0 * 86_400.0;
        let out = evaluate(&b, &c, &rate_gate(Some(5.0), None)).unwrap();
        let hours = out.customer_hours_per_week.unwrap();
        assert!((hours - 2.0 * 3500.0 / 3600.0).abs() < 1e-9, "{hours}");
        b.window_secs = 0.0;
        c.window_secs = 0.0;
        let out = evaluate(&b, &c, &rate_gate(Some(5.0), None)).unwrap();
        assert_eq!(out.customer_hours_per_week, None);
    }

    #[test]
    fn bad_criteria_are_rejected_with_the_bad_value_named() {
        let a = arm(&[1_000; 10]);
        let check = |gate: GateCriteria| evaluate(&a, &a, &gate).unwrap_err().to_string();
        let mut g = p90_gate(0.1, 1);
        g.percentiles[0].percentile = 100.5;
        assert_eq!(check(g), "percentile 100.5 is outside (0, 100)");
        let mut g = p90_gate(0.1, 1);
        g.percentiles[0].percentile = f64::NAN;
        assert_eq!(check(g), "percentile NaN is outside (0, 100)");
        let mut g = p90_gate(0.1, 1);
        g.confidence = 1.2;
        assert_eq!(check(g), "confidence 1.2 must be between 0.5 and 1");
        let mut g = p90_gate(0.1, 1);
        g.confidence = 0.5;
        assert_eq!(check(g), "confidence 0.5 must be between 0.5 and 1");
        let mut g = p90_gate(0.1, 1);
        g.percentiles[0].max_increase_ratio = None;
        assert_eq!(
            check(g),
            "criterion for p90 sets neither a relative nor an absolute allowance"
        );
        let mut g = p90_gate(0.1, 1);
        g.percentiles[0].max_increase_ratio = Some(-0.1);
        assert_eq!(
            check(g),
            "criterion for p90 allows a relative increase of -0.1; it must be a finite number of at least 0"
        );
        let g = rate_gate(Some(101.0), None);
        assert_eq!(
            check(g),
            "the allowed success-rate drop of 101 pp must be a finite number between 0 and 100"
        );
        let g = rate_gate(None, None);
        assert!(check(g).starts_with("the gate has no criteria"));
    }

    // ------------------------------------------------------------ validation simulation

    /// Lognormal shape used by the simulation: median 30 s, σ = 0.5 (p90/p50 = 1.9,
    /// p99/p50 = 3.2), a well-behaved automated customer task.
    const SIGMA: f64 = 0.5;
    const TRIALS: usize = 400;

    #[derive(Debug, Default)]
    struct Rates {
        pass: f64,
        fail: f64,
        inconclusive: f64,
    }

    /// Runs `TRIALS` gates with fresh samples and returns how often each verdict came out.
    #[allow(clippy::too_many_arguments)]
    fn simulate(
        label: &str,
        seed: u64,
        n_baseline: usize,
        n_candidate: usize,
        (sigma_b, sigma_c): (f64, f64),
        scale: f64,
        gate: &GateCriteria,
        trials: usize,
    ) -> Rates {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut tally = [0usize; 3];
        for _ in 0..trials {
            let b = arm(&random_lognormal(&mut rng, n_baseline, sigma_b, 1.0));
            let c = arm(&random_lognormal(&mut rng, n_candidate, sigma_c, scale));
            let out = evaluate(&b, &c, gate).unwrap();
            let slot = match out.verdict {
                Verdict::Pass => 0,
                Verdict::Fail => 1,
                Verdict::Inconclusive => 2,
            };
            tally[slot] += 1;
        }
        let t = trials as f64;
        let rates = Rates {
            pass: tally[0] as f64 / t,
            fail: tally[1] as f64 / t,
            inconclusive: tally[2] as f64 / t,
        };
        eprintln!(
            "{label}: FAIL {:.2}%, PASS {:.2}%, INCONCLUSIVE {:.2}% of {trials}",
            100.0 * rates.fail,
            100.0 * rates.pass,
            100.0 * rates.inconclusive
        );
        rates
    }

    #[test]
    fn simulation_same_distribution_rarely_fails_at_500_per_arm() {
        let r = simulate(
            "(a) same distribution, 500/arm, σ 0.5",
            1,
            500,
            500,
            (SIGMA, SIGMA),
            1.0,
            &p90_gate(0.10, 100),
            TRIALS,
        );
        assert!(r.fail <= 0.05);
    }

    #[test]
    fn simulation_same_distribution_rarely_fails_at_5000_per_arm() {
        let r = simulate(
            "(a) same distribution, 5000/arm, σ 0.5",
            2,
            5000,
            5000,
            (SIGMA, SIGMA),
            1.0,
            &p90_gate(0.10, 100),
            TRIALS,
        );
        assert!(r.fail <= 0.05);
        // And it is a useful gate: most such comparisons pass outright.
        assert!(r.pass >= 0.95);
    }

    #[test]
    fn simulation_a_25_percent_slower_p90_fails_at_2000_per_arm() {
        let r = simulate(
            "(b) p90 +25%, 2000/arm, σ 0.5",
            3,
            2000,
            2000,
            (SIGMA, SIGMA),
            1.25,
            &p90_gate(0.10, 100),
            TRIALS,
        );
        assert!(r.fail >= 0.95);
        assert_eq!(r.pass, 0.0);
    }

    #[test]
    fn simulation_below_min_samples_is_always_inconclusive() {
        // Even a doubled p90 cannot FAIL, nor a same release PASS, below the minimum.
        for (seed, scale) in [(4, 1.0), (5, 2.0)] {
            let r = simulate(
                &format!("(c) candidate 999 < min 1000, scale {scale}"),
                seed,
                5000,
                999,
                (SIGMA, SIGMA),
                scale,
                &p90_gate(0.10, 1000),
                TRIALS / 2,
            );
            assert_eq!(r.inconclusive, 1.0);
        }
    }

    #[test]
    fn simulation_at_the_allowance_each_verdict_errs_at_most_nominally() {
        // The true p90 rose exactly 10%, the allowance: FAIL and PASS are both errors and
        // each must stay at or below 5%. Equal and unequal spreads, small and large n.
        // Slack: 0.05 + 2 standard errors of a 400-trial rate.
        let cases = [
            ("boundary +10%, 2000/arm, σ 0.5", 6, 2000, (0.5, 0.5)),
            ("boundary +10%, 500/arm, σ 0.5", 7, 500, (0.5, 0.5)),
            ("boundary +10%, 2000/arm, σ 0.3 vs 1.0", 8, 2000, (0.3, 1.0)),
            ("boundary +10%, 2000/arm, σ 1.0 vs 0.3", 9, 2000, (1.0, 0.3)),
        ];
        for (label, seed, n, (sb, sc)) in cases {
            // Candidate scale that puts its p90 exactly 10% above the baseline's.
            let z90 = inverse_normal_cdf(0.9);
            let scale = 1.10 * ((sb - sc) * z90).exp();
            let r = simulate(label, seed, n, n, (sb, sc), scale, &p90_gate(0.10, 100), TRIALS);
            assert!(r.fail <= 0.072 && r.pass <= 0.072, "{label}: {r:?}");
        }
    }

    #[test]
    fn simulation_report_power_with_heavier_tails() {
        // σ = 1.0 (p90/p50 = 3.6) is common for tasks with a human in the loop. At 2000 per
        // arm even an oracle one-sided z-test on the exact quantile has ~76% power against
        // +25% with a 10% allowance, so the 95% bound of (b) is out of reach for any valid
        // method here; this reports the power, and checks it is not far below the oracle.
        let r = simulate(
            "(b') p90 +25%, 2000/arm, σ 1.0 [report]",
            10,
            2000,
            2000,
            (1.0, 1.0),
            1.25,
            &p90_gate(0.10, 100),
            TRIALS,
        );
        assert!(r.fail >= 0.5 && r.pass == 0.0, "{r:?}");
    }

    // ------------------------------------------------------------ properties

    fn sorted_sample(exponents: &[f64]) -> Vec<u64> {
        let mut v: Vec<u64> = exponents
            .iter()
            .map(|e| (e.exp().round() as u64).clamp(1, HIGHEST))
            .collect();
        v.sort_unstable();
        v
    }

    proptest! {
        #[test]
        fn percentile_interval_contains_the_histograms_own_value(
            exponents in prop::collection::vec(0.0f64..28.5, 1..400),
            sigfig in 2u8..=3,
            percentile in 0.1f64..99.9,
            level in 0.5f64..0.999,
        ) {
            let raw = sorted_sample(&exponents);
            let a = arm_with_sigfig(&raw, sigfig);
            let q = percentile / 100.0;
            match percentile_interval(&a.durations, percentile, level) {
                Some(iv) => {
                    let own = a.durations.value_at_quantile(q);
                    prop_assert!(iv.lower <= own && own <= iv.upper, "{iv:?} vs {own}");
                    prop_assert!(iv.lower <= iv.estimate_low && iv.estimate_low <= iv.estimate);
                    prop_assert!(iv.estimate <= iv.upper);
                    prop_assert_eq!(iv.estimate, own);
                    // The unbinned order statistics lie inside the binned bounds.
                    let at = |rank: u64| raw[(rank - 1) as usize];
                    prop_assert!(iv.lower <= at(iv.lower_rank));
                    prop_assert!(at(iv.upper_rank) <= iv.upper);
                    let e = at(iv.estimate_rank);
                    prop_assert!(iv.estimate_low <= e && e <= iv.estimate);
                }
                None => {
                    let tail = (1.0 - level) / 2.0;
                    prop_assert!((raw.len() as u64) < min_samples_for_bounds(q, tail, tail) + 1);
                }
            }
        }

        #[test]
        fn binned_change_bounds_are_never_tighter_than_raw_ones(
            b_exp in prop::collection::vec(10.0f64..20.0, 60..300),
            c_exp in prop::collection::vec(10.0f64..20.0, 60..300),
            percentile in 5.0f64..95.0,
        ) {
            let q = percentile / 100.0;
            let (braw, craw) = (sorted_sample(&b_exp), sorted_sample(&c_exp));
            let (b, c) = (arm(&braw), arm(&craw));
            let bi = quantile_bounds(&b.durations, q, 0.05, 0.05);
            let ci = quantile_bounds(&c.durations, q, 0.05, 0.05);
            if let (Some(bi), Some(ci)) = (bi, ci) {
                let raw_bounds = |iv: &QuantileInterval, raw: &[u64]| {
                    let at = |rank: u64| raw[(rank - 1) as usize] as f64;
                    ArmBounds {
                        lower: at(iv.lower_rank),
                        estimate_low: at(iv.estimate_rank),
                        estimate_high: at(iv.estimate_rank),
                        upper: at(iv.upper_rank),
                    }
                };
                let (rb, rc) = (raw_bounds(&bi, &braw), raw_bounds(&ci, &craw));
                let (hb, hc) = (ArmBounds::from(&bi), ArmBounds::from(&ci));
                let (raw_d, bin_d) = (mover_difference(rc, rb), mover_difference(hc, hb));
                prop_assert!(bin_d.lower <= raw_d.lower + 1e-6 && raw_d.upper <= bin_d.upper + 1e-6);
                let (raw_r, bin_r) = (mover_ratio(rc, rb), mover_ratio(hc, hb));
                prop_assert!(bin_r.lower <= raw_r.lower + 1e-12 && raw_r.upper <= bin_r.upper + 1e-12);
                prop_assert!(bin_r.lower <= bin_r.upper && bin_d.lower <= bin_d.upper);
            }
        }
    }
}
