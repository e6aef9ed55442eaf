//! `lockstep demo`: the first thing a new user runs. Builds the example plugins from
//! source, runs each over generated events on embedded defaults (no servers), and shows
//! what came out, how fast, and that two independent engines agree bit for bit.

use anyhow::{Context, Result, ensure};
use lockstep_core::decode::decode_json_lines;
use lockstep_core::executor::{Executor, RunOutput, StateMap};
use lockstep_core::rows::row_json;
use lockstep_runtime::{Plugin, Runtime, RuntimeConfig};
use std::path::PathBuf;
use std::time::Instant;

fn plugins_dir() -> PathBuf {
    let here = PathBuf::from("plugins");
    if here.join("txn_velocity").is_dir() {
        return here;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins")
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

fn run_once(plugin: &Plugin, events: &str) -> Result<(RunOutput, f64)> {
    let batch = decode_json_lines(events, plugin.manifest(), None)?;
    let started = Instant::now();
    let out = Executor::new(plugin)?.run(&batch, &mut StateMap::new())?;
    Ok((out, ms(started)))
}

fn rows_as_json(out: &RunOutput) -> Vec<String> {
    (0..out.rows.num_rows())
        .map(|r| serde_json::Value::Object(row_json(&out.rows, r)).to_string())
        .collect()
}

pub fn run(events: usize) -> Result<()> {
    let dir = plugins_dir();
    let cache = std::env::temp_dir().join("lockstep-demo-artifacts");
    let runtime = Runtime::new(RuntimeConfig::with_cache(&cache))?;
    // A second, independent engine with no shared cache: the determinism witness.
    let witness = Runtime::new(RuntimeConfig::default())?;
    println!(
        "Lockstep demo: {events} generated events per plugin, embedded defaults, no servers.\n"
    );

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
    for (name, input) in cases {
        let started = Instant::now();
        let built = lockstep_build::build(&dir.join(name), &Default::default())
            .with_context(|| format!("building plugin {name}"))?;
        let build_ms = ms(started);
        let started = Instant::now();
        let plugin = runtime.load_file(&built.path)?;
        let load_ms = ms(started);
        let m = plugin.manifest();
        println!(
            "▸ {}  ({} features, {:?})",
            m.id(),
            m.features.len(),
            m.kind
        );
        println!(
            "  component  {} ({} KiB), sha256 {}…",
            built.path.display(),
            built.size / 1024,
            &built.sha256[..16]
        );
        println!(
            "  built in {:.0} ms, loaded in {:.1} ms (artifact cache: {})",
            build_ms,
            load_ms,
            cache.display()
        );

        let (out, run_ms) = run_once(&plugin, &input)?;
        let s = &out.stats;
        println!(
            "  {} events → {} applied to {} entities ({} duplicates dropped) → {} rows in {:.0} ms ({:.2} M events/s)",
            s.events_in,
            s.events_applied,
            s.entities,
            s.duplicates,
            s.rows_out,
            run_ms,
            s.events_in as f64 / run_ms / 1e3
        );
        let rows = rows_as_json(&out);
        for row in rows.iter().take(2) {
            let short: String = row.chars().take(160).collect();
            println!("    {short}{}", if row.len() > 160 { "…" } else { "" });
        }
        let other = witness.load_file(&built.path)?;
        let (again, _) = run_once(&other, &input)?;
        ensure!(
            rows == rows_as_json(&again),
            "{name}: two engines disagreed; determinism is broken"
        );
        println!(
            "  second engine, same bytes, same events → {} identical rows ✓\n",
            rows.len()
        );
    }
    println!(
        "Next: `lockstep plugin inspect <file.wasm>` shows a component's manifest and imports;"
    );
    println!(
        "      `lockstep plugin run <file.wasm> --events <file.jsonl>` applies it to your events."
    );
    Ok(())
}
