//! The offline store on a real filesystem: layout, replacement of whole hours,
//! registry binding, and crash leftovers.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampMicrosecondType};
use arrow_array::{
    Array, ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use lockstep_abi::{Manifest, Value, ValueType};
use lockstep_core::schema::row_schema;
use lockstep_offline::{OfflineError, OfflineStore, STORE_COLUMNS};
use std::path::Path;
use std::sync::Arc;

const HOUR: i64 = 3_600_000_000;
const T0: i64 = 1_704_067_200_000_000; // 2024-01-01T00:00:00Z

fn manifest(version: &str) -> Manifest {
    Manifest::builder("spend", version)
        .keyed_stateful(1)
        .field("user", ValueType::String, "")
        .field("ts", ValueType::Timestamp, "")
        .field("amount", ValueType::Float64, "")
        .entity_key("user")
        .event_time("ts")
        .feature("total", ValueType::Float64, "", Value::Null)
        .build()
}

fn rows(m: &Manifest, data: &[(&str, i64, f64)]) -> RecordBatch {
    let users: ArrayRef = Arc::new(StringArray::from(
        data.iter().map(|r| r.0).collect::<Vec<_>>(),
    ));
    let times: ArrayRef = Arc::new(
        TimestampMicrosecondArray::from(data.iter().map(|r| r.1).collect::<Vec<_>>())
            .with_timezone("UTC"),
    );
    let totals: ArrayRef = Arc::new(Float64Array::from(
        data.iter().map(|r| r.2).collect::<Vec<_>>(),
    ));
    RecordBatch::try_new(row_schema(m), vec![users, times, totals]).expect("batch")
}

fn totals(batches: &[RecordBatch]) -> Vec<f64> {
    batches
        .iter()
        .flat_map(|b| b.column(2).as_primitive::<Float64Type>().values().to_vec())
        .collect()
}

#[tokio::test]
async fn rows_land_in_hour_partitions_with_lineage_columns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OfflineStore::open(dir.path()).expect("open");
    let m = manifest("1.0.0");
    let group = store.register(&m, "abc123", 0).await.expect("register");
    let summary = store
        .write(
            &group,
            &[rows(
                &m,
                &[
                    ("u1", T0 + 5, 1.0),
                    ("u2", T0 + HOUR + 7, 2.0),
                    ("u1", T0 + 9, 3.0),
                ],
            )],
            42,
        )
        .await
        .expect("write");
    assert_eq!((summary.rows, summary.partitions), (3, 2));
    let rel: Vec<_> = summary
        .files
        .iter()
        .map(|f| f.strip_prefix(dir.path()).expect("under root").to_owned())
        .collect();
    assert_eq!(
        rel,
        vec![
            Path::new("spend/version=1.0.0/year=2024/month=01/day=01/hour=00/part-0.parquet"),
            Path::new("spend/version=1.0.0/year=2024/month=01/day=01/hour=01/part-0.parquet"),
        ]
    );
    let back = store.read("spend", "1.0.0").await.expect("read");
    assert_eq!(
        totals(&back),
        vec![1.0, 3.0, 2.0],
        "rows keep their order within an hour"
    );
    let schema = back[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        vec![
            "user",
            "event_time",
            "total",
            STORE_COLUMNS[0],
            STORE_COLUMNS[1],
            STORE_COLUMNS[2],
            STORE_COLUMNS[3]
        ]
    );
    let hashes = back[0].column(6).as_string::<i32>();
    assert!((0..hashes.len()).all(|i| hashes.value(i) == "abc123"));
    let written = back[0].column(3).as_primitive::<TimestampMicrosecondType>();
    assert_eq!(written.value(0), 42);
    assert!(!back[0].column(5).as_boolean().value(0));
}

