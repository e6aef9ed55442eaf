use thiserror::Error;

/// A payload that does not follow the batch layout.
///
/// Either side returns it instead of panicking, whatever bytes it is handed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AbiError {
    /// The payload ended before the named part could be read.
    #[error("payload truncated while reading {0}")]
    Truncated(&'static str),
    /// The payload does not start with the expected magic bytes.
    #[error("payload is not a {expected} message")]
    BadMagic {
        /// The message kind that was expected.
        expected: &'static str,
    },
    /// A column carried a type tag this version does not know.
    #[error("unknown column type tag {0}")]
    UnknownType(u8),
    /// A column has a different type than the schema says.
    #[error("column {index} has type {found}, expected {expected}")]
    TypeMismatch {
        /// Position of the column in the payload.
        index: usize,
        /// Type the schema declares.
        expected: &'static str,
        /// Type found in the payload.
        found: &'static str,
    },
    /// String offsets are not monotonic, point past the data, or split a character.
    #[error("column {0}: invalid string offsets or UTF-8")]
    BadStrings(usize),
    /// The counts in a header disagree with each other.
    #[error("inconsistent counts: {0}")]
    Inconsistent(&'static str),
    /// There were bytes left after the message.
    #[error("{0} trailing bytes after message")]
    Trailing(usize),
}
