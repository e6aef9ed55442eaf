//! [`FeatureServer`]: the read path (see the crate docs).

use crate::deadline::Deadline;
use crate::metrics::{BackendLabel, Metrics};
use crate::{Breaker, BreakerConfig, ServeError, ServedGroup};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use lockstep_cache::{CacheEntry, RedisCache, cache_key};
use lockstep_client::api::{EntityFeatures, FeatureRequest, FeatureResponse, Source};
use lockstep_core::rows::format_timestamp;
use lockstep_online::{OnlineRecord, OnlineStore};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// How the read path behaves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The hard deadline of a call: what is not read by then is served from defaults.
    pub timeout: Duration,
    /// How long a store fetch may take before it counts as failed. It runs on past
    /// the call's deadline, to fill the cache for the next call.
    pub store_timeout: Duration,
    /// XFetch's β: how early entries refresh (0: never early; 1: the paper's
    /// default; higher: earlier).
    pub xfetch_beta: f64,
    /// XFetch's δ, the cost of a refresh: the measured store read time when `None`.
    /// A store read on loopback takes well under a millisecond, which leaves almost
    /// no window for early refreshes; setting δ sizes that window directly (entries
    /// refresh within a few δ·β of their expiry).
    pub xfetch_delta: Option<Duration>,
    /// Entities per request at most.
    pub max_entities: usize,
    /// Store fetches in flight at most; beyond that, misses are served defaults, so
    /// a slow store cannot pile up work.
    pub max_fetches: usize,
    /// The cache's circuit breaker.
    pub cache_breaker: BreakerConfig,
    /// The store's circuit breaker.
    pub store_breaker: BreakerConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            timeout: Duration::from_millis(5),
            store_timeout: Duration::from_secs(1),
            xfetch_beta: 1.0,
            xfetch_delta: None,
            max_entities: 1000,
            max_fetches: 64,
            cache_breaker: BreakerConfig::default(),
            store_breaker: BreakerConfig::default(),
        }
    }
}

/// A cache entry as read (written by [`lockstep_cache::record_value`]): the row's
/// values left as JSON text, borrowed from the entry (no float is parsed and printed
/// again on the way through).
#[derive(Deserialize)]
struct CachedRow<'a> {
    event_time: i64,
    plugin_hash: &'a str,
    #[serde(borrow)]
    row: RowFields<'a>,
}

/// A row's columns in their stored order.
struct RowFields<'a>(Vec<(&'a str, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for RowFields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Fields<'a> {
            type Value = RowFields<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a row object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(entry) = map.next_entry::<&'de str, &'de RawValue>()? {
                    fields.push(entry);
                }
                Ok(RowFields(fields))
            }
        }
        d.deserialize_map(Fields(std::marker::PhantomData))
    }
}

impl RowFields<'_> {
    /// Feature `i` of the manifest, named `name`: rows keep the manifest's order
    /// (entity key, event time, then the features), so its place is tried first.
    fn get(&self, i: usize, name: &str) -> Option<&RawValue> {
        match self.0.get(i + 2) {
            Some((k, v)) if *k == name => Some(v),
            _ => self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| *v),
        }
    }
}

/// One entity's answer, its values selected and ready to send.
struct Served {
    event_time: i64,
    plugin_hash: String,
    values: Vec<Box<RawValue>>,
}

impl Served {
    fn from_cache(row: &CachedRow<'_>, group: &ServedGroup, selected: &[usize]) -> Self {
        Served {
            event_time: row.event_time,
            plugin_hash: row.plugin_hash.to_owned(),
            values: selected
                .iter()
                .map(|&i| match row.row.get(i, &group.features[i]) {
                    Some(v) => v.to_owned(),
                    None => null(),
                })
                .collect(),
        }
    }

