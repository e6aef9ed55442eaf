//! The DataFusion session of a Lockstep job. See the crate README.

use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use std::path::PathBuf;
use std::sync::Arc;

/// What a job's session looks like. Built with [`JobSession::new`] and the `with_`
/// methods; turned into a context by [`JobSession::context`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSession {
    partitions: usize,
    memory_limit: Option<usize>,
    spill_dir: Option<PathBuf>,
    concurrent_sorts: usize,
    batch_rows: Option<usize>,
    sort_in_place_threshold: Option<usize>,
}

impl JobSession {
    /// A session over `partitions` partitions (at least one), without a memory limit.
    pub fn new(partitions: usize) -> Self {
        let partitions = partitions.max(1);
        JobSession {
            partitions,
            memory_limit: None,
            spill_dir: None,
            concurrent_sorts: partitions,
            batch_rows: None,
            sort_in_place_threshold: None,
        }
    }

    /// Bounds the memory of the job's operators to `limit` bytes (none: unbounded).
    /// Several partitions sort and spill at once: a greedy pool lets one starve the
    /// others, so the pool is a fair one that gives each spilling operator its share.
    pub fn with_memory_limit(mut self, limit: Option<usize>) -> Self {
        self.memory_limit = limit;
        self
    }

    /// Spills into `dir` (none: the system's temporary directory).
    pub fn with_spill_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.spill_dir = dir;
        self
    }

    /// How many sorts run at once (default: one per partition). Each holds back a
    /// reservation for merging its spilled runs; under a memory limit that
    /// reservation is cut to a quarter of its share of the pool, or the sorts would
    /// leave nothing to sort in (DataFusion's 10 MB default is more than a small pool
    /// has).
    pub fn with_concurrent_sorts(mut self, sorts: usize) -> Self {
        self.concurrent_sorts = sorts.max(1);
        self
    }

    /// Rows per batch (default: DataFusion's).
    pub fn with_batch_rows(mut self, rows: usize) -> Self {
        self.batch_rows = Some(rows);
        self
    }

    /// Sorts a partition's input whole (one lexsort, one take) while it fits
    /// `bytes`, instead of sorting each batch and merging them back.
    pub fn with_sort_in_place_threshold(mut self, bytes: usize) -> Self {
        self.sort_in_place_threshold = Some(bytes);
        self
    }

    /// The partitions.
    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// The session's configuration (without the memory pool, which is the runtime's).
    pub fn config(&self) -> SessionConfig {
        let mut config = SessionConfig::new().with_target_partitions(self.partitions);
        if let Some(rows) = self.batch_rows {
            config = config.with_batch_size(rows);
        }
        let execution = &mut config.options_mut().execution;
        // Parquet strings are read as Utf8, the type plugins and stores use, rather
        // than as Utf8View cast on every batch.
        execution.parquet.schema_force_view_types = false;
        if let Some(limit) = self.memory_limit {
            execution.sort_spill_reservation_bytes = execution
                .sort_spill_reservation_bytes
                .min(limit / (4 * self.concurrent_sorts));
        }
        if let Some(bytes) = self.sort_in_place_threshold {
            execution.sort_in_place_threshold_bytes = bytes;
        }
        config
    }

    /// A context with this configuration, the memory pool and the spill directory.
    pub fn context(&self) -> Result<SessionContext, DataFusionError> {
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(limit) = self.memory_limit {
            runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(limit)));
        }
        if let Some(dir) = &self.spill_dir {
            runtime = runtime.with_temp_file_path(dir.clone());
        }
        Ok(SessionContext::new_with_config_rt(
            self.config(),
            runtime.build_arc()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_limit_cuts_each_sorts_merge_reservation_to_a_quarter_of_its_share() {
        let default = JobSession::new(2).config();
        let reserved = default.options().execution.sort_spill_reservation_bytes;
        let limited = JobSession::new(2)
            .with_memory_limit(Some(64 << 20))
            .with_concurrent_sorts(8)
            .config();
        assert_eq!(
            limited.options().execution.sort_spill_reservation_bytes,
            reserved.min((64 << 20) / 32)
        );
        assert_eq!(limited.target_partitions(), 2);
        assert!(!limited.options().execution.parquet.schema_force_view_types);
    }

    #[test]
    fn a_context_bounds_its_pool_to_the_limit() {
        let ctx = JobSession::new(1)
            .with_memory_limit(Some(32 << 20))
            .context()
            .expect("context");
        let pool = &ctx.runtime_env().memory_pool;
        assert!(matches!(
            pool.memory_limit(),
            datafusion::execution::memory_pool::MemoryLimit::Finite(bytes) if bytes == 32 << 20
        ));
        assert_eq!(JobSession::new(0).partitions(), 1);
    }
}
