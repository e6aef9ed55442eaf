//! The training-set join over a real offline store, against a naive reference, and
//! its answers to bad input.

mod common;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use common::{Row, write_group, write_labels};
use lockstep_offline::OfflineStore;
use lockstep_training::{AsOf, GroupSelection, TrainingError, TrainingSet, TrainingSetJob};
use proptest::prelude::*;
use std::path::Path;

const QUARTER_HOUR: i64 = 15 * 60 * 1_000_000;
const BASE: i64 = 1_704_067_200_000_000; // 2024-01-01T00:00:00Z

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn run(job: &TrainingSetJob, store: &OfflineStore) -> Result<Vec<RecordBatch>, TrainingError> {
    runtime().block_on(async {
        let set = TrainingSet::plan(job, store).await?;
        set.collect().await
    })
}

/// (id, spend__total, spend__count) per output row, in output order.
type Out = Vec<(i64, Option<f64>, Option<i64>)>;

fn read_out(batches: &[RecordBatch], group: &str) -> Out {
    let mut out = Vec::new();
    for b in batches {
        let id = b.column_by_name("id").unwrap().as_primitive::<Int64Type>();
        let total = b
            .column_by_name(&format!("{group}__total"))
            .unwrap()
            .as_primitive::<Float64Type>();
        let count = b
            .column_by_name(&format!("{group}__count"))
            .unwrap()
            .as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            out.push((
                id.value(i),
                total.is_valid(i).then(|| total.value(i)),
                count.is_valid(i).then(|| count.value(i)),
            ));
        }
    }
    out
}

/// The rule stated plainly: of the rows of the label's key visible at its time, the
/// latest, the last emitted among equal times; nothing if that is a deletion or too old.
fn naive(rows: &[Row], user: &str, t: i64, spec: AsOf) -> (Option<f64>, Option<i64>) {
    let mut best: Option<&Row> = None;
    for r in rows {
        let visible = if spec.inclusive {
            r.time <= t
        } else {
            r.time < t
        };
        if r.user == user && visible && best.is_none_or(|b| r.time >= b.time) {
            best = Some(r);
        }
    }
    match best {
        Some(r) if !r.deleted && spec.ttl.is_none_or(|ttl| t - r.time <= ttl) => {
            (Some(r.total), Some(r.count))
        }
        _ => (None, None),
    }
}

fn job(labels: &Path, groups: &[&str]) -> TrainingSetJob {
    let groups = groups.iter().map(|g| g.parse().unwrap()).collect();
    let mut job = TrainingSetJob::new(labels, "label_time", groups);
    job.partitions = 2;
    job
}

fn arb_rows() -> impl Strategy<Value = Vec<Row>> {
    prop::collection::vec(
        (
            0..5u8,
            0..12i64,
            -1000.0..1000.0f64,
            any::<i64>(),
            prop::bool::weighted(0.15),
        ),
        0..60,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(u, k, total, count, deleted)| Row {
                user: format!("u{u}"),
                time: BASE + k * QUARTER_HOUR,
                total,
                count,
                deleted,
            })
            .collect()
    })
}

fn arb_labels() -> impl Strategy<Value = Vec<(i64, String, i64)>> {
    prop::collection::vec((0..6u8, 0..14i64, -1..=1i64), 0..40).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (u, k, nudge))| (i as i64, format!("u{u}"), BASE + k * QUARTER_HOUR + nudge))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_label_sees_what_the_naive_rule_says(
        spend in arb_rows(),
        risk in arb_rows(),
        labels in arb_labels(),
        inclusive in any::<bool>(),
        ttl in prop::option::of(prop::sample::select(vec![0, QUARTER_HOUR, 2 * QUARTER_HOUR - 1, 3 * QUARTER_HOUR])),
        partitions in 1..4usize,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = OfflineStore::open(dir.path().join("store")).unwrap();
        write_group(&store, "spend", "1.0.0", &spend);
        write_group(&store, "risk", "2.0.0", &risk);
        let path = dir.path().join("labels.parquet");
        let as_refs: Vec<(i64, Option<&str>, i64)> =
            labels.iter().map(|(i, u, t)| (*i, Some(u.as_str()), *t)).collect();
        write_labels(&path, &as_refs);
        let spec = AsOf { inclusive, ttl };
        let mut j = job(&path, &["spend", "risk:count,total"]);
        j.asof = spec;
        j.partitions = partitions;
        let out = run(&j, &store).unwrap();
        let got_spend = read_out(&out, "spend");
        let got_risk = read_out(&out, "risk");
        prop_assert_eq!(got_spend.len(), labels.len());
        for (k, (id, user, t)) in labels.iter().enumerate() {
            // Every label once, in its order.
            prop_assert_eq!(got_spend[k].0, *id);
            let want = naive(&spend, user, *t, spec);
            prop_assert_eq!((got_spend[k].1.map(f64::to_bits), got_spend[k].2), (want.0.map(f64::to_bits), want.1), "spend, label {}", id);
            let want = naive(&risk, user, *t, spec);
            prop_assert_eq!((got_risk[k].1.map(f64::to_bits), got_risk[k].2), (want.0.map(f64::to_bits), want.1), "risk, label {}", id);
        }
        // The output names its columns after their group, in the order asked.
        let names: Vec<String> = out.first().map(|b| b.schema().fields().iter().map(|f| f.name().clone()).collect()).unwrap_or_default();
        if !names.is_empty() {
            prop_assert_eq!(names, vec!["id", "user", "label_time", "spend__total", "spend__count", "risk__count", "risk__total"]);
        }
    }
}

