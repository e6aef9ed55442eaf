//! What the log holds: entries as callers give them, records as stored (chained), and
//! digests.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest as _, Sha256};

/// One operation to record, as a command describes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    /// What was done, dotted: `group.register`, `batch.commit`, `stream.start`,
    /// `stream.stop`, `serve.start`, `erase`, `purge`, `serve.refused`…
    pub action: String,
    /// The feature group it concerns, if one.
    pub group: Option<String>,
    /// The group's version, if one.
    pub version: Option<String>,
    /// The entities it concerns (an erasure's keys), if any.
    pub entities: Vec<String>,
    /// Everything else worth keeping (plugin hash, files and their SHA-256, counts,
    /// configuration); `null` when nothing.
    pub details: Json,
}

impl Entry {
    /// An entry for `action` with nothing else set.
    pub fn new(action: impl Into<String>) -> Self {
        Entry {
            action: action.into(),
            ..Entry::default()
        }
    }

    /// The entry about `group` at `version`.
    pub fn on(mut self, group: impl Into<String>, version: Option<String>) -> Self {
        self.group = Some(group.into());
        self.version = version;
        self
    }

    /// The entry with `details`.
    pub fn with_details(mut self, details: Json) -> Self {
        self.details = details;
        self
    }

    /// The entry about `entities`.
    pub fn with_entities(mut self, entities: Vec<String>) -> Self {
        self.entities = entities;
        self
    }
}

/// One stored entry: the [`Entry`] with its place in its log file, when and by whom,
/// and its chain hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Its position in its log file, from 0.
    pub seq: u64,
    /// When it was recorded, RFC 3339 UTC with microseconds.
    pub time: String,
    /// Who recorded it (`LOCKSTEP_ACTOR`, or user@host).
    pub actor: String,
    /// See [`Entry::action`].
    pub action: String,
    /// See [`Entry::group`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// See [`Entry::version`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// See [`Entry::entities`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entities: Vec<String>,
    /// See [`Entry::details`].
    #[serde(default, skip_serializing_if = "Json::is_null")]
    pub details: Json,
    /// The hash of the entry before it in its file ([`first_link`] for the first).
    pub prev: String,
    /// SHA-256 (hex) of this record's JSON without this field.
    pub hash: String,
}

/// A record's fields but its hash, as hashed.
#[derive(Serialize)]
struct Unhashed<'a> {
    seq: u64,
    time: &'a str,
    actor: &'a str,
    action: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: &'a Option<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    entities: &'a [String],
    #[serde(skip_serializing_if = "Json::is_null")]
    details: &'a Json,
    prev: &'a str,
}

impl Record {
    /// The hash this record's content gives (what [`Record::hash`] must hold).
    pub fn content_hash(&self) -> Result<String, serde_json::Error> {
        let bytes = serde_json::to_vec(&Unhashed {
            seq: self.seq,
            time: &self.time,
            actor: &self.actor,
            action: &self.action,
            group: &self.group,
            version: &self.version,
            entities: &self.entities,
            details: &self.details,
            prev: &self.prev,
        })?;
        Ok(sha256_hex(&bytes))
    }
}

/// The `prev` of a log file's first record: a hash of the file's name, so that records
/// cannot be moved from one file to another unnoticed.
pub fn first_link(file: &str) -> String {
    sha256_hex(format!("lockstep audit log {file}").as_bytes())
}

/// One log file as a digest covers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    /// Its name relative to the log's location.
    pub name: String,
    /// SHA-256 (hex) of its bytes.
    pub sha256: String,
    /// Records in it.
    pub entries: u64,
    /// Its last record's hash.
    pub last_hash: String,
}

/// The digest a [`Digest`] follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestLink {
    /// Its name relative to the log's location.
    pub name: String,
    /// SHA-256 (hex) of its bytes.
    pub sha256: String,
}

/// A digest: the log files written since the digest before, chained to it, optionally
/// signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Digest {
    /// Its number, from 1, without gaps.
    pub seq: u64,
    /// When it was written (RFC 3339 UTC).
    pub time: String,
    /// The digest before it (none for the first).
    pub previous: Option<DigestLink>,
    /// The log files it covers.
    pub files: Vec<FileDigest>,
    /// The Ed25519 public key (hex) its signature verifies with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Ed25519 signature (hex) of the digest's JSON without this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl Digest {
    /// The bytes a signature covers: the digest's JSON without its signature.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let unsigned = Digest {
            signature: None,
            ..self.clone()
        };
        serde_json::to_vec(&unsigned)
    }
}

/// The name digest number `seq` is stored under.
pub(crate) fn digest_name(seq: u64) -> String {
    format!("digests/{seq:012}.json")
}

/// SHA-256 of `bytes`, as lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
