//! Builds a plugin crate into a WebAssembly component, the way every Lockstep tool
//! does, so the bytes (and so the plugin hash) depend only on the source and the
//! toolchain.
//!
//! It runs `cargo build --target wasm32-wasip2` with the `plugin` profile (fat LTO,
//! one codegen unit, abort on panic, no debug info), remaps every source path out of
//! the binary (the workspace, each path dependency wherever it lives, registry and git
//! sources, the target directory, the sysroot) so two checkouts in different folders
//! build the same bytes,
//! adds the `wasm32-wasip2` target through rustup when it is missing, and reads the
//! artifact's path from cargo's JSON messages. A plugin whose path dependencies live
//! outside its workspace (an SDK checked out beside it) is built in a staging
//! workspace of fixed layout (see [`stage`](crate::stage)), since cargo hashes such a
//! package's absolute path into symbol names.
//!
//! Owns: invoking cargo and rustup. Must never: load or run the component.

mod stage;

use sha2::{Digest, Sha256};
use stage::PathPackage;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use thiserror::Error;

/// The target plugins are built for.
pub const TARGET: &str = "wasm32-wasip2";

/// Settings of the `plugin` profile, passed on the command line so crates outside
/// this workspace build the same way.
const PROFILE: &[&str] = &[
    "profile.plugin.inherits=\"release\"",
    "profile.plugin.lto=\"fat\"",
    "profile.plugin.codegen-units=1",
    "profile.plugin.panic=\"abort\"",
    "profile.plugin.debug=false",
    "profile.plugin.strip=\"debuginfo\"",
    "profile.plugin.incremental=false",
];

/// Why a build failed.
#[derive(Debug, Error)]
pub enum BuildError {
    /// `crate_dir` has no `Cargo.toml`.
    #[error("{0} is not a crate directory (no Cargo.toml)")]
    NotACrate(PathBuf),
    /// A tool could not be started.
    #[error("cannot run `{tool}`: {source}")]
    Spawn {
        /// The tool.
        tool: String,
        /// Why.
        source: std::io::Error,
    },
    /// cargo failed; its diagnostics went to stderr.
    #[error("cargo build failed for {crate_dir} (see the compiler output above)")]
    Cargo {
        /// The crate.
        crate_dir: PathBuf,
    },
    /// `cargo metadata` could not describe the crate.
    #[error("cannot read the dependencies of {crate_dir}: {message}")]
    Metadata {
        /// The crate.
        crate_dir: PathBuf,
        /// Why.
        message: String,
    },
    /// The target could not be installed.
    #[error("the {TARGET} target is missing and `rustup target add {TARGET}` failed: {0}")]
    Target(String),
    /// cargo built nothing that looks like a component.
    #[error("cargo built no .wasm artifact for {0}; is it a `cdylib` crate?")]
    NoArtifact(PathBuf),
    /// A plugin with outside path dependencies could not be staged.
    #[error("cannot stage {crate_dir} for a reproducible build: {message}")]
    Stage {
        /// The crate.
        crate_dir: PathBuf,
        /// Why.
        message: String,
    },
    /// A file of the staging workspace could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The artifact could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The artifact.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Cargo features to enable.
    pub features: Vec<String>,
    /// Show cargo's progress output (otherwise only errors are shown).
    pub verbose: bool,
    /// Build in this target directory instead of cargo's default.
    pub target_dir: Option<PathBuf>,
}

