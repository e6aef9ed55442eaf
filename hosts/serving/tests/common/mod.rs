//! Fixtures of the serving tests: a feature group, its rows in a real store, and a
//! featurestore-local endpoint in process.

#![allow(dead_code)]

use arrow_array::TimestampMicrosecondArray;
use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use lockstep_abi::{Manifest, Value, ValueType};
use lockstep_featurestore::local::{GroupDefinition, LocalStore};
use lockstep_online::{
    EmbeddedStore, GroupRef, OnlineError, OnlineRecord, OnlineStore, PutSummary,
};
use lockstep_sdk::ManifestBuilder;
use lockstep_serving::ServedGroup;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub const HASH: &str = "5e7a1c0ffee";
/// 2024-03-01T00:00:00Z.
pub const T0: i64 = 1_709_251_200_000_000;

/// `card_stats@1.2.0`: four features of every type the stores carry, with defaults.
pub fn manifest() -> Manifest {
    ManifestBuilder::new("card_stats", "1.2.0")
        .field("card", ValueType::String, "card id")
        .field("ts", ValueType::Timestamp, "event time")
        .field("amount", ValueType::Float64, "amount")
        .entity_key("card")
        .event_time("ts")
        .feature("spend", ValueType::Float64, "spend", Value::Float64(0.0))
        .feature("count", ValueType::Int64, "count", Value::Int64(0))
        .feature(
            "flagged",
            ValueType::Boolean,
            "flagged",
            Value::Boolean(false),
        )
        .feature(
            "merchant",
            ValueType::String,
            "merchant",
            Value::String("unknown".into()),
        )
        .build()
}

pub fn served() -> ServedGroup {
    ServedGroup::new(&manifest(), HASH)
}

pub fn group() -> GroupRef {
    GroupRef::of(&manifest(), HASH)
}

/// Rows of entities `card-{from}` … `card-{to - 1}`, with values a function of the
/// entity (a null merchant every 7th, a non-finite spend every 11th).
pub fn rows(from: usize, to: usize) -> RecordBatch {
    let schema = lockstep_core::schema::row_schema(&manifest());
    let n = to - from;
    let ids: Vec<usize> = (from..to).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            ids.iter().map(|i| format!("card-{i}")),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(ids.iter().map(|&i| T0 + i as i64))
                .with_timezone("UTC"),
        ),
        Arc::new(Float64Array::from_iter_values(ids.iter().map(|&i| {
            if i % 11 == 0 {
                f64::INFINITY
            } else {
                i as f64 * 0.1 + 1e-9
            }
        }))),
        Arc::new(Int64Array::from_iter_values(
            ids.iter().map(|&i| i as i64 * 3 - 1000),
        )),
        Arc::new(BooleanArray::from_iter(
            ids.iter().map(|&i| Some(i % 2 == 0)),
        )),
        Arc::new(StringArray::from_iter(
            ids.iter()
                .map(|&i| (i % 7 != 0).then(|| format!("m-{}-é", i % 13))),
        )),
    ];
    assert_eq!(columns.len(), schema.fields().len());
    let _ = n;
    RecordBatch::try_new(schema, columns).expect("rows fit the schema")
}

/// Waits for a store call outside a runtime (the embedded store answers on its first
/// poll; a SageMaker call runs on a runtime made for it).
pub trait Now: std::future::Future + Sized {
    fn now(self) -> Self::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(self)
    }
}

impl<F: std::future::Future> Now for F {}

/// An embedded store holding `rows(0, n)`.
pub fn embedded(dir: &std::path::Path, n: usize) -> EmbeddedStore {
    let store = EmbeddedStore::open(dir).expect("open the embedded store");
    let mut from = 0;
    while from < n {
        let to = (from + 20_000).min(n);
        store
            .put(&group(), &rows(from, to), T0)
            .now()
            .expect("put rows");
        from = to;
    }
    store
}

/// A featurestore-local endpoint over an embedded store, in process; stops on drop.
pub struct LocalEndpoint {
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalEndpoint {
    pub fn start(store: EmbeddedStore) -> LocalEndpoint {
        let group = group();
        let groups = HashMap::from([(
            lockstep_featurestore::wire::group_name(&group),
            GroupDefinition::new(&group.entity_key, "event_time"),
        )]);
        let local = Arc::new(LocalStore::new(store, groups));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                lockstep_featurestore::local::serve(listener, local, async {
                    let _ = stopped.await;
                })
                .await
                .expect("serve");
            });
        });
        LocalEndpoint {
            url,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The SageMaker client of this endpoint, reading the group's values typed.
    pub fn client(&self) -> lockstep_featurestore::SageMakerStore {
        let store = lockstep_featurestore::SageMakerStore::with_options(
            lockstep_featurestore::SageMakerOptions {
                aws: lockstep_aws::AwsOptions {
                    endpoint: Some(self.url.clone()),
                    region: Some("us-east-1".into()),
                    credentials: Some(("testing".into(), "testing".into())),
                },
                ..Default::default()
            },
        )
        .now();
        store.set_schema(&group(), lockstep_core::schema::row_schema(&manifest()));
        store
    }
}

impl Drop for LocalEndpoint {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A real store that counts how many times each key was fetched: the single-flight
/// check.
pub struct Counting<S> {
    pub inner: S,
    pub fetched: Mutex<HashMap<String, usize>>,
    /// When each get ran, and for how many keys.
    pub calls: Mutex<Vec<(std::time::Instant, usize)>>,
}

impl<S> Counting<S> {
    pub fn new(inner: S) -> Self {
        Counting {
            inner,
            fetched: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// (keys fetched, fetches of the most-fetched key).
    pub fn summary(&self) -> (usize, usize) {
        let fetched = self.fetched.lock().unwrap();
        (fetched.len(), fetched.values().copied().max().unwrap_or(0))
    }
}

#[async_trait::async_trait]
impl<S: OnlineStore> OnlineStore for Counting<S> {
    async fn put(
        &self,
        group: &GroupRef,
        rows: &RecordBatch,
        write_time: i64,
    ) -> Result<PutSummary, OnlineError> {
        self.inner.put(group, rows, write_time).await
    }

    async fn get(
        &self,
        group: &GroupRef,
        keys: &[String],
    ) -> Result<Vec<Option<OnlineRecord>>, OnlineError> {
        {
            let mut fetched = self.fetched.lock().unwrap();
            for key in keys {
                *fetched.entry(key.clone()).or_default() += 1;
            }
            self.calls
                .lock()
                .unwrap()
                .push((std::time::Instant::now(), keys.len()));
        }
        self.inner.get(group, keys).await
    }

    async fn delete(&self, group: &GroupRef, key: &str) -> Result<bool, OnlineError> {
        self.inner.delete(group, key).await
    }

    async fn delete_as_of(
        &self,
        group: &GroupRef,
        key: &str,
        at: i64,
        soft: bool,
    ) -> Result<lockstep_online::DeleteOutcome, OnlineError> {
        self.inner.delete_as_of(group, key, at, soft).await
    }
}

/// A generous deadline: these tests check values and isolation, not speed, on a busy
/// machine.
pub fn generous() -> lockstep_serving::ServeConfig {
    lockstep_serving::ServeConfig {
        timeout: std::time::Duration::from_secs(2),
        ..lockstep_serving::ServeConfig::default()
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The `p`-th percentile of `sorted` (µs).
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}
