//! The erasure ledger in a directory and on S3 (moto): entries read back in time order,
//! a running host sees only what is new, an entry is never replaced, a damaged one is
//! named, and a million keys are one entry.

use arrow_schema::DataType;
use lockstep_aws::AwsOptions;
use lockstep_core::EntityKey;
use lockstep_erasure::{Erasure, Ledger};

async fn behaves(ledger: Ledger) {
    assert!(ledger.read_all().await.expect("empty").is_empty());
    let first =
        Erasure::new("g", None, vec!["a".into(), "b".into()], 1_000, "why", "me").expect("first");
    let second = Erasure::new("g", Some("2"), vec!["a".into()], 2_000, "", "me").expect("second");
    ledger.record(&second).await.expect("record second");
    ledger.record(&first).await.expect("record first");
    assert!(
        ledger.record(&first).await.is_err(),
        "an entry is written once, never replaced"
    );
    let all = ledger.read_all().await.expect("read");
    assert_eq!(
        all,
        vec![first.clone(), second.clone()],
        "oldest erasure first"
    );
    assert!(ledger.read_new().await.expect("new").is_empty());
    let third = Erasure::new("h", None, vec!["x".into()], 3_000, "", "me").expect("third");
    ledger.record(&third).await.expect("record third");
    assert_eq!(ledger.read_new().await.expect("new"), vec![third]);

    let v2 = ledger
        .boundary("g", "2", &DataType::Utf8)
        .await
        .expect("boundary");
    assert_eq!(v2.erased_at(&EntityKey::Str("a".into())), Some(2_000));
    assert_eq!(v2.erased_at(&EntityKey::Str("b".into())), Some(1_000));
    let v1 = ledger
        .boundary("g", "1", &DataType::Utf8)
        .await
        .expect("boundary");
    assert_eq!(v1.erased_at(&EntityKey::Str("a".into())), Some(1_000));
}

#[tokio::test]
async fn a_local_ledger_keeps_every_erasure_once_in_time_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let location = dir.path().join("erasures");
    behaves(Ledger::open(location.to_str().expect("utf-8"), &AwsOptions::default()).expect("open"))
        .await;

    // A damaged entry is an error naming it, never a silently shorter boundary.
    let entry = std::fs::read_dir(&location)
        .expect("entries")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .expect("an entry");
    let text = std::fs::read_to_string(&entry).expect("read");
    std::fs::write(&entry, text.lines().next().expect("header")).expect("truncate");
    let fresh =
        Ledger::open(location.to_str().expect("utf-8"), &AwsOptions::default()).expect("open");
    let err = fresh.read_all().await.expect_err("truncated");
    let said = lockstep_core::ErrorChain(&err).to_string();
    assert!(
        said.contains(entry.file_name().and_then(|n| n.to_str()).expect("name")),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_ledger_keeps_every_erasure_once_in_time_order() {
    let moto = lockstep_testkit::Moto::start();
    moto.create_bucket("features");
    let aws = AwsOptions {
        endpoint: Some(moto.endpoint()),
        region: Some(lockstep_testkit::REGION.into()),
        credentials: Some((
            lockstep_testkit::ACCESS_KEY.into(),
            lockstep_testkit::SECRET_KEY.into(),
        )),
    };
    behaves(Ledger::open("s3://features/offline/_lockstep/erasures", &aws).expect("open")).await;
}

#[tokio::test]
async fn a_million_keys_are_one_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger =
        Ledger::open(dir.path().to_str().expect("utf-8"), &AwsOptions::default()).expect("open");
    let keys: Vec<String> = (0..1_000_000).map(|i| format!("{i}")).collect();
    let erasure = Erasure::new("g", None, keys, 5, "", "me").expect("erasure");
    ledger.record(&erasure).await.expect("record");
    let boundary = ledger
        .boundary("g", "1", &DataType::Int64)
        .await
        .expect("read");
    assert_eq!(boundary.len(), 1_000_000);
    assert_eq!(boundary.erased_at(&EntityKey::Int(999_999)), Some(5));
}
