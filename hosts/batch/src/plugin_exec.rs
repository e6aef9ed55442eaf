//! The plugin as a DataFusion [`ExecutionPlan`] node: [`PluginExec`].
//!
//! Its input must be hash-partitioned by entity key and sorted within each partition
//! by entity key, event time, event id and content (the order
//! [`lockstep_core::order::with_order_columns`] makes sortable). Each output partition
//! runs its own plugin instance over its input partition, dropping duplicates and
//! carrying state across batches ([`lockstep_executor::OrderedRun`]), and streams
//! the rows it emits.
//!
//! Everything a remote executor needs to rebuild the node is in [`PluginNodeConfig`],
//! which serialises to bytes: the component's location and SHA-256, and the manifest.
//! A physical-plan codec (Ballista's `PhysicalExtensionCodec`) encodes a node as
//! [`PluginNodeConfig::to_bytes`] and decodes it with [`PluginNodeConfig::from_bytes`]
//! then [`PluginExec::from_config`], which refuses a component whose bytes differ.

use crate::BatchError;
use arrow_array::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;
use lockstep_abi::Manifest;
use lockstep_core::erasure::Erasures;
use lockstep_core::key::StateMap;
use lockstep_core::rows::row_json;
use lockstep_core::schema::row_schema;
use lockstep_executor::{Executor, RunStats};
use lockstep_runtime::{Plugin, Runtime};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::{Arc, Mutex};

/// Everything needed to rebuild a [`PluginExec`] on another machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginNodeConfig {
    /// Where the component is, as the executor can read it (a path for now).
    pub component: String,
    /// SHA-256 of the component bytes: an executor refuses other bytes.
    pub component_hash: String,
    /// The plugin's manifest.
    pub manifest: Manifest,
    /// Keep every entity's final state (see [`PluginExec::finished`]).
    pub keep_states: bool,
    /// For a plugin with timers: the instant up to which each entity takes its
    /// wake-ups after its last event, when fixed before the job runs (a node rebuilt
    /// elsewhere cannot share the end of the input observed in this process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fire_until: Option<i64>,
}

impl PluginNodeConfig {
    /// The configuration as bytes (JSON), for a plan codec.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings, booleans and a manifest of plain data: serialising it
        // cannot fail, and an empty result would be refused by `from_bytes`.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads [`to_bytes`](Self::to_bytes) output.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BatchError> {
        serde_json::from_slice(bytes).map_err(BatchError::NodeConfig)
    }

    /// Loads the component with `runtime`, checking that it is the one configured.
    pub fn load(&self, runtime: &Runtime) -> Result<Plugin, BatchError> {
        let plugin =
            runtime
                .load_file(&self.component)
                .map_err(|source| BatchError::Component {
                    component: self.component.clone(),
                    source,
                })?;
        if plugin.hash() != self.component_hash {
            return Err(BatchError::NotThePlansComponent {
                component: self.component.clone(),
                found: plugin.hash().to_owned(),
                wanted: self.component_hash.clone(),
            });
        }
        if plugin.manifest() != &self.manifest {
            return Err(BatchError::NotThePlansManifest {
                component: self.component.clone(),
            });
        }
        Ok(plugin)
    }
}

/// What the node's partitions left behind once their streams ended.
#[derive(Debug, Default)]
pub struct Finished {
    /// Final state per entity (with [`PluginNodeConfig::keep_states`]; else empty).
    pub states: StateMap,
    /// Counters summed over the partitions that finished.
    pub stats: RunStats,
    /// How many partitions finished.
    pub partitions: usize,
    /// Events the plugin failed on, skipped (see [`crate::BatchOutput::plugin_failures`]).
    pub failed: Vec<crate::SourceReject>,
    /// Events of erased entities at or before their erasure, dropped before the plugin.
    pub erased: u64,
}

