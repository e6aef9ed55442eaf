use std::path::{Path, PathBuf};
use thiserror::Error;

/// A failure of the offline store, naming the file or group concerned.
#[derive(Debug, Error)]
pub enum OfflineError {
    /// The group version is a table with a log (Delta Lake) and the store was opened
    /// without a reader for it.
    #[error(
        "{group}@{version} is kept as a Delta table (batch run --table-format delta) and this \
         store was opened without a Delta reader: read it through Lockstep's CLI, or with a \
         Delta reader (the deltalake package, Spark, DuckDB's delta extension)"
    )]
    DeltaTable {
        /// The group.
        group: String,
        /// The version.
        version: String,
    },
    /// A table version was asked of a plain-layout group version, which has none.
    #[error(
        "{group}@{version} is kept in the plain layout, which has no table versions to \
         travel to; only a Delta table (batch run --table-format delta) keeps them"
    )]
    NoTableVersions {
        /// The group.
        group: String,
        /// The version.
        version: String,
    },
    /// The table's log could not be read.
    #[error("{format} table {group}@{version} at {location}")]
    Table {
        /// The table format.
        format: &'static str,
        /// The group.
        group: String,
        /// The version.
        version: String,
        /// The table's folder.
        location: String,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Another job is writing the group version.
    #[error(
        "{group}@{version} is being written by another job: {holder}. Wait for it to \
         finish (a killed job's lock is taken over once its process is gone, or after \
         10 minutes without renewal)"
    )]
    Locked {
        /// The group.
        group: String,
        /// The version.
        version: String,
        /// Who holds the lock.
        holder: String,
    },
    /// A file or directory operation failed.
    #[error("offline store: {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A group version is registered with another plugin.
    #[error(
        "feature group {group}@{version} is registered with plugin {registered}, but this plugin is {offered}: \
         a group version is bound to one transformation; bump the version in the plugin's manifest to write a new one"
    )]
    HashMismatch {
        /// Group name.
        group: String,
        /// Group version.
        version: String,
        /// Hash on record.
        registered: String,
        /// Hash offered.
        offered: String,
    },
    /// The group version's objects are encrypted under one KMS key (or none), and a
    /// writer offered another: a version's history must not be part one key, part
    /// another, part plain.
    #[error(
        "feature group {group}@{version} is registered with {}, but this job writes with {}: \
         pass the registered key (--kms-key-id), or write a new version to change keys",
        key_text(registered),
        key_text(offered)
    )]
    KmsKeyMismatch {
        /// Group name.
        group: String,
        /// Group version.
        version: String,
        /// The key on record (`None`: objects are not KMS-encrypted).
        registered: Option<String>,
        /// The key offered.
        offered: Option<String>,
    },
    /// The group version has not been registered.
    #[error("feature group {group}@{version} is not in the offline store at {root}")]
    UnknownVersion {
        /// Group name.
        group: String,
        /// Group version.
        version: String,
        /// Store root.
        root: PathBuf,
    },
    /// Rows do not have the group's row schema.
    #[error("rows for {group} do not match its schema: {message}")]
    Schema {
        /// Group name.
        group: String,
        /// What differs.
        message: String,
    },
    /// A registry entry could not be read or written.
    #[error("registry entry {path}: {message}")]
    Registry {
        /// The entry.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Parquet encoding or decoding failed.
    #[error("parquet {path}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The error.
        source: parquet::errors::ParquetError,
    },
    /// An object-store (S3) operation failed.
    #[error("offline store: {action} {location}: {message}")]
    Object {
        /// What was being done.
        action: &'static str,
        /// The object or prefix.
        location: String,
        /// The store's error.
        message: String,
    },
    /// An Arrow operation failed.
    #[error(transparent)]
    Arrow(#[from] arrow_schema::ArrowError),
}

/// Maps an I/O error to [`OfflineError::Io`] naming `action` and `path`.
pub(crate) fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> OfflineError + 'a {
    move |source| OfflineError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A temporary file name no other writer, in this process or another, is using.
pub(crate) fn unique_tmp_name(stem: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        ".tmp-{stem}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn key_text(key: &Option<String>) -> String {
    match key {
        Some(key) => format!("KMS key `{key}`"),
        None => "no KMS key".into(),
    }
}
