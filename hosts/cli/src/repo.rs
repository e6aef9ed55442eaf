//! The feature repository: commands that read `lockstep.toml` (`lockstep-config`)
//! instead of long flag lists, and the defaults other commands take from it.
//!
//! `backfill [GROUP…]` runs `batch run` for each group with a batch source. A group's
//! plugin is a crate (built reproducibly, on demand) or a `.wasm` pinned by its
//! SHA-256; either way the component's manifest must name the group and the version
//! the file gives, so a changed plugin never writes under an old version unnoticed.

use anyhow::{Context, Result, bail};
use lockstep_config::{Config, GroupConfig, PluginSource};
use lockstep_runtime::Runtime;
use std::path::{Path, PathBuf};

/// The configuration a command runs with: the file `--config` names (it must be
/// readable), else the `lockstep.toml` found from the working directory up, else none.
pub fn optional(flag: Option<&Path>) -> Result<Option<Config>> {
    if let Some(path) = flag {
        return Ok(Some(Config::load(path)?));
    }
    let here = std::env::current_dir().context("reading the working directory")?;
    match Config::find(&here) {
        Some(path) => Ok(Some(Config::load(&path)?)),
        None => Ok(None),
    }
}

/// The configuration, which the command cannot do without.
pub fn required(flag: Option<&Path>) -> Result<Config> {
    if let Some(path) = flag {
        return Ok(Config::load(path)?);
    }
    let here = std::env::current_dir().context("reading the working directory")?;
    Ok(Config::discover(&here)?)
}

/// A group's component, built or checked, with its manifest confirmed.
pub struct Component {
    /// The `.wasm` file.
    pub path: PathBuf,
    /// The SHA-256 of its bytes.
    pub sha256: String,
}

/// Where components built from the repository's plugin crates go: one cargo target
/// directory for all of them, under the repository, so a rebuild is incremental.
fn build_dir(config: &Config) -> PathBuf {
    config.root.join(".lockstep").join("target")
}

/// The component of `group`: its crate built (reproducibly; cargo makes it
/// incremental), or its `.wasm` checked against the pinned SHA-256.
pub fn component(config: &Config, group: &GroupConfig) -> Result<Component> {
    match &group.plugin {
        PluginSource::Crate { dir } => {
            if !dir.join("Cargo.toml").is_file() {
                bail!(
                    "group `{}`: the plugin {} is not a crate (no Cargo.toml) — name a crate \
                     directory, or a built .wasm with its sha256",
                    group.name,
                    dir.display()
                );
            }
            let built = lockstep_build::build(
                dir,
                &lockstep_build::BuildOptions {
                    features: Vec::new(),
                    verbose: false,
                    target_dir: Some(build_dir(config)),
                },
            )
            .with_context(|| format!("group `{}`: building {}", group.name, dir.display()))?;
            Ok(Component {
                path: built.path,
                sha256: built.sha256,
            })
        }
        PluginSource::Component { path, sha256 } => {
            let bytes = std::fs::read(path).with_context(|| {
                format!(
                    "group `{}`: reading the plugin {}",
                    group.name,
                    path.display()
                )
            })?;
            let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            if &actual != sha256 {
                bail!(
                    "group `{}`: {} has SHA-256 {actual}, but {} pins {sha256}: if the new \
                     component is meant, pin its hash (and bump the version if its rows change)",
                    group.name,
                    path.display(),
                    config.path.display()
                );
            }
            Ok(Component {
                path: path.clone(),
                sha256: actual,
            })
        }
    }
}

/// Loads `component`, checks its manifest names `group` at the configured version,
/// and returns the manifest.
pub fn check_manifest(
    config: &Config,
    group: &GroupConfig,
    component: &Component,
    runtime: &Runtime,
) -> Result<lockstep_abi::Manifest> {
    let plugin = runtime.load_file(&component.path).with_context(|| {
        format!(
            "group `{}`: loading {}",
            group.name,
            component.path.display()
        )
    })?;
    let m = plugin.manifest();
    if m.name != group.name {
        bail!(
            "group `{}` in {}: its plugin's manifest names the group `{}`; rename one of them",
            group.name,
            config.path.display(),
            m.name
        );
    }
    if m.version != group.version {
        bail!(
            "group `{}` in {}: the file says version {}, the plugin's manifest says {}; make \
             them agree (a plugin whose rows change needs a new version)",
            group.name,
            config.path.display(),
            group.version,
            m.version
        );
    }
    Ok(m.clone())
}

