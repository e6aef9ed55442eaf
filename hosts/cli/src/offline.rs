//! Opening the offline store the way every command reads it.

use anyhow::{Context, Result};
use lockstep_offline::{OfflineStore, S3Options};

/// How a group version is kept in the offline store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TableFormat {
    /// One Parquet file per hour partition, each replaced atomically.
    Plain,
    /// A Delta Lake table: one commit per backfill.
    Delta,
}

impl TableFormat {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        lockstep_backfill::TableFormat::from(self).name()
    }
}

impl From<TableFormat> for lockstep_backfill::TableFormat {
    fn from(format: TableFormat) -> Self {
        match format {
            TableFormat::Plain => lockstep_backfill::TableFormat::Plain,
            TableFormat::Delta => lockstep_backfill::TableFormat::Delta,
        }
    }
}

/// The offline store at `location`, reading group versions kept as Delta tables
/// through their log: every command sees a table's snapshot, never the files a
/// replacement removed.
pub fn open(location: &str, s3: &S3Options) -> Result<OfflineStore> {
    open_encrypted(location, s3, None)
}

/// [`open`], every object written encrypted by S3 with SSE-KMS under `kms_key_id`.
pub fn open_encrypted(
    location: &str,
    s3: &S3Options,
    kms_key_id: Option<&str>,
) -> Result<OfflineStore> {
    lockstep_delta::open_offline_store(location, s3, kms_key_id)
        .with_context(|| format!("opening the offline store {location}"))
}

/// How Delta tables under the store at `location` are reached: S3's settings for an
/// `s3://` store, nothing for a local one.
pub fn delta_options(location: &str, s3: &S3Options) -> lockstep_delta::StorageOptions {
    lockstep_delta::storage_options_for(location, s3)
}

/// `--as-of-version` values: `N` for every group, or `GROUP=N` for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsOfVersion {
    /// The group it applies to (`None`: every group).
    pub group: Option<String>,
    /// The table version.
    pub version: i64,
}

impl std::str::FromStr for AsOfVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (group, number) = match s.split_once('=') {
            Some((g, n)) if !g.is_empty() => (Some(g.to_owned()), n),
            Some(_) => return Err(format!("`{s}`: no group name before `=`")),
            None => (None, s),
        };
        let version = number
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|v| *v >= 0)
            .ok_or_else(|| {
                format!("`{s}`: a table version is a whole number ≥ 0 (N or GROUP=N)")
            })?;
        Ok(AsOfVersion { group, version })
    }
}

#[cfg(test)]
mod tests {
    use super::AsOfVersion;

    #[test]
    fn as_of_version_reads_a_number_or_a_group_and_a_number() {
        assert_eq!(
            "3".parse::<AsOfVersion>(),
            Ok(AsOfVersion {
                group: None,
                version: 3
            })
        );
        assert_eq!(
            "spend=0".parse::<AsOfVersion>(),
            Ok(AsOfVersion {
                group: Some("spend".into()),
                version: 0
            })
        );
        for bad in ["", "-1", "x", "=2", "spend=", "spend=1.5"] {
            assert!(bad.parse::<AsOfVersion>().is_err(), "{bad}");
        }
    }
}

/// What `offline vacuum` takes.
#[derive(clap::Args)]
pub struct VacuumArgs {
    /// Offline store: a directory or `s3://bucket/prefix` (S3 settings from the
    /// standard AWS environment).
    #[arg(long)]
    pub offline_store: String,
    /// The group, NAME or NAME@VERSION (every version of it when the version is left
    /// out).
    #[arg(long)]
    pub group: String,
    /// Keep files any version younger than this still needs, and files written this
    /// recently (a job still running), e.g. 168h, 7d.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub retain: std::time::Duration,
    /// List what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Allow a retention shorter than the table's (a week by default): a reader of an
    /// older version, or a job still writing, may lose its files.
    #[arg(long)]
    pub allow_short_retention: bool,
    /// Where the removal is recorded.
    #[command(flatten)]
    pub audit: crate::audit::AuditArgs,
}

