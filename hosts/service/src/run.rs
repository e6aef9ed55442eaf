//! The service loop; see the [crate] docs.

use crate::ServiceError;
use crate::checkpoint::{CheckpointStore, GroupBinding, LogLengths};
use crate::http::{self, Health};
use crate::logs::AppendLog;
use crate::metrics::Metrics;
use crate::source::{KinesisSource, Resume, ShardEvent, ShardRecord, Source};
use arrow_array::RecordBatch;
use lockstep_cache::{CacheEntry, RedisCache};
use lockstep_core::key::StateMap;
use lockstep_core::now_micros;
use lockstep_core::rows::{RowsText, row_json};
use lockstep_core::schema::row_schema;
use lockstep_kinesis::KinesisOptions;
use lockstep_online::{GroupRef, OnlineStore};
use lockstep_runtime::Plugin;
use lockstep_stream::{
    Record, Route, Router, ShardSpec, ShardedProcessor, StreamConfig, StreamStats,
};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// How a [`StreamService`] runs.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The Kinesis stream.
    pub stream: String,
    /// How to reach Kinesis.
    pub kinesis: KinesisOptions,
    /// Where the checkpoint store and the logs live.
    pub state_dir: PathBuf,
    /// Ordering settings (allowed lateness).
    pub stream_config: StreamConfig,
    /// Entity states to start from on a fresh state directory (a backfill's
    /// `--state-out`); ignored when a checkpoint exists.
    pub start_states: Option<StateMap>,
    /// GetRecords limit per shard and round.
    pub batch_size: i32,
    /// Pause between reads once every shard is caught up.
    pub idle_poll: Duration,
    /// The least time between two reads of a shard found at its tip (Kinesis allows
    /// five reads per second per shard); a shard behind is read again at once.
    pub tip_read_interval: Duration,
    /// While catching up, a round gathers reads until it holds this many records per
    /// group of a shared stream (a round coalesces an entity's events only within a
    /// group, so a round over all groups would coalesce less and commit more often
    /// than a service of one group)…
    pub round_records: usize,
    /// …or is this old; then its outputs are written and a checkpoint committed. A
    /// caught-up source ends the round at once.
    pub round_interval: Duration,
    /// Address for `/healthz` and `/metrics` (port 0: any free port).
    pub listen: Option<SocketAddr>,
    /// Stop (exit 0) once every shard is caught up: for finite replays and tests.
    pub stop_when_idle: bool,
    /// On stopping, apply the events still held in reorder buffers. Only right when
    /// the stream has truly ended: an event arriving later would be applied out of
    /// order.
    pub drain_on_stop: bool,
    /// For a plugin with timers: when every shard is caught up at its tip with nothing
    /// new, move the watermarks with the clock (minus the allowed lateness), so idle
    /// entities take their wake-ups online (Flink's idleness). Off for a replay of
    /// history: once caught up, every event older than the clock minus the lateness
    /// would be late.
    pub idle_watermark: bool,
    /// Stop on SIGTERM or SIGINT.
    pub handle_signals: bool,
    /// A Redis cache to write through after the durable store: URL and entry TTL.
    pub cache: Option<(String, Option<Duration>)>,
    /// Start from the stream's beginning even though logs of an earlier run exist
    /// without a checkpoint (they are renamed `*.before-fresh`, never deleted).
    pub start_fresh: bool,
    /// The erasure ledger to honour (read at start, polled while running); `None`:
    /// none (a service without an offline store beside it).
    pub erasures: Option<crate::ErasureWatch>,
    /// Told of every checkpoint once it is durable (the audit log's record of
    /// checkpoint generations); `None`: nobody.
    pub on_commit: Option<CommitHook>,
}

/// A checkpoint, once durable: what [`CommitHook`] is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Its generation: one more than the checkpoint before it, across restarts.
    pub generation: u64,
    /// The sequence number of the last record applied, per open shard.
    pub positions: BTreeMap<String, String>,
    /// Shards read to their end, so far.
    pub ended: usize,
    /// Entity states it wrote or removed.
    pub entities_changed: usize,
    /// The logs' lengths it committed.
    pub logs: LogLengths,
}

/// Called on the service's writer thread after each checkpoint commits: it must return
/// at once (hand the news on, never do I/O there).
#[derive(Clone)]
pub struct CommitHook(pub Arc<dyn Fn(&Committed) + Send + Sync>);

impl std::fmt::Debug for CommitHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitHook")
    }
}

/// Those of `files` that hold something: (path, bytes).
fn existing_logs(files: &[PathBuf]) -> Vec<(PathBuf, u64)> {
    files
        .iter()
        .filter_map(|p| {
            let len = std::fs::metadata(p).ok()?.len();
            (len > 0).then(|| (p.clone(), len))
        })
        .collect()
}

/// The service's logs, by file name: rows, late events, dead letters.
const ROWS_LOG: &str = "rows.jsonl";
const LATE_LOG: &str = "late.jsonl";
const DEAD_LOG: &str = "dead-letters.jsonl";
/// Records of a shared stream that no group's route takes.
const UNROUTED_LOG: &str = "unrouted.jsonl";

/// Renames each of `logs` to `<name>.before-fresh` (numbered if that exists).
fn set_logs_aside(logs: &[(PathBuf, u64)]) -> Result<(), ServiceError> {
    for (path, _) in logs {
        let mut target = path.with_extension("jsonl.before-fresh");
        let mut n = 1;
        while target.exists() {
            target = path.with_extension(format!("jsonl.before-fresh.{n}"));
            n += 1;
        }
        std::fs::rename(path, &target).map_err(|e| ServiceError::Log {
            path: path.clone(),
            message: format!("cannot set it aside as {}: {e}", target.display()),
        })?;
        tracing::warn!(log = %path.display(), kept_as = %target.display(), "starting fresh: old log set aside");
    }
    Ok(())
}

