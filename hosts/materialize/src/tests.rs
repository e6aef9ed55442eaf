use super::*;
use arrow_array::{ArrayRef, Float64Array, StringArray, TimestampMicrosecondArray};
use lockstep_abi::{Manifest, Value, ValueType};
use lockstep_core::schema::row_schema;
use lockstep_offline::WriterOptions;
use lockstep_online::EmbeddedStore;
use std::sync::Arc;

const HOUR: i64 = 3_600_000_000;
const T0: i64 = 1_704_067_200_000_000; // 2024-01-01T00:00:00Z
const HASH: &str = "0000000000000000000000000000000000000000000000000000000000000001";

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

fn rows(data: &[(&str, i64, f64)]) -> RecordBatch {
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
    RecordBatch::try_new(row_schema(&manifest()), vec![users, times, totals]).expect("batch")
}

/// An offline store holding three hours of `spend@1.0.0`: `a` changes every hour,
/// `b` is deleted after its rows, `c` is deleted and then comes back.
async fn history(dir: &std::path::Path) -> OfflineStore {
    let store = OfflineStore::open(dir).expect("store");
    let group = store
        .register(&manifest(), HASH, T0)
        .await
        .expect("register");
    let mut writer = store.writer(&group, T0, WriterOptions::default());
    writer
        .write(&rows(&[
            ("a", T0 + 10, 1.0),
            ("b", T0 + 20, 5.0),
            ("c", T0 + 30, 7.0),
            ("a", T0 + HOUR + 10, 2.0),
            ("a", T0 + 2 * HOUR + 10, 3.0),
            ("c", T0 + 2 * HOUR + 50, 9.0),
        ]))
        .expect("rows");
    writer
        .write_deletions(&rows(&[
            ("b", T0 + HOUR + 5, 0.0),
            ("c", T0 + HOUR + 6, 0.0),
        ]))
        .expect("markers");
    writer.commit().await.expect("commit");
    store
}

