//! `lockstep stream run`: the stream host as a service.

use anyhow::{Context, Result, bail};
use lockstep_kinesis::KinesisOptions;
use lockstep_online::{EmbeddedStore, GroupRef, OnlineStore};
use lockstep_runtime::Runtime;
use lockstep_service::{GroupLane, ServiceConfig, StreamService};
use lockstep_stream::StreamConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// Where the online store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnlineStoreArg {
    /// The embedded store in this directory.
    Embedded(PathBuf),
    /// The SageMaker Feature Store runtime API (an endpoint, or AWS's).
    SageMaker(Option<String>),
}

/// Parses `embedded:DIR`, `sagemaker` or `sagemaker:URL`.
pub fn parse_online_store(text: &str) -> Result<OnlineStoreArg, String> {
    if let Some(dir) = text.strip_prefix("embedded:") {
        if dir.is_empty() {
            return Err("`embedded:` needs a directory, e.g. embedded:./online".into());
        }
        return Ok(OnlineStoreArg::Embedded(PathBuf::from(dir)));
    }
    if text == "sagemaker" {
        return Ok(OnlineStoreArg::SageMaker(None));
    }
    if let Some(url) = text.strip_prefix("sagemaker:") {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("`{url}` is not an http(s) URL"));
        }
        return Ok(OnlineStoreArg::SageMaker(Some(url.to_owned())));
    }
    Err(format!(
        "`{text}` is not an online store: use embedded:DIR, sagemaker or sagemaker:URL"
    ))
}

/// What `stream run` takes: one plugin, every flag given.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The plugin component (.wasm).
    #[arg(long)]
    pub plugin: PathBuf,
    /// The Kinesis stream.
    #[arg(long)]
    pub stream: String,
    /// embedded:DIR, sagemaker (AWS) or sagemaker:URL (default in a feature
    /// repository: its `[online]`).
    #[arg(long, value_parser = parse_online_store)]
    pub online_store: Option<OnlineStoreArg>,
    /// A Redis cache to write through after the online store (redis://host:port;
    /// default in a feature repository: its `[cache]`).
    #[arg(long)]
    pub cache: Option<String>,
    /// Expiry of cache entries (none: they stay until replaced).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub cache_ttl: Option<Duration>,
    /// Checkpoints and logs (rows.jsonl, late.jsonl, dead-letters.jsonl). Default:
    /// `lockstep-state`; in a feature repository `<[stream] state>/<stream>.<group>`
    /// (beside, never inside, the directory `lockstep stream` keeps for the stream).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// How late an event may arrive and still be applied in order (default: 5s; in a
    /// feature repository its `[stream] lateness`).
    #[arg(long, value_parser = crate::skew::parse_lateness)]
    pub allowed_lateness: Option<i64>,
    /// Start entities from a backfill's final states (`batch run --state-out`).
    #[arg(long)]
    pub start_state: Option<PathBuf>,
    /// The offline store the group is backfilled into: the erasure ledger beside it is
    /// honoured (an erased entity's events at or before its erasure are dropped, also
    /// in a replay, and its state goes while the service runs). Default in a feature
    /// repository: its `[offline] store`.
    #[arg(long)]
    pub offline_store: Option<String>,
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// What `stream run` takes from a feature repository's `lockstep.toml` when its flags
/// leave them out (outside a repository: today's defaults, and `--online-store` is
/// needed).
fn run_defaults(
    args: &mut RunArgs,
    config: Option<&lockstep_config::Config>,
    group: &str,
) -> Result<OnlineStoreArg> {
    let Some(config) = config else {
        args.state
            .get_or_insert_with(|| PathBuf::from("lockstep-state"));
        args.allowed_lateness.get_or_insert(5_000_000);
        return args.online_store.take().context(
            "--online-store is needed outside a feature repository (embedded:DIR, sagemaker or \
             sagemaker:URL)",
        );
    };
    if args.cache.is_none()
        && let Some(cache) = &config.cache
    {
        args.cache = Some(cache.url.clone());
        args.cache_ttl = args.cache_ttl.or(cache.ttl);
    }
    args.state
        .get_or_insert_with(|| config.stream.state.join(format!("{}.{group}", args.stream)));
    if args.allowed_lateness.is_none() {
        args.allowed_lateness = Some(
            i64::try_from(config.stream.lateness.as_micros())
                .context("[stream] lateness is too large")?,
        );
    }
    args.offline_store
        .get_or_insert_with(|| config.offline.store.clone());
    match args.online_store.take() {
        Some(store) => Ok(store),
        None => parse_online_store(&config.online.to_arg())
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("[online] in {}", config.path.display())),
    }
}

