//! `lockstep demo`: the first thing a new user runs. On embedded defaults, with no
//! servers: builds the example plugins from source, generates events, backfills the
//! offline store with the batch host, streams the same events through the stream host
//! in a shuffled arrival order into the embedded online store, checks that both hosts
//! produced the same rows bit for bit, and reads a few entities back.

use crate::golden::backfill;
use crate::skew::{arrival_order, event_times, stream_rows};
use anyhow::{Context, Result, ensure};
use lockstep_core::compare::{Row, compare};
use lockstep_core::decode::decode_json_lines;
use lockstep_online::{EmbeddedStore, GroupRef, OnlineStore, PutSummary};
use lockstep_runtime::{Runtime, RuntimeConfig};
use std::path::PathBuf;
use std::time::Instant;

/// The stream host's allowed lateness in the demo: five minutes.
const LATENESS: i64 = 5 * 60 * 1_000_000;

fn plugins_dir() -> PathBuf {
    let here = PathBuf::from("plugins");
    if here.join("txn_velocity").is_dir() {
        return here;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins")
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// A row's features as `name=value` pairs, shortened for a terminal.
fn short(row: &Row, skip: usize) -> String {
    let text: Vec<String> = row
        .iter()
        .skip(skip)
        .take(5)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut line = text.join(" ");
    if line.chars().count() > 110 {
        line = line.chars().take(110).collect::<String>() + "…";
    }
    line
}

pub fn run(events: usize) -> Result<()> {
    let dir = plugins_dir();
    let cache = std::env::temp_dir().join("lockstep-demo-artifacts");
    let runtime = Runtime::new(RuntimeConfig::with_cache(&cache))?;
    let work = std::env::temp_dir().join("lockstep-demo");
    // A fresh store each run: a demo that refused to overwrite last run's group
    // version (because the plugin was rebuilt differently) would teach the wrong thing.
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let offline = work.join("offline-store");
    let online_dir = work.join("online-store");
    let online = EmbeddedStore::open(&online_dir)?;
    println!(
        "Lockstep demo: {events} generated events per plugin, embedded defaults, no servers.\n\
         Working in {}\n",
        work.display()
    );
    if cfg!(debug_assertions) {
        println!(
            "(This is a debug build: timings are several times slower than `cargo run --release -p lockstep -- demo`.)\n"
        );
    }

    let cases: [(&str, String); 3] = [
        (
            "txn_velocity",
            lockstep_gen::transactions(events, (events / 50).max(10) as u64, 42).to_json_lines(),
        ),
        (
            "churn_features",
            lockstep_gen::activity(events, (events / 40).max(10) as u64, 42),
        ),
        (
            "clickstream_clean",
            lockstep_gen::clicks(events, (events / 20).max(10) as u64, 42),
        ),
    ];
    let mut total_rows = 0;
    for (name, input) in cases {
        let started = Instant::now();
        let built = lockstep_build::build(&dir.join(name), &Default::default())
            .with_context(|| format!("building plugin {name}"))?;
        let build_ms = ms(started);
        let plugin = runtime.load_file(&built.path)?;
        let m = plugin.manifest().clone();
        println!(
            "▸ {}  ({} features, {:?}; component {} KiB, sha256 {}…, built in {:.1} s)",
            m.id(),
            m.features.len(),
            m.kind,
            built.size / 1024,
            &built.sha256[..12],
            build_ms / 1e3
        );

        let events_path = work.join(format!("{name}.events.jsonl"));
        std::fs::write(&events_path, &input)
            .with_context(|| format!("writing {}", events_path.display()))?;
        let started = Instant::now();
        let (batch, written) = backfill(
            &(plugin.clone(), built.path.clone()),
            &events_path,
            2,
            &offline,
        )?;
        println!(
            "  batch host   {} events → {} rows in {} hour partitions of {} in {:.0} ms",
            input.lines().count(),
            written.rows,
            written.partitions,
            offline.join(&m.name).display(),
            ms(started)
        );

        // The same events, as a stream delivers them: out of order within the lateness.
        let decoded = decode_json_lines(&input, &m, None)?;
        let times = event_times(&decoded, &m)?;
        let order = arrival_order(&times, Some(42), LATENESS);
        let lines: Vec<(usize, &str)> =
            input.lines().enumerate().map(|(i, l)| (i + 1, l)).collect();
        let streamed = stream_rows(&plugin, &lines, &order, LATENESS)?;
        println!(
            "  stream host  the same events shuffled (each up to 5 min late) → {} rows in {:.0} ms ({:.2} M events/s), {} duplicates dropped, {} late",
            streamed.rows.len(),
            streamed.millis,
            lines.len() as f64 / streamed.millis / 1e3,
            streamed.duplicates,
            streamed.late.len()
        );

        let c = compare(&m.entity_key, &batch, &streamed.rows, 5);
        ensure!(
            c.identical(),
            "{name}: the batch and stream hosts disagree:\n{}",
            c.render("batch", "stream")
        );
        println!(
            "  skew check   batch = stream ✓  {} rows, {} entities, every value bit for bit",
            c.left_rows, c.entities
        );
        total_rows += c.left_rows;

        // The stream's rows keep the online store current: the latest row per entity.
        let group = GroupRef::of(&m, plugin.hash());
        let started = Instant::now();
        let mut written = PutSummary::default();
        for batch in &streamed.batches {
            let s = online.put(&group, batch, now_micros())?;
            written.written += s.written;
            written.stale += s.stale;
        }
        let mut latest: Vec<&Row> = Vec::new();
        for row in &streamed.rows {
            match latest.last() {
                Some(prev) if prev.get(&m.entity_key) == row.get(&m.entity_key) => {
                    if let Some(last) = latest.last_mut() {
                        *last = row;
                    }
                }
                _ => latest.push(row),
            }
        }
        println!(
            "  online store {} entities current in {} ({} writes, {:.0} ms)",
            latest.len(),
            online_dir.display(),
            written.written,
            ms(started)
        );
        // Read a few back, as serving will, and check them against the stream's rows.
        let keys: Vec<String> = latest
            .iter()
            .take(2)
            .map(|row| match row.get(&m.entity_key) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            })
            .collect();
        for (record, expected) in online.get(&group, &keys)?.into_iter().zip(&latest) {
            let record = record.context("an entity the stream wrote is missing online")?;
            ensure!(
                &record.row == *expected,
                "{name}: the online record differs from the stream's latest row"
            );
            let field = |f: &str| record.row.get(f).map(|v| v.to_string()).unwrap_or_default();
            println!(
                "  read back    {} {} @ {}: {}",
                m.entity_key,
                field(&m.entity_key),
                field("event_time"),
                short(&record.row, 2)
            );
        }
        println!();
    }
    println!(
        "Zero skew: {total_rows} rows from three plugins, identical in the batch and stream hosts."
    );
    println!(
        "Next: `lockstep plugin inspect <file.wasm>` shows a component's manifest and imports;"
    );
    println!("      `lockstep batch run --help` backfills your own data into an offline store;");
    println!(
        "      `lockstep stream run --help` keeps an online store current from a Kinesis stream;"
    );
    println!(
        "      `lockstep skew-check --plugin <file.wasm> --events <file.jsonl>` checks your events."
    );
    Ok(())
}