/// `lockstep backfill [GROUP…]`.
#[derive(clap::Args)]
pub struct BackfillArgs {
    /// The groups to backfill (default: every group with a batch source).
    pub groups: Vec<String>,
    /// Memory for each job (e.g. 2GiB); beyond it the job spills to disk.
    #[arg(long, value_parser = crate::batch::parse_size)]
    pub memory_limit: Option<usize>,
    /// Parallel plugin instances (default: the number of cores).
    #[arg(long)]
    pub partitions: Option<usize>,
    #[command(flatten)]
    pub runtime: crate::plugin::RuntimeArgs,
    #[command(flatten)]
    pub audit: crate::audit::AuditArgs,
    #[command(flatten)]
    pub erasures: crate::erase::LedgerArgs,
    /// Do not load the backfilled groups' latest rows into an embedded online store
    /// afterwards (a SageMaker one is never loaded here: `lockstep materialize`).
    #[arg(long)]
    pub no_materialize: bool,
    /// Write only rows at or after this instant (RFC 3339, on the hour). The plugin
    /// still runs over the history before it, so each entity's state there is exact;
    /// every hour from it on (up to `--to`) is replaced, emptied if it gets no row.
    #[arg(long, value_parser = crate::stream::parse_instant)]
    pub from: Option<i64>,
    /// Read and write only events before this instant (RFC 3339, on the hour); later
    /// events are left out, and entities are woken up to it.
    #[arg(long, value_parser = crate::stream::parse_instant)]
    pub to: Option<i64>,
}

/// Backfills the groups asked for (or every group with a batch source), one after the
/// other, each as `batch run` would with the file's settings.
pub async fn backfill(args: BackfillArgs, config_flag: Option<&Path>) -> Result<()> {
    let config = required(config_flag)?;
    let asked = config
        .groups_named(&args.groups)
        .map_err(anyhow::Error::msg)?;
    let groups: Vec<&GroupConfig> = if args.groups.is_empty() {
        asked.into_iter().filter(|g| g.batch.is_some()).collect()
    } else {
        if let Some(g) = asked.iter().find(|g| g.batch.is_none()) {
            bail!(
                "group `{}` has no batch source in {}: add `batch = {{ source = \"…\" }}` to it",
                g.name,
                config.path.display()
            );
        }
        asked
    };
    if groups.is_empty() {
        bail!(
            "no group in {} has a batch source: add `batch = {{ source = \"…\" }}` to a [[group]]",
            config.path.display()
        );
    }
    let runtime = args.runtime.runtime()?;
    for group in groups.iter().copied() {
        let Some(batch) = &group.batch else {
            continue;
        };
        let component = component(&config, group)?;
        check_manifest(&config, group, &component, &runtime)?;
        println!(
            "backfilling {}@{} from {} (plugin {})",
            group.name,
            group.version,
            batch.source,
            &component.sha256[..12]
        );
        crate::batch::run(
            crate::batch::RunArgs {
                plugin: component.path.clone(),
                source: batch.source.clone(),
                format: batch.format.map(|f| match f {
                    lockstep_config::SourceFormat::Parquet => lockstep_batch::SourceFormat::Parquet,
                    lockstep_config::SourceFormat::Csv => lockstep_batch::SourceFormat::Csv,
                    lockstep_config::SourceFormat::Json => lockstep_batch::SourceFormat::Json,
                }),
                sql: batch.sql.clone(),
                offline_store: config.offline.store.clone(),
                s3: lockstep_offline::S3Options::default(),
                catalog: config
                    .offline
                    .glue_database
                    .clone()
                    .map(crate::batch::Catalog::Glue),
                memory_limit: args.memory_limit,
                partitions: args
                    .partitions
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
                state_out: None,
                rejects: None,
                max_future: 3_600_000_000,
                end_at: None,
                window: lockstep_batch::TimeWindow {
                    from: args.from,
                    to: args.to,
                },
                table_format: match config.offline.table_format {
                    lockstep_config::TableFormat::Plain => crate::offline::TableFormat::Plain,
                    lockstep_config::TableFormat::Delta => crate::offline::TableFormat::Delta,
                },
                audit: args.audit.clone(),
                erasures: args.erasures.clone(),
                kms_key_id: group.kms_key.clone(),
            },
            &runtime,
        )
        .await
        .with_context(|| format!("backfilling group `{}`", group.name))?;
    }
    // On embedded defaults the repository serves at once: the backfilled groups'
    // latest rows go to the online store (never over a newer row). A remote store is
    // loaded by `lockstep materialize`, when its owner says so.
    let online = online_of(&config)?;
    match online {
        crate::stream::OnlineStoreArg::Embedded(_) if !args.no_materialize => {
            if let Err(e) = materialize(
                &config,
                &groups,
                lockstep_materialize::Window {
                    from: args.from,
                    to: args.to,
                },
                &online,
                config.cache.as_ref(),
            )
            .await
            {
                println!(
                    "the online store was not loaded: {e:#}\nrun `lockstep materialize` once it \
                     is free; the backfill itself is committed"
                );
            }
        }
        _ => println!(
            "the online store was not loaded: run `lockstep materialize` to load the latest rows"
        ),
    }
    Ok(())
}

