//! Why a check could not run (a check that runs and finds a difference is not an
//! error: its report says so).

use std::path::PathBuf;
use thiserror::Error;

/// Why a check could not run.
#[derive(Debug, Error)]
pub enum VerifyError {
    /// A file could not be read or written.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line of a rows file is not a JSON object.
    #[error("{path} line {line}: not a JSON object")]
    NotJson {
        /// The file.
        path: PathBuf,
        /// Its line, from 1.
        line: usize,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The events file holds no events.
    #[error("{0} holds no events")]
    NoEvents(PathBuf),
    /// The events are not clean input for the plugin: a check compares clean events.
    #[error(
        "{path} is not clean input for {plugin}; skew-check compares clean events \
         (use `lockstep batch run --rejects` to separate bad records)"
    )]
    NotClean {
        /// The events file.
        path: PathBuf,
        /// The plugin, `name@version`.
        plugin: String,
        /// What is wrong with it.
        #[source]
        source: lockstep_core::DecodeError,
    },
    /// The two builds compared do not emit the same features.
    #[error("{0} and {1} do not emit the same features; nothing to compare")]
    DifferentFeatures(PathBuf, PathBuf),
    /// The manifest lacks a field the check needs.
    #[error("the manifest of {plugin} has no {what} field")]
    Manifest {
        /// The plugin.
        plugin: String,
        /// Which field.
        what: &'static str,
    },
    /// The stream host could not read a record.
    #[error("the stream host dead-lettered {count} records, e.g. {first}")]
    DeadLetters {
        /// How many.
        count: u64,
        /// The first, as logged.
        first: String,
    },
    /// The in-process stream host failed.
    #[error(transparent)]
    Stream(#[from] lockstep_stream::StreamError),
    /// Kinesis failed.
    #[error("Kinesis stream {stream} at {endpoint}: {action}")]
    Kinesis {
        /// The stream.
        stream: String,
        /// The endpoint.
        endpoint: String,
        /// What failed.
        action: &'static str,
        /// Why (boxed: the SDK's errors are large).
        #[source]
        source: Box<lockstep_kinesis::KinesisError>,
    },
    /// The stream service failed.
    #[error("the stream host on Kinesis stream {stream}")]
    Service {
        /// The stream.
        stream: String,
        /// Why.
        #[source]
        source: lockstep_service::ServiceError,
    },
    /// The scratch online store could not be opened.
    #[error(transparent)]
    Online(#[from] lockstep_online::OnlineError),
    /// The batch side's backfill failed.
    #[error(transparent)]
    Backfill(#[from] lockstep_backfill::BackfillError),
    /// The batch side's offline store failed.
    #[error(transparent)]
    Offline(#[from] lockstep_offline::OfflineError),
    /// No golden sets where they were looked for.
    #[error("{0} holds no golden sets (directories with events.jsonl)")]
    NoGoldenSets(PathBuf),
    /// A golden set's plugin crate is missing.
    #[error("golden set `{name}` has no plugin crate at {dir}")]
    NoPluginCrate {
        /// The set.
        name: String,
        /// Where its crate was looked for.
        dir: PathBuf,
    },
    /// A golden set has no expected rows yet.
    #[error("golden set `{0}` has no expected.jsonl; make it with `lockstep golden update {0}`")]
    NoExpectedRows(String),
    /// A plugin crate could not be built.
    #[error("building plugin {name}")]
    Build {
        /// The plugin.
        name: String,
        /// Why.
        #[source]
        source: lockstep_build::BuildError,
    },
    /// A component could not be loaded.
    #[error(transparent)]
    Load(#[from] lockstep_runtime::LoadError),
    /// The batch host's rows depend on how many partitions ran it: no golden rows are
    /// written from it.
    #[error(
        "{name}: 1 and {partitions} partitions disagree, so no golden rows were written:\n{diff}"
    )]
    PartitionsDisagree {
        /// The set.
        name: String,
        /// The partition count that disagreed with one.
        partitions: usize,
        /// The difference, rendered.
        diff: String,
    },
}

/// Maps an I/O error on `path` to [`VerifyError::Io`].
pub(crate) fn io<'a>(
    action: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> VerifyError + 'a {
    move |source| VerifyError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}
