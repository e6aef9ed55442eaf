//! Precompiled artifacts on disk, keyed by component hash and engine settings.
//!
//! A second load of the same component skips compilation. Artifacts are read into memory
//! rather than memory-mapped: a mapped file that someone truncates turns into SIGBUS
//! for the whole host, a read file into at worst a recompilation.
//! The key includes wasmtime's precompile-compatibility hash, so artifacts from another
//! wasmtime version or other engine settings are never used; a stale or corrupt file is
//! recompiled and replaced. Files are written to a temporary name and renamed, so a
//! reader never sees half an artifact.
//!
//! The directory must be trusted: precompiled code is executed as is.

use crate::LoadError;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

pub(crate) struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
}

impl ArtifactCache {
    pub(crate) fn open(dir: &Path, engine: &Engine) -> Result<Self, LoadError> {
        std::fs::create_dir_all(dir).map_err(|source| LoadError::Io {
            path: dir.to_owned(),
            source,
        })?;
        // SipHash with fixed keys: stable for the same engine build and settings.
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(ArtifactCache {
            dir: dir.to_owned(),
            engine_key: format!("{:016x}", h.finish()),
        })
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}-{}.cwasm", self.engine_key))
    }

    pub(crate) fn get_or_compile(
        &self,
        engine: &Engine,
        hash: &str,
        bytes: &[u8],
    ) -> Result<Component, LoadError> {
        let path = self.path(hash);
        if let Ok(artifact) = std::fs::read(&path) {
            // SAFETY: the file was written by `store` below from a component compiled by
            // an engine with the same compatibility hash, in a directory the operator
            // trusts; wasmtime additionally checks its header and version before use.
            match unsafe { Component::deserialize(engine, &artifact) } {
                Ok(component) => return Ok(component),
                Err(e) => tracing::warn!("discarding unusable artifact {}: {e}", path.display()),
            }
        }
        let component = Component::new(engine, bytes).map_err(|e| LoadError::Compile {
            hash: hash.to_owned(),
            message: format!("{e:#}"),
        })?;
        if let Err(e) = self.store(&path, &component) {
            tracing::warn!("cannot cache artifact {}: {e}", path.display());
        }
        Ok(component)
    }

    fn store(&self, path: &Path, component: &Component) -> Result<(), String> {
        let bytes = component.serialize().map_err(|e| e.to_string())?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            e.to_string()
        })
    }
}
