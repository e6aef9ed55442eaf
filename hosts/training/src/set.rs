//! Planning and writing a training set: labels, groups, the plan that joins them.
//!
//! ```text
//! labels file ─ NumberedLabels ─ Repartition(hash key) ─ Sort(key, bound) ─┐
//!                                                                         AsOfJoinExec ─ … ─ Sort(row) ─ Merge ─▶
//! group's hour files ─ FeatureFiles ─ Repartition(hash key) ─ Sort(key, time) ─┘
//! ```
//!
//! One join per group, chained: the labels are sorted once per distinct entity key,
//! and every sort spills under the memory limit. The output keeps the labels' order.

use crate::asof::AsOf;
use crate::error::TrainingError;
use crate::exact::{ExactReadExec, PointReader};
use crate::features::{FeatureFiles, KEY, TIME, missing_feature, scan_schema};
use crate::join::{AsOfJoinExec, LabelColumns};
use crate::labels::{self, NumberedLabels};
use arrow_array::RecordBatch;
use arrow_schema::{DataType, Schema, SchemaRef, SortOptions};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::col;
use datafusion::physical_expr::{LexOrdering, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::ExecutionPlanProperties;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};
use futures::StreamExt;
use lockstep_offline::{GroupVersion, OfflineStore};
use lockstep_session::JobSession;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Separates a group's name from its features' in output column names.
pub const COLUMN_SEPARATOR: &str = "__";

/// Parquet metadata key under which the output records its lineage (JSON).
pub const LINEAGE_KEY: &str = "lockstep.training_set";

/// A group asked for: `NAME[@VERSION][:FEATURE,FEATURE…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSelection {
    /// Group name.
    pub name: String,
    /// Its version; `None` when the group has exactly one.
    pub version: Option<String>,
    /// The features wanted, in output order; `None` for all of them.
    pub features: Option<Vec<String>>,
    /// The table version to read, for a group version kept as a Delta table (time
    /// travel: a training set built then is rebuilt row for row); `None`: the latest.
    pub table_version: Option<i64>,
}

impl FromStr for GroupSelection {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (head, features) = match s.split_once(':') {
            Some((head, list)) => {
                let features: Vec<String> = list
                    .split(',')
                    .map(|f| f.trim().to_owned())
                    .filter(|f| !f.is_empty())
                    .collect();
                if features.is_empty() {
                    return Err(format!("`{s}`: no feature after `:`"));
                }
                (head, Some(features))
            }
            None => (s, None),
        };
        let (name, version) = match head.split_once('@') {
            Some((name, version)) if !version.is_empty() => (name, Some(version.to_owned())),
            Some(_) => return Err(format!("`{s}`: no version after `@`")),
            None => (head, None),
        };
        if name.is_empty() {
            return Err(format!("`{s}`: no group name"));
        }
        Ok(GroupSelection {
            name: name.to_owned(),
            version,
            features,
            table_version: None,
        })
    }
}

/// The format of a labels file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelsFormat {
    /// Parquet.
    Parquet,
    /// CSV with a header row.
    Csv,
    /// JSON lines.
    Json,
}

impl LabelsFormat {
    /// The format a file name's extension says, if it says one.
    pub fn of(path: &Path) -> Option<LabelsFormat> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "parquet" | "pq" => Some(LabelsFormat::Parquet),
            "csv" => Some(LabelsFormat::Csv),
            "json" | "jsonl" | "ndjson" => Some(LabelsFormat::Json),
            _ => None,
        }
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct TrainingSetJob {
    /// The labels file: entity key columns, the label time, label columns.
    pub labels: PathBuf,
    /// Its format; `None`: from the extension.
    pub format: Option<LabelsFormat>,
    /// The label time column.
    pub label_time: String,
    /// The groups to join, in output order.
    pub groups: Vec<GroupSelection>,
    /// Strict or inclusive, and the TTL.
    pub asof: AsOf,
    /// Read label timestamps without a zone as UTC.
    pub assume_utc: bool,
    /// Memory the sorts may hold before spilling (`None`: unbounded).
    pub memory_limit: Option<usize>,
    /// Where spill files go (`None`: the system temporary directory).
    pub spill_dir: Option<PathBuf>,
    /// Partitions (threads) of the join.
    pub partitions: usize,
    /// Groups read at the label instant itself instead of joined with their stored
    /// rows (`training-set --exact`): by group name, the reader that computes them.
    pub exact: Vec<(String, Arc<dyn PointReader>)>,
}

