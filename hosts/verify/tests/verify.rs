//! The checks themselves checked: each passes on what is right and fails on what is
//! wrong — a build that sums another way is skew, a tampered golden row fails its set.

use lockstep_backfill::TableFormat;
use lockstep_runtime::{Runtime, RuntimeConfig};
use lockstep_verify::golden::{self, GoldenSets};
use lockstep_verify::skew::{self, SkewCheck, StreamSide};
use lockstep_verify::{Component, VerifyError};
use std::path::{Path, PathBuf};

fn repo(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(dir)
}

fn component(features: &[&str]) -> Component {
    let built = lockstep_build::build(
        &repo("plugins").join("txn_velocity"),
        &lockstep_build::BuildOptions {
            features: features.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        },
    )
    .expect("build");
    Component {
        plugin: Runtime::new(RuntimeConfig::default())
            .expect("runtime")
            .load_file(&built.path)
            .expect("load"),
        path: built.path,
    }
}

fn check(stream: Component, events: PathBuf, seed: Option<u64>) -> SkewCheck {
    SkewCheck {
        batch: component(&[]),
        stream,
        events,
        allowed_lateness: 300_000_000,
        shuffle_seed: seed,
        side: StreamSide::InProcess,
        table_format: TableFormat::Plain,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_build_has_no_skew_and_a_build_that_sums_another_way_has() {
    let events = repo("golden").join("txn_velocity").join("events.jsonl");
    let same = skew::run(&check(component(&[]), events.clone(), Some(5)))
        .await
        .expect("check");
    assert!(
        same.identical(),
        "{}",
        same.comparison.render("batch", "stream")
    );
    assert!(same.comparison.left_rows > 1_000 && same.late.is_empty());

    let other = skew::run(&check(component(&["naive-sum"]), events, Some(5)))
        .await
        .expect("check");
    assert!(!other.identical());
    assert!(
        other
            .comparison
            .per_column
            .keys()
            .any(|f| f.starts_with("txn_sum_")),
        "{:?}",
        other.comparison.per_column
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unclean_or_empty_events_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n\n").expect("write");
    let err = skew::run(&check(component(&[]), empty.clone(), None))
        .await
        .expect_err("no events");
    assert!(
        matches!(&err, VerifyError::NoEvents(p) if p == &empty),
        "{err}"
    );

    let dirty = dir.path().join("dirty.jsonl");
    std::fs::write(
        &dirty,
        "{\"card_id\":\"c\",\"ts\":\"never\",\"amount\":1.0,\"merchant\":\"m\",\"txn_id\":\"t\"}\n",
    )
    .expect("write");
    let err = skew::run(&check(component(&[]), dirty, None))
        .await
        .expect_err("not clean");
    assert!(
        matches!(err, VerifyError::NotClean { .. }) && err.to_string().contains("dirty.jsonl"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_golden_set_passes_fails_on_a_tampered_row_and_update_restores_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let set = dir.path().join("golden").join("txn_velocity");
    std::fs::create_dir_all(&set).expect("mkdir");
    for file in [golden::EVENTS, golden::EXPECTED, golden::PLUGIN_HASH] {
        std::fs::copy(
            repo("golden").join("txn_velocity").join(file),
            set.join(file),
        )
        .expect("copy the set");
    }
    let sets = GoldenSets {
        dir: dir.path().join("golden"),
        plugins: repo("plugins"),
    };
    assert_eq!(sets.names(&[]).expect("names"), ["txn_velocity"]);
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let component = sets.component(&runtime, "txn_velocity").expect("component");
    let passed = golden::check(&sets, "txn_velocity", &component)
        .await
        .expect("check");
    assert!(passed.passed());
    assert_eq!(passed.runs.len(), 4, "2 partition counts × 2 layouts");

    // One value changed in one expected row: every run names it.
    let expected = std::fs::read_to_string(set.join(golden::EXPECTED)).expect("read");
    let first = expected.lines().next().expect("a row");
    let mut row: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(first).expect("json");
    row.insert("txn_count_1h".into(), serde_json::json!(123_456));
    let tampered = expected.replacen(first, &serde_json::Value::Object(row).to_string(), 1);
    std::fs::write(set.join(golden::EXPECTED), tampered).expect("write");
    let failed = golden::check(&sets, "txn_velocity", &component)
        .await
        .expect("check");
    assert!(!failed.passed());
    assert!(
        failed.runs.iter().all(|r| r.comparison.differing_rows == 1
            && r.comparison.per_column.contains_key("txn_count_1h")),
        "{:?}",
        failed
            .runs
            .iter()
            .map(|r| r.comparison.render("batch", "golden"))
            .collect::<Vec<_>>()
    );

    let updated = golden::update(&sets, "txn_velocity", &component)
        .await
        .expect("update");
    assert_eq!(updated.change.differing_rows, 1);
    assert!(
        golden::check(&sets, "txn_velocity", &component)
            .await
            .expect("check")
            .passed()
    );
    let missing = sets
        .component(&runtime, "no_such_plugin")
        .expect_err("no crate");
    assert!(
        matches!(missing, VerifyError::NoPluginCrate { .. }),
        "{missing}"
    );
}
