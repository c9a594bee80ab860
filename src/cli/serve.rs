//! `tasktime serve`: runs the service until SIGTERM or SIGINT, then drains and exits 0.

use std::net::SocketAddr;
use std::time::Duration;

use std::ffi::OsStr;
use std::str::FromStr;

use clap::Args;
use clap::builder::TypedValueParser;

use super::parse_duration;
use crate::App;
use crate::buckets::Retention;
use crate::config::{self, Config};
use crate::domain::Limits;
use crate::store::redis::RedisTimeouts;

/// Flags of `tasktime serve`; each also reads the `TASKTIME_*` variable shown.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the bound address is logged).
    #[arg(long, env = "TASKTIME_LISTEN", default_value = config::DEFAULT_LISTEN, value_parser = Setting(address))]
    pub listen: SocketAddr,
    /// Redis URL (redis://host:port/db). Without it: the embedded in-memory store, not durable.
    #[arg(long, env = "TASKTIME_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Benchmarks only: accept and drop every event (measures the transport's ceiling).
    #[arg(long, env = "TASKTIME_NULL_STORE", conflicts_with = "redis_url")]
    pub null_store: bool,
    /// A start with no finish within this long counts as abandoned.
    #[arg(long, env = "TASKTIME_ABANDON_AFTER", default_value = "1h", value_parser = Setting(parse_duration))]
    pub abandon_after: Duration,
    /// How long a completed instance is remembered, to recognise retries.
    #[arg(long, env = "TASKTIME_DEDUPE_HORIZON", default_value = "1h", value_parser = Setting(parse_duration))]
    pub dedupe_horizon: Duration,
    /// Events further in the future than this are rejected.
    #[arg(long, env = "TASKTIME_MAX_FUTURE_SKEW", default_value = "5m", value_parser = Setting(parse_duration))]
    pub max_future_skew: Duration,
    /// Events per request, at most.
    #[arg(long, env = "TASKTIME_MAX_EVENTS_PER_REQUEST", default_value_t = Limits::DEFAULT_MAX_EVENTS_PER_REQUEST, value_parser = Setting(number::<usize>))]
    pub max_events_per_request: usize,
    /// Labels per event, at most.
    #[arg(long, env = "TASKTIME_MAX_LABELS", default_value_t = Limits::DEFAULT_MAX_LABELS, value_parser = Setting(number::<usize>))]
    pub max_labels: usize,
    /// Bytes per label value, at most.
    #[arg(long, env = "TASKTIME_MAX_LABEL_VALUE_BYTES", default_value_t = Limits::DEFAULT_MAX_LABEL_VALUE_BYTES, value_parser = Setting(number::<usize>))]
    pub max_label_value_bytes: usize,
    /// How long minute buckets are kept.
    #[arg(long, env = "TASKTIME_RETENTION_MINUTE", default_value = "2days", value_parser = Setting(parse_duration))]
    pub retention_minute: Duration,
    /// How long hour buckets are kept.
    #[arg(long, env = "TASKTIME_RETENTION_HOUR", default_value = "35days", value_parser = Setting(parse_duration))]
    pub retention_hour: Duration,
    /// How long day buckets are kept.
    #[arg(long, env = "TASKTIME_RETENTION_DAY", default_value = "400days", value_parser = Setting(parse_duration))]
    pub retention_day: Duration,
    /// HDR significant digits (2 = within 1%, 3 = within 0.1%). Part of the storage namespace.
    #[arg(long, env = "TASKTIME_HISTOGRAM_DIGITS", default_value_t = 2, value_parser = Setting(number::<u8>))]
    pub histogram_digits: u8,
    /// Highest trackable duration; longer ones are clamped and counted. Part of the storage namespace.
    #[arg(long, env = "TASKTIME_HISTOGRAM_HIGHEST", default_value = "30days", value_parser = Setting(parse_duration))]
    pub histogram_highest: Duration,
    /// Events queued or being committed, at most; beyond it ingest answers UNAVAILABLE.
    #[arg(long, env = "TASKTIME_QUEUE_CAPACITY", default_value_t = config::DEFAULT_QUEUE_CAPACITY_EVENTS, value_parser = Setting(number::<usize>))]
    pub queue_capacity: usize,
    /// Events in one store round, at most.
    #[arg(long, env = "TASKTIME_MAX_ROUND_EVENTS", default_value_t = config::DEFAULT_MAX_ROUND_EVENTS, value_parser = Setting(number::<usize>))]
    pub max_round_events: usize,
    /// A commit round that takes longer fails with UNAVAILABLE (retrying is safe).
    #[arg(long, env = "TASKTIME_COMMIT_TIMEOUT", default_value = "5s", value_parser = Setting(parse_duration))]
    pub commit_timeout: Duration,
    /// Commit rounds in flight at once.
    #[arg(long, env = "TASKTIME_COMMIT_CONCURRENCY", default_value_t = config::DEFAULT_COMMIT_CONCURRENCY, value_parser = Setting(number::<usize>))]
    pub commit_concurrency: usize,
    /// Redis connect timeout.
    #[arg(long, env = "TASKTIME_REDIS_CONNECT_TIMEOUT", default_value = "1s", value_parser = Setting(parse_duration))]
    pub redis_connect_timeout: Duration,
    /// Redis response timeout; keep it below the commit timeout.
    #[arg(long, env = "TASKTIME_REDIS_RESPONSE_TIMEOUT", default_value = "2s", value_parser = Setting(parse_duration))]
    pub redis_response_timeout: Duration,
    /// After SIGTERM, health says NOT_SERVING this long before the listener closes.
    #[arg(long, env = "TASKTIME_DRAIN_PERIOD", default_value = "1s", value_parser = Setting(parse_duration))]
    pub drain_period: Duration,
    /// After the listener closes, in-flight RPCs and the last commit get this long.
    #[arg(long, env = "TASKTIME_GRACE_PERIOD", default_value = "25s", value_parser = Setting(parse_duration))]
    pub grace_period: Duration,
    /// Requests of one RecordStream processed at once (responses stay in order).
    #[arg(long, env = "TASKTIME_STREAM_CONCURRENCY", default_value_t = config::DEFAULT_STREAM_CONCURRENCY, value_parser = Setting(number::<usize>))]
    pub stream_concurrency: usize,
}

