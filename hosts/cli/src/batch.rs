//! `lockstep batch run`: backfill a feature group into the offline store.

use crate::offline::TableFormat;
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use lockstep_backfill::{Backfill, BackfillError, BackfillOptions};
use lockstep_batch::{BatchJob, Progress, SourceFormat};
pub(crate) use lockstep_core::now_micros;
use lockstep_offline::S3Options;
use lockstep_offline::snapshot::{SnapshotInfo, write_states};
use lockstep_runtime::Runtime;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `batch run`.
pub struct RunArgs {
    pub plugin: PathBuf,
    pub source: String,
    pub format: Option<SourceFormat>,
    pub sql: Option<String>,
    pub offline_store: String,
    pub s3: S3Options,
    pub catalog: Option<Catalog>,
    pub memory_limit: Option<usize>,
    pub partitions: usize,
    pub state_out: Option<PathBuf>,
    pub rejects: Option<PathBuf>,
    /// How far ahead of the clock an event time may be (µs).
    pub max_future: i64,
    /// For a plugin with timers: the input ends just before this instant (µs), and
    /// entities are woken up to it; `None`: up to the input's latest event time.
    pub end_at: Option<i64>,
    /// The part of history written (`--from`/`--to`): the plugin runs over every
    /// event before its end, only rows inside it are written, and every hour inside
    /// it is replaced.
    pub window: lockstep_batch::TimeWindow,
    /// How the group version is kept.
    pub table_format: TableFormat,
    /// Where the commit is recorded.
    pub audit: crate::audit::AuditArgs,
    /// The erasure ledger the job honours (beside the offline store by default).
    pub erasures: crate::erase::LedgerArgs,
    /// The group's KMS key: every object written is encrypted by S3 with SSE-KMS.
    pub kms_key_id: Option<String>,
}

/// Where to register written tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Catalog {
    /// The AWS Glue Data Catalog, in this database.
    Glue(String),
}

/// Parses `glue:DATABASE`.
pub fn parse_catalog(text: &str) -> Result<Catalog, String> {
    match text.split_once(':') {
        Some(("glue", db)) if !db.is_empty() => Ok(Catalog::Glue(db.to_owned())),
        _ => Err(format!("`{text}` is not a catalog: use glue:DATABASE")),
    }
}

/// Parses sizes like `512MiB`, `2GiB`, `1.5G`, `100000` (bytes): `K`, `M`, `G` are
/// powers of 1000 and `KiB`, `MiB`, `GiB` powers of 1024, as `bytesize` reads them.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = text
        .trim()
        .parse()
        .map_err(|e| format!("`{text}` is not a size like 512MiB or 2GiB: {e}"))?;
    usize::try_from(size.as_u64())
        .ok()
        .filter(|bytes| *bytes < usize::MAX)
        .ok_or_else(|| format!("`{text}` is larger than this machine can address"))
}

