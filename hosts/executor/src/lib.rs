//! Runs a plugin over Arrow batches of events, carrying per-entity state: the one place
//! where the hosts call into the runtime. See the crate README for what it owns.

mod executor;

pub use executor::{Executor, FailedEvent, OrderedRun, RunOutput, RunStats};

use lockstep_core::CoreError;
use thiserror::Error;

/// A failure running a plugin over a batch.
#[derive(Debug, Error)]
pub enum ExecError {
    /// Decoding, ordering or converting the batch failed.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// An Arrow operation failed.
    #[error(transparent)]
    Arrow(#[from] arrow_schema::ArrowError),
    /// The plugin call failed.
    #[error(transparent)]
    Call(#[from] lockstep_runtime::CallError),
    /// The plugin returned or was sent a payload that breaks the batch layout.
    #[error("plugin `{plugin}`: {message}")]
    Protocol {
        /// Group name.
        plugin: String,
        /// What is inconsistent.
        message: String,
    },
    /// Input that cannot be processed (schema mismatch, null key, unsorted batches).
    #[error("{0}")]
    Input(String),
    /// The plugin failed taking an entity's wake-ups after its events: no event to
    /// skip, so the run stops (a plugin bug; every host stops on it alike).
    #[error("plugin `{plugin}` failed waking entity `{key}`: {message}")]
    Wake {
        /// Group name.
        plugin: String,
        /// The entity.
        key: String,
        /// The plugin's error.
        message: String,
    },
}
