//! `lockstep featurestore-local`: an embedded online store behind the SageMaker
//! Feature Store runtime API, for tests, demos and clients that speak that API.

use anyhow::{Context, Result};
use std::path::PathBuf;

/// What `featurestore-local` takes.
#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8490")]
    pub listen: std::net::SocketAddr,
    /// Directory of the embedded store.
    #[arg(long)]
    pub data: PathBuf,
    /// A feature group and its record identifier (and event-time) feature, as
    /// CreateFeatureGroup defines them: NAME=RECORD_ID[:EVENT_TIME]. Repeatable.
    #[arg(long = "group", value_parser = lockstep_featurestore::local::parse_group)]
    pub groups: Vec<(String, lockstep_featurestore::local::GroupDefinition)>,
    /// A JSON file of CreateFeatureGroup requests (one object or a list, as
    /// boto3's create_feature_group takes them): feature types are checked on put
    /// and OnlineStoreConfig.TtlDuration is the groups' default TTL. Repeatable.
    #[arg(long = "group-definition")]
    pub definitions: Vec<PathBuf>,
}

/// Runs `featurestore-local` until SIGTERM or Ctrl-C.
pub async fn run(args: Args) -> Result<()> {
    crate::stream::init_logging();
    let Args {
        listen,
        data,
        mut groups,
        definitions,
    } = args;
    for file in &definitions {
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
    let embedded = lockstep_online::EmbeddedStore::open(&data)
        .with_context(|| format!("opening the embedded online store in {}", data.display()))?;
    let store = lockstep_featurestore::local::LocalStore::new(embedded, defined);
    {
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
    }
}
