//! Materialize: each entity's latest row of a group version, from the offline store
//! into an online store.
//!
//! This is how an online store is (re)filled from history — a new store, a store
//! swapped for another (`[online]` changed, then materialize), or one that fell behind
//! — as Feast's `materialize` does. The offline store's hour files are read one at a
//! time in time order, so memory holds one hour's rows however long the history. Each
//! file's rows go to the store in one put, and the store's own rule decides what wins:
//! the later event time, never an older row over a newer one (a row the stream host
//! wrote since stays). Deletion markers (an erased or deleted entity) become deletes as
//! of their time, which remove an older record and leave a newer one. Running it twice
//! leaves the store as once.
//!
//! With a cache in front of the online store ([`materialize_with_cache`]), the loaded
//! entities are then read back from the store and written through to the cache under
//! the cache's own guard (never over a newer entry), and the entries of entities the
//! store no longer holds are removed: the cache never serves a value older than the
//! store's after a materialization.
//!
//! It never runs plugins (the rows are the offline store's) and never decides which
//! row is newer (the online store does).

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, BooleanArray, RecordBatch};
use lockstep_cache::{CacheEntry, CacheError, RedisCache, cache_key, record_value};
use lockstep_offline::layout::Hour;
use lockstep_offline::{OfflineError, OfflineStore};
use lockstep_online::{DeleteOutcome, GroupRef, OnlineError, OnlineStore, latest_rows};

/// Entities read back from the store and written to the cache per call.
const CACHE_CHUNK: usize = 1_000;
/// Entities whose cache refresh waits for later files: an entity active in many
/// hours is then refreshed once, not once per file, and memory stays bounded.
const CACHE_PENDING: usize = 100_000;

