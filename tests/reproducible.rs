//! A plugin's identity is the SHA-256 of its bytes, so the same source must build the
//! same bytes in any checkout: here, a copy of the repository in another folder with
//! its own target directory.

use lockstep_build::{BuildOptions, build};
use lockstep_tests::workspace;
use std::path::Path;
use std::process::Command;

fn copy_tracked_files(from: &Path, to: &Path) {
    let listing = Command::new("git")
        .arg("ls-files")
        .current_dir(from)
        .output()
        .expect("git ls-files");
    assert!(listing.status.success(), "git ls-files failed");
    for file in String::from_utf8_lossy(&listing.stdout).lines() {
        let (src, dst) = (from.join(file), to.join(file));
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        if src.is_file() {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
}

#[test]
fn the_same_source_builds_the_same_component_in_another_checkout() {
    let here = build(
        &workspace().join("plugins/txn_velocity"),
        &BuildOptions::default(),
    )
    .expect("build here");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let clone = elsewhere.path().join("some/other/checkout");
    copy_tracked_files(&workspace(), &clone);
    let options = BuildOptions {
        target_dir: Some(elsewhere.path().join("other-target")),
        ..BuildOptions::default()
    };
    let there = build(&clone.join("plugins/txn_velocity"), &options).expect("build in the copy");
    assert_ne!(here.path, there.path, "two separate builds");
    assert_eq!(here.sha256, there.sha256, "same source, same bytes");
}