async fn totals(online: &EmbeddedStore, keys: &[&str]) -> Vec<Option<(i64, f64)>> {
    let group = GroupRef::of(&manifest(), HASH);
    let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    online
        .get(&group, &keys)
        .await
        .expect("get")
        .into_iter()
        .map(|r| {
            r.map(|r| {
                let total = r.row["total"].as_f64().expect("a number");
                (r.event_time, total)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_latest_row_of_each_entity_is_loaded_and_deleted_entities_stay_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let offline = history(&dir.path().join("store")).await;
    let online = EmbeddedStore::open(dir.path().join("online")).expect("online");
    let mut seen = Vec::new();
    let report = materialize(
        &offline,
        &online,
        "spend",
        "1.0.0",
        Window::default(),
        T0 + 99,
        |done, total| seen.push((done, total)),
    )
    .await
    .expect("materialize");
    assert_eq!(report.group, "spend@1.0.0");
    assert_eq!(report.files, 3);
    assert_eq!(seen, [(1, 3), (2, 3), (3, 3)]);
    assert_eq!(report.rows, 6);
    assert_eq!(report.markers, 2);
    assert_eq!(report.deleted, 2, "b's and c's first records removed");
    assert_eq!(
        totals(&online, &["a", "b", "c", "nobody"]).await,
        [
            Some((T0 + 2 * HOUR + 10, 3.0)),
            None,
            Some((T0 + 2 * HOUR + 50, 9.0)),
            None
        ]
    );
    // Twice is once.
    let again = materialize(
        &offline,
        &online,
        "spend",
        "1.0.0",
        Window::default(),
        T0 + 100,
        |_, _| {},
    )
    .await
    .expect("again");
    assert_eq!((again.rows, again.files), (6, 3));
    assert_eq!(again.deleted, 0, "nothing left to delete");
    assert_eq!(
        totals(&online, &["a", "b", "c"]).await,
        [
            Some((T0 + 2 * HOUR + 10, 3.0)),
            None,
            Some((T0 + 2 * HOUR + 50, 9.0))
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_row_in_the_online_store_is_never_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let offline = history(&dir.path().join("store")).await;
    let online = EmbeddedStore::open(dir.path().join("online")).expect("online");
    // The stream host has gone on past the backfill.
    let group = GroupRef::of(&manifest(), HASH);
    online
        .put(&group, &rows(&[("a", T0 + 5 * HOUR, 42.0)]), T0)
        .await
        .expect("put");
    let report = materialize(
        &offline,
        &online,
        "spend",
        "1.0.0",
        Window::default(),
        T0 + 99,
        |_, _| {},
    )
    .await
    .expect("materialize");
    assert!(report.stale >= 1, "{report:?}");
    assert_eq!(totals(&online, &["a"]).await, [Some((T0 + 5 * HOUR, 42.0))]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_version_or_another_plugin_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let offline = history(&dir.path().join("store")).await;
    let online = EmbeddedStore::open(dir.path().join("online")).expect("online");
    let err = materialize(
        &offline,
        &online,
        "spend",
        "2.0.0",
        Window::default(),
        T0,
        |_, _| {},
    )
    .await
    .expect_err("no such version")
    .to_string();
    assert!(err.contains("spend") && err.contains("2.0.0"), "{err}");
    // The online store already bound to another build of the same version: refused,
    // nothing written.
    let mut other = manifest();
    other.version = "1.0.0".into();
    let other_hash = "f".repeat(64);
    online
        .put(
            &GroupRef::of(&other, &other_hash),
            &rows(&[("z", T0, 1.0)]),
            T0,
        )
        .await
        .expect("bound to the other build");
    let err = materialize(
        &offline,
        &online,
        "spend",
        "1.0.0",
        Window::default(),
        T0,
        |_, _| {},
    )
    .await
    .expect_err("another plugin")
    .to_string();
    assert!(err.contains(&other_hash), "{err}");
    assert_eq!(totals_any(&online, &other_hash, "a").await, None);
}

async fn totals_any(online: &EmbeddedStore, hash: &str, key: &str) -> Option<i64> {
    let group = GroupRef::of(&manifest(), hash);
    online
        .get(&group, &[key.to_owned()])
        .await
        .expect("get")
        .into_iter()
        .next()
        .flatten()
        .map(|r| r.event_time)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_window_loads_only_the_rows_it_holds_and_skips_other_hours() {
    let dir = tempfile::tempdir().expect("tempdir");
    let offline = history(&dir.path().join("store")).await;
    let online = EmbeddedStore::open(dir.path().join("online")).expect("online");
    // The first hour only: a's first row, b's and c's rows before their markers.
    let window = Window {
        from: None,
        to: Some(T0 + HOUR),
    };
    let report = materialize(
        &offline,
        &online,
        "spend",
        "1.0.0",
        window,
        T0 + 99,
        |_, _| {},
    )
    .await
    .expect("first hour");
    assert_eq!((report.files, report.rows, report.markers), (1, 3, 0));
    assert_eq!(
        totals(&online, &["a", "b", "c"]).await,
        [
            Some((T0 + 10, 1.0)),
            Some((T0 + 20, 5.0)),
            Some((T0 + 30, 7.0))
        ]
    );
    // From the second hour on: the rest, markers included.
    let window = Window {
        from: Some(T0 + HOUR),
        to: None,
    };
    let report = materialize(
        &offline,
        &online,
        "spend",
        "1.0.0",
        window,
        T0 + 99,
        |_, _| {},
    )
    .await
    .expect("the rest");
    assert_eq!((report.files, report.rows, report.markers), (2, 3, 2));
    assert_eq!(
        totals(&online, &["a", "b", "c"]).await,
        [
            Some((T0 + 2 * HOUR + 10, 3.0)),
            None,
            Some((T0 + 2 * HOUR + 50, 9.0))
        ]
    );
    // A window inside an hour: the file is read, rows outside are left.
    let online2 = EmbeddedStore::open(dir.path().join("online2")).expect("online");
    let window = Window {
        from: Some(T0 + 15),
        to: Some(T0 + 25),
    };
    let report = materialize(&offline, &online2, "spend", "1.0.0", window, T0, |_, _| {})
        .await
        .expect("inside an hour");
    assert_eq!((report.files, report.rows), (1, 1));
    assert_eq!(
        totals(&online2, &["a", "b"]).await,
        [None, Some((T0 + 20, 5.0))]
    );
}

/// With a cache: every loaded entity's entry is the store's record (an older entry
/// replaced, a newer one kept), and a deleted entity's entry is removed.
#[tokio::test(flavor = "multi_thread")]
async fn the_cache_ends_as_the_store_never_older() {
    let redis = lockstep_testkit::Redis::start(&[]);
    let cache = RedisCache::connect(&redis.url(), None, std::time::Duration::from_secs(2))
        .await
        .expect("cache");
    let dir = tempfile::tempdir().expect("tempdir");
    let offline = history(&dir.path().join("store")).await;
    let online = EmbeddedStore::open(dir.path().join("online")).expect("online");
    let key = |entity: &str| cache_key("spend@1.0.0", entity);
    let planted = |entity: &str, at: i64| CacheEntry {
        key: key(entity),
        event_time: at,
        value: format!("planted {entity}"),
    };
    // a: older than its last row; b: deleted since; c: newer than anything offline.
    cache
        .put(&[
            planted("a", T0),
            planted("b", T0 + 20),
            planted("c", T0 + 9 * HOUR),
        ])
        .await
        .expect("plant");
    let report = materialize_with_cache(
        &offline,
        &online,
        Some(&cache),
        "spend",
        "1.0.0",
        Window::default(),
        T0 + 99,
        |_, _| {},
    )
    .await
    .expect("materialize");
    assert_eq!(
        (report.cached, report.cache_stale, report.uncached),
        (1, 1, 1),
        "a written, c's newer entry kept, b's removed"
    );
    let entries = cache
        .get(&[key("a"), key("b"), key("c")])
        .await
        .expect("get");
    let group = GroupRef::of(&manifest(), HASH);
    let a = online
        .get(&group, &["a".to_owned()])
        .await
        .expect("get")
        .remove(0)
        .expect("a's record");
    assert_eq!(
        entries[0],
        Some((
            a.event_time,
            record_value(a.event_time, &a.plugin_hash, &a.row)
        )),
        "a's entry is the store's record, as serving writes it"
    );
    assert_eq!(entries[1], None, "b is deleted: its entry is gone");
    assert_eq!(
        entries[2],
        Some((T0 + 9 * HOUR, "planted c".to_owned())),
        "a newer entry stays"
    );
}