/// The store's own columns hold one value per file and are dictionary-encoded (a few
/// bytes per page; `is_deleted` is bit-packed); feature columns, mostly distinct
/// values, are not.
#[tokio::test]
async fn store_columns_are_dictionary_encoded_and_features_are_plain() {
    use parquet::basic::Encoding;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OfflineStore::open(dir.path()).expect("open");
    let m = manifest("1.0.0");
    let group = store
        .register(&m, &"f".repeat(64), 0)
        .await
        .expect("register");
    let data: Vec<(String, i64, f64)> = (0..2000)
        .map(|i| (format!("u{i}"), T0 + i, i as f64 * 0.37))
        .collect();
    let data: Vec<(&str, i64, f64)> = data.iter().map(|(u, t, x)| (u.as_str(), *t, *x)).collect();
    let summary = store
        .write(&group, &[rows(&m, &data)], 42)
        .await
        .expect("write");
    let file = std::fs::File::open(&summary.files[0]).expect("file");
    let reader = SerializedFileReader::new(file).expect("parquet");
    let row_group = reader.metadata().row_group(0);
    for column in row_group.columns() {
        let name = column.column_path().string();
        let dictionary = column.encodings().any(|e| e == Encoding::RLE_DICTIONARY);
        // Booleans have no dictionary in Parquet: they are bit-packed anyway.
        let store_column = STORE_COLUMNS.contains(&name.as_str())
            && column.column_type() != parquet::basic::Type::BOOLEAN;
        assert_eq!(
            dictionary,
            store_column,
            "{name}: {:?}",
            column.encodings().collect::<Vec<_>>()
        );
        if name == "plugin_hash" {
            assert!(
                column.uncompressed_size() < 1000,
                "2000 copies of a 64-character hash take {} bytes",
                column.uncompressed_size()
            );
        }
    }
}

#[tokio::test]
async fn a_rerun_replaces_the_hours_it_touches_and_leaves_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OfflineStore::open(dir.path()).expect("open");
    let m = manifest("1.0.0");
    let group = store.register(&m, "h", 0).await.expect("register");
    let first = rows(&m, &[("a", T0, 1.0), ("b", T0 + HOUR, 2.0)]);
    store
        .write(&group, std::slice::from_ref(&first), 1)
        .await
        .expect("write");
    store
        .write(&group, &[first], 2)
        .await
        .expect("same job again");
    assert_eq!(
        totals(&store.read("spend", "1.0.0").await.expect("read")),
        vec![1.0, 2.0],
        "no duplicates after a re-run"
    );
    store
        .write(
            &group,
            &[rows(
                &m,
                &[("b", T0 + HOUR, 5.0), ("c", T0 + HOUR + 1, 6.0)],
            )],
            3,
        )
        .await
        .expect("rewrite hour 1");
    assert_eq!(
        totals(&store.read("spend", "1.0.0").await.expect("read")),
        vec![1.0, 5.0, 6.0]
    );
}

#[tokio::test]
async fn replaced_hours_without_rows_are_emptied_and_the_others_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OfflineStore::open(dir.path()).expect("open");
    let m = manifest("1.0.0");
    let group = store.register(&m, "h", 0).await.expect("register");
    let history = rows(
        &m,
        &[
            ("a", T0, 1.0),
            ("a", T0 + HOUR, 2.0),
            ("a", T0 + 2 * HOUR, 3.0),
        ],
    );
    store.write(&group, &[history], 1).await.expect("write");
    // A re-run over hours 1 and 2 whose source no longer has hour 1's event.
    let mut writer = store.writer(&group, 2, Default::default());
    writer
        .write(&rows(&m, &[("a", T0 + 2 * HOUR, 7.0)]))
        .expect("rows");
    writer.replace_hours([
        lockstep_offline::layout::Hour::of(T0 + HOUR),
        lockstep_offline::layout::Hour::of(T0 + 2 * HOUR + 5),
    ]);
    let summary = writer.commit().await.expect("commit");
    assert_eq!(summary.rows, 1);
    assert_eq!(summary.hours.len(), 2, "{:?}", summary.hours);
    assert_eq!(
        totals(&store.read("spend", "1.0.0").await.expect("read")),
        vec![1.0, 7.0],
        "hour 0 kept, hour 1 emptied, hour 2 replaced"
    );
    assert_eq!(
        store
            .partition_files("spend", "1.0.0")
            .await
            .expect("files")
            .len(),
        3,
        "the emptied hour is a file of no rows, as readers of the layout expect"
    );
}