impl ServiceConfig {
    /// Defaults for reading `stream` with state in `state_dir`.
    pub fn new(stream: &str, state_dir: PathBuf) -> Self {
        ServiceConfig {
            stream: stream.to_owned(),
            kinesis: KinesisOptions::default(),
            state_dir,
            stream_config: StreamConfig::default(),
            start_states: None,
            batch_size: 10_000,
            idle_poll: Duration::from_millis(200),
            tip_read_interval: lockstep_kinesis::TIP_READ_INTERVAL,
            // While catching up, a commit costs about as much per entity changed as
            // per event: rounds of a second coalesce an entity's rows and states (25 %
            // more events/s than half-second rounds in `stream-throughput`). At the
            // tip a round ends at once, so this adds no latency there.
            round_records: 250_000,
            round_interval: Duration::from_secs(1),
            listen: None,
            stop_when_idle: false,
            drain_on_stop: false,
            idle_watermark: true,
            handle_signals: true,
            cache: None,
            start_fresh: false,
            erasures: None,
            on_commit: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Counters of this run.
    pub stats: StreamStats,
    /// Checkpoints committed by this run.
    pub commits: u64,
    /// The generation of the last checkpoint (this run's, or the one it went on
    /// from; 0: none ever).
    pub generation: u64,
    /// Seconds spent writing outputs and committing checkpoints.
    pub commit_seconds: f64,
    /// Where the commit time went.
    pub timings: Timings,
    /// Whether it went on from an earlier checkpoint.
    pub resumed: bool,
    /// The row log.
    pub rows_log: PathBuf,
    /// The late-event log.
    pub late_log: PathBuf,
    /// The dead-letter log.
    pub dead_log: PathBuf,
    /// The address `/metrics` was served on.
    pub listening: Option<SocketAddr>,
    /// Each group's counters and logs, in the order the groups were given (one entry
    /// for a service of one group; `stats` and the logs above are the first group's
    /// then, and the sum of the groups' counters otherwise).
    pub groups: Vec<GroupSummary>,
    /// Records of a shared stream that no group's route took
    /// ([`unrouted_log`](Self::unrouted_log)).
    pub unrouted: u64,
    /// Where they were written, with why (`None`: a service without routes).
    pub unrouted_log: Option<PathBuf>,
}

/// What a run did for one of its groups.
#[derive(Debug, Clone, Default)]
pub struct GroupSummary {
    /// `name@version`.
    pub group: String,
    /// Its counters (records: those routed to it).
    pub stats: StreamStats,
    /// Its row log.
    pub rows_log: PathBuf,
    /// Its late-event log.
    pub late_log: PathBuf,
    /// Its dead-letter log.
    pub dead_log: PathBuf,
}

/// Seconds spent per kind of durable write, summed over a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Online store puts.
    pub store: f64,
    /// Cache writes.
    pub cache: f64,
    /// Formatting and syncing the logs.
    pub logs: f64,
    /// Collecting and committing checkpoints.
    pub checkpoint: f64,
}

impl Timings {
    fn add(&mut self, other: &Timings) {
        self.store += other.store;
        self.cache += other.cache;
        self.logs += other.logs;
        self.checkpoint += other.checkpoint;
    }
}

/// The stream host service; see the [crate] docs. Cheap to clone.
#[derive(Clone)]
pub struct StreamService {
    groups: Arc<[GroupLane]>,
    /// Whether the groups share the stream ([`Self::with_groups`]): each then keeps
    /// its logs in a directory of its own, and the checkpoint names them.
    shared: bool,
    store: Arc<dyn OnlineStore>,
    config: ServiceConfig,
}

/// One feature group of a service: its plugin, the group version it writes, which
/// records of the stream it takes and where its entities start.
#[derive(Clone)]
pub struct GroupLane {
    /// The plugin.
    pub plugin: Plugin,
    /// The group version its rows go to (it must name the plugin's hash).
    pub group: GroupRef,
    /// The records it takes (`None`: every record of the stream).
    pub route: Option<Route>,
    /// Entity states to start from on a fresh state directory (a backfill's
    /// `--state-out`); ignored when a checkpoint exists.
    pub start_states: Option<StateMap>,
}

impl GroupLane {
    /// `plugin` writing group `group`, taking every record, with no start states.
    pub fn new(plugin: Plugin, group: GroupRef) -> Self {
        GroupLane {
            plugin,
            group,
            route: None,
            start_states: None,
        }
    }
}

/// What `run_from` set up on the runtime before the rounds start.
struct Started {
    metrics: Arc<Metrics>,
    health: Arc<Mutex<Health>>,
    cache: Option<RedisCache>,
    summary: Summary,
}

/// The logs of a service, each cut back to its committed length.
struct Logs {
    rows: AppendLog,
    late: AppendLog,
    dead: AppendLog,
}

impl Logs {
    fn lengths(&self) -> LogLengths {
        LogLengths {
            rows: self.rows.len(),
            late: self.late.len(),
            dead: self.dead.len(),
        }
    }
    fn sync(&mut self) -> Result<(), ServiceError> {
        self.rows.sync()?;
        self.late.sync()?;
        self.dead.sync()
    }
}

/// A round handed to the writer: its outputs and the checkpoint that covers them.
struct Job {
    round: Round,
    /// One per group.
    checkpoints: Vec<lockstep_stream::Checkpoint>,
    positions: BTreeMap<String, String>,
    ended: std::collections::HashSet<String>,
    /// Seconds spent gathering the checkpoint.
    gathered: f64,
}

/// What the writer did over a run.
#[derive(Default)]
struct WriterReport {
    unrouted: u64,
    commits: u64,
    generation: u64,
    commit_seconds: f64,
    timings: Timings,
}

/// What one round produced, waiting to be written.
struct Round {
    /// One per group.
    outputs: Vec<GroupOutput>,
    /// Records no group's route took, with why.
    unrouted: Vec<Json>,
    changed: bool,
    records: usize,
    started: Instant,
}

/// What one round produced for one group.
#[derive(Default)]
struct GroupOutput {
    rows: Vec<RecordBatch>,
    late: Vec<lockstep_stream::LateEvent>,
    dead: Vec<lockstep_stream::DeadLetter>,
}

impl Round {
    fn new(groups: usize) -> Self {
        Round {
            outputs: (0..groups).map(|_| GroupOutput::default()).collect(),
            unrouted: Vec::new(),
            changed: false,
            records: 0,
            started: Instant::now(),
        }
    }
}

impl StreamService {
    /// A service running `plugin` into `store` as feature group `group`. The group must
    /// name `plugin`'s hash: the store refuses another plugin's rows.
    pub fn new(
        plugin: Plugin,
        store: Arc<dyn OnlineStore>,
        group: GroupRef,
        mut config: ServiceConfig,
    ) -> Self {
        let lane = GroupLane {
            start_states: config.start_states.take(),
            ..GroupLane::new(plugin, group)
        };
        StreamService {
            groups: Arc::from(vec![lane]),
            shared: false,
            store,
            config,
        }
    }

