//! The offline store as Delta Lake tables: one table per group version, one commit per
//! backfill.
//!
//! A group version's table lives where the plain layout keeps its files,
//! `<root>/<group>/version=<version>/`, with its log in `_delta_log/` and its data files
//! in the same hour partitions (`year=/month=/day=/hour=`, Delta partition columns of
//! type string). The offline writer puts each job's files under a name of its own
//! ([`part_file_name`]); [`commit_backfill`] then makes them visible in one Delta commit
//! that adds them and removes the files the touched hours held before — `replaceWhere`
//! on those hours. A reader sees the previous version or the new one, never a mix,
//! whatever kills the job; files written by a job that never committed are not in any
//! version (VACUUM removes them with the removed ones).
//!
//! Concurrent jobs are serialised by Delta's optimistic concurrency: a commit is the
//! creation of the log's next entry, which only one writer can win. The loser compares
//! the hours it replaces in its read snapshot and in the latest one: if another job
//! changed any of them it fails with [`DeltaError::Conflict`] naming them, otherwise it
//! retries on the latest version. The group version's plugin hash is a table property
//! ([`PLUGIN_HASH_PROPERTY`]): a job of another build is refused, as the registry does.
//!
//! Owns: the Delta log of offline tables. Must never: run plugins, read sources, decide
//! row order (the offline writer does).

use deltalake_core::kernel::transaction::{CommitBuilder, TransactionError};
use deltalake_core::kernel::{
    Action, Add, DataType as DeltaType, PrimitiveType, Remove, StructField,
};
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::{DeltaTable, DeltaTableError};
use futures::TryStreamExt;
use lockstep_offline::WrittenPart;
use lockstep_offline::layout::Hour;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use thiserror::Error;
use url::Url;

/// The table's partition columns: the hour of the row's event time, UTC.
pub const PARTITION_COLUMNS: [&str; 4] = ["year", "month", "day", "hour"];

/// The table property that binds a group version to one plugin hash.
pub const PLUGIN_HASH_PROPERTY: &str = "lockstep.pluginHash";

/// How many times a commit that lost the race for a version, on hours nobody else
/// touched, is tried again.
const MAX_ATTEMPTS: usize = 20;

/// Why a Delta operation failed.
#[derive(Debug, Error)]
pub enum DeltaError {
    /// delta-rs failed.
    #[error("Delta table {table}")]
    Delta {
        /// The table.
        table: String,
        /// Why (boxed: delta-rs's error is large, and this one travels in every
        /// `Result` of this crate).
        source: Box<DeltaTableError>,
    },
    /// The table belongs to another build of the plugin.
    #[error(
        "Delta table {table} holds rows of plugin {bound}, not {offered}: a different \
         build needs a new group version"
    )]
    OtherPlugin {
        /// The table.
        table: String,
        /// The hash the table is bound to.
        bound: String,
        /// The hash of this job.
        offered: String,
    },
    /// Another job committed some of the same hours since this one read the table.
    #[error(
        "Delta table {table}: another job committed {} of the hours this job replaces \
         since version {read_version} (first: {}); nothing of this job is visible — run it \
         again once the other has finished",
        hours.len(),
        hours.first().map(String::as_str).unwrap_or("?")
    )]
    Conflict {
        /// The table.
        table: String,
        /// The version this job read.
        read_version: i64,
        /// The hours both jobs wrote, `year=…/month=…/day=…/hour=…`.
        hours: Vec<String>,
    },
    /// The rows' schema has a type this table format does not hold.
    #[error("Delta table {table}: column `{column}` has type {data_type}, which is not stored")]
    Schema {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// Its Arrow type.
        data_type: String,
    },
    /// A table version that the table does not have was asked for.
    #[error(
        "Delta table {table} has no version {version}{}",
        match latest { Some(l) => format!(" (its versions are 0 to {l})"), None => String::new() }
    )]
    NoSuchVersion {
        /// The table.
        table: String,
        /// The version asked for.
        version: i64,
        /// Its latest version, when known.
        latest: Option<i64>,
    },
    /// The table's folder cannot be named as a URL.
    #[error("cannot open {0} as a Delta table: its path cannot be made absolute")]
    Location(PathBuf),
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The table version the commit created.
    pub version: i64,
    /// Files added.
    pub added: usize,
    /// Files removed (they stay on disk until VACUUM).
    pub removed: usize,
}

