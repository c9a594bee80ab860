//! The real binary (`tasktime serve`) as a process: acknowledged events survive SIGKILL
//! of the service and of Redis, two replicas count every instance once, SIGTERM drains
//! like a Kubernetes pod, a service started before Redis becomes ready when Redis comes
//! up, and the process runs without transparent huge pages.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng as _;
use rand::seq::SliceRandom as _;
use tasktime::config::Config;
use tasktime::pb;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt as _;

use crate::helpers::{
    Ingest, Query, RedisOptions, RedisServer, SEC, ServiceProcess, completed, connect, finish, free_port, now, record,
    send_signal, spawn_app_with, start, stats, stats_request, test_config, us,
};

const MINUTE: i64 = 60 * SEC;
const INGEST: &str = "tasktime.v1.IngestService";

fn floor_minute(at: i64) -> i64 {
    at.div_euclid(MINUTE) * MINUTE
}

/// A range holding every event of these tests (all within the last hour).
fn last_hours(task: &str) -> pb::GetTaskStatsRequest {
    stats_request(
        task,
        floor_minute(now()) - 120 * MINUTE,
        floor_minute(now()) + 2 * MINUTE,
    )
}

/// Starts `tasktime serve <args>` off the async threads (it reads the log synchronously).
async fn serve(args: &[&str]) -> ServiceProcess {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ServiceProcess::start(&args)
    })
    .await
    .expect("start the service process")
}

/// [`serve`] on `redis_url` with these drain and grace periods and `extra` arguments:
/// the periods a test passes and those it checks the exit time against are one value.
async fn serve_with_periods(redis_url: &str, drain: Duration, grace: Duration, extra: &[&str]) -> ServiceProcess {
    let (drain, grace) = (format!("{}ms", drain.as_millis()), format!("{}ms", grace.as_millis()));
    let mut args = vec![
        "--redis-url",
        redis_url,
        "--drain-period",
        &drain,
        "--grace-period",
        &grace,
    ];
    args.extend_from_slice(extra);
    serve(&args).await
}

/// SIGKILL, off the async threads.
async fn sigkill(mut service: ServiceProcess) {
    tokio::task::spawn_blocking(move || service.kill())
        .await
        .expect("kill the service process");
}

async fn health_status(health: &mut HealthClient<tonic::transport::Channel>, service: &str) -> ServingStatus {
    let status = health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("health Check({service:?}): {e}"))
        .into_inner()
        .status;
    ServingStatus::try_from(status).expect("a known serving status")
}

