//! Verifying the log: every digest chained and signed, every log file whole and
//! covered, every record in its place.

use crate::log::digest_seq;
use crate::record::{Digest, Record, digest_name, first_link, sha256_hex};
use crate::{AuditError, AuditLog, PublicKey};
use std::collections::BTreeSet;

/// One place where the log does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The digest, log file or record (`file#n`) at fault, relative to the location.
    pub at: String,
    /// What is wrong there.
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.what)
    }
}

/// What [`AuditLog::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    /// Digests read.
    pub digests: u64,
    /// Log files read.
    pub files: u64,
    /// Records read.
    pub entries: u64,
    /// Digests whose signature verified.
    pub signed: u64,
    /// Every place the log does not verify, in chain order; empty when it verifies.
    pub problems: Vec<Problem>,
}

impl Verification {
    /// Whether the whole log verifies.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, at: impl Into<String>, what: impl Into<String>) {
        self.problems.push(Problem {
            at: at.into(),
            what: what.into(),
        });
    }
}

impl AuditLog {
    /// Checks the whole log. With `pinned`, every digest must be signed by that key;
    /// without, a digest's signature is checked against the key it names, and an
    /// unsigned digest after a signed one is a problem (a signature stripped).
    pub async fn verify(&self, pinned: Option<&PublicKey>) -> Result<Verification, AuditError> {
        let mut found = Verification::default();
        let digests = self.list("digests").await?;
        let mut covered = BTreeSet::new();
        let mut previous: Option<(String, Vec<u8>)> = None;
        let mut ever_signed = false;
        let mut expected_seq = 1;
        for name in &digests {
            let Some(seq) = digest_seq(name) else {
                found.problem(name, "not a digest name: an object added to the digests");
                continue;
            };
            if seq != expected_seq {
                let missing = if seq > expected_seq {
                    format!(
                        "digests {} to {} are missing: removed",
                        digest_name(expected_seq),
                        digest_name(seq - 1)
                    )
                } else {
                    format!("out of order (expected {})", digest_name(expected_seq))
                };
                found.problem(name, missing);
            }
            expected_seq = seq + 1;
            let Some(bytes) = self.read(name).await? else {
                found.problem(name, "listed, but gone when read");
                continue;
            };
            found.digests += 1;
            let digest: Digest = match serde_json::from_slice(&bytes) {
                Ok(d) => d,
                Err(e) => {
                    found.problem(name, format!("not a digest ({e}): replaced or damaged"));
                    previous = Some((name.clone(), bytes));
                    continue;
                }
            };
            if digest.seq != seq {
                found.problem(name, format!("says it is digest {}", digest.seq));
            }
            match (&previous, &digest.previous) {
                (None, None) => {}
                (None, Some(link)) if seq == 1 => found.problem(
                    name,
                    format!("the first digest names a digest before it ({})", link.name),
                ),
                (None, Some(_)) => {}
                (Some((before, _)), None) => found.problem(
                    name,
                    format!("names no digest before it, but follows {before}"),
                ),
                (Some((before, before_bytes)), Some(link)) => {
                    if &link.name != before {
                        found.problem(
                            name,
                            format!(
                                "follows {}, but the digest before it is {before}",
                                link.name
                            ),
                        );
                    } else if link.sha256 != sha256_hex(before_bytes) {
                        found.problem(
                            name,
                            format!(
                                "the SHA-256 it holds of {before} does not match: {before} was \
                                 replaced or edited"
                            ),
                        );
                    }
                }
            }
            self.check_signature(name, &digest, pinned, &mut ever_signed, &mut found);
            for file in &digest.files {
                covered.insert(file.name.clone());
                found.files += 1;
                self.check_file(name, file, &mut found).await?;
            }
            previous = Some((name.clone(), bytes));
        }
        for name in self.list("logs").await? {
            if !covered.contains(&name) {
                found.problem(
                    &name,
                    "covered by no digest: added, or written by a process stopped before its \
                     digest",
                );
            }
        }
        Ok(found)
    }

