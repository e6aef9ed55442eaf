//! Reaching every copy, in order.

use crate::{EraseError, Eraser, Version, store_for};
use lockstep_cache::{Erased, cache_key};
pub(crate) use lockstep_core::now_micros;
use lockstep_erasure::{Erasure, Ledger};
use lockstep_offline::{EraseSummary, GroupVersion, OfflineStore};
use lockstep_online::DeleteOutcome;
use serde_json::{Value as Json, json};
use std::collections::HashSet;
use std::sync::Arc;

/// Keys sent to a store or the cache in one call at most.
const CHUNK: usize = 10_000;

/// What an erase is asked to do.
#[derive(Debug, Clone)]
pub struct EraseRequest {
    /// The entities' keys, each once ([`crate::distinct_keys`]).
    pub keys: Vec<String>,
    /// The erasure time, UTC µs: rows and events at or before it go.
    pub at: i64,
    /// Why (recorded in the ledger).
    pub reason: String,
    /// Who asked (recorded in the ledger).
    pub actor: String,
    /// SageMaker's SoftDelete instead of HardDelete on the online store.
    pub soft: bool,
    /// Remove the rows from the offline history now, not only append markers.
    pub purge_offline: bool,
}

/// What one copy held and what became of it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The ledger recorded the erasure.
    Ledger {
        /// The ledger's object for it.
        recorded: String,
    },
    /// The online store.
    Online {
        /// `NAME@VERSION`.
        version: String,
        /// Records removed.
        removed: usize,
        /// Keys with no record.
        absent: usize,
        /// Records newer than the erasure, kept (a new life).
        newer: usize,
        /// SoftDelete rather than HardDelete.
        soft: bool,
    },
    /// The cache (every node).
    Cache {
        /// `NAME@VERSION`.
        version: String,
        /// Entries removed.
        removed: usize,
        /// Keys with no entry.
        absent: usize,
        /// Entries newer than the erasure, kept.
        newer: usize,
    },
    /// The offline history, rewritten without the rows.
    OfflinePurged {
        /// `NAME@VERSION`.
        version: String,
        /// What the rewrite did.
        summary: EraseSummary,
        /// The Delta table version committed, for a table.
        table_version: Option<i64>,
    },
    /// Deletion markers appended to the offline store (history kept until a purge).
    OfflineMarked {
        /// `NAME@VERSION`.
        version: String,
        /// Marker rows written.
        markers: usize,
    },
    /// The served-feature log.
    FeatureLog {
        /// Answers removed.
        rows_removed: usize,
        /// Files rewritten.
        files_rewritten: usize,
        /// Files read.
        files_scanned: usize,
    },
}

impl Outcome {
    /// The copy, for reports: `online:NAME@VERSION`, `feature_log`, ….
    pub fn copy(&self) -> String {
        match self {
            Outcome::Ledger { .. } => "ledger".into(),
            Outcome::Online { version, .. } => format!("online:{version}"),
            Outcome::Cache { version, .. } => format!("cache:{version}"),
            Outcome::OfflinePurged { version, .. } | Outcome::OfflineMarked { version, .. } => {
                format!("offline:{version}")
            }
            Outcome::FeatureLog { .. } => "feature_log".into(),
        }
    }

    /// What it did, as JSON (for the audit log and tools).
    pub fn details(&self) -> Json {
        match self {
            Outcome::Ledger { recorded } => json!({"recorded": recorded}),
            Outcome::Online {
                removed,
                absent,
                newer,
                soft,
                ..
            } => json!({"removed": removed, "absent": absent, "newer": newer, "soft": soft}),
            Outcome::Cache {
                removed,
                absent,
                newer,
                ..
            } => json!({"removed": removed, "absent": absent, "newer": newer}),
            Outcome::OfflinePurged {
                summary,
                table_version,
                ..
            } => json!({
                "purged_rows": summary.rows_removed,
                "hours_rewritten": summary.hours_rewritten,
                "hours_scanned": summary.hours_scanned,
                "bytes_before": summary.bytes_before,
                "bytes_after": summary.bytes_after,
                "table_version": table_version,
            }),
            Outcome::OfflineMarked { markers, .. } => json!({"markers": markers}),
            Outcome::FeatureLog {
                rows_removed,
                files_rewritten,
                files_scanned,
            } => json!({
                "rows_removed": rows_removed,
                "files_rewritten": files_rewritten,
                "files_scanned": files_scanned,
            }),
        }
    }
}

/// What an erase did.
#[derive(Debug, Clone)]
pub struct EraseReport {
    /// The erasure as the ledger holds it.
    pub erasure: Erasure,
    /// Every copy reached, in order (the ledger first).
    pub outcomes: Vec<Outcome>,
}

impl EraseReport {
    /// Every outcome by copy, as one JSON object.
    pub fn details(&self) -> Json {
        Json::Object(
            self.outcomes
                .iter()
                .map(|o| (o.copy(), o.details()))
                .collect(),
        )
    }
}

