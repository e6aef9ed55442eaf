//! Removing from the offline history what the ledger says is erased.

use crate::erase::purge_version;
use crate::{EraseError, Scope, Version, open_store};
use lockstep_aws::AwsOptions;
use lockstep_erasure::Ledger;
use lockstep_offline::EraseSummary;

/// What a purge did to one group version.
#[derive(Debug, Clone)]
pub struct Purged {
    /// `NAME@VERSION`.
    pub version: String,
    /// The group's name.
    pub group: String,
    /// The version.
    pub group_version: String,
    /// Erased entities of the version.
    pub entities: usize,
    /// What the rewrite did (or would do, in a dry run).
    pub summary: EraseSummary,
}

/// Removes from the history of the offline store at `location` every row the ledger
/// says is erased (deletion markers included), for every group with erasures or the
/// one `only` names. `dry_run` only counts. `done` hears of each version as it is done.
pub async fn purge(
    location: &str,
    aws: &AwsOptions,
    ledger: &Ledger,
    only: Option<&Scope>,
    dry_run: bool,
    done: &mut (dyn FnMut(&Purged) + Send),
) -> Result<Vec<Purged>, EraseError> {
    let store = open_store(location, aws, None)?;
    let entries = ledger
        .read_all()
        .await
        .map_err(|source| EraseError::Ledger {
            what: format!("reading the erasure ledger {}", ledger.location()),
            source: Box::new(source),
        })?;
    let mut groups: Vec<String> = entries.iter().map(|e| e.group.clone()).collect();
    groups.sort();
    groups.dedup();
    groups.retain(|g| only.is_none_or(|s| s.name == *g));
    let mut out = Vec::new();
    for name in groups {
        let versions = store
            .versions(&name)
            .await
            .map_err(|source| EraseError::Offline {
                what: format!("reading the versions of `{name}`"),
                source: Box::new(source),
            })?;
        for v in versions {
            if only
                .and_then(|s| s.version.as_ref())
                .is_some_and(|w| *w != v.version)
            {
                continue;
            }
            let version = Version {
                name: v.name.clone(),
                version: v.version.clone(),
                registered: Some(v.clone()),
            };
            let boundary =
                lockstep_erasure::boundary(&entries, &v.name, &v.version, &version.key_type());
            if boundary.is_empty() {
                continue;
            }
            let (summary, _) =
                purge_version(location, aws, &v, &boundary, "offline purge", dry_run).await?;
            let purged = Purged {
                version: version.id(),
                group: v.name.clone(),
                group_version: v.version.clone(),
                entities: boundary.len(),
                summary,
            };
            done(&purged);
            out.push(purged);
        }
    }
    Ok(out)
}
