//! Streaming writes: rows arrive in any hour order, in bounded memory, and become
//! visible only at [`OfflineWriter::commit`].
//!
//! Rows are buffered per hour. When the buffer outgrows its budget, every buffered hour
//! is appended to an Arrow IPC chunk file in a private staging directory (local disk,
//! never under the store root, so no reader can see it) and the buffer is emptied. At
//! commit each touched hour is assembled from its chunks and whatever is still
//! buffered, put in a deterministic order (entity key, event time, arrival order within
//! an entity), and written as that hour's one Parquet file (temporary name, then rename).
//!
//! Rows may come from several sources ([`OfflineWriter::write_from`]), each keeping
//! its rows apart: a source whose rows arrive in (entity key, event time) order — a
//! batch host partition does — needs no sort at commit, only a merge with the others.
//! Memory is bounded by the buffer budget while rows stream in, and by the largest hour
//! at commit. Dropping a writer without committing writes nothing and removes the
//! staging directory; a killed process leaves it behind in the temporary directory,
//! where no reader looks.

use crate::backend::Backend;
use crate::error::io;
use crate::layout::{self, Hour};
use crate::part::{PartEncoder, WriteSummary, WrittenPart, stored_schema};
use crate::{GroupVersion, OfflineError};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use arrow_array::{
    ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array,
};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_ord::ord::make_comparator;
use arrow_schema::{DataType, SchemaRef, SortOptions};
use arrow_select::concat::concat_batches;
use arrow_select::take::take;
use lockstep_core::schema::{EVENT_TIME, row_schema};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::runtime::Handle;

const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// Default buffer budget: rows held in memory before they are staged on disk.
pub const DEFAULT_BUFFER_BYTES: usize = 256 << 20;

/// Most bytes of pending batches split by hour at once. The split gathers rows in hour
/// order: over a group that fits the CPU caches it streams, over a larger one each row
/// is a cache miss (a 10M-event backfill with 512 MB groups took 20 s, with 32 MB 15 s).
const SPLIT_GROUP_BYTES: usize = 32 << 20;

/// Most sources an hour's rows are merged from at commit; with more, they are taken
/// as one run and sorted.
const MERGED_SOURCES: usize = 16;

/// Bytes per write to a staged chunk file.
const STAGING_WRITE: usize = 1 << 20;

/// Options of an [`OfflineWriter`].
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Bytes of rows to hold in memory before staging them on disk.
    pub buffer_bytes: usize,
    /// Where the staging directory goes (default: the system temporary directory).
    pub staging_dir: Option<PathBuf>,
    /// Threads encoding Parquet at commit (default: available parallelism).
    pub threads: Option<usize>,
    /// The name of each hour's file. By default `part-0.parquet`, put in place of the
    /// hour's old file; a table format whose readers may still read the old file (a
    /// Delta table keeps it until VACUUM) gives each job a name of its own.
    pub part_file: Option<String>,
    /// The version's writer lock, taken by the caller when the job began (see
    /// [`crate::OfflineStore::lock`]). Without it a plain-layout commit takes the lock itself,
    /// and fails if another job holds it. A table format (`part_file` set) needs none.
    pub lock: Option<Arc<crate::journal::WriteLock>>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            staging_dir: None,
            threads: None,
            part_file: None,
            lock: None,
        }
    }
}

/// Writes one job's rows into a group version; see the [module docs](self).
pub struct OfflineWriter {
    backend: Backend,
    group: GroupVersion,
    write_time: i64,
    expected: SchemaRef,
    /// `expected` plus the deletion marker, as rows are held until commit.
    held: SchemaRef,
    options: WriterOptions,
    /// Source → batches as they arrived, not yet split by hour.
    pending: BTreeMap<usize, Vec<RecordBatch>>,
    pending_bytes: usize,
    /// Hour index (hours since the epoch) → rows not yet staged, with their source, in
    /// arrival order.
    buffer: BTreeMap<i64, Vec<(usize, RecordBatch)>>,
    buffered_bytes: usize,
    staging: Option<tempfile::TempDir>,
    /// Hour index → staged chunk files with their source, in staging order.
    chunks: BTreeMap<i64, Vec<(usize, PathBuf)>>,
    spills: usize,
    rows: usize,
    /// Hour indexes written at commit even if no row falls in them.
    replaced: std::collections::BTreeSet<i64>,
}

