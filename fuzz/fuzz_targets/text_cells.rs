//! Any text as CSV-like cells (lines of comma-separated cells, read as text columns):
//! conforming never panics; a row is kept or rejected, never both.
#![no_main]

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use libfuzzer_sys::fuzz_target;
use lockstep_core::conform::{SourceKind, conform_bounded};
use lockstep_core::schema::input_schema;
use std::sync::Arc;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let m = common::manifest();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    let columns: Vec<(&str, ArrayRef)> = m
        .input
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let cells: StringArray = rows
                .iter()
                .map(|r| r.get(i).copied().filter(|c| !c.is_empty()))
                .collect();
            (f.name.as_str(), Arc::new(cells) as ArrayRef)
        })
        .collect();
    let Ok(batch) = RecordBatch::try_from_iter(columns) else {
        return;
    };
    if let Ok((kept, rejects)) =
        conform_bounded(&batch, &m, &input_schema(&m), SourceKind::Text, Some(i64::MAX / 2))
    {
        assert_eq!(kept.num_rows() + rejects.len(), batch.num_rows());
    }
});
