//! The batch host: backfills a feature group from history.
//!
//! ```text
//! source (Parquet | CSV | JSON lines; path or glob)  ──DataFusion scan──▶ [--sql]
//!   ──▶ conform to the plugin's input schema + order columns   (lockstep-core, per partition)
//!   ──▶ RepartitionExec(hash(entity key), N)
//!   ──▶ SortExec(entity key, event time, event id, content), per partition, spilling
//!   ──▶ PluginExec: one plugin instance per partition (duplicates dropped, state carried)
//!   ──▶ rows ──▶ a [`RowSink`] (the offline store's streaming writer), final states
//! ```
//!
//! Everything streams `RecordBatch`es: up to the plugin under DataFusion's memory pool
//! (with a memory limit the sort spills to disk instead of failing), after it through a
//! bounded channel into the sink, which has its own budget
//! ([`lockstep_offline::OfflineWriter`] stages on disk). Rows are ordered and
//! de-duplicated exactly as the in-memory executor and the stream host do, because they
//! are all the same `lockstep-core` code.
//!
//! JSON-lines sources are decoded by `lockstep-core`'s JSON decoder, not DataFusion's,
//! so that a JSON value is parsed one way in every host; they stream too
//! ([`json_source`]).
//!
//! Sources may be local paths or `s3://` URLs (read through `object_store`).
//!
//! The plugin runs as a DataFusion `ExecutionPlan` node, [`PluginExec`], whose
//! configuration serialises ([`PluginNodeConfig`]) so that a distributed executor can
//! rebuild it from the component's location and hash.

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::compute::SortOptions;
use datafusion::catalog::TableProvider;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::col;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{
    ExecutionPlan, ExecutionPlanProperties, Partitioning, SendableRecordBatchStream,
};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use lockstep_abi::Manifest;
pub use lockstep_core::TimeWindow;
use lockstep_core::conform::{SourceKind, conform_bounded};
use lockstep_core::key::StateMap;
use lockstep_core::order::{order_fields, sort_columns, with_order_columns};
use lockstep_core::rows::row_json;
use lockstep_core::schema::{EVENT_TIME, input_schema};
use lockstep_executor::RunStats;
use lockstep_offline::{S3Options, parse_s3_url};
use lockstep_runtime::Plugin;
use lockstep_session::JobSession;
use object_store::ObjectStore;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use thiserror::Error;

mod footer;
mod json_source;
mod parquet_check;
pub mod plugin_exec;
pub mod read_points;

pub use plugin_exec::{FireUntil, PluginExec, PluginNodeConfig};
pub use read_points::{EventsReader, PointsRead};

/// A failure from the plan, with a plugin's own error brought back to the surface.
fn unwrap_core(e: DataFusionError) -> BatchError {
    match e {
        DataFusionError::External(inner) => {
            match inner.downcast::<lockstep_executor::ExecError>() {
                Ok(plugin) => BatchError::Plugin(*plugin),
                Err(other) => BatchError::DataFusion(DataFusionError::External(other)),
            }
        }
        other => BatchError::DataFusion(other),
    }
}

/// Format of the source files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// Apache Parquet.
    Parquet,
    /// CSV with a header row.
    Csv,
    /// One JSON object per line.
    Json,
}

impl SourceFormat {
    /// Guesses the format from a path's extension.
    pub fn from_path(path: &str) -> Option<Self> {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".parquet") || lower.ends_with(".pq") {
            Some(SourceFormat::Parquet)
        } else if lower.ends_with(".csv") {
            Some(SourceFormat::Csv)
        } else if lower.ends_with(".jsonl")
            || lower.ends_with(".json")
            || lower.ends_with(".ndjson")
        {
            Some(SourceFormat::Json)
        } else {
            None
        }
    }
}

