//! The embedded online store keeps the latest row per entity, durably, whatever the
//! order rows arrive in, and only for the component bound to the group.

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use lockstep_online::{EmbeddedStore, GroupRef, OnlineError, OnlineStore};
use proptest::prelude::*;
use std::sync::Arc;

/// Waits for a store call (the embedded store answers on its first poll).
trait Now: std::future::Future + Sized {
    fn now(self) -> Self::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(self)
    }
}

impl<F: std::future::Future> Now for F {}

fn group(hash: &str) -> GroupRef {
    GroupRef {
        name: "g".into(),
        version: "1.0.0".into(),
        plugin_hash: hash.into(),
        entity_key: "id".into(),
    }
}

fn rows(data: &[(&str, i64, f64)]) -> RecordBatch {
    batch(
        Arc::new(StringArray::from_iter_values(data.iter().map(|d| d.0))),
        data.iter().map(|d| (d.1, d.2)),
    )
}

/// Rows of entity keys `ids` (any key type), with event times and `x` values.
fn batch(ids: ArrayRef, times_and_xs: impl Iterator<Item = (i64, f64)>) -> RecordBatch {
    let (times, xs): (Vec<i64>, Vec<f64>) = times_and_xs.unzip();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", ids.data_type().clone(), true),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("x", DataType::Float64, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        ids,
        Arc::new(TimestampMicrosecondArray::from(times).with_timezone("UTC")),
        Arc::new(Float64Array::from(xs)),
    ];
    RecordBatch::try_new(schema, columns).expect("batch")
}

fn x_of(store: &EmbeddedStore, key: &str) -> Option<(i64, String)> {
    store
        .get(&group("h1"), &[key.to_owned()])
        .now()
        .expect("get")
        .pop()
        .flatten()
        .map(|r| (r.event_time, r.row["x"].to_string()))
}

#[test]
fn the_latest_row_wins_and_an_older_one_never_overwrites_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let g = group("h1");
    let s = store
        .put(
            &g,
            &rows(&[("a", 10, 1.0), ("a", 20, 2.0), ("b", 5, -0.0)]),
            100,
        )
        .now()
        .expect("put");
    // a@10 is superseded within the put: only each entity's latest row is written.
    assert_eq!((s.written, s.stale), (2, 1));
    assert_eq!(x_of(&store, "a"), Some((20, "2.0".into())));
    // Older: ignored. Same instant: replaces (the later emitted row).
    let s = store
        .put(&g, &rows(&[("a", 15, 9.0)]), 101)
        .now()
        .expect("put");
    assert_eq!((s.written, s.stale), (0, 1));
    store
        .put(&g, &rows(&[("a", 20, 3.5)]), 102)
        .now()
        .expect("put");
    assert_eq!(x_of(&store, "a"), Some((20, "3.5".into())));
    // Exact values survive the round trip.
    assert_eq!(x_of(&store, "b"), Some((5, "-0.0".into())));
    // Replaying the same rows changes nothing.
    store
        .put(&g, &rows(&[("a", 20, 3.5)]), 103)
        .now()
        .expect("put");
    assert_eq!(x_of(&store, "a"), Some((20, "3.5".into())));
    assert_eq!(x_of(&store, "nobody"), None);
}

#[test]
fn records_survive_a_reopen_and_deletes_remove_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = EmbeddedStore::open(dir.path()).expect("open");
        store
            .put(&group("h1"), &rows(&[("a", 1, 1.0), ("b", 2, 2.0)]), 7)
            .now()
            .expect("put");
    }
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    let got = store
        .get(&group("h1"), &["b".into(), "a".into(), "c".into()])
        .now()
        .expect("get");
    assert_eq!(got[0].as_ref().map(|r| r.write_time), Some(7));
    assert_eq!(got[1].as_ref().map(|r| r.event_time), Some(1));
    assert!(got[2].is_none());
    assert!(store.delete(&group("h1"), "a").now().expect("delete"));
    assert!(!store.delete(&group("h1"), "a").now().expect("delete again"));
    assert_eq!(x_of(&store, "a"), None);
}

#[test]
fn another_component_cannot_write_a_bound_group_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    store
        .put(&group("h1"), &rows(&[("a", 1, 1.0)]), 1)
        .now()
        .expect("put");
    let err = store
        .put(&group("h2"), &rows(&[("a", 2, 2.0)]), 2)
        .now()
        .expect_err("another hash");
    assert!(matches!(err, OnlineError::OtherPlugin { .. }), "{err}");
    assert!(err.to_string().contains("g@1.0.0") && err.to_string().contains("h2"));
    assert_eq!(
        x_of(&store, "a"),
        Some((1, "1.0".into())),
        "nothing written"
    );
    // Rows without the key column are refused whole.
    let bad = rows(&[("a", 3, 3.0)]).project(&[1, 2]).expect("project");
    assert!(store.put(&group("h1"), &bad, 3).now().is_err());
}

