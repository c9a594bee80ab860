//! Selectors: which task, which series and which time range a query or gate arm reads.

use super::event::Outcome;
use super::labels::LabelFilter;
use super::names::{TaskName, Tenant};
use super::time::Micros;

/// Percentiles a query returns when it names none.
pub const DEFAULT_PERCENTILES: [f64; 4] = [50.0, 90.0, 95.0, 99.0];

/// A half-open time range `[from, to)` in µs since the epoch; `from < to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub from: Micros,
    pub to: Micros,
}

/// Task + label filter + time range + the outcome whose durations are wanted.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    pub tenant: Tenant,
    pub task: TaskName,
    pub filter: LabelFilter,
    pub range: TimeRange,
    pub outcome: Outcome,
    pub percentiles: Vec<f64>,
}
