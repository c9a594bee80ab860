//! The one place that maps between protobuf messages and domain types. Every error
//! names the field as the client sent it (`events[3].finish.outcome`).

use std::collections::BTreeMap;

use crate::domain::{
    DEFAULT_PERCENTILES, DomainError, EventKind, InstanceId, LabelFilter, Labels, Limits, MICROS_PER_SEC, Micros,
    Outcome, Selector, TaskEvent, TaskName, Tenant, TimeRange,
};
use crate::grpc::status::Violation;
use crate::pb;
use crate::query::Stats;

/// Default query window when `from` is not set: 24 h before `to`.
pub const DEFAULT_QUERY_WINDOW: Micros = 24 * 3600 * MICROS_PER_SEC;

/// Context for converting events: limits and the server's clock at receipt.
#[derive(Debug, Clone, Copy)]
pub struct EventContext {
    pub limits: Limits,
    pub now: Micros,
    /// Events older than this many µs are refused (nothing would keep them).
    pub max_age: Micros,
}

fn domain(e: DomainError) -> String {
    e.to_string()
}

/// Timestamp to µs since the epoch.
pub fn timestamp_micros(field: &str, ts: &prost_types::Timestamp) -> Result<Micros, String> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(format!("{field} has nanos {} outside [0, 1e9)", ts.nanos));
    }
    ts.seconds
        .checked_mul(MICROS_PER_SEC)
        .and_then(|s| s.checked_add(i64::from(ts.nanos / 1000)))
        .ok_or_else(|| format!("{field} ({} s) is out of range", ts.seconds))
}

/// µs since the epoch to Timestamp.
pub fn micros_timestamp(at: Micros) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.div_euclid(MICROS_PER_SEC),
        nanos: i32::try_from(at.rem_euclid(MICROS_PER_SEC) * 1000).unwrap_or(0),
    }
}

/// µs to Duration.
pub fn micros_duration(us: i128) -> prost_types::Duration {
    let us = i64::try_from(us).unwrap_or(i64::MAX);
    prost_types::Duration {
        seconds: us / MICROS_PER_SEC,
        nanos: i32::try_from((us % MICROS_PER_SEC) * 1000).unwrap_or(0),
    }
}

fn duration_micros(field: &str, d: &prost_types::Duration) -> Result<Micros, String> {
    if d.nanos.abs() >= 1_000_000_000 || (d.seconds > 0 && d.nanos < 0) || (d.seconds < 0 && d.nanos > 0) {
        return Err(format!(
            "{field} is not a valid duration ({} s, {} ns)",
            d.seconds, d.nanos
        ));
    }
    d.seconds
        .checked_mul(MICROS_PER_SEC)
        .and_then(|s| s.checked_add(i64::from(d.nanos / 1000)))
        .ok_or_else(|| format!("{field} ({} s) is out of range", d.seconds))
}

fn fmt_duration(us: Micros) -> String {
    let sign = if us < 0 { "-" } else { "" };
    let d = std::time::Duration::from_micros(us.unsigned_abs());
    format!("{sign}{}", humantime::format_duration(d))
}

fn outcome(field: &str, value: i32) -> Result<Outcome, String> {
    match pb::Outcome::try_from(value) {
        Ok(pb::Outcome::Succeeded) => Ok(Outcome::Succeeded),
        Ok(pb::Outcome::Failed) => Ok(Outcome::Failed),
        Ok(pb::Outcome::Cancelled) => Ok(Outcome::Cancelled),
        Ok(pb::Outcome::Unspecified) => Err(format!(
            "{field} is OUTCOME_UNSPECIFIED; a finished task says OUTCOME_SUCCEEDED, OUTCOME_FAILED or OUTCOME_CANCELLED"
        )),
        Err(_) => Err(format!("{field} {value} is not a known outcome")),
    }
}