/// Peak resident memory of this process, from /proc (Linux), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub async fn run(args: RunArgs, runtime: &Runtime) -> Result<()> {
    let started = Instant::now();
    let plugin = runtime.load_file(&args.plugin)?;
    let format = match args
        .format
        .or_else(|| SourceFormat::from_path(&args.source))
    {
        Some(f) => f,
        None => bail!(
            "cannot tell the format of `{}` from its name; pass --format parquet|csv|json",
            args.source
        ),
    };
    // Refuse what a Delta table cannot do yet before any work (or network call).
    if args.table_format == TableFormat::Delta && args.catalog.is_some() {
        bail!(
            "--catalog registers the plain layout's partitions; with --table-format \
             delta, register the table as a Delta table in the catalog instead"
        );
    }
    let store =
        crate::offline::open_encrypted(&args.offline_store, &args.s3, args.kms_key_id.as_deref())?;
    // Opened before any work: a log that cannot be written stops the job, not its end.
    let audit = args.audit.open(Some(&args.offline_store), &args.s3)?;
    let now = now_micros();
    let options = BackfillOptions {
        // Rows wait for the commit in a buffer of a quarter of the memory limit; the
        // rest is the sort's. Beyond it they are staged on disk.
        buffer_bytes: args
            .memory_limit
            .map_or_else(default_buffer_bytes, |m| m / 4),
        delta: {
            let mut options = crate::offline::delta_options(&args.offline_store, &args.s3);
            if let Some(key) = &args.kms_key_id {
                lockstep_delta::encrypt_with_kms(&mut options, key);
            }
            options
        },
        keep_rejects: args.rejects.is_some(),
        ledger: args.erasures.open(Some(&args.offline_store), &args.s3)?,
        ..BackfillOptions::new(
            args.table_format.into(),
            format!("batch run from {}", args.source),
        )
    };
    // The plugin may write here, in this layout, and (plain layout) no other job does:
    // all checked before any work. The version is bound when the rows commit, so a job
    // that fails before then leaves it free.
    let prepared = Backfill::prepare(&store, &plugin, options, now).await?;
    let recovered = prepared.recovered();
    if recovered.completed > 0 {
        println!(
            "completed the commit of a killed job: {} hour files published",
            recovered.completed
        );
    }
    if recovered.removed > 0 {
        println!(
            "removed {} files staged by killed jobs that never committed",
            recovered.removed
        );
    }
    let job = BatchJob {
        sql: args.sql,
        partitions: args.partitions.max(1),
        // Three quarters of the limit for the sort; the writer's buffer gets the rest.
        memory_limit: args.memory_limit.map(|m| m - m / 4),
        s3: args.s3.clone(),
        keep_states: args.state_out.is_some(),
        latest_event_time: Some(now.saturating_add(args.max_future)),
        fire_until: args.end_at.map(|end| end.saturating_sub(1)),
        window: args.window,
        ..BatchJob::new(args.plugin.to_string_lossy(), args.source.clone(), format)
    };
    let job_progress = job.progress.clone();
    let display = ProgressDisplay::start(job.progress.clone());
    let ran = prepared.run(&job).await;
    display.finish();
    let ran = ran.map_err(|e| run_error(e, &args.source))?;
    if let Some(path) = &args.rejects {
        // Kept before anything is visible: a job killed after its commit loses none.
        let out = ran.output();
        let mut w = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        for r in out.rejects.iter().chain(&out.plugin_failures) {
            let line =
                serde_json::json!({"column": r.column, "reason": r.reason, "record": r.record});
            writeln!(w, "{line}")?;
        }
        w.flush()?;
    }
    let report = ran
        .commit()
        .await
        .with_context(|| format!("committing the backfill from {}", args.source))?;
    let group = &report.group;
    let (out, written) = (&report.output, &report.written);
    let (spills, commit_secs) = (report.spills, report.commit_time.as_secs_f64());
    let delta_commit = &report.delta;
    let registered = match &args.catalog {
        Some(Catalog::Glue(database)) => {
            let location = store.root().join(&group.name);
            let location = location.to_string_lossy();
            let registered = lockstep_catalog::GlueCatalog::connect(database, &args.s3)
                .await
                .register(group, &location, &written.hours)
                .await
                .with_context(|| {
                    format!(
                        "the rows are committed, but registering them in glue:{database} failed; \
                         re-run the job (it is idempotent) once the catalog is reachable"
                    )
                })?;
            Some(registered)
        }
        None => None,
    };
    let mut entries = Vec::new();
    if group.registered_at == now {
        // This job's commit bound the version to its plugin.
        entries.push(
            lockstep_audit::Entry::new("group.register")
                .on(&group.name, Some(group.version.clone()))
                .with_details(serde_json::json!({
                    "plugin_hash": group.plugin_hash,
                    "table_format": args.table_format.name(),
                })),
        );
    }
    entries.push(
        lockstep_audit::Entry::new("batch.commit")
            .on(&group.name, Some(group.version.clone()))
            .with_details(serde_json::json!({
                "plugin_hash": plugin.hash(),
                "source": args.source,
                "table_format": args.table_format.name(),
                "rows": written.rows,
                "rejected": out.rejects.len(),
                "delta_version": delta_commit.as_ref().map(|c| c.version),
                "kms_key_id": args.kms_key_id,
                "files": written.parts.iter().map(|p| serde_json::json!({
                    "path": p.rel, "rows": p.rows, "bytes": p.bytes, "sha256": p.sha256,
                })).collect::<Vec<_>>(),
            })),
    );
    crate::audit::record(audit.as_ref(), entries, "the backfill is committed").await?;
    if let Some(path) = &args.state_out {
        let info = SnapshotInfo {
            group: group.name.clone(),
            version: group.version.clone(),
            plugin_hash: plugin.hash().to_owned(),
            state_version: plugin.manifest().state_version,
        };
        write_states(path, &info, &out.states)?;
    }
    let secs = started.elapsed().as_secs_f64();
    let s = &out.stats;
    println!(
        "backfilled {}@{} (plugin {}…)",
        group.name,
        group.version,
        &plugin.hash()[..12]
    );
    // Events left out after the window's end were read too.
    let left_out = job_progress
        .after_window
        .load(std::sync::atomic::Ordering::Relaxed) as usize;
    println!(
        "  read       {} events from {} ({} rejected{})",
        s.events_in + out.rejects.len() + left_out,
        args.source,
        out.rejects.len(),
        args.rejects
            .as_ref()
            .map(|p| format!(", see {}", p.display()))
            .unwrap_or_default()
    );
    println!(
        "  applied    {} events to {} entities ({} duplicates dropped{}) in {} plugin calls",
        s.events_applied,
        s.entities,
        s.duplicates,
        if s.failed > 0 {
            format!(", {} failed in the plugin", s.failed)
        } else {
            String::new()
        },
        s.calls
    );
    if let Some(until) = out.fire_until {
        println!(
            "  woke       entities up to {} (the input's end): {} of the rows are wake-up rows",
            lockstep_core::rows::format_timestamp(until)
                .as_str()
                .unwrap_or_default(),
            s.wake_rows
        );
    }
    let (after, before) = (
        job_progress
            .after_window
            .load(std::sync::atomic::Ordering::Relaxed),
        job_progress
            .before_window
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    if let Some(to) = args.window.to {
        println!(
            "  window     up to {}: {after} events at or after it left out",
            lockstep_core::rows::timestamp_text(to)
        );
    }
    if let Some(from) = args.window.from {
        println!(
            "  window     from {}: {before} rows before it computed (the entities' history), \
             not written; every hour from it on replaced",
            lockstep_core::rows::timestamp_text(from)
        );
    }
    if out.erased > 0 {
        println!(
            "  erased     {} events of erased entities dropped (at or before their erasure)",
            out.erased
        );
    }
    println!(
        "  wrote      {} rows into {} hour partitions under {} ({:.2} s to commit{})",
        written.rows,
        written.partitions,
        store.root().join(&group.name).display(),
        commit_secs,
        if spills > 0 {
            format!(", rows staged on disk {spills} times")
        } else {
            String::new()
        }
    );
    if let Some(c) = &delta_commit {
        println!(
            "  delta      committed table version {} ({} files added, {} replaced; replaced \
             files stay for readers of older versions)",
            c.version, c.added, c.removed
        );
    }
    if let Some(r) = &registered {
        println!(
            "  catalog    glue table {} ({}), {} partitions added, {} already registered",
            r.table,
            if r.created_table {
                "created"
            } else {
                "updated"
            },
            r.partitions_added,
            r.partitions_existing
        );
    }
    if let Some(path) = &args.state_out {
        println!(
            "  state      {} entities → {}",
            out.states.len(),
            path.display()
        );
    }
    println!(
        "  took       {:.2} s ({:.0} events/s){}",
        secs,
        s.events_in as f64 / secs.max(1e-9),
        peak_rss()
            .map(|b| format!(", peak RSS {} MiB", b >> 20))
            .unwrap_or_default()
    );
    Ok(())
}

