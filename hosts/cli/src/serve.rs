//! `lockstep serve`: the online serving path over HTTP.

use crate::stream::OnlineStoreArg;
use anyhow::{Context, Result, bail};
use lockstep_online::{EmbeddedStore, OnlineStore};
use lockstep_runtime::Runtime;
use lockstep_serving::{BreakerConfig, FeatureServer, ServeConfig, ServedGroup};
use serde_json::{Map, Value as Json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What `serve` takes.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// A plugin component (.wasm) whose feature group is served: its manifest gives
    /// the group, version, entity key, features and defaults. Repeatable. Default:
    /// every group of the repository's lockstep.toml.
    #[arg(long = "plugin")]
    pub plugins: Vec<PathBuf>,
    /// embedded:DIR, sagemaker (AWS) or sagemaker:URL (e.g. featurestore-local).
    /// Default: the repository's `[online]`.
    #[arg(long, value_parser = crate::stream::parse_online_store)]
    pub online_store: Option<OnlineStoreArg>,
    /// The Redis cache: redis://[user:password@]host:port, or
    /// redis-cluster://host:port,host:port,… for a cluster.
    #[arg(long)]
    pub cache: Option<String>,
    /// Expiry of entries written back to the cache after a miss (none: they stay
    /// until replaced).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub cache_ttl: Option<Duration>,
    /// Hard deadline of a request: what is not read by then is served from the
    /// default snapshot, tagged degraded. Default: the repository's
    /// `[serving] timeout`, else 5ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// How long a store read may take before it counts as failed (it goes on past
    /// the request's deadline to fill the cache).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub store_timeout: Duration,
    /// XFetch β: how early cache entries refresh before they expire (0: never).
    /// Default: the repository's `[cache] xfetch_beta`, else 1.
    #[arg(long)]
    pub xfetch_beta: Option<f64>,
    /// XFetch δ, the cost of a refresh (default: the measured store read time). A
    /// loopback store reads in well under a millisecond, which leaves almost no window
    /// for early refreshes; hot keys then refresh within a few δ·β of expiry.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub xfetch_delta: Option<Duration>,
    /// Failures within one second (and at least half its calls) that open a
    /// backend's circuit breaker.
    #[arg(long, default_value_t = 10)]
    pub breaker_failures: u32,
    /// How long an open circuit stays open before one probe.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub breaker_open_for: Duration,
    /// A default-feature snapshot (JSON: {"group@version": {"feature": value}}) that
    /// replaces manifest defaults.
    #[arg(long)]
    pub defaults: Option<PathBuf>,
    /// Entities per request at most.
    #[arg(long, default_value_t = 1000)]
    pub max_entities: usize,
    /// Address to listen on. Default: the repository's `[serving] listen`, else
    /// 127.0.0.1:6566.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    #[command(flatten)]
    pub runtime: crate::plugin::RuntimeArgs,
    /// Where the server's start and configuration are recorded, and every refused
    /// request.
    #[command(flatten)]
    pub audit: crate::audit::AuditArgs,
    /// Tenants and their tokens (TOML; each token kept as its SHA-256, see `lockstep
    /// tenant token`): every request then needs a tenant's bearer token and reads only
    /// its groups. Open to anyone who reaches the port when absent.
    #[arg(long)]
    pub tenants: Option<PathBuf>,
    /// Log every `/v1/features` answer (request id, group@version, plugin hash, each
    /// entity's values, source and event time) as hourly Parquet files here: a
    /// directory or `s3://bucket/prefix`. Off the request path: a full queue drops and
    /// counts (`feature_log_dropped`). `lockstep lineage REQUEST_ID` reads it.
    #[arg(long, value_name = "LOCATION")]
    pub log_features: Option<String>,
}

/// A served group's row schema.
type RowSchema = (lockstep_online::GroupRef, arrow_schema::SchemaRef);