/// Converts and validates one event of a request; the error is the reason for the client.
pub fn event(index: usize, e: pb::TaskEvent, ctx: &EventContext) -> Result<TaskEvent, String> {
    let f = |name: &str| format!("events[{index}].{name}");
    let Some(kind) = e.kind else {
        return Err(format!(
            "events[{index}] has no event kind: set exactly one of start, finish or completed"
        ));
    };
    // Checks name the field relative to the event (`task`); an error gets the event's
    // `events[i].` in front, so nothing is formatted for the events that pass.
    let within = |reason: String| format!("events[{index}].{reason}");
    let task = TaskName::parse("task", e.task).map_err(|e| within(domain(e)))?;
    let instance_id = InstanceId::parse("instance_id", e.instance_id).map_err(|e| within(domain(e)))?;
    let at = match &e.at {
        Some(ts) => timestamp_micros("at", ts).map_err(within)?,
        None => ctx.now,
    };
    if at > ctx.now + ctx.limits.max_future_skew {
        return Err(format!(
            "{} is {} ahead of the server's clock; the limit is {}",
            f("at"),
            fmt_duration(at - ctx.now),
            fmt_duration(ctx.limits.max_future_skew)
        ));
    }
    if at < ctx.now - ctx.max_age {
        return Err(format!(
            "{} is {} in the past; nothing older than {} is kept",
            f("at"),
            fmt_duration(ctx.now - at),
            fmt_duration(ctx.max_age)
        ));
    }
    let (kind, takes_labels) = match kind {
        pb::task_event::Kind::Start(_) => (EventKind::Start, true),
        pb::task_event::Kind::Finish(fin) => (
            EventKind::Finish(outcome("finish.outcome", fin.outcome).map_err(within)?),
            false,
        ),
        pb::task_event::Kind::Completed(c) => {
            let Some(d) = &c.duration else {
                return Err(format!(
                    "{} is missing: a completed event carries its duration",
                    f("completed.duration")
                ));
            };
            let duration = duration_micros("completed.duration", d).map_err(within)?;
            if duration < 0 {
                return Err(format!(
                    "{} is negative ({}); a duration cannot be negative",
                    f("completed.duration"),
                    fmt_duration(duration)
                ));
            }
            let outcome = outcome("completed.outcome", c.outcome).map_err(within)?;
            (EventKind::Completed { duration, outcome }, true)
        }
    };
    // Labels on a finish are ignored (the start's labels name the series) but still checked,
    // so a client learns about a bad label on the first event that carries it.
    let labels = Labels::parse_map(
        "labels",
        e.labels,
        ctx.limits.max_labels,
        ctx.limits.max_label_value_bytes,
    )
    .map_err(|e| within(domain(e)))?;
    Ok(TaskEvent {
        tenant: Tenant::default_tenant(),
        task,
        instance_id,
        at,
        labels: if takes_labels { labels } else { Labels::default() },
        kind,
    })
}

/// The parts of a stats or series request that select data.
#[derive(Debug)]
pub struct SelectorParts {
    pub task: String,
    pub filter: BTreeMap<String, String>,
    pub from: Option<prost_types::Timestamp>,
    pub to: Option<prost_types::Timestamp>,
    pub percentiles: Vec<f64>,
    pub outcome: i32,
}

/// Converts a selector; collects every violation.
pub fn selector(parts: SelectorParts, now: Micros) -> Result<Selector, Vec<Violation>> {
    let mut violations = Vec::new();
    let mut bad = |field: &str, description: String| {
        violations.push(Violation {
            field: field.to_owned(),
            description,
        });
    };
    let task = TaskName::parse("task", parts.task)
        .map_err(|e| bad("task", e.to_string()))
        .ok();
    let filter = LabelFilter::parse("filter", parts.filter)
        .map_err(|e| bad("filter", e.to_string()))
        .ok();
    let to = match &parts.to {
        Some(ts) => timestamp_micros("to", ts).map_err(|e| bad("to", e)).ok(),
        None => Some(now),
    };
    let from = match &parts.from {
        Some(ts) => timestamp_micros("from", ts).map_err(|e| bad("from", e)).ok(),
        None => to.map(|t| t - DEFAULT_QUERY_WINDOW),
    };
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            bad(
                "from",
                format!("from ({}) must be before to ({})", fmt_ts(f), fmt_ts(t)),
            );
        }
    }
    let percentiles = if parts.percentiles.is_empty() {
        DEFAULT_PERCENTILES.to_vec()
    } else {
        parts.percentiles
    };
    for p in &percentiles {
        if !(p.is_finite() && *p > 0.0 && *p <= 100.0) {
            bad("percentiles", format!("percentile {p} is outside (0, 100]"));
        }
    }
    let outcome = if parts.outcome == 0 {
        Some(Outcome::Succeeded)
    } else {
        outcome("outcome", parts.outcome).map_err(|e| bad("outcome", e)).ok()
    };
    match (task, filter, from, to, outcome) {
        (Some(task), Some(filter), Some(from), Some(to), Some(outcome)) if violations.is_empty() => Ok(Selector {
            tenant: Tenant::default_tenant(),
            task,
            filter,
            range: TimeRange { from, to },
            outcome,
            percentiles,
        }),
        _ => Err(violations),
    }
}

