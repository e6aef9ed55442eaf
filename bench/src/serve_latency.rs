//! Latency of the serving path at a fixed request rate: `lockstep serve`'s HTTP API
//! (in process, on loopback) over a real redis-server, read with the Rust client.
//!
//! A group of 60 float features over 10,000 entities is written to the embedded
//! store; one pass through the serving path fills the cache (misses go to the store
//! and are written back), then each scenario sends requests open loop: request i is due
//! at start + i / rate and its latency counts from then, so a slow answer delays the
//! next ones and they count it. Every 97th answer is checked value by value.
//!
//! With `--freeze-pid PID` the scenarios run while that redis-server is frozen
//! (SIGSTOP once the cache is filled, SIGCONT at the end): every answer waits out the
//! deadline (`--timeout-ms`, 5 by default) and is served from defaults, so the
//! latencies show how far past its deadline a call is answered. `--no-breaker` keeps
//! the cache's circuit closed, so every call waits (the worst case) instead of the
//! breaker answering at once.
//!
//! `--tenant-token` serves with one tenant and sends its bearer token on every request
//! (the cost of the access check, side by side with a run without).
//!
//! `--log-features DIR` logs every answer (the served-feature log's cost, likewise).
//! `--log-flush-ms N` makes the log write a file every N ms (how the size of its bursts
//! matters).
//!
//! Usage: `serve-latency --redis redis://127.0.0.1:PORT [--timeout-ms N] [--freeze-pid PID]
//! [--no-breaker] [--tenant-token] [--log-features DIR] --scenario NAME:ENTITIES:FEATURES:RATE:SECONDS …`
//! Prints one JSON object per scenario.

use lockstep_abi::{Value, ValueType};
use lockstep_client::Client;
use lockstep_client::api::{FeatureRequest, Source};
use lockstep_online::{EmbeddedStore, GroupRef, OnlineStore};
use lockstep_sdk::ManifestBuilder;
use lockstep_serving::{FeatureServer, ServeConfig, ServedGroup};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FEATURES: usize = 60;
const HASH: &str = "bench";

/// The value both sides store: a function of the entity and the feature.
fn value(entity: usize, feature: usize) -> f64 {
    entity as f64 * 0.001 + feature as f64 * 1.5 + 0.25
}

fn feature_name(i: usize) -> String {
    format!("f{i:02}")
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

struct Scenario {
    name: String,
    entities: usize,
    features: usize,
    rate: f64,
    seconds: f64,
}

fn parse_scenario(text: &str) -> Result<Scenario, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let bad = || format!("`{text}` is not NAME:ENTITIES:FEATURES:RATE:SECONDS");
    if parts.len() != 5 {
        return Err(bad());
    }
    Ok(Scenario {
        name: parts[0].to_owned(),
        entities: parts[1].parse().map_err(|_| bad())?,
        features: parts[2].parse().map_err(|_| bad())?,
        rate: parts[3].parse().map_err(|_| bad())?,
        seconds: parts[4].parse().map_err(|_| bad())?,
    })
}

fn store_rows(
    store: &EmbeddedStore,
    group: &GroupRef,
    schema: arrow_schema::SchemaRef,
    entities: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    use arrow_array::{
        ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    };
    let t0 = 1_709_251_200_000_000i64;
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            (0..entities).map(|e| format!("card-{e}")),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values((0..entities).map(|e| t0 + e as i64))
                .with_timezone("UTC"),
        ),
    ];
    for f in 0..FEATURES {
        columns.push(Arc::new(Float64Array::from_iter_values(
            (0..entities).map(|e| value(e, f)),
        )));
    }
    let rows = RecordBatch::try_new(schema, columns)?;
    tokio::runtime::Builder::new_current_thread()
        .build()?
        .block_on(store.put(group, &rows, t0))?;
    Ok(())
}

