//! Features at the label instant itself: a group's values computed for each label by
//! something that can read a feature group's state at any instant (a plugin's
//! `read(state, as_of)` over the raw events), in place of the as-of join over stored
//! rows.
//!
//! The training crate never runs plugins: [`PointReader`] is the extension point a
//! host implements (`lockstep-batch` does, over the group's raw events), and
//! [`ExactReadExec`] is the plan node that hands it every label of one group at once.

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{Field, Schema, SchemaRef};
use arrow_select::concat::concat_batches;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::ExecutionPlanProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Computes a feature group's features at given instants, per entity.
pub trait PointReader: fmt::Debug + Send + Sync {
    /// The plugin hash it computes with: it must be the group version's, or the
    /// training set would mix two transforms under one name.
    fn plugin_hash(&self) -> &str;

    /// For each `(keys[i], at[i])`, the group's features (every feature of its
    /// manifest, in manifest order, one value per point; null where the entity has no
    /// state yet), from what is visible at `at[i]`: events strictly before it, or at or
    /// before it when `inclusive`.
    fn read(
        &self,
        keys: ArrayRef,
        at: Vec<i64>,
        inclusive: bool,
    ) -> BoxFuture<'_, std::result::Result<Vec<ArrayRef>, String>>;
}

/// Appends a group's features, read at each label's bound by a [`PointReader`], to
/// every label row. Reads its input whole (the labels, one partition) and makes one
/// request: a reader over raw events reads them once.
#[derive(Debug)]
pub struct ExactReadExec {
    input: Arc<dyn ExecutionPlan>,
    reader: Arc<dyn PointReader>,
    key: usize,
    bound: usize,
    inclusive: bool,
    /// Of the reader's columns (manifest order), those appended, in output order.
    pick: Vec<usize>,
    names: Vec<String>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    matched: Arc<AtomicU64>,
}

impl ExactReadExec {
    /// Reads `features` (name, type) of the reader's `all` (its manifest order) for
    /// `input` (one partition) at column `bound`, keyed by column `key`, naming the
    /// appended columns `<prefix><feature>`.
    #[allow(clippy::too_many_arguments)]
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        reader: Arc<dyn PointReader>,
        key: usize,
        bound: usize,
        inclusive: bool,
        all: &[String],
        features: &[(String, arrow_schema::DataType)],
        prefix: &str,
    ) -> Result<Self> {
        let partitions = input.output_partitioning().partition_count();
        if partitions != 1 {
            return Err(DataFusionError::Plan(format!(
                "ExactReadExec reads one partition of labels, got {partitions}"
            )));
        }
        let mut fields: Vec<Field> = input
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let mut pick = Vec::new();
        let mut names = Vec::new();
        for (name, ty) in features {
            let at = all.iter().position(|f| f == name).ok_or_else(|| {
                DataFusionError::Plan(format!("the reader has no feature `{name}`"))
            })?;
            pick.push(at);
            let column = format!("{prefix}{name}");
            fields.push(Field::new(&column, ty.clone(), true));
            names.push(column);
        }
        let schema = Arc::new(Schema::new(fields));
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(ExactReadExec {
            input,
            reader,
            key,
            bound,
            inclusive,
            pick,
            names,
            schema,
            properties,
            matched: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Labels whose entity had a state at the label instant, once run.
    pub fn matched(&self) -> Arc<AtomicU64> {
        self.matched.clone()
    }
}

impl DisplayAs for ExactReadExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ExactReadExec: {} (read at the label instant, events {} it)",
            self.names.join(", "),
            if self.inclusive {
                "at or before"
            } else {
                "strictly before"
            }
        )
    }
}

impl ExecutionPlan for ExactReadExec {
    fn name(&self) -> &str {
        "ExactReadExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
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
        let [input]: [Arc<dyn ExecutionPlan>; 1] = children.try_into().map_err(|c: Vec<_>| {
            DataFusionError::Internal(format!("ExactReadExec takes one input, got {}", c.len()))
        })?;
        Ok(Arc::new(ExactReadExec {
            input,
            reader: self.reader.clone(),
            key: self.key,
            bound: self.bound,
            inclusive: self.inclusive,
            pick: self.pick.clone(),
            names: self.names.clone(),
            schema: self.schema.clone(),
            properties: self.properties.clone(),
            matched: self.matched.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let mut input = self.input.execute(partition, context)?;
        let input_schema = self.input.schema();
        let (reader, key, bound, inclusive) =
            (self.reader.clone(), self.key, self.bound, self.inclusive);
        let (pick, schema, matched) =
            (self.pick.clone(), self.schema.clone(), self.matched.clone());
        let out = futures::stream::once(async move {
            let mut batches = Vec::new();
            while let Some(batch) = input.next().await {
                batches.push(batch?);
            }
            let labels = concat_batches(&input_schema, &batches)?;
            let at: Vec<i64> = labels
                .column(bound)
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| DataFusionError::Internal("label bound is not Int64".into()))?
                .values()
                .to_vec();
            let n = labels.num_rows();
            let read = reader
                .read(labels.column(key).clone(), at, inclusive)
                .await
                .map_err(DataFusionError::Execution)?;
            let mut columns = labels.columns().to_vec();
            let mut seen = vec![false; n];
            for &i in &pick {
                let column = read.get(i).filter(|c| c.len() == n).ok_or_else(|| {
                    DataFusionError::Execution(format!(
                        "the point reader returned {} columns of {:?} rows for {n} labels",
                        read.len(),
                        read.first().map(|c| c.len())
                    ))
                })?;
                for (row, s) in seen.iter_mut().enumerate() {
                    *s |= column.is_valid(row);
                }
                columns.push(column.clone());
            }
            matched.fetch_add(
                seen.iter().filter(|&&s| s).count() as u64,
                Ordering::Relaxed,
            );
            Ok(RecordBatch::try_new(schema, columns)?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            out,
        )))
    }
}
