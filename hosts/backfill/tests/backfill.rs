//! The backfill sequence against a real offline store on disk, with the real
//! `txn_velocity` component: what becomes visible, what is refused, and that the
//! writer lock goes however the job ends.

use lockstep_backfill::{Backfill, BackfillError, BackfillOptions, TableFormat};
use lockstep_batch::{BatchJob, SourceFormat};
use lockstep_offline::{OfflineError, OfflineStore};
use lockstep_runtime::{Plugin, Runtime, RuntimeConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The built `txn_velocity` component: its path and a loaded plugin.
fn plugin() -> &'static (PathBuf, Plugin) {
    static BUILT: OnceLock<(PathBuf, Plugin)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/txn_velocity");
        let built = lockstep_build::build(&dir, &Default::default()).expect("build plugin");
        let plugin = Runtime::new(RuntimeConfig::default())
            .expect("runtime")
            .load_file(&built.path)
            .expect("load");
        (built.path, plugin)
    })
}

/// `n` generated transactions, then `bad` lines the plugin's schema refuses.
fn events(dir: &Path, n: usize, bad: usize) -> PathBuf {
    let mut text = lockstep_gen::transactions(n, 20, 7).to_json_lines();
    for i in 0..bad {
        text.push_str(&format!(
            "{{\"card_id\":\"card-bad\",\"ts\":\"not a time {i}\",\"amount\":1.0,\"merchant\":\"m\",\"txn_id\":\"bad-{i}\"}}\n"
        ));
    }
    let path = dir.join("events.jsonl");
    std::fs::write(&path, text).expect("events");
    path
}

fn job(events: &Path) -> BatchJob {
    BatchJob {
        partitions: 2,
        ..BatchJob::new(
            plugin().0.to_string_lossy(),
            events.to_string_lossy(),
            SourceFormat::Json,
        )
    }
}

fn store(dir: &Path) -> OfflineStore {
    OfflineStore::open(dir.join("store"))
        .expect("store")
        .with_table_log(Arc::new(lockstep_delta::DeltaTables::default()))
}

fn lock_file(dir: &Path) -> PathBuf {
    dir.join("store/txn_velocity/_lockstep/locks/1.0.0.lock")
}

/// Whether no version of the group is bound in `store`.
async fn no_version_bound(store: &OfflineStore) -> bool {
    store
        .versions("txn_velocity")
        .await
        .expect("versions")
        .is_empty()
}

/// A job that failed gave the lock back and bound no version.
async fn assert_nothing_written(dir: &Path, store: &OfflineStore) {
    assert!(!lock_file(dir).exists(), "the lock is given back");
    assert!(no_version_bound(store).await, "nothing written");
}

