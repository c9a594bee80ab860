//! The one place that maps between protobuf messages and domain types. Every error
//! names the field as the client sent it (`events[3].finish.outcome`).

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use crate::domain::{
    DEFAULT_PERCENTILES, DomainError, EventKind, InstanceId, LabelFilter, Labels, Limits, MICROS_PER_SEC, Micros,
    Outcome, Selector, TaskEvent, TaskName, Tenant, TimeRange,
};
use crate::grpc::status::Violation;
use crate::grpc::wire;
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

/// A `bytes` field of the wire request as the `string` the API declares it: the error
/// names the field (relative to the event) and where its UTF-8 breaks.
fn utf8<'a>(field: &dyn std::fmt::Display, bytes: &'a [u8]) -> Result<&'a str, String> {
    std::str::from_utf8(bytes).map_err(|e| format!("{field} is not valid UTF-8 ({e})"))
}

/// What the events of one request share, each checked once: the events of a request
/// mostly name a few tasks and carry a handful of distinct label sets (a release and a
/// platform). Each event's task and labels are looked up by the bytes as they were
/// sent, not built and checked again. What fails its check is not kept (every event
/// that carries it is rejected on its own).
#[derive(Debug)]
pub struct RequestCache {
    /// Whether to keep anything: not for a request of one event (a unary call), which
    /// would only pay for the keeping.
    keep: bool,
    /// Task names as sent -> the checked name.
    tasks: FxHashMap<Box<[u8]>, TaskName>,
    /// Label entries as sent ([`wire::WireEvent::labels`]) -> their labels.
    sets: FxHashMap<Box<[u8]>, Labels>,
}

impl Default for RequestCache {
    fn default() -> Self {
        RequestCache {
            keep: true,
            tasks: FxHashMap::default(),
            sets: FxHashMap::default(),
        }
    }
}

impl RequestCache {
    /// The cache for a request of `events` events.
    pub fn for_events(events: usize) -> Self {
        RequestCache {
            keep: events > 1,
            ..RequestCache::default()
        }
    }

    /// The checked task name of `sent`; errors name the field `task`.
    fn task(&mut self, sent: &[u8]) -> Result<TaskName, String> {
        if let Some(task) = self.tasks.get(sent) {
            return Ok(task.clone());
        }
        let task = TaskName::parse("task", utf8(&"task", sent)?.to_owned()).map_err(domain)?;
        if self.keep {
            self.tasks.insert(sent.into(), task.clone());
        }
        Ok(task)
    }

    /// The labels of `event` (its entries of a protobuf map as sent, each still encoded:
    /// a key sent twice keeps its last value), checked against `limits`. Errors name the
    /// field relative to the event (`labels[release] ...`). Entries already seen in the
    /// request, byte for byte, are not decoded again.
    fn labels(&mut self, event: &wire::WireEvent<'_>, limits: &Limits) -> Result<Labels, String> {
        if event.labels.is_empty() {
            return Ok(Labels::default());
        }
        if let Some(labels) = self.sets.get(event.labels) {
            return Ok(labels.clone());
        }
        let mut map = BTreeMap::new();
        for (i, entry) in event.label_entries().enumerate() {
            let l = entry
                .and_then(<wire::WireLabel as prost::Message>::decode)
                .map_err(|e| format!("labels entry {i} is not a map entry ({e})"))?;
            let key = utf8(&"labels key", &l.key)?;
            let value = utf8(&format_args!("labels[{key}]"), &l.value)?;
            map.insert(key.to_owned(), value.to_owned());
        }
        let labels =
            Labels::parse_map("labels", map, limits.max_labels, limits.max_label_value_bytes).map_err(domain)?;
        if self.keep {
            self.sets.insert(event.labels.into(), labels.clone());
        }
        Ok(labels)
    }
}

