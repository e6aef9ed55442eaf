//! The eraser over a real local offline store and ledger: what `erase`, `verify` and
//! `purge` report per copy, and that each verdict follows the copies' contents.

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use lockstep_abi::{Manifest, Value, ValueType};
use lockstep_eraser::{Copies, EraseError, EraseRequest, Eraser, Outcome, Scope, Verdict};
use lockstep_erasure::Ledger;
use lockstep_offline::OfflineStore;
use std::path::Path;
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

/// u1 in hours 0 and 1 and once more in hour 2 (after the erasures below: a new life),
/// u2 in hours 0 and 2, u3 in hour 1.
async fn seed(root: &Path) {
    let store = OfflineStore::open(root).expect("open");
    let m = manifest();
    let g = store.register(&m, "abc", 0).await.expect("register");
    let data = [
        ("u1", T0 + 5, 1.0),
        ("u2", T0 + 6, 2.0),
        ("u1", T0 + HOUR + 1, 3.0),
        ("u3", T0 + HOUR + 2, 4.0),
        ("u2", T0 + 2 * HOUR + 3, 5.0),
        ("u1", T0 + 2 * HOUR + 900, 6.0),
    ];
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(
            data.iter().map(|r| r.0).collect::<Vec<_>>(),
        )),
        Arc::new(
            TimestampMicrosecondArray::from(data.iter().map(|r| r.1).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ),
        Arc::new(Float64Array::from(
            data.iter().map(|r| r.2).collect::<Vec<_>>(),
        )),
    ];
    let batch =
        RecordBatch::try_new(lockstep_core::schema::row_schema(&m), columns).expect("batch");
    store.write(&g, &[batch], 42).await.expect("write");
}

async fn eraser(root: &Path, ledger: bool) -> Eraser {
    let location = root.display().to_string();
    let copies = Copies {
        ledger: ledger.then(|| {
            Arc::new(
                Ledger::open(
                    &lockstep_erasure::beside_offline_store(&location),
                    &Default::default(),
                )
                .expect("ledger"),
            )
        }),
        offline: Some(location),
        ..Copies::default()
    };
    Eraser::open(copies, Scope::parse("spend").expect("scope"))
        .await
        .expect("open")
}

fn request(keys: &[&str], at: i64, purge_offline: bool) -> EraseRequest {
    EraseRequest {
        keys: keys.iter().map(|k| k.to_string()).collect(),
        at,
        reason: "test".into(),
        actor: "tester".into(),
        soft: false,
        purge_offline,
    }
}

fn verdict<'a>(verdicts: &'a [Verdict], copy: &str) -> &'a Verdict {
    verdicts
        .iter()
        .find(|v| v.copy == copy)
        .unwrap_or_else(|| panic!("no verdict for {copy}: {verdicts:?}"))
}

