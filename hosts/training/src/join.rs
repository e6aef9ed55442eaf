//! [`AsOfJoinExec`]: the as-of join as a DataFusion operator.
//!
//! Both inputs come hash-partitioned on the entity key with the same partition count,
//! labels sorted by (key, visibility bound) and feature rows by (key, event time). Each
//! partition is one merge pass ([`crate::asof::Cursor`]): every feature row is passed
//! once, and only the batches still reachable by a later label are held, so memory does
//! not grow with the input. Every label row comes out once, in the order it came in,
//! with the group's features appended (null where it sees none).

use crate::asof::{AsOf, Cursor, FeatureRows, Label, Step};
use crate::features::{DELETED, FIRST_FEATURE, KEY, TIME};
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef, RecordBatch, new_null_array};
use arrow_buffer::{BooleanBuffer, ScalarBuffer};
use arrow_ord::ord::{DynComparator, make_comparator};
use arrow_schema::{Field, Schema, SchemaRef, SortOptions};
use arrow_select::interleave::interleave;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use std::cmp::Ordering;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

/// Where the join finds what it needs in its left (label) input.
#[derive(Debug, Clone, Copy)]
pub struct LabelColumns {
    /// The entity key, typed like the group's key.
    pub key: usize,
    /// The visibility bound, Int64 µs.
    pub bound: usize,
    /// The TTL reference, Int64 µs.
    pub age_from: usize,
}

/// The as-of join of labels (left) with one group's feature rows (right).
#[derive(Debug)]
pub struct AsOfJoinExec {
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    columns: LabelColumns,
    spec: AsOf,
    /// Put before each feature's name in the output (`<group>__`).
    prefix: String,
    /// Output name of each feature: `<prefix><feature>`.
    names: Vec<String>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    /// Labels that saw a row, over all partitions.
    matched: Arc<AtomicU64>,
}

impl AsOfJoinExec {
    /// Joins `left` (sorted by key, then bound, per partition) with `right` (the
    /// feature scan's schema, sorted by key, then event time, per partition), naming
    /// the appended features `<prefix><feature>`.
    pub fn try_new(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        columns: LabelColumns,
        spec: AsOf,
        prefix: &str,
    ) -> Result<Self> {
        let (lp, rp) = (
            left.output_partitioning().partition_count(),
            right.output_partitioning().partition_count(),
        );
        if lp != rp {
            return Err(DataFusionError::Plan(format!(
                "AsOfJoinExec needs as many label partitions as feature partitions ({lp} vs {rp})"
            )));
        }
        let right_schema = right.schema();
        let left_schema = left.schema();
        let (lk, rk) = (
            left_schema.field(columns.key).data_type(),
            right_schema.field(KEY).data_type(),
        );
        if lk != rk {
            return Err(DataFusionError::Plan(format!(
                "AsOfJoinExec: label key `{}` is {lk}, feature key is {rk}",
                left_schema.field(columns.key).name()
            )));
        }
        let mut fields: Vec<Field> = left_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let mut names = Vec::new();
        for field in right_schema.fields().iter().skip(FIRST_FEATURE) {
            let name = format!("{prefix}{}", field.name());
            fields.push(Field::new(&name, field.data_type().clone(), true));
            names.push(name);
        }
        let schema = Arc::new(Schema::new(fields));
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            left.output_partitioning().clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(AsOfJoinExec {
            left,
            right,
            columns,
            spec,
            prefix: prefix.to_owned(),
            names,
            schema,
            properties,
            matched: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Labels that saw a feature row so far, over all partitions.
    pub fn matched(&self) -> Arc<AtomicU64> {
        self.matched.clone()
    }
}

impl DisplayAs for AsOfJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "AsOfJoinExec: {} ({}, ttl={:?})",
            self.names.join(", "),
            if self.spec.inclusive {
                "at or before"
            } else {
                "strictly before"
            },
            self.spec.ttl
        )
    }
}

