//! `lockstep golden check|update`: the plugins against their golden sets
//! ([`lockstep_verify::golden`] runs them; this module takes the arguments and prints).

use anyhow::{Result, bail};
use lockstep_runtime::Runtime;
use std::path::PathBuf;

/// `lockstep golden check`: every set's batch rows equal its expected rows.
async fn check(args: &GoldenSets, runtime: &Runtime) -> Result<()> {
    let sets = args.sets();
    let mut failed = Vec::new();
    for name in sets.names(&args.names)? {
        let component = sets.component(runtime, &name)?;
        let result = lockstep_verify::golden::check(&sets, &name, &component).await?;
        for run in &result.runs {
            let how = format!(
                "{} partition{}, {}",
                run.partitions,
                if run.partitions == 1 { "" } else { "s" },
                run.table_format.name()
            );
            let c = &run.comparison;
            if c.identical() {
                println!(
                    "golden {name}: batch ({how}) = golden ✓  {} rows, {} entities, {:.0} ms",
                    c.left_rows,
                    c.entities,
                    run.took.as_secs_f64() * 1e3
                );
            } else {
                println!("golden {name}: batch ({how}) ≠ golden ✗");
                print!("{}", c.render("batch", "golden"));
                if !result.made_with.is_empty() && result.made_with != result.plugin_hash {
                    println!(
                        "note: the golden rows were made with plugin {}, this is {}: if the \
                         change is intended, run `lockstep golden update {name}`",
                        result.made_with, result.plugin_hash
                    );
                }
            }
        }
        if !result.passed() {
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
async fn update(args: &GoldenSets, runtime: &Runtime) -> Result<()> {
    let sets = args.sets();
    for name in sets.names(&args.names)? {
        let component = sets.component(runtime, &name)?;
        let done = lockstep_verify::golden::update(&sets, &name, &component).await?;
        println!(
            "golden {name}: wrote {} rows ({} changed, {} added, {} removed) with plugin {}…",
            done.rows,
            done.change.differing_rows,
            done.change.only_right,
            done.change.only_left,
            &done.plugin_hash[..12.min(done.plugin_hash.len())]
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
    fn sets(&self) -> lockstep_verify::golden::GoldenSets {
        lockstep_verify::golden::GoldenSets {
            dir: self.dir.clone().unwrap_or_else(|| workspace_dir("golden")),
            plugins: self
                .plugins
                .clone()
                .unwrap_or_else(|| workspace_dir("plugins")),
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
        Command::Check { sets, runtime } => check(&sets, &runtime.runtime()?).await,
        Command::Update { sets, runtime } => update(&sets, &runtime.runtime()?).await,
    }
}