/// A built component.
#[derive(Debug, Clone)]
pub struct Built {
    /// Where cargo put it.
    pub path: PathBuf,
    /// SHA-256 of its bytes, lowercase hex: the plugin's identity.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// Makes sure rustup has the plugin target for the toolchain active in `dir`.
pub fn ensure_target(dir: &Path) -> Result<(), BuildError> {
    let libdir = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", TARGET])
        .current_dir(dir)
        .stderr(Stdio::null())
        .output()
        .map_err(|source| BuildError::Spawn {
            tool: "rustc".into(),
            source,
        })?;
    let path = String::from_utf8_lossy(&libdir.stdout).trim().to_owned();
    if libdir.status.success() && !path.is_empty() && Path::new(&path).exists() {
        return Ok(());
    }
    let out = Command::new("rustup")
        .args(["target", "add", TARGET])
        .current_dir(dir)
        .output()
        .map_err(|source| BuildError::Spawn {
            tool: "rustup".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(BuildError::Target(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

/// Builds the plugin crate in `crate_dir` and returns the component.
pub fn build(crate_dir: &Path, options: &BuildOptions) -> Result<Built, BuildError> {
    let manifest = crate_dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(BuildError::NotACrate(crate_dir.to_owned()));
    }
    let crate_dir = crate_dir
        .canonicalize()
        .map_err(|source| BuildError::Read {
            path: crate_dir.to_owned(),
            source,
        })?;
    ensure_target(&crate_dir)?;
    let original = metadata(&crate_dir)?;
    let target_dir = options
        .target_dir
        .clone()
        .unwrap_or_else(|| original.target_directory.clone());
    // A plugin that is its own workspace but uses path packages from elsewhere builds
    // in a stage of fixed layout (see the `stage` module).
    let staged = if original.workspace_root == crate_dir {
        let stage_dir = target_dir.join("lockstep-stage").join(&original.name);
        stage::stage(&crate_dir, &original.packages, &stage_dir, workspace_root)?
    } else {
        None
    };
    let (crate_dir, metadata) = match staged {
        Some(dir) => {
            let metadata = metadata(&dir)?;
            (dir, metadata)
        }
        None => (crate_dir, original),
    };
    // Remap every path that can reach the binary (panic locations, `file!()`) so the
    // bytes do not depend on where anything lives: the workspace (or crate) root,
    // cargo's home (registry and git sources), each path dependency wherever it is
    // (an SDK checked out beside the plugin, or anywhere else), the target directory
    // (generated sources) and the toolchain's sysroot. rustc lets the last matching
    // prefix win, so the more specific ones come later.
    let mut remaps: Vec<(PathBuf, String)> =
        vec![(metadata.workspace_root.clone(), "/lockstep".into())];
    if let Some(home) = cargo_home() {
        remaps.push((home, "/cargo".into()));
    }
    remaps.extend(metadata.packages.iter().map(|p| {
        (
            p.dir.clone(),
            format!("/lockstep/path/{}-{}", p.name, p.version),
        )
    }));
    remaps.push((target_dir.clone(), "/target".into()));
    if let Some(sysroot) = sysroot(&crate_dir) {
        remaps.push((sysroot, "/sysroot".into()));
    }
    let rustflags: Vec<String> = remaps
        .iter()
        .map(|(from, to)| format!("--remap-path-prefix={}={to}", from.display()))
        .collect();
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(crate_dir.join("Cargo.toml"))
        .args([
            "--lib",
            "--target",
            TARGET,
            "--profile",
            "plugin",
            "--message-format=json-render-diagnostics",
        ])
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"))
        .current_dir(&crate_dir)
        .stdout(Stdio::piped());
    for setting in PROFILE {
        cmd.args(["--config", setting]);
    }
    if !options.features.is_empty() {
        cmd.args(["--features", &options.features.join(",")]);
    }
    if !options.verbose {
        cmd.arg("--quiet");
    }
    cmd.arg("--target-dir").arg(&target_dir);
    let output = cmd.output().map_err(|source| BuildError::Spawn {
        tool: "cargo".into(),
        source,
    })?;
    if !output.status.success() {
        return Err(BuildError::Cargo { crate_dir });
    }
    let path = artifact(&output.stdout, &crate_dir)
        .ok_or_else(|| BuildError::NoArtifact(crate_dir.clone()))?;
    let bytes = std::fs::read(&path).map_err(|source| BuildError::Read {
        path: path.clone(),
        source,
    })?;
    Ok(Built {
        sha256: hex::encode(Sha256::digest(&bytes)),
        size: bytes.len() as u64,
        path,
    })
}

/// What `cargo metadata` says of a plugin crate that matters to its bytes.
struct Metadata {
    /// The crate's package name.
    name: String,
    /// The workspace it builds in.
    workspace_root: PathBuf,
    /// Each path package (the crate, its path dependencies): remapped to
    /// `/lockstep/path/<name>-<version>`.
    packages: Vec<PathPackage>,
    /// Cargo's target directory for the crate.
    target_directory: PathBuf,
}

fn metadata(crate_dir: &Path) -> Result<Metadata, BuildError> {
    let output = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .current_dir(crate_dir)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| BuildError::Spawn {
            tool: "cargo metadata".into(),
            source,
        })?;
    let failed = |why: &str| BuildError::Metadata {
        crate_dir: crate_dir.to_owned(),
        message: why.to_owned(),
    };
    if !output.status.success() {
        return Err(failed("`cargo metadata` failed (see its output above)"));
    }
    let doc: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| failed(&e.to_string()))?;
    let path_of = |key: &str| -> Result<PathBuf, BuildError> {
        doc[key]
            .as_str()
            .map(PathBuf::from)
            .ok_or_else(|| failed(&format!("no {key}")))
    };
    let target_directory = path_of("target_directory")?;
    let workspace_root = path_of("workspace_root")?;
    let packages: Vec<PathPackage> = doc["packages"]
        .as_array()
        .ok_or_else(|| failed("no packages"))?
        .iter()
        .filter(|p| p["source"].is_null())
        .filter_map(|p| {
            Some(PathPackage {
                dir: Path::new(p["manifest_path"].as_str()?).parent()?.to_owned(),
                name: p["name"].as_str()?.to_owned(),
                version: p["version"].as_str()?.to_owned(),
            })
        })
        .collect();
    let manifest = crate_dir.join("Cargo.toml");
    let name = packages
        .iter()
        .find(|p| p.dir.join("Cargo.toml") == manifest)
        .map(|p| p.name.clone())
        .ok_or_else(|| failed("the crate itself is not among the packages"))?;
    Ok(Metadata {
        name,
        workspace_root,
        packages,
        target_directory,
    })
}

/// The sysroot of the toolchain that builds in `crate_dir`.
fn sysroot(crate_dir: &Path) -> Option<PathBuf> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(crate_dir)
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
}

/// The `.wasm` file of the crate at `crate_dir` among cargo's JSON messages.
fn artifact(messages: &[u8], crate_dir: &Path) -> Option<PathBuf> {
    let wanted = crate_dir.join("Cargo.toml");
    String::from_utf8_lossy(messages)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| m["manifest_path"].as_str().map(Path::new) == Some(wanted.as_path()))
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| f.as_str().map(PathBuf::from))
                .collect::<Vec<_>>()
        })
        .find(|f| f.extension().is_some_and(|e| e == "wasm"))
}

/// The enclosing cargo workspace root of `dir`, if cargo can tell.
fn workspace_root(dir: &Path) -> Option<PathBuf> {
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["locate-project", "--workspace", "--message-format", "plain"])
        .current_dir(dir)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let manifest = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    out.status
        .success()
        .then(|| manifest.parent().map(Path::to_owned))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_directory_without_cargo_toml() {
        let err = build(Path::new("/nonexistent/plugin"), &BuildOptions::default())
            .expect_err("no crate");
        assert!(
            err.to_string().contains("is not a crate directory"),
            "{err}"
        );
    }

    #[test]
    fn finds_the_wasm_artifact_among_cargo_messages() {
        let dir = Path::new("/w/plugins/p");
        let msgs = br#"{"reason":"compiler-artifact","manifest_path":"/w/other/Cargo.toml","filenames":["/t/other.wasm"]}
{"reason":"compiler-artifact","manifest_path":"/w/plugins/p/Cargo.toml","filenames":["/t/p.rlib","/t/p.wasm"]}
{"reason":"build-finished","success":true}"#;
        assert_eq!(artifact(msgs, dir), Some(PathBuf::from("/t/p.wasm")));
        assert_eq!(artifact(b"not json", dir), None);
    }
}
