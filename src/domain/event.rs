//! Task events: what happened to one instance of a task, validated.

use super::labels::Labels;
use super::names::{InstanceId, TaskName, Tenant};
use super::time::Micros;

/// How a finished instance ended. `Abandoned` is derived, never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
}

impl Outcome {
    /// Every outcome a client can send.
    pub const ALL: [Outcome; 3] = [Outcome::Succeeded, Outcome::Failed, Outcome::Cancelled];

    /// One-letter code used in storage keys and records.
    pub fn code(self) -> &'static str {
        match self {
            Outcome::Succeeded => "s",
            Outcome::Failed => "f",
            Outcome::Cancelled => "c",
        }
    }

    /// Inverse of [`Self::code`].
    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "s" => Some(Outcome::Succeeded),
            "f" => Some(Outcome::Failed),
            "c" => Some(Outcome::Cancelled),
            _ => None,
        }
    }

    /// Lowercase name for humans.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// What the event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The customer began the task.
    Start,
    /// The customer finished the task; the duration is this event's time minus the start's.
    Finish(Outcome),
    /// A whole run timed by the client: started at `at - duration`, finished at `at`.
    Completed { duration: Micros, outcome: Outcome },
}

/// One validated event. `at` is resolved (receive time when the client sent none), within
/// the skew limit, and a completed event's duration is non-negative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEvent {
    pub tenant: Tenant,
    pub task: TaskName,
    pub instance_id: InstanceId,
    pub at: Micros,
    /// The instance's labels; empty on a finish (the start's labels name the series).
    pub labels: Labels,
    pub kind: EventKind,
}

/// Input limits; configurable on the server, defaults from DESIGN.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_labels: usize,
    pub max_label_value_bytes: usize,
    pub max_events_per_request: usize,
    /// How far in the future an event's `at` may be, in µs.
    pub max_future_skew: Micros,
}

impl Limits {
    pub const DEFAULT_MAX_LABELS: usize = 16;
    pub const DEFAULT_MAX_LABEL_VALUE_BYTES: usize = 128;
    pub const DEFAULT_MAX_EVENTS_PER_REQUEST: usize = 10_000;
    pub const DEFAULT_MAX_FUTURE_SKEW: Micros = 5 * 60 * super::time::MICROS_PER_SEC;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_labels: Self::DEFAULT_MAX_LABELS,
            max_label_value_bytes: Self::DEFAULT_MAX_LABEL_VALUE_BYTES,
            max_events_per_request: Self::DEFAULT_MAX_EVENTS_PER_REQUEST,
            max_future_skew: Self::DEFAULT_MAX_FUTURE_SKEW,
        }
    }
}
