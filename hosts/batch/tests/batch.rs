//! The batch host against the reference executor, over real files.

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::parquet::arrow::ArrowWriter;
use lockstep_batch::{BatchJob, SourceFormat};
use lockstep_core::decode::decode_json_lines;
use lockstep_core::key::StateMap;
use lockstep_core::rows::row_json;
use lockstep_executor::Executor;
use lockstep_runtime::{Plugin, Runtime, RuntimeConfig};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The built `txn_velocity` component: its path and bytes.
fn component() -> &'static (String, Vec<u8>) {
    static BUILT: OnceLock<(String, Vec<u8>)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/txn_velocity");
        let built = lockstep_build::build(&dir, &Default::default()).expect("build plugin");
        let bytes = std::fs::read(&built.path).expect("read component");
        (built.path.to_string_lossy().into_owned(), bytes)
    })
}

fn plugin() -> Plugin {
    Runtime::new(RuntimeConfig::default())
        .expect("runtime")
        .load(&component().1)
        .expect("load")
}

fn sorted_json(rows: &[RecordBatch]) -> Vec<String> {
    let mut out: Vec<String> = rows
        .iter()
        .flat_map(|b| {
            (0..b.num_rows()).map(move |r| serde_json::Value::Object(row_json(b, r)).to_string())
        })
        .collect();
    out.sort();
    out
}

/// Generated transactions as a Parquet file (columns as the plugin reads them), a CSV
/// file and a JSON-lines file, plus the reference rows and states.
struct Fixture {
    dir: tempfile::TempDir,
    expected: Vec<String>,
    states: StateMap,
    events: usize,
}

fn fixture(events: usize) -> Fixture {
    let plugin = plugin();
    let t = lockstep_gen::transactions(events, 300, 21);
    let jsonl = t.to_json_lines();
    let batch = decode_json_lines(&jsonl, plugin.manifest(), None).expect("decode");
    let mut states = StateMap::default();
    let reference = Executor::new(&plugin)
        .expect("executor")
        .run_to_end(&batch, &mut states)
        .expect("reference");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("events.jsonl"), &jsonl).expect("jsonl");
    // Parquet in two files, so the scan has several partitions.
    let half = batch.num_rows() / 2;
    for (i, part) in [
        batch.slice(0, half),
        batch.slice(half, batch.num_rows() - half),
    ]
    .iter()
    .enumerate()
    {
        let file =
            std::fs::File::create(dir.path().join(format!("part-{i}.parquet"))).expect("create");
        let mut w = ArrowWriter::try_new(file, part.schema(), None).expect("writer");
        w.write(part).expect("write");
        w.close().expect("close");
    }
    let mut csv = String::from("card_id,ts,amount,merchant,txn_id\n");
    for i in 0..t.len() {
        let ts = chrono_free_rfc3339(t.ts[i]);
        csv.push_str(&format!(
            "{},{},{},{},{}\n",
            t.card_id[i], ts, t.amount[i], t.merchant[i], t.txn_id[i]
        ));
    }
    std::fs::write(dir.path().join("events.csv"), csv).expect("csv");
    Fixture {
        expected: sorted_json(&[reference.rows]),
        states,
        events: batch.num_rows(),
        dir,
    }
}