    /// A service running several feature groups over one stream: each record is read
    /// once, routed to the groups that take it, decoded once per distinct input
    /// schema, and applied by each group's plugin to that group's own state, exactly
    /// as a service of that group alone over the records it takes would. The groups'
    /// rows go to `store` (each bound to its plugin's hash), their logs to
    /// `state_dir/<group>/`, and one checkpoint commits every group's states with the
    /// shard positions. Group names must be distinct.
    pub fn with_groups(
        groups: Vec<GroupLane>,
        store: Arc<dyn OnlineStore>,
        config: ServiceConfig,
    ) -> Result<Self, ServiceError> {
        if groups.is_empty() {
            return Err(ServiceError::Start(
                "a service needs a feature group".into(),
            ));
        }
        let mut names: Vec<&str> = groups.iter().map(|g| g.group.name.as_str()).collect();
        names.sort_unstable();
        if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(ServiceError::Start(format!(
                "feature group `{}` is given twice",
                twice[0]
            )));
        }
        if let Some(bad) = names
            .iter()
            .find(|n| n.is_empty() || n.contains(['/', '\\']) || n.starts_with('.'))
        {
            return Err(ServiceError::Start(format!(
                "feature group name `{bad}` cannot name a state directory"
            )));
        }
        Ok(StreamService {
            groups: Arc::from(groups),
            shared: true,
            store,
            config,
        })
    }

    /// Where group `i` keeps its logs.
    fn log_dir(&self, i: usize) -> PathBuf {
        if self.shared {
            self.config.state_dir.join(&self.groups[i].group.name)
        } else {
            self.config.state_dir.clone()
        }
    }

    /// Whether records are routed (some group has a route).
    fn routed(&self) -> bool {
        self.groups.iter().any(|g| g.route.is_some())
    }

    /// Runs over the Kinesis stream of the configuration until `stop` is set (or a
    /// signal, or idle when so configured); see [`Self::run_from`].
    pub async fn run(&self, stop: Arc<AtomicBool>) -> Result<Summary, ServiceError> {
        let cfg = self.config.clone();
        self.run_from(stop, move |resume| async move {
            let source = KinesisSource::connect(
                &cfg.kinesis,
                &cfg.stream,
                resume,
                cfg.batch_size,
                cfg.tip_read_interval,
            )
            .await;
            Ok(Box::new(source) as Box<dyn Source>)
        })
        .await
    }

