//! A feature group's values at any instants, recomputed from its raw events: the
//! labels of a training set merged into the events as read points
//! (`training-set --exact`).
//!
//! The events are read through the same conform step as a backfill (rejects and the
//! erasure ledger alike), only the entities asked about are kept, and the executor
//! applies each entity's events up to each point and asks the plugin's
//! `read(state, at)` ([`lockstep_executor::Executor::read_at`]). Memory holds the
//! asked entities' events.

use crate::{BatchError, BatchJob, SourceReject, conformed_source, order_schema, register_source};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_select::concat::concat_batches;
use datafusion::physical_plan::ExecutionPlanProperties;
use futures::StreamExt;
use futures::future::BoxFuture;
use lockstep_core::key::EntityKey;
use lockstep_core::schema::input_schema;
use lockstep_executor::Executor;
use lockstep_runtime::Plugin;
use lockstep_session::JobSession;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// What reading the events found, besides the features.
#[derive(Debug, Default, Clone)]
pub struct PointsRead {
    /// Events read from the source (conformed, before any filter).
    pub events_read: u64,
    /// Of those, events of the entities asked about (after erasures).
    pub events_used: u64,
    /// Events the erasure ledger removed.
    pub erased: u64,
    /// Rows the source could not conform.
    pub rejects: Vec<SourceReject>,
}

/// Reads features at instants by running `plugin` over the job's source.
pub struct EventsReader {
    job: BatchJob,
    plugin: Plugin,
    last: Mutex<Option<PointsRead>>,
}

impl std::fmt::Debug for EventsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsReader")
            .field("source", &self.job.source)
            .field("plugin", &self.plugin.hash())
            .finish()
    }
}

impl EventsReader {
    /// A reader over `job`'s source (its format, SQL, S3 settings, erasures and
    /// memory limit apply) with `plugin`.
    pub fn new(job: BatchJob, plugin: Plugin) -> Self {
        EventsReader {
            job,
            plugin,
            last: Mutex::new(None),
        }
    }

    /// What the last read found (`None` before one).
    pub fn last_read(&self) -> Option<PointsRead> {
        self.last.lock().ok().and_then(|g| g.clone())
    }

    /// For each `(key, at)`, the plugin's features at `at` over the entity's events
    /// strictly before it (at or before it when `inclusive`): one row per point, the
    /// manifest's features in order, null where the entity had no state.
    pub async fn features_at(
        &self,
        points: Vec<(EntityKey, i64)>,
        inclusive: bool,
    ) -> Result<(RecordBatch, PointsRead), BatchError> {
        let wanted: HashSet<EntityKey> = points.iter().map(|(k, _)| k.clone()).collect();
        let (events, read) = self.events_of(&wanted).await?;
        let plugin = self.plugin.clone();
        let features = tokio::task::spawn_blocking(move || {
            Executor::new(&plugin)?.read_at(&events, &points, inclusive)
        })
        .await
        .map_err(|source| BatchError::Partition {
            partition: 0,
            source,
        })??;
        Ok((features, read))
    }

    /// The conformed events of the `wanted` entities, erasures applied.
    async fn events_of(
        &self,
        wanted: &HashSet<EntityKey>,
    ) -> Result<(RecordBatch, PointsRead), BatchError> {
        let job = &self.job;
        let manifest = self.plugin.manifest().clone();
        let session = JobSession::new(job.partitions.max(1))
            .with_memory_limit(job.memory_limit)
            .with_spill_dir(job.spill_dir.clone());
        let ctx = session.context()?;
        let rejects = Arc::new(Mutex::new(Vec::new()));
        register_source(&ctx, job, &manifest, &rejects).await?;
        let frame = match &job.sql {
            Some(sql) => ctx.sql(sql).await?,
            None => ctx.table("source").await?,
        };
        let source = frame.create_physical_plan().await?;
        let output = order_schema(&manifest);
        let conformed = conformed_source(source, job, &manifest, &output, &rejects, None)?;
        let input = input_schema(&manifest);
        let columns: Vec<usize> = (0..input.fields().len()).collect();
        let key_col = manifest
            .input_index(&manifest.entity_key)
            .ok_or_else(|| BatchError::Source("the entity key is not an input field".into()))?;
        let time_col = manifest
            .input_index(&manifest.event_time)
            .ok_or_else(|| BatchError::Source("the event time is not an input field".into()))?;
        let mut read = PointsRead::default();
        let mut kept = Vec::new();
        for partition in 0..conformed.output_partitioning().partition_count() {
            let mut stream = conformed.execute(partition, ctx.task_ctx())?;
            while let Some(batch) = stream.next().await {
                let batch = batch?.project(&columns).map_err(arrow)?;
                read.events_read += batch.num_rows() as u64;
                let keys = batch.column(key_col);
                let mask: arrow_array::BooleanArray = (0..batch.num_rows())
                    .map(|i| {
                        Some(
                            EntityKey::from_array(keys.as_ref(), i)
                                .is_some_and(|k| wanted.contains(&k)),
                        )
                    })
                    .collect();
                let batch =
                    arrow_select::filter::filter_record_batch(&batch, &mask).map_err(arrow)?;
                let (batch, erased) = job
                    .erasures
                    .filter(&batch, key_col, time_col)
                    .map_err(arrow)?;
                read.erased += erased as u64;
                read.events_used += batch.num_rows() as u64;
                if batch.num_rows() > 0 {
                    kept.push(batch);
                }
            }
        }
        read.rejects = rejects.lock().map(|r| r.clone()).unwrap_or_default();
        if let Ok(mut last) = self.last.lock() {
            *last = Some(read.clone());
        }
        Ok((concat_batches(&input, &kept).map_err(arrow)?, read))
    }
}

fn arrow(e: arrow_schema::ArrowError) -> BatchError {
    BatchError::DataFusion(e.into())
}

impl lockstep_training::PointReader for EventsReader {
    fn plugin_hash(&self) -> &str {
        self.plugin.hash()
    }

    fn read(
        &self,
        keys: ArrayRef,
        at: Vec<i64>,
        inclusive: bool,
    ) -> BoxFuture<'_, Result<Vec<ArrayRef>, String>> {
        Box::pin(async move {
            let points = (0..keys.len())
                .map(|i| {
                    EntityKey::from_array(keys.as_ref(), i)
                        .map(|k| (k, at[i]))
                        .ok_or_else(|| {
                            format!("label {i}: the entity key is null or not a string or integer")
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let (features, _) = self
                .features_at(points, inclusive)
                .await
                .map_err(|e| format!("reading the events: {e}"))?;
            Ok(features.columns().to_vec())
        })
    }
}
