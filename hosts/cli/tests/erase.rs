//! `lockstep erase` end to end, against real servers on loopback: a moto server for
//! Kinesis, a 3-node Redis Cluster, featurestore-local (the SageMaker protocol) or the
//! embedded online store, and a local offline store.
//!
//! A group is backfilled and streamed; three entities (one on each cluster node) are
//! erased; `erase verify` finds every copy clean. Then everything that could bring them
//! back is tried — the whole stream replayed from TRIM_HORIZON through a fresh service,
//! the backfill re-run over the raw events — and the erased entities stay gone in every
//! copy, while every other entity equals a run that never saw the erased entities'
//! events at all.

mod common;

use arrow_array::RecordBatch;
use common::{group, lockstep, plugin, repo, s, text};
use lockstep_online::{EmbeddedStore, GroupRef, OnlineStore};
use lockstep_testkit::{Moto, RedisCluster};
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn golden_events() -> PathBuf {
    repo("golden").join("txn_velocity").join("events.jsonl")
}

/// `lockstep args` with the moto server's AWS settings; its outcome, success or not.
fn with_env(moto: &Moto, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(args)
        .envs(moto.env())
        .output()
        .expect("run lockstep")
}

fn run_env(moto: &Moto, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(args)
        .envs(moto.env())
        .output()
        .expect("run lockstep");
    assert!(
        out.status.success(),
        "lockstep {}:\n{}\n{}",
        args.join(" "),
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// Puts `events` on a new stream `name` (2 shards).
fn put(moto: &Moto, wasm: &Path, name: &str, events: &Path) {
    run_env(
        moto,
        &[
            "stream",
            "put",
            "--plugin",
            s(wasm),
            "--stream",
            name,
            "--events",
            s(events),
            "--endpoint-url",
            &moto.endpoint(),
            "--create-shards",
            "2",
        ],
    );
}

/// Streams `name` from its start to its end into the online store `online_arg` (and
/// `cache`), honouring the ledger beside `store`.
fn stream_to_end(
    moto: &Moto,
    wasm: &Path,
    name: &str,
    online_arg: &str,
    state: &Path,
    cache: Option<&str>,
    store: &Path,
) -> Output {
    let endpoint = moto.endpoint();
    let mut args = vec![
        "stream",
        "run",
        "--plugin",
        s(wasm),
        "--stream",
        name,
        "--endpoint-url",
        &endpoint,
        "--online-store",
        online_arg,
        "--state",
        s(state),
        "--allowed-lateness",
        "5m",
        "--idle-poll",
        "50ms",
        "--offline-store",
        s(store),
        "--stop-when-idle",
        "--drain-on-stop",
    ];
    if let Some(url) = cache {
        args.extend(["--cache", url]);
    }
    run_env(moto, &args)
}

fn backfill(events: &Path, store: &Path) -> Output {
    let out = lockstep(&[
        "batch",
        "run",
        "--plugin",
        s(&plugin("txn_velocity")),
        "--source",
        s(events),
        "--offline-store",
        s(store),
        "--no-cache",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// Every stored row of `group` in `store`, without the columns a write stamps (write
/// and invocation times), as JSON text, sorted.
fn offline_rows(store: &Path, group: &GroupRef) -> Vec<String> {
    let offline = lockstep_offline::OfflineStore::open(store).expect("open offline store");
    let batches: Vec<RecordBatch> = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(offline.read(&group.name, &group.version))
        .expect("read offline store");
    let mut rows = Vec::new();
    for batch in &batches {
        for row in 0..batch.num_rows() {
            let mut json = lockstep_core::rows::row_json(batch, row);
            json.remove("write_time");
            json.remove("api_invocation_time");
            rows.push(Json::Object(json).to_string());
        }
    }
    rows.sort();
    rows
}

/// The records featurestore-local at `url` holds for `keys`, read through the AWS SDK
/// and typed by the plugin's row schema, as rows.
fn sagemaker_records(
    url: &str,
    wasm: &Path,
    group: &GroupRef,
    keys: &[String],
) -> BTreeMap<String, String> {
    let io = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = io.block_on(lockstep_featurestore::SageMakerStore::with_options(
        lockstep_featurestore::SageMakerOptions {
            aws: lockstep_aws::AwsOptions {
                endpoint: Some(url.to_owned()),
                region: Some("us-east-1".into()),
                credentials: Some(("local".into(), "local".into())),
            },
            ..Default::default()
        },
    ));
    let runtime = lockstep_runtime::Runtime::new(lockstep_runtime::RuntimeConfig::default())
        .expect("runtime");
    let loaded = runtime.load_file(wasm).expect("load plugin");
    client.set_schema(group, lockstep_core::schema::row_schema(loaded.manifest()));
    let records = io
        .block_on(client.get(group, keys))
        .expect("read featurestore-local");
    keys.iter()
        .zip(records)
        .filter_map(|(k, r)| r.map(|r| (k.clone(), Json::Object(r.row).to_string())))
        .collect()
}

fn online_records(online: &Path, group: &GroupRef, keys: &[String]) -> BTreeMap<String, String> {
    let store = EmbeddedStore::open(online).expect("open online store");
    let records = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(store.get(group, keys))
        .expect("read online store");
    keys.iter()
        .zip(records)
        .filter_map(|(k, r)| r.map(|r| (k.clone(), Json::Object(r.row).to_string())))
        .collect()
}

/// The keys each node of `cluster` holds.
fn keys_per_node(cluster: &RedisCluster) -> Vec<Vec<String>> {
    cluster
        .nodes()
        .iter()
        .map(|node| {
            let out = Command::new("redis-cli")
                .args([
                    "-p",
                    &node.port().to_string(),
                    "--scan",
                    "--pattern",
                    "lockstep:*",
                ])
                .output()
                .expect("redis-cli");
            text(&out.stdout)
                .lines()
                .map(str::to_owned)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .collect()
}

/// Whether any node of `cluster` holds `key` with a value (a guard has none).
fn cached(cluster: &RedisCluster, key: &str) -> bool {
    cluster.nodes().iter().any(|node| {
        let out = Command::new("redis-cli")
            .args(["-p", &node.port().to_string(), "hexists", key, "v"])
            .output()
            .expect("redis-cli");
        text(&out.stdout).trim() == "1"
    })
}

fn card_keys(events: &Path) -> Vec<String> {
    let all = std::fs::read_to_string(events).expect("events");
    let keys: BTreeSet<String> = all
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .filter_map(|v| v["card_id"].as_str().map(str::to_owned))
        .collect();
    keys.into_iter().collect()
}

/// A `lockstep serve` process, killed on drop.
struct Serve {
    child: std::process::Child,
    base: String,
}

impl Serve {
    /// `lockstep serve` with `args`, in an environment with `env` added (AWS
    /// credentials for a SageMaker online store, as a deployment has them).
    fn start(args: &[&str], env: &[(&'static str, String)]) -> Serve {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_lockstep"))
            .arg("serve")
            .args(args)
            .envs(env.iter().cloned())
            .args(["--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn lockstep serve");
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("read the listening line");
        let base = first
            .trim()
            .strip_prefix("lockstep serve listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {first}"))
            .to_owned();
        Serve { child, base }
    }

    /// `POST /v1/features` for `entities` of `group`: the answer.
    fn ask(&self, group: &str, entities: &[String]) -> Json {
        use std::io::{Read, Write};
        let host = self.base.trim_start_matches("http://");
        let body = serde_json::json!({"group": group, "entities": entities}).to_string();
        let mut stream = std::net::TcpStream::connect(host).expect("connect");
        write!(
            stream,
            "POST /v1/features HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        let (_, answer) = response.split_once("\r\n\r\n").expect("a response");
        serde_json::from_str(answer).unwrap_or_else(|e| panic!("{e}: {response}"))
    }

    /// Stops it cleanly (its feature log is written out).
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("kill")
                .success()
        );
        assert!(self.child.wait().expect("wait").success());
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sources an answer gives its entities, by key.
fn sources(answer: &Json) -> BTreeMap<String, String> {
    answer["entities"]
        .as_array()
        .expect("entities")
        .iter()
        .map(|e| {
            (
                e["entity"].as_str().unwrap_or("").to_owned(),
                e["source"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[test]
fn erased_entities_stay_gone_through_a_replay_and_a_backfill_rerun_and_the_rest_is_unchanged() {
    let moto = Moto::start();
    let cluster = RedisCluster::start(3, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = plugin("txn_velocity");
    let g = group(&wasm);
    let events = golden_events();
    let store = dir.path().join("offline");
    // The online store: featurestore-local, through the SageMaker protocol.
    let featurestore = common::FeatureStoreLocal::start(
        &dir.path().join("featurestore"),
        &[&format!(
            "{}=card_id",
            lockstep_featurestore::wire::group_name(&g)
        )],
    );
    let online_arg = format!("sagemaker:{}", featurestore.url);
    let online_records = |keys: &[String]| sagemaker_records(&featurestore.url, &wasm, &g, keys);

    // Backfill and stream the group.
    backfill(&events, &store);
    put(&moto, &wasm, "txns", &events);
    stream_to_end(
        &moto,
        &wasm,
        "txns",
        &online_arg,
        &dir.path().join("state-1"),
        Some(&cluster.url()),
        &store,
    );

    // One erased entity on each cluster node.
    let prefix = format!("lockstep:{}:", g.id());
    let erased: Vec<String> = keys_per_node(&cluster)
        .into_iter()
        .map(|keys| {
            let mut cards: Vec<String> = keys
                .iter()
                .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
                .collect();
            cards.sort();
            cards
                .into_iter()
                .next()
                .expect("every node holds some entity")
        })
        .collect();
    assert_eq!(erased.len(), 3);
    let all_keys = card_keys(&events);
    for key in &erased {
        assert!(
            cached(&cluster, &format!("{prefix}{key}")),
            "{key} is cached before"
        );
    }
    assert_eq!(online_records(&erased).len(), 3);

    let cluster_url = cluster.url();

    // A few answers served and logged: the erased entities and two others.
    let log = dir.path().join("served");
    let mut asked = erased.clone();
    asked.extend(
        all_keys
            .iter()
            .filter(|k| !erased.contains(k))
            .take(2)
            .cloned(),
    );
    let serve = Serve::start(
        &[
            "--plugin",
            s(&wasm),
            "--online-store",
            &online_arg,
            "--cache",
            &cluster_url,
            "--log-features",
            s(&log),
        ],
        &moto.env(),
    );
    let answer = serve.ask(&g.name, &asked);
    assert!(
        sources(&answer)
            .values()
            .all(|s| s == "cache" || s == "store"),
        "{answer}"
    );
    serve.stop();

    let mut erase_args = vec![
        "erase",
        "--group",
        "txn_velocity",
        "--offline-store",
        s(&store),
        "--online-store",
        &online_arg,
        "--cache",
        &cluster_url,
        "--feature-log",
        s(&log),
        "--purge-offline",
        "--reason",
        "subject access request 42",
    ];
    for key in &erased {
        erase_args.extend(["--entity", key]);
    }
    // With AWS credentials in the environment, as for any SageMaker client.
    let out = with_env(&moto, &erase_args);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}\n{}", text(&out.stderr));
    assert!(said.contains("3 removed, 0 not there"), "{said}");
    assert!(said.contains("rows removed from"), "{said}");
    assert!(said.contains("3 answers removed"), "{said}");

    let verify = |json: bool| {
        let mut args = vec![
            "erase",
            "verify",
            "--group",
            "txn_velocity",
            "--offline-store",
            s(&store),
            "--online-store",
            &online_arg,
            "--cache",
            &cluster_url,
            "--feature-log",
            s(&log),
        ];
        for key in &erased {
            args.extend(["--entity", key]);
        }
        if json {
            args.push("--json");
        }
        with_env(&moto, &args)
    };
    let clean = verify(true);
    assert!(
        clean.status.success(),
        "{}\n{}",
        text(&clean.stdout),
        text(&clean.stderr)
    );
    let report: Json = serde_json::from_slice(&clean.stdout).expect("json");
    assert_eq!(report["clean"], Json::Bool(true));
    assert_eq!(
        report["copies"].as_array().map(Vec::len),
        Some(5),
        "{report}"
    );

    // What an erasure must equal: everything computed from events without the erased
    // entities'.
    let reference_events = dir.path().join("reference.jsonl");
    let kept: Vec<String> = std::fs::read_to_string(&events)
        .expect("events")
        .lines()
        .filter(|l| !erased.iter().any(|k| l.contains(&format!("\"{k}\""))))
        .map(str::to_owned)
        .collect();
    std::fs::write(&reference_events, kept.join("\n") + "\n").expect("write");
    let reference_store = dir.path().join("reference-offline");
    backfill(&reference_events, &reference_store);
    let reference_online = dir.path().join("reference-online");
    put(&moto, &wasm, "reference", &reference_events);
    stream_to_end(
        &moto,
        &wasm,
        "reference",
        &format!("embedded:{}", reference_online.display()),
        &dir.path().join("state-ref"),
        None,
        &reference_store,
    );
    let survivors: Vec<String> = all_keys
        .iter()
        .filter(|k| !erased.contains(k))
        .cloned()
        .collect();
    assert_eq!(
        offline_rows(&store, &g),
        offline_rows(&reference_store, &g),
        "after the purge the offline store holds what a run without the erased entities wrote"
    );

    // Replay the whole stream from TRIM_HORIZON through a fresh service into the same
    // online store and cache.
    let replay = stream_to_end(
        &moto,
        &wasm,
        "txns",
        &online_arg,
        &dir.path().join("state-2"),
        Some(&cluster.url()),
        &store,
    );
    let replay_said = text(&replay.stdout);
    let dropped: u64 = replay_said
        .lines()
        .find_map(|l| l.strip_prefix("erased: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let erased_events = std::fs::read_to_string(&events)
        .expect("events")
        .lines()
        .filter(|l| erased.iter().any(|k| l.contains(&format!("\"{k}\""))))
        .count() as u64;
    assert_eq!(
        dropped, erased_events,
        "the replay drops and counts every erased event: {replay_said}"
    );
    assert!(
        online_records(&erased).is_empty(),
        "the replay brought an erased entity back online"
    );
    for key in &erased {
        assert!(
            !cached(&cluster, &format!("{prefix}{key}")),
            "{key} came back to the cache"
        );
    }
    assert_eq!(
        online_records(&survivors),
        self::online_records(&reference_online, &g, &survivors),
        "every other entity online equals a run that never saw the erased entities"
    );

    // Re-run the backfill over the raw events.
    let rerun = backfill(&events, &store);
    assert!(
        text(&rerun.stdout).contains("events of erased entities dropped"),
        "{}",
        text(&rerun.stdout)
    );
    assert_eq!(
        offline_rows(&store, &g),
        offline_rows(&reference_store, &g),
        "a backfill re-run over the raw source brings no erased entity back"
    );
    // Re-warm the cache: serving the erased entities finds nothing to bring back.
    let serve = Serve::start(
        &[
            "--plugin",
            s(&wasm),
            "--online-store",
            &online_arg,
            "--cache",
            &cluster_url,
        ],
        &moto.env(),
    );
    let answer = serve.ask(&g.name, &asked);
    let said_sources = sources(&answer);
    for key in &erased {
        assert!(
            said_sources
                .get(key)
                .is_some_and(|s| s == "missing" || s == "default"),
            "{key} served from a copy: {answer}"
        );
    }
    serve.stop();
    for key in &erased {
        assert!(
            !cached(&cluster, &format!("{prefix}{key}")),
            "{key} came back to the cache"
        );
    }

    let still = verify(false);
    assert!(
        still.status.success(),
        "{}\n{}",
        text(&still.stdout),
        text(&still.stderr)
    );
    assert_eq!(
        text(&still.stdout)
            .lines()
            .filter(|l| l.starts_with("gone"))
            .count(),
        5,
        "{}",
        text(&still.stdout)
    );
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn wait_for_metric(port: u16, name: &str, at_least: f64) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some((200, body)) = http_get(port, "/metrics")
            && metric(&body, name) >= at_least
        {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never reached {at_least}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_running_stream_host_drops_an_erased_entitys_state_and_replayed_events_without_a_restart() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = plugin("txn_velocity");
    let g = group(&wasm);
    let events = golden_events();
    let ledger = dir.path().join("ledger");
    let online = dir.path().join("online");
    put(&moto, &wasm, "live", &events);
    let port = lockstep_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let online_arg = format!("embedded:{}", online.display());
    let state = dir.path().join("state");
    let mut service = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args([
            "stream",
            "run",
            "--plugin",
            s(&wasm),
            "--stream",
            "live",
            "--endpoint-url",
            &moto.endpoint(),
            "--online-store",
            &online_arg,
            "--state",
            s(&state),
            "--allowed-lateness",
            "5m",
            "--idle-poll",
            "50ms",
            "--erasures",
            s(&ledger),
            "--erasure-poll",
            "100ms",
            "--listen",
            &listen,
            "--drain-on-stop",
            // A replay of history: the watermark must not follow the clock.
            "--idle-watermark",
            "off",
        ])
        .envs(moto.env())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn stream run");
    let all = std::fs::read_to_string(&events)
        .expect("events")
        .lines()
        .count();
    wait_for_metric(port, "lockstep_stream_records_in_total", all as f64);

    let card = "card-000000";
    let erased = lockstep(&[
        "erase",
        "--group",
        &g.id(),
        "--entity",
        card,
        "--erasures",
        s(&ledger),
        "--no-audit",
    ]);
    assert!(
        erased.status.success(),
        "{}\n{}",
        text(&erased.stdout),
        text(&erased.stderr)
    );
    wait_for_metric(port, "lockstep_stream_erased_states_total", 1.0);

    // A replayed event of the card (2024) is dropped and counted; one after the erasure
    // is a new life that starts from no state.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as i64
        + 1_000_000;
    let later = dir.path().join("later.jsonl");
    let replayed = std::fs::read_to_string(&events)
        .expect("events")
        .lines()
        .find(|l| l.contains(card))
        .expect("the card has events")
        .to_owned();
    std::fs::write(
        &later,
        format!(
            "{replayed}\n{{\"card_id\":\"{card}\",\"ts\":{now},\"amount\":7.5,\"merchant\":\"m\",\"txn_id\":\"after-erasure\"}}\n"
        ),
    )
    .expect("write");
    run_env(
        &moto,
        &[
            "stream",
            "put",
            "--plugin",
            s(&wasm),
            "--stream",
            "live",
            "--events",
            s(&later),
            "--endpoint-url",
            &moto.endpoint(),
        ],
    );
    wait_for_metric(port, "lockstep_stream_erased_events_total", 1.0);
    wait_for_metric(port, "lockstep_stream_records_in_total", (all + 2) as f64);
    let status = Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = service.wait().expect("wait");
    assert!(exit.success(), "the service stopped with {exit:?}");

    let record = online_records(&online, &g, &[card.to_owned()]);
    let row: Json =
        serde_json::from_str(record.get(card).expect("the new life is stored")).expect("json");
    assert_eq!(row["txn_count_7d"], Json::from(1), "{row}");
    assert_eq!(
        row["secs_since_prev_txn"],
        Json::Null,
        "the new life starts from no state: {row}"
    );
}

/// Rows of `entity` in (the latest version of the Delta table at `table`, every
/// Parquet file under its folder), read by the `deltalake` and `pyarrow` packages.
fn delta_rows_of(table: &Path, entity: &str) -> (usize, usize) {
    let script = format!(
        r#"
import deltalake, glob, pyarrow.parquet as pq, pyarrow.compute as pc
latest = deltalake.DeltaTable({table:?}).to_pyarrow_table()
in_table = pc.sum(pc.equal(latest['card_id'], {entity:?})).as_py() or 0
in_files = 0
for f in glob.glob({table:?} + '/**/*.parquet', recursive=True):
    t = pq.read_table(f, columns=['card_id'])
    in_files += pc.sum(pc.equal(t['card_id'], {entity:?})).as_py() or 0
print(in_table, in_files, flush=True)
import os; os._exit(0)
"#,
        table = s(table),
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    let n: Vec<usize> = said
        .split_whitespace()
        .map(|w| w.parse().expect("a count"))
        .collect();
    (n[0], n[1])
}

#[test]
fn in_a_delta_table_an_erasure_is_one_delete_commit_and_vacuum_removes_the_old_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("offline");
    let events = golden_events();
    let out = lockstep(&[
        "batch",
        "run",
        "--plugin",
        s(&plugin("txn_velocity")),
        "--source",
        s(&events),
        "--offline-store",
        s(&store),
        "--table-format",
        "delta",
        "--no-cache",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = store.join("txn_velocity/version=1.0.0");
    let card = "card-000002";
    let (in_table, in_files) = delta_rows_of(&table, card);
    assert!(
        in_table > 0 && in_files == in_table,
        "{in_table} {in_files}"
    );

    let out = lockstep(&[
        "erase",
        "--group",
        "txn_velocity",
        "--entity",
        card,
        "--offline-store",
        s(&store),
    ]);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}\n{}", text(&out.stderr));
    assert!(said.contains("Delta table version 2"), "{said}");
    let (in_table, in_files) = delta_rows_of(&table, card);
    assert_eq!(in_table, 0, "the latest version no longer holds the entity");
    assert!(in_files > 0, "older versions keep their files until VACUUM");
    let verify = lockstep(&[
        "erase",
        "verify",
        "--group",
        "txn_velocity",
        "--entity",
        card,
        "--offline-store",
        s(&store),
    ]);
    assert!(verify.status.success(), "{}", text(&verify.stdout));

    let out = lockstep(&[
        "offline",
        "vacuum",
        "--offline-store",
        s(&store),
        "--group",
        "txn_velocity",
        "--retain",
        "0s",
        "--allow-short-retention",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        delta_rows_of(&table, card),
        (0, 0),
        "after VACUUM no file holds the entity"
    );
}

#[test]
fn markers_first_then_offline_purge_and_both_are_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("offline");
    let events = golden_events();
    backfill(&events, &store);
    let g = group(&plugin("txn_velocity"));
    let before = offline_rows(&store, &g);
    let card = "card-000010";
    let erase = lockstep(&[
        "erase",
        "--group",
        "txn_velocity",
        "--entity",
        card,
        "--entity",
        card,
        "--offline-store",
        s(&store),
        "--reason",
        "test",
    ]);
    let said = text(&erase.stdout);
    assert!(erase.status.success(), "{said}\n{}", text(&erase.stderr));
    assert!(
        said.contains("erasing 1 entities"),
        "a key given twice is erased once: {said}"
    );
    assert!(said.contains("1 deletion markers written"), "{said}");
    let marked = offline_rows(&store, &g);
    assert_eq!(marked.len(), before.len() + 1, "one marker row");
    assert!(
        marked
            .iter()
            .any(|r| r.contains(card) && r.contains("\"is_deleted\":true")),
        "the marker names the entity, deleted"
    );

    let verify = |json: bool| {
        let mut args = vec![
            "erase",
            "verify",
            "--group",
            "txn_velocity",
            "--entity",
            card,
            "--offline-store",
            s(&store),
        ];
        if json {
            args.push("--json");
        }
        lockstep(&args)
    };
    let found = verify(false);
    assert!(
        !found.status.success(),
        "history is still there before the purge"
    );
    assert!(
        text(&found.stdout).contains("FOUND") && text(&found.stdout).contains("offline purge"),
        "{}",
        text(&found.stdout)
    );

    let dry = lockstep(&[
        "offline",
        "purge",
        "--offline-store",
        s(&store),
        "--dry-run",
    ]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    assert!(
        text(&dry.stdout).contains("would remove"),
        "{}",
        text(&dry.stdout)
    );
    assert_eq!(
        offline_rows(&store, &g),
        marked,
        "a dry run changes nothing"
    );
    let purge = lockstep(&["offline", "purge", "--offline-store", s(&store)]);
    assert!(purge.status.success(), "{}", text(&purge.stderr));
    let after = offline_rows(&store, &g);
    assert!(
        after.iter().all(|r| !r.contains(card)),
        "no row of the card is left"
    );
    assert_eq!(
        after,
        before
            .iter()
            .filter(|r| !r.contains(card))
            .cloned()
            .collect::<Vec<_>>(),
        "every other row is untouched"
    );
    assert!(verify(true).status.success());

    let shown = lockstep(&[
        "audit",
        "show",
        "--offline-store",
        s(&store),
        "--group",
        "txn_velocity",
        "--json",
    ]);
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let actions: Vec<String> = text(&shown.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .filter_map(|r| r["action"].as_str().map(str::to_owned))
        .collect();
    assert!(actions.contains(&"erase".to_owned()), "{actions:?}");
    assert!(actions.contains(&"purge".to_owned()), "{actions:?}");
    let verified = lockstep(&["audit", "verify", "--offline-store", s(&store)]);
    assert!(verified.status.success(), "{}", text(&verified.stdout));
}

#[test]
fn bad_erase_requests_are_clear_errors_that_touch_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("offline");
    let fail = |args: &[&str], says: &str| {
        let out = lockstep(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = text(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    };
    fail(
        &["erase", "--group", "g", "--offline-store", s(&store)],
        "no entity keys",
    );
    fail(
        &["erase", "--group", "g", "--entity", "a"],
        "without --offline-store",
    );
    fail(
        &["erase", "--group", "g@1", "--entity", "a"],
        "erasure ledger",
    );
    fail(
        &[
            "erase",
            "--group",
            "@1",
            "--entity",
            "a",
            "--offline-store",
            s(&store),
        ],
        "needs a name",
    );
    fail(
        &[
            "erase",
            "--group",
            "nothing",
            "--entity",
            "a",
            "--offline-store",
            s(&store),
        ],
        "has no version",
    );
    fail(
        &[
            "erase",
            "--group",
            "g@1",
            "--entities-file",
            s(&dir.path().join("missing.txt")),
            "--offline-store",
            s(&store),
        ],
        "missing.txt",
    );
    let recorded = std::fs::read_dir(store.join("_lockstep/erasures"))
        .map(|d| d.flatten().count())
        .unwrap_or(0);
    assert_eq!(recorded, 0, "nothing was recorded by a refused erase");
}