/// The tenant token of `--tenant-token` runs.
const BENCH_TOKEN: &str = "lst_bench-token-0123456789abcdef0123456789abcdef";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As `lockstep serve` runs.
    lockstep_service::tune_allocator();
    let mut redis_url = None;
    let mut entities = 10_000usize;
    let mut scenarios = Vec::new();
    let mut stampede_ttl: Option<u64> = None;
    let mut timeout = ServeConfig::default().timeout;
    let mut freeze_pid: Option<u32> = None;
    let mut breaker = true;
    // Every answer goes to the served-feature log in this directory.
    let mut feature_log_dir: Option<String> = None;
    let mut log_flush: Option<Duration> = None;
    let mut log_writer = None;
    // Every request shows a tenant's bearer token, checked by the server.
    let mut tenant_token = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--tenant-token" {
            tenant_token = true;
            continue;
        }
        if flag == "--no-breaker" {
            breaker = false;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--timeout-ms" => timeout = Duration::from_millis(value.parse()?),
            "--freeze-pid" => freeze_pid = Some(value.parse()?),
            "--redis" => redis_url = Some(value),
            "--entities" => entities = value.parse()?,
            "--scenario" => scenarios.push(parse_scenario(&value)?),
            "--stampede-ttl" => stampede_ttl = Some(value.parse()?),
            "--log-features" => feature_log_dir = Some(value),
            "--log-flush-ms" => log_flush = Some(Duration::from_millis(value.parse()?)),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let redis_url = redis_url.ok_or("--redis URL is required")?;

    let mut builder = ManifestBuilder::new("bench_stats", "1.0.0")
        .field("card", ValueType::String, "card")
        .field("ts", ValueType::Timestamp, "event time")
        .entity_key("card")
        .event_time("ts");
    for f in 0..FEATURES {
        builder = builder.feature(
            &feature_name(f),
            ValueType::Float64,
            "",
            Value::Float64(0.0),
        );
    }
    let manifest = builder.build();
    let group = GroupRef::of(&manifest, HASH);
    let work = tempfile::tempdir()?;
    let store = EmbeddedStore::open(work.path())?;
    store_rows(
        &store,
        &group,
        lockstep_core::schema::row_schema(&manifest),
        entities,
    )?;
    let store: Arc<dyn OnlineStore> = Arc::new(store);
    if let Some(ttl) = stampede_ttl {
        // Every entry loaded at once with one TTL, as a bulk load would: they all
        // expire together during the scenarios.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let loader = lockstep_cache::RedisCache::connect(
                &redis_url,
                Some(Duration::from_secs(ttl)),
                Duration::from_secs(5),
            )
            .await?;
            let keys: Vec<String> = (0..entities).map(|e| format!("card-{e}")).collect();
            for chunk in keys.chunks(5_000) {
                let records = store.get(&group, chunk).await?;
                let entries: Vec<lockstep_cache::CacheEntry> = chunk
                    .iter()
                    .zip(records)
                    .filter_map(|(key, r)| {
                        let r = r?;
                        Some(lockstep_cache::CacheEntry {
                            key: lockstep_cache::cache_key(&group.id(), key),
                            event_time: r.event_time,
                            value: lockstep_cache::record_value(
                                r.event_time,
                                &r.plugin_hash,
                                &r.row,
                            ),
                        })
                    })
                    .collect();
                loader.put(&entries).await?;
            }
            Ok::<_, Box<dyn std::error::Error>>(())
        })?;
    }

    // The server: two worker threads, as a small serving pod would have.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (server, base) = server_rt.block_on(async {
        let cache =
            lockstep_cache::RedisCache::connect(&redis_url, None, Duration::from_secs(2)).await?;
        let mut config = ServeConfig {
            timeout,
            ..ServeConfig::default()
        };
        if !breaker {
            config.cache_breaker.failures = u32::MAX;
        }
        let server = FeatureServer::new(
            vec![ServedGroup::new(&manifest, HASH)],
            store,
            Some(cache),
            config,
        )?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let access = tenant_token
            .then(|| {
                lockstep_serving::access::Access::parse(
                    &format!(
                        "[[tenant]]\nname = \"bench\"\ntoken_sha256 = \"{}\"\ngroups = [\"bench_stats\"]\n",
                        lockstep_serving::access::token_sha256(BENCH_TOKEN)
                    ),
                    "the bench's tenants",
                )
            })
            .transpose()?
            .map(Arc::new);
        let feature_log = match &feature_log_dir {
            Some(dir) => {
                let mut options = lockstep_lineage::LogOptions::default();
                if let Some(every) = log_flush {
                    options.flush_every = every;
                }
                let (queue, writer) =
                    lockstep_lineage::FeatureLogWriter::start(dir, &Default::default(), options)?;
                log_writer = Some(writer);
                Some(lockstep_serving::http::FeatureLog::new(queue, &server))
            }
            None => None,
        };
        tokio::spawn(lockstep_serving::http::serve_with(
            listener,
            server.clone(),
            lockstep_serving::http::HttpOptions {
                access,
                feature_log,
            },
            std::future::pending(),
        ));
        Ok::<_, Box<dyn std::error::Error>>((server, base))
    })?;

    // The load generator: one thread of its own.
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let client = match tenant_token {
        true => Client::new(&base)?.with_bearer_token(BENCH_TOKEN),
        false => Client::new(&base)?,
    };
    client_rt.block_on(async {
        // Fill the cache through the serving path, until every entity is a hit.
        let all: Vec<String> = (0..entities).map(|e| format!("card-{e}")).collect();
        let rounds = if stampede_ttl.is_some() { 0 } else { 20 };
        for _round in 0..rounds {
            let mut misses = 0;
            for chunk in all.chunks(100) {
                let answer = client
                    .get_features(&FeatureRequest::new("bench_stats", chunk.to_vec()))
                    .await?;
                misses += answer
                    .entities
                    .iter()
                    .filter(|e| e.source != Source::Cache)
                    .count();
            }
            if misses == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let floor = match freeze_pid {
            Some(pid) => {
                signal(pid, "STOP")?;
                Some(SleepFloor::start(timeout))
            }
            None => None,
        };
        let mut outcome = Ok(());
        for s in &scenarios {
            outcome = run(&client, &server, s, entities, stampede_ttl.is_none()).await;
            if outcome.is_err() {
                break;
            }
        }
        if let Some(pid) = freeze_pid {
            signal(pid, "CONT")?;
        }
        if let Some(floor) = floor {
            floor.report();
        }
        outcome
    })?;
    drop(server);
    // The log's writer is not waited for: what it holds is not measured.
    drop(log_writer);
    Ok(())
}

