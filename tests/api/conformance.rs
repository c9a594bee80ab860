//! The conformance suite: every ingest and query behaviour, against both stores.

use tasktime::pb;
use tasktime::pb::Outcome::{Cancelled, Failed, Succeeded};

use futures::StreamExt as _;

use crate::helpers::*;

crate::both_stores!(
    a_start_and_its_finish_give_one_duration,
    a_finish_before_its_start_is_kept_and_paired_later,
    the_same_instance_sent_three_times_in_different_batches_counts_once,
    the_same_instance_sent_concurrently_counts_once,
    completed_events_count_like_a_start_and_finish,
    each_outcome_is_counted_and_has_its_own_durations,
    a_start_never_finished_counts_as_abandoned_after_abandon_after,
    label_filters_select_series,
    time_ranges_across_minute_hour_and_day_boundaries_count_exactly,
    series_return_stats_per_step,
    list_tasks_names_tasks_with_their_labels,
    record_stream_answers_each_request_in_order,
    over_range_durations_are_clamped_and_counted,
    timestamps_default_to_receive_time,
    every_task_stats_field_matches_a_hand_computed_data_set,
);

async fn a_start_and_its_finish_give_one_duration(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let t0 = now() - 600 * SEC;
    let r = record(
        &mut app.ingest,
        vec![
            start("checkout", "a", t0, &[("release", "1")]),
            finish("checkout", "a", t0 + 42 * SEC, Succeeded),
        ],
    )
    .await;
    assert_eq!((r.accepted, r.duplicates, r.rejected.len()), (2, 0, 0));
    let s = stats(&mut app.query, stats_request("checkout", t0 - 60 * SEC, now())).await;
    assert_eq!(
        (s.count, s.started, s.succeeded, s.failed, s.abandoned),
        (1, 1, 1, 0, 0)
    );
    assert_eq!(us(&s.total_time), 42 * SEC);
    assert_eq!(us(&s.mean), 42 * SEC);
    let p50 = us(&s.percentiles[0].value);
    assert!((p50 - 42 * SEC).abs() <= 42 * SEC / 100, "p50 {p50} within 1% of 42 s");
    assert_eq!(s.significant_digits, 2);
    assert!((s.success_rate - 1.0).abs() < 1e-12);
    app.stop().await;
}

async fn a_finish_before_its_start_is_kept_and_paired_later(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let t0 = now() - 600 * SEC;
    let r = record(&mut app.ingest, vec![finish("checkout", "a", t0 + 7 * SEC, Failed)]).await;
    assert_eq!(r.accepted, 1, "a finish without its start is kept");
    let s = stats(&mut app.query, stats_request("checkout", t0 - 60 * SEC, now())).await;
    assert_eq!(
        (s.count, s.failed),
        (0, 0),
        "nothing is counted until the start arrives"
    );
    let r = record(&mut app.ingest, vec![start("checkout", "a", t0, &[])]).await;
    assert_eq!(r.accepted, 1);
    let mut req = stats_request("checkout", t0 - 60 * SEC, now());
    req.outcome = Failed as i32;
    let s = stats(&mut app.query, req).await;
    assert_eq!((s.count, s.started, s.failed), (1, 1, 1));
    assert_eq!(us(&s.total_time), 7 * SEC);
    app.stop().await;
}

async fn the_same_instance_sent_three_times_in_different_batches_counts_once(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let t0 = now() - 600 * SEC;
    let batch = || {
        vec![
            start("checkout", "s", t0, &[]),
            finish("checkout", "s", t0 + 3 * SEC, Succeeded),
            completed("checkout", "c", t0 + 9 * SEC, 5 * SEC, Succeeded, &[]),
        ]
    };
    let first = record(&mut app.ingest, batch()).await;
    assert_eq!((first.accepted, first.duplicates), (3, 0));
    for _ in 0..2 {
        let again = record(&mut app.ingest, batch()).await;
        assert_eq!((again.accepted, again.duplicates), (0, 3));
    }
    // Each kind alone, too: a lone start, a lone finish and a lone completed retry.
    for event in batch() {
        let r = record(&mut app.ingest, vec![event]).await;
        assert_eq!((r.accepted, r.duplicates), (0, 1));
    }
    let s = stats(&mut app.query, stats_request("checkout", t0 - 60 * SEC, now())).await;
    assert_eq!((s.count, s.started, s.succeeded), (2, 2, 2));
    assert_eq!(us(&s.total_time), 8 * SEC);
    app.stop().await;
}