#[tokio::test]
async fn a_version_is_bound_to_one_plugin_hash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OfflineStore::open(dir.path()).expect("open");
    let v1 = manifest("1.0.0");
    store
        .register(&v1, "hash-a", 10)
        .await
        .expect("first registration");
    let again = store
        .register(&v1, "hash-a", 20)
        .await
        .expect("same plugin again");
    assert_eq!(again.registered_at, 10, "the entry is immutable");
    let err = store
        .register(&v1, "hash-b", 30)
        .await
        .expect_err("another plugin");
    assert!(matches!(err, OfflineError::HashMismatch { .. }));
    let text = err.to_string();
    assert!(
        text.contains("spend@1.0.0")
            && text.contains("hash-a")
            && text.contains("hash-b")
            && text.contains("bump the version"),
        "{text}"
    );
    store
        .register(&manifest("1.1.0"), "hash-b", 40)
        .await
        .expect("a new version may use the new plugin");
    assert!(matches!(
        store.version("spend", "2.0.0").await,
        Err(OfflineError::UnknownVersion { .. })
    ));
}

#[tokio::test]
async fn a_version_is_bound_at_the_first_commit_not_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OfflineStore::open(dir.path()).expect("open");
    let m = manifest("1.0.0");
    // A job that checks, writes and fails (the writer is dropped) claims nothing.
    let wrong = store
        .check_binding(&m, "hash-wrong", 10)
        .await
        .expect("free");
    let mut writer = store.writer(&wrong, 10, Default::default());
    writer
        .write(&rows(&m, &[("u", T0, 1.0)]))
        .expect("buffered rows");
    drop(writer);
    assert!(matches!(
        store.version("spend", "1.0.0").await,
        Err(OfflineError::UnknownVersion { .. })
    ));
    // The right build then writes, and its commit binds the version.
    let right = store
        .check_binding(&m, "hash-right", 20)
        .await
        .expect("still free");
    let mut writer = store.writer(&right, 20, Default::default());
    writer
        .write(&rows(&m, &[("u", T0, 2.0)]))
        .expect("buffered rows");
    writer.commit().await.expect("commit");
    assert_eq!(
        store
            .version("spend", "1.0.0")
            .await
            .expect("bound")
            .plugin_hash,
        "hash-right"
    );
    let err = store
        .check_binding(&m, "hash-wrong", 30)
        .await
        .expect_err("bound to the right build now");
    assert!(matches!(err, OfflineError::HashMismatch { .. }), "{err}");
    // A writer checked before the other build bound the version fails at commit.
    let other = manifest("2.0.0");
    let early = store
        .check_binding(&other, "hash-a", 40)
        .await
        .expect("free");
    store
        .register(&other, "hash-b", 41)
        .await
        .expect("hash-b binds");
    let mut writer = store.writer(&early, 40, Default::default());
    writer
        .write(&rows(&other, &[("u", T0, 3.0)]))
        .expect("buffered rows");
    let err = writer
        .commit()
        .await
        .expect_err("bound to another build meanwhile");
    assert!(matches!(err, OfflineError::HashMismatch { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_registrations_with_different_plugins_have_one_winner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OfflineStore::open(dir.path()).expect("open");
    let m = manifest("1.0.0");
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (store, m) = (store.clone(), m.clone());
            tokio::spawn(async move { store.register(&m, &format!("hash-{i}"), i).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("task"));
    }
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, OfflineError::HashMismatch { .. }))
    );
}

#[tokio::test]
async fn rows_of_another_schema_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OfflineStore::open(dir.path()).expect("open");
    let group = store
        .register(&manifest("1.0.0"), "h", 0)
        .await
        .expect("register");
    let other =
        RecordBatch::try_from_iter([("x", Arc::new(Float64Array::from(vec![1.0])) as ArrayRef)])
            .expect("batch");
    let err = store.write(&group, &[other], 0).await.expect_err("schema");
    assert!(err.to_string().contains("do not match its schema"), "{err}");
}

#[tokio::test]
async fn crash_leftovers_are_invisible_and_extreme_times_have_partitions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OfflineStore::open(dir.path()).expect("open");
    let m = manifest("1.0.0");
    let group = store.register(&m, "h", 0).await.expect("register");
    let summary = store
        .write(
            &group,
            &[rows(
                &m,
                &[("a", i64::MIN, 1.0), ("a", i64::MAX, 2.0), ("a", 0, 3.0)],
            )],
            0,
        )
        .await
        .expect("write");
    assert_eq!(summary.partitions, 3);
    // A writer killed between creating its temporary file and renaming it leaves this:
    let partition = summary.files[2].parent().expect("dir");
    std::fs::write(
        partition.join(".tmp-part-0.parquet-999"),
        b"half a parquet file",
    )
    .expect("leftover");
    let mut back = totals(&store.read("spend", "1.0.0").await.expect("read"));
    back.sort_by(f64::total_cmp);
    assert_eq!(back, vec![1.0, 2.0, 3.0]);
}

