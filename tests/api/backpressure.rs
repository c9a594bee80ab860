//! Backpressure and slow stores: a full ingest queue and a commit that outlives its
//! timeout are both UNAVAILABLE with `google.rpc.RetryInfo`, never an unbounded buffer
//! or a silent drop, and a client that retries ends with an exact ledger.

use std::time::{Duration, Instant};

use tasktime::config::Config;
use tasktime::domain::Limits;
use tasktime::pb;
use tasktime::store::redis::RedisTimeouts;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::helpers::{
    Ingest, RedisOptions, RedisServer, SEC, completed, finish, now, record, spawn_app_with, start, stats,
    stats_request, test_config, us,
};

const MINUTE: i64 = 60 * SEC;

fn floor_minute(at: i64) -> i64 {
    at.div_euclid(MINUTE) * MINUTE
}

/// A range that holds every event of these tests (all within the last ten minutes).
fn recent(task: &str) -> pb::GetTaskStatsRequest {
    stats_request(
        task,
        floor_minute(now()) - 60 * MINUTE,
        floor_minute(now()) + 2 * MINUTE,
    )
}

/// Asserts `status` is UNAVAILABLE with a RetryInfo that gives a positive delay.
fn assert_retryable(status: &tonic::Status) -> Duration {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status
        .get_details_retry_info()
        .unwrap_or_else(|| panic!("google.rpc.RetryInfo attached to {status:?}"));
    let delay = info.retry_delay.expect("RetryInfo has a delay");
    assert!(delay > Duration::ZERO, "{info:?}");
    delay
}

