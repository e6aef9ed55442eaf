//! The backfill sequence: prepare (bind, check the layout, lock), run the batch host,
//! apply the rejects policy, commit. See the crate's README.
//!
//! ```text
//! Backfill::prepare ──▶ Prepared::run ──▶ Ran::commit ──▶ Report
//!   binding, layout,      batch host,       hour files,
//!   lock + recovery       rejects policy    Delta commit
//! ```
//!
//! Between [`Prepared::run`] and [`Ran::commit`] the caller sees the rejects
//! ([`Ran::output`]) and can keep them somewhere before anything is visible.

use futures::FutureExt;
use lockstep_batch::{BatchError, BatchJob, BatchOutput, TimeWindow};
use lockstep_offline::journal::{Recovered, WriteLock};
use lockstep_offline::layout::Hour;
use lockstep_offline::{
    GroupVersion, OfflineError, OfflineStore, OfflineWriter, WriteSummary, WriterOptions,
};
use lockstep_runtime::Plugin;
use std::sync::Arc;
use thiserror::Error;

/// How a group version is kept in the offline store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    /// One Parquet file per hour partition, each replaced atomically; one writer per
    /// version at a time, its commit journaled.
    Plain,
    /// A Delta Lake table: the whole backfill is one commit.
    Delta,
}

impl TableFormat {
    /// Its name, as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            TableFormat::Plain => "plain",
            TableFormat::Delta => "delta",
        }
    }
}

/// How a backfill runs, beyond the batch job itself.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// How the group version is kept.
    pub table_format: TableFormat,
    /// How the job describes itself to a second writer its lock refuses.
    pub job_name: String,
    /// Rows awaiting commit are held in memory up to this many bytes, then staged on
    /// disk.
    pub buffer_bytes: usize,
    /// How Delta tables under the store are reached (S3 settings; empty locally).
    pub delta: lockstep_delta::StorageOptions,
    /// Write the rows of every good event and leave the rejects (and the events the
    /// plugin failed on) to the caller. Without it, any of them fails the job and
    /// nothing is written.
    pub keep_rejects: bool,
    /// The erasure ledger the job honours: events of an entity erased from the group
    /// at or before its erasure time are dropped (counted in
    /// [`BatchOutput::erased`]), so a re-run over the raw source never brings an
    /// erased entity back. `None`: nothing is erased (a store without a ledger).
    pub ledger: Option<Arc<lockstep_erasure::Ledger>>,
}

impl BackfillOptions {
    /// Options for a backfill in `table_format`, described as `job_name`: rejects
    /// fail the job, rows are buffered up to 256 MiB.
    pub fn new(table_format: TableFormat, job_name: impl Into<String>) -> Self {
        BackfillOptions {
            table_format,
            job_name: job_name.into(),
            buffer_bytes: WriterOptions::default().buffer_bytes,
            delta: Default::default(),
            keep_rejects: false,
            ledger: None,
        }
    }
}