/// What to backfill and how.
#[derive(Debug, Clone)]
pub struct BatchJob {
    /// Where the plugin's component was loaded from: recorded in the plan's
    /// [`PluginExec`] node, so another executor could load the same bytes.
    pub component: String,
    /// A file, a directory or a glob.
    pub source: String,
    /// The files' format.
    pub format: SourceFormat,
    /// `SELECT … FROM source` shaping rows into the plugin's input schema.
    pub sql: Option<String>,
    /// Parallel plugin instances (entity-key partitions).
    pub partitions: usize,
    /// Memory pool size in bytes; sorting spills to disk beyond it.
    pub memory_limit: Option<usize>,
    /// Where to spill (default: the system temporary directory).
    pub spill_dir: Option<PathBuf>,
    /// Live counters, for a progress display.
    pub progress: Arc<Progress>,
    /// Settings for `s3://` sources (endpoint, region, credentials).
    pub s3: S3Options,
    /// Keep every entity's final state for [`BatchOutput::states`]. Without it, a
    /// state is dropped once its entity is done, so memory does not grow with the
    /// number of entities.
    pub keep_states: bool,
    /// Events later than this instant (UTC µs) are rejects, by the rule the stream
    /// host applies to its dead letters: the job's clock plus `--max-future`.
    pub latest_event_time: Option<i64>,
    /// Erased entities (the erasure ledger's boundary for this group version): their
    /// events at or before the erasure are dropped and counted, never applied.
    pub erasures: Arc<lockstep_core::Erasures>,
    /// For a plugin with timers, the instant up to which each entity takes its
    /// wake-ups after its last event (see `lockstep_abi::timers`). `None`: the end
    /// of the input, its latest event time (rejects and erased events aside), which
    /// the stream host reaches when it drains the same events.
    pub fire_until: Option<i64>,
    /// The part of history the job writes (`lockstep backfill --from/--to`): the
    /// plugin sees every event before its end, so each entity's state at its start is
    /// the full history's, and only rows inside it reach the sink. Events at or after
    /// its end are left out (counted, not rejected); a plugin with timers is woken up
    /// to its end unless `fire_until` says otherwise. Default: all of history.
    pub window: TimeWindow,
}

impl BatchJob {
    /// A job over `source` (files of `format`) with the plugin loaded from
    /// `component`, and every other setting at its default: the source's columns as
    /// they are (no SQL), one partition, no memory limit, spills in the system's
    /// temporary directory, S3 settings from the environment, final states dropped,
    /// no event-time bound. Set the others with struct-update syntax:
    /// `BatchJob { partitions: 4, ..BatchJob::new(component, source, format) }`.
    pub fn new(
        component: impl Into<String>,
        source: impl Into<String>,
        format: SourceFormat,
    ) -> Self {
        BatchJob {
            component: component.into(),
            source: source.into(),
            format,
            sql: None,
            partitions: 1,
            memory_limit: None,
            spill_dir: None,
            progress: Arc::default(),
            s3: S3Options::default(),
            keep_states: false,
            latest_event_time: None,
            erasures: Arc::default(),
            fire_until: None,
            window: TimeWindow::default(),
        }
    }
}

/// The latest event time of the events a job's plugin sees (rejects and erased events
/// aside), final once every source partition has been read — which the sort before
/// the plugin waits for. See [`BatchJob::fire_until`].
#[derive(Debug)]
pub struct EndOfInput(std::sync::atomic::AtomicI64);

impl Default for EndOfInput {
    fn default() -> Self {
        EndOfInput(std::sync::atomic::AtomicI64::new(i64::MIN))
    }
}

impl EndOfInput {
    fn observe(&self, time: i64) {
        self.0.fetch_max(time, Ordering::Relaxed);
    }

    /// The latest event time seen (`None`: no event).
    pub fn get(&self) -> Option<i64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|&t| t != i64::MIN)
    }

    /// Observes the events of `batch` (in the plugin's input schema) that reach the
    /// plugin: `time_col`'s values, less those `erasures` drops.
    fn observe_batch(
        &self,
        batch: &RecordBatch,
        key_col: usize,
        time_col: usize,
        erasures: &lockstep_core::Erasures,
    ) {
        use arrow_array::cast::AsArray;
        use arrow_array::types::TimestampMicrosecondType;
        let Some(times) = batch
            .column(time_col)
            .as_primitive_opt::<TimestampMicrosecondType>()
        else {
            return;
        };
        if erasures.is_empty() {
            if let Some(max) = datafusion::arrow::compute::max(times) {
                self.observe(max);
            }
            return;
        }
        let keys = batch.column(key_col);
        for row in 0..batch.num_rows() {
            if arrow_array::Array::is_null(times, row) {
                continue;
            }
            let time = times.value(row);
            let erased = lockstep_core::key::EntityKey::from_array(keys.as_ref(), row)
                .is_some_and(|key| erasures.drops(&key, time));
            if !erased {
                self.observe(time);
            }
        }
    }
}

