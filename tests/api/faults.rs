//! The fault suite: the ledger under kills, restarts, pauses, cut connections, full
//! memory and overload. Every scenario ends with the same proof: lost 0, duplicated 0,
//! counts, total time and percentiles equal to the ledger's.
//!
//! Each test prints one line `fault-table | scenario | acked | lost | duplicated | longest
//! RPC` (run with `--nocapture` to collect the table).

use std::time::{Duration, Instant};

use tasktime::ledger::{self, LedgerConfig, LedgerMode, LedgerReport, LoadOutcome};
use tasktime::pb;
use tonic_types::StatusExt as _;

use crate::helpers::*;

fn url(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}")
}

fn table_row(scenario: &str, load: &LoadOutcome, report: &LedgerReport) {
    eprintln!(
        "fault-table | {scenario} | {} events / {} instances | lost {} | duplicated {} | longest RPC {} ms | errors {:?}",
        load.events_acked(),
        report.acked,
        report.lost,
        report.duplicated,
        load.max_rpc_latency().as_millis(),
        load.errors()
    );
}

fn assert_exact(scenario: &str, load: &LoadOutcome, report: &LedgerReport) {
    table_row(scenario, load, report);
    assert_eq!(
        report.unresolved, 0,
        "{scenario}: every batch was eventually acknowledged: {report}"
    );
    assert_eq!((report.lost, report.duplicated), (0, 0), "{scenario}: {report}");
    assert!(report.exact, "{scenario}: {report}");
    let rejected: u64 = load.workers.iter().map(|w| w.rejected).sum();
    assert_eq!(rejected, 0, "{scenario}: the ledger sends only valid events");
    // The ledger retries every failure but a bad request; a fault must show as
    // UNAVAILABLE (or a cut connection), never as the service's own INTERNAL error.
    let errors = load.errors();
    assert!(
        !errors.contains_key("Internal"),
        "{scenario}: the service answered INTERNAL: {errors:?}"
    );
}

/// Starts `tasktime serve` on a fixed port, so a restart is reachable at the same address.
fn service_on(port: u16, redis: &RedisServer, extra: &[&str]) -> ServiceProcess {
    let listen = format!("127.0.0.1:{port}");
    let redis_url = redis.url();
    let mut args = vec!["--listen", &listen, "--redis-url", &redis_url];
    args.extend_from_slice(extra);
    ServiceProcess::start_raw(&args)
}

