//! Validated domain types. Once you hold a [`TaskName`] or a [`TaskEvent`], it is valid:
//! every check happens in a `parse` at the edge, with an error that names the bad value.

mod error;
mod event;
mod labels;
mod names;
mod selector;
mod time;

pub use error::{DomainError, quote};
pub use event::{EventKind, Limits, Outcome, TaskEvent};
pub use labels::{LabelFilter, Labels, MAX_LABEL_KEY_LEN, SeriesId};
pub use names::{InstanceId, TaskName, Tenant};
pub use selector::{DEFAULT_PERCENTILES, Selector, TimeRange};
pub use time::{MICROS_PER_SEC, Micros, now_micros};
