//! The stream host as a durable service: every shard of a Kinesis stream, read in
//! lineage order, through the plugin (`lockstep-stream`), into an online store, with
//! checkpoints, logs, metrics and a graceful stop.
//!
//! ```text
//! Kinesis ──LineageReader──▶ ShardedProcessor ──rows──▶ online store (durable) ──▶ cache
//!                                  │                  └──▶ row log
//!                                  ├── late events ─────▶ late log
//!                                  └── dead letters ────▶ dead-letter log
//!            then, per round: checkpoint (entity states + shard positions + log lengths)
//! ```
//!
//! Each round applies the records it read (once, at its end), writes its outputs, and
//! commits one checkpoint naming the shard positions that produced them: the
//! checkpoint's transaction is filled while the outputs are written and committed
//! only after they are durable. Outputs are idempotent (the online store keeps the
//! latest event time; logs are cut back to their committed length at start), so a
//! crash at any point loses nothing and applies nothing twice.
//!
//! This crate owns the service loop, the checkpoint store and the service's HTTP
//! surface (`/healthz`, `/metrics`). It never decides ordering (`lockstep-stream`
//! does) and never speaks a store's protocol (the store crates do).

mod allocator;
pub mod checkpoint;
mod erasure;
mod http;
pub mod logs;
pub mod metrics;
mod run;
pub mod source;

pub use allocator::tune_allocator;
pub use checkpoint::{CheckpointStore, GroupBinding, LogLengths};
pub use erasure::ErasureWatch;
pub use run::{
    CommitHook, Committed, GroupLane, GroupSummary, ServiceConfig, StreamService, Summary, Timings,
};
pub use source::{KinesisSource, MemorySource, Resume, Source};

use std::path::PathBuf;
use thiserror::Error;

/// Why the stream service stopped with an error.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// The checkpoint store failed.
    #[error("checkpoint store {path}: {message}")]
    Checkpoint {
        /// Its file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Logs of an earlier run lie beside a checkpoint file that was never written
    /// (lost, emptied or replaced): starting would cut them back to nothing.
    #[error(
        "checkpoint store {path} holds no checkpoint, but {logs} hold output of an earlier \
         run: the checkpoint was lost or damaged. Restore it, or pass --fresh to read the \
         stream from its beginning (the old logs are kept, renamed *.before-fresh)"
    )]
    MissingCheckpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// The logs found, with their sizes.
        logs: String,
    },
    /// The state belongs to another component.
    #[error(
        "the state in {path} was built by plugin {registered}; this is plugin {offered}. \
         Its entity states mean nothing to another plugin: use a new --state directory \
         (and a new group version) for the new plugin"
    )]
    OtherPlugin {
        /// The checkpoint file.
        path: PathBuf,
        /// The hash it was built by.
        registered: String,
        /// The hash of the component offered.
        offered: String,
    },
    /// A log could not be written or reopened.
    #[error("log {path}: {message}")]
    Log {
        /// Its file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Kinesis failed beyond retrying.
    #[error(transparent)]
    Kinesis(#[from] lockstep_kinesis::KinesisError),
    /// The plugin or the ordering core failed.
    #[error(transparent)]
    Stream(#[from] lockstep_stream::StreamError),
    /// The online store refused the rows (not a transient failure).
    #[error(transparent)]
    Online(#[from] lockstep_online::OnlineError),
    /// The service could not start, or one of its threads stopped (the message says
    /// which).
    #[error("{0}")]
    Start(String),
    /// The `/healthz` and `/metrics` listener could not be opened.
    #[error("cannot listen on {address}")]
    Listen {
        /// The address asked for.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The cache could not be reached at start.
    #[error("connecting to the cache")]
    Cache(#[source] lockstep_cache::CacheError),
    /// The erasure ledger could not be read at start: running without it could apply
    /// an erased entity's events again.
    #[error("reading the erasure ledger")]
    Erasures(#[source] Box<lockstep_erasure::ErasureError>),
}