fn store_with_spend(dir: &Path) -> OfflineStore {
    let store = OfflineStore::open(dir.join("store")).unwrap();
    let row = |user: &str, k: i64, total: f64| Row {
        user: user.into(),
        time: BASE + k * QUARTER_HOUR,
        total,
        count: k,
        deleted: false,
    };
    write_group(
        &store,
        "spend",
        "1.0.0",
        &[row("a", 1, 1.5), row("a", 3, 2.5), row("b", 2, 9.0)],
    );
    store
}

/// The error's message with its causes, as a user reads it.
fn error_of(job: &TrainingSetJob, store: &OfflineStore) -> String {
    let e = run(job, store).expect_err("should fail");
    lockstep_core::ErrorChain(&e).to_string()
}

#[test]
fn labels_in_other_units_zones_and_text_mean_the_same_instants() {
    use arrow_array::{
        ArrayRef, Int64Array, StringArray, TimestampNanosecondArray, TimestampSecondArray,
    };
    use arrow_schema::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_spend(dir.path());
    // Label a at 3 quarter-hours exactly: strictly before sees the row at 1.
    let t = BASE + 3 * QUARTER_HOUR;
    let seconds = dir.path().join("s.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("user", DataType::Utf8, false),
        Field::new(
            "label_time",
            DataType::Timestamp(TimeUnit::Second, Some("+02:00".into())),
            false,
        ),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![0])),
        Arc::new(StringArray::from(vec!["a"])),
        Arc::new(TimestampSecondArray::from(vec![t / 1_000_000]).with_timezone("+02:00")),
    ];
    common::write_parquet(&seconds, RecordBatch::try_new(schema, cols).unwrap());
    let out = read_out(&run(&job(&seconds, &["spend"]), &store).unwrap(), "spend");
    assert_eq!(out, vec![(0, Some(1.5), Some(1))]);

    // Half a microsecond after the row at 3: strictly after it, so it is seen.
    let nanos = dir.path().join("ns.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("user", DataType::Utf8, false),
        Field::new(
            "label_time",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![0, 1])),
        Arc::new(StringArray::from(vec!["a", "a"])),
        Arc::new(
            TimestampNanosecondArray::from(vec![t * 1000, t * 1000 + 500]).with_timezone("UTC"),
        ),
    ];
    common::write_parquet(&nanos, RecordBatch::try_new(schema, cols).unwrap());
    let out = read_out(&run(&job(&nanos, &["spend"]), &store).unwrap(), "spend");
    assert_eq!(out, vec![(0, Some(1.5), Some(1)), (1, Some(2.5), Some(3))]);

    // CSV with RFC 3339 text in another zone.
    let csv = dir.path().join("labels.csv");
    std::fs::write(
        &csv,
        "id,user,label_time\n0,a,2024-01-01T02:45:00+02:00\n1,b,2024-01-01T00:30:00.000001Z\n",
    )
    .unwrap();
    let out = read_out(&run(&job(&csv, &["spend"]), &store).unwrap(), "spend");
    assert_eq!(out, vec![(0, Some(1.5), Some(1)), (1, Some(9.0), Some(2))]);
}

#[test]
fn bad_labels_are_refused_naming_the_row_or_column() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_spend(dir.path());
    let path = dir.path().join("labels.parquet");

    write_labels(&path, &[(0, Some("a"), BASE), (1, None, BASE)]);
    let e = error_of(&job(&path, &["spend"]), &store);
    assert!(
        e.contains("row 2") && e.contains("entity key `user` is null"),
        "{e}"
    );

    let csv = dir.path().join("labels.csv");
    std::fs::write(&csv, "id,user,label_time\n0,a,2024-01-01T02:45:00\n").unwrap();
    let e = error_of(&job(&csv, &["spend"]), &store);
    assert!(e.contains("row 1") && e.contains("time zone"), "{e}");

    std::fs::write(&csv, "id,user,when\n0,a,2024-01-01T02:45:00Z\n").unwrap();
    let e = error_of(&job(&csv, &["spend"]), &store);
    assert!(
        e.contains("no label time column `label_time`") && e.contains("`when`"),
        "{e}"
    );

    std::fs::write(&csv, "id,customer,label_time\n0,a,2024-01-01T02:45:00Z\n").unwrap();
    let e = error_of(&job(&csv, &["spend"]), &store);
    assert!(
        e.contains("no column `user`, the entity key of feature group spend@1.0.0"),
        "{e}"
    );

    let e = error_of(
        &job(&dir.path().join("missing.parquet"), &["spend"]),
        &store,
    );
    assert!(
        e.contains("missing.parquet") && e.contains("no such file"),
        "{e}"
    );
}