fn fmt_ts(at: Micros) -> String {
    let ts = micros_timestamp(at);
    match u64::try_from(ts.seconds) {
        Ok(s) => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s)).to_string()
        }
        Err(_) => format!("{at} µs"),
    }
}

/// Stats to the wire form.
pub fn task_stats(task: &TaskName, stats: &Stats, histogram: Option<String>) -> pb::TaskStats {
    let m = &stats.merged;
    pb::TaskStats {
        task: task.as_str().to_owned(),
        count: m.n,
        started: m.started,
        succeeded: m.succeeded,
        failed: m.failed,
        cancelled: m.cancelled,
        abandoned: m.abandoned,
        success_rate: stats.success_rate,
        percentiles: stats
            .percentiles
            .iter()
            .map(|(p, v)| pb::PercentileValue {
                percentile: *p,
                value: Some(micros_duration(i128::from(*v))),
            })
            .collect(),
        min: Some(micros_duration(i128::from(stats.min_us))),
        max: Some(micros_duration(i128::from(stats.max_us))),
        mean: Some(micros_duration(stats.mean_us.round() as i128)),
        total_time: Some(micros_duration(m.sum_us)),
        significant_digits: stats.significant_digits,
        over_range: m.over_range,
        from: Some(micros_timestamp(m.range.from)),
        to: Some(micros_timestamp(m.range.to)),
        histogram: histogram.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Micros = 1_800_000_000 * MICROS_PER_SEC;

    fn ctx() -> EventContext {
        EventContext {
            limits: Limits::default(),
            now: NOW,
            max_age: 400 * 86_400 * MICROS_PER_SEC,
        }
    }

    fn start(task: &str, id: &str) -> pb::TaskEvent {
        pb::TaskEvent {
            task: task.into(),
            instance_id: id.into(),
            at: None,
            labels: BTreeMap::new(),
            kind: Some(pb::task_event::Kind::Start(pb::Start {})),
        }
    }

    #[test]
    fn a_missing_timestamp_is_the_receive_time() {
        let e = event(0, start("checkout", "a"), &ctx()).unwrap();
        assert_eq!(e.at, NOW);
    }

    #[test]
    fn a_timestamp_beyond_the_skew_limit_is_rejected_with_both_durations() {
        let mut e = start("checkout", "a");
        e.at = Some(micros_timestamp(NOW + 10 * 60 * MICROS_PER_SEC));
        let err = event(4, e, &ctx()).unwrap_err();
        assert_eq!(err, "events[4].at is 10m ahead of the server's clock; the limit is 5m");
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases: Vec<(pb::TaskEvent, &str)> = vec![
            (start("", "a"), "events[0].task is empty"),
            (start("Check Out", "a"), "events[0].task `Check Out`"),
            (start("checkout", ""), "events[0].instance_id is missing"),
            (
                pb::TaskEvent {
                    kind: None,
                    ..start("checkout", "a")
                },
                "events[0] has no event kind",
            ),
            (
                pb::TaskEvent {
                    kind: Some(pb::task_event::Kind::Finish(pb::Finish { outcome: 0 })),
                    ..start("checkout", "a")
                },
                "events[0].finish.outcome is OUTCOME_UNSPECIFIED",
            ),
            (
                pb::TaskEvent {
                    kind: Some(pb::task_event::Kind::Completed(pb::Completed {
                        duration: Some(prost_types::Duration { seconds: -1, nanos: 0 }),
                        outcome: 1,
                    })),
                    ..start("checkout", "a")
                },
                "events[0].completed.duration is negative (-1s)",
            ),
        ];
        for (e, expected) in cases {
            let err = event(0, e, &ctx()).unwrap_err();
            assert!(err.starts_with(expected), "{err:?} should start with {expected:?}");
        }
    }

    #[test]
    fn a_selector_reports_every_violation_at_once() {
        let err = selector(
            SelectorParts {
                task: "".into(),
                filter: BTreeMap::new(),
                from: Some(micros_timestamp(NOW)),
                to: Some(micros_timestamp(NOW - 1)),
                percentiles: vec![0.0, 101.0],
                outcome: 9,
            },
            NOW,
        )
        .unwrap_err();
        let fields: Vec<_> = err.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["task", "from", "percentiles", "percentiles", "outcome"]);
    }
}
