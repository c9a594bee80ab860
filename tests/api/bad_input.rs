//! Bad input, against both stores: a batch with some bad events is a partial success
//! (each bad event listed with its index and a reason naming the field, the rest
//! applied); a request wrong as a whole is INVALID_ARGUMENT with every violation in
//! `google.rpc.BadRequest`.

use std::time::Duration;

use tasktime::pb;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::helpers::{
    Backend, SEC, TestApp, completed, finish, labels, now, record, spawn_app, start, stats, stats_request, ts,
};

const BOUND: Duration = Duration::from_secs(60);
const MINUTE: i64 = 60 * SEC;

fn floor_minute(at: i64) -> i64 {
    at.div_euclid(MINUTE) * MINUTE
}

/// One event of the mixed batch and, for a bad one, what its reason must contain.
struct Case {
    event: pb::TaskEvent,
    reason: Option<Vec<String>>,
}

fn ok(event: pb::TaskEvent) -> Case {
    Case { event, reason: None }
}

fn bad(event: pb::TaskEvent, reason: &[&str]) -> Case {
    Case {
        event,
        reason: Some(reason.iter().map(|s| (*s).to_owned()).collect()),
    }
}

async fn a_mixed_batch_applies_the_valid_events_and_names_each_bad_one(backend: Backend) {
    tokio::time::timeout(BOUND, async {
        let app = spawn_app(backend).await;
        let mut ingest = app.ingest.clone();
        let mut query = app.query.clone();
        let task = "checkout";
        let t = now() - 10 * MINUTE;
        let long_value = "x".repeat(300);
        let many: Vec<(String, String)> = (0..65).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        let many_labels: std::collections::BTreeMap<String, String> = many.into_iter().collect();

        // The index in the comment is the event's index in the batch; reasons must name it.
        let cases = vec![
            // 0: a valid start, finished by 6.
            ok(start(task, "a", t, &[("release", "1.0")])),
            // 1: empty task.
            bad(start("", "e1", t, &[]), &["events[1].task", "empty"]),
            // 2: a task with characters outside [a-z0-9._-].
            bad(start("Check Out", "e2", t, &[]), &["events[2].task", "Check Out"]),
            // 3: a 300-byte label value.
            bad(
                start(task, "e3", t, &[("release", &long_value)]),
                &["events[3].labels[release]", "300 bytes", "128"],
            ),
            // 4: 65 labels.
            bad(
                pb::TaskEvent {
                    labels: many_labels,
                    ..start(task, "e4", t, &[])
                },
                &["events[4].labels", "65", "16"],
            ),
            // 5: no instance_id.
            bad(start(task, "", t, &[]), &["events[5].instance_id", "missing"]),
            // 6: a valid finish of 0: 7 s.
            ok(finish(task, "a", t + 7 * SEC, pb::Outcome::Succeeded)),
            // 7: no event kind.
            bad(
                pb::TaskEvent {
                    kind: None,
                    ..start(task, "e7", t, &[])
                },
                &["events[7]", "no event kind"],
            ),
            // 8: a completed event with a negative duration.
            bad(
                completed(task, "e8", t, -3 * SEC, pb::Outcome::Succeeded, &[]),
                &["events[8].completed.duration", "negative"],
            ),
            // 9: a valid start; 10 finishes it before it started.
            ok(start(task, "b", t, &[])),
            // 10: a finish earlier than its start (negative pair duration).
            bad(
                finish(task, "b", t - SEC, pb::Outcome::Succeeded),
                &["events[10]", "earlier than its start"],
            ),
            // 11: a finish with OUTCOME_UNSPECIFIED.
            bad(
                finish(task, "e11", t, pb::Outcome::Unspecified),
                &["events[11].finish.outcome", "OUTCOME_UNSPECIFIED"],
            ),
            // 12: 10 minutes in the future (the limit is 5 min).
            bad(
                start(task, "e12", now() + 10 * MINUTE, &[]),
                &["events[12].at", "ahead of the server's clock"],
            ),
            // 13: a valid completed event of 5 s.
            ok(completed(
                task,
                "c",
                t,
                5 * SEC,
                pb::Outcome::Succeeded,
                &[("release", "1.0")],
            )),
            // 14: a valid finish that arrives before its start (kept pending) ...
            ok(finish(task, "d", t - SEC, pb::Outcome::Succeeded)),
            // 15: ... and that start, later than the finish: negative, rejected.
            bad(start(task, "d", t, &[]), &["events[15]", "earlier than its start"]),
            // 16: an instance_id over 128 bytes.
            bad(
                start(task, &"i".repeat(129), t, &[]),
                &["events[16].instance_id", "129 bytes", "128"],
            ),
            // 17: a bad label key.
            bad(
                start(task, "e17", t, &[("Release", "1.0")]),
                &["events[17].labels", "Release"],
            ),
        ];

        let events: Vec<pb::TaskEvent> = cases.iter().map(|c| c.event.clone()).collect();
        let response = record(&mut ingest, events.clone()).await;

        let expected_rejected: Vec<u32> = cases
            .iter()
            .enumerate()
            .filter(|(_, c)| c.reason.is_some())
            .map(|(i, _)| u32::try_from(i).expect("small index"))
            .collect();
        let got_rejected: Vec<u32> = response.rejected.iter().map(|r| r.index).collect();
        assert_eq!(
            got_rejected, expected_rejected,
            "rejected indexes (in order); reasons: {:#?}",
            response.rejected
        );
        for r in &response.rejected {
            let wanted = cases[r.index as usize].reason.as_ref().expect("a bad case");
            for part in wanted {
                assert!(
                    r.reason.contains(part.as_str()),
                    "the reason for events[{}] should contain {part:?}: {:?}",
                    r.index,
                    r.reason
                );
            }
        }
        // 0, 6, 9, 13, 14 are valid and new.
        assert_eq!(response.accepted, 5, "{response:?}");
        assert_eq!(response.duplicates, 0, "{response:?}");

        let from = floor_minute(t) - 60 * MINUTE;
        let to = floor_minute(now()) + 2 * MINUTE;
        let s = stats(&mut query, stats_request(task, from, to)).await;
        // Finished and succeeded: a (7 s) and c (5 s). Started: a, b, c (b stays open;
        // d's start was rejected, so only its pending finish is stored).
        assert_eq!(s.count, 2, "{s:?}");
        assert_eq!(s.succeeded, 2, "{s:?}");
        assert_eq!(s.started, 3, "{s:?}");
        assert_eq!(crate::helpers::us(&s.total_time), 12 * SEC, "{s:?}");

        // The same batch again: the valid events are duplicates, the bad ones are
        // rejected again with the same indexes, nothing counts twice.
        let again = record(&mut ingest, events).await;
        let again_rejected: Vec<u32> = again.rejected.iter().map(|r| r.index).collect();
        assert_eq!(again_rejected, expected_rejected, "{again:?}");
        assert_eq!((again.accepted, again.duplicates), (0, 5), "{again:?}");
        let s2 = stats(&mut query, stats_request(task, from, to)).await;
        assert_eq!((s2.count, s2.started), (2, 3), "{s2:?}");
        app.stop().await;
    })
    .await
    .expect("test finished in time");
}