/// Counters a running job updates, readable from another thread at any time.
#[derive(Debug, Default)]
pub struct Progress {
    /// Source rows read (conformed or rejected).
    pub rows_read: AtomicU64,
    /// Rows handed to the sink.
    pub rows_written: AtomicU64,
    /// Source rows rejected.
    pub rejected: AtomicU64,
    /// Source events at or after the job's window ([`BatchJob::window`]): left out.
    pub after_window: AtomicU64,
    /// Rows the plugin emitted before the job's window: computed, not written.
    pub before_window: AtomicU64,
}

impl Progress {
    /// `(rows read, rows written, rows rejected)` now.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.rows_read.load(Ordering::Relaxed),
            self.rows_written.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed),
        )
    }
}

/// Where a job's rows go, batch by batch, as the plugin emits them.
pub trait RowSink: Send {
    /// Takes one batch of rows in the plugin's row schema.
    fn write(&mut self, rows: &RecordBatch) -> Result<(), BatchError>;

    /// Takes one batch of rows from `partition`, whose rows arrive in (entity key, event
    /// time) order. A sink that orders rows may use that; by default it is
    /// [`write`](Self::write).
    fn write_partition(&mut self, partition: usize, rows: &RecordBatch) -> Result<(), BatchError> {
        let _ = partition;
        self.write(rows)
    }
}

/// Collects rows in memory (small jobs, tests).
impl RowSink for Vec<RecordBatch> {
    fn write(&mut self, rows: &RecordBatch) -> Result<(), BatchError> {
        self.push(rows.clone());
        Ok(())
    }
}

/// Streams rows into the offline store; they become visible when the writer commits.
impl RowSink for lockstep_offline::OfflineWriter {
    fn write(&mut self, rows: &RecordBatch) -> Result<(), BatchError> {
        lockstep_offline::OfflineWriter::write(self, rows).map_err(BatchError::Sink)
    }

    fn write_partition(&mut self, partition: usize, rows: &RecordBatch) -> Result<(), BatchError> {
        self.write_from(partition, rows).map_err(BatchError::Sink)
    }
}

/// A source row that could not be conformed to the input schema.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceReject {
    /// The column at fault.
    pub column: String,
    /// Why.
    pub reason: String,
    /// The row as the source had it.
    pub record: serde_json::Map<String, serde_json::Value>,
}

/// What a backfill produced besides its rows (which went to the [`RowSink`]).
#[derive(Debug)]
pub struct BatchOutput {
    /// Each entity's state after its last event (with [`BatchJob::keep_states`]; empty
    /// otherwise): the stream host can start from it.
    pub states: StateMap,
    /// Counters over all partitions.
    pub stats: RunStats,
    /// Rows refused by the input schema (never silently dropped).
    pub rejects: Vec<SourceReject>,
    /// Events the plugin failed on, skipped while everything else was applied (the
    /// stream host dead-letters the same events: see
    /// [`lockstep_executor::FailedEvent`]). `column` is empty; `reason` holds
    /// the entity and the plugin's message.
    pub plugin_failures: Vec<SourceReject>,
    /// Events of erased entities at or before their erasure, dropped (see
    /// [`BatchJob::erasures`]).
    pub erased: u64,
    /// For a plugin with timers, the instant its entities took their wake-ups up to
    /// (see [`BatchJob::fire_until`]); `None` for other plugins or no events.
    pub fire_until: Option<i64>,
}

