//! The erasure ledger: which entities were erased from which feature group, when and
//! why, kept durably where every host can read it.
//!
//! An erasure is recorded before any copy is touched, so a host that starts while an
//! erase is under way already honours it. Each erasure is one object,
//! `<location>/<erased_at µs, 20 digits>-<tag>.jsonl`, written create-if-absent and never
//! changed: a header line (group, version, time, reason, key count), then one JSON
//! string per key, so millions of keys are one object streamed line by line. The
//! ledger lives beside the offline store by default (`<offline-store>/_lockstep/erasures`,
//! a directory or `s3://…`), next to the registry and the audit log.
//!
//! The rule it feeds ([`lockstep_core::erasure`]): an event of an erased entity at or
//! before the erasure time is never applied again, in any host; a later one is a new
//! life. This crate only records and reads; deciding what to drop is the core's, and
//! reaching the stores is the command's.
//!
//! It never deletes or rewrites an entry: an erasure cannot be undone by editing the
//! ledger through this crate.

use arrow_schema::DataType;
use futures::TryStreamExt;
use lockstep_aws::AwsOptions;
use lockstep_core::{EntityKey, Erasures};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// Where the ledger of the offline store at `offline_root` lives by default.
pub fn beside_offline_store(offline_root: &str) -> String {
    format!("{}/_lockstep/erasures", offline_root.trim_end_matches('/'))
}

/// Why the ledger could not be read or written.
#[derive(Debug, Error)]
pub enum ErasureError {
    /// The location is neither a directory nor an `s3://bucket/prefix` URL that can be
    /// reached.
    #[error("the erasure ledger location {location}")]
    Location {
        /// The location as given.
        location: String,
        /// Why it cannot be used.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Reading, writing or listing an object of the ledger failed.
    #[error("{action} {location}")]
    Object {
        /// What was being done.
        action: &'static str,
        /// The object or folder.
        location: String,
        /// Why.
        #[source]
        source: object_store::Error,
    },
    /// An entry of the ledger is not what this crate writes.
    #[error("erasure ledger entry {location}, line {line}: {problem}")]
    Damaged {
        /// The object.
        location: String,
        /// The line (1-based).
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// An erasure to record is not valid (no keys, an empty key, a bad name).
    #[error("erasure of {group}: {problem}")]
    Invalid {
        /// The group.
        group: String,
        /// What is wrong.
        problem: String,
    },
}

/// One erasure: a set of entities of a group (one version, or all), at one time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    /// Its id (unique; also the object's name).
    pub id: String,
    /// The feature group.
    pub group: String,
    /// The version; `None`: every version, present and future.
    pub version: Option<String>,
    /// The erasure time (UTC µs): events at or before it are never applied again.
    pub erased_at: i64,
    /// Why (free text, as given).
    pub reason: String,
    /// Who asked (the user or role recorded by the command).
    pub actor: String,
    /// The entity keys, as text.
    pub keys: Vec<String>,
}

/// The header line of an erasure's object.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    id: String,
    group: String,
    version: Option<String>,
    erased_at: i64,
    erased_at_utc: String,
    reason: String,
    actor: String,
    keys: usize,
}

impl Erasure {
    /// A new erasure of `keys` from `group` (`version`: one version, else all) at
    /// `erased_at` (UTC µs), with a fresh id.
    pub fn new(
        group: &str,
        version: Option<&str>,
        keys: Vec<String>,
        erased_at: i64,
        reason: &str,
        actor: &str,
    ) -> Result<Self, ErasureError> {
        let invalid = |problem: String| ErasureError::Invalid {
            group: group.to_owned(),
            problem,
        };
        if group.is_empty() || group.contains('/') {
            return Err(invalid("a group name is needed, without '/'".into()));
        }
        if keys.is_empty() {
            return Err(invalid("no entity keys to erase".into()));
        }
        if let Some(n) = keys.iter().position(String::is_empty) {
            return Err(invalid(format!("key #{} is empty", n + 1)));
        }
        let id = format!(
            "{erased_at:020}-{:08x}{:08x}",
            std::process::id(),
            // Two erasures of one process in one microsecond differ by their keys.
            fnv(keys.iter().map(String::as_bytes))
        );
        Ok(Erasure {
            id,
            group: group.to_owned(),
            version: version.map(str::to_owned),
            erased_at,
            reason: reason.to_owned(),
            actor: actor.to_owned(),
            keys,
        })
    }

    /// Whether it erases from `group@version`.
    pub fn applies_to(&self, group: &str, version: &str) -> bool {
        self.group == group && self.version.as_deref().is_none_or(|v| v == version)
    }

    fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        let header = Header {
            id: self.id.clone(),
            group: self.group.clone(),
            version: self.version.clone(),
            erased_at: self.erased_at,
            erased_at_utc: format_time(self.erased_at),
            reason: self.reason.clone(),
            actor: self.actor.clone(),
            keys: self.keys.len(),
        };
        let mut out = serde_json::to_vec(&header)?;
        out.push(b'\n');
        for key in &self.keys {
            serde_json::to_writer(&mut out, key)?;
            out.push(b'\n');
        }
        Ok(out)
    }

    fn decode(location: &str, bytes: &[u8]) -> Result<Self, ErasureError> {
        let damaged = |line: usize, problem: String| ErasureError::Damaged {
            location: location.to_owned(),
            line,
            problem,
        };
        let mut lines = bytes.split(|b| *b == b'\n');
        let header: Header = serde_json::from_slice(lines.next().unwrap_or_default())
            .map_err(|e| damaged(1, format!("not a ledger header: {e}")))?;
        let mut keys = Vec::with_capacity(header.keys);
        for (n, line) in lines.enumerate() {
            if line.is_empty() {
                continue;
            }
            let key: String = serde_json::from_slice(line)
                .map_err(|e| damaged(n + 2, format!("not a key: {e}")))?;
            keys.push(key);
        }
        if keys.len() != header.keys {
            return Err(damaged(
                keys.len() + 1,
                format!(
                    "the header says {} keys, the entry holds {}: truncated or edited",
                    header.keys,
                    keys.len()
                ),
            ));
        }
        Ok(Erasure {
            id: header.id,
            group: header.group,
            version: header.version,
            erased_at: header.erased_at,
            reason: header.reason,
            actor: header.actor,
            keys,
        })
    }
}

/// The erasures in `entries` that apply to `group@version`, as the boundary a host of
/// a key column of `key_type` applies. Keys that cannot be of that type (text for an
/// Int64 key) cannot occur in its data and are left out.
pub fn boundary(entries: &[Erasure], group: &str, version: &str, key_type: &DataType) -> Erasures {
    let mut out = Erasures::new();
    for entry in entries.iter().filter(|e| e.applies_to(group, version)) {
        for key in &entry.keys {
            if let Some(key) = EntityKey::parse(key, key_type) {
                out.insert(key, entry.erased_at);
            }
        }
    }
    out
}

/// An erasure ledger at one location; cheap to share.
pub struct Ledger {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    location: String,
    /// Objects this handle has read already: [`Ledger::read_new`] reads only others.
    seen: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("location", &self.location)
            .finish()
    }
}

impl Ledger {
    /// The ledger at `location`: a directory (created if needed) or
    /// `s3://bucket/prefix` (reached with `aws`).
    pub fn open(location: &str, aws: &AwsOptions) -> Result<Self, ErasureError> {
        Self::open_encrypted(location, aws, None)
    }

    /// [`open`](Self::open), the erasures it records on S3 encrypted with SSE-KMS under
    /// `kms_key_id` (the group's key: an erasure lists the entities' keys, which are as
    /// personal as the data). A local directory has no SSE; the key is not used there.
    pub fn open_encrypted(
        location: &str,
        aws: &AwsOptions,
        kms_key_id: Option<&str>,
    ) -> Result<Self, ErasureError> {
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| ErasureError::Location {
            location: location.to_owned(),
            source,
        };
        let (store, prefix) = match (kms_key_id, lockstep_aws::parse_s3_url(location)) {
            (Some(key), Some((bucket, prefix))) => (
                lockstep_aws::s3_object_store_encrypted(aws, &bucket, Some(key))
                    .map_err(|e| failed(e.into()))?,
                prefix,
            ),
            _ => lockstep_aws::object_store_at(location, aws).map_err(failed)?,
        };
        Ok(Ledger {
            store,
            prefix,
            location: location.trim_end_matches('/').to_owned(),
            seen: Mutex::new(BTreeSet::new()),
        })
    }

    /// Where the ledger is.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Records `erasure` durably; returns where. Never replaces an entry.
    pub async fn record(&self, erasure: &Erasure) -> Result<String, ErasureError> {
        let name = format!("{}.jsonl", erasure.id);
        let bytes = erasure.encode().map_err(|e| ErasureError::Invalid {
            group: erasure.group.clone(),
            problem: format!("cannot encode it: {e}"),
        })?;
        let options = PutOptions::from(PutMode::Create);
        self.store
            .put_opts(&self.key(&name), PutPayload::from(bytes), options)
            .await
            .map_err(|source| ErasureError::Object {
                action: "recording the erasure at",
                location: self.locate(&name),
                source,
            })?;
        Ok(self.locate(&name))
    }

