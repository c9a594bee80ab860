//! The load generator behind `tasktime bench`: a realistic workload (start and finish
//! pairs, lognormal durations, about 50 tasks × 4 releases × 3 platforms with a Zipf task
//! mix, or completed events only) sent over several connections, open loop at a fixed
//! rate or closed loop as fast as it goes.
//!
//! Open-loop latency is measured from each request's *intended* send time, so a server
//! that stalls is charged for every request the stall delayed (no coordinated omission).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::stream::{FuturesUnordered, StreamExt as _};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rand_distr::{Distribution as _, LogNormal, Zipf};
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::domain::{MICROS_PER_SEC, Micros, now_micros};
use crate::grpc::convert::{micros_duration, micros_timestamp};
use crate::pb;
use crate::pb::gate_service_client::GateServiceClient;
use crate::pb::ingest_service_client::IngestServiceClient;
use crate::pb::query_service_client::QueryServiceClient;

/// What a bench run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// RecordStream, `batch_size` events per request.
    Stream,
    /// Unary Record, `batch_size` events per call.
    Batch,
    /// Unary Record, one event per call.
    Unary,
    /// GetTaskStats over the preloaded data.
    Query,
    /// EvaluateGate (release r0 against r1) over the preloaded data.
    Gate,
}

/// Which events the ingest modes send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// A start, and later its finish, per instance.
    Pairs,
    /// One client-timed completed event per instance.
    Completed,
}

/// A bench run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub server: String,
    pub mode: Mode,
    pub workload: Workload,
    /// How long the measured part sends.
    pub duration: Duration,
    /// Sent first, at the same rate, and not counted: connections, the service's threads
    /// and caches and Redis' scripts warm up before anything is measured.
    pub warmup: Duration,
    /// Requests (query, gate, unary) or events (stream, batch) per second, in total;
    /// `None` = closed loop, as fast as it goes.
    pub rate: Option<f64>,
    pub connections: usize,
    /// Requests in flight per connection.
    pub concurrency: usize,
    pub batch_size: usize,
    pub tasks: usize,
    pub releases: usize,
    pub platforms: usize,
    /// Zipf exponent of the task mix.
    pub zipf: f64,
    /// Instances preloaded before query and gate runs.
    pub preload: usize,
    /// Preloaded instances finish at random times over this long before now (zero: all
    /// just now), so a 30-day query can read a month of real buckets.
    pub preload_span: Duration,
    pub seed: u64,
    /// Print a progress line to stderr this often (`None`: never).
    pub progress: Option<Duration>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            server: crate::cli::DEFAULT_SERVER.to_owned(),
            mode: Mode::Stream,
            workload: Workload::Pairs,
            duration: Duration::from_secs(10),
            warmup: Duration::ZERO,
            rate: None,
            connections: 4,
            concurrency: 8,
            batch_size: 1000,
            tasks: 50,
            releases: 4,
            platforms: 3,
            zipf: 1.0,
            preload: 20_000,
            preload_span: Duration::ZERO,
            seed: 1,
            progress: None,
        }
    }
}

/// Latency summary, µs.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// How many counted requests failed one way, and the first one's message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorCount {
    pub status: String,
    pub count: u64,
    pub example: String,
}

/// What failed a request: a gRPC status, or a stream that ended before answering it.
#[derive(Debug, Clone)]
enum Failure {
    Status(tonic::Status),
    NoAnswer,
}

impl Failure {
    /// The status code as gRPC spells it (`DEADLINE_EXCEEDED`), or `NO_ANSWER`.
    fn name(&self) -> String {
        match self {
            Failure::Status(s) => code_name(s.code()),
            Failure::NoAnswer => "NO_ANSWER".to_owned(),
        }
    }

    fn message(&self) -> String {
        match self {
            Failure::Status(s) if s.message().is_empty() => s.code().description().to_owned(),
            Failure::Status(s) => s.message().to_owned(),
            Failure::NoAnswer => "the stream ended before this request was answered".to_owned(),
        }
    }
}