/// `lockstep plan` / `lockstep apply`.
#[derive(clap::Args)]
pub struct PlanArgs {
    /// The groups to look at (default: every group).
    pub groups: Vec<String>,
    /// The AWS endpoint the groups' Kinesis streams and Glue tables are looked up at
    /// (default: AWS's, or AWS_ENDPOINT_URL).
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// Look nothing up in AWS (the groups' Kinesis streams and Glue tables are not
    /// checked).
    #[arg(long)]
    pub local: bool,
    #[command(flatten)]
    pub runtime: crate::plugin::RuntimeArgs,
}

/// What looking a thing up in AWS found.
enum Lookup<T> {
    /// Not looked up (`--local`).
    Skipped,
    /// It exists.
    Found(T),
    /// It does not.
    Missing,
    /// The lookup failed (no credentials, no network): why.
    Unknown(String),
}

impl<T> Lookup<T> {
    /// The outcome of a lookup given 5 s.
    async fn within_5s<E: std::error::Error + 'static>(
        lookup: impl std::future::Future<Output = Result<Option<T>, E>>,
    ) -> Self {
        match tokio::time::timeout(std::time::Duration::from_secs(5), lookup).await {
            Ok(Ok(Some(found))) => Lookup::Found(found),
            Ok(Ok(None)) => Lookup::Missing,
            Ok(Err(e)) => Lookup::Unknown(lockstep_core::ErrorChain(&e).to_string()),
            Err(_) => Lookup::Unknown("no answer within 5 s".into()),
        }
    }
}

/// What `plan` found in AWS: each distinct Kinesis stream the groups read, and each
/// group's Glue table (by group name) when `[offline]` names a Glue database.
struct Lookups {
    streams: std::collections::BTreeMap<String, Lookup<lockstep_kinesis::StreamSummary>>,
    tables: std::collections::BTreeMap<String, Lookup<lockstep_catalog::TableSummary>>,
}

