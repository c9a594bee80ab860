//! The `tasktime` command line: one file per subcommand. Every flag also reads a
//! `TASKTIME_*` environment variable.

pub mod bench;
pub mod client;
pub mod gate;
pub mod record;
pub mod serve;
pub mod stats;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

/// Default server address of the client commands.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// tasktime: how quickly and how easily customers complete their tasks.
#[derive(Debug, Parser)]
#[command(name = "tasktime", version, about, long_about = None)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "TASKTIME_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Serve(serve::ServeArgs),
    /// Send events from JSON lines (one TaskEvent per line, in the proto JSON mapping).
    Record(record::RecordArgs),
    /// Print stats for a task: counts, success, abandonment, percentiles, customer time.
    Stats(stats::StatsArgs),
    /// Evaluate a release gate: is the candidate slower or less successful than the
    /// baseline? Exits 0 pass, 1 fail, 2 usage or connection error, 3 inconclusive.
    Gate(gate::GateArgs),
    /// Load generator: stream, batch, unary, query or gate load against a server, open
    /// loop (--rate) or closed loop; --json prints one summary object.
    Bench(bench::BenchArgs),
}

/// Parses a duration like `90s`, `15m`, `1h 30m`.
pub(crate) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("`{text}` is not a duration like 90s, 15m or 1h: {e}"))
}
