//! `lockstep erase`, `lockstep erase verify` and the erasure ledger options every host
//! takes.
//!
//! An erase first records the erasure in the ledger (so every host honours it from
//! then on, whatever happens next), then reaches each copy in turn — the online store,
//! the cache, the offline store — and says per copy what it found and removed. Stream
//! hosts pick the erasure up from the ledger by themselves (their state and held events
//! of the entity are dropped at their next look, without a restart).

use anyhow::{Context, Result, bail, ensure};
use lockstep_aws::AwsOptions;
use lockstep_cache::{Erased, RedisCache, cache_key};
use lockstep_core::EntityKey;
use lockstep_erasure::{Erasure, Ledger};
use lockstep_offline::{GroupVersion, OfflineStore};
use lockstep_online::{DeleteOutcome, GroupRef, OnlineStore};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Entities named in the audit log one by one up to this many; beyond, the entry names
/// the ledger's record of them (which holds every key).
const AUDITED_KEYS: usize = 10_000;

/// Where the erasure ledger is, for every command that honours or writes it.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LedgerArgs {
    /// The erasure ledger: a directory or `s3://bucket/prefix` (default: beside the
    /// offline store, `<offline-store>/_lockstep/erasures`).
    #[arg(long = "erasures", value_name = "LOCATION")]
    pub ledger_location: Option<String>,
}

impl LedgerArgs {
    /// The ledger: `--erasures`, else beside `offline_store`; `None` when neither is
    /// known.
    pub fn open(
        &self,
        offline_store: Option<&str>,
        aws: &AwsOptions,
    ) -> Result<Option<Arc<Ledger>>> {
        let location = match (&self.ledger_location, offline_store) {
            (Some(location), _) => location.clone(),
            (None, Some(store)) => lockstep_erasure::beside_offline_store(store),
            (None, None) => return Ok(None),
        };
        Ok(Some(Arc::new(Ledger::open(&location, aws)?)))
    }
}

/// Which entities of which group, and the stores to reach.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// The group, NAME or NAME@VERSION (every version when the version is left out).
    #[arg(long, required = true)]
    pub group: Option<String>,
    /// An entity key (repeatable).
    #[arg(long = "entity", value_name = "KEY")]
    pub entities: Vec<String>,
    /// A file of entity keys, one a line (millions are fine).
    #[arg(long, value_name = "FILE")]
    pub entities_file: Option<PathBuf>,
    /// The offline store: a directory or `s3://bucket/prefix`. Its registry says which
    /// versions the group has; the ledger and the audit log live beside it.
    #[arg(long)]
    pub offline_store: Option<String>,
    /// The online store: embedded:DIR, sagemaker or sagemaker:URL.
    #[arg(long, value_parser = crate::stream::parse_online_store)]
    pub online_store: Option<crate::stream::OnlineStoreArg>,
    /// The Redis cache: redis://… (one server) or redis-cluster://… (every node).
    #[arg(long)]
    pub cache: Option<String>,
    /// The served-feature log (`serve --log-features`): a directory or `s3://…`.
    #[arg(long, value_name = "LOCATION")]
    pub feature_log: Option<String>,
    /// Endpoint for S3 (e.g. a local server); region and credentials come from the
    /// AWS environment.
    #[arg(long)]
    pub endpoint_url: Option<String>,
    #[command(flatten)]
    pub ledger: LedgerArgs,
}

/// What `lockstep erase` takes.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    pub verify: Option<Sub>,
    #[command(flatten)]
    pub erase: EraseArgs,
}

/// `lockstep erase verify`.
#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    /// Look in every copy for the entities and print one line per copy (found / gone).
    /// Exit 0 only when every copy is clean.
    Verify(VerifyArgs),
}

/// What an erase takes.
#[derive(clap::Args, Debug)]
pub struct EraseArgs {
    #[command(flatten)]
    pub target: Target,
    /// Why (recorded in the ledger and the audit log).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// SageMaker's SoftDelete instead of HardDelete on the online store (the record
    /// can no longer be read either way).
    #[arg(long)]
    pub soft: bool,
    /// Remove the entities' rows from the offline store's history now (every hour
    /// that holds one is rewritten without them), instead of only appending deletion
    /// markers (`lockstep offline purge` removes them later).
    #[arg(long)]
    pub purge_offline: bool,
    #[command(flatten)]
    pub audit: crate::audit::AuditArgs,
}