/// Up to when a plugin with timers wakes each entity after its last event (see
/// `lockstep_abi::timers`).
#[derive(Debug, Clone, Default)]
pub enum FireUntil {
    /// Never: only wake-ups between events are taken.
    #[default]
    Never,
    /// Up to this instant (UTC µs).
    At(i64),
    /// Up to the end of the input, known once the sort before the node has read it
    /// all (a single-process plan: the value is shared in memory).
    EndOfInput(Arc<crate::EndOfInput>),
}

impl FireUntil {
    /// The instant, if known now.
    pub fn get(&self) -> Option<i64> {
        match self {
            FireUntil::Never => None,
            FireUntil::At(at) => Some(*at),
            FireUntil::EndOfInput(end) => end.get(),
        }
    }
}

/// Runs a plugin over entity-partitioned, sorted events; see the [module](self) docs.
pub struct PluginExec {
    config: PluginNodeConfig,
    plugin: Plugin,
    input: Arc<dyn ExecutionPlan>,
    key: Arc<dyn PhysicalExpr>,
    properties: Arc<PlanProperties>,
    finished: Arc<Mutex<Finished>>,
    /// Erased entities: their events at or before the erasure never reach the plugin.
    /// Not part of the serialised configuration: a node rebuilt elsewhere reads the
    /// erasure ledger where it runs.
    erasures: Arc<Erasures>,
    /// Up to when entities take their wake-ups after their last event.
    fire_until: FireUntil,
}

impl fmt::Debug for PluginExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginExec")
            .field("plugin", &self.config.manifest.id())
            .field("component_hash", &self.config.component_hash)
            .finish_non_exhaustive()
    }
}

impl PluginExec {
    /// A node running `plugin` (loaded from `component`) over `input`, which must be
    /// partitioned and sorted as the [module](self) docs say.
    pub fn new(
        plugin: Plugin,
        component: String,
        keep_states: bool,
        input: Arc<dyn ExecutionPlan>,
    ) -> Result<Self, BatchError> {
        let config = PluginNodeConfig {
            component,
            component_hash: plugin.hash().to_owned(),
            manifest: plugin.manifest().clone(),
            keep_states,
            fire_until: None,
        };
        Self::with_plugin(config, plugin, input)
    }

    /// Rebuilds a node from its configuration, loading the component with `runtime`.
    pub fn from_config(
        config: PluginNodeConfig,
        runtime: &Runtime,
        input: Arc<dyn ExecutionPlan>,
    ) -> Result<Self, BatchError> {
        let plugin = config.load(runtime)?;
        Self::with_plugin(config, plugin, input)
    }