/// Looks up the groups' streams and Glue tables, each within 5 s (`--local`: none).
async fn look_up(config: &Config, planned: &[Planned<'_>], args: &PlanArgs) -> Lookups {
    let mut names: Vec<&str> = planned
        .iter()
        .filter_map(|p| p.group.stream.as_ref().map(|s| s.kinesis.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut found = Lookups {
        streams: std::collections::BTreeMap::new(),
        tables: std::collections::BTreeMap::new(),
    };
    let database = config.offline.glue_database.as_deref();
    if args.local {
        for name in names {
            found.streams.insert(name.to_owned(), Lookup::Skipped);
        }
        if database.is_some() {
            for p in planned {
                found.tables.insert(p.group.name.clone(), Lookup::Skipped);
            }
        }
        return found;
    }
    if !names.is_empty() {
        let kinesis = lockstep_kinesis::Kinesis::connect(&lockstep_kinesis::KinesisOptions {
            endpoint: args.endpoint_url.clone(),
            ..lockstep_kinesis::KinesisOptions::default()
        })
        .await;
        for name in names {
            let lookup = Lookup::within_5s(kinesis.describe(name)).await;
            found.streams.insert(name.to_owned(), lookup);
        }
    }
    if let Some(database) = database {
        let aws = lockstep_aws::AwsOptions {
            endpoint: args.endpoint_url.clone(),
            ..lockstep_aws::AwsOptions::default()
        };
        let glue = lockstep_catalog::GlueCatalog::connect(database, &aws).await;
        for p in planned {
            let lookup = Lookup::within_5s(glue.table(&p.group.name)).await;
            found.tables.insert(p.group.name.clone(), lookup);
        }
    }
    found
}

/// What applying the file would do to one group version.
enum Change {
    /// Not registered yet: apply registers it for this build.
    Register,
    /// Registered for this very build.
    Unchanged {
        /// When it was registered (UTC µs).
        registered_at: i64,
    },
    /// Registered for another build: refused.
    Refused {
        /// The build it is bound to.
        registered: String,
    },
}

/// One line of a plan.
struct Planned<'a> {
    group: &'a GroupConfig,
    component: Component,
    manifest: lockstep_abi::Manifest,
    change: Change,
}

/// Builds every asked group's plugin and compares it with the offline store's
/// registry.
async fn plan<'a>(
    config: &'a Config,
    names: &[String],
    runtime: &Runtime,
) -> Result<Vec<Planned<'a>>> {
    let groups = config.groups_named(names).map_err(anyhow::Error::msg)?;
    if groups.is_empty() {
        bail!(
            "{} has no [[group]]: add one (see `lockstep init`)",
            config.path.display()
        );
    }
    let mut out = Vec::with_capacity(groups.len());
    for group in groups {
        let component = component(config, group)?;
        let manifest = check_manifest(config, group, &component, runtime)?;
        let store = crate::offline::open_encrypted(
            &config.offline.store,
            &lockstep_offline::S3Options::default(),
            group.kms_key.as_deref(),
        )?;
        let change = match store.version(&group.name, &group.version).await {
            Ok(entry) if entry.plugin_hash == component.sha256 => Change::Unchanged {
                registered_at: entry.registered_at,
            },
            Ok(entry) => Change::Refused {
                registered: entry.plugin_hash,
            },
            Err(lockstep_offline::OfflineError::UnknownVersion { .. }) => Change::Register,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("reading {}@{} in the registry", group.name, group.version)
                });
            }
        };
        out.push(Planned {
            group,
            component,
            manifest,
            change,
        });
    }
    Ok(out)
}