    /// Runs over the source `open` makes (given where the checkpoint left off): every
    /// round reads each open shard, applies the records, writes the outputs and
    /// commits a checkpoint. Returns after the last checkpoint.
    ///
    /// Reads, writes, the HTTP endpoints and signals are awaited on the caller's
    /// runtime (it needs its I/O and time drivers). The rounds — applying records is
    /// CPU work, and the checkpoint and logs are synced files — run on a blocking
    /// thread of that runtime, so no worker thread ever waits on the plugin.
    pub async fn run_from<F, Opened>(
        &self,
        stop: Arc<AtomicBool>,
        open: F,
    ) -> Result<Summary, ServiceError>
    where
        F: FnOnce(Resume) -> Opened + Send + 'static,
        Opened:
            std::future::Future<Output = Result<Box<dyn Source>, ServiceError>> + Send + 'static,
    {
        let cfg = &self.config;
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Mutex::new(Health::new()));
        let mut summary = Summary::default();
        if let Some(addr) = cfg.listen {
            let listen_error = |source| ServiceError::Listen {
                address: addr,
                source,
            };
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(listen_error)?;
            let bound = listener.local_addr().map_err(listen_error)?;
            summary.listening = Some(bound);
            tracing::info!(%bound, "serving /healthz and /metrics");
            tokio::spawn(http::serve(listener, metrics.clone(), health.clone()));
        }
        if cfg.handle_signals {
            let flag = stop.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("stop requested: finishing the round and checkpointing");
                flag.store(true, Ordering::SeqCst);
            });
        }
        let cache = match &cfg.cache {
            Some((url, ttl)) => Some(
                RedisCache::connect(url, *ttl, Duration::from_secs(5))
                    .await
                    .map_err(ServiceError::Cache)?,
            ),
            None => None,
        };
        let started = Started {
            metrics,
            health,
            cache,
            summary,
        };
        let service = self.clone();
        let io = Handle::current();
        tokio::task::spawn_blocking(move || service.run_rounds(&io, stop, started, open))
            .await
            .map_err(|e| ServiceError::Start(format!("the service's thread stopped: {e}")))?
    }

    /// The rounds, on a blocking thread; `io` runs the reads and writes.
    fn run_rounds<F, Opened>(
        &self,
        io: &Handle,
        stop: Arc<AtomicBool>,
        started: Started,
        open: F,
    ) -> Result<Summary, ServiceError>
    where
        F: FnOnce(Resume) -> Opened,
        Opened: std::future::Future<Output = Result<Box<dyn Source>, ServiceError>>,
    {
        let cfg = &self.config;
        let Started {
            metrics,
            health,
            cache,
            mut summary,
        } = started;

        let n = self.groups.len();
        // Logs without a checkpoint: the checkpoint was lost, emptied or replaced.
        // Starting would cut the logs back to nothing, so refuse unless told to start
        // fresh, and then keep the old logs beside the new ones.
        let mut log_files: Vec<PathBuf> = (0..n)
            .flat_map(|i| {
                let dir = self.log_dir(i);
                [ROWS_LOG, LATE_LOG, DEAD_LOG].map(|name| dir.join(name))
            })
            .collect();
        let unrouted_path = self.routed().then(|| cfg.state_dir.join(UNROUTED_LOG));
        log_files.extend(unrouted_path.clone());
        let found = existing_logs(&log_files);
        let described = (!found.is_empty()).then(|| {
            found
                .iter()
                .map(|(p, n)| format!("{} ({n} bytes)", p.display()))
                .collect::<Vec<_>>()
                .join(", ")
        });
        let bindings: Vec<GroupBinding> = self
            .groups
            .iter()
            .map(|g| GroupBinding {
                name: self.shared.then(|| g.group.name.clone()),
                plugin_hash: g.plugin.hash().to_owned(),
                input_schema: lockstep_stream::buffer_schema(g.plugin.manifest()),
            })
            .collect();
        let checkpoints =
            match CheckpointStore::open_groups(&cfg.state_dir, bindings.clone(), described) {
                Err(ServiceError::MissingCheckpoint { .. }) if cfg.start_fresh => {
                    set_logs_aside(&found)?;
                    CheckpointStore::open_groups(&cfg.state_dir, bindings, None)?
                }
                other => other?,
            };
        let restored_groups = checkpoints.restore_groups()?;
        let unrouted_committed = checkpoints.unrouted_length()?;
        let mut logs = Vec::with_capacity(n);
        for (i, restored) in restored_groups.iter().enumerate() {
            let dir = self.log_dir(i);
            std::fs::create_dir_all(&dir).map_err(|e| ServiceError::Log {
                path: dir.clone(),
                message: format!("cannot create the group's log directory: {e}"),
            })?;
            logs.push(Logs {
                rows: AppendLog::open(&dir.join(ROWS_LOG), restored.logs.rows)?,
                late: AppendLog::open(&dir.join(LATE_LOG), restored.logs.late)?,
                dead: AppendLog::open(&dir.join(DEAD_LOG), restored.logs.dead)?,
            });
            summary.groups.push(GroupSummary {
                group: self.groups[i].group.id(),
                stats: StreamStats::default(),
                rows_log: dir.join(ROWS_LOG),
                late_log: dir.join(LATE_LOG),
                dead_log: dir.join(DEAD_LOG),
            });
        }
        let unrouted_log = match &unrouted_path {
            Some(path) => Some(AppendLog::open(path, unrouted_committed)?),
            None => None,
        };
        summary.unrouted_log = unrouted_path.clone();
        summary.rows_log = summary.groups[0].rows_log.clone();
        summary.late_log = summary.groups[0].late_log.clone();
        summary.dead_log = summary.groups[0].dead_log.clone();
        let first = &restored_groups[0];
        summary.resumed = !first.fresh;
        summary.generation = first.generation;
        let fresh = first.fresh;
        let mut positions = first.positions.clone();
        let mut ended = first.ended.clone();
        if !fresh {
            tracing::info!(
                entities = restored_groups
                    .iter()
                    .map(|r| r.states.len())
                    .sum::<usize>(),
                shards = first.shards.len(),
                groups = n,
                "going on from the checkpoint"
            );
        }
        let mut processors = Vec::with_capacity(n);
        for (lane, restored) in self.groups.iter().zip(restored_groups) {
            processors.push(if fresh {
                let p = ShardedProcessor::new(&lane.plugin, cfg.stream_config);
                match &lane.start_states {
                    Some(states) => p.with_states(states.clone()),
                    None => p,
                }
            } else {
                if lane.start_states.is_some() {
                    tracing::warn!(
                        group = %lane.group.id(),
                        "a checkpoint exists in {}: going on from it, not from the start states",
                        cfg.state_dir.display()
                    );
                }
                ShardedProcessor::restore(
                    &lane.plugin,
                    cfg.stream_config,
                    restored.states,
                    restored.shards,
                )?
            });
        }
        let mut watching = match &cfg.erasures {
            Some(watch) => {
                let mut watched = Vec::with_capacity(n);
                for lane in self.groups.iter() {
                    let manifest = lane.plugin.manifest();
                    let key_type = lockstep_core::schema::input_schema(manifest)
                        .field_with_name(&manifest.entity_key)
                        .map(|f| f.data_type().clone())
                        .map_err(|e| ServiceError::Start(format!("the entity key: {e}")))?;
                    watched.push(crate::erasure::WatchedGroup::new(
                        &manifest.name,
                        &manifest.version,
                        key_type,
                    ));
                }
                Some(crate::erasure::Watching::start(
                    io,
                    watch,
                    watched,
                    &mut processors,
                    &metrics,
                )?)
            }
            None => None,
        };
        let plan = DecodePlan::new(&self.groups);
        let mut reader = io.block_on(open(Resume {
            positions: positions.clone(),
            ended: ended.clone(),
        }))?;
        let schemas: Vec<_> = self
            .groups
            .iter()
            .map(|g| row_schema(g.plugin.manifest()))
            .collect();
        let mut seen = StreamStats::default();
        let mut source_failures = 0u32;
        let mut first_round = true;
        let lateness = cfg.stream_config.allowed_lateness;
        let mut round = Round::new(n);
        // A round's size is per group: the groups of a shared stream each take about
        // their share of its records.
        let round_records = cfg.round_records.saturating_mul(n);
        let mut ever_read = false;
        // Records read in this round and not yet applied, one entry per shard in the
        // order shards were first read.
        let mut gathered: Vec<(String, Vec<ShardRecord>)> = Vec::new();

        let (jobs, pending_jobs) = std::sync::mpsc::sync_channel::<Job>(1);
        // The writer owns the logs and the checkpoint store; the rest it borrows.
        let (rt_ref, schemas_ref, cache_ref) = (io, &schemas[..], cache.as_ref());
        let (metrics_ref, health_ref, stop_ref) = (&*metrics, &*health, &*stop);
        let (read_result, written) = std::thread::scope(|scope| {
            let writer = scope.spawn(move || {
                let mut logs = logs;
                let mut unrouted_log = unrouted_log;
                self.write_and_commit(
                    pending_jobs,
                    rt_ref,
                    schemas_ref,
                    &mut logs,
                    unrouted_log.as_mut(),
                    &checkpoints,
                    cache_ref,
                    metrics_ref,
                    health_ref,
                    stop_ref,
                )
            });
            let mut read = || -> Result<(), ServiceError> {
                loop {
                    if let Some(watching) = watching.as_mut()
                        && watching.poll(io, &mut processors, &metrics)?
                    {
                        round.changed = true;
                    }
                    let stopping_now = stop.load(Ordering::SeqCst);
                    let events = if stopping_now {
                        Vec::new()
                    } else {
                        match io.block_on(reader.poll()) {
                            Ok(events) => {
                                source_failures = 0;
                                ever_read = true;
                                lock(&health).read_ok();
                                events
                            }
                            Err(e) if !ever_read => {
                                // Nothing read yet: a wrong stream name or endpoint, not a
                                // blip. Say so instead of retrying forever.
                                return Err(e);
                            }
                            Err(e) => {
                                // The reader keeps its iterators: the next round retries.
                                metrics.source_errors.inc();
                                source_failures += 1;
                                tracing::warn!(error = %lockstep_core::ErrorChain(&e), "reading the stream failed; retrying");
                                lock(&health).error(e.to_string());
                                sleep_unless(&stop, backoff(source_failures));
                                continue;
                            }
                        }
                    };
                    let quiet = events.is_empty();
                    round.records += events
                        .iter()
                        .map(|e| match e {
                            ShardEvent::Records(_, r) => r.len(),
                            _ => 0,
                        })
                        .sum::<usize>();
                    for event in events {
                        round.changed = true;
                        // Gathered records go in before a lineage event, which keeps its
                        // place.
                        if !matches!(event, ShardEvent::Records(..)) {
                            plan.apply(&mut processors, &mut gathered, &mut round, &mut positions)?;
                        }
                        match event {
                            ShardEvent::Records(shard, mut records) => {
                                match gathered.iter_mut().find(|(s, _)| *s == shard) {
                                    Some((_, held)) => held.append(&mut records),
                                    None => gathered.push((shard, records)),
                                }
                            }
                            ShardEvent::Opened(info) => {
                                tracing::info!(shard = %info.id, parents = ?info.parents, "shard opened");
                                let spec = ShardSpec {
                                    id: info.id,
                                    parents: info.parents,
                                    hash_range: info.hash_range,
                                };
                                for processor in &mut processors {
                                    processor.open(spec.clone())?;
                                }
                            }
                            ShardEvent::Ended(shard) => {
                                tracing::info!(%shard, "shard read to its end");
                                for processor in &mut processors {
                                    processor.close(&shard)?;
                                }
                                positions.remove(&shard);
                                ended.insert(shard);
                            }
                        }
                    }
                    let idle = quiet && reader.caught_up();
                    let stopping = stopping_now || (idle && cfg.stop_when_idle);
                    // A round gathers reads until it is big or old enough, or the source is
                    // quiet: fewer, larger commits while catching up; no wait once caught up.
                    let due = stopping
                        || idle
                        || reader.at_tip()
                        || round.records >= round_records
                        || round.started.elapsed() >= cfg.round_interval;
                    // Records are applied once per round, not once per read: an entity
                    // met several times in a round is then one run of the plugin, one
                    // state decoded and encoded instead of one per read (catching up,
                    // the plugin's work per event nearly halves). Shards are applied in
                    // parallel.
                    if due {
                        plan.apply(&mut processors, &mut gathered, &mut round, &mut positions)?;
                    }
                    if idle && cfg.idle_watermark && !stopping {
                        let to = now_micros().saturating_sub(lateness);
                        for (i, processor) in processors.iter_mut().enumerate() {
                            if self.groups[i].plugin.manifest().timer_resolution.is_none() {
                                continue;
                            }
                            let step = processor.advance_watermarks(to)?;
                            metrics.clock_watermark_us.set(to);
                            if step.stats.calls > 0 || step.rows.num_rows() > 0 {
                                round.outputs[i].rows.push(step.rows);
                                round.changed = true;
                            }
                        }
                    }
                    if stopping && cfg.drain_on_stop {
                        for (i, processor) in processors.iter_mut().enumerate() {
                            let step = processor.drain()?;
                            if step.rows.num_rows() > 0 {
                                round.outputs[i].rows.push(step.rows);
                                round.changed = true;
                            }
                        }
                    }
                    if (round.changed || first_round) && due {
                        // The checkpoint is gathered here, at the round's end; the writer
                        // commits it once the round's outputs are durable, while this thread
                        // goes on with the next round.
                        let gathered_at = Instant::now();
                        let checkpoints = processors.iter_mut().map(|p| p.checkpoint()).collect();
                        let job = Job {
                            round: std::mem::replace(&mut round, Round::new(n)),
                            checkpoints,
                            positions: positions.clone(),
                            ended: ended.clone(),
                            gathered: gathered_at.elapsed().as_secs_f64(),
                        };
                        first_round = false;
                        if jobs.send(job).is_err() {
                            // The writer stopped; its error is what the run returns.
                            return Ok(());
                        }
                    }
                    let mut now = StreamStats::default();
                    for (i, processor) in processors.iter().enumerate() {
                        let stats = processor.stats();
                        now.add(&stats);
                        summary.groups[i].stats = stats;
                    }
                    record_progress(&metrics, &seen, &now);
                    seen = now;
                    metrics
                        .buffered_events
                        .set(processors.iter().map(|p| p.buffered()).sum::<usize>() as i64);
                    metrics.lag_ms.clear();
                    for (shard, lag) in reader.lag() {
                        metrics
                            .lag_ms
                            .get_or_create(&vec![("shard".to_owned(), shard)])
                            .set(lag);
                    }
                    if stopping {
                        lock(&health).stopping();
                        break;
                    }
                    if idle {
                        sleep_unless(&stop, cfg.idle_poll);
                    }
                }
                Ok(())
            };
            let read_result = read();
            drop(jobs);
            // Freeing the processor (every entity's state, the plugin instances) and
            // the reader takes a quarter of a second at 100k entities: done here, it
            // overlaps the writer's last rounds instead of following them.
            drop(processors);
            drop(reader);
            let written = joined(writer, "the output writer");
            (read_result, written)
        });
        let report = written?;
        read_result?;
        summary.commits = report.commits;
        if report.commits > 0 {
            summary.generation = report.generation;
        }
        summary.commit_seconds = report.commit_seconds;
        summary.timings = report.timings;
        summary.unrouted = report.unrouted;
        summary.stats = if self.shared {
            seen
        } else {
            summary.groups[0].stats.clone()
        };
        Ok(summary)
    }

    /// The writer: for each round in order, writes its outputs, then commits its
    /// checkpoint. Returns what it did, or the first error (the reader then stops).
    #[allow(clippy::too_many_arguments)]
    fn write_and_commit(
        &self,
        jobs: std::sync::mpsc::Receiver<Job>,
        rt: &Handle,
        schemas: &[arrow_schema::SchemaRef],
        logs: &mut [Logs],
        mut unrouted_log: Option<&mut AppendLog>,
        checkpoints: &CheckpointStore,
        cache: Option<&RedisCache>,
        metrics: &Metrics,
        health: &Mutex<Health>,
        stop: &AtomicBool,
    ) -> Result<WriterReport, ServiceError> {
        let mut report = WriterReport::default();
        let mut texts: Vec<RowsText> = schemas.iter().map(|_| RowsText::default()).collect();
        for job in jobs {
            let started = Instant::now();
            // The checkpoint's states and positions go into its transaction while the
            // outputs are written; it commits only once they are durable, with the logs'
            // lengths. (Written one after the other, the checkpoint was a fifth of the
            // writer's time, and the writer is the service's critical path.)
            let (written, prepared) = std::thread::scope(|scope| {
                let preparing = scope.spawn(|| {
                    let started = Instant::now();
                    let each: Vec<&lockstep_stream::Checkpoint> = job.checkpoints.iter().collect();
                    checkpoints
                        .prepare_groups(&each, &job.positions, &job.ended)
                        .map(|prepared| (prepared, started.elapsed().as_secs_f64()))
                });
                let written = self.write_round(
                    rt,
                    &job.round,
                    schemas,
                    &mut texts,
                    logs,
                    unrouted_log.as_deref_mut(),
                    cache,
                    metrics,
                    health,
                    stop,
                );
                let prepared = joined(preparing, "the checkpoint writer");
                (written, prepared)
            });
            // On an error nothing is committed: a prepared transaction is dropped.
            let timings = written?;
            let (prepared, preparing) = prepared?;
            report.timings.add(&timings);
            report.unrouted += job.round.unrouted.len() as u64;
            let commit_started = Instant::now();
            let lengths: Vec<LogLengths> = logs.iter().map(Logs::lengths).collect();
            let generation =
                prepared.commit_groups(&lengths, unrouted_log.as_deref().map(AppendLog::len))?;
            report.generation = generation;
            if let Some(hook) = &self.config.on_commit {
                let total = lengths
                    .iter()
                    .fold(LogLengths::default(), |a, l| LogLengths {
                        rows: a.rows + l.rows,
                        late: a.late + l.late,
                        dead: a.dead + l.dead,
                    });
                (hook.0)(&Committed {
                    generation,
                    positions: job.positions.clone(),
                    ended: job.ended.len(),
                    entities_changed: job.checkpoints.iter().map(|c| c.changed.len()).sum(),
                    logs: total,
                });
            }
            report.timings.checkpoint +=
                job.gathered + preparing + commit_started.elapsed().as_secs_f64();
            report.commits += 1;
            let took = started.elapsed().as_secs_f64();
            report.commit_seconds += took;
            metrics.commits.inc();
            metrics.commit_seconds.observe(took);
            lock(health).committed();
        }
        Ok(report)
    }

    /// Writes a round's rows to the online store (retrying transient failures until
    /// they pass or a stop is asked for) while its lines go to the logs, then through
    /// to the cache; everything durable when this returns. `texts`: the writer's row
    /// text per group, refilled round after round.
    #[allow(clippy::too_many_arguments)]
    fn write_round(
        &self,
        rt: &Handle,
        round: &Round,
        schemas: &[arrow_schema::SchemaRef],
        texts: &mut [RowsText],
        logs: &mut [Logs],
        unrouted_log: Option<&mut AppendLog>,
        cache: Option<&RedisCache>,
        metrics: &Metrics,
        health: &Mutex<Health>,
        stop: &AtomicBool,
    ) -> Result<Timings, ServiceError> {
        let mut timings = Timings::default();
        // Each group's rows are formatted, stored and logged on a thread of its own
        // (with several groups, one writer would otherwise do their work one after
        // the other while separate services would do it side by side).
        let write_group = |i: usize, text: &mut RowsText, logs: &mut Logs| {
            let rows = arrow_select_concat(&schemas[i], &round.outputs[i].rows)?;
            // Formatted once: the row log takes every line, the store each entity's
            // latest.
            let formatted = Instant::now();
            text.refill(&rows);
            let text = &*text;
            let mut timings = Timings {
                logs: formatted.elapsed().as_secs_f64(),
                ..Timings::default()
            };
            let (stored, logged) = std::thread::scope(|scope| {
                let store_job = scope
                    .spawn(|| self.put_with_retries(rt, i, &rows, text, metrics, health, stop));
                let logged = Self::write_logs(text, &round.outputs[i], logs);
                let stored = joined(store_job, "the store write");
                (stored, logged)
            });
            timings.store = stored?;
            timings.logs += logged?;
            Ok::<_, ServiceError>((rows, timings))
        };
        let written: Vec<Result<(RecordBatch, Timings), ServiceError>> = if texts.len() == 1 {
            texts
                .iter_mut()
                .zip(logs.iter_mut())
                .enumerate()
                .map(|(i, (text, logs))| write_group(i, text, logs))
                .collect()
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = texts
                    .iter_mut()
                    .zip(logs.iter_mut())
                    .enumerate()
                    .map(|(i, (text, logs))| scope.spawn(move || write_group(i, text, logs)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| joined(h, "a group's writer"))
                    .collect()
            })
        };
        if let Some(log) = unrouted_log {
            let started = Instant::now();
            for line in &round.unrouted {
                log.append(line)?;
            }
            log.sync()?;
            timings.logs += started.elapsed().as_secs_f64();
        }
        let mut rows = Vec::with_capacity(written.len());
        for result in written {
            let (batch, group_timings) = result?;
            timings.add(&group_timings);
            rows.push(batch);
        }
        if let Some(cache) = cache
            && rows.iter().any(|r| r.num_rows() > 0)
        {
            let cache_started = Instant::now();
            let entries: Vec<CacheEntry> = rows
                .iter()
                .enumerate()
                .flat_map(|(i, rows)| self.cache_entries(i, rows))
                .collect();
            self.write_cache(rt, cache, &entries, metrics, health);
            timings.cache = cache_started.elapsed().as_secs_f64();
        }
        Ok(timings)
    }

    /// Puts `rows` into the online store, retrying transient failures; seconds taken.
    #[allow(clippy::too_many_arguments)]
    fn put_with_retries(
        &self,
        rt: &Handle,
        group: usize,
        rows: &RecordBatch,
        text: &RowsText,
        metrics: &Metrics,
        health: &Mutex<Health>,
        stop: &AtomicBool,
    ) -> Result<f64, ServiceError> {
        let started = Instant::now();
        if rows.num_rows() == 0 {
            return Ok(0.0);
        }
        let mut attempt = 0u32;
        loop {
            match rt.block_on(self.store.put_with_text(
                &self.groups[group].group,
                rows,
                text,
                now_micros(),
            )) {
                Ok(_) => return Ok(started.elapsed().as_secs_f64()),
                Err(e) if !e.is_transient() => return Err(e.into()),
                Err(e) => {
                    metrics.write_errors.inc();
                    attempt += 1;
                    tracing::warn!(error = %lockstep_core::ErrorChain(&e), attempt, "online store write failed; retrying");
                    lock(health).error(e.to_string());
                }
            }
            if stop.load(Ordering::SeqCst) && attempt >= 3 {
                // The checkpoint is not committed: the rows are written on restart.
                return Err(ServiceError::Start(
                    "stopping while the online store refuses writes; nothing after the last \
                     checkpoint is lost, restart to write it"
                        .into(),
                ));
            }
            std::thread::sleep(backoff(attempt));
        }
    }

    /// Appends a group's rows, late events and dead letters of the round, synced;
    /// seconds taken.
    fn write_logs(
        text: &RowsText,
        output: &GroupOutput,
        logs: &mut Logs,
    ) -> Result<f64, ServiceError> {
        let started = Instant::now();
        logs.rows.append_lines(text.lines())?;
        let mut lines = Vec::new();
        for late in &output.late {
            late.write_line(&mut lines);
        }
        logs.late.append_lines(&lines)?;
        lines.clear();
        for dead in &output.dead {
            dead.write_line(&mut lines);
        }
        logs.dead.append_lines(&lines)?;
        logs.sync()?;
        Ok(started.elapsed().as_secs_f64())
    }
}

