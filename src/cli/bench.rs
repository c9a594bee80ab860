//! `tasktime bench`: a load generator to point at any tasktime deployment. Prints a
//! table, or one JSON summary object with `--json`.

use std::time::Duration;

use clap::Args;

use crate::bench::{self, BenchConfig, Mode, Workload};

/// Flags of `tasktime bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The tasktime server.
    #[arg(long, env = "TASKTIME_SERVER", default_value = super::DEFAULT_SERVER)]
    pub server: String,
    /// What to send: stream (RecordStream batches), batch (Record with --batch-size events),
    /// unary (one event per Record), query (GetTaskStats), gate (EvaluateGate).
    #[arg(long, value_enum, default_value_t = Mode::Stream)]
    pub mode: Mode,
    /// pairs (a start and later its finish per instance) or completed (client-timed).
    #[arg(long, value_enum, default_value_t = Workload::Pairs)]
    pub workload: Workload,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    pub duration: Duration,
    /// Send this long first, the same way, without counting it (`0s`: none): the numbers
    /// then leave out connection set-up and a cold service.
    #[arg(long, default_value = "0s", value_parser = super::parse_duration)]
    pub warmup: Duration,
    /// Open loop: events/s (stream, batch) or requests/s (unary, query, gate) in total;
    /// latency is measured from each request's intended send time. None: closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// gRPC connections (one worker each).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Events per request in stream and batch modes.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Distinct tasks in the workload (Zipf-distributed).
    #[arg(long, default_value_t = 50)]
    pub tasks: usize,
    /// Releases per task.
    #[arg(long, default_value_t = 4)]
    pub releases: usize,
    /// Platforms per task.
    #[arg(long, default_value_t = 3)]
    pub platforms: usize,
    /// Zipf exponent of the task mix.
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Instances preloaded before query and gate runs.
    #[arg(long, default_value_t = 20_000)]
    pub preload: usize,
    /// Preloaded instances finish at random times over this long before now (e.g.
    /// `30d`); 0 = all just now.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub preload_span: std::time::Duration,
    /// Random seed of the workload.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print a progress line to stderr this often while the run goes on (`0s`: never).
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    pub progress: Duration,
    /// Print one JSON summary object.
    #[arg(long)]
    pub json: bool,
}

/// Runs the bench and prints its summary.
///
/// # Errors
/// Bad flags or no server.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let config = BenchConfig {
        server: args.server,
        mode: args.mode,
        workload: args.workload,
        duration: args.duration,
        warmup: args.warmup,
        rate: args.rate,
        connections: args.connections,
        concurrency: args.concurrency,
        batch_size: args.batch_size,
        tasks: args.tasks,
        releases: args.releases,
        platforms: args.platforms,
        zipf: args.zipf,
        preload: args.preload,
        preload_span: args.preload_span,
        seed: args.seed,
        progress: Some(args.progress).filter(|every| !every.is_zero()),
    };
    let summary = bench::run(&config).await?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", human(&summary));
    }
    Ok(())
}

/// The summary as lines to read.
fn human(summary: &bench::Summary) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let what = if matches!(summary.mode, Mode::Query | Mode::Gate) {
        cli_name(&summary.mode)
    } else {
        format!("{}, {}", cli_name(&summary.mode), cli_name(&summary.workload))
    };
    let _ = writeln!(
        out,
        "{what}: {} requests ({} failed), {} events acked in {:.1} s = {:.0} events/s, {:.0} requests/s",
        summary.requests,
        summary.errors,
        summary.events_acked,
        summary.duration_s,
        summary.events_per_sec,
        summary.requests_per_sec
    );
    for e in &summary.errors_by_status {
        let _ = writeln!(out, "failed: {} × {}, the first: {}", e.count, e.status, e.example);
    }
    let l = &summary.latency_us;
    let _ = writeln!(
        out,
        "latency per request: p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        l.p50, l.p99, l.p999, l.max
    );
    if let Some(l) = &summary.send_lag_us {
        let _ = writeln!(
            out,
            "issued late by the generator: p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            l.p50, l.p99, l.p999, l.max
        );
    }
    out
}

/// The name a value has on the command line (`--mode stream`).
fn cli_name<T: clap::ValueEnum>(value: &T) -> String {
    value
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_owned())
}
