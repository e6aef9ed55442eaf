//! Staging a plugin whose path dependencies live outside its workspace.
//!
//! Cargo names every compiled crate with a hash of its package id. For a path package
//! inside the workspace that id holds the path relative to the workspace root; for one
//! outside it holds the absolute path. That hash reaches symbol names, and with them
//! the order of functions in the component, so no path remapping can make a plugin
//! that depends on `../lockstep/plugin-sdk` build the same bytes in two folders.
//!
//! So such a build runs in a staging workspace with a fixed layout, under the target
//! directory:
//!
//! ```text
//! <stage>/Cargo.toml        [workspace] members = ["plugin"], exclude = ["deps"]
//! <stage>/Cargo.lock        the plugin's lockfile, copied
//! <stage>/plugin/Cargo.toml the plugin's manifest, path dependencies pointed at deps/
//! <stage>/plugin/*          symlinks to everything else in the plugin's folder
//! <stage>/deps/<i>          a symlink to the workspace (or package) holding outside
//!                           path dependencies, numbered in the order of their names
//! ```
//!
//! Cargo takes paths as written (it does not resolve symlinks), so every package is now
//! inside the staging workspace and hashed by its relative path, the same wherever the
//! plugin, its dependencies and the stage live. The plugin's own files are untouched.

use crate::BuildError;
use std::path::{Component, Path, PathBuf};
use toml_edit::{DocumentMut, Item, Table, Value};

/// A path package the plugin depends on, from `cargo metadata`.
pub(crate) struct PathPackage {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) dir: PathBuf,
}

/// The folders staged under `deps/`, each with the outside packages it holds.
struct Roots {
    /// (the folder, its number under `deps/`)
    roots: Vec<(PathBuf, usize)>,
}

impl Roots {
    /// Where `path` (absolute, normalised) appears in the stage, relative to the stage
    /// root, if it is under a staged folder.
    fn staged(&self, path: &Path) -> Option<PathBuf> {
        self.roots
            .iter()
            .filter_map(|(root, i)| {
                let rest = path.strip_prefix(root).ok()?;
                Some((
                    root.components().count(),
                    Path::new("deps").join(i.to_string()).join(rest),
                ))
            })
            // The deepest folder holding it (folders may nest).
            .max_by_key(|(depth, _)| *depth)
            .map(|(_, staged)| staged)
    }
}

/// `path` with `.` and `..` resolved by its text, as cargo reads manifest paths.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn failed(crate_dir: &Path, message: String) -> BuildError {
    BuildError::Stage {
        crate_dir: crate_dir.to_owned(),
        message,
    }
}

