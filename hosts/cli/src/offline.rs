//! Opening the offline store the way every command reads it.

use crate::batch::TableFormat;
use anyhow::{Context, Result};
use lockstep_offline::{GroupVersion, OfflineStore, OfflineWriter, S3Options, WriteSummary};
use std::sync::Arc;

/// The offline store at `location`, reading group versions kept as Delta tables
/// through their log: every command sees a table's snapshot, never the files a
/// replacement removed.
pub fn open(location: &str, s3: &S3Options) -> Result<OfflineStore> {
    Ok(OfflineStore::open_location(location, s3)
        .with_context(|| format!("opening the offline store {location}"))?
        .with_table_log(Arc::new(lockstep_delta::DeltaTables)))
}

/// How a backfill's rows become visible: hour by hour as the plain layout's writer
/// commits, or all at once in one Delta commit after it.
pub enum Commit {
    /// The plain layout: the writer's commit is the job's.
    Plain,
    /// A Delta table, read as the job began.
    Delta {
        /// The job's view of the table.
        backfill: lockstep_delta::Backfill,
        /// The file name the job's hour files take.
        part_file: String,
    },
}

impl Commit {
    /// Starts a backfill of `group` in `format`. A Delta backfill reads the table now:
    /// a job that commits some of the same hours meanwhile makes this one's commit a
    /// conflict.
    pub fn begin(
        format: TableFormat,
        store: &OfflineStore,
        group: &GroupVersion,
        now: i64,
        runtime: &tokio::runtime::Runtime,
    ) -> Result<Commit> {
        Ok(match format {
            TableFormat::Plain => Commit::Plain,
            TableFormat::Delta => {
                let dir = lockstep_delta::table_dir(&store.root(), &group.name, &group.version);
                let backfill = runtime
                    .block_on(lockstep_delta::Backfill::begin(&dir))
                    .context("reading the Delta table")?;
                // Each job's files have names of their own: the table keeps the files a
                // replacement removes for readers of older versions.
                let job_id = format!("{now:x}-{:x}", std::process::id());
                Commit::Delta {
                    backfill,
                    part_file: lockstep_delta::part_file_name(&job_id),
                }
            }
        })
    }

    /// The file name the writer gives hour files (`None`: the plain layout's own).
    pub fn part_file(&self) -> Option<String> {
        match self {
            Commit::Plain => None,
            Commit::Delta { part_file, .. } => Some(part_file.clone()),
        }
    }

    /// Commits `writer`'s rows: the plain layout's hours, or the Delta table's next
    /// version (returned).
    pub fn finish(
        self,
        writer: OfflineWriter,
        group: &GroupVersion,
        plugin_hash: &str,
        runtime: &tokio::runtime::Runtime,
    ) -> Result<(WriteSummary, Option<lockstep_delta::Committed>)> {
        let written = writer.commit()?;
        match self {
            Commit::Plain => Ok((written, None)),
            Commit::Delta { backfill, .. } => {
                let rel = lockstep_offline::layout::version_rel(&group.name, &group.version);
                let schema = OfflineStore::schema(&group.manifest);
                let committed = runtime
                    .block_on(backfill.commit(&rel, &schema, plugin_hash, &written.parts))
                    .context("committing the backfill to its Delta table")?;
                Ok((written, Some(committed)))
            }
        }
    }
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
