//! `lockstep`: the command line over the Lockstep libraries. Parsing arguments and
//! printing are all that happens here; everything else lives in library crates.

mod batch;
mod demo;
mod gen_parquet;
mod golden;
mod offline;
mod scaffold;
mod serve;
mod skew;
mod stream;
mod training;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use lockstep_core::decode::{Reject, decode_json_lines};
use lockstep_core::key::StateMap;
use lockstep_core::rows::row_json;
use lockstep_executor::Executor;
use lockstep_runtime::{Runtime, RuntimeConfig};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Lockstep: write a feature transform once, run it identically in batch and stream.
#[derive(Parser)]
#[command(name = "lockstep", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build, inspect and run plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Backfill feature groups from history into the offline store.
    #[command(subcommand)]
    Batch(BatchCommand),
    /// Generate synthetic data.
    #[command(subcommand)]
    Gen(GenCommand),
    /// Build a point-in-time-correct training set: each label row joined with the
    /// latest feature row of each group recorded before its time (an as-of join over
    /// the offline store). Never a value from after the label.
    TrainingSet(training::Args),
    /// Maintain the offline store.
    #[command(subcommand)]
    Offline(OfflineCommand),
    /// Run the batch host and the stream host over the same events and compare every
    /// row bit for bit. Exit 0: identical; 1: skew (with a diff); 2: could not check.
    SkewCheck {
        /// The plugin component (.wasm) both hosts run.
        #[arg(long)]
        plugin: PathBuf,
        /// Events, one JSON object per line, in arrival order.
        #[arg(long)]
        events: PathBuf,
        /// The stream host's allowed lateness (e.g. 5s, 2m).
        #[arg(long, default_value = "5m", value_parser = skew::parse_lateness)]
        allowed_lateness: i64,
        /// Deliver the events to the stream host in a random order (within the
        /// allowed lateness) drawn from this seed, instead of file order.
        #[arg(long)]
        shuffle_seed: Option<u64>,
        /// Run the stream side with this component instead: measures what a new build
        /// of the plugin would change.
        #[arg(long)]
        against: Option<PathBuf>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Send the stream side through Kinesis at this endpoint (a fresh stream is
        /// created and deleted; credentials and region from the AWS environment).
        #[arg(long)]
        kinesis_endpoint: Option<String>,
        /// Shards of that stream.
        #[arg(long, default_value_t = 2)]
        kinesis_shards: i32,
        /// Instead of streaming here, compare with what `stream run` logged in this
        /// state directory (rows.jsonl; late.jsonl is left out of the batch side).
        #[arg(long, conflicts_with_all = ["kinesis_endpoint", "shuffle_seed", "against"])]
        stream_log: Option<PathBuf>,
        /// How the batch side keeps the rows it reads back: `plain` hour files or a
        /// `delta` table (read through its log, as training sets read it).
        #[arg(long, value_enum, default_value = "plain")]
        table_format: offline::TableFormat,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Keep an online store current from a Kinesis stream (the stream host service).
    #[command(subcommand)]
    Stream(StreamCommand),
    /// Serve an embedded online store over the SageMaker Feature Store runtime API
    /// (PutRecord, GetRecord, BatchGetRecord, DeleteRecord).
    FeaturestoreLocal {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8490")]
        listen: std::net::SocketAddr,
        /// Directory of the embedded store.
        #[arg(long)]
        data: PathBuf,
        /// A feature group and its record identifier (and event-time) feature, as
        /// CreateFeatureGroup defines them: NAME=RECORD_ID[:EVENT_TIME]. Repeatable.
        #[arg(long = "group", value_parser = lockstep_featurestore::local::parse_group)]
        groups: Vec<(String, lockstep_featurestore::local::GroupDefinition)>,
        /// A JSON file of CreateFeatureGroup requests (one object or a list, as
        /// boto3's create_feature_group takes them): feature types are checked on put
        /// and OnlineStoreConfig.TtlDuration is the groups' default TTL. Repeatable.
        #[arg(long = "group-definition")]
        definitions: Vec<PathBuf>,
    },
    /// Serve features on the inference path over HTTP: Redis first, the online store on
    /// a miss, the default snapshot (tagged degraded) when a read does not make the
    /// timeout. POST /v1/features, Feast's POST /get-online-features, /metrics.
    Serve {
        #[command(flatten)]
        args: serve::ServeArgs,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Print the Redis `ACL SETUSER` command that makes USER a tenant of the cache:
    /// it may touch only its groups' keys (reads; writes too with --write). The
    /// password comes from the environment variable --password-env names.
    CacheAcl {
        /// The Redis user.
        #[arg(long)]
        user: String,
        /// The environment variable holding its password.
        #[arg(long, default_value = "LOCKSTEP_TENANT_PASSWORD")]
        password_env: String,
        /// A group version it may read, NAME@VERSION. Repeatable.
        #[arg(long = "group", required = true)]
        groups: Vec<String>,
        /// Allow writes too (for the stream host's user).
        #[arg(long)]
        write: bool,
    },
    /// Check the plugins against their golden sets in `golden/`, or remake them.
    #[command(subcommand)]
    Golden(GoldenCommand),
    /// Build the example plugins, run them over generated events and show the results.
    Demo {
        /// Events to generate per plugin.
        #[arg(long, default_value_t = 50_000)]
        events: usize,
    },
}

#[derive(Subcommand)]
enum OfflineCommand {
    /// Remove the data files of a group's Delta tables that no version younger than
    /// the retention needs (files replaced by later backfills, files of killed jobs);
    /// in the plain layout, complete a killed job's commit and remove its staged files.
    Vacuum(offline::VacuumArgs),
}

#[derive(Subcommand)]
enum StreamCommand {
    /// Consume every shard of a stream through the plugin into the online store, with
    /// checkpoints (exactly-once across restarts), late and dead-letter logs, a row
    /// log, `/healthz` and `/metrics`. Stops cleanly on SIGTERM or Ctrl-C.
    Run {
        #[command(flatten)]
        args: Box<stream::RunArgs>,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Put events (JSON lines) to a stream in file order, keyed by the plugin's entity
    /// key: to feed the stream host in demos and tests.
    Put {
        /// The plugin whose entity key partitions the records.
        #[arg(long)]
        plugin: PathBuf,
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
        runtime: RuntimeArgs,
    },
}

#[derive(Subcommand)]
enum GenCommand {
    /// Realistic events as JSON lines: skewed entities, bursts, equal timestamps,
    /// rough arrival order, ~1% duplicates (transactions), malformed rows on request.
    Events {
        /// What to generate.
        #[arg(long, value_enum)]
        kind: EventKind,
        /// Number of events.
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        /// Number of distinct entities.
        #[arg(long, default_value_t = 1_000)]
        entities: u64,
        /// Seed: the same seed gives the same bytes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Replace this many rows with malformed records.
        #[arg(long, default_value_t = 0)]
        malformed: usize,
        /// Output file (default: standard output). `.parquet` writes Parquet
        /// (transactions only); anything else JSON lines.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The events of a golden set: generated events plus hand-written edge cases
    /// (duplicates, ties, nulls, extreme values, non-ASCII), arriving out of order
    /// by at most five minutes of event time.
    Golden {
        /// What to generate.
        #[arg(long, value_enum)]
        kind: EventKind,
        /// Seed: the same seed gives the same bytes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum GoldenCommand {
    /// Run the batch host over each set's events and compare its rows with the
    /// expected ones, exactly; exit 1 with a diff on any difference.
    Check {
        #[command(flatten)]
        sets: GoldenSets,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Rewrite each set's expected rows from the batch host. Review the diff before
    /// committing: this is how a plugin's change of behaviour is accepted.
    Update {
        #[command(flatten)]
        sets: GoldenSets,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
}

#[derive(clap::Args)]
struct GoldenSets {
    /// Golden sets to take, by plugin name (default: all).
    names: Vec<String>,
    /// The directory of golden sets (default: `golden/` of this workspace).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The directory of plugin crates (default: `plugins/` of this workspace).
    #[arg(long)]
    plugins: Option<PathBuf>,
}

impl GoldenSets {
    fn args(self) -> golden::GoldenArgs {
        golden::GoldenArgs {
            dir: self.dir.unwrap_or_else(|| workspace_dir("golden")),
            plugins: self.plugins.unwrap_or_else(|| workspace_dir("plugins")),
            names: self.names,
        }
    }
}

/// `name` in the current directory if it is there, else in this source tree.
fn workspace_dir(name: &str) -> PathBuf {
    let here = PathBuf::from(name);
    if here.is_dir() {
        return here;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(name)
}

#[derive(Subcommand)]
enum BatchCommand {
    /// Run a plugin over a source and write its rows into the offline store.
    Run {
        /// The plugin component (.wasm).
        #[arg(long)]
        plugin: PathBuf,
        /// Source files: a file, a directory or a glob, local or `s3://bucket/…`.
        #[arg(long)]
        source: String,
        /// Source format (default: from the file extension).
        #[arg(long, value_enum)]
        format: Option<FormatArg>,
        /// Shape the source into the plugin's input schema: `SELECT … FROM source`.
        #[arg(long)]
        sql: Option<String>,
        /// Offline store: a directory or `s3://bucket/prefix`.
        #[arg(long)]
        offline_store: String,
        /// S3-compatible endpoint for `s3://` sources and stores (default:
        /// `AWS_ENDPOINT_URL`, else AWS). Credentials and region come from the
        /// standard AWS environment variables.
        #[arg(long)]
        endpoint_url: Option<String>,
        /// Register the written table and partitions in a data catalog:
        /// `glue:DATABASE` (the AWS Glue Data Catalog; endpoint and credentials as for S3).
        #[arg(long, value_parser = batch::parse_catalog)]
        catalog: Option<batch::Catalog>,
        /// Memory for the job (e.g. 2GiB): three quarters for sorting, a quarter for
        /// rows awaiting commit; beyond it both spill to disk.
        #[arg(long, value_parser = batch::parse_size)]
        memory_limit: Option<usize>,
        /// Parallel plugin instances (default: the number of cores).
        #[arg(long)]
        partitions: Option<usize>,
        /// Write each entity's final state here (for the stream host to start from).
        #[arg(long)]
        state_out: Option<PathBuf>,
        /// Write rows that cannot be read here, with their reason, and go on.
        #[arg(long)]
        rejects: Option<PathBuf>,
        /// Refuse events more than this ahead of the clock (rejects, as the stream
        /// host's dead letters): a typo like year 9999 never becomes a feature row.
        #[arg(long, default_value = "1h", value_parser = skew::parse_lateness)]
        max_future: i64,
        /// How the group version is kept: `plain` (one Parquet file per hour, each hour
        /// replaced atomically) or `delta` (a Delta Lake table: the whole backfill is one
        /// commit, concurrent jobs are serialised, old versions stay readable).
        #[arg(long, value_enum, default_value = "plain")]
        table_format: offline::TableFormat,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum FormatArg {
    Parquet,
    Csv,
    Json,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    Transactions,
    Logins,
    Clicks,
}

#[derive(clap::Args, Clone)]
struct RuntimeArgs {
    /// Directory for precompiled plugin artifacts (default: the user cache directory).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Compile every time instead of using the artifact cache.
    #[arg(long)]
    no_cache: bool,
    /// CPU budget of one plugin call, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    cpu_budget_ms: u64,
    /// Memory limit of one plugin instance, in MiB.
    #[arg(long, default_value_t = 512)]
    memory_limit_mib: u64,
}

impl RuntimeArgs {
    fn runtime(&self) -> Result<Runtime> {
        let cache_dir = if self.no_cache {
            None
        } else {
            self.cache_dir.clone().or_else(default_cache_dir)
        };
        let config = RuntimeConfig {
            cpu_budget: Duration::from_millis(self.cpu_budget_ms),
            memory_limit: self.memory_limit_mib << 20,
            cache_dir,
            ..RuntimeConfig::default()
        };
        Runtime::new(config).context("starting the plugin runtime")
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("lockstep").join("artifacts"))
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Start a plugin crate: a transform whose schema is derived from its types, a
    /// native test, and clippy lints that refuse what the sandbox would.
    New {
        /// The plugin's name: its crate and its feature group (a-z, 0-9, _).
        name: String,
        /// Where to create it (default: ./NAME). Must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The Lockstep SDK to depend on, by path (default: the one this binary was
        /// built with, when built from a checkout).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build a plugin crate into a component; prints its path and SHA-256.
    Build {
        /// The plugin crate's directory.
        crate_dir: PathBuf,
        /// Cargo features to enable.
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
        /// Copy the component here as well.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show a component's manifest, imports and hash.
    Inspect {
        /// The component (.wasm).
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Apply a component to events from a JSON-lines file; print rows as JSON lines.
    Run {
        /// The component (.wasm).
        file: PathBuf,
        /// Events, one JSON object per line, in the plugin's input schema.
        #[arg(long)]
        events: PathBuf,
        /// Write bad records here (with line and reason) instead of failing on the first.
        #[arg(long)]
        rejects: Option<PathBuf>,
        /// Write rows here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
}

fn main() {
    // First, before any thread starts: the stream service spends a tenth of its CPU
    // consolidating glibc's fastbins otherwise (see the function's docs).
    lockstep_service::tune_allocator();
    // A reader that stops early (`lockstep … | head`) closes the pipe; printing then
    // fails, and there is nothing left to say: end quietly instead of with a panic.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = panic_text(info.payload());
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info);
    }));
    let cli = Cli::parse();
    // skew-check keeps 1 for "skew found": its failures to run are 2, like diff's.
    let error_code = if matches!(cli.command, Command::SkewCheck { .. }) {
        2
    } else {
        1
    };
    let result = match cli.command {
        Command::Plugin(cmd) => plugin(cmd),
        Command::Gen(GenCommand::Events {
            kind,
            rows,
            entities,
            seed,
            malformed,
            out,
        }) => gen_events(kind, rows, entities, seed, malformed, out.as_deref()),
        Command::Gen(GenCommand::Golden { kind, seed, out }) => {
            let text = lockstep_gen::golden::golden_events(gen_kind(kind), seed);
            match out {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display())),
                None => std::io::stdout()
                    .lock()
                    .write_all(text.as_bytes())
                    .context("writing to standard output"),
            }
        }
        Command::SkewCheck {
            plugin,
            events,
            allowed_lateness,
            shuffle_seed,
            against,
            json,
            kinesis_endpoint,
            kinesis_shards,
            stream_log,
            table_format,
            runtime,
        } => runtime.runtime().and_then(|runtime| {
            let args = skew::SkewArgs {
                plugin,
                against,
                events,
                allowed_lateness,
                shuffle_seed,
                json,
                kinesis_endpoint,
                kinesis_shards,
                stream_log,
                table_format,
            };
            match skew::run(&args, &runtime)? {
                true => Ok(()),
                // The diff is printed; the exit code carries the verdict.
                false => std::process::exit(1),
            }
        }),
        Command::Golden(GoldenCommand::Check { sets, runtime }) => runtime
            .runtime()
            .and_then(|runtime| golden::check(&sets.args(), &runtime)),
        Command::Golden(GoldenCommand::Update { sets, runtime }) => runtime
            .runtime()
            .and_then(|runtime| golden::update(&sets.args(), &runtime)),
        Command::Batch(BatchCommand::Run {
            plugin,
            source,
            format,
            sql,
            offline_store,
            endpoint_url,
            catalog,
            memory_limit,
            partitions,
            state_out,
            rejects,
            max_future,
            table_format,
            runtime,
        }) => runtime.runtime().and_then(|runtime| {
            batch::run(
                batch::RunArgs {
                    plugin,
                    source,
                    format: format.map(|f| match f {
                        FormatArg::Parquet => lockstep_batch::SourceFormat::Parquet,
                        FormatArg::Csv => lockstep_batch::SourceFormat::Csv,
                        FormatArg::Json => lockstep_batch::SourceFormat::Json,
                    }),
                    sql,
                    offline_store,
                    s3: lockstep_offline::S3Options {
                        endpoint: endpoint_url,
                        ..Default::default()
                    },
                    catalog,
                    memory_limit,
                    partitions: partitions.unwrap_or_else(|| {
                        std::thread::available_parallelism().map_or(2, |n| n.get())
                    }),
                    state_out,
                    rejects,
                    max_future,
                    table_format,
                },
                &runtime,
            )
        }),
        Command::TrainingSet(args) => training::run(args),
        Command::Offline(OfflineCommand::Vacuum(args)) => offline::vacuum(args),
        Command::Stream(StreamCommand::Run { args, runtime }) => {
            stream::init_logging();
            runtime
                .runtime()
                .and_then(|runtime| stream::run(*args, &runtime))
        }
        Command::Stream(StreamCommand::Put {
            plugin,
            stream,
            events,
            endpoint_url,
            create_shards,
            runtime,
        }) => runtime.runtime().and_then(|runtime| {
            stream::put(
                &plugin,
                &stream,
                &events,
                endpoint_url,
                create_shards,
                &runtime,
            )
        }),
        Command::FeaturestoreLocal {
            listen,
            data,
            groups,
            definitions,
        } => {
            stream::init_logging();
            featurestore_local(listen, &data, groups, &definitions)
        }
        Command::Serve { args, runtime } => {
            stream::init_logging();
            runtime
                .runtime()
                .and_then(|runtime| serve::run(args, &runtime))
        }
        Command::CacheAcl {
            user,
            password_env,
            groups,
            write,
        } => cache_acl(&user, &password_env, &groups, write),
        Command::Demo { events } => demo::run(events),
    };
    if let Err(e) = result {
        let closed_pipe = e.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if closed_pipe {
            // The reader stopped early (see above): not a failure of ours.
            std::process::exit(0);
        }
        eprintln!("error: {}", error_text(&e));
        std::process::exit(error_code);
    }
}

/// The message a panic carried (`panic!` with text gives a `String` or a `&str`).
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("")
}

/// An error and its causes, each said once: many library errors print their source
/// inside their own text, so the chain would repeat it (a full disk's message came out
/// five times).
fn error_text(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || parts.iter().any(|p| p.contains(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// An instant on the command line: RFC 3339 (`2024-01-31T12:00:00Z`), as UTC µs.
fn parse_instant(text: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .map_err(|e| format!("`{text}` is not an RFC 3339 instant like 2024-01-31T12:00:00Z: {e}"))
}

fn featurestore_local(
    listen: std::net::SocketAddr,
    data: &Path,
    mut groups: Vec<(String, lockstep_featurestore::local::GroupDefinition)>,
    definitions: &[PathBuf],
) -> Result<()> {
    for file in definitions {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the group definitions {}", file.display()))?;
        let parsed = lockstep_featurestore::local::parse_group_definitions(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        groups.extend(parsed);
    }
    let mut defined = std::collections::HashMap::new();
    for (name, definition) in groups {
        if defined.insert(name.clone(), definition).is_some() {
            anyhow::bail!("feature group {name} is defined twice");
        }
    }
    let embedded = lockstep_online::EmbeddedStore::open(data)
        .with_context(|| format!("opening the embedded online store in {}", data.display()))?;
    let store = lockstep_featurestore::local::LocalStore::new(embedded, defined);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let bound = listener.local_addr().context("reading the bound address")?;
        // Scripts wait for this line to know the port.
        println!("featurestore-local listening on http://{bound}");
        lockstep_featurestore::local::serve(
            listener,
            std::sync::Arc::new(store),
            lockstep_featurestore::local::shutdown_signal(),
        )
        .await
        .context("serving the feature store API")
    })
}

fn cache_acl(user: &str, password_env: &str, groups: &[String], write: bool) -> Result<()> {
    let password = std::env::var(password_env)
        .ok()
        .filter(|p| !p.is_empty())
        .with_context(|| format!("set {password_env} to the tenant's password"))?;
    for group in groups {
        let ok = group.split_once('@').is_some_and(|(name, version)| {
            !name.is_empty() && !version.is_empty() && !group.contains(char::is_whitespace)
        });
        anyhow::ensure!(ok, "`{group}` is not a group version NAME@VERSION");
    }
    let rules = lockstep_cache::tenant_acl(user, &password, groups, write);
    // Quoted for redis-cli, so a password with spaces or quotes stays one argument.
    let quoted: Vec<String> = rules
        .iter()
        .map(|r| format!("\"{}\"", r.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    println!("ACL SETUSER {}", quoted.join(" "));
    Ok(())
}

fn gen_kind(kind: EventKind) -> lockstep_gen::Kind {
    match kind {
        EventKind::Transactions => lockstep_gen::Kind::Transactions,
        EventKind::Logins => lockstep_gen::Kind::Logins,
        EventKind::Clicks => lockstep_gen::Kind::Clicks,
    }
}

fn gen_events(
    kind: EventKind,
    rows: usize,
    entities: u64,
    seed: u64,
    malformed: usize,
    out: Option<&Path>,
) -> Result<()> {
    let is_parquet = out.is_some_and(|p| {
        p.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
    });
    if kind == EventKind::Transactions && malformed == 0 {
        // Streamed in chunks: any size in constant memory.
        let mut stream = lockstep_gen::TransactionStream::new(rows, entities, seed);
        return match out {
            Some(path) if is_parquet => gen_parquet::write(path, &mut stream),
            Some(path) => {
                let file = std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                let mut w = std::io::BufWriter::new(file);
                while let Some(chunk) = stream.next_chunk(65_536) {
                    chunk
                        .write_json_lines(&mut w)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                w.flush()
                    .with_context(|| format!("writing {}", path.display()))
            }
            None => {
                let mut w = std::io::BufWriter::new(std::io::stdout().lock());
                while let Some(chunk) = stream.next_chunk(65_536) {
                    chunk.write_json_lines(&mut w)?;
                }
                Ok(w.flush()?)
            }
        };
    }
    if is_parquet {
        bail!(
            "Parquet output is available for --kind transactions without --malformed; \
             write JSON lines (.jsonl) for other kinds and for malformed rows"
        );
    }
    let mut text = lockstep_gen::events(gen_kind(kind), rows, entities, seed);
    if malformed > 0 {
        let (dirty, broken) = lockstep_gen::corrupt(&text, malformed, seed);
        text = dirty;
        eprintln!("malformed rows at lines: {broken:?}");
    }
    match out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(())
}

fn plugin(cmd: PluginCommand) -> Result<()> {
    match cmd {
        PluginCommand::Build {
            crate_dir,
            features,
            out,
        } => {
            let built = lockstep_build::build(
                &crate_dir,
                &lockstep_build::BuildOptions {
                    features,
                    verbose: true,
                    target_dir: None,
                },
            )?;
            let path = match out {
                Some(out) => {
                    std::fs::copy(&built.path, &out)
                        .with_context(|| format!("copying the component to {}", out.display()))?;
                    out
                }
                None => built.path,
            };
            println!("{}", path.display());
            println!("sha256 {}", built.sha256);
            println!("size   {} bytes", built.size);
            Ok(())
        }
        PluginCommand::New { name, dir, sdk } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let sdk = match sdk.or_else(scaffold::default_sdk) {
                Some(sdk) => sdk,
                None => bail!(
                    "this lockstep was not built from a checkout: name the SDK with --sdk PATH"
                ),
            };
            scaffold::new_plugin(&name, &dir, &sdk)?;
            println!(
                "created {} (SDK: {}).\n  cargo test --manifest-path {}/Cargo.toml\n  \
                 lockstep plugin build {}",
                dir.display(),
                sdk.display(),
                dir.display(),
                dir.display()
            );
            Ok(())
        }
        PluginCommand::Inspect {
            file,
            json,
            runtime,
        } => inspect(&file, json, &runtime),
        PluginCommand::Run {
            file,
            events,
            rejects,
            out,
            runtime,
        } => run(&file, &events, rejects.as_deref(), out.as_deref(), &runtime),
    }
}

fn inspect(file: &Path, json: bool, args: &RuntimeArgs) -> Result<()> {
    let started = Instant::now();
    let plugin = args.runtime()?.load_file(file)?;
    let load = started.elapsed();
    let m = plugin.manifest();
    if json {
        let doc = serde_json::json!({
            "sha256": plugin.hash(),
            "manifest": m,
            "imports": plugin.imports(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("{} {}  ({:?})", m.name, m.version, m.kind);
    if !m.description.is_empty() {
        println!("  {}", m.description);
    }
    println!("sha256   {}", plugin.hash());
    println!("loaded   in {:.1} ms", load.as_secs_f64() * 1e3);
    println!(
        "keys     entity `{}`, time `{}`, id {}",
        m.entity_key,
        m.event_time,
        m.event_id
            .as_deref()
            .map(|i| format!("`{i}`"))
            .unwrap_or("(content hash)".into())
    );
    println!("input");
    for f in &m.input {
        let null = if f.nullable { " (nullable)" } else { "" };
        println!(
            "  {:<24} {:<10}{null}  {}",
            f.name,
            f.ty.name(),
            f.description
        );
    }
    println!("features");
    for f in &m.features {
        println!(
            "  {:<24} {:<10} default {:<10} {}",
            f.name,
            f.ty.name(),
            f.default_value.to_string(),
            f.description
        );
    }
    println!("imports  (all stubbed or host-provided; nothing nondeterministic)");
    for i in plugin.imports() {
        println!("  {i}");
    }
    Ok(())
}

fn run(
    file: &Path,
    events: &Path,
    rejects: Option<&Path>,
    out: Option<&Path>,
    args: &RuntimeArgs,
) -> Result<()> {
    let plugin = args.runtime()?.load_file(file)?;
    let text = std::fs::read_to_string(events)
        .with_context(|| format!("reading events from {}", events.display()))?;
    let mut bad: Vec<Reject> = Vec::new();
    let batch = decode_json_lines(
        &text,
        plugin.manifest(),
        rejects.is_some().then_some(&mut bad),
    )
    .with_context(|| format!("decoding {}", events.display()))?;
    if let Some(path) = rejects {
        let mut w = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        for r in &bad {
            let line = serde_json::json!({"line": r.error.line, "field": r.error.field, "reason": r.error.message, "record": r.raw});
            writeln!(w, "{line}")?;
        }
        w.flush()?;
    }
    let started = Instant::now();
    let mut executor = Executor::new(&plugin)?;
    let output = executor.run(&batch, &mut StateMap::default())?;
    let elapsed = started.elapsed();
    let mut sink: Box<dyn Write> = match out {
        Some(p) => {
            Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let mut w = std::io::BufWriter::new(&mut sink);
    for row in 0..output.rows.num_rows() {
        writeln!(
            w,
            "{}",
            serde_json::Value::Object(row_json(&output.rows, row))
        )?;
    }
    w.flush()?;
    drop(w);
    let s = &output.stats;
    eprintln!(
        "{}: {} events in, {} applied to {} entities ({} duplicates dropped{}), {} rows out in {:.1} ms",
        plugin.manifest().id(),
        s.events_in + bad.len(),
        s.events_applied,
        s.entities,
        s.duplicates,
        if rejects.is_some() {
            format!(", {} rejected", bad.len())
        } else {
            String::new()
        },
        s.rows_out,
        elapsed.as_secs_f64() * 1e3
    );
    if batch.num_rows() == 0 && bad.is_empty() {
        bail!("{} holds no events", events.display());
    }
    Ok(())
}

#[cfg(test)]
mod error_tests {
    #[derive(Debug)]
    struct Wrapping(std::io::Error);
    impl std::fmt::Display for Wrapping {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "External error: {}", self.0)
        }
    }
    impl std::error::Error for Wrapping {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        let disk = std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device");
        let e = anyhow::Error::new(Wrapping(disk)).context("spilling to /tmp/x");
        assert_eq!(
            super::error_text(&e),
            "spilling to /tmp/x: External error: No space left on device"
        );
    }
}
