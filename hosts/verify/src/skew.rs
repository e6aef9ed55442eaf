//! Skew: the batch host and the stream host over the same events, compared row for
//! row, bit for bit.
//!
//! The batch host reads the events file through a real offline store; the stream host
//! gets the same records in-process (file order, or a seeded shuffle within the
//! allowed lateness), through a real Kinesis stream and the stream host's own service,
//! or from what a `stream run` logged. Events that arrive behind the watermark are
//! late: they are listed apart and left out of both sides (until late-event replay
//! exists, DESIGN §4).

use crate::error::io;
use crate::{Component, VerifyError, batch_rows};
use lockstep_backfill::TableFormat;
use lockstep_core::compare::{Comparison, Row, canonical_rows, compare};
use lockstep_core::decode::decode_json_lines;
use lockstep_runtime::Plugin;
use lockstep_stream::{LateEvent, Record, StreamConfig, StreamProcessor};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Records handed to the stream host per step, as a source would batch them.
const RECORDS_PER_STEP: usize = 500;

/// Where the stream side's rows come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamSide {
    /// A stream host in this process.
    InProcess,
    /// A fresh Kinesis stream at `endpoint` with `shards` shards, read by the stream
    /// host's service.
    Kinesis {
        /// The endpoint.
        endpoint: String,
        /// The stream's shards.
        shards: i32,
    },
    /// What a `stream run` logged in this state directory (`rows.jsonl`,
    /// `late.jsonl`).
    Log(PathBuf),
}

/// A skew check.
#[derive(Debug, Clone)]
pub struct SkewCheck {
    /// The component the batch side runs.
    pub batch: Component,
    /// The component the stream side runs (the same one, or a new build to measure).
    pub stream: Component,
    /// The events, JSON lines, in arrival order.
    pub events: PathBuf,
    /// The stream host's allowed lateness, µs.
    pub allowed_lateness: i64,
    /// Deliver the events in a random order within the lateness, from this seed.
    pub shuffle_seed: Option<u64>,
    /// Where the stream side's rows come from.
    pub side: StreamSide,
    /// How the batch side's store keeps the rows it reads back.
    pub table_format: TableFormat,
}

/// What a skew check found.
#[derive(Debug)]
pub struct SkewReport {
    /// Batch (left) against stream (right).
    pub comparison: Comparison,
    /// Events in the file.
    pub events: usize,
    /// Events the stream host called late, left out of both sides.
    pub late: Vec<LateEvent>,
    /// Duplicates the stream host dropped.
    pub duplicates: u64,
    /// Wall time of the batch side, ms.
    pub batch_ms: f64,
    /// Wall time of the stream side, ms.
    pub stream_ms: f64,
    /// Stream rows after the input's latest event time, left out of the comparison:
    /// wake-ups a stream host took because its watermark followed the clock, which a
    /// batch over the same events (woken up to their end) has no reason to take.
    pub after_end: usize,
}

impl SkewReport {
    /// Whether batch = stream.
    pub fn identical(&self) -> bool {
        self.comparison.identical()
    }
}

/// Runs `check`.
pub async fn run(check: &SkewCheck) -> Result<SkewReport, VerifyError> {
    let (plugin, stream_plugin) = (&check.batch.plugin, &check.stream.plugin);
    if stream_plugin.manifest().features != plugin.manifest().features
        || stream_plugin.manifest().entity_key != plugin.manifest().entity_key
    {
        return Err(VerifyError::DifferentFeatures(
            check.batch.path.clone(),
            check.stream.path.clone(),
        ));
    }
    let m = plugin.manifest();
    let text = std::fs::read_to_string(&check.events).map_err(io("reading", &check.events))?;
    // Every line must be an event: a dirty file would compare two ways of failing.
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l))
        .collect();
    if lines.is_empty() {
        return Err(VerifyError::NoEvents(check.events.clone()));
    }
    let decoded = decode_json_lines(&text, m, None).map_err(|source| VerifyError::NotClean {
        path: check.events.clone(),
        plugin: m.id(),
        source,
    })?;
    let times = event_times(&decoded, m)?;
    let order = arrival_order(&times, check.shuffle_seed, check.allowed_lateness);
    let streamed = match &check.side {
        StreamSide::Log(dir) => read_stream_log(dir, m)?,
        StreamSide::InProcess => {
            stream_rows(stream_plugin, &lines, &order, check.allowed_lateness)?
        }
        StreamSide::Kinesis { endpoint, shards } => {
            let key_index = m
                .input_index(&m.entity_key)
                .ok_or_else(|| VerifyError::Manifest {
                    plugin: m.id(),
                    what: "entity-key",
                })?;
            let column = decoded.column(key_index);
            let keys: Vec<String> = (0..decoded.num_rows())
                .map(|row| {
                    lockstep_core::key::EntityKey::from_array(column.as_ref(), row)
                        .map(|k| k.to_string())
                        .unwrap_or_default()
                })
                .collect();
            stream_rows_kinesis(
                stream_plugin,
                &lines,
                &keys,
                &order,
                check.allowed_lateness,
                endpoint,
                *shards,
            )
            .await?
        }
    };

    // The batch side reads the same events less the late ones, from a file.
    let by_text = !matches!(check.side, StreamSide::InProcess);
    let late = late_positions(&lines, &streamed.late, by_text);
    let scratch = tempfile::tempdir()
        .map_err(io("creating a scratch directory in", &std::env::temp_dir()))?;
    let batch_events = scratch.path().join("events.jsonl");
    {
        let file = std::fs::File::create(&batch_events).map_err(io("creating", &batch_events))?;
        let mut w = std::io::BufWriter::new(file);
        for (at, (_, line)) in lines.iter().enumerate() {
            if !late[at] {
                writeln!(w, "{line}").map_err(io("writing", &batch_events))?;
            }
        }
        w.flush().map_err(io("writing", &batch_events))?;
    }
    let started = Instant::now();
    let batch = batch_rows(&check.batch, &batch_events, 2, check.table_format).await?;
    let batch_ms = started.elapsed().as_secs_f64() * 1e3;
    // The batch side wakes entities up to the end of its events; a stream host whose
    // watermark followed the clock may have gone further (wake-up rows only).
    let end = times
        .iter()
        .zip(&late)
        .filter(|(_, late)| !**late)
        .map(|(t, _)| *t)
        .max();
    let mut stream_rows = streamed.rows;
    let mut after_end = 0;
    if let Some(serde_json::Value::String(end)) = end.map(lockstep_core::rows::format_timestamp) {
        let before = stream_rows.len();
        stream_rows.retain(|row| {
            row.get("event_time")
                .and_then(|t| t.as_str())
                .is_none_or(|t| t <= end.as_str())
        });
        after_end = before - stream_rows.len();
    }
    Ok(SkewReport {
        comparison: compare(&m.entity_key, &batch, &stream_rows, 20),
        after_end,
        events: lines.len(),
        late: streamed.late,
        duplicates: streamed.duplicates,
        batch_ms,
        stream_ms: streamed.millis,
    })
}