/// The served groups, with the snapshot's defaults applied, and their row schemas.
fn served_groups(
    args: &ServeArgs,
    group_defaults: &[(String, PathBuf)],
    runtime: &Runtime,
) -> Result<(Vec<ServedGroup>, Vec<RowSchema>)> {
    let mut groups = Vec::new();
    let mut schemas = Vec::new();
    for path in &args.plugins {
        let plugin = runtime
            .load_file(path)
            .with_context(|| format!("loading {}", path.display()))?;
        let group = ServedGroup::new(plugin.manifest(), plugin.hash());
        schemas.push((
            group.group.clone(),
            lockstep_core::schema::row_schema(plugin.manifest()),
        ));
        groups.push(group);
    }
    if let Some(path) = &args.defaults {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the default snapshot {}", path.display()))?;
        let snapshot: Map<String, Json> = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a JSON object", path.display()))?;
        for (id, values) in snapshot {
            let Some(group) = groups.iter_mut().find(|g| g.group.id() == id) else {
                bail!(
                    "{}: `{id}` is not a served group (served: {})",
                    path.display(),
                    groups
                        .iter()
                        .map(|g| g.group.id())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            let Json::Object(values) = values else {
                bail!(
                    "{}: `{id}` must map feature names to values",
                    path.display()
                );
            };
            group
                .set_defaults(&values)
                .with_context(|| format!("reading {}", path.display()))?;
        }
    }
    // A repository group's own defaults (`defaults = "file.json"`: feature → value).
    for (name, path) in group_defaults {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading group `{name}`'s defaults {}", path.display()))?;
        let Json::Object(values) = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?
        else {
            bail!(
                "{}: group `{name}`'s defaults must map feature names to values",
                path.display()
            );
        };
        let group = groups
            .iter_mut()
            .find(|g| &g.group.name == name)
            .with_context(|| format!("group `{name}` is not served"))?;
        group
            .set_defaults(&values)
            .with_context(|| format!("reading {}", path.display()))?;
    }
    Ok((groups, schemas))
}

/// Runs the server until SIGTERM or Ctrl-C.
pub async fn run(mut args: ServeArgs, config_flag: Option<&Path>) -> Result<()> {
    crate::stream::init_logging();
    let runtime = &args.runtime.runtime()?;
    // The repository's settings fill what the flags leave out.
    let repo = crate::repo::optional(config_flag)?;
    let mut group_defaults: Vec<(String, PathBuf)> = Vec::new();
    if args.plugins.is_empty() {
        let Some(config) = &repo else {
            bail!(
                "nothing to serve: name a component with --plugin, or run in a feature                  repository (a directory with a lockstep.toml; `lockstep init` makes one)"
            );
        };
        if config.groups.is_empty() {
            bail!("{} has no [[group]] to serve", config.path.display());
        }
        for group in &config.groups {
            let component = crate::repo::component(config, group)?;
            crate::repo::check_manifest(config, group, &component, runtime)?;
            args.plugins.push(component.path);
            if let Some(defaults) = &group.defaults {
                group_defaults.push((group.name.clone(), defaults.clone()));
            }
        }
    }
    let online_store = match (args.online_store.take(), &repo) {
        (Some(store), _) => store,
        (None, Some(config)) => crate::stream::parse_online_store(&config.online.to_arg())
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("[online] in {}", config.path.display()))?,
        (None, None) => bail!("--online-store is needed outside a feature repository"),
    };
    let repo_cache = repo.as_ref().and_then(|c| c.cache.as_ref());
    if args.cache.is_none()
        && let Some(cache) = repo_cache
    {
        args.cache = Some(cache.url.clone());
        args.cache_ttl = args.cache_ttl.or(cache.ttl);
    }
    let xfetch_beta = args
        .xfetch_beta
        .or(repo_cache.and_then(|c| c.xfetch_beta))
        .unwrap_or(1.0);
    let timeout = args
        .timeout
        .or(repo.as_ref().map(|c| c.serving.timeout))
        .unwrap_or(Duration::from_millis(5));
    let listen = args
        .listen
        .or(repo.as_ref().map(|c| c.serving.listen))
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 6566)));
    if args.log_features.is_none() {
        args.log_features = repo.as_ref().and_then(|c| c.serving.log_features.clone());
    }
    if !(xfetch_beta.is_finite() && xfetch_beta >= 0.0) {
        bail!("--xfetch-beta must be a number ≥ 0, not {xfetch_beta}");
    }
    if timeout.is_zero() {
        bail!("--timeout must be more than zero: every answer would be the defaults");
    }
    let (groups, schemas) = served_groups(&args, &group_defaults, runtime)?;
    let access = match &args.tenants {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the tenants file {}", path.display()))?;
            let access =
                lockstep_serving::access::Access::parse(&text, &path.display().to_string())?;
            for tenant in access.tenants() {
                for g in &tenant.groups {
                    let name = g.split_once('@').map_or(g.as_str(), |(n, _)| n);
                    if !groups.iter().any(|s| s.group.name == name) {
                        tracing::warn!(tenant = %tenant.name, group = %g, "a tenant's group is not served");
                    }
                }
            }
            Some(access)
        }
        None => None,
    };
    let store: Arc<dyn OnlineStore> = match &online_store {
        OnlineStoreArg::Embedded(dir) => Arc::new(EmbeddedStore::open(dir).with_context(|| {
            format!(
                "opening the embedded online store in {} (a store another process has open \
                 cannot be shared: serve it with featurestore-local and use sagemaker:URL)",
                dir.display()
            )
        })?),
        OnlineStoreArg::SageMaker(endpoint) => {
            let store = lockstep_featurestore::SageMakerStore::connect(endpoint.as_deref()).await;
            // Values travel as text; the manifests say how to read them back.
            for (group, schema) in &schemas {
                store.set_schema(group, schema.clone());
            }
            Arc::new(store)
        }
    };
    let config = ServeConfig {
        timeout,
        store_timeout: args.store_timeout,
        xfetch_beta,
        xfetch_delta: args.xfetch_delta,
        max_entities: args.max_entities,
        cache_breaker: BreakerConfig {
            failures: args.breaker_failures,
            open_for: args.breaker_open_for,
            ..BreakerConfig::default()
        },
        store_breaker: BreakerConfig {
            failures: args.breaker_failures,
            open_for: args.breaker_open_for,
            ..BreakerConfig::default()
        },
        ..ServeConfig::default()
    };
    async {
        let cache = match &args.cache {
            Some(url) => Some(
                lockstep_cache::RedisCache::connect(url, args.cache_ttl, Duration::from_secs(2))
                    .await
                    .context("connecting to the cache")?,
            ),
            None => None,
        };
        let ids: Vec<String> = groups.iter().map(|g| g.group.id()).collect();
        let server = FeatureServer::new(groups, store, cache, config)?;
        let (feature_log, log_writer) = match &args.log_features {
            Some(location) => {
                let (queue, writer) = lockstep_lineage::FeatureLogWriter::start(
                    location,
                    &lockstep_aws::AwsOptions::default(),
                    Default::default(),
                )?;
                (
                    Some(lockstep_serving::http::FeatureLog::new(queue, &server)),
                    Some(writer),
                )
            }
            None => (None, None),
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let bound = listener.local_addr().context("reading the bound address")?;
        let audit = args
            .audit
            .open(None, &lockstep_aws::AwsOptions::default())?
            .map(Arc::new);
        crate::audit::record(
            audit.as_deref(),
            vec![lockstep_audit::Entry::new("serve.start").with_details(serde_json::json!({
                "listen": bound.to_string(),
                "groups": ids,
                "online_store": format!("{online_store:?}"),
                "cache": args.cache.as_deref().map(crate::audit::redact_url),
                "timeout_ms": timeout.as_secs_f64() * 1e3,
                "defaults": args.defaults.as_ref().map(|p| p.display().to_string()),
                "feature_log": args.log_features,
                "tenants": access.as_ref().map(|a| a.tenants().iter().map(|t| serde_json::json!({
                    "name": t.name, "groups": t.groups, "revoked": t.revoked,
                })).collect::<Vec<_>>()),
            }))],
            "nothing is served yet",
        )
        .await?;
        let access = access.map(|access| {
            Arc::new(match &audit {
                Some(log) => access.with_refusals(record_refusals(log.clone())),
                None => access,
            })
        });
        tracing::info!(groups = ?ids, timeout = ?timeout, cache = args.cache.is_some(), "serving");
        // Scripts wait for this line to know the port.
        println!("lockstep serve listening on http://{bound}");
        let served = lockstep_serving::http::serve_with(
            listener,
            server,
            lockstep_serving::http::HttpOptions {
                access,
                feature_log,
            },
            lockstep_featurestore::local::shutdown_signal(),
        )
        .await
        .context("serving features");
        // The server and its queue are gone: the log writes what it holds, then ends.
        if let Some(writer) = log_writer {
            let finished = tokio::task::spawn_blocking(move || writer.join());
            match tokio::time::timeout(Duration::from_secs(30), finished).await {
                Ok(Ok(Ok(stats))) => tracing::info!(
                    answers = stats.answers,
                    rows = stats.rows,
                    files = stats.files,
                    "served-feature log closed"
                ),
                _ => tracing::warn!("the served-feature log did not finish writing within 30 s"),
            }
        }
        served
    }
    .await
}

