//! `lockstep skew-check` as CI runs it: zero skew on every golden set, skew caught
//! when one side computes differently, late events kept apart, broken input and
//! failing plugins never passing.

mod common;

use common::{built, lockstep, plugin, repo, s, text};

#[test]
fn every_golden_set_has_zero_skew_in_file_and_shuffled_order_through_both_layouts() {
    for name in ["txn_velocity", "churn_features", "clickstream_clean"] {
        let wasm = plugin(name);
        let events = repo("golden").join(name).join("events.jsonl");
        // The batch side reads its rows back through either layout's reader.
        for (shuffle, layout) in [(None, "plain"), (Some("7"), "delta")] {
            let mut args = vec!["skew-check", "--plugin", s(&wasm), "--events", s(&events)];
            args.extend(["--table-format", layout]);
            if let Some(seed) = shuffle {
                args.extend(["--shuffle-seed", seed]);
            }
            let out = lockstep(&args);
            let stdout = text(&out.stdout);
            assert!(
                out.status.success(),
                "{name} {shuffle:?}:\n{stdout}\n{}",
                text(&out.stderr)
            );
            assert!(stdout.contains("batch = stream ✓"), "{stdout}");
            assert!(stdout.contains("0 late events"), "{stdout}");
        }
    }
}

#[test]
fn a_plugin_that_sums_another_way_is_reported_as_skew_with_a_diff() {
    let reference = plugin("txn_velocity");
    let variant = built(&repo("plugins").join("txn_velocity"), &["naive-sum"]);
    let events = repo("golden").join("txn_velocity").join("events.jsonl");
    let out = lockstep(&[
        "skew-check",
        "--plugin",
        s(&reference),
        "--against",
        s(&variant),
        "--events",
        s(&events),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("SKEW ✗"), "{stdout}");
    assert!(stdout.contains("differing values per column:"), "{stdout}");
    assert!(
        stdout.contains("txn_sum_"),
        "the diff names no sum feature:\n{stdout}"
    );
    assert!(
        stdout.contains(": txn_sum_") && stdout.contains(", stream "),
        "no value pair in:\n{stdout}"
    );
    // Counts are the only features the variant leaves alone.
    assert!(!stdout.contains("txn_count_1h "), "{stdout}");

    let out = lockstep(&[
        "skew-check",
        "--plugin",
        s(&reference),
        "--against",
        s(&variant),
        "--events",
        s(&events),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(doc["identical"], false);
    assert!(doc["differing_rows"].as_u64().unwrap_or(0) > 0, "{doc}");
    assert!(
        doc["per_feature"]["txn_sum_7d"].as_u64().unwrap_or(0) > 0,
        "{doc}"
    );
    assert_ne!(doc["plugin_sha256"], doc["stream_plugin_sha256"]);
}

#[test]
fn late_events_are_listed_apart_and_left_out_of_both_sides() {
    let wasm = plugin("txn_velocity");
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("events.jsonl");
    let t0 = 1_704_067_200_000_000i64;
    let ev = |id: &str, t: i64| {
        format!(r#"{{"card_id":"c1","ts":{t},"amount":2.5,"merchant":"m","txn_id":"{id}"}}"#)
    };
    let minute = 60_000_000;
    let lines = [
        ev("a", t0),
        ev("b", t0 + 30 * minute),
        ev("late", t0 + minute), // 24 minutes behind a 5-minute watermark
        ev("c", t0 + 31 * minute),
    ];
    std::fs::write(&events, lines.join("\n") + "\n").expect("write");
    let out = lockstep(&["skew-check", "--plugin", s(&wasm), "--events", s(&events)]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("3 rows compared"), "{stdout}");
    assert!(
        stdout.contains("1 late events left out of both sides"),
        "{stdout}"
    );
    assert!(
        stdout.contains("late: line 3 at 2024-01-01T00:01:00.000000Z was 24m behind"),
        "{stdout}"
    );
}

#[test]
fn malformed_events_and_failing_plugins_never_pass() {
    let wasm = plugin("txn_velocity");
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        "{\"card_id\":\"c\",\"ts\":0,\"amount\":1.0,\"merchant\":\"m\"}\n{\"card_id\":\"c\",\"ts\":\n",
    )
    .expect("write");
    let out = lockstep(&["skew-check", "--plugin", s(&wasm), "--events", s(&events)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("is not clean input") && stderr.contains("line 2"),
        "{stderr}"
    );

    std::fs::write(&events, "\n\n").expect("write");
    let out = lockstep(&["skew-check", "--plugin", s(&wasm), "--events", s(&events)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("holds no events"));

    let hostile = built(&repo("tests/plugins/hostile"), &[]);
    std::fs::write(
        &events,
        "{\"key\":\"a\",\"ts\":0,\"mode\":\"ok\"}\n{\"key\":\"a\",\"ts\":1,\"mode\":\"fail\"}\n",
    )
    .expect("write");
    let out = lockstep(&[
        "skew-check",
        "--plugin",
        s(&hostile),
        "--events",
        s(&events),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("asked to fail for a"),
        "{}",
        text(&out.stderr)
    );
}

/// `skew-check … --kinesis-endpoint` against `moto`, with `args` after it.
fn skew_through_kinesis(moto: &lockstep_testkit::Moto, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .arg("skew-check")
        .args(args)
        .args(["--kinesis-endpoint", &moto.endpoint()])
        .envs(moto.env())
        .output()
        .expect("run lockstep")
}

#[test]
fn through_kinesis_every_golden_set_has_zero_skew() {
    let moto = lockstep_testkit::Moto::start();
    for name in ["txn_velocity", "churn_features", "clickstream_clean"] {
        let wasm = plugin(name);
        let events = repo("golden").join(name).join("events.jsonl");
        let out = skew_through_kinesis(
            &moto,
            &[
                "--plugin",
                s(&wasm),
                "--events",
                s(&events),
                "--kinesis-shards",
                "3",
                "--shuffle-seed",
                "11",
            ],
        );
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{name}:\n{stdout}\n{}",
            text(&out.stderr)
        );
        assert!(stdout.contains("batch = stream ✓"), "{stdout}");
        assert!(stdout.contains("through Kinesis at"), "{stdout}");
        assert!(stdout.contains("0 late events"), "{stdout}");
    }
    // The Kinesis side runs the stream host's service: a build that sums another way,
    // run there, is skew (exit 1), so the check can fail on this path too.
    let variant = built(&repo("plugins").join("txn_velocity"), &["naive-sum"]);
    let events = repo("golden").join("txn_velocity").join("events.jsonl");
    let out = skew_through_kinesis(
        &moto,
        &[
            "--plugin",
            s(&plugin("txn_velocity")),
            "--against",
            s(&variant),
            "--events",
            s(&events),
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("SKEW ✗") && stdout.contains("txn_sum_"),
        "{stdout}"
    );
}
