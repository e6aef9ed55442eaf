//! `lockstep golden`: the committed golden sets hold, and a check that differs fails
//! with a diff a person can act on.

mod common;

use common::{lockstep, text};
use std::path::{Path, PathBuf};

fn repo(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(dir)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A private copy of one golden set, to break.
fn copy_set(name: &str) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for file in ["events.jsonl", "expected.jsonl", "plugin.sha256"] {
        std::fs::copy(repo("golden").join(name).join(file), dir.join(file)).expect("copy");
    }
    (root, dir)
}

fn check(golden_dir: &Path, names: &[&str]) -> (bool, String, String) {
    let plugins = repo("plugins");
    let mut args = vec![
        "golden",
        "check",
        "--dir",
        s(golden_dir),
        "--plugins",
        s(&plugins),
    ];
    args.extend_from_slice(names);
    let out = lockstep(&args);
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn every_plugin_matches_its_golden_rows_with_any_partitioning() {
    let (ok, stdout, stderr) = check(&repo("golden"), &[]);
    assert!(ok, "{stdout}\n{stderr}");
    for plugin in ["txn_velocity", "churn_features", "clickstream_clean"] {
        for partitions in ["1 partition", "3 partitions"] {
            for layout in ["plain", "delta"] {
                let line = format!("golden {plugin}: batch ({partitions}, {layout}) = golden ✓");
                assert!(stdout.contains(&line), "no `{line}` in:\n{stdout}");
            }
        }
    }
}

#[test]
fn the_committed_events_are_what_the_documented_command_makes() {
    for (plugin, kind) in [
        ("txn_velocity", "transactions"),
        ("churn_features", "logins"),
        ("clickstream_clean", "clicks"),
    ] {
        let out = lockstep(&["gen", "golden", "--kind", kind, "--seed", "1"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let committed =
            std::fs::read(repo("golden").join(plugin).join("events.jsonl")).expect("read");
        assert!(
            out.stdout == committed,
            "golden/{plugin}/events.jsonl differs from `lockstep gen golden --kind {kind} --seed 1`"
        );
    }
}

#[test]
fn a_changed_value_fails_and_is_located() {
    let (root, dir) = copy_set("txn_velocity");
    let expected = std::fs::read_to_string(dir.join("expected.jsonl")).expect("read");
    let mut lines: Vec<String> = expected.lines().map(str::to_owned).collect();
    // One value, one ulp away: the check compares bits, not approximately.
    let target = lines
        .iter()
        .position(|l| {
            l.contains(r#""card_id":"edge-float""#)
                && l.contains(r#""txn_sum_1h":1.7976931348623157e+308"#)
        })
        .expect("the max-float row");
    lines[target] = lines[target].replace(
        r#""txn_sum_1h":1.7976931348623157e+308"#,
        r#""txn_sum_1h":1.7976931348623155e+308"#,
    );
    // And a row gone.
    let removed = lines.remove(10);
    std::fs::write(dir.join("expected.jsonl"), lines.join("\n") + "\n").expect("write");

    let (ok, stdout, stderr) = check(root.path(), &["txn_velocity"]);
    assert!(!ok, "a changed golden file passed:\n{stdout}");
    assert!(
        stderr.contains("golden check failed for txn_velocity"),
        "{stderr}"
    );
    assert!(
        stdout
            .contains("txn_sum_1h: batch 1.7976931348623157e+308, golden 1.7976931348623155e+308"),
        "the diff does not show both values:\n{stdout}"
    );
    assert!(stdout.contains(r#"entity "edge-float""#), "{stdout}");
    assert!(
        stdout.contains("1 rows differ, 1 only in batch, 0 only in golden"),
        "{stdout}"
    );
    let entity = removed
        .split('"')
        .nth(3)
        .expect("entity of the removed row");
    assert!(
        stdout.contains(&format!("entity \"{entity}\"")) && stdout.contains("a row only in batch"),
        "the missing row is not named:\n{stdout}"
    );
}

#[test]
fn malformed_events_fail_loudly_naming_the_line() {
    let (root, dir) = copy_set("churn_features");
    let mut events = std::fs::read_to_string(dir.join("events.jsonl")).expect("read");
    events.push_str("{\"customer_id\": \"x\", \"ts\": \"yesterday\"}\n");
    std::fs::write(dir.join("events.jsonl"), events).expect("write");
    let (ok, stdout, stderr) = check(root.path(), &["churn_features"]);
    assert!(!ok, "malformed events passed:\n{stdout}");
    assert!(
        stderr.contains("could not be read") && stderr.contains("`ts`"),
        "{stderr}"
    );
}

#[test]
fn a_missing_expected_file_says_how_to_make_it() {
    let (root, dir) = copy_set("clickstream_clean");
    std::fs::remove_file(dir.join("expected.jsonl")).expect("rm");
    let (ok, _, stderr) = check(root.path(), &["clickstream_clean"]);
    assert!(!ok);
    assert!(
        stderr.contains("lockstep golden update clickstream_clean"),
        "{stderr}"
    );
}