fn rows(batches: &[arrow_array::RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_commits_every_row_once_and_gives_the_lock_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, events) = (store(dir.path()), events(dir.path(), 2_000, 0));
    let plugin = &plugin().1;
    let options = BackfillOptions::new(TableFormat::Plain, "a test backfill");
    let prepared = Backfill::prepare(&store, plugin, options.clone(), 1)
        .await
        .expect("prepare");
    assert!(lock_file(dir.path()).is_file(), "held from the start");
    assert!(
        no_version_bound(&store).await,
        "not bound before the commit"
    );
    let ran = prepared.run(&job(&events)).await.expect("run");
    assert!(ran.output().rejects.is_empty());
    let report = ran.commit().await.expect("commit");
    assert!(!lock_file(dir.path()).exists(), "released at the commit");
    let stored = store.read("txn_velocity", "1.0.0").await.expect("read");
    assert_eq!(rows(&stored), report.written.rows);
    assert_eq!(
        report.written.rows as u64,
        report.output.stats.rows_out as u64
    );
    assert_eq!(report.group.plugin_hash, plugin.hash());

    // A re-run replaces the same hours: the same rows, not twice as many.
    let again = Backfill::prepare(&store, plugin, options, 2)
        .await
        .expect("prepare again")
        .run(&job(&events))
        .await
        .expect("run again")
        .commit()
        .await
        .expect("commit again");
    assert_eq!(again.written.rows, report.written.rows);
    let stored = store.read("txn_velocity", "1.0.0").await.expect("read");
    assert_eq!(rows(&stored), report.written.rows);
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_fail_the_job_unless_kept_and_a_failed_job_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, events) = (store(dir.path()), events(dir.path(), 500, 3));
    let plugin = &plugin().1;
    let options = BackfillOptions::new(TableFormat::Plain, "a test backfill");
    let err = Backfill::prepare(&store, plugin, options.clone(), 1)
        .await
        .expect("prepare")
        .run(&job(&events))
        .await
        .expect_err("3 bad lines");
    let text = err.to_string();
    assert!(
        matches!(err, BackfillError::Rejected { rejects: 3, .. })
            && text.contains("column `ts`")
            && text.contains("nothing was written"),
        "{text}"
    );
    assert_nothing_written(dir.path(), &store).await;
    assert!(!dir.path().join("store/txn_velocity/version=1.0.0").exists());

    let kept = BackfillOptions {
        keep_rejects: true,
        ..options
    };
    let ran = Backfill::prepare(&store, plugin, kept, 1)
        .await
        .expect("prepare")
        .run(&job(&events))
        .await
        .expect("run keeping rejects");
    assert_eq!(ran.output().rejects.len(), 3);
    let report = ran.commit().await.expect("commit");
    assert!(report.written.rows > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_job_is_refused_while_the_first_holds_the_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    let plugin = &plugin().1;
    let first = Backfill::prepare(
        &store,
        plugin,
        BackfillOptions::new(TableFormat::Plain, "job one"),
        1,
    )
    .await
    .expect("first");
    let err = Backfill::prepare(
        &store,
        plugin,
        BackfillOptions::new(TableFormat::Plain, "job two"),
        1,
    )
    .await
    .expect_err("held");
    assert!(
        matches!(&err, BackfillError::Offline(OfflineError::Locked { holder, .. }) if holder.contains("job one")),
        "{err:?}"
    );
    first.release().await;
    Backfill::prepare(
        &store,
        plugin,
        BackfillOptions::new(TableFormat::Plain, "job two"),
        1,
    )
    .await
    .expect("free after a release");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_stays_in_the_layout_it_was_first_written_in() {
    let plugin = &plugin().1;
    for (first, then) in [
        (TableFormat::Delta, TableFormat::Plain),
        (TableFormat::Plain, TableFormat::Delta),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, events) = (store(dir.path()), events(dir.path(), 300, 0));
        let report = Backfill::prepare(&store, plugin, BackfillOptions::new(first, "first"), 1)
            .await
            .expect("prepare")
            .run(&job(&events))
            .await
            .expect("run")
            .commit()
            .await
            .expect("commit");
        assert_eq!(report.delta.is_some(), first == TableFormat::Delta);
        let err = Backfill::prepare(&store, plugin, BackfillOptions::new(then, "then"), 2)
            .await
            .expect_err("the other layout");
        let expected = match first {
            TableFormat::Delta => "is kept as a Delta table: write it with --table-format delta",
            TableFormat::Plain => "already holds plain-layout hours",
        };
        assert!(err.to_string().contains(expected), "{err}");
    }
}