/// DuckDB and pyarrow, installed by `scripts/test.sh`, read the store as a data
/// engineer would: with Hive partitioning, ignoring crash leftovers.
#[tokio::test]
async fn duckdb_and_pyarrow_read_the_expected_schema_and_partitions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OfflineStore::open(dir.path()).expect("open");
    let m = manifest("1.0.0");
    let group = store.register(&m, "h", 0).await.expect("register");
    let summary = store
        .write(
            &group,
            &[rows(
                &m,
                &[
                    ("u1", T0, 1.5),
                    ("u2", T0 + HOUR, 2.5),
                    ("u1", T0 + 25 * HOUR, 4.0),
                ],
            )],
            7,
        )
        .await
        .expect("write");
    std::fs::write(
        summary.files[0]
            .parent()
            .expect("dir")
            .join(".tmp-part-0.parquet-1-1"),
        b"junk",
    )
    .expect("leftover");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/read_offline_store.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(dir.path())
        .arg("spend")
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "reading with DuckDB/pyarrow failed (scripts/test.sh installs them): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let duck = &seen["duckdb"];
    assert_eq!(duck["rows"], 3);
    assert_eq!(duck["total"], 8.0);
    let columns: Vec<(String, String)> = duck["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| {
            (
                c[0].as_str().unwrap_or("").to_owned(),
                c[1].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let find = |name: &str| columns.iter().find(|c| c.0 == name).map(|c| c.1.as_str());
    assert_eq!(find("event_time"), Some("TIMESTAMP WITH TIME ZONE"));
    assert_eq!(find("total"), Some("DOUBLE"));
    assert_eq!(find("is_deleted"), Some("BOOLEAN"));
    assert_eq!(find("plugin_hash"), Some("VARCHAR"));
    assert_eq!(
        find("version"),
        Some("VARCHAR"),
        "the version partition is a column: {columns:?}"
    );
    assert!(find("hour").is_some(), "{columns:?}");
    let partitions = duck["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 3);
    // Zero-padded like SageMaker's layout, so DuckDB infers month/day/hour as text.
    assert_eq!(
        partitions[0],
        serde_json::json!(["1.0.0", 2024, "01", "01", "00"])
    );
    assert_eq!(
        partitions[2],
        serde_json::json!(["1.0.0", 2024, "01", "02", "01"])
    );
    let arrow = &seen["pyarrow"];
    assert_eq!(arrow["rows"], 3);
    let arrow_cols: Vec<&str> = arrow["columns"]
        .as_array()
        .expect("cols")
        .iter()
        .filter_map(|c| c[0].as_str())
        .collect();
    assert_eq!(
        &arrow_cols[..7],
        &[
            "user",
            "event_time",
            "total",
            "write_time",
            "api_invocation_time",
            "is_deleted",
            "plugin_hash"
        ]
    );
    assert!(
        arrow["columns"][1][1]
            .as_str()
            .unwrap_or("")
            .contains("tz=UTC"),
        "{}",
        arrow["columns"]
    );
}

/// Many rows over a few hours, from several "partitions" (interleaved batches).
fn spread(m: &Manifest, users: usize, per_user: usize) -> Vec<RecordBatch> {
    let names: Vec<String> = (0..users).map(|u| format!("u{u:03}")).collect();
    let mut batches = Vec::new();
    for (u, name) in names.iter().enumerate() {
        let data: Vec<(&str, i64, f64)> = (0..per_user)
            .map(|i| {
                (
                    name.as_str(),
                    T0 + (i as i64) * HOUR / 7 + (u as i64 % 5),
                    (u * 1000 + i) as f64,
                )
            })
            .collect();
        batches.push(rows(m, &data));
    }
    batches
}

fn files_bytes(summary: &lockstep_offline::WriteSummary) -> Vec<Vec<u8>> {
    summary
        .files
        .iter()
        .map(|f| std::fs::read(f).expect("read file"))
        .collect()
}

#[tokio::test]
async fn a_streaming_write_that_stages_on_disk_gives_the_same_files_in_any_arrival_order() {
    let m = manifest("1.0.0");
    let batches = spread(&m, 40, 60);
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();

    // In memory, in one go.
    let a = tempfile::tempdir().expect("tempdir");
    let store_a = OfflineStore::open(a.path()).expect("open");
    let group_a = store_a.register(&m, "h", 0).await.expect("register");
    let in_memory = store_a.write(&group_a, &batches, 7).await.expect("write");

    // Streamed in reverse arrival order with a tiny buffer: staged many times.
    let b = tempfile::tempdir().expect("tempdir");
    let staging = tempfile::tempdir().expect("staging");
    let store_b = OfflineStore::open(b.path()).expect("open");
    let group_b = store_b.register(&m, "h", 0).await.expect("register");
    let mut writer = store_b.writer(
        &group_b,
        7,
        lockstep_offline::WriterOptions {
            buffer_bytes: 4 << 10,
            staging_dir: Some(staging.path().to_owned()),
            threads: Some(3),
            ..Default::default()
        },
    );
    for batch in batches.iter().rev() {
        writer.write(batch).expect("write");
    }
    assert_eq!(writer.rows(), total);
    assert!(
        writer.spills() > 5,
        "the budget forced staging: {}",
        writer.spills()
    );
    let streamed = writer.commit().await.expect("commit");

    assert_eq!(streamed.rows, total);
    assert_eq!(streamed.partitions, in_memory.partitions);
    assert_eq!(
        files_bytes(&streamed),
        files_bytes(&in_memory),
        "the same rows give byte-identical files whatever the arrival order and staging"
    );
    assert_eq!(
        std::fs::read_dir(staging.path()).expect("list").count(),
        0,
        "the staging directory is removed after commit"
    );
    // Every hour is ordered by entity, then event time.
    for batch in store_b.read("spend", "1.0.0").await.expect("read") {
        let users = batch.column(0).as_string::<i32>();
        let times = batch.column(1).as_primitive::<TimestampMicrosecondType>();
        for i in 1..batch.num_rows() {
            let ord = users
                .value(i - 1)
                .cmp(users.value(i))
                .then(times.value(i - 1).cmp(&times.value(i)));
            assert!(ord.is_le(), "row {i} out of order");
        }
    }
}

/// A new local store with `m` registered as plugin hash `h`.
async fn registered(
    m: &Manifest,
) -> (
    tempfile::TempDir,
    OfflineStore,
    lockstep_offline::GroupVersion,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OfflineStore::open(dir.path()).expect("open");
    let group = store.register(m, "h", 0).await.expect("register");
    (dir, store, group)
}

/// Writes `sends` (source, batch) through a streaming writer with `buffer_bytes` and
/// commits.
async fn write_sources(
    m: &Manifest,
    sends: &[(usize, RecordBatch)],
    buffer_bytes: usize,
) -> (tempfile::TempDir, lockstep_offline::WriteSummary, usize) {
    let (dir, store, group) = registered(m).await;
    let staging = tempfile::tempdir().expect("staging");
    let mut writer = store.writer(
        &group,
        7,
        lockstep_offline::WriterOptions {
            buffer_bytes,
            staging_dir: Some(staging.path().to_owned()),
            threads: Some(2),
            ..Default::default()
        },
    );
    for (source, batch) in sends {
        writer.write_from(*source, batch).expect("write");
    }
    let spills = writer.spills();
    let summary = writer.commit().await.expect("commit");
    (dir, summary, spills)
}

#[tokio::test]
async fn rows_from_several_sources_give_the_same_files_in_order_or_not() {
    let m = manifest("1.0.0");
    let batches = spread(&m, 40, 60);
    let (_a, store_a, group_a) = registered(&m).await;
    let expected = files_bytes(&store_a.write(&group_a, &batches, 7).await.expect("write"));

    // Three sources, each sending its entities in key order (as partitions do),
    // interleaved with one another.
    let in_order: Vec<(usize, RecordBatch)> = batches
        .iter()
        .enumerate()
        .map(|(u, b)| (u % 3, b.clone()))
        .collect();
    // The same, each source sending its entities in reverse key order.
    let reversed: Vec<(usize, RecordBatch)> = in_order.iter().rev().cloned().collect();
    // One entity's rows split across sources, halves in swapped order.
    let split: Vec<(usize, RecordBatch)> = batches
        .iter()
        .enumerate()
        .flat_map(|(u, b)| {
            let half = b.num_rows() / 2;
            [
                ((u + 1) % 2, b.slice(half, b.num_rows() - half)),
                (u % 2, b.slice(0, half)),
            ]
        })
        .collect();
    // More sources than the commit merges (each entity its own source).
    let many: Vec<(usize, RecordBatch)> = batches
        .iter()
        .enumerate()
        .map(|(u, b)| (u, b.clone()))
        .collect();
    for (name, sends) in [
        ("in order", &in_order),
        ("reversed", &reversed),
        ("split", &split),
        ("many", &many),
    ] {
        for buffer_bytes in [64 << 20, 4 << 10] {
            let (_dir, summary, spills) = write_sources(&m, sends, buffer_bytes).await;
            assert_eq!(
                files_bytes(&summary),
                expected,
                "{name}, buffer {buffer_bytes} ({spills} stagings): same files"
            );
            if buffer_bytes < 1 << 20 {
                assert!(spills > 5, "{name}: the small buffer staged ({spills})");
            }
        }
    }
}

#[tokio::test]
async fn an_hour_that_cannot_be_put_fails_the_commit_naming_it() {
    let m = manifest("1.0.0");
    let batches = spread(&m, 40, 60);
    let (_dir, store, group) = registered(&m).await;
    let first = store.write(&group, &batches, 7).await.expect("write");
    assert!(first.partitions > 8, "{} hours", first.partitions);
    // A file where one hour's directory must be: that hour cannot be put again.
    let hour_dir = first.files[first.files.len() / 2]
        .parent()
        .expect("hour directory")
        .to_owned();
    std::fs::remove_dir_all(&hour_dir).expect("remove the hour");
    std::fs::write(&hour_dir, b"in the way").expect("block the hour");

    let mut writer = store.writer(
        &group,
        8,
        lockstep_offline::WriterOptions {
            threads: Some(2),
            ..Default::default()
        },
    );
    for batch in &batches {
        writer.write(batch).expect("write");
    }
    let err = writer
        .commit()
        .await
        .expect_err("one hour cannot be written");
    let message = err.to_string();
    let hour_name = hour_dir
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        message.contains(&hour_name),
        "the error names the hour that failed: {message}"
    );
}

#[tokio::test]
async fn a_writer_dropped_before_commit_leaves_nothing_behind() {
    let m = manifest("1.0.0");
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = tempfile::tempdir().expect("staging");
    let store = OfflineStore::open(dir.path()).expect("open");
    let group = store.register(&m, "h", 0).await.expect("register");
    let mut writer = store.writer(
        &group,
        1,
        lockstep_offline::WriterOptions {
            buffer_bytes: 1,
            staging_dir: Some(staging.path().to_owned()),
            threads: None,
            ..Default::default()
        },
    );
    for batch in spread(&m, 3, 20) {
        writer.write(&batch).expect("write");
    }
    assert!(writer.spills() > 0);
    drop(writer);
    assert!(store.read("spend", "1.0.0").await.expect("read").is_empty());
    assert_eq!(std::fs::read_dir(staging.path()).expect("list").count(), 0);
}

#[tokio::test]
async fn a_streaming_write_refuses_rows_of_another_schema_naming_the_group() {
    let m = manifest("1.0.0");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OfflineStore::open(dir.path()).expect("open");
    let group = store.register(&m, "h", 0).await.expect("register");
    let mut writer = store.writer(&group, 1, lockstep_offline::WriterOptions::default());
    let other = RecordBatch::try_new(
        Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
            "x",
            arrow_schema::DataType::Float64,
            false,
        )])),
        vec![Arc::new(Float64Array::from(vec![1.0])) as ArrayRef],
    )
    .expect("batch");
    let err = writer.write(&other).expect_err("schema");
    assert!(matches!(err, OfflineError::Schema { .. }), "{err}");
    assert!(err.to_string().contains("spend"), "{err}");
}