impl StreamService {
    /// Each entity's latest row of `rows` as a cache entry, by the store's rule.
    fn cache_entries(&self, i: usize, rows: &RecordBatch) -> Vec<CacheEntry> {
        let group = &self.groups[i].group;
        // The store took these rows just before, so they cannot be refused here.
        let latest = match lockstep_online::latest_rows(rows, group) {
            Ok(latest) => latest,
            Err(e) => {
                tracing::warn!(error = %lockstep_core::ErrorChain(&e), "rows not written through to the cache");
                return Vec::new();
            }
        };
        let group_id = group.id();
        latest
            .into_iter()
            .map(|latest| CacheEntry {
                key: lockstep_cache::cache_key(&group_id, &latest.key),
                event_time: latest.event_time,
                value: lockstep_cache::record_value(
                    latest.event_time,
                    &group.plugin_hash,
                    &row_json(rows, latest.row),
                ),
            })
            .collect()
    }

    /// Writes through to the cache. A cache that fails is left alone for
    /// [`CACHE_PAUSE`] (its entries for those rounds are skipped and counted), so an
    /// outage never slows the stream: the store has the rows, readers fall back to it
    /// on a miss, and entries left behind expire with their TTL.
    fn write_cache(
        &self,
        rt: &Handle,
        cache: &RedisCache,
        entries: &[CacheEntry],
        metrics: &Metrics,
        health: &Mutex<Health>,
    ) {
        if lock(health).cache_paused() {
            metrics.cache_skipped.inc_by(entries.len() as u64);
            return;
        }
        match rt.block_on(cache.put(entries)) {
            Ok(_) => lock(health).cache_ok(),
            Err(e) => {
                metrics.write_errors.inc();
                metrics.cache_skipped.inc_by(entries.len() as u64);
                tracing::warn!(error = %lockstep_core::ErrorChain(&e), pause = ?CACHE_PAUSE, "cache write failed; leaving the cache alone for a while");
                lock(health).cache_failed(e.to_string(), CACHE_PAUSE);
            }
        }
    }
}

