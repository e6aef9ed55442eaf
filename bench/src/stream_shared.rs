//! Three feature groups on one stream (`lockstep stream`) against three separate
//! services, side by side in one run: `txn_velocity`, `clickstream_clean` and
//! `churn_features` over generated events of their kinds, each record tagged with its
//! kind, two shards, every round committed durably (online store, row logs,
//! checkpoints), in process (no network).
//!
//! - `one service, shared stream`: `StreamService::with_groups`, each record read and
//!   routed once, decoded once for the group that takes it;
//! - `three services, own streams`: what a user runs today — one stream per group, one
//!   service per stream, the three running at the same time;
//! - `three services, shared stream`: one stream, three services each reading all of
//!   it and keeping the records of its kind.
//!
//! Each variant writes the same rows (checked). Reported: wall time, events per second
//! over all three groups, and the process's CPU seconds per million events.
//!
//! Usage: `cargo run --release -p lockstep-bench --bin stream-shared -- [EVENTS_PER_GROUP]
//! [ENTITIES] [RECORDS_PER_SHARD_PER_ROUND]` (defaults 300,000 / 30,000 / 10,000).

use lockstep_bench::{arg, example_plugin, process_usage};
use lockstep_online::{EmbeddedStore, GroupRef};
use lockstep_runtime::Plugin;
use lockstep_service::source::{ShardInfo, ShardRecord};
use lockstep_service::{GroupLane, MemorySource, ServiceConfig, Source, StreamService, Summary};
use lockstep_stream::{Route, StreamConfig};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// (plugin, generator kind, tag).
const GROUPS: [(&str, lockstep_gen::Kind, &str); 3] = [
    ("txn_velocity", lockstep_gen::Kind::Transactions, "txn"),
    ("clickstream_clean", lockstep_gen::Kind::Clicks, "view"),
    ("churn_features", lockstep_gen::Kind::Logins, "activity"),
];

type Shards = Vec<(ShardInfo, Vec<ShardRecord>)>;

/// `records` (partition key, payload) on two shards by the key's hash, in order.
fn on_shards(records: &[(String, String)]) -> Shards {
    MemorySource::shards_by_hash(
        2,
        records
            .iter()
            .enumerate()
            .map(|(i, (key, data))| (i as u64, key.clone(), data.as_bytes().to_vec())),
    )
}

fn config(dir: &Path, per_round: usize) -> (ServiceConfig, usize) {
    let mut config = ServiceConfig::new("in-process", dir.join("state"));
    // The generators jitter arrival by up to 10 minutes of event time.
    config.stream_config = StreamConfig {
        allowed_lateness: 600_000_000,
        ..StreamConfig::default()
    };
    config.stop_when_idle = true;
    config.drain_on_stop = true;
    config.handle_signals = false;
    config.idle_watermark = false;
    if let Some(n) = std::env::var("LOCKSTEP_BENCH_ROUND_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        config.round_records = n;
    }
    (config, per_round)
}

async fn run(
    service: StreamService,
    shards: Shards,
    per_round: usize,
) -> Result<Summary, lockstep_service::ServiceError> {
    service
        .run_from(Arc::new(AtomicBool::new(false)), move |resume| async move {
            Ok(Box::new(MemorySource::new(shards, &resume, per_round)) as Box<dyn Source>)
        })
        .await
}

