//! Delta tables on a real filesystem: a backfill is one commit, a re-run replaces its
//! hours in one commit (old files kept for readers until VACUUM), concurrent jobs on
//! other hours both land, on the same hours one fails naming them, another build is
//! refused, and time travel gives each version's files.

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::SchemaRef;
use lockstep_abi::{Manifest, Value, ValueType};
use lockstep_core::schema::row_schema;
use lockstep_delta::{
    Backfill, Committed, DeltaError, DeltaTables, files_at, part_file_name, table_dir,
};
use lockstep_offline::layout::version_rel;
use lockstep_offline::{OfflineStore, WriteSummary, WriterOptions};
use std::path::{Path, PathBuf};
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
    RecordBatch::try_new(row_schema(m), vec![users, times, totals]).expect("batch")
}

/// Writes `data` as job `job` (its own file names) through the offline writer.
fn write_job(
    rt: &tokio::runtime::Runtime,
    root: &Path,
    m: &Manifest,
    hash: &str,
    job: &str,
    data: &[(&str, i64, f64)],
) -> WriteSummary {
    let store = OfflineStore::open(root).expect("open");
    let group = rt.block_on(store.register(m, hash, 0)).expect("register");
    let options = WriterOptions {
        part_file: Some(part_file_name(job)),
        ..WriterOptions::default()
    };
    let mut writer = store.writer(&group, T0, options);
    writer.write(&rows(m, data)).expect("write");
    rt.block_on(writer.commit()).expect("put files")
}

/// A store root, the names of its `spend@1.0.0` table, and a runtime to drive it.
struct Fixture {
    dir: tempfile::TempDir,
    m: Manifest,
    table: PathBuf,
    rel: String,
    schema: SchemaRef,
    rt: tokio::runtime::Runtime,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest();
        Fixture {
            table: table_dir(dir.path(), "spend", "1.0.0"),
            rel: version_rel("spend", "1.0.0"),
            schema: OfflineStore::schema(&m),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime"),
            dir,
            m,
        }
    }

    /// The files of job `job` of plugin `hash`, put but not committed.
    fn job(&self, hash: &str, job: &str, data: &[(&str, i64, f64)]) -> WriteSummary {
        write_job(&self.rt, self.dir.path(), &self.m, hash, job, data)
    }

    fn begin(&self) -> Backfill {
        self.rt
            .block_on(Backfill::begin(&self.table, &Default::default()))
            .unwrap()
    }

    fn commit(
        &self,
        job: Backfill,
        hash: &str,
        files: &WriteSummary,
    ) -> Result<Committed, DeltaError> {
        self.rt
            .block_on(job.commit(&self.rel, &self.schema, hash, &files.parts))
    }

    /// A backfill that begins and commits at once.
    fn backfill(&self, hash: &str, files: &WriteSummary) -> Result<Committed, DeltaError> {
        self.commit(self.begin(), hash, files)
    }

    fn files(&self, version: Option<i64>) -> Vec<String> {
        self.rt
            .block_on(files_at(&self.table, &Default::default(), version))
            .unwrap()
    }
}

