//! Who may read what: tenants with bearer tokens, each naming the groups it may read.
//!
//! The tenants file (TOML) holds only each token's SHA-256, never the token:
//!
//! ```toml
//! [[tenant]]
//! name = "fraud-model"
//! token_sha256 = "9f86d081…"            # `lockstep tenant token` prints token and hash
//! groups = ["txn_velocity", "card_profile@1.0.0"]   # NAME: every version; NAME@VERSION: that one
//! redis_user = "fraud-model"            # optional: its Redis ACL user (`cache-acl --tenants`)
//! revoked = false                       # optional
//!
//! [operations]                           # optional: /metrics and /healthz need this token
//! token_sha256 = "…"
//! ```
//!
//! A request without a token, with a token no tenant has, or with a revoked tenant's
//! token is refused with 401; a tenant asking for a group it may not read gets 403.
//! Tokens are compared by their SHA-256 (tokens are random, so the hash of one tells
//! nothing of another) and never appear in a message, a log line or a refusal.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;

/// Why a tenants file could not be used.
#[derive(Debug, Error)]
pub enum AccessError {
    /// Not TOML of the expected shape (the message names the key and line).
    #[error("the tenants file {path}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, where.
        #[source]
        source: toml::de::Error,
    },
    /// A value is not what it must be.
    #[error("the tenants file {path}: {problem}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tenant: Vec<TenantEntry>,
    operations: Option<OperationsEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantEntry {
    name: String,
    token_sha256: String,
    groups: Vec<String>,
    redis_user: Option<String>,
    #[serde(default)]
    revoked: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OperationsEntry {
    token_sha256: String,
}

/// One tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Its name (in audit entries and metrics; never its token).
    pub name: String,
    /// The groups it may read: `NAME` (every version) or `NAME@VERSION`.
    pub groups: Vec<String>,
    /// Its Redis ACL user, when it has one.
    pub redis_user: Option<String>,
    /// A revoked tenant's token is refused like an unknown one.
    pub revoked: bool,
}

impl Tenant {
    /// Whether it may read `name@version`.
    pub fn may_read(&self, name: &str, version: &str) -> bool {
        self.groups.iter().any(|g| match g.split_once('@') {
            Some((n, v)) => n == name && v == version,
            None => g == name,
        })
    }
}

/// Why a request was refused, as counted and audited (never with the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The tenant, when its token was recognised.
    pub tenant: Option<String>,
    /// The group asked for, when the refusal is about one.
    pub group: Option<String>,
    /// 401 or 403.
    pub status: u16,
    /// Why, in words.
    pub reason: &'static str,
    /// The path asked for.
    pub path: String,
}

/// The tenants and the operations token, ready to check requests.
#[derive(Debug, Default)]
pub struct Access {
    by_hash: HashMap<[u8; 32], Arc<Tenant>>,
    tenants: Vec<Arc<Tenant>>,
    operations: Option<[u8; 32]>,
    refusals: Option<tokio::sync::mpsc::Sender<Refusal>>,
    /// Refusals that could not be handed on (the receiver slow or gone): counted,
    /// never waited for.
    pub dropped_refusals: AtomicU64,
}

/// The result of checking a bearer token.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A tenant's valid token.
    Tenant(Arc<Tenant>),
    /// No token, an unknown one or a revoked tenant's: refused with 401.
    Refused(&'static str),
}

impl Access {
    /// Reads a tenants file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, AccessError> {
        let file: File = toml::from_str(text).map_err(|source| AccessError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |problem: String| AccessError::Invalid {
            path: path.to_owned(),
            problem,
        };
        let mut access = Access::default();
        for entry in file.tenant {
            let hash = parse_hash(&entry.token_sha256).ok_or_else(|| {
                invalid(format!(
                    "tenant `{}`: token_sha256 must be 64 hex digits (the SHA-256 of the token, \
                     as `lockstep tenant token` prints it), not the token itself",
                    entry.name
                ))
            })?;
            if entry.groups.is_empty() {
                return Err(invalid(format!("tenant `{}` names no group", entry.name)));
            }
            if let Some(bad) = entry
                .groups
                .iter()
                .find(|g| g.is_empty() || g.contains(char::is_whitespace) || g.ends_with('@'))
            {
                return Err(invalid(format!(
                    "tenant `{}`: `{bad}` is not NAME or NAME@VERSION",
                    entry.name
                )));
            }
            let tenant = Arc::new(Tenant {
                name: entry.name,
                groups: entry.groups,
                redis_user: entry.redis_user,
                revoked: entry.revoked,
            });
            if access.tenants.iter().any(|t| t.name == tenant.name) {
                return Err(invalid(format!(
                    "tenant `{}` is defined twice",
                    tenant.name
                )));
            }
            if access.by_hash.insert(hash, tenant.clone()).is_some() {
                return Err(invalid(format!(
                    "tenant `{}` has the same token as another tenant",
                    tenant.name
                )));
            }
            access.tenants.push(tenant);
        }
        if let Some(ops) = file.operations {
            access.operations =
                Some(parse_hash(&ops.token_sha256).ok_or_else(|| {
                    invalid("operations: token_sha256 must be 64 hex digits".into())
                })?);
        }
        Ok(access)
    }

