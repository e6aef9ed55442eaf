//! `lockstep training-set` against DuckDB's ASOF JOIN on the same files: a group the
//! batch host wrote from generated transactions, and a second group with deletion
//! markers, strict and inclusive, with and without a TTL, with a memory limit that
//! makes the sorts spill.

mod common;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_array::{TimestampMicrosecondArray, cast::AsArray, types::TimestampMicrosecondType};
use common::{lockstep, plugin, repo, s, text};
use lockstep_offline::{OfflineStore, WriterOptions};
use lockstep_sdk::{Manifest, ManifestBuilder, Value, ValueType};
use serde_json::Value as Json;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

fn flags_manifest() -> Manifest {
    ManifestBuilder::new("card_flags", "1.0.0")
        .keyed_stateful(1)
        .field("card_id", ValueType::String, "")
        .field("ts", ValueType::Timestamp, "")
        .entity_key("card_id")
        .event_time("ts")
        .feature("flag_score", ValueType::Float64, "", Value::Null)
        .feature("flags", ValueType::Int64, "", Value::Null)
        .build()
}

/// A second group over the same cards: a flag row 30 s after every third transaction
/// row, every seventh of them a deletion marker.
async fn write_flags(store: &OfflineStore) {
    let rows = store
        .read("txn_velocity", "1.0.0")
        .await
        .expect("read txn rows");
    let m = flags_manifest();
    let group = store.register(&m, "flags-hash", 0).await.expect("register");
    let mut writer = store.writer(&group, 1, WriterOptions::default());
    let mut n = 0i64;
    for batch in rows {
        let cards = batch.column(0).as_string::<i32>();
        let times = batch.column(1).as_primitive::<TimestampMicrosecondType>();
        for i in (0..batch.num_rows()).step_by(3) {
            n += 1;
            let columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from(vec![cards.value(i)])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![times.value(i) + 30_000_000])
                        .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from(vec![n as f64 * 0.25])),
                Arc::new(Int64Array::from(vec![n])),
            ];
            let b = RecordBatch::try_new(lockstep_core::schema::row_schema(&m), columns)
                .expect("flag row");
            if n % 7 == 0 {
                writer.write_deletions(&b).expect("deletion");
            } else {
                writer.write(&b).expect("row");
            }
        }
    }
    writer.commit().await.expect("commit flags");
}

fn python(args: &[&str]) -> std::process::Output {
    Command::new("python3")
        .arg(repo("tests/python/asof_check.py"))
        .args(args)
        .output()
        .expect("python3")
}