/// The machine's own floor for a deadline: a bare thread that sleeps the timeout over
/// and over while the scenarios run, and how late it wakes. No server can answer
/// closer to its deadline than the OS wakes a thread.
struct SleepFloor {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u64>>,
    timeout: Duration,
}

impl SleepFloor {
    fn start(timeout: Duration) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut took = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let at = std::time::Instant::now();
                std::thread::sleep(timeout);
                took.push(at.elapsed().as_micros() as u64);
            }
            took
        });
        SleepFloor {
            stop,
            thread,
            timeout,
        }
    }

    /// Stops the thread and prints its figures as one JSON object.
    fn report(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let Ok(mut took) = self.thread.join() else {
            return;
        };
        took.sort_unstable();
        println!(
            "{}",
            serde_json::json!({
                "system": "thread-sleep",
                "scenario": "floor",
                "timeout_us": self.timeout.as_micros() as u64,
                "requests": took.len(),
                "p50_us": percentile(&took, 50.0),
                "p99_us": percentile(&took, 99.0),
                "p999_us": percentile(&took, 99.9),
                "max_us": took.last().copied().unwrap_or(0),
            })
        );
    }
}

/// Sends `SIGname` to process `pid`.
fn signal(pid: u32, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        return Err(format!("kill -{name} {pid} failed").into());
    }
    Ok(())
}

/// One answered request: when it was due (µs after the start), its latency (µs),
/// whether it was degraded, and whether every entity came from the cache.
type Answered = (u64, u64, bool, bool);