/// What `lockstep stream [GROUP…]` takes: the feature repository's groups on one
/// Kinesis stream, with the settings of `lockstep.toml`; flags override them.
#[derive(clap::Args)]
pub struct RepoArgs {
    /// The groups to run (default: every group whose stream source is the stream).
    pub groups: Vec<String>,
    /// The Kinesis stream (needed when the groups read several).
    #[arg(long)]
    pub kinesis: Option<String>,
    /// The online store (default: `[online]`).
    #[arg(long, value_parser = parse_online_store)]
    pub online_store: Option<OnlineStoreArg>,
    /// Checkpoints and logs (default: `[stream] state`, then the stream's name).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// How late an event may arrive and still be applied in order (default:
    /// `[stream] lateness`).
    #[arg(long, value_parser = crate::skew::parse_lateness)]
    pub allowed_lateness: Option<i64>,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub runtime: crate::plugin::RuntimeArgs,
}

/// How the stream service runs, whatever its groups: `stream run` and
/// `lockstep stream` share these.
#[derive(clap::Args, Clone)]
pub struct ServiceArgs {
    /// Kinesis endpoint (e.g. a local server); region and credentials come from
    /// the AWS environment.
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// At most this many SageMaker PutRecord calls per second (the account's
    /// quota); unlimited when unset.
    #[arg(long)]
    pub sagemaker_rate: Option<f64>,
    /// Dead-letter events more than this ahead of the clock: one record a year ahead
    /// must not move its shard's watermark past every real event.
    #[arg(long, default_value = "1h", value_parser = crate::skew::parse_lateness)]
    pub max_future: i64,
    /// Start from the stream's beginning although the state directory holds logs of
    /// an earlier run and no checkpoint (they are kept, renamed `*.before-fresh`).
    #[arg(long)]
    pub fresh: bool,
    /// Skip events before this instant (RFC 3339): the backfill covered them.
    #[arg(long, value_parser = parse_instant)]
    pub start_at: Option<i64>,
    /// Serve /healthz and /metrics here.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Records per shard per read.
    #[arg(long, default_value_t = 10_000)]
    pub batch_size: i32,
    /// Pause between reads once caught up.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub idle_poll: Duration,
    /// The least time between two reads of a shard found at its tip (Kinesis allows
    /// five GetRecords per second per shard); a shard behind is read again at once.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub tip_read_interval: Duration,
    /// Stop once every shard is caught up (a finite replay).
    #[arg(long)]
    pub stop_when_idle: bool,
    /// When stopping, apply the events still held for reordering. Only when the
    /// stream has truly ended: a later event would be applied out of order.
    #[arg(long)]
    pub drain_on_stop: bool,
    /// For a plugin with timers: once every shard is caught up at its tip with nothing
    /// new, move the watermark with the clock minus the allowed lateness, so idle
    /// entities are woken online (a card idle since 09:00 shows `txn_count_1h = 0`
    /// from 10:00). `off` for a replay of history: once caught up, events older than
    /// the clock minus the lateness would be late.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub idle_watermark: String,
    /// Where the service's start and stop are recorded.
    #[command(flatten)]
    pub audit: crate::audit::AuditArgs,
    #[command(flatten)]
    pub erasures: crate::erase::LedgerArgs,
    /// How often a running service looks for new erasures.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub erasure_poll: Duration,
    /// How often the checkpoints committed since the last audit entry are recorded
    /// (one `stream.checkpoint` entry naming their generations and the last one's
    /// shard positions; the rest at stop).
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub audit_checkpoints_every: Duration,
}

