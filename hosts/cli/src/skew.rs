//! `lockstep skew-check`: the batch host and the stream host over the same events,
//! compared row for row, bit for bit.
//!
//! The batch host reads the events file through a real offline store; the stream host
//! gets the same records from an in-process source, in file order or, with a shuffle
//! seed, in a random arrival order within the allowed lateness. Events that arrive
//! behind the watermark are late: they are listed apart and left out of both sides
//! (until late-event replay exists, DESIGN §4).

use crate::golden::batch_rows;
use anyhow::{Context, Result, bail};
use lockstep_core::compare::{Row, canonical_rows, compare};
use lockstep_core::decode::decode_json_lines;
use lockstep_runtime::Plugin;
use lockstep_stream::{LateEvent, Record, StreamConfig, StreamProcessor};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Records handed to the stream host per step, as a source would batch them.
const RECORDS_PER_STEP: usize = 500;

/// What `skew-check` takes.
#[derive(clap::Args)]
pub struct Args {
    /// The plugin component (.wasm) both hosts run.
    #[arg(long)]
    pub plugin: PathBuf,
    /// Events, one JSON object per line, in arrival order.
    #[arg(long)]
    pub events: PathBuf,
    /// The stream host's allowed lateness (e.g. 5s, 2m).
    #[arg(long, default_value = "5m", value_parser = parse_lateness)]
    pub allowed_lateness: i64,
    /// Deliver the events to the stream host in a random order (within the
    /// allowed lateness) drawn from this seed, instead of file order.
    #[arg(long)]
    pub shuffle_seed: Option<u64>,
    /// Run the stream side with this component instead: measures what a new build
    /// of the plugin would change.
    #[arg(long)]
    pub against: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Send the stream side through Kinesis at this endpoint (a fresh stream is
    /// created and deleted; credentials and region from the AWS environment).
    #[arg(long)]
    pub kinesis_endpoint: Option<String>,
    /// Shards of that stream.
    #[arg(long, default_value_t = 2)]
    pub kinesis_shards: i32,
    /// Instead of streaming here, compare with what `stream run` logged in this
    /// state directory (rows.jsonl; late.jsonl is left out of the batch side).
    #[arg(long, conflicts_with_all = ["kinesis_endpoint", "shuffle_seed", "against"])]
    pub stream_log: Option<PathBuf>,
    /// How the batch side keeps the rows it reads back: `plain` hour files or a
    /// `delta` table (read through its log, as training sets read it).
    #[arg(long, value_enum, default_value = "plain")]
    pub table_format: crate::offline::TableFormat,
    #[command(flatten)]
    pub runtime: crate::plugin::RuntimeArgs,
}

/// What a `stream run` logged in `dir`: its rows, and its late events (left out of
/// the batch side by their record text).
fn read_stream_log(dir: &std::path::Path, m: &lockstep_abi::Manifest) -> Result<Streamed> {
    let read = |name: &str| -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (a `stream run` state directory?)",
                path.display()
            )
        })?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).with_context(|| {
                    format!("{} line {}: not a JSON object", path.display(), i + 1)
                })
            })
            .collect()
    };
    let mut rows = read("rows.jsonl")?;
    lockstep_core::compare::canonical_order(&mut rows, &m.entity_key);
    let late = read("late.jsonl")?
        .into_iter()
        .map(|l| LateEvent {
            shard: l
                .get("shard")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned(),
            sequence: l
                .get("sequence")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned(),
            event_time: l
                .get("event_time")
                .and_then(|v| v.as_i64())
                .unwrap_or_default(),
            watermark: l
                .get("watermark")
                .and_then(|v| v.as_i64())
                .unwrap_or_default(),
            record: l
                .get("record")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned(),
        })
        .collect();
    Ok(Streamed {
        rows,
        batches: Vec::new(),
        late,
        duplicates: 0,
        millis: 0.0,
    })
}

