//! The one error type of the domain layer; every message names the value that was wrong.

/// Why a value from outside was refused. The `Display` text is what the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{field} is empty; {what}")]
    Empty { field: String, what: &'static str },
    #[error("{field} `{value}` is not valid: {rule}")]
    BadFormat {
        field: String,
        value: String,
        rule: &'static str,
    },
    #[error("{field} is {len} bytes; the limit is {limit}")]
    TooLong { field: String, len: usize, limit: usize },
    #[error("{field} has {count} entries; the limit is {limit}")]
    TooMany { field: String, count: usize, limit: usize },
    #[error("{field} is missing: {what}")]
    Missing { field: String, what: &'static str },
    #[error("{field} {problem}")]
    OutOfRange { field: String, problem: String },
}

/// Shortens a client value for an error message, so a 1 MB label cannot fill the log.
pub fn quote(value: &str) -> String {
    const MAX: usize = 64;
    if value.len() <= MAX {
        return value.to_owned();
    }
    let mut end = MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end])
}
