//! Writing the log: one log file and one digest per [`AuditLog::record`].

use crate::error::object;
use crate::record::{
    Digest, DigestLink, Entry, FileDigest, Record, digest_name, first_link, sha256_hex,
};
use crate::{AuditError, SigningKey};
use futures::TryStreamExt;
use lockstep_aws::AwsOptions;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many times a writer tries the next digest number before giving up (each
/// failure means another writer appended one meanwhile).
const DIGEST_ATTEMPTS: usize = 100;

/// An audit log at one location; see the [crate] docs. Cheap to share between tasks.
pub struct AuditLog {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    location: String,
    signer: Option<Arc<SigningKey>>,
    actor: String,
    writer: String,
    files: AtomicU64,
    /// The latest digest this writer has seen: later appends list only the digests
    /// after it, not the whole chain (which grows by one every commit, forever).
    seen_head: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("location", &self.location)
            .field("signed", &self.signer.is_some())
            .field("actor", &self.actor)
            .finish()
    }
}

/// What one [`AuditLog::record`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The log file, relative to the location.
    pub file: String,
    /// The digest covering it, relative to the location.
    pub digest: String,
    /// Records written.
    pub entries: usize,
}

impl AuditLog {
    /// The log at `location`: a directory (created if needed) or `s3://bucket/prefix`
    /// (reached with `aws`).
    pub fn open(location: &str, aws: &AwsOptions) -> Result<Self, AuditError> {
        let (store, prefix) = lockstep_aws::object_store_at(location, aws).map_err(|source| {
            AuditError::Location {
                location: location.to_owned(),
                source,
            }
        })?;
        Ok(AuditLog {
            store,
            prefix,
            location: location.trim_end_matches('/').to_owned(),
            signer: None,
            actor: crate::actor(),
            writer: writer_id(),
            files: AtomicU64::new(0),
            seen_head: std::sync::Mutex::new(None),
        })
    }

    /// The same log, its digests signed with `key`.
    pub fn with_signer(mut self, key: SigningKey) -> Self {
        self.signer = Some(Arc::new(key));
        self
    }