async fn a_request_over_the_event_limit_is_invalid_argument_on_events(backend: Backend) {
    tokio::time::timeout(BOUND, async {
        let app = spawn_app(backend).await;
        let mut ingest = app.ingest.clone();
        let t = now() - MINUTE;
        let events: Vec<pb::TaskEvent> = (0..10_001)
            .map(|i| completed("bulk", &format!("i{i}"), t, SEC, pb::Outcome::Succeeded, &[]))
            .collect();
        let status = ingest
            .record(pb::RecordRequest { events })
            .await
            .expect_err("10,001 events is over the limit");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let bad_request = status
            .get_details_bad_request()
            .expect("google.rpc.BadRequest attached");
        let fields: Vec<&str> = bad_request.field_violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["events"], "{bad_request:?}");
        let description = &bad_request.field_violations[0].description;
        assert!(
            description.contains("10001") && description.contains("10000"),
            "the violation says how many and the limit: {description:?}"
        );

        // Nothing of it was applied; exactly the limit is fine.
        let mut query = app.query.clone();
        let range = (floor_minute(t) - MINUTE, floor_minute(now()) + 2 * MINUTE);
        let s = stats(&mut query, stats_request("bulk", range.0, range.1)).await;
        assert_eq!(s.count, 0, "{s:?}");
        let events: Vec<pb::TaskEvent> = (0..10_000)
            .map(|i| completed("bulk", &format!("i{i}"), t, SEC, pb::Outcome::Succeeded, &[]))
            .collect();
        let response = record(&mut ingest, events).await;
        assert_eq!(response.accepted, 10_000, "{response:?}");
        let s = stats(&mut query, stats_request("bulk", range.0, range.1)).await;
        assert_eq!(s.count, 10_000, "{s:?}");
        app.stop().await;
    })
    .await
    .expect("test finished in time");
}

