//! `lockstep skew-check`: the batch host and the stream host over the same events,
//! compared row for row, bit for bit ([`lockstep_verify::skew`] runs the check; this
//! module takes the arguments and prints the report).

use anyhow::Result;
use lockstep_verify::Component;
use lockstep_verify::skew::{SkewCheck, StreamSide};
use std::path::PathBuf;

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

/// Runs the check; `Ok(false)` means skew was found (and reported).
pub async fn run(args: &Args) -> Result<bool> {
    let runtime = args.runtime.runtime()?;
    let batch = Component {
        plugin: runtime.load_file(&args.plugin)?,
        path: args.plugin.clone(),
    };
    let stream = match &args.against {
        Some(path) => Component {
            plugin: runtime.load_file(path)?,
            path: path.clone(),
        },
        None => batch.clone(),
    };
    let side = match (&args.stream_log, &args.kinesis_endpoint) {
        (Some(dir), _) => StreamSide::Log(dir.clone()),
        (None, Some(endpoint)) => StreamSide::Kinesis {
            endpoint: endpoint.clone(),
            shards: args.kinesis_shards,
        },
        (None, None) => StreamSide::InProcess,
    };
    let check = SkewCheck {
        batch,
        stream,
        events: args.events.clone(),
        allowed_lateness: args.allowed_lateness,
        shuffle_seed: args.shuffle_seed,
        side,
        table_format: args.table_format.into(),
    };
    let report = lockstep_verify::skew::run(&check).await?;
    let (plugin, stream_plugin) = (&check.batch.plugin, &check.stream.plugin);
    let m = plugin.manifest();
    let c = &report.comparison;
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
            "events": report.events,
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
            "late_events": report.late.len(),
            "late": report.late.iter().take(20).map(|l| l.to_json()).collect::<Vec<_>>(),
            "stream_duplicates": report.duplicates,
            "stream_rows_after_end": report.after_end,
            "allowed_lateness_us": args.allowed_lateness,
            "arrival": arrival,
            "batch_ms": report.batch_ms,
            "stream_ms": report.stream_ms,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(c.identical());
    }
    let mut late_note = if report.late.is_empty() {
        format!("0 late events (allowed lateness {lateness})")
    } else {
        format!(
            "{} late events left out of both sides (allowed lateness {lateness}; late-event replay is not built yet)",
            report.late.len()
        )
    };
    if report.after_end > 0 {
        late_note.push_str(&format!(
            "; {} stream wake-up rows after the input's last event not compared (its watermark followed the clock)",
            report.after_end
        ));
    }
    if c.identical() {
        println!(
            "skew-check {}: batch = stream ✓  {} rows compared, {} entities, {} events, {late_note}; arrival {arrival}; batch {:.0} ms, stream {:.0} ms",
            m.id(),
            c.left_rows,
            c.entities,
            report.events,
            report.batch_ms,
            report.stream_ms
        );
    } else {
        println!("skew-check {}: SKEW ✗  batch ≠ stream", m.id());
        print!("{}", c.render("batch", "stream"));
        println!("{late_note}; arrival {arrival}");
    }
    for l in report.late.iter().take(10) {
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
    fn lateness_parses_human_durations() {
        assert_eq!(parse_lateness("5s"), Ok(5_000_000));
        assert_eq!(parse_lateness("2m"), Ok(120_000_000));
        assert!(parse_lateness("soon").is_err());
    }
}