/// RFC 3339 for whole-second UTC micros (the generator emits whole seconds).
fn chrono_free_rfc3339(micros: i64) -> String {
    match lockstep_core::rows::format_timestamp(micros) {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

fn job(source: &Path, format: SourceFormat, partitions: usize) -> BatchJob {
    BatchJob {
        partitions,
        keep_states: true,
        ..BatchJob::new(component().0.clone(), source.to_string_lossy(), format)
    }
}

/// A job's output with its rows collected in memory.
#[derive(Debug)]
struct Collected {
    rows: Vec<RecordBatch>,
    states: lockstep_core::key::StateMap,
    stats: lockstep_executor::RunStats,
    rejects: Vec<lockstep_batch::SourceReject>,
}

async fn run(job: &BatchJob, plugin: &Plugin) -> Result<Collected, lockstep_batch::BatchError> {
    let mut rows = Vec::new();
    let out = lockstep_batch::run(job, plugin, &mut rows).await?;
    assert_eq!(
        job.progress.snapshot().1,
        rows.iter().map(|b| b.num_rows() as u64).sum::<u64>(),
        "progress counts the rows written"
    );
    Ok(Collected {
        rows,
        states: out.states,
        stats: out.stats,
        rejects: out.rejects,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_and_partitioning_equals_the_reference() {
    let f = fixture(6_000);
    let plugin = plugin();
    let cases = [
        (f.dir.path().join("*.parquet"), SourceFormat::Parquet),
        (f.dir.path().join("events.csv"), SourceFormat::Csv),
        (f.dir.path().join("events.jsonl"), SourceFormat::Json),
    ];
    for (source, format) in cases {
        for partitions in [1, 3] {
            let out = run(&job(&source, format, partitions), &plugin)
                .await
                .unwrap_or_else(|e| panic!("{format:?}/{partitions}: {e}"));
            assert!(
                out.rejects.is_empty(),
                "{format:?}: {:?}",
                out.rejects.first()
            );
            assert_eq!(out.stats.events_in, f.events, "{format:?}/{partitions}");
            assert_eq!(
                sorted_json(&out.rows),
                f.expected,
                "{format:?} with {partitions} partitions"
            );
            assert_eq!(
                out.states, f.states,
                "final states, {format:?}/{partitions}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_memory_limit_spills_and_gives_the_same_rows() {
    // About 40 MB of events and order columns through a 48 MiB pool: the sorts must spill.
    let f = fixture(400_000);
    let spill = tempfile::tempdir().expect("spill dir");
    let mut limited = job(&f.dir.path().join("*.parquet"), SourceFormat::Parquet, 2);
    limited.memory_limit = Some(48 << 20);
    limited.spill_dir = Some(spill.path().to_owned());
    // Final states are not asked for: they are dropped as entities finish.
    limited.keep_states = false;
    let out = run(&limited, &plugin())
        .await
        .expect("completes within 48 MiB by spilling");
    assert_eq!(sorted_json(&out.rows), f.expected);
    assert!(out.states.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_shapes_other_column_names_into_the_input_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let card: ArrayRef = Arc::new(StringArray::from(vec!["c1", "c1", "c2"]));
    let at: ArrayRef =
        Arc::new(TimestampMicrosecondArray::from(vec![0, 60_000_000, 0]).with_timezone("UTC"));
    let cents: ArrayRef = Arc::new(Float64Array::from(vec![1000.0, 250.0, 5.0]));
    let shop: ArrayRef = Arc::new(StringArray::from(vec!["m", "n", "m"]));
    let batch =
        RecordBatch::try_from_iter([("card", card), ("at", at), ("cents", cents), ("shop", shop)])
            .expect("batch");
    let file = std::fs::File::create(dir.path().join("raw.parquet")).expect("create");
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
    let mut j = job(&dir.path().join("raw.parquet"), SourceFormat::Parquet, 2);
    j.sql = Some("SELECT card AS card_id, at AS ts, cents / 100.0 AS amount, shop AS merchant, CAST(NULL AS VARCHAR) AS txn_id FROM source".into());
    let out = run(&j, &plugin()).await.expect("run");
    let rows = sorted_json(&out.rows);
    assert_eq!(rows.len(), 3);
    assert!(
        rows[1].contains(r#""txn_count_1h":2,"txn_sum_1h":12.5"#),
        "{}",
        rows[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sources_fail_naming_the_column_or_reject_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("bad.csv");
    std::fs::write(&csv, "card_id,ts,amount,merchant\nc1,2024-01-01T00:00:00Z,1.5,m\n,2024-01-01T00:00:01Z,2.5,m\nc2,yesterday,3.5,m\n").expect("csv");
    let out = run(&job(&csv, SourceFormat::Csv, 1), &plugin())
        .await
        .expect("bad rows are rejects, not failures");
    assert_eq!(out.stats.events_in, 1);
    let mut reasons: Vec<(String, String)> = out
        .rejects
        .iter()
        .map(|r| (r.column.clone(), r.reason.clone()))
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!(reasons[0].0, "card_id");
    assert!(
        reasons[1]
            .1
            .contains("\"yesterday\" is not an RFC 3339 timestamp"),
        "{reasons:?}"
    );

    let missing = dir.path().join("missing.csv");
    std::fs::write(&missing, "card_id,ts,amount\nc1,2024-01-01T00:00:00Z,1.5\n").expect("csv");
    let err = run(&job(&missing, SourceFormat::Csv, 1), &plugin())
        .await
        .expect_err("no merchant column");
    assert!(
        err.to_string()
            .contains("column `merchant`: is missing from the source"),
        "{err}"
    );

    let err = run(
        &job(
            &dir.path().join("nothing-here-*.parquet"),
            SourceFormat::Parquet,
            1,
        ),
        &plugin(),
    )
    .await;
    assert!(err.is_err(), "a glob that matches nothing is an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_stream_and_bad_lines_are_rejects_naming_line_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.jsonl");
    let good = lockstep_gen::transactions(150_000, 500, 3).to_json_lines();
    let mut lines: Vec<String> = good.lines().map(str::to_owned).collect();
    lines.insert(10, "{not json".into());
    lines.insert(
        70_000,
        r#"{"card_id":"c","ts":"yesterday","amount":1.0,"merchant":"m"}"#.into(),
    );
    lines.insert(100_000, String::new());
    std::fs::write(&path, lines.join("\n")).expect("write");
    let j = job(&path, SourceFormat::Json, 2);
    let out = run(&j, &plugin()).await.expect("run");
    assert_eq!(out.stats.events_in, 150_000);
    let mut rejects: Vec<(String, String)> = out
        .rejects
        .iter()
        .map(|r| (r.column.clone(), r.reason.clone()))
        .collect();
    rejects.sort();
    assert_eq!(rejects.len(), 2, "{rejects:?}");
    assert!(rejects[0].1.contains("line 11"), "{rejects:?}");
    assert_eq!(rejects[1].0, "ts");
    assert!(rejects[1].1.contains("line 70001"), "{rejects:?}");
    let (read, _, rejected) = j.progress.snapshot();
    assert_eq!((read, rejected), (150_002, 2));

    let reference = {
        let events = decode_json_lines(&good, plugin().manifest(), None).expect("decode");
        Executor::new(&plugin())
            .expect("executor")
            .run_to_end(&events, &mut StateMap::default())
            .expect("run")
    };
    assert_eq!(sorted_json(&out.rows), sorted_json(&[reference.rows]));
}
