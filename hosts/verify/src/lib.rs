//! The product's checks: [`skew`] (the batch host and the stream host over the same
//! events, row for row) and [`golden`] sets. See the crate's README.
//!
//! Both compare rows as `lockstep_core::compare` canonicalises them (exact text =
//! exact bits), and both get the batch side from a real backfill ([`batch_rows`]):
//! the rows written through the offline store and read back, as a training set reads
//! them.

mod error;
pub mod golden;
pub mod skew;

pub use error::VerifyError;

use error::io;
use lockstep_backfill::{Backfill, BackfillOptions, TableFormat};
use lockstep_batch::{BatchJob, SourceFormat};
use lockstep_core::compare::{Row, canonical_rows};
use lockstep_offline::{OfflineStore, WriteSummary};
use lockstep_runtime::Plugin;
use std::path::Path;
use std::sync::Arc;

/// A loaded plugin with the component file it was loaded from (which the batch host's
/// plan names).
#[derive(Clone)]
pub struct Component {
    /// The plugin.
    pub plugin: Plugin,
    /// Its component file.
    pub path: std::path::PathBuf,
}

impl std::fmt::Debug for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Component")
            .field("plugin", &self.plugin.manifest().id())
            .field("path", &self.path)
            .finish()
    }
}

/// The batch host's rows for `events` (JSON lines), stored through a fresh offline
/// store in `format` and read back, in canonical order (store columns dropped; they
/// hold write times).
pub async fn batch_rows(
    component: &Component,
    events: &Path,
    partitions: usize,
    format: TableFormat,
) -> Result<Vec<Row>, VerifyError> {
    let scratch = tempfile::tempdir().map_err(io(
        "creating a scratch offline store in",
        &std::env::temp_dir(),
    ))?;
    Ok(
        backfill(component, events, partitions, scratch.path(), format)
            .await?
            .0,
    )
}

/// Backfills `events` (JSON lines) into the offline store at `store_root` with the
/// batch host, then reads the group back: its rows in canonical order and the commit's
/// summary. Rejected records fail the backfill.
pub async fn backfill(
    component: &Component,
    events: &Path,
    partitions: usize,
    store_root: &Path,
    format: TableFormat,
) -> Result<(Vec<Row>, WriteSummary), VerifyError> {
    let plugin = &component.plugin;
    let store = OfflineStore::open(store_root)?
        .with_table_log(Arc::new(lockstep_delta::DeltaTables::default()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let job = BatchJob {
        partitions,
        // The stream side's rule: events beyond the clock's default lead are refused.
        latest_event_time: Some(
            now.saturating_add(lockstep_core::decode::DEFAULT_MAX_FUTURE_MICROS),
        ),
        ..BatchJob::new(
            component.path.to_string_lossy(),
            events.to_string_lossy(),
            SourceFormat::Json,
        )
    };
    let options = BackfillOptions::new(format, format!("a backfill of {}", events.display()));
    let report = Backfill::prepare(&store, plugin, options, 0)
        .await?
        .run(&job)
        .await?
        .commit()
        .await?;
    let stored = store
        .read(&report.group.name, &report.group.version)
        .await?;
    Ok((canonical_rows(&stored, plugin.manifest()), report.written))
}

/// Reads rows written one JSON object per line.
pub fn read_rows(path: &Path) -> Result<Vec<Row>, VerifyError> {
    let text = std::fs::read_to_string(path).map_err(io("reading", path))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str::<Row>(line).map_err(|source| VerifyError::NotJson {
                path: path.to_owned(),
                line: i + 1,
                source,
            })
        })
        .collect()
}
