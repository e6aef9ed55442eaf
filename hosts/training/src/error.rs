//! What can go wrong building a training set, each naming the thing that failed.

use std::path::PathBuf;
use thiserror::Error;

/// Why a training set could not be built.
#[derive(Debug, Error)]
pub enum TrainingError {
    /// The labels file is unusable as a whole (missing, unreadable, wrong columns).
    #[error("labels {path}: {message}")]
    Labels {
        /// The labels file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// One label row is unusable.
    #[error("labels {path}, row {row}: {message}")]
    LabelRow {
        /// The labels file.
        path: PathBuf,
        /// The row, counting from 1 in file order.
        row: u64,
        /// What is wrong.
        message: String,
    },
    /// A group, version or feature asked for does not exist.
    #[error("{0}")]
    Selection(String),
    /// A stored partition file is unusable.
    #[error("offline store {path}: {message}")]
    Partition {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The offline store failed.
    #[error(transparent)]
    Offline(#[from] lockstep_offline::OfflineError),
    /// The output could not be written.
    #[error("output {path}: {message}")]
    Output {
        /// The output file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The memory limit is too small for the sorts to work in, even spilling.
    #[error(
        "the memory limit is too small for this job: {0}; raise it (each sort of each partition needs room for a few batches)"
    )]
    MemoryLimit(String),
    /// The query engine failed (spill files, an internal error).
    #[error("query engine")]
    Engine(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The training set was used in a way it does not allow, or a plan broke an
    /// invariant of its own.
    #[error("{0}")]
    Misuse(&'static str),
}

impl From<datafusion::error::DataFusionError> for TrainingError {
    /// Our own errors travel through DataFusion boxed; take them out again so the
    /// caller sees the label row or file that failed, not an engine message.
    fn from(e: datafusion::error::DataFusionError) -> Self {
        match e {
            datafusion::error::DataFusionError::External(inner) => {
                match inner.downcast::<TrainingError>() {
                    Ok(ours) => *ours,
                    Err(other) => TrainingError::Engine(other),
                }
            }
            datafusion::error::DataFusionError::Context(_, inner) => (*inner).into(),
            datafusion::error::DataFusionError::Shared(shared) => {
                match std::sync::Arc::try_unwrap(shared) {
                    Ok(inner) => inner.into(),
                    Err(shared) => TrainingError::Engine(Box::new(shared)),
                }
            }
            datafusion::error::DataFusionError::ResourcesExhausted(message) => {
                TrainingError::MemoryLimit(message)
            }
            other => TrainingError::Engine(Box::new(other)),
        }
    }
}

impl From<arrow_schema::ArrowError> for TrainingError {
    fn from(e: arrow_schema::ArrowError) -> Self {
        TrainingError::Engine(Box::new(e))
    }
}

/// Boxes one of ours for the trip through DataFusion.
pub(crate) fn external(e: TrainingError) -> datafusion::error::DataFusionError {
    datafusion::error::DataFusionError::External(Box::new(e))
}
