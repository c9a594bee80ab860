//! `tasktime stats`: prints `TaskStats` for a selector as a readable table, or as JSON
//! (the proto JSON mapping) with `--json`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};

use super::client::{self, fmt_time, parse_time};
use crate::pb;
use crate::pb::query_service_client::QueryServiceClient;

/// Outcomes on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutcomeArg {
    Succeeded,
    Failed,
    Cancelled,
}

impl OutcomeArg {
    fn to_pb(self) -> pb::Outcome {
        match self {
            OutcomeArg::Succeeded => pb::Outcome::Succeeded,
            OutcomeArg::Failed => pb::Outcome::Failed,
            OutcomeArg::Cancelled => pb::Outcome::Cancelled,
        }
    }
}

/// Flags of `tasktime stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The task, e.g. checkout.
    #[arg(long, env = "TASKTIME_TASK")]
    pub task: String,
    /// Only series with this label (repeatable): --filter release=2.4.0
    #[arg(long = "filter", value_parser = parse_label)]
    pub filter: Vec<(String, String)>,
    /// Start of the window: RFC 3339, `now`, or a duration ago (`2h`). Default: 24 h before --to.
    #[arg(long)]
    pub from: Option<String>,
    /// End of the window (exclusive), same forms. Default: now.
    #[arg(long)]
    pub to: Option<String>,
    /// Shorthand for --from <DURATION> --to now, e.g. --last 7d.
    #[arg(long, conflicts_with_all = ["from", "to"], value_parser = super::parse_duration)]
    pub last: Option<Duration>,
    /// Percentiles to report (comma-separated or repeated). Default 50,90,95,99.
    #[arg(long = "percentiles", value_delimiter = ',')]
    pub percentiles: Vec<f64>,
    /// Whose durations: succeeded (default), failed or cancelled.
    #[arg(long, value_enum, default_value_t = OutcomeArg::Succeeded)]
    pub outcome: OutcomeArg,
    /// Print JSON (the proto JSON mapping of TaskStats) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The tasktime server.
    #[arg(long, env = "TASKTIME_SERVER", default_value = super::DEFAULT_SERVER)]
    pub server: String,
}

/// Parses `key=value`.
pub(crate) fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{text}` is not key=value"))
}

/// Runs the command.
///
/// # Errors
/// Bad flags, no server, or an error from the server.
pub async fn run(args: StatsArgs) -> anyhow::Result<()> {
    let (from, to) = match args.last {
        Some(d) => (Some(format!("{}s", d.as_secs())), None),
        None => (args.from.clone(), args.to.clone()),
    };
    let to = to.map(|t| parse_time("--to", &t)).transpose()?;
    let from = from.map(|t| parse_time("--from", &t)).transpose()?;
    let request = pb::GetTaskStatsRequest {
        task: args.task.clone(),
        filter: args.filter.iter().cloned().collect::<BTreeMap<_, _>>(),
        from: from.map(crate::grpc::convert::micros_timestamp),
        to: to.map(crate::grpc::convert::micros_timestamp),
        percentiles: args.percentiles.clone(),
        outcome: args.outcome.to_pb() as i32,
        include_histogram: false,
    };
    let mut client = QueryServiceClient::new(client::connect(&args.server).await?);
    let stats = client
        .get_task_stats(request)
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    if args.json {
        println!("{}", to_json(&stats)?);
    } else {
        print!("{}", table(&stats, args.outcome));
    }
    Ok(())
}

/// The proto JSON mapping of a TaskStats.
///
/// # Errors
/// Only if the embedded descriptor set is broken.
pub fn to_json(stats: &pb::TaskStats) -> anyhow::Result<String> {
    let pool = DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).context("embedded descriptor set")?;
    let desc = pool
        .get_message_by_name("tasktime.v1.TaskStats")
        .context("TaskStats descriptor")?;
    let message = DynamicMessage::decode(desc, stats.encode_to_vec().as_slice())?;
    let options = prost_reflect::SerializeOptions::new().skip_default_fields(false);
    let mut out = serde_json::Serializer::pretty(Vec::new());
    message.serialize_with_options(&mut out, &options)?;
    Ok(String::from_utf8(out.into_inner())?)
}

fn secs(d: Option<&prost_types::Duration>) -> f64 {
    d.map_or(0.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
}

/// A duration for humans: `850ms`, `31.2s`, `4m 05s`, `2h 10m`.
pub fn human(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{:.0}ms", seconds * 1000.0)
    } else if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else if seconds < 3600.0 {
        format!("{}m {:02.0}s", (seconds / 60.0).floor(), seconds % 60.0)
    } else {
        format!("{}h {:02.0}m", (seconds / 3600.0).floor(), (seconds % 3600.0) / 60.0)
    }
}

/// The table `tasktime stats` prints.
pub fn table(s: &pb::TaskStats, outcome: OutcomeArg) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let ts =
        |t: &Option<prost_types::Timestamp>| t.as_ref().map_or_else(String::new, |t| fmt_time(t.seconds * 1_000_000));
    let _ = writeln!(out, "task         {}", s.task);
    let _ = writeln!(out, "window       {} .. {}", ts(&s.from), ts(&s.to));
    let _ = writeln!(out, "started      {}", s.started);
    let _ = writeln!(
        out,
        "finished     {} succeeded, {} failed, {} cancelled; {} abandoned",
        s.succeeded, s.failed, s.cancelled, s.abandoned
    );
    let _ = writeln!(out, "success rate {:.1}%", s.success_rate * 100.0);
    let _ = writeln!(
        out,
        "durations    {} {:?} (within {} significant digits)",
        s.count, outcome, s.significant_digits
    );
    for p in &s.percentiles {
        let _ = writeln!(out, "  p{:<9} {}", p.percentile, human(secs(p.value.as_ref())));
    }
    let _ = writeln!(
        out,
        "  min {}  mean {}  max {}",
        human(secs(s.min.as_ref())),
        human(secs(s.mean.as_ref())),
        human(secs(s.max.as_ref()))
    );
    let _ = writeln!(out, "customer time {}", human(secs(s.total_time.as_ref())));
    if s.over_range > 0 {
        let _ = writeln!(
            out,
            "over range   {} (clamped to the highest trackable duration)",
            s.over_range
        );
    }
    out
}