fn lane(plugin: &Plugin, tag: Option<&str>) -> GroupLane {
    GroupLane {
        route: tag.map(|t| Route {
            field: "kind".into(),
            equals: t.into(),
        }),
        ..GroupLane::new(
            plugin.clone(),
            GroupRef::of(plugin.manifest(), plugin.hash()),
        )
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    lockstep_service::tune_allocator();
    let per_group = arg(1, 300_000) as usize;
    let entities = arg(2, 30_000);
    let per_round = arg(3, 10_000) as usize;
    let work = tempfile::tempdir()?;
    let plugins: Vec<Plugin> = GROUPS
        .iter()
        .map(|(name, _, _)| example_plugin(work.path(), name, Vec::new()))
        .collect::<Result<_, _>>()?;

    // Each group's events tagged with its kind; the shared stream interleaves them.
    let mut per_kind: Vec<Vec<(String, String)>> = Vec::new();
    for ((_, kind, tag), plugin) in GROUPS.iter().zip(&plugins) {
        let key = plugin.manifest().entity_key.clone();
        let text = lockstep_gen::events(*kind, per_group, entities, 42);
        let mut tagged = Vec::with_capacity(per_group);
        for line in text.lines() {
            let mut value: serde_json::Value = serde_json::from_str(line)?;
            let partition = value[&key]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| value[&key].to_string());
            value["kind"] = serde_json::json!(tag);
            tagged.push((partition, value.to_string()));
        }
        per_kind.push(tagged);
    }
    let mut shared = Vec::with_capacity(per_group * 3);
    for i in 0..per_group {
        for kind in &per_kind {
            if let Some(record) = kind.get(i) {
                shared.push(record.clone());
            }
        }
    }
    let total = shared.len();
    println!(
        "stream-shared: 3 groups x {per_group} events ({total} in all), {entities} entities \
         each, 2 shards, {per_round} records per shard per round, lateness 10 min"
    );
    // CPU split into user and kernel time, and fresh pages touched: where one
    // service's extra cost per event shows (the kernel's share: page faults, copies
    // into the page cache, allocator lock waits).
    println!(
        "{:<32} {:>9} {:>12} {:>15} {:>14} {:>10} {:>10}",
        "", "seconds", "events/s", "user s/1M ev", "sys s/1M ev", "faults/ev", "rows"
    );
    // What routing alone costs: every record's `kind` found once.
    let router = lockstep_stream::Router::new(
        GROUPS
            .iter()
            .map(|(_, _, tag)| {
                Some(Route {
                    field: "kind".into(),
                    equals: (*tag).into(),
                })
            })
            .collect(),
    );
    let started = Instant::now();
    let mut to = Vec::new();
    let routed = shared
        .iter()
        .filter(|(_, data)| router.route_into(data.as_bytes(), &mut to))
        .count();
    let routing = started.elapsed().as_secs_f64();
    assert_eq!(routed, total, "every record has a group");
    println!(
        "routing alone (one thread): {routing:.3} s, {:.0} ns per record",
        routing * 1e9 / total as f64
    );
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut results: Vec<(String, f64, Vec<u64>)> = Vec::new();
    // `LOCKSTEP_BENCH_ONLY=one|own|filtering` runs one variant (to profile it).
    let only = std::env::var("LOCKSTEP_BENCH_ONLY").ok();
    let mut measure = |label: &str,
                       go: &dyn Fn() -> Result<Vec<u64>, Box<dyn std::error::Error>>|
     -> Result<(), Box<dyn std::error::Error>> {
        let short = match label {
            "one service, shared stream" => "one",
            "three services, own streams" => "own",
            _ => "filtering",
        };
        if only.as_deref().is_some_and(|o| o != short) {
            return Ok(());
        }
        let before = process_usage();
        let started = Instant::now();
        let rows = go()?;
        let wall = started.elapsed().as_secs_f64();
        let after = process_usage();
        // Each variant's logs and stores (several GB) go once it is measured: nine
        // variants' worth filled the disk.
        for entry in std::fs::read_dir(work.path())?.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().contains("-") && entry.path().is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        let per_million = |seconds: f64| format!("{:.2}", seconds * 1e6 / total as f64);
        let (user, sys, faults) = match (before, after) {
            (Some(a), Some(b)) => (
                per_million(b.user_seconds - a.user_seconds),
                per_million(b.system_seconds - a.system_seconds),
                format!(
                    "{:.3}",
                    (b.minor_faults - a.minor_faults) as f64 / total as f64
                ),
            ),
            _ => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        println!(
            "{label:<32} {wall:>9.2} {:>12.0} {user:>15} {sys:>14} {faults:>10} {:>10}",
            total as f64 / wall,
            rows.iter().sum::<u64>()
        );
        results.push((label.to_owned(), wall, rows));
        Ok(())
    };

    let round = std::cell::Cell::new(0u32);
    let fresh_dir = |label: &str| {
        round.set(round.get() + 1);
        work.path().join(format!("{}-{label}", round.get()))
    };
    let shared_stream = on_shards(&shared);
    let own_streams: Vec<Shards> = per_kind.iter().map(|k| on_shards(k)).collect();

    // Three rounds, the variants alternating, so that drift on a shared machine
    // falls on all of them alike.
    for _ in 0..if only.is_some() { 1 } else { 3 } {
        measure("one service, shared stream", &|| {
            let dir = fresh_dir("one");
            let store = Arc::new(EmbeddedStore::open(dir.join("online"))?);
            let (config, per_round) = config(&dir, per_round);
            let lanes = plugins
                .iter()
                .zip(GROUPS)
                .map(|(p, (_, _, tag))| lane(p, Some(tag)))
                .collect();
            let service = StreamService::with_groups(lanes, store, config)?;
            let summary = io.block_on(run(service, shared_stream.clone(), per_round))?;
            let t = &summary.timings;
            eprintln!(
                "  one service: {} commits, writer {:.2} s (store {:.2}, logs {:.2}, cache \
                 {:.2}, checkpoints {:.2})",
                summary.commits, summary.commit_seconds, t.store, t.logs, t.cache, t.checkpoint
            );
            Ok(summary.groups.iter().map(|g| g.stats.rows).collect())
        })?;
        measure("three services, own streams", &|| {
            let dir = fresh_dir("own");
            let store = Arc::new(EmbeddedStore::open(dir.join("online"))?);
            let runs = plugins
                .iter()
                .zip(&own_streams)
                .enumerate()
                .map(|(i, (p, shards))| {
                    let (config, per_round) = config(&dir.join(i.to_string()), per_round);
                    let group = GroupRef::of(p.manifest(), p.hash());
                    let service = StreamService::new(p.clone(), store.clone(), group, config);
                    run(service, shards.clone(), per_round)
                });
            let summaries = all_at_once(&io, runs.collect())?;
            for summary in &summaries {
                let t = &summary.timings;
                eprintln!(
                    "  own stream: {} commits, writer {:.2} s (store {:.2}, logs {:.2}, \
                     checkpoints {:.2})",
                    summary.commits, summary.commit_seconds, t.store, t.logs, t.checkpoint
                );
            }
            Ok(summaries.iter().map(|s| s.stats.rows).collect())
        })?;
        measure("three services, shared stream", &|| {
            let dir = fresh_dir("filtering");
            let store = Arc::new(EmbeddedStore::open(dir.join("online"))?);
            let mut runs = Vec::new();
            for (i, (p, (_, _, tag))) in plugins.iter().zip(GROUPS).enumerate() {
                let (config, per_round) = config(&dir.join(i.to_string()), per_round);
                let service =
                    StreamService::with_groups(vec![lane(p, Some(tag))], store.clone(), config)?;
                runs.push(run(service, shared_stream.clone(), per_round));
            }
            let summaries = all_at_once(&io, runs)?;
            Ok(summaries.iter().map(|s| s.groups[0].stats.rows).collect())
        })?;
    }
    if only.is_some() {
        return Ok(());
    }
    let expected = &results[0].2;
    for (label, _, rows) in &results {
        assert_eq!(rows, expected, "{label}: each group's rows");
    }
    let median = |label: &str| {
        let mut walls: Vec<f64> = results
            .iter()
            .filter(|(l, _, _)| l == label)
            .map(|(_, w, _)| *w)
            .collect();
        walls.sort_by(f64::total_cmp);
        walls[walls.len() / 2]
    };
    let one = median("one service, shared stream");
    let own = median("three services, own streams");
    let filtering = median("three services, shared stream");
    println!(
        "medians: one service {one:.2} s, three services on own streams {own:.2} s \
         ({:.2}x the one service's time), three services on the shared stream {filtering:.2} s \
         ({:.2}x)",
        own / one,
        filtering / one
    );
    Ok(())
}

/// Runs every service at once (as three processes would) and waits for all.
fn all_at_once(
    io: &tokio::runtime::Runtime,
    runs: Vec<
        impl std::future::Future<Output = Result<Summary, lockstep_service::ServiceError>>
        + Send
        + 'static,
    >,
) -> Result<Vec<Summary>, Box<dyn std::error::Error>> {
    io.block_on(async {
        let handles: Vec<_> = runs.into_iter().map(tokio::spawn).collect();
        let mut out = Vec::with_capacity(handles.len());
        for handle in handles {
            out.push(handle.await??);
        }
        Ok(out)
    })
}