impl TrainingSetJob {
    /// A job with defaults: strictly before, no TTL, one partition per core.
    pub fn new(labels: impl Into<PathBuf>, label_time: &str, groups: Vec<GroupSelection>) -> Self {
        TrainingSetJob {
            labels: labels.into(),
            format: None,
            label_time: label_time.to_owned(),
            groups,
            asof: AsOf::default(),
            assume_utc: false,
            memory_limit: None,
            spill_dir: None,
            partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
            exact: Vec::new(),
        }
    }
}

/// A group as resolved in the store.
#[derive(Debug, Clone)]
pub struct ResolvedGroup {
    /// Its registry entry (name, version, plugin hash, manifest).
    pub version: GroupVersion,
    /// The features joined, in output order.
    pub features: Vec<String>,
    /// Its hour partition files, relative to the store root, in time order.
    pub files: Vec<String>,
    /// The table version the files are the snapshot of (`None`: a plain layout).
    pub table_version: Option<i64>,
    /// Read at the label instant ([`TrainingSetJob::exact`]), not joined.
    pub exact: bool,
    matched: Arc<AtomicU64>,
}

impl ResolvedGroup {
    /// Labels that saw one of its rows so far.
    pub fn matched(&self) -> u64 {
        self.matched.load(Ordering::Relaxed)
    }
}

/// A planned training set, ready to run.
pub struct TrainingSet {
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    /// The output columns' positions in the plan's rows (the added ones dropped).
    keep: Vec<usize>,
    schema: SchemaRef,
    /// The groups, in output order.
    pub groups: Vec<ResolvedGroup>,
    lineage: String,
    /// Set by the first run: a plan's operators run once.
    ran: std::sync::atomic::AtomicBool,
}

/// What a written training set holds.
#[derive(Debug, Clone)]
pub struct Written {
    /// Label rows written (every label, once).
    pub rows: u64,
    /// Spill files and bytes the sorts wrote to stay within the memory limit.
    pub spilled: (usize, usize),
    /// Per group: name, version, labels that saw a row.
    pub matched: Vec<(String, String, u64)>,
}

