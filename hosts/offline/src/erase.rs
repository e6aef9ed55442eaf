//! Erasing entities from a group version's hours: deletion markers, and the physical
//! removal of an erased entity's rows (a purge).
//!
//! A marker is the row SageMaker Feature Store appends to its offline store on a
//! DeleteRecord: the entity key, the delete's time as event time, every feature null,
//! `is_deleted` set. A training set reads the entity as deleted from then on; its history
//! is still there. A purge removes that history: every row of an erased entity at or
//! before its erasure time, markers included, leaving rows after it (a new life) alone.
//!
//! Both rewrite an hour file whole and put it in place atomically (a rename locally, a
//! single PUT on S3), under the version's writer lock, so a reader sees the old file or
//! the new one and no backfill writes meanwhile. Every row kept keeps its bytes: its
//! write time, invocation time and plugin hash are not touched. Only hours that held an
//! erased row (or receive a marker) are rewritten; the others are read (the key and
//! time columns only) and left as they are. Hours after the latest erasure time cannot
//! hold an erased row and are not read at all.

use crate::layout::{self, Hour, PART_FILE};
use crate::part::{PartEncoder, WrittenPart, stored_schema};
use crate::{GroupVersion, OfflineError, OfflineStore};
use arrow_array::{
    ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array,
    new_null_array,
};
use arrow_schema::SchemaRef;
use bytes::Bytes;
use futures::StreamExt;
use lockstep_core::{EntityKey, Erasures};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::sync::Arc;

/// Hours rewritten at once: reading, filtering and encoding run on blocking threads,
/// and on S3 a rewrite is mostly waiting.
const HOURS_AT_ONCE: usize = 4;

/// What an erase did to (or, in a dry run, found in) a group version's hours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EraseSummary {
    /// Hour files read.
    pub hours_scanned: usize,
    /// Hour files rewritten (relative to the store root), in time order; in a dry run,
    /// the ones that would be.
    pub hours_rewritten: Vec<String>,
    /// Rows of erased entities removed (found, in a dry run).
    pub rows_removed: usize,
    /// Marker rows written.
    pub markers: usize,
    /// Bytes of the files rewritten, before.
    pub bytes_before: u64,
    /// Bytes of the files rewritten, after.
    pub bytes_after: u64,
    /// Bytes read to decide (key and time columns of every hour scanned, whole files
    /// of those rewritten).
    pub bytes_read: u64,
}

impl EraseSummary {
    fn add(&mut self, hour: HourOutcome) {
        self.hours_scanned += 1;
        self.bytes_read += hour.bytes_read;
        if let Some(rel) = hour.rewritten {
            self.hours_rewritten.push(rel);
            self.rows_removed += hour.rows_removed;
            self.markers += hour.markers;
            self.bytes_before += hour.bytes_before;
            self.bytes_after += hour.bytes_after;
        }
    }
}

#[derive(Debug, Default)]
struct HourOutcome {
    rewritten: Option<String>,
    /// The file written under a new name (a table's rewrite).
    part: Option<WrittenPart>,
    rows_removed: usize,
    markers: usize,
    bytes_read: u64,
    bytes_before: u64,
    bytes_after: u64,
}

/// What to do to an hour.
struct HourEdit<'a> {
    /// Where the rewritten rows go: `None`, over the file itself; `Some(name)`, a new
    /// file of that name in the hour's folder, for a table to commit.
    new_file: Option<&'a str>,
    schema: SchemaRef,
    key_col: usize,
    time_col: usize,
    /// Shared with the blocking threads that filter each hour.
    erasures: Arc<Erasures>,
    dry_run: bool,
}

impl OfflineStore {
    /// Removes every row of an entity `erasures` names at or before its erasure time
    /// from `group`'s hours (markers included), hour by hour; see the [module](self)
    /// docs. With `dry_run`, only finds them. `job` names the writer lock's holder.
    /// Plain layout only: a Delta table is erased by its own commit.
    pub async fn purge(
        &self,
        group: &GroupVersion,
        erasures: &Erasures,
        job: &str,
        dry_run: bool,
    ) -> Result<EraseSummary, OfflineError> {
        if erasures.is_empty() {
            return Ok(EraseSummary::default());
        }
        self.refuse_tables(group).await?;
        let latest = erasures.iter().map(|(_, at)| at).max().unwrap_or(i64::MIN);
        let last_hour = Hour::of(latest);
        let files: Vec<String> = self
            .partition_files(&group.name, &group.version)
            .await?
            .into_iter()
            .filter(|rel| hour_of_rel(rel).is_none_or(|h| h <= last_hour))
            .collect();
        let lock = if dry_run {
            None
        } else {
            Some(self.lock(group, job).await?.0)
        };
        let edit = HourEdit {
            new_file: None,
            schema: stored_schema(&group.manifest),
            key_col: 0,
            time_col: 1,
            erasures: Arc::new(erasures.clone()),
            dry_run,
        };
        let result = self.edit_hours(&edit, files).await;
        if let Some(lock) = lock {
            lock.release().await?;
        }
        result
    }