/// Which of `lines` (numbered from 1) the stream host called late. Here late events are
/// named by line number; in a service's log only by their text, so each logged late
/// record takes away one line of that text, the last one not yet taken (the copy that
/// arrived later). Copies of a text are the same event, so which copy is taken does not
/// change the batch side; taking them one by one keeps the original of a late copy.
fn late_positions(lines: &[(usize, &str)], late: &[LateEvent], by_text: bool) -> Vec<bool> {
    let mut out = vec![false; lines.len()];
    if by_text {
        let mut wanted: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for l in late {
            *wanted.entry(l.record.trim_end()).or_default() += 1;
        }
        for (at, (_, line)) in lines.iter().enumerate().rev() {
            if let Some(n) = wanted.get_mut(line.trim_end())
                && *n > 0
            {
                *n -= 1;
                out[at] = true;
            }
        }
    } else {
        let numbers: std::collections::HashSet<&str> =
            late.iter().map(|l| l.sequence.as_str()).collect();
        for (at, (n, _)) in lines.iter().enumerate() {
            out[at] = numbers.contains(n.to_string().as_str());
        }
    }
    out
}

/// The event time of each decoded event (UTC µs).
pub(crate) fn event_times(
    decoded: &arrow_array::RecordBatch,
    m: &lockstep_abi::Manifest,
) -> Result<Vec<i64>> {
    use arrow_array::cast::AsArray;
    let index = m
        .input_index(&m.event_time)
        .context("the manifest has no event-time field")?;
    Ok(decoded
        .column(index)
        .as_primitive::<arrow_array::types::TimestampMicrosecondType>()
        .values()
        .to_vec())
}

