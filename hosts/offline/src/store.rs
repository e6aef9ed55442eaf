//! Writing and reading hour partitions.

use crate::backend::{Backend, S3Options};
use crate::journal::{Recovered, WriteLock};
use crate::layout::{self, PART_FILE};
use crate::part::{WriteSummary, stored_schema};
use crate::table::TableLog;
use crate::writer::{OfflineWriter, WriterOptions};
use crate::{GroupVersion, OfflineError, registry};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use lockstep_abi::Manifest;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::path::PathBuf;
use std::sync::Arc;

/// An offline store in a local directory or under an S3 prefix.
#[derive(Debug, Clone)]
pub struct OfflineStore {
    backend: Backend,
    /// Reads group versions kept as tables with a log of their own.
    table_log: Option<Arc<dyn TableLog>>,
}

/// The data files a group version holds, as a reader should read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFiles {
    /// The table version they are the snapshot of (`None`: a plain layout, which has no
    /// versions).
    pub table_version: Option<i64>,
    /// The files, relative to the store root, in time order.
    pub files: Vec<String>,
}

impl OfflineStore {
    /// Opens (creating if needed) the store in the local directory `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, OfflineError> {
        Ok(OfflineStore {
            backend: Backend::local(root.into())?,
            table_log: None,
        })
    }

    /// Opens the store at `location`: `s3://bucket/prefix` (with `s3`'s settings and
    /// the standard AWS environment) or a local directory.
    pub fn open_location(location: &str, s3: &S3Options) -> Result<Self, OfflineError> {
        Self::open_location_encrypted(location, s3, None)
    }

    /// [`open_location`](Self::open_location), every object this store puts encrypted
    /// by S3 with SSE-KMS under `kms_key_id` (a group's key). A local directory cannot
    /// honour a KMS key: asking for one there is an error, never a silent plain write.
    pub fn open_location_encrypted(
        location: &str,
        s3: &S3Options,
        kms_key_id: Option<&str>,
    ) -> Result<Self, OfflineError> {
        if location.starts_with("s3://") || location.starts_with("s3a://") {
            Ok(OfflineStore {
                backend: Backend::s3(location, s3, kms_key_id)?,
                table_log: None,
            })
        } else if kms_key_id.is_some() {
            Err(OfflineError::Object {
                action: "opening",
                location: location.to_owned(),
                message: "a KMS key encrypts objects on S3; this store is a local directory \
                          (encrypt its disk instead, or use an s3:// store)"
                    .into(),
            })
        } else if location.contains("://") {
            Err(OfflineError::Object {
                action: "opening",
                location: location.to_owned(),
                message: "unsupported scheme: use a local directory or s3://BUCKET/PREFIX".into(),
            })
        } else {
            Self::open(location)
        }
    }

    /// This store, reading group versions kept as tables through `log`: their files
    /// are the active ones of a table snapshot, not whatever their folders hold.
    pub fn with_table_log(mut self, log: Arc<dyn TableLog>) -> Self {
        self.table_log = Some(log);
        self
    }

    /// The store's root: its directory, or its `s3://` URL.
    pub fn root(&self) -> PathBuf {
        self.backend.root()
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Registers the group version `manifest` declares for `plugin_hash`, or checks it
    /// is already registered for that hash; see [`crate`] for the rule.
    pub async fn register(
        &self,
        manifest: &Manifest,
        plugin_hash: &str,
        now_micros: i64,
    ) -> Result<GroupVersion, OfflineError> {
        registry::register(&self.backend, manifest, plugin_hash, now_micros).await
    }

    /// Checks that `plugin_hash` may write `manifest`'s group version, without binding
    /// it: the registered entry, or the one [`register`](Self::register) would make.
    /// Fails with [`OfflineError::HashMismatch`] when another build holds it. A writer
    /// made from the result binds the version when it commits, so a job that fails
    /// before then claims nothing.
    pub async fn check_binding(
        &self,
        manifest: &Manifest,
        plugin_hash: &str,
        now_micros: i64,
    ) -> Result<GroupVersion, OfflineError> {
        registry::check(&self.backend, manifest, plugin_hash, now_micros).await
    }

    /// The registry entry of `group@version`.
    pub async fn version(&self, group: &str, version: &str) -> Result<GroupVersion, OfflineError> {
        registry::read(&self.backend, group, version)
            .await?
            .ok_or_else(|| OfflineError::UnknownVersion {
                group: group.into(),
                version: version.into(),
                root: self.backend.root(),
            })
    }

    /// The schema of stored rows: the plugin's row columns, then [`STORE_COLUMNS`].
    pub fn schema(manifest: &Manifest) -> SchemaRef {
        stored_schema(manifest)
    }

    /// Takes the writer lock of `group`'s version for `job` (see [`crate::journal`]),
    /// then completes or clears what a killed job left: a job holds it from its start
    /// to its commit, so a second job is refused before it does any work. Fails with
    /// [`OfflineError::Locked`] naming the holder.
    pub async fn lock(
        &self,
        group: &GroupVersion,
        job: &str,
    ) -> Result<(Arc<WriteLock>, Recovered), OfflineError> {
        let lock = WriteLock::acquire(&self.backend, &group.name, &group.version, job).await?;
        match crate::journal::recover(&self.backend, &group.name, &group.version).await {
            Ok(recovered) => Ok((Arc::new(lock), recovered)),
            Err(e) => {
                let _ = lock.release().await;
                Err(e)
            }
        }
    }

    /// Starts a streaming write into `group` stamped with `write_time` (UTC µs); see
    /// [`OfflineWriter`]. Nothing is visible until the writer commits.
    pub fn writer(
        &self,
        group: &GroupVersion,
        write_time: i64,
        options: WriterOptions,
    ) -> OfflineWriter {
        OfflineWriter::new(self.backend().clone(), group, write_time, options)
    }

    /// Writes `rows` (in the group's row schema) into `group`, replacing every hour
    /// partition they touch: `rows` must hold each of those hours completely.
    /// `write_time` stamps the rows (UTC µs). A shorthand for [`writer`](Self::writer),
    /// [`OfflineWriter::write`] per batch, then [`OfflineWriter::commit`].
    pub async fn write(
        &self,
        group: &GroupVersion,
        rows: &[RecordBatch],
        write_time: i64,
    ) -> Result<WriteSummary, OfflineError> {
        let mut writer = self.writer(group, write_time, WriterOptions::default());
        for batch in rows {
            writer.write(batch)?;
        }
        writer.commit().await
    }

    /// The registered versions of `group`, oldest registration first; empty when the
    /// group has never been written.
    pub async fn versions(&self, group: &str) -> Result<Vec<GroupVersion>, OfflineError> {
        let dir = format!("{group}/_lockstep/versions");
        let mut out = Vec::new();
        for rel in self
            .backend
            .list_matching(&dir, |n: &str| n.ends_with(".json") && !n.starts_with('.'))
            .await?
        {
            let version = rel
                .rsplit('/')
                .next()
                .and_then(|n| n.strip_suffix(".json"))
                .unwrap_or_default();
            if let Some(entry) = registry::read(&self.backend, group, version).await? {
                out.push(entry);
            }
        }
        out.sort_by_key(|v| v.registered_at);
        Ok(out)
    }

    /// The names of the groups with at least one registered version, sorted. Lists the
    /// whole store: meant for error messages and tools, not for hot paths.
    pub async fn groups(&self) -> Result<Vec<String>, OfflineError> {
        let mut out: Vec<String> = self
            .backend
            .list_matching("", |n: &str| n.ends_with(".json") && !n.starts_with('.'))
            .await?
            .into_iter()
            .filter_map(|rel| {
                let parts: Vec<&str> = rel.split('/').collect();
                (parts.len() == 4 && parts[1] == "_lockstep" && parts[2] == "versions")
                    .then(|| parts[0].to_owned())
            })
            .collect();
        out.dedup();
        Ok(out)
    }

    /// Whether `group@version` is kept as a Delta table (its folder holds a Delta log).
    pub async fn holds_delta_table(
        &self,
        group: &str,
        version: &str,
    ) -> Result<bool, OfflineError> {
        let rel = layout::version_rel(group, version);
        self.backend
            .has_any_under(&format!("{rel}/_delta_log"))
            .await
    }

    /// The hour partition files of `group@version` (relative to the store root), in
    /// time order: the latest snapshot of a table; see [`files_at`](Self::files_at).
    pub async fn partition_files(
        &self,
        group: &str,
        version: &str,
    ) -> Result<Vec<String>, OfflineError> {
        Ok(self.files_at(group, version, None).await?.files)
    }

    /// The data files of `group@version` as of `table_version` (`None`: the latest).
    /// Each holds one hour's rows sorted by entity key, then event time, rows of equal
    /// time in the order they were emitted. A plain layout's files are its folder's;
    /// a table's are the active files of its log's snapshot (read through the attached
    /// [`TableLog`], and refused by name without one — never read as a plain layout,
    /// whose folder also holds the files a replacement removed).
    pub async fn files_at(
        &self,
        group: &str,
        version: &str,
        table_version: Option<i64>,
    ) -> Result<StoredFiles, OfflineError> {
        let rel = layout::version_rel(group, version);
        // One listing says whether the folder holds a log: the attached format's, or
        // Delta's to refuse by name when none is attached.
        let log_dir = self
            .table_log
            .as_ref()
            .map_or("_delta_log", |l| l.log_dir());
        let is_table = self
            .backend
            .has_any_under(&format!("{rel}/{log_dir}"))
            .await?;
        let table_log = self.table_log.as_ref().filter(|_| is_table);
        match table_log {
            Some(log) => {
                let location = self.backend.locate(&rel).to_string_lossy().into_owned();
                let snapshot = log
                    .snapshot(&location, table_version)
                    .await
                    .map_err(|source| OfflineError::Table {
                        format: log.format(),
                        group: group.to_owned(),
                        version: version.to_owned(),
                        location,
                        source,
                    })?;
                Ok(StoredFiles {
                    table_version: Some(snapshot.version),
                    files: snapshot
                        .files
                        .into_iter()
                        .map(|f| format!("{rel}/{f}"))
                        .collect(),
                })
            }
            None if is_table => Err(OfflineError::DeltaTable {
                group: group.to_owned(),
                version: version.to_owned(),
            }),
            None if table_version.is_some() => Err(OfflineError::NoTableVersions {
                group: group.to_owned(),
                version: version.to_owned(),
            }),
            None => Ok(StoredFiles {
                table_version: None,
                files: self.backend.list_named(&rel, PART_FILE).await?,
            }),
        }
    }

    /// The bytes of the stored object at `rel` (as [`partition_files`](Self::partition_files)
    /// names it).
    pub async fn read_object(&self, rel: &str) -> Result<Vec<u8>, OfflineError> {
        self.backend
            .read(rel)
            .await?
            .ok_or_else(|| OfflineError::Object {
                action: "reading",
                location: self.backend.locate(rel).to_string_lossy().into_owned(),
                message: "listed but gone: was the partition replaced meanwhile?".into(),
            })
    }

    /// Where the object at `rel` lives, for messages.
    pub fn locate(&self, rel: &str) -> PathBuf {
        self.backend.locate(rel)
    }

    /// Every stored row of `group@version`, partition by partition in time order.
    pub async fn read(&self, group: &str, version: &str) -> Result<Vec<RecordBatch>, OfflineError> {
        let entry = self.version(group, version).await?;
        let mut out = Vec::new();
        for rel in self.partition_files(&entry.name, &entry.version).await? {
            out.extend(self.read_file(&rel).await?);
        }
        Ok(out)
    }

    /// The rows of one data file (`rel`, relative to the store root, as
    /// [`partition_files`](Self::partition_files) names it), in the stored schema.
    pub async fn read_file(&self, rel: &str) -> Result<Vec<RecordBatch>, OfflineError> {
        let path = self.backend.locate(rel);
        let bytes = self.read_object(rel).await?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes))
            .and_then(|b| b.build())
            .map_err(|source| OfflineError::Parquet {
                path: path.clone(),
                source,
            })?;
        reader
            .map(|batch| batch.map_err(OfflineError::from))
            .collect()
    }
}