#[test]
fn a_backfill_is_one_commit_and_a_rerun_replaces_its_hours_keeping_old_files() {
    let f = Fixture::new();
    let first = f.job("h", "a", &[("u1", T0, 1.0), ("u1", T0 + HOUR, 2.0)]);
    let job = f.begin();
    assert_eq!(job.read_version(), -1);
    let committed = f.commit(job, "h", &first).unwrap();
    // Version 0 creates the table, version 1 is the backfill: one commit.
    assert_eq!(
        (committed.version, committed.added, committed.removed),
        (1, 2, 0)
    );
    let v1 = f.files(None);
    assert_eq!(v1.len(), 2);
    assert!(v1.iter().all(|f| f.ends_with("part-a.parquet")), "{v1:?}");

    // A re-run over the second hour replaces it in one commit.
    let second = f.job("h", "b", &[("u1", T0 + HOUR, 5.0)]);
    let committed = f.backfill("h", &second).unwrap();
    assert_eq!(
        (committed.version, committed.added, committed.removed),
        (2, 1, 1)
    );
    assert_eq!(
        f.files(None),
        vec![
            "year=2024/month=01/day=01/hour=00/part-a.parquet".to_owned(),
            "year=2024/month=01/day=01/hour=01/part-b.parquet".to_owned(),
        ]
    );
    // The replaced file is still there for readers of version 1 (until VACUUM), and
    // version 1 still reads as it was.
    let table = &f.table;
    assert!(
        table
            .join("year=2024/month=01/day=01/hour=01/part-a.parquet")
            .is_file()
    );
    assert_eq!(f.files(Some(1)), v1);

    // An independent reader, the `deltalake` Python package, sees each version whole.
    assert_eq!(
        read_with_python(table, Some(1)),
        r#"[["u1", 1.0, "00"], ["u1", 2.0, "01"]]"#
    );
    assert_eq!(
        read_with_python(table, None),
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
         print(json.dumps(sorted([r['user'], r['total'], r['hour']] for r in rows)), flush=True)\n\
         # deltalake can abort at interpreter exit (delta-rs #2184, a thread still\n\
         # running at teardown); the answer is printed by then.\n\
         import os; os._exit(0)\n",
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
    let f = Fixture::new();
    f.backfill("h", &f.job("h", "base", &[("u1", T0, 1.0)]))
        .unwrap();

    // Two jobs begin on the same version; they write different hours.
    let (a, b) = (f.begin(), f.begin());
    let hour2 = f.job("h", "a", &[("u1", T0 + 2 * HOUR, 2.0)]);
    let hour3 = f.job("h", "b", &[("u1", T0 + 3 * HOUR, 3.0)]);
    let ca = f.commit(a, "h", &hour2).unwrap();
    let cb = f.commit(b, "h", &hour3).unwrap();
    assert_eq!(
        (ca.version, cb.version),
        (2, 3),
        "the second retried on the latest version"
    );
    assert_eq!(f.files(None).len(), 3);

    // Two jobs begin on the same version and both replace hour 0: the first to commit
    // wins, the other fails naming the hour, and nothing of it is visible.
    let (c, d) = (f.begin(), f.begin());
    let again_c = f.job("h", "c", &[("u1", T0, 10.0)]);
    let again_d = f.job("h", "d", &[("u1", T0, 20.0), ("u2", T0 + 4 * HOUR, 4.0)]);
    assert_eq!(f.commit(c, "h", &again_c).unwrap().version, 4);
    let lost = f.commit(d, "h", &again_d);
    let message = match lost {
        Err(
            ref e @ DeltaError::Conflict {
                ref hours,
                read_version,
                ..
            },
        ) => {
            assert_eq!(hours, &vec!["year=2024/month=01/day=01/hour=00".to_owned()]);
            assert_eq!(read_version, 3);
            e.to_string()
        }
        other => panic!("expected a conflict, got {other:?}"),
    };
    assert!(
        message.contains("hour=00") && message.contains("run it again"),
        "{message}"
    );
    let files = f.files(None);
    assert!(
        files.iter().any(|f| f.ends_with("hour=00/part-c.parquet")),
        "{files:?}"
    );
    assert!(!files.iter().any(|f| f.contains("part-d")), "{files:?}");
}

#[test]
fn another_build_is_refused_by_the_tables_own_binding() {
    let f = Fixture::new();
    let first = f.job("h", "a", &[("u1", T0, 1.0)]);
    f.backfill("h", &first).unwrap();
    // Past the registry (a fresh store root would not hold its entry), the table
    // itself refuses another plugin's rows.
    match f.backfill("other", &first) {
        Err(DeltaError::OtherPlugin { bound, offered, .. }) => {
            assert_eq!((bound.as_str(), offered.as_str()), ("h", "other"));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The offline store with [`DeltaTables`] attached reads a table's snapshot: the latest
/// rows only (not the replaced file beside them), an old version's on request, and
/// names a version the table does not have.
#[test]
fn the_offline_store_reads_a_tables_snapshot_through_its_log() {
    let f = Fixture::new();
    let first = f.job("h", "a", &[("u1", T0, 1.0), ("u1", T0 + HOUR, 2.0)]);
    f.backfill("h", &first).unwrap();
    let second = f.job("h", "b", &[("u1", T0 + HOUR, 5.0)]);
    f.backfill("h", &second).unwrap();
    let totals = |store: &OfflineStore| -> Vec<f64> {
        f.rt.block_on(store.read("spend", "1.0.0"))
            .expect("read")
            .iter()
            .flat_map(|b| {
                let c = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
                c.values().to_vec()
            })
            .collect()
    };
    let plain = OfflineStore::open(f.dir.path()).unwrap();
    assert!(matches!(
        f.rt.block_on(plain.read("spend", "1.0.0")),
        Err(lockstep_offline::OfflineError::DeltaTable { .. })
    ));
    let store = plain.with_table_log(Arc::new(DeltaTables::default()));
    assert_eq!(totals(&store), vec![1.0, 5.0]);
    let at_1 =
        f.rt.block_on(store.files_at("spend", "1.0.0", Some(1)))
            .expect("version 1");
    assert_eq!(at_1.table_version, Some(1));
    assert_eq!(
        at_1.files,
        vec![
            format!("{}/year=2024/month=01/day=01/hour=00/part-a.parquet", f.rel),
            format!("{}/year=2024/month=01/day=01/hour=01/part-a.parquet", f.rel),
        ]
    );
    assert_eq!(
        f.rt.block_on(store.files_at("spend", "1.0.0", None))
            .unwrap()
            .table_version,
        Some(2)
    );
    let err =
        f.rt.block_on(store.files_at("spend", "1.0.0", Some(7)))
            .expect_err("no version 7");
    // The store names the table; the cause, from the table format, says why.
    let err = lockstep_core::ErrorChain(&err).to_string();
    assert!(
        err.contains("has no version 7 (its versions are 0 to 2)"),
        "{err}"
    );
    let files =
        f.rt.block_on(store.files_at("spend", "1.0.0", Some(2)))
            .unwrap();
    assert_eq!(files.files.len(), 2);
}
