//! The audit log on the command line: the options every changing command takes, and
//! `lockstep audit verify|show|keygen`.

use anyhow::{Context, Result, bail};
use lockstep_audit::{AuditLog, Entry, PublicKey, SigningKey};
use lockstep_aws::AwsOptions;
use std::path::PathBuf;

/// The environment variable that may hold the signing key's seed (64 hex digits).
const KEY_ENV: &str = "LOCKSTEP_AUDIT_KEY";

/// Where a command records what it changed, and how it signs.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AuditArgs {
    /// The audit log: a directory or `s3://bucket/prefix` (default: beside the offline
    /// store, `<offline-store>/_lockstep/audit`; commands without an offline store
    /// record only when this is given).
    #[arg(long = "audit", value_name = "LOCATION")]
    pub location: Option<String>,
    /// Sign the log's digests with the Ed25519 key in this file (64 hex digits, as
    /// `lockstep audit keygen` writes); else from the LOCKSTEP_AUDIT_KEY variable.
    #[arg(long, value_name = "FILE")]
    pub audit_key: Option<PathBuf>,
    /// Record nothing.
    #[arg(long, conflicts_with_all = ["location", "audit_key"])]
    pub no_audit: bool,
}

impl AuditArgs {
    /// The log to record in: `--audit`, else beside `offline_store` when there is one;
    /// `None` with `--no-audit` or nowhere to record.
    pub fn open(&self, offline_store: Option<&str>, aws: &AwsOptions) -> Result<Option<AuditLog>> {
        if self.no_audit {
            return Ok(None);
        }
        let location = match (&self.location, offline_store) {
            (Some(location), _) => location.clone(),
            (None, Some(store)) => lockstep_audit::beside_offline_store(store),
            (None, None) => return Ok(None),
        };
        let log = AuditLog::open(&location, aws)?;
        Ok(Some(match signing_key(self.audit_key.as_deref())? {
            Some(key) => log.with_signer(key),
            None => log,
        }))
    }
}

/// The signing key from `file`, else from [`KEY_ENV`]; none when neither is set.
fn signing_key(file: Option<&std::path::Path>) -> Result<Option<SigningKey>> {
    if let Some(file) = file {
        return Ok(Some(SigningKey::from_file(file)?));
    }
    match std::env::var(KEY_ENV) {
        Ok(seed) if !seed.trim().is_empty() => Ok(Some(SigningKey::from_seed_hex(&seed, KEY_ENV)?)),
        _ => Ok(None),
    }
}

/// Records `entries` in `log` (when there is one). `done` says what already happened,
/// for the error: the change stands whether or not it could be recorded.
pub async fn record(log: Option<&AuditLog>, entries: Vec<Entry>, done: &str) -> Result<()> {
    let Some(log) = log else {
        return Ok(());
    };
    log.record(entries).await.with_context(|| {
        format!(
            "{done}, but recording it in the audit log {} failed",
            log.location()
        )
    })?;
    Ok(())
}

/// `url` with any user and password replaced, for the log (which must never hold a
/// secret).
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            super::redact_url("redis://u:secret@h:6379"),
            "redis://***@h:6379"
        );
        assert_eq!(super::redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(
            super::redact_url("redis-cluster://:pw@a:1,b:2"),
            "redis-cluster://***@a:1,b:2"
        );
    }
}

/// `lockstep audit …`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Check the whole log: every digest chained (and signed), every log file whole and
    /// covered, every entry in its place. Exit 0 only when it all verifies.
    Verify {
        #[command(flatten)]
        at: Location,
        /// Require every digest to be signed by this Ed25519 public key (hex).
        #[arg(long)]
        public_key: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print entries, oldest first, filtered.
    Show {
        #[command(flatten)]
        at: Location,
        /// Only entries about this group.
        #[arg(long)]
        group: Option<String>,
        /// Only entries naming this entity.
        #[arg(long)]
        entity: Option<String>,
        /// Only entries of this action (e.g. batch.commit, erase).
        #[arg(long)]
        action: Option<String>,
        /// Only entries at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only entries before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// One JSON record a line.
        #[arg(long)]
        json: bool,
    },
    /// Make a signing key: its seed goes to FILE (readable by its owner only), its
    /// public key is printed (give it to `audit verify --public-key`).
    Keygen {
        /// Where to write the key.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Which log a reading command reads.
#[derive(clap::Args)]
pub struct Location {
    /// The log: a directory or `s3://bucket/prefix`.
    #[arg(
        long = "audit",
        value_name = "LOCATION",
        required_unless_present = "offline_store"
    )]
    location: Option<String>,
    /// The offline store whose log to read (`<offline-store>/_lockstep/audit`).
    #[arg(long)]
    offline_store: Option<String>,
    /// S3-compatible endpoint (default: the standard AWS environment).
    #[arg(long)]
    endpoint_url: Option<String>,
}

