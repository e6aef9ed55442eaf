//! `lockstep demo`: the first thing a new user runs. On embedded defaults, with no
//! servers: builds the example plugins from source, generates events, backfills the
//! offline store with the batch host, streams the same events through the stream host
//! in a shuffled arrival order into the embedded online store, checks that both hosts
//! produced the same rows bit for bit, reads a few entities back, and builds a
//! point-in-time training set from the offline store.

use anyhow::{Context, Result, ensure};
use lockstep_core::compare::{Row, compare};
use lockstep_core::decode::decode_json_lines;
use lockstep_core::now_micros;
use lockstep_online::{EmbeddedStore, GroupRef, OnlineStore, PutSummary};
use lockstep_runtime::{Runtime, RuntimeConfig};
use lockstep_verify::skew::{arrival_order, event_times, stream_rows};
use lockstep_verify::{Component, backfill};
use std::path::PathBuf;
use std::time::Instant;

/// The stream host's allowed lateness in the demo: five minutes.
const LATENESS: i64 = 5 * 60 * 1_000_000;

fn plugins_dir() -> PathBuf {
    let here = PathBuf::from("plugins");
    if here.join("txn_velocity").is_dir() {
        return here;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins")
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// A row's features as `name=value` pairs, shortened for a terminal.
fn short(row: &Row, skip: usize) -> String {
    let text: Vec<String> = row
        .iter()
        .skip(skip)
        .take(5)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut line = text.join(" ");
    if line.chars().count() > 110 {
        line = line.chars().take(110).collect::<String>() + "…";
    }
    line
}

/// What `demo` takes.
#[derive(clap::Args)]
pub struct Args {
    /// Events to generate per plugin.
    #[arg(long, default_value_t = 50_000)]
    pub events: usize,
}

/// Runs the demo.
pub async fn run(args: Args) -> Result<()> {
    let events = args.events;
    let dir = plugins_dir();
    let cache = std::env::temp_dir().join("lockstep-demo-artifacts");
    let runtime = Runtime::new(RuntimeConfig::with_cache(&cache))?;
    let work = std::env::temp_dir().join("lockstep-demo");
    // A fresh store each run: a demo that refused to overwrite last run's group
    // version (because the plugin was rebuilt differently) would teach the wrong thing.
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let offline = work.join("offline-store");
    let online_dir = work.join("online-store");
    let online = std::sync::Arc::new(EmbeddedStore::open(&online_dir)?);
    let mut served = Vec::new();
    let mut velocity_latest: Vec<Row> = Vec::new();
    println!(
        "Lockstep demo: {events} generated events per plugin, embedded defaults, no servers.\n\
         Working in {}\n",
        work.display()
    );
    if cfg!(debug_assertions) {
        println!(
            "(This is a debug build: timings are several times slower than `cargo run --release -p lockstep -- demo`.)\n"
        );
    }

    let cases: [(&str, String); 3] = [
        (
            "txn_velocity",
            lockstep_gen::transactions(events, (events / 50).max(10) as u64, 42).to_json_lines(),
        ),
        (
            "churn_features",
            lockstep_gen::activity(events, (events / 40).max(10) as u64, 42),
        ),
        (
            "clickstream_clean",
            lockstep_gen::clicks(events, (events / 20).max(10) as u64, 42),
        ),
    ];
    let mut total_rows = 0;
    let mut velocity_rows: Vec<Row> = Vec::new();
    for (name, input) in cases {
        let started = Instant::now();
        let built = lockstep_build::build(&dir.join(name), &Default::default())
            .with_context(|| format!("building plugin {name}"))?;
        let build_ms = ms(started);
        let plugin = runtime.load_file(&built.path)?;
        let m = plugin.manifest().clone();
        println!(
            "▸ {}  ({} features, {:?}; component {} KiB, sha256 {}…, built in {:.1} s)",
            m.id(),
            m.features.len(),
            m.kind,
            built.size / 1024,
            &built.sha256[..12],
            build_ms / 1e3
        );

        let events_path = work.join(format!("{name}.events.jsonl"));
        std::fs::write(&events_path, &input)
            .with_context(|| format!("writing {}", events_path.display()))?;
        let started = Instant::now();
        let component = Component {
            plugin: plugin.clone(),
            path: built.path.clone(),
        };
        let (batch, written) = backfill(
            &component,
            &events_path,
            2,
            &offline,
            lockstep_backfill::TableFormat::Plain,
        )
        .await?;
        println!(
            "  batch host   {} events → {} rows in {} hour partitions of {} in {:.0} ms",
            input.lines().count(),
            written.rows,
            written.partitions,
            offline.join(&m.name).display(),
            ms(started)
        );

        // The same events, as a stream delivers them: out of order within the lateness.
        let decoded = decode_json_lines(&input, &m, None)?;
        let times = event_times(&decoded, &m)?;
        let order = arrival_order(&times, Some(42), LATENESS);
        let lines: Vec<(usize, &str)> =
            input.lines().enumerate().map(|(i, l)| (i + 1, l)).collect();
        let streamed = stream_rows(&plugin, &lines, &order, LATENESS)?;
        println!(
            "  stream host  the same events shuffled (each up to 5 min late) → {} rows in {:.0} ms ({:.2} M events/s), {} duplicates dropped, {} late",
            streamed.rows.len(),
            streamed.millis,
            lines.len() as f64 / streamed.millis / 1e3,
            streamed.duplicates,
            streamed.late.len()
        );

        let c = compare(&m.entity_key, &batch, &streamed.rows, 5);
        ensure!(
            c.identical(),
            "{name}: the batch and stream hosts disagree:\n{}",
            c.render("batch", "stream")
        );
        println!(
            "  skew check   batch = stream ✓  {} rows, {} entities, every value bit for bit",
            c.left_rows, c.entities
        );
        total_rows += c.left_rows;
        if name == "txn_velocity" {
            velocity_rows = batch.clone();
        }

        // The stream's rows keep the online store current: the latest row per entity.
        let group = GroupRef::of(&m, plugin.hash());
        let started = Instant::now();
        let mut written = PutSummary::default();
        for batch in &streamed.batches {
            let s = online.put(&group, batch, now_micros()).await?;
            written.written += s.written;
            written.stale += s.stale;
        }
        let mut latest: Vec<&Row> = Vec::new();
        for row in &streamed.rows {
            match latest.last() {
                Some(prev) if prev.get(&m.entity_key) == row.get(&m.entity_key) => {
                    if let Some(last) = latest.last_mut() {
                        *last = row;
                    }
                }
                _ => latest.push(row),
            }
        }
        println!(
            "  online store {} entities current in {} ({} writes, {:.0} ms)",
            latest.len(),
            online_dir.display(),
            written.written,
            ms(started)
        );
        served.push(lockstep_serving::ServedGroup::new(&m, plugin.hash()));
        if name == "txn_velocity" {
            velocity_latest = latest.iter().map(|r| (*r).clone()).collect();
        }
        // Read a few back, as serving will, and check them against the stream's rows.
        let keys: Vec<String> = latest
            .iter()
            .take(2)
            .map(|row| match row.get(&m.entity_key) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            })
            .collect();
        for (record, expected) in online.get(&group, &keys).await?.into_iter().zip(&latest) {
            let record = record.context("an entity the stream wrote is missing online")?;
            ensure!(
                &record.row == *expected,
                "{name}: the online record differs from the stream's latest row"
            );
            let field = |f: &str| record.row.get(f).map(|v| v.to_string()).unwrap_or_default();
            println!(
                "  read back    {} {} @ {}: {}",
                m.entity_key,
                field(&m.entity_key),
                field("event_time"),
                short(&record.row, 2)
            );
        }
        println!();
    }
    training_set(&work, &offline, &velocity_rows).await?;
    serving(online, served, &velocity_latest).await?;
    println!(
        "Zero skew: {total_rows} rows from three plugins, identical in the batch and stream hosts."
    );
    println!(
        "Next: `lockstep init my-features` makes a feature repository to keep in git (lockstep.toml, \
         a plugin crate, sample events): then `lockstep apply`, `backfill`, `serve` (and `stream` from Kinesis);"
    );
    println!(
        "      `lockstep plugin inspect <file.wasm>` shows a component's manifest and imports;"
    );
    println!("      `lockstep batch run --help` backfills your own data into an offline store;");
    println!(
        "      `lockstep stream run --help` keeps an online store current from a Kinesis stream;"
    );
    println!(
        "      `lockstep skew-check --plugin <file.wasm> --events <file.jsonl>` checks your events;"
    );
    println!(
        "      `lockstep training-set --help` joins your labels with features as of their time;"
    );
    println!(
        "      `lockstep serve --help` serves features to models (Redis, store, degraded defaults)."
    );
    Ok(())
}

/// Serves the online store over HTTP as `lockstep serve` does (no cache here: every
/// read goes to the embedded store), reads cards back with the Rust client, checks them
/// against the stream's latest rows, and times a burst of requests.
async fn serving(
    store: std::sync::Arc<EmbeddedStore>,
    groups: Vec<lockstep_serving::ServedGroup>,
    latest: &[Row],
) -> Result<()> {
    use lockstep_client::api::{FeatureRequest, Source};
    let config = lockstep_serving::ServeConfig {
        // A debug build on a busy laptop: generous, so the demo shows values, not defaults.
        timeout: std::time::Duration::from_millis(200),
        ..Default::default()
    };
    let server = lockstep_serving::FeatureServer::new(groups, store, None, config)?;
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(lockstep_serving::http::serve(
            listener,
            server,
            std::future::pending(),
        ));
        let client = lockstep_client::Client::new(&base)?;
        let cards: Vec<String> = latest
            .iter()
            .take(2)
            .filter_map(|r| r.get("card_id").and_then(|v| v.as_str()).map(str::to_owned))
            .chain(["card-nobody".to_owned()])
            .collect();
        let features = ["txn_count_24h", "txn_sum_24h"];
        let answer = client
            .get_features(&FeatureRequest::new("txn_velocity", cards.clone()).features(features))
            .await?;
        println!(
            "▸ serving  POST {base}/v1/features (no cache in the demo: reads go to the store)"
        );
        for (entity, row) in answer
            .entities
            .iter()
            .zip(latest.iter().take(2).map(Some).chain([None]))
        {
            if let Some(row) = row {
                ensure!(
                    entity.source == Source::Store
                        && features
                            .iter()
                            .zip(&entity.values)
                            .all(|(f, v)| row.get(*f) == Some(v)),
                    "served {} differs from the stream's latest row",
                    entity.entity
                );
            } else {
                ensure!(
                    entity.source == Source::Missing,
                    "an unknown card was served as known"
                );
            }
            let values: Vec<String> = features
                .iter()
                .zip(&entity.values)
                .map(|(f, v)| format!("{f}={v}"))
                .collect();
            println!(
                "  {:<14} {:<8} {}  {}",
                entity.entity,
                format!("{:?}", entity.source).to_lowercase(),
                entity
                    .plugin_hash
                    .as_deref()
                    .map_or("(defaults)".to_owned(), |h| format!(
                        "plugin {}…",
                        &h[..12.min(h.len())]
                    )),
                values.join(" ")
            );
        }
        let mut took = Vec::with_capacity(1000);
        let mut n_features = 0;
        for i in 0..1000 {
            let card = cards[i % 2].clone();
            let started = Instant::now();
            let answer = client
                .get_features(&FeatureRequest::new("txn_velocity", [card]))
                .await?;
            took.push(started.elapsed().as_secs_f64() * 1e3);
            n_features = answer.features.len();
        }
        took.sort_by(f64::total_cmp);
        println!(
            "  1000 requests of one card × {} features: p50 {:.2} ms, p99 {:.2} ms over HTTP on loopback\n",
            n_features, took[499], took[989]
        );
        Ok::<_, anyhow::Error>(())
    }
}