#[tokio::test]
async fn markers_then_purge_then_an_erase_that_purges_each_verdict_follows_the_copies() {
    let dir = tempfile::tempdir().expect("tempdir");
    seed(dir.path()).await;
    let eraser = eraser(dir.path(), true).await;
    assert_eq!(eraser.versions().len(), 1);
    let u1 = ["u1".to_owned()];

    // Before any erasure: the ledger does not know u1, and its rows are there.
    let before = eraser.verify(&u1).await.expect("verify");
    assert!(!verdict(&before, "ledger spend@1.0.0").clean, "{before:?}");
    let offline = verdict(&before, "offline spend@1.0.0");
    assert_eq!((offline.clean, offline.found), (false, 3), "{before:?}");

    // Erase u1 as of hour 1 + 500 µs with markers only: the ledger, then the markers.
    let at = T0 + HOUR + 500;
    let mut heard = Vec::new();
    let report = eraser
        .erase(&request(&["u1"], at, false), &mut |o: &Outcome| {
            heard.push(o.copy())
        })
        .await
        .expect("erase");
    assert_eq!(heard, ["ledger", "offline:spend@1.0.0"]);
    assert_eq!(
        report.outcomes[1],
        Outcome::OfflineMarked {
            version: "spend@1.0.0".into(),
            markers: 1
        }
    );
    assert_eq!(report.details()["offline:spend@1.0.0"]["markers"], 1);
    // The ledger holds it now; the history is kept until a purge (its two rows at or
    // before the erasure, and the marker, are found; the new life is not).
    let marked = eraser.verify(&u1).await.expect("verify");
    assert!(verdict(&marked, "ledger spend@1.0.0").clean, "{marked:?}");
    let offline = verdict(&marked, "offline spend@1.0.0");
    assert!(!offline.clean, "{marked:?}");
    assert!(offline.detail.contains("offline purge"), "{marked:?}");

    // The purge removes what the ledger says, and only that.
    let ledger = Ledger::open(
        &lockstep_erasure::beside_offline_store(&dir.path().display().to_string()),
        &Default::default(),
    )
    .expect("ledger");
    let location = dir.path().display().to_string();
    let dry = lockstep_eraser::purge(
        &location,
        &Default::default(),
        &ledger,
        None,
        true,
        &mut |_| {},
    )
    .await
    .expect("dry run");
    assert_eq!(dry.len(), 1);
    assert_eq!(
        eraser.verify(&u1).await.expect("verify"),
        marked,
        "a dry run changes nothing"
    );
    let purged = lockstep_eraser::purge(
        &location,
        &Default::default(),
        &ledger,
        None,
        false,
        &mut |_| {},
    )
    .await
    .expect("purge");
    assert_eq!(purged[0].version, "spend@1.0.0");
    assert_eq!(purged[0].entities, 1);
    assert_eq!(purged[0].summary.rows_removed, dry[0].summary.rows_removed);
    assert!(
        purged[0].summary.rows_removed >= 2,
        "{:?}",
        purged[0].summary
    );
    let clean = eraser.verify(&u1).await.expect("verify");
    assert!(clean.iter().all(|v| v.clean), "{clean:?}");

    // An erase that purges at once: u2, every row of it.
    let report = eraser
        .erase(&request(&["u2"], T0 + 3 * HOUR, true), &mut |_| {})
        .await
        .expect("erase");
    let Outcome::OfflinePurged { summary, .. } = &report.outcomes[1] else {
        panic!("{:?}", report.outcomes)
    };
    assert_eq!(summary.rows_removed, 2, "{summary:?}");
    assert_eq!(summary.hours_rewritten.len(), 2, "only the hours u2 was in");
    let u2 = ["u2".to_owned()];
    assert!(
        eraser
            .verify(&u2)
            .await
            .expect("verify")
            .iter()
            .all(|v| v.clean)
    );
    // u3 was never erased: the ledger says so and its row is found.
    let u3 = eraser.verify(&["u3".to_owned()]).await.expect("verify");
    assert!(!verdict(&u3, "ledger spend@1.0.0").clean);
    assert_eq!(verdict(&u3, "offline spend@1.0.0").found, 1);
}

#[tokio::test]
async fn without_a_ledger_nothing_is_erased() {
    let dir = tempfile::tempdir().expect("tempdir");
    seed(dir.path()).await;
    let eraser = eraser(dir.path(), false).await;
    let refused = eraser
        .erase(&request(&["u1"], T0 + 10 * HOUR, true), &mut |_| {})
        .await;
    let Err(EraseError::Invalid(message)) = refused else {
        panic!("erased without a ledger: {refused:?}")
    };
    assert!(message.contains("--erasures"), "{message}");
    // Nothing touched: u1's rows are all there.
    let store = OfflineStore::open(dir.path()).expect("open");
    let g = store.version("spend", "1.0.0").await.expect("version");
    let mut boundary = lockstep_core::Erasures::new();
    boundary.insert(lockstep_core::EntityKey::Str("u1".into()), i64::MAX);
    let found = store
        .purge(&g, &boundary, "look", true)
        .await
        .expect("dry run");
    assert_eq!(found.rows_removed, 3);
}
