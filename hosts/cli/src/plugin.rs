//! `lockstep plugin …`: start, build, inspect and try plugin components; and the
//! plugin runtime's settings every command that loads a component takes.

use anyhow::{Context, Result, bail};
use lockstep_core::decode::{Reject, decode_json_lines};
use lockstep_core::key::StateMap;
use lockstep_core::rows::row_json;
use lockstep_executor::Executor;
use lockstep_runtime::{Runtime, RuntimeConfig};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `lockstep plugin …`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Start a plugin crate: a transform whose schema is derived from its types, a
    /// native test, and clippy lints that refuse what the sandbox would.
    New {
        /// The plugin's name: its crate and its feature group (a-z, 0-9, _).
        name: String,
        /// Where to create it (default: ./NAME). Must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The Lockstep SDK to depend on, by path (default: the one this binary was
        /// built with, when built from a checkout).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build a plugin crate into a component; prints its path and SHA-256.
    Build {
        /// The plugin crate's directory.
        crate_dir: PathBuf,
        /// Cargo features to enable.
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
        /// Copy the component here as well.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show a component's manifest, imports and hash.
    Inspect {
        /// The component (.wasm).
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Apply a component to events from a JSON-lines file; print rows as JSON lines.
    Run {
        /// The component (.wasm).
        file: PathBuf,
        /// Events, one JSON object per line, in the plugin's input schema.
        #[arg(long)]
        events: PathBuf,
        /// Write bad records here (with line and reason) instead of failing on the first.
        #[arg(long)]
        rejects: Option<PathBuf>,
        /// Write rows here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
}

/// How the plugin runtime runs components, for every command that loads one.
#[derive(clap::Args, Clone)]
pub struct RuntimeArgs {
    /// Directory for precompiled plugin artifacts (default: the user cache directory).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Compile every time instead of using the artifact cache.
    #[arg(long)]
    no_cache: bool,
    /// CPU budget of one plugin call, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    cpu_budget_ms: u64,
    /// Memory limit of one plugin instance, in MiB.
    #[arg(long, default_value_t = 512)]
    memory_limit_mib: u64,
}

impl RuntimeArgs {
    /// The plugin runtime these settings describe.
    pub fn runtime(&self) -> Result<Runtime> {
        let cache_dir = if self.no_cache {
            None
        } else {
            self.cache_dir.clone().or_else(default_cache_dir)
        };
        let config = RuntimeConfig {
            cpu_budget: Duration::from_millis(self.cpu_budget_ms),
            memory_limit: self.memory_limit_mib << 20,
            cache_dir,
            ..RuntimeConfig::default()
        };
        Runtime::new(config).context("starting the plugin runtime")
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("lockstep").join("artifacts"))
}

/// Runs a `plugin` subcommand.
pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Build {
            crate_dir,
            features,
            out,
        } => {
            let built = lockstep_build::build(
                &crate_dir,
                &lockstep_build::BuildOptions {
                    features,
                    verbose: true,
                    target_dir: None,
                },
            )?;
            let path = match out {
                Some(out) => {
                    std::fs::copy(&built.path, &out)
                        .with_context(|| format!("copying the component to {}", out.display()))?;
                    out
                }
                None => built.path,
            };
            println!("{}", path.display());
            println!("sha256 {}", built.sha256);
            println!("size   {} bytes", built.size);
            Ok(())
        }
        Command::New { name, dir, sdk } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let sdk = match sdk.or_else(crate::scaffold::default_sdk) {
                Some(sdk) => sdk,
                None => bail!(
                    "this lockstep was not built from a checkout: name the SDK with --sdk PATH"
                ),
            };
            crate::scaffold::new_plugin(&name, &dir, &sdk)?;
            println!(
                "created {} (SDK: {}).\n  cargo test --manifest-path {}/Cargo.toml\n  \
                 lockstep plugin build {}",
                dir.display(),
                sdk.display(),
                dir.display(),
                dir.display()
            );
            Ok(())
        }
        Command::Inspect {
            file,
            json,
            runtime,
        } => inspect(&file, json, &runtime),
        Command::Run {
            file,
            events,
            rejects,
            out,
            runtime,
        } => apply(&file, &events, rejects.as_deref(), out.as_deref(), &runtime),
    }
}

