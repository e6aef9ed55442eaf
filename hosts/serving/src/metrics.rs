//! The serving path's Prometheus metrics, in a registry of its own (no global state).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which API a request came through.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabel {
    /// `native` or `feast`.
    pub api: &'static str,
}

/// Which backend a breaker guards.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    /// `cache` or `store`.
    pub backend: &'static str,
}

/// Why a request was refused.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// The HTTP status: 401 (no valid token) or 403 (a group the tenant may not read).
    pub status: u16,
}

/// Every metric the serving path exports; counters count since the process started.
pub struct Metrics {
    registry: Registry,
    /// Time to answer a request, per API.
    pub request_seconds: Family<ApiLabel, Histogram>,
    /// Entities answered from the cache.
    pub hits: Counter,
    /// Entities the cache did not hold.
    pub misses: Counter,
    /// Entities read from the durable store (cache misses, or no cache).
    pub fallbacks: Counter,
    /// Entities with no record anywhere (served their defaults, not degraded).
    pub missing: Counter,
    /// Entities served the default snapshot because their record could not be read in time.
    pub defaults_served: Counter,
    /// Responses with at least one such entity.
    pub degraded_responses: Counter,
    /// Early refreshes started by XFetch (entries refreshed before they expired).
    pub refreshes: Counter,
    /// Store fetches (one call for the keys nobody else was already fetching).
    pub store_fetches: Counter,
    /// Keys fetched from the store.
    pub store_keys: Counter,
    /// Keys a request waited for on another request's fetch (single-flight).
    pub joined_fetches: Counter,
    /// Failed or timed-out calls, per backend.
    pub backend_errors: Family<BackendLabel, Counter>,
    /// 1 while a backend's circuit is open.
    pub breaker_open: Family<BackendLabel, Gauge>,
    /// Requests refused by the access policy, per status.
    pub refused_requests: Family<StatusLabel, Counter>,
    /// Answers left out of the served-feature log because its queue was full.
    pub feature_log_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered under the `lockstep_serve` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lockstep_serve");
        let m = Metrics {
            request_seconds: Family::new_with_constructor(|| {
                // 50 µs … ~1.6 s.
                Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
            }),
            hits: Counter::default(),
            misses: Counter::default(),
            fallbacks: Counter::default(),
            missing: Counter::default(),
            defaults_served: Counter::default(),
            degraded_responses: Counter::default(),
            refreshes: Counter::default(),
            store_fetches: Counter::default(),
            store_keys: Counter::default(),
            joined_fetches: Counter::default(),
            backend_errors: Family::default(),
            breaker_open: Family::default(),
            refused_requests: Family::default(),
            feature_log_dropped: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "request_seconds",
            "Time to answer a request",
            m.request_seconds.clone(),
        );
        registry.register(
            "cache_hits",
            "Entities answered from the cache",
            m.hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Entities the cache did not hold",
            m.misses.clone(),
        );
        registry.register(
            "store_fallbacks",
            "Entities read from the durable online store",
            m.fallbacks.clone(),
        );
        registry.register(
            "missing_entities",
            "Entities with no record (served their defaults, not degraded)",
            m.missing.clone(),
        );
        registry.register(
            "defaults_served",
            "Entities served the default snapshot because their record could not be read in time",
            m.defaults_served.clone(),
        );
        registry.register(
            "degraded_responses",
            "Responses with at least one entity served from the default snapshot",
            m.degraded_responses.clone(),
        );
        registry.register(
            "refreshes",
            "Early refreshes started by probabilistic early expiration",
            m.refreshes.clone(),
        );
        registry.register(
            "store_fetches",
            "Calls to the durable store",
            m.store_fetches.clone(),
        );
        registry.register(
            "store_keys",
            "Keys fetched from the durable store",
            m.store_keys.clone(),
        );
        registry.register(
            "joined_fetches",
            "Keys a request waited for on a fetch already in flight",
            m.joined_fetches.clone(),
        );
        registry.register(
            "backend_errors",
            "Failed or timed-out backend calls",
            m.backend_errors.clone(),
        );
        registry.register(
            "breaker_open",
            "1 while a backend's circuit breaker is open",
            m.breaker_open.clone(),
        );
        registry.register(
            "refused_requests",
            "Requests refused by the access policy (401: no valid token; 403: a group not granted)",
            m.refused_requests.clone(),
        );
        registry.register(
            "feature_log_dropped",
            "Answers left out of the served-feature log because its queue was full",
            m.feature_log_dropped.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