/// The same store protocol against S3 (the moto server on loopback): layout, atomic
/// hour objects, the registry's create-if-absent, reading back, refusing a second plugin.
#[tokio::test]
async fn an_s3_store_behaves_like_a_local_one() {
    let moto = lockstep_testkit::Moto::start();
    moto.create_bucket("features");
    let s3 = lockstep_offline::S3Options {
        endpoint: Some(moto.endpoint()),
        region: Some(lockstep_testkit::REGION.into()),
        credentials: Some((
            lockstep_testkit::ACCESS_KEY.into(),
            lockstep_testkit::SECRET_KEY.into(),
        )),
    };
    let store = OfflineStore::open_location("s3://features/offline", &s3).expect("open");
    assert_eq!(store.root(), Path::new("s3://features/offline"));
    let m = manifest("1.0.0");
    let group = store.register(&m, "abc", 0).await.expect("register");
    let again = store
        .register(&m, "abc", 5)
        .await
        .expect("same plugin again");
    assert_eq!(again.registered_at, 0, "the first registration stands");
    let err = store
        .register(&m, "other", 0)
        .await
        .expect_err("another plugin");
    assert!(matches!(err, OfflineError::HashMismatch { .. }), "{err}");

    // Racing first registrations: S3's conditional put lets exactly one plugin win.
    let m2 = manifest("2.0.0");
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let (store, m2) = (store.clone(), m2.clone());
            tokio::spawn(
                async move { store.register(&m2, &format!("plugin-{i}"), i).await.is_ok() },
            )
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task"));
    }
    assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 1, "{outcomes:?}");

    let batches = spread(&m, 10, 30);
    let summary = store.write(&group, &batches, 9).await.expect("write");
    assert_eq!(summary.rows, 300);
    assert!(
        summary.files[0].to_string_lossy().starts_with(
            "s3://features/offline/spend/version=1.0.0/year=2024/month=01/day=01/hour="
        ),
        "{:?}",
        summary.files[0]
    );
    let keys = moto.boto3(
        "r = client('s3').list_objects_v2(Bucket='features', Prefix='offline/spend/')\n\
         print('\\n'.join(o['Key'] for o in r['Contents']))",
    );
    assert!(
        keys.lines()
            .any(|k| k == "offline/spend/_lockstep/versions/1.0.0.json"),
        "{keys}"
    );
    assert_eq!(
        keys.lines()
            .filter(|k| k.ends_with("/part-0.parquet"))
            .count(),
        summary.partitions
    );
    // The writer's lock went with its commit (released, not left to expire), and the
    // journal and the staged files with it.
    assert!(
        !keys.lines().any(|k| k.contains("/_lockstep/locks/")
            || k.contains("/_lockstep/journal/")
            || k.contains("/.tmp-")),
        "{keys}"
    );

    // The same rows locally give the same stored rows.
    let dir = tempfile::tempdir().expect("tempdir");
    let local = OfflineStore::open(dir.path()).expect("open");
    let local_group = local.register(&m, "abc", 0).await.expect("register");
    local.write(&local_group, &batches, 9).await.expect("write");
    let (a, b) = (
        store.read("spend", "1.0.0").await.expect("read s3"),
        local.read("spend", "1.0.0").await.expect("read local"),
    );
    assert_eq!(a, b);

    // A re-run replaces hours in place: still 300 rows.
    store.write(&group, &batches, 10).await.expect("rewrite");
    let n: usize = store
        .read("spend", "1.0.0")
        .await
        .expect("read")
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(n, 300);
}