/// On S3 the lock is an object: a job that fails gives it back, and so does a job
/// dropped before it ran (its lock is deleted by a task on the runtime), so the next
/// job starts at once instead of waiting for the lock to expire. Nothing staged or
/// journalled is left behind either.
#[tokio::test(flavor = "multi_thread")]
async fn on_s3_a_failed_or_abandoned_job_gives_the_lock_back() {
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
    let keys = || {
        moto.boto3(
            "r = client('s3').list_objects_v2(Bucket='features', Prefix='offline/')\n\
             print('\\n'.join(o['Key'] for o in r.get('Contents', [])))",
        )
    };
    let lock_key = "offline/txn_velocity/_lockstep/locks/1.0.0.lock";
    let dir = tempfile::tempdir().expect("tempdir");
    let events = events(dir.path(), 500, 3);
    let plugin = &plugin().1;
    let options = BackfillOptions::new(TableFormat::Plain, "a test backfill");

    let prepared = Backfill::prepare(&store, plugin, options.clone(), 1)
        .await
        .expect("prepare");
    assert!(
        keys().lines().any(|k| k == lock_key),
        "the job holds the lock"
    );
    let err = prepared.run(&job(&events)).await.expect_err("3 bad lines");
    assert!(
        matches!(err, BackfillError::Rejected { rejects: 3, .. }),
        "{err}"
    );
    let left = keys();
    assert!(
        !left.lines().any(|k| k.contains("/_lockstep/locks/")
            || k.contains("/_lockstep/journal/")
            || k.contains("/.tmp-")
            || k.ends_with(".parquet")),
        "a failed job leaves nothing: {left}"
    );

    // Abandoned between prepare and run: the lock goes with the job.
    let abandoned = Backfill::prepare(&store, plugin, options.clone(), 2)
        .await
        .expect("prepare after a failed job: the lock was given back");
    drop(abandoned);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while keys().lines().any(|k| k == lock_key) {
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned job's lock is still there after 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let next = Backfill::prepare(&store, plugin, options, 3)
        .await
        .expect("a third job starts at once");
    drop(next);
}

/// Every stored row as JSON text, without the columns a write stamps, sorted.
async fn stored_rows(store: &OfflineStore) -> Vec<String> {
    let mut out = Vec::new();
    for batch in store.read("txn_velocity", "1.0.0").await.expect("read") {
        for row in 0..batch.num_rows() {
            let mut json = lockstep_core::rows::row_json(&batch, row);
            json.remove("write_time");
            json.remove("api_invocation_time");
            out.push(serde_json::Value::Object(json).to_string());
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_honours_the_erasure_ledger_as_if_the_erased_events_were_never_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = events(dir.path(), 3_000, 0);
    let text = std::fs::read_to_string(&events).expect("events");
    let key_time = |l: &str| {
        let v: serde_json::Value = serde_json::from_str(l).expect("json");
        (
            v["card_id"].as_str().unwrap_or("").to_owned(),
            v["ts"].as_i64().unwrap_or(0),
        )
    };
    let mut times: Vec<i64> = text.lines().map(|l| key_time(l).1).collect();
    times.sort();
    // Erased halfway through its history: a card's later events are a new life.
    let at = times[times.len() / 2];
    let erased = key_time(text.lines().next().expect("a line")).0;

    let ledger_dir = dir.path().join("ledger");
    let ledger = Arc::new(
        lockstep_erasure::Ledger::open(
            ledger_dir.to_str().expect("utf-8"),
            &lockstep_aws::AwsOptions::default(),
        )
        .expect("ledger"),
    );
    ledger
        .record(
            &lockstep_erasure::Erasure::new(
                "txn_velocity",
                None,
                vec![erased.clone()],
                at,
                "",
                "t",
            )
            .expect("erasure"),
        )
        .await
        .expect("record");
    let plugin = &plugin().1;
    let store_a = OfflineStore::open(dir.path().join("a")).expect("store");
    let report = Backfill::prepare(
        &store_a,
        plugin,
        BackfillOptions {
            ledger: Some(ledger),
            ..BackfillOptions::new(TableFormat::Plain, "erasing")
        },
        1,
    )
    .await
    .expect("prepare")
    .run(&job(&events))
    .await
    .expect("run")
    .commit()
    .await
    .expect("commit");
    let dropped = text
        .lines()
        .map(key_time)
        .filter(|(k, t)| *k == erased && *t <= at)
        .count();
    assert!(dropped > 0);
    assert_eq!(report.output.erased, dropped as u64);

    // The same job over the events without the erased ones.
    let kept: String = text
        .lines()
        .filter(|l| {
            let (k, t) = key_time(l);
            !(k == erased && t <= at)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let kept_path = dir.path().join("kept.jsonl");
    std::fs::write(&kept_path, kept).expect("write");
    let store_b = OfflineStore::open(dir.path().join("b")).expect("store");
    Backfill::prepare(
        &store_b,
        plugin,
        BackfillOptions::new(TableFormat::Plain, "reference"),
        1,
    )
    .await
    .expect("prepare")
    .run(&job(&kept_path))
    .await
    .expect("run")
    .commit()
    .await
    .expect("commit");
    assert_eq!(stored_rows(&store_a).await, stored_rows(&store_b).await);

    // A ledger that cannot be read stops the job before anything is written.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).expect("mkdir");
    std::fs::write(broken.join("0-x.jsonl"), "not a ledger entry\n").expect("write");
    let err = Backfill::prepare(
        &OfflineStore::open(dir.path().join("c")).expect("store"),
        plugin,
        BackfillOptions {
            ledger: Some(Arc::new(
                lockstep_erasure::Ledger::open(
                    broken.to_str().expect("utf-8"),
                    &lockstep_aws::AwsOptions::default(),
                )
                .expect("ledger"),
            )),
            ..BackfillOptions::new(TableFormat::Plain, "broken ledger")
        },
        1,
    )
    .await
    .expect("prepare")
    .run(&job(&events))
    .await
    .expect_err("an unreadable ledger");
    assert!(matches!(err, BackfillError::Erasures(_)), "{err}");
    assert!(
        !dir.path()
            .join("c/txn_velocity/_lockstep/locks/1.0.0.lock")
            .exists()
    );
}

const HOUR: i64 = 3_600_000_000;

/// Every stored row of `store` as (event time, JSON text with its write time), sorted.
async fn stored_with_times(store: &OfflineStore) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    for batch in store.read("txn_velocity", "1.0.0").await.expect("read") {
        let times = arrow_array::cast::AsArray::as_primitive::<
            arrow_array::types::TimestampMicrosecondType,
        >(batch.column_by_name("event_time").expect("event_time"))
        .clone();
        for row in 0..batch.num_rows() {
            let json = lockstep_core::rows::row_json(&batch, row);
            out.push((
                times.value(row),
                serde_json::Value::Object(json).to_string(),
            ));
        }
    }
    out.sort();
    out
}

/// Rows of `rows` inside (or outside) `[from, to)`, the write-time columns dropped
/// when `stamped` is false.
fn select(rows: &[(i64, String)], from: i64, to: i64, inside: bool, stamped: bool) -> Vec<String> {
    let mut out: Vec<String> = rows
        .iter()
        .filter(|(t, _)| (from <= *t && *t < to) == inside)
        .map(|(_, json)| {
            if stamped {
                return json.clone();
            }
            let mut v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(json).expect("json");
            v.remove("write_time");
            v.remove("api_invocation_time");
            serde_json::Value::Object(v).to_string()
        })
        .collect();
    out.sort();
    out
}

async fn backfill(
    store: &OfflineStore,
    format: TableFormat,
    job: &BatchJob,
    now: i64,
) -> Result<lockstep_backfill::Report, BackfillError> {
    let ran = Backfill::prepare(
        store,
        &plugin().1,
        BackfillOptions::new(format, "window"),
        now,
    )
    .await?
    .run(job)
    .await?;
    ran.commit().await
}

/// A backfill over `[from, to)` of a store whose history was written from other
/// events: inside the window it holds exactly the full run's rows over the true
/// events (timer rows too, with each entity's state from the history before `from`,
/// and an hour whose events are gone emptied), and outside it what it held before,
/// untouched (write times and all). Both layouts.
#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_over_a_window_replaces_exactly_its_hours_with_the_full_runs_rows() {
    for format in [TableFormat::Plain, TableFormat::Delta] {
        let dir = tempfile::tempdir().expect("tempdir");
        let generated = lockstep_gen::transactions(3_000, 20, 11).to_json_lines();
        let ts = |line: &str| -> i64 {
            serde_json::from_str::<serde_json::Value>(line).expect("json")["ts"]
                .as_i64()
                .expect("ts")
        };
        let mut times: Vec<i64> = generated.lines().map(ts).collect();
        times.sort();
        let floor = |t: i64| t.div_euclid(HOUR) * HOUR;
        let (from, to) = (
            floor(times[times.len() / 3]),
            floor(times[2 * times.len() / 3]),
        );
        // The truth has no event in one hour of the window; the history first written
        // was computed from events with that hour and other amounts in the window.
        let gone = floor(times[times.len() / 2]);
        let truth: String = generated
            .lines()
            .filter(|l| floor(ts(l)) != gone)
            .map(|l| format!("{l}\n"))
            .collect();
        let first: String = generated
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).expect("json");
                if (from..to).contains(&ts(l)) {
                    v["amount"] = serde_json::json!(v["amount"].as_f64().unwrap_or(0.0) * 3.0);
                }
                format!("{v}\n")
            })
            .collect();
        let (truth_path, first_path) = (
            dir.path().join("truth.jsonl"),
            dir.path().join("first.jsonl"),
        );
        std::fs::write(&truth_path, truth).expect("write");
        std::fs::write(&first_path, first).expect("write");

        let reference = store(&dir.path().join("reference"));
        backfill(&reference, format, &job(&truth_path), 1)
            .await
            .expect("reference");
        let store = store(dir.path());
        backfill(&store, format, &job(&first_path), 1)
            .await
            .expect("first history");
        let before = stored_with_times(&store).await;
        assert!(
            before.iter().any(|(t, _)| floor(*t) == gone),
            "the first history has rows in the hour that is gone"
        );

        let windowed = BatchJob {
            window: lockstep_batch::TimeWindow {
                from: Some(from),
                to: Some(to),
            },
            ..job(&truth_path)
        };
        let report = backfill(&store, format, &windowed, 2)
            .await
            .expect("window");
        let after = stored_with_times(&store).await;
        let expected = select(&stored_with_times(&reference).await, from, to, true, false);
        assert!(
            expected.len() > 100,
            "{} rows in the window",
            expected.len()
        );
        assert_eq!(
            select(&after, from, to, true, false),
            expected,
            "{format:?}: the window holds the full run's rows"
        );
        assert_eq!(report.written.rows, expected.len());
        assert_eq!(
            select(&after, from, to, false, true),
            select(&before, from, to, false, true),
            "{format:?}: outside the window nothing changed"
        );
        // The hour whose events are gone holds what the full run puts there (wake-up
        // rows at most), not the rows the first history's events made.
        let in_gone = |rows: &[(i64, String)]| select(rows, gone, gone + HOUR, true, false);
        assert_eq!(
            in_gone(&after),
            in_gone(&stored_with_times(&reference).await),
            "{format:?}"
        );
        assert_ne!(
            in_gone(&before),
            in_gone(&after),
            "{format:?}: the hour changed"
        );
        let progress = &windowed.progress;
        let left_out = progress
            .after_window
            .load(std::sync::atomic::Ordering::Relaxed);
        let computed = progress
            .before_window
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            left_out as usize,
            std::fs::read_to_string(&truth_path)
                .expect("truth")
                .lines()
                .filter(|l| ts(l) >= to)
                .count(),
            "{format:?}: every event at or after --to left out, and only those"
        );
        assert!(
            computed > 0,
            "{format:?}: the history before --from was run"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_window_off_the_hour_or_empty_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, events) = (store(dir.path()), events(dir.path(), 200, 0));
    let at = 1_704_067_200_000_000; // 2024-01-01T00:00:00Z
    for (window, says) in [
        (
            (Some(at + 1), None),
            "--from 2024-01-01T00:00:00.000001Z is not on the hour",
        ),
        (
            (None, Some(at + HOUR / 2)),
            "--to 2024-01-01T00:30:00.000000Z is not on the hour",
        ),
        ((Some(at + HOUR), Some(at)), "is empty"),
        ((Some(at), Some(at)), "is empty"),
    ] {
        let job = BatchJob {
            window: lockstep_batch::TimeWindow {
                from: window.0,
                to: window.1,
            },
            ..job(&events)
        };
        let err = backfill(&store, TableFormat::Plain, &job, 1)
            .await
            .expect_err("refused");
        assert!(err.to_string().contains(says), "{err}");
        assert_nothing_written(dir.path(), &store).await;
    }
}
