//! The audit log: who changed what is stored or served, when, kept so that any later
//! change to the record is found.
//!
//! Modelled on CloudTrail's log-file validation. Entries are written in **log files**
//! (JSON lines), each entry chained to the one before it by a SHA-256; every log file
//! is covered by a **digest** that holds the file's SHA-256, its entry count and its
//! last entry's hash, and the SHA-256 of the digest before it, optionally signed with
//! Ed25519. Digests are numbered and created with a create-if-absent put, so writers in
//! any number of processes (batch jobs, stream services, servers) append to one linear
//! chain.
//!
//! ```text
//! <location>/logs/2026/12/06/20261206T180517.123456Z-<writer>-0.jsonl
//! <location>/digests/000000000001.json   { previous: none, files: [...], signature }
//! <location>/digests/000000000002.json   { previous: {name, sha256}, files: [...] }
//! ```
//!
//! [`AuditLog::verify`] finds an edited, deleted, reordered, inserted or truncated
//! entry, a removed or added log file, and a removed or replaced digest, and names
//! where the chain breaks. A replaced *last* digest is found by its signature: sign
//! digests, and give the verifier the public key (otherwise whoever can write the log
//! can also rewrite its end consistently — as with any unsigned log).
//!
//! The location is a local directory or `s3://bucket/prefix`; by default it lies beside
//! the offline store (`<offline-store>/_lockstep/audit`). This crate owns the log's
//! format, its writing and its verification. It never decides what is audited (the
//! commands do) and never holds a signing key in anything it prints.

mod error;
mod log;
mod record;
mod signing;
mod verify;

pub use error::AuditError;
pub use log::{AuditLog, Receipt};
pub use record::{Digest, Entry, FileDigest, Record};
pub use signing::{PublicKey, SigningKey};
pub use verify::{Problem, Verification};

/// Who the commands of this process act as, for the records they make: the
/// `LOCKSTEP_ACTOR` variable when set, else `user@host`.
pub fn actor() -> String {
    if let Ok(actor) = std::env::var("LOCKSTEP_ACTOR")
        && !actor.trim().is_empty()
    {
        return actor.trim().to_owned();
    }
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", log::host())
}

/// Where the audit log lives beside an offline store at `offline_root` (a directory or
/// an `s3://` URL).
pub fn beside_offline_store(offline_root: &str) -> String {
    format!("{}/_lockstep/audit", offline_root.trim_end_matches('/'))
}