/// Checkpoints committed and not yet in the audit log.
#[derive(Default)]
struct UnrecordedCheckpoints {
    first: Option<u64>,
    last: Option<lockstep_service::Committed>,
    count: u64,
    entities_changed: u64,
}

impl UnrecordedCheckpoints {
    fn add(&mut self, c: &lockstep_service::Committed) {
        self.first.get_or_insert(c.generation);
        self.count += 1;
        self.entities_changed += c.entities_changed as u64;
        self.last = Some(c.clone());
    }

    /// Puts back `earlier`, taken before everything added since, whose recording
    /// failed.
    fn put_back(&mut self, earlier: UnrecordedCheckpoints) {
        self.first = earlier.first.or(self.first);
        self.count += earlier.count;
        self.entities_changed += earlier.entities_changed;
        if self.last.is_none() {
            self.last = earlier.last;
        }
    }

    fn entry(&self, about: &lockstep_audit::Entry) -> Option<lockstep_audit::Entry> {
        let last = self.last.as_ref()?;
        Some(about.clone().with_details(serde_json::json!({
            "first_generation": self.first,
            "last_generation": last.generation,
            "checkpoints": self.count,
            "entities_changed": self.entities_changed,
            "positions": last.positions,
            "ended_shards": last.ended,
            "log_lengths": {"rows": last.logs.rows, "late": last.logs.late, "dead": last.logs.dead},
        })))
    }
}

/// Records the service's checkpoint generations in the audit log: the service's
/// writer hands each commit over (never waiting on the log), and a task records what
/// came every period as one entry: one log file a period, not one a commit (rounds
/// commit up to several times a second). An entry that could not be recorded is tried
/// again with the next.
struct CheckpointAudit {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl CheckpointAudit {
    fn start(
        log: Arc<lockstep_audit::AuditLog>,
        about: lockstep_audit::Entry,
        every: Duration,
    ) -> (Self, lockstep_service::CommitHook) {
        let unrecorded = Arc::new(std::sync::Mutex::new(UnrecordedCheckpoints::default()));
        let lock = |u: &std::sync::Mutex<UnrecordedCheckpoints>| {
            let mut guard = match u.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            std::mem::take(&mut *guard)
        };
        let hook = {
            let unrecorded = unrecorded.clone();
            lockstep_service::CommitHook(Arc::new(move |c: &lockstep_service::Committed| {
                match unrecorded.lock() {
                    Ok(mut u) => u.add(c),
                    Err(poisoned) => poisoned.into_inner().add(c),
                }
            }))
        };
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            tick.tick().await;
            loop {
                let last = tokio::select! {
                    _ = tick.tick() => false,
                    _ = stopped.changed() => true,
                };
                let taken = lock(&unrecorded);
                let Some(entry) = taken.entry(&about) else {
                    if last {
                        return Ok(());
                    }
                    continue;
                };
                match log.record(vec![entry]).await {
                    Ok(_) if last => return Ok(()),
                    Ok(_) => {}
                    Err(e) if last => {
                        return Err(e).with_context(|| {
                            format!(
                                "the stream host's checkpoints are committed, but recording \
                                 generations {:?}..={:?} in the audit log {} failed",
                                taken.first,
                                taken.last.as_ref().map(|c| c.generation),
                                log.location()
                            )
                        });
                    }
                    Err(e) => {
                        tracing::warn!(
                            error = %lockstep_core::ErrorChain(&e),
                            log = log.location(),
                            "checkpoint generations not recorded in the audit log yet; trying \
                             again with the next"
                        );
                        match unrecorded.lock() {
                            Ok(mut u) => u.put_back(taken),
                            Err(poisoned) => poisoned.into_inner().put_back(taken),
                        }
                    }
                }
            }
        });
        (CheckpointAudit { stop, task }, hook)
    }

    /// Records what is left, then stops.
    async fn finish(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.task
            .await
            .context("the audit log's checkpoint recorder stopped")?
    }
}

