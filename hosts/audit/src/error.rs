//! Why writing or reading the audit log failed.

use thiserror::Error;

/// Why writing or reading the audit log failed. (A log that reads but does not verify
/// is not an error: see [`crate::Verification`].)
#[derive(Debug, Error)]
pub enum AuditError {
    /// The location is neither a directory nor an `s3://bucket/prefix` URL that can be
    /// reached.
    #[error("the audit log location {location}")]
    Location {
        /// The location as given.
        location: String,
        /// Why it cannot be used.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Reading, writing or listing an object of the log failed.
    #[error("{action} {location}")]
    Object {
        /// What was being done.
        action: &'static str,
        /// The object or prefix.
        location: String,
        /// Why.
        #[source]
        source: object_store::Error,
    },
    /// Other writers kept taking the next digest number.
    #[error(
        "appending a digest to {location}: other writers took the next number {attempts} \
         times in a row"
    )]
    Contended {
        /// The log.
        location: String,
        /// Attempts made.
        attempts: usize,
    },
    /// A signing key could not be read (the key itself is never part of the message).
    #[error("the audit signing key from {from}: {problem}")]
    Key {
        /// Where it was read from (a file name or an environment variable's name).
        from: String,
        /// What is wrong with it.
        problem: String,
    },
    /// An entry could not be encoded.
    #[error("encoding an audit entry")]
    Encode(#[source] serde_json::Error),
}

/// Maps an object-store error on `location` while doing `action`.
pub(crate) fn object(
    action: &'static str,
    location: impl Into<String>,
) -> impl FnOnce(object_store::Error) -> AuditError {
    let location = location.into();
    move |source| AuditError::Object {
        action,
        location,
        source,
    }
}