/// Parses, converts and validates one event of a request (its encoded `TaskEvent`, see
/// [`wire`]); `cache` keeps the task names and label sets of the request seen so far.
/// The error is the reason for the client.
pub fn event(index: usize, bytes: &[u8], ctx: &EventContext, cache: &mut RequestCache) -> Result<TaskEvent, String> {
    let mut e = wire::WireEvent::parse(bytes)
        .map_err(|e| format!("events[{index}] is not a TaskEvent message as protobuf encodes it ({e})"))?;
    let f = |name: &str| format!("events[{index}].{name}");
    let Some(kind) = e.kind.take() else {
        return Err(format!(
            "events[{index}] has no event kind: set exactly one of start, finish or completed"
        ));
    };
    // Checks name the field relative to the event (`task`); an error gets the event's
    // `events[i].` in front, so nothing is formatted for the events that pass.
    let within = |reason: String| format!("events[{index}].{reason}");
    let task = cache.task(e.task).map_err(within)?;
    let instance_id = utf8(&"instance_id", e.instance_id).map_err(within)?;
    let instance_id = InstanceId::parse("instance_id", instance_id.to_owned()).map_err(|e| within(domain(e)))?;
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
        wire::wire_task_event::Kind::Start(_) => (EventKind::Start, true),
        wire::wire_task_event::Kind::Finish(fin) => (
            EventKind::Finish(outcome("finish.outcome", fin.outcome).map_err(within)?),
            false,
        ),
        wire::wire_task_event::Kind::Completed(c) => {
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
    let labels = cache.labels(&e, &ctx.limits).map_err(within)?;
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

    /// Converts a wire event the way the server receives it: encoded.
    fn event(
        index: usize,
        e: wire::WireTaskEvent,
        ctx: &EventContext,
        cache: &mut RequestCache,
    ) -> Result<TaskEvent, String> {
        super::event(index, &prost::Message::encode_to_vec(&e), ctx, cache)
    }

    /// Converts a public event the way the server receives it: encoded, parsed, converted.
    fn convert(index: usize, e: pb::TaskEvent) -> Result<TaskEvent, String> {
        event(index, wire::from_public(&e), &ctx(), &mut RequestCache::default())
    }

    #[test]
    fn an_event_that_is_not_a_protobuf_message_is_rejected_alone() {
        let mut cache = RequestCache::default();
        let good = prost::Message::encode_to_vec(&wire::from_public(&with_labels(&[("release", "1")])));
        // Its instance_id's length runs past the event's end.
        let mut broken = good.clone();
        broken.extend_from_slice(b"\x12\x40ab");
        let err = super::event(3, &broken, &ctx(), &mut cache).unwrap_err();
        assert!(
            err.starts_with("events[3] is not a TaskEvent message as protobuf encodes it ("),
            "{err}"
        );
        let e = super::event(4, &good, &ctx(), &mut cache).unwrap();
        assert_eq!(e.labels.get("release"), Some("1"));
    }

    fn with_labels(pairs: &[(&str, &str)]) -> pb::TaskEvent {
        pb::TaskEvent {
            labels: pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            ..start("checkout", "a")
        }
    }

    /// One label entry, encoded as a client sends it.
    fn wire_label(key: &[u8], value: &[u8]) -> bytes::Bytes {
        prost::Message::encode_to_vec(&wire::WireLabel {
            key: key.to_vec().into(),
            value: value.to_vec().into(),
        })
        .into()
    }

    #[test]
    fn a_missing_timestamp_is_the_receive_time() {
        let e = convert(0, start("checkout", "a")).unwrap();
        assert_eq!(e.at, NOW);
    }

    #[test]
    fn events_with_the_same_labels_share_one_checked_set() {
        let mut cache = RequestCache::default();
        let mut convert = |e: wire::WireTaskEvent| event(0, e, &ctx(), &mut cache).unwrap();
        let a = convert(wire::from_public(&with_labels(&[
            ("release", "1"),
            ("platform", "ios"),
        ])));
        let b = convert(wire::from_public(&with_labels(&[
            ("release", "1"),
            ("platform", "ios"),
        ])));
        let d = convert(wire::from_public(&with_labels(&[
            ("release", "2"),
            ("platform", "ios"),
        ])));
        // Another client may send the entries in another order: the same labels.
        let reversed = convert(wire::WireTaskEvent {
            labels: vec![wire_label(b"release", b"1"), wire_label(b"platform", b"ios")],
            ..wire::from_public(&start("checkout", "b"))
        });
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.labels, reversed.labels, "the order sent does not matter");
        assert_ne!(a.labels, d.labels);
        assert_eq!(d.labels.get("release"), Some("2"));
        assert_eq!(
            a.labels.series_id(),
            Labels::from_trusted(a.labels.as_map().clone()).series_id()
        );
        assert_eq!(a.labels.series_id(), reversed.labels.series_id());
        // Three sets as sent: a's and b's (the public encoding sorts the keys), d's and
        // the reversed one; one task.
        assert_eq!(cache.sets.len(), 3);
        assert_eq!(cache.tasks.len(), 1);
    }

    #[test]
    fn a_request_of_one_event_keeps_nothing() {
        let mut cache = RequestCache::for_events(1);
        let e = event(
            0,
            wire::from_public(&with_labels(&[("release", "1")])),
            &ctx(),
            &mut cache,
        )
        .unwrap();
        assert_eq!(e.labels.get("release"), Some("1"));
        assert_eq!(e.task.as_str(), "checkout");
        assert!(cache.sets.is_empty() && cache.tasks.is_empty());
        assert!(RequestCache::for_events(2).keep);
    }

    #[test]
    fn a_bad_task_name_is_rejected_each_time_it_comes() {
        let mut cache = RequestCache::default();
        for i in 0..2 {
            let err = event(i, wire::from_public(&start("Check Out", "a")), &ctx(), &mut cache).unwrap_err();
            assert!(err.starts_with(&format!("events[{i}].task `Check Out`")), "{err}");
        }
        assert!(cache.tasks.is_empty(), "a name that fails its check is not kept");
        let e = event(2, wire::from_public(&start("checkout", "a")), &ctx(), &mut cache).unwrap();
        assert_eq!(e.task.as_str(), "checkout");
    }

    #[test]
    fn a_key_sent_twice_keeps_its_last_value_as_in_a_map() {
        let sent = wire::WireTaskEvent {
            labels: vec![wire_label(b"release", b"1"), wire_label(b"release", b"2")],
            ..wire::from_public(&start("checkout", "a"))
        };
        let e = event(0, sent, &ctx(), &mut RequestCache::default()).unwrap();
        assert_eq!(e.labels.iter().collect::<Vec<_>>(), vec![("release", "2")]);
    }

    #[test]
    fn a_label_entry_that_is_not_a_map_entry_rejects_its_event_only() {
        let mut cache = RequestCache::default();
        // A length-delimited field 1 whose length runs past the entry's end.
        let broken = wire::WireTaskEvent {
            labels: vec![wire_label(b"release", b"1"), bytes::Bytes::from_static(b"\x0a\x09ab")],
            ..wire::from_public(&start("checkout", "a"))
        };
        let err = event(4, broken, &ctx(), &mut cache).unwrap_err();
        assert!(
            err.starts_with("events[4].labels entry 1 is not a map entry ("),
            "{err}"
        );
        let e = event(
            5,
            wire::from_public(&with_labels(&[("release", "1")])),
            &ctx(),
            &mut cache,
        )
        .unwrap();
        assert_eq!(e.labels.get("release"), Some("1"));
    }

    #[test]
    fn bad_labels_are_rejected_each_time_they_come() {
        let mut cache = RequestCache::default();
        let too_long = "x".repeat(Limits::default().max_label_value_bytes + 1);
        for i in 0..2 {
            let err = event(
                i,
                wire::from_public(&with_labels(&[("release", &too_long)])),
                &ctx(),
                &mut cache,
            )
            .unwrap_err();
            assert!(err.starts_with(&format!("events[{i}].labels[release]")), "{err}");
        }
        assert!(cache.sets.is_empty(), "a set that fails its check is not kept");
        let err = convert(3, with_labels(&[("Release", "1")])).unwrap_err();
        assert!(err.starts_with("events[3].labels key `Release`"), "{err}");
    }

    #[test]
    fn text_that_is_not_utf8_is_rejected_naming_its_field() {
        let good = || wire::from_public(&start("checkout", "a"));
        let cases = [
            (
                wire::WireTaskEvent {
                    task: b"check\xffout".to_vec().into(),
                    ..good()
                },
                "events[0].task is not valid UTF-8 (invalid utf-8 sequence of 1 bytes from index 5)",
            ),
            (
                wire::WireTaskEvent {
                    instance_id: b"\xc3".to_vec().into(),
                    ..good()
                },
                "events[0].instance_id is not valid UTF-8",
            ),
            (
                wire::WireTaskEvent {
                    labels: vec![wire_label(b"rel\xe9ase", b"1")],
                    ..good()
                },
                "events[0].labels key is not valid UTF-8",
            ),
            (
                wire::WireTaskEvent {
                    labels: vec![wire_label(b"release", b"\x80")],
                    ..good()
                },
                "events[0].labels[release] is not valid UTF-8",
            ),
        ];
        for (e, expected) in cases {
            let err = event(0, e, &ctx(), &mut RequestCache::default()).unwrap_err();
            assert!(err.starts_with(expected), "{err:?} should start with {expected:?}");
        }
    }

    #[test]
    fn a_timestamp_beyond_the_skew_limit_is_rejected_with_both_durations() {
        let mut e = start("checkout", "a");
        e.at = Some(micros_timestamp(NOW + 10 * 60 * MICROS_PER_SEC));
        let err = convert(4, e).unwrap_err();
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
            let err = convert(0, e).unwrap_err();
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