/// Sends `events` until Record is OK, honouring RetryInfo, for at most `within`.
async fn record_with_retry(client: &mut Ingest, events: &[pb::TaskEvent], within: Duration) -> pb::RecordResponse {
    let deadline = Instant::now() + within;
    loop {
        match client
            .record(pb::RecordRequest {
                events: events.to_vec(),
            })
            .await
        {
            Ok(r) => return r.into_inner(),
            Err(status) => {
                let delay = assert_retryable(&status);
                assert!(
                    Instant::now() < deadline,
                    "Record still failing after {within:?}: {status:?}"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// `n` completed events of `duration_us` each, at `at`.
fn completions(task: &str, prefix: &str, n: usize, at: i64, duration_us: i64) -> Vec<pb::TaskEvent> {
    (0..n)
        .map(|i| {
            completed(
                task,
                &format!("{prefix}{i}"),
                at,
                duration_us,
                pb::Outcome::Succeeded,
                &[],
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_unavailable_at_once_and_the_queued_batch_still_commits() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let redis = RedisServer::start(RedisOptions::default());
        let config = Config {
            redis_url: Some(redis.url()),
            queue_capacity_events: 10,
            limits: Limits {
                max_events_per_request: 10,
                ..Default::default()
            },
            ..test_config()
        };
        let app = spawn_app_with(config, Some(redis)).await;
        let redis = app.redis.as_ref().expect("the app keeps its redis");
        let task = "queue";
        let t = now() - MINUTE;
        let first = completions(task, "first-", 10, t, 2 * SEC);
        let second = completions(task, "second-", 3, t, 3 * SEC);

        // Warm the connection and the script cache so the first batch only waits for Redis.
        let warm = record(&mut app.ingest.clone(), completions("warmup", "w", 1, t, SEC)).await;
        assert_eq!(warm.accepted, 1);

        redis.signal("STOP");
        let mut client = app.ingest.clone();
        let blocked = tokio::spawn({
            let first = first.clone();
            async move { client.record(pb::RecordRequest { events: first }).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!blocked.is_finished(), "the first batch waits for the stopped Redis");

        let asked = Instant::now();
        let status = app
            .ingest
            .clone()
            .record(pb::RecordRequest { events: second.clone() })
            .await
            .expect_err("the queue is full");
        let waited = asked.elapsed();
        redis.signal("CONT");
        assert!(
            waited < Duration::from_millis(500),
            "full is answered at once, not after {waited:?}"
        );
        assert_retryable(&status);
        assert!(
            status.message().contains("queue is full"),
            "the message says the queue is full: {status:?}"
        );

        let first_response = blocked
            .await
            .expect("the first Record's task")
            .expect("the queued batch commits once Redis resumes")
            .into_inner();
        assert_eq!(first_response.accepted, 10, "{first_response:?}");

        let second_response = record_with_retry(&mut app.ingest.clone(), &second, Duration::from_secs(10)).await;
        assert_eq!(second_response.accepted, 3, "{second_response:?}");

        let s = stats(&mut app.query.clone(), recent(task)).await;
        assert_eq!(s.count, 13, "{s:?}");
        assert_eq!(us(&s.total_time), 10 * 2 * SEC + 3 * 3 * SEC, "{s:?}");
        app.stop().await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_outlives_its_timeout_is_unavailable_and_a_retry_counts_once() {
    tokio::time::timeout(Duration::from_secs(40), async {
        let redis = RedisServer::start(RedisOptions::default());
        let config = Config {
            redis_url: Some(redis.url()),
            commit_timeout: Duration::from_secs(1),
            redis_timeouts: RedisTimeouts {
                connect: Duration::from_millis(500),
                response: Duration::from_millis(500),
            },
            ..test_config()
        };
        let app = spawn_app_with(config, Some(redis)).await;
        let redis = app.redis.as_ref().expect("the app keeps its redis");
        let mut ingest = app.ingest.clone();
        let task = "slow";
        let t = now() - 2 * MINUTE;

        // Five instances start before Redis stalls.
        let starts: Vec<pb::TaskEvent> = (0..5).map(|i| start(task, &format!("p{i}"), t, &[])).collect();
        assert_eq!(record(&mut ingest, starts.clone()).await.accepted, 5);

        // While Redis is stopped: their finishes (4 s each) and five completed events (6 s).
        let mut stalled: Vec<pb::TaskEvent> = (0..5)
            .map(|i| finish(task, &format!("p{i}"), t + 4 * SEC, pb::Outcome::Succeeded))
            .collect();
        stalled.extend(completions(task, "c", 5, t, 6 * SEC));

        redis.signal("STOP");
        let asked = Instant::now();
        let status = ingest
            .record(pb::RecordRequest {
                events: stalled.clone(),
            })
            .await
            .expect_err("Redis is stopped");
        let waited = asked.elapsed();
        assert_retryable(&status);
        assert!(
            waited < Duration::from_millis(2500),
            "the commit timeout (1 s) bounds the wait, not {waited:?}"
        );
        // Stay stopped a while longer than the commit timeout, then resume.
        tokio::time::sleep(Duration::from_millis(800)).await;
        redis.signal("CONT");

        // The client retries the same batch until it is acknowledged.
        let retried = record_with_retry(&mut ingest, &stalled, Duration::from_secs(15)).await;
        assert!(retried.rejected.is_empty(), "{retried:?}");
        assert_eq!(
            retried.accepted + retried.duplicates,
            10,
            "every event is either applied now or was applied before: {retried:?}"
        );

        // And once more: everything is a duplicate; the ledger is exact.
        let again = record(&mut ingest, stalled.clone()).await;
        assert_eq!((again.accepted, again.duplicates), (0, 10), "{again:?}");
        let again = record(&mut ingest, starts).await;
        assert_eq!((again.accepted, again.duplicates), (0, 5), "{again:?}");

        let s = stats(&mut app.query.clone(), recent(task)).await;
        assert_eq!(s.count, 10, "{s:?}");
        assert_eq!(s.started, 10, "{s:?}");
        assert_eq!(us(&s.total_time), 5 * 4 * SEC + 5 * 6 * SEC, "{s:?}");
        app.stop().await;
    })
    .await
    .expect("test finished in time");
}