impl std::fmt::Debug for OfflineWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflineWriter")
            .field("group", &self.group.name)
            .field("version", &self.group.version)
            .field("rows", &self.rows)
            .field("spills", &self.spills)
            .finish()
    }
}

/// An hour's rows at commit: its staged chunk files and its buffered batches, each with
/// the source it came from.
type HourParts = (Vec<(usize, PathBuf)>, Vec<(usize, RecordBatch)>);

/// An hour written at commit: its place in commit order, its staged name (empty when
/// written in place), its row count, the hour, its final name, its size, its SHA-256.
type WrittenHour = (usize, String, usize, Hour, String, u64, String);

/// An hour encoded at commit, waiting to be put: its place in commit order, its path
/// relative to the store root, its bytes, its row count, the hour, the bytes' SHA-256.
type EncodedHour = (usize, String, Vec<u8>, usize, Hour, String);

/// A comparison of row `i` with row `j` of one batch.
type RowComparator = Box<dyn Fn(usize, usize) -> std::cmp::Ordering + Send + Sync>;

impl OfflineWriter {
    pub(crate) fn new(
        backend: Backend,
        group: &GroupVersion,
        write_time: i64,
        options: WriterOptions,
    ) -> Self {
        OfflineWriter {
            backend,
            group: group.clone(),
            write_time,
            expected: row_schema(&group.manifest),
            held: held_schema(&row_schema(&group.manifest)),
            options,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            buffer: BTreeMap::new(),
            buffered_bytes: 0,
            staging: None,
            chunks: BTreeMap::new(),
            spills: 0,
            rows: 0,
            replaced: std::collections::BTreeSet::new(),
        }
    }

    /// Makes the hours `hours` part of the commit whether or not a row falls in them:
    /// one that gets none is written as a file of no rows, which replaces what it held
    /// as any hour's file does. How a backfill over a window of history empties the
    /// hours of it whose events are gone.
    pub fn replace_hours(&mut self, hours: impl IntoIterator<Item = Hour>) {
        self.replaced.extend(
            hours
                .into_iter()
                .map(|h| h.start().div_euclid(MICROS_PER_HOUR)),
        );
    }

    /// Rows accepted so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// How many times the buffer was staged on disk.
    pub fn spills(&self) -> usize {
        self.spills
    }

    fn schema_error(&self, message: String) -> OfflineError {
        OfflineError::Schema {
            group: self.group.name.clone(),
            message,
        }
    }

