//! Erasing entities from the offline store: deletion markers as SageMaker writes them,
//! and the purge that removes an entity's history hour by hour — locally and on S3.

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{
    Array, ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use lockstep_abi::{Manifest, Value, ValueType};
use lockstep_core::schema::row_schema;
use lockstep_core::{EntityKey, Erasures};
use lockstep_offline::{GroupVersion, OfflineStore};
use std::collections::BTreeMap;
use std::sync::Arc;

const HOUR: i64 = 3_600_000_000;
const T0: i64 = 1_704_067_200_000_000; // 2024-01-01T00:00:00Z

fn manifest() -> Manifest {
    Manifest::builder("spend", "1.0.0")
        .keyed_stateful(1)
        .field("user", ValueType::String, "")
        .field("ts", ValueType::Timestamp, "")
        .field("amount", ValueType::Float64, "")
        .entity_key("user")
        .event_time("ts")
        .feature("total", ValueType::Float64, "", Value::Null)
        .build()
}

fn rows(m: &Manifest, data: &[(&str, i64, f64)]) -> RecordBatch {
    let users: ArrayRef = Arc::new(StringArray::from(
        data.iter().map(|r| r.0).collect::<Vec<_>>(),
    ));
    let times: ArrayRef = Arc::new(
        TimestampMicrosecondArray::from(data.iter().map(|r| r.1).collect::<Vec<_>>())
            .with_timezone("UTC"),
    );
    let totals: ArrayRef = Arc::new(Float64Array::from(
        data.iter().map(|r| r.2).collect::<Vec<_>>(),
    ));
    RecordBatch::try_new(row_schema(m), vec![users, times, totals]).expect("batch")
}

/// (user, event time, is_deleted, total or None) of every stored row, in file order.
fn stored(batches: &[RecordBatch]) -> Vec<(String, i64, bool, Option<f64>)> {
    let mut out = Vec::new();
    for b in batches {
        let users = b.column(0).as_string::<i32>();
        let times = b.column(1).as_primitive::<TimestampMicrosecondType>();
        let totals = b
            .column(2)
            .as_primitive::<arrow_array::types::Float64Type>();
        let deleted = b
            .column_by_name("is_deleted")
            .expect("is_deleted")
            .as_boolean();
        for r in 0..b.num_rows() {
            out.push((
                users.value(r).to_owned(),
                times.value(r),
                deleted.value(r),
                (!totals.is_null(r)).then(|| totals.value(r)),
            ));
        }
    }
    out
}

/// Each hour file's bytes, by path.
async fn files(store: &OfflineStore, g: &GroupVersion) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for rel in store
        .partition_files(&g.name, &g.version)
        .await
        .expect("files")
    {
        let bytes = store.read_object(&rel).await.expect("read");
        out.insert(rel, bytes);
    }
    out
}

/// Three hours: u1 in hours 0 and 1, u2 in hours 0 and 2, u3 alone in hour 1, and u1
/// once more after the erasure time (a new life) in hour 2.
async fn seeded(store: &OfflineStore) -> (Manifest, GroupVersion) {
    let m = manifest();
    let g = store.register(&m, "abc", 0).await.expect("register");
    store
        .write(
            &g,
            &[rows(
                &m,
                &[
                    ("u1", T0 + 5, 1.0),
                    ("u2", T0 + 6, 2.0),
                    ("u1", T0 + HOUR + 1, 3.0),
                    ("u3", T0 + HOUR + 2, 4.0),
                    ("u2", T0 + 2 * HOUR + 3, 5.0),
                    ("u1", T0 + 2 * HOUR + 900, 6.0),
                ],
            )],
            42,
        )
        .await
        .expect("write");
    (m, g)
}

fn erasures(keys: &[(&str, i64)]) -> Erasures {
    let mut e = Erasures::new();
    for (k, at) in keys {
        e.insert(EntityKey::Str((*k).into()), *at);
    }
    e
}