/// How long a failed cache is left alone before the next attempt.
const CACHE_PAUSE: Duration = Duration::from_secs(5);

/// How a round's records reach the groups: each record routed once, then decoded once
/// per class of groups that decode alike (the same input schema and route), each
/// class on a thread of its own and, within it, each shard on its own.
struct DecodePlan {
    /// `None`: every group takes every record.
    router: Option<Router>,
    /// Groups (indices) by class; the first of a class decodes for all of it.
    classes: Vec<Vec<usize>>,
}

impl DecodePlan {
    fn new(groups: &[GroupLane]) -> Self {
        let mut keys: Vec<(String, Option<Route>)> = Vec::new();
        let mut classes: Vec<Vec<usize>> = Vec::new();
        for (i, lane) in groups.iter().enumerate() {
            let key = (
                lockstep_stream::decode_signature(lane.plugin.manifest()),
                lane.route.clone(),
            );
            match keys.iter().position(|k| *k == key) {
                Some(c) => classes[c].push(i),
                None => {
                    keys.push(key);
                    classes.push(vec![i]);
                }
            }
        }
        let router = groups
            .iter()
            .any(|g| g.route.is_some())
            .then(|| Router::new(groups.iter().map(|g| g.route.clone()).collect()));
        DecodePlan { router, classes }
    }