/// The data-file name a job writes, unique to the job: a Delta table keeps files a
/// replacement removed until VACUUM, so a job never writes over another's file.
pub fn part_file_name(job_id: &str) -> String {
    format!("part-{job_id}.parquet")
}

/// The table folder of a group version under a store root.
pub fn table_dir(root: &Path, group: &str, version: &str) -> PathBuf {
    root.join(lockstep_offline::layout::version_rel(group, version))
}

/// How to reach a table's storage: delta-rs's storage options (`AWS_ENDPOINT_URL`,
/// `AWS_REGION`, `AWS_ACCESS_KEY_ID`, …). Empty for a local table; for one on S3 see
/// [`s3_storage_options`]. Unset keys come from the standard AWS environment.
pub type StorageOptions = HashMap<String, String>;

/// Asks S3 to encrypt every object the table's writer puts (data files and the log)
/// with SSE-KMS under `kms_key_id`.
pub fn encrypt_with_kms(options: &mut StorageOptions, kms_key_id: &str) {
    options.insert("AWS_SERVER_SIDE_ENCRYPTION".into(), "aws:kms".into());
    options.insert("AWS_SSE_KMS_KEY_ID".into(), kms_key_id.into());
}

/// Storage options for tables on S3 or an S3-compatible endpoint. Commits are
/// serialised by S3's conditional writes (`If-None-Match`): delta-rs creates a
/// version's log entry only if no other writer has.
pub fn s3_storage_options(aws: &lockstep_aws::AwsOptions) -> StorageOptions {
    let mut options = StorageOptions::new();
    options.insert("AWS_REGION".into(), aws.region());
    if let Some(endpoint) = aws.endpoint_for("S3") {
        if endpoint.starts_with("http://") {
            options.insert("AWS_ALLOW_HTTP".into(), "true".into());
        }
        options.insert("AWS_ENDPOINT_URL".into(), endpoint);
    }
    if let Some((key, secret)) = &aws.credentials {
        options.insert("AWS_ACCESS_KEY_ID".into(), key.clone());
        options.insert("AWS_SECRET_ACCESS_KEY".into(), secret.clone());
    }
    options
}

/// How tables under the offline store at `location` are reached: S3's settings for an
/// `s3://` store, nothing for a local one.
pub fn storage_options_for(location: &str, aws: &lockstep_aws::AwsOptions) -> StorageOptions {
    if location.starts_with("s3://") || location.starts_with("s3a://") {
        s3_storage_options(aws)
    } else {
        StorageOptions::new()
    }
}

/// The offline store at `location` as every command reads it: group versions kept as
/// Delta tables are read through their log (a table's snapshot, never the files a
/// replacement removed); every object put on S3 is encrypted under `kms_key_id` when
/// one is given.
pub fn open_offline_store(
    location: &str,
    aws: &lockstep_aws::AwsOptions,
    kms_key_id: Option<&str>,
) -> Result<lockstep_offline::OfflineStore, lockstep_offline::OfflineError> {
    Ok(
        lockstep_offline::OfflineStore::open_location_encrypted(location, aws, kms_key_id)?
            .with_table_log(std::sync::Arc::new(DeltaTables {
                options: storage_options_for(location, aws),
            })),
    )
}

fn is_s3(dir: &Path) -> bool {
    let text = dir.to_string_lossy();
    text.starts_with("s3://") || text.starts_with("s3a://")
}

fn table_url(dir: &Path) -> Result<Url, DeltaError> {
    if is_s3(dir) {
        static HANDLERS: std::sync::Once = std::sync::Once::new();
        HANDLERS.call_once(|| deltalake_aws::register_handlers(None));
        let text = dir.to_string_lossy();
        let text = if text.ends_with('/') {
            text.into_owned()
        } else {
            format!("{text}/")
        };
        return Url::parse(&text).map_err(|_| DeltaError::Location(dir.to_owned()));
    }
    // A store given as a relative path names its tables relative to the working folder.
    let absolute = std::path::absolute(dir).map_err(|_| DeltaError::Location(dir.to_owned()))?;
    let mut url =
        Url::from_directory_path(&absolute).map_err(|()| DeltaError::Location(dir.to_owned()))?;
    // A directory URL ends with `/`: table-relative paths join below it.
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    Ok(url)
}