    /// [`purge`](Self::purge) for a group version kept as a table (Delta): the rows
    /// kept of each hour that held an erased row are written to a new file named
    /// `part_file` in that hour's folder (an hour left empty gets an empty file), which
    /// nothing reads until the table commits it; the files a commit replaces stay for
    /// readers of older versions until the table is vacuumed. Returns what it did and
    /// the new files, for the table's commit. The files scanned are the table's active
    /// ones (this store must read the table through its log). With `dry_run`, writes
    /// nothing and returns no files.
    pub async fn purge_into_table(
        &self,
        group: &GroupVersion,
        erasures: &Erasures,
        part_file: &str,
        dry_run: bool,
    ) -> Result<(EraseSummary, Vec<WrittenPart>), OfflineError> {
        if erasures.is_empty() {
            return Ok((EraseSummary::default(), Vec::new()));
        }
        let latest = erasures.iter().map(|(_, at)| at).max().unwrap_or(i64::MIN);
        let last_hour = Hour::of(latest);
        let files: Vec<String> = self
            .partition_files(&group.name, &group.version)
            .await?
            .into_iter()
            .filter(|rel| hour_of_rel(rel).is_none_or(|h| h <= last_hour))
            .collect();
        let edit = HourEdit {
            new_file: Some(part_file),
            schema: stored_schema(&group.manifest),
            key_col: 0,
            time_col: 1,
            erasures: Arc::new(erasures.clone()),
            dry_run,
        };
        let (summary, parts) = self.edit_hours_with_parts(&edit, files).await?;
        Ok((summary, parts))
    }

    /// Appends a deletion marker for each of `keys` at `erased_at` (UTC µs) into the
    /// hour it falls in, stamped `write_time`; see the [module](self) docs.
    pub async fn mark_erased(
        &self,
        group: &GroupVersion,
        keys: &[EntityKey],
        erased_at: i64,
        write_time: i64,
        job: &str,
    ) -> Result<EraseSummary, OfflineError> {
        if keys.is_empty() {
            return Ok(EraseSummary::default());
        }
        self.refuse_tables(group).await?;
        let schema = stored_schema(&group.manifest);
        let markers = marker_rows(&schema, group, keys, erased_at, write_time)?;
        let rel = format!(
            "{}/{}/{PART_FILE}",
            layout::version_rel(&group.name, &group.version),
            Hour::of(erased_at).relative()
        );
        let (lock, _) = self.lock(group, job).await?;
        let result = async {
            let existing = self.backend().read(&rel).await?;
            let bytes_before = existing.as_ref().map_or(0, |b| b.len() as u64);
            let mut batches = match existing {
                Some(bytes) => decode(self, &rel, Bytes::from(bytes))?,
                None => Vec::new(),
            };
            batches.push(markers);
            let combined = arrow_select::concat::concat_batches(&schema, &batches)?;
            let key_col = 0;
            let time_col = 1;
            let sorted = sort_rows(&combined, key_col, time_col)?;
            let encoder =
                PartEncoder::new(schema.clone()).map_err(|source| OfflineError::Parquet {
                    path: self.locate(&rel),
                    source,
                })?;
            let (_, bytes) = encoder.encode(
                self.backend(),
                rel.rsplit_once('/').map_or("", |(d, _)| d),
                PART_FILE,
                &sorted,
            )?;
            let bytes_after = bytes.len() as u64;
            self.backend().put(&rel, bytes).await?;
            Ok(EraseSummary {
                hours_scanned: 1,
                hours_rewritten: vec![rel.clone()],
                rows_removed: 0,
                markers: keys.len(),
                bytes_before,
                bytes_after,
                bytes_read: bytes_before,
            })
        }
        .await;
        lock.release().await?;
        result
    }

    async fn refuse_tables(&self, group: &GroupVersion) -> Result<(), OfflineError> {
        if self.holds_delta_table(&group.name, &group.version).await? {
            return Err(OfflineError::Object {
                action: "erasing from",
                location: self
                    .locate(&layout::version_rel(&group.name, &group.version))
                    .to_string_lossy()
                    .into_owned(),
                message: "this group version is a Delta table, which this store cannot yet \
                          rewrite: erase it from the plain layout, or delete its rows with a \
                          Delta writer and VACUUM"
                    .into(),
            });
        }
        Ok(())
    }

    async fn edit_hours(
        &self,
        edit: &HourEdit<'_>,
        files: Vec<String>,
    ) -> Result<EraseSummary, OfflineError> {
        Ok(self.edit_hours_with_parts(edit, files).await?.0)
    }