/// A gRPC status code's canonical name: `Code::DeadlineExceeded` → `DEADLINE_EXCEEDED`.
fn code_name(code: tonic::Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The one summary object `--json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub mode: Mode,
    pub workload: Workload,
    pub open_loop_rate: Option<f64>,
    pub connections: usize,
    pub concurrency: usize,
    pub batch_size: usize,
    /// Seconds sent first and not counted (`--warmup`), and what they sent: answered
    /// requests and events acknowledged (so that CPU per event over the whole run can be
    /// worked out).
    pub warmup_s: f64,
    pub warmup_requests: u64,
    pub warmup_events_acked: u64,
    pub requests: u64,
    pub errors: u64,
    /// The counted errors by what failed them, most frequent first: a gRPC status code
    /// (`UNAVAILABLE`, `INVALID_ARGUMENT`, ...) or `NO_ANSWER` (a stream request the
    /// stream ended without answering), each with the first such error's message.
    pub errors_by_status: Vec<ErrorCount>,
    pub events_sent: u64,
    pub events_acked: u64,
    pub duration_s: f64,
    pub events_per_sec: f64,
    pub requests_per_sec: f64,
    /// Per request, from its intended send time (open loop) or its send time (closed loop).
    pub latency_us: Latency,
    /// Open loop only: how late the generator issued each request after its intended
    /// send time. Its latency counts this lag too (no coordinated omission), so a
    /// `send_lag_us` close to `latency_us` says the load generator itself was held up (on
    /// a shared machine: by the service and Redis taking the cores), not the answer.
    pub send_lag_us: Option<Latency>,
}

/// Generates the workload's events for one worker.
#[derive(Debug)]
pub struct Generator {
    rng: StdRng,
    zipf: Zipf<f64>,
    config: BenchConfig,
    prefix: String,
    next_id: u64,
    /// Started instances waiting for their finish: (batch, id, task, start at, duration).
    open: VecDeque<(u64, u64, usize, Micros, Micros)>,
    /// Batches made so far.
    batches: u64,
    /// Task names, by task index.
    task_names: Vec<String>,
    /// Every label set (release × platform, by [`Self::label_set`]): the map, and its
    /// protobuf encoding as a `TaskEvent`'s field 4.
    label_sets: Vec<(std::collections::BTreeMap<String, String>, Vec<u8>)>,
    /// Reused by [`Self::encode_batch`]: the batch's plan, and one event's encoding.
    planned: Vec<Planned>,
    scratch: Vec<u8>,
    /// A finish goes out only this many batches after its start's: by then the start has
    /// been answered (at most `concurrency` requests of a worker are in flight), as in a
    /// real flow, where a customer finishes seconds after starting. Without the lag a
    /// finish races its own start through concurrent commit rounds, which is correct
    /// (the store re-plans) but is not the load a product app makes.
    finish_lag: u64,
}

impl Generator {
    /// A generator for worker `worker`; ids are unique per run and worker.
    ///
    /// # Panics
    /// Never for a validated config (at least one task, a positive exponent).
    pub fn new(config: &BenchConfig, worker: usize, run: u64) -> Self {
        let platforms = config.platforms.max(1);
        let label_sets = (0..config.releases.max(1) * platforms)
            .map(|i| {
                let labels: std::collections::BTreeMap<String, String> = [
                    ("release".to_owned(), format!("r{}", i / platforms)),
                    (
                        "platform".to_owned(),
                        ["ios", "android", "web", "desktop"][(i % platforms) % 4].to_owned(),
                    ),
                ]
                .into();
                let encoded = prost::Message::encode_to_vec(&pb::TaskEvent {
                    labels: labels.clone(),
                    ..Default::default()
                });
                (labels, encoded)
            })
            .collect();
        Generator {
            task_names: (0..config.tasks.max(1)).map(Self::task_name).collect(),
            label_sets,
            planned: Vec::new(),
            scratch: Vec::with_capacity(256),
            rng: StdRng::seed_from_u64(config.seed.wrapping_mul(7919).wrapping_add(worker as u64)),
            zipf: Zipf::new(config.tasks.max(1) as f64, config.zipf.max(0.01)).expect("tasks >= 1, exponent > 0"),
            config: config.clone(),
            prefix: format!("b{run:x}-{worker}-"),
            next_id: 0,
            open: VecDeque::new(),
            batches: 0,
            finish_lag: 2 * config.concurrency as u64,
        }
    }

    fn task_name(task: usize) -> String {
        format!("bench-task-{task:02}")
    }

    /// The label set of instance `id` of `task`, an index into `label_sets`. Release
    /// and platform follow the id so a start's labels are reproducible.
    fn label_set(&self, task: usize, id: u64) -> usize {
        let release = (id as usize + task) % self.config.releases.max(1);
        let platform = (id as usize / 7) % self.config.platforms.max(1);
        release * self.config.platforms.max(1) + platform
    }

    fn duration(&mut self, task: usize) -> Micros {
        // Each task has its own typical duration, from 1 s to about a minute.
        let median = 1e6 * (1.0 + (task % 10) as f64 * 6.0);
        let d = LogNormal::new(median.ln(), 0.8)
            .expect("valid lognormal")
            .sample(&mut self.rng);
        (d as i64).clamp(1_000, 600 * MICROS_PER_SEC)
    }

    /// The next `n` events: for pairs, finishes of instances started at least
    /// `finish_lag` batches earlier and starts of new ones, about half each; for
    /// completed, `n` completed events.
    pub fn batch(&mut self, n: usize) -> Vec<pb::TaskEvent> {
        let mut planned = std::mem::take(&mut self.planned);
        self.plan(n, &mut planned);
        let events = planned.iter().map(|p| self.event(p)).collect();
        self.planned = planned;
        events
    }

    /// [`Self::batch`], encoded straight into `out` as a `RecordRequest` (which `out` is
    /// cleared for); returns how many events. The same events as `batch` would make,
    /// without building them: task names and label sets are encoded once, up front,
    /// so the generator allocates nothing per event and takes less of the machine it
    /// shares with the service it measures.
    pub fn encode_batch(&mut self, n: usize, out: &mut Vec<u8>) -> usize {
        use prost::encoding::{WireType, encode_key, encode_varint, message};
        let mut planned = std::mem::take(&mut self.planned);
        let mut scratch = std::mem::take(&mut self.scratch);
        self.plan(n, &mut planned);
        out.clear();
        let mut digits = itoa::Buffer::new();
        for p in &planned {
            // A TaskEvent's fields in their numbers' order, as prost writes them.
            scratch.clear();
            prost::encoding::string::encode(1, &self.task_names[p.task], &mut scratch);
            let id = digits.format(p.id);
            encode_key(2, WireType::LengthDelimited, &mut scratch);
            encode_varint((self.prefix.len() + id.len()) as u64, &mut scratch);
            scratch.extend_from_slice(self.prefix.as_bytes());
            scratch.extend_from_slice(id.as_bytes());
            message::encode(3, &micros_timestamp(p.at), &mut scratch);
            match p.kind {
                PlannedKind::Start { labels } => {
                    scratch.extend_from_slice(&self.label_sets[labels].1);
                    message::encode(10, &pb::Start {}, &mut scratch);
                }
                PlannedKind::Finish { outcome } => message::encode(11, &pb::Finish { outcome }, &mut scratch),
                PlannedKind::Completed { labels, duration } => {
                    scratch.extend_from_slice(&self.label_sets[labels].1);
                    let completed = pb::Completed {
                        duration: Some(micros_duration(i128::from(duration))),
                        outcome: pb::Outcome::Succeeded as i32,
                    };
                    message::encode(12, &completed, &mut scratch);
                }
            }
            // RecordRequest.events = 1.
            encode_key(1, WireType::LengthDelimited, out);
            encode_varint(scratch.len() as u64, out);
            out.extend_from_slice(&scratch);
        }
        let n = planned.len();
        self.planned = planned;
        self.scratch = scratch;
        n
    }

    /// One planned event as a protobuf message.
    fn event(&self, p: &Planned) -> pb::TaskEvent {
        let (labels, kind) = match p.kind {
            PlannedKind::Start { labels } => (labels, pb::task_event::Kind::Start(pb::Start {})),
            PlannedKind::Finish { outcome } => (usize::MAX, pb::task_event::Kind::Finish(pb::Finish { outcome })),
            PlannedKind::Completed { labels, duration } => (
                labels,
                pb::task_event::Kind::Completed(pb::Completed {
                    duration: Some(micros_duration(i128::from(duration))),
                    outcome: pb::Outcome::Succeeded as i32,
                }),
            ),
        };
        pb::TaskEvent {
            task: self.task_names[p.task].clone(),
            instance_id: format!("{}{}", self.prefix, p.id),
            at: Some(micros_timestamp(p.at)),
            labels: self
                .label_sets
                .get(labels)
                .map(|(map, _)| map.clone())
                .unwrap_or_default(),
            kind: Some(kind),
        }
    }

    /// Plans the next `n` events into `out` (see [`Self::batch`]).
    fn plan(&mut self, n: usize, out: &mut Vec<Planned>) {
        out.clear();
        let now = now_micros();
        let this_batch = self.batches;
        self.batches += 1;
        // Finishes only of instances started long enough ago: at most half the batch
        // (for one-event batches, every other batch).
        let ripe = self
            .open
            .iter()
            .take_while(|(batch, ..)| batch + self.finish_lag <= this_batch)
            .count();
        let mut finishes = if self.config.workload == Workload::Pairs {
            ripe.min(n.div_ceil(2))
        } else {
            0
        };
        while out.len() < n {
            if finishes > 0 {
                finishes -= 1;
                let Some((_, id, task, start, duration)) = self.open.pop_front() else {
                    break;
                };
                let outcome = if self.rng.random_ratio(19, 20) {
                    pb::Outcome::Succeeded
                } else {
                    pb::Outcome::Failed
                };
                out.push(Planned {
                    task,
                    id,
                    at: start + duration,
                    kind: PlannedKind::Finish {
                        outcome: outcome as i32,
                    },
                });
                continue;
            }
            let task = (self.zipf.sample(&mut self.rng) as usize).saturating_sub(1) % self.config.tasks.max(1);
            let id = self.next_id;
            self.next_id += 1;
            let duration = self.duration(task);
            let labels = self.label_set(task, id);
            // Backdated so the finish is not in the future.
            let start = now - duration - MICROS_PER_SEC;
            match self.config.workload {
                Workload::Pairs => {
                    out.push(Planned {
                        task,
                        id,
                        at: start,
                        kind: PlannedKind::Start { labels },
                    });
                    self.open.push_back((this_batch, id, task, start, duration));
                }
                Workload::Completed => out.push(Planned {
                    task,
                    id,
                    at: start + duration,
                    kind: PlannedKind::Completed { labels, duration },
                }),
            }
        }
    }
}

/// One event of a batch, before it is built ([`Generator::batch`]) or encoded
/// ([`Generator::encode_batch`]).
#[derive(Debug, Clone, Copy)]
struct Planned {
    task: usize,
    id: u64,
    at: Micros,
    kind: PlannedKind,
}

#[derive(Debug, Clone, Copy)]
enum PlannedKind {
    /// `labels`: an index into the generator's label sets.
    Start {
        labels: usize,
    },
    Finish {
        outcome: i32,
    },
    Completed {
        labels: usize,
        duration: Micros,
    },
}

/// A codec for requests the generator encoded itself ([`Generator::encode_batch`]): it
/// sends their bytes as they are and decodes the `RecordResponse`s.
#[derive(Debug, Clone, Copy, Default)]
pub struct EncodedCodec;

impl tonic::codec::Codec for EncodedCodec {
    type Encode = Vec<u8>;
    type Decode = pb::RecordResponse;
    type Encoder = EncodedCodec;
    type Decoder = tonic_prost::ProstDecoder<pb::RecordResponse>;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

impl tonic::codec::Encoder for EncodedCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

/// `IngestService` methods, for calls with [`EncodedCodec`].
const RECORD_PATH: &str = "/tasktime.v1.IngestService/Record";
const RECORD_STREAM_PATH: &str = "/tasktime.v1.IngestService/RecordStream";

/// Per-worker tallies, merged at the end.
#[derive(Debug)]
struct Tally {
    /// Requests (intended to be) sent before this are the warm-up: not counted.
    from: Instant,
    latency: Histogram<u64>,
    /// Open loop: how late each request was issued after its intended send time, µs.
    send_lag: Histogram<u64>,
    requests: u64,
    errors: u64,
    /// Counted errors by [`Failure::name`]: how many, and the first one's message.
    failures: std::collections::BTreeMap<String, (u64, String)>,
    events_sent: u64,
    events_acked: u64,
    warmup_requests: u64,
    warmup_events_acked: u64,
    /// What the progress lines read while the run goes on (warm-up included).
    live: Arc<Live>,
}

/// Counters every worker adds to as answers arrive, read by the progress lines.
#[derive(Debug, Default)]
struct Live {
    requests: AtomicU64,
    events_acked: AtomicU64,
    errors: AtomicU64,
}

impl Tally {
    fn new(from: Instant, live: Arc<Live>) -> Self {
        Tally {
            from,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            send_lag: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            requests: 0,
            errors: 0,
            failures: std::collections::BTreeMap::new(),
            events_sent: 0,
            events_acked: 0,
            warmup_requests: 0,
            warmup_events_acked: 0,
            live,
        }
    }

    /// Counts one answered request of `n` events sent at `sent_at` (its intended send
    /// time, open loop): `Ok(events acknowledged)` or what failed it. A request of the
    /// warm-up is not counted (the progress lines count it).
    fn answered(&mut self, sent_at: Instant, n: u64, acked: Result<u64, Failure>) {
        self.live.requests.fetch_add(1, Ordering::Relaxed);
        match &acked {
            Ok(acked) => self.live.events_acked.fetch_add(*acked, Ordering::Relaxed),
            Err(_) => self.live.errors.fetch_add(1, Ordering::Relaxed),
        };
        if sent_at < self.from {
            self.warmup_requests += 1;
            self.warmup_events_acked += acked.unwrap_or(0);
            return;
        }
        self.requests += 1;
        self.events_sent += n;
        self.record(sent_at);
        match acked {
            Ok(acked) => self.events_acked += acked,
            Err(failure) => self.failed(&failure),
        }
    }

    /// Counts a counted request that failed.
    fn failed(&mut self, failure: &Failure) {
        self.errors += 1;
        self.failures
            .entry(failure.name())
            .or_insert_with(|| (0, failure.message()))
            .0 += 1;
    }

    /// The counted errors by status, most frequent first (then by name).
    fn errors_by_status(&self) -> Vec<ErrorCount> {
        let mut out: Vec<ErrorCount> = self
            .failures
            .iter()
            .map(|(status, (count, example))| ErrorCount {
                status: status.clone(),
                count: *count,
                example: example.clone(),
            })
            .collect();
        out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.status.cmp(&b.status)));
        out
    }

    fn merge(&mut self, other: &Tally) {
        let _ = self.latency.add(&other.latency);
        let _ = self.send_lag.add(&other.send_lag);
        self.requests += other.requests;
        self.errors += other.errors;
        for (status, (count, example)) in &other.failures {
            self.failures
                .entry(status.clone())
                .or_insert_with(|| (0, example.clone()))
                .0 += count;
        }
        self.events_sent += other.events_sent;
        self.events_acked += other.events_acked;
        self.warmup_requests += other.warmup_requests;
        self.warmup_events_acked += other.warmup_events_acked;
    }

    /// Counts how late a request due at `due` (open loop) left, at `now`; requests of
    /// the warm-up are not counted.
    fn sent_late(&mut self, due: Instant, now: Instant) {
        if due >= self.from {
            let us = u64::try_from(now.saturating_duration_since(due).as_micros()).unwrap_or(u64::MAX);
            let _ = self.send_lag.record(us.clamp(1, 60_000_000));
        }
    }

    fn record(&mut self, since: Instant) {
        let us = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
        let _ = self.latency.record(us.clamp(1, 60_000_000));
    }
}

async fn channel(server: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(server.to_owned())
        .with_context(|| format!("--server `{server}` is not a URL like http://127.0.0.1:50051"))?;
    endpoint
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {server} (is `tasktime serve` listening there?)"))
}

/// Runs a bench and returns its summary.
///
/// # Errors
/// Bad configuration or no server.
pub async fn run(config: &BenchConfig) -> anyhow::Result<Summary> {
    anyhow::ensure!(config.connections >= 1, "--connections must be at least 1");
    anyhow::ensure!(config.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(config.batch_size >= 1, "--batch-size must be at least 1");
    anyhow::ensure!(config.tasks >= 1, "--tasks must be at least 1");
    if let Some(rate) = config.rate {
        anyhow::ensure!(rate > 0.0 && rate.is_finite(), "--rate must be positive, not {rate}");
    }
    let run_id: u64 = rand::random();
    if matches!(config.mode, Mode::Query | Mode::Gate) {
        preload(config, run_id).await?;
    }
    let mut channels = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        channels.push(channel(&config.server).await?);
    }
    let started = Instant::now();
    let measured_from = started + config.warmup;
    let deadline = measured_from + config.duration;
    let live = Arc::new(Live::default());
    let mut workers = Vec::new();
    for (w, ch) in channels.into_iter().enumerate() {
        let config = config.clone();
        let live = Arc::clone(&live);
        workers.push(tokio::spawn(async move {
            worker(&config, w, run_id, ch, started, deadline, live).await
        }));
    }
    let progress = config.progress.filter(|every| !every.is_zero()).map(|every| {
        let live = Arc::clone(&live);
        let ingest = !matches!(config.mode, Mode::Query | Mode::Gate);
        tokio::spawn(report_progress(live, ingest, started, measured_from, deadline, every))
    });
    let mut total = Tally::new(measured_from, live);
    for w in workers {
        total.merge(&w.await??);
    }
    if let Some(progress) = progress {
        progress.abort();
    }
    let elapsed = measured_from.elapsed().as_secs_f64();
    let summary = |h: &Histogram<u64>| Latency {
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    };
    Ok(Summary {
        mode: config.mode,
        workload: config.workload,
        open_loop_rate: config.rate,
        connections: config.connections,
        concurrency: config.concurrency,
        batch_size: effective_batch(config),
        warmup_s: config.warmup.as_secs_f64(),
        warmup_requests: total.warmup_requests,
        warmup_events_acked: total.warmup_events_acked,
        requests: total.requests,
        errors: total.errors,
        errors_by_status: total.errors_by_status(),
        events_sent: total.events_sent,
        events_acked: total.events_acked,
        duration_s: elapsed,
        events_per_sec: total.events_acked as f64 / elapsed,
        requests_per_sec: total.requests as f64 / elapsed,
        latency_us: summary(&total.latency),
        send_lag_us: config.rate.map(|_| summary(&total.send_lag)),
    })
}

/// Prints a line to stderr every `every` until `deadline`: how long the run has gone, and
/// what was answered so far and over the last interval (the summary follows at the end).
async fn report_progress(
    live: Arc<Live>,
    ingest: bool,
    started: Instant,
    measured_from: Instant,
    deadline: Instant,
    every: Duration,
) {
    let mut ticker = tokio::time::interval_at((started + every).into(), every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut last_at, mut last_count) = (started, 0);
    loop {
        let now = ticker.tick().await.into_std();
        if now + every / 2 >= deadline {
            return;
        }
        let requests = live.requests.load(Ordering::Relaxed);
        let errors = live.errors.load(Ordering::Relaxed);
        let (count, unit) = if ingest {
            (live.events_acked.load(Ordering::Relaxed), "events acked")
        } else {
            (requests, "requests answered")
        };
        let secs = now.saturating_duration_since(last_at).as_secs_f64().max(1e-3);
        let rate = (count - last_count) as f64 / secs;
        let phase = if now < measured_from { " (warm-up)" } else { "" };
        eprintln!(
            "bench: {:.0} s of {:.0} s{phase}: {count} {unit}, {rate:.0}/s over the last {secs:.0} s; {requests} requests, {errors} failed",
            now.saturating_duration_since(started).as_secs_f64(),
            deadline.saturating_duration_since(started).as_secs_f64(),
        );
        (last_at, last_count) = (now, count);
    }
}

fn effective_batch(config: &BenchConfig) -> usize {
    match config.mode {
        Mode::Unary => 1,
        Mode::Query | Mode::Gate => 0,
        Mode::Stream | Mode::Batch => config.batch_size,
    }
}

/// Sends `preload` instances (completed events, releases r0..) for query and gate runs.
async fn preload(config: &BenchConfig, run: u64) -> anyhow::Result<()> {
    let mut client = IngestServiceClient::new(channel(&config.server).await?);
    let mut generator = Generator::new(
        &BenchConfig {
            workload: Workload::Completed,
            ..config.clone()
        },
        usize::MAX,
        run,
    );
    let span = i64::try_from(config.preload_span.as_micros()).unwrap_or(i64::MAX);
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0x5eed);
    let mut left = config.preload;
    while left > 0 {
        let n = left.min(5_000);
        let mut events = generator.batch(n);
        if span > 0 {
            for e in &mut events {
                if let Some(at) = e.at {
                    let back = rng.random_range(0..span);
                    e.at = Some(micros_timestamp(
                        at.seconds * MICROS_PER_SEC + i64::from(at.nanos / 1000) - back,
                    ));
                }
            }
        }
        let response = client.record(pb::RecordRequest { events }).await?.into_inner();
        anyhow::ensure!(
            response.rejected.is_empty(),
            "preload: {} events rejected, the first: {}",
            response.rejected.len(),
            response.rejected[0].reason
        );
        left -= n;
    }
    Ok(())
}

/// A worker's schedule: when the run started, when the measured part ends, and (open
/// loop) how many requests per second the worker sends.
#[derive(Debug, Clone, Copy)]
struct Clock {
    started: Instant,
    deadline: Instant,
    per_worker: Option<f64>,
}

/// The intended send time of request `k` of a worker sending `per_worker` per second.
fn intended(started: Instant, k: u64, per_worker: f64) -> Instant {
    started + Duration::from_secs_f64(k as f64 / per_worker)
}

/// Wakes an open-loop worker at its intended send times.
///
/// tokio's timer rounds a sleep up to the next millisecond, so a worker sleeping on it
/// sent up to 1 ms late, and its latency (from the intended time) counted that too. On
/// Linux the pacer is a timerfd in tokio's own reactor: it fires within microseconds, and
/// the worker wakes on the thread that polls it. (A pacer thread sleeping with the OS
/// timer and waking the worker over a channel is as punctual, but every send then costs
/// two thread switches: with the generator beside the service on two cores that was 2.0
/// context switches and about 60 µs of the generator's CPU per unary call at 10,000
/// calls/s, CPU the service and Redis then lacked.)
#[cfg(target_os = "linux")]
struct Pacer {
    timer: tokio::io::unix::AsyncFd<timerfd::TimerFd>,
}

#[cfg(target_os = "linux")]
impl Pacer {
    fn new() -> std::io::Result<Self> {
        let timer = timerfd::TimerFd::new_custom(timerfd::ClockId::Monotonic, true, true)?;
        // `AsyncFd::new` is deprecated for types that may hand it a descriptor they do not
        // own (its replacement is `unsafe`, which this crate forbids). A `TimerFd` owns its
        // descriptor (`OwnedFd`) and keeps it open until it is dropped, with the `AsyncFd`.
        #[allow(deprecated)]
        let timer = tokio::io::unix::AsyncFd::new(timer)?;
        Ok(Pacer { timer })
    }

    /// Returns at `due` (at once if it has passed).
    async fn wait(&mut self, due: Instant) -> std::io::Result<()> {
        let Some(left) = due.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
            return Ok(());
        };
        self.timer
            .get_mut()
            .set_state(timerfd::TimerState::Oneshot(left), timerfd::SetTimeFlags::Default);
        loop {
            let mut ready = self.timer.readable_mut().await?;
            // 0: not expired yet (a readiness left from an earlier expiry).
            let expired = ready.get_inner().read();
            ready.clear_ready();
            if expired > 0 {
                return Ok(());
            }
        }
    }
}

/// Where there is no timerfd the pacer is tokio's timer, to the millisecond: a send may
/// go out up to 1 ms late, and its latency counts that.
#[cfg(not(target_os = "linux"))]
struct Pacer;

#[cfg(not(target_os = "linux"))]
impl Pacer {
    fn new() -> std::io::Result<Self> {
        Ok(Pacer)
    }

    async fn wait(&mut self, due: Instant) -> std::io::Result<()> {
        tokio::time::sleep_until(due.into()).await;
        Ok(())
    }
}

async fn worker(
    config: &BenchConfig,
    w: usize,
    run: u64,
    channel: Channel,
    started: Instant,
    deadline: Instant,
    live: Arc<Live>,
) -> anyhow::Result<Tally> {
    let batch = effective_batch(config).max(1);
    // Requests per second this worker sends when open loop.
    let per_worker = config.rate.map(|r| {
        r / config.connections as f64
            / if matches!(config.mode, Mode::Stream | Mode::Batch) {
                batch as f64
            } else {
                1.0
            }
    });
    let clock = Clock {
        started,
        deadline,
        per_worker,
    };
    match config.mode {
        Mode::Stream => stream_worker(config, w, run, channel, clock, live).await,
        _ => unary_worker(config, w, run, channel, clock, live).await,
    }
}

async fn unary_worker(
    config: &BenchConfig,
    w: usize,
    run: u64,
    channel: Channel,
    clock: Clock,
    live: Arc<Live>,
) -> anyhow::Result<Tally> {
    let Clock {
        started,
        deadline,
        per_worker,
    } = clock;
    let mut tally = Tally::new(deadline - config.duration, live);
    let mut generator = Generator::new(config, w, run);
    let ingest = tonic::client::Grpc::new(channel.clone());
    let query = QueryServiceClient::new(channel.clone());
    let gate = GateServiceClient::new(channel);
    let mut in_flight = FuturesUnordered::new();
    let mut k: u64 = 0;
    let batch = effective_batch(config).max(1);
    let mut rng = StdRng::seed_from_u64(config.seed.wrapping_add(w as u64));
    let mut pacer = per_worker.map(|_| Pacer::new()).transpose()?;
    // Closed loop, the server unreachable (UNAVAILABLE): one request at a time, after a
    // pause that grows while they keep failing, as a client would; not tens of thousands
    // a second at a restarting replica. The open loop keeps its schedule: its rate is
    // the load asked for, and its failures are the result.
    let mut backoff = Backoff::default();
    loop {
        let now = Instant::now();
        let next_due = per_worker.map(|r| intended(started, k, r));
        let room = if backoff.failing { 1 } else { config.concurrency };
        let held = backoff.until.filter(|until| *until > now);
        let may_send =
            now < deadline && in_flight.len() < room && held.is_none() && next_due.is_none_or(|due| due <= now);
        if may_send {
            let sent_at = next_due.unwrap_or(now);
            if next_due.is_some() {
                tally.sent_late(sent_at, now);
            }
            k += 1;
            let fut: futures::future::BoxFuture<'static, (Instant, u64, Result<u64, tonic::Status>)> = match config.mode
            {
                Mode::Query => {
                    let mut q = query.clone();
                    let task = rng.random_range(0..config.tasks.clamp(1, 10));
                    let request = pb::GetTaskStatsRequest {
                        task: Generator::task_name(task),
                        from: Some(micros_timestamp(now_micros() - 30 * 86_400 * MICROS_PER_SEC)),
                        ..Default::default()
                    };
                    Box::pin(async move { (sent_at, 0, q.get_task_stats(request).await.map(|_| 0)) })
                }
                Mode::Gate => {
                    let mut g = gate.clone();
                    let task = rng.random_range(0..config.tasks.clamp(1, 10));
                    let arm = |r: &str| pb::Selector {
                        filter: [("release".to_owned(), r.to_owned())].into(),
                        ..Default::default()
                    };
                    let request = pb::EvaluateGateRequest {
                        tasks: vec![Generator::task_name(task)],
                        baseline: Some(arm("r0")),
                        candidate: Some(arm("r1")),
                        percentiles: vec![pb::PercentileCriterion {
                            percentile: 90.0,
                            max_increase_ratio: Some(0.1),
                            max_increase: None,
                        }],
                        min_samples: 10,
                        ..Default::default()
                    };
                    Box::pin(async move { (sent_at, 0, g.evaluate_gate(request).await.map(|_| 0)) })
                }
                _ => {
                    let mut c = ingest.clone();
                    let mut request = Vec::new();
                    let n = generator.encode_batch(batch, &mut request) as u64;
                    Box::pin(async move {
                        let r = async {
                            c.ready()
                                .await
                                .map_err(|e| tonic::Status::unavailable(format!("the connection failed: {e}")))?;
                            let path = tonic::codegen::http::uri::PathAndQuery::from_static(RECORD_PATH);
                            let r = c.unary(tonic::Request::new(request), path, EncodedCodec).await?;
                            let r = r.into_inner();
                            Ok(u64::from(r.accepted + r.duplicates))
                        }
                        .await;
                        (sent_at, n, r)
                    })
                }
            };
            in_flight.push(fut);
            continue;
        }
        if in_flight.is_empty() && now >= deadline {
            break;
        }
        // Wait for a reply, the next intended send time or the end of a pause.
        let wake = match next_due {
            Some(due) if now < deadline && in_flight.len() < room => Some(due),
            None if now < deadline && in_flight.len() < room => held,
            _ => None,
        };
        tokio::select! {
            Some((sent_at, n, result)) = in_flight.next(), if !in_flight.is_empty() => {
                if per_worker.is_none() {
                    backoff.answered(result.as_ref().err().map(tonic::Status::code), Instant::now());
                }
                tally.answered(sent_at, n, result.map_err(Failure::Status));
            }
            woke = async {
                match (wake, pacer.as_mut()) {
                    // The next intended send time (a late worker sends what is due at
                    // once, one request per pass of the loop).
                    (Some(due), Some(pacer)) => pacer.wait(due).await,
                    (Some(due), None) => {
                        tokio::time::sleep_until(due.into()).await;
                        Ok(())
                    }
                    // Past the deadline only replies are awaited (no busy loop).
                    (None, _) if now >= deadline => std::future::pending().await,
                    (None, _) => {
                        tokio::time::sleep_until(deadline.into()).await;
                        Ok(())
                    }
                }
            } => woke.context("the open loop's timer failed")?,
        }
    }
    Ok(tally)
}

/// A worker's pause while the server is unreachable, as a client would pause: 50 ms
/// after the first failure, doubling while they go on, up to 1 s; any answer from the
/// server ends it. Closed-loop unary workers pause on `UNAVAILABLE`; stream workers
/// before opening a new stream after one broke.
#[derive(Debug, Default)]
struct Backoff {
    /// The last attempt failed: a unary worker sends one request at a time.
    failing: bool,
    pause: Duration,
    /// No request before this.
    until: Option<Instant>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MOST: Duration = Duration::from_secs(1);

    /// An attempt failed at `now`: pause, twice as long as last time if the last one
    /// failed too.
    fn failed(&mut self, now: Instant) {
        self.pause = if self.failing {
            (self.pause * 2).min(Self::MOST)
        } else {
            Self::FIRST
        };
        self.until = Some(now + self.pause);
        self.failing = true;
    }

    /// A unary answer arrived at `now`: `None` for success, else the error's code.
    fn answered(&mut self, error: Option<tonic::Code>, now: Instant) {
        if error == Some(tonic::Code::Unavailable) {
            // Requests sent before the first failure fail together: one pause for them.
            if self.until.is_none_or(|until| until <= now) {
                self.failed(now);
            }
        } else {
            *self = Backoff::default();
        }
    }
}

async fn stream_worker(
    config: &BenchConfig,
    w: usize,
    run: u64,
    channel: Channel,
    clock: Clock,
    live: Arc<Live>,
) -> anyhow::Result<Tally> {
    let deadline = clock.deadline;
    let mut tally = Tally::new(deadline - config.duration, live);
    let mut generator = Generator::new(config, w, run);
    let mut grpc = tonic::client::Grpc::new(channel);
    // Requests sent so far: the open loop's schedule goes on across streams.
    let mut k: u64 = 0;
    // A stream that fails is counted and replaced (after a pause that grows while streams
    // keep failing without acknowledging anything), as a client would, until the deadline.
    let mut backoff = Backoff::default();
    while Instant::now() < deadline {
        let acked = tally.events_acked + tally.warmup_events_acked;
        let broken = one_stream(config, &mut grpc, &mut generator, &mut tally, &mut k, clock).await;
        if !broken {
            break;
        }
        if tally.events_acked + tally.warmup_events_acked > acked {
            backoff = Backoff::default(); // the server answered before the stream broke
        }
        let now = Instant::now();
        backoff.failed(now);
        let until = backoff.until.unwrap_or(now);
        tokio::time::sleep_until(deadline.min(until).into()).await;
    }
    Ok(tally)
}

/// Sends one RecordStream until the deadline (then half-closes it and takes the
/// answers) or until it fails; true when it failed.
async fn one_stream(
    config: &BenchConfig,
    grpc: &mut tonic::client::Grpc<Channel>,
    generator: &mut Generator,
    tally: &mut Tally,
    k: &mut u64,
    clock: Clock,
) -> bool {
    let Clock {
        started,
        deadline,
        per_worker,
    } = clock;
    let opened = async {
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("the connection failed: {e}")))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(config.concurrency);
        let responses = grpc
            .streaming(
                tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
                tonic::codegen::http::uri::PathAndQuery::from_static(RECORD_STREAM_PATH),
                EncodedCodec,
            )
            .await?
            .into_inner();
        Ok::<_, tonic::Status>((tx, responses))
    }
    .await;
    let (tx, mut responses) = match opened {
        Ok(opened) => opened,
        Err(status) => {
            // No request went out: counted as one failed request of no events.
            tally.answered(Instant::now(), 0, Err(Failure::Status(status)));
            return true;
        }
    };
    // Send times and sizes of the requests awaiting their (in-order) responses.
    let mut pending: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut tx = Some(tx);
    let mut broken = false;
    loop {
        let now = Instant::now();
        let next_due = per_worker.map(|r| intended(started, *k, r));
        if now >= deadline {
            tx = None; // half-close: the server answers what it has, then ends the stream
        }
        let may_send = tx.is_some() && pending.len() < config.concurrency && next_due.is_none_or(|due| due <= now);
        if may_send {
            let mut request = Vec::new();
            let n = generator.encode_batch(config.batch_size, &mut request) as u64;
            let sender = tx.as_ref().expect("checked above");
            if let Some(due) = next_due {
                tally.sent_late(due, now);
            }
            *k += 1;
            if sender.send(request).await.is_err() {
                // The stream is gone: its answers say why.
                tally.answered(next_due.unwrap_or(now), n, Err(Failure::NoAnswer));
                tx = None;
                continue;
            }
            pending.push_back((next_due.unwrap_or(now), n));
            continue;
        }
        if tx.is_none() && pending.is_empty() {
            break;
        }
        let wake = match next_due {
            Some(due) if tx.is_some() && pending.len() < config.concurrency => due,
            _ => deadline,
        };
        tokio::select! {
            message = responses.message() => match message {
                Ok(Some(r)) => {
                    let (sent_at, n) = pending.pop_front().unwrap_or((now, 0));
                    tally.answered(sent_at, n, Ok(u64::from(r.accepted + r.duplicates)));
                }
                Ok(None) => {
                    broken = !pending.is_empty() || tx.is_some();
                    break;
                }
                Err(status) => {
                    // The stream is over: this answers the oldest request in flight.
                    let (sent_at, n) = pending.pop_front().unwrap_or((now, 0));
                    tally.answered(sent_at, n, Err(Failure::Status(status)));
                    broken = true;
                    break;
                }
            },
            () = tokio::time::sleep_until(wake.into()), if tx.is_some() => {}
        }
    }
    // Requests that never got a response count as sent and failed.
    for (sent_at, n) in pending {
        tally.answered(sent_at, n, Err(Failure::NoAnswer));
    }
    broken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pacer_wakes_at_each_intended_send_time_and_not_before() {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(100);
        let mut pacer = Pacer::new().unwrap();
        // 200 per second: sends 0 to 19 are due before the deadline, 5 ms apart.
        for k in 0..20 {
            let due = intended(started, k, 200.0);
            pacer.wait(due).await.unwrap();
            let now = Instant::now();
            assert!(now >= due, "woke {:?} before send {k} was due", due - now);
        }
        assert!(Instant::now() < deadline + Duration::from_millis(50));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_pacer_returns_at_once_for_a_send_already_due() {
        let started = Instant::now();
        let mut pacer = Pacer::new().unwrap();
        tokio::time::timeout(Duration::from_millis(50), pacer.wait(started))
            .await
            .expect("a past due time does not wait")
            .unwrap();
        // Nor does that leave the timer armed or ready: the next wait lasts its time.
        let later = Instant::now() + Duration::from_millis(20);
        pacer.wait(later).await.unwrap();
        assert!(Instant::now() >= later);
    }

    fn unavailable(message: &str) -> Failure {
        Failure::Status(tonic::Status::unavailable(message))
    }

    #[test]
    fn a_closed_loop_worker_pauses_longer_while_the_server_stays_unavailable() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut b = Backoff::default();
        b.answered(Some(tonic::Code::Unavailable), ms(0));
        assert!(b.failing);
        assert_eq!(b.until, Some(ms(50)));
        // Requests that were in flight with it fail within its pause: no longer pause.
        b.answered(Some(tonic::Code::Unavailable), ms(10));
        assert_eq!(b.until, Some(ms(50)));
        // Each probe after a pause that fails doubles it, up to 1 s.
        let mut at = 50;
        for pause in [100, 200, 400, 800, 1000, 1000] {
            b.answered(Some(tonic::Code::Unavailable), ms(at));
            assert_eq!(b.until, Some(ms(at + pause)), "after the probe at {at} ms");
            at += pause;
        }
        // Any answer from the server (even a refusal) ends the pause.
        b.answered(Some(tonic::Code::InvalidArgument), ms(at));
        assert!(!b.failing);
        assert_eq!(b.until, None);
        b.answered(Some(tonic::Code::Unavailable), ms(at));
        assert_eq!(b.until, Some(ms(at + 50)), "a new outage starts at 50 ms again");
        b.answered(None, ms(at + 60));
        assert!(!b.failing && b.until.is_none());
    }

    #[test]
    fn requests_of_the_warmup_are_not_counted() {
        let from = Instant::now();
        let live = Arc::new(Live::default());
        let mut t = Tally::new(from, Arc::clone(&live));
        let before = from
            .checked_sub(Duration::from_millis(1))
            .expect("a monotonic clock this old");
        t.answered(before, 1000, Ok(1000));
        t.answered(before, 1000, Err(unavailable("warming")));
        assert_eq!((t.requests, t.errors, t.events_sent, t.latency.len()), (0, 0, 0, 0));
        assert!(t.errors_by_status().is_empty(), "a warm-up error is not counted");
        assert_eq!((t.warmup_requests, t.warmup_events_acked), (2, 1000));
        t.answered(from, 1000, Ok(990));
        t.answered(from + Duration::from_millis(5), 10, Err(unavailable("queue full")));
        assert_eq!((t.requests, t.errors, t.events_sent, t.events_acked), (2, 1, 1010, 990));
        assert_eq!(t.latency.len(), 2);
        // The progress lines count everything answered, the warm-up too.
        assert_eq!(
            (
                live.requests.load(Ordering::Relaxed),
                live.events_acked.load(Ordering::Relaxed),
                live.errors.load(Ordering::Relaxed)
            ),
            (4, 1990, 2)
        );
    }

    #[test]
    fn errors_are_counted_by_status_with_the_first_message_of_each() {
        let from = Instant::now();
        let live = Arc::new(Live::default());
        let mut a = Tally::new(from, Arc::clone(&live));
        a.answered(from, 10, Err(unavailable("the ingest queue is full")));
        a.answered(from, 10, Err(unavailable("a later message")));
        a.answered(
            from,
            10,
            Err(Failure::Status(tonic::Status::invalid_argument(
                "events[3].task is empty",
            ))),
        );
        let mut b = Tally::new(from, live);
        b.answered(from, 10, Err(unavailable("b's message")));
        b.failed(&Failure::NoAnswer);
        b.answered(from, 10, Err(Failure::Status(tonic::Status::deadline_exceeded(""))));
        a.merge(&b);
        let by: Vec<(String, u64, String)> = a
            .errors_by_status()
            .into_iter()
            .map(|e| (e.status, e.count, e.example))
            .collect();
        assert_eq!(
            by,
            [
                ("UNAVAILABLE".to_owned(), 3, "the ingest queue is full".to_owned()),
                (
                    "DEADLINE_EXCEEDED".to_owned(),
                    1,
                    tonic::Code::DeadlineExceeded.description().to_owned()
                ),
                ("INVALID_ARGUMENT".to_owned(), 1, "events[3].task is empty".to_owned()),
                (
                    "NO_ANSWER".to_owned(),
                    1,
                    "the stream ended before this request was answered".to_owned()
                ),
            ]
        );
        assert_eq!(a.errors, 6);
    }

    #[test]
    fn status_codes_are_named_as_grpc_names_them() {
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(tonic::Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(tonic::Code::FailedPrecondition), "FAILED_PRECONDITION");
        assert_eq!(code_name(tonic::Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
    }

    #[test]
    fn a_late_send_is_counted_with_its_lag_and_the_warmups_are_not() {
        let from = Instant::now();
        let mut t = Tally::new(from, Arc::default());
        let before = from
            .checked_sub(Duration::from_millis(1))
            .expect("a monotonic clock this old");
        t.sent_late(before, from + Duration::from_millis(3));
        assert_eq!(t.send_lag.len(), 0, "a warm-up send is not counted");
        t.sent_late(from, from + Duration::from_millis(3));
        t.sent_late(from, from);
        assert_eq!(t.send_lag.len(), 2);
        assert!(t.send_lag.equivalent(t.send_lag.max(), 3_000), "{}", t.send_lag.max());
        // A send on time counts as 1 µs, the histogram's lowest value.
        assert_eq!(t.send_lag.min(), 1);
    }

    #[test]
    fn pairs_finish_only_instances_started_finish_lag_batches_earlier() {
        let config = BenchConfig {
            concurrency: 2,
            ..BenchConfig::default()
        };
        let mut g = Generator::new(&config, 0, 1);
        let first = g.batch(100);
        // Batches 1..=3 are within the lag (2 × concurrency) of the first: starts only.
        for _ in 1..4 {
            assert!(
                g.batch(100)
                    .iter()
                    .all(|e| matches!(e.kind, Some(pb::task_event::Kind::Start(_))))
            );
        }
        assert!(
            first
                .iter()
                .all(|e| matches!(e.kind, Some(pb::task_event::Kind::Start(_))))
        );
        let second = g.batch(100);
        let finishes: Vec<_> = second
            .iter()
            .filter(|e| matches!(e.kind, Some(pb::task_event::Kind::Finish(_))))
            .collect();
        assert!(finishes.len() >= 40, "about half finish: {}", finishes.len());
        let started: std::collections::HashSet<_> = first.iter().map(|e| e.instance_id.clone()).collect();
        assert!(finishes.iter().all(|f| started.contains(&f.instance_id)));
    }

    #[test]
    fn an_encoded_batch_decodes_to_the_batch_the_same_generator_builds() {
        for workload in [Workload::Pairs, Workload::Completed] {
            let config = BenchConfig {
                workload,
                concurrency: 1,
                ..BenchConfig::default()
            };
            let (mut built, mut encoded) = (Generator::new(&config, 3, 9), Generator::new(&config, 3, 9));
            let mut buf = Vec::new();
            let mut kinds = std::collections::HashSet::new();
            for _ in 0..8 {
                let want = built.batch(50);
                let n = encoded.encode_batch(50, &mut buf);
                let got = <pb::RecordRequest as prost::Message>::decode(buf.as_slice()).expect("it decodes");
                assert_eq!(n, got.events.len());
                assert_eq!(want.len(), got.events.len());
                for (w, g) in want.iter().zip(&got.events) {
                    // Each generator reads the clock for its own batch.
                    let at = |e: &pb::TaskEvent| e.at.map(|t| t.seconds * MICROS_PER_SEC + i64::from(t.nanos / 1000));
                    let (w_at, g_at) = (at(w).expect("set"), at(g).expect("set"));
                    assert!((w_at - g_at).abs() < MICROS_PER_SEC, "{w:?} / {g:?}");
                    let without_at = |e: &pb::TaskEvent| pb::TaskEvent { at: None, ..e.clone() };
                    assert_eq!(without_at(w), without_at(g));
                    kinds.insert(std::mem::discriminant(g.kind.as_ref().expect("set")));
                    assert_eq!(
                        g.labels.is_empty(),
                        matches!(g.kind, Some(pb::task_event::Kind::Finish(_)))
                    );
                }
            }
            let expected = if workload == Workload::Pairs { 2 } else { 1 };
            assert_eq!(
                kinds.len(),
                expected,
                "{workload:?}: starts and finishes, or completed events"
            );
        }
    }

    #[test]
    fn the_task_mix_is_skewed() {
        let config = BenchConfig {
            workload: Workload::Completed,
            ..BenchConfig::default()
        };
        let mut g = Generator::new(&config, 0, 1);
        let events = g.batch(10_000);
        let top = events.iter().filter(|e| e.task == "bench-task-00").count();
        let tail = events.iter().filter(|e| e.task == "bench-task-49").count();
        assert!(top > 10 * tail.max(1), "Zipf: top {top}, tail {tail}");
        let tasks: std::collections::HashSet<_> = events.iter().map(|e| e.task.clone()).collect();
        assert!(tasks.len() >= 40, "{} tasks", tasks.len());
    }
}