/// Loads the table at `dir`, at `version` (the latest when `None`).
async fn load(
    dir: &Path,
    options: &StorageOptions,
    version: Option<u64>,
) -> Result<DeltaTable, DeltaTableError> {
    let url = table_url(dir).map_err(|e| DeltaTableError::Generic(e.to_string()))?;
    let mut builder =
        deltalake_core::DeltaTableBuilder::from_url(url)?.with_storage_options(options.clone());
    if let Some(v) = version {
        builder = builder.with_version(v);
    }
    builder.load().await
}

/// Opens the table at `dir`, if there is one.
async fn open(dir: &Path, options: &StorageOptions) -> Result<Option<DeltaTable>, DeltaError> {
    if !is_s3(dir) && !dir.join("_delta_log").is_dir() {
        return Ok(None);
    }
    match load(dir, options, None).await {
        Ok(table) => Ok(Some(table)),
        Err(DeltaTableError::NotATable(_)) | Err(DeltaTableError::InvalidTableLocation(_)) => {
            Ok(None)
        }
        // An S3 prefix without a log, as the kernel says it.
        Err(DeltaTableError::KernelError(e))
            if is_s3(dir)
                && ["does not exist", "No files in log segment", "not found"]
                    .iter()
                    .any(|m| e.to_string().contains(m)) =>
        {
            Ok(None)
        }
        Err(source) => Err(DeltaError::Delta {
            table: dir.display().to_string(),
            source: Box::new(source),
        }),
    }
}

/// The Delta column of an Arrow field.
fn delta_field(table: &str, field: &arrow_schema::Field) -> Result<StructField, DeltaError> {
    use arrow_schema::DataType as A;
    let primitive = match field.data_type() {
        A::Utf8 | A::LargeUtf8 | A::Utf8View => PrimitiveType::String,
        A::Int64 => PrimitiveType::Long,
        A::Int32 => PrimitiveType::Integer,
        A::Float64 => PrimitiveType::Double,
        A::Float32 => PrimitiveType::Float,
        A::Boolean => PrimitiveType::Boolean,
        A::Binary | A::LargeBinary => PrimitiveType::Binary,
        A::Timestamp(arrow_schema::TimeUnit::Microsecond, Some(_)) => PrimitiveType::Timestamp,
        A::Timestamp(arrow_schema::TimeUnit::Microsecond, None) => PrimitiveType::TimestampNtz,
        other => {
            return Err(DeltaError::Schema {
                table: table.to_owned(),
                column: field.name().clone(),
                data_type: other.to_string(),
            });
        }
    };
    Ok(StructField::new(
        field.name().clone(),
        DeltaType::Primitive(primitive),
        field.is_nullable(),
    ))
}

/// Creates the table at `dir` for rows of `schema`, bound to `plugin_hash`; when another
/// job created it first, opens that one.
async fn create(
    dir: &Path,
    options: &StorageOptions,
    schema: &arrow_schema::Schema,
    plugin_hash: &str,
) -> Result<DeltaTable, DeltaError> {
    let name = dir.display().to_string();
    let mut columns = schema
        .fields()
        .iter()
        .map(|f| delta_field(&name, f))
        .collect::<Result<Vec<_>, _>>()?;
    for column in PARTITION_COLUMNS {
        columns.push(StructField::new(
            column,
            DeltaType::Primitive(PrimitiveType::String),
            false,
        ));
    }
    if !is_s3(dir) {
        std::fs::create_dir_all(dir).map_err(|e| DeltaError::Delta {
            table: name.clone(),
            source: Box::new(DeltaTableError::Generic(format!(
                "creating the folder: {e}"
            ))),
        })?;
    }
    let created = deltalake_core::operations::create::CreateBuilder::new()
        .with_location(table_url(dir)?.to_string())
        .with_storage_options(options.clone())
        .with_columns(columns)
        .with_partition_columns(PARTITION_COLUMNS)
        .with_configuration([(PLUGIN_HASH_PROPERTY, Some(plugin_hash))])
        .with_raise_if_key_not_exists(false)
        .with_save_mode(SaveMode::ErrorIfExists)
        .await;
    match created {
        Ok(table) => Ok(table),
        // Another job may have created it between our look and our create; if not,
        // the create's own error says why.
        Err(source) => match open(dir, options).await? {
            Some(table) => Ok(table),
            None => Err(DeltaError::Delta {
                table: name,
                source: Box::new(source),
            }),
        },
    }
}