/// Stages `crate_dir` (its own workspace root) at `stage` when some of `packages` live
/// outside it; returns the staged crate's folder, or `None` when no staging is needed.
/// `root_of` finds the workspace a package folder belongs to.
pub(crate) fn stage(
    crate_dir: &Path,
    packages: &[PathPackage],
    stage: &Path,
    root_of: impl Fn(&Path) -> Option<PathBuf>,
) -> Result<Option<PathBuf>, BuildError> {
    let mut outside: Vec<&PathPackage> = packages
        .iter()
        .filter(|p| !p.dir.starts_with(crate_dir))
        .collect();
    if outside.is_empty() {
        return Ok(None);
    }
    outside.sort_by(|a, b| a.name.cmp(&b.name));
    // Each outside package is staged with its whole workspace, so its own path
    // dependencies and inherited settings resolve as they do at home.
    let mut roots: Vec<(PathBuf, usize)> = Vec::new();
    for p in &outside {
        let root = root_of(&p.dir)
            .filter(|r| p.dir.starts_with(r))
            .unwrap_or_else(|| p.dir.clone());
        if !roots.iter().any(|(r, _)| *r == root) {
            let i = roots.len();
            roots.push((root, i));
        }
    }
    let roots = Roots { roots };

    let manifest_path = crate_dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest_path).map_err(|source| BuildError::Read {
        path: manifest_path.clone(),
        source,
    })?;
    let mut manifest: DocumentMut = text
        .parse()
        .map_err(|e| failed(crate_dir, format!("Cargo.toml does not parse: {e}")))?;
    let mut root_manifest = DocumentMut::new();
    let mut workspace = Table::new();
    let edition = manifest
        .get("package")
        .and_then(|p| p.get("edition"))
        .and_then(Item::as_str)
        .unwrap_or("2021")
        .to_owned();
    if let Some(Item::Table(own)) = manifest.remove("workspace") {
        for (key, item) in own.iter() {
            match key {
                "members" | "exclude" | "default-members" => {
                    let listed = item.as_array().is_some_and(|a| !a.is_empty());
                    if listed {
                        return Err(failed(
                            crate_dir,
                            format!(
                                "its [workspace] lists `{key}`: a plugin with outside path \
                                 dependencies must be a workspace of its own"
                            ),
                        ));
                    }
                }
                "dependencies" => {
                    let mut deps = item.clone();
                    rewrite_table(&mut deps, crate_dir, &roots, Path::new(""));
                    workspace.insert(key, deps);
                }
                _ => {
                    workspace.insert(key, item.clone());
                }
            }
        }
    }
    if !workspace.contains_key("resolver") {
        let resolver = if edition == "2024" { "3" } else { "2" };
        workspace.insert("resolver", toml_edit::value(resolver));
    }
    let mut members = toml_edit::Array::new();
    members.push("plugin");
    workspace.insert("members", toml_edit::value(members));
    let mut exclude = toml_edit::Array::new();
    exclude.push("deps");
    workspace.insert("exclude", toml_edit::value(exclude));
    root_manifest.insert("workspace", Item::Table(workspace));
    // Settings only a workspace root may hold move to the stage's root.
    for key in ["profile", "patch", "replace"] {
        if let Some(mut item) = manifest.remove(key) {
            if key == "patch" {
                if let Some(sources) = item.as_table_like_mut() {
                    for (_, source) in sources.iter_mut() {
                        rewrite_table(source, crate_dir, &roots, Path::new(""));
                    }
                }
            } else if key == "replace" {
                rewrite_table(&mut item, crate_dir, &roots, Path::new(""));
            }
            root_manifest.insert(key, item);
        }
    }
    for key in ["dependencies", "dev-dependencies", "build-dependencies"] {
        if let Some(item) = manifest.get_mut(key) {
            rewrite_table(item, crate_dir, &roots, Path::new("plugin"));
        }
    }
    if let Some(targets) = manifest.get_mut("target").and_then(Item::as_table_like_mut) {
        for (_, target) in targets.iter_mut() {
            for key in ["dependencies", "dev-dependencies", "build-dependencies"] {
                if let Some(item) = target.get_mut(key) {
                    rewrite_table(item, crate_dir, &roots, Path::new("plugin"));
                }
            }
        }
    }

    // A fresh stage each time: nothing of an earlier layout may linger.
    let io = |path: &Path, source: std::io::Error| BuildError::Write {
        path: path.to_owned(),
        source,
    };
    if stage.exists() {
        std::fs::remove_dir_all(stage).map_err(|e| io(stage, e))?;
    }
    let plugin = stage.join("plugin");
    let deps = stage.join("deps");
    std::fs::create_dir_all(&plugin).map_err(|e| io(&plugin, e))?;
    std::fs::create_dir_all(&deps).map_err(|e| io(&deps, e))?;
    for (root, i) in &roots.roots {
        let link = deps.join(i.to_string());
        symlink(root, &link).map_err(|e| io(&link, e))?;
    }
    let entries = std::fs::read_dir(crate_dir).map_err(|source| BuildError::Read {
        path: crate_dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| BuildError::Read {
            path: crate_dir.to_owned(),
            source,
        })?;
        let name = entry.file_name();
        if matches!(
            name.to_str(),
            Some("Cargo.toml" | "Cargo.lock" | "target" | ".git")
        ) {
            continue;
        }
        let link = plugin.join(&name);
        symlink(&entry.path(), &link).map_err(|e| io(&link, e))?;
    }
    let lock = crate_dir.join("Cargo.lock");
    if lock.is_file() {
        let to = stage.join("Cargo.lock");
        std::fs::copy(&lock, &to).map_err(|e| io(&to, e))?;
    }
    let staged_manifest = plugin.join("Cargo.toml");
    std::fs::write(&staged_manifest, manifest.to_string()).map_err(|e| io(&staged_manifest, e))?;
    let root_path = stage.join("Cargo.toml");
    std::fs::write(&root_path, root_manifest.to_string()).map_err(|e| io(&root_path, e))?;
    Ok(Some(plugin))
}

/// Points every `path` in a dependency table at its staged place, relative to
/// `from` (a folder of the stage: `plugin`, or the stage root).
fn rewrite_table(item: &mut Item, crate_dir: &Path, roots: &Roots, from: &Path) {
    let Some(table) = item.as_table_like_mut() else {
        return;
    };
    for (_, dep) in table.iter_mut() {
        let Some(dep) = dep.as_table_like_mut() else {
            continue;
        };
        let Some(path) = dep.get("path").and_then(Item::as_str) else {
            continue;
        };
        let target = normalize(&crate_dir.join(path));
        let staged = match target.strip_prefix(crate_dir) {
            Ok(inside) => Path::new("plugin").join(inside),
            Err(_) => match roots.staged(&target) {
                Some(staged) => staged,
                None => continue,
            },
        };
        let relative = relative_to(&staged, from);
        let text = relative.to_string_lossy().replace('\\', "/");
        let text = if text.is_empty() {
            ".".to_owned()
        } else {
            text
        };
        match dep.get_mut("path") {
            Some(Item::Value(v)) => *v = Value::from(text),
            Some(other) => *other = toml_edit::value(text),
            None => {}
        }
    }
}

