//! `lockstep`: the command line over the Lockstep libraries. Parsing arguments and
//! printing are all that happens here; everything else lives in library crates.
//!
//! `main` builds the one async runtime, [`run`] dispatches to the subcommand's module
//! (each owns its `clap` arguments), and the exit code is decided in one place,
//! [`exit_code`].

mod audit;
mod batch;
mod cache;
mod demo;
mod erase;
mod featurestore;
mod gen_parquet;
mod generate;
mod golden;
mod init;
mod lineage;
mod offline;
mod plugin;
mod repo;
mod scaffold;
mod serve;
mod skew;
mod stream;
mod tenant;
mod training;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Lockstep: write a feature transform once, run it identically in batch and stream.
#[derive(Parser)]
#[command(name = "lockstep", version, about)]
struct Cli {
    /// The feature repository's configuration (default: the lockstep.toml in the
    /// working directory or the nearest one above it). Commands take their defaults
    /// from it; flags override.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a feature repository: lockstep.toml, an example plugin crate, sample
    /// events and a README.
    Init(init::Args),
    /// Build the repository's plugins and show what `apply` would change: new group
    /// versions, unchanged ones, and a changed plugin for a registered version
    /// (refused: exit 1).
    Plan(repo::PlanArgs),
    /// Build the repository's plugins and register every new group version for its
    /// build in the offline store; nothing when anything is refused. Idempotent.
    Apply(repo::PlanArgs),
    /// Backfill the repository's groups (all with a batch source, or those named)
    /// into its offline store, each as `batch run` would.
    Backfill(repo::BackfillArgs),
    /// Load each entity's latest row of the repository's groups from the offline
    /// store into the online store: idempotent, never over a newer row.
    Materialize(repo::MaterializeArgs),
    /// Build, inspect and run plugins.
    #[command(subcommand)]
    Plugin(plugin::Command),
    /// Backfill feature groups from history into the offline store.
    #[command(subcommand)]
    Batch(batch::Command),
    /// Generate synthetic data.
    #[command(subcommand)]
    Gen(generate::Command),
    /// Build a point-in-time-correct training set: each label row joined with the
    /// latest feature row of each group recorded before its time (an as-of join over
    /// the offline store). Never a value from after the label.
    TrainingSet(training::Args),
    /// Maintain the offline store.
    #[command(subcommand)]
    Offline(offline::Command),
    /// Run the batch host and the stream host over the same events and compare every
    /// row bit for bit. Exit 0: identical; 1: skew (with a diff); 2: could not check.
    SkewCheck(skew::Args),
    /// Keep an online store current from a Kinesis stream (the stream host service):
    /// with no subcommand, every group of the repository on one stream in one service
    /// (records read once, routed by `[group.stream] field`/`equals`, each group's
    /// own state, one checkpoint for all).
    Stream(stream::StreamCommand),
    /// Serve an embedded online store over the SageMaker Feature Store runtime API
    /// (PutRecord, GetRecord, BatchGetRecord, DeleteRecord).
    FeaturestoreLocal(featurestore::Args),
    /// Serve features on the inference path over HTTP: Redis first, the online store on
    /// a miss, the default snapshot (tagged degraded) when a read does not make the
    /// timeout. POST /v1/features, Feast's POST /get-online-features, /metrics.
    Serve(serve::ServeArgs),
    /// Print the Redis `ACL SETUSER` command that makes USER a tenant of the cache:
    /// it may touch only its groups' keys (reads; writes too with --write). The
    /// password comes from the environment variable --password-env names.
    CacheAcl(cache::AclArgs),
    /// What an answer of `serve` gave (from `serve --log-features`): each entity's
    /// values, source, plugin hash and event time, and the offline rows they match.
    Lineage(lineage::Args),
    /// Tenants of `serve`: make a bearer token and its tenants-file entry.
    #[command(subcommand)]
    Tenant(tenant::Command),
    /// Verify and read the audit log: who changed what is stored or served, and when.
    #[command(subcommand)]
    Audit(audit::Command),
    /// Erase entities from a group, in every copy: recorded in the erasure ledger
    /// first (every host then drops their events at or before now, also in replays),
    /// then removed from the online store, the cache, the offline store and the
    /// served-feature log.
    /// `erase verify` looks in every copy.
    Erase(erase::Args),
    /// Check the plugins against their golden sets in `golden/`, or remake them.
    #[command(subcommand)]
    Golden(golden::Command),
    /// Build the example plugins, run them over generated events and show the results.
    Demo(demo::Args),
}

