//! The `lockstep` binary as a user meets it: real processes, real files, bad input.

mod common;

use common::{lockstep, text};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

/// Built once per test process through the CLI itself.
fn velocity() -> &'static (PathBuf, String) {
    static BUILT: OnceLock<(PathBuf, String)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/txn_velocity");
        let out = lockstep(&["plugin", "build", dir.to_str().expect("utf-8 path")]);
        assert!(out.status.success(), "build failed: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let mut lines = stdout.lines();
        let path = PathBuf::from(lines.next().expect("path line"));
        let hash = lines
            .next()
            .and_then(|l| l.strip_prefix("sha256 "))
            .expect("hash line")
            .to_owned();
        (path, hash)
    })
}

fn run_events(events: &str, extra: &[&str]) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, events).expect("write events");
    let (wasm, _) = velocity();
    let mut args = vec![
        "plugin",
        "run",
        wasm.to_str().expect("path"),
        "--events",
        file.to_str().expect("path"),
        "--no-cache",
    ];
    args.extend_from_slice(extra);
    (lockstep(&args), dir)
}

const GOOD: &str = r#"{"card_id":"c1","ts":"2024-01-01T00:00:00Z","amount":10.5,"merchant":"m1","txn_id":"t1"}
{"card_id":"c1","ts":"2024-01-01T00:10:00Z","amount":4.5,"merchant":"m2","txn_id":"t2"}
{"card_id":"c1","ts":"2024-01-01T00:10:00Z","amount":4.5,"merchant":"m2","txn_id":"t2"}
"#;