/// Polls until `service`'s health is `wanted`, for at most `within`.
async fn await_health(
    health: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
    wanted: ServingStatus,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let got = health_status(health, service).await;
        if got == wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health of {service:?} is still {got:?} after {within:?}; wanted {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the process to exit, for at most `within`.
async fn await_exit(service: &mut ServiceProcess, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = service.child.try_wait().expect("wait for tasktime") {
            return status;
        }
        assert!(Instant::now() < deadline, "tasktime did not exit within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Totals of a series of Record answers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    accepted: u32,
    duplicates: u32,
}

impl Tally {
    fn add(&mut self, r: &pb::RecordResponse) {
        assert!(r.rejected.is_empty(), "nothing here is invalid: {r:?}");
        self.accepted += r.accepted;
        self.duplicates += r.duplicates;
    }
}

async fn send_all(client: &mut Ingest, batches: &[Vec<pb::TaskEvent>]) -> Tally {
    let mut tally = Tally::default();
    for batch in batches {
        tally.add(&record(client, batch.clone()).await);
    }
    tally
}

/// A workload with a known ledger: `pairs` start+finish instances and `completions`
/// completed events, shuffled (so many finishes arrive before their starts) and cut into
/// batches of `batch`.
struct Workload {
    task: String,
    batches: Vec<Vec<pb::TaskEvent>>,
    events: usize,
    instances: u64,
    total_us: i64,
}

fn workload(task: &str, pairs: usize, completions: usize, batch: usize, seed: u64) -> Workload {
    let t0 = now() - 30 * MINUTE;
    let mut events = Vec::with_capacity(2 * pairs + completions);
    let mut total_us = 0;
    for i in 0..pairs {
        let i64i = i64::try_from(i).expect("small");
        let at = t0 + i64i * 1_000;
        let duration = (1 + i64i % 50) * SEC + i64i;
        total_us += duration;
        let id = format!("pair-{i}");
        events.push(start(
            task,
            &id,
            at,
            &[("platform", if i % 2 == 0 { "ios" } else { "web" })],
        ));
        events.push(finish(task, &id, at + duration, pb::Outcome::Succeeded));
    }
    for j in 0..completions {
        let j64 = i64::try_from(j).expect("small");
        let duration = (1 + j64 % 97) * 100_000 + j64;
        total_us += duration;
        let at = t0 + 5 * MINUTE + j64 * 1_000;
        events.push(completed(
            task,
            &format!("done-{j}"),
            at,
            duration,
            pb::Outcome::Succeeded,
            &[("platform", "android")],
        ));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    events.shuffle(&mut rng);
    let n = events.len();
    Workload {
        task: task.to_owned(),
        batches: events.chunks(batch).map(<[_]>::to_vec).collect(),
        events: n,
        instances: u64::try_from(pairs + completions).expect("small"),
        total_us,
    }
}

async fn assert_ledger(query: &mut Query, w: &Workload, when: &str) {
    let s = stats(query, last_hours(&w.task)).await;
    assert_eq!(s.count, w.instances, "{when}: count: {s:?}");
    assert_eq!(s.succeeded, w.instances, "{when}: succeeded: {s:?}");
    assert_eq!(s.started, w.instances, "{when}: started: {s:?}");
    assert_eq!(us(&s.total_time), w.total_us, "{when}: total_time: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill_of_the_service_and_of_redis() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let mut redis = RedisServer::start(RedisOptions {
            aof: true,
            ..Default::default()
        });
        let url = redis.url();
        let w = workload("durable", 500, 1_000, 100, 7);
        assert_eq!(w.events, 2_000);

        let first = serve(&["--redis-url", &url]).await;
        let mut ingest = first.ingest().await;
        let sent = send_all(&mut ingest, &w.batches).await;
        // No drain, no last commit: only what Redis already holds can survive.
        sigkill(first).await;
        assert_eq!(
            sent,
            Tally {
                accepted: 2_000,
                duplicates: 0
            },
            "every event was acknowledged as new"
        );

        // Redis too dies without warning; the acks must be in its AOF.
        redis.restart();

        let second = serve(&["--redis-url", &url]).await;
        let mut query = second.query().await;
        assert_ledger(&mut query, &w, "after SIGKILL of the service and of Redis").await;

        // Every batch again, to the new process: all duplicates, nothing counted twice.
        let mut ingest = second.ingest().await;
        let resent = send_all(&mut ingest, &w.batches).await;
        assert_eq!(
            resent,
            Tally {
                accepted: 0,
                duplicates: 2_000
            }
        );
        assert_ledger(&mut query, &w, "after resending everything").await;
        sigkill(second).await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_with_batches_in_flight_loses_no_ack_and_retries_count_once() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let redis = RedisServer::start(RedisOptions {
            aof: true,
            ..Default::default()
        });
        let url = redis.url();
        let task = "inflight";
        let t = now() - 10 * MINUTE;
        let total = 4_000usize;
        let events: Vec<pb::TaskEvent> = (0..total)
            .map(|i| completed(task, &format!("i{i}"), t, SEC, pb::Outcome::Succeeded, &[]))
            .collect();
        let batches: Vec<Vec<pb::TaskEvent>> = events.chunks(100).map(<[_]>::to_vec).collect();

        let first = serve(&["--redis-url", &url]).await;
        let acked = Arc::new(AtomicUsize::new(0));
        let mut senders = Vec::new();
        // Four clients, each with every fourth batch, sending as fast as they can.
        for k in 0..4 {
            let mine: Vec<Vec<pb::TaskEvent>> = batches.iter().skip(k).step_by(4).cloned().collect();
            let mut client = first.ingest().await;
            let acked = Arc::clone(&acked);
            senders.push(tokio::spawn(async move {
                for batch in mine {
                    match client.record(pb::RecordRequest { events: batch }).await {
                        Ok(r) => {
                            let r = r.into_inner();
                            assert_eq!(r.accepted, 100, "{r:?}");
                            acked.fetch_add(100, Ordering::SeqCst);
                        }
                        Err(_) => return, // the service died under this request
                    }
                }
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.load(Ordering::SeqCst) < total / 3 {
            assert!(Instant::now() < deadline, "the first third is acknowledged in time");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sigkill(first).await;
        for s in senders {
            s.await.expect("sender");
        }
        let acked = u64::try_from(acked.load(Ordering::SeqCst)).expect("small");
        let total = u64::try_from(total).expect("small");
        assert!(acked < total, "the kill came while batches were still in flight");

        let second = serve(&["--redis-url", &url]).await;
        let mut query = second.query().await;
        let before = stats(&mut query, last_hours(task)).await.count;
        assert!(
            (acked..=total).contains(&before),
            "every acknowledged event survived ({acked} acked, {before} counted, {total} sent)"
        );

        // The clients retry everything (they cannot know what the dead process applied).
        let mut ingest = second.ingest().await;
        let retried = send_all(&mut ingest, &batches).await;
        assert_eq!(
            u64::from(retried.accepted),
            total - before,
            "the retry applies exactly what was not applied before: {retried:?}"
        );
        assert_eq!(u64::from(retried.duplicates), before, "{retried:?}");
        let after = stats(&mut query, last_hours(task)).await;
        assert_eq!(after.count, total, "{after:?}");
        assert_eq!(
            us(&after.total_time),
            i64::try_from(total).expect("small") * SEC,
            "{after:?}"
        );
        sigkill(second).await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_service_processes_on_one_redis_count_each_instance_once() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let redis = RedisServer::start(RedisOptions::default());
        let url = redis.url();
        let task = "replicas";
        let n = 1_000usize;
        let t0 = now() - 20 * MINUTE;
        let mut total_us = 0;
        let mut starts = Vec::with_capacity(n);
        let mut finishes = Vec::with_capacity(n);
        for i in 0..n {
            let i64i = i64::try_from(i).expect("small");
            let at = t0 + i64i * 1_000;
            let duration = (1 + i64i % 30) * SEC + i64i;
            total_us += duration;
            starts.push(start(task, &format!("r{i}"), at, &[]));
            finishes.push(finish(task, &format!("r{i}"), at + duration, pb::Outcome::Succeeded));
        }
        let batches =
            |events: &[pb::TaskEvent]| -> Vec<Vec<pb::TaskEvent>> { events.chunks(50).map(<[_]>::to_vec).collect() };

        let a = serve(&["--redis-url", &url]).await;
        let b = serve(&["--redis-url", &url]).await;
        let mut ingest_a = a.ingest().await;
        let mut ingest_b = b.ingest().await;

        // Starts to A; the first half of the finishes to B, which pairs them with A's starts.
        let sent = send_all(&mut ingest_a, &batches(&starts)).await;
        assert_eq!(sent.accepted, 1_000);
        let half = send_all(&mut ingest_b, &batches(&finishes[..n / 2])).await;
        assert_eq!(
            half,
            Tally {
                accepted: 500,
                duplicates: 0
            }
        );

        // Then every finish to both at once, as a client retrying to whichever replica
        // would: A in order, B in reverse, so they race on the same instances.
        let all = batches(&finishes);
        let reversed: Vec<Vec<pb::TaskEvent>> = all.iter().rev().cloned().collect();
        let (ta, tb) = tokio::join!(send_all(&mut ingest_a, &all), send_all(&mut ingest_b, &reversed));
        assert_eq!(
            ta.accepted + tb.accepted,
            500,
            "each not yet finished instance is accepted by exactly one replica: A {ta:?}, B {tb:?}"
        );
        assert_eq!(
            ta.duplicates + tb.duplicates,
            2 * 1_000 - 500,
            "everything else is a duplicate: A {ta:?}, B {tb:?}"
        );

        for (name, service) in [("A", &a), ("B", &b)] {
            let mut query = service.query().await;
            let s = stats(&mut query, last_hours(task)).await;
            assert_eq!(s.count, 1_000, "{name}: {s:?}");
            assert_eq!(s.started, 1_000, "{name}: {s:?}");
            assert_eq!(s.abandoned, 0, "{name}: {s:?}");
            assert_eq!(us(&s.total_time), total_us, "{name}: {s:?}");
        }
        sigkill(a).await;
        sigkill(b).await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_answers_in_flight_rpcs_and_exits_zero() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let redis = RedisServer::start(RedisOptions::default());
        let url = redis.url();
        let drain = Duration::from_secs(2);
        let grace = Duration::from_secs(5);
        let mut service = serve_with_periods(
            &url,
            drain,
            grace,
            // Long enough that the RPC held up by the stopped Redis below does not time out.
            &["--redis-response-timeout", "5s", "--commit-timeout", "10s"],
        )
        .await;
        let mut health = HealthClient::new(connect(service.addr).await);
        await_health(&mut health, INGEST, ServingStatus::Serving, Duration::from_secs(5)).await;
        let mut ingest = service.ingest().await;
        let task = "drain";
        let t = now() - MINUTE;
        let warm = record(
            &mut ingest,
            vec![completed(task, "warm", t, SEC, pb::Outcome::Succeeded, &[])],
        )
        .await;
        assert_eq!(warm.accepted, 1);

        // An RPC in flight when SIGTERM arrives: Redis is stopped, so its commit waits.
        redis.signal("STOP");
        let in_flight_events: Vec<pb::TaskEvent> = (0..10)
            .map(|i| completed(task, &format!("f{i}"), t, 2 * SEC, pb::Outcome::Succeeded, &[]))
            .collect();
        let in_flight = tokio::spawn({
            let mut ingest = ingest.clone();
            async move {
                ingest
                    .record(pb::RecordRequest {
                        events: in_flight_events,
                    })
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!in_flight.is_finished(), "the Record waits for the stopped Redis");

        send_signal(service.child.id(), "TERM");
        let term_at = Instant::now();
        tokio::time::sleep(Duration::from_millis(200)).await;
        redis.signal("CONT");

        // Within the drain period: readiness says NOT_SERVING (so the load balancer moves
        // traffic away), liveness still answers SERVING, and RPCs are still served.
        await_health(
            &mut health,
            INGEST,
            ServingStatus::NotServing,
            Duration::from_millis(500),
        )
        .await;
        assert_eq!(
            health_status(&mut health, "tasktime.v1.QueryService").await,
            ServingStatus::NotServing
        );
        assert_eq!(health_status(&mut health, "").await, ServingStatus::Serving);
        let during = record(
            &mut ingest,
            vec![completed(task, "during", t, SEC, pb::Outcome::Succeeded, &[])],
        )
        .await;
        assert_eq!(during.accepted, 1, "RPCs are still served while draining");
        assert!(
            term_at.elapsed() < drain,
            "those checks ran within the drain period ({:?})",
            term_at.elapsed()
        );

        let answered = in_flight
            .await
            .expect("the in-flight Record's task")
            .expect("the RPC in flight at SIGTERM completes OK")
            .into_inner();
        assert_eq!(answered.accepted, 10, "{answered:?}");

        let status = await_exit(&mut service, drain + grace).await;
        let took = term_at.elapsed();
        assert!(status.success(), "exit status 0 after SIGTERM, got {status:?}");
        assert!(
            took >= drain,
            "the process waited out the drain period, exited after {took:?}"
        );

        // What it acknowledged is in Redis.
        let check = spawn_app_with(
            Config {
                redis_url: Some(url.clone()),
                ..test_config()
            },
            None,
        )
        .await;
        let s = stats(&mut check.query.clone(), last_hours(task)).await;
        assert_eq!(s.count, 12, "{s:?}");
        assert_eq!(us(&s.total_time), SEC + 10 * 2 * SEC + SEC, "{s:?}");
        check.stop().await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_redis_gone_exits_without_trying_every_unfolded_journal() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let mut redis = RedisServer::start(RedisOptions::default());
        let mut service = serve(&["--redis-url", &redis.url(), "--drain-period", "0s"]).await;
        let mut ingest = service.ingest().await;
        // Forty tasks, so forty journals this replica has not folded yet when Redis goes.
        let t = now() - MINUTE;
        let events: Vec<pb::TaskEvent> = (0..40)
            .map(|i| completed(&format!("gone-{i}"), "a", t, SEC, pb::Outcome::Succeeded, &[]))
            .collect();
        let r = record(&mut ingest, events).await;
        assert_eq!(r.accepted, 40, "{r:?}");
        redis.kill();

        send_signal(service.child.id(), "TERM");
        let term_at = Instant::now();
        // Each fold of the last pass would wait for the unreachable Redis in turn (11 s for
        // these forty journals before the pass stopped at the first such fold); the
        // journals stay in Redis for the next replica to fold.
        let status = await_exit(&mut service, Duration::from_secs(60)).await;
        let took = term_at.elapsed();
        assert!(status.success(), "exit status 0 after SIGTERM, got {status:?}");
        assert!(
            took < Duration::from_secs(8),
            "SIGTERM with Redis gone took {took:?} to exit"
        );
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_drain_and_one_grace_period_even_when_the_last_commit_hangs() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let redis = RedisServer::start(RedisOptions::default());
        let (drain, grace) = (Duration::from_millis(500), Duration::from_secs(2));
        let mut service = serve_with_periods(
            &redis.url(),
            drain,
            grace,
            // Redis is stopped below: the commit of the RPC in flight waits for it far
            // longer than the grace period.
            &["--redis-response-timeout", "30s", "--commit-timeout", "60s"],
        )
        .await;
        let mut ingest = service.ingest().await;
        let t = now() - MINUTE;
        let warm = record(
            &mut ingest,
            vec![completed("hang", "warm", t, SEC, pb::Outcome::Succeeded, &[])],
        )
        .await;
        assert_eq!(warm.accepted, 1);

        redis.signal("STOP");
        let in_flight = tokio::spawn({
            let mut ingest = ingest.clone();
            async move {
                ingest
                    .record(pb::RecordRequest {
                        events: vec![completed("hang", "late", t, SEC, pb::Outcome::Succeeded, &[])],
                    })
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!in_flight.is_finished(), "the Record waits for the stopped Redis");

        send_signal(service.child.id(), "TERM");
        let term_at = Instant::now();
        // The RPCs still running, the last commit and the last fold share one grace
        // period: the process is gone by drain + grace, whatever Redis does.
        let status = await_exit(&mut service, Duration::from_secs(60)).await;
        let took = term_at.elapsed();
        redis.signal("CONT");
        assert!(status.success(), "exit status 0 after SIGTERM, got {status:?}");
        assert!(
            took < drain + grace + Duration::from_millis(1500),
            "exited {took:?} after SIGTERM; drain {drain:?} + grace {grace:?}"
        );
        let cut = in_flight.await.expect("the in-flight Record's task");
        assert!(cut.is_err(), "the RPC cut at the deadline is not acknowledged: {cut:?}");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_before_redis_becomes_ready_when_redis_comes_up() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let port = free_port();
        let url = format!("redis://127.0.0.1:{port}");
        let service = serve(&["--redis-url", &url, "--redis-connect-timeout", "500ms"]).await;
        let mut health = HealthClient::new(connect(service.addr).await);
        assert_eq!(health_status(&mut health, "").await, ServingStatus::Serving, "liveness");
        assert_eq!(health_status(&mut health, INGEST).await, ServingStatus::NotServing);

        let mut ingest = service.ingest().await;
        let task = "late";
        let t = now() - MINUTE;
        let events = vec![
            start(task, "a", t, &[]),
            finish(task, "a", t + 3 * SEC, pb::Outcome::Succeeded),
        ];
        let asked = Instant::now();
        let status = ingest
            .record(pb::RecordRequest { events: events.clone() })
            .await
            .expect_err("Redis is down");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let retry = status
            .get_details_retry_info()
            .unwrap_or_else(|| panic!("RetryInfo attached: {status:?}"));
        assert!(retry.retry_delay.is_some_and(|d| d > Duration::ZERO), "{retry:?}");
        assert!(asked.elapsed() < Duration::from_secs(5), "a down store fails fast");

        let _redis = RedisServer::start(RedisOptions {
            port: Some(port),
            ..Default::default()
        });
        await_health(&mut health, INGEST, ServingStatus::Serving, Duration::from_secs(10)).await;
        let response = record(&mut ingest, events).await;
        assert_eq!(response.accepted, 2, "{response:?}");
        let s = stats(&mut service.query().await, last_hours(task)).await;
        assert_eq!((s.count, us(&s.total_time)), (1, 3 * SEC), "{s:?}");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis_going_away_and_coming_back_while_liveness_stays_serving() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let mut redis = RedisServer::start(RedisOptions {
            aof: true,
            ..Default::default()
        });
        let url = redis.url();
        let service = serve(&["--redis-url", &url, "--redis-connect-timeout", "500ms"]).await;
        let mut health = HealthClient::new(connect(service.addr).await);
        await_health(&mut health, INGEST, ServingStatus::Serving, Duration::from_secs(5)).await;

        // Liveness, sampled all along on its own connection: it never says anything but SERVING.
        let stop = tokio_util::sync::CancellationToken::new();
        let liveness = tokio::spawn({
            let mut health = HealthClient::new(connect(service.addr).await);
            let stop = stop.clone();
            async move {
                let mut samples = Vec::new();
                while !stop.is_cancelled() {
                    let answer = health
                        .check(HealthCheckRequest { service: String::new() })
                        .await
                        .map(|r| r.into_inner().status);
                    samples.push(answer.map_err(|e| e.code()));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                samples
            }
        });
        let readiness = [INGEST, "tasktime.v1.QueryService", "tasktime.v1.GateService"];
        let mut ingest = service.ingest().await;
        let task = "readiness";
        let t = now() - MINUTE;

        for (round, fault) in ["SIGKILL", "SIGSTOP"].into_iter().enumerate() {
            let went = Instant::now();
            if fault == "SIGKILL" {
                redis.kill();
            } else {
                redis.signal("STOP");
            }
            for name in readiness {
                await_health(&mut health, name, ServingStatus::NotServing, Duration::from_secs(5)).await;
            }
            eprintln!("Redis {fault}: readiness NOT_SERVING after {:?}", went.elapsed());

            let back = Instant::now();
            if fault == "SIGKILL" {
                redis.restart();
            } else {
                redis.signal("CONT");
            }
            for name in readiness {
                await_health(&mut health, name, ServingStatus::Serving, Duration::from_secs(10)).await;
            }
            eprintln!("Redis back: readiness SERVING after {:?}", back.elapsed());
            // Ready means ready: a Record is committed.
            let id = format!("after-{round}");
            let r = record(
                &mut ingest,
                vec![completed(task, &id, t, SEC, pb::Outcome::Succeeded, &[])],
            )
            .await;
            assert_eq!(r.accepted, 1, "{r:?}");
        }

        stop.cancel();
        let samples = liveness.await.expect("liveness sampler");
        assert!(samples.len() > 20, "liveness was sampled throughout: {}", samples.len());
        let not_serving: Vec<_> = samples
            .iter()
            .filter(|s| **s != Ok(ServingStatus::Serving as i32))
            .collect();
        assert!(
            not_serving.is_empty(),
            "liveness stayed SERVING while Redis was away: {not_serving:?} of {} samples",
            samples.len()
        );
        sigkill(service).await;
    })
    .await
    .expect("test finished in time");
}

/// A service whose Redis is gone stops within its drain period and a few seconds, not
/// its whole grace period, however many journals are due: a flusher pass ends at the
/// first fold Redis does not answer (it used to try every due journal, half a second of
/// connection retries each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_redis_gone_and_many_journals_due_exits_before_the_grace_period() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let mut redis = RedisServer::start(RedisOptions::default());
        let (drain, grace) = (Duration::from_millis(500), Duration::from_secs(20));
        let mut service = serve_with_periods(&redis.url(), drain, grace, &[]).await;
        let mut ingest = service.ingest().await;
        let t = now() - MINUTE;
        // One event in each of 40 tasks: 40 journals to fold.
        let events = (0..40)
            .map(|i| completed(&format!("gone-{i}"), "a", t, SEC, pb::Outcome::Succeeded, &[]))
            .collect();
        assert_eq!(record(&mut ingest, events).await.accepted, 40);
        redis.kill();
        // The flusher's next pass (every second) finds Redis gone.
        tokio::time::sleep(Duration::from_millis(1500)).await;

        send_signal(service.child.id(), "TERM");
        let term_at = Instant::now();
        let status = await_exit(&mut service, grace + Duration::from_secs(30)).await;
        let took = term_at.elapsed();
        assert!(status.success(), "exit status 0 after SIGTERM, got {status:?}");
        assert!(
            took < drain + Duration::from_secs(5),
            "exited {took:?} after SIGTERM with Redis gone and 40 journals due; drain {drain:?}, grace {grace:?}"
        );
    })
    .await
    .expect("test finished in time");
}

/// The binary turns transparent huge pages off for itself (`src/main.rs`): faults on
/// fresh huge pages held its threads for milliseconds at a time.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_process_runs_without_transparent_huge_pages() {
    let service = serve(&[]).await;
    let pid = service.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read the service's /proc status");
    let line = status
        .lines()
        .find(|line| line.starts_with("THP_enabled:"))
        .unwrap_or_else(|| {
            panic!("no THP_enabled line in /proc/{pid}/status (Linux 5.0 and later have one):\n{status}")
        });
    assert_eq!(
        line.split_whitespace().nth(1),
        Some("0"),
        "transparent huge pages are still on: `{line}`"
    );
}
