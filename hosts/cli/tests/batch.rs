//! `lockstep batch run` as an operator runs it: real files, re-runs, a different plugin,
//! bad rows, and a process killed half way.

use lockstep_offline::OfflineStore;
mod common;

use common::{lockstep, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

fn velocity() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/txn_velocity");
        lockstep_build::build(&dir, &Default::default())
            .expect("build")
            .path
    })
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn generate(dir: &Path, rows: usize) -> PathBuf {
    generate_as(dir, rows, "events.jsonl")
}

/// Generated transactions in `dir/name`; `.parquet` names give Parquet.
fn generate_as(dir: &Path, rows: usize, name: &str) -> PathBuf {
    generate_seeded(dir, rows, 5, name)
}

/// [`generate_as`] with another seed: other events over the same 200 cards and hours.
fn generate_seeded(dir: &Path, rows: usize, seed: u64, name: &str) -> PathBuf {
    let events = dir.join(name);
    let out = lockstep(&[
        "gen",
        "events",
        "--kind",
        "transactions",
        "--rows",
        &rows.to_string(),
        "--entities",
        "200",
        "--seed",
        &seed.to_string(),
        "--out",
        s(&events),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    events
}

async fn stored_rows(store: &Path) -> usize {
    let store = OfflineStore::open(store).expect("open");
    store
        .read("txn_velocity", "1.0.0")
        .await
        .expect("read")
        .iter()
        .map(|b| b.num_rows())
        .sum()
}

/// `lockstep batch run` of `txn_velocity` from `source` into `store`, plus `extra`.
fn batch_command(source: &str, store: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lockstep"));
    cmd.args([
        "batch",
        "run",
        "--plugin",
        s(velocity()),
        "--source",
        source,
        "--offline-store",
        store,
        "--no-cache",
    ]);
    cmd.args(extra);
    cmd
}

fn backfill(events: &Path, store: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "batch",
        "run",
        "--plugin",
        s(velocity()),
        "--source",
        s(events),
        "--offline-store",
        s(store),
        "--no-cache",
    ];
    args.extend_from_slice(extra);
    lockstep(&args)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rerun_leaves_the_same_rows_and_the_state_snapshot_is_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = generate(dir.path(), 3_000);
    let store = dir.path().join("store");
    let state = dir.path().join("state.parquet");
    let first = backfill(
        &events,
        &store,
        &["--state-out", s(&state), "--partitions", "3"],
    );
    assert!(first.status.success(), "{}", text(&first.stderr));
    let summary = text(&first.stdout);
    assert!(
        summary.contains("backfilled txn_velocity@1.0.0") && summary.contains("hour partitions"),
        "{summary}"
    );
    let rows = stored_rows(&store).await;
    let woken = wake_rows(&summary);
    assert!(
        rows - woken > 2_900 && rows - woken < 3_000,
        "duplicates dropped: {rows} rows, {woken} from wake-ups"
    );
    assert!(woken > 0, "windows emptied between transactions: {summary}");
    let again = backfill(&events, &store, &["--partitions", "1"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(
        stored_rows(&store).await,
        rows,
        "a re-run replaces, never duplicates"
    );
    let (info, states) = lockstep_offline::snapshot::read_states(&state).expect("snapshot");
    assert_eq!(
        (info.group.as_str(), info.state_version),
        ("txn_velocity", 2)
    );
    assert_eq!(states.len(), distinct_cards(&events), "one state per card");
}

/// Cards that have at least one transaction in the file.
fn distinct_cards(events: &Path) -> usize {
    let text = std::fs::read_to_string(events).expect("events");
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            v["card_id"].as_str().expect("card_id").to_owned()
        })
        .collect::<std::collections::HashSet<_>>()
        .len()
}

#[test]
fn another_plugin_cannot_write_into_a_registered_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = generate(dir.path(), 300);
    let store = dir.path().join("store");
    assert!(backfill(&events, &store, &[]).status.success());
    // The same transform plus one custom section: a different component, a different hash.
    let mut bytes = std::fs::read(velocity()).expect("read");
    bytes.extend_from_slice(&[0x00, 0x05, 0x04, b'n', b'o', b't', b'e']);
    let other = dir.path().join("other.wasm");
    std::fs::write(&other, bytes).expect("write");
    let out = lockstep(&[
        "batch",
        "run",
        "--plugin",
        s(&other),
        "--source",
        s(&events),
        "--offline-store",
        s(&store),
        "--no-cache",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("txn_velocity@1.0.0 is registered with plugin")
            && err.contains("bump the version"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_rows_stop_the_job_unless_a_rejects_file_is_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("events.csv");
    std::fs::write(&csv, "card_id,ts,amount,merchant\nc1,2024-01-01T00:00:00Z,1.5,m\nc1,not-a-time,2.5,m\n,2024-01-01T00:00:02Z,3,m\n").expect("csv");
    let store = dir.path().join("store");
    let out = backfill(&csv, &store, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("2 source rows could not be read") && err.contains("nothing was written"),
        "{err}"
    );
    // Nothing written, and the failed job did not bind the group version.
    assert!(matches!(
        OfflineStore::open(&store)
            .expect("open")
            .version("txn_velocity", "1.0.0")
            .await,
        Err(lockstep_offline::OfflineError::UnknownVersion { .. })
    ));
    let rejects = dir.path().join("rejects.jsonl");
    let out = backfill(&csv, &store, &["--rejects", s(&rejects)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&rejects)
            .expect("rejects")
            .lines()
            .count(),
        2
    );
    assert_eq!(stored_rows(&store).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_killed_at_any_point_leaves_only_whole_partitions_and_a_rerun_completes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = generate(dir.path(), 60_000);
    let reference = dir.path().join("reference");
    assert!(backfill(&events, &reference, &[]).status.success());
    let expected = stored_rows(&reference).await;
    let store = dir.path().join("store");
    for delay_ms in [300u64, 900, 1_600] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lockstep"))
            .args([
                "batch",
                "run",
                "--plugin",
                s(velocity()),
                "--source",
                s(&events),
                "--offline-store",
                s(&store),
                "--no-cache",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL: no cleanup runs
        let _ = child.wait();
        // Whatever was visible must be whole: every partition file reads completely.
        if store
            .join("txn_velocity/_lockstep/versions/1.0.0.json")
            .exists()
        {
            let visible = stored_rows(&store).await;
            assert!(
                visible <= expected,
                "killed after {delay_ms} ms: {visible} > {expected}"
            );
        }
    }
    assert!(backfill(&events, &store, &[]).status.success());
    assert_eq!(
        stored_rows(&store).await,
        expected,
        "the re-run completes the store exactly"
    );
}

/// The wake-up rows a backfill's summary reports.
fn wake_rows(summary: &str) -> usize {
    summary
        .lines()
        .find_map(|l| {
            l.split(": ")
                .nth(1)?
                .strip_suffix(" of the rows are wake-up rows")
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no wake-up rows in the summary:\n{summary}"))
}

/// Stored rows as JSON lines without the write stamps, which differ between runs.
async fn stored_json(store: &Path) -> Vec<String> {
    store_json(&OfflineStore::open(store).expect("open")).await
}

async fn store_json(store: &OfflineStore) -> Vec<String> {
    let mut lines = Vec::new();
    for batch in store.read("txn_velocity", "1.0.0").await.expect("read") {
        for row in 0..batch.num_rows() {
            let mut json = lockstep_core::rows::row_json(&batch, row);
            json.remove("write_time");
            json.remove("api_invocation_time");
            lines.push(serde_json::Value::Object(json).to_string());
        }
    }
    lines
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_limit_stages_rows_on_disk_and_stores_the_same_rows_in_the_same_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = generate(dir.path(), 80_000);
    let free = dir.path().join("free");
    let out = backfill(&events, &free, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let limited = dir.path().join("limited");
    let out = backfill(&events, &limited, &["--memory-limit", "32MiB"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(summary.contains("rows staged on disk"), "{summary}");
    assert!(summary.contains("peak RSS"), "{summary}");
    let (a, b) = (stored_json(&free).await, stored_json(&limited).await);
    assert_eq!(a.len() - wake_rows(&summary), 80_000 - duplicates(&events));
    assert!(
        a == b,
        "the same rows, in the same order, with and without a limit"
    );
}

/// Transactions whose id appeared earlier in the file.
fn duplicates(events: &Path) -> usize {
    let text = std::fs::read_to_string(events).expect("events");
    let mut seen = std::collections::HashSet::new();
    text.lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            !seen.insert(v["txn_id"].as_str().expect("txn_id").to_owned())
        })
        .count()
}

/// Source and offline store in S3 (the moto server): the rows equal a local backfill's.
#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_reads_from_and_writes_to_s3() {
    let moto = lockstep_testkit::Moto::start();
    moto.create_bucket("lake");
    let dir = tempfile::tempdir().expect("tempdir");
    let jsonl = generate(dir.path(), 5_000);
    let parquet = generate_as(dir.path(), 5_000, "events.parquet");
    moto.boto3(&format!(
        "s3 = client('s3')\n\
         s3.upload_file('{}', 'lake', 'raw/day=1/events.parquet')\n\
         s3.upload_file('{}', 'lake', 'raw-json/events.jsonl')",
        s(&parquet),
        s(&jsonl)
    ));
    let local = dir.path().join("local");
    assert!(backfill(&jsonl, &local, &[]).status.success());
    let expected = stored_json(&local).await;

    let endpoint = moto.endpoint();
    let run = |source: &str, store: &str| {
        let mut cmd = batch_command(source, store, &["--endpoint-url", &endpoint]);
        for (k, v) in moto.env() {
            if k != "AWS_ENDPOINT_URL" {
                cmd.env(k, v);
            }
        }
        cmd.output().expect("run lockstep")
    };
    for (source, store) in [
        ("s3://lake/raw/**/*.parquet", "s3://lake/offline-a"),
        ("s3://lake/raw-json/events.jsonl", "s3://lake/offline-b"),
    ] {
        let out = run(source, store);
        assert!(out.status.success(), "{source}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains(&format!("under {store}/txn_velocity")));
        // Read the S3 store back through the library, as a training-set job would.
        let s3 = lockstep_offline::S3Options {
            endpoint: Some(moto.endpoint()),
            region: Some(lockstep_testkit::REGION.into()),
            credentials: Some((
                lockstep_testkit::ACCESS_KEY.into(),
                lockstep_testkit::SECRET_KEY.into(),
            )),
        };
        let lines = store_json(&OfflineStore::open_location(store, &s3).expect("open")).await;
        assert!(
            lines == expected,
            "{source}: the same rows as a local backfill"
        );
    }

    let out = run("s3://lake/nothing-here/*.parquet", "s3://lake/offline-c");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("s3://lake/nothing-here"), "{err}");
}

/// `--catalog glue:DB` registers the table and its hour partitions in the Glue Data
/// Catalog (the moto server), idempotently.
#[test]
fn a_backfill_registers_its_table_and_partitions_in_glue() {
    let moto = lockstep_testkit::Moto::start();
    moto.create_bucket("lake");
    let dir = tempfile::tempdir().expect("tempdir");
    let events = generate(dir.path(), 3_000);
    let run = || {
        let mut cmd = batch_command(
            s(&events),
            "s3://lake/offline",
            &["--catalog", "glue:features"],
        );
        cmd.envs(moto.env());
        cmd.output().expect("run lockstep")
    };
    let first = run();
    assert!(first.status.success(), "{}", text(&first.stderr));
    let summary = text(&first.stdout);
    let partitions: usize = summary
        .split("rows into ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("partition count in the summary");
    assert!(
        summary.contains(&format!(
            "glue table features.txn_velocity (created), {partitions} partitions added, 0 already"
        )),
        "{summary}"
    );
    let table = moto.boto3(
        "g = client('glue')\n\
         t = g.get_table(DatabaseName='features', Name='txn_velocity')['Table']\n\
         parts = []\n\
         for page in g.get_paginator('get_partitions').paginate(DatabaseName='features', TableName='txn_velocity'):\n\
         \x20   parts += page['Partitions']\n\
         print(json.dumps({'location': t['StorageDescriptor']['Location'],\n\
         \x20 'columns': [(c['Name'], c['Type']) for c in t['StorageDescriptor']['Columns']],\n\
         \x20 'keys': [k['Name'] for k in t['PartitionKeys']],\n\
         \x20 'partitions': len(parts),\n\
         \x20 'first': sorted(p['Values'] for p in parts)[0],\n\
         \x20 'first_location': sorted((p['Values'], p['StorageDescriptor']['Location']) for p in parts)[0][1]}))",
    );
    let t: serde_json::Value = serde_json::from_str(table.trim()).expect("json");
    assert_eq!(t["location"], "s3://lake/offline/txn_velocity");
    assert_eq!(
        t["keys"],
        serde_json::json!(["version", "year", "month", "day", "hour"])
    );
    assert_eq!(t["partitions"], partitions);
    let columns = t["columns"].as_array().expect("columns");
    assert_eq!(columns[0], serde_json::json!(["card_id", "string"]));
    assert_eq!(columns[1], serde_json::json!(["event_time", "timestamp"]));
    assert!(columns.contains(&serde_json::json!(["txn_count_1h", "bigint"])));
    assert!(columns.contains(&serde_json::json!(["txn_sum_1h", "double"])));
    assert!(columns.contains(&serde_json::json!(["plugin_hash", "string"])));
    let first_values = t["first"].as_array().expect("values");
    assert_eq!(first_values[0], "1.0.0");
    assert_eq!(first_values[1], "2024");
    let first_location = t["first_location"].as_str().expect("location");
    assert_eq!(
        first_location,
        format!(
            "s3://lake/offline/txn_velocity/version=1.0.0/year=2024/month={}/day={}/hour={}",
            first_values[2].as_str().expect("month"),
            first_values[3].as_str().expect("day"),
            first_values[4].as_str().expect("hour")
        )
    );

    let again = run();
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains(&format!(
            "(updated), 0 partitions added, {partitions} already registered"
        )),
        "{}",
        text(&again.stdout)
    );

    // A catalog that cannot be reached fails the job after the commit, and says so.
    let local = dir.path().join("local");
    let mut cmd = batch_command(s(&events), s(&local), &["--catalog", "glue:features"]);
    cmd.envs(moto.env());
    cmd.env(
        "AWS_ENDPOINT_URL",
        format!("http://127.0.0.1:{}", lockstep_testkit::free_port()),
    );
    cmd.env("AWS_MAX_ATTEMPTS", "2");
    let out = cmd.output().expect("run");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("registering them in glue:features failed"),
        "{err}"
    );
}

/// Damaged Parquet sources are clear errors naming the file, never a panic (exit 101);
/// and a job that fails before its commit does not claim the group version.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_parquet_footer_is_named_and_a_failed_job_claims_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = generate_as(dir.path(), 500, "events.parquet");
    let bytes = std::fs::read(&good).expect("read");
    let store = dir.path().join("store");
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    // The footer claims more bytes than the file has.
    let mut long = bytes.clone();
    let at = long.len() - 8;
    long[at..at + 4].copy_from_slice(&(bytes.len() as u32 * 2).to_le_bytes());
    cases.push(("long-footer.parquet", long, "damaged footer"));
    // Cut in the middle: no magic at the end.
    cases.push(("cut.parquet", bytes[..bytes.len() / 2].to_vec(), "PAR1"));
    cases.push(("tiny.parquet", b"PAR1".to_vec(), "too short"));
    // Found by fuzzing (scripts/fuzz.sh parquet_files): a column chunk at a negative
    // offset, on which the Parquet reader panics.
    let fuzzed = common::repo("hosts/cli/tests/data/negative-column-offset.parquet");
    cases.push((
        "negative-offset.parquet",
        std::fs::read(fuzzed).expect("fixture"),
        "damaged metadata",
    ));
    for (name, content, why) in cases {
        let source = dir.path().join(name);
        std::fs::write(&source, content).expect("write");
        let out = backfill(&source, &store, &[]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(name) && err.contains(why), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
    // None of the failed jobs bound txn_velocity@1.0.0.
    let opened = OfflineStore::open(&store).expect("open");
    assert!(opened.version("txn_velocity", "1.0.0").await.is_err());
    // The good file then backfills.
    let out = backfill(&good, &store, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stored_rows(&store).await > 0);
}

/// A line that is not UTF-8 is a reject like any bad record: `--rejects` keeps it and
/// the job goes on; without it the job stops once, saying so once.
#[tokio::test(flavor = "multi_thread")]
async fn a_line_that_is_not_utf8_is_a_reject() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("events.jsonl");
    let mut bytes =
        br#"{"card_id":"c1","ts":1704067200000000,"amount":1.5,"merchant":"m","txn_id":"a"}"#
            .to_vec();
    bytes.extend_from_slice(b"\n{\"card_id\":\"c\xff\xfe\"}\n");
    bytes.extend_from_slice(
        br#"{"card_id":"","ts":1704067201000000,"amount":1.5,"merchant":"m","txn_id":"b"}"#,
    );
    bytes.push(b'\n');
    // Beyond the clock plus the default --max-future: refused, as the stream host
    // dead-letters it.
    bytes.extend_from_slice(
        br#"{"card_id":"c9","ts":"9999-12-31T23:59:59Z","amount":1.5,"merchant":"m","txn_id":"c"}"#,
    );
    bytes.push(b'\n');
    std::fs::write(&source, bytes).expect("write");
    let store = dir.path().join("store");
    let out = backfill(&source, &store, &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("3 source rows could not be read"), "{err}");
    assert_eq!(err.matches("could not be read").count(), 1, "{err}");
    let rejects = dir.path().join("rejects.jsonl");
    let out = backfill(&source, &store, &["--rejects", s(&rejects)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let kept = std::fs::read_to_string(&rejects).expect("rejects");
    assert_eq!(kept.lines().count(), 3, "{kept}");
    assert!(
        kept.contains("not UTF-8") && kept.contains("line 2"),
        "{kept}"
    );
    assert!(kept.contains("must not be empty"), "{kept}");
    assert!(kept.contains("in the future"), "{kept}");
    assert_eq!(stored_rows(&store).await, 1);
}

/// Events the plugin fails on are the batch host's rejects, with the plugin's message;
/// every other event is applied (the stream host dead-letters the same events).
#[tokio::test(flavor = "multi_thread")]
async fn events_the_plugin_fails_on_are_rejects_and_the_rest_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hostile = common::built(&common::repo("tests/plugins/hostile"), &[]);
    let source = dir.path().join("events.jsonl");
    std::fs::write(
        &source,
        "{\"key\":\"a\",\"ts\":0,\"mode\":\"ok\"}\n{\"key\":\"a\",\"ts\":1,\"mode\":\"fail\"}\n\
         {\"key\":\"a\",\"ts\":2,\"mode\":\"ok\"}\n{\"key\":\"b\",\"ts\":0,\"mode\":\"panic\"}\n\
         {\"key\":\"b\",\"ts\":1,\"mode\":\"ok\"}\n",
    )
    .expect("write");
    let store = dir.path().join("store");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "batch",
            "run",
            "--plugin",
            s(&hostile),
            "--source",
            s(&source),
            "--offline-store",
            s(&store),
            "--no-cache",
        ];
        args.extend_from_slice(extra);
        lockstep(&args)
    };
    let out = run(&[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the plugin failed on 2 events") && err.contains("nothing was written"),
        "{err}"
    );
    let rejects = dir.path().join("rejects.jsonl");
    let out = run(&["--rejects", s(&rejects)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("2 failed in the plugin"),
        "{}",
        text(&out.stdout)
    );
    let kept = std::fs::read_to_string(&rejects).expect("rejects");
    assert_eq!(kept.lines().count(), 2, "{kept}");
    assert!(
        kept.contains("asked to fail for a") && kept.contains("asked to panic at 0"),
        "{kept}"
    );
    let rows: usize = OfflineStore::open(&store)
        .expect("open")
        .read("hostile", "0.1.0")
        .await
        .expect("read")
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 3);
}

/// A full temporary directory (a 1 MiB tmpfs, mounted for the test) is one clear
/// error naming the directory, said once, and nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_temporary_directory_is_named_once() {
    struct Mounted(PathBuf);
    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let tmp = dir.path().join("small-tmp");
    std::fs::create_dir_all(&tmp).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1M", "tmpfs"])
        .arg(&tmp)
        .status()
        .expect("mount");
    assert!(
        mounted.success(),
        "this test mounts a small tmpfs (as root, which scripts/test.sh runs as)"
    );
    let _unmount = Mounted(tmp.clone());
    let events = generate_as(dir.path(), 100_000, "events.jsonl");
    let store = dir.path().join("store");
    let out = batch_command(s(&events), s(&store), &["--memory-limit", "16MiB"])
        .env("TMPDIR", &tmp)
        .output()
        .expect("run");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(s(&tmp)) && err.contains("is full"), "{err}");
    assert_eq!(err.matches("No space left on device").count(), 1, "{err}");
    assert!(
        OfflineStore::open(&store)
            .expect("open")
            .version("txn_velocity", "1.0.0")
            .await
            .is_err(),
        "nothing committed"
    );
}

/// A CSV row with fewer cells than its header is a reject like any bad row; one with
/// more is an error that names its line, said once.
#[tokio::test(flavor = "multi_thread")]
async fn ragged_csv_rows_are_rejects_or_one_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let short = dir.path().join("short.csv");
    std::fs::write(
        &short,
        "card_id,ts,amount,merchant\nc1,2024-01-01T00:00:00Z,1.5,m\nc2,2024-01-01T00:00:01Z\nc3,2024-01-01T00:00:02Z,2.5,m\n",
    )
    .expect("csv");
    let store = dir.path().join("store");
    let rejects = dir.path().join("rejects.jsonl");
    let out = backfill(&short, &store, &["--rejects", s(&rejects)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let kept = std::fs::read_to_string(&rejects).expect("rejects");
    assert_eq!(kept.lines().count(), 1, "{kept}");
    assert!(kept.contains("\"c2\""), "{kept}");
    assert_eq!(stored_rows(&store).await, 2);

    let long = dir.path().join("long.csv");
    std::fs::write(
        &long,
        "card_id,ts,amount,merchant\nc1,2024-01-01T00:00:00Z,1.5,m\nc3,2024-01-01T00:00:02Z,2.5,m,extra\n",
    )
    .expect("csv");
    let out = backfill(
        &long,
        &dir.path().join("store2"),
        &["--rejects", s(&rejects)],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert_eq!(err.matches("number of fields").count(), 1, "{err}");
}

/// `--table-format delta`: the backfill is one Delta commit whose rows, read by the
/// `deltalake` Python package, are the plain layout's rows; a re-run replaces its hours
/// in one more commit (no duplicates) and the first version still reads as it was.
#[tokio::test(flavor = "multi_thread")]
async fn a_delta_backfill_is_one_commit_holding_the_plain_layouts_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = generate(dir.path(), 3_000);
    let plain = dir.path().join("plain");
    let delta = dir.path().join("delta");
    let out = backfill(&events, &plain, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = backfill(&events, &delta, &["--table-format", "delta"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("committed table version 1"),
        "{}",
        text(&out.stdout)
    );
    let out = backfill(&events, &delta, &["--table-format", "delta"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("committed table version 2"),
        "{}",
        text(&out.stdout)
    );
    let table = delta.join("txn_velocity/version=1.0.0");
    let script = format!(
        r#"
import json, deltalake, pyarrow.dataset as ds
def rows(table):
    cols = [c for c in table.column_names
            if c not in ('write_time', 'api_invocation_time', 'year', 'month', 'day', 'hour')]
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in table.select(cols).to_pylist())
plain = rows(ds.dataset({plain:?}, format='parquet', partitioning='hive').to_table())
latest = rows(deltalake.DeltaTable({table:?}).to_pyarrow_table())
first = rows(deltalake.DeltaTable({table:?}, version=1).to_pyarrow_table())
import polars as pl
# polars' own Delta scan parses `version=` above the table as a Hive column and
# fails; through pyarrow it reads the table.
polars_rows = rows(pl.read_delta({table:?}, use_pyarrow=True).to_arrow())
print(len(plain), latest == plain, first == plain, polars_rows == plain, flush=True)
# deltalake 1.6.6 aborts at interpreter exit after reading hundreds of files; the
# answer is printed by then.
import os; os._exit(0)
"#,
        plain = s(&plain.join("txn_velocity/version=1.0.0")),
        table = s(&table),
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    let parts: Vec<&str> = said.split_whitespace().collect();
    assert_eq!(parts[1..], ["True", "True", "True"], "{said}");
    assert!(parts[0].parse::<usize>().unwrap() > 1000, "{said}");

    // A store opened without a Delta reader refuses the table by name rather than read
    // its folder as a plain layout (which would also read the replaced files).
    let err = OfflineStore::open(&delta)
        .expect("open")
        .read("txn_velocity", "1.0.0")
        .await
        .expect_err("a Delta table is not read as a plain layout")
        .to_string();
    assert!(err.contains("Delta table"), "{err}");

    // With a catalog it says what is not supported yet, before any work.
    let out = backfill(
        &events,
        &delta,
        &["--table-format", "delta", "--catalog", "glue:features"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("Delta table in the catalog"));
}

/// The rows of the Delta table at `table` (its latest version) as the `deltalake`
/// Python package reads them, without the write stamps: a digest and a row count.
fn delta_digest(table: &Path) -> String {
    delta_digest_at(s(table), "{}")
}

/// [`delta_digest`] of the table at `uri` (a path or `s3://…`), reached with delta-rs
/// storage options given as a JSON object.
fn delta_digest_at(uri: &str, storage_options: &str) -> String {
    let script = format!(
        r#"
import hashlib, json, deltalake
t = deltalake.DeltaTable({uri:?}, storage_options=json.loads({storage_options:?})).to_pyarrow_table()
cols = [c for c in t.column_names if c not in ('write_time', 'api_invocation_time')]
rows = sorted(json.dumps(r, sort_keys=True, default=str) for r in t.select(cols).to_pylist())
print(len(rows), hashlib.sha256('\n'.join(rows).encode()).hexdigest()[:16], flush=True)
import os; os._exit(0)
"#
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success());
}

/// kill -9 of a Delta backfill at 20 random points: each time, two readers (the
/// `deltalake` Python package, and Lockstep's own training set) see the table as it was
/// before the job or as the job makes it, never a mix; a re-run then completes it.
#[test]
fn a_delta_backfill_killed_at_20_points_shows_the_old_version_or_the_new_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = generate_as(dir.path(), 20_000, "first.jsonl");
    // Other events over the same cards: the second job replaces the first's hours.
    let second = generate_seeded(dir.path(), 20_000, 6, "second.jsonl");
    let delta = ["--table-format", "delta"];
    let base = dir.path().join("base");
    assert!(backfill(&first, &base, &delta).status.success());
    let table_of = |store: &Path| store.join("txn_velocity/version=1.0.0");
    let before = delta_digest(&table_of(&base));
    let reference = dir.path().join("reference");
    copy_dir(&base, &reference);
    let started = std::time::Instant::now();
    assert!(backfill(&second, &reference, &delta).status.success());
    let full_run = started.elapsed();
    let after = delta_digest(&table_of(&reference));
    assert_ne!(before, after, "the second job changes the table");
    let labels = dir.path().join("labels.csv");
    labels_from(&first, &labels);
    let set = dir.path().join("set.parquet");
    let set_before = training_set(&base, &labels, &set, &[]).1;
    let set_after = training_set(&reference, &labels, &set, &[]).1;
    assert_ne!(
        set_before, set_after,
        "the second job changes the training set"
    );

    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut outcomes = (0, 0);
    for point in 0..20 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // Anywhere from the start to a little past a full run's length.
        let delay = full_run.mul_f64(((seed >> 33) % 1_100) as f64 / 1_000.0);
        let store = dir.path().join(format!("killed-{point}"));
        copy_dir(&base, &store);
        let mut child = batch_command(s(&second), s(&store), &delta)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL: no cleanup runs
        let _ = child.wait();
        let seen = delta_digest(&table_of(&store));
        let set_seen = training_set(&store, &labels, &set, &[]).1;
        if seen == before {
            assert_eq!(
                set_seen, set_before,
                "killed after {delay:?}: the training set"
            );
            outcomes.0 += 1;
        } else {
            assert_eq!(seen, after, "killed after {delay:?}: neither version");
            assert_eq!(
                set_seen, set_after,
                "killed after {delay:?}: the training set"
            );
            outcomes.1 += 1;
        }
        if point % 5 == 0 {
            // A re-run completes it.
            assert!(backfill(&second, &store, &delta).status.success());
            assert_eq!(delta_digest(&table_of(&store)), after);
        }
    }
    eprintln!(
        "20 kills: {} showed the old version, {} the new one",
        outcomes.0, outcomes.1
    );
    assert!(outcomes.0 > 0, "some kills landed before the commit");
}

/// Labels for `txn_velocity` from `events`: every 7th event's card, 30 s after it.
fn labels_from(events: &Path, out: &Path) {
    let script = format!(
        r#"
import json, datetime
with open({events:?}) as f, open({out:?}, 'w') as o:
    o.write('card_id,label_time\n')
    for i, line in enumerate(f):
        if i % 7: continue
        e = json.loads(line)
        t = datetime.datetime.fromtimestamp(e['ts'] / 1e6 + 30, datetime.timezone.utc)
        o.write(f"{{e['card_id']}},{{t.isoformat()}}\n")
"#,
        events = s(events),
        out = s(out),
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// `lockstep training-set` over `store` with `labels` (and `extra` flags): the
/// printed summary, and the rows of the file it wrote as pyarrow reads them (a count
/// and a digest).
fn training_set(store: &Path, labels: &Path, out: &Path, extra: &[&str]) -> (String, String) {
    let mut args = vec![
        "training-set",
        "--labels",
        s(labels),
        "--group",
        "txn_velocity@1.0.0",
        "--offline-store",
        s(store),
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    let made = lockstep(&args);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let script = format!(
        r#"
import hashlib, json, pyarrow.parquet as pq
t = pq.read_table({out:?})
rows = sorted(json.dumps(r, sort_keys=True, default=str) for r in t.to_pylist())
print(len(rows), hashlib.sha256('\n'.join(rows).encode()).hexdigest()[:16])
"#,
        out = s(out)
    );
    let read = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(read.status.success(), "{}", text(&read.stderr));
    (text(&made.stdout), text(&read.stdout).trim().to_owned())
}

/// Time travel: a training set built from a Delta table at version N is rebuilt row for
/// row with `--as-of-version N` after later backfills replaced its hours; asking for a
/// version the table does not have, or time travel in the plain layout, says so.
#[test]
fn a_training_set_rebuilt_as_of_a_delta_version_equals_the_one_built_then() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = generate_as(dir.path(), 6_000, "first.jsonl");
    let second = generate_seeded(dir.path(), 6_000, 6, "second.jsonl");
    let labels = dir.path().join("labels.csv");
    labels_from(&first, &labels);
    let store = dir.path().join("store");
    let delta = ["--table-format", "delta"];
    assert!(backfill(&first, &store, &delta).status.success());
    let set = dir.path().join("set.parquet");
    let (said, then) = training_set(&store, &labels, &set, &[]);
    assert!(said.contains("Delta table version 1"), "{said}");
    let lineage = lineage_of(&set);
    assert!(lineage.contains("\"table_version\":1"), "{lineage}");

    // The same hours again from other events: version 2 replaces them.
    assert!(backfill(&second, &store, &delta).status.success());
    let (said, now) = training_set(&store, &labels, &set, &[]);
    assert!(said.contains("Delta table version 2"), "{said}");
    assert_ne!(then, now, "the replacement changes the training set");
    let (said, again) = training_set(&store, &labels, &set, &["--as-of-version", "1"]);
    assert!(said.contains("Delta table version 1"), "{said}");
    assert_eq!(again, then, "rebuilt as of version 1");
    let (_, named) = training_set(
        &store,
        &labels,
        &set,
        &["--as-of-version", "txn_velocity=1"],
    );
    assert_eq!(named, then);

    // A version the table does not have, a group not asked for, the plain layout.
    let refused = |store: &Path, version: &str| {
        let out = lockstep(&[
            "training-set",
            "--labels",
            s(&labels),
            "--group",
            "txn_velocity@1.0.0",
            "--offline-store",
            s(store),
            "--out",
            s(&dir.path().join("refused.parquet")),
            "--as-of-version",
            version,
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
        assert!(!dir.path().join("refused.parquet").exists());
        text(&out.stderr)
    };
    let err = refused(&store, "9");
    assert!(
        err.contains("has no version 9 (its versions are 0 to 2)"),
        "{err}"
    );
    let err = refused(&store, "spend=1");
    assert!(err.contains("no --group spend"), "{err}");
    let plain = dir.path().join("plain");
    assert!(backfill(&first, &plain, &[]).status.success());
    let err = refused(&plain, "1");
    assert!(
        err.contains("plain layout, which has no table versions"),
        "{err}"
    );
    // The plain layout's training set equals the Delta table's at version 1.
    let (said, plain_set) = training_set(&plain, &labels, &set, &[]);
    assert!(!said.contains("Delta table"), "{said}");
    assert_eq!(plain_set, then, "both layouts hold the same rows");

    // One group version, one layout: the other is refused before any work.
    let out = backfill(&first, &store, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is kept as a Delta table"),
        "{}",
        text(&out.stderr)
    );
    let out = backfill(&first, &plain, &delta);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already holds plain-layout hours"),
        "{}",
        text(&out.stderr)
    );
}

/// The lineage a training set records in its Parquet metadata.
fn lineage_of(set: &Path) -> String {
    let script = format!(
        "import pyarrow.parquet as pq; print(pq.ParquetFile({:?}).metadata.metadata[b'lockstep.training_set'].decode())",
        s(set)
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// `offline vacuum`: files a replacement removed stay until VACUUM; it keeps what the
/// retention protects, refuses a retention shorter than the table's without the flag
/// that accepts the risk, lists on a dry run, and then removes the replaced files and
/// a killed job's orphan — the latest version still reads whole.
#[test]
fn offline_vacuum_removes_replaced_and_orphaned_files_only_past_the_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = generate(dir.path(), 2_000);
    let store = dir.path().join("store");
    let delta = ["--table-format", "delta"];
    assert!(backfill(&events, &store, &delta).status.success());
    assert!(backfill(&events, &store, &delta).status.success());
    let table = store.join("txn_velocity/version=1.0.0");
    let parquet_files = || {
        let out = Command::new("find")
            .arg(&table)
            .args(["-name", "*.parquet"])
            .output()
            .expect("find");
        let mut files: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
        files.sort();
        files
    };
    let all = parquet_files();
    let hours = all.len() / 2;
    assert!(hours > 10, "{all:?}");
    // A job killed before its commit leaves a file no version holds.
    let orphan = Path::new(&all[0]).with_file_name("part-killed.parquet");
    std::fs::copy(&all[0], &orphan).expect("orphan");
    let latest = delta_digest(&table);
    let vacuum = |extra: &[&str]| {
        let mut args = vec![
            "offline",
            "vacuum",
            "--offline-store",
            s(&store),
            "--group",
            "txn_velocity",
        ];
        args.extend_from_slice(extra);
        lockstep(&args)
    };

    let out = vacuum(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("removed 0 files no version younger than 7days needs"),
        "{}",
        text(&out.stdout)
    );
    let out = vacuum(&["--retain", "0s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--allow-short-retention"),
        "{}",
        text(&out.stderr)
    );
    let out = vacuum(&["--retain", "0s", "--allow-short-retention", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("would remove {} files", hours + 1)),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        parquet_files().len(),
        all.len() + 1,
        "a dry run removes nothing"
    );
    let out = vacuum(&["--retain", "0s", "--allow-short-retention"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("removed {} files", hours + 1)),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(parquet_files().len(), hours);
    assert!(!orphan.exists());
    // The removal is in the audit log beside the store, every file by name; the dry
    // run and the run that removed nothing are not.
    let audited = lockstep(&[
        "audit",
        "show",
        "--offline-store",
        s(&store),
        "--action",
        "offline.vacuum",
        "--json",
    ]);
    assert!(audited.status.success(), "{}", text(&audited.stderr));
    let entries: Vec<serde_json::Value> = text(&audited.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(entries.len(), 1, "{}", text(&audited.stdout));
    let removed = entries[0]["details"]["removed"]
        .as_array()
        .expect("removed");
    assert_eq!(removed.len(), hours + 1);
    assert!(removed.iter().any(|f| {
        f.as_str()
            .is_some_and(|f| f.ends_with("part-killed.parquet"))
    }));
    assert_eq!(
        delta_digest(&table),
        latest,
        "the latest version reads whole"
    );

    let out = lockstep(&[
        "offline",
        "vacuum",
        "--offline-store",
        s(&store),
        "--group",
        "txn_velocity@9.9.9",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("has no version 9.9.9; it has: 1.0.0"),
        "{}",
        text(&out.stderr)
    );
}

/// The rows of a plain-layout version as pyarrow's dataset reader sees the folder
/// (dot-named staged files skipped, as every Hive reader does), without the write
/// stamps: a count and a digest.
fn plain_digest(version_dir: &Path) -> String {
    let script = format!(
        r#"
import hashlib, json, pyarrow.dataset as ds
t = ds.dataset({dir:?}, format='parquet', partitioning='hive').to_table()
cols = [c for c in t.column_names
        if c not in ('write_time', 'api_invocation_time', 'year', 'month', 'day', 'hour')]
rows = sorted(json.dumps(r, sort_keys=True, default=str) for r in t.select(cols).to_pylist())
print(len(rows), hashlib.sha256('\n'.join(rows).encode()).hexdigest()[:16])
"#,
        dir = s(version_dir)
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

/// Files under `dir` whose name starts with `.tmp-` (staged, never published).
fn staged_files(dir: &Path) -> usize {
    let out = Command::new("find")
        .arg(dir)
        .args(["-name", ".tmp-*"])
        .output()
        .expect("find");
    text(&out.stdout).lines().count()
}

/// The plain layout's promise under kill -9 at 20 random points of a job replacing an
/// older one: every visible file is whole; the next writer (here `offline vacuum`)
/// completes a commit the job had journaled or removes what it staged, after which
/// the version is exactly the old job's rows or exactly the new job's, with no staged
/// file left and no lock held.
#[test]
fn a_plain_backfill_killed_at_20_points_is_completed_or_rolled_back_by_the_next_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = generate_as(dir.path(), 20_000, "first.jsonl");
    let second = generate_seeded(dir.path(), 20_000, 6, "second.jsonl");
    let base = dir.path().join("base");
    assert!(backfill(&first, &base, &[]).status.success());
    let version_of = |store: &Path| store.join("txn_velocity/version=1.0.0");
    let before = plain_digest(&version_of(&base));
    let reference = dir.path().join("reference");
    copy_dir(&base, &reference);
    let started = std::time::Instant::now();
    assert!(backfill(&second, &reference, &[]).status.success());
    let full_run = started.elapsed();
    let after = plain_digest(&version_of(&reference));
    assert_ne!(before, after, "the second job changes the version");

    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut outcomes = (0, 0);
    for point in 0..20 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let delay = full_run.mul_f64(((seed >> 33) % 1_100) as f64 / 1_000.0);
        let store = dir.path().join(format!("killed-{point}"));
        copy_dir(&base, &store);
        let mut child = batch_command(s(&second), s(&store), &[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL: no cleanup runs
        let _ = child.wait();
        // Whatever is visible reads whole (pyarrow fails on a partial file).
        plain_digest(&version_of(&store));
        let out = lockstep(&[
            "offline",
            "vacuum",
            "--offline-store",
            s(&store),
            "--group",
            "txn_velocity",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let seen = plain_digest(&version_of(&store));
        if seen == before {
            outcomes.0 += 1;
        } else {
            assert_eq!(
                seen,
                after,
                "killed after {delay:?}, then recovered ({}): neither job's rows",
                text(&out.stdout).trim()
            );
            outcomes.1 += 1;
        }
        assert_eq!(staged_files(&store), 0, "killed after {delay:?}");
        assert!(
            !store
                .join("txn_velocity/_lockstep/journal/1.0.0.json")
                .exists()
        );
        assert!(
            !store
                .join("txn_velocity/_lockstep/locks/1.0.0.lock")
                .exists()
        );
        if point % 5 == 0 {
            // A re-run completes it.
            assert!(backfill(&second, &store, &[]).status.success());
            assert_eq!(plain_digest(&version_of(&store)), after);
        }
    }
    eprintln!(
        "20 kills: {} rolled back to the old rows, {} completed to the new",
        outcomes.0, outcomes.1
    );
    assert!(outcomes.0 > 0, "some kills landed before the journal");
}

/// Two plain-layout jobs into one version at once: the second is refused at its start,
/// naming the first, which lands alone; a killed job's lock does not block the next.
#[test]
fn a_second_plain_job_on_the_same_version_is_refused_and_a_killed_ones_lock_expires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = generate_as(dir.path(), 60_000, "first.jsonl");
    let second = generate_as(dir.path(), 2_000, "second.jsonl");
    let reference = dir.path().join("reference");
    assert!(backfill(&first, &reference, &[]).status.success());
    let alone = plain_digest(&reference.join("txn_velocity/version=1.0.0"));

    let store = dir.path().join("store");
    let lock = store.join("txn_velocity/_lockstep/locks/1.0.0.lock");
    let started = || {
        let child = batch_command(s(&first), s(&store), &[])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let waited = std::time::Instant::now();
        while !lock.exists() {
            assert!(waited.elapsed() < Duration::from_secs(60), "no lock taken");
            std::thread::sleep(Duration::from_millis(5));
        }
        child
    };
    let running = started();
    let out = backfill(&second, &store, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("txn_velocity@1.0.0 is being written by another job: batch run from")
            && err.contains(&format!("process {}", running.id())),
        "{err}"
    );
    let done = running.wait_with_output().expect("wait");
    assert!(done.status.success(), "{}", text(&done.stderr));
    assert_eq!(
        plain_digest(&store.join("txn_velocity/version=1.0.0")),
        alone,
        "the first job's rows alone, nothing of the refused one"
    );
    assert!(!lock.exists(), "released at the end");

    // A holder killed while it holds the lock: the next job takes it over at once.
    let mut killed = started();
    let _ = killed.kill();
    let _ = killed.wait();
    assert!(lock.exists(), "a killed job cannot release its lock");
    let out = backfill(&second, &store, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A Delta table on S3 (the moto server): concurrent jobs on different hours both land,
/// serialised by S3's conditional writes; on the same hours one fails naming them and
/// the table holds the other's rows alone; the rows equal the same jobs run one after
/// the other on local disk, read by the `deltalake` package from S3; a training set
/// reads the table on S3 through its log.
#[test]
fn delta_on_s3_serialises_concurrent_jobs_by_conditional_writes() {
    let moto = lockstep_testkit::Moto::start();
    moto.create_bucket("lake");
    let dir = tempfile::tempdir().expect("tempdir");
    let events = generate(dir.path(), 8_000);
    // Two jobs over disjoint hours: before and from 2024-01-11T00:00Z.
    let cut = "TIMESTAMP '2024-01-11T00:00:00Z'";
    let early = format!("SELECT * FROM source WHERE ts < {cut}");
    let late = format!("SELECT * FROM source WHERE ts >= {cut}");
    let delta = ["--table-format", "delta"];
    let local = dir.path().join("local");
    for sql in [&early, &late] {
        let out = backfill(&events, &local, &["--table-format", "delta", "--sql", sql]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let both = delta_digest(&local.join("txn_velocity/version=1.0.0"));
    let job = |store: &str, sql: Option<&str>| {
        let mut extra = delta.to_vec();
        if let Some(sql) = sql {
            extra.extend(["--sql", sql]);
        }
        let mut cmd = batch_command(s(&events), store, &extra);
        cmd.envs(moto.env())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().expect("spawn")
    };
    let options = format!(
        r#"{{"AWS_ENDPOINT_URL": "{}", "AWS_ALLOW_HTTP": "true", "AWS_REGION": "{}",
            "AWS_ACCESS_KEY_ID": "{}", "AWS_SECRET_ACCESS_KEY": "{}"}}"#,
        moto.endpoint(),
        lockstep_testkit::REGION,
        lockstep_testkit::ACCESS_KEY,
        lockstep_testkit::SECRET_KEY
    );

    // Different hours, at once: both land.
    let (a, b) = (
        job("s3://lake/apart", Some(&early)),
        job("s3://lake/apart", Some(&late)),
    );
    for child in [a, b] {
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let table = "s3://lake/apart/txn_velocity/version=1.0.0";
    assert_eq!(delta_digest_at(table, &options), both);

    // The same hours, at once: one commits, the other names the hours and adds nothing.
    let alone = {
        let store = dir.path().join("alone");
        assert!(backfill(&events, &store, &delta).status.success());
        delta_digest(&store.join("txn_velocity/version=1.0.0"))
    };
    let mut conflicts = 0;
    for round in 0..3 {
        let store = format!("s3://lake/overlap-{round}");
        let (a, b) = (job(&store, None), job(&store, None));
        let outs = [a, b].map(|c| c.wait_with_output().expect("wait"));
        let failed: Vec<_> = outs.iter().filter(|o| !o.status.success()).collect();
        assert!(failed.len() <= 1, "at most one job fails");
        for out in &failed {
            let err = text(&out.stderr);
            assert!(
                err.contains("another job committed") && err.contains("year=2024/month=01"),
                "{err}"
            );
            conflicts += 1;
        }
        let table = format!("{store}/txn_velocity/version=1.0.0");
        // Both succeeding means the second began after the first committed: it then
        // replaced every hour, and the rows are still one job's.
        assert_eq!(delta_digest_at(&table, &options), alone, "round {round}");
    }
    assert!(
        conflicts > 0,
        "no round overlapped: the conflict path was not tried"
    );

    // Lockstep's own reader, on S3: a training set from the S3 table equals the local one.
    let labels = dir.path().join("labels.csv");
    labels_from(&events, &labels);
    let set = dir.path().join("set.parquet");
    let (_, from_local) = training_set(&local, &labels, &set, &[]);
    let made = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args([
            "training-set",
            "--labels",
            s(&labels),
            "--group",
            "txn_velocity@1.0.0",
            "--offline-store",
            "s3://lake/apart",
            "--out",
            s(&set),
        ])
        .envs(moto.env())
        .output()
        .expect("training-set");
    assert!(made.status.success(), "{}", text(&made.stderr));
    assert!(text(&made.stdout).contains("Delta table version"));
    let (_, again) = training_set(&local, &labels, &dir.path().join("again.parquet"), &[]);
    assert_eq!(from_local, again);
    let script = format!(
        "import hashlib, json, pyarrow.parquet as pq\n\
         t = pq.read_table({:?})\n\
         rows = sorted(json.dumps(r, sort_keys=True, default=str) for r in t.to_pylist())\n\
         print(len(rows), hashlib.sha256('\\n'.join(rows).encode()).hexdigest()[:16])",
        s(&set)
    );
    let read = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert_eq!(text(&read.stdout).trim(), from_local, "S3 = local");
}

/// A group's KMS key: every object a backfill puts under the group on S3 — hour files,
/// registry, Delta log — is encrypted by S3 with SSE-KMS under it (moto records the
/// headers and answers them back on HEAD); the registry binds the key to the version,
/// so a later writer without it is refused, and an erase's rewritten hours, markers
/// and ledger entry are put under it too. A local store refuses a key instead of
/// writing plain. (The store-wide audit log is not the group's, so not under its key.)
#[test]
fn a_kms_key_encrypts_every_object_the_backfill_puts_on_s3() {
    let moto = lockstep_testkit::Moto::start();
    moto.create_bucket("lake");
    let key = moto
        .boto3("print(client('kms').create_key(Description='features')['KeyMetadata']['KeyId'])")
        .trim()
        .to_owned();
    assert!(!key.is_empty());
    let dir = tempfile::tempdir().expect("tempdir");
    let events = generate(dir.path(), 2_000);
    let endpoint = moto.endpoint();
    let entity = std::fs::read_to_string(&events)
        .expect("events")
        .lines()
        .next()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["card_id"].as_str().map(str::to_owned))
        .expect("a card id");
    let with_env = |mut cmd: Command| {
        for (k, v) in moto.env() {
            if k != "AWS_ENDPOINT_URL" {
                cmd.env(k, v);
            }
        }
        cmd.output().expect("run lockstep")
    };
    // Every object under `prefix`: (key, encryption, key id).
    let objects = |prefix: &str| -> Vec<String> {
        moto.boto3(&format!(
            "s3 = client('s3')\n\
             keys = [o['Key'] for o in s3.list_objects_v2(Bucket='lake', Prefix='{prefix}')['Contents']]\n\
             for k in keys:\n    \
                 h = s3.head_object(Bucket='lake', Key=k)\n    \
                 print(k, h.get('ServerSideEncryption'), h.get('SSEKMSKeyId'), h['ETag'])"
        ))
        .lines()
        .map(str::to_owned)
        .collect()
    };
    let all_under_key = |format: &str, lines: &[String]| {
        for line in lines {
            assert!(
                line.contains(" aws:kms ") && line.contains(&key),
                "{format}: an object not encrypted under the key: {line}\n{lines:#?}"
            );
        }
    };
    for (store, format) in [("s3://lake/plain", "plain"), ("s3://lake/delta", "delta")] {
        let out = with_env(batch_command(
            s(&events),
            store,
            &[
                "--endpoint-url",
                &endpoint,
                "--kms-key-id",
                &key,
                "--table-format",
                format,
            ],
        ));
        assert!(out.status.success(), "{format}: {}", text(&out.stderr));
        let prefix = store.trim_start_matches("s3://lake/");
        let before = objects(&format!("{prefix}/txn_velocity/"));
        assert!(
            before.iter().filter(|l| l.contains(".parquet")).count() > 0,
            "{format}: {before:#?}"
        );
        all_under_key(format, &before);

        // The version is bound to the key: a writer without it is refused, and
        // nothing under the group changes.
        let out = with_env(batch_command(
            s(&events),
            store,
            &["--endpoint-url", &endpoint, "--table-format", format],
        ));
        assert!(!out.status.success(), "{format}: a plain write was taken");
        assert!(
            text(&out.stderr).contains(&format!("registered with KMS key `{key}`"))
                && text(&out.stderr).contains("--kms-key-id"),
            "{format}: {}",
            text(&out.stderr)
        );
        assert_eq!(
            objects(&format!("{prefix}/txn_velocity/")),
            before,
            "{format}"
        );

        // An erase rewrites the hours holding the entity: under the key, as is the
        // ledger's record of the entity's key.
        let mut erase = Command::new(env!("CARGO_BIN_EXE_lockstep"));
        erase.args([
            "erase",
            "--group",
            "txn_velocity",
            "--entity",
            &entity,
            "--offline-store",
            store,
            "--endpoint-url",
            &endpoint,
            "--purge-offline",
        ]);
        let out = with_env(erase);
        assert!(out.status.success(), "{format}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("rows removed from"),
            "{format}: {}",
            text(&out.stdout)
        );
        let after = objects(&format!("{prefix}/txn_velocity/"));
        assert_ne!(after, before, "{format}: nothing was rewritten");
        all_under_key(format, &after);
        let ledger = objects(&format!("{prefix}/_lockstep/erasures/"));
        assert_eq!(ledger.len(), 1, "{format}: {ledger:#?}");
        all_under_key(format, &ledger);
    }
    // A local store cannot honour the key: refused, nothing written.
    let local = dir.path().join("local");
    let out = backfill(&events, &local, &["--kms-key-id", &key]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("a KMS key encrypts objects on S3"),
        "{}",
        text(&out.stderr)
    );
    assert!(!local.join("txn_velocity").exists());
}