fn ledger(servers: Vec<String>, task: &str) -> LedgerConfig {
    LedgerConfig {
        servers,
        task: task.into(),
        workers: 8,
        instances_per_worker: 240,
        batch_instances: 20,
        mode: LedgerMode::Pairs,
        rpc_timeout: Duration::from_secs(3),
        give_up_after: Duration::from_secs(60),
        backoff: Duration::from_millis(20),
        // Each worker sleeps this long after each of its 12 batches, so a load lasts at
        // least 1.2 s and is still running when a test's fault strikes at 0.4 s. At 25 ms
        // a fast run could finish first: once in CI the load was done before Redis was
        // paused, and the pause test failed its "mid-load" check.
        pace: Duration::from_millis(100),
        seed: 7,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_sigkill_mid_load_then_restart_loses_nothing() {
    let redis = RedisServer::start(RedisOptions {
        aof: true,
        ..Default::default()
    });
    let port = free_port();
    let mut service = service_on(port, &redis, &[]);
    let config = ledger(vec![format!("http://127.0.0.1:{port}")], "kill-service");
    let load = tokio::spawn({
        let config = config.clone();
        async move { ledger::run_load(&config).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    service.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let service = service_on(port, &redis, &[]);
    let load = load.await.expect("load task").expect("load");
    let report = ledger::verify(&url(service.addr), &config, &load)
        .await
        .expect("verify");
    assert_exact("service SIGKILL + restart", &load, &report);
    assert!(load.errors().values().sum::<u64>() > 0, "the kill happened mid-load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_sigterm_mid_load_drains_and_exits_zero() {
    let redis = RedisServer::start(RedisOptions::default());
    let (pa, pb_) = (free_port(), free_port());
    let a = service_on(pa, &redis, &["--drain-period", "300ms", "--grace-period", "3s"]);
    let b = service_on(pb_, &redis, &[]);
    let mut config = ledger(
        vec![format!("http://127.0.0.1:{pa}"), format!("http://127.0.0.1:{pb_}")],
        "sigterm",
    );
    // Stretch the load to about 2.5 s so the SIGTERM lands in the middle of it.
    config.pace = Duration::from_millis(200);
    let load = tokio::spawn({
        let config = config.clone();
        async move { ledger::run_load(&config).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (drain, grace) = (Duration::from_millis(300), Duration::from_secs(3));
    let asked = Instant::now();
    let (a, status) = tokio::task::spawn_blocking(move || {
        let mut a = a;
        let status = a.terminate(Duration::from_secs(20));
        (a, status)
    })
    .await
    .expect("terminate");
    let took = asked.elapsed();
    eprintln!("SIGTERM to exit: {took:?}");
    assert!(status.success(), "exit status {status:?}");
    // Drain + grace for the RPCs and the last commit, plus the time to exit and notice it.
    assert!(
        took < drain + grace + Duration::from_millis(500),
        "drained within drain + grace: {took:?}\n{:#?}",
        a.startup_log()
    );
    assert!(took >= drain, "it waited out the drain period: {took:?}");
    let load = load.await.expect("load task").expect("load");
    assert!(
        load.elapsed > Duration::from_secs(1),
        "the load outlasted the SIGTERM: {:?}",
        load.elapsed
    );
    let report = ledger::verify(&url(b.addr), &config, &load).await.expect("verify");
    assert_exact("service SIGTERM (drain)", &load, &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigkill_and_aof_restart_unavailable_then_recovers() {
    let mut redis = RedisServer::start(RedisOptions {
        aof: true,
        ..Default::default()
    });
    let service = service_on(free_port(), &redis, &[]);
    let mut config = ledger(vec![url(service.addr)], "kill-redis");
    config.rpc_timeout = Duration::from_secs(2);
    let load = tokio::spawn({
        let config = config.clone();
        async move { ledger::run_load(&config).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    redis.kill();
    // While Redis is gone: UNAVAILABLE with RetryInfo, promptly.
    let mut ingest = service.ingest().await;
    let t0 = now() - 60 * SEC;
    let mut request = tonic::Request::new(pb::RecordRequest {
        events: vec![completed("kill-redis-probe", "p", t0, SEC, pb::Outcome::Succeeded, &[])],
    });
    request.set_timeout(Duration::from_secs(2));
    let sent = Instant::now();
    let err = ingest.record(request).await.expect_err("Redis is down");
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "answered within its deadline: {:?}",
        sent.elapsed()
    );
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.get_details_retry_info().is_some(), "RetryInfo attached: {err:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let back = Instant::now();
    redis.restart();
    // It recovers by itself within 10 s.
    loop {
        let mut request = tonic::Request::new(pb::RecordRequest {
            events: vec![completed("kill-redis-probe", "p", t0, SEC, pb::Outcome::Succeeded, &[])],
        });
        request.set_timeout(Duration::from_secs(2));
        if ingest.record(request).await.is_ok() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "recovered within 10 s of Redis returning"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("recovered {:?} after Redis returned", back.elapsed());
    let load = load.await.expect("load task").expect("load");
    assert_eq!(
        load.deadline_misses(),
        0,
        "the service answered every RPC itself, before its deadline: {:?}",
        load.errors()
    );
    for w in &load.workers {
        assert!(
            w.max_failed_rpc_latency <= config.rpc_timeout + Duration::from_millis(500),
            "worker {}: a failed RPC took {:?}, past its {:?} deadline",
            w.worker,
            w.max_failed_rpc_latency,
            config.rpc_timeout
        );
    }
    let report = ledger::verify(&url(service.addr), &config, &load)
        .await
        .expect("verify");
    assert_exact("Redis SIGKILL + AOF restart", &load, &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_ten_seconds_every_rpc_ends_within_its_deadline() {
    let redis = RedisServer::start(RedisOptions::default());
    const CAPACITY: usize = 4_000;
    let capacity = CAPACITY.to_string();
    let service = service_on(
        free_port(),
        &redis,
        &[
            // Both longer than the clients' 2 s deadline: the deadline, not a timeout of
            // the service's own, is what must bound each RPC here.
            "--redis-response-timeout",
            "5s",
            "--commit-timeout",
            "5s",
            "--queue-capacity",
            &capacity,
            "--max-events-per-request",
            &capacity,
        ],
    );
    let mut config = ledger(vec![url(service.addr)], "pause-redis");
    config.rpc_timeout = Duration::from_secs(2);
    let load = tokio::spawn({
        let config = config.clone();
        async move { ledger::run_load(&config).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    redis.signal("STOP");
    tokio::time::sleep(Duration::from_secs(10)).await;
    redis.signal("CONT");
    let load = load.await.expect("load task").expect("load");
    let errors = load.errors();
    assert!(errors.values().sum::<u64>() > 0, "the pause happened mid-load");
    // The service itself answered every RPC, before the deadline: none was cut by the
    // deadline (tonic's CANCELLED on the server, DEADLINE_EXCEEDED, or no answer).
    assert_eq!(
        load.deadline_misses(),
        0,
        "RPCs ended by their deadline, not by the service's answer: {errors:?}"
    );
    assert!(
        load.max_rpc_latency() < config.rpc_timeout,
        "longest RPC {:?}, past its deadline {:?}",
        load.max_rpc_latency(),
        config.rpc_timeout
    );
    assert_eq!(
        errors.keys().collect::<Vec<_>>(),
        ["Unavailable"],
        "only UNAVAILABLE: {errors:?}"
    );
    assert_eq!(
        load.errors_with_retry_info(),
        errors,
        "every UNAVAILABLE carried RetryInfo"
    );
    // No in-flight work leaked: every batch given up on during the pause returned its
    // share of the queue, so a batch as large as the whole queue is accepted now.
    let mut ingest = service.ingest().await;
    let t0 = now() - 60 * SEC;
    let whole_queue: Vec<_> = (0..CAPACITY)
        .map(|i| {
            completed(
                "pause-redis-after",
                &format!("q{i}"),
                t0,
                SEC,
                pb::Outcome::Succeeded,
                &[],
            )
        })
        .collect();
    let mut request = tonic::Request::new(pb::RecordRequest { events: whole_queue });
    request.set_timeout(Duration::from_secs(5));
    let response = ingest
        .record(request)
        .await
        .expect("a batch of the queue's whole capacity is accepted after the pause")
        .into_inner();
    assert_eq!(
        response.accepted,
        u32::try_from(CAPACITY).expect("small"),
        "{response:?}"
    );
    let report = ledger::verify(&url(service.addr), &config, &load)
        .await
        .expect("verify");
    assert_exact("Redis SIGSTOP 10 s", &load, &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_one_sigkilled_mid_load() {
    let redis = RedisServer::start(RedisOptions::default());
    for replicas in [2usize, 3] {
        let mut services: Vec<ServiceProcess> = (0..replicas).map(|_| service_on(free_port(), &redis, &[])).collect();
        let mut config = ledger(
            services.iter().map(|s| url(s.addr)).collect(),
            &format!("replicas-{replicas}"),
        );
        config.mode = LedgerMode::SplitPairs;
        // Stretch the load to about 3 s (12 batches a worker, 200 ms apart) so the kill
        // lands in the middle of it.
        config.pace = Duration::from_millis(200);
        let load = tokio::spawn({
            let config = config.clone();
            async move { ledger::run_load(&config).await }
        });
        tokio::time::sleep(Duration::from_millis(800)).await;
        let killed_at = Instant::now();
        services[0].kill();
        let load = load.await.expect("load task").expect("load");
        let failures = load.failures_by_server();
        eprintln!(
            "{replicas} replicas: the load ran {:?} ({:?} after the kill); failed RPCs by replica {failures:?}",
            load.elapsed,
            killed_at.elapsed()
        );
        assert!(
            killed_at.elapsed() > Duration::from_millis(500),
            "the load went on after the kill: {:?}",
            killed_at.elapsed()
        );
        assert!(
            failures[0] > 0,
            "the clients of the killed replica saw it fail, then moved on: {failures:?}"
        );
        let report = ledger::verify(&url(services[1].addr), &config, &load)
            .await
            .expect("verify");
        assert_exact(&format!("{replicas} replicas, one SIGKILLed"), &load, &report);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_between_request_and_reply_double_count_nothing() {
    let redis = RedisServer::start(RedisOptions::default());
    let proxy = FaultProxy::start(redis.port, 7).await;
    let service = ServiceProcess::start_raw(&[
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        &format!("redis://127.0.0.1:{}", proxy.port),
    ]);
    let mut config = ledger(vec![url(service.addr)], "cut-replies");
    config.workers = 4;
    config.pace = Duration::from_millis(5);
    let load = ledger::run_load(&config).await.expect("load");
    let cuts = proxy.cuts();
    proxy.stop();
    // Read back through a replica that talks to Redis directly.
    let direct = service_on(free_port(), &redis, &[]);
    let report = ledger::verify(&url(direct.addr), &config, &load).await.expect("verify");
    eprintln!("the proxy cut {cuts} connections after forwarding a request");
    assert!(cuts > 0, "the proxy cut connections mid-reply");
    assert_exact("replies cut by a TCP proxy", &load, &report);
    let duplicates: u64 = load.workers.iter().map(|w| w.duplicates_reported).sum();
    eprintln!("{duplicates} events were reported as duplicates of commits whose reply was lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_at_maxmemory_refuses_writes_saying_storage_is_full() {
    let redis = RedisServer::start(RedisOptions {
        extra: vec![
            "--maxmemory".into(),
            "3mb".into(),
            "--maxmemory-policy".into(),
            "noeviction".into(),
        ],
        ..Default::default()
    });
    let service = service_on(free_port(), &redis, &[]);
    let mut ingest = service.ingest().await;
    let t0 = now() - 600 * SEC;
    let mut acked = 0u64;
    let mut full = None;
    let mut longest = Duration::ZERO;
    for b in 0..2_000 {
        let events: Vec<_> = (0..200)
            .map(|i| {
                completed(
                    "full",
                    &format!("{b}-{i}-{}", "x".repeat(100)),
                    t0,
                    (i + 1) * 1000,
                    pb::Outcome::Succeeded,
                    &[("release", &format!("r{}", b % 50))],
                )
            })
            .collect();
        let sent = Instant::now();
        let result = ingest.record(pb::RecordRequest { events }).await;
        longest = longest.max(sent.elapsed());
        match result {
            Ok(r) => acked += u64::from(r.into_inner().accepted),
            Err(status) => {
                full = Some(status);
                break;
            }
        }
    }
    let status = full.expect("Redis filled up");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("storage is full"), "{}", status.message());
    assert!(status.get_details_retry_info().is_some());
    // Nothing acknowledged is missing.
    let mut query = service.query().await;
    let s = stats(&mut query, stats_request("full", t0 - 60 * SEC, now())).await;
    let (lost, unacked) = (acked.saturating_sub(s.count), s.count.saturating_sub(acked));
    eprintln!(
        "fault-table | Redis at maxmemory (noeviction) | {acked} events | lost {lost} | duplicated {unacked} | longest RPC {} ms | then {:?}",
        longest.as_millis(),
        status.code()
    );
    assert_eq!(s.count, acked, "every acknowledged event landed, none without an OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_beyond_the_queue_is_refused_with_retry_info_and_memory_stays_bounded() {
    let redis = RedisServer::start(RedisOptions::default());
    let service = service_on(
        free_port(),
        &redis,
        &[
            "--queue-capacity",
            "2000",
            "--max-events-per-request",
            "1000",
            "--max-round-events",
            "500",
        ],
    );
    let pid = service.child.id();
    let rss_before = proc_status_kib(pid, "VmRSS");
    let mut config = ledger(vec![url(service.addr)], "overload");
    config.workers = 64;
    config.instances_per_worker = 200;
    config.batch_instances = 100;
    config.pace = Duration::ZERO;
    config.backoff = Duration::from_millis(5);
    let load = ledger::run_load(&config).await.expect("load");
    // The peak, not a snapshot: VmHWM is the highest RSS the process ever had.
    let rss_peak = proc_status_kib(pid, "VmHWM");
    let errors = load.errors();
    let refused =
        errors.get("Unavailable").copied().unwrap_or(0) + errors.get("ResourceExhausted").copied().unwrap_or(0);
    assert!(refused > 0, "some requests were refused: {errors:?}");
    assert_eq!(
        errors
            .keys()
            .filter(|k| *k != "Unavailable" && *k != "ResourceExhausted")
            .count(),
        0,
        "only retryable refusals: {errors:?}"
    );
    assert_eq!(
        load.errors_with_retry_info(),
        errors,
        "every refusal carried google.rpc.RetryInfo"
    );
    eprintln!(
        "RSS {rss_before} KiB before, peak {rss_peak} KiB during the overload (+{} KiB); {refused} refusals",
        rss_peak.saturating_sub(rss_before)
    );
    // The refusals above prove the queue is bounded; this catches memory growing with
    // the load anyway (buffers per connection or per refused request, leaks): 64 clients
    // sending 25,600 events in 200-event requests need a few MiB above the baseline.
    let bound_kib = rss_before + 64 * 1024;
    assert!(
        rss_peak < bound_kib,
        "service RSS stayed bounded: peak {rss_peak} KiB, bound {bound_kib} KiB (baseline + 64 MiB)"
    );
    let report = ledger::verify(&url(service.addr), &config, &load)
        .await
        .expect("verify");
    assert_exact("overload beyond the queue", &load, &report);
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`: resident now; `VmHWM`: the peak).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// A TCP proxy in front of Redis that, every `every`-th reply, forwards the request but
/// cuts both connections instead of passing the reply back: the command ran, the client
/// never hears of it (the case where a client resends).
struct FaultProxy {
    port: u16,
    cuts: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
}

impl FaultProxy {
    async fn start(upstream: u16, every: u64) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let cuts = std::sync::Arc::new(AtomicU64::new(0));
        let replies = std::sync::Arc::new(AtomicU64::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let (c, r, s) = (cuts.clone(), replies.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    () = s.cancelled() => return,
                };
                let Ok((client, _)) = accepted else { continue };
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let (cuts, replies, stop) = (c.clone(), r.clone(), s.clone());
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let upstream = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = cr.read(&mut buf).await.unwrap_or(0);
                            if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let downstream = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = sr.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            // Every `every`-th reply chunk: the request was forwarded
                            // and ran; the reply is dropped with the connection.
                            if replies.fetch_add(1, Ordering::Relaxed) % every == every - 1 {
                                cuts.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        () = upstream => {}
                        () = downstream => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
        });
        FaultProxy { port, cuts, stop }
    }

    fn cuts(&self) -> u64 {
        self.cuts.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn stop(&self) {
        self.stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_warns_loudly_when_redis_can_lose_data() {
    let lossy = RedisServer::start(RedisOptions {
        extra: vec!["--maxmemory-policy".into(), "allkeys-lru".into()],
        ..Default::default()
    });
    let service = service_on(free_port(), &lossy, &[]);
    let safe = RedisServer::start(RedisOptions {
        aof: true,
        extra: vec![
            "--maxmemory-policy".into(),
            "noeviction".into(),
            "--lazyfree-lazy-expire".into(),
            "yes".into(),
        ],
        ..Default::default()
    });
    let quiet = service_on(free_port(), &safe, &[]);
    // The checks run before the service listens; its log is complete by now.
    let _ = (service.ingest().await, quiet.ingest().await);
    let warnings = |s: &ServiceProcess| {
        s.startup_log()
            .into_iter()
            .filter(|l| l.contains("\"WARN\""))
            .collect::<Vec<_>>()
    };
    let loud = warnings(&service);
    assert!(
        loud.iter()
            .any(|l| l.contains("maxmemory-policy") && l.contains("allkeys-lru")),
        "{loud:#?}"
    );
    assert!(loud.iter().any(|l| l.contains("no persistence")), "{loud:#?}");
    assert_eq!(
        warnings(&quiet),
        Vec::<String>::new(),
        "no warning for AOF + noeviction"
    );
    let lazyfree_hint = |s: &ServiceProcess| {
        s.startup_log()
            .iter()
            .any(|l| l.contains("\"INFO\"") && l.contains("lazyfree-lazy-expire no"))
    };
    assert!(
        lazyfree_hint(&service),
        "Redis 7.0's default expires in the foreground: a hint"
    );
    assert!(!lazyfree_hint(&quiet), "no hint with lazyfree-lazy-expire yes");
}
