//! Erasing entities from every copy Lockstep keeps, and checking that they are gone.
//!
//! An erase first records the erasure in the ledger ([`lockstep_erasure`]), so every
//! host honours it from then on whatever happens next, then reaches each copy in turn —
//! the online store, the cache, the offline store, the served-feature log — and reports
//! per copy what it found and removed ([`Outcome`]). Stream hosts pick the erasure up from
//! the ledger by themselves. [`Eraser::verify`] looks in every copy and gives one
//! [`Verdict`] each; [`purge`] removes from the offline history what the ledger says is
//! erased, for deletion markers written earlier.
//!
//! Owns: the order copies are reached in and what counts as clean. Must never: decide
//! the replay rule (the core's), speak a store's protocol (the store crates do), print
//! or audit (the command does).

mod erase;
mod purge;
mod verify;

pub use erase::{EraseReport, EraseRequest, Outcome};
pub use purge::{Purged, purge};
pub use verify::Verdict;

use lockstep_aws::AwsOptions;
use lockstep_cache::RedisCache;
use lockstep_core::EntityKey;
use lockstep_erasure::Ledger;
use lockstep_offline::{GroupVersion, OfflineStore};
use lockstep_online::{GroupRef, OnlineStore};
use std::collections::HashSet;
use std::sync::Arc;
use thiserror::Error;

/// Why an erase, a verify or a purge stopped. Each names the copy and the group version
/// it was reaching; copies reached before it stay erased (the ledger holds the erasure,
/// so running the erase again finishes the job).
#[derive(Debug, Error)]
pub enum EraseError {
    /// The request cannot be carried out as asked.
    #[error("{0}")]
    Invalid(String),
    /// The erasure ledger failed.
    #[error("{what}")]
    Ledger {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: Box<lockstep_erasure::ErasureError>,
    },
    /// The online store failed.
    #[error("{what}")]
    Online {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: Box<lockstep_online::OnlineError>,
    },
    /// The cache failed.
    #[error("{what}")]
    Cache {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: Box<lockstep_cache::CacheError>,
    },
    /// The offline store failed.
    #[error("{what}")]
    Offline {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: Box<lockstep_offline::OfflineError>,
    },
    /// A Delta table of the offline store failed.
    #[error("{what}")]
    Delta {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: Box<lockstep_delta::DeltaError>,
    },
    /// The served-feature log failed.
    #[error("{what}")]
    FeatureLog {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: Box<lockstep_lineage::LineageError>,
    },
}

/// Entity keys as a request gives them, each once, in the order given: an empty list or
/// a blank key is refused (a blank key would match nothing, silently).
pub fn distinct_keys(keys: Vec<String>) -> Result<Vec<String>, EraseError> {
    let mut seen = HashSet::with_capacity(keys.len());
    let keys: Vec<String> = keys
        .into_iter()
        .filter(|k| seen.insert(k.clone()))
        .collect();
    if keys.is_empty() {
        return Err(EraseError::Invalid(
            "no entity keys: give --entity KEY (repeatable) or --entities-file FILE".into(),
        ));
    }
    if let Some(blank) = keys.iter().position(|k| k.trim().is_empty()) {
        return Err(EraseError::Invalid(format!(
            "entity key #{} is blank",
            blank + 1
        )));
    }
    Ok(keys)
}

/// A group, and the one version asked for (every version when `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The group's name.
    pub name: String,
    /// The version asked for.
    pub version: Option<String>,
}

impl Scope {
    /// Parses `NAME` or `NAME@VERSION`.
    pub fn parse(text: &str) -> Result<Scope, EraseError> {
        let (name, version) = match text.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (text, None),
        };
        if name.is_empty() {
            return Err(EraseError::Invalid(
                "--group needs a name: NAME or NAME@VERSION".into(),
            ));
        }
        if version.is_some_and(str::is_empty) {
            return Err(EraseError::Invalid(format!(
                "--group {text}: no version after `@`"
            )));
        }
        Ok(Scope {
            name: name.to_owned(),
            version: version.map(str::to_owned),
        })
    }

    /// `NAME@VERSION`, or `NAME (every version)`.
    pub fn describe(&self) -> String {
        match &self.version {
            Some(v) => format!("{}@{v}", self.name),
            None => format!("{} (every version)", self.name),
        }
    }
}