#[test]
fn missing_groups_versions_and_features_are_named_with_what_exists() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_spend(dir.path());
    write_group(&store, "spend", "2.0.0", &[]);
    let path = dir.path().join("labels.parquet");
    write_labels(&path, &[(0, Some("a"), BASE)]);

    let e = error_of(&job(&path, &["clicks"]), &store);
    assert!(
        e.contains("`clicks` is not in the offline store") && e.contains("spend"),
        "{e}"
    );
    let e = error_of(&job(&path, &["spend"]), &store);
    assert!(
        e.contains("several versions (1.0.0, 2.0.0)") && e.contains("spend@VERSION"),
        "{e}"
    );
    let e = error_of(&job(&path, &["spend@3.0.0"]), &store);
    assert!(
        e.contains("no version 3.0.0") && e.contains("1.0.0, 2.0.0"),
        "{e}"
    );
    let e = error_of(&job(&path, &["spend@1.0.0:total,velocity"]), &store);
    assert!(
        e.contains("no feature `velocity`") && e.contains("total, count"),
        "{e}"
    );
    let e = error_of(&job(&path, &["spend@1.0.0", "spend@2.0.0"]), &store);
    assert!(e.contains("asked for twice"), "{e}");
    assert!("spend:".parse::<GroupSelection>().is_err());
    assert!("@1".parse::<GroupSelection>().is_err());

    // An empty version (registered, no rows) gives every label nulls, not an error.
    let out = read_out(
        &run(&job(&path, &["spend@2.0.0"]), &store).unwrap(),
        "spend",
    );
    assert_eq!(out, vec![(0, None, None)]);
}

#[test]
fn a_partition_file_out_of_order_is_refused_by_name() {
    use arrow_array::{
        BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_spend(dir.path());
    // Another tool rewrites an hour with its rows reversed.
    let file = dir
        .path()
        .join("store/spend/version=1.0.0/year=2024/month=01/day=01/hour=00/part-0.parquet");
    let schema = OfflineStore::schema(&common::manifest("spend", "1.0.0"));
    let ts = |v: Vec<i64>| Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["b", "a"])),
            ts(vec![BASE + 2 * QUARTER_HOUR, BASE + QUARTER_HOUR]),
            Arc::new(Float64Array::from(vec![1.0, 2.0])),
            Arc::new(Int64Array::from(vec![1, 2])),
            ts(vec![0, 0]),
            ts(vec![0, 0]),
            Arc::new(BooleanArray::from(vec![false, false])),
            Arc::new(StringArray::from(vec!["h", "h"])),
        ],
    )
    .unwrap();
    common::write_parquet(&file, batch);
    let path = dir.path().join("labels.parquet");
    write_labels(&path, &[(0, Some("a"), BASE)]);
    let e = error_of(&job(&path, &["spend"]), &store);
    assert!(
        e.contains("hour=00/part-0.parquet") && e.contains("row 2 is out of order"),
        "{e}"
    );
}

