//! Golden sets: a plugin's expected rows for fixed events, checked exactly.
//!
//! A set is a directory `<golden>/<name>/` with `events.jsonl`, `expected.jsonl` and
//! `plugin.sha256` (the component that made the expected rows); its plugin crate is
//! `<plugins>/<name>/`. A check runs the batch host over the events at several
//! partition counts and through both offline layouts; every run must give exactly the
//! expected rows.

use crate::error::io;
use crate::{Component, VerifyError, batch_rows, read_rows};
use lockstep_backfill::TableFormat;
use lockstep_core::compare::{Comparison, Row, canonical_order, compare};
use lockstep_runtime::Runtime;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A set's events.
pub const EVENTS: &str = "events.jsonl";
/// A set's expected rows.
pub const EXPECTED: &str = "expected.jsonl";
/// The component hash the expected rows were made with.
pub const PLUGIN_HASH: &str = "plugin.sha256";

/// Partition counts every check runs with: the rows must not depend on them.
pub const PARTITIONS: [usize; 2] = [1, 3];

/// Where golden sets and their plugin crates are.
#[derive(Debug, Clone)]
pub struct GoldenSets {
    /// The `golden/` directory.
    pub dir: PathBuf,
    /// The `plugins/` directory holding the plugin crates.
    pub plugins: PathBuf,
}

impl GoldenSets {
    /// The sets `names`, or every set in [`dir`](Self::dir) when empty, sorted.
    pub fn names(&self, names: &[String]) -> Result<Vec<String>, VerifyError> {
        if !names.is_empty() {
            return Ok(names.to_vec());
        }
        let mut out = Vec::new();
        for entry in
            std::fs::read_dir(&self.dir).map_err(io("listing golden sets in", &self.dir))?
        {
            let entry = entry.map_err(io("listing golden sets in", &self.dir))?;
            if entry.path().join(EVENTS).is_file() {
                out.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        if out.is_empty() {
            return Err(VerifyError::NoGoldenSets(self.dir.clone()));
        }
        Ok(out)
    }

    /// Builds and loads set `name`'s plugin crate with `runtime`.
    pub fn component(&self, runtime: &Runtime, name: &str) -> Result<Component, VerifyError> {
        let crate_dir = self.plugins.join(name);
        if !crate_dir.join("Cargo.toml").is_file() {
            return Err(VerifyError::NoPluginCrate {
                name: name.to_owned(),
                dir: crate_dir,
            });
        }
        let built = lockstep_build::build(&crate_dir, &Default::default()).map_err(|source| {
            VerifyError::Build {
                name: name.to_owned(),
                source,
            }
        })?;
        Ok(Component {
            plugin: runtime.load_file(&built.path)?,
            path: built.path,
        })
    }
}

/// One run of a check: a partition count and a layout against the expected rows.
#[derive(Debug)]
pub struct CheckRun {
    /// Partitions the batch host ran with.
    pub partitions: usize,
    /// The layout the rows were read back from.
    pub table_format: TableFormat,
    /// Batch (left) against expected (right).
    pub comparison: Comparison,
    /// Wall time.
    pub took: Duration,
}

/// What checking one set found.
#[derive(Debug)]
pub struct SetCheck {
    /// The set.
    pub name: String,
    /// The component checked.
    pub plugin_hash: String,
    /// The component the expected rows were made with (empty when not recorded).
    pub made_with: String,
    /// Every run.
    pub runs: Vec<CheckRun>,
}

impl SetCheck {
    /// Whether every run gave exactly the expected rows.
    pub fn passed(&self) -> bool {
        self.runs.iter().all(|r| r.comparison.identical())
    }
}

/// Checks set `name` of `sets` with `component`: every partition count, both layouts.
pub async fn check(
    sets: &GoldenSets,
    name: &str,
    component: &Component,
) -> Result<SetCheck, VerifyError> {
    let dir = sets.dir.join(name);
    let key = component.plugin.manifest().entity_key.clone();
    let expected_path = dir.join(EXPECTED);
    if !expected_path.is_file() {
        return Err(VerifyError::NoExpectedRows(name.to_owned()));
    }
    let mut expected = read_rows(&expected_path)?;
    canonical_order(&mut expected, &key);
    let made_with = std::fs::read_to_string(dir.join(PLUGIN_HASH))
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let mut runs = Vec::new();
    // Both layouts, each read back through its own reader: a table's snapshot or a
    // plain layout's hour files must hold exactly the expected rows.
    for table_format in [TableFormat::Plain, TableFormat::Delta] {
        for partitions in PARTITIONS {
            let started = Instant::now();
            let rows = batch_rows(component, &dir.join(EVENTS), partitions, table_format).await?;
            runs.push(CheckRun {
                partitions,
                table_format,
                comparison: compare(&key, &rows, &expected, 20),
                took: started.elapsed(),
            });
        }
    }
    Ok(SetCheck {
        name: name.to_owned(),
        plugin_hash: component.plugin.hash().to_owned(),
        made_with,
        runs,
    })
}

/// What updating one set did.
#[derive(Debug)]
pub struct SetUpdate {
    /// The set.
    pub name: String,
    /// Rows written.
    pub rows: usize,
    /// The previous expected rows (left) against the new ones (right).
    pub change: Comparison,
    /// The component that made them.
    pub plugin_hash: String,
}

/// Rewrites set `name`'s expected rows from the batch host with `component`, once
/// every partition count agrees.
pub async fn update(
    sets: &GoldenSets,
    name: &str,
    component: &Component,
) -> Result<SetUpdate, VerifyError> {
    let dir = sets.dir.join(name);
    let key = component.plugin.manifest().entity_key.clone();
    let events = dir.join(EVENTS);
    let rows = batch_rows(component, &events, PARTITIONS[0], TableFormat::Plain).await?;
    for &partitions in &PARTITIONS[1..] {
        let again = batch_rows(component, &events, partitions, TableFormat::Plain).await?;
        let c = compare(&key, &rows, &again, 20);
        if !c.identical() {
            return Err(VerifyError::PartitionsDisagree {
                name: name.to_owned(),
                partitions,
                diff: c.render("1 partition", "several"),
            });
        }
    }
    let previous = read_rows(&dir.join(EXPECTED)).unwrap_or_default();
    let change = compare(&key, &previous, &rows, 0);
    write_rows(&dir.join(EXPECTED), &rows)?;
    let hash_path = dir.join(PLUGIN_HASH);
    std::fs::write(&hash_path, format!("{}\n", component.plugin.hash()))
        .map_err(io("writing", &hash_path))?;
    Ok(SetUpdate {
        name: name.to_owned(),
        rows: rows.len(),
        change,
        plugin_hash: component.plugin.hash().to_owned(),
    })
}

fn write_rows(path: &Path, rows: &[Row]) -> Result<(), VerifyError> {
    let file = std::fs::File::create(path).map_err(io("creating", path))?;
    let mut w = std::io::BufWriter::new(file);
    for row in rows {
        serde_json::to_writer(&mut w, row).map_err(|e| VerifyError::Io {
            action: "writing",
            path: path.to_owned(),
            source: e.into(),
        })?;
        w.write_all(b"\n").map_err(io("writing", path))?;
    }
    w.flush().map_err(io("writing", path))
}