/// The value parser of every `tasktime serve` setting: its error names the flag, the value
/// and, when the value came from the environment, the `TASKTIME_*` variable. clap's own
/// message names only the flag, which leaves someone who configured the service through
/// its environment (a container, a unit file) looking for a flag they never typed.
#[derive(Debug, Clone, Copy)]
struct Setting<T>(fn(&str) -> Result<T, String>);

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Setting<T> {
    type Value = T;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<T, clap::Error> {
        let text = value.to_string_lossy();
        let problem = match value.to_str() {
            Some(text) => match (self.0)(text) {
                Ok(parsed) => return Ok(parsed),
                Err(problem) => problem,
            },
            None => "not valid UTF-8".to_owned(),
        };
        let flag = arg.map_or_else(|| "?".to_owned(), ToString::to_string);
        let from_env = arg
            .and_then(clap::Arg::get_env)
            .filter(|env| std::env::var_os(env).as_deref() == Some(value))
            .map(|env| format!(" (set by the environment variable {})", env.to_string_lossy()))
            .unwrap_or_default();
        Err(clap::Error::raw(
            clap::error::ErrorKind::ValueValidation,
            format!("invalid value '{text}' for '{flag}'{from_env}: {problem}\n"),
        )
        .with_cmd(cmd))
    }
}

/// Parses a whole number setting.
fn number<T: FromStr>(text: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e| format!("`{text}` is not a whole number in range: {e}"))
}

/// Parses the listen address.
fn address(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|e| format!("`{text}` is not an address like 127.0.0.1:50051: {e}"))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl ServeArgs {
    /// The service configuration these flags describe.
    pub fn to_config(&self) -> Config {
        Config {
            listen: self.listen,
            redis_url: self.redis_url.clone().filter(|u| !u.is_empty()),
            null_store: self.null_store,
            redis_timeouts: RedisTimeouts {
                connect: self.redis_connect_timeout,
                response: self.redis_response_timeout,
            },
            limits: Limits {
                max_labels: self.max_labels,
                max_label_value_bytes: self.max_label_value_bytes,
                max_events_per_request: self.max_events_per_request,
                max_future_skew: i64::try_from(self.max_future_skew.as_micros()).unwrap_or(i64::MAX),
            },
            abandon_after: self.abandon_after,
            dedupe_horizon: self.dedupe_horizon,
            retention: Retention {
                minute_secs: secs(self.retention_minute),
                hour_secs: secs(self.retention_hour),
                day_secs: secs(self.retention_day),
            },
            histogram_highest: self.histogram_highest,
            histogram_digits: self.histogram_digits,
            queue_capacity_events: self.queue_capacity,
            max_round_events: self.max_round_events,
            commit_timeout: self.commit_timeout,
            commit_concurrency: self.commit_concurrency,
            drain_period: self.drain_period,
            grace_period: self.grace_period,
            stream_concurrency: self.stream_concurrency,
        }
    }
}

/// Runs the service until SIGTERM or SIGINT.
///
/// # Errors
/// Invalid configuration, a port that cannot be bound, or a server failure.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let app = App::build(args.to_config()).await?;
    app.run_until_stopped(stop_signal()).await
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

// Keeps the flag defaults and the config defaults from drifting apart.
#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn flag_defaults_equal_the_config_defaults() {
        let cli = crate::cli::Cli::try_parse_from(["tasktime", "serve"]).unwrap();
        let crate::cli::Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let from_flags = args.to_config();
        let defaults = Config::default();
        assert_eq!(format!("{from_flags:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn a_bad_flag_value_names_the_flag_and_the_value() {
        for (args, words) in [
            (
                &["--abandon-after", "banana"][..],
                &["--abandon-after", "'banana'", "not a duration"][..],
            ),
            (
                &["--max-labels", "two"],
                &["--max-labels", "'two'", "not a whole number"],
            ),
            (&["--histogram-digits", "300"], &["--histogram-digits", "'300'"]),
            (
                &["--listen", "localhost"],
                &["--listen", "'localhost'", "not an address"],
            ),
        ] {
            let err = crate::cli::Cli::try_parse_from(["tasktime", "serve"].iter().chain(args))
                .expect_err("a bad value is refused");
            let text = err.to_string();
            for word in words {
                assert!(text.contains(word), "{args:?}: `{word}` missing from {text}");
            }
            // Given as a flag, not through the environment: no variable is blamed.
            assert!(!text.contains("environment variable"), "{text}");
        }
    }
}