/// `lockstep offline vacuum`: Delta's VACUUM on a group's tables.
pub async fn vacuum(args: VacuumArgs) -> Result<()> {
    let store = open(&args.offline_store, &S3Options::default())?;
    let audit = args
        .audit
        .open(Some(&args.offline_store), &S3Options::default())?;
    let (name, wanted) = match args.group.split_once('@') {
        Some((name, version)) => (name, Some(version)),
        None => (args.group.as_str(), None),
    };
    let versions = store.versions(name).await?;
    anyhow::ensure!(
        !versions.is_empty(),
        "feature group `{name}` is not in the offline store at {}",
        store.root().display()
    );
    let selected: Vec<_> = versions
        .iter()
        .filter(|v| wanted.is_none_or(|w| w == v.version))
        .collect();
    if let Some(w) = wanted {
        anyhow::ensure!(
            !selected.is_empty(),
            "feature group `{name}` has no version {w}; it has: {}",
            versions
                .iter()
                .map(|v| v.version.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let retain = humantime::format_duration(args.retain);
    for v in selected {
        if !store.holds_delta_table(&v.name, &v.version).await? {
            // The plain layout keeps no old files; what a killed job left is completed
            // (a journaled commit) or removed (files it staged), under the version's lock.
            let (lock, recovered) = store
                .lock(v, "offline vacuum")
                .await
                .with_context(|| format!("vacuuming {}@{}", v.name, v.version))?;
            lock.release().await?;
            println!(
                "{}@{}: plain layout: completed {} hour files of a killed job's commit, \
                 removed {} files staged by killed jobs",
                v.name, v.version, recovered.completed, recovered.removed
            );
            continue;
        }
        let dir = lockstep_delta::table_dir(&store.root(), &v.name, &v.version);
        let done = lockstep_delta::vacuum(
            &dir,
            &delta_options(&args.offline_store, &S3Options::default()),
            args.retain,
            args.dry_run,
            args.allow_short_retention,
        )
        .await
        .with_context(|| {
            format!(
                "vacuuming {}@{} (retain {retain}; a retention shorter than the table's \
                     needs --allow-short-retention)",
                v.name, v.version
            )
        })?;
        let verb = if done.dry_run {
            "would remove"
        } else {
            "removed"
        };
        println!(
            "{}@{}: {verb} {} files no version younger than {retain} needs",
            v.name,
            v.version,
            done.files.len()
        );
        if done.dry_run {
            for f in &done.files {
                println!("  {f}");
            }
        } else if !done.files.is_empty() {
            crate::audit::record(
                audit.as_ref(),
                vec![
                    lockstep_audit::Entry::new("offline.vacuum")
                        .on(&v.name, Some(v.version.clone()))
                        .with_details(serde_json::json!({
                            "retain": retain.to_string(),
                            "removed": done.files,
                        })),
                ],
                "the files are removed",
            )
            .await?;
        }
    }
    Ok(())
}

/// `lockstep offline …`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Remove the data files of a group's Delta tables that no version younger than
    /// the retention needs (files replaced by later backfills, files of killed jobs);
    /// in the plain layout, complete a killed job's commit and remove its staged files.
    Vacuum(VacuumArgs),
    /// Remove erased entities' rows from the offline store's history: every row at or
    /// before an entity's erasure (deletion markers included), per the erasure ledger.
    /// Only hours that hold such a row are rewritten, each atomically.
    Purge(crate::erase::PurgeArgs),
}

/// Runs an `offline` subcommand.
pub async fn run_command(cmd: Command) -> Result<()> {
    match cmd {
        Command::Vacuum(args) => vacuum(args).await,
        Command::Purge(args) => crate::erase::purge(args).await,
    }
}
