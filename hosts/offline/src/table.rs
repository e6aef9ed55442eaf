//! The extension point through which a table format with a log of its own (Delta Lake)
//! tells the store which files a group version holds.
//!
//! A plain-layout version's files are the ones its folder lists. A table format keeps
//! a log that says which files are active in each table version: files a replacement
//! removed stay on disk for older readers, so listing the folder would read both the
//! old rows and the new. The store asks a [`TableLog`] instead, and refuses a folder
//! that holds a log when none is attached, rather than reading it as a plain layout.

use std::fmt::Debug;

/// The files a table version holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSnapshot {
    /// The table version read.
    pub version: i64,
    /// Its active data files, relative to the table's folder, in time order.
    pub files: Vec<String>,
}

/// A table format that keeps its active files in a log inside the group version's
/// folder. Implementations must not change the table: they are readers.
#[async_trait::async_trait]
pub trait TableLog: Send + Sync + Debug {
    /// The format's name, for messages ("Delta Lake").
    fn format(&self) -> &'static str;

    /// The log folder's name inside a version folder (`_delta_log`): its presence is
    /// what marks the folder as a table of this format.
    fn log_dir(&self) -> &'static str;

    /// The files of the table in the folder `table_dir` (a path or a URL, as
    /// [`OfflineStore::root`](crate::OfflineStore::root) names the store) at
    /// `version`, the latest when `None`.
    async fn snapshot(
        &self,
        table_dir: &str,
        version: Option<i64>,
    ) -> Result<TableSnapshot, Box<dyn std::error::Error + Send + Sync>>;
}
