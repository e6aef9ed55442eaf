//! Offline stores and label files built in tests.
#![allow(dead_code)]

use arrow_array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field as ArrowField, Schema, TimeUnit};
use lockstep_offline::{OfflineStore, WriterOptions};
use lockstep_sdk::{Manifest, ManifestBuilder, Value, ValueType};
use std::path::Path;
use std::sync::Arc;

/// A group keyed by `user` (text) with features `total` (f64) and `count` (i64).
pub fn manifest(name: &str, version: &str) -> Manifest {
    ManifestBuilder::new(name, version)
        .keyed_stateful(1)
        .field("user", ValueType::String, "")
        .field("ts", ValueType::Timestamp, "")
        .entity_key("user")
        .event_time("ts")
        .feature("total", ValueType::Float64, "", Value::Null)
        .feature("count", ValueType::Int64, "", Value::Null)
        .build()
}

/// A feature row as tests write it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub user: String,
    pub time: i64,
    pub total: f64,
    pub count: i64,
    pub deleted: bool,
}

fn batch(m: &Manifest, rows: &[&Row]) -> RecordBatch {
    let schema = lockstep_core::schema::row_schema(m);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.user.as_str()),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.time))
                .with_timezone("UTC"),
        ),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.total))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.count))),
    ];
    RecordBatch::try_new(schema, columns).expect("row batch")
}

/// Writes `rows` (in emission order) as group `name@version`; runs of rows with the
/// same deletion flag go in one batch, so emission order is kept.
pub fn write_group(store: &OfflineStore, name: &str, version: &str, rows: &[Row]) {
    let m = manifest(name, version);
    let group =
        block_on(store.register(&m, &format!("hash-of-{name}-{version}"), 0)).expect("register");
    let mut writer = store.writer(&group, 1, WriterOptions::default());
    let mut start = 0;
    while start < rows.len() {
        let mut end = start;
        while end < rows.len() && rows[end].deleted == rows[start].deleted {
            end += 1;
        }
        let run: Vec<&Row> = rows[start..end].iter().collect();
        let b = batch(&m, &run);
        if rows[start].deleted {
            writer.write_deletions(&b).expect("write deletions");
        } else {
            writer.write(&b).expect("write");
        }
        start = end;
    }
    block_on(writer.commit()).expect("commit");
}

/// Runs `work` to its end on a runtime of its own, for tests that are not async.
pub fn block_on<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(work)
}

/// Writes labels `(id, user, time µs)` as Parquet with a UTC timestamp `label_time`.
pub fn write_labels(path: &Path, labels: &[(i64, Option<&str>, i64)]) {
    let schema = Arc::new(Schema::new(vec![
        ArrowField::new("id", DataType::Int64, false),
        ArrowField::new("user", DataType::Utf8, true),
        ArrowField::new(
            "label_time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(labels.iter().map(|l| l.0))),
        Arc::new(StringArray::from_iter(labels.iter().map(|l| l.1))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(labels.iter().map(|l| l.2))
                .with_timezone("UTC"),
        ),
    ];
    write_parquet(path, RecordBatch::try_new(schema, columns).expect("labels"));
}

/// Writes one batch as a Parquet file.
pub fn write_parquet(path: &Path, batch: RecordBatch) {
    let file = std::fs::File::create(path).expect("create");
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
}