    /// The same log, its records attributed to `actor`.
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = actor.into();
        self
    }

    /// Where the log is.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Records `entries` (in order) as one new log file, then appends the digest that
    /// covers it. Nothing is recorded for no entries.
    pub async fn record(&self, entries: Vec<Entry>) -> Result<Option<Receipt>, AuditError> {
        if entries.is_empty() {
            return Ok(None);
        }
        let now = now_micros();
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        let file = format!(
            "logs/{}/{}-{}-{n}.jsonl",
            format_time(now, "%Y/%m/%d"),
            format_time(now, "%Y%m%dT%H%M%S%.6fZ"),
            self.writer
        );
        let time = format_time(now, "%Y-%m-%dT%H:%M:%S%.6fZ");
        let mut prev = first_link(&file);
        let mut text = Vec::new();
        let count = entries.len();
        for (seq, entry) in entries.into_iter().enumerate() {
            let mut record = Record {
                seq: seq as u64,
                time: time.clone(),
                actor: self.actor.clone(),
                action: entry.action,
                group: entry.group,
                version: entry.version,
                entities: entry.entities,
                details: entry.details,
                prev,
                hash: String::new(),
            };
            record.hash = record.content_hash().map_err(AuditError::Encode)?;
            serde_json::to_writer(&mut text, &record).map_err(AuditError::Encode)?;
            text.push(b'\n');
            prev = record.hash;
        }
        let covered = FileDigest {
            name: file.clone(),
            sha256: sha256_hex(&text),
            entries: count as u64,
            last_hash: prev,
        };
        self.put_new(&file, text).await?;
        let digest = self.append_digest(covered).await?;
        Ok(Some(Receipt {
            file,
            digest,
            entries: count,
        }))
    }

    /// Appends a digest covering `file` after the latest one, retrying when another
    /// writer took the number.
    async fn append_digest(&self, file: FileDigest) -> Result<String, AuditError> {
        for _ in 0..DIGEST_ATTEMPTS {
            let head = self.latest_digest().await?;
            let seq = head.as_ref().map_or(1, |(seq, ..)| seq + 1);
            let mut digest = Digest {
                seq,
                time: format_time(now_micros(), "%Y-%m-%dT%H:%M:%S%.6fZ"),
                previous: head.map(|(_, name, bytes)| DigestLink {
                    name,
                    sha256: sha256_hex(&bytes),
                }),
                files: vec![file.clone()],
                public_key: self.signer.as_ref().map(|k| k.public_key().0),
                signature: None,
            };
            if let Some(key) = &self.signer {
                let signed = digest.signed_bytes().map_err(AuditError::Encode)?;
                digest.signature = Some(key.sign(&signed));
            }
            let bytes = serde_json::to_vec_pretty(&digest).map_err(AuditError::Encode)?;
            let name = digest_name(seq);
            if self.put_new(&name, bytes).await? {
                return Ok(name);
            }
        }
        Err(AuditError::Contended {
            location: self.location.clone(),
            attempts: DIGEST_ATTEMPTS,
        })
    }

    /// The latest digest: its number, name and bytes.
    pub(crate) async fn latest_digest(&self) -> Result<Option<(u64, String, Vec<u8>)>, AuditError> {
        let seen = match self.seen_head.lock() {
            Ok(seen) => seen.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let mut names = match &seen {
            // Digest names sort by number: those after the one seen are the new ones.
            Some(head) => self.list_after("digests", head).await?,
            None => self.list("digests").await?,
        };
        names.extend(seen);
        let latest = names
            .iter()
            .filter_map(|name| digest_seq(name).map(|seq| (seq, name)))
            .max();
        if let Some((_, name)) = latest
            && let Ok(mut seen) = self.seen_head.lock()
        {
            *seen = Some(name.clone());
        }
        match latest {
            Some((seq, name)) => {
                let bytes = self.read(name).await?.ok_or_else(|| AuditError::Object {
                    action: "reading",
                    location: self.locate(name),
                    source: object_store::Error::NotFound {
                        path: name.clone(),
                        source: "listed, then gone".into(),
                    },
                })?;
                Ok(Some((seq, name.clone(), bytes)))
            }
            None => Ok(None),
        }
    }

    /// Names (relative to the location) of every object under `dir`, sorted.
    pub(crate) async fn list(&self, dir: &str) -> Result<Vec<String>, AuditError> {
        self.list_from(dir, None).await
    }

    /// Names of the objects under `dir` that sort after `after`, sorted.
    async fn list_after(&self, dir: &str, after: &str) -> Result<Vec<String>, AuditError> {
        self.list_from(dir, Some(after)).await
    }

    async fn list_from(&self, dir: &str, after: Option<&str>) -> Result<Vec<String>, AuditError> {
        let prefix = self.key(dir);
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let listing = match after {
            Some(after) => self.store.list_with_offset(Some(&prefix), &self.key(after)),
            None => self.store.list(Some(&prefix)),
        };
        let mut names: Vec<String> = listing
            .map_ok(|meta| {
                let key = meta.location.to_string();
                key.strip_prefix(&strip).unwrap_or(&key).to_owned()
            })
            .try_collect()
            .await
            .map_err(object("listing", self.locate(dir)))?;
        names.sort();
        Ok(names)
    }

    /// The bytes of `name`, or `None` if it is not there.
    pub(crate) async fn read(&self, name: &str) -> Result<Option<Vec<u8>>, AuditError> {
        match self.store.get(&self.key(name)).await {
            Ok(got) => got
                .bytes()
                .await
                .map(|b| Some(b.to_vec()))
                .map_err(object("reading", self.locate(name))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(object("reading", self.locate(name))(e)),
        }
    }

    /// Writes `bytes` at `name` unless something is there; `false` if it was.
    async fn put_new(&self, name: &str, bytes: Vec<u8>) -> Result<bool, AuditError> {
        let options = PutOptions::from(PutMode::Create);
        match self
            .store
            .put_opts(&self.key(name), PutPayload::from(bytes), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(object("writing", self.locate(name))(e)),
        }
    }

    fn key(&self, name: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    /// `name` as a full location, for messages.
    pub(crate) fn locate(&self, name: &str) -> String {
        format!("{}/{name}", self.location)
    }
}

/// The number in a digest's name (`digests/000000000012.json` → 12).
pub(crate) fn digest_seq(name: &str) -> Option<u64> {
    name.strip_prefix("digests/")?
        .strip_suffix(".json")?
        .parse()
        .ok()
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn format_time(micros: i64, format: &str) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .format(format)
        .to_string()
}

/// `LOCKSTEP_ACTOR`, or `user@host`.
pub(crate) fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// This process's name in log file names: host, process id and a random tag (two
/// processes of one id on two hosts, or one after a restart, never share names).
fn writer_id() -> String {
    use ring::rand::SecureRandom;
    let mut tag = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut tag);
    let host: String = host()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("{host}-{}-{}", std::process::id(), hex::encode(tag))
}
