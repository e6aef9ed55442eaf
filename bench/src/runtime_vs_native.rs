//! `txn_velocity` in Wasm vs the same plugin code compiled natively, side by side.
//!
//! Same input bytes for both: apply requests over generated transactions (1M events,
//! 10k cards by default), grouped by card as hosts send them. The native side runs the
//! SDK driver (`lockstep_sdk::engine::Driver`, held once as the component holds it), i.e. the exact code inside the
//! component minus the Wasm boundary. Rounds alternate native and Wasm so machine noise
//! hits both; the medians and their ratio are reported, and the outputs are checked to
//! be byte-identical.
//!
//! Also measured: compiling the component, loading it from the artifact cache, and
//! creating an instance, plus the per-call overhead of a one-event call.
//!
//! Run: `cargo run --release -p lockstep-bench --bin runtime-vs-native [-- EVENTS CARDS ROUNDS]`

use lockstep_bench::arg;
use lockstep_runtime::{Runtime, RuntimeConfig};
use std::path::Path;
use std::time::{Duration, Instant};
use txn_velocity::TxnVelocity;

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let events = arg(1, 1_000_000) as usize;
    let cards = arg(2, 10_000);
    let rounds = arg(3, 7) as usize;

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = lockstep_build::build(&root.join("plugins/txn_velocity"), &Default::default())?;
    let bytes = std::fs::read(&built.path)?;
    println!(
        "component   {} ({} KiB, sha256 {}…)",
        built.path.display(),
        bytes.len() / 1024,
        &built.sha256[..16]
    );

    let cache = tempfile_dir()?;
    let compile_started = Instant::now();
    Runtime::new(RuntimeConfig::with_cache(&cache))?.load(&bytes)?;
    let compile = compile_started.elapsed();
    let mut cached_loads = Vec::new();
    let mut runtime = None;
    let pooled = std::env::var("LOCKSTEP_POOLED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    for _ in 0..15 {
        let rt = Runtime::new(RuntimeConfig {
            pooled_instances: pooled,
            ..RuntimeConfig::with_cache(&cache)
        })?;
        let started = Instant::now();
        let plugin = rt.load(&bytes)?;
        cached_loads.push(started.elapsed());
        runtime = Some((rt, plugin));
    }
    let (_rt, plugin) = runtime.ok_or("no runtime")?;
    let instantiations = 2_000;
    let started = Instant::now();
    for _ in 0..instantiations {
        drop(plugin.instantiate()?);
    }
    let per_instance = started.elapsed() / instantiations;

    let data = lockstep_gen::transactions(events, cards, 2026);
    let requests = lockstep_gen::velocity_requests(&data, 16_384)?;
    let mut instance = plugin.instantiate()?;

    let tiny = lockstep_gen::velocity_requests(&lockstep_gen::transactions(1, 1, 1), 1)?;
    let calls = 20_000;
    let started = Instant::now();
    for _ in 0..calls {
        instance.apply(&tiny[0])?;
    }
    let per_call = started.elapsed() / calls;

    let driver = lockstep_sdk::engine::Driver::<TxnVelocity>::new().map_err(|e| e.message)?;
    let mut native_times = Vec::new();
    let mut wasm_times = Vec::new();
    let mut native_out = Vec::new();
    let mut wasm_out = Vec::new();
    for round in 0..rounds {
        let started = Instant::now();
        let out: Vec<Vec<u8>> = requests
            .iter()
            .map(|r| driver.apply(r).map_err(|e| e.message))
            .collect::<Result<_, _>>()?;
        native_times.push(started.elapsed());
        let started = Instant::now();
        let wout: Vec<Vec<u8>> = requests
            .iter()
            .map(|r| instance.apply(r))
            .collect::<Result<_, _>>()?;
        wasm_times.push(started.elapsed());
        if round == 0 {
            native_out = out;
            wasm_out = wout;
        }
    }
    let identical = native_out == wasm_out;
    let (native, wasm) = (median(native_times), median(wasm_times));
    let rate = |d: Duration| events as f64 / d.as_secs_f64() / 1e6;

    println!(
        "input       {events} events, {cards} cards, {} calls of ≤16384 events, {rounds} rounds alternating",
        requests.len()
    );
    println!(
        "native      {:>8.1} ms  ({:.2} M events/s)",
        native.as_secs_f64() * 1e3,
        rate(native)
    );
    println!(
        "wasm        {:>8.1} ms  ({:.2} M events/s)",
        wasm.as_secs_f64() * 1e3,
        rate(wasm)
    );
    println!(
        "ratio       {:.2}× native  (bar ≤ 2.0×, target ≤ 1.3×)",
        wasm.as_secs_f64() / native.as_secs_f64()
    );
    println!(
        "outputs     {}",
        if identical {
            "byte-identical"
        } else {
            "DIFFERENT"
        }
    );
    println!(
        "compile     {:.1} ms (cold, no cache)",
        compile.as_secs_f64() * 1e3
    );
    println!(
        "cached load {:.2} ms median of {} (target < 10 ms)",
        median(cached_loads).as_secs_f64() * 1e3,
        15
    );
    println!(
        "instance    {:.1} µs per instantiation (target < 100 µs)",
        per_instance.as_secs_f64() * 1e6
    );
    println!(
        "call        {:.2} µs per one-event apply call",
        per_call.as_secs_f64() * 1e6
    );
    let _ = std::fs::remove_dir_all(&cache);
    if !identical {
        return Err("Wasm and native outputs differ".into());
    }
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("lockstep-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