#[tokio::test]
async fn an_unreachable_s3_endpoint_is_a_clear_error_naming_it() {
    let s3 = lockstep_offline::S3Options {
        endpoint: Some(format!(
            "http://127.0.0.1:{}",
            lockstep_testkit::free_port()
        )),
        region: None,
        credentials: Some(("k".into(), "s".into())),
    };
    let store = OfflineStore::open_location("s3://nowhere/x", &s3).expect("opening is lazy");
    let err = store
        .register(&manifest("1.0.0"), "h", 0)
        .await
        .expect_err("nothing listens there");
    let text = err.to_string();
    assert!(
        text.contains("s3://nowhere/x/spend/_lockstep/versions/1.0.0.json"),
        "{text}"
    );
}

/// A group version kept as a Delta table is refused by name, never read as an empty
/// plain layout.
#[tokio::test]
async fn a_delta_table_is_refused_not_read_as_a_plain_layout() {
    let m = manifest("1.0.0");
    let (dir, store, group) = registered(&m).await;
    store
        .write(&group, &[rows(&m, &[("u1", T0, 1.0)])], 0)
        .await
        .expect("write");
    std::fs::create_dir_all(dir.path().join("spend/version=1.0.0/_delta_log")).expect("mkdir");
    let err = store.read("spend", "1.0.0").await.expect_err("refused");
    assert!(matches!(err, OfflineError::DeltaTable { .. }), "{err}");
}