async fn the_same_instance_sent_concurrently_counts_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let t0 = now() - 600 * SEC;
    let n = 50;
    let events: Vec<_> = (0..n)
        .flat_map(|i| {
            let id = format!("i{i}");
            vec![
                start("checkout", &id, t0, &[]),
                finish("checkout", &id, t0 + (i + 1) * SEC, Succeeded),
            ]
        })
        .collect();
    let mut calls = Vec::new();
    for _ in 0..4 {
        let mut client = app.ingest.clone();
        let events = events.clone();
        calls.push(tokio::spawn(async move { record(&mut client, events).await }));
    }
    let mut accepted = 0;
    let mut duplicates = 0;
    for c in calls {
        let r = c.await.expect("call");
        accepted += r.accepted;
        duplicates += r.duplicates;
    }
    assert_eq!(accepted, 2 * n as u32, "each event applied exactly once");
    assert_eq!(duplicates, 3 * 2 * n as u32);
    let mut query = app.query.clone();
    let s = stats(&mut query, stats_request("checkout", t0 - 60 * SEC, now())).await;
    assert_eq!((s.count, s.started), (n as u64, n as u64));
    assert_eq!(us(&s.total_time), (1..=n).sum::<i64>() * SEC);
    app.stop().await;
}

async fn completed_events_count_like_a_start_and_finish(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let t0 = now() - 600 * SEC;
    let r = record(
        &mut app.ingest,
        vec![
            completed("login", "a", t0, 1_500_000, Succeeded, &[("platform", "ios")]),
            completed("login", "b", t0, 2_500_000, Succeeded, &[("platform", "ios")]),
        ],
    )
    .await;
    assert_eq!(r.accepted, 2);
    let s = stats(&mut app.query, stats_request("login", t0 - 60 * SEC, now())).await;
    assert_eq!((s.count, s.started, s.succeeded, s.abandoned), (2, 2, 2, 0));
    assert_eq!(us(&s.total_time), 4 * SEC);
    assert_eq!(us(&s.mean), 2 * SEC);
    let min = us(&s.min);
    let max = us(&s.max);
    assert!(
        (min - 1_500_000).abs() <= 15_000 && (max - 2_500_000).abs() <= 25_000,
        "{min} {max}"
    );
    app.stop().await;
}

async fn each_outcome_is_counted_and_has_its_own_durations(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let t0 = now() - 600 * SEC;
    let mut events = Vec::new();
    for (i, (outcome, secs)) in [(Succeeded, 10), (Succeeded, 12), (Failed, 30), (Cancelled, 2)]
        .iter()
        .enumerate()
    {
        let id = format!("i{i}");
        events.push(start("claim", &id, t0, &[]));
        events.push(finish("claim", &id, t0 + secs * SEC, *outcome));
    }
    record(&mut app.ingest, events).await;
    let range = (t0 - 60 * SEC, now());
    for (outcome, count, total) in [(Succeeded, 2, 22), (Failed, 1, 30), (Cancelled, 1, 2)] {
        let mut req = stats_request("claim", range.0, range.1);
        req.outcome = outcome as i32;
        let s = stats(&mut app.query, req).await;
        assert_eq!((s.succeeded, s.failed, s.cancelled, s.started), (2, 1, 1, 4));
        assert_eq!(s.count, count, "{outcome:?}");
        assert_eq!(us(&s.total_time), total * SEC, "{outcome:?}");
    }
    let s = stats(&mut app.query, stats_request("claim", range.0, range.1)).await;
    assert!((s.success_rate - 0.5).abs() < 1e-12, "2 of 4: {}", s.success_rate);
    app.stop().await;
}