/// Runs one scenario open loop and prints its figures, with a per-second breakdown
/// (requests, p99, max, degraded answers, keys read from the store). `warm_up` sends
/// 200 requests first (not in a stampede run: they would touch the entries).
async fn run(
    client: &Client,
    server: &FeatureServer,
    s: &Scenario,
    entities: usize,
    warm_up: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let features: Vec<String> = (0..s.features).map(feature_name).collect();
    let mut rng = fastrand::Rng::with_seed(7);
    let request = |rng: &mut fastrand::Rng| {
        let rows: Vec<usize> = (0..s.entities).map(|_| rng.usize(0..entities)).collect();
        let request = FeatureRequest::new("bench_stats", rows.iter().map(|e| format!("card-{e}")))
            .features(features.clone());
        (rows, request)
    };
    // Warm-up: connections and code paths.
    for _ in 0..if warm_up { 200 } else { 0 } {
        client.get_features(&request(&mut rng).1).await?;
    }
    let total = (s.rate * s.seconds) as usize;
    let results: Arc<Mutex<Vec<Answered>>> = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    // Bounded: at most this many requests in flight; the others wait, and the wait
    // counts in their latency.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(512));
    let requests: Vec<(Vec<usize>, FeatureRequest)> =
        (0..total).map(|_| request(&mut rng)).collect();
    // The schedule runs on a thread of its own: the runtime's timer ticks by the
    // millisecond, which would add up to 1 ms to every latency.
    let runtime = tokio::runtime::Handle::current();
    let n_features = s.features;
    let rate = s.rate;
    let (client2, results2, failures2) = (client.clone(), results.clone(), failures.clone());
    let start = std::time::Instant::now();
    // The store reads of each second, sampled from the server's counter.
    let store_keys = server.metrics().store_keys.clone();
    let seconds = s.seconds.ceil() as usize + 1;
    let sampler = tokio::spawn(async move {
        let mut per_second = Vec::with_capacity(seconds);
        let mut last = store_keys.get();
        for second in 1..=seconds {
            tokio::time::sleep_until((start + Duration::from_secs(second as u64)).into()).await;
            let now = store_keys.get();
            per_second.push(now - last);
            last = now;
        }
        per_second
    });
    let cpu_before = (process_cpu_seconds(), thread_cpu_seconds("feature-log"));
    let handles = tokio::task::spawn_blocking(move || {
        let mut handles = Vec::with_capacity(total);
        for (i, (rows, req)) in requests.into_iter().enumerate() {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = std::time::Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let (client, results, failures, in_flight) = (
                client2.clone(),
                results2.clone(),
                failures2.clone(),
                in_flight.clone(),
            );
            let check = i % 97 == 0;
            handles.push(runtime.spawn(async move {
                let Ok(_permit) = in_flight.acquire().await else {
                    return;
                };
                let answer = client.get_features(&req).await;
                let took = due.elapsed().as_micros() as u64;
                let due_us = (due - start).as_micros() as u64;
                match answer {
                    Ok(answer) => {
                        let all_cache = answer.entities.iter().all(|e| e.source == Source::Cache);
                        if check {
                            for (entity, e) in answer.entities.iter().zip(&rows) {
                                for f in [0, n_features - 1] {
                                    let want = serde_json::json!(value(*e, f));
                                    let stored =
                                        matches!(entity.source, Source::Cache | Source::Store);
                                    if stored && entity.values[f] != want {
                                        failures.lock().unwrap().push(format!(
                                            "card-{e} f{f:02}: {} != {want}",
                                            entity.values[f]
                                        ));
                                    }
                                }
                            }
                        }
                        results
                            .lock()
                            .unwrap()
                            .push((due_us, took, answer.degraded, all_cache));
                    }
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
            }));
        }
        handles
    })
    .await?;
    for h in handles {
        h.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_after = (process_cpu_seconds(), thread_cpu_seconds("feature-log"));
    let store_per_second = sampler.await?;
    let failures = failures.lock().unwrap();
    if !failures.is_empty() {
        return Err(format!("{} failures, first: {}", failures.len(), failures[0]).into());
    }
    let results = results.lock().unwrap();
    let mut took: Vec<u64> = results.iter().map(|r| r.1).collect();
    took.sort_unstable();
    let per_second: Vec<serde_json::Value> = (0..seconds)
        .map(|second| {
            let in_second = |r: &&Answered| r.0 / 1_000_000 == second as u64;
            let mut took: Vec<u64> = results.iter().filter(in_second).map(|r| r.1).collect();
            took.sort_unstable();
            serde_json::json!({
                "second": second,
                "requests": took.len(),
                "p99_us": percentile(&took, 99.0),
                "max_us": took.last().copied().unwrap_or(0),
                "degraded": results.iter().filter(in_second).filter(|r| r.2).count(),
                "store_keys": store_per_second.get(second).copied().unwrap_or(0),
            })
        })
        .filter(|v| v["requests"] != 0)
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "system": "lockstep",
            "scenario": s.name,
            "entities": s.entities,
            "features": s.features,
            "rate": s.rate,
            "timeout_us": server.config().timeout.as_micros() as u64,
            "requests": total,
            "achieved_rate": total as f64 / elapsed,
            "p50_us": percentile(&took, 50.0),
            "p99_us": percentile(&took, 99.0),
            "p999_us": percentile(&took, 99.9),
            "max_us": took.last().copied().unwrap_or(0),
            "degraded": results.iter().filter(|r| r.2).count(),
            "not_all_cache": results.iter().filter(|r| !r.3).count(),
            "store_keys": store_per_second.iter().sum::<u64>(),
            // Processor seconds the whole process (server, client, log) used over the
            // scenario, and the served-feature log's writer thread among them.
            "process_cpu_s": cpu_after.0 - cpu_before.0,
            "log_writer_cpu_s": cpu_after.1 - cpu_before.1,
            "per_second": per_second,
        })
    );
    Ok(())
}

/// Processor seconds this process has used (user + system), from /proc (0 elsewhere).
fn process_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| cpu_of_stat(&stat))
        .unwrap_or(0.0)
}

/// Processor seconds used by this process's threads named `name` (0 when none).
fn thread_cpu_seconds(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|stat| cpu_of_stat(&stat))
        .sum()
}

/// utime + stime of a /proc `stat` line, in seconds (the kernel counts 100 ticks a
/// second on every Linux this runs on).
fn cpu_of_stat(stat: &str) -> Option<f64> {
    // The command name may hold spaces: fields are counted after its closing paren.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}
