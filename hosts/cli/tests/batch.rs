//! `lockstep batch run` as an operator runs it: real files, re-runs, a different plugin,
//! bad rows, and a process killed half way.

use lockstep_offline::OfflineStore;
mod common;

use common::{lockstep, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

fn velocity() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/txn_velocity");
        lockstep_build::build(&dir, &Default::default())
            .expect("build")
            .path
    })
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn generate(dir: &Path, rows: usize) -> PathBuf {
    let events = dir.join("events.jsonl");
    let out = lockstep(&[
        "gen",
        "events",
        "--kind",
        "transactions",
        "--rows",
        &rows.to_string(),
        "--entities",
        "200",
        "--seed",
        "5",
        "--out",
        s(&events),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    events
}

fn stored_rows(store: &Path) -> usize {
    let store = OfflineStore::open(store).expect("open");
    store
        .read("txn_velocity", "1.0.0")
        .expect("read")
        .iter()
        .map(|b| b.num_rows())
        .sum()
}

fn backfill(events: &Path, store: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "batch",
        "run",
        "--plugin",
        s(velocity()),
        "--source",
        s(events),
        "--offline-store",
        s(store),
        "--no-cache",
    ];
    args.extend_from_slice(extra);
    lockstep(&args)
}

#[test]
fn a_rerun_leaves_the_same_rows_and_the_state_snapshot_is_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = generate(dir.path(), 3_000);
    let store = dir.path().join("store");
    let state = dir.path().join("state.parquet");
    let first = backfill(
        &events,
        &store,
        &["--state-out", s(&state), "--partitions", "3"],
    );
    assert!(first.status.success(), "{}", text(&first.stderr));
    let summary = text(&first.stdout);
    assert!(
        summary.contains("backfilled txn_velocity@1.0.0") && summary.contains("hour partitions"),
        "{summary}"
    );
    let rows = stored_rows(&store);
    assert!(rows > 2_900 && rows < 3_000, "duplicates dropped: {rows}");
    let again = backfill(&events, &store, &["--partitions", "1"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(
        stored_rows(&store),
        rows,
        "a re-run replaces, never duplicates"
    );
    let (info, states) = lockstep_offline::snapshot::read_states(&state).expect("snapshot");
    assert_eq!(
        (info.group.as_str(), info.state_version),
        ("txn_velocity", 1)
    );
    assert_eq!(states.len(), 200);
}

#[test]
fn another_plugin_cannot_write_into_a_registered_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = generate(dir.path(), 300);
    let store = dir.path().join("store");
    assert!(backfill(&events, &store, &[]).status.success());
    // The same transform plus one custom section: a different component, a different hash.
    let mut bytes = std::fs::read(velocity()).expect("read");
    bytes.extend_from_slice(&[0x00, 0x05, 0x04, b'n', b'o', b't', b'e']);
    let other = dir.path().join("other.wasm");
    std::fs::write(&other, bytes).expect("write");
    let out = lockstep(&[
        "batch",
        "run",
        "--plugin",
        s(&other),
        "--source",
        s(&events),
        "--offline-store",
        s(&store),
        "--no-cache",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("txn_velocity@1.0.0 is registered with plugin")
            && err.contains("bump the version"),
        "{err}"
    );
}

#[test]
fn bad_rows_stop_the_job_unless_a_rejects_file_is_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("events.csv");
    std::fs::write(&csv, "card_id,ts,amount,merchant\nc1,2024-01-01T00:00:00Z,1.5,m\nc1,not-a-time,2.5,m\n,2024-01-01T00:00:02Z,3,m\n").expect("csv");
    let store = dir.path().join("store");
    let out = backfill(&csv, &store, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("2 source rows could not be read") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(stored_rows(&store), 0, "nothing written");
    let rejects = dir.path().join("rejects.jsonl");
    let out = backfill(&csv, &store, &["--rejects", s(&rejects)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&rejects)
            .expect("rejects")
            .lines()
            .count(),
        2
    );
    assert_eq!(stored_rows(&store), 1);
}

#[test]
fn a_job_killed_at_any_point_leaves_only_whole_partitions_and_a_rerun_completes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = generate(dir.path(), 60_000);
    let reference = dir.path().join("reference");
    assert!(backfill(&events, &reference, &[]).status.success());
    let expected = stored_rows(&reference);
    let store = dir.path().join("store");
    for delay_ms in [300u64, 900, 1_600] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lockstep"))
            .args([
                "batch",
                "run",
                "--plugin",
                s(velocity()),
                "--source",
                s(&events),
                "--offline-store",
                s(&store),
                "--no-cache",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL: no cleanup runs
        let _ = child.wait();
        // Whatever was visible must be whole: every partition file reads completely.
        if store.join("txn_velocity").exists() {
            let visible = stored_rows(&store);
            assert!(
                visible <= expected,
                "killed after {delay_ms} ms: {visible} > {expected}"
            );
        }
    }
    assert!(backfill(&events, &store, &[]).status.success());
    assert_eq!(
        stored_rows(&store),
        expected,
        "the re-run completes the store exactly"
    );
}

/// Stored rows as JSON lines without the write stamps, which differ between runs.
fn stored_json(store: &Path) -> Vec<String> {
    let store = OfflineStore::open(store).expect("open");
    let mut lines = Vec::new();
    for batch in store.read("txn_velocity", "1.0.0").expect("read") {
        for row in 0..batch.num_rows() {
            let mut json = lockstep_core::rows::row_json(&batch, row);
            json.remove("write_time");
            json.remove("api_invocation_time");
            lines.push(serde_json::Value::Object(json).to_string());
        }
    }
    lines
}

#[test]
fn a_memory_limit_stages_rows_on_disk_and_stores_the_same_rows_in_the_same_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = generate(dir.path(), 80_000);
    let free = dir.path().join("free");
    let out = backfill(&events, &free, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let limited = dir.path().join("limited");
    let out = backfill(&events, &limited, &["--memory-limit", "12MiB"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(summary.contains("rows staged on disk"), "{summary}");
    assert!(summary.contains("peak RSS"), "{summary}");
    let (a, b) = (stored_json(&free), stored_json(&limited));
    assert_eq!(a.len(), 80_000 - duplicates(&events));
    assert!(
        a == b,
        "the same rows, in the same order, with and without a limit"
    );
}

/// Transactions whose id appeared earlier in the file.
fn duplicates(events: &Path) -> usize {
    let text = std::fs::read_to_string(events).expect("events");
    let mut seen = std::collections::HashSet::new();
    text.lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            !seen.insert(v["txn_id"].as_str().expect("txn_id").to_owned())
        })
        .count()
}