    fn check_signature(
        &self,
        name: &str,
        digest: &Digest,
        pinned: Option<&PublicKey>,
        ever_signed: &mut bool,
        found: &mut Verification,
    ) {
        let signed_bytes = match digest.signed_bytes() {
            Ok(b) => b,
            Err(e) => {
                found.problem(name, format!("cannot be re-encoded: {e}"));
                return;
            }
        };
        match (&digest.signature, &digest.public_key) {
            (Some(signature), Some(key)) => {
                let key = PublicKey(key.clone());
                if let Some(pinned) = pinned
                    && &key != pinned
                {
                    found.problem(
                        name,
                        format!("signed by {key}, not by the key given ({pinned}): replaced"),
                    );
                } else if key.verifies(&signed_bytes, signature) {
                    found.signed += 1;
                    *ever_signed = true;
                } else {
                    found.problem(name, "its signature does not verify: replaced or edited");
                }
            }
            _ if pinned.is_some() => found.problem(name, "not signed, but a key was given"),
            _ if *ever_signed => found.problem(
                name,
                "not signed, though the digests before it are: a signature was stripped",
            ),
            _ => {}
        }
    }

    async fn check_file(
        &self,
        digest: &str,
        file: &crate::FileDigest,
        found: &mut Verification,
    ) -> Result<(), AuditError> {
        let Some(bytes) = self.read(&file.name).await? else {
            found.problem(
                &file.name,
                format!("covered by {digest}, but missing: removed"),
            );
            return Ok(());
        };
        let whole = sha256_hex(&bytes) == file.sha256;
        let mut prev = first_link(&file.name);
        let mut count = 0u64;
        let mut broken = false;
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            count += 1;
            if broken {
                continue;
            }
            let at = format!("{}#{i}", file.name);
            let record: Record = match serde_json::from_slice(line) {
                Ok(r) => r,
                Err(e) => {
                    found.problem(at, format!("not a record ({e}): edited"));
                    broken = true;
                    continue;
                }
            };
            match record.content_hash() {
                Ok(hash) if hash == record.hash => {}
                _ => {
                    found.problem(at, "its content does not give its hash: edited");
                    broken = true;
                    continue;
                }
            }
            if record.prev != prev || record.seq != i as u64 {
                found.problem(
                    at,
                    "does not follow the record before it: records were inserted, removed or \
                     reordered here",
                );
                broken = true;
                continue;
            }
            prev = record.hash;
        }
        found.entries += count;
        if !broken {
            if count != file.entries {
                found.problem(
                    &file.name,
                    format!(
                        "{count} records where {digest} counted {}: truncated or extended",
                        file.entries
                    ),
                );
            } else if prev != file.last_hash {
                found.problem(
                    &file.name,
                    format!("its last record is not the one {digest} names"),
                );
            } else if !whole {
                found.problem(
                    &file.name,
                    format!("its bytes do not match the SHA-256 in {digest}: edited"),
                );
            }
        } else if whole {
            // A chain that breaks in a file whose bytes match the digest: the digest
            // itself was made over a broken file (it was replaced consistently).
            found.problem(
                &file.name,
                format!("matches {digest}, yet its records do not chain: the digest was replaced"),
            );
        }
        Ok(())
    }

    /// Every record of every covered log file, in digest order, with its file; for
    /// showing and filtering. Records that do not parse are left out (verify names
    /// them).
    pub async fn records(&self) -> Result<Vec<(String, Record)>, AuditError> {
        let mut out = Vec::new();
        for name in self.list("digests").await? {
            let Some(bytes) = self.read(&name).await? else {
                continue;
            };
            let Ok(digest) = serde_json::from_slice::<Digest>(&bytes) else {
                continue;
            };
            for file in digest.files {
                let Some(bytes) = self.read(&file.name).await? else {
                    continue;
                };
                for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    if let Ok(record) = serde_json::from_slice::<Record>(line) {
                        out.push((file.name.clone(), record));
                    }
                }
            }
        }
        Ok(out)
    }
}
