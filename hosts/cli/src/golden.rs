//! `lockstep golden check|update`: the regression baseline in `golden/<plugin>/`.
//!
//! Each set holds `events.jsonl` (inputs, in arrival order), `expected.jsonl` (the
//! rows the plugin must emit, in canonical order: entity key, event time, emission
//! order) and `plugin.sha256` (the component the rows were made with, for the report).
//! `check` runs the batch host end to end over the events, through a real offline
//! store, with one and with several partitions, and compares the stored rows with the
//! expected ones exactly. `update` rewrites the expected rows, and only when asked.

use crate::offline::TableFormat;
use anyhow::{Context, Result, bail, ensure};
use lockstep_backfill::{Backfill, BackfillOptions};
use lockstep_batch::{BatchJob, SourceFormat};
use lockstep_core::compare::{Row, canonical_order, canonical_rows, compare};
use lockstep_runtime::{Plugin, Runtime};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Files of one golden set.
pub const EVENTS: &str = "events.jsonl";
/// The expected rows.
pub const EXPECTED: &str = "expected.jsonl";
/// The component hash the expected rows were made with.
pub const PLUGIN_HASH: &str = "plugin.sha256";

/// Partition counts every check runs with: the rows must not depend on them.
const PARTITIONS: [usize; 2] = [1, 3];

/// Where golden sets and plugin crates are.
pub struct GoldenArgs {
    /// The `golden/` directory.
    pub dir: PathBuf,
    /// The `plugins/` directory holding the plugin crates.
    pub plugins: PathBuf,
    /// Sets to take (default: every set in `dir`).
    pub names: Vec<String>,
}

fn set_names(args: &GoldenArgs) -> Result<Vec<String>> {
    if !args.names.is_empty() {
        return Ok(args.names.clone());
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&args.dir)
        .with_context(|| format!("listing golden sets in {}", args.dir.display()))?
    {
        let entry = entry?;
        if entry.path().join(EVENTS).is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    ensure!(
        !names.is_empty(),
        "{} holds no golden sets (directories with {EVENTS})",
        args.dir.display()
    );
    Ok(names)
}

/// Builds and loads the plugin crate `plugins/<name>`; returns it and its path.
fn load_plugin(runtime: &Runtime, plugins: &Path, name: &str) -> Result<(Plugin, PathBuf)> {
    let crate_dir = plugins.join(name);
    ensure!(
        crate_dir.join("Cargo.toml").is_file(),
        "golden set `{name}` has no plugin crate at {}",
        crate_dir.display()
    );
    let built = lockstep_build::build(&crate_dir, &Default::default())
        .with_context(|| format!("building plugin {name}"))?;
    Ok((runtime.load_file(&built.path)?, built.path))
}

/// The batch host's rows for `events`, stored through a fresh offline store and read
/// back, in canonical order (store columns dropped; they hold write times).
pub async fn batch_rows(
    plugin: &(Plugin, PathBuf),
    events: &Path,
    partitions: usize,
    format: TableFormat,
) -> Result<Vec<Row>> {
    let scratch = tempfile::tempdir().context("creating a scratch offline store")?;
    Ok(backfill(plugin, events, partitions, scratch.path(), format)
        .await?
        .0)
}

/// Backfills `events` (JSON lines) into the offline store at `store_root` with the
/// batch host, then reads the group back: its rows in canonical order and the commit's
/// summary. Rejected records fail the backfill.
pub async fn backfill(
    (plugin, component): &(Plugin, PathBuf),
    events: &Path,
    partitions: usize,
    store_root: &Path,
    format: TableFormat,
) -> Result<(Vec<Row>, lockstep_offline::WriteSummary)> {
    let store = crate::offline::open(&store_root.to_string_lossy(), &Default::default())?;
    let job = BatchJob {
        partitions,
        // The stream side's rule: events beyond the clock's default lead are refused.
        latest_event_time: Some(
            crate::batch::now_micros()
                .saturating_add(lockstep_core::decode::DEFAULT_MAX_FUTURE_MICROS),
        ),
        ..BatchJob::new(
            component.to_string_lossy(),
            events.to_string_lossy(),
            SourceFormat::Json,
        )
    };
    let options =
        BackfillOptions::new(format.into(), format!("a backfill of {}", events.display()));
    let report = Backfill::prepare(&store, plugin, options, 0)
        .await?
        .run(&job)
        .await
        .with_context(|| format!("backfilling from {}", events.display()))?
        .commit()
        .await?;
    let stored = store
        .read(&report.group.name, &report.group.version)
        .await?;
    Ok((canonical_rows(&stored, plugin.manifest()), report.written))
}

/// Reads rows written one JSON object per line.
pub fn read_rows(path: &Path) -> Result<Vec<Row>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str::<Row>(line)
                .with_context(|| format!("{} line {}: not a JSON object", path.display(), i + 1))
        })
        .collect()
}