impl ExecutionPlan for AsOfJoinExec {
    fn name(&self) -> &str {
        "AsOfJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.left, &self.right]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [left, right]: [Arc<dyn ExecutionPlan>; 2] =
            children.try_into().map_err(|c: Vec<_>| {
                DataFusionError::Internal(format!("AsOfJoinExec takes two inputs, got {}", c.len()))
            })?;
        let mut node = AsOfJoinExec::try_new(left, right, self.columns, self.spec, &self.prefix)?;
        node.matched = self.matched.clone();
        Ok(Arc::new(node))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let mut left = self.left.execute(partition, context.clone())?;
        let right = self.right.execute(partition, context)?;
        let mut merge = Merge {
            right,
            buffered: Buffered::default(),
            cursor: Cursor::default(),
            columns: self.columns,
            spec: self.spec,
            schema: self.schema.clone(),
            right_schema: self.right.schema(),
        };
        let matched = self.matched.clone();
        let mut builder = RecordBatchReceiverStreamBuilder::new(self.schema.clone(), 2);
        let tx = builder.tx();
        builder.spawn(async move {
            while let Some(labels) = left.next().await {
                let (out, seen) = merge.join(&labels?).await?;
                matched.fetch_add(seen, AtomicOrdering::Relaxed);
                if tx.send(Ok(out)).await.is_err() {
                    return Ok(()); // the consumer is gone
                }
            }
            Ok(())
        });
        Ok(builder.build())
    }
}

/// A feature batch held for the merge, with what the merge reads per row typed once.
struct Held {
    batch: RecordBatch,
    /// The row number of its first row.
    start: usize,
    times: ScalarBuffer<i64>,
    deleted: BooleanBuffer,
}

/// The feature batches still reachable, with row numbers running on across batches.
#[derive(Default)]
struct Buffered {
    held: VecDeque<Held>,
    /// The row number after the last held row.
    end: usize,
    exhausted: bool,
}

impl Buffered {
    fn locate(&self, row: usize) -> (usize, usize) {
        let b = self.held.partition_point(|h| h.start <= row) - 1;
        (b, row - self.held[b].start)
    }

    fn push(&mut self, batch: RecordBatch) {
        let start = self.end;
        self.end += batch.num_rows();
        self.held.push_back(Held {
            times: batch
                .column(TIME)
                .as_primitive::<Int64Type>()
                .values()
                .clone(),
            deleted: batch.column(DELETED).as_boolean().values().clone(),
            batch,
            start,
        });
    }

    /// Drops the batches wholly before `row`.
    fn release_before(&mut self, row: usize) {
        while self.held.len() > 1 && self.held[1].start <= row {
            self.held.pop_front();
        }
        if self.held.len() == 1 && self.end <= row {
            self.held.clear();
        }
    }
}

/// One partition's merge state.
struct Merge {
    right: SendableRecordBatchStream,
    buffered: Buffered,
    cursor: Cursor,
    columns: LabelColumns,
    spec: AsOf,
    schema: SchemaRef,
    right_schema: SchemaRef,
}

/// The held feature rows seen from one label.
struct View<'a> {
    buffered: &'a Buffered,
    /// Per held batch: its key against the labels' key column.
    keys: &'a [DynComparator],
    label: usize,
}

impl FeatureRows for View<'_> {
    fn key_cmp(&self, row: usize) -> Ordering {
        let (b, r) = self.buffered.locate(row);
        (self.keys[b])(r, self.label)
    }
    fn time(&self, row: usize) -> i64 {
        let (b, r) = self.buffered.locate(row);
        self.buffered.held[b].times[r]
    }
    fn deleted(&self, row: usize) -> bool {
        let (b, r) = self.buffered.locate(row);
        self.buffered.held[b].deleted.value(r)
    }
}