impl Location {
    fn open(&self) -> Result<AuditLog> {
        let location = match (&self.location, &self.offline_store) {
            (Some(l), _) => l.clone(),
            (None, Some(store)) => lockstep_audit::beside_offline_store(store),
            (None, None) => bail!("pass --audit LOCATION or --offline-store"),
        };
        let aws = AwsOptions {
            endpoint: self.endpoint_url.clone(),
            ..Default::default()
        };
        Ok(AuditLog::open(&location, &aws)?)
    }
}

/// Runs an `audit` subcommand.
pub async fn run_command(cmd: Command) -> Result<()> {
    match cmd {
        Command::Verify {
            at,
            public_key,
            json,
        } => {
            let log = at.open()?;
            let pinned = public_key.map(PublicKey);
            let found = log
                .verify(pinned.as_ref())
                .await
                .with_context(|| format!("reading the audit log {}", log.location()))?;
            if json {
                let problems: Vec<_> = found
                    .problems
                    .iter()
                    .map(|p| serde_json::json!({"at": p.at, "problem": p.what}))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({
                        "location": log.location(),
                        "ok": found.ok(),
                        "digests": found.digests,
                        "files": found.files,
                        "entries": found.entries,
                        "signed": found.signed,
                        "problems": problems,
                    })
                );
            } else {
                for p in &found.problems {
                    println!("BROKEN {p}");
                }
                println!(
                    "{}: {} digests ({} signed), {} log files, {} entries{}",
                    log.location(),
                    found.digests,
                    found.signed,
                    found.files,
                    found.entries,
                    if found.ok() {
                        ", all verified".to_owned()
                    } else {
                        format!(", {} problems", found.problems.len())
                    }
                );
            }
            if !found.ok() {
                bail!(
                    "the audit log {} does not verify ({} problems; the first: {})",
                    log.location(),
                    found.problems.len(),
                    found.problems[0]
                );
            }
            Ok(())
        }
        Command::Show {
            at,
            group,
            entity,
            action,
            since,
            until,
            json,
        } => {
            let since = since.map(|t| parse_time(&t)).transpose()?;
            let until = until.map(|t| parse_time(&t)).transpose()?;
            let log = at.open()?;
            for (_, record) in log.records().await? {
                let time = parse_time(&record.time).ok();
                let keep = group
                    .as_ref()
                    .is_none_or(|g| record.group.as_ref() == Some(g))
                    && entity.as_ref().is_none_or(|e| record.entities.contains(e))
                    && action.as_ref().is_none_or(|a| &record.action == a)
                    && since.is_none_or(|s| time.is_some_and(|t| t >= s))
                    && until.is_none_or(|u| time.is_some_and(|t| t < u));
                if !keep {
                    continue;
                }
                if json {
                    println!("{}", serde_json::to_string(&record)?);
                } else {
                    let about = match (&record.group, &record.version) {
                        (Some(g), Some(v)) => format!(" {g}@{v}"),
                        (Some(g), None) => format!(" {g}"),
                        _ => String::new(),
                    };
                    let entities = if record.entities.is_empty() {
                        String::new()
                    } else {
                        format!(" entities={}", record.entities.join(","))
                    };
                    let details = if record.details.is_null() {
                        String::new()
                    } else {
                        format!(" {}", summarise(&record.details))
                    };
                    println!(
                        "{} {} {}{about}{entities}{details}",
                        record.time, record.actor, record.action
                    );
                }
            }
            Ok(())
        }
        Command::Keygen { out } => {
            if out.exists() {
                bail!("{} exists; not overwriting a key", out.display());
            }
            let (key, seed) = SigningKey::generate()?;
            write_secret(&out, &seed)?;
            println!("wrote a signing key to {}", out.display());
            println!("public key: {}", key.public_key());
            Ok(())
        }
    }
}

/// A detail object in one line, long lists cut short.
fn summarise(details: &serde_json::Value) -> String {
    let Some(map) = details.as_object() else {
        return details.to_string();
    };
    map.iter()
        .map(|(k, v)| match v {
            serde_json::Value::Array(items) if items.len() > 3 => {
                format!("{k}=[{} items]", items.len())
            }
            v => format!("{k}={v}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("`{text}` is not an RFC 3339 time like 2026-12-06T18:00:00Z"))
}

/// Writes `text` to a new file only its owner can read.
fn write_secret(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{text}").with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