/// Why a backfill failed. Nothing it wrote is visible, unless the variant says
/// otherwise.
#[derive(Debug, Error)]
pub enum BackfillError {
    /// A plain-layout backfill into a version kept as a Delta table.
    #[error(
        "{group}@{version} is kept as a Delta table: write it with --table-format delta, or \
         bump the version in the plugin's manifest to start a plain-layout version"
    )]
    KeptAsDelta {
        /// The group.
        group: String,
        /// Its version.
        version: String,
    },
    /// A Delta backfill into a version that holds plain-layout hours.
    #[error(
        "{group}@{version} already holds plain-layout hours: write it with --table-format \
         plain, or bump the version in the plugin's manifest to start a Delta table"
    )]
    KeptPlain {
        /// The group.
        group: String,
        /// Its version.
        version: String,
    },
    /// Source rows could not be read, or the plugin failed on events, and the caller
    /// did not ask to keep them.
    #[error(
        "{} source rows could not be read{}, e.g. {example}; nothing was written",
        rejects,
        if *plugin_failures > 0 { format!(" and the plugin failed on {plugin_failures} events") } else { String::new() }
    )]
    Rejected {
        /// Source rows refused.
        rejects: usize,
        /// Events the plugin failed on.
        plugin_failures: usize,
        /// The first of them: where and why.
        example: String,
    },
    /// The plugin failed on events (and no source row was refused), and the caller did
    /// not ask to keep them.
    #[error("the plugin failed on {plugin_failures} events, e.g. {example}; nothing was written")]
    PluginFailed {
        /// Events the plugin failed on.
        plugin_failures: usize,
        /// The first: its entity and the plugin's message.
        example: String,
    },
    /// A window of history whose ends are not on the hour: its edge hours would be
    /// replaced by part of their rows.
    #[error(
        "the window's {end} {at} is not on the hour: a backfill over a window replaces \
         whole hour partitions, so both ends must be on the hour (e.g. {floor})"
    )]
    WindowNotOnTheHour {
        /// `--from` or `--to`.
        end: &'static str,
        /// The instant given (RFC 3339).
        at: String,
        /// Its hour's start (RFC 3339).
        floor: String,
    },
    /// A window whose start is not before its end.
    #[error("the window [{from}, {to}) is empty: its start must be before its end")]
    EmptyWindow {
        /// Its start (RFC 3339).
        from: String,
        /// Its end (RFC 3339).
        to: String,
    },
    /// A library reading the source panicked (damaged input, most likely).
    #[error(
        "reading the source failed inside a library ({0}); the input is probably damaged. \
         Nothing was written"
    )]
    Panicked(String),
    /// The batch host failed.
    #[error(transparent)]
    Batch(BatchError),
    /// The erasure ledger could not be read: running without it could bring an erased
    /// entity back. Nothing was written.
    #[error("reading the erasure ledger; nothing was written")]
    Erasures(#[source] lockstep_erasure::ErasureError),
    /// The offline store failed.
    #[error(transparent)]
    Offline(#[from] OfflineError),
    /// The Delta table could not be read or committed to.
    #[error("the Delta table {action}")]
    Delta {
        /// What failed: "could not be read", "commit failed".
        action: &'static str,
        /// Why.
        #[source]
        source: lockstep_delta::DeltaError,
    },
}

/// The start of a backfill.
#[derive(Debug)]
pub struct Backfill;

impl Backfill {
    /// Checks that `plugin` may write its group version into `store` in the layout
    /// `options` asks for, and takes what the layout needs to write it: the plain
    /// layout's lock (completing or clearing what a killed job left), or a Delta
    /// table's current version. `now` (UTC µs) stamps the rows' write time.
    pub async fn prepare<'a>(
        store: &'a OfflineStore,
        plugin: &'a Plugin,
        options: BackfillOptions,
        now: i64,
    ) -> Result<Prepared<'a>, BackfillError> {
        let group = store
            .check_binding(plugin.manifest(), plugin.hash(), now)
            .await?;
        // A version is kept in one layout: the other's files would be invisible to
        // its readers (a Delta log lists no plain files; plain readers refuse a table).
        let is_table = store.holds_delta_table(&group.name, &group.version).await?;
        match options.table_format {
            TableFormat::Plain if is_table => {
                return Err(BackfillError::KeptAsDelta {
                    group: group.name,
                    version: group.version,
                });
            }
            TableFormat::Delta
                if !is_table
                    && !store
                        .partition_files(&group.name, &group.version)
                        .await?
                        .is_empty() =>
            {
                return Err(BackfillError::KeptPlain {
                    group: group.name,
                    version: group.version,
                });
            }
            _ => {}
        }
        let (lock, recovered, commit) = match options.table_format {
            TableFormat::Plain => {
                let (lock, recovered) = store.lock(&group, &options.job_name).await?;
                (Some(lock), recovered, Commit::Plain)
            }
            TableFormat::Delta => {
                let dir = lockstep_delta::table_dir(&store.root(), &group.name, &group.version);
                let backfill = lockstep_delta::Backfill::begin(&dir, &options.delta)
                    .await
                    .map_err(|source| BackfillError::Delta {
                        action: "could not be read",
                        source,
                    })?;
                // Each job's files have names of their own: the table keeps the files
                // a replacement removes for readers of older versions.
                let job_id = format!("{now:x}-{:x}", std::process::id());
                let commit = Commit::Delta {
                    backfill,
                    part_file: lockstep_delta::part_file_name(&job_id),
                };
                (None, Recovered::default(), commit)
            }
        };
        Ok(Prepared {
            store,
            plugin,
            group,
            lock,
            recovered,
            commit,
            options,
            now,
        })
    }
}

/// How the rows become visible.
enum Commit {
    /// The plain layout: the writer's commit is the job's.
    Plain,
    /// A Delta table, read as the job began.
    Delta {
        backfill: lockstep_delta::Backfill,
        part_file: String,
    },
}

