//! `lockstep featurestore-local` speaks the SageMaker Feature Store runtime protocol:
//! boto3 and the AWS SDK for Rust use it unchanged, and the stream host writes to it
//! through the `sagemaker:URL` online store.

mod common;

use common::{FeatureStoreLocal, plugin, repo, s, text};
use lockstep_core::compare::{Row, canonical_order};
use lockstep_featurestore::{SageMakerOptions, SageMakerStore, wire};
use lockstep_online::{GroupRef, OnlineStore};
use lockstep_testkit::{Moto, free_port};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn boto3_puts_gets_batch_gets_and_deletes_with_the_services_errors() {
    let dir = tempfile::tempdir().unwrap();
    let local = FeatureStoreLocal::start(dir.path(), &["users=user_id:ts"]);
    let out = local.boto3(
        r#"
def put(uid, ts, score):
    fs.put_record(FeatureGroupName='users', Record=[
        {'FeatureName': 'user_id', 'ValueAsString': uid},
        {'FeatureName': 'ts', 'ValueAsString': ts},
        {'FeatureName': 'score', 'ValueAsString': score}])
put('u1', '2024-01-01T00:00:00Z', '1.5')
put('u2', '2024-01-01T00:00:00Z', '7')
put('u1', '2024-01-02T00:00:00Z', '2.5')
put('u1', '2023-12-31T00:00:00Z', '-1')      # older: ignored, as SageMaker does
got = fs.get_record(FeatureGroupName='users', RecordIdentifierValueAsString='u1')
print(json.dumps({f['FeatureName']: f['ValueAsString'] for f in got['Record']}))
only = fs.get_record(FeatureGroupName='users', RecordIdentifierValueAsString='u1', FeatureNames=['score'])
print(json.dumps(only['Record']))
missing = fs.get_record(FeatureGroupName='users', RecordIdentifierValueAsString='nobody')
print('Record' in missing)
batch = fs.batch_get_record(Identifiers=[
    {'FeatureGroupName': 'users', 'RecordIdentifiersValueAsString': ['u1', 'u2', 'nobody']},
    {'FeatureGroupName': 'ghosts', 'RecordIdentifiersValueAsString': ['g1']}])
print(sorted(r['RecordIdentifierValueAsString'] for r in batch['Records']))
print([e['ErrorCode'] for e in batch['Errors']])
fs.delete_record(FeatureGroupName='users', RecordIdentifierValueAsString='u2', EventTime='2024-01-03T00:00:00Z')
print('Record' in fs.get_record(FeatureGroupName='users', RecordIdentifierValueAsString='u2'))
for bad in [lambda: fs.get_record(FeatureGroupName='ghosts', RecordIdentifierValueAsString='x'),
            lambda: fs.put_record(FeatureGroupName='users', Record=[{'FeatureName': 'ts', 'ValueAsString': '2024-01-01T00:00:00Z'}]),
            lambda: fs.put_record(FeatureGroupName='users', Record=[{'FeatureName': 'user_id', 'ValueAsString': 'u3'}, {'FeatureName': 'ts', 'ValueAsString': 'yesterday'}])]:
    try:
        bad()
        print('no error')
    except fs.exceptions.ResourceNotFound as e:
        print('ResourceNotFound', 'ghosts' in str(e))
    except fs.exceptions.ValidationError as e:
        print('ValidationError', str(e).replace('\n', ' '))
"#,
    );
    let lines: Vec<&str> = out.lines().collect();
    let u1: Json = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(
        u1,
        serde_json::json!({"user_id": "u1", "ts": "2024-01-02T00:00:00Z", "score": "2.5"})
    );
    assert_eq!(
        lines[1],
        r#"[{"FeatureName": "score", "ValueAsString": "2.5"}]"#
    );
    assert_eq!(lines[2], "False");
    assert_eq!(lines[3], "['u1', 'u2']");
    assert_eq!(lines[4], "['ResourceNotFound']");
    assert_eq!(lines[5], "False");
    assert_eq!(lines[6], "ResourceNotFound True");
    assert!(
        lines[7].starts_with("ValidationError") && lines[7].contains("user_id"),
        "{out}"
    );
    assert!(
        lines[8].starts_with("ValidationError") && lines[8].contains("yesterday"),
        "{out}"
    );
}