impl TrainingSet {
    /// Resolves the job's groups in `store`, checks the labels against them, and plans
    /// the join. Nothing is read but the labels' schema and the store's registry.
    pub async fn plan(job: &TrainingSetJob, store: &OfflineStore) -> Result<Self, TrainingError> {
        let partitions = job.partitions.max(1);
        let labels_error = |message: String| TrainingError::Labels {
            path: job.labels.clone(),
            message,
        };
        if job.groups.is_empty() {
            return Err(TrainingError::Selection(
                "no feature group asked for".into(),
            ));
        }
        let mut groups = Vec::new();
        for selection in &job.groups {
            if groups
                .iter()
                .any(|g: &ResolvedGroup| g.version.name == selection.name)
            {
                return Err(TrainingError::Selection(format!(
                    "feature group `{}` is asked for twice: its columns would share names",
                    selection.name
                )));
            }
            groups.push(resolve(store, selection).await?);
        }

        // Every sort of every partition holds a merge reservation back, all at once.
        let sorts = partitions * (job.groups.len() + 2);
        let session = JobSession::new(partitions)
            .with_memory_limit(job.memory_limit)
            .with_spill_dir(job.spill_dir.clone())
            .with_concurrent_sorts(sorts)
            // A partition's sort input is sorted whole while it fits this: with wide
            // feature rows the merge's gathering is most of the cost. Under a memory
            // limit the whole-sort's copy must fit too: keep it small.
            .with_sort_in_place_threshold(match job.memory_limit {
                Some(limit) => (limit / (8 * sorts)).min(1 << 20),
                None => usize::MAX,
            });
        let ctx = session.context()?;
        // The labels are read in one partition, in file order, so rows are numbered
        // as the file has them.
        let reader = SessionContext::new_with_config(session.config().with_target_partitions(1));
        let source = read_labels(&reader, job, &groups).await?;
        let label_schema = source.schema();

        let time_at = label_schema.index_of(&job.label_time).map_err(|_| {
            labels_error(format!(
                "has no label time column `{}` (columns: {}); name it with --label-time",
                job.label_time,
                column_list(&label_schema)
            ))
        })?;
        let kind =
            labels::time_kind(label_schema.field(time_at), job.assume_utc).map_err(labels_error)?;
        let mut key_columns = Vec::new();
        for group in &groups {
            let key_name = &group.version.manifest.entity_key;
            let want = key_type(&group.version);
            let at = label_schema.index_of(key_name).map_err(|_| {
                labels_error(format!(
                    "has no column `{key_name}`, the entity key of feature group {}@{} (columns: {})",
                    group.version.name,
                    group.version.version,
                    column_list(&label_schema)
                ))
            })?;
            let have = label_schema.field(at).data_type();
            if *have != want {
                return Err(labels_error(format!(
                    "column `{key_name}` is {have}, but feature group {}@{} keys it as {want}",
                    group.version.name, group.version.version
                )));
            }
            if !key_columns.contains(&at) {
                key_columns.push(at);
            }
            for feature in &group.features {
                let name = format!("{}{COLUMN_SEPARATOR}{feature}", group.version.name);
                if label_schema.index_of(&name).is_ok() {
                    return Err(labels_error(format!(
                        "already has a column `{name}`, the name the feature would take"
                    )));
                }
            }
        }

        let numbered_schema = labels::numbered_schema(&label_schema);
        let numbered = NumberedLabels {
            source,
            schema: numbered_schema.clone(),
            path: job.labels.clone(),
            keys: key_columns,
            time: time_at,
            kind,
            spec: job.asof,
        };
        let mut left: Arc<dyn ExecutionPlan> =
            streaming(numbered_schema, vec![Arc::new(numbered)])?;
        let mut sorted_on: Option<String> = None;
        for (name, _) in &job.exact {
            if !groups.iter().any(|g| &g.version.name == name) {
                return Err(TrainingError::Selection(format!(
                    "feature group `{name}` is to be read exactly but is not asked for"
                )));
            }
        }
        for group in groups.iter_mut() {
            let key_name = group.version.manifest.entity_key.clone();
            if let Some((_, reader)) = job.exact.iter().find(|(n, _)| n == &group.version.name) {
                left = exact_read(left, reader.clone(), group, job.asof)?;
                sorted_on = None;
                continue;
            }
            let left_schema = left.schema();
            if sorted_on.as_deref() != Some(key_name.as_str()) {
                let key = col(&key_name, &left_schema)?;
                let bound = col(labels::BOUND, &left_schema)?;
                left = sort_by(hash_partition(left, key.clone(), partitions)?, [key, bound])?;
                sorted_on = Some(key_name.clone());
            }
            let right = feature_plan(store, group, partitions)?;
            let left_schema = left.schema();
            let columns = LabelColumns {
                key: left_schema.index_of(&key_name)?,
                bound: left_schema.index_of(labels::BOUND)?,
                age_from: left_schema.index_of(labels::AGE_FROM)?,
            };
            let prefix = format!("{}{COLUMN_SEPARATOR}", group.version.name);
            let join = AsOfJoinExec::try_new(left, right, columns, job.asof, &prefix)?;
            group.matched = join.matched();
            left = Arc::new(join);
        }
        let schema = left.schema();
        let row = col(labels::ROW, &schema)?;
        let sorted = sort_by(left, [row])?;
        let ordering = sorted
            .properties()
            .output_ordering()
            .cloned()
            .ok_or_else(|| TrainingError::Misuse("the final sort lost its order"))?;
        let plan: Arc<dyn ExecutionPlan> = Arc::new(SortPreservingMergeExec::new(ordering, sorted));

        let added = [labels::ROW, labels::BOUND, labels::AGE_FROM];
        let keep: Vec<usize> = (0..schema.fields().len())
            .filter(|&i| !added.contains(&schema.field(i).name().as_str()))
            .collect();
        let output = Arc::new(schema.project(&keep)?);
        let lineage = lineage(job, &groups);
        Ok(TrainingSet {
            plan,
            task: ctx.task_ctx(),
            keep,
            schema: output,
            groups,
            lineage,
            ran: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The output schema: the label columns, then `<group>__<feature>` per group.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The physical plan, for `EXPLAIN`-style display.
    pub fn plan_display(&self) -> String {
        datafusion::physical_plan::displayable(self.plan.as_ref())
            .indent(false)
            .to_string()
    }

    /// Spill files written and bytes spilled by the plan's sorts so far: how far
    /// the memory limit pushed the job to disk.
    pub fn spilled(&self) -> (usize, usize) {
        fn walk(plan: &Arc<dyn ExecutionPlan>, total: &mut (usize, usize)) {
            if let Some(metrics) = plan.metrics() {
                total.0 += metrics.spill_count().unwrap_or(0);
                total.1 += metrics.spilled_bytes().unwrap_or(0);
            }
            for child in plan.children() {
                walk(child, total);
            }
        }
        let mut total = (0, 0);
        walk(&self.plan, &mut total);
        total
    }

    /// Runs the join and hands each output batch, in label order, to `each`. A planned
    /// set runs once ([`collect`](Self::collect) and [`write_parquet`](Self::write_parquet)
    /// run it too); a second run is an error.
    pub async fn run(
        &self,
        mut each: impl FnMut(RecordBatch) -> Result<(), TrainingError>,
    ) -> Result<u64, TrainingError> {
        if self.ran.swap(true, Ordering::SeqCst) {
            return Err(TrainingError::Misuse(
                "this training set has run already: plan it again to run it again",
            ));
        }
        let mut stream = self.plan.execute(0, self.task.clone())?;
        let mut rows = 0u64;
        while let Some(batch) = stream.next().await {
            let batch = batch?.project(&self.keep)?;
            rows += batch.num_rows() as u64;
            each(batch)?;
        }
        Ok(rows)
    }

    /// Runs the join and returns every output row (tests, small sets).
    pub async fn collect(&self) -> Result<Vec<RecordBatch>, TrainingError> {
        let mut out = Vec::new();
        self.run(|b| {
            out.push(b);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// Runs the join into a zstd Parquet file at `out`, which appears whole or not at
    /// all (written under a temporary name, then renamed). Its metadata records the
    /// groups, versions, plugin hashes and as-of rule ([`LINEAGE_KEY`]).
    pub async fn write_parquet(&self, out: &Path) -> Result<Written, TrainingError> {
        let fail = |message: String| TrainingError::Output {
            path: out.to_path_buf(),
            message,
        };
        let dir = match out.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = out
            .file_name()
            .ok_or_else(|| fail("is not a file name".into()))?
            .to_string_lossy()
            .into_owned();
        std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|e| {
                fail(format!(
                    "creating a temporary file in {}: {e}",
                    dir.display()
                ))
            })?;
        let file = tmp.reopen().map_err(|e| fail(e.to_string()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(1).map_err(|e| fail(e.to_string()))?,
            ))
            .set_key_value_metadata(Some(vec![KeyValue::new(
                LINEAGE_KEY.to_owned(),
                self.lineage.clone(),
            )]))
            .set_created_by("lockstep training-set".into())
            .build();
        let mut writer =
            ArrowWriter::try_new(std::io::BufWriter::new(file), self.schema(), Some(props))
                .map_err(|e| fail(e.to_string()))?;
        // Encoding runs on its own thread, so the last merge goes on meanwhile; the
        // bounded channel keeps at most a few batches waiting.
        let (batches, received) = std::sync::mpsc::sync_channel::<RecordBatch>(4);
        let encoder = std::thread::spawn(move || {
            for batch in received {
                writer.write(&batch)?;
            }
            let file = writer
                .into_inner()?
                .into_inner()
                .map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok::<_, parquet::errors::ParquetError>(())
        });
        let stopped = || fail("the Parquet encoder stopped".into());
        let rows = self
            .run(|batch| batches.send(batch).map_err(|_| stopped()))
            .await;
        drop(batches);
        let encoded = encoder.join().map_err(|_| stopped())?;
        // An encoder failure explains a failed send: report it first.
        encoded.map_err(|e| fail(e.to_string()))?;
        let rows = rows?;
        tmp.persist(out).map_err(|e| fail(e.to_string()))?;
        Ok(Written {
            rows,
            spilled: self.spilled(),
            matched: self
                .groups
                .iter()
                .map(|g| {
                    (
                        g.version.name.clone(),
                        g.version.version.clone(),
                        g.matched(),
                    )
                })
                .collect(),
        })
    }
}

/// Appends `group`'s features read at each label's instant by `reader` (see
/// [`crate::exact`]); `left` is gathered into one partition for it.
fn exact_read(
    left: Arc<dyn ExecutionPlan>,
    reader: Arc<dyn PointReader>,
    group: &mut ResolvedGroup,
    asof: AsOf,
) -> Result<Arc<dyn ExecutionPlan>, TrainingError> {
    let version = &group.version;
    if asof.ttl.is_some() {
        return Err(TrainingError::Selection(format!(
            "feature group `{}` is read at the label instant (--exact): a TTL bounds the age \
             of a stored row, and an exact read has none; leave --ttl out",
            version.name
        )));
    }
    if reader.plugin_hash() != version.plugin_hash {
        return Err(TrainingError::Selection(format!(
            "feature group {}@{} was built by plugin {}, but the exact read runs plugin {}: \
             give the component of that version",
            version.name,
            version.version,
            version.plugin_hash,
            reader.plugin_hash()
        )));
    }
    if !version.manifest.supports_read {
        return Err(TrainingError::Selection(format!(
            "feature group {}@{}: its plugin does not implement `read(state, as_of)`, so it \
             has no value between its rows; join its stored rows (no --exact)",
            version.name, version.version
        )));
    }
    let left: Arc<dyn ExecutionPlan> = if left.output_partitioning().partition_count() > 1 {
        Arc::new(datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec::new(left))
    } else {
        left
    };
    let schema = left.schema();
    let all: Vec<String> = version
        .manifest
        .features
        .iter()
        .map(|f| f.name.clone())
        .collect();
    let features: Vec<(String, DataType)> = group
        .features
        .iter()
        .map(|name| {
            let ty = version
                .manifest
                .features
                .iter()
                .find(|f| &f.name == name)
                .map(|f| lockstep_core::schema::arrow_type(f.ty))
                .unwrap_or(DataType::Null);
            (name.clone(), ty)
        })
        .collect();
    let node = ExactReadExec::try_new(
        left,
        reader,
        schema.index_of(&version.manifest.entity_key)?,
        schema.index_of(labels::BOUND)?,
        asof.inclusive,
        &all,
        &features,
        &format!("{}{COLUMN_SEPARATOR}", version.name),
    )?;
    group.matched = node.matched();
    group.exact = true;
    Ok(Arc::new(node))
}

/// Finds the selected group version and checks its features.
async fn resolve(
    store: &OfflineStore,
    selection: &GroupSelection,
) -> Result<ResolvedGroup, TrainingError> {
    let versions = store.versions(&selection.name).await?;
    if versions.is_empty() {
        let groups = store.groups().await?;
        return Err(TrainingError::Selection(format!(
            "feature group `{}` is not in the offline store at {}; it has: {}",
            selection.name,
            store.root().display(),
            if groups.is_empty() {
                "no groups".to_owned()
            } else {
                groups.join(", ")
            }
        )));
    }
    let listed = || {
        versions
            .iter()
            .map(|v| v.version.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let version = match &selection.version {
        Some(wanted) => versions
            .iter()
            .find(|v| &v.version == wanted)
            .cloned()
            .ok_or_else(|| {
                TrainingError::Selection(format!(
                    "feature group `{}` has no version {wanted}; it has: {}",
                    selection.name,
                    listed()
                ))
            })?,
        None if versions.len() == 1 => versions[0].clone(),
        None => {
            return Err(TrainingError::Selection(format!(
                "feature group `{}` has several versions ({}): say which, as {}@VERSION",
                selection.name,
                listed(),
                selection.name
            )));
        }
    };
    let features = match &selection.features {
        Some(wanted) => {
            for name in wanted {
                if !version.manifest.features.iter().any(|f| &f.name == name) {
                    return Err(missing_feature(&version, name));
                }
            }
            wanted.clone()
        }
        None => version
            .manifest
            .features
            .iter()
            .map(|f| f.name.clone())
            .collect(),
    };
    let stored = store
        .files_at(&version.name, &version.version, selection.table_version)
        .await?;
    Ok(ResolvedGroup {
        version,
        features,
        files: stored.files,
        table_version: stored.table_version,
        exact: false,
        matched: Arc::new(AtomicU64::new(0)),
    })
}

/// The labels file as a one-partition plan. Text formats read the entity keys as the
/// groups type them and the label time as text, so that nothing is guessed.
async fn read_labels(
    reader: &SessionContext,
    job: &TrainingSetJob,
    groups: &[ResolvedGroup],
) -> Result<Arc<dyn ExecutionPlan>, TrainingError> {
    let fail = |message: String| TrainingError::Labels {
        path: job.labels.clone(),
        message,
    };
    if !job.labels.is_file() {
        return Err(fail("no such file".into()));
    }
    let format = job
        .format
        .or_else(|| LabelsFormat::of(&job.labels))
        .ok_or_else(|| {
            fail("unknown format: name it .parquet, .csv or .jsonl, or give --format".into())
        })?;
    let path = job.labels.to_string_lossy().into_owned();
    let extension = job
        .labels
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let engine = |e: datafusion::error::DataFusionError| fail(e.to_string());
    let frame = match format {
        LabelsFormat::Parquet => reader
            .read_parquet(
                &path,
                ParquetReadOptions::default().file_extension(&extension),
            )
            .await
            .map_err(engine)?,
        LabelsFormat::Csv | LabelsFormat::Json => {
            let read_text = async |schema: Option<&Schema>| match format {
                LabelsFormat::Csv => {
                    let mut options = CsvReadOptions::new().file_extension(&extension);
                    if let Some(schema) = schema {
                        options = options.schema(schema);
                    }
                    reader.read_csv(&path, options).await.map_err(engine)
                }
                _ => {
                    let mut options = JsonReadOptions::default().file_extension(&extension);
                    if let Some(schema) = schema {
                        options = options.schema(schema);
                    }
                    reader.read_json(&path, options).await.map_err(engine)
                }
            };
            let inferred = read_text(None).await?.schema().as_arrow().clone();
            let fields: Vec<arrow_schema::Field> = inferred
                .fields()
                .iter()
                .map(|f| {
                    let mut field = f.as_ref().clone().with_nullable(true);
                    if f.name() == &job.label_time {
                        field = field.with_data_type(DataType::Utf8);
                    }
                    if let Some(g) = groups
                        .iter()
                        .find(|g| f.name() == &g.version.manifest.entity_key)
                    {
                        field = field.with_data_type(key_type(&g.version));
                    }
                    field
                })
                .collect();
            read_text(Some(&Schema::new(fields))).await?
        }
    };
    frame.create_physical_plan().await.map_err(engine)
}

/// The type of a group's entity key, as its rows store it.
fn key_type(group: &GroupVersion) -> DataType {
    lockstep_core::schema::row_schema(&group.manifest)
        .field(KEY)
        .data_type()
        .clone()
}

fn column_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("`{}`", f.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn streaming(
    schema: SchemaRef,
    partitions: Vec<Arc<dyn PartitionStream>>,
) -> Result<Arc<dyn ExecutionPlan>, TrainingError> {
    Ok(Arc::new(StreamingTableExec::try_new(
        schema,
        partitions,
        None,
        Vec::new(),
        false,
        None,
    )?))
}

fn hash_partition(
    input: Arc<dyn ExecutionPlan>,
    key: Arc<dyn PhysicalExpr>,
    partitions: usize,
) -> Result<Arc<dyn ExecutionPlan>, TrainingError> {
    Ok(Arc::new(RepartitionExec::try_new(
        input,
        Partitioning::Hash(vec![key], partitions),
    )?))
}

/// Sorts each partition by `keys`, spilling under the memory pool.
fn sort_by<const N: usize>(
    input: Arc<dyn ExecutionPlan>,
    keys: [Arc<dyn PhysicalExpr>; N],
) -> Result<Arc<dyn ExecutionPlan>, TrainingError> {
    let ordering = LexOrdering::new(
        keys.into_iter()
            .map(|e| PhysicalSortExpr::new(e, SortOptions::default())),
    )
    .ok_or_else(|| TrainingError::Misuse("empty sort order"))?;
    Ok(Arc::new(
        SortExec::new(ordering, input).with_preserve_partitioning(true),
    ))
}

/// A group's feature rows, hash-partitioned on the key and sorted by (key, time).
fn feature_plan(
    store: &OfflineStore,
    group: &ResolvedGroup,
    partitions: usize,
) -> Result<Arc<dyn ExecutionPlan>, TrainingError> {
    let schema = scan_schema(&group.version, &group.features)?;
    let mut shares: Vec<Vec<String>> = vec![Vec::new(); partitions];
    for (i, file) in group.files.iter().enumerate() {
        shares[i % partitions].push(file.clone());
    }
    let streams: Vec<Arc<dyn PartitionStream>> = shares
        .into_iter()
        .map(|files| {
            Arc::new(FeatureFiles {
                store: store.clone(),
                files,
                schema: schema.clone(),
            }) as Arc<dyn PartitionStream>
        })
        .collect();
    let scan = streaming(schema.clone(), streams)?;
    let key = col(schema.field(KEY).name(), &schema)?;
    let time = col(schema.field(TIME).name(), &schema)?;
    sort_by(hash_partition(scan, key.clone(), partitions)?, [key, time])
}

/// The output's lineage record: which group versions and plugins, under which rule.
fn lineage(job: &TrainingSetJob, groups: &[ResolvedGroup]) -> String {
    serde_json::json!({
        "labels": job.labels.to_string_lossy(),
        "label_time": job.label_time,
        "inclusive": job.asof.inclusive,
        "ttl_micros": job.asof.ttl,
        "groups": groups.iter().map(|g| serde_json::json!({
            "name": g.version.name,
            "version": g.version.version,
            "plugin_hash": g.version.plugin_hash,
            "table_version": g.table_version,
            "exact": g.exact,
            "features": g.features,
        })).collect::<Vec<_>>(),
    })
    .to_string()
}