/// A backfill ready to run: the version checked, its lock held (plain layout).
pub struct Prepared<'a> {
    store: &'a OfflineStore,
    plugin: &'a Plugin,
    group: GroupVersion,
    lock: Option<Arc<WriteLock>>,
    recovered: Recovered,
    commit: Commit,
    options: BackfillOptions,
    now: i64,
}

impl std::fmt::Debug for Prepared<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("group", &self.group.name)
            .field("version", &self.group.version)
            .field("table_format", &self.options.table_format)
            .field("locked", &self.lock.is_some())
            .finish()
    }
}

impl<'a> Prepared<'a> {
    /// The group version being written (bound to the plugin at commit).
    pub fn group(&self) -> &GroupVersion {
        &self.group
    }

    /// What a killed job had left, completed or cleared before this one starts.
    pub fn recovered(&self) -> &Recovered {
        &self.recovered
    }

    /// Runs the batch host over `job`'s source into the offline writer, then applies
    /// the rejects policy. Nothing is visible until [`Ran::commit`].
    pub async fn run(self, job: &BatchJob) -> Result<Ran<'a>, BackfillError> {
        let job = match self.erasures().await {
            Ok(None) => job.clone(),
            Ok(Some(erasures)) => BatchJob {
                erasures: Arc::new(erasures),
                ..job.clone()
            },
            Err(e) => {
                self.release().await;
                return Err(e);
            }
        };
        let job = &job;
        let window_hours = match self.window_hours(job.window).await {
            Ok(hours) => hours,
            Err(e) => {
                self.release().await;
                return Err(e);
            }
        };
        let mut writer = self.store.writer(
            &self.group,
            self.now,
            WriterOptions {
                buffer_bytes: self.options.buffer_bytes,
                part_file: match &self.commit {
                    Commit::Plain => None,
                    Commit::Delta { part_file, .. } => Some(part_file.clone()),
                },
                lock: self.lock.clone(),
                ..WriterOptions::default()
            },
        );
        // Every hour of the window is replaced, those that get no row now too.
        writer.replace_hours(window_hours);
        let run = std::panic::AssertUnwindSafe(lockstep_batch::run(job, self.plugin, &mut writer))
            .catch_unwind()
            .await;
        let checked = match run {
            Err(panic) => Err(BackfillError::Panicked(
                panic_text(panic.as_ref()).to_owned(),
            )),
            Ok(Err(e)) => Err(BackfillError::Batch(e)),
            Ok(Ok(output)) => rejects_policy(&output, self.options.keep_rejects).map(|()| output),
        };
        match checked {
            Ok(output) => Ok(Ran {
                prepared: self,
                writer,
                output,
            }),
            Err(e) => {
                self.release().await;
                Err(e)
            }
        }
    }

    /// For a job over a window of history: checks its ends are on the hour and lists
    /// the hours inside it that hold rows now. Empty for a job over all of history.
    async fn window_hours(&self, window: TimeWindow) -> Result<Vec<Hour>, BackfillError> {
        if window.is_all() {
            return Ok(Vec::new());
        }
        let rfc3339 = lockstep_core::rows::timestamp_text;
        for (end, at) in [("--from", window.from), ("--to", window.to)] {
            if let Some(at) = at
                && Hour::of(at).start() != at
            {
                return Err(BackfillError::WindowNotOnTheHour {
                    end,
                    at: rfc3339(at),
                    floor: rfc3339(Hour::of(at).start()),
                });
            }
        }
        if let (Some(from), Some(to)) = (window.from, window.to)
            && from >= to
        {
            return Err(BackfillError::EmptyWindow {
                from: rfc3339(from),
                to: rfc3339(to),
            });
        }
        let held: Vec<Hour> = match &self.commit {
            Commit::Plain => self
                .store
                .partition_files(&self.group.name, &self.group.version)
                .await?
                .iter()
                .filter_map(|rel| Hour::from_path(rel))
                .collect(),
            Commit::Delta { backfill, .. } => backfill
                .read_hours()
                .into_iter()
                .filter_map(Hour::from_path)
                .collect(),
        };
        Ok(held
            .into_iter()
            .filter(|h| window.holds(h.start()))
            .collect())
    }

    /// The boundary of this group version in the ledger, if there is a ledger.
    async fn erasures(&self) -> Result<Option<lockstep_core::Erasures>, BackfillError> {
        let Some(ledger) = &self.options.ledger else {
            return Ok(None);
        };
        let manifest = &self.group.manifest;
        let key_type = lockstep_core::schema::input_schema(manifest)
            .field_with_name(&manifest.entity_key)
            .map(|f| f.data_type().clone())
            .unwrap_or(arrow_schema::DataType::Utf8);
        ledger
            .boundary(&self.group.name, &self.group.version, &key_type)
            .await
            .map(Some)
            .map_err(BackfillError::Erasures)
    }

    /// Gives the version's lock back without writing anything.
    pub async fn release(self) {
        if let Some(lock) = &self.lock {
            // A lock that cannot be removed now expires; the job's outcome stands.
            let _ = lock.release().await;
        }
    }
}