/// DeleteRecord as AWS's API reference describes it, case by case, through boto3:
/// EventTime decides (a soft delete older than the record leaves it, a hard one is a
/// ValidationError), a delete leaves a marker that older puts cannot get past,
/// DeletionMode and TargetStores are honoured or refused by name, a group's ARN
/// names it, and an oversized request is a ValidationError, not a bare 413.
#[test]
fn boto3_deletes_by_event_time_mode_and_target_as_the_service_does() {
    let dir = tempfile::tempdir().unwrap();
    let local = FeatureStoreLocal::start(dir.path(), &["users=user_id:ts"]);
    let out = local.boto3(
        r#"
def put(uid, ts, score, group='users'):
    fs.put_record(FeatureGroupName=group, Record=[
        {'FeatureName': 'user_id', 'ValueAsString': uid},
        {'FeatureName': 'ts', 'ValueAsString': ts},
        {'FeatureName': 'score', 'ValueAsString': score}])
def score(uid):
    got = fs.get_record(FeatureGroupName='users', RecordIdentifierValueAsString=uid)
    return {f['FeatureName']: f['ValueAsString'] for f in got['Record']}.get('score') if 'Record' in got else None
def attempt(label, call):
    try:
        call()
        print(label, 'ok')
    except fs.exceptions.ValidationError as e:
        print(label, 'ValidationError', str(e).replace('\n', ' '))
def delete(uid, at, **kw):
    fs.delete_record(FeatureGroupName='users', RecordIdentifierValueAsString=uid, EventTime=at, **kw)

put('u1', '2024-01-02T00:00:00Z', '2')
# 1. A soft delete older than the record leaves it.
delete('u1', '2024-01-01T00:00:00Z')
print('soft-older', score('u1'))
# 2. A hard delete older than the record is refused.
attempt('hard-older', lambda: delete('u1', '2024-01-01T00:00:00Z', DeletionMode='HardDelete'))
print('after-hard-older', score('u1'))
# 3. A delete at a later time removes it; an older put cannot bring it back.
delete('u1', '2024-01-03T00:00:00Z')
print('deleted', score('u1'))
put('u1', '2024-01-02T12:00:00Z', '99')
print('older-put', score('u1'))
put('u1', '2024-01-03T00:00:00Z', '98')
print('equal-put', score('u1'))
# 4. A later put is a new record.
put('u1', '2024-01-04T00:00:00Z', '4')
print('later-put', score('u1'))
# 5. A hard delete at a later time removes it too, marker included.
delete('u1', '2024-01-05T00:00:00Z', DeletionMode='HardDelete')
put('u1', '2024-01-04T12:00:00Z', '77')
print('hard-deleted', score('u1'))
# 6. TargetStores: the offline store alone leaves the online record.
put('u2', '2024-01-01T00:00:00Z', '5')
delete('u2', '2024-02-01T00:00:00Z', TargetStores=['OfflineStore'])
print('offline-only', score('u2'))
delete('u2', '2024-02-01T00:00:00Z', TargetStores=['OnlineStore', 'OfflineStore'])
print('online-too', score('u2'))
# 7. Values outside the enums are refused by name (boto3 validates enums itself, so
# they go through the raw client's parameters).
import botocore
raw = boto3.client('sagemaker-featurestore-runtime', endpoint_url=fs.meta.endpoint_url,
    region_name='us-east-1', aws_access_key_id='x', aws_secret_access_key='x',
    config=botocore.config.Config(parameter_validation=False))
attempt('bad-mode', lambda: raw.delete_record(FeatureGroupName='users', RecordIdentifierValueAsString='u2',
    EventTime='2024-03-01T00:00:00Z', DeletionMode='Shred'))
attempt('bad-target', lambda: raw.delete_record(FeatureGroupName='users', RecordIdentifierValueAsString='u2',
    EventTime='2024-03-01T00:00:00Z', TargetStores=['Somewhere']))
# 8. A group's ARN names it.
arn = 'arn:aws:sagemaker:us-east-1:123456789012:feature-group/users'
put('u3', '2024-01-01T00:00:00Z', '3', group=arn)
print('arn', score('u3'), fs.get_record(FeatureGroupName=arn, RecordIdentifierValueAsString='u3')['Record'][0]['ValueAsString'])
# 9. A record far over any size limit is a ValidationError that says so.
attempt('huge', lambda: put('u4', '2024-01-01T00:00:00Z', 'x' * (3 << 20)))
"#,
    );
    let lines: Vec<&str> = out.lines().collect();
    let expect = [
        "soft-older 2",
        "hard-older ValidationError",
        "after-hard-older 2",
        "deleted None",
        "older-put None",
        "equal-put None",
        "later-put 4",
        "hard-deleted None",
        "offline-only 5",
        "online-too None",
        "bad-mode ValidationError",
        "bad-target ValidationError",
        "arn 3 u3",
        "huge ValidationError",
    ];
    assert_eq!(lines.len(), expect.len(), "{out}");
    for (line, want) in lines.iter().zip(expect) {
        assert!(
            line.starts_with(want),
            "expected `{want}`, got `{line}`\n{out}"
        );
    }
    assert!(lines[1].contains("HardDelete"), "{out}");
    assert!(
        lines[10].contains("Shred") && lines[10].contains("SoftDelete"),
        "{out}"
    );
    assert!(lines[11].contains("Somewhere"), "{out}");
    assert!(lines[13].contains("too large"), "{out}");
}