/// How a command ended, beyond success or an error.
enum Outcome {
    /// It did what was asked.
    Done,
    /// `skew-check` ran and found the hosts disagree (the diff is printed).
    SkewFound,
}

fn main() -> ExitCode {
    // First, before any thread starts: the stream service spends a tenth of its CPU
    // consolidating glibc's fastbins otherwise (see the function's docs).
    lockstep_service::tune_allocator();
    // A reader that stops early (`lockstep … | head`) closes the pipe; printing then
    // fails, and there is nothing left to say: end quietly instead of with a panic.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = lockstep_backfill::panic_text(info.payload());
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info);
    }));
    let cli = Cli::parse();
    let is_skew_check = matches!(cli.command, Command::SkewCheck(_));
    // The process's one async runtime: every library runs its I/O on it.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lockstep")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(if is_skew_check { 2 } else { 1 });
        }
    };
    let outcome = runtime.block_on(run(cli.command, cli.config.as_deref()));
    // Work still running (a renewal timer, a server's idle connection) has nothing
    // left to do for the command: it is not waited for.
    runtime.shutdown_background();
    exit_code(outcome, is_skew_check)
}

/// Runs `command` to its end.
async fn run(command: Command, config: Option<&std::path::Path>) -> Result<Outcome> {
    let done = |r: Result<()>| r.map(|()| Outcome::Done);
    match command {
        Command::Init(args) => done(init::run(args)),
        Command::Plan(args) => done(repo::plan_command(args, config).await),
        Command::Apply(args) => done(repo::apply_command(args, config).await),
        Command::Backfill(args) => done(repo::backfill(args, config).await),
        Command::Materialize(args) => done(repo::materialize_command(args, config).await),
        Command::Plugin(cmd) => done(plugin::run(cmd)),
        Command::Gen(cmd) => done(generate::run(cmd)),
        Command::SkewCheck(args) => Ok(match skew::run(&args).await? {
            true => Outcome::Done,
            false => Outcome::SkewFound,
        }),
        Command::Golden(cmd) => done(golden::run(cmd).await),
        Command::Audit(cmd) => done(audit::run_command(cmd).await),
        Command::Erase(args) => done(erase::run(args).await),
        Command::Tenant(cmd) => done(tenant::run(cmd)),
        Command::Lineage(args) => done(lineage::run(args).await),
        Command::Batch(cmd) => done(batch::run_command(cmd).await),
        Command::TrainingSet(args) => done(training::run(args, config).await),
        Command::Offline(cmd) => done(offline::run_command(cmd).await),
        Command::Stream(cmd) => done(stream::run_command(cmd, config).await),
        Command::FeaturestoreLocal(args) => done(featurestore::run(args).await),
        Command::Serve(args) => done(serve::run(args, config).await),
        Command::CacheAcl(args) => done(cache::acl(&args)),
        Command::Demo(args) => done(demo::run(args).await),
    }
}

/// The exit code of every command: 0 for success, 1 for an error; `skew-check` says 1
/// for skew found and 2 when it could not check, like `diff`. A reader that stopped
/// early (a closed pipe) is not a failure of ours: 0.
fn exit_code(outcome: Result<Outcome>, is_skew_check: bool) -> ExitCode {
    match outcome {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::SkewFound) => ExitCode::from(1),
        Err(e) => {
            let closed_pipe = e.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            });
            if closed_pipe {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {}", error_text(&e));
            ExitCode::from(if is_skew_check { 2 } else { 1 })
        }
    }
}

/// Whether `e` or one of its causes is a full disk (an I/O error of that kind, or a
/// library's message that quotes the OS's words for it).
fn disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
            || c.to_string().contains("No space left on device")
    })
}

/// An error and its causes, each said once (`lockstep_core::ErrorChain`).
fn error_text(e: &anyhow::Error) -> String {
    let error: &(dyn std::error::Error + 'static) = e.as_ref();
    lockstep_core::ErrorChain(error).to_string()
}

#[cfg(test)]
mod error_tests {
    #[derive(Debug)]
    struct Wrapping(std::io::Error);
    impl std::fmt::Display for Wrapping {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "External error: {}", self.0)
        }
    }
    impl std::error::Error for Wrapping {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        let disk = std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device");
        let e = anyhow::Error::new(Wrapping(disk)).context("spilling to /tmp/x");
        assert_eq!(
            super::error_text(&e),
            "spilling to /tmp/x: External error: No space left on device"
        );
    }
}
