use std::path::PathBuf;
use std::time::Duration;

/// How a [`crate::Runtime`] compiles, caches and limits plugins.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Wall-clock CPU budget of one call (`apply`, `read` or `manifest`). A call that
    /// runs longer is interrupted and fails with [`crate::CallError::CpuBudget`].
    pub cpu_budget: Duration,
    /// Granularity of the CPU budget: how often the engine's epoch advances.
    pub epoch_tick: Duration,
    /// Largest linear memory one instance may grow to, in bytes.
    pub memory_limit: u64,
    /// Directory for precompiled artifacts, keyed by component hash and engine
    /// settings. `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Use the pooling allocator (fast instantiation from pre-reserved slots) with this
    /// many concurrent instances; `0` uses on-demand allocation.
    pub pooled_instances: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cpu_budget: Duration::from_secs(10),
            epoch_tick: Duration::from_millis(5),
            memory_limit: 512 << 20,
            cache_dir: None,
            pooled_instances: 64,
        }
    }
}

impl RuntimeConfig {
    /// The default settings with the artifact cache in `dir`.
    pub fn with_cache(dir: impl Into<PathBuf>) -> Self {
        RuntimeConfig {
            cache_dir: Some(dir.into()),
            ..Self::default()
        }
    }
}