/// `to` relative to `from`, both relative to the stage root.
fn relative_to(to: &Path, from: &Path) -> PathBuf {
    let (to, from): (Vec<_>, Vec<_>) = (to.components().collect(), from.components().collect());
    let common = to.iter().zip(&from).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    out.extend(&to[common..]);
    out
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    if target.is_dir() {
        std::os::windows::fs::symlink_dir(target, link)
    } else {
        std::os::windows::fs::symlink_file(target, link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str, dir: &Path) -> PathPackage {
        PathPackage {
            name: name.into(),
            version: "0.1.0".into(),
            dir: dir.to_owned(),
        }
    }

    #[test]
    fn a_plugin_with_only_its_own_packages_is_not_staged() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("p");
        let staged = stage(
            &plugin,
            &[
                package("p", &plugin),
                package("helper", &plugin.join("helper")),
            ],
            &dir.path().join("stage"),
            |_| None,
        )
        .unwrap();
        assert_eq!(staged, None);
    }

    #[test]
    fn outside_path_dependencies_are_staged_under_fixed_names_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let sdk_repo = dir.path().join("somewhere/lockstep");
        let plugin = dir.path().join("work/plugin");
        std::fs::create_dir_all(plugin.join("src")).unwrap();
        std::fs::create_dir_all(sdk_repo.join("plugin-sdk")).unwrap();
        std::fs::write(plugin.join("src/lib.rs"), "").unwrap();
        std::fs::write(plugin.join("Cargo.lock"), "# lock\n").unwrap();
        std::fs::write(
            plugin.join("Cargo.toml"),
            r#"[package]
name = "p"
edition = "2024"

[dependencies]
# the SDK, beside this plugin
lockstep-sdk = { path = "../../somewhere/lockstep/plugin-sdk" }
local = { path = "helper" }
serde = "1"

[target.'cfg(target_arch = "wasm32")'.dependencies]
abi = { path = "../../somewhere/lockstep/plugin-sdk/abi" }

[profile.release]
opt-level = 3

[workspace]
"#,
        )
        .unwrap();
        let stage_dir = dir.path().join("stage");
        let staged = stage(
            &plugin,
            &[
                package("p", &plugin),
                package("lockstep-sdk", &sdk_repo.join("plugin-sdk")),
                package("lockstep-abi", &sdk_repo.join("plugin-sdk/abi")),
            ],
            &stage_dir,
            |_| Some(sdk_repo.clone()),
        )
        .unwrap()
        .expect("staged");
        assert_eq!(staged, stage_dir.join("plugin"));
        let manifest = std::fs::read_to_string(staged.join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(r#"path = "../deps/0/plugin-sdk""#),
            "{manifest}"
        );
        assert!(
            manifest.contains(r#"path = "../deps/0/plugin-sdk/abi""#),
            "{manifest}"
        );
        assert!(
            !manifest.contains(r#"path = "plugin/helper""#),
            "{manifest}"
        );
        assert!(manifest.contains(r#"path = "helper""#), "{manifest}");
        assert!(
            manifest.contains("# the SDK, beside this plugin"),
            "{manifest}"
        );
        assert!(!manifest.contains("[workspace]") && !manifest.contains("[profile"));
        let root = std::fs::read_to_string(stage_dir.join("Cargo.toml")).unwrap();
        assert!(root.contains(r#"members = ["plugin"]"#), "{root}");
        assert!(root.contains(r#"exclude = ["deps"]"#), "{root}");
        assert!(root.contains(r#"resolver = "3""#), "{root}");
        assert!(root.contains("[profile.release]"), "{root}");
        assert_eq!(
            std::fs::read_link(stage_dir.join("deps/0")).unwrap(),
            sdk_repo
        );
        assert_eq!(
            std::fs::read_link(staged.join("src")).unwrap(),
            plugin.join("src")
        );
        assert_eq!(
            std::fs::read_to_string(stage_dir.join("Cargo.lock")).unwrap(),
            "# lock\n"
        );
        // The plugin's own manifest is left as written.
        assert!(
            std::fs::read_to_string(plugin.join("Cargo.toml"))
                .unwrap()
                .contains("../../somewhere")
        );
    }

    #[test]
    fn a_plugin_that_is_a_workspace_of_several_members_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("plugin");
        std::fs::create_dir_all(&plugin).unwrap();
        std::fs::write(
            plugin.join("Cargo.toml"),
            "[package]\nname = \"p\"\n[workspace]\nmembers = [\"a\"]\n",
        )
        .unwrap();
        let err = stage(
            &plugin,
            &[package("sdk", &dir.path().join("sdk"))],
            &dir.path().join("stage"),
            |_| None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("workspace of its own"), "{err}");
    }
}