/// A channel whose refusals are recorded in `log`, gathered for up to a second (a
/// burst of refused requests is one log file, not one each). Never in the request's
/// way: the server hands refusals on without waiting.
fn record_refusals(
    log: Arc<lockstep_audit::AuditLog>,
) -> tokio::sync::mpsc::Sender<lockstep_serving::access::Refusal> {
    let (sender, mut refusals) = tokio::sync::mpsc::channel(10_000);
    tokio::spawn(async move {
        while let Some(first) = refusals.recv().await {
            let mut batch: Vec<lockstep_serving::access::Refusal> = vec![first];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            while batch.len() < 1_000 {
                match tokio::time::timeout_at(deadline, refusals.recv()).await {
                    Ok(Some(next)) => batch.push(next),
                    _ => break,
                }
            }
            let entries = batch
                .into_iter()
                .map(|r| {
                    let mut entry = lockstep_audit::Entry::new("serve.refused").with_details(
                        serde_json::json!({
                            "status": r.status,
                            "reason": r.reason,
                            "tenant": r.tenant,
                            "path": r.path,
                        }),
                    );
                    if let Some(group) = r.group {
                        let (name, version) = group
                            .split_once('@')
                            .map_or((group.clone(), None), |(n, v)| {
                                (n.to_owned(), Some(v.to_owned()))
                            });
                        entry = entry.on(name, version);
                    }
                    entry
                })
                .collect();
            if let Err(e) = log.record(entries).await {
                tracing::warn!(error = %lockstep_core::ErrorChain(&e), "refused requests not recorded in the audit log");
            }
        }
    });
    sender
}