#[tokio::test(flavor = "multi_thread")]
async fn training_sets_equal_duckdb_asof_joins() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let store_dir = dir.path().join("store");
    let out = lockstep(&[
        "gen",
        "events",
        "--kind",
        "transactions",
        "--rows",
        "20000",
        "--entities",
        "300",
        "--seed",
        "11",
        "--out",
        s(&events),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = lockstep(&[
        "batch",
        "run",
        "--plugin",
        s(&plugin("txn_velocity")),
        "--source",
        s(&events),
        "--offline-store",
        s(&store_dir),
        "--no-cache",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let store = OfflineStore::open(&store_dir).unwrap();
    write_flags(&store).await;
    let velocity: Vec<String> = store
        .version("txn_velocity", "1.0.0")
        .await
        .unwrap()
        .manifest
        .features
        .iter()
        .map(|f| f.name.clone())
        .collect();
    assert!(velocity.len() > 5);

    let labels = dir.path().join("labels.parquet");
    let made = python(&[
        "labels",
        "--store",
        s(&store_dir),
        "--group",
        "txn_velocity@1.0.0",
        "--key",
        "card_id",
        "--out",
        s(&labels),
        "--n",
        "4000",
        "--seed",
        "3",
    ]);
    assert!(made.status.success(), "{}", text(&made.stderr));

    let some = [
        velocity[0].as_str(),
        velocity[3].as_str(),
        velocity[velocity.len() - 1].as_str(),
    ];
    let velocity_spec = format!("txn_velocity:{}", some.join(","));
    let check_velocity = format!("txn_velocity@1.0.0:card_id:{}", some.join(","));
    let cases: [(&str, &[&str], &[&str]); 3] = [
        ("strict", &[], &[]),
        (
            "inclusive-ttl",
            &["--inclusive", "--ttl", "2h"],
            &["--inclusive", "--ttl-us", "7200000000"],
        ),
        // A small memory limit makes the sorts spill; the rows must not change.
        (
            "spilling",
            &["--memory-limit", "16MiB", "--partitions", "2"],
            &[],
        ),
    ];
    for (name, ours_args, check_args) in cases {
        let output = dir.path().join(format!("{name}.parquet"));
        let mut args = vec![
            "training-set",
            "--labels",
            s(&labels),
            "--group",
            &velocity_spec,
            "--group",
            "card_flags",
            "--offline-store",
            s(&store_dir),
            "--out",
            s(&output),
        ];
        args.extend_from_slice(ours_args);
        let run = lockstep(&args);
        assert!(run.status.success(), "{name}: {}", text(&run.stderr));
        let printed = text(&run.stdout);
        assert!(
            printed.contains("wrote 4005 label rows"),
            "{name}: {printed}"
        );
        assert_eq!(
            printed.contains("spilled"),
            name == "spilling",
            "{name}: {printed}"
        );

        let mut check = vec![
            "check",
            "--store",
            s(&store_dir),
            "--labels",
            s(&labels),
            "--ours",
            s(&output),
            "--group",
            &check_velocity,
            "--group",
            "card_flags@1.0.0:card_id:flag_score,flags",
        ];
        check.extend_from_slice(check_args);
        let checked = python(&check);
        let report: Json = serde_json::from_slice(&checked.stdout).unwrap_or_else(|_| {
            panic!("{name}: {}{}", text(&checked.stdout), text(&checked.stderr))
        });
        assert!(
            checked.status.success(),
            "{name}: DuckDB disagrees: {report}"
        );
        assert_eq!(report["rows"], 4005, "{name}: {report}");
        // Not a vacuous agreement: most labels see a row, some do not.
        for group in ["txn_velocity", "card_flags"] {
            let matched = report["matched"][group].as_u64().unwrap();
            assert!(
                matched > 400 && matched < 4005,
                "{name}: {group} matched {matched}"
            );
        }
        let columns: Vec<&str> = report["columns"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c.as_str())
            .collect();
        assert_eq!(
            columns[..4],
            ["label_id", "card_id", "label_time", "outcome"]
        );
        assert_eq!(columns[4], format!("txn_velocity__{}", some[0]));
        assert_eq!(
            columns[7..],
            ["card_flags__flag_score", "card_flags__flags"]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_fail_clearly_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = OfflineStore::open(&store_dir).unwrap();
    store
        .register(&flags_manifest(), "flags-hash", 0)
        .await
        .unwrap();
    let labels = dir.path().join("labels.csv");
    std::fs::write(
        &labels,
        "card_id,label_time\ncard-1,2024-01-01T00:00:00Z\n,2024-01-01T00:00:00Z\n",
    )
    .unwrap();
    let output = dir.path().join("out.parquet");
    let run_into = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "training-set",
            "--labels",
            s(&labels),
            "--offline-store",
            s(&store_dir),
            "--out",
            s(out),
        ];
        args.extend_from_slice(extra);
        lockstep(&args)
    };
    let run = |extra: &[&str]| run_into(&output, extra);

    let out = run(&["--group", "txn_velocity"]);
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(
        e.contains("`txn_velocity` is not in the offline store") && e.contains("card_flags"),
        "{e}"
    );

    let out = run(&["--group", "card_flags:nope"]);
    assert!(
        text(&out.stderr).contains("no feature `nope`"),
        "{}",
        text(&out.stderr)
    );

    let out = run(&["--group", "card_flags"]);
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(
        e.contains("labels.csv, row 2") && e.contains("`card_id` is null"),
        "{e}"
    );

    let out = run(&["--group", "card_flags", "--ttl", "soon"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--ttl"), "{}", text(&out.stderr));

    // An output path that is a directory: the encoder's work is thrown away, cleanly.
    std::fs::write(&labels, "card_id,label_time\ncard-1,2024-01-01T00:00:00Z\n").unwrap();
    let taken = dir.path().join("taken.parquet");
    std::fs::create_dir(&taken).unwrap();
    let out = run_into(&taken, &["--group", "card_flags"]);
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(e.contains("taken.parquet"), "{e}");

    // Nothing half-written is left behind.
    assert!(!output.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Events for the order oracle: few instants, so many events of one card share one;
/// ids of mixed length and case, so their byte order is not their numeric order;
/// redeliveries (identical copies) and reused ids at other instants.
fn tied_events(seed: u64) -> String {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    let t0 = lockstep_gen::EPOCH_2024;
    let prefixes = ["t", "T", "t0", "é", "a-", "Z"];
    let mut lines: Vec<String> = Vec::new();
    // Originals: (card, instant, id, line).
    let mut made: Vec<(u64, i64, String, String)> = Vec::new();
    for n in 0..3_000u64 {
        let roll = next(100);
        if roll < 8 && !made.is_empty() {
            let (card, ts, id, line) = made[next(made.len() as u64) as usize].clone();
            if roll < 5 {
                // A redelivery: the same record again.
                lines.push(line);
            } else {
                // An id reused at a later instant: the earlier copy is applied.
                let later = ts + 600_000_000 * (1 + next(3) as i64);
                lines.push(format!(
                    r#"{{"card_id":"card-{card:02}","ts":{later},"amount":{}.0,"merchant":"m","txn_id":"{id}"}}"#,
                    1 + next(500)
                ));
            }
            continue;
        }
        let card = next(40);
        let ts = t0 + 600_000_000 * next(50) as i64;
        let prefix = prefixes[next(prefixes.len() as u64) as usize];
        // Unique (the suffix), ordered by a random prefix and number.
        let id = format!("{prefix}{}-{n}", next(100_000));
        let line = format!(
            r#"{{"card_id":"card-{card:02}","ts":{ts},"amount":{}.0,"merchant":"m","txn_id":"{id}"}}"#,
            1 + next(500)
        );
        lines.push(line.clone());
        made.push((card, ts, id, line));
    }
    lines.join("\n") + "\n"
}

/// The documented order — `(event_time, event_id)`, ids by value — and the documented
/// wake-ups checked by an oracle that knows only the docs: DuckDB window functions over
/// the raw events for every stored row (the wake-up rows where a transaction leaves a
/// window included), and an ASOF JOIN for a training set at the tied instants.
#[test]
fn stored_rows_and_training_sets_follow_the_documented_order_by_an_sql_oracle() {
    let dir = tempfile::tempdir().unwrap();
    for seed in [1u64, 2, 3] {
        let events = dir.path().join(format!("events-{seed}.jsonl"));
        std::fs::write(&events, tied_events(seed)).unwrap();
        let store_dir = dir.path().join(format!("store-{seed}"));
        let out = lockstep(&[
            "batch",
            "run",
            "--plugin",
            s(&plugin("txn_velocity")),
            "--source",
            s(&events),
            "--offline-store",
            s(&store_dir),
            "--no-cache",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let oracle = |args: &[&str]| {
            Command::new("python3")
                .arg(repo("tests/python/order_oracle.py"))
                .args(args)
                .output()
                .expect("python3")
        };
        let labels = dir.path().join(format!("labels-{seed}.parquet"));
        let made = oracle(&["labels", "--events", s(&events), "--out", s(&labels)]);
        assert!(made.status.success(), "{}", text(&made.stderr));
        let ours = dir.path().join(format!("set-{seed}.parquet"));
        let run = lockstep(&[
            "training-set",
            "--labels",
            s(&labels),
            "--group",
            "txn_velocity:txn_sum_1h,txn_max_1h,txn_count_1h",
            "--offline-store",
            s(&store_dir),
            "--inclusive",
            "--out",
            s(&ours),
        ]);
        assert!(run.status.success(), "{}", text(&run.stderr));
        let checked = oracle(&[
            "check",
            "--events",
            s(&events),
            "--store",
            s(&store_dir),
            "--ours",
            s(&ours),
            "--labels",
            s(&labels),
        ]);
        let report: Json = serde_json::from_slice(&checked.stdout).unwrap_or_else(|_| {
            panic!(
                "seed {seed}: {}{}",
                text(&checked.stdout),
                text(&checked.stderr)
            )
        });
        assert!(
            checked.status.success(),
            "seed {seed}: the oracle disagrees: {report}"
        );
        // Not vacuous: ties, duplicates and labels are there.
        assert!(report["tied_instants"].as_u64().unwrap() > 200, "{report}");
        assert!(
            report["applied"].as_u64().unwrap() < report["events"].as_u64().unwrap(),
            "{report}"
        );
        // A row per transaction applied, and one per wake-up (a window emptied).
        let (stored, applied, woken) = (
            report["stored_rows"].as_u64().unwrap(),
            report["applied"].as_u64().unwrap(),
            report["wake_rows"].as_u64().unwrap(),
        );
        assert_eq!(stored, applied + woken, "{report}");
        assert!(woken > 100, "{report}");
        assert!(report["labels"].as_u64().unwrap() > 1_000, "{report}");
    }
}

/// `training-set --exact` against an oracle that knows only the docs: DuckDB computes
/// txn_velocity's windows at each label instant from the raw events, strict and
/// inclusive, and the exact set equals it for every label (cards without transactions,
/// labels on and around window exits, after the input's end); where the stored rows
/// apply too (no window exit within the minute before the label, the input not yet
/// ended) the exact set equals the plain as-of join bit for bit. Misuse fails by name.
#[test]
fn exact_training_sets_equal_the_windows_at_the_label_instant() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let store_dir = dir.path().join("store");
    let wasm = plugin("txn_velocity");
    let out = lockstep(&[
        "gen",
        "events",
        "--kind",
        "transactions",
        "--rows",
        "20000",
        "--entities",
        "300",
        "--seed",
        "11",
        "--out",
        s(&events),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = lockstep(&[
        "batch",
        "run",
        "--plugin",
        s(&wasm),
        "--source",
        s(&events),
        "--offline-store",
        s(&store_dir),
        "--no-cache",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let oracle = |args: &[&str]| {
        Command::new("python3")
            .arg(repo("tests/python/exact_oracle.py"))
            .args(args)
            .output()
            .expect("python3")
    };
    let labels = dir.path().join("labels.parquet");
    let made = oracle(&[
        "labels",
        "--events",
        s(&events),
        "--out",
        s(&labels),
        "--n",
        "3000",
        "--seed",
        "4",
    ]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let build = |name: &str, extra: &[&str]| {
        let output = dir.path().join(format!("{name}.parquet"));
        let mut args = vec![
            "training-set",
            "--labels",
            s(&labels),
            "--group",
            "txn_velocity",
            "--offline-store",
            s(&store_dir),
            "--out",
            s(&output),
            "--no-cache",
        ];
        args.extend_from_slice(extra);
        let run = lockstep(&args);
        assert!(run.status.success(), "{name}: {}", text(&run.stderr));
        assert!(
            text(&run.stdout).contains("wrote 3000 label rows"),
            "{name}: {}",
            text(&run.stdout)
        );
        output
    };
    let exact_args = ["--exact", "--plugin", s(&wasm), "--events", s(&events)];
    let joined = build("join", &[]);
    let exact = build("exact", &exact_args);
    let mut inclusive_args = exact_args.to_vec();
    inclusive_args.push("--inclusive");
    let inclusive = build("exact-inclusive", &inclusive_args);

    let check = |args: &[&str]| {
        let checked = oracle(args);
        let report: Json = serde_json::from_slice(&checked.stdout)
            .unwrap_or_else(|_| panic!("{}{}", text(&checked.stdout), text(&checked.stderr)));
        (checked.status.success(), report)
    };
    let base = ["check", "--events", s(&events), "--labels", s(&labels)];
    let mut strict = base.to_vec();
    strict.extend_from_slice(&["--exact", s(&exact), "--join", s(&joined)]);
    let (ok, report) = check(&strict);
    assert!(ok, "the oracle disagrees with --exact: {report}");
    assert_eq!(report["compared"], 3000, "{report}");
    // Not vacuous: most labels have a state, some do not; most can be compared with
    // the join, and a good share of those see non-empty windows.
    let with_state = report["labels_with_state"].as_u64().unwrap();
    assert!(with_state > 2000 && with_state < 3000, "{report}");
    assert!(
        report["join_comparable"].as_u64().unwrap() > 1500,
        "{report}"
    );
    assert!(
        report["join_comparable_with_values"].as_u64().unwrap() > 1000,
        "{report}"
    );

    let mut incl = base.to_vec();
    incl.extend_from_slice(&["--exact", s(&inclusive), "--inclusive"]);
    let (ok, report) = check(&incl);
    assert!(
        ok,
        "the oracle disagrees with --exact --inclusive: {report}"
    );
    // The oracle can tell the two rules apart, and the stored rows from the instant.
    let mut crossed = base.to_vec();
    crossed.extend_from_slice(&["--exact", s(&inclusive)]);
    let (ok, report) = check(&crossed);
    assert!(
        !ok && report["mismatches"].as_u64().unwrap() > 0,
        "{report}"
    );
    let mut stored = base.to_vec();
    stored.extend_from_slice(&["--exact", s(&joined)]);
    let (ok, _) = check(&stored);
    assert!(
        !ok,
        "the stored rows cannot be exact at every label instant"
    );

    // Misuse fails by name and writes nothing.
    let out_path = dir.path().join("refused.parquet");
    let refuse = |extra: &[&str], says: &str| {
        let mut args = vec![
            "training-set",
            "--labels",
            s(&labels),
            "--group",
            "txn_velocity",
            "--offline-store",
            s(&store_dir),
            "--out",
            s(&out_path),
            "--no-cache",
        ];
        args.extend_from_slice(extra);
        let run = lockstep(&args);
        assert!(!run.status.success(), "{extra:?} should fail");
        assert!(
            text(&run.stderr).contains(says),
            "{extra:?}: {}",
            text(&run.stderr)
        );
        assert!(!out_path.exists());
    };
    let mut with_ttl = exact_args.to_vec();
    with_ttl.extend_from_slice(&["--ttl", "1h"]);
    refuse(&with_ttl, "leave --ttl out");
    let churn = plugin("churn_features");
    refuse(
        &["--exact", "--plugin", s(&churn), "--events", s(&events)],
        "no --group churn_features is asked for",
    );
    refuse(&["--exact"], "--plugin");
}