/// Opens the online store `arg` names; `sagemaker_rate` caps PutRecord calls per
/// second (the account's quota) for the SageMaker backend.
pub async fn open_store(
    arg: &OnlineStoreArg,
    sagemaker_rate: Option<f64>,
) -> Result<Arc<dyn OnlineStore>> {
    match arg {
        OnlineStoreArg::Embedded(dir) => {
            Ok(Arc::new(EmbeddedStore::open(dir).with_context(|| {
                format!("opening the embedded online store in {}", dir.display())
            })?))
        }
        OnlineStoreArg::SageMaker(endpoint) => Ok(Arc::new(
            lockstep_featurestore::SageMakerStore::with_options(
                lockstep_featurestore::SageMakerOptions {
                    aws: lockstep_aws::AwsOptions {
                        endpoint: endpoint.clone(),
                        ..Default::default()
                    },
                    max_puts_per_second: sagemaker_rate,
                    ..Default::default()
                },
            )
            .await,
        )),
    }
}

/// Runs the service of one plugin (`stream run`) until stopped.
pub async fn run(
    mut args: RunArgs,
    runtime: &Runtime,
    config_flag: Option<&std::path::Path>,
) -> Result<()> {
    let plugin = runtime
        .load_file(&args.plugin)
        .with_context(|| format!("loading {}", args.plugin.display()))?;
    let group = GroupRef::of(plugin.manifest(), plugin.hash());
    let config = crate::repo::optional(config_flag)?;
    let online_store = run_defaults(&mut args, config.as_ref(), &group.name)?;
    let start_states = match &args.start_state {
        Some(path) => {
            let (info, states) = lockstep_offline::snapshot::read_states(path)
                .with_context(|| format!("reading the start state {}", path.display()))?;
            if info.plugin_hash != plugin.hash() {
                bail!(
                    "{} was written by plugin {} for {}@{}; this is plugin {}: its states mean \
                     nothing to another plugin",
                    path.display(),
                    info.plugin_hash,
                    info.group,
                    info.version,
                    plugin.hash()
                );
            }
            Some(states)
        }
        None => None,
    };
    let lane = GroupLane {
        start_states,
        ..GroupLane::new(plugin, group)
    };
    run_service(
        ServicePlan {
            lanes: vec![lane],
            shared: false,
            stream: args.stream,
            state: args
                .state
                .unwrap_or_else(|| PathBuf::from("lockstep-state")),
            online_store,
            cache: args.cache.map(|url| (url, args.cache_ttl)),
            allowed_lateness: args.allowed_lateness.unwrap_or(5_000_000),
            offline_store: args.offline_store,
            start_state: args.start_state,
        },
        &args.service,
    )
    .await
}

/// What a stream service runs: its groups and where everything is.
struct ServicePlan {
    lanes: Vec<GroupLane>,
    /// Several groups sharing the stream (each with its own log directory).
    shared: bool,
    stream: String,
    state: PathBuf,
    online_store: OnlineStoreArg,
    cache: Option<(String, Option<Duration>)>,
    allowed_lateness: i64,
    offline_store: Option<String>,
    start_state: Option<PathBuf>,
}

