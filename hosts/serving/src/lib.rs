//! The online serving path: features for the inference request path within a few
//! milliseconds, degraded rather than failed (DESIGN §6).
//!
//! [`FeatureServer::get`] reads one group's features for some entities:
//!
//! 1. **Cache first.** One Redis read for all entities (on a cluster, every key to its
//!    slot's node at once, gathered).
//! 2. **Misses fall back to the durable online store** (embedded or SageMaker
//!    BatchGetRecord) and the records found are written back to the cache, guarded by
//!    event time so a write-back never hides a newer row the stream host wrote.
//! 3. **A hard per-call timeout**, kept to tens of microseconds (a kernel timer, not
//!    tokio's millisecond wheel). What is not read when it runs out, or while a
//!    backend's circuit breaker is open, is served from the default-feature snapshot
//!    (manifest defaults, or a snapshot file) and the response is tagged `degraded`.
//!    A Redis outage thus trips straight to defaults: the store is not stampeded by
//!    every request the cache used to absorb.
//! 4. **No stampede.** A cache hit may refresh early, with probability rising as the
//!    entry nears its expiry (XFetch: `-δ·β·ln(U) ≥ time left`, δ the measured store
//!    fetch time), so entries written together do not expire together; and a key is
//!    fetched by one call at a time (single-flight): concurrent misses wait on that
//!    fetch, which runs to completion (and fills the cache) even if they time out.
//!
//! Every answer names, per entity, its source (cache, store, missing, default), the
//! plugin hash and the event time of the row served.
//!
//! [`http::router`] serves it as `POST /v1/features` (see `lockstep-client`), the
//! Feast feature server's `POST /get-online-features`, `/metrics` and `/healthz`.
//!
//! This crate reads; it never writes rows of its own, never runs plugins and never
//! decides which row is newer (the stores' event-time rules do).

pub mod access;
pub mod answer_queue;
mod breaker;
mod deadline;
pub mod feast;
mod group;
pub mod http;
mod metrics;
mod reader;

pub use breaker::{Breaker, BreakerConfig};
pub use group::ServedGroup;
pub use metrics::Metrics;
pub use reader::{FeatureServer, ServeConfig};

use thiserror::Error;

/// Why a request was refused or the server could not start.
#[derive(Debug, Error)]
pub enum ServeError {
    /// No such group (or version) is served.
    #[error("feature group `{group}` is not served{}", version.as_ref().map(|v| format!(" at version {v}")).unwrap_or_default())]
    UnknownGroup {
        /// The group asked for.
        group: String,
        /// The version asked for.
        version: Option<String>,
    },
    /// The group has no such feature.
    #[error("{group} has no feature `{feature}`")]
    UnknownFeature {
        /// `name@version`.
        group: String,
        /// The feature asked for.
        feature: String,
    },
    /// An entity key the group cannot have.
    #[error("{group}: entity `{entity}`: {why}")]
    BadEntity {
        /// `name@version`.
        group: String,
        /// The key (first 64 characters).
        entity: String,
        /// Why it is refused.
        why: String,
    },
    /// Too many entities in one request.
    #[error("{count} entities in one request; at most {max}")]
    TooMany {
        /// How many were asked for.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A request that is not well-formed.
    #[error("{0}")]
    BadRequest(String),
    /// A default snapshot that does not fit the groups.
    #[error("default snapshot: {0}")]
    Snapshot(String),
    /// Two served groups that cannot be told apart.
    #[error("{0}")]
    Config(String),
}