    /// Accepts `batch` (in the group's row schema). Nothing is visible until
    /// [`commit`](Self::commit).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), OfflineError> {
        self.write_marked(0, batch, false)
    }

    /// Accepts `batch` from `source` (any number naming where the rows come from).
    /// Rows of any source may arrive in any order and the files come out the same;
    /// when each source's rows arrive in (entity key, event time) order, and every
    /// entity's rows from one source, the commit merges the sources instead of sorting.
    pub fn write_from(&mut self, source: usize, batch: &RecordBatch) -> Result<(), OfflineError> {
        self.write_marked(source, batch, false)
    }

    /// Accepts `batch` as deletion markers (`is_deleted` set): from each row's event
    /// time on, its entity has no features until a later row. Feature values in a
    /// marker row are kept but never served as current.
    pub fn write_deletions(&mut self, batch: &RecordBatch) -> Result<(), OfflineError> {
        self.write_marked(0, batch, true)
    }

    fn write_marked(
        &mut self,
        source: usize,
        batch: &RecordBatch,
        deleted: bool,
    ) -> Result<(), OfflineError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        // Names and types must match the row schema (which has the event time column);
        // nullability and metadata may differ.
        let columns = |s: &SchemaRef| -> Vec<(String, DataType)> {
            s.fields()
                .iter()
                .map(|f| (f.name().clone(), f.data_type().clone()))
                .collect()
        };
        let same = batch.schema_ref().fields().len() == self.expected.fields().len()
            && batch
                .schema_ref()
                .fields()
                .iter()
                .zip(self.expected.fields())
                .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
        if !same {
            return Err(self.schema_error(format!(
                "expected columns {:?}, got {:?}",
                columns(&self.expected),
                columns(batch.schema_ref())
            )));
        }
        // Batches are kept whole and split by hour in large groups: one sort and one
        // `take` per group instead of one per hour per batch (a batch of many entities
        // touches most hours).
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(BooleanArray::from(vec![
            deleted;
            batch.num_rows()
        ])));
        let batch = RecordBatch::try_new(self.held.clone(), columns)?;
        self.pending_bytes += batch.get_array_memory_size();
        self.rows += batch.num_rows();
        self.pending.entry(source).or_default().push(batch);
        if self.pending_bytes > (self.options.buffer_bytes / 8).clamp(1, SPLIT_GROUP_BYTES) {
            self.split_pending()?;
        }
        if self.buffered_bytes > self.options.buffer_bytes {
            self.stage()?;
        }
        Ok(())
    }

    /// Moves the pending batches into the per-hour buffer, source by source: one stable
    /// sort by hour, one `take`, then a slice per hour.
    fn split_pending(&mut self) -> Result<(), OfflineError> {
        for (source, batches) in std::mem::take(&mut self.pending) {
            self.split_source(source, &batches)?;
        }
        self.pending_bytes = 0;
        Ok(())
    }

    fn split_source(&mut self, source: usize, batches: &[RecordBatch]) -> Result<(), OfflineError> {
        if batches.is_empty() {
            return Ok(());
        }
        let data = concat_batches(&self.held, batches)?;
        let times = data
            .column_by_name(EVENT_TIME)
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
            .ok_or_else(|| self.schema_error(format!("no {EVENT_TIME} timestamp column")))?;
        let hours: Vec<i64> = times
            .values()
            .iter()
            .map(|t| t.div_euclid(MICROS_PER_HOUR))
            .collect();
        let mut order: Vec<u32> = (0..data.num_rows() as u32).collect();
        order.sort_by_key(|&i| hours[i as usize]);
        let idx = UInt32Array::from(order.clone());
        let columns = data
            .columns()
            .iter()
            .map(|c| take(c.as_ref(), &idx, None))
            .collect::<Result<Vec<_>, _>>()?;
        let sorted = RecordBatch::try_new(data.schema(), columns)?;
        drop(data);
        self.buffered_bytes += sorted.get_array_memory_size();
        let mut start = 0;
        while start < order.len() {
            let hour = hours[order[start] as usize];
            let mut end = start + 1;
            while end < order.len() && hours[order[end] as usize] == hour {
                end += 1;
            }
            self.buffer
                .entry(hour)
                .or_default()
                .push((source, sorted.slice(start, end - start)));
            start = end;
        }
        Ok(())
    }

    /// Moves every buffered hour to a chunk file in the staging directory.
    fn stage(&mut self) -> Result<(), OfflineError> {
        self.split_pending()?;
        let staging = match &self.staging {
            Some(dir) => dir.path().to_owned(),
            None => {
                let base = self
                    .options
                    .staging_dir
                    .clone()
                    .unwrap_or_else(std::env::temp_dir);
                std::fs::create_dir_all(&base).map_err(io("creating", &base))?;
                let dir = tempfile::Builder::new()
                    .prefix("lockstep-offline-staging-")
                    .tempdir_in(&base)
                    .map_err(io("creating a staging directory in", &base))?;
                let path = dir.path().to_owned();
                self.staging = Some(dir);
                path
            }
        };
        let spill = self.spills;
        for (hour, batches) in std::mem::take(&mut self.buffer) {
            let mut by_source: BTreeMap<usize, Vec<RecordBatch>> = BTreeMap::new();
            for (source, batch) in batches {
                by_source.entry(source).or_default().push(batch);
            }
            for (source, batches) in by_source {
                let path = staging.join(format!("{hour}-{source}-{spill}.arrows"));
                let file = std::fs::File::create(&path).map_err(io("creating", &path))?;
                // Large writes: with BufWriter's default 8 KiB, most writes start or end
                // inside a page, which the kernel zeroes first (~5 % of a 10M-event
                // backfill's CPU).
                let mut w = StreamWriter::try_new(
                    BufWriter::with_capacity(STAGING_WRITE, file),
                    &self.held,
                )?;
                for b in &batches {
                    w.write(b)?;
                }
                w.finish()?;
                self.chunks.entry(hour).or_default().push((source, path));
            }
        }
        self.buffered_bytes = 0;
        self.spills += 1;
        Ok(())
    }

    /// Writes every touched hour and makes it visible, replacing what those hours held.
    /// The group version is bound to the writer's plugin hash first (if it is not yet),
    /// so only a job that gets this far claims it.
    pub async fn commit(mut self) -> Result<WriteSummary, OfflineError> {
        self.split_pending()?;
        // The plain layout: one writer per version, and a killed job's commit completed
        // before this one publishes anything. A table format's files are invisible until
        // its own commit, under names no other job uses.
        let journaled = self.options.part_file.is_none();
        let lock = match (&self.options.lock, journaled) {
            (None, true) => Some(
                crate::journal::WriteLock::acquire(
                    &self.backend,
                    &self.group.name,
                    &self.group.version,
                    "an offline write",
                )
                .await?,
            ),
            _ => None,
        };
        // A lock the caller holds came from `OfflineStore::lock`, which completed or
        // cleared what a killed job left when it was taken: only a lock taken here
        // needs that recovery now.
        let recover = lock.is_some();
        let committed = self.commit_locked(journaled, recover).await;
        if let Some(lock) = lock {
            // The commit stands whether or not the lock goes now: one left behind
            // expires, and locally a finished process's lock is taken over at once.
            let _ = lock.release().await;
        }
        committed
    }

    /// The commit, once the version's lock (if the layout needs one) is held.
    async fn commit_locked(
        self,
        journaled: bool,
        recover: bool,
    ) -> Result<WriteSummary, OfflineError> {
        if recover {
            crate::journal::recover(&self.backend, &self.group.name, &self.group.version).await?;
        }
        crate::registry::register(
            &self.backend,
            &self.group.manifest,
            &self.group.plugin_hash,
            self.group.registered_at,
        )
        .await?;
        // Encoding is CPU work and staging local files blocking I/O: both run on
        // threads of their own, which reach an object store through this runtime.
        let runtime = Handle::current();
        let root = self.backend.root();
        let (this, files) = tokio::task::spawn_blocking(move || {
            let mut this = self;
            let files = this.encode_and_stage(&runtime, journaled);
            (this, files)
        })
        .await
        .map_err(|e| OfflineError::Registry {
            path: root,
            message: format!("the partition writers stopped: {e}"),
        })?;
        this.finish_commit(files?, journaled).await
    }

    /// Encodes every touched hour and stages (or, for a table format, writes) its
    /// file, on the calling thread and threads of its own: the written hours, in no
    /// particular order.
    fn encode_and_stage(
        &mut self,
        runtime: &Handle,
        journaled: bool,
    ) -> Result<Vec<WrittenHour>, OfflineError> {
        let mut hours: BTreeMap<i64, HourParts> = BTreeMap::new();
        for (hour, files) in std::mem::take(&mut self.chunks) {
            hours.entry(hour).or_default().0 = files;
        }
        for (hour, batches) in std::mem::take(&mut self.buffer) {
            hours.entry(hour).or_default().1 = batches;
        }
        for hour in std::mem::take(&mut self.replaced) {
            hours.entry(hour).or_default();
        }
        let work: Vec<_> = hours.into_iter().collect();
        let encoder = PartEncoder::new(stored_schema(&self.group.manifest)).map_err(|source| {
            OfflineError::Parquet {
                path: self
                    .backend
                    .locate(&layout::version_rel(&self.group.name, &self.group.version)),
                source,
            }
        })?;
        let encoders = self
            .options
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .clamp(1, work.len().max(1));
        // Staging a file waits on the disk (creating its folder and itself) or the
        // network, not the CPU: encoders hand finished files to more putters so that
        // waiting overlaps the encoding. Durability is one sync for all of them.
        let putters = (encoders * 4).clamp(1, work.len().max(1));
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let (files_out, files_in) = std::sync::mpsc::sync_channel::<EncodedHour>(putters * 2);
        let files_in = std::sync::Mutex::new(files_in);
        let this = &*self;
        let panicked = || OfflineError::Registry {
            path: this.backend.root(),
            message: "a partition writer thread panicked".into(),
        };
        let (encoded, put) = std::thread::scope(|scope| {
            let encoders: Vec<_> = (0..encoders)
                .map(|_| {
                    let files_out = files_out.clone();
                    let (next, failed, work, encoder) = (&next, &failed, &work, &encoder);
                    scope.spawn(move || -> Result<(), OfflineError> {
                        while !failed.load(Ordering::Relaxed) {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some((hour, (chunks, batches))) = work.get(i) else {
                                break;
                            };
                            let (rel, bytes, rows, at, sha256) = this
                                .encode_hour(encoder, *hour, chunks, batches)
                                .inspect_err(|_| failed.store(true, Ordering::Relaxed))?;
                            if files_out.send((i, rel, bytes, rows, at, sha256)).is_err() {
                                break;
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            drop(files_out);
            let putters: Vec<_> = (0..putters)
                .map(|_| {
                    let (files_in, failed) = (&files_in, &failed);
                    scope.spawn(move || -> Result<Vec<WrittenHour>, OfflineError> {
                        let mut done = Vec::new();
                        let mut first_error = None;
                        loop {
                            let next_file = match files_in.lock() {
                                Ok(queue) => queue.recv(),
                                Err(poisoned) => poisoned.into_inner().recv(),
                            };
                            let Ok((i, rel, bytes, rows, at, sha256)) = next_file else {
                                break;
                            };
                            let size = bytes.len() as u64;
                            // After a failure the queue is still drained, so that no
                            // encoder waits on it forever; nothing more is put.
                            if failed.load(Ordering::Relaxed) {
                                continue;
                            }
                            // A table format's file has a name no other job uses and
                            // is invisible until the table commits it: written in place.
                            let written = if journaled {
                                this.backend.stage_on(runtime, &rel, bytes)
                            } else {
                                this.backend
                                    .write_unsynced_on(runtime, &rel, bytes)
                                    .map(|()| String::new())
                            };
                            match written {
                                Ok(staged) => done.push((i, staged, rows, at, rel, size, sha256)),
                                Err(e) => {
                                    failed.store(true, Ordering::Relaxed);
                                    first_error = Some(e);
                                }
                            }
                        }
                        first_error.map_or(Ok(done), Err)
                    })
                })
                .collect();
            let encoded: Vec<_> = encoders
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(panicked())))
                .collect();
            let put: Vec<_> = putters
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(panicked())))
                .collect();
            (encoded, put)
        });
        for result in encoded {
            result?;
        }
        let mut files = Vec::new();
        for result in put {
            files.extend(result?);
        }
        Ok(files)
    }

    /// Publishes the staged hours `files` (in commit order once sorted) and sums up.
    async fn finish_commit(
        &self,
        mut files: Vec<WrittenHour>,
        journaled: bool,
    ) -> Result<WriteSummary, OfflineError> {
        files.sort_by_key(|(i, ..)| *i);
        let staged: Vec<(String, String)> = files
            .iter()
            .map(|(_, staged, _, _, rel, ..)| (staged.clone(), rel.clone()))
            .collect();
        if journaled {
            crate::journal::publish_all(
                &self.backend,
                &self.group.name,
                &self.group.version,
                staged,
            )
            .await?;
        } else {
            // Durable before the table's commit names them.
            self.backend.sync().await?;
        }
        Ok(WriteSummary {
            rows: files.iter().map(|(_, _, n, ..)| n).sum(),
            partitions: files.len(),
            hours: files.iter().map(|(_, _, _, at, ..)| *at).collect(),
            parts: files
                .iter()
                .map(|(_, _, rows, hour, rel, size, sha256)| WrittenPart {
                    rel: rel.clone(),
                    rows: *rows,
                    bytes: *size,
                    sha256: sha256.clone(),
                    hour: *hour,
                })
                .collect(),
            files: files
                .iter()
                .map(|(_, _, _, _, rel, ..)| self.backend.locate(rel))
                .collect(),
        })
    }

    /// Assembles, orders and encodes one hour: the file's path relative to the store
    /// root, its bytes, its row count, the hour and the bytes' SHA-256.
    fn encode_hour(
        &self,
        encoder: &PartEncoder,
        hour: i64,
        files: &[(usize, PathBuf)],
        buffered: &[(usize, RecordBatch)],
    ) -> Result<(String, Vec<u8>, usize, Hour, String), OfflineError> {
        // Source → its rows in arrival order: staged chunks first, then the buffer.
        let mut sources: BTreeMap<usize, Vec<RecordBatch>> = BTreeMap::new();
        for (source, path) in files {
            let file = std::fs::File::open(path).map_err(io("opening", path))?;
            for batch in StreamReader::try_new(BufReader::new(file), None)? {
                sources.entry(*source).or_default().push(batch?);
            }
        }
        for (source, batch) in buffered {
            sources.entry(*source).or_default().push(batch.clone());
        }
        let sources: Vec<Vec<RecordBatch>> = sources.into_values().collect();
        let data = if sources.is_empty() {
            // An hour replaced by nothing (`replace_hours`).
            RecordBatch::new_empty(self.held.clone())
        } else {
            self.deterministic_order(&sources)?
        };
        drop(sources);
        let n = data.num_rows();
        let mut columns: Vec<ArrayRef> = data.columns().to_vec();
        let deleted = columns
            .pop()
            .ok_or_else(|| self.schema_error("no columns".into()))?;
        let stamp = TimestampMicrosecondArray::from(vec![self.write_time; n]).with_timezone("UTC");
        columns.push(Arc::new(stamp.clone()));
        columns.push(Arc::new(stamp));
        columns.push(deleted);
        columns.push(Arc::new(StringArray::from(vec![
            self.group
                .plugin_hash
                .as_str();
            n
        ])));
        let out = RecordBatch::try_new(encoder.schema().clone(), columns)?;
        let at = Hour::of(hour.saturating_mul(MICROS_PER_HOUR));
        let dir = format!(
            "{}/{}",
            layout::version_rel(&self.group.name, &self.group.version),
            at.relative()
        );
        let name = self
            .options
            .part_file
            .as_deref()
            .unwrap_or(layout::PART_FILE);
        let (rel, bytes) = encoder.encode(&self.backend, &dir, name, &out)?;
        // Recorded with the file (the audit log names every file a commit wrote by it).
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        Ok((rel, bytes, n, at, sha256))
    }

    /// An hour's rows ordered by entity key, then event time, then arrival: the same
    /// rows give the same file whichever partition delivered them first. Each source's
    /// rows are put in order (stably; usually they already are), then the sources are
    /// merged, a tie between sources going to the lower-numbered one; one gather then
    /// copies every column into place.
    fn deterministic_order(
        &self,
        sources: &[Vec<RecordBatch>],
    ) -> Result<RecordBatch, OfflineError> {
        // Keys of another type, or with nulls, compare through Arrow's comparator, which
        // works within one array: their sources are taken as one, sorted whole.
        let comparable = sources
            .iter()
            .flatten()
            .all(|b| EntityKeys::comparable_across(b.column(0)));
        // The merge scans every source's head per row: past a handful of sources one
        // stable sort of them all is cheaper.
        let as_one;
        let sources = if (comparable && sources.len() <= MERGED_SOURCES) || sources.len() <= 1 {
            sources
        } else {
            as_one = vec![sources.concat()];
            &as_one
        };
        let batches: Vec<&RecordBatch> = sources.iter().flatten().collect();
        // Per source: where each of its rows is (batch among all, row), its entity keys
        // and event times as one column each (the row schema starts with them), and its
        // rows in order.
        let mut positions: Vec<Vec<(usize, usize)>> = Vec::with_capacity(sources.len());
        let mut runs = Vec::with_capacity(sources.len());
        let mut first_batch = 0;
        for source in sources {
            positions.push(
                source
                    .iter()
                    .enumerate()
                    .flat_map(|(b, batch)| (0..batch.num_rows()).map(move |r| (first_batch + b, r)))
                    .collect(),
            );
            first_batch += source.len();
            runs.push((concat_column(source, 0)?, concat_column(source, 1)?));
        }
        let mut views = Vec::with_capacity(runs.len());
        let mut ordered: Vec<Vec<usize>> = Vec::with_capacity(runs.len());
        for (key, time) in &runs {
            let keys = EntityKeys::of(key)?;
            let times = time
                .as_primitive_opt::<TimestampMicrosecondType>()
                .ok_or_else(|| self.schema_error(format!("no {EVENT_TIME} timestamp column")))?
                .values();
            let before = |a: usize, b: usize| keys.compare(a, b).then(times[a].cmp(&times[b]));
            let mut order: Vec<usize> = (0..key.len()).collect();
            if !order.windows(2).all(|w| before(w[0], w[1]).is_le()) {
                // Runs already in order (one per batch the source sent) are found and
                // merged by the stable sort.
                order.sort_by(|&a, &b| before(a, b));
            }
            ordered.push(order);
            views.push((keys, times));
        }
        // Merge the sources: a handful, so the smallest head is found by scanning them
        // (`min_by` keeps the first of equals: the lower-numbered source).
        let mut heads = vec![0usize; ordered.len()];
        let mut at: Vec<(usize, usize)> = Vec::with_capacity(positions.iter().map(Vec::len).sum());
        while let Some(s) = (0..ordered.len())
            .filter(|&s| heads[s] < ordered[s].len())
            .min_by(|&a, &b| {
                let (ra, rb) = (ordered[a][heads[a]], ordered[b][heads[b]]);
                let ((ka, ta), (kb, tb)) = (&views[a], &views[b]);
                ka.compare_with(ra, kb, rb).then(ta[ra].cmp(&tb[rb]))
            })
        {
            at.push(positions[s][ordered[s][heads[s]]]);
            heads[s] += 1;
        }
        let columns = (0..self.held.fields().len())
            .map(|c| {
                let arrays: Vec<&dyn arrow_array::Array> =
                    batches.iter().map(|b| b.column(c).as_ref()).collect();
                arrow_select::interleave::interleave(&arrays, &at)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(self.held.clone(), columns)?)
    }
}

/// Column `index` of `batches`, as one array.
fn concat_column(batches: &[RecordBatch], index: usize) -> Result<ArrayRef, OfflineError> {
    let arrays: Vec<&dyn arrow_array::Array> =
        batches.iter().map(|b| b.column(index).as_ref()).collect();
    Ok(arrow_select::concat::concat(&arrays)?)
}

/// An entity key column, compared row against row without dynamic dispatch for the
/// key types plugins use (comparing was a sixth of a commit through `make_comparator`).
enum EntityKeys<'a> {
    Utf8(&'a StringArray),
    Int64(&'a [i64]),
    Other(RowComparator),
}

impl<'a> EntityKeys<'a> {
    fn of(column: &'a ArrayRef) -> Result<Self, OfflineError> {
        Ok(match column.data_type() {
            DataType::Utf8 if column.null_count() == 0 => EntityKeys::Utf8(column.as_string()),
            DataType::Int64 if column.null_count() == 0 => {
                EntityKeys::Int64(column.as_primitive::<Int64Type>().values())
            }
            _ => EntityKeys::Other(Box::new(make_comparator(
                column.as_ref(),
                column.as_ref(),
                SortOptions::default(),
            )?)),
        })
    }

    /// Whether keys of `column` compare with [`compare_with`](Self::compare_with)
    /// against another column of the same type.
    fn comparable_across(column: &ArrayRef) -> bool {
        matches!(column.data_type(), DataType::Utf8 | DataType::Int64) && column.null_count() == 0
    }

    #[inline]
    fn compare(&self, a: usize, b: usize) -> std::cmp::Ordering {
        match self {
            EntityKeys::Other(compare) => compare(a, b),
            _ => self.compare_with(a, self, b),
        }
    }

    /// Row `a` of these keys against row `b` of `other`. Only keys
    /// [`comparable_across`](Self::comparable_across) columns compare; any other pair is
    /// taken as equal.
    #[inline]
    fn compare_with(&self, a: usize, other: &Self, b: usize) -> std::cmp::Ordering {
        match (self, other) {
            (EntityKeys::Utf8(x), EntityKeys::Utf8(y)) => {
                x.value(a).as_bytes().cmp(y.value(b).as_bytes())
            }
            (EntityKeys::Int64(x), EntityKeys::Int64(y)) => x[a].cmp(&y[b]),
            _ => std::cmp::Ordering::Equal,
        }
    }
}

/// The row schema plus the deletion marker rows carry until they are written.
fn held_schema(rows: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<arrow_schema::Field> =
        rows.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(arrow_schema::Field::new(
        "__lockstep_deleted",
        DataType::Boolean,
        false,
    ));
    Arc::new(arrow_schema::Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Float64Array, Int64Array};

    /// The rows of `column` in the order `EntityKeys` puts them.
    fn sorted_by_keys(column: ArrayRef) -> Vec<usize> {
        let keys = EntityKeys::of(&column).expect("comparable");
        let mut rows: Vec<usize> = (0..column.len()).collect();
        rows.sort_by(|&a, &b| keys.compare(a, b));
        rows
    }

    #[test]
    fn string_keys_compare_in_byte_order_and_integers_by_sign() {
        let strings: ArrayRef = Arc::new(StringArray::from(vec!["b", "ba", "B", "", "é", "a"]));
        assert!(matches!(EntityKeys::of(&strings), Ok(EntityKeys::Utf8(_))));
        assert_eq!(sorted_by_keys(strings), vec![3, 2, 5, 0, 1, 4]);

        let ints: ArrayRef = Arc::new(Int64Array::from(vec![3, -1, i64::MIN, 0, i64::MAX]));
        assert!(matches!(EntityKeys::of(&ints), Ok(EntityKeys::Int64(_))));
        assert_eq!(sorted_by_keys(ints), vec![2, 1, 3, 0, 4]);
    }

    #[test]
    fn other_columns_and_nulls_fall_back_to_arrows_comparator() {
        let with_null: ArrayRef = Arc::new(StringArray::from(vec![Some("b"), None, Some("a")]));
        assert!(matches!(
            EntityKeys::of(&with_null),
            Ok(EntityKeys::Other(_))
        ));
        // Arrow's default: nulls first.
        assert_eq!(sorted_by_keys(with_null), vec![1, 2, 0]);

        let floats: ArrayRef = Arc::new(Float64Array::from(vec![2.5, -1.0, 0.0]));
        assert_eq!(sorted_by_keys(floats), vec![1, 2, 0]);
    }
}