/// A failed run as the user should read it: what to pass to keep rejects, which
/// directory filled up.
fn run_error(e: BackfillError, source: &str) -> anyhow::Error {
    match e {
        BackfillError::Rejected { .. } => anyhow::anyhow!(
            "{e}. Pass --rejects FILE to write the good rows and keep the bad ones there"
        ),
        BackfillError::PluginFailed { .. } => anyhow::anyhow!(
            "{e}. Pass --rejects FILE to write every other event's rows and keep these there"
        ),
        e => {
            // A full disk under the temporary directory (sort spills, staged rows): say
            // which directory, and how to move it.
            let full = anyhow::Error::from(e);
            let full = if crate::disk_full(&full) {
                full.context(format!(
                    "the disk under the temporary directory {} is full (sorts spill and rows \
                     awaiting commit are staged there); free space or point TMPDIR elsewhere",
                    std::env::temp_dir().display()
                ))
            } else {
                full
            };
            full.context(format!("backfilling from {source}"))
        }
    }
}
/// Shows a running job's counters: a live line on a terminal, a log line every few
/// seconds otherwise (so CI logs and `nohup` files stay readable).
struct ProgressDisplay {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl ProgressDisplay {
    fn start(progress: Arc<Progress>) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let line = |p: &Progress| {
                let (read, written, rejected) = p.snapshot();
                let secs = started.elapsed().as_secs_f64().max(1e-9);
                format!(
                    "{read} events read, {written} rows out, {rejected} rejected, {:.0} events/s",
                    read as f64 / secs
                )
            };
            if std::io::stderr().is_terminal() {
                let bar = ProgressBar::new_spinner();
                bar.set_style(
                    ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                while stopped
                    .recv_timeout(Duration::from_millis(200))
                    .is_err_and(|e| e == std::sync::mpsc::RecvTimeoutError::Timeout)
                {
                    bar.set_message(line(&progress));
                    bar.tick();
                }
                bar.finish_and_clear();
            } else {
                while stopped
                    .recv_timeout(Duration::from_secs(10))
                    .is_err_and(|e| e == std::sync::mpsc::RecvTimeoutError::Timeout)
                {
                    eprintln!("batch: {}", line(&progress));
                }
            }
        });
        ProgressDisplay { stop, thread }
    }

    fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// The commit buffer of a job without a memory limit: a quarter of the memory available
