//! The ledger load client: proves "nothing acknowledged is lost, nothing is counted
//! twice" from the outside, the way Redis' consistency test does for Redis Cluster.
//!
//! Many concurrent workers send task instances with known ids and durations through the
//! public API, retry retryable failures with the same events (to any server, with
//! backoff), and record every outcome. Then [`verify`] reads the counts back through
//! `GetTaskStats` and reports instances **lost** (acknowledged but missing) and
//! **duplicated** (counted more than once), and whether the service's percentiles equal
//! those of a local HDR histogram with the same configuration (they must be identical:
//! same bins, same merge).
//!
//! Each worker writes its own series (label `worker=<k>`), so a loss in one worker
//! cannot hide behind a duplicate in another.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{Rng as _, SeedableRng as _};
use rand_distr::{Distribution as _, LogNormal};
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt as _;

use crate::domain::{MICROS_PER_SEC, Micros, now_micros};
use crate::grpc::convert::{micros_duration, micros_timestamp};
use crate::histogram::HistogramConfig;
use crate::pb;
use crate::pb::ingest_service_client::IngestServiceClient;
use crate::pb::query_service_client::QueryServiceClient;

/// How instances are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerMode {
    /// One request carries each instance's start and its finish.
    Pairs,
    /// Starts in one request, their finishes in the next (the pairing crosses requests,
    /// commit rounds and, with several servers, replicas).
    SplitPairs,
    /// Client-timed completed events.
    Completed,
}

/// What a ledger run does.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Server URLs (`http://127.0.0.1:50051`); worker `k` starts on server `k % n` and
    /// moves to the next one after a failure.
    pub servers: Vec<String>,
    /// The task all instances belong to; use a fresh one per run.
    pub task: String,
    pub workers: usize,
    pub instances_per_worker: usize,
    /// Instances per request.
    pub batch_instances: usize,
    pub mode: LedgerMode,
    /// Deadline of each RPC (sent as `grpc-timeout`).
    pub rpc_timeout: Duration,
    /// A batch is given up (its instances left unresolved) after retrying this long;
    /// the worker then stops, leaving the instances it has not sent unresolved too.
    pub give_up_after: Duration,
    /// First retry backoff; doubles up to 1 s, or what the server's RetryInfo says.
    pub backoff: Duration,
    /// Pause between batches of one worker (to stretch a run over a fault).
    pub pace: Duration,
    pub seed: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            servers: vec![crate::cli::DEFAULT_SERVER.to_owned()],
            task: "ledger".to_owned(),
            workers: 8,
            instances_per_worker: 1_000,
            batch_instances: 50,
            mode: LedgerMode::Pairs,
            rpc_timeout: Duration::from_secs(5),
            give_up_after: Duration::from_secs(60),
            backoff: Duration::from_millis(20),
            pace: Duration::ZERO,
            seed: 1,
        }
    }
}

/// What one worker saw.
#[derive(Debug, Clone)]
pub struct WorkerOutcome {
    pub worker: usize,
    /// Instances whose every event was acknowledged (OK, accepted or duplicate).
    pub acked: u64,
    /// Instances given up on: they may or may not be counted.
    pub unresolved: u64,
    /// Exact sum of the acknowledged instances' durations, µs.
    pub acked_sum_us: i128,
    /// Their durations, with the service's histogram configuration.
    pub histogram: Histogram<u64>,
    pub events_sent: u64,
    pub events_acked: u64,
    /// Events the service reported as duplicates (retries of events already applied).
    pub duplicates_reported: u64,
    /// Events the service rejected (a ledger run sends only valid events: must be 0).
    pub rejected: u64,
    pub retries: u64,
    /// Failed RPCs by gRPC code name. An RPC the client itself had to cut at its deadline
    /// (the service never answered) counts as `DeadlineExceeded`.
    pub errors: BTreeMap<String, u64>,
    /// Of those, the ones that carried `google.rpc.RetryInfo`, by code name.
    pub errors_with_retry_info: BTreeMap<String, u64>,
    /// Failed RPCs by the index of the server (in [`LedgerConfig::servers`]) they went to.
    pub failures_by_server: Vec<u64>,
    /// RPCs that ended by their deadline rather than by the service's own answer:
    /// `CANCELLED` (tonic's server cuts an RPC at its `grpc-timeout`), `DEADLINE_EXCEEDED`,
    /// or no answer at all within the deadline plus [`CLIENT_DEADLINE_SLACK`].
    pub deadline_misses: u64,
    /// The longest single RPC, successful or not.
    pub max_rpc_latency: Duration,
    /// The longest time a failing RPC took to fail.
    pub max_failed_rpc_latency: Duration,
}