/// The plain layout's writer lock: held by a live job it refuses another, naming it; a
/// lock of a process gone from this machine, or one not renewed in time anywhere, is
/// taken over; a live holder elsewhere is respected until it expires. Released on drop.
#[tokio::test]
async fn the_writer_lock_refuses_a_live_holder_and_takes_over_a_dead_or_expired_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OfflineStore::open(dir.path()).expect("open");
    let m = manifest("1.0.0");
    let group = store.register(&m, "h", 0).await.expect("register");
    let lock_file = dir.path().join("spend/_lockstep/locks/1.0.0.lock");

    let (held, _) = store.lock(&group, "job one").await.expect("free");
    assert!(lock_file.is_file());
    let err = store.lock(&group, "job two").await.expect_err("held");
    assert!(matches!(err, OfflineError::Locked { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("spend@1.0.0 is being written by another job: job one (process")
            && text.contains(&format!("process {}", std::process::id())),
        "{text}"
    );
    // A writer without the caller's lock takes it at commit: refused as well.
    let mut writer = store.writer(&group, 1, Default::default());
    writer
        .write(&rows(&m, &[("u1", 1_704_067_200_000_000, 1.0)]))
        .expect("write");
    assert!(matches!(
        writer.commit().await,
        Err(OfflineError::Locked { .. })
    ));
    drop(held);
    assert!(!lock_file.exists(), "released on drop");
    let (held, _) = store.lock(&group, "job four").await.expect("free again");
    held.release().await.expect("release");
    assert!(!lock_file.exists(), "released");
    held.release().await.expect("a second release does nothing");
    drop(held);
    store
        .lock(&group, "job five")
        .await
        .expect("free after a release");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    let write_lock = |host: &str, pid: u32, expires: i64| {
        let holder = serde_json::json!({
            "host": host, "pid": pid, "job": "elsewhere", "since": now - 1, "expires": expires
        });
        std::fs::write(&lock_file, holder.to_string()).expect("lock file");
    };
    // A process of this machine that no longer runs (pids are below 2^22 on Linux).
    write_lock(&host, 4_194_303 + 1, now + 3_600_000_000);
    drop(
        store
            .lock(&group, "after a dead one")
            .await
            .expect("taken over"),
    );
    // Another machine's live lock is respected…
    write_lock("another-host", 1, now + 3_600_000_000);
    let err = store
        .lock(&group, "job three")
        .await
        .expect_err("live elsewhere");
    assert!(
        err.to_string()
            .contains("elsewhere (process 1 on another-host"),
        "{err}"
    );
    // …until it expires unrenewed.
    write_lock("another-host", 1, now - 1);
    drop(
        store
            .lock(&group, "after an expired one")
            .await
            .expect("expired"),
    );
    // A torn lock file (a holder killed while writing it) is stale.
    std::fs::write(&lock_file, "{\"host\":").expect("torn");
    drop(store.lock(&group, "after a torn one").await.expect("torn"));
}

#[tokio::test]
async fn the_next_writer_removes_what_a_killed_put_left_beside_the_lock_and_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OfflineStore::open(dir.path()).expect("open");
    let m = manifest("1.0.0");
    let group = store.register(&m, "abc", 0).await.expect("register");
    store
        .write(&group, &[rows(&m, &[("u1", T0, 1.0)])], 1)
        .await
        .expect("write");
    // A put killed between writing its temporary file and renaming it (pid 4999999
    // runs nowhere).
    let meta = dir.path().join("spend/_lockstep/locks");
    std::fs::create_dir_all(&meta).expect("mkdir");
    let orphan = meta.join(".tmp-1.0.0.lock-4999999-3");
    std::fs::write(&orphan, b"half a lock").expect("write");
    let (lock, recovered) = store.lock(&group, "next").await.expect("lock");
    lock.release().await.expect("release");
    assert!(!orphan.exists(), "the killed put's file is removed");
    assert!(recovered.removed >= 1);
}
