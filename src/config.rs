//! The service's typed configuration: defaults as named constants, and validation whose
//! errors name the flag, the environment variable and the bad value.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::buckets::Retention;
use crate::domain::{Limits, Micros};
use crate::histogram::HistogramConfig;
use crate::ingest::Semantics;
use crate::query::QuerySettings;
use crate::store::redis::RedisTimeouts;

/// Address `tasktime serve` listens on by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Events queued or being committed at most; beyond it ingest answers UNAVAILABLE.
pub const DEFAULT_QUEUE_CAPACITY_EVENTS: usize = 200_000;
/// Events in one store round at most.
pub const DEFAULT_MAX_ROUND_EVENTS: usize = 20_000;
/// A commit round that takes longer fails (retryable).
pub const DEFAULT_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// After SIGTERM, health says NOT_SERVING this long before the listener closes.
pub const DEFAULT_DRAIN_PERIOD: Duration = Duration::from_secs(1);
/// After the listener closes, in-flight RPCs and the last commit get this long.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(25);
/// Commit rounds in flight at once: the next round is planned while the store runs the last.
pub const DEFAULT_COMMIT_CONCURRENCY: usize = 4;
/// Requests of one RecordStream processed concurrently (responses stay in order).
pub const DEFAULT_STREAM_CONCURRENCY: usize = 16;

/// Everything `tasktime serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `None` = the embedded in-memory store.
    pub redis_url: Option<String>,
    /// Benchmarks only: keep nothing (measures the transport's ceiling).
    pub null_store: bool,
    pub redis_timeouts: RedisTimeouts,
    pub limits: Limits,
    pub abandon_after: Duration,
    pub dedupe_horizon: Duration,
    pub retention: Retention,
    pub histogram_highest: Duration,
    pub histogram_digits: u8,
    pub queue_capacity_events: usize,
    pub max_round_events: usize,
    pub commit_timeout: Duration,
    pub commit_concurrency: usize,
    pub drain_period: Duration,
    pub grace_period: Duration,
    pub stream_concurrency: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("DEFAULT_LISTEN is a valid socket address"),
            redis_url: None,
            null_store: false,
            redis_timeouts: RedisTimeouts::default(),
            limits: Limits::default(),
            abandon_after: Duration::from_secs(3600),
            dedupe_horizon: Duration::from_secs(3600),
            retention: Retention::default(),
            histogram_highest: Duration::from_micros(HistogramConfig::DEFAULT_HIGHEST_US),
            histogram_digits: HistogramConfig::DEFAULT_SIGFIG,
            queue_capacity_events: DEFAULT_QUEUE_CAPACITY_EVENTS,
            max_round_events: DEFAULT_MAX_ROUND_EVENTS,
            commit_timeout: DEFAULT_COMMIT_TIMEOUT,
            commit_concurrency: DEFAULT_COMMIT_CONCURRENCY,
            drain_period: DEFAULT_DRAIN_PERIOD,
            grace_period: DEFAULT_GRACE_PERIOD,
            stream_concurrency: DEFAULT_STREAM_CONCURRENCY,
        }
    }
}

/// A setting that cannot be used; the message names the flag, the variable and the value.
#[derive(Debug, thiserror::Error)]
#[error("{flag} (env {env}): {problem}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub env: &'static str,
    pub problem: String,
}

fn micros(d: Duration) -> Micros {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The derived settings the service runs with.
#[derive(Debug, Clone)]
pub struct Derived {
    pub semantics: Arc<Semantics>,
    pub query: QuerySettings,
}

impl Config {
    /// Checks every setting and derives the pairing and query settings.
    ///
    /// # Errors
    /// The first setting that cannot be used.
    pub fn validate(&self) -> Result<Derived, ConfigError> {
        let err = |flag, env, problem: String| ConfigError { flag, env, problem };
        if self.abandon_after < Duration::from_secs(1) {
            return Err(err(
                "--abandon-after",
                "TASKTIME_ABANDON_AFTER",
                format!(
                    "must be at least 1s, not {}",
                    humantime::format_duration(self.abandon_after)
                ),
            ));
        }
        if self.dedupe_horizon < Duration::from_secs(1) {
            return Err(err(
                "--dedupe-horizon",
                "TASKTIME_DEDUPE_HORIZON",
                format!(
                    "must be at least 1s, not {}",
                    humantime::format_duration(self.dedupe_horizon)
                ),
            ));
        }
        let highest_us = u64::try_from(self.histogram_highest.as_micros()).unwrap_or(u64::MAX);
        let histogram = HistogramConfig::new(highest_us, self.histogram_digits)
            .map_err(|p| err("--histogram-digits/--histogram-highest", "TASKTIME_HISTOGRAM_DIGITS", p))?;
        if self.queue_capacity_events < self.limits.max_events_per_request {
            return Err(err(
                "--queue-capacity",
                "TASKTIME_QUEUE_CAPACITY",
                format!(
                    "{} events cannot hold one full request of {} events",
                    self.queue_capacity_events, self.limits.max_events_per_request
                ),
            ));
        }
        if self.max_round_events == 0 {
            return Err(err(
                "--max-round-events",
                "TASKTIME_MAX_ROUND_EVENTS",
                "must be at least 1".into(),
            ));
        }
        if self.commit_concurrency == 0 {
            return Err(err(
                "--commit-concurrency",
                "TASKTIME_COMMIT_CONCURRENCY",
                "must be at least 1".into(),
            ));
        }
        if self.stream_concurrency == 0 {
            return Err(err(
                "--stream-concurrency",
                "TASKTIME_STREAM_CONCURRENCY",
                "must be at least 1".into(),
            ));
        }
        let r = &self.retention;
        if r.minute_secs < 3600 || r.hour_secs < r.minute_secs || r.day_secs < r.hour_secs {
            return Err(err(
                "--retention-minute/--retention-hour/--retention-day",
                "TASKTIME_RETENTION_*",
                format!(
                    "retentions must grow with the resolution and minute retention be at least 1h (minute {}s, hour {}s, day {}s)",
                    r.minute_secs, r.hour_secs, r.day_secs
                ),
            ));
        }
        let histogram = Arc::new(histogram);
        let semantics = Arc::new(Semantics {
            abandon_after: micros(self.abandon_after),
            dedupe_horizon: micros(self.dedupe_horizon),
            retention: self.retention,
            histogram: Arc::clone(&histogram),
        });
        Ok(Derived {
            query: QuerySettings {
                retention: self.retention,
                abandon_after: micros(self.abandon_after),
                histogram,
            },
            semantics,
        })
    }

    /// How far in the past an event may be: the longest retention.
    pub fn max_event_age(&self) -> Micros {
        self.retention.day_secs.saturating_mul(crate::domain::MICROS_PER_SEC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn errors_name_the_flag_the_variable_and_the_value() {
        let config = Config {
            abandon_after: Duration::from_millis(10),
            ..Config::default()
        };
        let text = config.validate().unwrap_err().to_string();
        assert_eq!(
            text,
            "--abandon-after (env TASKTIME_ABANDON_AFTER): must be at least 1s, not 10ms"
        );
        let config = Config {
            histogram_digits: 4,
            ..Config::default()
        };
        assert!(config.validate().unwrap_err().to_string().contains("not 4"));
    }
}