    fn from_store(record: &OnlineRecord, group: &ServedGroup, selected: &[usize]) -> Self {
        Served {
            event_time: record.event_time,
            plugin_hash: record.plugin_hash.clone(),
            values: selected
                .iter()
                .map(|&i| {
                    record
                        .row
                        .get(&group.features[i])
                        .and_then(|v| serde_json::value::to_raw_value(v).ok())
                        .unwrap_or_else(null)
                })
                .collect(),
        }
    }
}

fn null() -> Box<RawValue> {
    // "null" is valid JSON: this cannot fail.
    RawValue::from_string("null".to_owned()).unwrap_or_default()
}

/// What became of one entity.
enum Outcome {
    Cache(Served),
    Store(Served),
    Missing,
    Default,
}

/// One fetch's answer: each key's record (`None`: the store has none), or why it failed.
type Fetched = Arc<Result<HashMap<String, Option<OnlineRecord>>, String>>;
/// A fetch in flight, awaited by every call that needs one of its keys.
type Flight = Shared<BoxFuture<'static, Fetched>>;

/// How long past a call's deadline a finished fetch stays on offer: scheduling slack.
const FLIGHT_GRACE: Duration = Duration::from_millis(50);

/// What [`FeatureServer::flights_for`] found and started.
struct Claimed {
    /// The fetch of each key, in order (`None`: none could start).
    slots: Vec<Option<Flight>>,
    /// Keys already being fetched by another call.
    joined: usize,
    /// Keys a new fetch was started for.
    started: usize,
}

/// A group's served versions, in semantic-version order (a pre-release before its
/// release).
type Versions = BTreeMap<semver::Version, Arc<ServedGroup>>;

struct Inner {
    groups: HashMap<String, Versions>,
    cache: Option<RedisCache>,
    store: Arc<dyn OnlineStore>,
    config: ServeConfig,
    metrics: Metrics,
    cache_breaker: Breaker,
    store_breaker: Breaker,
    flights: Mutex<HashMap<String, Flight>>,
    fetch_permits: Arc<Semaphore>,
    /// Moving average of a store fetch's duration, µs: XFetch's δ.
    fetch_micros: AtomicU64,
}

/// The serving path over an online store and an optional cache; cheap to clone.
#[derive(Clone)]
pub struct FeatureServer {
    inner: Arc<Inner>,
}

