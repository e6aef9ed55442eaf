//! A Parquet source's files are checked before DataFusion reads them (the checks are
//! in `parquet_check`): a footer that claims more bytes than its file has, or metadata
//! whose column chunks lie outside the file, must be a clear error naming the file,
//! never a panic in a reader that trusts them.

use crate::BatchError;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use std::path::Path;
use std::sync::Arc;

use crate::parquet_check::{TAIL, footer_problem, metadata_length, metadata_problem};

/// Maps an I/O error on `path` to [`BatchError::SourceIo`].
fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BatchError + 'a {
    move |source| BatchError::SourceIo {
        action,
        location: path.display().to_string(),
        source,
    }
}

fn damaged(location: &str, problem: String) -> BatchError {
    BatchError::Source(format!("Parquet source {location} {problem}"))
}

/// Checks the footer of every file `source` names (one file, or a directory read
/// recursively) whose name ends with `extension`.
pub(crate) fn check_local(source: &str, extension: &str) -> Result<(), BatchError> {
    let root = Path::new(source);
    if !root.exists() {
        // Not a path (a glob, a URL): DataFusion lists it and says what is missing.
        return Ok(());
    }
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::metadata(&path).map_err(io("reading", &path))?;
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path).map_err(io("listing", &path))?;
            for entry in entries {
                let entry = entry.map_err(io("listing", &path))?;
                pending.push(entry.path());
            }
            continue;
        }
        let named = path
            .to_string_lossy()
            .to_ascii_lowercase()
            .ends_with(extension);
        if path != root && !named {
            continue;
        }
        let tail = read_tail(&path, meta.len(), TAIL).map_err(io("reading", &path))?;
        if let Some(problem) = footer_problem(meta.len(), &tail) {
            return Err(damaged(&path.display().to_string(), problem));
        }
        let footer = read_tail(&path, meta.len(), TAIL + metadata_length(&tail))
            .map_err(io("reading", &path))?;
        if let Some(problem) = metadata_problem(meta.len(), &footer) {
            return Err(damaged(&path.display().to_string(), problem));
        }
    }
    Ok(())
}

/// The last `take` bytes of the file at `path`, `size` bytes long.
fn read_tail(path: &Path, size: u64, take: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let take = size.min(take);
    file.seek(SeekFrom::Start(size - take))?;
    let mut tail = vec![0; take as usize];
    file.read_exact(&mut tail)?;
    Ok(tail)
}

/// [`check_local`] for objects under `prefix` in `store` (`url` names them in errors).
pub(crate) async fn check_objects(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    url: &str,
    extension: &str,
) -> Result<(), BatchError> {
    let prefix = object_store::path::Path::from(prefix);
    let objects: Vec<_> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|source| BatchError::SourceObject {
            action: "listing",
            location: url.to_owned(),
            source,
        })?;
    for object in objects {
        let name = object.location.to_string();
        if !name.to_ascii_lowercase().ends_with(extension) && is_not_the_prefix(&name, &prefix) {
            continue;
        }
        let size = object.size;
        let tail = if size >= TAIL {
            store
                .get_range(&object.location, size - TAIL..size)
                .await
                .map_err(|source| BatchError::SourceObject {
                    action: "reading",
                    location: format!("{url} ({name})"),
                    source,
                })?
                .to_vec()
        } else {
            Vec::new()
        };
        if let Some(problem) = footer_problem(size, &tail) {
            return Err(damaged(&format!("s3 object {name}"), problem));
        }
        let start = size - TAIL - metadata_length(&tail);
        let footer = store
            .get_range(&object.location, start..size)
            .await
            .map_err(|source| BatchError::SourceObject {
                action: "reading",
                location: format!("{url} ({name})"),
                source,
            })?;
        if let Some(problem) = metadata_problem(size, &footer) {
            return Err(damaged(&format!("s3 object {name}"), problem));
        }
    }
    Ok(())
}

/// Whether `name` is not the prefix itself (a source that names one object is checked
/// whatever its extension).
fn is_not_the_prefix(name: &str, prefix: &object_store::path::Path) -> bool {
    name != prefix.as_ref()
}