/// The whole load phase.
#[derive(Debug, Clone)]
pub struct LoadOutcome {
    pub workers: Vec<WorkerOutcome>,
    /// Time base of the run: every event's `at` is within a few minutes after it.
    pub base: Micros,
    pub elapsed: Duration,
}

impl LoadOutcome {
    /// Events acknowledged by the service.
    pub fn events_acked(&self) -> u64 {
        self.workers.iter().map(|w| w.events_acked).sum()
    }
    /// Instances acknowledged.
    pub fn instances_acked(&self) -> u64 {
        self.workers.iter().map(|w| w.acked).sum()
    }
    /// The longest single RPC over all workers.
    pub fn max_rpc_latency(&self) -> Duration {
        self.workers.iter().map(|w| w.max_rpc_latency).max().unwrap_or_default()
    }
    /// Failed RPCs by code, over all workers.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        sum_maps(self.workers.iter().map(|w| &w.errors))
    }
    /// Failed RPCs that carried `RetryInfo`, by code, over all workers.
    pub fn errors_with_retry_info(&self) -> BTreeMap<String, u64> {
        sum_maps(self.workers.iter().map(|w| &w.errors_with_retry_info))
    }
    /// Failed RPCs by server index, over all workers.
    pub fn failures_by_server(&self) -> Vec<u64> {
        let n = self
            .workers
            .iter()
            .map(|w| w.failures_by_server.len())
            .max()
            .unwrap_or(0);
        let mut all = vec![0; n];
        for w in &self.workers {
            for (total, f) in all.iter_mut().zip(&w.failures_by_server) {
                *total += f;
            }
        }
        all
    }
    /// RPCs that ended by their deadline instead of the service's answer, over all workers.
    pub fn deadline_misses(&self) -> u64 {
        self.workers.iter().map(|w| w.deadline_misses).sum()
    }
}

fn sum_maps<'a>(maps: impl Iterator<Item = &'a BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    let mut all = BTreeMap::new();
    for m in maps {
        for (k, v) in m {
            *all.entry(k.clone()).or_default() += v;
        }
    }
    all
}

/// The verdict of a ledger run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerReport {
    pub acked: u64,
    pub counted: u64,
    pub unresolved: u64,
    /// Acknowledged instances the service does not count.
    pub lost: u64,
    /// Instances counted more often than sent.
    pub duplicated: u64,
    /// Whether every worker's count, total time and percentiles equal the local ledger.
    pub exact: bool,
    /// What differed, per worker, for the failure message.
    pub mismatches: Vec<String>,
}

impl std::fmt::Display for LedgerReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "acked {} counted {} unresolved {} lost {} duplicated {} exact {}",
            self.acked, self.counted, self.unresolved, self.lost, self.duplicated, self.exact
        )?;
        for m in &self.mismatches {
            write!(f, "\n  {m}")?;
        }
        Ok(())
    }
}

/// How long past an RPC's deadline the ledger still waits for an answer before it cuts the
/// RPC itself (and counts a deadline miss). The slack lets a server-side cut at the
/// deadline (tonic answers `CANCELLED`) arrive and be told apart from a service that hangs.
pub const CLIENT_DEADLINE_SLACK: Duration = Duration::from_secs(1);

/// Percentiles compared by [`verify`].
pub const VERIFIED_PERCENTILES: [f64; 7] = [1.0, 25.0, 50.0, 90.0, 99.0, 99.9, 100.0];

fn endpoint(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy())
}