/// The hours (`year=…/…/hour=…`) of the active files in `table`, by file path.
async fn active_files(
    table: &DeltaTable,
    name: &str,
) -> Result<Vec<(String, String, Remove)>, DeltaError> {
    let files: Vec<_> = table
        .get_active_add_actions_by_partitions(&[])
        .try_collect()
        .await
        .map_err(|source| DeltaError::Delta {
            table: name.to_owned(),
            source: Box::new(source),
        })?;
    Ok(files
        .into_iter()
        .map(|f| {
            let hour = hour_of(&f.partition_values_map());
            (f.path().to_string(), hour, f.remove_action(true))
        })
        .collect())
}

fn hour_of(values: &HashMap<String, Option<String>>) -> String {
    PARTITION_COLUMNS
        .iter()
        .map(|c| {
            format!(
                "{c}={}",
                values.get(*c).cloned().flatten().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A backfill into a group version's table, from the snapshot it started on to its
/// commit. Begin it before the job reads its source: another job that commits some of
/// the same hours in between makes this one's commit a [`DeltaError::Conflict`].
pub struct Backfill {
    dir: PathBuf,
    options: StorageOptions,
    name: String,
    table: Option<DeltaTable>,
    read_version: i64,
    /// The active files when the job began: path → hour.
    read_files: HashMap<String, String>,
}

impl Backfill {
    /// Reads the table at `dir` (if there is one yet) as the job's starting point.
    pub async fn begin(dir: &Path, options: &StorageOptions) -> Result<Backfill, DeltaError> {
        let name = dir.display().to_string();
        let table = open(dir, options).await?;
        let (read_version, read_files) = match &table {
            Some(table) => (
                table.version().map_or(-1, |v| v as i64),
                active_files(table, &name)
                    .await?
                    .into_iter()
                    .map(|(path, hour, _)| (path, hour))
                    .collect(),
            ),
            None => (-1, HashMap::new()),
        };
        Ok(Backfill {
            dir: dir.to_owned(),
            options: options.clone(),
            name,
            table,
            read_version,
            read_files,
        })
    }

    /// The table version the job began on (-1: no table yet).
    pub fn read_version(&self) -> i64 {
        self.read_version
    }

    /// The hours holding data when the job began (`year=…/month=…/day=…/hour=…`), each
    /// once.
    pub fn read_hours(&self) -> BTreeSet<&str> {
        self.read_files.values().map(String::as_str).collect()
    }

    /// Makes `parts` (files the offline writer put under the table's folder, paths
    /// relative to the store root; the folder is `table_rel` below it) the content of
    /// their hours in one commit: adds them, removes what those hours held. Creates the
    /// table on the first commit, bound to `plugin_hash`.
    pub async fn commit(
        self,
        table_rel: &str,
        schema: &arrow_schema::Schema,
        plugin_hash: &str,
        parts: &[WrittenPart],
    ) -> Result<Committed, DeltaError> {
        let Backfill {
            dir,
            options,
            name,
            table,
            read_version,
            read_files,
        } = self;
        let mut table = match table {
            Some(table) => table,
            None => create(&dir, &options, schema, plugin_hash).await?,
        };
        let bound = table
            .snapshot()
            .map_err(|source| DeltaError::Delta {
                table: name.clone(),
                source: Box::new(source),
            })?
            .metadata()
            .configuration()
            .get(PLUGIN_HASH_PROPERTY)
            .cloned()
            .unwrap_or_default();
        if bound != plugin_hash {
            return Err(DeltaError::OtherPlugin {
                table: name,
                bound,
                offered: plugin_hash.to_owned(),
            });
        }
        let prefix = format!("{table_rel}/");
        let now = now_millis();
        let adds: Vec<Action> = parts
            .iter()
            .map(|p| {
                let path = p.rel.strip_prefix(&prefix).unwrap_or(&p.rel).to_owned();
                Action::Add(Add {
                    path,
                    partition_values: partition_values(&p.hour),
                    size: p.bytes as i64,
                    modification_time: now,
                    data_change: true,
                    stats: Some(format!("{{\"numRecords\":{}}}", p.rows)),
                    ..Default::default()
                })
            })
            .collect();
        let touched: BTreeSet<String> = parts.iter().map(|p| p.hour.relative()).collect();
        let read_in_touched: BTreeSet<&String> = read_files
            .iter()
            .filter(|(_, hour)| touched.contains(*hour))
            .map(|(path, _)| path)
            .collect();
        let predicate = touched
            .iter()
            .map(|hour| hour_predicate(hour))
            .collect::<Vec<_>>()
            .join(" OR ");
        for _ in 0..MAX_ATTEMPTS {
            let removes: Vec<(String, String, Remove)> = active_files(&table, &name)
                .await?
                .into_iter()
                .filter(|(_, hour, _)| touched.contains(hour))
                .collect();
            // Our hours as they are now against as they were when the job began: a
            // difference is another job's commit.
            let now_in_touched: BTreeSet<&String> = removes.iter().map(|(p, ..)| p).collect();
            if now_in_touched != read_in_touched {
                let mut hours: BTreeSet<String> = removes
                    .iter()
                    .filter(|(p, ..)| !read_in_touched.contains(p))
                    .map(|(_, hour, _)| hour.clone())
                    .collect();
                hours.extend(
                    read_files
                        .iter()
                        .filter(|(p, hour)| touched.contains(*hour) && !now_in_touched.contains(p))
                        .map(|(_, hour)| hour.clone()),
                );
                return Err(DeltaError::Conflict {
                    table: name,
                    read_version,
                    hours: hours.into_iter().collect(),
                });
            }
            let mut actions = adds.clone();
            let removed = removes.len();
            actions.extend(removes.into_iter().map(|(_, _, mut remove)| {
                remove.deletion_timestamp = Some(now);
                Action::Remove(remove)
            }));
            let operation = DeltaOperation::Write {
                mode: SaveMode::Overwrite,
                partition_by: Some(PARTITION_COLUMNS.iter().map(|c| c.to_string()).collect()),
                predicate: Some(predicate.clone()),
            };
            let snapshot = table.snapshot().map_err(|source| DeltaError::Delta {
                table: name.clone(),
                source: Box::new(source),
            })?;
            let outcome = CommitBuilder::default()
                .with_actions(actions)
                .with_max_retries(0)
                .build(Some(snapshot), table.log_store(), operation)
                .await;
            match outcome {
                Ok(done) => {
                    return Ok(Committed {
                        version: done.version() as i64,
                        added: adds.len(),
                        removed,
                    });
                }
                Err(DeltaTableError::Transaction {
                    source:
                        TransactionError::VersionAlreadyExists(_)
                        | TransactionError::CommitConflict(_)
                        // What delta-rs says of a lost race when it may not retry.
                        | TransactionError::MaxCommitAttempts(_),
                }) => {
                    // Lost the race for the next version: look again at the latest.
                    table.update_state().await.map_err(|source| DeltaError::Delta {
                        table: name.clone(),
                        source: Box::new(source),
                    })?;
                }
                Err(source) => {
                    return Err(DeltaError::Delta {
                        table: name,
                        source: Box::new(source),
                    });
                }
            }
        }
        Err(DeltaError::Delta {
            table: name,
            source: Box::new(DeltaTableError::Generic(format!(
                "the commit lost the race for a version {MAX_ATTEMPTS} times"
            ))),
        })
    }
}

/// The active files of the table at `dir` as of `version` (time travel; `None`: the
/// latest), relative to it, in time order.
pub async fn files_at(
    dir: &Path,
    options: &StorageOptions,
    version: Option<i64>,
) -> Result<Vec<String>, DeltaError> {
    Ok(snapshot(dir, options, version).await?.files)
}

/// `year=2024/month=01/…` as the SQL predicate a `replaceWhere` names it by.
fn hour_predicate(hour: &str) -> String {
    let terms: Vec<String> = hour
        .split('/')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| format!("{k} = '{v}'"))
        .collect();
    format!("({})", terms.join(" AND "))
}

fn partition_values(hour: &Hour) -> HashMap<String, Option<String>> {
    PARTITION_COLUMNS
        .iter()
        .zip(hour.values())
        .map(|(c, v)| (c.to_string(), Some(v)))
        .collect()
}

/// Reads group versions kept as Delta tables for the offline store: attach it with
/// [`OfflineStore::with_table_log`](lockstep_offline::OfflineStore::with_table_log)
/// and every reader of the store (training sets, golden checks, skew-check) reads a
/// table's snapshot — the latest, or the version asked for (time travel).
#[derive(Clone, Default)]
pub struct DeltaTables {
    /// How to reach tables on S3 (empty for a local store).
    pub options: StorageOptions,
}

impl std::fmt::Debug for DeltaTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The options may hold credentials: their keys only.
        let mut keys: Vec<&String> = self.options.keys().collect();
        keys.sort();
        f.debug_struct("DeltaTables")
            .field("options", &keys)
            .finish()
    }
}

#[async_trait::async_trait]
impl lockstep_offline::TableLog for DeltaTables {
    fn format(&self) -> &'static str {
        "Delta Lake"
    }

    fn log_dir(&self) -> &'static str {
        "_delta_log"
    }

    async fn snapshot(
        &self,
        table_dir: &str,
        version: Option<i64>,
    ) -> Result<lockstep_offline::TableSnapshot, Box<dyn std::error::Error + Send + Sync>> {
        snapshot(Path::new(table_dir), &self.options, version)
            .await
            .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.into() })
    }
}

