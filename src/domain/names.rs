//! Names that come from clients: tenants, task names and instance ids.

use std::borrow::Cow;
use std::sync::Arc;

use super::error::{DomainError, quote};

const TASK_RULE: &str = "a task name is 1 to 128 characters of [a-z0-9._-], starting with a letter or digit";

/// One customer of tasktime. `default` while auth is off (a constant: every event
/// carries its tenant, and this one costs nothing to make or copy).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(Cow<'static, str>);

impl Tenant {
    /// The tenant of every request while tasktime runs without auth.
    pub fn default_tenant() -> Self {
        Tenant(Cow::Borrowed("default"))
    }

    /// The tenant's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A named customer task, `[a-z0-9][a-z0-9._-]{0,127}`. Shared: the events of a
/// request that name the same task share one (see `grpc::convert::RequestCache`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskName(Arc<str>);

impl TaskName {
    /// Longest task name, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Validates a task name; `field` is how the error names it (`events[3].task`).
    ///
    /// # Errors
    /// When the name is empty, too long or has characters outside `[a-z0-9._-]`.
    pub fn parse(field: &str, value: String) -> Result<Self, DomainError> {
        if value.is_empty() {
            return Err(DomainError::Empty {
                field: field.to_owned(),
                what: "every event names its task, e.g. \"checkout\"",
            });
        }
        if value.len() > Self::MAX_LEN {
            return Err(DomainError::TooLong {
                field: field.to_owned(),
                len: value.len(),
                limit: Self::MAX_LEN,
            });
        }
        let bytes = value.as_bytes();
        let first_ok = bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit();
        let rest_ok = bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
        if !first_ok || !rest_ok {
            return Err(DomainError::BadFormat {
                field: field.to_owned(),
                value: quote(&value),
                rule: TASK_RULE,
            });
        }
        Ok(TaskName(value.into()))
    }

    /// The task's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TaskName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One run of a task by one customer, chosen by the client: 1 to 128 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(String);

impl InstanceId {
    /// Longest instance id, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Validates an instance id.
    ///
    /// # Errors
    /// When it is empty or longer than [`Self::MAX_LEN`] bytes.
    pub fn parse(field: &str, value: String) -> Result<Self, DomainError> {
        if value.is_empty() {
            return Err(DomainError::Missing {
                field: field.to_owned(),
                what: "start, finish and completed events name their run with an instance_id (a UUID is typical)",
            });
        }
        if value.len() > Self::MAX_LEN {
            return Err(DomainError::TooLong {
                field: field.to_owned(),
                len: value.len(),
                limit: Self::MAX_LEN,
            });
        }
        Ok(InstanceId(value))
    }

    /// The id as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_follow_the_documented_pattern() {
        for ok in ["checkout", "0day", "reset-password", "file.claim_v2"] {
            assert!(TaskName::parse("task", ok.into()).is_ok(), "{ok}");
        }
        for bad in ["Checkout", "-x", ".x", "check out", "kassa✓", ""] {
            assert!(TaskName::parse("task", bad.into()).is_err(), "{bad}");
        }
        assert!(TaskName::parse("task", "a".repeat(128)).is_ok());
        let err = TaskName::parse("events[2].task", "a".repeat(129)).unwrap_err();
        assert_eq!(err.to_string(), "events[2].task is 129 bytes; the limit is 128");
    }

    #[test]
    fn a_bad_task_name_error_names_the_field_and_the_value() {
        let err = TaskName::parse("events[0].task", "Check Out".into()).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("events[0].task `Check Out` is not valid"), "{text}");
    }

    #[test]
    fn instance_ids_must_be_present_and_short() {
        assert!(InstanceId::parse("id", "x".into()).is_ok());
        assert!(
            InstanceId::parse("id", String::new())
                .unwrap_err()
                .to_string()
                .contains("is missing")
        );
        assert!(InstanceId::parse("id", "x".repeat(129)).is_err());
    }
}