impl FeatureServer {
    /// Serves `groups` from `store`, through `cache` when given. Two groups with the
    /// same name and version are refused.
    pub fn new(
        groups: Vec<ServedGroup>,
        store: Arc<dyn OnlineStore>,
        cache: Option<RedisCache>,
        config: ServeConfig,
    ) -> Result<Self, ServeError> {
        let mut by_name: HashMap<String, Versions> = HashMap::new();
        for g in groups {
            let versions = by_name.entry(g.group.name.clone()).or_default();
            let id = g.group.id();
            let version = semver::Version::parse(&g.group.version).map_err(|e| {
                ServeError::Config(format!("{id}: the version is not a semantic version: {e}"))
            })?;
            if versions.insert(version, Arc::new(g)).is_some() {
                return Err(ServeError::Config(format!("{id} is served twice")));
            }
        }
        Ok(FeatureServer {
            inner: Arc::new(Inner {
                groups: by_name,
                cache,
                store,
                cache_breaker: Breaker::new(config.cache_breaker),
                store_breaker: Breaker::new(config.store_breaker),
                fetch_permits: Arc::new(Semaphore::new(config.max_fetches.max(1))),
                config,
                metrics: Metrics::new(),
                flights: Mutex::new(HashMap::new()),
                fetch_micros: AtomicU64::new(1_000),
            }),
        })
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The configuration.
    pub fn config(&self) -> &ServeConfig {
        &self.inner.config
    }

    /// Every group version served, by name then version.
    pub fn groups(&self) -> Vec<Arc<ServedGroup>> {
        let mut all: Vec<Arc<ServedGroup>> = self
            .inner
            .groups
            .values()
            .flat_map(|v| v.values().cloned())
            .collect();
        all.sort_by_key(|g| g.group.id());
        all
    }

    /// Whether the cache's and the store's circuits are open.
    pub fn breakers_open(&self) -> (bool, bool) {
        (
            self.inner.cache_breaker.is_open(),
            self.inner.store_breaker.is_open(),
        )
    }

    /// The served version of `name` (`version`, or the highest).
    pub fn group(&self, name: &str, version: Option<&str>) -> Result<Arc<ServedGroup>, ServeError> {
        let unknown = || ServeError::UnknownGroup {
            group: name.to_owned(),
            version: version.map(str::to_owned),
        };
        let versions = self.inner.groups.get(name).ok_or_else(unknown)?;
        match version {
            Some(v) => versions
                .values()
                .find(|g| g.group.version == v)
                .cloned()
                .ok_or_else(unknown),
            None => versions.values().next_back().cloned().ok_or_else(unknown),
        }
    }

    /// Answers `request` within the configured timeout (plus scheduling).
    pub async fn get(
        &self,
        request: &FeatureRequest,
    ) -> Result<FeatureResponse<Box<RawValue>>, ServeError> {
        let group = self.group(&request.group, request.version.as_deref())?;
        let selected = group.select(&request.features)?;
        let max = self.inner.config.max_entities;
        if request.entities.len() > max {
            return Err(ServeError::TooMany {
                count: request.entities.len(),
                max,
            });
        }
        let keys = request
            .entities
            .iter()
            .map(|e| group.entity_key(e))
            .collect::<Result<Vec<String>, ServeError>>()?;
        let mut deadline = Deadline::after(self.inner.config.timeout);
        let outcomes = self.lookup(&group, &selected, &keys, &mut deadline).await;
        Ok(self.respond(&group, &selected, keys, outcomes))
    }

    /// Each key's outcome by `deadline`.
    async fn lookup(
        &self,
        group: &Arc<ServedGroup>,
        selected: &[usize],
        keys: &[String],
        deadline: &mut Deadline,
    ) -> Vec<Outcome> {
        let inner = &self.inner;
        let m = &inner.metrics;
        let mut outcomes: Vec<Option<Outcome>> = keys.iter().map(|_| None).collect();
        let mut misses: Vec<usize> = Vec::new();
        if let Some(cache) = &inner.cache {
            if !inner.cache_breaker.allow() {
                return all_default(keys.len());
            }
            let group_id = group.group.id();
            let cache_keys: Vec<String> = keys.iter().map(|k| cache_key(&group_id, k)).collect();
            let entries = match deadline.run(cache.get_entries(&cache_keys)).await {
                Some(Ok(entries)) => {
                    inner.cache_breaker.success();
                    entries
                }
                failed => {
                    inner.cache_breaker.failure();
                    self.backend_error("cache");
                    if let Some(Err(e)) = failed {
                        tracing::debug!(error = %lockstep_core::ErrorChain(&e), "cache read failed; serving defaults");
                    }
                    return all_default(keys.len());
                }
            };
            let mut refresh = Vec::new();
            for (i, entry) in entries.into_iter().enumerate() {
                let Some(entry) = entry else {
                    misses.push(i);
                    continue;
                };
                match serde_json::from_str::<CachedRow>(&entry.value) {
                    Ok(row) => {
                        if self.refresh_early(entry.expires_in) {
                            refresh.push(keys[i].clone());
                        }
                        outcomes[i] =
                            Some(Outcome::Cache(Served::from_cache(&row, group, selected)));
                    }
                    Err(e) => {
                        tracing::warn!(key = %cache_keys[i], error = %lockstep_core::ErrorChain(&e), "corrupt cache entry; reading the store");
                        misses.push(i);
                    }
                }
            }
            m.hits.inc_by((keys.len() - misses.len()) as u64);
            m.misses.inc_by(misses.len() as u64);
            if !refresh.is_empty() {
                // Not awaited: the call serves what it has; the refresh fills the cache.
                let started = self.flights_for(group, &refresh).started;
                m.refreshes.inc_by(started as u64);
            }
        } else {
            misses = (0..keys.len()).collect();
        }
        if !misses.is_empty() {
            let miss_keys: Vec<String> = misses.iter().map(|&i| keys[i].clone()).collect();
            let claimed = self.flights_for(group, &miss_keys);
            m.joined_fetches.inc_by(claimed.joined as u64);
            let flights = claimed.slots;
            let wait = async {
                let mut got = Vec::with_capacity(flights.len());
                for flight in &flights {
                    got.push(match flight {
                        Some(f) => f.clone().await,
                        None => Arc::new(Err("no fetch".to_owned())),
                    });
                }
                got
            };
            match deadline.run(wait).await {
                Some(fetched) => {
                    for ((&i, key), result) in misses.iter().zip(&miss_keys).zip(fetched) {
                        outcomes[i] = Some(match result.as_ref() {
                            Ok(records) => match records.get(key) {
                                Some(Some(record)) => {
                                    Outcome::Store(Served::from_store(record, group, selected))
                                }
                                Some(None) => Outcome::Missing,
                                None => Outcome::Default,
                            },
                            Err(_) => Outcome::Default,
                        });
                    }
                }
                None => {
                    // Out of time: the fetches go on and fill the cache for later calls.
                    for &i in &misses {
                        outcomes[i] = Some(Outcome::Default);
                    }
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Default))
            .collect()
    }

    fn backend_error(&self, backend: &'static str) {
        let m = &self.inner.metrics;
        m.backend_errors
            .get_or_create(&BackendLabel { backend })
            .inc();
    }

    /// XFetch: refresh now, with probability rising as the entry nears expiry.
    fn refresh_early(&self, expires_in: Option<Duration>) -> bool {
        let beta = self.inner.config.xfetch_beta;
        let delta = match self.inner.config.xfetch_delta {
            Some(delta) => delta.as_secs_f64(),
            None => self.inner.fetch_micros.load(Ordering::Relaxed) as f64 / 1e6,
        };
        match expires_in {
            Some(left) => xfetch(left, delta, beta, fastrand::f64()),
            None => false,
        }
    }

    /// The fetch each of `keys` waits on: one in flight for it already (counted in
    /// `joined`), or a new one for every key nobody is fetching (counted in `started`;
    /// `None` when none could start — the store's circuit is open or too many fetches
    /// are in flight).
    fn flights_for(&self, group: &Arc<ServedGroup>, keys: &[String]) -> Claimed {
        let group_id = group.group.id();
        let mut flights = self.inner.flights.lock().unwrap_or_else(|e| e.into_inner());
        let mut existing: Vec<Option<Flight>> = Vec::with_capacity(keys.len());
        let mut mine: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        for key in keys {
            let flight_key = cache_key(&group_id, key);
            let found = flights.get(&flight_key).cloned();
            if found.is_none() && seen.insert(flight_key) {
                mine.push(key.clone());
            }
            existing.push(found);
        }
        let joined = existing.iter().filter(|f| f.is_some()).count();
        let started = mine.len();
        let launched = if mine.is_empty() {
            None
        } else {
            self.launch(group, mine, &mut flights)
        };
        Claimed {
            joined,
            started: if launched.is_some() { started } else { 0 },
            slots: existing
                .into_iter()
                .map(|f| f.or_else(|| launched.clone()))
                .collect(),
        }
    }

    /// Registers a fetch of `keys` in `flights` and spawns it; `None` when the store's
    /// circuit is open or too many fetches are in flight.
    fn launch(
        &self,
        group: &Arc<ServedGroup>,
        keys: Vec<String>,
        flights: &mut HashMap<String, Flight>,
    ) -> Option<Flight> {
        let inner = &self.inner;
        let permit = inner.fetch_permits.clone().try_acquire_owned().ok()?;
        if !inner.store_breaker.allow() {
            return None;
        }
        let (tx, rx) = oneshot::channel::<Fetched>();
        let flight: Flight = rx
            .map(|r| r.unwrap_or_else(|_| Arc::new(Err("the fetch was abandoned".to_owned()))))
            .boxed()
            .shared();
        let group_id = group.group.id();
        for key in &keys {
            flights.insert(cache_key(&group_id, key), flight.clone());
        }
        tokio::spawn(self.clone().run_fetch(group.clone(), keys, tx, permit));
        Some(flight)
    }

    /// Reads `keys` from the store, answers the waiters, writes the records back to the
    /// cache, then (after the grace period) lets the keys be fetched again.
    async fn run_fetch(
        self,
        group: Arc<ServedGroup>,
        keys: Vec<String>,
        answer: oneshot::Sender<Fetched>,
        permit: OwnedSemaphorePermit,
    ) {
        let inner = &self.inner;
        let m = &inner.metrics;
        m.store_fetches.inc();
        m.store_keys.inc_by(keys.len() as u64);
        let started = Instant::now();
        let read = inner.store.get(&group.group, &keys);
        let result: Result<HashMap<String, Option<OnlineRecord>>, String> =
            match tokio::time::timeout(inner.config.store_timeout, read).await {
                Ok(Ok(records)) => {
                    inner.store_breaker.success();
                    Ok(keys.iter().cloned().zip(records).collect())
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "the store did not answer within {:?}",
                    inner.config.store_timeout
                )),
            };
        let took = started.elapsed().as_micros().min(u64::MAX as u128) as u64;
        // δ follows recent fetches: new = 7/8 old + 1/8 sample.
        let old = inner.fetch_micros.load(Ordering::Relaxed);
        inner
            .fetch_micros
            .store(old - old / 8 + took / 8, Ordering::Relaxed);
        match &result {
            Ok(records) => {
                let found = records.values().filter(|r| r.is_some()).count();
                m.fallbacks.inc_by(found as u64);
            }
            Err(e) => {
                inner.store_breaker.failure();
                self.backend_error("store");
                tracing::warn!(group = %group.group.id(), error = %e, "store fetch failed");
            }
        }
        let result = Arc::new(result);
        // The waiters may have given up; the cache still gets the records.
        let _ = answer.send(result.clone());
        if let (Some(cache), Ok(records)) = (&inner.cache, result.as_ref()) {
            self.write_back(cache, &group, records).await;
        }
        drop(permit);
        // A call that read its miss before the write-back landed may not have looked
        // for this flight yet; it will within its own deadline. Until then the answer
        // stays on offer, so that call does not fetch the key a second time.
        tokio::time::sleep(inner.config.timeout + FLIGHT_GRACE).await;
        let group_id = group.group.id();
        let mut flights = inner.flights.lock().unwrap_or_else(|e| e.into_inner());
        for key in &keys {
            flights.remove(&cache_key(&group_id, key));
        }
    }

    async fn write_back(
        &self,
        cache: &RedisCache,
        group: &ServedGroup,
        records: &HashMap<String, Option<OnlineRecord>>,
    ) {
        let group_id = group.group.id();
        let entries: Vec<CacheEntry> = records
            .iter()
            .filter_map(|(key, record)| {
                let record = record.as_ref()?;
                Some(CacheEntry {
                    key: cache_key(&group_id, key),
                    event_time: record.event_time,
                    value: lockstep_cache::record_value(
                        record.event_time,
                        &record.plugin_hash,
                        &record.row,
                    ),
                })
            })
            .collect();
        if entries.is_empty() || self.inner.cache_breaker.is_open() {
            return;
        }
        let timeout = self.inner.config.store_timeout;
        match tokio::time::timeout(timeout, cache.put(&entries)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                self.backend_error("cache");
                tracing::debug!(error = %lockstep_core::ErrorChain(&e), "cache write-back failed");
            }
            Err(_) => self.backend_error("cache"),
        }
    }