/// What `erase verify` takes.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub target: Target,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `lockstep erase …`.
pub async fn run(args: Args) -> Result<()> {
    match args.verify {
        Some(Sub::Verify(v)) => verify(v).await,
        None => erase(args.erase).await,
    }
}

/// The keys of `target`, each once, in the order given.
fn keys_of(target: &Target) -> Result<Vec<String>> {
    let mut keys = target.entities.clone();
    if let Some(file) = &target.entities_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the entity keys in {}", file.display()))?;
        keys.extend(
            text.lines()
                .map(|l| l.trim_end_matches('\r'))
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned),
        );
    }
    let mut seen = HashSet::with_capacity(keys.len());
    keys.retain(|k| seen.insert(k.clone()));
    ensure!(
        !keys.is_empty(),
        "no entity keys: give --entity KEY (repeatable) or --entities-file FILE"
    );
    if let Some(empty) = keys.iter().position(|k| k.trim().is_empty()) {
        bail!("entity key #{} is blank", empty + 1);
    }
    Ok(keys)
}

/// The group's name and the version asked for.
fn split_group(group: &Option<String>) -> Result<(&str, Option<&str>)> {
    let group = group.as_deref().unwrap_or_default();
    let (name, version) = match group.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (group, None),
    };
    ensure!(
        !name.is_empty(),
        "--group needs a name: NAME or NAME@VERSION"
    );
    ensure!(
        version.is_none_or(|v| !v.is_empty()),
        "--group {group}: no version after `@`"
    );
    Ok((name, version))
}

/// The copies a command reaches.
struct Copies {
    aws: AwsOptions,
    offline: Option<OfflineStore>,
    online: Option<Arc<dyn OnlineStore>>,
    cache: Option<RedisCache>,
    ledger: Option<Arc<Ledger>>,
    /// The group versions to reach (from the registry, or the one named).
    versions: Vec<Version>,
}

/// A group version as the stores know it.
struct Version {
    name: String,
    version: String,
    /// The registry entry, when the offline store has one.
    registered: Option<GroupVersion>,
}

impl Version {
    fn group_ref(&self) -> GroupRef {
        GroupRef {
            name: self.name.clone(),
            version: self.version.clone(),
            plugin_hash: self
                .registered
                .as_ref()
                .map(|r| r.plugin_hash.clone())
                .unwrap_or_default(),
            entity_key: self
                .registered
                .as_ref()
                .map(|r| r.manifest.entity_key.clone())
                .unwrap_or_default(),
        }
    }

    fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// The keys as this version's entity key type reads them (text when unknown).
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

async fn open_copies(target: &Target) -> Result<Copies> {
    let aws = AwsOptions {
        endpoint: target.endpoint_url.clone(),
        ..Default::default()
    };
    let (name, wanted) = split_group(&target.group)?;
    let offline = match &target.offline_store {
        Some(location) => Some(crate::offline::open(location, &aws)?),
        None => None,
    };
    let versions = match &offline {
        Some(store) => {
            let registered = store.versions(name).await?;
            let selected: Vec<Version> = registered
                .into_iter()
                .filter(|v| wanted.is_none_or(|w| w == v.version))
                .map(|v| Version {
                    name: v.name.clone(),
                    version: v.version.clone(),
                    registered: Some(v),
                })
                .collect();
            match (selected.is_empty(), wanted) {
                (false, _) => selected,
                // A version the offline store never held may still be online.
                (true, Some(w)) => vec![Version {
                    name: name.to_owned(),
                    version: w.to_owned(),
                    registered: None,
                }],
                (true, None) => bail!(
                    "feature group `{name}` has no version in the offline store at {}; name \
                     the version (--group {name}@VERSION) to reach the other stores",
                    store.root().display()
                ),
            }
        }
        None => match wanted {
            Some(w) => vec![Version {
                name: name.to_owned(),
                version: w.to_owned(),
                registered: None,
            }],
            None => bail!(
                "without --offline-store the group's versions are unknown: name one \
                 (--group {name}@VERSION)"
            ),
        },
    };
    let online = match &target.online_store {
        Some(arg) => Some(crate::stream::open_store(arg, None).await?),
        None => None,
    };
    let cache = match &target.cache {
        Some(url) => Some(
            RedisCache::connect(url, None, Duration::from_secs(5))
                .await
                .with_context(|| "connecting to the cache".to_owned())?,
        ),
        None => None,
    };
    let ledger = target.ledger.open(target.offline_store.as_deref(), &aws)?;
    Ok(Copies {
        aws,
        offline,
        online,
        cache,
        ledger,
        versions,
    })
}

/// Now, to the millisecond: the finest time every store (SageMaker's EventTime among
/// them) carries exactly, so each copy erases as of the same instant.
fn erasure_time() -> i64 {
    let now = crate::batch::now_micros();
    now - now.rem_euclid(1000)
}

async fn erase(args: EraseArgs) -> Result<()> {
    let target = &args.target;
    let keys = keys_of(target)?;
    let copies = open_copies(target).await?;
    let Some(ledger) = copies.ledger.clone() else {
        bail!(
            "an erasure is recorded in the erasure ledger first, which lives beside the \
             offline store: give --offline-store, or --erasures LOCATION"
        );
    };
    let audit = args
        .audit
        .open(target.offline_store.as_deref(), &copies.aws)?;
    let (name, wanted) = split_group(&target.group)?;
    let at = erasure_time();
    let actor = lockstep_audit::actor();
    let erasure = Erasure::new(name, wanted, keys.clone(), at, &args.reason, &actor)?;
    let recorded = ledger
        .record(&erasure)
        .await
        .context("recording the erasure (nothing was erased yet)")?;
    let scope = match wanted {
        Some(v) => format!("{name}@{v}"),
        None => format!("{name} (every version)"),
    };
    println!(
        "erasing {} entities of {scope} as of {} (erasure {})",
        keys.len(),
        lockstep_erasure::format_time(at),
        erasure.id
    );
    println!(
        "  ledger        recorded at {recorded}: every host drops these entities' events at or before that time"
    );
    let mut report = serde_json::Map::new();

    // 1. The online store.
    if let Some(store) = &copies.online {
        for v in &copies.versions {
            let group = v.group_ref();
            let (mut removed, mut absent, mut newer) = (0usize, 0usize, 0usize);
            for chunk in keys.chunks(10_000) {
                for outcome in store
                    .delete_many_as_of(&group, chunk, at, args.soft)
                    .await
                    .with_context(|| format!("erasing {} from the online store", v.id()))?
                {
                    match outcome {
                        DeleteOutcome::Deleted { existed: true } => removed += 1,
                        DeleteOutcome::Deleted { existed: false } => absent += 1,
                        DeleteOutcome::Newer { .. } => newer += 1,
                    }
                }
            }
            println!(
                "  online store  {}: {removed} removed, {absent} not there{} ({})",
                v.id(),
                newer_note(newer),
                if args.soft {
                    "SoftDelete"
                } else {
                    "HardDelete"
                }
            );
            report.insert(
                format!("online:{}", v.id()),
                serde_json::json!({"removed": removed, "absent": absent, "newer": newer}),
            );
        }
    }

    // 2. The cache: a guard per key, so no older write brings one back.
    if let Some(cache) = &copies.cache {
        for v in &copies.versions {
            let cache_keys: Vec<String> = keys.iter().map(|k| cache_key(&v.id(), k)).collect();
            let (mut removed, mut absent, mut newer) = (0usize, 0usize, 0usize);
            for chunk in cache_keys.chunks(10_000) {
                for outcome in cache
                    .erase(chunk, at)
                    .await
                    .with_context(|| format!("erasing {} from the cache", v.id()))?
                {
                    match outcome {
                        Erased::Removed => removed += 1,
                        Erased::Absent => absent += 1,
                        Erased::Newer => newer += 1,
                    }
                }
            }
            println!(
                "  cache         {}: {removed} removed, {absent} not there{}; older writes kept out for {}",
                v.id(),
                newer_note(newer),
                humantime::format_duration(lockstep_cache::ERASE_GUARD)
            );
            report.insert(
                format!("cache:{}", v.id()),
                serde_json::json!({"removed": removed, "absent": absent, "newer": newer}),
            );
        }
    }

    // 3. The offline store: markers, or the history itself.
    if let Some(store) = &copies.offline {
        for v in copies.versions.iter() {
            let Some(registered) = &v.registered else {
                continue;
            };
            let typed = v.typed_keys(&keys);
            let is_table = store.holds_delta_table(&v.name, &v.version).await?;
            if args.purge_offline || is_table {
                let mut boundary = lockstep_core::Erasures::new();
                for key in typed {
                    boundary.insert(key, at);
                }
                let location = target.offline_store.as_deref().unwrap_or_default();
                let (done, table_version) = purge_version(
                    store,
                    location,
                    &copies.aws,
                    registered,
                    &boundary,
                    "erase --purge-offline",
                    false,
                )
                .await
                .with_context(|| format!("purging {} from the offline store", v.id()))?;
                println!(
                    "  offline       {}: {} rows removed from {} of {} hours ({} bytes rewritten as {}){}",
                    v.id(),
                    done.rows_removed,
                    done.hours_rewritten.len(),
                    done.hours_scanned,
                    done.bytes_before,
                    done.bytes_after,
                    match table_version {
                        Some(t) => format!(
                            "; Delta table version {t}: older versions keep their files until \
                             `lockstep offline vacuum`"
                        ),
                        None => String::new(),
                    }
                );
                report.insert(
                    format!("offline:{}", v.id()),
                    serde_json::json!({
                        "purged_rows": done.rows_removed,
                        "hours_rewritten": done.hours_rewritten,
                        "hours_scanned": done.hours_scanned,
                    }),
                );
            } else {
                let done = store
                    .mark_erased(registered, &typed, at, crate::batch::now_micros(), "erase")
                    .await
                    .with_context(|| format!("marking {} deleted in the offline store", v.id()))?;
                println!(
                    "  offline       {}: {} deletion markers written; history kept until \
                     `lockstep offline purge`",
                    v.id(),
                    done.markers
                );
                report.insert(
                    format!("offline:{}", v.id()),
                    serde_json::json!({"markers": done.markers}),
                );
            }
        }
    }
    // 4. The served-feature log.
    if let Some(log) = &target.feature_log {
        let entities: HashSet<String> = keys.iter().cloned().collect();
        let done = lockstep_lineage::erase(log, &copies.aws, name, wanted, &entities, at, false)
            .await
            .with_context(|| format!("erasing from the served-feature log {log}"))?;
        println!(
            "  feature log   {} answers removed from {} of {} files",
            done.rows_removed, done.files_rewritten, done.files_scanned
        );
        report.insert(
            "feature_log".into(),
            serde_json::json!({"rows_removed": done.rows_removed, "files_rewritten": done.files_rewritten}),
        );
    }
    println!(
        "  stream hosts  drop the entities' state and held events at their next look at the ledger"
    );

    let entities = if keys.len() <= AUDITED_KEYS {
        keys.clone()
    } else {
        Vec::new()
    };
    crate::audit::record(
        audit.as_ref(),
        vec![
            lockstep_audit::Entry::new("erase")
                .on(name, wanted.map(str::to_owned))
                .with_entities(entities)
                .with_details(serde_json::json!({
                    "erasure": erasure.id,
                    "erased_at": lockstep_erasure::format_time(at),
                    "reason": args.reason,
                    "keys": keys.len(),
                    "ledger": recorded,
                    "soft": args.soft,
                    "purge_offline": args.purge_offline,
                    "copies": report,
                })),
        ],
        "the entities are erased",
    )
    .await?;
    Ok(())
}

/// Removes `boundary`'s rows from `v`'s history, in whichever layout it is kept: the
/// plain layout's hour files rewritten in place, or a Delta table's hours replaced in
/// one commit (a DELETE: the replaced files stay for readers of older versions until
/// `offline vacuum`). Returns the table version committed, if any.
async fn purge_version(
    store: &OfflineStore,
    location: &str,
    aws: &AwsOptions,
    v: &GroupVersion,
    boundary: &lockstep_core::Erasures,
    job: &str,
    dry_run: bool,
) -> Result<(lockstep_offline::EraseSummary, Option<i64>)> {
    if !store.holds_delta_table(&v.name, &v.version).await? {
        return Ok((store.purge(v, boundary, job, dry_run).await?, None));
    }
    let job_id = format!(
        "erase-{:x}-{:x}",
        crate::batch::now_micros(),
        std::process::id()
    );
    let part_file = lockstep_delta::part_file_name(&job_id);
    if dry_run {
        let (summary, _) = store
            .purge_into_table(v, boundary, &part_file, true)
            .await?;
        return Ok((summary, None));
    }
    let dir = lockstep_delta::table_dir(&store.root(), &v.name, &v.version);
    // Begun before reading: a backfill committing these hours meanwhile is a conflict.
    let table =
        lockstep_delta::Backfill::begin(&dir, &crate::offline::delta_options(location, aws))
            .await?;
    let (summary, parts) = store
        .purge_into_table(v, boundary, &part_file, false)
        .await?;
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
        .await?;
    Ok((summary, Some(committed.version)))
}

fn newer_note(newer: usize) -> String {
    if newer > 0 {
        format!(", {newer} newer than the erasure kept (a new life)")
    } else {
        String::new()
    }
}

/// One copy's verdict.
struct Verdict {
    copy: String,
    clean: bool,
    found: usize,
    detail: String,
}

async fn verify(args: VerifyArgs) -> Result<()> {
    let target = &args.target;
    let keys = keys_of(target)?;
    let copies = open_copies(target).await?;
    let mut verdicts = Vec::new();
    // The boundary each key was erased at, per version (offline rows after it are a
    // new life, not a leftover).
    let ledger_entries = match &copies.ledger {
        Some(ledger) => Some(ledger.read_all().await?),
        None => None,
    };
    if let Some(entries) = &ledger_entries {
        for v in &copies.versions {
            let boundary = lockstep_erasure::boundary(entries, &v.name, &v.version, &v.key_type());
            let missing = v
                .typed_keys(&keys)
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
                    format!("{missing} entities never erased: hosts may apply their events again")
                },
            });
        }
    }
    if let Some(store) = &copies.online {
        for v in &copies.versions {
            let found = store
                .get(&v.group_ref(), &keys)
                .await
                .with_context(|| format!("reading {} from the online store", v.id()))?
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
    if let Some(cache) = &copies.cache {
        for v in &copies.versions {
            let cache_keys: Vec<String> = keys.iter().map(|k| cache_key(&v.id(), k)).collect();
            let mut found = 0;
            for chunk in cache_keys.chunks(10_000) {
                found += cache
                    .holds(chunk)
                    .await
                    .with_context(|| format!("reading {} from the cache", v.id()))?
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
    if let (Some(store), Some(entries)) = (&copies.offline, &ledger_entries) {
        for v in &copies.versions {
            let Some(registered) = &v.registered else {
                continue;
            };
            // Rows at or before each key's erasure: leftovers. Keys never erased are
            // looked for over their whole history.
            let boundary = lockstep_erasure::boundary(entries, &v.name, &v.version, &v.key_type());
            let mut wanted = lockstep_core::Erasures::new();
            let mut never_erased = 0;
            for key in v.typed_keys(&keys) {
                let at = boundary.erased_at(&key).unwrap_or_else(|| {
                    never_erased += 1;
                    i64::MAX
                });
                wanted.insert(key, at);
            }
            let location = target.offline_store.as_deref().unwrap_or_default();
            let (found, _) = purge_version(
                store,
                location,
                &copies.aws,
                registered,
                &wanted,
                "erase verify",
                true,
            )
            .await
            .with_context(|| format!("looking in {} in the offline store", v.id()))?;
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
                            format!("{never_erased} of the entities were never erased: `lockstep erase` them")
                        } else {
                            "history kept: run `lockstep offline purge`".to_owned()
                        }
                    )
                },
            });
        }
    }
    if let Some(log) = &target.feature_log {
        let entities: HashSet<String> = keys.iter().cloned().collect();
        // Answers served up to the latest erasure of these keys (all of them when none
        // is recorded).
        let (name, wanted) = split_group(&target.group)?;
        let latest = ledger_entries
            .iter()
            .flatten()
            .filter(|e| e.group == name && e.keys.iter().any(|k| entities.contains(k)))
            .map(|e| e.erased_at)
            .max()
            .unwrap_or(i64::MAX);
        let found =
            lockstep_lineage::erase(log, &copies.aws, name, wanted, &entities, latest, true)
                .await
                .with_context(|| format!("looking in the served-feature log {log}"))?;
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
    ensure!(
        !verdicts.is_empty(),
        "no copy to look in: give --offline-store, --online-store, --cache and/or --feature-log"
    );
    let clean = verdicts.iter().all(|v| v.clean);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "clean": clean,
                "entities": keys.len(),
                "copies": verdicts
                    .iter()
                    .map(|v| serde_json::json!({
                        "copy": v.copy,
                        "clean": v.clean,
                        "found": v.found,
                        "detail": v.detail,
                    }))
                    .collect::<Vec<_>>(),
            }))?
        );
    } else {
        for v in &verdicts {
            println!(
                "{:<6} {:<40} {}",
                if v.clean { "gone" } else { "FOUND" },
                v.copy,
                v.detail
            );
        }
    }
    ensure!(
        clean,
        "{} of {} copies still hold erased entities",
        verdicts.iter().filter(|v| !v.clean).count(),
        verdicts.len()
    );
    Ok(())
}