/// The copies an erase or a verify reaches; each is optional (a copy not given is not
/// reached).
#[derive(Default)]
pub struct Copies {
    /// How S3 is reached (endpoint, region, credentials).
    pub aws: AwsOptions,
    /// The offline store's location: a directory or `s3://bucket/prefix`. Its registry
    /// says which versions the group has (and their KMS keys).
    pub offline: Option<String>,
    /// The online store.
    pub online: Option<Arc<dyn OnlineStore>>,
    /// The cache.
    pub cache: Option<RedisCache>,
    /// The erasure ledger.
    pub ledger: Option<Arc<Ledger>>,
    /// The served-feature log's location.
    pub feature_log: Option<String>,
}

/// A group version as the stores know it.
#[derive(Debug, Clone)]
pub struct Version {
    /// The group's name.
    pub name: String,
    /// The version.
    pub version: String,
    /// The offline store's registry entry, when it has one.
    pub registered: Option<GroupVersion>,
}

impl Version {
    /// `NAME@VERSION`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    fn group_ref(&self) -> GroupRef {
        let registered = self.registered.as_ref();
        GroupRef {
            name: self.name.clone(),
            version: self.version.clone(),
            plugin_hash: registered
                .map(|r| r.plugin_hash.clone())
                .unwrap_or_default(),
            entity_key: registered
                .map(|r| r.manifest.entity_key.clone())
                .unwrap_or_default(),
        }
    }

    /// The keys as this version's entity key type reads them (text when unknown); keys
    /// the type cannot hold are left out (no row can have them).
    fn typed_keys(&self, keys: &[String]) -> Vec<EntityKey> {
        let key_type = self.key_type();
        keys.iter()
            .filter_map(|k| EntityKey::parse(k, &key_type))
            .collect()
    }

    fn key_type(&self) -> arrow_schema::DataType {
        self.registered
            .as_ref()
            .and_then(|r| {
                lockstep_core::schema::input_schema(&r.manifest)
                    .field_with_name(&r.manifest.entity_key)
                    .ok()
                    .map(|f| f.data_type().clone())
            })
            .unwrap_or(arrow_schema::DataType::Utf8)
    }
}

/// Erases and verifies one group's entities across [`Copies`].
pub struct Eraser {
    copies: Copies,
    scope: Scope,
    offline: Option<OfflineStore>,
    versions: Vec<Version>,
}

impl Eraser {
    /// Opens the copies for `scope`: the versions to reach are the offline registry's
    /// (the one asked for, or all), or the one named when the offline store is not
    /// given or never held it (it may still be online).
    pub async fn open(copies: Copies, scope: Scope) -> Result<Eraser, EraseError> {
        let offline = match &copies.offline {
            Some(location) => Some(open_store(location, &copies.aws, None)?),
            None => None,
        };
        let named = |version: &str| Version {
            name: scope.name.clone(),
            version: version.to_owned(),
            registered: None,
        };
        let versions = match (&offline, &scope.version) {
            (Some(store), wanted) => {
                let selected: Vec<Version> = store
                    .versions(&scope.name)
                    .await
                    .map_err(|source| EraseError::Offline {
                        what: format!("reading the versions of `{}`", scope.name),
                        source: Box::new(source),
                    })?
                    .into_iter()
                    .filter(|v| wanted.as_ref().is_none_or(|w| *w == v.version))
                    .map(|v| Version {
                        name: v.name.clone(),
                        version: v.version.clone(),
                        registered: Some(v),
                    })
                    .collect();
                match (selected.is_empty(), wanted) {
                    (false, _) => selected,
                    (true, Some(w)) => vec![named(w)],
                    (true, None) => {
                        return Err(EraseError::Invalid(format!(
                            "feature group `{}` has no version in the offline store at {}; name \
                             the version (--group {}@VERSION) to reach the other stores",
                            scope.name,
                            store.root().display(),
                            scope.name
                        )));
                    }
                }
            }
            (None, Some(w)) => vec![named(w)],
            (None, None) => {
                return Err(EraseError::Invalid(format!(
                    "without --offline-store the group's versions are unknown: name one \
                     (--group {}@VERSION)",
                    scope.name
                )));
            }
        };
        Ok(Eraser {
            copies,
            scope,
            offline,
            versions,
        })
    }