/// The table at `dir` as of `version` (`None`: the latest): its version and its active
/// files, relative to it, in time order.
pub async fn snapshot(
    dir: &Path,
    options: &StorageOptions,
    version: Option<i64>,
) -> Result<lockstep_offline::TableSnapshot, DeltaError> {
    let name = dir.display().to_string();
    let table = match version {
        Some(v) if v < 0 => {
            return Err(DeltaError::NoSuchVersion {
                table: name,
                version: v,
                latest: None,
            });
        }
        Some(v) => load(dir, options, Some(v as u64)).await,
        None => load(dir, options, None).await,
    };
    let table = match table {
        Ok(table) => table,
        Err(source) => {
            // Name the versions there are when the one asked for is not among them.
            if let Some(v) = version
                && let Ok(latest) = open(dir, options).await
            {
                let latest = latest.and_then(|t| t.version()).map(|l| l as i64);
                if latest.is_some_and(|l| v > l) {
                    return Err(DeltaError::NoSuchVersion {
                        table: name,
                        version: v,
                        latest,
                    });
                }
            }
            return Err(DeltaError::Delta {
                table: name,
                source: Box::new(source),
            });
        }
    };
    let mut files: Vec<String> = active_files(&table, &name)
        .await?
        .into_iter()
        .map(|(path, ..)| path)
        .collect();
    // Hour folders are zero-padded: path order is time order.
    files.sort();
    Ok(lockstep_offline::TableSnapshot {
        version: table.version().map_or(-1, |v| v as i64),
        files,
    })
}