/// Prints a plan, Terraform-style; says whether anything is refused.
fn print_plan(config: &Config, planned: &[Planned<'_>], found: &Lookups) -> bool {
    let count = |f: fn(&Change) -> bool| planned.iter().filter(|p| f(&p.change)).count();
    let register = count(|c| matches!(c, Change::Register));
    let unchanged = count(|c| matches!(c, Change::Unchanged { .. }));
    let refused = count(|c| matches!(c, Change::Refused { .. }));
    println!(
        "{}: {register} to register, {unchanged} unchanged, {refused} refused",
        config.path.display()
    );
    for p in planned {
        let id = format!("{}@{}", p.group.name, p.group.version);
        let hash = &p.component.sha256[..12];
        match &p.change {
            Change::Register => println!("  + {id:<32} plugin {hash}  (new version)"),
            Change::Unchanged { registered_at } => println!(
                "  = {id:<32} plugin {hash}  (registered {})",
                lockstep_core::rows::timestamp_text(*registered_at)
            ),
            Change::Refused { registered } => println!(
                "  ! {id:<32} plugin {hash}  refused: {id} is bound to plugin {}; a plugin \
                 whose rows change needs a new version: bump it in the plugin's manifest \
                 and in {}",
                &registered[..registered.len().min(12)],
                config.path.display()
            ),
        }
        if let Some(stream) = &p.group.stream {
            let found = match found.streams.get(&stream.kinesis) {
                Some(Lookup::Found(s)) => {
                    format!(" (exists: {}, {} open shards)", s.status, s.open_shards)
                }
                Some(Lookup::Missing) => " (not found: create it before `lockstep stream`, \
                     e.g. `lockstep stream put --create-shards N`)"
                    .to_owned(),
                Some(Lookup::Unknown(why)) => format!(" (not checked: {why})"),
                Some(Lookup::Skipped) | None => String::new(),
            };
            match &stream.route {
                Some(route) => println!(
                    "      stream: Kinesis stream {}{found}, the records whose `{}` is {:?}",
                    stream.kinesis, route.field, route.equals
                ),
                None => println!("      stream: Kinesis stream {}{found}", stream.kinesis),
            }
        }
        if let Some(db) = &config.offline.glue_database {
            let table = p.group.name.to_ascii_lowercase();
            let state = match found.tables.get(&p.group.name) {
                Some(Lookup::Found(t)) => format!(
                    " (exists: latest version {}{})",
                    t.latest_version.as_deref().unwrap_or("unknown"),
                    t.location
                        .as_deref()
                        .map(|l| format!(", data at {l}"))
                        .unwrap_or_default()
                ),
                Some(Lookup::Missing) => {
                    " (not found: the group's first `lockstep backfill` creates it)".to_owned()
                }
                Some(Lookup::Unknown(why)) => format!(" (not checked: {why})"),
                Some(Lookup::Skipped) | None => String::new(),
            };
            println!("      catalog: Glue table {db}.{table}{state}");
        }
    }
    refused > 0
}

/// `lockstep plan`: what `apply` would do; exit 1 when it would refuse something.
pub async fn plan_command(args: PlanArgs, config_flag: Option<&Path>) -> Result<()> {
    let config = required(config_flag)?;
    let runtime = args.runtime.runtime()?;
    let planned = plan(&config, &args.groups, &runtime).await?;
    let found = look_up(&config, &planned, &args).await;
    if print_plan(&config, &planned, &found) {
        bail!("the plan refuses a changed plugin for a registered version (see above)");
    }
    Ok(())
}

/// `lockstep apply`: builds, plans, and registers every new group version for its
/// build; nothing is registered when anything is refused. Running it again changes
/// nothing.
pub async fn apply_command(args: PlanArgs, config_flag: Option<&Path>) -> Result<()> {
    let config = required(config_flag)?;
    let runtime = args.runtime.runtime()?;
    let planned = plan(&config, &args.groups, &runtime).await?;
    let found = look_up(&config, &planned, &args).await;
    if print_plan(&config, &planned, &found) {
        bail!("nothing applied: the plan refuses a changed plugin for a registered version");
    }
    let mut registered = 0;
    for p in &planned {
        if !matches!(p.change, Change::Register) {
            continue;
        }
        let store = crate::offline::open_encrypted(
            &config.offline.store,
            &lockstep_offline::S3Options::default(),
            p.group.kms_key.as_deref(),
        )?;
        store
            .register(
                &p.manifest,
                &p.component.sha256,
                lockstep_core::now_micros(),
            )
            .await
            .with_context(|| format!("registering {}@{}", p.group.name, p.group.version))?;
        registered += 1;
    }
    println!("applied: {registered} registered");
    Ok(())
}

/// `lockstep materialize`.
#[derive(clap::Args)]
pub struct MaterializeArgs {
    /// The groups to load (default: every group).
    pub groups: Vec<String>,
    /// The online store to load (default: the repository's `[online]`):
    /// embedded:DIR, sagemaker or sagemaker:URL.
    #[arg(long, value_parser = crate::stream::parse_online_store)]
    pub online_store: Option<crate::stream::OnlineStoreArg>,
    /// Load only rows at or after this instant (RFC 3339).
    #[arg(long, value_parser = crate::stream::parse_instant)]
    pub from: Option<i64>,
    /// Load only rows before this instant (RFC 3339).
    #[arg(long, value_parser = crate::stream::parse_instant)]
    pub to: Option<i64>,
    /// Leave the repository's `[cache]` as it is. Its entries of the loaded entities
    /// may then be older than the store's until they expire or are replaced.
    #[arg(long)]
    pub no_cache: bool,
}

/// Loads each group's latest rows from the offline store into the online store.
pub async fn materialize_command(args: MaterializeArgs, config_flag: Option<&Path>) -> Result<()> {
    let config = required(config_flag)?;
    let groups = config
        .groups_named(&args.groups)
        .map_err(anyhow::Error::msg)?;
    if groups.is_empty() {
        bail!("{} has no [[group]] to materialize", config.path.display());
    }
    if let (Some(from), Some(to)) = (args.from, args.to)
        && from >= to
    {
        bail!("--from must be before --to: the window [from, to) would be empty");
    }
    let window = lockstep_materialize::Window {
        from: args.from,
        to: args.to,
    };
    let online_arg = match args.online_store {
        Some(store) => store,
        None => online_of(&config)?,
    };
    if args.no_cache && config.cache.is_some() {
        println!(
            "the cache is left as it is (--no-cache): its entries of the loaded entities may \
             be older than the store's"
        );
    }
    let cache = if args.no_cache {
        None
    } else {
        config.cache.as_ref()
    };
    materialize(&config, &groups, window, &online_arg, cache).await
}

/// The online store `[online]` names.
fn online_of(config: &Config) -> Result<crate::stream::OnlineStoreArg> {
    crate::stream::parse_online_store(&config.online.to_arg())
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("[online] in {}", config.path.display()))
}

