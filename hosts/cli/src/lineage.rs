//! `lockstep lineage REQUEST_ID`: what an answer of `serve` gave, and the offline rows
//! it corresponds to.

use anyhow::{Context, Result, bail};
use lockstep_offline::S3Options;

/// What `lineage` takes.
#[derive(clap::Args)]
pub struct Args {
    /// The request id (the `x-request-id` header of the answer).
    pub request_id: String,
    /// The served-feature log (`serve --log-features`).
    #[arg(long)]
    pub log: String,
    /// The offline store: shows, for each entity, the stored rows with the event time
    /// of the value served (their write times), or says there are none.
    #[arg(long)]
    pub offline_store: Option<String>,
    /// S3-compatible endpoint (default: the standard AWS environment).
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// One JSON object a line.
    #[arg(long)]
    pub json: bool,
}

/// Prints the answer `args.request_id` names.
pub async fn run(args: Args) -> Result<()> {
    let aws = S3Options {
        endpoint: args.endpoint_url.clone(),
        ..Default::default()
    };
    let rows = lockstep_lineage::find(&args.log, &aws, &args.request_id)
        .await
        .with_context(|| format!("reading the served-feature log {}", args.log))?;
    if rows.is_empty() {
        bail!(
            "request {} is not in the served-feature log {} (answers are written within \
             seconds; a full queue drops answers and counts them in feature_log_dropped)",
            args.request_id,
            args.log
        );
    }
    let store = match &args.offline_store {
        Some(location) => Some(crate::offline::open(location, &aws)?),
        None => None,
    };
    for row in &rows {
        let offline = match (&store, &row.event_time) {
            (Some(store), Some(event_time)) => {
                Some(offline_rows(store, &row.group, &row.version, &row.entity, event_time).await?)
            }
            _ => None,
        };
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "request_id": row.request_id,
                    "served_at": micros_text(row.served_at),
                    "group": row.group,
                    "version": row.version,
                    "plugin_hash": row.plugin_hash,
                    "entity": row.entity,
                    "source": row.source,
                    "event_time": row.event_time,
                    "values": row.features.iter().cloned().zip(row.values.iter().cloned())
                        .collect::<serde_json::Map<_, _>>(),
                    "offline_write_times": offline,
                })
            );
            continue;
        }
        println!(
            "{} {}@{} entity {} from {} (plugin {}, event time {}), served {}",
            row.request_id,
            row.group,
            row.version,
            row.entity,
            row.source,
            row.plugin_hash.as_deref().unwrap_or("-"),
            row.event_time.as_deref().unwrap_or("-"),
            micros_text(row.served_at)
        );
        for (feature, value) in row.features.iter().zip(&row.values) {
            println!("  {feature} = {value}");
        }
        match offline {
            Some(times) if times.is_empty() => {
                println!("  offline: no stored row at that event time")
            }
            Some(times) => println!("  offline: stored row(s) written at {}", times.join(", ")),
            None => {}
        }
    }
    Ok(())
}

/// The write times of `group@version`'s stored rows for `entity` at `event_time`.
async fn offline_rows(
    store: &lockstep_offline::OfflineStore,
    group: &str,
    version: &str,
    entity: &str,
    event_time: &str,
) -> Result<Vec<String>> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::TimestampMicrosecondType;
    let registered = store.version(group, version).await?;
    let key = &registered.manifest.entity_key;
    let wanted = chrono::DateTime::parse_from_rfc3339(event_time)
        .with_context(|| format!("the served event time {event_time}"))?
        .timestamp_micros();
    let mut times = Vec::new();
    for batch in store.read(group, version).await? {
        let (Some(keys), Some(events), Some(writes)) = (
            batch.column_by_name(key),
            batch.column_by_name("event_time"),
            batch.column_by_name("write_time"),
        ) else {
            continue;
        };
        let key_text = |i: usize| -> Option<String> {
            if keys.is_null(i) {
                return None;
            }
            if let Some(s) = keys.as_string_opt::<i32>() {
                return Some(s.value(i).to_owned());
            }
            keys.as_primitive_opt::<arrow_array::types::Int64Type>()
                .map(|n| n.value(i).to_string())
        };
        let events = events.as_primitive::<TimestampMicrosecondType>();
        let writes = writes.as_primitive::<TimestampMicrosecondType>();
        for i in 0..batch.num_rows() {
            if !events.is_null(i)
                && events.value(i) == wanted
                && key_text(i).as_deref() == Some(entity)
            {
                times.push(micros_text(writes.value(i)));
            }
        }
    }
    Ok(times)
}

fn micros_text(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .unwrap_or_else(|| micros.to_string())
}