async fn a_bad_stats_request_lists_every_violation(backend: Backend) {
    tokio::time::timeout(BOUND, async {
        let app = spawn_app(backend).await;
        let mut query = app.query.clone();
        let t = floor_minute(now());

        let fields_of = |status: &tonic::Status| -> Vec<String> {
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            status
                .get_details_bad_request()
                .expect("google.rpc.BadRequest attached")
                .field_violations
                .iter()
                .map(|v| v.field.clone())
                .collect()
        };

        // Each violation alone.
        let alone: Vec<(pb::GetTaskStatsRequest, &str, &str)> = vec![
            (stats_request("Check Out", t - MINUTE, t), "task", "Check Out"),
            (stats_request("checkout", t, t), "from", "must be before"),
            (stats_request("checkout", t, t - MINUTE), "from", "must be before"),
            (
                pb::GetTaskStatsRequest {
                    percentiles: vec![50.0, 101.0],
                    ..stats_request("checkout", t - MINUTE, t)
                },
                "percentiles",
                "101",
            ),
        ];
        for (request, field, text) in alone {
            let status = query
                .get_task_stats(request.clone())
                .await
                .expect_err("an invalid request");
            assert_eq!(fields_of(&status), [field], "{request:?}: {status:?}");
            assert!(status.message().contains(text), "{status:?} should mention {text:?}");
        }

        // All at once: every violation is listed, not just the first.
        let request = pb::GetTaskStatsRequest {
            task: "Check Out".into(),
            from: Some(ts(t)),
            to: Some(ts(t - MINUTE)),
            percentiles: vec![101.0],
            filter: labels(&[("Bad Key", "x")]),
            ..Default::default()
        };
        let status = query.get_task_stats(request).await.expect_err("an invalid request");
        assert_eq!(
            fields_of(&status),
            ["task", "filter", "from", "percentiles"],
            "{status:?}"
        );
        app.stop().await;
    })
    .await
    .expect("test finished in time");
}

