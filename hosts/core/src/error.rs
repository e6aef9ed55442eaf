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
    #[error(transparent)]
    Arrow(#[from] arrow_schema::ArrowError),
    /// Input that cannot be processed (schema mismatch, null key...).
    #[error("{0}")]
    Input(String),
}

/// Shows an error with its causes, `outer: inner: innermost`, each said once: for
/// logs and messages that have only a `Display` to show. Errors name what failed in
/// their own message and leave the cause to [`std::error::Error::source`]; this is
/// how both reach a reader.
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut said: Vec<String> = Vec::new();
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(self.0);
        while let Some(e) = next {
            let text = e.to_string();
            // A wrapper that repeats its cause's text adds nothing: said once.
            if !text.is_empty() && !said.iter().any(|s| s.contains(&text)) {
                said.push(text);
            }
            next = e.source();
        }
        f.write_str(&said.join(": "))
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorChain;

    #[derive(Debug, thiserror::Error)]
    #[error("writing {0}")]
    struct Writing(&'static str, #[source] std::io::Error);

    #[test]
    fn a_chain_says_every_cause_once() {
        let e = Writing(
            "/data/x",
            std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device"),
        );
        assert_eq!(
            ErrorChain(&e).to_string(),
            "writing /data/x: No space left on device"
        );
    }
}