/// What a `stream run` logged in its state directory `dir`: its rows, and its late events (left out of
/// the batch side by their record text).
pub fn read_stream_log(dir: &Path, m: &lockstep_abi::Manifest) -> Result<Streamed, VerifyError> {
    let read =
        |name: &str| -> Result<Vec<serde_json::Map<String, serde_json::Value>>, VerifyError> {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path)
                .map_err(io("reading (is it a `stream run` state directory?)", &path))?;
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    serde_json::from_str(l).map_err(|source| VerifyError::NotJson {
                        path: path.clone(),
                        line: i + 1,
                        source,
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
pub fn late_positions(lines: &[(usize, &str)], late: &[LateEvent], by_text: bool) -> Vec<bool> {
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
pub fn event_times(
    decoded: &arrow_array::RecordBatch,
    m: &lockstep_abi::Manifest,
) -> Result<Vec<i64>, VerifyError> {
    use arrow_array::cast::AsArray;
    let index = m
        .input_index(&m.event_time)
        .ok_or_else(|| VerifyError::Manifest {
            plugin: m.id(),
            what: "event-time",
        })?;
    Ok(decoded
        .column(index)
        .as_primitive::<arrow_array::types::TimestampMicrosecondType>()
        .values()
        .to_vec())
}

/// Arrival order of `lines`: file order, or with `seed` each event delayed by a random
/// 0..=`lateness` after its event time and delivered in that order (so none is late
/// for a stream with that allowed lateness).
pub fn arrival_order(times: &[i64], seed: Option<u64>, lateness: i64) -> Vec<usize> {
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
#[derive(Debug)]
pub struct Streamed {
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
pub fn stream_rows(
    plugin: &Plugin,
    lines: &[(usize, &str)],
    order: &[usize],
    lateness: i64,
) -> Result<Streamed, VerifyError> {
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
            return Err(VerifyError::DeadLetters {
                count: out.dead.len() as u64,
                first: format!("line {}: {}", dead.sequence, dead.reason),
            });
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
) -> Result<Streamed, VerifyError> {
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
    let failed = |action: &'static str| {
        let (stream, endpoint) = (stream.clone(), endpoint.to_owned());
        move |source| VerifyError::Kinesis {
            stream,
            endpoint,
            action,
            source: Box::new(source),
        }
    };
    kinesis
        .create_stream(&stream, shards.max(1))
        .await
        .map_err(failed("creating it"))?;
    let result = async {
        kinesis
            .wait_active(&stream)
            .await
            .map_err(failed("waiting for it to be active"))?;
        let records: Vec<(String, Vec<u8>)> = order
            .iter()
            .map(|&i| (keys[i].clone(), lines[i].1.as_bytes().to_vec()))
            .collect();
        kinesis
            .put_ordered(&stream, &records)
            .await
            .map_err(failed("putting the events"))?;
        let scratch = tempfile::tempdir().map_err(io(
            "creating a scratch state directory in",
            &std::env::temp_dir(),
        ))?;
        let state = scratch.path().join("state");
        let store = lockstep_online::EmbeddedStore::open(scratch.path().join("online"))?;
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
        let summary = service
            .run(Arc::new(AtomicBool::new(false)))
            .await
            .map_err(|source| VerifyError::Service {
                stream: stream.clone(),
                source,
            })?;
        if summary.stats.dead > 0 {
            let first = std::fs::read_to_string(&summary.dead_log)
                .ok()
                .and_then(|t| t.lines().next().map(str::to_owned))
                .unwrap_or_default();
            return Err(VerifyError::DeadLetters {
                count: summary.stats.dead,
                first,
            });
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
}
