//! The audit log written, tampered with every way an attacker (or an accident) can, and
//! verified: each change is found and named; an untouched log verifies. Local
//! directories, and S3 on a moto server with writers racing for the next digest.

use lockstep_audit::{AuditLog, Entry, SigningKey, Verification};
use lockstep_aws::AwsOptions;
use serde_json::json;
use std::path::{Path, PathBuf};

fn entry(i: usize) -> Entry {
    Entry::new("batch.commit")
        .on("txn_velocity", Some("1.0.0".into()))
        .with_details(json!({ "rows": i, "files": [{ "path": format!("hour={i}/part-0.parquet"), "sha256": "ab".repeat(32) }] }))
}

fn key() -> SigningKey {
    SigningKey::from_seed_hex(&"07".repeat(32), "a test seed").expect("key")
}

/// A signed log of `files` log files of `per_file` records each, in a new directory.
async fn written(files: usize, per_file: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let location = dir.path().join("audit");
    let log = AuditLog::open(location.to_str().expect("utf-8"), &AwsOptions::default())
        .expect("open")
        .with_signer(key())
        .with_actor("tester");
    for f in 0..files {
        let receipt = log
            .record((0..per_file).map(|i| entry(f * per_file + i)).collect())
            .await
            .expect("record")
            .expect("a receipt");
        assert_eq!(receipt.entries, per_file);
    }
    (dir, location)
}

async fn verify(location: &Path) -> Verification {
    AuditLog::open(location.to_str().expect("utf-8"), &AwsOptions::default())
        .expect("open")
        .verify(Some(&key().public_key()))
        .await
        .expect("verify")
}

/// Every file under `dir/sub`, sorted.
fn files(dir: &Path, sub: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dir.join(sub), &mut out);
    out.sort();
    out
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).expect("write");
}

fn name(location: &Path, path: &Path) -> String {
    path.strip_prefix(location)
        .expect("inside")
        .to_string_lossy()
        .into_owned()
}

