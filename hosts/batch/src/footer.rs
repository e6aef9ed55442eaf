//! A Parquet source's files are checked before DataFusion reads them: a footer that
//! claims more bytes than its file has must be a clear error naming the file, never a
//! panic in a reader that trusts the length.

use crate::BatchError;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use std::path::Path;
use std::sync::Arc;

/// A Parquet file ends with its metadata, the metadata's length (4 bytes, little
/// endian) and the magic `PAR1`; it also starts with `PAR1`.
const MAGIC: &[u8; 4] = b"PAR1";
const TAIL: u64 = 8;

/// Why a file whose last 8 bytes are `tail` and whose size is `size` cannot be a
/// Parquet file, if it cannot.
pub(crate) fn footer_problem(size: u64, tail: &[u8]) -> Option<String> {
    if size < 12 || tail.len() < TAIL as usize {
        return Some(format!(
            "is {size} bytes long: too short for a Parquet file"
        ));
    }
    let tail = &tail[tail.len() - TAIL as usize..];
    if &tail[4..] == b"PARE" {
        return Some("is an encrypted Parquet file, which is not supported".into());
    }
    if &tail[4..] != MAGIC {
        return Some(
            "does not end with the Parquet magic bytes `PAR1`: damaged or not Parquet".into(),
        );
    }
    let length = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if length + TAIL + 4 > size {
        return Some(format!(
            "has a damaged footer: its metadata claims {length} bytes, but the file has {size}"
        ));
    }
    None
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
        let meta = std::fs::metadata(&path)
            .map_err(|e| BatchError::Source(format!("reading {}: {e}", path.display())))?;
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path)
                .map_err(|e| BatchError::Source(format!("listing {}: {e}", path.display())))?;
            for entry in entries {
                let entry = entry
                    .map_err(|e| BatchError::Source(format!("listing {}: {e}", path.display())))?;
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
        let tail = read_tail(&path, meta.len())
            .map_err(|e| BatchError::Source(format!("reading {}: {e}", path.display())))?;
        if let Some(problem) = footer_problem(meta.len(), &tail) {
            return Err(damaged(&path.display().to_string(), problem));
        }
    }
    Ok(())
}

fn read_tail(path: &Path, size: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let take = size.min(TAIL);
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
        .map_err(|e| BatchError::Source(format!("listing {url}: {e}")))?;
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
                .map_err(|e| BatchError::Source(format!("reading {url} ({name}): {e}")))?
                .to_vec()
        } else {
            Vec::new()
        };
        if let Some(problem) = footer_problem(size, &tail) {
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

#[cfg(test)]
mod tests {
    use super::footer_problem;

    fn tail(length: u32, magic: &[u8; 4]) -> Vec<u8> {
        let mut t = length.to_le_bytes().to_vec();
        t.extend_from_slice(magic);
        t
    }

    #[test]
    fn footers_that_do_not_fit_their_file_are_named() {
        assert_eq!(footer_problem(100, &tail(88, b"PAR1")), None);
        let too_long = footer_problem(100, &tail(89, b"PAR1")).expect("too long");
        assert!(
            too_long.contains("claims 89 bytes") && too_long.contains("has 100"),
            "{too_long}"
        );
        assert!(footer_problem(100, &tail(u32::MAX, b"PAR1")).is_some());
        assert!(
            footer_problem(100, &tail(10, b"JUNK"))
                .expect("magic")
                .contains("PAR1")
        );
        assert!(
            footer_problem(100, &tail(10, b"PARE"))
                .expect("encrypted")
                .contains("encrypted")
        );
        assert!(
            footer_problem(11, &tail(0, b"PAR1"))
                .expect("short")
                .contains("too short")
        );
        assert!(footer_problem(3, &[1, 2, 3]).is_some());
    }
}