    /// Every erasure recorded, oldest first.
    pub async fn read_all(&self) -> Result<Vec<Erasure>, ErasureError> {
        let names = self.list().await?;
        let mut out = Vec::with_capacity(names.len());
        for name in &names {
            out.push(self.read(name).await?);
        }
        self.lock_seen().extend(names);
        Ok(out)
    }

    /// The erasures recorded since this handle last read (all of them the first time),
    /// oldest first: what a running host polls for.
    pub async fn read_new(&self) -> Result<Vec<Erasure>, ErasureError> {
        let names = self.list().await?;
        let fresh: Vec<String> = {
            let seen = self.lock_seen();
            names.into_iter().filter(|n| !seen.contains(n)).collect()
        };
        let mut out = Vec::with_capacity(fresh.len());
        for name in &fresh {
            out.push(self.read(name).await?);
        }
        self.lock_seen().extend(fresh);
        Ok(out)
    }

    /// The boundary of `group@version` for a key column of `key_type`: every erasure
    /// recorded that applies to it.
    pub async fn boundary(
        &self,
        group: &str,
        version: &str,
        key_type: &DataType,
    ) -> Result<Erasures, ErasureError> {
        Ok(boundary(&self.read_all().await?, group, version, key_type))
    }

    fn lock_seen(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // The set is only ever extended: a panic elsewhere cannot leave it half-changed.
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn list(&self) -> Result<Vec<String>, ErasureError> {
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let mut names: Vec<String> = self
            .store
            .list(prefix.as_ref())
            .map_ok(|meta| {
                let key = meta.location.to_string();
                key.strip_prefix(&strip).unwrap_or(&key).to_owned()
            })
            .try_collect()
            .await
            .map_err(|source| ErasureError::Object {
                action: "listing",
                location: self.location.clone(),
                source,
            })?;
        names.retain(|n| {
            n.ends_with(".jsonl") && !n.rsplit('/').next().unwrap_or("").starts_with('.')
        });
        names.sort();
        Ok(names)
    }

    async fn read(&self, name: &str) -> Result<Erasure, ErasureError> {
        let object = |source| ErasureError::Object {
            action: "reading",
            location: self.locate(name),
            source,
        };
        let bytes = self
            .store
            .get(&self.key(name))
            .await
            .map_err(object)?
            .bytes()
            .await
            .map_err(object)?;
        Erasure::decode(&self.locate(name), &bytes)
    }

    fn key(&self, name: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    fn locate(&self, name: &str) -> String {
        format!("{}/{name}", self.location)
    }
}

/// FNV-1a over `parts`: a short, stable tag for an id.
fn fnv<'a>(parts: impl Iterator<Item = &'a [u8]>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0u8)) {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// `micros` as RFC 3339 (UTC, µs).
pub fn format_time(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .unwrap_or_else(|| micros.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_back_and_a_truncated_one_is_named() {
        let e = Erasure::new(
            "g",
            Some("1.0.0"),
            vec!["a".into(), "quote\"d\nkey".into()],
            5,
            "gdpr",
            "me",
        )
        .expect("erasure");
        let bytes = e.encode().expect("encode");
        assert_eq!(Erasure::decode("x", &bytes).expect("decode"), e);
        let cut = &bytes[..bytes.len() - 3];
        let err = Erasure::decode("x", cut).expect_err("truncated");
        assert!(err.to_string().contains("x"), "{err}");
        assert!(Erasure::new("g", None, vec![], 1, "", "").is_err());
        assert!(Erasure::new("g", None, vec![String::new()], 1, "", "").is_err());
    }

    #[test]
    fn a_boundary_takes_its_groups_versions_and_the_latest_time() {
        let a = Erasure::new("g", None, vec!["1".into(), "x".into()], 10, "", "").expect("a");
        let b = Erasure::new("g", Some("2"), vec!["1".into()], 20, "", "").expect("b");
        let c = Erasure::new("h", None, vec!["1".into()], 30, "", "").expect("c");
        let entries = [a, b, c];
        let v1 = boundary(&entries, "g", "1", &DataType::Int64);
        assert_eq!(v1.len(), 1, "\"x\" is no Int64 key");
        assert_eq!(v1.erased_at(&EntityKey::Int(1)), Some(10));
        let v2 = boundary(&entries, "g", "2", &DataType::Int64);
        assert_eq!(v2.erased_at(&EntityKey::Int(1)), Some(20));
        let s = boundary(&entries, "g", "1", &DataType::Utf8);
        assert_eq!(s.erased_at(&EntityKey::Str("x".into())), Some(10));
    }
}
