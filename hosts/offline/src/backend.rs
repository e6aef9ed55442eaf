//! Where the store's objects live: a local directory, or a bucket and prefix in S3
//! (any S3-compatible endpoint, through `object_store`).
//!
//! Both give the three guarantees the commit protocol needs: a replacing put is atomic
//! (a reader sees the old object or the new one), a create-if-absent put has exactly
//! one winner, and a listing sees only committed objects. Locally that is a dot-named
//! temporary file, fsync and rename (or hard link, for create-if-absent); on S3 a
//! single PUT is atomic and `If-None-Match: *` makes it create-if-absent.
//!
//! The store's API is async, on the caller's runtime: object-store calls are awaited,
//! local file work runs on the runtime's blocking threads (as `tokio::fs` does). A
//! commit's bulk writes run on threads of their own and reach an object store through
//! the caller's runtime handle (`*_on` methods).

use crate::OfflineError;
use crate::error::{io, unique_tmp_name};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::runtime::Handle;

/// Staged objects given their names at once on an object store (each a copy and a
/// delete): enough to hide the round trips of a commit of thousands of small hour
/// files, few enough to stay far below S3's request rates per prefix.
const PUBLISH_CONCURRENCY: usize = 32;

/// Files at least this large are staged with direct writes (they would only evict other
/// data from the page cache); smaller ones through it.
const DIRECT_WRITE_MIN: usize = 1 << 20;

/// A store location: a local directory or `s3://bucket/prefix`.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    Local(PathBuf),
    Object(Arc<ObjectBackend>),
}

/// An object store under a prefix.
pub(crate) struct ObjectBackend {
    store: Arc<dyn ObjectStore>,
    url: String,
    prefix: String,
    kms_key_id: Option<String>,
}

impl std::fmt::Debug for ObjectBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBackend")
            .field("url", &self.url)
            .finish()
    }
}

/// S3 connection settings beyond the URL. Unset fields come from the standard AWS
/// environment (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, `AWS_REGION`,
/// `AWS_ACCESS_KEY_ID`, …), by the rules every AWS client of Lockstep follows.
pub type S3Options = lockstep_aws::AwsOptions;

pub use lockstep_aws::{parse_s3_url, s3_object_store};

fn object_error(
    action: &'static str,
    at: String,
) -> impl FnOnce(object_store::Error) -> OfflineError {
    move |e| OfflineError::Object {
        action,
        location: at,
        message: e.to_string(),
    }
}

impl Backend {
    /// A local directory, created if needed.
    pub(crate) fn local(root: PathBuf) -> Result<Self, OfflineError> {
        std::fs::create_dir_all(&root).map_err(io("creating", &root))?;
        Ok(Backend::Local(root))
    }

    /// `s3://bucket/prefix`, its objects put with SSE-KMS under `kms_key_id` when given.
    pub(crate) fn s3(
        url: &str,
        options: &S3Options,
        kms_key_id: Option<&str>,
    ) -> Result<Self, OfflineError> {
        let (bucket, prefix) = parse_s3_url(url).ok_or_else(|| OfflineError::Object {
            action: "parsing",
            location: url.to_owned(),
            message: "expected s3://BUCKET[/PREFIX]".into(),
        })?;
        let store = lockstep_aws::s3_object_store_encrypted(options, &bucket, kms_key_id)
            .map_err(object_error("connecting to", url.to_owned()))?;
        Ok(Backend::Object(Arc::new(ObjectBackend {
            store,
            url: format!(
                "s3://{bucket}{}{prefix}",
                if prefix.is_empty() { "" } else { "/" }
            ),
            prefix,
            kms_key_id: kms_key_id.map(str::to_owned),
        })))
    }

    /// The KMS key every object put is encrypted under, if any.
    pub(crate) fn kms_key_id(&self) -> Option<&str> {
        match self {
            Backend::Local(_) => None,
            Backend::Object(o) => o.kms_key_id.as_deref(),
        }
    }

    /// Where `rel` is, for messages and summaries.
    pub(crate) fn locate(&self, rel: &str) -> PathBuf {
        match self {
            Backend::Local(root) => root.join(rel),
            Backend::Object(o) => PathBuf::from(format!("{}/{rel}", o.url)),
        }
    }