    async fn edit_hours_with_parts(
        &self,
        edit: &HourEdit<'_>,
        files: Vec<String>,
    ) -> Result<(EraseSummary, Vec<WrittenPart>), OfflineError> {
        let mut outcomes: Vec<(String, HourOutcome)> = futures::stream::iter(files)
            .map(|rel| async move {
                let outcome = self.edit_hour(edit, &rel).await?;
                Ok::<_, OfflineError>((rel, outcome))
            })
            .buffer_unordered(HOURS_AT_ONCE)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        outcomes.sort_by(|a, b| a.0.cmp(&b.0));
        let mut summary = EraseSummary::default();
        let mut parts = Vec::new();
        for (_, mut outcome) in outcomes {
            parts.extend(outcome.part.take());
            summary.add(outcome);
        }
        Ok((summary, parts))
    }

    /// Reads the key and time columns of the hour at `rel`; when they hold an erased
    /// row, reads the whole file and puts it back without those rows.
    async fn edit_hour(&self, edit: &HourEdit<'_>, rel: &str) -> Result<HourOutcome, OfflineError> {
        let Some(bytes) = self.backend().read(rel).await? else {
            // Listed, then replaced by a rename: nothing of it to erase.
            return Ok(HourOutcome::default());
        };
        let bytes = Bytes::from(bytes);
        let size = bytes.len() as u64;
        let path = self.locate(rel);
        let (key_col, time_col) = (edit.key_col, edit.time_col);
        let erasures = edit.erasures.clone();
        let probe = bytes.clone();
        let probe_path = path.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<usize, OfflineError> {
            let parquet = |source| OfflineError::Parquet {
                path: probe_path.clone(),
                source,
            };
            let builder = ParquetRecordBatchReaderBuilder::try_new(probe).map_err(parquet)?;
            let mask = ProjectionMask::roots(builder.parquet_schema(), [key_col, time_col]);
            let mut dropped = 0;
            for batch in builder.with_projection(mask).build().map_err(parquet)? {
                dropped += erasures.filter(&batch?, 0, 1)?.1;
            }
            Ok(dropped)
        })
        .await
        .map_err(|e| join_error(&path, e))??;
        let mut outcome = HourOutcome {
            bytes_read: size,
            ..HourOutcome::default()
        };
        if found == 0 {
            return Ok(outcome);
        }
        outcome.rows_removed = found;
        outcome.rewritten = Some(rel.to_owned());
        outcome.bytes_before = size;
        if edit.dry_run {
            return Ok(outcome);
        }
        let schema = edit.schema.clone();
        let erasures = edit.erasures.clone();
        let rel_owned = rel.to_owned();
        let store = self.clone();
        let to_new_file = edit.new_file.is_some();
        let rewritten = tokio::task::spawn_blocking(
            move || -> Result<Option<(Vec<u8>, usize)>, OfflineError> {
                let batches = decode(&store, &rel_owned, bytes)?;
                let mut kept = Vec::with_capacity(batches.len());
                for batch in &batches {
                    let (rest, _) = erasures.filter(batch, key_col, time_col)?;
                    if rest.num_rows() > 0 {
                        kept.push(rest);
                    }
                }
                if kept.is_empty() && !to_new_file {
                    return Ok(None);
                }
                let whole = arrow_select::concat::concat_batches(&schema, &kept)?;
                let encoder = PartEncoder::new(schema).map_err(|source| OfflineError::Parquet {
                    path: store.locate(&rel_owned),
                    source,
                })?;
                let dir = rel_owned.rsplit_once('/').map_or("", |(d, _)| d);
                let bytes = encoder.encode(store.backend(), dir, PART_FILE, &whole)?.1;
                Ok(Some((bytes, whole.num_rows())))
            },
        )
        .await
        .map_err(|e| join_error(&path, e))??;
        match (rewritten, edit.new_file) {
            (Some((bytes, rows)), Some(name)) => {
                let dir = rel.rsplit_once('/').map_or("", |(d, _)| d);
                let new_rel = format!("{dir}/{name}");
                outcome.bytes_after = bytes.len() as u64;
                let hour = hour_of_rel(rel).ok_or_else(|| OfflineError::Object {
                    action: "erasing from",
                    location: path.to_string_lossy().into_owned(),
                    message: "not in an hour partition's folder".into(),
                })?;
                let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
                self.backend().put(&new_rel, bytes).await?;
                outcome.part = Some(WrittenPart {
                    rel: new_rel,
                    rows,
                    bytes: outcome.bytes_after,
                    sha256,
                    hour,
                });
            }
            (Some((bytes, _)), None) => {
                outcome.bytes_after = bytes.len() as u64;
                self.backend().put(rel, bytes).await?;
            }
            // Every row of the hour was erased: the hour goes.
            (None, _) => {
                self.backend().delete(rel).await?;
                self.backend().sync().await?;
            }
        }
        outcome.bytes_read += size;
        Ok(outcome)
    }
}