async fn a_start_never_finished_counts_as_abandoned_after_abandon_after(backend: Backend) {
    let mut app = spawn_app(backend).await;
    // abandon_after is 1 h: a start 3 h ago with no finish is abandoned; one 10 min ago is
    // not yet; one 3 h ago that finished is not.
    let old = now() - 3 * 3600 * SEC;
    let recent = now() - 600 * SEC;
    record(
        &mut app.ingest,
        vec![
            start("signup", "gone", old, &[]),
            start("signup", "done", old, &[]),
            finish("signup", "done", old + 20 * SEC, Succeeded),
            start("signup", "pending", recent, &[]),
        ],
    )
    .await;
    let s = stats(&mut app.query, stats_request("signup", old - 3600 * SEC, now())).await;
    assert_eq!((s.started, s.succeeded, s.abandoned), (3, 1, 1));
    assert!((s.success_rate - 0.5).abs() < 1e-12, "1 succeeded of 2 decided");
    // A late finish for the abandoned one (still within the horizon) turns it around.
    record(&mut app.ingest, vec![finish("signup", "gone", recent, Failed)]).await;
    let s = stats(&mut app.query, stats_request("signup", old - 3600 * SEC, now())).await;
    assert_eq!((s.abandoned, s.failed), (0, 1));
    app.stop().await;
}

async fn label_filters_select_series(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let t0 = now() - 600 * SEC;
    let mut events = Vec::new();
    for (i, (release, platform, secs)) in [("1", "ios", 10), ("1", "web", 20), ("2", "ios", 30), ("2", "web", 40)]
        .iter()
        .enumerate()
    {
        events.push(completed(
            "pay",
            &format!("i{i}"),
            t0,
            secs * SEC,
            Succeeded,
            &[("release", release), ("platform", platform)],
        ));
    }
    record(&mut app.ingest, events).await;
    for (filter, count, total) in [
        (vec![], 4, 100),
        (vec![("release", "2")], 2, 70),
        (vec![("platform", "ios")], 2, 40),
        (vec![("release", "1"), ("platform", "web")], 1, 20),
        (vec![("release", "3")], 0, 0),
        (vec![("region", "eu")], 0, 0),
    ] {
        let mut req = stats_request("pay", t0 - 60 * SEC, now());
        req.filter = labels(&filter);
        let s = stats(&mut app.query, req).await;
        assert_eq!((s.count, s.started), (count, count), "{filter:?}");
        assert_eq!(us(&s.total_time), total * SEC, "{filter:?}");
    }
    app.stop().await;
}

async fn time_ranges_across_minute_hour_and_day_boundaries_count_exactly(backend: Backend) {
    let mut app = spawn_app(backend).await;
    const MIN: i64 = 60 * SEC;
    const HOUR: i64 = 3600 * SEC;
    const DAY: i64 = 86_400 * SEC;
    // The last midnight at least 3 h ago (the latest event is 3 h after it), and whole
    // days around it. Its minute buckets, and those just before it, are then 20 h or more
    // within minute retention (2 days) whatever the time of day. (Yesterday's midnight
    // was not: in the last minute of a day the minute before it had just left retention,
    // and the range from it was read from the hour bucket.)
    let d = (now() - 3 * HOUR).div_euclid(DAY) * DAY;
    let offsets = [
        -DAY - 1,
        -HOUR - 1,
        -90 * SEC,
        -30 * SEC,
        -1,
        0,
        30 * SEC,
        59 * MIN,
        HOUR - 1,
        HOUR,
        2 * HOUR + 5,
        3 * HOUR,
    ];
    let times: Vec<i64> = offsets.iter().map(|o| d + o).collect();
    let events = times
        .iter()
        .enumerate()
        .map(|(i, at)| completed("range", &format!("e{i}"), *at, 1000 + i as i64, Succeeded, &[]))
        .collect();
    let r = record(&mut app.ingest, events).await;
    assert_eq!(r.accepted as usize, times.len(), "{:?}", r.rejected);
    let ranges = [
        (d - MIN, d + MIN),
        (d, d + HOUR),
        (d - 2 * MIN, d + HOUR + MIN),
        (d - HOUR, d),
        (d - DAY, d),
        (d, d + DAY),
        (d - DAY - HOUR, d + 3 * HOUR + MIN),
        (d + 30 * SEC, d + 59 * MIN + 1),
        (d - 2 * DAY, d + DAY),
    ];
    for (from, to) in ranges {
        let s = stats(&mut app.query, stats_request("range", from, to)).await;
        // The window read is [from, to) rounded outward to whole minutes.
        let (rf, rt) = (from.div_euclid(MIN) * MIN, (to + MIN - 1).div_euclid(MIN) * MIN);
        let expected: Vec<usize> = times
            .iter()
            .enumerate()
            .filter(|(_, t)| **t >= rf && **t < rt)
            .map(|(i, _)| i)
            .collect();
        let expected_sum: i64 = expected.iter().map(|i| 1000 + *i as i64).sum();
        assert_eq!(
            s.count as usize,
            expected.len(),
            "range {}..{} µs from d",
            from - d,
            to - d
        );
        assert_eq!(us(&s.total_time), expected_sum, "range {}..{}", from - d, to - d);
        assert_eq!(s.from.as_ref().map(|t| t.seconds * SEC), Some(rf));
        assert_eq!(s.to.as_ref().map(|t| t.seconds * SEC), Some(rt));
    }
    app.stop().await;
}

