//! Time as signed microseconds since the Unix epoch: the unit of every duration and
//! timestamp in the core, so bucket and bin arithmetic is plain integer arithmetic.

/// Microseconds since the Unix epoch (or a duration in microseconds).
pub type Micros = i64;

/// Microseconds in a second.
pub const MICROS_PER_SEC: Micros = 1_000_000;

/// The current wall-clock time in microseconds since the epoch.
pub fn now_micros() -> Micros {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}