impl Eraser {
    /// Records the erasure in the ledger, then reaches every copy in order: online
    /// store, cache, offline store, served-feature log. `reached` hears of each copy as
    /// it is done (a long erase shows its progress). Stops at the first copy that fails:
    /// those reached stay erased, and the ledger makes every host honour the erasure
    /// meanwhile; running it again finishes the job.
    pub async fn erase(
        &self,
        request: &EraseRequest,
        reached: &mut (dyn FnMut(&Outcome) + Send),
    ) -> Result<EraseReport, EraseError> {
        let Some(ledger) = self.copies.ledger.clone() else {
            return Err(EraseError::Invalid(
                "an erasure is recorded in the erasure ledger first, which lives beside the \
                 offline store: give --offline-store, or --erasures LOCATION"
                    .into(),
            ));
        };
        let ledger = self.ledger_under_the_groups_key(ledger)?;
        let erasure = Erasure::new(
            &self.scope.name,
            self.scope.version.as_deref(),
            request.keys.clone(),
            request.at,
            &request.reason,
            &request.actor,
        )
        .map_err(|source| EraseError::Ledger {
            what: "the erasure is not valid".into(),
            source: Box::new(source),
        })?;
        let recorded = ledger
            .record(&erasure)
            .await
            .map_err(|source| EraseError::Ledger {
                what: "recording the erasure (nothing was erased yet)".into(),
                source: Box::new(source),
            })?;
        let mut outcomes = Vec::new();
        let mut done = |outcome: Outcome| {
            reached(&outcome);
            outcomes.push(outcome);
        };
        done(Outcome::Ledger { recorded });
        for v in &self.versions {
            if let Some(outcome) = self.erase_online(v, request).await? {
                done(outcome);
            }
        }
        for v in &self.versions {
            if let Some(outcome) = self.erase_cache(v, request).await? {
                done(outcome);
            }
        }
        for v in &self.versions {
            if let Some(outcome) = self.erase_offline(v, request).await? {
                done(outcome);
            }
        }
        if let Some(outcome) = self.erase_feature_log(request).await? {
            done(outcome);
        }
        Ok(EraseReport { erasure, outcomes })
    }

    /// The erasure lists the entities' keys: on S3 it is put under the group's KMS key
    /// (the newest version's that has one), as the group's own rows are.
    fn ledger_under_the_groups_key(&self, ledger: Arc<Ledger>) -> Result<Arc<Ledger>, EraseError> {
        let key = self
            .versions
            .iter()
            .rev()
            .find_map(|v| v.registered.as_ref()?.kms_key_id.as_deref());
        match key {
            Some(key) => Ledger::open_encrypted(ledger.location(), &self.copies.aws, Some(key))
                .map(Arc::new)
                .map_err(|source| EraseError::Ledger {
                    what: format!("opening the erasure ledger {}", ledger.location()),
                    source: Box::new(source),
                }),
            None => Ok(ledger),
        }
    }

    async fn erase_online(
        &self,
        v: &Version,
        request: &EraseRequest,
    ) -> Result<Option<Outcome>, EraseError> {
        let Some(store) = &self.copies.online else {
            return Ok(None);
        };
        let group = v.group_ref();
        let (mut removed, mut absent, mut newer) = (0, 0, 0);
        for chunk in request.keys.chunks(CHUNK) {
            let outcomes = store
                .delete_many_as_of(&group, chunk, request.at, request.soft)
                .await
                .map_err(|source| EraseError::Online {
                    what: format!("erasing {} from the online store", v.id()),
                    source: Box::new(source),
                })?;
            for outcome in outcomes {
                match outcome {
                    DeleteOutcome::Deleted { existed: true } => removed += 1,
                    DeleteOutcome::Deleted { existed: false } => absent += 1,
                    DeleteOutcome::Newer { .. } => newer += 1,
                }
            }
        }
        Ok(Some(Outcome::Online {
            version: v.id(),
            removed,
            absent,
            newer,
            soft: request.soft,
        }))
    }

    async fn erase_cache(
        &self,
        v: &Version,
        request: &EraseRequest,
    ) -> Result<Option<Outcome>, EraseError> {
        let Some(cache) = &self.copies.cache else {
            return Ok(None);
        };
        let keys: Vec<String> = request.keys.iter().map(|k| cache_key(&v.id(), k)).collect();
        let (mut removed, mut absent, mut newer) = (0, 0, 0);
        for chunk in keys.chunks(CHUNK) {
            let outcomes =
                cache
                    .erase(chunk, request.at)
                    .await
                    .map_err(|source| EraseError::Cache {
                        what: format!("erasing {} from the cache", v.id()),
                        source: Box::new(source),
                    })?;
            for outcome in outcomes {
                match outcome {
                    Erased::Removed => removed += 1,
                    Erased::Absent => absent += 1,
                    Erased::Newer => newer += 1,
                }
            }
        }
        Ok(Some(Outcome::Cache {
            version: v.id(),
            removed,
            absent,
            newer,
        }))
    }