    /// The store's root: a directory, or the `s3://` URL.
    pub(crate) fn root(&self) -> PathBuf {
        match self {
            Backend::Local(root) => root.clone(),
            Backend::Object(o) => PathBuf::from(&o.url),
        }
    }

    /// Whether this backend is a local directory (where process liveness can be told).
    pub(crate) fn is_local(&self) -> bool {
        matches!(self, Backend::Local(_))
    }

    /// The object at `rel`, or `None` if there is none.
    pub(crate) async fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, OfflineError> {
        match self {
            Backend::Local(root) => {
                let path = root.join(rel);
                blocking(root, move || match std::fs::read(&path) {
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io("reading", &path)(e)),
                })
                .await
            }
            Backend::Object(o) => match o.store.get(&o.key(rel)).await {
                Ok(r) => r
                    .bytes()
                    .await
                    .map(|b| Some(b.to_vec()))
                    .map_err(object_error("reading", self.describe(rel))),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(object_error("reading", self.describe(rel))(e)),
            },
        }
    }

    /// Writes `bytes` at `rel` unless something is there already; `false` if it was.
    pub(crate) async fn create_new(&self, rel: &str, bytes: Vec<u8>) -> Result<bool, OfflineError> {
        match self {
            Backend::Local(root) => {
                let (root, rel) = (root.clone(), rel.to_owned());
                blocking(&root.clone(), move || {
                    local::create_new(&root, &rel, &bytes)
                })
                .await
            }
            Backend::Object(o) => {
                let opts = PutOptions::from(PutMode::Create);
                match o
                    .store
                    .put_opts(&o.key(rel), PutPayload::from(bytes), opts)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                    Err(object_store::Error::Precondition { .. }) => Ok(false),
                    Err(e) => Err(object_error("creating", self.describe(rel))(e)),
                }
            }
        }
    }

    /// Writes `bytes` under a dot-named temporary name beside `rel` (which every Parquet
    /// and Hive reader skips) and returns that name; [`publish`](Self::publish) later
    /// gives it its real one. A commit stages every hour of a job before it publishes
    /// any, and makes them durable together with one [`sync`](Self::sync): thousands of
    /// small hour files cost one flush, not two fsyncs each.
    ///
    /// Called from a thread outside the runtime (a commit's writer threads): local
    /// files are written on the calling thread, object-store calls run on `runtime`.
    pub(crate) fn stage_on(
        &self,
        runtime: &Handle,
        rel: &str,
        bytes: Vec<u8>,
    ) -> Result<String, OfflineError> {
        let staged = staged_name(rel);
        self.write_unsynced_on(runtime, &staged, bytes)?;
        Ok(staged)
    }

    /// Writes `bytes` at `rel`, a name no other writer uses (a table format's file,
    /// invisible until the table commits it), durable at the next [`sync`](Self::sync).
    /// Called from a thread outside the runtime, like [`stage_on`](Self::stage_on).
    pub(crate) fn write_unsynced_on(
        &self,
        runtime: &Handle,
        rel: &str,
        bytes: Vec<u8>,
    ) -> Result<(), OfflineError> {
        match self {
            Backend::Local(root) => local::write_unsynced(root, rel, &bytes),
            Backend::Object(o) => runtime.block_on(o.put(rel, bytes)),
        }
    }

    /// Gives the staged object `staged` its name `rel`, replacing what was there in one
    /// step (a rename locally; on S3 a server-side copy, then the staged key is deleted).
    /// `false` when `staged` is gone: published already.
    /// Not durable until the next [`sync`](Self::sync).
    pub(crate) async fn publish(&self, staged: &str, rel: &str) -> Result<bool, OfflineError> {
        match self {
            Backend::Local(root) => {
                let (from, to) = (root.join(staged), root.join(rel));
                blocking(root, move || match std::fs::rename(&from, &to) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(io("committing", &to)(e)),
                })
                .await
            }
            Backend::Object(o) => {
                let at = || self.describe(rel);
                match o.store.copy(&o.key(staged), &o.key(rel)).await {
                    Ok(()) => {}
                    Err(object_store::Error::NotFound { .. }) => return Ok(false),
                    Err(e) => return Err(object_error("committing", at())(e)),
                }
                match o.store.delete(&o.key(staged)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
                    Err(e) => Err(object_error("committing", at())(e)),
                }
            }
        }
    }

    /// [`publish`](Self::publish)es each `(staged, rel)` pair: locally every rename in
    /// one blocking call (a commit of a sparse year renames thousands of hour files,
    /// and a hand-off to a blocking thread per rename cost more than the rename), on
    /// an object store [`PUBLISH_CONCURRENCY`] copies at a time. The number published
    /// (pairs whose staged object was already gone are not counted). Not durable until
    /// the next [`sync`](Self::sync).
    pub(crate) async fn publish_all(
        &self,
        pairs: &[(String, String)],
    ) -> Result<usize, OfflineError> {
        match self {
            Backend::Local(root) => {
                let moves: Vec<(PathBuf, PathBuf)> = pairs
                    .iter()
                    .map(|(staged, rel)| (root.join(staged), root.join(rel)))
                    .collect();
                blocking(root, move || {
                    let mut published = 0;
                    for (from, to) in moves {
                        match std::fs::rename(&from, &to) {
                            Ok(()) => published += 1,
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => return Err(io("committing", &to)(e)),
                        }
                    }
                    Ok(published)
                })
                .await
            }
            Backend::Object(_) => {
                futures::stream::iter(pairs)
                    .map(|(staged, rel)| self.publish(staged, rel))
                    .buffer_unordered(PUBLISH_CONCURRENCY)
                    .try_fold(
                        0,
                        |n, published| async move { Ok(n + usize::from(published)) },
                    )
                    .await
            }
        }
    }

    /// Makes every file written and renamed under a local store so far durable: one
    /// `syncfs` of its file system. An object store's writes are durable when they
    /// return.
    pub(crate) async fn sync(&self) -> Result<(), OfflineError> {
        match self {
            Backend::Local(root) => {
                let dir = root.clone();
                blocking(root, move || local::sync(&dir)).await
            }
            Backend::Object(_) => Ok(()),
        }
    }

    /// Removes the object at `rel`; nothing to remove is not an error.
    pub(crate) async fn delete(&self, rel: &str) -> Result<(), OfflineError> {
        match self {
            Backend::Local(root) => {
                let path = root.join(rel);
                blocking(root, move || local::delete(&path)).await
            }
            Backend::Object(o) => match o.store.delete(&o.key(rel)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(object_error("removing", self.describe(rel))(e)),
            },
        }
    }

    /// Removes the local object at `rel` on the calling thread; for a lock dropped
    /// without being released, where nothing can be awaited. `false` for an object
    /// store, where nothing was done.
    pub(crate) fn delete_local_now(&self, rel: &str) -> bool {
        match self {
            Backend::Local(root) => local::delete(&root.join(rel)).is_ok(),
            Backend::Object(_) => false,
        }
    }

    /// Whether any object lies under the folder `rel_dir`.
    pub(crate) async fn has_any_under(&self, rel_dir: &str) -> Result<bool, OfflineError> {
        match self {
            Backend::Local(root) => {
                let dir = root.join(rel_dir);
                blocking(root, move || Ok(dir.is_dir())).await
            }
            Backend::Object(o) => {
                let prefix = o.key(rel_dir);
                let mut listing = o.store.list(Some(&prefix));
                match listing.try_next().await {
                    Ok(first) => Ok(first.is_some()),
                    Err(e) => Err(object_error("listing", self.describe(rel_dir))(e)),
                }
            }
        }
    }

    /// Replaces the object at `rel` with `bytes`, atomically and durably.
    pub(crate) async fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<PathBuf, OfflineError> {
        match self {
            Backend::Local(root) => {
                let path = root.join(rel);
                blocking(root, move || local::put(&path, &bytes)).await
            }
            // A single PUT replaces an object atomically.
            Backend::Object(o) => {
                o.put(rel, bytes).await?;
                Ok(self.locate(rel))
            }
        }
    }

    /// Relative paths of the objects under `rel_dir` whose name is `name`, sorted.
    pub(crate) async fn list_named(
        &self,
        rel_dir: &str,
        name: &str,
    ) -> Result<Vec<String>, OfflineError> {
        let name = name.to_owned();
        self.list_matching(rel_dir, move |n: &str| n == name).await
    }

    /// Relative paths of the objects under `rel_dir` whose name `matches`, sorted.
    pub(crate) async fn list_matching(
        &self,
        rel_dir: &str,
        matches: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<Vec<String>, OfflineError> {
        let mut out = Vec::new();
        match self {
            Backend::Local(root) => {
                let (base, dir) = (root.clone(), root.join(rel_dir));
                out = blocking(root, move || {
                    let mut out = Vec::new();
                    collect_named(&base, &dir, &matches, &mut out)?;
                    Ok(out)
                })
                .await?;
            }
            Backend::Object(o) => {
                let keys: Vec<ObjectPath> = o
                    .store
                    .list(Some(&o.key(rel_dir)))
                    .map_ok(|meta| meta.location)
                    .try_collect()
                    .await
                    .map_err(object_error("listing", self.describe(rel_dir)))?;
                let strip = if o.prefix.is_empty() {
                    String::new()
                } else {
                    format!("{}/", o.prefix)
                };
                for key in keys {
                    let key = key.as_ref();
                    if key.rsplit('/').next().is_some_and(&matches) {
                        out.push(key.strip_prefix(&strip).unwrap_or(key).to_owned());
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn describe(&self, rel: &str) -> String {
        self.locate(rel).to_string_lossy().into_owned()
    }
}

/// A dot-named temporary name beside `rel`, which every Parquet and Hive reader skips.
fn staged_name(rel: &str) -> String {
    let (dir_rel, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    if dir_rel.is_empty() {
        unique_tmp_name(name)
    } else {
        format!("{dir_rel}/{}", unique_tmp_name(name))
    }
}

/// Runs local file work `f` on the runtime's blocking threads, so that a disk that
/// stalls holds up no other task. `root` names the store in the (unlikely) error of a
/// runtime shutting down meanwhile.
async fn blocking<T: Send + 'static>(
    root: &Path,
    f: impl FnOnce() -> Result<T, OfflineError> + Send + 'static,
) -> Result<T, OfflineError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OfflineError::Io {
            action: "waiting for file work under",
            path: root.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?
}

impl ObjectBackend {
    fn key(&self, rel: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(rel)
        } else {
            ObjectPath::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// Puts `bytes` at `rel`, replacing what was there.
    async fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<(), OfflineError> {
        self.store
            .put(&self.key(rel), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(object_error("writing", format!("{}/{rel}", self.url)))
    }
}

/// The local directory's operations, run on blocking threads.
mod local {
    use super::{io, remove_orphaned_tmp_files, unique_tmp_name, write_local_file};
    use crate::OfflineError;
    use std::path::Path;

    pub(super) fn create_new(root: &Path, rel: &str, bytes: &[u8]) -> Result<bool, OfflineError> {
        let path = root.join(rel);
        let dir = path.parent().unwrap_or(root);
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let tmp = dir.join(unique_tmp_name("entry"));
        std::fs::write(&tmp, bytes).map_err(io("writing", &tmp))?;
        // A hard link fails if the name exists: create-if-absent, whole content.
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io("creating", &path)(e)),
        }
    }

    pub(super) fn write_unsynced(root: &Path, rel: &str, bytes: &[u8]) -> Result<(), OfflineError> {
        let path = root.join(rel);
        let dir = path.parent().unwrap_or(root);
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        write_local_file(&path, bytes)?;
        Ok(())
    }

    pub(super) fn delete(path: &Path) -> Result<(), OfflineError> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing", path)(e)),
        }
    }

    pub(super) fn put(path: &Path, bytes: &[u8]) -> Result<std::path::PathBuf, OfflineError> {
        let dir = path.parent().unwrap_or(path);
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A dot-named temporary file, which every Parquet reader skips.
        let tmp = dir.join(unique_tmp_name(&name));
        let file = write_local_file(&tmp, bytes)?;
        file.sync_all().map_err(io("syncing", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("committing", path))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        remove_orphaned_tmp_files(dir);
        Ok(path.to_path_buf())
    }

    pub(super) fn sync(root: &Path) -> Result<(), OfflineError> {
        let dir = std::fs::File::open(root).map_err(io("opening", root))?;
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: syncfs only reads the descriptor, which `dir` keeps open.
            if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
                return Err(io("syncing", root)(std::io::Error::last_os_error()));
            }
        }
        #[cfg(all(unix, not(target_os = "linux")))]
        {
            // No per-file-system flush: the whole machine's.
            // SAFETY: sync takes no arguments and cannot fail.
            unsafe { libc::sync() };
            drop(dir);
        }
        #[cfg(not(unix))]
        dir.sync_all().map_err(io("syncing", root))?;
        Ok(())
    }
}

/// Writes `bytes` to a new local file at `path` and returns it open. A large file is
/// written directly (it would only evict other data from the page cache), a small one
/// through the cache: a direct write waits for the device, and a commit flushes its
/// small files together with one sync. Where direct writes are refused (tmpfs, some
/// network mounts) or fail, through the cache, which reports any lasting error with its
/// context.
fn write_local_file(path: &Path, bytes: &[u8]) -> Result<std::fs::File, OfflineError> {
    let direct = if bytes.len() >= DIRECT_WRITE_MIN {
        direct::write(path, bytes)
    } else {
        Ok(None)
    };
    match direct {
        Ok(Some(file)) => Ok(file),
        Ok(None) | Err(_) => {
            let mut file = std::fs::File::create(path).map_err(io("creating", path))?;
            std::io::Write::write_all(&mut file, bytes).map_err(io("writing", path))?;
            Ok(file)
        }
    }
}

fn collect_named(
    root: &Path,
    dir: &Path,
    matches: &impl Fn(&str) -> bool,
    out: &mut Vec<String>,
) -> Result<(), OfflineError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("listing", dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io("listing", dir))?.path();
        if path.is_dir() {
            collect_named(root, &path, matches, out)?;
        } else if path
            .file_name()
            .is_some_and(|n| n.to_str().is_some_and(matches))
            && let Ok(rel) = path.strip_prefix(root)
        {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_split_into_bucket_and_prefix() {
        assert_eq!(
            parse_s3_url("s3://b/a/b/"),
            Some(("b".into(), "a/b".into()))
        );
        assert_eq!(parse_s3_url("s3://b"), Some(("b".into(), String::new())));
        assert_eq!(parse_s3_url("s3:///x"), None);
        assert_eq!(parse_s3_url("/local/dir"), None);
    }
}

/// Direct writes of committed files, bypassing the page cache.
///
/// A committed file is synced to disk before it is renamed into place, so its bytes
/// must reach the device anyway; copying them into the page cache first only costs CPU
/// (on a virtual machine, where page-cache pages are fresh memory each time, it was the
/// largest kernel cost of a 10M-event backfill's commit). With `O_DIRECT` the device
/// reads them from our buffer instead. The data must be block aligned: it is copied into
/// a reused, aligned buffer padded to whole blocks, and the file cut to its true length.
mod direct {
    use std::fs::File;
    use std::path::Path;

    /// Block size direct writes are aligned to (covers 512-byte and 4 KiB devices).
    #[cfg(target_os = "linux")]
    const BLOCK: usize = 4096;

    /// Writes `bytes` to a new file at `path` with `O_DIRECT`: the open file, or `None`
    /// where direct writes are not available (nothing is left at `path` then).
    #[cfg(target_os = "linux")]
    pub(super) fn write(path: &Path, bytes: &[u8]) -> std::io::Result<Option<File>> {
        use std::cell::RefCell;
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;

        thread_local! {
            static BUFFER: RefCell<Aligned> = const { RefCell::new(Aligned::empty()) };
        }
        let padded = bytes.len().div_ceil(BLOCK) * BLOCK;
        let file = match std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
            Err(e) => return Err(e),
        };
        let written = BUFFER.with(|buffer| -> std::io::Result<()> {
            let mut buffer = buffer.borrow_mut();
            let block = buffer.at_least(padded)?;
            block[..bytes.len()].copy_from_slice(bytes);
            block[bytes.len()..].fill(0);
            (&file).write_all(block)
        });
        match written {
            Ok(()) => {
                file.set_len(bytes.len() as u64)?;
                Ok(Some(file))
            }
            Err(e) => {
                drop(file);
                let _ = std::fs::remove_file(path);
                if e.raw_os_error() == Some(libc::EINVAL) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn write(_path: &Path, _bytes: &[u8]) -> std::io::Result<Option<File>> {
        Ok(None)
    }

    /// A byte buffer that only grows, handing out block-aligned slices of itself
    /// (over-allocated by a block, the slice starting at the first aligned byte).
    #[cfg(target_os = "linux")]
    struct Aligned {
        bytes: Vec<u8>,
    }

    #[cfg(target_os = "linux")]
    impl Aligned {
        const fn empty() -> Self {
            Aligned { bytes: Vec::new() }
        }

        /// `len` bytes starting on a [`BLOCK`] boundary.
        fn at_least(&mut self, len: usize) -> std::io::Result<&mut [u8]> {
            if self.bytes.len() < len + BLOCK {
                self.bytes = vec![0; len + BLOCK];
            }
            let start = self.bytes.as_ptr().align_offset(BLOCK);
            self.bytes
                .get_mut(start..start + len)
                .ok_or_else(|| std::io::Error::other("no aligned buffer for a direct write"))
        }
    }

    #[cfg(all(test, target_os = "linux"))]
    mod tests {
        use super::*;

        #[test]
        fn files_written_directly_hold_exactly_the_bytes_whatever_their_length() {
            let dir = tempfile::tempdir().expect("tempdir");
            for len in [0, 1, 511, 4095, 4096, 4097, (1 << 20) + 3, 100] {
                let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
                let path = dir.path().join(format!("f{len}"));
                match write(&path, &bytes).expect("direct write") {
                    Some(file) => {
                        file.sync_all().expect("sync");
                        assert_eq!(std::fs::read(&path).expect("read"), bytes, "{len} bytes");
                    }
                    // A file system without O_DIRECT: nothing may be left behind.
                    None => assert!(!path.exists(), "{len}: no file after a refusal"),
                }
            }
        }

        #[test]
        fn a_missing_directory_is_an_error_not_a_fallback() {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("absent").join("f");
            let err = write(&path, b"x").expect_err("no directory");
            assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        }
    }
}

/// Removes the temporary files in `dir` that a killed writer left behind: those named
/// by [`unique_tmp_name`] for a process that no longer runs. Readers never saw them
/// (dot-named), but they would pile up on disk. Best effort: a file that cannot be
/// removed now is removed by a later commit.
fn remove_orphaned_tmp_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(tmp_file_owner) else {
            continue;
        };
        if pid != std::process::id() && !process_runs(pid) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The process id in a name made by [`unique_tmp_name`] (`.tmp-<stem>-<pid>-<n>`).
pub(crate) fn tmp_file_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(".tmp-")?;
    let mut parts = rest.rsplitn(3, '-');
    let _n: u64 = parts.next()?.parse().ok()?;
    parts.next()?.parse().ok()
}

/// Whether process `pid` runs on this machine (Linux: it has a `/proc` entry). Where
/// that cannot be told, every process is taken to run: nothing is removed.
pub(crate) fn process_runs(pid: u32) -> bool {
    if !Path::new("/proc/self").exists() {
        return true;
    }
    Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(test)]
mod tmp_tests {
    #[test]
    fn temporary_names_tell_their_writer_and_orphans_are_removed() {
        let name = crate::error::unique_tmp_name("part-0.parquet");
        assert_eq!(super::tmp_file_owner(&name), Some(std::process::id()));
        assert_eq!(super::tmp_file_owner("part-0.parquet"), None);
        assert_eq!(super::tmp_file_owner(".tmp-x-notapid-1"), None);
        let dir = tempfile::tempdir().expect("tempdir");
        // A pid above Linux's maximum (2^22) never runs.
        let orphan = dir.path().join(".tmp-part-0.parquet-4999999-7");
        let ours = dir.path().join(&name);
        let data = dir.path().join("part-0.parquet");
        for f in [&orphan, &ours, &data] {
            std::fs::write(f, b"x").expect("write");
        }
        super::remove_orphaned_tmp_files(dir.path());
        assert!(!orphan.exists(), "the killed writer's file stays");
        assert!(ours.exists() && data.exists());
    }
}
