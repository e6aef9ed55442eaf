//! Writing and reading hour partitions.

use crate::error::{io, unique_tmp_name};
use crate::layout::{self, PART_FILE};
use crate::writer::{OfflineWriter, WriterOptions};
use crate::{GroupVersion, OfflineError, registry};
use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use lockstep_abi::Manifest;
use lockstep_core::schema::row_schema;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Columns the store adds after the plugin's row columns, in order.
pub const STORE_COLUMNS: [&str; 4] = [
    "write_time",
    "api_invocation_time",
    "is_deleted",
    "plugin_hash",
];

/// Rows per Parquet row group: large enough for good compression and scans, small
/// enough that readers can skip by statistics.
pub(crate) const ROW_GROUP_ROWS: usize = 128 * 1024;

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    /// Rows written.
    pub rows: usize,
    /// Hour partitions written (each replaced whole).
    pub partitions: usize,
    /// The files, in partition order.
    pub files: Vec<PathBuf>,
}

/// An offline store rooted at a local directory.
#[derive(Debug, Clone)]
pub struct OfflineStore {
    root: PathBuf,
}

impl OfflineStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, OfflineError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(io("creating", &root))?;
        Ok(OfflineStore { root })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Registers the group version `manifest` declares for `plugin_hash`, or checks it
    /// is already registered for that hash; see [`crate`] for the rule.
    pub fn register(
        &self,
        manifest: &Manifest,
        plugin_hash: &str,
        now_micros: i64,
    ) -> Result<GroupVersion, OfflineError> {
        registry::register(&self.root, manifest, plugin_hash, now_micros)
    }

    /// The registry entry of `group@version`.
    pub fn version(&self, group: &str, version: &str) -> Result<GroupVersion, OfflineError> {
        registry::read(&self.root, group, version)?.ok_or_else(|| OfflineError::UnknownVersion {
            group: group.into(),
            version: version.into(),
            root: self.root.clone(),
        })
    }

    /// The schema of stored rows: the plugin's row columns, then [`STORE_COLUMNS`].
    pub fn schema(manifest: &Manifest) -> SchemaRef {
        let mut fields: Vec<Field> = row_schema(manifest)
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        fields.push(Field::new(STORE_COLUMNS[0], ts.clone(), false));
        fields.push(Field::new(STORE_COLUMNS[1], ts, false));
        fields.push(Field::new(STORE_COLUMNS[2], DataType::Boolean, false));
        fields.push(Field::new(STORE_COLUMNS[3], DataType::Utf8, false));
        Arc::new(Schema::new(fields))
    }

    /// Starts a streaming write into `group` stamped with `write_time` (UTC µs); see
    /// [`OfflineWriter`]. Nothing is visible until the writer commits.
    pub fn writer(
        &self,
        group: &GroupVersion,
        write_time: i64,
        options: WriterOptions,
    ) -> OfflineWriter {
        OfflineWriter::new(self, group, write_time, options)
    }

    /// Writes `rows` (in the group's row schema) into `group`, replacing every hour
    /// partition they touch: `rows` must hold each of those hours completely.
    /// `write_time` stamps the rows (UTC µs). A shorthand for [`writer`](Self::writer),
    /// [`OfflineWriter::write`] per batch, then [`OfflineWriter::commit`].
    pub fn write(
        &self,
        group: &GroupVersion,
        rows: &[RecordBatch],
        write_time: i64,
    ) -> Result<WriteSummary, OfflineError> {
        let mut writer = self.writer(group, write_time, WriterOptions::default());
        for batch in rows {
            writer.write(batch)?;
        }
        writer.commit()
    }

    /// Every stored row of `group@version`, partition by partition in time order.
    pub fn read(&self, group: &str, version: &str) -> Result<Vec<RecordBatch>, OfflineError> {
        let entry = self.version(group, version)?;
        let mut files = Vec::new();
        collect_parts(
            &layout::version_dir(&self.root, &entry.name, &entry.version),
            &mut files,
        )?;
        files.sort();
        let mut out = Vec::new();
        for path in files {
            let parquet = |source| OfflineError::Parquet {
                path: path.clone(),
                source,
            };
            let file = std::fs::File::open(&path).map_err(io("opening", &path))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .and_then(|b| b.build())
                .map_err(parquet)?;
            for batch in reader {
                out.push(batch?);
            }
        }
        Ok(out)
    }
}

fn collect_parts(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), OfflineError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("listing", dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io("listing", dir))?.path();
        if path.is_dir() {
            collect_parts(&path, out)?;
        } else if path.file_name().is_some_and(|n| n == PART_FILE) {
            out.push(path);
        }
    }
    Ok(())
}

/// Writes one partition file: temporary dot-file, fsync, rename over the old one.
pub(crate) fn write_partition(dir: &Path, batch: &RecordBatch) -> Result<PathBuf, OfflineError> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let path = dir.join(PART_FILE);
    let tmp = dir.join(unique_tmp_name(PART_FILE));
    let parquet = |source| OfflineError::Parquet {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(parquet)?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by("lockstep".into())
        .build();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(parquet)?;
    writer.write(batch).map_err(parquet)?;
    let file = writer.into_inner().map_err(parquet)?;
    file.sync_all().map_err(io("syncing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("committing", &path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(path)
}