/// `lockstep stream [GROUP…]`: every group of the repository whose stream source is
/// the same Kinesis stream, in one service.
pub async fn run_repo(args: RepoArgs, config_flag: Option<&std::path::Path>) -> Result<()> {
    let config = crate::repo::required(config_flag)?;
    let asked = config
        .groups_named(&args.groups)
        .map_err(anyhow::Error::msg)?;
    if !args.groups.is_empty()
        && let Some(g) = asked.iter().find(|g| g.stream.is_none())
    {
        bail!(
            "group `{}` has no stream source in {}: add `stream = {{ kinesis = \"…\" }}` to it",
            g.name,
            config.path.display()
        );
    }
    let with_stream: Vec<&lockstep_config::GroupConfig> =
        asked.into_iter().filter(|g| g.stream.is_some()).collect();
    let mut streams: Vec<&str> = with_stream
        .iter()
        .filter_map(|g| g.stream.as_ref().map(|s| s.kinesis.as_str()))
        .collect();
    streams.sort_unstable();
    streams.dedup();
    let stream = match (&args.kinesis, streams.as_slice()) {
        (Some(name), _) => name.clone(),
        (None, []) => bail!(
            "no group in {} has a stream source: add `stream = {{ kinesis = \"…\" }}` to a \
             [[group]]",
            config.path.display()
        ),
        (None, [one]) => (*one).to_owned(),
        (None, several) => bail!(
            "the groups read {} Kinesis streams ({}): one service reads one stream; name it \
             with --kinesis, and run one `lockstep stream` per stream",
            several.len(),
            several.join(", ")
        ),
    };
    let groups: Vec<&lockstep_config::GroupConfig> = with_stream
        .into_iter()
        .filter(|g| g.stream.as_ref().is_some_and(|s| s.kinesis == stream))
        .collect();
    if groups.is_empty() {
        bail!(
            "no group in {} reads the Kinesis stream `{stream}`",
            config.path.display()
        );
    }
    let runtime = args.runtime.runtime()?;
    let mut lanes = Vec::with_capacity(groups.len());
    for group in &groups {
        let component = crate::repo::component(&config, group)?;
        crate::repo::check_manifest(&config, group, &component, &runtime)?;
        let plugin = runtime
            .load_file(&component.path)
            .with_context(|| format!("loading {}", component.path.display()))?;
        let group_ref = GroupRef::of(plugin.manifest(), plugin.hash());
        let route = group
            .stream
            .as_ref()
            .and_then(|s| s.route.as_ref())
            .map(|r| lockstep_stream::Route {
                field: r.field.clone(),
                equals: r.equals.clone(),
            });
        println!(
            "group {}@{} (plugin {}): {}",
            group.name,
            group.version,
            &component.sha256[..12],
            match &route {
                Some(r) => format!("the records of `{stream}` whose {r}"),
                None => format!("every record of `{stream}`"),
            }
        );
        lanes.push(GroupLane {
            route,
            ..GroupLane::new(plugin, group_ref)
        });
    }
    let online_store = match args.online_store {
        Some(store) => store,
        None => parse_online_store(&config.online.to_arg()).map_err(anyhow::Error::msg)?,
    };
    let allowed_lateness = match args.allowed_lateness {
        Some(l) => l,
        None => i64::try_from(config.stream.lateness.as_micros())
            .context("[stream] lateness is too large")?,
    };
    run_service(
        ServicePlan {
            lanes,
            shared: true,
            state: args
                .state
                .unwrap_or_else(|| config.stream.state.join(&stream)),
            stream,
            online_store,
            cache: config.cache.as_ref().map(|c| (c.url.clone(), c.ttl)),
            allowed_lateness,
            offline_store: Some(config.offline.store.clone()),
            start_state: None,
        },
        &args.service,
    )
    .await
}