fn write_rows(path: &Path, rows: &[Row]) -> Result<()> {
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    for row in rows {
        serde_json::to_writer(&mut w, row)?;
        w.write_all(b"\n")?;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// `lockstep golden check`: every set's batch rows equal its expected rows.
pub async fn check(args: &GoldenArgs, runtime: &Runtime) -> Result<()> {
    let mut failed = Vec::new();
    for name in set_names(args)? {
        let dir = args.dir.join(&name);
        let loaded = load_plugin(runtime, &args.plugins, &name)?;
        let plugin = &loaded.0;
        let key = plugin.manifest().entity_key.clone();
        let expected_path = dir.join(EXPECTED);
        ensure!(
            expected_path.is_file(),
            "golden set `{name}` has no {EXPECTED}; make it with `lockstep golden update {name}`"
        );
        let mut expected = read_rows(&expected_path)?;
        canonical_order(&mut expected, &key);
        let made_with = std::fs::read_to_string(dir.join(PLUGIN_HASH)).unwrap_or_default();
        let made_with = made_with.trim();
        let mut ok = true;
        // Both layouts, each read back through its own reader: a table's snapshot
        // or a plain layout's hour files must hold exactly the expected rows.
        for format in [TableFormat::Plain, TableFormat::Delta] {
            for partitions in PARTITIONS {
                let started = Instant::now();
                let rows = batch_rows(&loaded, &dir.join(EVENTS), partitions, format).await?;
                let c = compare(&key, &rows, &expected, 20);
                let how = format!(
                    "{partitions} partition{}, {}",
                    if partitions == 1 { "" } else { "s" },
                    format.name()
                );
                if c.identical() {
                    println!(
                        "golden {name}: batch ({how}) = golden ✓  {} rows, {} entities, {:.0} ms",
                        c.left_rows,
                        c.entities,
                        started.elapsed().as_secs_f64() * 1e3
                    );
                } else {
                    ok = false;
                    println!("golden {name}: batch ({how}) ≠ golden ✗");
                    print!("{}", c.render("batch", "golden"));
                    if !made_with.is_empty() && made_with != plugin.hash() {
                        println!(
                            "note: the golden rows were made with plugin {made_with}, this is \
                             {}: if the change is intended, run `lockstep golden update {name}`",
                            plugin.hash()
                        );
                    }
                }
            }
        }
        if !ok {
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("golden check failed for {}", failed.join(", "));
    }
    Ok(())
}

/// `lockstep golden update`: rewrites each set's expected rows from the batch host,
/// after checking that every partitioning agrees.
pub async fn update(args: &GoldenArgs, runtime: &Runtime) -> Result<()> {
    for name in set_names(args)? {
        let dir = args.dir.join(&name);
        let loaded = load_plugin(runtime, &args.plugins, &name)?;
        let plugin = &loaded.0;
        let key = plugin.manifest().entity_key.clone();
        let rows = batch_rows(
            &loaded,
            &dir.join(EVENTS),
            PARTITIONS[0],
            TableFormat::Plain,
        )
        .await?;
        for &partitions in &PARTITIONS[1..] {
            let again =
                batch_rows(&loaded, &dir.join(EVENTS), partitions, TableFormat::Plain).await?;
            let c = compare(&key, &rows, &again, 20);
            ensure!(
                c.identical(),
                "{name}: 1 and {partitions} partitions disagree, so no golden rows were written:\n{}",
                c.render("1 partition", "several")
            );
        }
        let previous = read_rows(&dir.join(EXPECTED)).unwrap_or_default();
        let change = compare(&key, &previous, &rows, 0);
        write_rows(&dir.join(EXPECTED), &rows)?;
        std::fs::write(dir.join(PLUGIN_HASH), format!("{}\n", plugin.hash()))
            .with_context(|| format!("writing {}", dir.join(PLUGIN_HASH).display()))?;
        println!(
            "golden {name}: wrote {} rows ({} changed, {} added, {} removed) with plugin {}…",
            rows.len(),
            change.differing_rows,
            change.only_right,
            change.only_left,
            &plugin.hash()[..12]
        );
    }
    Ok(())
}

/// `lockstep golden …`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Run the batch host over each set's events and compare its rows with the
    /// expected ones, exactly; exit 1 with a diff on any difference.
    Check {
        #[command(flatten)]
        sets: GoldenSets,
        #[command(flatten)]
        runtime: crate::plugin::RuntimeArgs,
    },
    /// Rewrite each set's expected rows from the batch host. Review the diff before
    /// committing: this is how a plugin's change of behaviour is accepted.
    Update {
        #[command(flatten)]
        sets: GoldenSets,
        #[command(flatten)]
        runtime: crate::plugin::RuntimeArgs,
    },
}

/// Which golden sets, where.
#[derive(clap::Args)]
pub struct GoldenSets {
    /// Golden sets to take, by plugin name (default: all).
    names: Vec<String>,
    /// The directory of golden sets (default: `golden/` of this workspace).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The directory of plugin crates (default: `plugins/` of this workspace).
    #[arg(long)]
    plugins: Option<PathBuf>,
}

impl GoldenSets {
    fn args(self) -> GoldenArgs {
        GoldenArgs {
            dir: self.dir.unwrap_or_else(|| workspace_dir("golden")),
            plugins: self.plugins.unwrap_or_else(|| workspace_dir("plugins")),
            names: self.names,
        }
    }
}

/// `name` in the current directory if it is there, else in this source tree.
fn workspace_dir(name: &str) -> PathBuf {
    let here = PathBuf::from(name);
    if here.is_dir() {
        return here;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(name)
}

/// Runs a `golden` subcommand.
pub async fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Check { sets, runtime } => check(&sets.args(), &runtime.runtime()?).await,
        Command::Update { sets, runtime } => update(&sets.args(), &runtime.runtime()?).await,
    }
}