/// Fails a job whose rejects the caller did not ask to keep.
fn rejects_policy(output: &BatchOutput, keep: bool) -> Result<(), BackfillError> {
    if keep {
        return Ok(());
    }
    let describe = |r: &lockstep_batch::SourceReject| {
        if r.column.is_empty() {
            format!("{} in {}", r.reason, serde_record(r))
        } else {
            format!("column `{}`: {} in {}", r.column, r.reason, serde_record(r))
        }
    };
    match (output.rejects.first(), output.plugin_failures.first()) {
        (Some(first), _) => Err(BackfillError::Rejected {
            rejects: output.rejects.len(),
            plugin_failures: output.plugin_failures.len(),
            example: describe(first),
        }),
        (None, Some(first)) => Err(BackfillError::PluginFailed {
            plugin_failures: output.plugin_failures.len(),
            example: describe(first),
        }),
        (None, None) => Ok(()),
    }
}

fn serde_record(r: &lockstep_batch::SourceReject) -> String {
    serde_json::Value::Object(r.record.clone()).to_string()
}

/// A backfill that ran: its rows staged, nothing visible yet.
#[derive(Debug)]
pub struct Ran<'a> {
    prepared: Prepared<'a>,
    writer: OfflineWriter,
    output: BatchOutput,
}

/// What a committed backfill did.
#[derive(Debug)]
pub struct Report {
    /// The group version written, now bound to the plugin.
    pub group: GroupVersion,
    /// What a killed job had left, completed or cleared first.
    pub recovered: Recovered,
    /// The batch host's counters, rejects and final states.
    pub output: BatchOutput,
    /// The files written.
    pub written: WriteSummary,
    /// The Delta table's new version, for a Delta backfill.
    pub delta: Option<lockstep_delta::Committed>,
    /// How many times rows awaiting commit were staged on disk.
    pub spills: usize,
    /// How long the commit took.
    pub commit_time: std::time::Duration,
}

impl<'a> Ran<'a> {
    /// The batch host's output: counters, the rejects and plugin failures (kept when
    /// the options say so), final states.
    pub fn output(&self) -> &BatchOutput {
        &self.output
    }

    /// Makes the rows visible: the writer's hour files, then, for a Delta table, one
    /// commit naming them. The lock goes either way.
    pub async fn commit(self) -> Result<Report, BackfillError> {
        let Ran {
            prepared:
                Prepared {
                    group,
                    recovered,
                    lock,
                    commit,
                    ..
                },
            writer,
            output,
        } = self;
        let spills = writer.spills();
        let started = std::time::Instant::now();
        let committed = commit_rows(&group, commit, writer).await;
        if let Some(lock) = lock {
            // A lock that cannot be removed now expires; the commit stands.
            let _ = lock.release().await;
        }
        let (written, delta) = committed?;
        Ok(Report {
            group,
            recovered,
            output,
            written,
            delta,
            spills,
            commit_time: started.elapsed(),
        })
    }
}

async fn commit_rows(
    group: &GroupVersion,
    commit: Commit,
    writer: OfflineWriter,
) -> Result<(WriteSummary, Option<lockstep_delta::Committed>), BackfillError> {
    let written = writer.commit().await?;
    match commit {
        Commit::Plain => Ok((written, None)),
        Commit::Delta { backfill, .. } => {
            let rel = lockstep_offline::layout::version_rel(&group.name, &group.version);
            let schema = OfflineStore::schema(&group.manifest);
            let committed = backfill
                .commit(&rel, &schema, &group.plugin_hash, &written.parts)
                .await
                .map_err(|source| BackfillError::Delta {
                    action: "commit failed",
                    source,
                })?;
            Ok((written, Some(committed)))
        }
    }
}

/// The message of a panic's payload (a `String` or a `&str`; empty otherwise): how a
/// backfill reports a reader library that panicked, and how the command line tells a
/// closed pipe from a bug.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("")
}