/// Labels at the exact times of some of the backfilled rows: each must see the row
/// before (strictly before its time), never the row at it. Builds the training set from
/// the offline store and checks every label against the rows themselves.
async fn training_set(
    work: &std::path::Path,
    offline: &std::path::Path,
    rows: &[Row],
) -> Result<()> {
    const KEY: &str = "card_id";
    const FEATURE: &str = "txn_count_24h";
    let text = |row: &Row, f: &str| {
        row.get(f)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let mut by_key: std::collections::HashMap<String, Vec<(i64, Option<i64>)>> =
        std::collections::HashMap::new();
    for row in rows {
        let t = lockstep_core::decode::parse_timestamp(&text(row, "event_time"))
            .map_err(anyhow::Error::msg)?;
        by_key
            .entry(text(row, KEY))
            .or_default()
            .push((t, row.get(FEATURE).and_then(|v| v.as_i64())));
    }
    let mut csv = format!("label_id,{KEY},label_time\n");
    let mut expected = Vec::new();
    for (i, row) in rows.iter().enumerate().step_by(7) {
        let (key, time) = (text(row, KEY), text(row, "event_time"));
        let at = lockstep_core::decode::parse_timestamp(&time).map_err(anyhow::Error::msg)?;
        // The latest row of the key strictly before the label; of equal times, the last.
        let seen = by_key
            .get(key.as_str())
            .into_iter()
            .flatten()
            .filter(|(t, _)| *t < at)
            .fold(
                None,
                |best: Option<(i64, Option<i64>)>, &(t, v)| match best {
                    Some((b, _)) if b > t => best,
                    _ => Some((t, v)),
                },
            )
            .and_then(|(_, v)| v);
        csv.push_str(&format!("{i},{key},{time}\n"));
        expected.push(seen);
    }
    let labels = work.join("labels.csv");
    std::fs::write(&labels, csv).with_context(|| format!("writing {}", labels.display()))?;
    let out = work.join("training-set.parquet");
    let started = Instant::now();
    let job = lockstep_training::TrainingSetJob::new(
        &labels,
        "label_time",
        vec!["txn_velocity".parse().map_err(anyhow::Error::msg)?],
    );
    let store = crate::offline::open(&offline.to_string_lossy(), &Default::default())?;
    let set = lockstep_training::TrainingSet::plan(&job, &store).await?;
    let written = set.write_parquet(&out).await?;
    // Check what a user gets: the file.
    let file = std::fs::File::open(&out).with_context(|| format!("opening {}", out.display()))?;
    let batches = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?
        .build()?
        .collect::<Result<Vec<_>, _>>()?;
    let column = format!("txn_velocity__{FEATURE}");
    let mut got = Vec::new();
    for b in &batches {
        let values = b
            .column_by_name(&column)
            .context("the training set lacks its feature column")?;
        let values = arrow_array::cast::AsArray::as_primitive::<arrow_array::types::Int64Type>(
            values.as_ref(),
        );
        got.extend(
            (0..values.len())
                .map(|i| arrow_array::Array::is_valid(values, i).then(|| values.value(i))),
        );
    }
    ensure!(
        got == expected,
        "the training set disagrees with the rule (strictly before each label)"
    );
    let seen = got.iter().filter(|v| v.is_some()).count();
    println!(
        "▸ training set  {} labels at the exact times of backfilled rows, joined as of their time → {} in {:.0} ms",
        written.rows,
        out.display(),
        ms(started)
    );
    println!(
        "  point in time ✓  each label sees the row before it, never its own: {seen} with features, {} before their card's first row (null); checked against the rows\n",
        got.len() - seen
    );
    Ok(())
}