    async fn erase_offline(
        &self,
        v: &Version,
        request: &EraseRequest,
    ) -> Result<Option<Outcome>, EraseError> {
        let (Some(store), Some(location), Some(registered)) =
            (&self.offline, &self.copies.offline, &v.registered)
        else {
            return Ok(None);
        };
        let typed = v.typed_keys(&request.keys);
        let offline_error = |what: String| {
            move |source| EraseError::Offline {
                what: what.clone(),
                source: Box::new(source),
            }
        };
        let is_table =
            store
                .holds_delta_table(&v.name, &v.version)
                .await
                .map_err(offline_error(format!(
                    "looking for {}'s Delta table",
                    v.id()
                )))?;
        // A Delta table has no deletion markers: its erasure is one DELETE commit.
        if request.purge_offline || is_table {
            let mut boundary = lockstep_core::Erasures::new();
            for key in typed {
                boundary.insert(key, request.at);
            }
            let (summary, table_version) = purge_version(
                location,
                &self.copies.aws,
                registered,
                &boundary,
                "erase --purge-offline",
                false,
            )
            .await?;
            return Ok(Some(Outcome::OfflinePurged {
                version: v.id(),
                summary,
                table_version,
            }));
        }
        let marked = store_for(location, &self.copies.aws, registered)?
            .mark_erased(registered, &typed, request.at, now_micros(), "erase")
            .await
            .map_err(offline_error(format!(
                "marking {} deleted in the offline store",
                v.id()
            )))?;
        Ok(Some(Outcome::OfflineMarked {
            version: v.id(),
            markers: marked.markers,
        }))
    }

    async fn erase_feature_log(
        &self,
        request: &EraseRequest,
    ) -> Result<Option<Outcome>, EraseError> {
        let Some(log) = &self.copies.feature_log else {
            return Ok(None);
        };
        let entities: HashSet<String> = request.keys.iter().cloned().collect();
        let done = lockstep_lineage::erase(
            log,
            &self.copies.aws,
            &self.scope.name,
            self.scope.version.as_deref(),
            &entities,
            request.at,
            false,
        )
        .await
        .map_err(|source| EraseError::FeatureLog {
            what: format!("erasing from the served-feature log {log}"),
            source: Box::new(source),
        })?;
        Ok(Some(Outcome::FeatureLog {
            rows_removed: done.rows_removed,
            files_rewritten: done.files_rewritten,
            files_scanned: done.files_scanned,
        }))
    }
}

/// Removes `boundary`'s rows from `v`'s history, in whichever layout it is kept: the
/// plain layout's hour files rewritten in place, or a Delta table's hours replaced in
/// one commit (a DELETE: the replaced files stay for readers of older versions until
/// `offline vacuum`). Every object is put under the version's KMS key. Returns the
/// table version committed, if any; `dry_run` only counts.
pub(crate) async fn purge_version(
    location: &str,
    aws: &lockstep_aws::AwsOptions,
    v: &GroupVersion,
    boundary: &lockstep_core::Erasures,
    job: &str,
    dry_run: bool,
) -> Result<(EraseSummary, Option<i64>), EraseError> {
    let id = format!("{}@{}", v.name, v.version);
    let offline_error = |source| EraseError::Offline {
        what: format!("purging {id} from the offline store"),
        source: Box::new(source),
    };
    let store = store_for(location, aws, v)?;
    if !store
        .holds_delta_table(&v.name, &v.version)
        .await
        .map_err(offline_error)?
    {
        let summary = store
            .purge(v, boundary, job, dry_run)
            .await
            .map_err(offline_error)?;
        return Ok((summary, None));
    }
    let job_id = format!("erase-{:x}-{:x}", now_micros(), std::process::id());
    let part_file = lockstep_delta::part_file_name(&job_id);
    if dry_run {
        let (summary, _) = store
            .purge_into_table(v, boundary, &part_file, true)
            .await
            .map_err(offline_error)?;
        return Ok((summary, None));
    }
    let delta_error = |source| EraseError::Delta {
        what: format!("purging {id} from its Delta table"),
        source: Box::new(source),
    };
    let dir = lockstep_delta::table_dir(&store.root(), &v.name, &v.version);
    let mut options = lockstep_delta::storage_options_for(location, aws);
    if let Some(key) = &v.kms_key_id {
        lockstep_delta::encrypt_with_kms(&mut options, key);
    }
    // Begun before reading: a backfill committing these hours meanwhile is a conflict.
    let table = lockstep_delta::Backfill::begin(&dir, &options)
        .await
        .map_err(delta_error)?;
    let (summary, parts) = store
        .purge_into_table(v, boundary, &part_file, false)
        .await
        .map_err(offline_error)?;
    if parts.is_empty() {
        return Ok((summary, None));
    }
    let rel = lockstep_offline::layout::version_rel(&v.name, &v.version);
    let committed = table
        .commit(
            &rel,
            &OfflineStore::schema(&v.manifest),
            &v.plugin_hash,
            &parts,
        )
        .await
        .map_err(delta_error)?;
    Ok((summary, Some(committed.version)))
}
