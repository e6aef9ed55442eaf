use thiserror::Error;

/// A record that cannot be decoded into the plugin's input schema.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("line {line}{}: {message}", .field.as_ref().map(|f| format!(", field `{f}`")).unwrap_or_default())]
pub struct DecodeError {
    /// 1-based line (or record) number in the source.
    pub line: u64,
    /// The field at fault, when one is.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// A failure in the shared host path.
#[derive(Debug, Error)]
pub enum CoreError {
    /// A record could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// An Arrow operation failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// Input that cannot be processed (schema mismatch, null key...).
    #[error("{0}")]
    Input(String),
}
