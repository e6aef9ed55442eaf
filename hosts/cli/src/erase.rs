//! `lockstep erase`, `lockstep erase verify`, `lockstep offline purge` and the erasure
//! ledger options every host takes: the arguments, the printing and the audit entry
//! over `lockstep-eraser`, which reaches the copies.

use anyhow::{Context, Result, bail, ensure};
use lockstep_aws::AwsOptions;
use lockstep_cache::RedisCache;
use lockstep_eraser::{Copies, EraseRequest, Eraser, Outcome, Scope};
use lockstep_erasure::Ledger;
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
    Ok(lockstep_eraser::distinct_keys(keys)?)
}

fn aws_of(target: &Target) -> AwsOptions {
    AwsOptions {
        endpoint: target.endpoint_url.clone(),
        ..Default::default()
    }
}

/// The copies `target` names, opened, and the group's versions found in them.
async fn open_eraser(target: &Target) -> Result<Eraser> {
    let aws = aws_of(target);
    let scope = Scope::parse(target.group.as_deref().unwrap_or_default())?;
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
    let copies = Copies {
        aws,
        offline: target.offline_store.clone(),
        online,
        cache,
        ledger,
        feature_log: target.feature_log.clone(),
    };
    Ok(Eraser::open(copies, scope).await?)
}

/// Now, to the millisecond: the finest time every store (SageMaker's EventTime among
/// them) carries exactly, so each copy erases as of the same instant.
fn erasure_time() -> i64 {
    let now = crate::batch::now_micros();
    now - now.rem_euclid(1000)
}

/// One line per copy, as it is reached.
fn say(outcome: &Outcome) {
    match outcome {
        Outcome::Ledger { recorded } => println!(
            "  ledger        recorded at {recorded}: every host drops these entities' events at or before that time"
        ),
        Outcome::Online {
            version,
            removed,
            absent,
            newer,
            soft,
        } => println!(
            "  online store  {version}: {removed} removed, {absent} not there{} ({})",
            newer_note(*newer),
            if *soft { "SoftDelete" } else { "HardDelete" }
        ),
        Outcome::Cache {
            version,
            removed,
            absent,
            newer,
        } => println!(
            "  cache         {version}: {removed} removed, {absent} not there{}; older writes kept out for {}",
            newer_note(*newer),
            humantime::format_duration(lockstep_cache::ERASE_GUARD)
        ),
        Outcome::OfflinePurged {
            version,
            summary,
            table_version,
        } => println!(
            "  offline       {version}: {} rows removed from {} of {} hours ({} bytes rewritten as {}){}",
            summary.rows_removed,
            summary.hours_rewritten.len(),
            summary.hours_scanned,
            summary.bytes_before,
            summary.bytes_after,
            match table_version {
                Some(t) => format!(
                    "; Delta table version {t}: older versions keep their files until \
                     `lockstep offline vacuum`"
                ),
                None => String::new(),
            }
        ),
        Outcome::OfflineMarked { version, markers } => println!(
            "  offline       {version}: {markers} deletion markers written; history kept until \
             `lockstep offline purge`"
        ),
        Outcome::FeatureLog {
            rows_removed,
            files_rewritten,
            files_scanned,
        } => println!(
            "  feature log   {rows_removed} answers removed from {files_rewritten} of {files_scanned} files"
        ),
    }
}

async fn erase(args: EraseArgs) -> Result<()> {
    let target = &args.target;
    let keys = keys_of(target)?;
    let eraser = open_eraser(target).await?;
    let audit = args
        .audit
        .open(target.offline_store.as_deref(), &aws_of(target))?;
    let at = erasure_time();
    println!(
        "erasing {} entities of {} as of {}",
        keys.len(),
        eraser.scope().describe(),
        lockstep_erasure::format_time(at),
    );
    let request = EraseRequest {
        keys,
        at,
        reason: args.reason.clone(),
        actor: lockstep_audit::actor(),
        soft: args.soft,
        purge_offline: args.purge_offline,
    };
    let report = eraser.erase(&request, &mut say).await?;
    println!(
        "  stream hosts  drop the entities' state and held events at their next look at the ledger"
    );
    println!("erasure {}", report.erasure.id);

    let scope = eraser.scope();
    let entities = if request.keys.len() <= AUDITED_KEYS {
        request.keys.clone()
    } else {
        Vec::new()
    };
    crate::audit::record(
        audit.as_ref(),
        vec![
            lockstep_audit::Entry::new("erase")
                .on(&scope.name, scope.version.clone())
                .with_entities(entities)
                .with_details(serde_json::json!({
                    "erasure": report.erasure.id,
                    "erased_at": lockstep_erasure::format_time(at),
                    "reason": args.reason,
                    "keys": request.keys.len(),
                    "soft": args.soft,
                    "purge_offline": args.purge_offline,
                    "copies": report.details(),
                })),
        ],
        "the entities are erased",
    )
    .await?;
    Ok(())
}

fn newer_note(newer: usize) -> String {
    if newer > 0 {
        format!(", {newer} newer than the erasure kept (a new life)")
    } else {
        String::new()
    }
}

async fn verify(args: VerifyArgs) -> Result<()> {
    let keys = keys_of(&args.target)?;
    let eraser = open_eraser(&args.target).await?;
    let verdicts = eraser.verify(&keys).await?;
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
    let Some(ledger) = args.ledger.open(Some(&args.offline_store), &aws)? else {
        bail!("no erasure ledger");
    };
    let audit = args.audit.open(Some(&args.offline_store), &aws)?;
    let only = args.group.as_deref().map(Scope::parse).transpose()?;
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let purged = lockstep_eraser::purge(
        &args.offline_store,
        &aws,
        &ledger,
        only.as_ref(),
        args.dry_run,
        &mut |p| {
            println!(
                "{}: {verb} {} rows of {} erased entities from {} of {} hours ({} bytes before, {} after)",
                p.version,
                p.summary.rows_removed,
                p.entities,
                p.summary.hours_rewritten.len(),
                p.summary.hours_scanned,
                p.summary.bytes_before,
                p.summary.bytes_after
            )
        },
    )
    .await?;
    if purged.is_empty() {
        println!(
            "nothing erased{}",
            only.map(|s| format!(" from {}", s.name))
                .unwrap_or_default()
        );
        return Ok(());
    }
    if args.dry_run {
        return Ok(());
    }
    let entries: Vec<lockstep_audit::Entry> = purged
        .iter()
        .filter(|p| p.summary.rows_removed > 0)
        .map(|p| {
            lockstep_audit::Entry::new("purge")
                .on(&p.group, Some(p.group_version.clone()))
                .with_details(serde_json::json!({
                    "rows_removed": p.summary.rows_removed,
                    "hours_rewritten": p.summary.hours_rewritten,
                    "bytes_before": p.summary.bytes_before,
                    "bytes_after": p.summary.bytes_after,
                }))
        })
        .collect();
    crate::audit::record(audit.as_ref(), entries, "the rows are removed").await
}