    fn respond(
        &self,
        group: &ServedGroup,
        selected: &[usize],
        keys: Vec<String>,
        outcomes: Vec<Outcome>,
    ) -> FeatureResponse<Box<RawValue>> {
        let m = &self.inner.metrics;
        let defaults = || -> Vec<Box<RawValue>> {
            selected
                .iter()
                .map(|&i| group.default_value(i).to_owned())
                .collect()
        };
        let mut degraded = 0usize;
        let entities = keys
            .into_iter()
            .zip(outcomes)
            .map(|(entity, outcome)| {
                let (source, record) = match outcome {
                    Outcome::Cache(r) => (Source::Cache, Some(r)),
                    Outcome::Store(r) => (Source::Store, Some(r)),
                    Outcome::Missing => (Source::Missing, None),
                    Outcome::Default => (Source::Default, None),
                };
                match record {
                    Some(r) => EntityFeatures {
                        entity,
                        source,
                        values: r.values,
                        event_time: format_timestamp(r.event_time).as_str().map(str::to_owned),
                        plugin_hash: Some(r.plugin_hash),
                    },
                    None => {
                        if source == Source::Default {
                            degraded += 1;
                        } else {
                            m.missing.inc();
                        }
                        EntityFeatures {
                            entity,
                            source,
                            plugin_hash: None,
                            event_time: None,
                            values: defaults(),
                        }
                    }
                }
            })
            .collect();
        if degraded > 0 {
            m.defaults_served.inc_by(degraded as u64);
            m.degraded_responses.inc();
        }
        FeatureResponse {
            group: group.group.name.clone(),
            version: group.group.version.clone(),
            degraded: degraded > 0,
            features: selected
                .iter()
                .map(|&i| group.features[i].clone())
                .collect(),
            entities,
        }
    }
}

