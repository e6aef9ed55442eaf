//! `lockstep training-set`: point-in-time-correct training sets from the offline store.

use anyhow::{Context, Result};
use lockstep_batch::{BatchJob, SourceFormat};
use lockstep_offline::S3Options;
use lockstep_training::{AsOf, GroupSelection, LabelsFormat, TrainingSet, TrainingSetJob};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What `training-set` takes.
#[derive(clap::Args)]
pub struct Args {
    /// Labels: one row per training example with the groups' entity key columns, the
    /// label time and any label columns (Parquet, CSV with a header, or JSON lines).
    #[arg(long)]
    pub labels: PathBuf,
    /// The labels' format (default: from the file extension).
    #[arg(long, value_enum)]
    pub format: Option<LabelsFormatArg>,
    /// The label time column: a timestamp with a zone, or RFC 3339 text.
    #[arg(long, default_value = "label_time")]
    pub label_time: String,
    /// A feature group to join: NAME, NAME@VERSION, with `:FEAT,FEAT` for some
    /// features only. Repeat for several groups; columns come out as GROUP__FEATURE.
    /// In a feature repository: every group of lockstep.toml at its version when none
    /// is given.
    #[arg(long = "group")]
    pub groups: Vec<GroupSelection>,
    /// Offline store: a directory or `s3://bucket/prefix` (in a feature repository:
    /// `[offline] store`).
    #[arg(long)]
    pub offline_store: Option<String>,
    /// S3-compatible endpoint for an `s3://` store (default: `AWS_ENDPOINT_URL`).
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// The training set: a Parquet file, written whole or not at all.
    #[arg(long)]
    pub out: PathBuf,
    /// Features older than this at the label time are null (e.g. 7d, 12h). In a
    /// feature repository: the groups' `ttl` when they all give the same one.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
    /// A feature row at exactly the label time is seen (default: strictly before).
    #[arg(long)]
    pub inclusive: bool,
    /// Read label timestamps without a time zone as UTC.
    #[arg(long)]
    pub assume_utc: bool,
    /// Memory the sorts may hold (e.g. 512MiB); beyond it they spill to disk.
    #[arg(long, value_parser = crate::batch::parse_size)]
    pub memory_limit: Option<usize>,
    /// Partitions (threads) of the join (default: the number of cores).
    #[arg(long)]
    pub partitions: Option<usize>,
    /// Read a group kept as a Delta table as of this table version (time travel), to
    /// rebuild a training set exactly as it was built then: `N` for every group, or
    /// `GROUP=N` for one (repeatable). The version read is printed and recorded in the
    /// output's lineage.
    #[arg(long = "as-of-version", value_name = "N|GROUP=N")]
    pub as_of_versions: Vec<crate::offline::AsOfVersion>,
    /// Print the physical plan before running.
    #[arg(long)]
    pub explain: bool,
    /// Read the group of `--plugin` at each label instant itself instead of joining its
    /// stored rows: the plugin runs over the raw `--events` with the labels merged in
    /// as read points, and its `read(state, label time)` is the value (events strictly
    /// before the label; at or before it with --inclusive). The group's other rows are
    /// not read; the erasure ledger applies to the events.
    #[arg(long, requires_all = ["plugin", "events"])]
    pub exact: bool,
    /// The component of the group read with --exact (the group version's own: its
    /// hash is checked).
    #[arg(long, requires = "exact")]
    pub plugin: Option<PathBuf>,
    /// The raw events the group was computed from, for --exact: a file, directory,
    /// glob or `s3://` URL.
    #[arg(long, requires = "exact")]
    pub events: Option<String>,
    /// The events' format (default: from the name).
    #[arg(long, value_enum, requires = "exact")]
    pub events_format: Option<crate::batch::FormatArg>,
    /// `SELECT … FROM source` shaping the events into the plugin's input, as the
    /// backfill did.
    #[arg(long, requires = "exact")]
    pub events_sql: Option<String>,
    /// The erasure ledger applied to the events (default: beside the offline store).
    #[command(flatten)]
    pub erasures: crate::erase::LedgerArgs,
    #[command(flatten)]
    pub runtime: crate::plugin::RuntimeArgs,
}