/// Sends `request`'s bytes as they are to `Record` (the public client cannot encode bytes
/// that are not a valid request).
async fn record_raw(app: &TestApp, request: Vec<u8>) -> Result<pb::RecordResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready().await.expect("the channel is ready");
    grpc.unary(
        tonic::Request::new(request),
        tonic::codegen::http::uri::PathAndQuery::from_static("/tasktime.v1.IngestService/Record"),
        tasktime::bench::EncodedCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// How many instances of `task` finished from a minute before `t` until now.
async fn finished_since(app: &TestApp, task: &str, t: i64) -> u64 {
    let mut query = app.query.clone();
    stats(
        &mut query,
        stats_request(task, floor_minute(t) - MINUTE, floor_minute(now()) + 2 * MINUTE),
    )
    .await
    .count
}

/// Text fields that are not UTF-8 (which a client in a language without checked strings
/// can send) reject their event, naming the field, and the rest of the batch is applied:
/// the server decodes them as bytes and checks each one itself. So does a label entry
/// that is not a map entry (the server decodes the entries itself too), and an event
/// that is not a TaskEvent message (the server parses each event on its own).
async fn text_that_is_not_utf8_rejects_its_event_only(backend: Backend) {
    use prost::Message as _;
    use tasktime::grpc::wire::{WireLabel, WireRecordRequest, WireTaskEvent, from_public};

    tokio::time::timeout(BOUND, async {
        let app = spawn_app(backend).await;
        let t = now() - MINUTE;
        let good = |id: &str| {
            from_public(&completed(
                "utf8",
                id,
                t,
                SEC,
                pb::Outcome::Succeeded,
                &[("release", "1")],
            ))
        };
        let request = WireRecordRequest::from_events(&[
            good("a"),
            WireTaskEvent {
                instance_id: b"b\xff".to_vec().into(),
                ..good("b")
            },
            WireTaskEvent {
                labels: vec![
                    WireLabel {
                        key: b"release".to_vec().into(),
                        value: b"1.\xc0".to_vec().into(),
                    }
                    .encode_to_vec()
                    .into(),
                ],
                ..good("c")
            },
            good("d"),
            // A label entry that is not a map entry: its length runs past its end.
            WireTaskEvent {
                labels: vec![b"\x0a\x09ab".to_vec().into()],
                ..good("e")
            },
        ]);
        // And an event that is not a TaskEvent message: its instance_id's length runs
        // past the event's end.
        let mut request = request.encode_to_vec();
        prost::encoding::bytes::encode(
            1,
            &good("f")
                .encode_to_vec()
                .into_iter()
                .chain(*b"\x12\x40ab")
                .collect::<Vec<u8>>(),
            &mut request,
        );
        let response = record_raw(&app, request)
            .await
            .expect("a batch with bad events is a partial success");
        assert_eq!(response.accepted, 2, "{response:?}");
        let reasons: Vec<(u32, &str)> = response.rejected.iter().map(|e| (e.index, e.reason.as_str())).collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert_eq!(reasons[0].0, 1);
        assert!(
            reasons[0].1.starts_with("events[1].instance_id is not valid UTF-8"),
            "{reasons:?}"
        );
        assert_eq!(reasons[1].0, 2);
        assert!(
            reasons[1].1.starts_with("events[2].labels[release] is not valid UTF-8"),
            "{reasons:?}"
        );
        assert_eq!(reasons[2].0, 4);
        assert!(
            reasons[2].1.starts_with("events[4].labels entry 0 is not a map entry"),
            "{reasons:?}"
        );
        assert_eq!(reasons[3].0, 5);
        assert!(
            reasons[3]
                .1
                .starts_with("events[5] is not a TaskEvent message as protobuf encodes it"),
            "{reasons:?}"
        );
        assert_eq!(finished_since(&app, "utf8", t).await, 2);
        app.stop().await;
    })
    .await
    .expect("test finished in time");
}

/// Bytes that are not a RecordRequest at all (here: a good event, then an `events`
/// entry whose length runs past the end) are `INVALID_ARGUMENT` on `events`, naming the
/// byte where they broke, and nothing of them is applied.
async fn a_request_that_is_not_a_record_request_is_invalid_argument(backend: Backend) {
    use prost::Message as _;

    tokio::time::timeout(BOUND, async {
        let app = spawn_app(backend).await;
        let t = now() - MINUTE;
        let good = completed("framing", "a", t, SEC, pb::Outcome::Succeeded, &[]);
        let mut request = pb::RecordRequest { events: vec![good] }.encode_to_vec();
        let broken_at = request.len();
        request.extend_from_slice(b"\x0a\x40ab");
        let status = record_raw(&app, request)
            .await
            .expect_err("bytes that are not a RecordRequest are refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let bad_request = status
            .get_details_bad_request()
            .expect("google.rpc.BadRequest attached");
        let violations: Vec<(&str, &str)> = bad_request
            .field_violations
            .iter()
            .map(|v| (v.field.as_str(), v.description.as_str()))
            .collect();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].0, "events");
        assert!(
            violations[0].1.starts_with(&format!(
                "the request is not a RecordRequest as protobuf encodes it: the field at byte {broken_at} is broken"
            )),
            "{violations:?}"
        );
        assert_eq!(finished_since(&app, "framing", t).await, 0, "nothing of it is applied");
        app.stop().await;
    })
    .await
    .expect("test finished in time");
}

crate::both_stores!(
    text_that_is_not_utf8_rejects_its_event_only,
    a_request_that_is_not_a_record_request_is_invalid_argument,
    a_mixed_batch_applies_the_valid_events_and_names_each_bad_one,
    a_request_over_the_event_limit_is_invalid_argument_on_events,
    a_bad_stats_request_lists_every_violation,
);