fn all_default(n: usize) -> Vec<Outcome> {
    (0..n).map(|_| Outcome::Default).collect()
}

/// XFetch (Vattani et al.): refresh when `-δ·β·ln(u) ≥ left`, `u` uniform in (0, 1].
fn xfetch(left: Duration, delta_seconds: f64, beta: f64, u: f64) -> bool {
    if beta <= 0.0 || delta_seconds <= 0.0 {
        return false;
    }
    let u = u.clamp(f64::MIN_POSITIVE, 1.0);
    -delta_seconds * beta * u.ln() >= left.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfetch_refreshes_more_often_as_expiry_nears_and_never_when_disabled() {
        let delta = 0.01; // a 10 ms fetch
        let rate = |left_ms: u64, beta: f64| {
            let n = 10_000;
            (1..=n)
                .filter(|i| {
                    xfetch(
                        Duration::from_millis(left_ms),
                        delta,
                        beta,
                        *i as f64 / n as f64,
                    )
                })
                .count() as f64
                / n as f64
        };
        // P(refresh) = exp(-left / (δβ)).
        assert!((rate(10, 1.0) - (-1.0f64).exp()).abs() < 0.01);
        assert!((rate(30, 1.0) - (-3.0f64).exp()).abs() < 0.01);
        assert!(rate(0, 1.0) > 0.999, "an expired entry always refreshes");
        assert!(rate(1_000, 1.0) < 0.001, "far from expiry: almost never");
        assert!(
            rate(30, 10.0) > rate(30, 1.0),
            "a higher β refreshes earlier"
        );
        assert_eq!(rate(0, 0.0), 0.0, "β = 0 turns it off");
    }

    #[test]
    fn versions_order_numerically() {
        let v = |s: &str| semver::Version::parse(s).expect(s);
        assert!(v("1.10.0") > v("1.9.3"));
        assert!(v("2.0.0") > v("1.99.99"));
        assert!(
            v("1.0.0") > v("1.0.0-rc1"),
            "a release comes after its pre-release"
        );
        assert_ne!(v("1.0.0-rc1"), v("1.0.0"), "and the two never collide");
    }
}
