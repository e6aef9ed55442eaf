//! The served-feature log's writer over a local directory: a flush larger than one
//! slice becomes one file of several row groups, every row is found again by its
//! request id, nothing is left in the staging folder, and a body that is not an answer
//! is counted, not written.

use lockstep_client::api::{EntityFeatures, FeatureResponse, Source};
use lockstep_lineage::{FeatureLogWriter, LogOptions, find};
use std::time::Duration;

const AT: i64 = 1_765_000_000_000_000; // an instant in one hour

fn answer(i: usize) -> (String, i64, Vec<u8>) {
    let served_at = AT + i as i64;
    let entity = |e: usize| EntityFeatures {
        entity: format!("card-{i}-{e} \"quoted\""),
        source: if e == 0 {
            Source::Cache
        } else {
            Source::Default
        },
        plugin_hash: (e == 0).then(|| "abc".to_owned()),
        event_time: (e == 0).then(|| "2025-12-06T05:46:40Z".to_owned()),
        values: vec![
            serde_json::json!(i as f64 + 0.25),
            serde_json::json!("NaN"),
            serde_json::json!(null),
        ],
    };
    let response = FeatureResponse {
        group: "cards".into(),
        version: "1.0.0".into(),
        degraded: false,
        features: vec!["a".into(), "b".into(), "c".into()],
        entities: vec![entity(0), entity(1)],
    };
    (
        format!("{served_at:x}-abcd-{i}"),
        served_at,
        serde_json::to_vec(&response).expect("json"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_flush_is_one_file_of_slices_and_every_row_is_found_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let location = dir.path().display().to_string();
    let (queue, writer) = FeatureLogWriter::start(
        &location,
        &Default::default(),
        LogOptions {
            queue_bytes: 64 << 20,
            flush_every: Duration::from_secs(3600),
            flush_answers: 1_000_000,
        },
    )
    .expect("start");
    let answers = 3_000; // 6,000 rows: three slices
    for i in 0..answers {
        let (id, at, body) = answer(i);
        assert!(queue.push(&id, at, &body), "queued");
    }
    assert!(queue.push(&format!("{AT:x}-abcd-bad"), AT, b"not an answer"));
    drop(queue);
    let stats = tokio::task::spawn_blocking(move || writer.join().expect("writer"))
        .await
        .expect("join");
    assert_eq!(stats.answers, answers as u64 + 1);
    assert_eq!(stats.unreadable, 1);
    assert_eq!(stats.rows, 2 * answers as u64);
    assert_eq!(stats.files, 1, "one hour, one flush: one file");
    assert!(stats.cpu_seconds > 0.0, "{stats:?}");

    // The staging folder holds nothing; the file has several row groups.
    let staged: Vec<_> = std::fs::read_dir(dir.path().join(".tmp"))
        .expect("staging folder")
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
    let files: Vec<_> = walk(&dir.path().join("served"));
    assert_eq!(files.len(), 1, "{files:?}");
    let reader = parquet::file::reader::SerializedFileReader::new(
        std::fs::File::open(&files[0]).expect("open"),
    )
    .expect("parquet");
    use parquet::file::reader::FileReader;
    assert!(reader.metadata().num_row_groups() >= 3);

    // Any answer, first, middle or last, is found whole.
    for i in [0, 2_047, 2_048, answers - 1] {
        let id = format!("{:x}-abcd-{i}", AT + i as i64);
        let rows = find(&location, &Default::default(), &id)
            .await
            .expect("find");
        assert_eq!(rows.len(), 2, "{id}");
        assert_eq!(rows[0].entity, format!("card-{i}-0 \"quoted\""));
        assert_eq!(rows[0].source, "cache");
        assert_eq!(rows[0].plugin_hash.as_deref(), Some("abc"));
        assert_eq!(rows[1].source, "default");
        assert_eq!(rows[1].event_time, None);
        assert_eq!(rows[0].features, ["a", "b", "c"]);
        assert_eq!(
            rows[0].values,
            vec![
                serde_json::json!(i as f64 + 0.25),
                serde_json::json!("NaN"),
                serde_json::Value::Null
            ]
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