async fn purge_rewrites_only_the_hours_that_held_the_entity(store: OfflineStore) {
    let (_, g) = seeded(&store).await;
    let before = files(&store, &g).await;
    // u1 erased between its rows of hour 2: the one after is a new life. u3 erased too:
    // hour 1 then holds u1's row only... which goes too, so hour 1 disappears.
    let at = T0 + 2 * HOUR + 100;
    let e = erasures(&[("u1", at), ("u3", at)]);

    let dry = store.purge(&g, &e, "test", true).await.expect("dry run");
    assert_eq!(dry.rows_removed, 3);
    assert_eq!(files(&store, &g).await, before, "a dry run changes nothing");

    let done = store.purge(&g, &e, "test", false).await.expect("purge");
    assert_eq!(done.rows_removed, 3);
    assert_eq!(done.hours_scanned, 3);
    assert_eq!(done.hours_rewritten, dry.hours_rewritten);
    assert_eq!(done.hours_rewritten.len(), 2, "{:?}", done.hours_rewritten);
    let after = files(&store, &g).await;
    assert_eq!(after.len(), 2, "hour 1 held only erased rows: it is gone");
    let untouched: Vec<&String> = before
        .keys()
        .filter(|k| !done.hours_rewritten.contains(k))
        .collect();
    assert_eq!(untouched.len(), 1, "only hour 2 held no erased row");
    for rel in untouched {
        assert_eq!(
            after.get(rel),
            before.get(rel),
            "{rel} is left byte for byte"
        );
    }
    let rows = stored(&store.read(&g.name, &g.version).await.expect("read"));
    assert_eq!(
        rows,
        vec![
            ("u2".to_owned(), T0 + 6, false, Some(2.0)),
            ("u1".to_owned(), T0 + 2 * HOUR + 900, false, Some(6.0)),
            ("u2".to_owned(), T0 + 2 * HOUR + 3, false, Some(5.0)),
        ],
        "the rest keeps its rows (and their order by key, then time)"
    );
    let again = store.purge(&g, &e, "test", false).await.expect("again");
    assert_eq!(
        (again.rows_removed, again.hours_rewritten.len()),
        (0, 0),
        "a purge is idempotent"
    );
}

#[tokio::test]
async fn a_local_purge_rewrites_only_the_hours_that_held_the_entity() {
    let dir = tempfile::tempdir().expect("tempdir");
    purge_rewrites_only_the_hours_that_held_the_entity(
        OfflineStore::open(dir.path()).expect("open"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_purge_rewrites_only_the_hours_that_held_the_entity() {
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
    purge_rewrites_only_the_hours_that_held_the_entity(
        OfflineStore::open_location("s3://features/offline", &s3).expect("open"),
    )
    .await;
}

#[tokio::test]
async fn markers_null_the_features_at_the_erasure_and_a_purge_removes_them_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OfflineStore::open(dir.path()).expect("open");
    let (_, g) = seeded(&store).await;
    // The erasure falls in hour 1, after u1's row there.
    let at = T0 + HOUR + 50;
    let done = store
        .mark_erased(&g, &[EntityKey::Str("u1".into())], at, 99, "test")
        .await
        .expect("mark");
    assert_eq!(done.markers, 1);
    let rows = stored(&store.read(&g.name, &g.version).await.expect("read"));
    let hour1: Vec<_> = rows
        .iter()
        .filter(|r| r.1 >= T0 + HOUR && r.1 < T0 + 2 * HOUR)
        .cloned()
        .collect();
    assert_eq!(
        hour1,
        vec![
            ("u1".to_owned(), T0 + HOUR + 1, false, Some(3.0)),
            ("u1".to_owned(), at, true, None),
            ("u3".to_owned(), T0 + HOUR + 2, false, Some(4.0)),
        ],
        "the marker sits in its place: after the entity's rows before it, features null"
    );
    let purged = store
        .purge(&g, &erasures(&[("u1", at)]), "test", false)
        .await
        .expect("purge");
    assert_eq!(purged.rows_removed, 3, "two rows and the marker");
    let left = stored(&store.read(&g.name, &g.version).await.expect("read"));
    assert!(
        left.iter().all(|r| r.0 != "u1" || r.1 > at),
        "only u1's new life is left: {left:?}"
    );
}

#[tokio::test]
async fn an_erasure_of_a_delta_table_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OfflineStore::open(dir.path()).expect("open");
    let (_, g) = seeded(&store).await;
    std::fs::create_dir_all(dir.path().join("spend/version=1.0.0/_delta_log")).expect("mkdir");
    let err = store
        .purge(&g, &erasures(&[("u1", T0)]), "test", false)
        .await
        .expect_err("a Delta table");
    assert!(err.to_string().contains("Delta"), "{err}");
}
