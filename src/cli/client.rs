//! What the client commands share: connecting, retrying retryable failures, and
//! reading times from flags.

use std::time::Duration;

use anyhow::Context as _;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt as _;

use crate::domain::{MICROS_PER_SEC, Micros, now_micros};

/// Connects to a tasktime server.
///
/// # Errors
/// When the address is not a URL or nothing answers there.
pub async fn connect(server: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(server.to_owned())
        .with_context(|| format!("--server `{server}` is not a URL like http://127.0.0.1:50051"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to the tasktime server at {server} (is `tasktime serve` running?)"))
}

/// Whether a status is worth retrying, and after how long (the server's RetryInfo when
/// it sent one).
pub fn retry_after(status: &tonic::Status, attempt: u32) -> Option<Duration> {
    if !matches!(
        status.code(),
        Code::Unavailable | Code::ResourceExhausted | Code::Aborted
    ) {
        return None;
    }
    let hinted = status.get_details_retry_info().and_then(|r| r.retry_delay);
    let backoff = Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6)));
    Some(hinted.unwrap_or(backoff).max(backoff / 2))
}

/// Parses a time flag: RFC 3339 (`2026-11-25T10:00:00Z`), `now`, or a duration ago (`2h`).
///
/// # Errors
/// When it is none of these.
pub fn parse_time(flag: &str, text: &str) -> anyhow::Result<Micros> {
    if text == "now" {
        return Ok(now_micros());
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        let since = t
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| anyhow::anyhow!("{flag} `{text}` is before 1970"))?;
        return Ok(i64::try_from(since.as_micros())?);
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(now_micros() - i64::try_from(ago.as_micros())?);
    }
    anyhow::bail!("{flag} `{text}` is not a time: use RFC 3339 (2026-11-25T10:00:00Z), `now`, or a duration ago (2h)")
}

/// Formats µs since the epoch as RFC 3339 (UTC, seconds).
pub fn fmt_time(at: Micros) -> String {
    match u64::try_from(at.div_euclid(MICROS_PER_SEC)) {
        Ok(s) => humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(s)).to_string(),
        Err(_) => format!("{at} µs"),
    }
}