fn inspect(file: &Path, json: bool, args: &RuntimeArgs) -> Result<()> {
    let started = Instant::now();
    let plugin = args.runtime()?.load_file(file)?;
    let load = started.elapsed();
    let m = plugin.manifest();
    if json {
        let doc = serde_json::json!({
            "sha256": plugin.hash(),
            "manifest": m,
            "imports": plugin.imports(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("{} {}  ({:?})", m.name, m.version, m.kind);
    if !m.description.is_empty() {
        println!("  {}", m.description);
    }
    println!("sha256   {}", plugin.hash());
    println!("loaded   in {:.1} ms", load.as_secs_f64() * 1e3);
    println!(
        "keys     entity `{}`, time `{}`, id {}",
        m.entity_key,
        m.event_time,
        m.event_id
            .as_deref()
            .map(|i| format!("`{i}`"))
            .unwrap_or("(content hash)".into())
    );
    println!("input");
    for f in &m.input {
        let null = if f.nullable { " (nullable)" } else { "" };
        println!(
            "  {:<24} {:<10}{null}  {}",
            f.name,
            f.ty.name(),
            f.description
        );
    }
    println!("features");
    for f in &m.features {
        println!(
            "  {:<24} {:<10} default {:<10} {}",
            f.name,
            f.ty.name(),
            f.default_value.to_string(),
            f.description
        );
    }
    println!("imports  (all stubbed or host-provided; nothing nondeterministic)");
    for i in plugin.imports() {
        println!("  {i}");
    }
    Ok(())
}

fn apply(
    file: &Path,
    events: &Path,
    rejects: Option<&Path>,
    out: Option<&Path>,
    args: &RuntimeArgs,
) -> Result<()> {
    let plugin = args.runtime()?.load_file(file)?;
    let text = std::fs::read_to_string(events)
        .with_context(|| format!("reading events from {}", events.display()))?;
    let mut bad: Vec<Reject> = Vec::new();
    let batch = decode_json_lines(
        &text,
        plugin.manifest(),
        rejects.is_some().then_some(&mut bad),
    )
    .with_context(|| format!("decoding {}", events.display()))?;
    if let Some(path) = rejects {
        let mut w = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        for r in &bad {
            let line = serde_json::json!({"line": r.error.line, "field": r.error.field, "reason": r.error.message, "record": r.raw});
            writeln!(w, "{line}")?;
        }
        w.flush()?;
    }
    let started = Instant::now();
    let mut executor = Executor::new(&plugin)?;
    let output = executor.run(&batch, &mut StateMap::default())?;
    let elapsed = started.elapsed();
    let mut sink: Box<dyn Write> = match out {
        Some(p) => {
            Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let mut w = std::io::BufWriter::new(&mut sink);
    for row in 0..output.rows.num_rows() {
        writeln!(
            w,
            "{}",
            serde_json::Value::Object(row_json(&output.rows, row))
        )?;
    }
    w.flush()?;
    drop(w);
    let s = &output.stats;
    eprintln!(
        "{}: {} events in, {} applied to {} entities ({} duplicates dropped{}), {} rows out in {:.1} ms",
        plugin.manifest().id(),
        s.events_in + bad.len(),
        s.events_applied,
        s.entities,
        s.duplicates,
        if rejects.is_some() {
            format!(", {} rejected", bad.len())
        } else {
            String::new()
        },
        s.rows_out,
        elapsed.as_secs_f64() * 1e3
    );
    if batch.num_rows() == 0 && bad.is_empty() {
        bail!("{} holds no events", events.display());
    }
    Ok(())
}
