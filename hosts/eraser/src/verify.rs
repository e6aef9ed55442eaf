//! Looking in every copy.

use crate::erase::purge_version;
use crate::{EraseError, Eraser};
use lockstep_cache::cache_key;
use std::collections::HashSet;

/// One copy's verdict on whether it still holds the entities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The copy: `online store NAME@VERSION`, `feature log`, ….
    pub copy: String,
    /// Whether it holds none of them.
    pub clean: bool,
    /// How many it still holds (records, entries, rows or answers).
    pub found: usize,
    /// What was found, in words.
    pub detail: String,
}

impl Eraser {
    /// Looks for `keys` in every copy: one verdict per copy and version. The ledger must
    /// hold an erasure of every key (else hosts may apply their events again); offline
    /// rows at or before a key's erasure are leftovers, later ones a new life; answers
    /// logged up to the latest erasure of these keys are leftovers.
    pub async fn verify(&self, keys: &[String]) -> Result<Vec<Verdict>, EraseError> {
        let mut verdicts = Vec::new();
        let ledger_entries = match &self.copies.ledger {
            Some(ledger) => Some(
                ledger
                    .read_all()
                    .await
                    .map_err(|source| EraseError::Ledger {
                        what: format!("reading the erasure ledger {}", ledger.location()),
                        source: Box::new(source),
                    })?,
            ),
            None => None,
        };
        if let Some(entries) = &ledger_entries {
            for v in &self.versions {
                let boundary =
                    lockstep_erasure::boundary(entries, &v.name, &v.version, &v.key_type());
                let missing = v
                    .typed_keys(keys)
                    .iter()
                    .filter(|k| boundary.erased_at(k).is_none())
                    .count();
                verdicts.push(Verdict {
                    copy: format!("ledger {}", v.id()),
                    clean: missing == 0,
                    found: keys.len() - missing,
                    detail: if missing == 0 {
                        "every entity recorded as erased".into()
                    } else {
                        format!(
                            "{missing} entities never erased: hosts may apply their events again"
                        )
                    },
                });
            }
        }
        if let Some(store) = &self.copies.online {
            for v in &self.versions {
                let found = store
                    .get(&v.group_ref(), keys)
                    .await
                    .map_err(|source| EraseError::Online {
                        what: format!("reading {} from the online store", v.id()),
                        source: Box::new(source),
                    })?
                    .into_iter()
                    .filter(Option::is_some)
                    .count();
                verdicts.push(Verdict {
                    copy: format!("online store {}", v.id()),
                    clean: found == 0,
                    found,
                    detail: format!("{found} of {} entities found", keys.len()),
                });
            }
        }
        if let Some(cache) = &self.copies.cache {
            for v in &self.versions {
                let cache_keys: Vec<String> = keys.iter().map(|k| cache_key(&v.id(), k)).collect();
                let mut found = 0;
                for chunk in cache_keys.chunks(10_000) {
                    found += cache
                        .holds(chunk)
                        .await
                        .map_err(|source| EraseError::Cache {
                            what: format!("reading {} from the cache", v.id()),
                            source: Box::new(source),
                        })?
                        .into_iter()
                        .filter(|h| *h)
                        .count();
                }
                verdicts.push(Verdict {
                    copy: format!("cache {}", v.id()),
                    clean: found == 0,
                    found,
                    detail: format!("{found} of {} entities found", keys.len()),
                });
            }
        }
        if let (Some(location), Some(entries)) = (&self.copies.offline, &ledger_entries) {
            for v in &self.versions {
                let Some(registered) = &v.registered else {
                    continue;
                };
                // Rows at or before each key's erasure: leftovers. Keys never erased
                // are looked for over their whole history.
                let boundary =
                    lockstep_erasure::boundary(entries, &v.name, &v.version, &v.key_type());
                let mut wanted = lockstep_core::Erasures::new();
                let mut never_erased = 0;
                for key in v.typed_keys(keys) {
                    let at = boundary.erased_at(&key).unwrap_or_else(|| {
                        never_erased += 1;
                        i64::MAX
                    });
                    wanted.insert(key, at);
                }
                let (found, _) = purge_version(
                    location,
                    &self.copies.aws,
                    registered,
                    &wanted,
                    "erase verify",
                    true,
                )
                .await?;
                verdicts.push(Verdict {
                    copy: format!("offline {}", v.id()),
                    clean: found.rows_removed == 0,
                    found: found.rows_removed,
                    detail: if found.rows_removed == 0 {
                        format!(
                            "no row at or before the erasure in {} hours",
                            found.hours_scanned
                        )
                    } else {
                        format!(
                            "{} rows in {} hours ({})",
                            found.rows_removed,
                            found.hours_rewritten.len(),
                            if never_erased > 0 {
                                format!(
                                    "{never_erased} of the entities were never erased: \
                                     `lockstep erase` them"
                                )
                            } else {
                                "history kept: run `lockstep offline purge`".to_owned()
                            }
                        )
                    },
                });
            }
        }
        if let Some(log) = &self.copies.feature_log {
            let entities: HashSet<String> = keys.iter().cloned().collect();
            // Answers served up to the latest erasure of these keys (all of them when
            // none is recorded).
            let latest = ledger_entries
                .iter()
                .flatten()
                .filter(|e| {
                    e.group == self.scope.name && e.keys.iter().any(|k| entities.contains(k))
                })
                .map(|e| e.erased_at)
                .max()
                .unwrap_or(i64::MAX);
            let found = lockstep_lineage::erase(
                log,
                &self.copies.aws,
                &self.scope.name,
                self.scope.version.as_deref(),
                &entities,
                latest,
                true,
            )
            .await
            .map_err(|source| EraseError::FeatureLog {
                what: format!("looking in the served-feature log {log}"),
                source: Box::new(source),
            })?;
            verdicts.push(Verdict {
                copy: "feature log".into(),
                clean: found.rows_removed == 0,
                found: found.rows_removed,
                detail: format!(
                    "{} answers in {} of {} files",
                    found.rows_removed, found.files_rewritten, found.files_scanned
                ),
            });
        }
        if verdicts.is_empty() {
            return Err(EraseError::Invalid(
                "no copy to look in: give --offline-store, --online-store, --cache and/or \
                 --feature-log"
                    .into(),
            ));
        }
        Ok(verdicts)
    }
}
