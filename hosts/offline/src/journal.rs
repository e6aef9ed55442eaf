//! The plain layout's writer lock and commit journal.
//!
//! A plain-layout version is a folder of hour files, each replaced atomically; a job's
//! commit replaces many. Two things make that safe:
//!
//! - **One writer at a time.** A job takes the version's lock
//!   (`<group>/_lockstep/locks/<version>.lock`, created if absent) before it writes and
//!   holds it until its commit is done. A second job is refused, naming the holder. A
//!   lock whose holder was killed does not block forever: on the holder's machine a
//!   lock of a process that no longer runs is taken over at once, and anywhere a lock
//!   not renewed for [`LOCK_TTL_MICROS`] has expired (a holder renews it every
//!   [`RENEW_EVERY`]).
//! - **A commit is completed, whatever kills it.** The job stages every hour file under
//!   a dot-named temporary name first (invisible to readers), then writes the journal
//!   (`<group>/_lockstep/journal/<version>.json`, the staged → final names), then
//!   publishes each file (a rename; a server-side copy on S3), then removes the
//!   journal. A job killed before the journal is written left only staged files,
//!   which are removed; one killed after it left a journal, which the next writer (or
//!   `offline vacuum`) replays to the end before it writes anything. Readers between
//!   the kill and the replay can see some hours new and some old; they never see a
//!   partial file.

use crate::backend::{Backend, process_runs, tmp_file_owner};
use crate::{OfflineError, layout};
use lockstep_core::now_micros;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a lock lives without renewal.
pub const LOCK_TTL_MICROS: i64 = 10 * 60 * 1_000_000;
/// How often a holder renews its lock.
pub const RENEW_EVERY: Duration = Duration::from_secs(60);

/// Who holds a version's lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// The holder's host name.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// What it is doing (for messages).
    pub job: String,
    /// When it took the lock, UTC µs.
    pub since: i64,
    /// When the lock expires unless renewed, UTC µs.
    pub expires: i64,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (process {} on {}, since {})",
            self.job,
            self.pid,
            self.host,
            format_micros(self.since)
        )
    }
}

fn format_micros(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros).map_or_else(
        || format!("{micros} µs"),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

fn lock_rel(group: &str, version: &str) -> String {
    format!("{group}/_lockstep/locks/{version}.lock")
}

fn journal_rel(group: &str, version: &str) -> String {
    format!("{group}/_lockstep/journal/{version}.json")
}

/// A held lock on a plain-layout group version. Release it with
/// [`release`](Self::release) when the job is done; a lock dropped unreleased is
/// removed at once from a local store, and on an object store left to expire
/// ([`LOCK_TTL_MICROS`]) unless a runtime is at hand to remove it.
#[derive(Debug)]
pub struct WriteLock {
    backend: Backend,
    rel: String,
    holder: LockHolder,
    /// Stops the renewer (dropping it does too).
    stop: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    renewer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    released: AtomicBool,
}

impl WriteLock {
    /// Takes the lock of `group@version` for `job`, or fails with
    /// [`OfflineError::Locked`] naming the live holder. Its renewal runs as a task on
    /// the caller's runtime.
    pub(crate) async fn acquire(
        backend: &Backend,
        group: &str,
        version: &str,
        job: &str,
    ) -> Result<WriteLock, OfflineError> {
        let rel = lock_rel(group, version);
        let now = now_micros();
        let holder = LockHolder {
            host: host_name(),
            pid: std::process::id(),
            job: job.to_owned(),
            since: now,
            expires: now + LOCK_TTL_MICROS,
        };
        let bytes = serde_json::to_vec(&holder).map_err(|e| OfflineError::Registry {
            path: backend.locate(&rel),
            message: e.to_string(),
        })?;
        for _ in 0..2 {
            if backend.create_new(&rel, bytes.clone()).await? {
                // Two takers of an expired lock may both have removed it; only the one
                // whose content is there holds it.
                if read_holder(backend, &rel).await?.as_ref() == Some(&holder) {
                    return Ok(WriteLock::start(backend, rel, holder));
                }
                continue;
            }
            match read_holder(backend, &rel).await? {
                Some(current) if !is_stale(backend, &current) => {
                    return Err(OfflineError::Locked {
                        group: group.to_owned(),
                        version: version.to_owned(),
                        holder: current.to_string(),
                    });
                }
                // Expired, or its process is gone: take it over.
                _ => backend.delete(&rel).await?,
            }
        }
        let current = read_holder(backend, &rel).await?;
        Err(OfflineError::Locked {
            group: group.to_owned(),
            version: version.to_owned(),
            holder: current.map_or_else(|| "another job".into(), |c| c.to_string()),
        })
    }

    fn start(backend: &Backend, rel: String, holder: LockHolder) -> WriteLock {
        let (stop, stopped) = oneshot::channel();
        let renewer = tokio::spawn(renew_until_stopped(
            backend.clone(),
            rel.clone(),
            holder.clone(),
            stopped,
        ));
        WriteLock {
            backend: backend.clone(),
            rel,
            holder,
            stop: std::sync::Mutex::new(Some(stop)),
            renewer: std::sync::Mutex::new(Some(renewer)),
            released: AtomicBool::new(false),
        }
    }

    /// Stops renewing and removes the lock, if it is still ours (an expired one may
    /// have been taken over). Releasing twice does nothing the second time.
    pub async fn release(&self) -> Result<(), OfflineError> {
        if self.released.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.stop_renewing();
        let renewer = self
            .renewer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(renewer) = renewer {
            // A renewal under way finishes first: it must not re-create the lock after
            // it is removed.
            let _ = renewer.await;
        }
        if read_holder(&self.backend, &self.rel)
            .await?
            .is_some_and(|current| self.holds(&current))
        {
            self.backend.delete(&self.rel).await?;
        }
        Ok(())
    }

    fn holds(&self, current: &LockHolder) -> bool {
        current.pid == self.holder.pid
            && current.host == self.holder.host
            && current.since == self.holder.since
    }

    fn stop_renewing(&self) {
        let stop = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        if self.released.load(Ordering::Acquire) {
            return;
        }
        self.stop_renewing();
        let renewer = self
            .renewer
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(renewer) = renewer {
            // Nothing can be awaited here: a renewal under way may still land, and the
            // lock then expires (or, locally, is seen to be a dead process's).
            renewer.abort();
        }
        // Only our own lock is removed: an expired one may have been taken over. Its
        // content is read on this thread only for a local store.
        if self.backend.is_local() {
            let path = self.backend.locate(&self.rel);
            let ours = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<LockHolder>(&b).ok())
                .is_some_and(|current| self.holds(&current));
            if ours {
                self.backend.delete_local_now(&self.rel);
            }
        } else if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (backend, rel, holder) =
                (self.backend.clone(), self.rel.clone(), self.holder.clone());
            runtime.spawn(async move {
                if let Ok(Some(current)) = read_holder(&backend, &rel).await
                    && current == holder
                {
                    let _ = backend.delete(&rel).await;
                }
            });
        }
    }
}