/// What a VACUUM removed, or would remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vacuumed {
    /// Only listed, not removed.
    pub dry_run: bool,
    /// The files, relative to the table.
    pub files: Vec<String>,
}

/// Delta's VACUUM on the table at `dir`: removes data files that no version younger than
/// `retain` needs — files a replacement removed, and files of jobs killed before their
/// commit (no version ever held them) — once they are older than `retain`. A reader of
/// an older version, or a job still writing, is never cut off within that time.
/// `retain` shorter than the table's `delta.deletedFileRetentionDuration` (a week by
/// default) is refused unless `allow_short` — with it, a reader of an old version or a
/// running job may lose its files.
pub async fn vacuum(
    dir: &Path,
    options: &StorageOptions,
    retain: std::time::Duration,
    dry_run: bool,
    allow_short: bool,
) -> Result<Vacuumed, DeltaError> {
    let name = dir.display().to_string();
    let fail = |source| DeltaError::Delta {
        table: name.clone(),
        source: Box::new(source),
    };
    let table = open(dir, options)
        .await?
        .ok_or_else(|| fail(DeltaTableError::NotATable(name.clone())))?;
    let retain = chrono::Duration::from_std(retain).map_err(|_| {
        fail(DeltaTableError::Generic(format!(
            "a retention of {retain:?} is too long"
        )))
    })?;
    let (_, metrics) = table
        .vacuum()
        .with_retention_period(retain)
        .with_mode(deltalake_core::operations::vacuum::VacuumMode::Full)
        .with_enforce_retention_duration(!allow_short)
        .with_dry_run(dry_run)
        .await
        .map_err(fail)?;
    let mut files = metrics.files_deleted;
    files.sort();
    Ok(Vacuumed { dry_run, files })
}