#[test]
fn run_prints_one_json_row_per_applied_event() {
    let (out, _dir) = run_events(GOOD, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json row"))
        .collect();
    assert_eq!(rows.len(), 2, "the redelivered t2 is applied once");
    assert_eq!(rows[1]["txn_count_1h"], 2);
    assert_eq!(rows[1]["txn_sum_1h"], 15.0);
    assert_eq!(rows[1]["event_time"], "2024-01-01T00:10:00.000000Z");
    assert_eq!(rows[1]["secs_since_prev_txn"], 600.0);
    let keys: Vec<&String> = rows[0].as_object().expect("object").keys().collect();
    assert_eq!(
        keys[..3],
        ["card_id", "event_time", "txn_count_1h"],
        "columns in schema order"
    );
    assert!(
        text(&out.stderr).contains("1 duplicates dropped"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn malformed_json_names_the_line() {
    let (out, _dir) = run_events(&format!("{GOOD}{{\"card_id\": \"c1\", \"ts\": \n"), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("line 4: malformed JSON"), "{err}");
    assert!(out.stdout.is_empty(), "nothing is printed for a failed run");
}

#[test]
fn wrong_types_and_missing_fields_name_line_and_field() {
    let cases = [
        (
            r#"{"card_id":"c1","ts":1,"amount":"ten","merchant":"m"}"#,
            "line 1, field `amount`: expected float64, got string \"ten\"",
        ),
        (
            r#"{"card_id":7,"ts":1,"amount":1,"merchant":"m"}"#,
            "line 1, field `card_id`: expected string, got number 7",
        ),
        (
            r#"{"card_id":"c","ts":"yesterday","amount":1,"merchant":"m"}"#,
            "line 1, field `ts`",
        ),
        (
            r#"{"card_id":"c","amount":1,"merchant":"m"}"#,
            "line 1, field `ts`: is required but missing or null",
        ),
        (
            r#"{"card_id":null,"ts":1,"amount":1,"merchant":"m"}"#,
            "field `card_id`: is required",
        ),
    ];
    for (line, expected) in cases {
        let (out, _dir) = run_events(line, &[]);
        assert_eq!(out.status.code(), Some(1), "{line}");
        let err = text(&out.stderr);
        assert!(
            err.contains(expected),
            "`{err}` should contain `{expected}`"
        );
    }
}

#[test]
fn rejects_file_keeps_good_rows_and_records_every_bad_one() {
    let events = format!(
        "{GOOD}not json\n{{\"card_id\":\"c2\",\"ts\":5,\"amount\":null,\"merchant\":\"m\"}}\n"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let rejects = dir.path().join("rejects.jsonl");
    let (out, _events) = run_events(&events, &["--rejects", rejects.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 2);
    let bad: Vec<serde_json::Value> = std::fs::read_to_string(&rejects)
        .expect("rejects written")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(bad.len(), 2);
    assert_eq!(
        (bad[0]["line"].as_u64(), bad[0]["record"].as_str()),
        (Some(4), Some("not json"))
    );
    assert_eq!(
        (bad[1]["line"].as_u64(), bad[1]["field"].as_str()),
        (Some(5), Some("amount"))
    );
    assert!(
        text(&out.stderr).contains("2 rejected"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn empty_input_and_non_plugins_are_errors() {
    let (out, _dir) = run_events("\n\n", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("holds no events"),
        "{}",
        text(&out.stderr)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("fake.wasm");
    std::fs::write(&fake, b"definitely not wasm").expect("write");
    let out = lockstep(&[
        "plugin",
        "inspect",
        fake.to_str().expect("path"),
        "--no-cache",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not a Lockstep plugin"),
        "{}",
        text(&out.stderr)
    );

    let out = lockstep(&["plugin", "build", dir.path().to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is not a crate directory"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn inspect_json_reports_the_built_hash_and_manifest() {
    let (wasm, hash) = velocity();
    let out = lockstep(&[
        "plugin",
        "inspect",
        wasm.to_str().expect("path"),
        "--json",
        "--no-cache",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["sha256"].as_str(), Some(hash.as_str()));
    assert_eq!(doc["manifest"]["name"], "txn_velocity");
    assert_eq!(
        doc["manifest"]["features"].as_array().map(Vec::len),
        Some(14)
    );
    let imports = doc["imports"].as_array().expect("imports");
    assert!(
        imports
            .iter()
            .all(|i| !i.as_str().unwrap_or("").starts_with("wasi:clocks"))
    );
}

#[test]
fn generated_events_run_and_malformed_ones_are_all_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("events.jsonl");
    let out = lockstep(&[
        "gen",
        "events",
        "--kind",
        "transactions",
        "--rows",
        "500",
        "--entities",
        "20",
        "--seed",
        "4",
        "--malformed",
        "7",
        "--out",
        events.to_str().expect("path"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rejects = dir.path().join("rejects.jsonl");
    let (wasm, _) = velocity();
    let run = lockstep(&[
        "plugin",
        "run",
        wasm.to_str().expect("path"),
        "--events",
        events.to_str().expect("path"),
        "--rejects",
        rejects.to_str().expect("path"),
        "--no-cache",
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let rejected = std::fs::read_to_string(&rejects)
        .expect("rejects")
        .lines()
        .count();
    assert_eq!(
        rejected, 7,
        "every malformed row is rejected, none silently dropped"
    );
    let summary = text(&run.stderr);
    assert!(
        summary.contains("500 events in") && summary.contains("7 rejected"),
        "{summary}"
    );
}

#[test]
fn the_demo_backfills_streams_checks_skew_and_reads_entities_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(["demo", "--events", "3000"])
        .env("TMPDIR", tmp.path())
        .output()
        .expect("run the demo");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for plugin in ["txn_velocity", "churn_features", "clickstream_clean"] {
        assert!(stdout.contains(&format!("▸ {plugin}@")), "{stdout}");
    }
    assert_eq!(stdout.matches("batch = stream ✓").count(), 3, "{stdout}");
    assert_eq!(stdout.matches("  read back ").count(), 6, "{stdout}");
    assert!(stdout.contains("Zero skew:"), "{stdout}");
    assert!(
        stdout.contains("▸ serving  POST http://127.0.0.1:"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("    store    plugin ").count(),
        2,
        "{stdout}"
    );
    assert!(
        stdout.contains("card-nobody    missing  (defaults)"),
        "{stdout}"
    );
    let work = tmp.path().join("lockstep-demo");
    assert!(work.join("online-store/online.redb").is_file());
    assert!(work.join("offline-store/txn_velocity").is_dir());
}

#[test]
fn a_reader_that_stops_early_ends_the_output_quietly() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(["gen", "events", "--kind", "clicks", "--rows", "200000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut first = String::new();
    {
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout).read_line(&mut first).expect("read");
        // The reader goes away here, as `| head -n 1` does.
    }
    let out = child.wait_with_output().expect("wait");
    assert!(first.starts_with('{'), "{first}");
    assert!(out.status.success(), "{:?}", out.status);
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
}
