//! Delta tables on a real filesystem: a backfill is one commit, a re-run replaces its
//! hours in one commit (old files kept for readers until VACUUM), concurrent jobs on
//! other hours both land, on the same hours one fails naming them, another build is
//! refused, and time travel gives each version's files.

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use lockstep_abi::{Manifest, Value, ValueType};
use lockstep_delta::{Backfill, DeltaError, files_at, part_file_name, table_dir};
use lockstep_offline::layout::version_rel;
use lockstep_offline::{OfflineStore, WriteSummary, WriterOptions};
use std::path::Path;
use std::sync::Arc;

const HOUR: i64 = 3_600_000_000;
const T0: i64 = 1_704_067_200_000_000; // 2024-01-01T00:00:00Z

fn manifest() -> Manifest {
    lockstep_sdk::ManifestBuilder::new("spend", "1.0.0")
        .field("user", ValueType::String, "user")
        .field("ts", ValueType::Timestamp, "event time")
        .entity_key("user")
        .event_time("ts")
        .feature("total", ValueType::Float64, "", Value::Float64(0.0))
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
    RecordBatch::try_new(lockstep_core_schema(m), vec![users, times, totals]).expect("batch")
}

fn lockstep_core_schema(m: &Manifest) -> arrow_schema::SchemaRef {
    // The row schema: the entity key, the event time, then the features.
    let schema = OfflineStore::schema(m);
    Arc::new(arrow_schema::Schema::new(schema.fields()[..3].to_vec()))
}

/// Writes `data` as job `job` (its own file names) through the offline writer.
fn write_job(
    root: &Path,
    m: &Manifest,
    hash: &str,
    job: &str,
    data: &[(&str, i64, f64)],
) -> WriteSummary {
    let store = OfflineStore::open(root).expect("open");
    let group = store.register(m, hash, 0).expect("register");
    let options = WriterOptions {
        part_file: Some(part_file_name(job)),
        ..WriterOptions::default()
    };
    let mut writer = store.writer(&group, T0, options);
    writer.write(&rows(m, data)).expect("write");
    writer.commit().expect("put files")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn a_backfill_is_one_commit_and_a_rerun_replaces_its_hours_keeping_old_files() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest();
    let table = table_dir(dir.path(), "spend", "1.0.0");
    let rel = version_rel("spend", "1.0.0");
    let schema = OfflineStore::schema(&m);
    let rt = runtime();
    let first = write_job(
        dir.path(),
        &m,
        "h",
        "a",
        &[("u1", T0, 1.0), ("u1", T0 + HOUR, 2.0)],
    );
    let committed = rt.block_on(async {
        let job = Backfill::begin(&table).await.unwrap();
        assert_eq!(job.read_version(), -1);
        job.commit(&rel, &schema, "h", &first.parts).await.unwrap()
    });
    // Version 0 creates the table, version 1 is the backfill: one commit.
    assert_eq!(
        (committed.version, committed.added, committed.removed),
        (1, 2, 0)
    );
    let v1 = rt.block_on(files_at(&table, None)).unwrap();
    assert_eq!(v1.len(), 2);
    assert!(v1.iter().all(|f| f.ends_with("part-a.parquet")), "{v1:?}");

    // A re-run over the second hour replaces it in one commit.
    let second = write_job(dir.path(), &m, "h", "b", &[("u1", T0 + HOUR, 5.0)]);
    let committed = rt.block_on(async {
        let job = Backfill::begin(&table).await.unwrap();
        job.commit(&rel, &schema, "h", &second.parts).await.unwrap()
    });
    assert_eq!(
        (committed.version, committed.added, committed.removed),
        (2, 1, 1)
    );
    let v2 = rt.block_on(files_at(&table, None)).unwrap();
    assert_eq!(
        v2,
        vec![
            "year=2024/month=01/day=01/hour=00/part-a.parquet".to_owned(),
            "year=2024/month=01/day=01/hour=01/part-b.parquet".to_owned(),
        ]
    );
    // The replaced file is still there for readers of version 1 (until VACUUM), and
    // version 1 still reads as it was.
    assert!(
        table
            .join("year=2024/month=01/day=01/hour=01/part-a.parquet")
            .is_file()
    );
    assert_eq!(rt.block_on(files_at(&table, Some(1))).unwrap(), v1);

    // An independent reader, the `deltalake` Python package, sees each version whole.
    assert_eq!(
        read_with_python(&table, Some(1)),
        r#"[["u1", 1.0, "00"], ["u1", 2.0, "01"]]"#
    );
    assert_eq!(
        read_with_python(&table, None),
        r#"[["u1", 1.0, "00"], ["u1", 5.0, "01"]]"#
    );
}