async fn series_return_stats_per_step(backend: Backend) {
    let mut app = spawn_app(backend).await;
    const HOUR: i64 = 3600 * SEC;
    let base = (now() / HOUR - 5) * HOUR;
    let mut events = Vec::new();
    for h in 0..4 {
        for k in 0..=h {
            events.push(completed(
                "search",
                &format!("{h}-{k}"),
                base + h * HOUR + k * SEC,
                SEC,
                Succeeded,
                &[],
            ));
        }
    }
    record(&mut app.ingest, events).await;
    let resp = app
        .query
        .get_task_series(pb::GetTaskSeriesRequest {
            task: "search".into(),
            from: Some(ts(base)),
            to: Some(ts(base + 4 * HOUR)),
            step: Some(dur(HOUR)),
            ..Default::default()
        })
        .await
        .expect("series")
        .into_inner();
    let counts: Vec<u64> = resp.points.iter().map(|p| p.count).collect();
    assert_eq!(counts, vec![1, 2, 3, 4]);
    let starts: Vec<i64> = resp
        .points
        .iter()
        .map(|p| p.from.as_ref().map_or(0, |t| t.seconds * SEC))
        .collect();
    assert_eq!(starts, (0..4).map(|h| base + h * HOUR).collect::<Vec<_>>());
    let bad = app
        .query
        .get_task_series(pb::GetTaskSeriesRequest {
            task: "search".into(),
            step: Some(dur(90 * SEC)),
            ..Default::default()
        })
        .await
        .expect_err("a step of 90 s is not whole minutes");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("step"), "{}", bad.message());
    app.stop().await;
}

async fn list_tasks_names_tasks_with_their_labels(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let t0 = now() - 600 * SEC;
    record(
        &mut app.ingest,
        vec![
            completed(
                "checkout",
                "a",
                t0,
                SEC,
                Succeeded,
                &[("release", "1"), ("platform", "ios")],
            ),
            completed(
                "checkout",
                "b",
                t0,
                SEC,
                Succeeded,
                &[("release", "2"), ("platform", "ios")],
            ),
            start("login", "c", t0, &[]),
        ],
    )
    .await;
    let list = app
        .query
        .list_tasks(pb::ListTasksRequest {})
        .await
        .expect("list")
        .into_inner();
    let names: Vec<&str> = list.tasks.iter().map(|t| t.task.as_str()).collect();
    assert_eq!(names, ["checkout", "login"]);
    let checkout = &list.tasks[0];
    assert_eq!(checkout.series, 2);
    let release = checkout
        .labels
        .iter()
        .find(|l| l.key == "release")
        .expect("release label");
    assert_eq!(release.values, ["1", "2"]);
    let platform = checkout
        .labels
        .iter()
        .find(|l| l.key == "platform")
        .expect("platform label");
    assert_eq!(platform.values, ["ios"]);
    app.stop().await;
}