fn code_name(status: &tonic::Status) -> String {
    format!("{:?}", status.code())
}

/// Runs the load phase: every worker sends its instances and retries until each batch is
/// acknowledged or `give_up_after` passes.
///
/// # Errors
/// When a server URL is not a URL.
pub async fn run_load(config: &LedgerConfig) -> anyhow::Result<LoadOutcome> {
    anyhow::ensure!(!config.servers.is_empty(), "the ledger needs at least one server");
    let channels = config
        .servers
        .iter()
        .map(|s| endpoint(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Durations end "now" at the latest: starts are in the past, within the last 10 min.
    let base = now_micros() - 600 * MICROS_PER_SEC;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(config.workers);
    for worker in 0..config.workers {
        let config = config.clone();
        let channels = channels.clone();
        tasks.push(tokio::spawn(async move {
            run_worker(worker, &config, channels, base).await
        }));
    }
    let mut workers = Vec::with_capacity(tasks.len());
    for t in tasks {
        workers.push(t.await?);
    }
    Ok(LoadOutcome {
        workers,
        base,
        elapsed: started.elapsed(),
    })
}

struct Instance {
    id: String,
    start: Micros,
    duration: Micros,
}

fn events_for(config: &LedgerConfig, worker: usize, batch: &[Instance], phase: u8) -> Vec<pb::TaskEvent> {
    let labels: std::collections::BTreeMap<String, String> = [("worker".to_owned(), worker.to_string())].into();
    let mut events = Vec::with_capacity(batch.len() * 2);
    for i in batch {
        let start = pb::TaskEvent {
            task: config.task.clone(),
            instance_id: i.id.clone(),
            at: Some(micros_timestamp(i.start)),
            labels: labels.clone(),
            kind: Some(pb::task_event::Kind::Start(pb::Start {})),
        };
        let finish = pb::TaskEvent {
            task: config.task.clone(),
            instance_id: i.id.clone(),
            at: Some(micros_timestamp(i.start + i.duration)),
            labels: Default::default(),
            kind: Some(pb::task_event::Kind::Finish(pb::Finish {
                outcome: pb::Outcome::Succeeded as i32,
            })),
        };
        let completed = || pb::TaskEvent {
            task: config.task.clone(),
            instance_id: i.id.clone(),
            at: Some(micros_timestamp(i.start + i.duration)),
            labels: labels.clone(),
            kind: Some(pb::task_event::Kind::Completed(pb::Completed {
                duration: Some(micros_duration(i128::from(i.duration))),
                outcome: pb::Outcome::Succeeded as i32,
            })),
        };
        match (config.mode, phase) {
            (LedgerMode::Pairs, _) => {
                events.push(start);
                events.push(finish);
            }
            (LedgerMode::SplitPairs, 0) => events.push(start),
            (LedgerMode::SplitPairs, _) => events.push(finish),
            (LedgerMode::Completed, _) => events.push(completed()),
        }
    }
    events
}

async fn run_worker(worker: usize, config: &LedgerConfig, channels: Vec<Channel>, base: Micros) -> WorkerOutcome {
    let hist_config = HistogramConfig::new(HistogramConfig::DEFAULT_HIGHEST_US, HistogramConfig::DEFAULT_SIGFIG)
        .expect("the default histogram configuration is valid");
    let mut out = WorkerOutcome {
        worker,
        acked: 0,
        unresolved: 0,
        acked_sum_us: 0,
        histogram: hist_config.empty(),
        events_sent: 0,
        events_acked: 0,
        duplicates_reported: 0,
        rejected: 0,
        retries: 0,
        errors: BTreeMap::new(),
        errors_with_retry_info: BTreeMap::new(),
        failures_by_server: vec![0; channels.len()],
        deadline_misses: 0,
        max_rpc_latency: Duration::ZERO,
        max_failed_rpc_latency: Duration::ZERO,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed.wrapping_mul(1_000_003).wrapping_add(worker as u64));
    // Median 2 s, long tail: up to a few minutes, all ending before "now".
    let dist = LogNormal::new(f64::ln(2e6), 1.0).expect("valid lognormal");
    let mut server = worker % channels.len();
    let phases: u8 = if config.mode == LedgerMode::SplitPairs { 2 } else { 1 };
    let run_id: u32 = rng.random();
    let mut next = 0usize;
    while next < config.instances_per_worker {
        let n = config.batch_instances.min(config.instances_per_worker - next);
        let batch: Vec<Instance> = (next..next + n)
            .map(|k| Instance {
                id: format!("w{worker}-{run_id:08x}-{k}"),
                start: base + rng.random_range(0..60 * MICROS_PER_SEC),
                duration: (dist.sample(&mut rng) as i64).clamp(1, 300 * MICROS_PER_SEC),
            })
            .collect();
        next += n;
        let mut all_acked = true;
        for phase in 0..phases {
            let events = events_for(config, worker, &batch, phase);
            if !send_until_acked(config, &channels, &mut server, events, &mut out).await {
                all_acked = false;
                break;
            }
        }
        if all_acked {
            for i in &batch {
                out.acked += 1;
                out.acked_sum_us += i128::from(i.duration);
                let (bin, _) = hist_config.bin(u64::try_from(i.duration).unwrap_or(0));
                let _ = out.histogram.record(bin);
            }
        } else {
            // Given up: the service is not coming back within `give_up_after`. Sending
            // the rest would only wait as long again per batch (a broken build would
            // hang the fault suite for hours); they count as unresolved, unsent.
            out.unresolved += (batch.len() + config.instances_per_worker - next) as u64;
            break;
        }
        if !config.pace.is_zero() {
            tokio::time::sleep(config.pace).await;
        }
    }
    out
}

/// Sends one request until it is acknowledged; `false` when it was given up.
async fn send_until_acked(
    config: &LedgerConfig,
    channels: &[Channel],
    server: &mut usize,
    events: Vec<pb::TaskEvent>,
    out: &mut WorkerOutcome,
) -> bool {
    let give_up = Instant::now() + config.give_up_after;
    let mut backoff = config.backoff;
    let n = events.len() as u64;
    let request = pb::RecordRequest { events };
    loop {
        let mut client = IngestServiceClient::new(channels[*server].clone());
        let mut req = tonic::Request::new(request.clone());
        req.set_timeout(config.rpc_timeout);
        let sent = Instant::now();
        out.events_sent += n;
        let result = match tokio::time::timeout(config.rpc_timeout + CLIENT_DEADLINE_SLACK, client.record(req)).await {
            Ok(result) => result,
            Err(_) => Err(tonic::Status::deadline_exceeded(
                "the ledger cut the RPC: no answer within its deadline",
            )),
        };
        let latency = sent.elapsed();
        out.max_rpc_latency = out.max_rpc_latency.max(latency);
        match result {
            Ok(response) => {
                let r = response.into_inner();
                out.events_acked += u64::from(r.accepted + r.duplicates);
                out.duplicates_reported += u64::from(r.duplicates);
                out.rejected += r.rejected.len() as u64;
                return r.rejected.is_empty();
            }
            Err(status) => {
                out.max_failed_rpc_latency = out.max_failed_rpc_latency.max(latency);
                *out.errors.entry(code_name(&status)).or_default() += 1;
                if status.get_details_retry_info().is_some() {
                    *out.errors_with_retry_info.entry(code_name(&status)).or_default() += 1;
                }
                out.failures_by_server[*server] += 1;
                if matches!(status.code(), tonic::Code::Cancelled | tonic::Code::DeadlineExceeded) {
                    out.deadline_misses += 1;
                }
                if Instant::now() >= give_up {
                    return false;
                }
                out.retries += 1;
                // Anything but a rejection of the request itself is worth retrying: the
                // same events are always safe to resend.
                if status.code() == tonic::Code::InvalidArgument {
                    return false;
                }
                let hinted = crate::cli::client::retry_after(&status, 0).unwrap_or(backoff);
                tokio::time::sleep(hinted.min(Duration::from_secs(1)).max(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                *server = (*server + 1) % channels.len();
            }
        }
    }
}

/// Reads every worker's series back and compares it with the ledger.
///
/// # Errors
/// When the query service cannot be reached.
pub async fn verify(server: &str, config: &LedgerConfig, load: &LoadOutcome) -> anyhow::Result<LedgerReport> {
    let mut client = QueryServiceClient::new(endpoint(server)?);
    let mut report = LedgerReport {
        acked: 0,
        counted: 0,
        unresolved: 0,
        lost: 0,
        duplicated: 0,
        exact: true,
        mismatches: Vec::new(),
    };
    for w in &load.workers {
        let request = pb::GetTaskStatsRequest {
            task: config.task.clone(),
            filter: [("worker".to_owned(), w.worker.to_string())].into(),
            from: Some(micros_timestamp(load.base - 3600 * MICROS_PER_SEC)),
            to: Some(micros_timestamp(now_micros() + 60 * MICROS_PER_SEC)),
            percentiles: VERIFIED_PERCENTILES.to_vec(),
            outcome: pb::Outcome::Succeeded as i32,
            include_histogram: false,
        };
        let stats = retry_query(&mut client, request).await?;
        report.acked += w.acked;
        report.counted += stats.count;
        report.unresolved += w.unresolved;
        report.lost += w.acked.saturating_sub(stats.count);
        report.duplicated += stats.count.saturating_sub(w.acked + w.unresolved);
        let total = stats.total_time.as_ref().map_or(0, |d| {
            i128::from(d.seconds) * i128::from(MICROS_PER_SEC) + i128::from(d.nanos / 1000)
        });
        if stats.count < w.acked
            || stats.count > w.acked + w.unresolved
            || stats.started < w.acked
            || stats.started > w.acked + w.unresolved
        {
            report.exact = false;
            report.mismatches.push(format!(
                "worker {}: acked {} (+{} unresolved), counted {}, started {}",
                w.worker, w.acked, w.unresolved, stats.count, stats.started
            ));
        }
        if w.unresolved == 0 && total != w.acked_sum_us {
            report.exact = false;
            report.mismatches.push(format!(
                "worker {}: total time {total} µs, ledger {} µs",
                w.worker, w.acked_sum_us
            ));
        }
        if w.unresolved == 0 && w.acked > 0 {
            for p in &stats.percentiles {
                let got = p
                    .value
                    .as_ref()
                    .map_or(0, |d| d.seconds * MICROS_PER_SEC + i64::from(d.nanos / 1000));
                let want = i64::try_from(w.histogram.value_at_quantile(p.percentile / 100.0)).unwrap_or(i64::MAX);
                if got != want {
                    report.exact = false;
                    report.mismatches.push(format!(
                        "worker {}: p{} is {got} µs, the ledger's histogram says {want} µs",
                        w.worker, p.percentile
                    ));
                }
            }
        }
    }
    if report.lost > 0 || report.duplicated > 0 {
        report.exact = false;
    }
    Ok(report)
}

async fn retry_query(
    client: &mut QueryServiceClient<Channel>,
    request: pb::GetTaskStatsRequest,
) -> anyhow::Result<pb::TaskStats> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.get_task_stats(request.clone()).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(status) if Instant::now() < deadline => {
                tracing::debug!(%status, "ledger query failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => anyhow::bail!("GetTaskStats kept failing: {status}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_worker_that_gives_up_stops_and_leaves_the_rest_unresolved() {
        // Nothing listens there: every RPC fails at once, retryably.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let config = LedgerConfig {
            servers: vec![format!("http://127.0.0.1:{port}")],
            workers: 2,
            instances_per_worker: 500,
            batch_instances: 10,
            give_up_after: Duration::from_millis(300),
            ..LedgerConfig::default()
        };
        let outcome = run_load(&config).await.expect("the load runs");
        assert!(
            outcome.elapsed < Duration::from_secs(5),
            "gave up after one batch per worker, not one per batch: {:?}",
            outcome.elapsed
        );
        for w in &outcome.workers {
            assert_eq!(w.acked, 0);
            assert_eq!(w.unresolved, 500, "every instance, sent or not, is unresolved");
        }
    }
}
