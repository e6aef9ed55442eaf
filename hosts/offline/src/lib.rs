//! The Lockstep offline store.
//!
//! # Layout
//!
//! ```text
//! <root>/<group>/_lockstep/versions/<version>.json           registry entry (immutable)
//! <root>/<group>/version=<version>/year=YYYY/month=MM/day=DD/hour=HH/part-0.parquet
//! ```
//!
//! Partitions follow the SageMaker Feature Store offline store (`year/month/day/hour` of
//! the row's event time, UTC), under a Hive-style `version=` level so that two versions
//! of a group never mix and readers (DuckDB, pyarrow, Spark, Athena) can filter on it.
//! Each row carries the plugin's features plus `event_time`, `write_time`,
//! `api_invocation_time`, `is_deleted` and `plugin_hash` (lineage). Files are
//! Snappy-compressed Parquet (what Spark, Glue and DuckDB write by default) in row
//! groups of 128k rows.
//!
//! # Commit protocol
//!
//! A job streams its rows through an [`OfflineWriter`], which buffers them per hour and
//! stages what outgrows its memory budget in a private directory outside the store. At
//! commit, an hour partition becomes exactly one file, staged under a dot-prefixed
//! temporary name (which every Parquet reader ignores), made durable with the others by
//! one file-system sync, and renamed into place, so a reader sees the old file or the
//! new one, never part of one. A job replaces every hour it writes and leaves every
//! other hour alone — Spark's *dynamic partition overwrite*: re-running a job gives the
//! same partitions without duplicates. A backfill must therefore be given whole hours.
//! In the plain layout one job writes a version at a time and its renames are
//! journaled, so a killed commit is completed by the next writer ([`journal`]); a table
//! format ([`TableLog`], Delta Lake) commits the whole job at once instead.
//!
//! # Registry
//!
//! A group version (`name`, semantic `version`) is bound to one plugin hash when it is
//! first written, with create-if-absent semantics. Writing another plugin's rows into it
//! is refused: change the transform, bump the version. This is how the store enforces
//! that every row of a version came from the same transformation.

mod backend;
pub mod erase;
mod error;
pub mod journal;
pub mod layout;
mod part;
mod registry;
pub mod snapshot;
mod store;
pub mod table;
pub mod writer;

pub use backend::{S3Options, parse_s3_url, s3_object_store};
pub use erase::EraseSummary;
pub use error::OfflineError;
pub use part::{STORE_COLUMNS, WriteSummary, WrittenPart};
pub use registry::GroupVersion;
pub use store::{OfflineStore, StoredFiles};
pub use table::{TableLog, TableSnapshot};
pub use writer::{OfflineWriter, WriterOptions};