async fn record_stream_answers_each_request_in_order(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let t0 = now() - 600 * SEC;
    // Request k carries k+1 new events and one duplicate of request 0's first event.
    let requests: Vec<pb::RecordRequest> = (0..20)
        .map(|k| {
            let mut events: Vec<_> = (0..=k)
                .map(|j| completed("stream", &format!("{k}-{j}"), t0, SEC, Succeeded, &[]))
                .collect();
            if k > 0 {
                events.push(completed("stream", "0-0", t0, SEC, Succeeded, &[]));
            }
            pb::RecordRequest { events }
        })
        .collect();
    let responses: Vec<pb::RecordResponse> = app
        .ingest
        .record_stream(tokio_stream::iter(requests))
        .await
        .expect("stream opens")
        .into_inner()
        .map(|r| r.expect("each response OK"))
        .collect()
        .await;
    assert_eq!(responses.len(), 20);
    for (k, r) in responses.iter().enumerate() {
        assert_eq!(r.accepted as usize, k + 1, "response {k} answers request {k}");
        assert_eq!(r.duplicates, u32::from(k > 0));
    }
    let s = stats(&mut app.query, stats_request("stream", t0 - 60 * SEC, now())).await;
    assert_eq!(s.count, (1..=20).sum::<u64>());
    app.stop().await;
}

async fn over_range_durations_are_clamped_and_counted(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let t0 = now() - 600 * SEC;
    let forty_days = 40 * 86_400 * SEC;
    let r = record(
        &mut app.ingest,
        vec![completed("slow", "a", t0, forty_days, Succeeded, &[])],
    )
    .await;
    assert_eq!((r.accepted, r.over_range), (1, 1));
    let s = stats(&mut app.query, stats_request("slow", t0 - 60 * SEC, now())).await;
    assert_eq!((s.count, s.over_range), (1, 1));
    assert_eq!(us(&s.total_time), forty_days, "the sum keeps the real duration");
    let thirty_days = 30 * 86_400 * SEC;
    let max = us(&s.max);
    assert!(
        max <= thirty_days + thirty_days / 100 && max >= thirty_days - thirty_days / 100,
        "{max}"
    );
    app.stop().await;
}

async fn timestamps_default_to_receive_time(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let before = now();
    let mut e = completed("default-at", "a", 0, SEC, Succeeded, &[]);
    e.at = None;
    let r = record(&mut app.ingest, vec![e]).await;
    assert_eq!(r.accepted, 1);
    let minute = 60 * SEC;
    let s = stats(
        &mut app.query,
        stats_request("default-at", before - before % minute, now() + 1),
    )
    .await;
    assert_eq!(s.count, 1);
    app.stop().await;
}

/// `actual` is within the HDR precision (2 significant digits: 1 %) of `exact`.
fn within_precision(actual: i64, exact: i64) -> bool {
    (actual - exact).abs() * 100 <= exact
}