#[test]
fn int_keys_are_stored_as_their_decimal_text_and_null_keys_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let g = group("h1");
    let int_rows = |ids: Vec<Option<i64>>| {
        let n = ids.len();
        batch(
            Arc::new(arrow_array::Int64Array::from(ids)),
            (0..n).map(|i| (i as i64, i as f64)),
        )
    };
    let s = store
        .put(&g, &int_rows(vec![Some(-7), Some(42), Some(-7)]), 100)
        .now()
        .expect("put");
    assert_eq!((s.written, s.stale), (2, 1));
    assert_eq!(x_of(&store, "-7"), Some((2, "2.0".into())));
    assert_eq!(x_of(&store, "42"), Some((1, "1.0".into())));

    let err = store
        .put(&g, &int_rows(vec![Some(1), None]), 100)
        .now()
        .expect_err("a null key must be refused");
    assert!(err.to_string().contains("row 1"), "{err}");
    assert!(err.to_string().contains("null entity key"), "{err}");
    // Nothing of the refused put was stored.
    assert_eq!(x_of(&store, "1"), None);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

    /// Rows with distinct times per entity, put in any order and any grouping: the
    /// store ends with each entity's latest row.
    #[test]
    fn any_put_order_ends_with_the_latest_row(
        times in proptest::collection::vec((0usize..5, 0i64..1_000), 1..60),
        seed in any::<u64>(),
        groups in 1usize..6,
    ) {
        let keys = ["k0", "k1", "k2", "k3", "k4"];
        let mut seen = std::collections::HashSet::new();
        let data: Vec<(&str, i64, f64)> = times
            .into_iter()
            .filter(|(k, t)| seen.insert((*k, *t)))
            .map(|(k, t)| (keys[k], t, t as f64 * 0.5))
            .collect();
        let mut order: Vec<usize> = (0..data.len()).collect();
        let mut s = seed;
        for i in (1..order.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            order.swap(i, (s >> 33) as usize % (i + 1));
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        for chunk in order.chunks(order.len().div_ceil(groups)) {
            let part: Vec<(&str, i64, f64)> = chunk.iter().map(|&i| data[i]).collect();
            store.put(&group("h1"), &rows(&part), 0).now().expect("put");
        }
        for key in keys {
            let latest = data.iter().filter(|d| d.0 == key).map(|d| d.1).max();
            prop_assert_eq!(x_of(&store, key).map(|r| r.0), latest);
        }
    }
}

#[test]
fn rows_read_back_alike_whether_stored_as_values_or_as_objects() {
    use lockstep_core::rows::row_json;
    use lockstep_online::OnlineRecord;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let g = group("h1");
    // From Arrow: stored as values under the registered columns.
    let a = rows(&[("a", 1, 0.1)]);
    store.put(&g, &a, 10).now().expect("put a");
    // From the wire: an object with its hash.
    let mut b = row_json(&rows(&[("b", 2, 2.5)]), 0);
    b.insert("note".into(), serde_json::json!("wire"));
    store
        .put_records(
            &g,
            vec![(
                "b".into(),
                OnlineRecord {
                    event_time: 2,
                    write_time: 11,
                    plugin_hash: "h1".into(),
                    row: b.clone(),
                },
            )],
        )
        .expect("put b");
    // From Arrow with other columns than the registered ones: stored as an object.
    let c = rows(&[("c", 3, 3.0)]).project(&[0, 1]).expect("project");
    store.put(&g, &c, 12).now().expect("put c");
    // Rows with the registered columns go on being stored as values.
    let d = rows(&[("d", 4, f64::NAN)]);
    store.put(&g, &d, 13).now().expect("put d");

    drop(store);
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    let got = store
        .get(&g, &["a".into(), "b".into(), "c".into(), "d".into()])
        .now()
        .expect("get");
    let got: Vec<OnlineRecord> = got.into_iter().map(|r| r.expect("stored")).collect();
    let keys = |r: &OnlineRecord| r.row.keys().cloned().collect::<Vec<_>>();
    assert_eq!(got[0].row, row_json(&a, 0));
    assert_eq!(
        keys(&got[0]),
        ["id", "event_time", "x"],
        "column order kept"
    );
    assert_eq!(got[1].row, b);
    assert_eq!(got[2].row, row_json(&c, 0));
    assert_eq!(keys(&got[2]), ["id", "event_time"]);
    assert_eq!(got[3].row, row_json(&d, 0));
    assert_eq!(got[3].row["x"], serde_json::json!("NaN"));
    for (record, (time, written)) in got.iter().zip([(1, 10), (2, 11), (3, 12), (4, 13)]) {
        assert_eq!(record.plugin_hash, "h1");
        assert_eq!((record.event_time, record.write_time), (time, written));
    }
}
