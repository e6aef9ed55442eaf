//! `lockstep training-set`: point-in-time-correct training sets from the offline store.

use anyhow::{Context, Result};
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
    #[arg(long = "group", required = true)]
    pub groups: Vec<GroupSelection>,
    /// Offline store: a directory or `s3://bucket/prefix`.
    #[arg(long)]
    pub offline_store: String,
    /// S3-compatible endpoint for an `s3://` store (default: `AWS_ENDPOINT_URL`).
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// The training set: a Parquet file, written whole or not at all.
    #[arg(long)]
    pub out: PathBuf,
    /// Features older than this at the label time are null (e.g. 7d, 12h).
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
}

/// Label file formats.
#[derive(clap::ValueEnum, Clone, Copy)]
pub enum LabelsFormatArg {
    Parquet,
    Csv,
    Json,
}

/// Builds the training set `args` describe and prints a summary.
pub async fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let ttl = match args.ttl {
        Some(d) => Some(
            i64::try_from(d.as_micros()).context("--ttl is longer than the timestamps can hold")?,
        ),
        None => None,
    };
    let mut groups = args.groups;
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
    let store = crate::offline::open(
        &args.offline_store,
        &S3Options {
            endpoint: args.endpoint_url,
            ..Default::default()
        },
    )?;
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
