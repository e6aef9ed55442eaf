//! Group versions, bound to one plugin hash when first written.

use crate::error::{io, unique_tmp_name};
use crate::{OfflineError, layout};
use lockstep_abi::Manifest;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A registered feature-group version. Immutable once written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupVersion {
    /// Group name.
    pub name: String,
    /// Semantic version, from the plugin's manifest.
    pub version: String,
    /// SHA-256 of the plugin component that computes it.
    pub plugin_hash: String,
    /// The plugin's manifest at registration.
    pub manifest: Manifest,
    /// When it was registered, UTC microseconds.
    pub registered_at: i64,
}

/// Reads the registry entry of `group@version`, if any.
pub(crate) fn read(
    root: &Path,
    group: &str,
    version: &str,
) -> Result<Option<GroupVersion>, OfflineError> {
    let path = layout::registry_entry(root, group, version);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("reading", &path)(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| OfflineError::Registry {
            path,
            message: e.to_string(),
        })
}

/// Registers `manifest`'s group version for `plugin_hash`, or checks that it is already
/// registered for that hash. Create-if-absent: of two racing writers with different
/// plugins, exactly one wins and the other gets [`OfflineError::HashMismatch`].
pub(crate) fn register(
    root: &Path,
    manifest: &Manifest,
    plugin_hash: &str,
    now_micros: i64,
) -> Result<GroupVersion, OfflineError> {
    let (group, version) = (&manifest.name, &manifest.version);
    let path = layout::registry_entry(root, group, version);
    if read(root, group, version)?.is_none() {
        let entry = GroupVersion {
            name: group.clone(),
            version: version.clone(),
            plugin_hash: plugin_hash.to_owned(),
            manifest: manifest.clone(),
            registered_at: now_micros,
        };
        let dir = path.parent().unwrap_or(root);
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let json = serde_json::to_vec_pretty(&entry).map_err(|e| OfflineError::Registry {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let tmp = dir.join(unique_tmp_name(version));
        std::fs::write(&tmp, json).map_err(io("writing", &tmp))?;
        // A hard link fails if the name exists: create-if-absent with complete content.
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => return Ok(entry),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("registering", &path)(e)),
        }
    }
    let existing = read(root, group, version)?.ok_or_else(|| OfflineError::Registry {
        path: path.clone(),
        message: "vanished while registering".into(),
    })?;
    if existing.plugin_hash != plugin_hash {
        return Err(OfflineError::HashMismatch {
            group: group.clone(),
            version: version.clone(),
            registered: existing.plugin_hash,
            offered: plugin_hash.to_owned(),
        });
    }
    Ok(existing)
}
