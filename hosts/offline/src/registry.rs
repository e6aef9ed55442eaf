//! Group versions, bound to one plugin hash when first written.

use crate::backend::Backend;
use crate::{OfflineError, layout};
use lockstep_abi::Manifest;
use serde::{Deserialize, Serialize};

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
    /// The KMS key its objects on S3 are encrypted under (SSE-KMS), if any: every
    /// writer of the version (backfills, deletion markers, purges) uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

/// Refuses a writer whose KMS key differs from the version's.
fn check_key(backend: &Backend, existing: &GroupVersion) -> Result<(), OfflineError> {
    let offered = backend.kms_key_id();
    if existing.kms_key_id.as_deref() != offered {
        return Err(OfflineError::KmsKeyMismatch {
            group: existing.name.clone(),
            version: existing.version.clone(),
            registered: existing.kms_key_id.clone(),
            offered: offered.map(str::to_owned),
        });
    }
    Ok(())
}

/// Reads the registry entry of `group@version`, if any.
pub(crate) async fn read(
    backend: &Backend,
    group: &str,
    version: &str,
) -> Result<Option<GroupVersion>, OfflineError> {
    let rel = layout::registry_rel(group, version);
    let path = backend.locate(&rel);
    let Some(bytes) = backend.read(&rel).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| OfflineError::Registry {
            path,
            message: e.to_string(),
        })
}

/// Registers `manifest`'s group version for `plugin_hash`, or checks that it is already
/// registered for that hash. Create-if-absent: of two racing writers with different
/// plugins, exactly one wins and the other gets [`OfflineError::HashMismatch`].
pub(crate) async fn register(
    backend: &Backend,
    manifest: &Manifest,
    plugin_hash: &str,
    now_micros: i64,
) -> Result<GroupVersion, OfflineError> {
    let (group, version) = (&manifest.name, &manifest.version);
    let rel = layout::registry_rel(group, version);
    let path = backend.locate(&rel);
    if read(backend, group, version).await?.is_none() {
        let entry = GroupVersion {
            name: group.clone(),
            version: version.clone(),
            plugin_hash: plugin_hash.to_owned(),
            manifest: manifest.clone(),
            registered_at: now_micros,
            kms_key_id: backend.kms_key_id().map(str::to_owned),
        };
        let json = serde_json::to_vec_pretty(&entry).map_err(|e| OfflineError::Registry {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if backend.create_new(&rel, json).await? {
            return Ok(entry);
        }
    }
    let existing = read(backend, group, version)
        .await?
        .ok_or_else(|| OfflineError::Registry {
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
    check_key(backend, &existing)?;
    Ok(existing)
}

/// The entry `manifest`'s group version has or would have for `plugin_hash`, without
/// binding it: an error only when another hash holds it already. A job checks this
/// before its work and binds with [`register`] when it commits, so a job that fails
/// before writing anything leaves the version free for the right build.
pub(crate) async fn check(
    backend: &Backend,
    manifest: &Manifest,
    plugin_hash: &str,
    now_micros: i64,
) -> Result<GroupVersion, OfflineError> {
    let (group, version) = (&manifest.name, &manifest.version);
    match read(backend, group, version).await? {
        Some(existing) if existing.plugin_hash != plugin_hash => Err(OfflineError::HashMismatch {
            group: group.clone(),
            version: version.clone(),
            registered: existing.plugin_hash,
            offered: plugin_hash.to_owned(),
        }),
        Some(existing) => {
            check_key(backend, &existing)?;
            Ok(existing)
        }
        None => Ok(GroupVersion {
            name: group.clone(),
            version: version.clone(),
            plugin_hash: plugin_hash.to_owned(),
            manifest: manifest.clone(),
            registered_at: now_micros,
            kms_key_id: backend.kms_key_id().map(str::to_owned),
        }),
    }
}