/// as it starts, and at least the writer's default. Staging rows on disk and reading
/// them back costs a backfill more than holding them (two copies through the page
/// cache; 10M events: 17 s staged against 15 s held), so a machine with room holds them.
fn default_buffer_bytes() -> usize {
    available_memory().map_or(lockstep_offline::writer::DEFAULT_BUFFER_BYTES, |bytes| {
        (bytes / 4).max(lockstep_offline::writer::DEFAULT_BUFFER_BYTES)
    })
}

/// `MemAvailable` from `/proc/meminfo`, where there is one.
fn available_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&info)
}

fn parse_mem_available(meminfo: &str) -> Option<usize> {
    let line = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let kib: usize = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_available_and_refuses_what_it_cannot_read() {
        let info = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   23000000 kB\n";
        assert_eq!(parse_mem_available(info), Some(23_000_000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: lots kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: 12 MB\n"), None);
    }

    #[test]
    fn the_default_buffer_is_never_below_the_writer_default() {
        assert!(default_buffer_bytes() >= lockstep_offline::writer::DEFAULT_BUFFER_BYTES);
    }
}

/// `lockstep batch …`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Run a plugin over a source and write its rows into the offline store.
    Run {
        /// The plugin component (.wasm).
        #[arg(long)]
        plugin: PathBuf,
        /// Source files: a file, a directory or a glob, local or `s3://bucket/…`.
        #[arg(long)]
        source: String,
        /// Source format (default: from the file extension).
        #[arg(long, value_enum)]
        format: Option<FormatArg>,
        /// Shape the source into the plugin's input schema: `SELECT … FROM source`.
        #[arg(long)]
        sql: Option<String>,
        /// Offline store: a directory or `s3://bucket/prefix`.
        #[arg(long)]
        offline_store: String,
        /// S3-compatible endpoint for `s3://` sources and stores (default:
        /// `AWS_ENDPOINT_URL`, else AWS). Credentials and region come from the
        /// standard AWS environment variables.
        #[arg(long)]
        endpoint_url: Option<String>,
        /// Register the written table and partitions in a data catalog:
        /// `glue:DATABASE` (the AWS Glue Data Catalog; endpoint and credentials as for S3).
        #[arg(long, value_parser = parse_catalog)]
        catalog: Option<Catalog>,
        /// Memory for the job (e.g. 2GiB): three quarters for sorting, a quarter for
        /// rows awaiting commit; beyond it both spill to disk.
        #[arg(long, value_parser = parse_size)]
        memory_limit: Option<usize>,
        /// Parallel plugin instances (default: the number of cores).
        #[arg(long)]
        partitions: Option<usize>,
        /// Write each entity's final state here (for the stream host to start from).
        #[arg(long)]
        state_out: Option<PathBuf>,
        /// Write rows that cannot be read here, with their reason, and go on.
        #[arg(long)]
        rejects: Option<PathBuf>,
        /// Refuse events more than this ahead of the clock (rejects, as the stream
        /// host's dead letters): a typo like year 9999 never becomes a feature row.
        #[arg(long, default_value = "1h", value_parser = crate::skew::parse_lateness)]
        max_future: i64,
        /// The input ends just before this instant (RFC 3339): for a plugin with
        /// timers, entities are woken after their last event up to it (by default, up
        /// to the input's latest event time). For a hand-off, the instant the stream
        /// goes on from (`stream run --start-at`), so the backfill's rows are exactly
        /// those before it. The source should hold no event at or after it.
        #[arg(long, value_parser = crate::stream::parse_instant, conflicts_with = "to")]
        end_at: Option<i64>,
        /// Write only rows at or after this instant (RFC 3339, on the hour): the plugin
        /// still runs over the history before it, so each entity's state is exact, and
        /// every hour from it on (up to `--to`) is replaced, emptied if it gets no row.
        #[arg(long, value_parser = crate::stream::parse_instant)]
        from: Option<i64>,
        /// Read and write only events before this instant (RFC 3339, on the hour);
        /// later events are left out, and entities are woken up to it.
        #[arg(long, value_parser = crate::stream::parse_instant)]
        to: Option<i64>,
        /// How the group version is kept: `plain` (one Parquet file per hour, each hour
        /// replaced atomically) or `delta` (a Delta Lake table: the whole backfill is one
        /// commit, concurrent jobs are serialised, old versions stay readable).
        #[arg(long, value_enum, default_value = "plain")]
        table_format: TableFormat,
        #[command(flatten)]
        runtime: crate::plugin::RuntimeArgs,
        #[command(flatten)]
        audit: crate::audit::AuditArgs,
        #[command(flatten)]
        erasures: crate::erase::LedgerArgs,
        /// The group's KMS key (id, ARN or alias) for an `s3://` store: every object
        /// the job writes is encrypted by S3 with SSE-KMS under it. Refused for a
        /// local store.
        #[arg(long)]
        kms_key_id: Option<String>,
    },
}

/// A source format on the command line.
#[derive(clap::ValueEnum, Clone, Copy)]
pub enum FormatArg {
    /// Parquet files.
    Parquet,
    /// CSV with a header.
    Csv,
    /// JSON lines.
    Json,
}

/// Runs a `batch` subcommand.
pub async fn run_command(cmd: Command) -> Result<()> {
    match cmd {
        Command::Run {
            plugin,
            source,
            format,
            sql,
            offline_store,
            endpoint_url,
            catalog,
            memory_limit,
            partitions,
            state_out,
            rejects,
            max_future,
            end_at,
            from,
            to,
            table_format,
            runtime,
            audit,
            erasures,
            kms_key_id,
        } => {
            let runtime = runtime.runtime()?;
            run(
                RunArgs {
                    plugin,
                    source,
                    format: format.map(|f| match f {
                        FormatArg::Parquet => SourceFormat::Parquet,
                        FormatArg::Csv => SourceFormat::Csv,
                        FormatArg::Json => SourceFormat::Json,
                    }),
                    sql,
                    offline_store,
                    s3: lockstep_offline::S3Options {
                        endpoint: endpoint_url,
                        ..Default::default()
                    },
                    catalog,
                    memory_limit,
                    partitions: partitions.unwrap_or_else(|| {
                        std::thread::available_parallelism().map_or(2, |n| n.get())
                    }),
                    state_out,
                    rejects,
                    max_future,
                    end_at,
                    window: lockstep_batch::TimeWindow { from, to },
                    table_format,
                    audit,
                    erasures,
                    kms_key_id,
                },
                &runtime,
            )
            .await
        }
    }
}
