//! The service's Prometheus metrics, in a registry of its own (no global state).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a per-shard series.
pub type ShardLabels = Vec<(String, String)>;

/// Every metric the service exports; counters count since the process started.
pub struct Metrics {
    registry: Registry,
    /// Records read from the stream.
    pub records_in: Counter,
    /// Events applied by the plugin.
    pub events_applied: Counter,
    /// Rows emitted (and written to the online store).
    pub rows_out: Counter,
    /// Duplicates dropped.
    pub duplicates: Counter,
    /// Events behind the watermark, written to the late log.
    pub late_events: Counter,
    /// Records that could not be decoded, written to the dead-letter log.
    pub dead_letters: Counter,
    /// Events the plugin failed on (skipped, dead-lettered); part of `dead_letters`.
    pub plugin_failures: Counter,
    /// Failed online-store or cache writes (each is retried).
    pub write_errors: Counter,
    /// Cache entries not written (the cache failed or was paused after a failure).
    pub cache_skipped: Counter,
    /// Failed source reads (each is retried).
    pub source_errors: Counter,
    /// Checkpoints committed.
    pub commits: Counter,
    /// Events of erased entities at or before their erasure, dropped on arrival.
    pub erased_events: Counter,
    /// Entity states dropped because their entity was erased.
    pub erased_states: Counter,
    /// Entities woken for their wake-ups with no event (a plugin with timers).
    pub entities_woken: Counter,
    /// Rows wake-ups emitted (timers fired).
    pub wake_rows: Counter,
    /// The watermark a caught-up shard moved to with the clock, µs since the epoch.
    pub clock_watermark_us: Gauge,
    /// Events held in reorder buffers.
    pub buffered_events: Gauge,
    /// Milliseconds behind the tip, per shard.
    pub lag_ms: Family<ShardLabels, Gauge>,
    /// Time to write a round's outputs and commit its checkpoint.
    pub commit_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered under the `lockstep_stream` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lockstep_stream");
        let m = Metrics {
            records_in: Counter::default(),
            events_applied: Counter::default(),
            rows_out: Counter::default(),
            duplicates: Counter::default(),
            late_events: Counter::default(),
            dead_letters: Counter::default(),
            plugin_failures: Counter::default(),
            write_errors: Counter::default(),
            source_errors: Counter::default(),
            cache_skipped: Counter::default(),
            commits: Counter::default(),
            erased_events: Counter::default(),
            erased_states: Counter::default(),
            entities_woken: Counter::default(),
            wake_rows: Counter::default(),
            clock_watermark_us: Gauge::default(),
            buffered_events: Gauge::default(),
            lag_ms: Family::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            registry: Registry::default(),
        };
        registry.register(
            "records_in",
            "Records read from the stream",
            m.records_in.clone(),
        );
        registry.register(
            "events_applied",
            "Events applied by the plugin",
            m.events_applied.clone(),
        );
        registry.register("rows_out", "Feature rows emitted", m.rows_out.clone());
        registry.register(
            "duplicates",
            "Duplicate events dropped",
            m.duplicates.clone(),
        );
        registry.register(
            "late_events",
            "Events behind the watermark (late log)",
            m.late_events.clone(),
        );
        registry.register(
            "dead_letters",
            "Records that could not be decoded or that the plugin failed on (dead-letter log)",
            m.dead_letters.clone(),
        );
        registry.register(
            "plugin_failures",
            "Events the plugin failed on, skipped while the rest was applied",
            m.plugin_failures.clone(),
        );
        registry.register(
            "write_errors",
            "Failed store or cache writes, retried",
            m.write_errors.clone(),
        );
        registry.register(
            "source_errors",
            "Failed stream reads, retried",
            m.source_errors.clone(),
        );
        registry.register("commits", "Checkpoints committed", m.commits.clone());
        registry.register(
            "erased_events",
            "Events of erased entities at or before their erasure, dropped",
            m.erased_events.clone(),
        );
        registry.register(
            "erased_states",
            "Entity states dropped because the entity was erased",
            m.erased_states.clone(),
        );
        registry.register(
            "entities_woken",
            "Entities woken for their wake-ups (timers) with no event",
            m.entities_woken.clone(),
        );
        registry.register(
            "wake_rows",
            "Rows wake-ups emitted (timers fired)",
            m.wake_rows.clone(),
        );
        registry.register(
            "clock_watermark_us",
            "The watermark caught-up shards follow with the clock (minus the allowed lateness), µs since the epoch",
            m.clock_watermark_us.clone(),
        );
        registry.register(
            "buffered_events",
            "Events held in reorder buffers",
            m.buffered_events.clone(),
        );
        registry.register(
            "lag_ms",
            "Milliseconds behind the tip of each shard",
            m.lag_ms.clone(),
        );
        registry.register(
            "commit_seconds",
            "Time to write a round's outputs and commit",
            m.commit_seconds.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