async fn renew_until_stopped(
    backend: Backend,
    rel: String,
    mut holder: LockHolder,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RENEW_EVERY) => {}
            // Stopped, or the lock dropped.
            _ = &mut stop => return,
        }
        holder.expires = now_micros() + LOCK_TTL_MICROS;
        if let Ok(bytes) = serde_json::to_vec(&holder) {
            let _ = backend.put(&rel, bytes).await;
        }
    }
}

async fn read_holder(backend: &Backend, rel: &str) -> Result<Option<LockHolder>, OfflineError> {
    Ok(backend
        .read(rel)
        .await?
        // A lock that cannot be read (a torn write of a killed holder) is stale.
        .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

fn is_stale(backend: &Backend, holder: &LockHolder) -> bool {
    if holder.expires < now_micros() {
        return true;
    }
    // On the holder's own machine a killed holder is seen at once.
    backend.is_local() && holder.host == host_name() && !process_runs(holder.pid)
}

/// A job's journal: the staged files and the names they are published under.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Journal {
    /// `[staged, final]`, relative to the store root.
    publish: Vec<(String, String)>,
}

/// Publishes `staged` (staged → final names) as one journaled commit of
/// `group@version`: the journal is written first, then each file is published, then the
/// journal is removed. The caller holds the version's lock.
pub(crate) async fn publish_all(
    backend: &Backend,
    group: &str,
    version: &str,
    staged: Vec<(String, String)>,
) -> Result<(), OfflineError> {
    let rel = journal_rel(group, version);
    let journal = Journal { publish: staged };
    let bytes = serde_json::to_vec(&journal).map_err(|e| OfflineError::Registry {
        path: backend.locate(&rel),
        message: e.to_string(),
    })?;
    // The staged files are durable before the journal names them, the journal before
    // any is published, and the renames before the journal goes.
    backend.sync().await?;
    backend.put(&rel, bytes).await?;
    replay(backend, &journal).await?;
    backend.sync().await?;
    backend.delete(&rel).await
}

async fn replay(backend: &Backend, journal: &Journal) -> Result<usize, OfflineError> {
    backend.publish_all(&journal.publish).await
}

/// What recovery found of a killed job.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Hour files a killed commit had staged and journaled, published now.
    pub completed: usize,
    /// Staged files of killed jobs that never reached their journal, removed.
    pub removed: usize,
}

/// Completes a killed job's commit of `group@version` from its journal, then removes
/// staged files no running job owns. The caller holds the version's lock.
pub(crate) async fn recover(
    backend: &Backend,
    group: &str,
    version: &str,
) -> Result<Recovered, OfflineError> {
    let mut recovered = Recovered::default();
    let rel = journal_rel(group, version);
    if let Some(bytes) = backend.read(&rel).await? {
        let journal: Journal =
            serde_json::from_slice(&bytes).map_err(|e| OfflineError::Registry {
                path: backend.locate(&rel),
                message: format!("a damaged commit journal: {e}"),
            })?;
        recovered.completed = replay(backend, &journal).await?;
        backend.sync().await?;
        backend.delete(&rel).await?;
    }
    // Staged files of jobs that never wrote their journal. Locally a file of a process
    // that still runs is kept; on S3, where that cannot be told, the lock says no other
    // job of this version runs.
    let mut staged = backend
        .list_matching(&layout::version_rel(group, version), |n: &str| {
            n.starts_with(".tmp-")
        })
        .await?;
    // And the temporary files of a put a killed job was in the middle of (its lock,
    // journal or registry entry): only a local store has them, named with their
    // process, which must be gone.
    if backend.is_local() {
        staged.extend(
            backend
                .list_matching(&format!("{group}/_lockstep"), |n: &str| {
                    tmp_file_owner(n).is_some()
                })
                .await?,
        );
    }
    for file in staged {
        let name = file.rsplit('/').next().unwrap_or(&file);
        let owner_gone = tmp_file_owner(name).is_none_or(|pid| {
            !backend.is_local() || (pid != std::process::id() && !process_runs(pid))
        });
        if owner_gone {
            backend.delete(&file).await?;
            recovered.removed += 1;
        }
    }
    Ok(recovered)
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_in_messages_are_rfc3339() {
        assert_eq!(
            super::format_micros(1_704_067_200_000_000),
            "2024-01-01T00:00:00Z"
        );
        assert_eq!(
            super::format_micros(1_709_210_096_000_000),
            "2024-02-29T12:34:56Z"
        );
    }
}