impl Merge {
    /// Joins one batch of labels: their columns, then the features each one sees, and
    /// how many saw a row.
    async fn join(&mut self, labels: &RecordBatch) -> Result<(RecordBatch, u64)> {
        let key = labels.column(self.columns.key).clone();
        let bound = labels
            .column(self.columns.bound)
            .as_primitive::<Int64Type>()
            .clone();
        let age_from = labels
            .column(self.columns.age_from)
            .as_primitive::<Int64Type>()
            .clone();
        let mut keys = self.comparators(&key)?;
        // The batches the matches point into (held alive here even once released), and
        // for each label (source, row); the last source is a one-row null batch.
        let mut sources: Vec<RecordBatch> = Vec::new();
        let mut starts: Vec<usize> = Vec::new(); // each source's first row number
        let mut picks: Vec<Option<(usize, usize)>> = Vec::with_capacity(labels.num_rows());
        for i in 0..labels.num_rows() {
            let label = Label {
                bound: bound.value(i),
                age_from: age_from.value(i),
            };
            let seen = loop {
                let view = View {
                    buffered: &self.buffered,
                    keys: &keys,
                    label: i,
                };
                match self.cursor.seek(
                    &view,
                    label,
                    self.spec,
                    self.buffered.end,
                    self.buffered.exhausted,
                ) {
                    Step::Seen(seen) => break seen,
                    Step::NeedMore => {
                        let keep_from = self.cursor.last.unwrap_or(self.cursor.next);
                        let before = self.buffered.held.len();
                        self.buffered.release_before(keep_from);
                        keys.drain(..before - self.buffered.held.len());
                        if let Some(batch) = self.fetch().await? {
                            keys.push(make_comparator(
                                batch.column(KEY).as_ref(),
                                key.as_ref(),
                                SortOptions::default(),
                            )?);
                        }
                    }
                }
            };
            picks.push(seen.map(|row| {
                let (b, r) = self.buffered.locate(row);
                let start = self.buffered.held[b].start;
                // Matches move forward with the labels: look from the newest source.
                let source = match starts.iter().rposition(|&s| s == start) {
                    Some(idx) => idx,
                    None => {
                        sources.push(self.buffered.held[b].batch.clone());
                        starts.push(start);
                        sources.len() - 1
                    }
                };
                (source, r)
            }));
        }
        let seen = picks.iter().filter(|p| p.is_some()).count() as u64;
        let nulls = sources.len();
        let indices: Vec<(usize, usize)> = picks.iter().map(|p| p.unwrap_or((nulls, 0))).collect();
        let mut columns: Vec<ArrayRef> = labels.columns().to_vec();
        for (j, field) in self
            .right_schema
            .fields()
            .iter()
            .enumerate()
            .skip(FIRST_FEATURE)
        {
            let null = new_null_array(field.data_type(), 1);
            let mut arrays: Vec<&dyn Array> =
                sources.iter().map(|b| b.column(j).as_ref()).collect();
            arrays.push(null.as_ref());
            columns.push(interleave(&arrays, &indices)?);
        }
        let out = RecordBatch::try_new(self.schema.clone(), columns)?;
        Ok((out, seen))
    }

    /// Comparators of every held batch's keys against `key`.
    fn comparators(&self, key: &ArrayRef) -> Result<Vec<DynComparator>> {
        self.buffered
            .held
            .iter()
            .map(|h| {
                make_comparator(
                    h.batch.column(KEY).as_ref(),
                    key.as_ref(),
                    SortOptions::default(),
                )
                .map_err(Into::into)
            })
            .collect()
    }

    /// Reads the next non-empty feature batch into the buffer; `None` at the end.
    async fn fetch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            match self.right.next().await {
                Some(batch) => {
                    let batch = batch?;
                    if batch.num_rows() == 0 {
                        continue;
                    }
                    self.buffered.push(batch.clone());
                    return Ok(Some(batch));
                }
                None => {
                    self.buffered.exhausted = true;
                    return Ok(None);
                }
            }
        }
    }
}
