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

/// A plugin outside this repository, depending on the SDK by path
/// (`../lockstep/plugin-sdk`), as a user who cloned Lockstep beside their plugin
/// writes it: two such setups in different folders, with different target
/// directories, build the same bytes.
#[test]
fn an_out_of_tree_plugin_builds_the_same_bytes_against_two_copies_of_the_sdk() {
    let manifest = r#"[package]
name = "order_totals"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
lockstep-sdk = { path = "../lockstep/plugin-sdk" }
serde = { version = "1", default-features = false, features = ["derive", "alloc"] }

# A workspace of its own, not the one above.
[workspace]
"#;
    let source = std::fs::read_to_string(workspace().join("plugin-sdk/examples/order_totals.rs"))
        .expect("the guide's plugin");
    let lock = std::fs::read_to_string(workspace().join("Cargo.lock")).expect("Cargo.lock");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut hashes = Vec::new();
    for setup in ["first/setup", "second/setup/deeper"] {
        let root = dir.path().join(setup);
        copy_tracked_files(&workspace(), &root.join("lockstep"));
        let plugin = root.join("my-features");
        std::fs::create_dir_all(plugin.join("src")).expect("mkdir");
        std::fs::write(plugin.join("Cargo.toml"), manifest).expect("manifest");
        std::fs::write(plugin.join("src/lib.rs"), &source).expect("source");
        std::fs::write(plugin.join("Cargo.lock"), &lock).expect("lockfile");
        let manifest_path = plugin.join("Cargo.toml");
        let options = BuildOptions {
            target_dir: Some(root.join("target")),
            ..BuildOptions::default()
        };
        let built = build(&plugin, &options).expect("build the out-of-tree plugin");
        // The user's files are left as they were.
        assert_eq!(
            std::fs::read_to_string(&manifest_path).expect("manifest"),
            manifest
        );
        hashes.push(built.sha256);
    }
    assert_eq!(hashes[0], hashes[1], "same source, same bytes");
}