/// Arrival order of `lines`: file order, or with `seed` each event delayed by a random
/// 0..=`lateness` after its event time and delivered in that order (so none is late
/// for a stream with that allowed lateness).
pub(crate) fn arrival_order(times: &[i64], seed: Option<u64>, lateness: i64) -> Vec<usize> {
    let Some(seed) = seed else {
        return (0..times.len()).collect();
    };
    let mut rng = lockstep_gen::Rng::new(seed);
    let mut keyed: Vec<(i64, usize)> = times
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            (
                t.saturating_add(rng.below(lateness.max(0) as u64 + 1) as i64),
                i,
            )
        })
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// What the stream host made of the events.
pub(crate) struct Streamed {
    /// Its rows, in canonical order.
    pub rows: Vec<Row>,
    /// The same rows as emitted, batch by batch.
    pub batches: Vec<arrow_array::RecordBatch>,
    /// Events that arrived behind the watermark.
    pub late: Vec<LateEvent>,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Wall time of decoding, ordering and applying (not of the comparison's rows).
    pub millis: f64,
}

/// Streams `lines` (numbered) to a stream host in `order`, then drains it.
pub(crate) fn stream_rows(
    plugin: &Plugin,
    lines: &[(usize, &str)],
    order: &[usize],
    lateness: i64,
) -> Result<Streamed> {
    let started = Instant::now();
    let mut processor = StreamProcessor::new(
        plugin,
        StreamConfig {
            allowed_lateness: lateness,
            ..StreamConfig::default()
        },
    )?;
    let sequences: Vec<String> = lines.iter().map(|(n, _)| n.to_string()).collect();
    let mut batches = Vec::new();
    let mut late = Vec::new();
    for step in order.chunks(RECORDS_PER_STEP) {
        let records: Vec<Record> = step
            .iter()
            .map(|&i| Record {
                shard: "in-process",
                sequence: &sequences[i],
                data: lines[i].1.as_bytes(),
                partition_key: None,
            })
            .collect();
        let out = processor.push(&records)?;
        if let Some(dead) = out.dead.first() {
            bail!(
                "the stream host could not read line {}: {}",
                dead.sequence,
                dead.reason
            );
        }
        late.extend(out.late);
        batches.push(out.rows);
    }
    batches.push(processor.drain()?.rows);
    let millis = started.elapsed().as_secs_f64() * 1e3;
    let rows = canonical_rows(&batches, plugin.manifest());
    Ok(Streamed {
        rows,
        batches,
        late,
        duplicates: processor.stats().duplicates,
        millis,
    })
}

/// Streams the events through a real Kinesis stream and the stream host's own service:
/// a fresh stream with `shards` shards, the records put in arrival order keyed by
/// entity, then `StreamService` (its Kinesis source, ordering, checkpoints and logs)
/// run until every shard is caught up, into an embedded online store in a scratch
/// directory. Its row and late logs are what is compared, as with `--stream-log`. The
/// stream is deleted afterwards.
async fn stream_rows_kinesis(
    plugin: &Plugin,
    lines: &[(usize, &str)],
    keys: &[String],
    order: &[usize],
    lateness: i64,
    endpoint: &str,
    shards: i32,
) -> Result<Streamed> {
    use lockstep_kinesis::{Kinesis, KinesisOptions};
    use lockstep_service::{ServiceConfig, StreamService};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let options = KinesisOptions {
        endpoint: Some(endpoint.to_owned()),
        ..KinesisOptions::default()
    };
    let kinesis = Kinesis::connect(&options).await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let stream = format!("lockstep-skew-check-{}-{nanos}", std::process::id());
    kinesis
        .create_stream(&stream, shards.max(1))
        .await
        .with_context(|| format!("creating Kinesis stream {stream} at {endpoint}"))?;
    let result = async {
        kinesis
            .wait_active(&stream)
            .await
            .with_context(|| format!("waiting for Kinesis stream {stream}"))?;
        let records: Vec<(String, Vec<u8>)> = order
            .iter()
            .map(|&i| (keys[i].clone(), lines[i].1.as_bytes().to_vec()))
            .collect();
        kinesis
            .put_ordered(&stream, &records)
            .await
            .with_context(|| format!("putting {} records to {stream}", records.len()))?;
        let scratch = tempfile::tempdir().context("creating a scratch state directory")?;
        let state = scratch.path().join("state");
        let store = lockstep_online::EmbeddedStore::open(scratch.path().join("online"))
            .context("opening a scratch online store")?;
        let mut config = ServiceConfig::new(&stream, state.clone());
        config.kinesis = options.clone();
        config.stream_config = StreamConfig {
            allowed_lateness: lateness,
            ..StreamConfig::default()
        };
        // Every record was put before the service starts: caught up means all read,
        // and the stream has ended, so what the reorder buffers hold is applied.
        config.stop_when_idle = true;
        config.drain_on_stop = true;
        config.handle_signals = false;
        config.idle_poll = std::time::Duration::from_millis(20);
        let group = lockstep_online::GroupRef::of(plugin.manifest(), plugin.hash());
        let service = StreamService::new(plugin.clone(), Arc::new(store), group, config);
        let started = Instant::now();
        let io = tokio::runtime::Handle::current();
        let summary =
            tokio::task::spawn_blocking(move || service.run(&io, Arc::new(AtomicBool::new(false))))
                .await
                .context("the stream host's thread stopped")?
                .with_context(|| format!("the stream host on Kinesis stream {stream}"))?;
        if summary.stats.dead > 0 {
            let first = std::fs::read_to_string(&summary.dead_log)
                .ok()
                .and_then(|t| t.lines().next().map(str::to_owned))
                .unwrap_or_default();
            bail!(
                "the stream host dead-lettered {} records, e.g. {first}",
                summary.stats.dead
            );
        }
        let mut streamed = read_stream_log(&state, plugin.manifest())?;
        streamed.duplicates = summary.stats.duplicates as u64;
        streamed.millis = started.elapsed().as_secs_f64() * 1e3;
        Ok(streamed)
    }
    .await;
    // Best effort: a stream left behind costs nothing on a local server.
    let _ = kinesis.delete_stream(&stream).await;
    result
}

/// Runs the check; `Ok(false)` means skew was found (and reported).
pub async fn run(args: &Args) -> Result<bool> {
    let runtime = args.runtime.runtime()?;
    let plugin = runtime.load_file(&args.plugin)?;
    let stream_plugin = match &args.against {
        Some(path) => runtime.load_file(path)?,
        None => plugin.clone(),
    };
    if stream_plugin.manifest().features != plugin.manifest().features
        || stream_plugin.manifest().entity_key != plugin.manifest().entity_key
    {
        bail!(
            "{} and {} do not emit the same features; nothing to compare",
            args.plugin.display(),
            args.against.as_deref().unwrap_or(&args.plugin).display()
        );
    }
    let m = plugin.manifest();
    let text = std::fs::read_to_string(&args.events)
        .with_context(|| format!("reading {}", args.events.display()))?;
    // Every line must be an event: a dirty file would compare two ways of failing.
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l))
        .collect();
    if lines.is_empty() {
        bail!("{} holds no events", args.events.display());
    }
    let decoded = decode_json_lines(&text, m, None).with_context(|| {
        format!(
            "{} is not clean input for {}; skew-check compares clean events \
             (use `lockstep batch run --rejects` to separate bad records)",
            args.events.display(),
            m.id()
        )
    })?;
    let times = event_times(&decoded, m)?;
    let order = arrival_order(&times, args.shuffle_seed, args.allowed_lateness);
    let from_log = args.stream_log.is_some();
    let streamed = match (&args.stream_log, &args.kinesis_endpoint) {
        (Some(dir), _) => read_stream_log(dir, m)?,
        (None, None) => stream_rows(&stream_plugin, &lines, &order, args.allowed_lateness)?,
        (None, Some(endpoint)) => {
            let key_index = m
                .input_index(&m.entity_key)
                .context("the manifest has no entity-key field")?;
            let column = decoded.column(key_index);
            let keys: Vec<String> = (0..decoded.num_rows())
                .map(|row| {
                    lockstep_core::key::EntityKey::from_array(column.as_ref(), row)
                        .map(|k| k.to_string())
                        .unwrap_or_default()
                })
                .collect();
            stream_rows_kinesis(
                &stream_plugin,
                &lines,
                &keys,
                &order,
                args.allowed_lateness,
                endpoint,
                args.kinesis_shards,
            )
            .await?
        }
    };

    // The batch side reads the same events less the late ones, from a file.
    let late = late_positions(&lines, &streamed.late, from_log);
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let batch_events = scratch.path().join("events.jsonl");
    {
        let mut w = std::io::BufWriter::new(
            std::fs::File::create(&batch_events)
                .with_context(|| format!("creating {}", batch_events.display()))?,
        );
        for (at, (_, line)) in lines.iter().enumerate() {
            if !late[at] {
                writeln!(w, "{line}")?;
            }
        }
        w.flush()?;
    }
    let started = Instant::now();
    let batch = batch_rows(
        &(plugin.clone(), args.plugin.clone()),
        &batch_events,
        2,
        args.table_format,
    )
    .await?;
    let batch_ms = started.elapsed().as_secs_f64() * 1e3;

    let c = compare(&m.entity_key, &batch, &streamed.rows, 20);
    let mut arrival = match args.shuffle_seed {
        Some(seed) => format!("shuffled (seed {seed})"),
        None => "file order".to_owned(),
    };
    match (&args.stream_log, &args.kinesis_endpoint) {
        (Some(dir), _) => {
            arrival = format!("as logged by a stream run in {}", dir.display());
        }
        (None, Some(endpoint)) => arrival.push_str(&format!(
            ", through Kinesis at {endpoint} ({} shards)",
            args.kinesis_shards
        )),
        (None, None) => arrival.push_str(", in-process"),
    }
    let lateness = humantime::format_duration(std::time::Duration::from_micros(
        args.allowed_lateness.max(0) as u64,
    ));
    if args.json {
        let doc = serde_json::json!({
            "plugin": m.id(),
            "plugin_sha256": plugin.hash(),
            "stream_plugin_sha256": stream_plugin.hash(),
            "events": lines.len(),
            "identical": c.identical(),
            "rows_compared": c.left_rows.max(c.right_rows),
            "batch_rows": c.left_rows,
            "stream_rows": c.right_rows,
            "entities": c.entities,
            "differing_rows": c.differing_rows,
            "only_batch": c.only_left,
            "only_stream": c.only_right,
            "per_feature": c.per_column,
            "first_differences": c.first.iter().map(|d| serde_json::json!({
                "entity": d.entity, "event_time": d.event_time, "nth": d.nth,
                "feature": d.column, "batch": d.left, "stream": d.right,
            })).collect::<Vec<_>>(),
            "late_events": streamed.late.len(),
            "late": streamed.late.iter().take(20).map(|l| l.to_json()).collect::<Vec<_>>(),
            "stream_duplicates": streamed.duplicates,
            "allowed_lateness_us": args.allowed_lateness,
            "arrival": arrival,
            "batch_ms": batch_ms,
            "stream_ms": streamed.millis,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(c.identical());
    }
    let late_note = if streamed.late.is_empty() {
        format!("0 late events (allowed lateness {lateness})")
    } else {
        format!(
            "{} late events left out of both sides (allowed lateness {lateness}; late-event replay is not built yet)",
            streamed.late.len()
        )
    };
    if c.identical() {
        println!(
            "skew-check {}: batch = stream ✓  {} rows compared, {} entities, {} events, {late_note}; arrival {arrival}; batch {:.0} ms, stream {:.0} ms",
            m.id(),
            c.left_rows,
            c.entities,
            lines.len(),
            batch_ms,
            streamed.millis
        );
    } else {
        println!("skew-check {}: SKEW ✗  batch ≠ stream", m.id());
        print!("{}", c.render("batch", "stream"));
        println!("{late_note}; arrival {arrival}");
    }
    for l in streamed.late.iter().take(10) {
        println!(
            "  late: line {} at {} was {} behind the watermark",
            l.sequence,
            match lockstep_core::rows::format_timestamp(l.event_time) {
                serde_json::Value::String(at) => at,
                other => other.to_string(),
            },
            humantime::format_duration(std::time::Duration::from_micros(
                (l.watermark - l.event_time).max(0) as u64
            ))
        );
    }
    Ok(c.identical())
}

/// Parses durations like `5s`, `500ms`, `2m`, `1h` into microseconds.
pub fn parse_lateness(text: &str) -> Result<i64, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like 5s, 2m or 1h: {e}"))
        .and_then(|d| i64::try_from(d.as_micros()).map_err(|_| format!("`{text}` is too long")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffled_arrival_is_a_permutation_within_the_lateness() {
        let times: Vec<i64> = (0..1_000).map(|i| i * 1_000).collect();
        let order = arrival_order(&times, Some(3), 50_000);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1_000).collect::<Vec<_>>());
        assert_ne!(order, sorted, "nothing moved");
        let mut max_seen = i64::MIN;
        for &i in &order {
            assert!(times[i] >= max_seen.saturating_sub(50_000));
            max_seen = max_seen.max(times[i]);
        }
        assert_eq!(arrival_order(&times, None, 50_000), sorted);
    }

    #[test]
    fn a_logged_late_copy_takes_away_one_line_not_its_applied_original() {
        let lines = [(1, "a"), (2, "b"), (3, "a"), (4, "c"), (5, "a")];
        let late = |record: &str, sequence: &str| LateEvent {
            shard: "s".into(),
            sequence: sequence.into(),
            event_time: 0,
            watermark: 0,
            record: record.into(),
        };
        // Two of the three copies of "a" were late: one copy stays on the batch side.
        let by_text = late_positions(&lines, &[late("a", "x"), late("a ", "y")], true);
        assert_eq!(by_text, [false, false, true, false, true]);
        assert_eq!(
            late_positions(&lines, &[late("a", "3")], false),
            [false, false, true, false, false]
        );
        assert_eq!(late_positions(&lines, &[], true), [false; 5]);
    }

    #[test]
    fn lateness_parses_human_durations() {
        assert_eq!(parse_lateness("5s"), Ok(5_000_000));
        assert_eq!(parse_lateness("2m"), Ok(120_000_000));
        assert!(parse_lateness("soon").is_err());
    }
}