/// A group defined by its CreateFeatureGroup request: PutRecord checks features and
/// their types, names and values keep the service's patterns and lengths, TtlDuration
/// (the put's, else the group's) makes a record expire at EventTime + TtlDuration and
/// GetRecord/BatchGetRecord report ExpiresAt when asked, and a put to the offline store
/// alone leaves the online record — case by case from AWS's API reference, via boto3.
#[test]
fn boto3_puts_are_held_to_the_groups_definition_limits_and_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let definition = dir.path().join("groups.json");
    std::fs::write(
        &definition,
        r#"[{"FeatureGroupName": "users", "RecordIdentifierFeatureName": "user_id",
             "EventTimeFeatureName": "ts",
             "FeatureDefinitions": [{"FeatureName": "user_id", "FeatureType": "String"},
                                    {"FeatureName": "ts", "FeatureType": "String"},
                                    {"FeatureName": "clicks", "FeatureType": "Integral"},
                                    {"FeatureName": "score", "FeatureType": "Fractional"}],
             "OnlineStoreConfig": {"TtlDuration": {"Unit": "Days", "Value": 1}}}]"#,
    )
    .unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args([
            "featurestore-local",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--data", s(&data), "--group-definition", s(&definition)])
        .args(["--group", "loose=id"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("listening on"), "{first}");
    let local = FeatureStoreLocal {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let out = local.boto3(
        r#"
import botocore, datetime, time
raw = boto3.client('sagemaker-featurestore-runtime', endpoint_url=fs.meta.endpoint_url,
    region_name='us-east-1', aws_access_key_id='x', aws_secret_access_key='x',
    config=botocore.config.Config(parameter_validation=False))
def iso(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')
def put(uid, ts, client=fs, group='users', **features):
    record = [{'FeatureName': 'user_id', 'ValueAsString': uid}, {'FeatureName': 'ts', 'ValueAsString': ts}]
    record += [{'FeatureName': k, 'ValueAsString': v} for k, v in features.items()]
    extra = {}
    for k in ('TtlDuration', 'TargetStores'):
        if k in features:
            extra[k] = features.pop(k)
    record = [f for f in record if f['FeatureName'] not in ('TtlDuration', 'TargetStores')]
    client.put_record(FeatureGroupName=group, Record=record, **extra)
def get(uid, **kw):
    return fs.get_record(FeatureGroupName='users', RecordIdentifierValueAsString=uid, **kw)
def attempt(label, call):
    try:
        call()
        print(label, 'ok')
    except (fs.exceptions.ValidationError, raw.exceptions.ValidationError) as e:
        print(label, 'ValidationError', str(e).replace('\n', ' ')[:300])

now = time.time()
# 1. Types and features from the definition.
attempt('typed', lambda: put('u1', iso(now), clicks='3', score='0.5'))
attempt('unknown', lambda: put('u1', iso(now), likes='3'))
attempt('not-integral', lambda: put('u1', iso(now), clicks='1.5'))
attempt('not-fractional', lambda: put('u1', iso(now), score='abc'))
attempt('no-hash-feature', lambda: put('u1', iso(now), lockstep_plugin_hash='h'))
# 2. Names and values within the service's patterns and lengths, in any group.
attempt('bad-name', lambda: raw.put_record(FeatureGroupName='loose', Record=[
    {'FeatureName': 'id', 'ValueAsString': 'a'}, {'FeatureName': 'event_time', 'ValueAsString': iso(now)},
    {'FeatureName': 'bad name', 'ValueAsString': '1'}]))
attempt('long-value', lambda: raw.put_record(FeatureGroupName='loose', Record=[{'FeatureName': 'id', 'ValueAsString': 'a'},
    {'FeatureName': 'event_time', 'ValueAsString': iso(now)}, {'FeatureName': 'v', 'ValueAsString': 'x' * 358401}]))
attempt('long-group', lambda: raw.get_record(FeatureGroupName='g' * 151, RecordIdentifierValueAsString='a'))
attempt('batch-101', lambda: raw.batch_get_record(Identifiers=[{'FeatureGroupName': 'users',
    'RecordIdentifiersValueAsString': ['u%d' % i for i in range(101)]}]))
attempt('list-value', lambda: raw.put_record(FeatureGroupName='loose', Record=[
    {'FeatureName': 'id', 'ValueAsString': 'a'}, {'FeatureName': 'event_time', 'ValueAsString': iso(now)},
    {'FeatureName': 'v', 'ValueAsStringList': ['1', '2']}]))
# 3. The group's TTL: ExpiresAt = EventTime + 1 day.
got = get('u1', ExpirationTimeResponse='Enabled')
expires = datetime.datetime.fromisoformat(got['ExpiresAt'].replace('Z', '+00:00')).timestamp()
print('group-ttl', abs(expires - (now + 86400)) < 0.001, 'ExpiresAt' in get('u1'))
# 4. A record older than the group's TTL has expired at once.
put('u2', iso(now - 2 * 86400), clicks='1')
print('expired-by-group', 'Record' in get('u2'))
# 5. A put's own TtlDuration supersedes the group's: 2 seconds, then it is gone.
put('u3', iso(now), clicks='7', TtlDuration={'Unit': 'Seconds', 'Value': 2})
print('own-ttl', [f['ValueAsString'] for f in get('u3')['Record'] if f['FeatureName'] == 'clicks'])
batch = fs.batch_get_record(Identifiers=[{'FeatureGroupName': 'users', 'RecordIdentifiersValueAsString': ['u1', 'u2', 'u3']}],
    ExpirationTimeResponse='Enabled')
print('batch', sorted((r['RecordIdentifierValueAsString'], 'ExpiresAt' in r) for r in batch['Records']))
time.sleep(max(0, now + 2.2 - time.time()))
print('after-ttl', 'Record' in get('u3'), len(fs.batch_get_record(Identifiers=[{'FeatureGroupName': 'users',
    'RecordIdentifiersValueAsString': ['u3']}])['Records']))
attempt('bad-unit', lambda: raw.put_record(FeatureGroupName='users', Record=[
    {'FeatureName': 'user_id', 'ValueAsString': 'u4'}, {'FeatureName': 'ts', 'ValueAsString': iso(now)}],
    TtlDuration={'Unit': 'Years', 'Value': 1}))
attempt('bad-expiration', lambda: raw.get_record(FeatureGroupName='users', RecordIdentifierValueAsString='u1',
    ExpirationTimeResponse='Sometimes'))
# 6. A put to the offline store alone leaves the online record as it was.
put('u1', iso(now + 1), clicks='99', TargetStores=['OfflineStore'])
print('offline-put', [f['ValueAsString'] for f in get('u1')['Record'] if f['FeatureName'] == 'clicks'])
attempt('bad-target', lambda: raw.put_record(FeatureGroupName='users', Record=[
    {'FeatureName': 'user_id', 'ValueAsString': 'u1'}, {'FeatureName': 'ts', 'ValueAsString': iso(now)}],
    TargetStores=['Elsewhere']))
"#,
    );
    let lines: Vec<&str> = out.lines().collect();
    let expect = [
        "typed ok",
        "unknown ValidationError",
        "not-integral ValidationError",
        "not-fractional ValidationError",
        "no-hash-feature ValidationError",
        "bad-name ValidationError",
        "long-value ValidationError",
        "long-group ValidationError",
        "batch-101 ValidationError",
        "list-value ValidationError",
        "group-ttl True False",
        "expired-by-group False",
        "own-ttl ['7']",
        "batch [('u1', True), ('u3', True)]",
        "after-ttl False 0",
        "bad-unit ValidationError",
        "bad-expiration ValidationError",
        "offline-put ['3']",
        "bad-target ValidationError",
    ];
    assert_eq!(lines.len(), expect.len(), "{out}");
    for (line, want) in lines.iter().zip(expect) {
        assert!(
            line.starts_with(want),
            "expected `{want}`, got `{line}`\n{out}"
        );
    }
    assert!(lines[1].contains("likes"), "{out}");
    assert!(lines[2].contains("Integral"), "{out}");
    assert!(lines[4].contains("lockstep_plugin_hash"), "{out}");
    assert!(lines[5].contains("bad name"), "{out}");
    assert!(lines[9].contains("collection"), "{out}");
    assert!(lines[16].contains("Sometimes"), "{out}");
    drop(local);

    // A definition the service would refuse stops the endpoint before it listens.
    std::fs::write(
        &definition,
        r#"{"FeatureGroupName": "users", "RecordIdentifierFeatureName": "user_id",
            "EventTimeFeatureName": "ts",
            "FeatureDefinitions": [{"FeatureName": "user_id", "FeatureType": "String"},
                                   {"FeatureName": "ts", "FeatureType": "String"},
                                   {"FeatureName": "is_deleted", "FeatureType": "String"}]}"#,
    )
    .unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args([
            "featurestore-local",
            "--listen",
            "127.0.0.1:0",
            "--data",
            s(&data),
        ])
        .args(["--group-definition", s(&definition)])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = text(&refused.stderr);
    assert!(
        err.contains("is_deleted") && err.contains("reserved") && err.contains("groups.json"),
        "{err}"
    );
}

#[test]
fn the_stream_host_writes_through_the_sagemaker_protocol_and_both_clients_read_it() {
    let moto = Moto::start();
    let wasm = plugin("txn_velocity");
    let runtime = lockstep_runtime::Runtime::new(lockstep_runtime::RuntimeConfig::default())
        .expect("runtime");
    let loaded = runtime.load_file(&wasm).expect("load plugin");
    let m = loaded.manifest();
    let group = GroupRef::of(m, loaded.hash());
    let name = wire::group_name(&group);
    let dir = tempfile::tempdir().unwrap();
    let local = FeatureStoreLocal::start(&dir.path().join("fs"), &[&format!("{name}=card_id")]);

    let events = repo("golden").join("txn_velocity").join("events.jsonl");
    let endpoint = moto.endpoint();
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args([
            "stream",
            "put",
            "--plugin",
            s(&wasm),
            "--stream",
            "sm",
            "--events",
            s(&events),
            "--endpoint-url",
            &endpoint,
            "--create-shards",
            "2",
        ])
        .envs(moto.env())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let state = dir.path().join("state");
    let store = format!("sagemaker:{}", local.url);
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args([
            "stream",
            "run",
            "--plugin",
            s(&wasm),
            "--stream",
            "sm",
            "--endpoint-url",
            &endpoint,
            "--online-store",
            &store,
            "--state",
            s(&state),
            "--allowed-lateness",
            "5m",
            "--idle-poll",
            "50ms",
            "--stop-when-idle",
            "--drain-on-stop",
            // Paced PutRecords, as under an account quota.
            "--sagemaker-rate",
            "2000",
        ])
        .envs(moto.env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // The latest golden row of every card.
    let expected =
        std::fs::read_to_string(repo("golden").join("txn_velocity").join("expected.jsonl"))
            .unwrap();
    let mut rows: Vec<Row> = expected
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    canonical_order(&mut rows, "card_id");
    let mut latest: BTreeMap<String, Row> = BTreeMap::new();
    for row in rows {
        latest.insert(row["card_id"].as_str().unwrap().to_owned(), row);
    }

    // The AWS SDK for Rust, through our backend, typed by the row schema.
    let io = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = io.block_on(SageMakerStore::with_options(SageMakerOptions {
        aws: lockstep_aws::AwsOptions {
            endpoint: Some(local.url.clone()),
            region: Some("us-east-1".into()),
            credentials: Some(("local".into(), "local".into())),
        },
        ..SageMakerOptions::default()
    }));
    client.set_schema(&group, lockstep_core::schema::row_schema(m));
    let keys: Vec<String> = latest.keys().cloned().collect();
    let got = io.block_on(client.get(&group, &keys)).expect("batch get");
    for (key, record) in keys.iter().zip(got) {
        let record = record.unwrap_or_else(|| panic!("no record for {key}"));
        assert_eq!(&record.row, &latest[key], "{key}");
        assert_eq!(record.plugin_hash, group.plugin_hash);
    }

    // boto3, as a Python service would read it.
    let (key, row) = latest.iter().next().unwrap();
    let out = local.boto3(&format!(
        "r = fs.get_record(FeatureGroupName='{name}', RecordIdentifierValueAsString={key:?})\n\
         print(json.dumps({{f['FeatureName']: f['ValueAsString'] for f in r['Record']}}))"
    ));
    let got: BTreeMap<String, String> = serde_json::from_str(out.trim()).unwrap();
    for (feature, value) in row {
        match wire::value_text(value) {
            Some(text) => assert_eq!(got.get(feature), Some(&text), "{feature}"),
            None => assert!(!got.contains_key(feature), "{feature}"),
        }
    }
    assert_eq!(got.get(wire::PLUGIN_HASH_FEATURE), Some(&group.plugin_hash));

    // Erasure through the SDK: DeleteRecord as of a time. A HardDelete and a SoftDelete
    // both leave nothing to read; a record newer than the delete is said to be newer
    // and stays; deleting what is gone finds nothing.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let mut keys_left = latest.keys().skip(1).cloned();
    let (hard, soft, newer) = (
        keys_left.next().unwrap(),
        keys_left.next().unwrap(),
        keys_left.next().unwrap(),
    );
    for (key, is_soft) in [(&hard, false), (&soft, true)] {
        let outcome = io
            .block_on(client.delete_as_of(&group, key, now, is_soft))
            .expect("delete");
        assert_eq!(
            outcome,
            lockstep_online::DeleteOutcome::Deleted { existed: true },
            "{key}"
        );
        let got = io
            .block_on(client.get(&group, std::slice::from_ref(key)))
            .unwrap();
        assert_eq!(got, vec![None], "{key} is gone (soft: {is_soft})");
    }
    let again = io
        .block_on(client.delete_as_of(&group, &hard, now, false))
        .expect("delete again");
    assert_eq!(
        again,
        lockstep_online::DeleteOutcome::Deleted { existed: false }
    );
    let stored_time = io
        .block_on(client.get(&group, std::slice::from_ref(&newer)))
        .unwrap()[0]
        .as_ref()
        .expect("stored")
        .event_time;
    let outcome = io
        .block_on(client.delete_as_of(&group, &newer, stored_time - 1_000_000, false))
        .expect("an older delete");
    assert_eq!(
        outcome,
        lockstep_online::DeleteOutcome::Newer {
            stored: stored_time
        }
    );
    assert!(
        io.block_on(client.get(&group, std::slice::from_ref(&newer)))
            .unwrap()[0]
            .is_some(),
        "a record newer than the delete stays"
    );

    // Another build of the same group version is refused through the protocol too.
    let naive = common::built(&repo("plugins").join("txn_velocity"), &["naive-sum"]);
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args([
            "stream",
            "run",
            "--plugin",
            s(&naive),
            "--stream",
            "sm",
            "--endpoint-url",
            &endpoint,
            "--online-store",
            &store,
            "--state",
            s(&dir.path().join("naive-state")),
            "--idle-poll",
            "50ms",
            "--stop-when-idle",
        ])
        .envs(moto.env())
        .output()
        .unwrap();
    assert!(!out.status.success(), "another plugin's rows were accepted");
    let err = text(&out.stderr);
    assert!(err.contains("refusing rows from plugin"), "{err}");
    assert!(err.contains(&group.plugin_hash), "{err}");
}

#[test]
fn a_store_that_goes_away_holds_the_stream_back_and_loses_nothing() {
    let moto = Moto::start();
    let wasm = plugin("txn_velocity");
    let group = common::group(&wasm);
    let name = wire::group_name(&group);
    let definition = format!("{name}=card_id");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fs");
    let port = free_port();
    let local = FeatureStoreLocal::start_on(&data, &[&definition], port);
    let url = local.url.clone();
    // The store is down before the first write.
    drop(local);

    let events = repo("golden").join("txn_velocity").join("events.jsonl");
    let endpoint = moto.endpoint();
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args([
            "stream",
            "put",
            "--plugin",
            s(&wasm),
            "--stream",
            "down",
            "--events",
            s(&events),
            "--endpoint-url",
            &endpoint,
            "--create-shards",
            "2",
        ])
        .envs(moto.env())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let state = dir.path().join("state");
    let store = format!("sagemaker:{url}");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_lockstep"))
            .args([
                "stream",
                "run",
                "--plugin",
                s(&wasm),
                "--stream",
                "down",
                "--endpoint-url",
                &endpoint,
                "--online-store",
                &store,
                "--state",
                s(&state),
                "--allowed-lateness",
                "5m",
                "--idle-poll",
                "50ms",
                "--stop-when-idle",
                "--drain-on-stop",
            ])
            .envs(moto.env())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // It retries while the store is away; its rows may reach the log file, but no
    // checkpoint covers them. Killed there, it must not keep them twice.
    let mut first = run();
    // Wait for the first failed write (the SDK's own retries come first, so the time
    // it takes depends on the machine), then check it is still retrying.
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stderr = first.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let mut seen = Vec::new();
    let mut retried = 0;
    while retried < 2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                retried += usize::from(line.contains("online store write failed; retrying"));
                seen.push(line);
            }
            Err(_) => panic!("no two failed writes within 90 s:\n{}", seen.join("\n")),
        }
    }
    assert!(
        first.try_wait().unwrap().is_none(),
        "it gave up instead of retrying:\n{}",
        seen.join("\n")
    );
    first.kill().unwrap();
    first.wait().unwrap();
    reader.join().unwrap();
    // The store comes back; a restart finishes the stream.
    let _back = FeatureStoreLocal::start_on(&data, &[&definition], port);
    let out = run().wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let rows_log = state.join("rows.jsonl");
    let mut rows: Vec<Row> = std::fs::read_to_string(&rows_log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    canonical_order(&mut rows, "card_id");
    let mut expected: Vec<Row> =
        std::fs::read_to_string(repo("golden").join("txn_velocity").join("expected.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    canonical_order(&mut expected, "card_id");
    assert!(
        rows == expected,
        "the row log differs from the golden rows after the outage"
    );
}