/// Why a backfill failed.
#[derive(Debug, Error)]
pub enum BatchError {
    /// Reading, planning or sorting failed (includes conform errors, which name the column).
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// Decoding or ordering the events failed.
    #[error(transparent)]
    Core(#[from] lockstep_core::CoreError),
    /// Running the plugin failed.
    #[error(transparent)]
    Plugin(#[from] lockstep_executor::ExecError),
    /// A source is damaged or malformed (what is wrong is the message).
    #[error("{0}")]
    Source(String),
    /// A source file could not be read or listed.
    #[error("{action} {location}")]
    SourceIo {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        location: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An object-store source could not be read or listed.
    #[error("{action} {location}")]
    SourceObject {
        /// What was being done.
        action: &'static str,
        /// The object or prefix.
        location: String,
        /// Why.
        #[source]
        source: object_store::Error,
    },
    /// A source's location is not a URL or glob this host reads.
    #[error("the source {location}")]
    SourceLocation {
        /// The source as given.
        location: String,
        /// What is wrong with it.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The row sink refused rows.
    #[error(transparent)]
    Sink(#[from] lockstep_offline::OfflineError),
    /// A partition's task stopped without finishing (it panicked or was cancelled).
    #[error("partition {partition} of the job stopped")]
    Partition {
        /// Which partition.
        partition: usize,
        /// How it stopped.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A plan's plugin node configuration could not be read.
    #[error("not a plugin node configuration")]
    NodeConfig(#[source] serde_json::Error),
    /// A plan's component could not be loaded.
    #[error("loading the plan's component {component}")]
    Component {
        /// Where the plan says it is.
        component: String,
        /// Why it could not be loaded.
        #[source]
        source: lockstep_runtime::LoadError,
    },
    /// The bytes at a plan's component location are another build.
    #[error(
        "{component} is not the plan's plugin: its SHA-256 is {found}, the plan wants {wanted}"
    )]
    NotThePlansComponent {
        /// Where the plan says it is.
        component: String,
        /// The SHA-256 of the bytes found there.
        found: String,
        /// The SHA-256 the plan names.
        wanted: String,
    },
    /// The component's manifest is not the one the plan was made with.
    #[error("{component}: the component's manifest differs from the plan's")]
    NotThePlansManifest {
        /// Where the plan says it is.
        component: String,
    },
}

/// The schema the sort consumes: the input schema and the two order columns.
fn order_schema(manifest: &Manifest) -> SchemaRef {
    let mut fields: Vec<Field> = input_schema(manifest)
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend(order_fields());
    Arc::new(Schema::new(fields))
}

/// One source partition, conformed to the input schema with order columns added.
#[derive(Debug)]
struct ConformedPartition {
    source: Arc<dyn ExecutionPlan>,
    partition: usize,
    manifest: Manifest,
    input: SchemaRef,
    output: SchemaRef,
    kind: SourceKind,
    rejects: Arc<Mutex<Vec<SourceReject>>>,
    progress: Arc<Progress>,
    latest_event_time: Option<i64>,
    /// Events at or after this instant are left out (the end of the job's window).
    events_before: Option<i64>,
    /// Where the latest event time is observed, with the erasures it leaves aside.
    end_of_input: Option<(Arc<EndOfInput>, Arc<lockstep_core::Erasures>)>,
}

impl PartitionStream for ConformedPartition {
    fn schema(&self) -> &SchemaRef {
        &self.output
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (manifest, input, output) = (
            self.manifest.clone(),
            self.input.clone(),
            self.output.clone(),
        );
        let (rejects, kind) = (self.rejects.clone(), self.kind);
        let (progress, latest) = (self.progress.clone(), self.latest_event_time);
        let end_of_input = self.end_of_input.clone();
        let events_before = self.events_before;
        let key_col = manifest.input_index(&manifest.entity_key).unwrap_or(0);
        let time_col = manifest.input_index(&manifest.event_time).unwrap_or(0);
        let stream = match self.source.execute(self.partition, ctx) {
            Ok(s) => s,
            Err(e) => {
                return Box::pin(RecordBatchStreamAdapter::new(
                    output,
                    futures::stream::once(async { Err(e) }),
                ));
            }
        };
        let mapped = stream.map(move |batch| {
            let batch = batch?;
            let (conformed, bad) = conform_bounded(&batch, &manifest, &input, kind, latest)
                .map_err(|e| DataFusionError::Execution(e.to_string()))?;
            progress
                .rows_read
                .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
            if !bad.is_empty() {
                progress
                    .rejected
                    .fetch_add(bad.len() as u64, Ordering::Relaxed);
                let mut sink = rejects.lock().unwrap_or_else(|p| p.into_inner());
                sink.extend(bad.into_iter().map(|r| SourceReject {
                    record: row_json(&batch, r.row),
                    column: r.column,
                    reason: r.reason,
                }));
            }
            let conformed = match events_before {
                Some(to) => {
                    let kept = before(&conformed, time_col, to)
                        .map_err(|e| DataFusionError::Execution(e.to_string()))?;
                    let left_out = conformed.num_rows() - kept.num_rows();
                    if left_out > 0 {
                        progress
                            .after_window
                            .fetch_add(left_out as u64, Ordering::Relaxed);
                    }
                    kept
                }
                None => conformed,
            };
            if let Some((end, erasures)) = &end_of_input {
                end.observe_batch(&conformed, key_col, time_col, erasures);
            }
            with_order_columns(&conformed, &manifest)
                .map_err(|e| DataFusionError::Execution(e.to_string()))
        });
        Box::pin(RecordBatchStreamAdapter::new(self.output.clone(), mapped))
    }
}

/// The rows of `batch` whose time (column `time_col`, as µs) is in `keep`; a row
/// without a time is kept (the shared rules have already rejected such an event).
fn rows_timed(
    batch: &RecordBatch,
    time_col: usize,
    keep: impl Fn(i64) -> bool,
) -> Result<RecordBatch, arrow_schema::ArrowError> {
    use datafusion::arrow::array::{Array, AsArray, BooleanArray};
    use datafusion::arrow::datatypes::Int64Type;
    let times =
        datafusion::arrow::compute::cast(batch.column(time_col).as_ref(), &DataType::Int64)?;
    let times = times.as_primitive::<Int64Type>();
    if (0..times.len()).all(|i| times.is_null(i) || keep(times.value(i))) {
        return Ok(batch.clone());
    }
    let mask: BooleanArray = (0..times.len())
        .map(|i| Some(times.is_null(i) || keep(times.value(i))))
        .collect();
    datafusion::arrow::compute::filter_record_batch(batch, &mask)
}

/// The events of `batch` before `to`.
fn before(
    batch: &RecordBatch,
    time_col: usize,
    to: i64,
) -> Result<RecordBatch, arrow_schema::ArrowError> {
    rows_timed(batch, time_col, |t| t < to)
}

/// The listing URL of a source: a path, a directory or a glob, local or `s3://`.
/// (DataFusion expands globs in local paths only; for URLs we split off the glob as it
/// does: everything after the last `/` before the first glob character.)
fn listing_url(source: &str) -> Result<ListingTableUrl, BatchError> {
    let Some((bucket_and_prefix, glob)) = parse_s3_url(source)
        .is_some()
        .then(|| {
            let first = source.find(['*', '?', '['])?;
            let cut = source[..first].rfind('/')? + 1;
            Some(source.split_at(cut))
        })
        .flatten()
    else {
        return Ok(ListingTableUrl::parse(source)?);
    };
    let url = url::Url::parse(bucket_and_prefix).map_err(|e| BatchError::SourceLocation {
        location: source.to_owned(),
        source: Box::new(e),
    })?;
    let pattern = glob::Pattern::new(glob).map_err(|e| BatchError::SourceLocation {
        location: format!("{source} (the glob `{glob}`)"),
        source: Box::new(e),
    })?;
    Ok(ListingTableUrl::try_new(url, Some(pattern))?)
}

/// Lets DataFusion read `s3://bucket/…` through `object_store`; returns the client.
fn register_s3(
    ctx: &SessionContext,
    source: &str,
    s3: &S3Options,
) -> Result<Option<Arc<dyn ObjectStore>>, BatchError> {
    let Some((bucket, _)) = parse_s3_url(source) else {
        return Ok(None);
    };
    let store =
        lockstep_offline::s3_object_store(s3, &bucket).map_err(|e| BatchError::SourceObject {
            action: "connecting to",
            location: source.to_owned(),
            source: e,
        })?;
    let url =
        url::Url::parse(&format!("s3://{bucket}")).map_err(|e| BatchError::SourceLocation {
            location: source.to_owned(),
            source: Box::new(e),
        })?;
    ctx.register_object_store(&url, store.clone());
    Ok(Some(store))
}

async fn register_source(
    ctx: &SessionContext,
    job: &BatchJob,
    manifest: &Manifest,
    rejects: &Arc<Mutex<Vec<SourceReject>>>,
) -> Result<(), BatchError> {
    let s3 = register_s3(ctx, &job.source, &job.s3)?;
    match job.format {
        SourceFormat::Parquet => {
            let extension = if job.source.to_ascii_lowercase().ends_with(".pq") {
                ".pq"
            } else {
                ".parquet"
            };
            match (&s3, parse_s3_url(&job.source)) {
                (Some(store), Some((_, key))) => {
                    footer::check_objects(store, &key, &job.source, extension).await?
                }
                _ => footer::check_local(&job.source, extension)?,
            }
            let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(extension);
            let config = ListingTableConfig::new(listing_url(&job.source)?)
                .with_listing_options(options)
                .infer_schema(&ctx.state())
                .await?;
            ctx.register_table("source", Arc::new(ListingTable::try_new(config)?))?;
        }
        SourceFormat::Csv => {
            // Every cell as text: values are parsed by the shared rules during conform,
            // not by CSV type inference (which, for one, drops time zones).
            // A row with fewer cells than the header reads as nulls in the missing
            // columns, so the shared rules reject it by name (one bad row must not end
            // the job); a row with more cells is still an error naming its line.
            let options = ListingOptions::new(Arc::new(
                CsvFormat::default()
                    .with_has_header(true)
                    .with_truncated_rows(true),
            ))
            .with_file_extension(".csv");
            let inferred = ListingTableConfig::new(listing_url(&job.source)?)
                .with_listing_options(options.clone())
                .infer_schema(&ctx.state())
                .await?;
            let text = Arc::new(Schema::new(
                ListingTable::try_new(inferred)?
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| Field::new(f.name(), DataType::Utf8, true))
                    .collect::<Vec<_>>(),
            ));
            let config = ListingTableConfig::new(listing_url(&job.source)?)
                .with_listing_options(options)
                .with_schema(text);
            ctx.register_table("source", Arc::new(ListingTable::try_new(config)?))?;
        }
        SourceFormat::Json => {
            let file = match (&s3, parse_s3_url(&job.source)) {
                (Some(store), Some((_, key))) => json_source::JsonFile::Object(
                    store.clone(),
                    object_store::path::Path::from(key),
                    job.source.clone(),
                ),
                _ => {
                    if !std::path::Path::new(&job.source).is_file() {
                        return Err(BatchError::Source(format!(
                            "{}: no such file (JSON-lines sources are one file)",
                            job.source
                        )));
                    }
                    json_source::JsonFile::Local(job.source.clone())
                }
            };
            let schema = input_schema(manifest);
            let partition = json_source::JsonLinesPartition {
                file,
                manifest: manifest.clone(),
                schema: schema.clone(),
                rejects: rejects.clone(),
                progress: job.progress.clone(),
                latest_event_time: job.latest_event_time,
            };
            let table = StreamingTable::try_new(schema, vec![Arc::new(partition)])?;
            ctx.register_table("source", Arc::new(table))?;
        }
    }
    Ok(())
}

/// The source's partitions conformed to the plugin's input schema with the order
/// columns added (`output`); rejects go to `rejects`, and `end_of_input` (when given)
/// observes the latest event time.
fn conformed_source(
    source: Arc<dyn ExecutionPlan>,
    job: &BatchJob,
    manifest: &Manifest,
    output: &SchemaRef,
    rejects: &Arc<Mutex<Vec<SourceReject>>>,
    end_of_input: Option<Arc<EndOfInput>>,
) -> Result<Arc<dyn ExecutionPlan>, BatchError> {
    let streams: Vec<Arc<dyn PartitionStream>> =
        (0..source.output_partitioning().partition_count())
            .map(|partition| {
                Arc::new(ConformedPartition {
                    source: source.clone(),
                    partition,
                    manifest: manifest.clone(),
                    input: input_schema(manifest),
                    output: output.clone(),
                    kind: match job.format {
                        SourceFormat::Csv => SourceKind::Text,
                        SourceFormat::Parquet | SourceFormat::Json => SourceKind::Typed,
                    },
                    rejects: rejects.clone(),
                    progress: job.progress.clone(),
                    latest_event_time: job.latest_event_time,
                    events_before: job.window.to,
                    end_of_input: end_of_input.clone().map(|end| (end, job.erasures.clone())),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
    let conformed = Arc::new(StreamingTableExec::try_new(
        output.clone(),
        streams,
        None,
        Vec::new(),
        false,
        None,
    )?);
    Ok(conformed)
}

/// Rows per batch through the plan and per plugin call. DataFusion's 8192 makes the
/// sort merge ~4x as many sorted runs per partition, and the plugin be called ~4x as
/// often (10M transactions: ~10 % less CPU at 32k, in alternating runs).
const BATCH_ROWS: usize = 32 * 1024;

/// A memory pool smaller than this cannot hold several 32k-row batches per
/// partition's sort (a 24 MB pool over 2 partitions failed to sort at all).
const SMALL_POOL_BYTES: usize = 256 << 20;

/// Runs `plugin` over the job's source, streaming the rows it emits into `sink`, and
/// returns the final states, counters and rejects. On error the sink may have received
/// some rows: a sink that commits (the offline writer) must not be committed then.
pub async fn run(
    job: &BatchJob,
    plugin: &Plugin,
    sink: &mut dyn RowSink,
) -> Result<BatchOutput, BatchError> {
    let manifest = plugin.manifest().clone();
    let partitions = job.partitions.max(1);
    let mut session = JobSession::new(partitions)
        .with_memory_limit(job.memory_limit)
        .with_spill_dir(job.spill_dir.clone())
        // One sort, and its merge, per partition: the reservation is an eighth of the pool.
        .with_concurrent_sorts(2);
    // A sort must fit a few batches per partition in its share of the pool: small
    // pools keep DataFusion's default batch size.
    if job
        .memory_limit
        .is_none_or(|limit| limit >= SMALL_POOL_BYTES)
    {
        session = session.with_batch_rows(BATCH_ROWS);
    }
    let ctx = session.context()?;
    let rejects = Arc::new(Mutex::new(Vec::new()));
    register_source(&ctx, job, &manifest, &rejects).await?;
    let frame = match &job.sql {
        Some(sql) => ctx.sql(sql).await?,
        None => ctx.table("source").await?,
    };
    let source = frame.create_physical_plan().await?;

    let output = order_schema(&manifest);
    // A window's end is the end of the input the plugin sees.
    let job_fire_until = job
        .fire_until
        .or(job.window.to.map(|to| to.saturating_sub(1)));
    // A plugin with timers wakes each entity, after its last event, up to the end of
    // the input unless the job says where.
    let end_of_input = (manifest.timer_resolution.is_some() && job_fire_until.is_none())
        .then(|| Arc::new(EndOfInput::default()));
    let fire_until = match (&end_of_input, job_fire_until) {
        (Some(end), _) => FireUntil::EndOfInput(end.clone()),
        (None, Some(at)) if manifest.timer_resolution.is_some() => FireUntil::At(at),
        _ => FireUntil::Never,
    };
    let conformed = conformed_source(
        source,
        job,
        &manifest,
        &output,
        &rejects,
        end_of_input.clone(),
    )?;
    let key = col(&manifest.entity_key, &output)?;
    let repartitioned = Arc::new(RepartitionExec::try_new(
        conformed,
        Partitioning::Hash(vec![key.clone()], partitions),
    )?);
    // The contract's order: key, time, id by value with nulls last, content hash.
    let ascending_nulls_last = SortOptions {
        descending: false,
        nulls_first: false,
    };
    let sort_keys = sort_columns(&manifest)
        .into_iter()
        .map(|name| col(name, &output))
        .collect::<Result<Vec<_>, _>>()?;
    let ordering = LexOrdering::new(
        sort_keys
            .into_iter()
            .map(|e| PhysicalSortExpr::new(e, ascending_nulls_last)),
    )
    .ok_or_else(|| BatchError::Source("empty sort order".into()))?;
    let sorted: Arc<dyn ExecutionPlan> =
        Arc::new(SortExec::new(ordering, repartitioned).with_preserve_partitioning(true));

    let node = Arc::new(
        PluginExec::new(
            plugin.clone(),
            job.component.clone(),
            job.keep_states,
            sorted,
        )?
        .with_erasures(job.erasures.clone())
        .with_fire_until(fire_until.clone()),
    );

    let task_ctx = ctx.task_ctx();
    // Partitions hand their rows to the sink through a bounded channel: a slow sink
    // slows the plugins down instead of letting rows pile up in memory.
    let (rows_tx, mut rows_rx) =
        tokio::sync::mpsc::channel::<(usize, Result<RecordBatch, DataFusionError>)>(2 * partitions);
    let mut tasks = Vec::with_capacity(partitions);
    for partition in 0..partitions {
        let mut stream = node.execute(partition, task_ctx.clone())?;
        let rows_tx = rows_tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(rows) = stream.next().await {
                let failed = rows.is_err();
                if rows_tx.send((partition, rows)).await.is_err() || failed {
                    // The receiver is gone (the job is failing elsewhere), or this
                    // partition failed and said so: stop.
                    break;
                }
            }
        }));
    }
    drop(rows_tx);
    // Rows before the window are the plugin's warm-up: computed, never written.
    let rows_time_col = job.window.from.and_then(|_| {
        lockstep_core::schema::row_schema(&manifest)
            .index_of(EVENT_TIME)
            .ok()
    });
    let mut sink_result = Ok(());
    while let Some((partition, rows)) = rows_rx.recv().await {
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                sink_result = Err(unwrap_core(e));
                break;
            }
        };
        let rows = match (job.window.from, rows_time_col) {
            (Some(from), Some(time_col)) => match rows_timed(&rows, time_col, |t| t >= from) {
                Ok(kept) => {
                    let dropped = (rows.num_rows() - kept.num_rows()) as u64;
                    job.progress
                        .before_window
                        .fetch_add(dropped, Ordering::Relaxed);
                    kept
                }
                Err(e) => {
                    sink_result = Err(BatchError::DataFusion(e.into()));
                    break;
                }
            },
            _ => rows,
        };
        if rows.num_rows() == 0 {
            continue;
        }
        let n = rows.num_rows() as u64;
        if let Err(e) = tokio::task::block_in_place(|| sink.write_partition(partition, &rows)) {
            sink_result = Err(e);
            break;
        }
        job.progress.rows_written.fetch_add(n, Ordering::Relaxed);
    }
    drop(rows_rx);
    for (partition, task) in tasks.into_iter().enumerate() {
        task.await
            .map_err(|source| BatchError::Partition { partition, source })?;
    }
    let finished = node.finished();
    let mut out = BatchOutput {
        states: finished.states,
        stats: finished.stats,
        rejects: Vec::new(),
        plugin_failures: finished.failed,
        erased: finished.erased,
        fire_until: fire_until.get(),
    };
    if sink_result.is_ok() && finished.partitions != partitions {
        sink_result = Err(BatchError::Source(format!(
            "only {} of {partitions} partitions finished",
            finished.partitions
        )));
    }
    sink_result?;
    out.rejects = std::mem::take(&mut *rejects.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(out)
}