async fn every_task_stats_field_matches_a_hand_computed_data_set(backend: Backend) {
    let mut app = spawn_app(backend).await;
    const MIN: i64 = 60 * SEC;
    // abandon_after is 1 h: `gone`, started 3 h ago and never finished, is abandoned.
    let old = now() - 3 * 3600 * SEC;
    let t0 = now() - 600 * SEC;
    // Four successes (two paired, two client-timed) with odd microseconds so sums and
    // means are exact only if nothing rounds; one failure, one cancellation.
    let (s1, s2, s3, s4) = (10_000_123, 20_000_456, 30_000_789, 40_001_000);
    let (f1, c1) = (60 * SEC, 5 * SEC);
    let r = record(
        &mut app.ingest,
        vec![
            start("profile", "s1", t0, &[("release", "7")]),
            finish("profile", "s1", t0 + s1, Succeeded),
            start("profile", "s2", t0, &[("release", "7")]),
            finish("profile", "s2", t0 + s2, Succeeded),
            completed("profile", "s3", t0 + MIN, s3, Succeeded, &[("release", "7")]),
            completed("profile", "s4", t0 + MIN, s4, Succeeded, &[("release", "7")]),
            start("profile", "f1", t0, &[("release", "7")]),
            finish("profile", "f1", t0 + f1, Failed),
            start("profile", "c1", t0, &[("release", "7")]),
            finish("profile", "c1", t0 + c1, Cancelled),
            start("profile", "gone", old, &[("release", "7")]),
        ],
    )
    .await;
    assert_eq!((r.accepted, r.duplicates, r.rejected.len()), (11, 0, 0), "{r:?}");

    let from = old - 3600 * SEC;
    let to = now();
    // Counts do not depend on the outcome asked for; durations do.
    // (outcome, its durations in ascending order)
    let cases: [(pb::Outcome, &[i64]); 3] = [(Succeeded, &[s1, s2, s3, s4]), (Failed, &[f1]), (Cancelled, &[c1])];
    for (outcome, durations) in cases {
        let mut req = stats_request("profile", from, to);
        req.outcome = outcome as i32;
        let s = stats(&mut app.query, req).await;
        let what = format!("{backend:?} {outcome:?}: {s:?}");
        assert_eq!(s.task, "profile", "{what}");
        assert_eq!(s.count, durations.len() as u64, "{what}");
        assert_eq!(s.started, 7, "every start and completed event: {what}");
        assert_eq!(
            (s.succeeded, s.failed, s.cancelled, s.abandoned),
            (4, 1, 1, 1),
            "{what}"
        );
        let rate = 4.0 / 7.0;
        assert!((s.success_rate - rate).abs() < 1e-12, "4 of 7 decided: {what}");
        let total: i64 = durations.iter().sum();
        assert_eq!(us(&s.total_time), total, "the exact sum: {what}");
        assert_eq!(us(&s.mean), total / durations.len() as i64, "the exact mean: {what}");
        let (exact_min, exact_max) = (durations[0], durations[durations.len() - 1]);
        assert!(within_precision(us(&s.min), exact_min), "min: {what}");
        assert!(within_precision(us(&s.max), exact_max), "max: {what}");
        // The default percentiles, in order, each the nearest-rank quantile of the data
        // within 1 %.
        let asked: Vec<f64> = s.percentiles.iter().map(|p| p.percentile).collect();
        assert_eq!(asked, [50.0, 90.0, 95.0, 99.0], "{what}");
        for p in &s.percentiles {
            let exact = nearest_rank(durations, p.percentile);
            assert!(
                within_precision(us(&p.value), exact),
                "p{} is {} µs, exact {exact} µs: {what}",
                p.percentile,
                us(&p.value)
            );
        }
        assert_eq!(s.significant_digits, 2, "{what}");
        assert_eq!(s.over_range, 0, "{what}");
        assert_eq!(s.histogram, "", "only when asked: {what}");
        // The window read: whole minutes around [from, to).
        assert_eq!(
            s.from.as_ref().map(|t| t.seconds * SEC),
            Some(from.div_euclid(MIN) * MIN)
        );
        assert_eq!(
            s.to.as_ref().map(|t| t.seconds * SEC),
            Some((to + MIN - 1).div_euclid(MIN) * MIN)
        );
    }

    // Percentiles the request names, in the order it names them.
    let mut req = stats_request("profile", from, to);
    req.percentiles = vec![75.0, 25.0, 100.0];
    let s = stats(&mut app.query, req).await;
    let got: Vec<(f64, i64)> = s.percentiles.iter().map(|p| (p.percentile, us(&p.value))).collect();
    assert_eq!(got.len(), 3, "{got:?}");
    for ((p, value), (want_p, exact)) in got.iter().zip([(75.0, s3), (25.0, s1), (100.0, s4)]) {
        assert_eq!(*p, want_p, "{got:?}");
        assert!(within_precision(*value, exact), "p{p}: {value} vs {exact}");
    }
    app.stop().await;
}

/// The nearest-rank `percentile` of sorted `data`: the smallest value with at least
/// `percentile` % of the data at or below it.
fn nearest_rank(data: &[i64], percentile: f64) -> i64 {
    let rank = ((percentile / 100.0) * data.len() as f64).ceil().max(1.0) as usize;
    data[rank.min(data.len()) - 1]
}