/// Runs a stream service until stopped, recording its start, checkpoints and stop
/// in the audit log.
async fn run_service(plan: ServicePlan, args: &ServiceArgs) -> Result<()> {
    let ids: Vec<String> = plan.lanes.iter().map(|l| l.group.id()).collect();
    let hashes: Vec<String> = plan
        .lanes
        .iter()
        .map(|l| l.plugin.hash().to_owned())
        .collect();
    let store = open_store(&plan.online_store, args.sagemaker_rate).await?;
    let aws = lockstep_aws::AwsOptions {
        endpoint: args.endpoint_url.clone(),
        ..Default::default()
    };
    let audit = args
        .audit
        .open(plan.offline_store.as_deref(), &aws)?
        .map(Arc::new);
    // Entries name the group when there is one; a shared service's name its groups
    // in their details.
    let about = |action: &str| {
        let entry = lockstep_audit::Entry::new(action);
        match plan.lanes.as_slice() {
            [one] => {
                let m = one.plugin.manifest();
                entry.on(&m.name, Some(m.version.clone()))
            }
            _ => entry,
        }
    };
    let plugin_hash = match hashes.as_slice() {
        [one] => serde_json::json!(one),
        _ => serde_json::json!(
            ids.iter()
                .zip(&hashes)
                .collect::<std::collections::BTreeMap<_, _>>()
        ),
    };
    crate::audit::record(
        audit.as_deref(),
        vec![about("stream.start").with_details(serde_json::json!({
            "plugin_hash": plugin_hash,
            "groups": ids,
            "stream": plan.stream,
            "state": plan.state.display().to_string(),
            "online_store": format!("{:?}", plan.online_store),
            "cache": plan.cache.is_some(),
            "start_state": plan.start_state.as_ref().map(|p| p.display().to_string()),
            "fresh": args.fresh,
        }))],
        "nothing has started",
    )
    .await?;
    let mut config = ServiceConfig::new(&plan.stream, plan.state.clone());
    config.kinesis = KinesisOptions {
        endpoint: args.endpoint_url.clone(),
        ..KinesisOptions::default()
    };
    config.stream_config = StreamConfig {
        allowed_lateness: plan.allowed_lateness,
        start_at: args.start_at,
        max_future: Some(args.max_future),
    };
    config.listen = args.listen;
    config.batch_size = args.batch_size;
    config.idle_poll = args.idle_poll;
    config.tip_read_interval = args.tip_read_interval;
    config.stop_when_idle = args.stop_when_idle;
    config.drain_on_stop = args.drain_on_stop;
    config.idle_watermark = args.idle_watermark == "on";
    config.start_fresh = args.fresh;
    config.cache = plan.cache.clone();
    config.erasures = args
        .erasures
        .open(plan.offline_store.as_deref(), &aws)?
        .map(|ledger| lockstep_service::ErasureWatch {
            ledger,
            every: args.erasure_poll,
        });
    if config.erasures.is_none() {
        tracing::warn!(
            "no erasure ledger (--offline-store or --erasures): erased entities are not \
             honoured by this service"
        );
    }
    tracing::info!(
        groups = %ids.join(", "),
        stream = %plan.stream,
        state = %plan.state.display(),
        "stream host starting"
    );
    let checkpoint_audit = audit.clone().map(|log| {
        let (audit, hook) = CheckpointAudit::start(
            log,
            about("stream.checkpoint"),
            args.audit_checkpoints_every,
        );
        config.on_commit = Some(hook);
        audit
    });
    let stop_entry = about("stream.stop");
    let service = if plan.shared {
        StreamService::with_groups(plan.lanes, store, config)?
    } else {
        let Some(lane) = plan.lanes.into_iter().next() else {
            bail!("no feature group to run");
        };
        let mut config = config;
        config.start_states = lane.start_states;
        StreamService::new(lane.plugin, store, lane.group, config)
    };
    let summary = service.run(Arc::new(AtomicBool::new(false))).await;
    if let Some(checkpoint_audit) = checkpoint_audit {
        checkpoint_audit.finish().await?;
    }
    let details = match &summary {
        Ok(summary) => serde_json::json!({
            "plugin_hash": plugin_hash,
            "groups": ids,
            "stream": plan.stream,
            "resumed": summary.resumed,
            "checkpoints": summary.commits,
            "generation": summary.generation,
            "records": summary.stats.records,
            "rows": summary.stats.rows,
            "dead_letters": summary.stats.dead,
            "unrouted": summary.unrouted,
        }),
        Err(e) => serde_json::json!({
            "plugin_hash": plugin_hash,
            "groups": ids,
            "stream": plan.stream,
            "error": lockstep_core::ErrorChain(e).to_string(),
        }),
    };
    crate::audit::record(
        audit.as_deref(),
        vec![stop_entry.with_details(details)],
        "the stream host stopped",
    )
    .await?;
    let summary = summary
        .map_err(|e| {
            let e = anyhow::Error::from(e);
            if crate::disk_full(&e) {
                // Nothing past the last checkpoint was committed: the same command
                // goes on from there once there is room.
                e.context(format!(
                    "the disk under the state directory {} is full; free space and run the \
                     same command again: it goes on from its last checkpoint and loses nothing",
                    plan.state.display()
                ))
            } else {
                e
            }
        })
        .with_context(|| format!("stream host for {} on {}", ids.join(", "), plan.stream))?;
    for group in &summary.groups {
        let s = &group.stats;
        tracing::info!(
            group = %group.group,
            records = s.records,
            applied = s.applied,
            rows = s.rows,
            duplicates = s.duplicates,
            late = s.late,
            dead = s.dead,
            plugin_failures = s.plugin_failures,
            erased = s.erased,
            commits = summary.commits,
            resumed = summary.resumed,
            "stream host stopped after its last checkpoint"
        );
        let who = if plan.shared {
            format!("{}: ", group.group)
        } else {
            String::from("stopped: ")
        };
        println!(
            "{who}{} records, {} events applied, {} rows, {} duplicates, {} late ({}), {} dead \
             letters ({}; {} of them events the plugin failed on), {} before the start, {} \
             checkpoints",
            s.records,
            s.applied,
            s.rows,
            s.duplicates,
            s.late,
            group.late_log.display(),
            s.dead,
            group.dead_log.display(),
            s.plugin_failures,
            s.before_start,
            summary.commits
        );
        if s.erased > 0 {
            println!(
                "erased: {} events of erased entities dropped (at or before their erasure)",
                s.erased
            );
        }
    }
    if let Some(log) = &summary.unrouted_log {
        println!(
            "unrouted: {} records no group takes ({})",
            summary.unrouted,
            log.display()
        );
    }
    Ok(())
}

