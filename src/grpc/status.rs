//! The one place that turns errors into `tonic::Status`: validation -> INVALID_ARGUMENT
//! with `BadRequest` field violations; retryable failures -> UNAVAILABLE (or
//! RESOURCE_EXHAUSTED when storage is full) with `RetryInfo`; anything else -> INTERNAL,
//! logged once with its cause.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::ingest::IngestError;
use crate::store::StoreError;

/// How long clients are told to wait after the queue was full.
const RETRY_QUEUE_FULL: Duration = Duration::from_millis(50);
/// How long clients are told to wait after a store outage.
const RETRY_STORE_DOWN: Duration = Duration::from_millis(500);

/// A field that was wrong, for `BadRequest`.
#[derive(Debug, Clone)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

/// INVALID_ARGUMENT listing every violation.
pub fn invalid_argument(violations: Vec<Violation>) -> Status {
    let message = violations
        .iter()
        .map(|v| v.description.clone())
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::new();
    for v in violations {
        details.add_bad_request_violation(v.field, v.description);
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

fn retryable(code: Code, message: String, after: Duration) -> Status {
    Status::with_error_details(code, message, ErrorDetails::with_retry_info(Some(after)))
}

/// Maps a store error.
pub fn from_store(e: &StoreError) -> Status {
    match e {
        StoreError::Unavailable(_) | StoreError::Contention => {
            retryable(Code::Unavailable, e.to_string(), RETRY_STORE_DOWN)
        }
        StoreError::Full(_) => retryable(Code::ResourceExhausted, e.to_string(), RETRY_STORE_DOWN),
        StoreError::Internal(_) => {
            tracing::error!(error = %e, "internal store error");
            Status::internal(e.to_string())
        }
    }
}

/// Maps an ingest error.
pub fn from_ingest(e: &IngestError) -> Status {
    match e {
        IngestError::QueueFull { .. } => retryable(Code::Unavailable, e.to_string(), RETRY_QUEUE_FULL),
        IngestError::ShuttingDown | IngestError::Timeout(_) => {
            retryable(Code::Unavailable, e.to_string(), RETRY_STORE_DOWN)
        }
        IngestError::BatchTooLarge { .. } => invalid_argument(vec![Violation {
            field: "events".into(),
            description: e.to_string(),
        }]),
        IngestError::Store(s) => from_store(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_outage_is_unavailable_with_retry_info() {
        let status = from_store(&StoreError::Unavailable("connection refused".into()));
        assert_eq!(status.code(), Code::Unavailable);
        let info = status.get_details_retry_info().expect("RetryInfo attached");
        assert_eq!(info.retry_delay, Some(RETRY_STORE_DOWN));
    }

    #[test]
    fn full_storage_says_so() {
        let status = from_store(&StoreError::Full("OOM".into()));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().starts_with("storage is full"));
    }

    #[test]
    fn invalid_argument_lists_every_violation() {
        let status = invalid_argument(vec![
            Violation {
                field: "a".into(),
                description: "a is bad".into(),
            },
            Violation {
                field: "b".into(),
                description: "b is bad".into(),
            },
        ]);
        let br = status.get_details_bad_request().expect("BadRequest attached");
        assert_eq!(br.field_violations.len(), 2);
        assert_eq!(status.message(), "a is bad; b is bad");
    }
}
