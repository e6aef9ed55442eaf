//! `lockstep plugin new`, tried as a new author would: the scaffold's own test passes,
//! its clippy lints refuse a std hash map, and it builds into a component that runs.

use std::path::Path;
use std::process::{Command, Output};

fn lockstep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(args)
        .output()
        .expect("run lockstep")
}

fn cargo(dir: &Path, target: &Path, args: &[&str]) -> Output {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .expect("run cargo")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_new_plugin_tests_lints_builds_and_runs() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("card_counts");
    let target = work.path().join("target");
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugin-sdk");
    let made = lockstep(&[
        "plugin",
        "new",
        "card_counts",
        "--dir",
        &dir.to_string_lossy(),
        "--sdk",
        &sdk.to_string_lossy(),
    ]);
    assert!(made.status.success(), "{}", text(&made.stderr));

    let tested = cargo(&dir, &target, &["test", "--quiet"]);
    assert!(
        tested.status.success(),
        "the scaffold's test fails:\n{}{}",
        text(&tested.stdout),
        text(&tested.stderr)
    );
    assert!(
        text(&tested.stdout).contains("1 passed"),
        "{}",
        text(&tested.stdout)
    );

    // The scaffold's clippy.toml refuses what the sandbox would refuse at load.
    let lib = dir.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).expect("read lib.rs");
    std::fs::write(
        &lib,
        source.replace(
            "/// What is kept per entity",
            "pub fn seen() -> std::collections::HashMap<i64, i64> { Default::default() }\n\n/// What is kept per entity",
        ),
    )
    .expect("write lib.rs");
    let linted = cargo(
        &dir,
        &target,
        &["clippy", "--all-targets", "--", "-D", "warnings"],
    );
    assert!(!linted.status.success(), "clippy let a HashMap through");
    assert!(
        text(&linted.stderr).contains("disallowed type `std::collections::HashMap`"),
        "{}",
        text(&linted.stderr)
    );
    std::fs::write(&lib, source).expect("restore lib.rs");

    let built = lockstep(&["plugin", "build", &dir.to_string_lossy()]);
    assert!(built.status.success(), "{}", text(&built.stderr));
    // Its first line is where the component is (the target dir may be anywhere).
    let stdout = text(&built.stdout);
    let component = stdout
        .lines()
        .find(|line| line.trim_end().ends_with("card_counts.wasm"))
        .map(|line| std::path::PathBuf::from(line.trim()))
        .unwrap_or_else(|| panic!("no component path in:\n{stdout}"));
    assert!(component.is_file(), "{}", component.display());
    let events = work.path().join("events.jsonl");
    std::fs::write(
        &events,
        "{\"entity\":\"a\",\"ts\":1000000,\"amount\":2.5}\n{\"entity\":\"a\",\"ts\":2000000}\n",
    )
    .expect("events");
    let ran = lockstep(&[
        "plugin",
        "run",
        &component.to_string_lossy(),
        "--events",
        &events.to_string_lossy(),
    ]);
    assert!(ran.status.success(), "{}", text(&ran.stderr));
    let rows: Vec<serde_json::Value> = text(&ran.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a row"))
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["events"], 2);
    assert_eq!(rows[1]["last_amount"], 2.5);

    // Another plugin cannot be scaffolded over this one.
    let again = lockstep(&[
        "plugin",
        "new",
        "card_counts",
        "--dir",
        &dir.to_string_lossy(),
    ]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("not empty"),
        "{}",
        text(&again.stderr)
    );
}