    /// Pushes the records gathered in `run` (one entry per shard) through every
    /// group's processor into `round`, and moves each shard's position to its last
    /// record.
    fn apply(
        &self,
        processors: &mut [ShardedProcessor],
        run: &mut Vec<(String, Vec<ShardRecord>)>,
        round: &mut Round,
        positions: &mut BTreeMap<String, String>,
    ) -> Result<(), ServiceError> {
        if run.is_empty() {
            return Ok(());
        }
        let all: Vec<(&str, Vec<Record<'_>>)> = run
            .iter()
            .map(|(shard, records)| {
                (
                    shard.as_str(),
                    records
                        .iter()
                        .map(|r| Record {
                            shard,
                            sequence: &r.sequence,
                            data: &r.data,
                            partition_key: Some(&r.partition_key),
                        })
                        .collect(),
                )
            })
            .collect();
        let per_class = match &self.router {
            None => vec![all; self.classes.len()],
            Some(router) => self.route(router, all, &mut round.unrouted)?,
        };
        // Each group's processor, handed to the thread of its class.
        let mut slots: Vec<Option<&mut ShardedProcessor>> =
            processors.iter_mut().map(Some).collect();
        let work: Vec<Vec<(usize, &mut ShardedProcessor)>> = self
            .classes
            .iter()
            .map(|class| {
                class
                    .iter()
                    .filter_map(|&i| slots.get_mut(i)?.take().map(|p| (i, p)))
                    .collect()
            })
            .collect();
        let results: Vec<Result<ClassSteps, ServiceError>> = if work.len() == 1 {
            work.into_iter()
                .zip(&per_class)
                .map(|(class, batches)| run_class(class, batches))
                .collect()
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = work
                    .into_iter()
                    .zip(&per_class)
                    .map(|(class, batches)| scope.spawn(move || run_class(class, batches)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| joined(h, "a group's processing"))
                    .collect()
            })
        };
        for result in results {
            for (i, steps) in result? {
                let output = &mut round.outputs[i];
                for step in steps {
                    output.rows.push(step.rows);
                    output.late.extend(step.late);
                    output.dead.extend(step.dead);
                }
            }
        }
        for (shard, records) in run.drain(..) {
            if let Some(last) = records.last() {
                positions.insert(shard, last.sequence.clone());
            }
        }
        Ok(())
    }