    /// The same policy, handing each refusal to `sink` (for the audit log) without
    /// waiting: a full channel drops the refusal and counts it.
    pub fn with_refusals(mut self, sink: tokio::sync::mpsc::Sender<Refusal>) -> Self {
        self.refusals = Some(sink);
        self
    }

    /// The tenants, in file order.
    pub fn tenants(&self) -> &[Arc<Tenant>] {
        &self.tenants
    }

    /// Who the `Authorization` header's value `header` belongs to.
    pub fn caller(&self, header: Option<&str>) -> Caller {
        let Some(token) = header.and_then(bearer) else {
            return Caller::Refused("no bearer token");
        };
        match self.by_hash.get(&sha256(token)) {
            Some(t) if t.revoked => Caller::Refused("a revoked tenant's token"),
            Some(t) => Caller::Tenant(t.clone()),
            None => Caller::Refused("an unknown token"),
        }
    }

    /// Whether `header` may read `/metrics` and `/healthz`: always, unless an
    /// operations token is set.
    pub fn operations_allowed(&self, header: Option<&str>) -> bool {
        match &self.operations {
            None => true,
            Some(hash) => header
                .and_then(bearer)
                .is_some_and(|token| &sha256(token) == hash),
        }
    }

    /// Hands `refusal` on (see [`Access::with_refusals`]).
    pub fn refused(&self, refusal: Refusal) {
        if let Some(sink) = &self.refusals
            && sink.try_send(refusal).is_err()
        {
            self.dropped_refusals.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A new random token (32 bytes from the system's random source, as hex, prefixed
/// `lst_` so that secret scanners can spot one).
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("lst_{}", hex::encode(bytes)))
}

/// The SHA-256 of `token` as the tenants file holds it (lowercase hex).
pub fn token_sha256(token: &str) -> String {
    hex::encode(sha256(token))
}

fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text.trim()).ok()?;
    bytes.try_into().ok()
}

/// The token of `Bearer TOKEN` (the scheme in any case).
fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(token_a: &str, token_b: &str) -> String {
        format!(
            "[[tenant]]\nname = \"a\"\ntoken_sha256 = \"{}\"\ngroups = [\"g1\", \"g2@1.0.0\"]\n\
             [[tenant]]\nname = \"b\"\ntoken_sha256 = \"{}\"\ngroups = [\"g1\"]\nrevoked = true\n",
            token_sha256(token_a),
            token_sha256(token_b)
        )
    }

    #[test]
    fn tokens_map_to_tenants_and_groups_by_name_or_version() {
        let access = Access::parse(&file("secret-a", "secret-b"), "t.toml").expect("parse");
        let Caller::Tenant(a) = access.caller(Some("Bearer secret-a")) else {
            panic!("a's token")
        };
        assert_eq!(a.name, "a");
        assert!(a.may_read("g1", "9.9.9") && a.may_read("g2", "1.0.0"));
        assert!(!a.may_read("g2", "2.0.0") && !a.may_read("g3", "1.0.0"));
        assert!(matches!(
            access.caller(Some("bearer  secret-a ")),
            Caller::Tenant(_)
        ));
        for (header, why) in [
            (None, "no bearer token"),
            (Some("Basic secret-a"), "no bearer token"),
            (Some("Bearer "), "no bearer token"),
            (Some("Bearer nope"), "an unknown token"),
            (Some("Bearer secret-b"), "a revoked tenant's token"),
        ] {
            match access.caller(header) {
                Caller::Refused(reason) => assert_eq!(reason, why, "{header:?}"),
                Caller::Tenant(t) => panic!("{header:?} let in as {}", t.name),
            }
        }
        assert!(
            access.operations_allowed(None),
            "open without an operations token"
        );
    }

    #[test]
    fn a_file_holding_a_token_instead_of_its_hash_is_refused_without_echoing_it() {
        let text =
            "[[tenant]]\nname = \"a\"\ntoken_sha256 = \"my-secret-token\"\ngroups = [\"g\"]\n";
        let err = Access::parse(text, "t.toml")
            .expect_err("not a hash")
            .to_string();
        assert!(
            err.contains("not the token itself") && !err.contains("my-secret-token"),
            "{err}"
        );
        let unknown =
            "[[tenant]]\nname = \"a\"\ntoken = \"x\"\ntoken_sha256 = \"00\"\ngroups = [\"g\"]\n";
        let err = Access::parse(unknown, "t.toml").expect_err("unknown key");
        let chain = format!(
            "{err}: {}",
            std::error::Error::source(&err).expect("source")
        );
        assert!(chain.contains("token") && chain.contains("line"), "{chain}");
        let twice = file("same", "same");
        assert!(
            Access::parse(&twice, "t.toml").is_err(),
            "one token, two tenants"
        );
    }
}