/// Loads each of `groups`' latest offline rows in `window` into `online_arg`, and
/// through to `cache` when given.
async fn materialize(
    config: &Config,
    groups: &[&GroupConfig],
    window: lockstep_materialize::Window,
    online_arg: &crate::stream::OnlineStoreArg,
    cache: Option<&lockstep_config::CacheConfig>,
) -> Result<()> {
    let offline = crate::offline::open(
        &config.offline.store,
        &lockstep_offline::S3Options::default(),
    )?;
    // A SageMaker store learns each group's schema from the rows it is given.
    let online = crate::stream::open_store(online_arg, None).await?;
    let cache = match cache {
        Some(cache) => Some(
            lockstep_cache::RedisCache::connect(
                &cache.url,
                cache.ttl,
                std::time::Duration::from_secs(2),
            )
            .await
            .with_context(|| {
                format!(
                    "connecting to the cache {} ([cache] in {}; --no-cache leaves it)",
                    crate::audit::redact_url(&cache.url),
                    config.path.display()
                )
            })?,
        ),
        None => None,
    };
    for group in groups {
        let bar = files_bar(&format!("{}@{}", group.name, group.version));
        let started = std::time::Instant::now();
        let report = lockstep_materialize::materialize_with_cache(
            &offline,
            online.as_ref(),
            cache.as_ref(),
            &group.name,
            &group.version,
            window,
            lockstep_core::now_micros(),
            |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            },
        )
        .await
        .with_context(|| {
            format!(
                "materializing {}@{} (what was loaded stays; run it again to go on)",
                group.name, group.version
            )
        })?;
        bar.finish_and_clear();
        let cached = if cache.is_some() {
            format!(
                "; cache: {} entries written, {} newer kept, {} removed",
                report.cached, report.cache_stale, report.uncached
            )
        } else {
            String::new()
        };
        println!(
            "materialized {}: {} rows from {} hour files in {:.2}s: {} records written, \
             {} left out (older than another row of their entity, loaded or stored), {} \
             deletion markers ({} removed a record){cached}",
            report.group,
            report.rows,
            report.files,
            started.elapsed().as_secs_f64(),
            report.written,
            report.stale,
            report.markers,
            report.deleted
        );
    }
    Ok(())
}

/// A bar of hour files done, on a terminal; hidden elsewhere (logs get the summary).
fn files_bar(label: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} hour files")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(label.to_owned());
    bar
}