/// Why a materialization stopped. What was put before stays put (a rerun goes on
/// where it left: the store's rule makes puts idempotent).
#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    /// Reading the offline store failed.
    #[error("reading the offline store: {0}")]
    Offline(#[from] OfflineError),
    /// Writing the online store failed.
    #[error("writing the online store: {0}")]
    Online(#[from] OnlineError),
    /// Writing the cache failed: its entries of the entities loaded since the last
    /// file may be older than the store's (a rerun refreshes them).
    #[error("loading the cache: {0}")]
    Cache(#[from] CacheError),
    /// A stored file does not hold the group's columns.
    #[error("{file}: {message}")]
    Schema {
        /// The file, relative to the store root.
        file: String,
        /// What is missing.
        message: String,
    },
    /// Arrow could not select rows.
    #[error("selecting rows: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
}

/// What a materialization did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The group version, `name@version`.
    pub group: String,
    /// Hour files read.
    pub files: usize,
    /// Feature rows read (deletion markers not counted).
    pub rows: usize,
    /// Records the store wrote or replaced.
    pub written: usize,
    /// Rows the store left out: older than what it holds, or superseded by a later
    /// row of the same entity.
    pub stale: usize,
    /// Deletion markers applied.
    pub markers: usize,
    /// Of those, the ones that removed a record.
    pub deleted: usize,
    /// Cache entries written (an entity's record as the store now holds it).
    pub cached: usize,
    /// Cache entries left as they were: the cache held a newer one.
    pub cache_stale: usize,
    /// Cache entries removed: the store holds no record of their entity.
    pub uncached: usize,
}

/// The event times to load: `[from, to)`, either end open when `None` (Feast's
/// `materialize START END`).
pub use lockstep_core::TimeWindow as Window;

/// Whether the hour file `rel` can hold an instant of `window` (a file whose path
/// names no hour is read).
fn may_hold(window: &Window, rel: &str) -> bool {
    let Some(hour) = Hour::from_path(rel) else {
        return true;
    };
    let start = hour.start();
    let end = start.saturating_add(3_600_000_000);
    window.from.is_none_or(|from| end > from) && window.to.is_none_or(|to| start < to)
}

/// Loads `group@version`'s latest rows with event times in `window` from `offline`
/// into `online`, writing at `write_time` (UTC µs). `progress(done, total)` is called
/// after each hour file.
pub async fn materialize(
    offline: &OfflineStore,
    online: &dyn OnlineStore,
    group: &str,
    version: &str,
    window: Window,
    write_time: i64,
    progress: impl FnMut(usize, usize),
) -> Result<Report, MaterializeError> {
    materialize_with_cache(
        offline, online, None, group, version, window, write_time, progress,
    )
    .await
}

/// [`materialize`], and the cache in front of `online` brought to what the store
/// holds for every entity loaded (see the [crate] docs): at the end, or whenever
/// 100,000 entities wait, so memory stays bounded.
#[allow(clippy::too_many_arguments)]
pub async fn materialize_with_cache(
    offline: &OfflineStore,
    online: &dyn OnlineStore,
    cache: Option<&RedisCache>,
    group: &str,
    version: &str,
    window: Window,
    write_time: i64,
    mut progress: impl FnMut(usize, usize),
) -> Result<Report, MaterializeError> {
    let entry = offline.version(group, version).await?;
    let target = GroupRef::of(&entry.manifest, &entry.plugin_hash);
    let row_columns = lockstep_core::schema::row_schema(&entry.manifest)
        .fields()
        .len();
    let files: Vec<String> = offline
        .partition_files(&entry.name, &entry.version)
        .await?
        .into_iter()
        .filter(|rel| may_hold(&window, rel))
        .collect();
    let mut report = Report {
        group: target.id(),
        ..Report::default()
    };
    let mut pending = std::collections::BTreeSet::new();
    for (done, rel) in files.iter().enumerate() {
        for batch in offline.read_file(rel).await? {
            let batch = within(&batch, window, rel)?;
            let entities = apply(
                online,
                &target,
                &batch,
                row_columns,
                rel,
                write_time,
                &mut report,
            )
            .await?;
            if cache.is_some() {
                pending.extend(entities);
            }
        }
        if let Some(cache) = cache
            && pending.len() >= CACHE_PENDING
        {
            refresh_cache(online, cache, &target, &pending, &mut report).await?;
            pending.clear();
        }
        report.files += 1;
        progress(done + 1, files.len());
    }
    if let Some(cache) = cache {
        refresh_cache(online, cache, &target, &pending, &mut report).await?;
    }
    Ok(report)
}

/// The rows of `batch` whose event time is in `window`.
fn within(batch: &RecordBatch, window: Window, rel: &str) -> Result<RecordBatch, MaterializeError> {
    if window.is_all() {
        return Ok(batch.clone());
    }
    let times = batch
        .column_by_name(lockstep_core::schema::EVENT_TIME)
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        .ok_or_else(|| MaterializeError::Schema {
            file: rel.to_owned(),
            message: format!(
                "no `{}` timestamp column",
                lockstep_core::schema::EVENT_TIME
            ),
        })?;
    let keep: BooleanArray = times
        .iter()
        .map(|t| Some(t.is_some_and(|t| window.holds(t))))
        .collect();
    Ok(arrow_select::filter::filter_record_batch(batch, &keep)?)
}

/// Writes what `online` holds for `entities` through to `cache`, and removes the
/// entries of those it holds none of.
async fn refresh_cache(
    online: &dyn OnlineStore,
    cache: &RedisCache,
    target: &GroupRef,
    entities: &std::collections::BTreeSet<String>,
    report: &mut Report,
) -> Result<(), MaterializeError> {
    let group_id = target.id();
    let entities: Vec<String> = entities.iter().cloned().collect();
    for keys in entities.chunks(CACHE_CHUNK) {
        let records = online.get(target, keys).await?;
        let mut entries = Vec::with_capacity(keys.len());
        let mut gone = Vec::new();
        for (key, record) in keys.iter().zip(records) {
            match record {
                Some(record) => entries.push(CacheEntry {
                    key: cache_key(&group_id, key),
                    event_time: record.event_time,
                    value: record_value(record.event_time, &record.plugin_hash, &record.row),
                }),
                None => gone.push(cache_key(&group_id, key)),
            }
        }
        let put = cache.put(&entries).await?;
        report.cached += put.written;
        report.cache_stale += put.stale;
        if !gone.is_empty() {
            report.uncached += cache.delete(&gone).await?;
        }
    }
    Ok(())
}

/// Puts one stored batch's feature rows, then applies its deletion markers; returns
/// the entities it touched.
async fn apply(
    online: &dyn OnlineStore,
    target: &GroupRef,
    batch: &RecordBatch,
    row_columns: usize,
    rel: &str,
    write_time: i64,
    report: &mut Report,
) -> Result<Vec<String>, MaterializeError> {
    let schema_error = |message: String| MaterializeError::Schema {
        file: rel.to_owned(),
        message,
    };
    if batch.num_columns() < row_columns {
        return Err(schema_error(format!(
            "{} columns, fewer than the group's {row_columns}",
            batch.num_columns()
        )));
    }
    let rows = batch.project(&(0..row_columns).collect::<Vec<_>>())?;
    let deleted = batch
        .column_by_name(lockstep_offline::STORE_COLUMNS[2])
        .and_then(|c| c.as_boolean_opt())
        .ok_or_else(|| {
            schema_error(format!(
                "no boolean `{}` column",
                lockstep_offline::STORE_COLUMNS[2]
            ))
        })?;
    let is_marker = |i: usize| deleted.is_valid(i) && deleted.value(i);
    let markers = (0..batch.num_rows()).filter(|&i| is_marker(i)).count();
    // Feature rows first, then markers: a marker removes an older record of its entity
    // (whichever put it) and leaves a newer one, so the order within a file does not
    // change the outcome.
    let features = if markers == 0 {
        rows.clone()
    } else {
        let keep: BooleanArray = (0..batch.num_rows()).map(|i| Some(!is_marker(i))).collect();
        arrow_select::filter::filter_record_batch(&rows, &keep)?
    };
    let mut entities = Vec::new();
    if features.num_rows() > 0 {
        let put = online.put(target, &features, write_time).await?;
        report.rows += features.num_rows();
        report.written += put.written;
        report.stale += put.stale;
        entities.extend(latest_rows(&features, target)?.into_iter().map(|l| l.key));
    }
    if markers > 0 {
        let only: BooleanArray = (0..batch.num_rows()).map(|i| Some(is_marker(i))).collect();
        let marked = arrow_select::filter::filter_record_batch(&rows, &only)?;
        // The latest marker of each entity in this file stands for the others.
        for latest in latest_rows(&marked, target)? {
            let outcome = online
                .delete_as_of(target, &latest.key, latest.event_time, false)
                .await?;
            report.markers += 1;
            if matches!(outcome, DeleteOutcome::Deleted { existed: true }) {
                report.deleted += 1;
            }
            entities.push(latest.key);
        }
    }
    Ok(entities)
}

#[cfg(test)]
mod tests;
