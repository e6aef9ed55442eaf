//! Reading a group version's feature rows out of the offline store.
//!
//! Each hour partition file holds its rows sorted by entity key, then event time, rows
//! of equal time in emission order (the offline writer's contract). Of rows sharing a
//! key and an event time only the last emitted is visible to any label, so the scan
//! keeps just that one: the sort that follows then needs no tie-breaker and cannot
//! reorder ties. The scan checks the order it relies on and refuses a file that breaks
//! it, naming the file and the row.

use crate::error::{TrainingError, external};
use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch};
use arrow_ord::ord::make_comparator;
use arrow_schema::{DataType, Field, Schema, SchemaRef, SortOptions, TimeUnit};
use arrow_select::filter::filter_record_batch;
use bytes::Bytes;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::streaming::PartitionStream;
use lockstep_core::schema::{EVENT_TIME, row_schema};
use lockstep_offline::{GroupVersion, OfflineStore};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::cmp::Ordering;
use std::path::PathBuf;
use std::sync::Arc;

/// Column of the scan's output: the entity key.
pub(crate) const KEY: usize = 0;
/// Column of the scan's output: the event time, UTC µs.
pub(crate) const TIME: usize = 1;
/// Column of the scan's output: the deletion marker.
pub(crate) const DELETED: usize = 2;
/// The first feature column of the scan's output.
pub(crate) const FIRST_FEATURE: usize = 3;

const TIME_NAME: &str = "__event_time";
const DELETED_NAME: &str = "__deleted";
const STORED_DELETED: &str = "is_deleted";
const ROWS_PER_BATCH: usize = 8192;