    /// The group versions reached.
    pub fn versions(&self) -> &[Version] {
        &self.versions
    }

    /// The scope asked for.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }
}

/// The offline store at `location`, its puts encrypted under `kms_key_id` when given.
fn open_store(
    location: &str,
    aws: &AwsOptions,
    kms_key_id: Option<&str>,
) -> Result<OfflineStore, EraseError> {
    lockstep_delta::open_offline_store(location, aws, kms_key_id).map_err(|source| {
        EraseError::Offline {
            what: format!("opening the offline store {location}"),
            source: Box::new(source),
        }
    })
}

/// The offline store at `location` as `v`'s writers open it: every object it puts
/// encrypted under the version's KMS key, when it has one (a rewritten hour or a marker
/// must not lose the encryption the backfill gave the rest).
fn store_for(
    location: &str,
    aws: &AwsOptions,
    v: &GroupVersion,
) -> Result<OfflineStore, EraseError> {
    open_store(location, aws, v.kms_key_id.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_taken_once_in_order_and_blank_or_none_are_refused() {
        let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            distinct_keys(keys(&["b", "a", "b", "c", "a"])).unwrap(),
            keys(&["b", "a", "c"])
        );
        assert!(
            distinct_keys(vec![])
                .unwrap_err()
                .to_string()
                .contains("no entity keys")
        );
        assert!(
            distinct_keys(keys(&["a", "  "]))
                .unwrap_err()
                .to_string()
                .contains("#2 is blank")
        );
    }

    #[test]
    fn scopes_parse_or_say_why_not() {
        assert_eq!(
            Scope::parse("cards@1.2.0").unwrap(),
            Scope {
                name: "cards".into(),
                version: Some("1.2.0".into())
            }
        );
        assert_eq!(Scope::parse("cards").unwrap().version, None);
        assert_eq!(
            Scope::parse("cards").unwrap().describe(),
            "cards (every version)"
        );
        assert!(
            Scope::parse("@1")
                .unwrap_err()
                .to_string()
                .contains("needs a name")
        );
        assert!(
            Scope::parse("cards@")
                .unwrap_err()
                .to_string()
                .contains("no version after")
        );
    }

    #[tokio::test]
    async fn without_an_offline_store_a_version_must_be_named() {
        let refused = Eraser::open(Copies::default(), Scope::parse("cards").unwrap()).await;
        let Err(e) = refused else {
            panic!("opened without versions")
        };
        assert!(e.to_string().contains("--group cards@VERSION"), "{e}");
        let eraser = Eraser::open(Copies::default(), Scope::parse("cards@2").unwrap())
            .await
            .unwrap();
        assert_eq!(eraser.versions().len(), 1);
        assert_eq!(eraser.versions()[0].id(), "cards@2");
    }

    #[tokio::test]
    async fn an_offline_store_without_the_group_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let copies = Copies {
            offline: Some(dir.path().display().to_string()),
            ..Copies::default()
        };
        let refused = Eraser::open(copies, Scope::parse("cards").unwrap()).await;
        let Err(e) = refused else {
            panic!("opened a group the store never held")
        };
        let text = e.to_string();
        assert!(
            text.contains("no version in the offline store") && text.contains("cards"),
            "{text}"
        );
    }
}