/// Puts the lines of `events` to `stream` in file order, each keyed by its entity key
/// (the plugin manifest's, or the first of `key_fields` a record has: a stream shared
/// by groups with different keys), creating the stream with `create_shards` shards
/// first when asked. Lines that are not events are put too (keyed `unkeyed`): the
/// stream host must dead-letter them, and this is how to try it.
pub async fn put(
    plugin: Option<&std::path::Path>,
    key_fields: &[String],
    stream: &str,
    events: &std::path::Path,
    endpoint_url: Option<String>,
    create_shards: Option<i32>,
    runtime: &Runtime,
) -> Result<()> {
    let key_fields: Vec<String> = match plugin {
        Some(plugin) => vec![
            runtime
                .load_file(plugin)
                .with_context(|| format!("loading {}", plugin.display()))?
                .manifest()
                .entity_key
                .clone(),
        ],
        None if !key_fields.is_empty() => key_fields.to_vec(),
        None => bail!("name the plugin whose entity key partitions the records, or --key FIELD"),
    };
    let text =
        std::fs::read_to_string(events).with_context(|| format!("reading {}", events.display()))?;
    let records: Vec<(String, Vec<u8>)> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let key = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| {
                    key_fields.iter().find_map(|field| match v.get(field) {
                        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
                        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                        _ => None,
                    })
                })
                .unwrap_or_else(|| "unkeyed".to_owned());
            (key, line.as_bytes().to_vec())
        })
        .collect();
    async {
        let kinesis = lockstep_kinesis::Kinesis::connect(&KinesisOptions {
            endpoint: endpoint_url,
            ..KinesisOptions::default()
        })
        .await;
        if let Some(shards) = create_shards {
            kinesis
                .create_stream(stream, shards)
                .await
                .with_context(|| format!("creating stream {stream}"))?;
            kinesis
                .wait_active(stream)
                .await
                .with_context(|| format!("waiting for stream {stream}"))?;
        }
        kinesis
            .put_ordered(stream, &records)
            .await
            .with_context(|| format!("putting {} records to {stream}", records.len()))
    }
    .await?;
    println!("put {} records to {stream}", records.len());
    Ok(())
}

