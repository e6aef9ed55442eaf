//! Stream host throughput with an in-process source: `txn_velocity` over generated
//! card transactions, two shards, every round committed durably (online store, row
//! log, checkpoint with the changed entity states), exactly as `lockstep stream run`
//! does with Kinesis, minus the network.
//!
//! Side by side in one run, to say where the time goes (wall time, and the process's CPU
//! time per million events: on 2 cores, 300k events/s allows 6.7 CPU-seconds):
//! - `ordering + plugin`: the ordering core alone (`ShardedProcessor`, shards in
//!   parallel), no output;
//! - `service, durable`: the whole service loop, outputs and checkpoints included.
//!
//! Usage: `cargo run --release -p lockstep-bench --bin stream-throughput -- [EVENTS]
//! [CARDS] [RECORDS_PER_SHARD_PER_ROUND]` (defaults 1,000,000 / 100,000 / 10,000, the most one Kinesis GetRecords returns).
//! Events are spread over 30 days and arrive up to 10 minutes out of order, so the
//! allowed lateness is 10 minutes. About 1% of arrivals repeat an earlier transaction:
//! a repeat within the lateness is a duplicate, an older one goes to the late log.

use lockstep_bench::{arg, process_cpu_seconds, txn_velocity};
use lockstep_online::{EmbeddedStore, GroupRef};
use lockstep_service::source::{ShardInfo, ShardRecord};
use lockstep_service::{MemorySource, ServiceConfig, Source, StreamService};
use lockstep_stream::{Record, ShardSpec, ShardedProcessor, StreamConfig};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As `lockstep` does: the service measured as it runs.
    lockstep_service::tune_allocator();
    let events = arg(1, 1_000_000) as usize;
    let cards = arg(2, 100_000);
    let per_round = arg(3, 10_000) as usize;

    let work = tempfile::tempdir()?;
    let plugin = txn_velocity(work.path())?;
    let m = plugin.manifest().clone();

    // Two shards splitting the hash space; records keyed by card, in arrival order.
    let text = lockstep_gen::events(lockstep_gen::Kind::Transactions, events, cards, 42);
    let mut keyed = Vec::with_capacity(events);
    for line in text.lines() {
        let value: serde_json::Value = serde_json::from_str(line)?;
        let key = value[&m.entity_key]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| value[&m.entity_key].to_string());
        keyed.push((keyed.len() as u64, key, line.as_bytes().to_vec()));
    }
    let (specs, shards): (Vec<ShardInfo>, Vec<Vec<ShardRecord>>) =
        MemorySource::shards_by_hash(2, keyed).into_iter().unzip();
    // The generator jitters arrival by up to 10 minutes of event time.
    let config = StreamConfig {
        allowed_lateness: 600_000_000,
        ..StreamConfig::default()
    };
    println!(
        "stream-throughput: {events} events, {cards} cards, 2 shards, {per_round} records per shard per round, allowed lateness 10 min (the generator's arrival jitter)"
    );
    println!(
        "{:<22} {:>9} {:>12} {:>9} {:>10} {:>16}",
        "", "seconds", "events/s", "commits", "ms/commit", "CPU s per 1M ev"
    );
    let cpu_per_million = |since: Option<f64>| match (since, process_cpu_seconds()) {
        (Some(a), Some(b)) => format!("{:.2}", (b - a) * 1e6 / events as f64),
        _ => "-".to_owned(),
    };

    // The ordering core and the plugin alone.
    let cpu = process_cpu_seconds();
    let started = Instant::now();
    let mut processor = ShardedProcessor::new(&plugin, config);
    let mut rows = 0usize;
    for info in &specs {
        processor.open(ShardSpec {
            id: info.id.clone(),
            parents: vec![],
            hash_range: info.hash_range,
        })?;
    }
    let mut rounds = 0;
    let mut offset = 0;
    while offset < shards[0].len().max(shards[1].len()) {
        let mut batches: Vec<(&str, Vec<Record<'_>>)> = Vec::new();
        for (info, records) in specs.iter().zip(&shards) {
            let end = (offset + per_round).min(records.len());
            if offset >= end {
                continue;
            }
            let batch: Vec<Record<'_>> = records[offset..end]
                .iter()
                .map(|r| Record {
                    shard: &info.id,
                    sequence: &r.sequence,
                    data: &r.data,
                    partition_key: Some(&r.partition_key),
                })
                .collect();
            batches.push((info.id.as_str(), batch));
        }
        for step in processor.push_all(&batches)? {
            rows += step.rows.num_rows();
        }
        let _ = processor.checkpoint();
        offset += per_round;
        rounds += 1;
    }
    rows += processor.drain()?.rows.num_rows();
    let core = started.elapsed().as_secs_f64();
    println!(
        "{:<22} {:>9.2} {:>12.0} {:>9} {:>10} {:>16}",
        "ordering + plugin",
        core,
        events as f64 / core,
        rounds,
        "-",
        cpu_per_million(cpu)
    );

    // The whole service loop, durable.
    let store = Arc::new(EmbeddedStore::open(work.path().join("online"))?);
    let group = GroupRef::of(&m, plugin.hash());
    let mut service_config = ServiceConfig::new("in-process", work.path().join("state"));
    service_config.stream_config = config;
    service_config.stop_when_idle = true;
    service_config.drain_on_stop = true;
    service_config.handle_signals = false;
    let service = StreamService::new(plugin.clone(), store, group, service_config);
    let source: Vec<(ShardInfo, Vec<ShardRecord>)> = specs.iter().cloned().zip(shards).collect();
    let cpu = process_cpu_seconds();
    let started = Instant::now();
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let summary = io.block_on(service.run_from(
        Arc::new(AtomicBool::new(false)),
        move |resume| async move {
            Ok(Box::new(MemorySource::new(source, &resume, per_round)) as Box<dyn Source>)
        },
    ))?;
    let full = started.elapsed().as_secs_f64();
    println!(
        "{:<22} {:>9.2} {:>12.0} {:>9} {:>10.1} {:>16}",
        "service, durable",
        full,
        events as f64 / full,
        summary.commits,
        summary.commit_seconds * 1000.0 / summary.commits.max(1) as f64,
        cpu_per_million(cpu)
    );
    assert_eq!(
        summary.stats.rows as usize, rows,
        "both paths emit the same rows"
    );
    let t = &summary.timings;
    println!(
        "durable writes: store {:.2} s, logs {:.2} s, cache {:.2} s, checkpoints {:.2} s",
        t.store, t.logs, t.cache, t.checkpoint
    );
    let st = &summary.stats;
    println!(
        "records {}, applied {}, duplicates {}, late {}",
        st.records, st.applied, st.duplicates, st.late
    );
    println!(
        "rows emitted: {rows}; durable writes (store + logs + checkpoint) took {:.2} s of {:.2} s; \
         the service runs at {:.2}x the core's rate",
        summary.commit_seconds,
        full,
        core / full
    );
    let size =
        |path: std::path::PathBuf| std::fs::metadata(path).map_or(0, |m| m.len()) as f64 / 1e6;
    println!(
        "on disk: row log {:.1} MB, online store {:.1} MB, checkpoints {:.1} MB",
        size(work.path().join("state/rows.jsonl")),
        size(work.path().join("online/online.redb")),
        size(work.path().join("state/state.redb")),
    );
    Ok(())
}