/// Label file formats.
#[derive(clap::ValueEnum, Clone, Copy)]
pub enum LabelsFormatArg {
    Parquet,
    Csv,
    Json,
}

/// Fills what `args` leaves out from the feature repository's `lockstep.toml` (found
/// from the working directory, or `--config`): the offline store, the groups at their
/// versions, their common TTL.
fn repository_defaults(args: &mut Args, config_flag: Option<&std::path::Path>) -> Result<()> {
    let Some(config) = crate::repo::optional(config_flag)? else {
        if args.offline_store.is_none() {
            anyhow::bail!("--offline-store is needed (or run inside a feature repository)");
        }
        if args.groups.is_empty() {
            anyhow::bail!("--group is needed (or run inside a feature repository)");
        }
        return Ok(());
    };
    if args.offline_store.is_none() {
        args.offline_store = Some(config.offline.store.clone());
    }
    if args.groups.is_empty() {
        args.groups = config
            .groups
            .iter()
            .map(|g| GroupSelection {
                name: g.name.clone(),
                version: Some(g.version.clone()),
                features: None,
                table_version: None,
            })
            .collect();
        if args.groups.is_empty() {
            anyhow::bail!("{} has no [[group]] to join", config.path.display());
        }
    }
    if args.ttl.is_none() {
        let ttls: Vec<Option<Duration>> = args
            .groups
            .iter()
            .filter_map(|asked| config.groups.iter().find(|g| g.name == asked.name))
            .map(|g| g.ttl)
            .collect();
        match ttls.split_first() {
            Some((first, rest)) if rest.iter().all(|t| t == first) => args.ttl = *first,
            Some(_) => anyhow::bail!(
                "the groups' ttl in {} differ: a training set takes one; give it with --ttl",
                config.path.display()
            ),
            None => {}
        }
    }
    Ok(())
}