/// Logs to standard error: human text on a terminal, JSON lines otherwise or when
/// `LOCKSTEP_LOG_FORMAT=json`; the level from `RUST_LOG` (default `info`).
pub fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOCKSTEP_LOG_FORMAT").is_ok_and(|v| v == "json")
        || !std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_store_arguments_parse_or_say_why_not() {
        assert_eq!(
            parse_online_store("embedded:/tmp/x"),
            Ok(OnlineStoreArg::Embedded("/tmp/x".into()))
        );
        assert_eq!(
            parse_online_store("sagemaker"),
            Ok(OnlineStoreArg::SageMaker(None))
        );
        assert_eq!(
            parse_online_store("sagemaker:http://127.0.0.1:9"),
            Ok(OnlineStoreArg::SageMaker(Some("http://127.0.0.1:9".into())))
        );
        assert!(parse_online_store("embedded:").is_err());
        assert!(parse_online_store("sagemaker:ftp://x").is_err());
        assert!(
            parse_online_store("redis://x")
                .unwrap_err()
                .contains("embedded:DIR")
        );
    }
}

/// `lockstep stream [GROUP…]`, or one of its subcommands.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct StreamCommand {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub repo: Box<RepoArgs>,
}

/// `lockstep stream …`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Consume every shard of a stream through the plugin into the online store, with
    /// checkpoints (exactly-once across restarts), late and dead-letter logs, a row
    /// log, `/healthz` and `/metrics`. Stops cleanly on SIGTERM or Ctrl-C.
    Run {
        #[command(flatten)]
        args: Box<RunArgs>,
        #[command(flatten)]
        runtime: crate::plugin::RuntimeArgs,
    },
    /// Put events (JSON lines) to a stream in file order, keyed by the plugin's entity
    /// key: to feed the stream host in demos and tests.
    Put {
        /// The plugin whose entity key partitions the records.
        #[arg(long, required_unless_present = "key", conflicts_with = "key")]
        plugin: Option<PathBuf>,
        /// Instead of a plugin's: the field whose value partitions a record; repeat it
        /// for a stream shared by groups keyed differently (the first field a record
        /// has is its key).
        #[arg(long)]
        key: Vec<String>,
        /// The Kinesis stream.
        #[arg(long)]
        stream: String,
        /// The events, one JSON object per line.
        #[arg(long)]
        events: PathBuf,
        /// Kinesis endpoint (e.g. a local server).
        #[arg(long)]
        endpoint_url: Option<String>,
        /// Create the stream with this many shards first.
        #[arg(long)]
        create_shards: Option<i32>,
        #[command(flatten)]
        runtime: crate::plugin::RuntimeArgs,
    },
}

/// Runs `lockstep stream`: the repository's groups, or a subcommand.
pub async fn run_command(cmd: StreamCommand, config: Option<&std::path::Path>) -> Result<()> {
    let Some(cmd) = cmd.command else {
        init_logging();
        return run_repo(*cmd.repo, config).await;
    };
    match cmd {
        Command::Run { args, runtime } => {
            init_logging();
            run(*args, &runtime.runtime()?, config).await
        }
        Command::Put {
            plugin,
            key,
            stream,
            events,
            endpoint_url,
            create_shards,
            runtime,
        } => {
            put(
                plugin.as_deref(),
                &key,
                &stream,
                &events,
                endpoint_url,
                create_shards,
                &runtime.runtime()?,
            )
            .await
        }
    }
}

/// An RFC 3339 instant on the command line, as UTC µs.
pub fn parse_instant(text: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .map_err(|e| format!("`{text}` is not an RFC 3339 instant like 2024-01-31T12:00:00Z: {e}"))
}