/// The hour of a partition file's path (`…/year=YYYY/month=MM/day=DD/hour=HH/part-0.parquet`).
fn hour_of_rel(rel: &str) -> Option<Hour> {
    let mut parts = rel.rsplit('/').skip(1);
    let hour = parts.next()?.strip_prefix("hour=")?.parse().ok()?;
    let day = parts.next()?.strip_prefix("day=")?.parse().ok()?;
    let month = parts.next()?.strip_prefix("month=")?.parse().ok()?;
    let year = parts.next()?.strip_prefix("year=")?.parse().ok()?;
    Some(Hour {
        year,
        month,
        day,
        hour,
    })
}

fn join_error(path: &std::path::Path, e: tokio::task::JoinError) -> OfflineError {
    OfflineError::Object {
        action: "erasing from",
        location: path.to_string_lossy().into_owned(),
        message: format!("the rewrite's thread stopped: {e}"),
    }
}

/// Every batch of the Parquet file `bytes` (at `rel`).
fn decode(store: &OfflineStore, rel: &str, bytes: Bytes) -> Result<Vec<RecordBatch>, OfflineError> {
    let parquet = |source| OfflineError::Parquet {
        path: store.locate(rel),
        source,
    };
    ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(parquet)?
        .build()
        .map_err(parquet)?
        .map(|b| b.map_err(OfflineError::from))
        .collect()
}

/// One marker row per key: the key, `erased_at`, null features, `is_deleted` set.
fn marker_rows(
    schema: &SchemaRef,
    group: &GroupVersion,
    keys: &[EntityKey],
    erased_at: i64,
    write_time: i64,
) -> Result<RecordBatch, OfflineError> {
    let n = keys.len();
    let key_array: ArrayRef = match schema.field(0).data_type() {
        arrow_schema::DataType::Int64 => {
            let ints: Option<Vec<i64>> = keys
                .iter()
                .map(|k| match k {
                    EntityKey::Int(i) => Some(*i),
                    EntityKey::Str(_) => None,
                })
                .collect();
            Arc::new(arrow_array::Int64Array::from(ints.ok_or_else(|| {
                OfflineError::Schema {
                    group: group.name.clone(),
                    message: "marker rows: a text key for an Int64 entity key".into(),
                }
            })?))
        }
        _ => Arc::new(StringArray::from_iter_values(
            keys.iter().map(ToString::to_string),
        )),
    };
    let time = |t: i64| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(vec![t; n]).with_timezone("UTC"))
    };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    let features = schema.fields().len() - 2 - crate::STORE_COLUMNS.len();
    columns.push(key_array);
    columns.push(time(erased_at));
    for field in schema.fields().iter().skip(2).take(features) {
        columns.push(new_null_array(field.data_type(), n));
    }
    columns.push(time(write_time));
    columns.push(time(write_time));
    columns.push(Arc::new(BooleanArray::from(vec![true; n])));
    columns.push(Arc::new(StringArray::from(vec![
        group.plugin_hash.as_str();
        n
    ])));
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| OfflineError::Schema {
        group: group.name.clone(),
        message: format!("marker rows: {e}"),
    })
}

/// `batch` ordered as hour files are: by entity key, then event time, rows of equal
/// key and time in their order in `batch` (a marker appended last comes after the
/// rows it deletes).
fn sort_rows(
    batch: &RecordBatch,
    key_col: usize,
    time_col: usize,
) -> Result<RecordBatch, OfflineError> {
    let arrival: ArrayRef = Arc::new(UInt32Array::from_iter_values(0..batch.num_rows() as u32));
    let columns = [
        arrow_ord::sort::SortColumn {
            values: batch.column(key_col).clone(),
            options: None,
        },
        arrow_ord::sort::SortColumn {
            values: batch.column(time_col).clone(),
            options: None,
        },
        arrow_ord::sort::SortColumn {
            values: arrival,
            options: None,
        },
    ];
    let indices = arrow_ord::sort::lexsort_to_indices(&columns, None)?;
    Ok(arrow_select::take::take_record_batch(batch, &indices)?)
}

#[cfg(test)]
mod tests {
    use super::hour_of_rel;
    use crate::layout::Hour;

    #[test]
    fn an_hour_is_read_back_from_its_path() {
        let h = Hour::of(1_704_070_800_000_000);
        let rel = format!("g/version=1/{}/part-0.parquet", h.relative());
        assert_eq!(hour_of_rel(&rel), Some(h));
        assert_eq!(hour_of_rel("g/version=1/part-0.parquet"), None);
    }
}