    fn with_plugin(
        config: PluginNodeConfig,
        plugin: Plugin,
        input: Arc<dyn ExecutionPlan>,
    ) -> Result<Self, BatchError> {
        let key = datafusion::physical_expr::expressions::col(
            &config.manifest.entity_key,
            &input.schema(),
        )?;
        let properties = PlanProperties::new(
            EquivalenceProperties::new(row_schema(&config.manifest)),
            input.output_partitioning().clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        let fire_until = config.fire_until.map_or(FireUntil::Never, FireUntil::At);
        Ok(PluginExec {
            config,
            plugin,
            input,
            key,
            properties: Arc::new(properties),
            finished: Arc::default(),
            erasures: Arc::default(),
            fire_until,
        })
    }

    /// The same node, waking each entity after its last event up to `fire_until`
    /// (an instant is kept in the serialisable configuration too).
    pub fn with_fire_until(mut self, fire_until: FireUntil) -> Self {
        self.config.fire_until = match &fire_until {
            FireUntil::At(at) => Some(*at),
            _ => None,
        };
        self.fire_until = fire_until;
        self
    }

    /// The same node, dropping the events `erasures` erases (see
    /// [`lockstep_core::erasure`]) before the plugin sees them.
    pub fn with_erasures(mut self, erasures: Arc<Erasures>) -> Self {
        self.erasures = erasures;
        self
    }

    /// The node's serialisable configuration.
    pub fn config(&self) -> &PluginNodeConfig {
        &self.config
    }

    /// Takes what the partitions that have finished so far left behind.
    pub fn finished(&self) -> Finished {
        std::mem::take(&mut *self.finished.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl DisplayAs for PluginExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "PluginExec: {} (sha256 {}…)",
            self.config.manifest.id(),
            &self.config.component_hash[..self.config.component_hash.len().min(12)]
        )
    }
}

/// A core error through DataFusion's error type; [`crate::run`] unwraps it again.
fn external(e: lockstep_executor::ExecError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl ExecutionPlan for PluginExec {
    fn name(&self) -> &str {
        "PluginExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::KeyPartitioned(vec![self.key.clone()])]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(format!(
                "PluginExec takes one input, got {}",
                children.len()
            )));
        }
        let input = children.swap_remove(0);
        Self::with_plugin(self.config.clone(), self.plugin.clone(), input)
            .map(|node| {
                Arc::new(
                    node.with_erasures(self.erasures.clone())
                        .with_fire_until(self.fire_until.clone()),
                ) as Arc<dyn ExecutionPlan>
            })
            .map_err(|e| DataFusionError::Plan(e.to_string()))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        let mut input = self.input.execute(partition, context)?;
        let mut executor = Executor::new(&self.plugin).map_err(external)?;
        let keep_states = self.config.keep_states;
        let n_input = self.config.manifest.input.len();
        let finished = self.finished.clone();
        let erasures = self.erasures.clone();
        let fire_until = self.fire_until.clone();
        let manifest = &self.config.manifest;
        let column = |name: &str| {
            manifest.input_index(name).ok_or_else(|| {
                DataFusionError::Plan(format!("the manifest has no input field `{name}`"))
            })
        };
        let (key_col, time_col) = (column(&manifest.entity_key)?, column(&manifest.event_time)?);
        let mut builder = RecordBatchReceiverStreamBuilder::new(self.schema(), 2);
        let tx = builder.tx();
        builder.spawn(async move {
            let mut states = StateMap::default();
            let mut run = executor.ordered(&mut states);
            if !keep_states {
                run = run.discard_finished_states();
            }
            // Plugin calls are CPU-bound: on a multi-threaded runtime, let it move the
            // sort and the repartitioning to another worker meanwhile.
            let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::MultiThread;
            let mut erased = 0u64;
            let mut horizon_set = false;
            while let Some(batch) = input.next().await {
                let batch: RecordBatch = batch?;
                if !horizon_set {
                    // The sort before this node has read the whole input by now.
                    run.set_fire_until(fire_until.get());
                    horizon_set = true;
                }
                let (batch, dropped) = erasures.filter(&batch, key_col, time_col)?;
                erased += dropped as u64;
                if batch.num_rows() == 0 {
                    continue;
                }
                let emitted = if multi_thread {
                    tokio::task::block_in_place(|| run.push(&batch))
                } else {
                    run.push(&batch)
                }
                .map_err(external)?;
                let failed = run.take_failed();
                if !failed.is_empty() {
                    // The input columns, without the order columns.
                    let events = batch.project(&(0..n_input).collect::<Vec<_>>())?;
                    let mut done = finished.lock().unwrap_or_else(|p| p.into_inner());
                    done.failed
                        .extend(failed.into_iter().map(|f| crate::SourceReject {
                            record: row_json(&events, f.row),
                            column: String::new(),
                            reason: format!(
                                "the plugin failed on this event of entity `{}`: {}",
                                f.key, f.message
                            ),
                        }));
                }
                if emitted.num_rows() > 0 && tx.send(Ok(emitted)).await.is_err() {
                    // The consumer is gone (the query was cancelled or failed).
                    return Ok(());
                }
            }
            if !horizon_set {
                run.set_fire_until(fire_until.get());
            }
            let last = run.finish().map_err(external)?;
            if last.num_rows() > 0 && tx.send(Ok(last)).await.is_err() {
                return Ok(());
            }
            let stats = run.stats().clone();
            drop(run);
            let mut done = finished.lock().unwrap_or_else(|p| p.into_inner());
            if keep_states {
                done.states.extend(states);
            }
            done.stats.add(&stats);
            done.erased += erased;
            done.partitions += 1;
            Ok(())
        });
        Ok(builder.build())
    }
}