/// Builds the training set `args` describe and prints a summary.
pub async fn run(mut args: Args, config_flag: Option<&std::path::Path>) -> Result<()> {
    let started = Instant::now();
    repository_defaults(&mut args, config_flag)?;
    let offline_store = args
        .offline_store
        .clone()
        .context("--offline-store is needed (or run inside a feature repository)")?;
    let ttl = match args.ttl {
        Some(d) => Some(
            i64::try_from(d.as_micros()).context("--ttl is longer than the timestamps can hold")?,
        ),
        None => None,
    };
    let mut groups = args.groups.clone();
    for wanted in &args.as_of_versions {
        let mut applied = false;
        for g in groups.iter_mut() {
            if wanted.group.as_ref().is_none_or(|name| name == &g.name) {
                g.table_version = Some(wanted.version);
                applied = true;
            }
        }
        if !applied {
            anyhow::bail!(
                "--as-of-version {}={}: no --group {0} was asked for",
                wanted.group.as_deref().unwrap_or_default(),
                wanted.version
            );
        }
    }
    let mut job = TrainingSetJob::new(&args.labels, &args.label_time, groups);
    job.format = args.format.map(|f| match f {
        LabelsFormatArg::Parquet => LabelsFormat::Parquet,
        LabelsFormatArg::Csv => LabelsFormat::Csv,
        LabelsFormatArg::Json => LabelsFormat::Json,
    });
    job.asof = AsOf {
        inclusive: args.inclusive,
        ttl,
    };
    job.assume_utc = args.assume_utc;
    job.memory_limit = args.memory_limit;
    if let Some(p) = args.partitions {
        job.partitions = p.max(1);
    }
    let s3 = S3Options {
        endpoint: args.endpoint_url.clone(),
        ..Default::default()
    };
    let store = crate::offline::open(&offline_store, &s3)?;
    let exact = match (&args.plugin, &args.events) {
        (Some(plugin), Some(events)) if args.exact => {
            let reader = exact_reader(&args, plugin, events, &s3).await?;
            job.exact.push((reader.0.clone(), reader.1.clone()));
            Some(reader)
        }
        _ => None,
    };
    let written = async {
        let set = TrainingSet::plan(&job, &store).await?;
        if args.explain {
            println!("{}", set.plan_display());
        }
        for g in &set.groups {
            let table = match g.table_version {
                Some(v) => format!("  Delta table version {v}"),
                None => String::new(),
            };
            println!(
                "group {}@{}  plugin {}{table}  {} hour files  features: {}",
                g.version.name,
                g.version.version,
                short(&g.version.plugin_hash),
                g.files.len(),
                g.features.join(", ")
            );
        }
        set.write_parquet(&args.out).await
    }
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "wrote {} label rows to {} in {seconds:.2} s ({:.0} labels/s)",
        written.rows,
        args.out.display(),
        written.rows as f64 / seconds.max(1e-9)
    );
    if written.spilled.0 > 0 {
        println!(
            "  the sorts spilled {:.1} MiB to disk in {} files to stay within the memory limit",
            written.spilled.1 as f64 / (1 << 20) as f64,
            written.spilled.0
        );
    }
    if let Some((name, reader)) = &exact
        && let Some(read) = reader.last_read()
    {
        println!(
            "  {name} read at each label instant from {} events ({} of the labelled entities, {} erased, {} rejected)",
            read.events_read,
            read.events_used,
            read.erased,
            read.rejects.len()
        );
    }
    for (name, version, matched) in &written.matched {
        let share = if written.rows == 0 {
            0.0
        } else {
            100.0 * *matched as f64 / written.rows as f64
        };
        println!("  {name}@{version}: {matched} labels saw a feature row ({share:.1}%)");
    }
    Ok(())
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// The reader `--exact` uses: the plugin over the raw events, the group's erasures
/// applied. Returns the group's name (the plugin's) with it.
async fn exact_reader(
    args: &Args,
    plugin_path: &std::path::Path,
    events: &str,
    s3: &S3Options,
) -> Result<(String, std::sync::Arc<lockstep_batch::EventsReader>)> {
    let runtime = args.runtime.runtime()?;
    let plugin = runtime.load_file(plugin_path)?;
    let manifest = plugin.manifest().clone();
    if !args.groups.iter().any(|g| g.name == manifest.name) {
        anyhow::bail!(
            "--exact reads group `{}` (the plugin's), but no --group {0} is asked for",
            manifest.name
        );
    }
    let format = match args.events_format {
        Some(crate::batch::FormatArg::Parquet) => SourceFormat::Parquet,
        Some(crate::batch::FormatArg::Csv) => SourceFormat::Csv,
        Some(crate::batch::FormatArg::Json) => SourceFormat::Json,
        None => SourceFormat::from_path(events).with_context(|| {
            format!("cannot tell the format of `{events}` from its name; pass --events-format parquet|csv|json")
        })?,
    };
    let version = manifest.version.clone();
    let erasures = match args.erasures.open(args.offline_store.as_deref(), s3)? {
        Some(ledger) => {
            let key_type = lockstep_core::schema::input_schema(&manifest)
                .field_with_name(&manifest.entity_key)
                .map(|f| f.data_type().clone())
                .unwrap_or(arrow_schema::DataType::Utf8);
            ledger
                .boundary(&manifest.name, &version, &key_type)
                .await
                .with_context(|| {
                    format!("reading the erasure ledger for {}@{version}", manifest.name)
                })?
        }
        None => lockstep_core::Erasures::default(),
    };
    let job = BatchJob {
        sql: args.events_sql.clone(),
        partitions: args.partitions.unwrap_or(2).max(1),
        memory_limit: args.memory_limit,
        s3: s3.clone(),
        erasures: std::sync::Arc::new(erasures),
        ..BatchJob::new(plugin_path.to_string_lossy(), events.to_owned(), format)
    };
    Ok((
        manifest.name.clone(),
        std::sync::Arc::new(lockstep_batch::EventsReader::new(job, plugin)),
    ))
}
