//! The audit log through the command line: backfills record their commits (every file
//! by its SHA-256) in a signed log beside the offline store; `audit verify` passes on
//! the untouched log and fails, naming the place, once a file is edited; `audit show`
//! filters; `audit keygen` makes a key that is never printed.

mod common;

use common::{lockstep, plugin, repo, s, text};
use std::path::{Path, PathBuf};

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `batch run` of `txn_velocity` over the golden events into `store`, plus `extra`.
fn backfill(store: &Path, extra: &[&str]) -> std::process::Output {
    let events = repo("golden").join("txn_velocity/events.jsonl");
    let wasm = plugin("txn_velocity");
    let mut args = vec![
        "batch",
        "run",
        "--plugin",
        s(&wasm),
        "--source",
        s(&events),
        "--offline-store",
        s(store),
        "--no-cache",
    ];
    args.extend_from_slice(extra);
    lockstep(&args)
}

#[test]
fn backfills_are_recorded_signed_and_verified_and_an_edit_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("audit.key");
    let made = lockstep(&["audit", "keygen", "--out", s(&key)]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let said = text(&made.stdout);
    let public = said
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .expect("the public key is printed")
        .to_owned();
    let seed = std::fs::read_to_string(&key).expect("key file");
    assert!(!said.contains(seed.trim()), "the secret is never printed");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("meta").permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the key file is its owner's only: {mode:o}"
        );
    }
    assert!(
        !lockstep(&["audit", "keygen", "--out", s(&key)])
            .status
            .success(),
        "an existing key is never overwritten"
    );

    let store = dir.path().join("store");
    for _ in 0..2 {
        let out = backfill(&store, &["--audit-key", s(&key)]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    let verify = |extra: &[&str]| {
        let mut args = vec!["audit", "verify", "--offline-store", s(&store)];
        args.extend_from_slice(extra);
        lockstep(&args)
    };
    let ok = verify(&["--public-key", &public]);
    assert!(
        ok.status.success(),
        "{}{}",
        text(&ok.stdout),
        text(&ok.stderr)
    );
    assert!(
        text(&ok.stdout).contains("2 digests (2 signed), 2 log files, 3 entries, all verified"),
        "{}",
        text(&ok.stdout)
    );

    // What was recorded: the registration once, both commits, each file by its SHA-256.
    let shown = lockstep(&[
        "audit",
        "show",
        "--offline-store",
        s(&store),
        "--group",
        "txn_velocity",
        "--json",
    ]);
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let records: Vec<serde_json::Value> = text(&shown.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(actions, ["group.register", "batch.commit", "batch.commit"]);
    let files = records[2]["details"]["files"].as_array().expect("files");
    let parquet: Vec<PathBuf> = files_under(&store.join("txn_velocity"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert_eq!(files.len(), parquet.len(), "every hour file is named");
    for f in files {
        let path = store.join(f["path"].as_str().expect("path"));
        let bytes = std::fs::read(&path).expect("a named file exists");
        assert_eq!(
            f["sha256"].as_str(),
            Some(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)).as_str()),
            "{}",
            path.display()
        );
    }
    let none = lockstep(&[
        "audit",
        "show",
        "--offline-store",
        s(&store),
        "--action",
        "erase",
    ]);
    assert!(none.status.success() && text(&none.stdout).is_empty());

    // Another key is refused; an edited log file is named.
    let other = verify(&["--public-key", &"ab".repeat(32)]);
    assert!(!other.status.success());
    assert!(
        text(&other.stdout).contains("not by the key given"),
        "{}",
        text(&other.stdout)
    );
    let logs: Vec<PathBuf> = files_under(&store.join("_lockstep/audit/logs"));
    let first = &logs[0];
    let edited = std::fs::read_to_string(first)
        .expect("log")
        .replace("\"rows\":", "\"rows\":1");
    std::fs::write(first, edited).expect("edit");
    let broken = verify(&[]);
    assert_eq!(broken.status.code(), Some(1));
    let name = first
        .strip_prefix(store.join("_lockstep/audit"))
        .expect("inside")
        .to_string_lossy()
        .into_owned();
    assert!(
        text(&broken.stdout).contains(&format!("BROKEN {name}#")),
        "{}",
        text(&broken.stdout)
    );
    assert!(
        text(&broken.stderr).contains("does not verify"),
        "{}",
        text(&broken.stderr)
    );

    // --no-audit records nothing; an unreachable log stops the job before any work.
    let before = files_under(&store.join("_lockstep/audit")).len();
    let quiet = backfill(&store, &["--no-audit"]);
    assert!(quiet.status.success(), "{}", text(&quiet.stderr));
    assert_eq!(files_under(&store.join("_lockstep/audit")).len(), before);
    let blocked = dir.path().join("not-a-dir");
    std::fs::write(&blocked, "a file").expect("file");
    let refused = backfill(&dir.path().join("store2"), &["--audit", s(&blocked)]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("the audit log location"),
        "{}",
        text(&refused.stderr)
    );
    assert!(
        !dir.path().join("store2/txn_velocity").exists(),
        "nothing was written"
    );
}