/// The rows of the table at `version` as the `deltalake` Python package reads them:
/// user, total, hour partition, sorted.
fn read_with_python(table: &Path, version: Option<i64>) -> String {
    let version = version.map_or("None".to_owned(), |v| v.to_string());
    let script = format!(
        "import json, deltalake\n\
         t = deltalake.DeltaTable({path:?}, version={version})\n\
         rows = t.to_pyarrow_table().to_pylist()\n\
         print(json.dumps(sorted([r['user'], r['total'], r['hour']] for r in rows)))\n",
        path = table.display().to_string()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the deltalake reader failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn concurrent_jobs_on_other_hours_both_land_and_on_the_same_hours_one_fails_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest();
    let table = table_dir(dir.path(), "spend", "1.0.0");
    let rel = version_rel("spend", "1.0.0");
    let schema = OfflineStore::schema(&m);
    let rt = runtime();
    let base = write_job(dir.path(), &m, "h", "base", &[("u1", T0, 1.0)]);
    rt.block_on(async {
        let job = Backfill::begin(&table).await.unwrap();
        job.commit(&rel, &schema, "h", &base.parts).await.unwrap();
    });

    // Two jobs begin on the same version; they write different hours.
    let (a, b) = rt.block_on(async {
        (
            Backfill::begin(&table).await.unwrap(),
            Backfill::begin(&table).await.unwrap(),
        )
    });
    let hour2 = write_job(dir.path(), &m, "h", "a", &[("u1", T0 + 2 * HOUR, 2.0)]);
    let hour3 = write_job(dir.path(), &m, "h", "b", &[("u1", T0 + 3 * HOUR, 3.0)]);
    let (ca, cb) = rt.block_on(async {
        let ca = a.commit(&rel, &schema, "h", &hour2.parts).await.unwrap();
        let cb = b.commit(&rel, &schema, "h", &hour3.parts).await.unwrap();
        (ca, cb)
    });
    assert_eq!(
        (ca.version, cb.version),
        (2, 3),
        "the second retried on the latest version"
    );
    assert_eq!(rt.block_on(files_at(&table, None)).unwrap().len(), 3);

    // Two jobs begin on the same version and both replace hour 0: the first to commit
    // wins, the other fails naming the hour, and nothing of it is visible.
    let (c, d) = rt.block_on(async {
        (
            Backfill::begin(&table).await.unwrap(),
            Backfill::begin(&table).await.unwrap(),
        )
    });
    let again_c = write_job(dir.path(), &m, "h", "c", &[("u1", T0, 10.0)]);
    let again_d = write_job(
        dir.path(),
        &m,
        "h",
        "d",
        &[("u1", T0, 20.0), ("u2", T0 + 4 * HOUR, 4.0)],
    );
    let (won, lost) = rt.block_on(async {
        let won = c.commit(&rel, &schema, "h", &again_c.parts).await;
        let lost = d.commit(&rel, &schema, "h", &again_d.parts).await;
        (won, lost)
    });
    assert_eq!(won.unwrap().version, 4);
    match lost {
        Err(DeltaError::Conflict {
            hours,
            read_version,
            ..
        }) => {
            assert_eq!(hours, vec!["year=2024/month=01/day=01/hour=00".to_owned()]);
            assert_eq!(read_version, 3);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let files = rt.block_on(files_at(&table, None)).unwrap();
    assert!(
        files.iter().any(|f| f.ends_with("hour=00/part-c.parquet")),
        "{files:?}"
    );
    assert!(!files.iter().any(|f| f.contains("part-d")), "{files:?}");
    let err = DeltaError::Conflict {
        table: "t".into(),
        read_version: 3,
        hours: vec!["year=2024/month=01/day=01/hour=00".into()],
    }
    .to_string();
    assert!(
        err.contains("hour=00") && err.contains("run it again"),
        "{err}"
    );
}

#[test]
fn another_build_is_refused_by_the_tables_own_binding() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest();
    let table = table_dir(dir.path(), "spend", "1.0.0");
    let rel = version_rel("spend", "1.0.0");
    let schema = OfflineStore::schema(&m);
    let rt = runtime();
    let first = write_job(dir.path(), &m, "h", "a", &[("u1", T0, 1.0)]);
    rt.block_on(async {
        let job = Backfill::begin(&table).await.unwrap();
        job.commit(&rel, &schema, "h", &first.parts).await.unwrap();
    });
    // Past the registry (a fresh store root would not hold its entry), the table
    // itself refuses another plugin's rows.
    let refused = rt.block_on(async {
        let job = Backfill::begin(&table).await.unwrap();
        job.commit(&rel, &schema, "other", &first.parts).await
    });
    match refused {
        Err(DeltaError::OtherPlugin { bound, offered, .. }) => {
            assert_eq!((bound.as_str(), offered.as_str()), ("h", "other"));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}