/// Asserts the log does not verify and some problem is at `at` (a prefix) and says
/// `says`.
fn caught(found: &Verification, at: &str, says: &str, how: &str) {
    assert!(!found.ok(), "{how}: not caught");
    assert!(
        found
            .problems
            .iter()
            .any(|p| p.at.starts_with(at) && p.what.contains(says)),
        "{how}: expected a problem at {at} saying {says:?}, got {:#?}",
        found.problems
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untouched_log_of_100k_entries_verifies() {
    let (_dir, location) = written(100, 1_000).await;
    let started = std::time::Instant::now();
    let found = verify(&location).await;
    assert!(found.ok(), "{:#?}", found.problems);
    assert_eq!(
        (found.digests, found.files, found.entries, found.signed),
        (100, 100, 100_000, 100)
    );
    eprintln!(
        "verified 100,000 entries in 100 files in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    // Records read back in order, with their group.
    let records = AuditLog::open(location.to_str().expect("utf-8"), &AwsOptions::default())
        .expect("open")
        .records()
        .await
        .expect("records");
    assert_eq!(records.len(), 100_000);
    assert!(
        records
            .iter()
            .all(|(_, r)| r.actor == "tester" && r.group.as_deref() == Some("txn_velocity"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_tampering_is_found_and_named() {
    // Each case starts from its own copy of a clean log: 5 files of 10 records.
    for case in [
        "edit",
        "delete",
        "reorder",
        "insert",
        "truncate",
        "extend",
        "remove file",
        "add file",
        "replace middle digest",
        "replace last digest",
        "unsigned last digest",
        "remove middle digest",
        "remove last digest",
        "move record",
    ] {
        let (_dir, location) = written(5, 10).await;
        let logs = files(&location, "logs");
        let digests = files(&location, "digests");
        assert_eq!((logs.len(), digests.len()), (5, 5));
        let target = &logs[2];
        let target_name = name(&location, target);
        let mut records = lines(target);
        match case {
            "edit" => {
                records[3] = records[3].replace("\"rows\":23", "\"rows\":24");
                write_lines(target, &records);
                caught(
                    &verify(&location).await,
                    &format!("{target_name}#3"),
                    "edited",
                    case,
                );
            }
            "delete" => {
                records.remove(3);
                write_lines(target, &records);
                caught(
                    &verify(&location).await,
                    &format!("{target_name}#3"),
                    "removed",
                    case,
                );
            }
            "reorder" => {
                records.swap(3, 4);
                write_lines(target, &records);
                caught(
                    &verify(&location).await,
                    &format!("{target_name}#3"),
                    "reordered",
                    case,
                );
            }
            "insert" => {
                let copy = records[5].clone();
                records.insert(6, copy);
                write_lines(target, &records);
                caught(
                    &verify(&location).await,
                    &format!("{target_name}#6"),
                    "inserted",
                    case,
                );
            }
            "truncate" => {
                records.truncate(7);
                write_lines(target, &records);
                caught(&verify(&location).await, &target_name, "truncated", case);
            }
            "extend" => {
                // A record forged to chain on: its own hash right, the file longer.
                let last: serde_json::Value = serde_json::from_str(&records[9]).expect("json");
                let mut forged: lockstep_audit::Record =
                    serde_json::from_value(last.clone()).expect("record");
                forged.seq = 10;
                forged.prev = forged.hash.clone();
                forged.action = "erase".into();
                forged.hash = forged.content_hash().expect("hash");
                records.push(serde_json::to_string(&forged).expect("json"));
                write_lines(target, &records);
                caught(
                    &verify(&location).await,
                    &target_name,
                    "truncated or extended",
                    case,
                );
            }
            "remove file" => {
                std::fs::remove_file(target).expect("remove");
                caught(&verify(&location).await, &target_name, "missing", case);
            }
            "add file" => {
                let added = target.with_file_name("20991231T000000.000000Z-x-0.jsonl");
                std::fs::copy(target, &added).expect("copy");
                caught(
                    &verify(&location).await,
                    &name(&location, &added),
                    "covered by no digest",
                    case,
                );
            }
            "replace middle digest" | "replace last digest" => {
                // Re-made by someone without the key: signed with another one.
                let at = if case == "replace middle digest" {
                    2
                } else {
                    4
                };
                let text = std::fs::read_to_string(&digests[at]).expect("read");
                let mut digest: lockstep_audit::Digest =
                    serde_json::from_str(&text).expect("digest");
                digest.time = "2099-01-01T00:00:00.000000Z".into();
                let other = SigningKey::from_seed_hex(&"09".repeat(32), "other").expect("key");
                digest.public_key = Some(other.public_key().0);
                digest.signature = None;
                digest.signature = Some(other.sign(&digest.signed_bytes().expect("bytes")));
                std::fs::write(
                    &digests[at],
                    serde_json::to_vec_pretty(&digest).expect("json"),
                )
                .expect("write");
                caught(
                    &verify(&location).await,
                    &name(&location, &digests[at]),
                    "not by the key given",
                    case,
                );
                if at == 2 {
                    caught(
                        &verify(&location).await,
                        &name(&location, &digests[3]),
                        "was replaced or edited",
                        case,
                    );
                }
            }
            "unsigned last digest" => {
                let text = std::fs::read_to_string(&digests[4]).expect("read");
                let mut digest: lockstep_audit::Digest =
                    serde_json::from_str(&text).expect("digest");
                digest.signature = None;
                digest.public_key = None;
                std::fs::write(
                    &digests[4],
                    serde_json::to_vec_pretty(&digest).expect("json"),
                )
                .expect("write");
                // Without a pinned key the stripped signature still shows.
                let found =
                    AuditLog::open(location.to_str().expect("utf-8"), &AwsOptions::default())
                        .expect("open")
                        .verify(None)
                        .await
                        .expect("verify");
                caught(&found, &name(&location, &digests[4]), "stripped", case);
            }
            "remove middle digest" => {
                std::fs::remove_file(&digests[2]).expect("remove");
                let found = verify(&location).await;
                caught(
                    &found,
                    &name(&location, &digests[3]),
                    "missing: removed",
                    case,
                );
                caught(
                    &found,
                    &name(&location, &logs[2]),
                    "covered by no digest",
                    case,
                );
            }
            "remove last digest" => {
                std::fs::remove_file(&digests[4]).expect("remove");
                caught(
                    &verify(&location).await,
                    &name(&location, &logs[4]),
                    "covered by no digest",
                    case,
                );
            }
            "move record" => {
                // A record copied from another file: its chain starts elsewhere.
                let other = lines(&logs[1]);
                records[0] = other[0].clone();
                write_lines(target, &records);
                caught(
                    &verify(&location).await,
                    &format!("{target_name}#0"),
                    "reordered",
                    case,
                );
            }
            other => unreachable!("{other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn on_s3_racing_writers_append_one_chain() {
    let moto = lockstep_testkit::Moto::start();
    moto.create_bucket("audit");
    let aws = AwsOptions {
        endpoint: Some(moto.endpoint()),
        region: Some(lockstep_testkit::REGION.into()),
        credentials: Some((
            lockstep_testkit::ACCESS_KEY.into(),
            lockstep_testkit::SECRET_KEY.into(),
        )),
    };
    let location = "s3://audit/store/_lockstep/audit";
    let tasks: Vec<_> = (0..6)
        .map(|w| {
            let aws = aws.clone();
            tokio::spawn(async move {
                let log = AuditLog::open(location, &aws)
                    .expect("open")
                    .with_signer(key());
                for r in 0..4 {
                    log.record(vec![entry(w * 100 + r), entry(w * 100 + r + 50)])
                        .await
                        .expect("record");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
    let log = AuditLog::open(location, &aws).expect("open");
    let found = log.verify(Some(&key().public_key())).await.expect("verify");
    assert!(found.ok(), "{:#?}", found.problems);
    assert_eq!((found.digests, found.files, found.entries), (24, 24, 48));

    // An object edited on S3 is found like a local file.
    let keys = moto.boto3(
        "r = client('s3').list_objects_v2(Bucket='audit', Prefix='store/_lockstep/audit/logs/')\n\
         print('\\n'.join(o['Key'] for o in r['Contents']))",
    );
    let first = keys.lines().next().expect("a log file").to_owned();
    moto.boto3(&format!(
        "s3 = client('s3')\n\
         body = s3.get_object(Bucket='audit', Key='{first}')['Body'].read()\n\
         s3.put_object(Bucket='audit', Key='{first}', Body=body.replace(b'\"rows\":', b'\"rows\":1'))\n\
         print('ok')"
    ));
    let found = log.verify(Some(&key().public_key())).await.expect("verify");
    let at = first.trim_start_matches("store/_lockstep/audit/");
    caught(&found, at, "edited", "an edit on S3");
}