/// What `offline purge` takes.
#[derive(clap::Args, Debug)]
pub struct PurgeArgs {
    /// Offline store: a directory or `s3://bucket/prefix`.
    #[arg(long)]
    pub offline_store: String,
    /// The group, NAME or NAME@VERSION (every group with erasures when left out).
    #[arg(long)]
    pub group: Option<String>,
    /// List what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Endpoint for S3 (e.g. a local server).
    #[arg(long)]
    pub endpoint_url: Option<String>,
    #[command(flatten)]
    pub ledger: LedgerArgs,
    #[command(flatten)]
    pub audit: crate::audit::AuditArgs,
}

/// `lockstep offline purge`: removes from the offline store's history every row the
/// erasure ledger says is erased (deletion markers included).
pub async fn purge(args: PurgeArgs) -> Result<()> {
    let aws = AwsOptions {
        endpoint: args.endpoint_url.clone(),
        ..Default::default()
    };
    let store = crate::offline::open(&args.offline_store, &aws)?;
    let Some(ledger) = args.ledger.open(Some(&args.offline_store), &aws)? else {
        bail!("no erasure ledger");
    };
    let audit = args.audit.open(Some(&args.offline_store), &aws)?;
    let entries = ledger.read_all().await?;
    let (only_name, only_version) = match &args.group {
        Some(_) => {
            let (n, v) = split_group(&args.group)?;
            (Some(n.to_owned()), v.map(str::to_owned))
        }
        None => (None, None),
    };
    let mut groups: Vec<String> = entries.iter().map(|e| e.group.clone()).collect();
    groups.sort();
    groups.dedup();
    groups.retain(|g| only_name.as_ref().is_none_or(|n| n == g));
    if groups.is_empty() {
        println!(
            "nothing erased{}",
            only_name.map(|n| format!(" from {n}")).unwrap_or_default()
        );
        return Ok(());
    }
    for name in groups {
        for v in store.versions(&name).await? {
            if only_version.as_ref().is_some_and(|w| *w != v.version) {
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
            let (done, _) = purge_version(
                &store,
                &args.offline_store,
                &aws,
                &v,
                &boundary,
                "offline purge",
                args.dry_run,
            )
            .await
            .with_context(|| format!("purging {}", version.id()))?;
            let verb = if args.dry_run {
                "would remove"
            } else {
                "removed"
            };
            println!(
                "{}: {verb} {} rows of {} erased entities from {} of {} hours ({} bytes before, {} after)",
                version.id(),
                done.rows_removed,
                boundary.len(),
                done.hours_rewritten.len(),
                done.hours_scanned,
                done.bytes_before,
                done.bytes_after
            );
            if !args.dry_run && done.rows_removed > 0 {
                crate::audit::record(
                    audit.as_ref(),
                    vec![
                        lockstep_audit::Entry::new("purge")
                            .on(&v.name, Some(v.version.clone()))
                            .with_details(serde_json::json!({
                                "rows_removed": done.rows_removed,
                                "hours_rewritten": done.hours_rewritten,
                                "bytes_before": done.bytes_before,
                                "bytes_after": done.bytes_after,
                            })),
                    ],
                    "the rows are removed",
                )
                .await?;
            }
        }
    }
    Ok(())
}