    /// The records of each class, per shard (shards routed in parallel); records no
    /// group takes go to `unrouted` with why.
    fn route<'a>(
        &self,
        router: &Router,
        all: Vec<(&'a str, Vec<Record<'a>>)>,
        unrouted: &mut Vec<Json>,
    ) -> Result<Vec<ShardBatches<'a>>, ServiceError> {
        let classes = &self.classes;
        let route_shard = |records: &[Record<'a>]| {
            let mut per: Vec<Vec<Record<'a>>> = vec![Vec::new(); classes.len()];
            let mut nowhere = Vec::new();
            let mut groups = Vec::new();
            for record in records {
                if router.route_into(record.data, &mut groups) {
                    for (c, class) in classes.iter().enumerate() {
                        if groups.contains(&class[0]) {
                            per[c].push(*record);
                        }
                    }
                    continue;
                }
                nowhere.push(serde_json::json!({
                    "shard": record.shard,
                    "sequence": record.sequence,
                    "partition_key": record.partition_key,
                    "reason": router.why_nowhere(record.data),
                    "record": String::from_utf8_lossy(record.data).trim_end(),
                }));
            }
            (per, nowhere)
        };
        let routed: Vec<(Vec<Vec<Record<'a>>>, Vec<Json>)> = if all.len() == 1 {
            all.iter()
                .map(|(_, records)| route_shard(records))
                .collect()
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = all
                    .iter()
                    .map(|(_, records)| scope.spawn(|| route_shard(records)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        // A shard whose routing panicked must stop the round: its
                        // records would be lost while its position moved on.
                        h.join().map_err(|_| panicked("routing a shard's records"))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })?
        };
        let mut per_class: Vec<Vec<(&'a str, Vec<Record<'a>>)>> = vec![Vec::new(); classes.len()];
        for ((shard, _), (per, nowhere)) in all.iter().zip(routed) {
            unrouted.extend(nowhere);
            for (c, records) in per.into_iter().enumerate() {
                if !records.is_empty() {
                    per_class[c].push((shard, records));
                }
            }
        }
        Ok(per_class)
    }
}

/// A class's records, per shard.
type ShardBatches<'a> = Vec<(&'a str, Vec<Record<'a>>)>;

/// What a class of groups produced: each group's steps, by group index.
type ClassSteps = Vec<(usize, Vec<lockstep_stream::Step>)>;

/// Runs one class of groups over its records: the first decodes, every one takes
/// the decoded events into its own state.
fn run_class(
    class: Vec<(usize, &mut ShardedProcessor)>,
    batches: &[(&str, Vec<Record<'_>>)],
) -> Result<ClassSteps, ServiceError> {
    if batches.is_empty() {
        return Ok(Vec::new());
    }
    if class.len() == 1 {
        return class
            .into_iter()
            .map(|(i, p)| Ok((i, p.push_all(batches)?)))
            .collect();
    }
    let mut class = class;
    let decoded = match class.first_mut() {
        Some((_, p)) => p.decode_all(batches)?,
        None => return Ok(Vec::new()),
    };
    class
        .into_iter()
        .map(|(i, p)| Ok((i, p.push_decoded_all(batches, &decoded)?)))
        .collect()
}

fn arrow_select_concat(
    schema: &arrow_schema::SchemaRef,
    batches: &[RecordBatch],
) -> Result<RecordBatch, ServiceError> {
    arrow_select::concat::concat_batches(schema, batches)
        .map_err(|e| ServiceError::Stream(lockstep_stream::StreamError::Arrow(e)))
}

fn record_progress(metrics: &Metrics, before: &StreamStats, now: &StreamStats) {
    let delta = |a: u64, b: u64| b.saturating_sub(a);
    metrics
        .records_in
        .inc_by(delta(before.records, now.records));
    metrics
        .events_applied
        .inc_by(delta(before.applied, now.applied));
    metrics.rows_out.inc_by(delta(before.rows, now.rows));
    metrics
        .duplicates
        .inc_by(delta(before.duplicates, now.duplicates));
    metrics.late_events.inc_by(delta(before.late, now.late));
    metrics.dead_letters.inc_by(delta(before.dead, now.dead));
    metrics
        .plugin_failures
        .inc_by(delta(before.plugin_failures, now.plugin_failures));
    metrics
        .erased_events
        .inc_by(delta(before.erased, now.erased));
    metrics
        .entities_woken
        .inc_by(delta(before.woken, now.woken));
    metrics
        .wake_rows
        .inc_by(delta(before.wake_rows, now.wake_rows));
}

fn lock(health: &Mutex<Health>) -> std::sync::MutexGuard<'_, Health> {
    match health.lock() {
        Ok(h) => h,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// 100 ms doubling to 10 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(7)).min(10_000))
}

/// Sleeps `total`, waking early when a stop is asked for.
fn sleep_unless(stop: &AtomicBool, total: Duration) {
    let deadline = Instant::now() + total;
    while !stop.load(Ordering::SeqCst) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The error of a thread of the service that panicked while doing `what`.
fn panicked(what: &str) -> ServiceError {
    ServiceError::Start(format!("{what} panicked"))
}

/// A scoped thread's result, a panic in it becoming the service's error naming `what`:
/// a thread that panics must fail the round (nothing of it is committed), never the
/// process.
fn joined<T>(
    handle: std::thread::ScopedJoinHandle<'_, Result<T, ServiceError>>,
    what: &str,
) -> Result<T, ServiceError> {
    handle.join().unwrap_or_else(|_| Err(panicked(what)))
}