/// The same groups in S3 (the moto server on loopback) give the same training set as
/// in a local directory, and a group missing there is named with the S3 location.
#[test]
fn an_s3_offline_store_gives_the_same_training_set_as_a_local_one() {
    let moto = lockstep_testkit::Moto::start();
    moto.create_bucket("features");
    let s3 = lockstep_offline::S3Options {
        endpoint: Some(moto.endpoint()),
        region: Some(lockstep_testkit::REGION.into()),
        credentials: Some((
            lockstep_testkit::ACCESS_KEY.into(),
            lockstep_testkit::SECRET_KEY.into(),
        )),
    };
    let dir = tempfile::tempdir().unwrap();
    let local = OfflineStore::open(dir.path().join("store")).unwrap();
    let remote = OfflineStore::open_location("s3://features/offline", &s3).unwrap();
    let rows: Vec<Row> = (0..200)
        .map(|i| Row {
            user: format!("u{}", i % 7),
            time: BASE + (i % 40) * QUARTER_HOUR / 3,
            total: i as f64 * 1.5,
            count: i,
            deleted: i % 11 == 0,
        })
        .collect();
    for store in [&local, &remote] {
        write_group(store, "spend", "1.0.0", &rows);
    }
    let path = dir.path().join("labels.parquet");
    let labels: Vec<(i64, Option<&str>, i64)> = (0..50)
        .map(|i| {
            (
                i,
                Some(["u1", "u3", "u5", "u9"][i as usize % 4]),
                BASE + i * QUARTER_HOUR / 4,
            )
        })
        .collect();
    write_labels(&path, &labels);
    let mut j = job(&path, &["spend"]);
    j.asof.ttl = Some(2 * QUARTER_HOUR);
    let from_local = read_out(&run(&j, &local).unwrap(), "spend");
    let from_s3 = read_out(&run(&j, &remote).unwrap(), "spend");
    assert_eq!(from_local.len(), 50);
    assert!(from_local.iter().filter(|r| r.1.is_some()).count() > 10);
    assert_eq!(from_local, from_s3);

    let e = error_of(&job(&path, &["clicks"]), &remote);
    assert!(
        e.contains("s3://features/offline") && e.contains("spend"),
        "{e}"
    );
}

#[test]
fn a_planned_set_runs_once_and_says_so_the_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_spend(dir.path());
    let path = dir.path().join("labels.parquet");
    write_labels(&path, &[(0, Some("a"), BASE + 4 * QUARTER_HOUR)]);
    runtime().block_on(async {
        let set = TrainingSet::plan(&job(&path, &["spend"]), &store)
            .await
            .unwrap();
        let first = set.collect().await.unwrap();
        assert_eq!(read_out(&first, "spend"), vec![(0, Some(2.5), Some(3))]);
        let again = set.collect().await.unwrap_err().to_string();
        assert!(again.contains("plan it again"), "{again}");
    });
}

/// Two groups keyed by different columns, one of them an integer: the labels are
/// re-partitioned and re-sorted for the second key, and each group joins on its own.
#[test]
fn groups_on_different_keys_each_join_on_their_own_key() {
    use arrow_array::{ArrayRef, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow_schema::{DataType, Field, Schema, TimeUnit};
    use lockstep_sdk::ValueType;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_spend(dir.path());
    // `device_risk`, keyed by an Int64 `device`.
    let mut m = common::manifest("device_risk", "1.0.0");
    m.input[0].name = "device".into();
    m.input[0].ty = ValueType::Int64;
    m.entity_key = "device".into();
    let group = common::block_on(store.register(&m, "device-hash", 0)).unwrap();
    let mut writer = store.writer(&group, 1, lockstep_offline::WriterOptions::default());
    let rows = RecordBatch::try_new(
        lockstep_core::schema::row_schema(&m),
        vec![
            Arc::new(Int64Array::from(vec![7, 7, 9])) as ArrayRef,
            Arc::new(
                TimestampMicrosecondArray::from(vec![BASE, BASE + 2 * QUARTER_HOUR, BASE])
                    .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from(vec![0.1, 0.7, 0.9])),
            Arc::new(Int64Array::from(vec![1, 2, 3])),
        ],
    )
    .unwrap();
    writer.write(&rows).unwrap();
    common::block_on(writer.commit()).unwrap();

    let path = dir.path().join("labels.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("user", DataType::Utf8, false),
        Field::new("device", DataType::Int64, false),
        Field::new(
            "label_time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]));
    // (user, device, time): a's rows are at 1 and 3 quarter-hours, device 7's at 0 and 2.
    let labels = [
        ("a", 9, 4),
        ("b", 7, 1),
        ("a", 7, 3),
        ("zz", 8, 5),
        ("a", 7, 2),
    ];
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(0..labels.len() as i64)),
        Arc::new(StringArray::from_iter_values(labels.iter().map(|l| l.0))),
        Arc::new(Int64Array::from_iter_values(labels.iter().map(|l| l.1))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                labels.iter().map(|l| BASE + l.2 * QUARTER_HOUR),
            )
            .with_timezone("UTC"),
        ),
    ];
    common::write_parquet(&path, RecordBatch::try_new(schema, cols).unwrap());
    let out = run(&job(&path, &["spend", "device_risk"]), &store).unwrap();
    assert_eq!(
        read_out(&out, "spend"),
        vec![
            (0, Some(2.5), Some(3)),
            (1, None, None), // b's only row is at 2, after the label
            (2, Some(1.5), Some(1)),
            (3, None, None),
            (4, Some(1.5), Some(1)),
        ]
    );
    assert_eq!(
        read_out(&out, "device_risk"),
        vec![
            (0, Some(0.9), Some(3)),
            (1, Some(0.1), Some(1)),
            (2, Some(0.7), Some(2)),
            (3, None, None),
            (4, Some(0.1), Some(1)),
        ]
    );
}