/// The scan's schema: key, `__event_time` (Int64 µs), `__deleted`, then `features` as
/// the group stores them.
pub(crate) fn scan_schema(
    group: &GroupVersion,
    features: &[String],
) -> Result<SchemaRef, TrainingError> {
    let rows = row_schema(&group.manifest);
    let key = rows.field(0).clone();
    let mut fields = vec![
        key,
        Field::new(TIME_NAME, DataType::Int64, false),
        Field::new(DELETED_NAME, DataType::Boolean, false),
    ];
    for name in features {
        let field = rows
            .field_with_name(name)
            .map_err(|_| missing_feature(group, name))?;
        fields.push(field.clone());
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// The error for a feature the group does not have, listing those it has.
pub(crate) fn missing_feature(group: &GroupVersion, name: &str) -> TrainingError {
    let have: Vec<&str> = group
        .manifest
        .features
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    TrainingError::Selection(format!(
        "feature group {}@{} has no feature `{name}`; its features are: {}",
        group.name,
        group.version,
        have.join(", ")
    ))
}

/// One partition of the scan: a share of the group's hour files, read in turn.
#[derive(Debug)]
pub(crate) struct FeatureFiles {
    pub store: OfflineStore,
    pub files: Vec<String>,
    pub schema: SchemaRef,
}

impl PartitionStream for FeatureFiles {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let mut builder = RecordBatchReceiverStreamBuilder::new(self.schema.clone(), 2);
        let tx = builder.tx();
        let (store, files, schema) = (self.store.clone(), self.files.clone(), self.schema.clone());
        // Decoding is CPU-bound: off the async workers, which the object reads (awaited
        // on the plan's runtime) are not.
        let runtime = tokio::runtime::Handle::try_current();
        builder.spawn_blocking(move || {
            let runtime =
                runtime.map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            for rel in &files {
                let path = store.locate(rel);
                let bytes = runtime
                    .block_on(store.read_object(rel))
                    .map_err(|e| external(e.into()))?;
                let mut file = FileRows::open(Bytes::from(bytes), &schema, path)?;
                while let Some(batch) = file.next_batch()? {
                    if tx.blocking_send(Ok(batch)).is_err() {
                        return Ok(()); // the consumer is gone
                    }
                }
            }
            Ok(())
        });
        builder.build()
    }
}

/// One hour file's rows, in the scan's schema, the last of each (key, time) run only.
struct FileRows {
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    /// Where each scan column is in the file's projected batches.
    positions: Vec<usize>,
    schema: SchemaRef,
    path: PathBuf,
    /// A batch read but not yet emitted: its last row's fate depends on the next one.
    held: Option<RecordBatch>,
    /// Rows of the file before `held`, for messages.
    rows_before: usize,
}

impl FileRows {
    fn open(
        bytes: Bytes,
        schema: &SchemaRef,
        path: PathBuf,
    ) -> datafusion::error::Result<FileRows> {
        let fail = |message: String| {
            external(TrainingError::Partition {
                path: path.clone(),
                message,
            })
        };
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| fail(e.to_string()))?;
        let stored = builder.schema().clone();
        let mut wanted: Vec<(usize, &str, DataType)> = Vec::new();
        for (i, field) in schema.fields().iter().enumerate() {
            let (name, ty) = match i {
                TIME => (
                    EVENT_TIME,
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                ),
                DELETED => (STORED_DELETED, DataType::Boolean),
                _ => (field.name().as_str(), field.data_type().clone()),
            };
            let at = stored
                .index_of(name)
                .map_err(|_| fail(format!("has no column `{name}`")))?;
            let found = stored.field(at).data_type();
            let same = match (found, &ty) {
                // The zone's spelling does not matter: the values are UTC µs.
                (
                    DataType::Timestamp(TimeUnit::Microsecond, Some(_)),
                    DataType::Timestamp(TimeUnit::Microsecond, Some(_)),
                ) => true,
                (a, b) => a == b,
            };
            if !same {
                return Err(fail(format!(
                    "column `{name}` is {found}, expected {ty}: was it written by another version of the group?"
                )));
            }
            wanted.push((at, name, ty));
        }
        let mut roots: Vec<usize> = wanted.iter().map(|w| w.0).collect();
        roots.sort_unstable();
        roots.dedup();
        let positions = wanted
            .iter()
            .map(|w| roots.binary_search(&w.0).unwrap_or_default())
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(ROWS_PER_BATCH)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        Ok(FileRows {
            reader,
            positions,
            schema: schema.clone(),
            path,
            held: None,
            rows_before: 0,
        })
    }

    fn fail(&self, message: String) -> datafusion::error::DataFusionError {
        external(TrainingError::Partition {
            path: self.path.clone(),
            message,
        })
    }

    /// The next batch to emit, or `None` at the end of the file.
    fn next_batch(&mut self) -> datafusion::error::Result<Option<RecordBatch>> {
        loop {
            let next = match self.reader.next() {
                Some(batch) => Some(self.conform(batch.map_err(|e| self.fail(e.to_string()))?)?),
                None => None,
            };
            let Some(held) = self.held.take() else {
                match next {
                    Some(batch) => {
                        self.held = Some(batch);
                        continue;
                    }
                    None => return Ok(None),
                }
            };
            let out = self.last_of_each_run(&held, next.as_ref())?;
            self.rows_before += held.num_rows();
            self.held = next;
            if out.num_rows() > 0 {
                return Ok(Some(out));
            }
        }
    }

    /// A file batch in the scan's schema.
    fn conform(&self, batch: RecordBatch) -> datafusion::error::Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = self
            .positions
            .iter()
            .map(|&p| batch.column(p).clone())
            .collect();
        let time = columns[TIME].as_primitive::<TimestampMicrosecondType>();
        if time.null_count() > 0 {
            return Err(self.fail("`event_time` has nulls".into()));
        }
        columns[TIME] = Arc::new(Int64Array::new(time.values().clone(), None));
        if columns[KEY].null_count() > 0 || columns[DELETED].null_count() > 0 {
            return Err(self.fail("the entity key or `is_deleted` has nulls".into()));
        }
        RecordBatch::try_new(self.schema.clone(), columns).map_err(Into::into)
    }

    /// `batch` without the rows a later row of the same key and time hides (`next`:
    /// the batch after it in the file, if any), after checking the order.
    fn last_of_each_run(
        &self,
        batch: &RecordBatch,
        next: Option<&RecordBatch>,
    ) -> datafusion::error::Result<RecordBatch> {
        let n = batch.num_rows();
        let keys = batch.column(KEY);
        let times = batch
            .column(TIME)
            .as_primitive::<arrow_array::types::Int64Type>();
        let same_keys = make_comparator(keys.as_ref(), keys.as_ref(), SortOptions::default())?;
        let mut keep = Vec::with_capacity(n);
        let mut dropped = false;
        for i in 0..n.saturating_sub(1) {
            let order = same_keys(i, i + 1).then(times.value(i).cmp(&times.value(i + 1)));
            if order == Ordering::Greater {
                return Err(self.unsorted(self.rows_before + i + 1));
            }
            keep.push(order != Ordering::Equal);
            dropped |= order == Ordering::Equal;
        }
        if n > 0 {
            let last_kept = match next.filter(|b| b.num_rows() > 0) {
                Some(next) => {
                    let next_keys = next.column(KEY);
                    let next_times = next
                        .column(TIME)
                        .as_primitive::<arrow_array::types::Int64Type>();
                    let cross =
                        make_comparator(keys.as_ref(), next_keys.as_ref(), SortOptions::default())?;
                    let order = cross(n - 1, 0).then(times.value(n - 1).cmp(&next_times.value(0)));
                    if order == Ordering::Greater {
                        return Err(self.unsorted(self.rows_before + n));
                    }
                    order != Ordering::Equal
                }
                None => true,
            };
            keep.push(last_kept);
            dropped |= !last_kept;
        }
        if !dropped {
            return Ok(batch.clone());
        }
        Ok(filter_record_batch(batch, &BooleanArray::from(keep))?)
    }

    fn unsorted(&self, row: usize) -> datafusion::error::DataFusionError {
        self.fail(format!(
            "row {} is out of order: a partition file must be sorted by entity key, then \
             event time (was it written by another tool?)",
            row + 1
        ))
    }
}
