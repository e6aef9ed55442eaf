//! `lockstep stream run` as a service, against real servers on loopback: a moto server
//! for Kinesis, a real redis-server, and our own featurestore-local. Every test puts
//! a golden set to a fresh stream and checks what the service wrote — the online
//! store, the cache, the row, late and dead-letter logs — against the golden rows,
//! which the batch host computes for the same events.

mod common;

use common::{group, lockstep, plugin, repo, s, text};
use lockstep_core::compare::{Row, canonical_order, compare};
use lockstep_online::{EmbeddedStore, GroupRef, OnlineStore};
use lockstep_testkit::{Moto, Redis, free_port};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "card_id";

fn golden_events() -> PathBuf {
    repo("golden").join("txn_velocity").join("events.jsonl")
}

fn golden_rows() -> Vec<Row> {
    read_rows(&repo("golden").join("txn_velocity").join("expected.jsonl"))
}

fn read_rows(path: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut rows: Vec<Row> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    canonical_order(&mut rows, KEY);
    rows
}

fn assert_same_rows(label: &str, got: &[Row], want: &[Row]) {
    let cmp = compare(KEY, got, want, 5);
    assert!(
        cmp.identical(),
        "{label}: {} rows vs {} expected\n{}",
        got.len(),
        want.len(),
        cmp.render("service", "golden")
    );
}

/// The last row of each entity, in canonical order: what the online store must hold.
fn latest_rows(rows: &[Row]) -> BTreeMap<String, Row> {
    let mut out = BTreeMap::new();
    for row in rows {
        let key = match &row[KEY] {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.insert(key, row.clone());
    }
    out
}

/// The golden events in two files, the first half and the rest, in arrival order.
fn golden_halves(dir: &Path) -> (PathBuf, PathBuf) {
    let text_all = std::fs::read_to_string(golden_events()).unwrap();
    let lines: Vec<&str> = text_all.lines().collect();
    let half = lines.len() / 2;
    let first = dir.join("first.jsonl");
    let second = dir.join("second.jsonl");
    std::fs::write(&first, lines[..half].join("\n") + "\n").unwrap();
    std::fs::write(&second, lines[half..].join("\n") + "\n").unwrap();
    (first, second)
}

/// Runs `lockstep` with the moto environment.
fn lockstep_env(moto: &Moto, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lockstep"));
    command.args(args).envs(moto.env());
    command.output().expect("run lockstep")
}

fn put(moto: &Moto, wasm: &Path, stream: &str, events: &Path, create: Option<&str>) {
    let endpoint = moto.endpoint();
    let mut args = vec![
        "stream",
        "put",
        "--plugin",
        s(wasm),
        "--stream",
        stream,
        "--events",
        s(events),
        "--endpoint-url",
        &endpoint,
    ];
    if let Some(shards) = create {
        args.extend(["--create-shards", shards]);
    }
    let out = lockstep_env(moto, &args);
    assert!(out.status.success(), "put failed: {}", text(&out.stderr));
}

/// `stream run` arguments common to every test.
fn run_args(
    moto: &Moto,
    wasm: &Path,
    stream: &str,
    store: &str,
    state: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "stream",
        "run",
        "--plugin",
        s(wasm),
        "--stream",
        stream,
        "--endpoint-url",
        &moto.endpoint(),
        "--online-store",
        store,
        "--state",
        s(state),
        "--allowed-lateness",
        "5m",
        "--idle-poll",
        "50ms",
        // These tests replay history (2024): a watermark following the clock would
        // wake every entity up to now once caught up. It has a test of its own.
        "--idle-watermark",
        "off",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn spawn(moto: &Moto, args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(args)
        .envs(moto.env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lockstep stream run")
}

/// Runs the service to the end of what was put (stop when idle, drain).
fn run_to_end(moto: &Moto, args: &[String]) -> Output {
    let mut args = args.to_vec();
    args.extend(["--stop-when-idle".into(), "--drain-on-stop".into()]);
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(&args)
        .envs(moto.env())
        .output()
        .expect("run lockstep stream run");
    assert!(
        out.status.success(),
        "stream run failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// Every record in the embedded store for `keys`, as rows.
fn stored(dir: &Path, group: &GroupRef, keys: &[String]) -> BTreeMap<String, Row> {
    let store = EmbeddedStore::open(dir).expect("open online store");
    let records = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(store.get(group, keys))
        .expect("read online store");
    keys.iter()
        .zip(records)
        .filter_map(|(k, r)| r.map(|r| (k.clone(), r.row)))
        .collect()
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
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

/// A counter's value in a Prometheus text exposition.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

#[test]
fn events_reach_the_store_the_cache_and_the_logs_bad_ones_the_dead_and_late_logs() {
    let moto = Moto::start();
    let redis = Redis::start(&[]);
    let wasm = plugin("txn_velocity");
    let dir = tempfile::tempdir().unwrap();
    // The golden events, then: the last event again (a duplicate), two records that
    // are not events, and an event far behind the watermark.
    let mut events = std::fs::read_to_string(golden_events()).unwrap();
    let last = events.lines().last().unwrap().to_owned();
    events.push_str(&format!("{last}\n"));
    events.push_str("{\"card_id\":\"card-000001\",\"ts\":\"not a time\",\"amount\":1.0,\"merchant\":\"m\",\"txn_id\":\"bad-1\"}\n");
    events.push_str("this is not json\n");
    events.push_str("{\"card_id\":\"card-000002\",\"ts\":1704067268000000,\"amount\":1.0,\"merchant\":\"m\",\"txn_id\":\"late-1\"}\n");
    let events_path = dir.path().join("events.jsonl");
    std::fs::write(&events_path, events).unwrap();
    put(&moto, &wasm, "txns", &events_path, Some("2"));

    let state = dir.path().join("state");
    let online = dir.path().join("online");
    let audit = dir.path().join("audit");
    let store_arg = format!("embedded:{}", online.display());
    let args = run_args(
        &moto,
        &wasm,
        "txns",
        &store_arg,
        &state,
        &[
            "--cache",
            &redis.url(),
            "--audit",
            s(&audit),
            "--audit-checkpoints-every",
            "20ms",
        ],
    );
    let out = run_to_end(&moto, &args);
    let summary = text(&out.stdout);
    // With --audit, the service's start and stop are recorded, the stop with what it did.
    let shown = lockstep(&["audit", "show", "--audit", s(&audit), "--json"]);
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let entries: Vec<serde_json::Value> = text(&shown.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let actions: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    // Start, the checkpoint generations (one entry per period, the rest at stop), stop.
    assert_eq!(actions.first(), Some(&"stream.start"), "{actions:?}");
    assert_eq!(actions.last(), Some(&"stream.stop"), "{actions:?}");
    let middle = &entries[1..entries.len() - 1];
    assert!(!middle.is_empty(), "no checkpoint recorded: {actions:?}");
    let stop = &entries[entries.len() - 1]["details"];
    assert_eq!(stop["dead_letters"], 2, "{stop}");
    assert_eq!(entries[0]["group"], "txn_velocity");
    // The generations recorded are 1..=the last, each once, in order, and the last
    // one's positions name both shards.
    let mut next = 1;
    let mut checkpoints = 0;
    for entry in middle {
        assert_eq!(entry["action"], "stream.checkpoint", "{entry}");
        let d = &entry["details"];
        assert_eq!(d["first_generation"], next, "{entry}");
        let last = d["last_generation"].as_u64().unwrap();
        assert_eq!(
            d["checkpoints"].as_u64().unwrap(),
            last + 1 - next,
            "{entry}"
        );
        checkpoints += last + 1 - next;
        next = last + 1;
    }
    assert_eq!(stop["generation"], next - 1, "{stop}");
    assert_eq!(stop["checkpoints"], checkpoints, "{stop}");
    let last = &middle[middle.len() - 1]["details"];
    assert_eq!(
        last["positions"].as_object().map(|p| p.len()).unwrap_or(0)
            + last["ended_shards"].as_u64().unwrap_or(0) as usize,
        2,
        "{last}"
    );
    assert!(last["log_lengths"]["rows"].as_u64().unwrap() > 0, "{last}");
    let duplicates: u64 = summary
        .split(", ")
        .find(|p| p.ends_with(" duplicates"))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no duplicate count in {summary}"));
    assert!(duplicates >= 1, "{summary}");
    assert!(summary.contains("1 late"), "{summary}");
    assert!(summary.contains("2 dead letters"), "{summary}");

    let expected = golden_rows();
    assert_same_rows("row log", &read_rows(&state.join("rows.jsonl")), &expected);

    let latest = latest_rows(&expected);
    let keys: Vec<String> = latest.keys().cloned().collect();
    let g = group(&wasm);
    assert_eq!(stored(&online, &g, &keys), latest, "online store");

    // The cache holds the same latest rows, with their event times.
    for (key, row) in latest.iter().take(25) {
        let redis_key = format!("lockstep:{}:{key}", g.id());
        let out = Command::new("redis-cli")
            .args([
                "-p",
                &redis.port().to_string(),
                "--raw",
                "HGET",
                &redis_key,
                "v",
            ])
            .output()
            .expect("redis-cli");
        let cached: Json = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{redis_key}: {e}: {}", text(&out.stdout)));
        assert_eq!(
            cached["row"],
            Json::Object(row.clone()),
            "cache {redis_key}"
        );
        assert_eq!(cached["plugin_hash"], Json::String(g.plugin_hash.clone()));
    }

    let dead = std::fs::read_to_string(state.join("dead-letters.jsonl")).unwrap();
    let dead: Vec<Json> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead.iter().all(|d| {
        d["shard"]
            .as_str()
            .is_some_and(|s| s.starts_with("shardId"))
            && d["sequence"].as_str().is_some_and(|s| !s.is_empty())
    }));
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("ts")
            || dead[1]["reason"].as_str().unwrap().contains("ts"),
        "{dead:?}"
    );
    let late = std::fs::read_to_string(state.join("late.jsonl")).unwrap();
    assert_eq!(late.lines().count(), 1, "{late}");
    assert!(late.contains("late-1"), "{late}");

    // A second run over the same stream finds nothing new and changes nothing.
    run_to_end(&moto, &args);
    assert_same_rows(
        "row log after a rerun",
        &read_rows(&state.join("rows.jsonl")),
        &expected,
    );
}

#[test]
fn killed_at_random_points_the_service_ends_as_an_uninterrupted_run_does() {
    let moto = Moto::start();
    let wasm = plugin("txn_velocity");
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = golden_halves(dir.path());
    put(&moto, &wasm, "crash", &first, Some("2"));

    let state = dir.path().join("state");
    let online = dir.path().join("online");
    let store_arg = format!("embedded:{}", online.display());
    // Small reads: many rounds, many checkpoints to land between.
    let args = run_args(
        &moto,
        &wasm,
        "crash",
        &store_arg,
        &state,
        &["--batch-size", "40"],
    );
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut kills = 0;
    let mut logged_at_kill = Vec::new();
    for round in 0..5 {
        if round == 2 {
            put(&moto, &wasm, "crash", &second, None);
        }
        let mut child = spawn(&moto, &args);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(300 + seed % 900));
        if child.try_wait().expect("poll child").is_none() {
            child.kill().expect("kill -9");
            kills += 1;
        }
        let _ = child.wait();
        logged_at_kill.push(std::fs::metadata(state.join("rows.jsonl")).map_or(0, |m| m.len()));
    }
    assert!(kills >= 3, "the service was killed only {kills} times");
    run_to_end(&moto, &args);
    // The kills landed in the middle of the work, not before or after it.
    let total = std::fs::metadata(state.join("rows.jsonl")).unwrap().len();
    let mid_work = logged_at_kill
        .iter()
        .filter(|&&n| n > 0 && n < total)
        .count();
    assert!(
        mid_work >= 2,
        "row log sizes at the kills: {logged_at_kill:?} of {total}"
    );

    // An uninterrupted run over the same stream, elsewhere.
    let clean_state = dir.path().join("clean-state");
    let clean_online = dir.path().join("clean-online");
    let clean_arg = format!("embedded:{}", clean_online.display());
    run_to_end(
        &moto,
        &run_args(&moto, &wasm, "crash", &clean_arg, &clean_state, &[]),
    );

    let crashed = read_rows(&state.join("rows.jsonl"));
    let clean = read_rows(&clean_state.join("rows.jsonl"));
    assert_same_rows("crashed vs uninterrupted row log", &crashed, &clean);
    assert_same_rows("row log vs golden", &crashed, &golden_rows());
    let latest = latest_rows(&clean);
    let keys: Vec<String> = latest.keys().cloned().collect();
    let g = group(&wasm);
    assert_eq!(
        stored(&online, &g, &keys),
        stored(&clean_online, &g, &keys),
        "online stores differ"
    );
    assert_eq!(stored(&online, &g, &keys), latest);

    // skew-check reads the service's log: the batch host agrees with it, and a plugin
    // that computes differently does not.
    let events = golden_events();
    let check = |wasm: &Path| {
        lockstep(&[
            "skew-check",
            "--plugin",
            s(wasm),
            "--events",
            s(&events),
            "--stream-log",
            s(&state),
        ])
    };
    let out = check(&wasm);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("batch = stream"),
        "{}",
        text(&out.stdout)
    );
    let naive = common::built(&repo("plugins").join("txn_velocity"), &["naive-sum"]);
    let out = check(&naive);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
}

#[test]
fn a_split_mid_stream_loses_nothing_and_keeps_each_entity_in_order() {
    let moto = Moto::start();
    let wasm = plugin("txn_velocity");
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = golden_halves(dir.path());
    put(&moto, &wasm, "split", &first, Some("1"));

    let state = dir.path().join("state");
    let online = dir.path().join("online");
    let store_arg = format!("embedded:{}", online.display());
    let args = run_args(
        &moto,
        &wasm,
        "split",
        &store_arg,
        &state,
        &["--batch-size", "100"],
    );
    let mut service = spawn(&moto, &args);
    std::thread::sleep(Duration::from_millis(800));
    // Split the only shard in the middle of its hash range, then put the rest.
    moto.boto3(
        "k = client('kinesis')\n\
         shard = k.list_shards(StreamName='split')['Shards'][0]['ShardId']\n\
         k.split_shard(StreamName='split', ShardToSplit=shard, NewStartingHashKey=str(2**127))",
    );
    put(&moto, &wasm, "split", &second, None);
    // Let it read what is there, then stop it and finish the stream.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = service.kill();
    let _ = service.wait();
    run_to_end(&moto, &args);
    assert_same_rows(
        "row log across a split",
        &read_rows(&state.join("rows.jsonl")),
        &golden_rows(),
    );
    let shards =
        moto.boto3("print(len(client('kinesis').list_shards(StreamName='split')['Shards']))");
    assert_eq!(shards.trim(), "3", "the split did not happen");
}

#[test]
fn sigterm_stops_cleanly_and_health_and_metrics_report_the_work() {
    let moto = Moto::start();
    let wasm = plugin("txn_velocity");
    let dir = tempfile::tempdir().unwrap();
    put(&moto, &wasm, "term", &golden_events(), Some("2"));
    let state = dir.path().join("state");
    let store_arg = format!("embedded:{}", dir.path().join("online").display());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = run_args(
        &moto,
        &wasm,
        "term",
        &store_arg,
        &state,
        &["--listen", &listen],
    );
    let mut service = spawn(&moto, &args);

    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        if let Some((200, body)) = http_get(port, "/metrics")
            && metric(&body, "lockstep_stream_records_in_total").is_some_and(|v| v >= 3000.0)
        {
            break body;
        }
        assert!(Instant::now() < deadline, "no progress on /metrics");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        metric(&metrics, "lockstep_stream_rows_out_total").is_some_and(|v| v > 0.0),
        "{metrics}"
    );
    assert!(
        metrics.contains("lockstep_stream_lag_ms{shard=\"shardId-"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lockstep_stream_dead_letters_total 0"),
        "{metrics}"
    );
    let (code, health) = http_get(port, "/healthz").expect("healthz");
    assert_eq!(code, 200, "{health}");
    assert!(health.contains("\"ok\""), "{health}");

    let pid = service.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = service.try_wait().expect("poll") {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    service
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(status.success(), "exit {status:?}: {stdout}");
    assert!(stdout.contains("stopped:"), "{stdout}");
    // Everything it read before the stop is checkpointed: the rest of the stream
    // picks up there, and the result is the golden rows.
    run_to_end(&moto, &args);
    assert_same_rows(
        "row log after SIGTERM and restart",
        &read_rows(&state.join("rows.jsonl")),
        &golden_rows(),
    );
}

#[test]
fn another_plugin_is_refused_by_the_state_and_by_the_online_store() {
    let moto = Moto::start();
    let wasm = plugin("txn_velocity");
    let naive = common::built(&repo("plugins").join("txn_velocity"), &["naive-sum"]);
    let dir = tempfile::tempdir().unwrap();
    put(&moto, &wasm, "refuse", &golden_events(), Some("1"));
    let state = dir.path().join("state");
    let store_arg = format!("embedded:{}", dir.path().join("online").display());
    run_to_end(
        &moto,
        &run_args(&moto, &wasm, "refuse", &store_arg, &state, &[]),
    );

    // Same state directory, other component: refused before anything is read.
    let out = lockstep_env(
        &moto,
        &run_args(
            &moto,
            &naive,
            "refuse",
            &store_arg,
            &state,
            &["--stop-when-idle"],
        )
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("was built by plugin"), "{err}");

    // Fresh state, same group version in the online store: the store refuses.
    let other_state = dir.path().join("other-state");
    let out = lockstep_env(
        &moto,
        &run_args(
            &moto,
            &naive,
            "refuse",
            &store_arg,
            &other_state,
            &["--stop-when-idle"],
        )
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("refusing rows from plugin"), "{err}");
    assert!(err.contains(&group(&wasm).plugin_hash), "{err}");
}

/// The event time of a golden event (µs since the epoch or RFC 3339 text).
fn event_time(line: &str) -> i64 {
    match &serde_json::from_str::<Json>(line).unwrap()["ts"] {
        Json::Number(n) => n.as_i64().unwrap(),
        Json::String(t) => lockstep_featurestore::wire::parse_event_time(t).unwrap(),
        other => panic!("ts {other}"),
    }
}

#[test]
fn a_backfill_hands_its_state_to_the_stream_without_gap_or_double_count() {
    let moto = Moto::start();
    let wasm = plugin("txn_velocity");
    let dir = tempfile::tempdir().unwrap();
    // Split the golden events at an instant T by event time: the backfill takes the
    // events before T, the stream the rest (in arrival order).
    let text_all = std::fs::read_to_string(golden_events()).unwrap();
    let mut times: Vec<i64> = text_all.lines().map(event_time).collect();
    times.sort_unstable();
    let t = times[times.len() / 2];
    let before: Vec<&str> = text_all.lines().filter(|l| event_time(l) < t).collect();
    let before_path = dir.path().join("before.jsonl");
    std::fs::write(&before_path, before.join("\n") + "\n").unwrap();

    let offline = dir.path().join("offline");
    let snapshot = dir.path().join("state.parquet");
    let t_text = lockstep_core::rows::format_timestamp(t);
    let t_text = t_text.as_str().unwrap();
    // The backfill's input ends at T: its entities are woken up to T, the stream's
    // from there.
    let out = lockstep(&[
        "batch",
        "run",
        "--plugin",
        s(&wasm),
        "--source",
        s(&before_path),
        "--format",
        "json",
        "--offline-store",
        s(&offline),
        "--state-out",
        s(&snapshot),
        "--end-at",
        t_text,
    ]);
    assert!(out.status.success(), "backfill: {}", text(&out.stderr));

    // The stream holds every event, as Kinesis would around T; the service skips
    // those before T (the backfill's) and goes on from the backfill's states.
    put(&moto, &wasm, "handoff", &golden_events(), Some("2"));
    let state = dir.path().join("state");
    let store_arg = format!("embedded:{}", dir.path().join("online").display());
    let out = run_to_end(
        &moto,
        &run_args(
            &moto,
            &wasm,
            "handoff",
            &store_arg,
            &state,
            &["--start-state", s(&snapshot), "--start-at", t_text],
        ),
    );
    let summary = text(&out.stdout);
    assert!(
        summary.contains(&format!("{} before the start", before.len())),
        "{summary}"
    );
    let streamed = read_rows(&state.join("rows.jsonl"));
    // The stream's rows are exactly the golden rows at or after T.
    let mut want: Vec<Row> = golden_rows()
        .into_iter()
        .filter(|r| r["event_time"].as_str().unwrap() >= t_text)
        .collect();
    canonical_order(&mut want, KEY);
    assert!(!want.is_empty());
    assert_same_rows("stream rows after the hand-off", &streamed, &want);
}

#[test]
fn a_stream_that_does_not_exist_is_a_clear_error_not_an_endless_retry() {
    let moto = Moto::start();
    let wasm = plugin("txn_velocity");
    let dir = tempfile::tempdir().unwrap();
    let store_arg = format!("embedded:{}", dir.path().join("online").display());
    let started = Instant::now();
    let args = run_args(
        &moto,
        &wasm,
        "no-such-stream",
        &store_arg,
        &dir.path().join("state"),
        &[],
    );
    let out = lockstep_env(&moto, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("no-such-stream"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_cache_that_disappears_slows_nothing_down_and_is_counted() {
    let moto = Moto::start();
    let redis = Redis::start(&[]);
    let wasm = plugin("txn_velocity");
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = golden_halves(dir.path());
    put(&moto, &wasm, "nocache", &first, Some("2"));
    let state = dir.path().join("state");
    let online = dir.path().join("online");
    let store_arg = format!("embedded:{}", online.display());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let redis_url = redis.url();
    let args = run_args(
        &moto,
        &wasm,
        "nocache",
        &store_arg,
        &state,
        &["--cache", &redis_url, "--listen", &listen],
    );
    let mut service = spawn(&moto, &args);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http_get(port, "/metrics").is_some_and(|(_, body)| {
        metric(&body, "lockstep_stream_records_in_total").is_some_and(|v| v > 0.0)
    }) {
        assert!(Instant::now() < deadline, "no progress before the outage");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Redis goes away; the rest of the stream arrives.
    drop(redis);
    put(&moto, &wasm, "nocache", &second, None);
    let deadline = Instant::now() + Duration::from_secs(90);
    let body = loop {
        if let Some((200, body)) = http_get(port, "/metrics")
            && metric(&body, "lockstep_stream_records_in_total").is_some_and(|v| v >= 3457.0)
            && metric(&body, "lockstep_stream_write_errors_total").is_some_and(|v| v > 0.0)
        {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the stream stalled without its cache: {:?}",
            http_get(port, "/metrics")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(body.contains("lockstep_stream_commits_total"), "{body}");
    let (code, health) = http_get(port, "/healthz").expect("healthz");
    assert_eq!(
        code, 200,
        "reads go on, so the service is healthy: {health}"
    );
    assert!(
        health.contains("redis"),
        "the last error names the cache: {health}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status();
    let status = service.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    // The durable side has everything: finish the stream without a cache.
    run_to_end(
        &moto,
        &run_args(&moto, &wasm, "nocache", &store_arg, &state, &[]),
    );
    assert_same_rows(
        "row log after a cache outage",
        &read_rows(&state.join("rows.jsonl")),
        &golden_rows(),
    );
}

/// A lost checkpoint beside the logs of an earlier run: refused, logs untouched; a
/// damaged one: an error naming the file, never a panic; `--fresh` reads the stream
/// again from its beginning and keeps the old logs as `*.before-fresh`.
#[test]
fn a_lost_or_damaged_checkpoint_is_refused_and_fresh_keeps_the_old_logs() {
    let moto = Moto::start();
    let wasm = plugin("txn_velocity");
    let dir = tempfile::tempdir().unwrap();
    put(&moto, &wasm, "lost", &golden_events(), Some("1"));
    let state = dir.path().join("state");
    let store_arg = format!("embedded:{}", dir.path().join("online").display());
    let args = run_args(&moto, &wasm, "lost", &store_arg, &state, &[]);
    run_to_end(&moto, &args);
    let rows_log = state.join("rows.jsonl");
    let first_rows = std::fs::read_to_string(&rows_log).unwrap();
    assert!(first_rows.lines().count() > 100, "the first run wrote rows");
    let checkpoint = state.join("state.redb");
    let once = |extra: &[&str]| -> Output {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend(["--stop-when-idle", "--drain-on-stop"]);
        all.extend(extra);
        lockstep_env(&moto, &all)
    };

    // Damaged: random bytes over the checkpoint.
    let good = std::fs::read(&checkpoint).unwrap();
    let mut damaged = good.clone();
    for (i, b) in damaged.iter_mut().enumerate().skip(512).step_by(7) {
        *b = b.wrapping_mul(31).wrapping_add(i as u8) ^ 0x5a;
    }
    std::fs::write(&checkpoint, &damaged).unwrap();
    let out = once(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("state.redb") && !err.contains("panicked"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&rows_log).unwrap(), first_rows);

    // Lost: refused before anything is read or cut.
    std::fs::remove_file(&checkpoint).unwrap();
    let out = once(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("--fresh") && err.contains("checkpoint"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&rows_log).unwrap(), first_rows);

    // --fresh: the old logs set aside whole, the stream read again from its start,
    // giving the same rows (the engine is deterministic).
    let out = once(&["--fresh"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(state.join("rows.jsonl.before-fresh")).unwrap(),
        first_rows
    );
    assert_eq!(std::fs::read_to_string(&rows_log).unwrap(), first_rows);
}

/// A card with transactions five hours ago and nothing since, streamed live: the
/// events alone hold the watermark five hours back, but once the shard is caught up
/// its watermark follows the clock (minus the allowed lateness), the card is woken when
/// each transaction leaves its hour, and the online store holds `txn_count_1h = 0` for
/// it — a host without wake-ups would still say 2.
#[test]
fn a_caught_up_stream_follows_the_clock_and_an_idle_card_reads_zero_online() {
    let moto = Moto::start();
    let wasm = plugin("txn_velocity");
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let minute = 60_000_000i64;
    let hour = 60 * minute;
    let (first, last) = (now - 5 * hour - 20 * minute, now - 5 * hour);
    let line = |card: &str, ts: i64, id: &str| {
        format!(r#"{{"card_id":"{card}","ts":{ts},"amount":10.0,"merchant":"m","txn_id":"{id}"}}"#)
    };
    let events = dir.path().join("live.jsonl");
    std::fs::write(
        &events,
        [line("idle", first, "a"), line("idle", last, "b")].join("\n") + "\n",
    )
    .unwrap();
    put(&moto, &wasm, "clock", &events, Some("1"));
    let state = dir.path().join("state");
    let online = dir.path().join("online");
    let store_arg = format!("embedded:{}", online.display());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = run_args(
        &moto,
        &wasm,
        "clock",
        &store_arg,
        &state,
        &["--listen", &listen],
    );
    let at = args
        .iter()
        .position(|a| a == "--idle-watermark")
        .expect("the flag");
    args[at + 1] = "on".into();
    let mut service = spawn(&moto, &args);
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        if let Some((200, body)) = http_get(port, "/metrics")
            && metric(&body, "lockstep_stream_wake_rows_total").is_some_and(|v| v >= 2.0)
        {
            break body;
        }
        if Instant::now() > deadline {
            let _ = service.kill();
            let out = service.wait_with_output().expect("output");
            panic!("no wake-up within 60 s:\n{}", text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let watermark = metric(&metrics, "lockstep_stream_clock_watermark_us").expect("watermark");
    assert!(
        (watermark as i64 - (now - 5 * minute)).abs() < 2 * minute,
        "the clock minus the lateness: {watermark} vs {now}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let out = service.wait_with_output().expect("stop");
    assert!(out.status.success(), "{}", text(&out.stderr));

    let g = group(&wasm);
    let rows = stored(&online, &g, &["idle".to_owned()]);
    let idle = &rows["idle"];
    assert_eq!(idle["txn_count_1h"], 0, "{idle:?}");
    assert_eq!(idle["txn_count_24h"], 2, "{idle:?}");
    let left_the_hour = (last + hour + minute - 1).div_euclid(minute) * minute;
    assert_eq!(
        idle["event_time"],
        Json::from(
            lockstep_core::rows::format_timestamp(left_the_hour)
                .as_str()
                .unwrap()
        ),
        "the row of the wake-up when the last transaction left the hour"
    );

    // skew-check over the service's log: the batch host, waking up to the input's end,
    // agrees on every row up to there; the clock's wake-ups after it are named, not
    // compared.
    let out = lockstep(&[
        "skew-check",
        "--plugin",
        s(&wasm),
        "--events",
        s(&events),
        "--stream-log",
        s(&state),
    ]);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}\n{}", text(&out.stderr));
    assert!(said.contains("batch = stream"), "{said}");
    assert!(
        said.contains("2 stream wake-up rows after the input's last event"),
        "{said}"
    );
}

/// A generated set of 200,000 transactions (5,000 cards over 30 days, arriving up to
/// ten minutes out of order, 1 % repeated) through Kinesis, the service killed -9 at
/// random points and restarted: the batch host and the service's row log are equal
/// bit for bit, wake-up rows included (most of the rows), and the kills landed
/// mid-work.
#[test]
fn a_generated_200k_event_stream_killed_at_random_points_has_zero_skew() {
    let moto = Moto::start();
    let wasm = plugin("txn_velocity");
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let out = lockstep(&[
        "gen",
        "events",
        "--kind",
        "transactions",
        "--rows",
        "200000",
        "--entities",
        "5000",
        "--seed",
        "23",
        "--out",
        s(&events),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    put(&moto, &wasm, "gen200k", &events, Some("4"));

    let state = dir.path().join("state");
    let store_arg = format!("embedded:{}", dir.path().join("online").display());
    let mut args = run_args(
        &moto,
        &wasm,
        "gen200k",
        &store_arg,
        &state,
        &["--batch-size", "2000"],
    );
    // The generator's arrival jitter: nothing is late within 10 minutes.
    let lateness = args
        .iter()
        .position(|a| a == "--allowed-lateness")
        .expect("run_args sets a lateness");
    args[lateness + 1] = "10m".into();
    let mut seed = 0xD1B5_4A32_D192_ED03u64;
    let mut logged_at_kill = Vec::new();
    for _ in 0..4 {
        let mut child = spawn(&moto, &args);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(1_500 + seed % 3_000));
        if child.try_wait().expect("poll child").is_none() {
            child.kill().expect("kill -9");
        }
        let _ = child.wait();
        logged_at_kill.push(std::fs::metadata(state.join("rows.jsonl")).map_or(0, |m| m.len()));
    }
    run_to_end(&moto, &args);
    let total = std::fs::metadata(state.join("rows.jsonl")).unwrap().len();
    let mid_work = logged_at_kill
        .iter()
        .filter(|&&n| n > 0 && n < total)
        .count();
    assert!(
        mid_work >= 2,
        "row log sizes at the kills: {logged_at_kill:?} of {total}"
    );

    let out = lockstep(&[
        "skew-check",
        "--plugin",
        s(&wasm),
        "--events",
        s(&events),
        "--stream-log",
        s(&state),
        "--allowed-lateness",
        "10m",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}{}", text(&out.stdout), text(&out.stderr)));
    assert!(out.status.success(), "skew: {report}");
    assert_eq!(report["identical"], true, "{report}");
    assert_eq!(report["events"], 200_000, "{report}");
    let (batch_rows, stream_rows) = (
        report["batch_rows"].as_u64().unwrap(),
        report["stream_rows"].as_u64().unwrap(),
    );
    assert_eq!(batch_rows, stream_rows, "{report}");
    // A row per applied transaction, and more for the windows it leaves.
    assert!(batch_rows > 400_000, "{report}");
    // Arrival jitter stays within the lateness: only a record arriving more than it
    // behind an earlier one (a repeat of an older transaction, or a transaction whose
    // first arrival is such a repeat) can be late — in any shard, whose watermark is
    // at most the stream's. Everything else was compared.
    let text_all = std::fs::read_to_string(&events).unwrap();
    let (mut latest, mut behind) = (i64::MIN, 0u64);
    for line in text_all.lines() {
        let ts = serde_json::from_str::<serde_json::Value>(line).unwrap()["ts"]
            .as_i64()
            .unwrap();
        if ts < latest.saturating_sub(600_000_000) {
            behind += 1;
        }
        latest = latest.max(ts);
    }
    let late = report["late_events"].as_u64().unwrap();
    assert!(
        late > 0 && late <= behind && behind < 4_000,
        "{late} late, {behind} records arrived over 10 minutes behind: {report}"
    );
}

/// A small tmpfs mounted for a test (as root, which `scripts/test.sh` runs as),
/// unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&at).expect("mkdir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .expect("mount");
        assert!(
            mounted.success(),
            "this test mounts a small tmpfs (as root, which scripts/test.sh runs as)"
        );
        SmallDisk(at)
    }

    /// Gives it `size` of room from now on; what it holds stays.
    fn grow(&self, size: &str) {
        let grown = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("remount");
        assert!(grown.success(), "remount {}", self.0.display());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a process a failed test left behind may still hold a file there.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A service process serving `/healthz` and `/metrics` on a port it chose itself
/// (`--listen 127.0.0.1:0`, the port read from its log: a free port picked for it could
/// be taken by another test's server first, and the test would then watch that one);
/// killed if the test ends (or fails) while it runs.
struct Running {
    child: Option<Child>,
    port: u16,
    /// Its log, as read so far.
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Running {
    /// Starts `lockstep` with `args` (which must not hold `--listen`) and waits until
    /// it serves.
    fn start(moto: &Moto, args: &[String]) -> Running {
        let mut args = args.to_vec();
        args.extend(["--listen".into(), "127.0.0.1:0".into()]);
        let mut child = spawn(moto, &args);
        let stderr = child.stderr.take().expect("stderr piped");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (bound, port) = std::sync::mpsc::channel();
        let kept = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(entry) = serde_json::from_str::<Json>(&line)
                    && let Some(address) = entry["fields"]["bound"].as_str()
                    && let Some(port) = address.rsplit(':').next().and_then(|p| p.parse().ok())
                {
                    let _ = bound.send(port);
                }
                if let Ok(mut log) = kept.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let mut running = Running {
            child: Some(child),
            port: 0,
            log,
        };
        running.port = port
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the service did not serve: {}", running.log()));
        running
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn still_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("poll").is_none())
    }

    /// Stops it with SIGTERM (finish the round, checkpoint) and asserts a clean exit.
    fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = child.wait().expect("wait");
        assert!(status.success(), "{status:?}: {}", self.log());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `probe` every 100 ms until it gives a value; fails naming `what` (and the
/// service's health) after `within`.
fn wait_until<T>(
    port: u16,
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: /healthz {:?}",
            http_get(port, "/healthz")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A counter of the service's `/metrics`, once it answers.
fn counter(port: u16, name: &str) -> Option<f64> {
    http_get(port, "/metrics").and_then(|(_, body)| metric(&body, name))
}

/// The row log under `state` holds every golden row once, and the embedded store at
/// `online` each entity's latest of them.
fn assert_ends_golden(label: &str, state: &Path, online: &Path, wasm: &Path) {
    let rows = read_rows(&state.join("rows.jsonl"));
    assert_same_rows(label, &rows, &golden_rows());
    let latest = latest_rows(&rows);
    let keys: Vec<String> = latest.keys().cloned().collect();
    assert_eq!(
        stored(online, &group(wasm), &keys),
        latest,
        "{label}: online store"
    );
}

/// The state directory's disk fills mid-stream (the golden row log is 5 MB, the disk
/// 1 MiB): the service stops with one clear error naming the file it could not write,
/// never a panic, and commits nothing it could not make durable. Given room, the same
/// command goes on from the last checkpoint and ends exactly as an uninterrupted run:
/// every golden row once in the log, each entity's latest in the online store.
#[test]
fn a_full_state_disk_stops_the_service_clearly_and_loses_nothing() {
    let moto = Moto::start();
    let wasm = plugin("txn_velocity");
    let dir = tempfile::tempdir().unwrap();
    put(&moto, &wasm, "full", &golden_events(), Some("1"));
    let disk = SmallDisk::mount(dir.path().join("small"), "1M");
    let state = disk.0.join("state");
    let online = dir.path().join("online");
    let store_arg = format!("embedded:{}", online.display());
    let args = run_args(
        &moto,
        &wasm,
        "full",
        &store_arg,
        &state,
        &["--batch-size", "200"],
    );
    let mut to_end: Vec<&str> = args.iter().map(String::as_str).collect();
    to_end.extend(["--stop-when-idle", "--drain-on-stop"]);
    let out = lockstep_env(&moto, &to_end);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        err.contains(&format!(
            "the disk under the state directory {} is full",
            state.display()
        )) && err.contains("run the same command again"),
        "{err}"
    );
    assert!(
        err.contains(s(&state.join("rows.jsonl"))),
        "the error names the file: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let logged = std::fs::metadata(state.join("rows.jsonl")).map_or(0, |m| m.len());
    let golden_bytes =
        std::fs::metadata(repo("golden").join("txn_velocity").join("expected.jsonl"))
            .unwrap()
            .len();
    assert!(
        logged < golden_bytes,
        "the disk filled before the end: {logged} of {golden_bytes} bytes logged"
    );

    // Room again: the same command goes on from its checkpoint.
    disk.grow("64M");
    run_to_end(&moto, &args);
    assert_ends_golden("after a full state disk", &state, &online, &wasm);
}

/// The online store's disk fills while the service runs: its writes are retried (the
/// service says so on /healthz and counts them), nothing is committed past them, and
/// once there is room the service goes on by itself and ends with every golden row
/// once in the log and each entity's latest in the store.
#[test]
fn a_full_online_store_disk_is_retried_until_there_is_room() {
    let moto = Moto::start();
    let wasm = plugin("txn_velocity");
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = golden_halves(dir.path());
    put(&moto, &wasm, "fullstore", &first, Some("1"));
    let disk = SmallDisk::mount(dir.path().join("small"), "16M");
    let online = disk.0.join("online");
    let store_arg = format!("embedded:{}", online.display());
    let state = dir.path().join("state");
    let args = run_args(
        &moto,
        &wasm,
        "fullstore",
        &store_arg,
        &state,
        &["--batch-size", "200"],
    );
    let mut service = Running::start(&moto, &args);
    let port = service.port;
    let commits = || counter(port, "lockstep_stream_commits_total");
    wait_until(
        port,
        "no commit before the disk fills",
        Duration::from_secs(60),
        || commits().filter(|&c| c > 0.0),
    );
    // Fill the disk to its last byte, then send the rest of the stream.
    let filler = disk.0.join("filler");
    {
        let mut file = std::fs::File::create(&filler).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
    }
    put(&moto, &wasm, "fullstore", &second, None);
    let health = wait_until(
        port,
        "no write error reported",
        Duration::from_secs(60),
        || {
            let errors = counter(port, "lockstep_stream_write_errors_total")?;
            let (_, health) = http_get(port, "/healthz")?;
            (errors > 0.0 && health.contains("No space left on device")).then_some(health)
        },
    );
    assert!(health.contains(s(&online.join("online.redb"))), "{health}");
    assert!(service.still_running(), "the service keeps running");
    let committed_while_full = commits().unwrap_or(0.0);
    // Room again: the service goes on by itself (the store is opened again) and
    // commits the rest.
    std::fs::remove_file(&filler).expect("remove filler");
    wait_until(
        port,
        "the service did not recover",
        Duration::from_secs(90),
        || {
            let all_read = counter(port, "lockstep_stream_records_in_total")? >= 3457.0;
            let committed = commits()? > committed_while_full;
            let (code, health) = http_get(port, "/healthz")?;
            (all_read && committed && code == 200 && health.contains("\"last_error\":null"))
                .then_some(())
        },
    );
    service.stop();
    run_to_end(&moto, &args);
    assert_ends_golden("after the store's disk filled", &state, &online, &wasm);
}

/// Kinesis stops answering (the moto server frozen: connections hang, as behind a
/// partition) while the service idles at the tip: `/healthz` turns 503 `stalled` once
/// no read has passed for 30 s, the process keeps running (each read attempt times out
/// and is retried on a new connection); when Kinesis answers again the service reads on
/// by itself (200 again), takes the rest of the stream and ends with every golden row
/// once.
#[test]
fn a_kinesis_that_stops_answering_is_reported_stalled_and_the_service_goes_on() {
    let moto = Moto::start();
    let wasm = plugin("txn_velocity");
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = golden_halves(dir.path());
    put(&moto, &wasm, "frozen", &first, Some("1"));
    let state = dir.path().join("state");
    let online = dir.path().join("online");
    let store_arg = format!("embedded:{}", online.display());
    let args = run_args(&moto, &wasm, "frozen", &store_arg, &state, &[]);
    let mut service = Running::start(&moto, &args);
    let port = service.port;
    let read_at_least =
        |n: f64| move || counter(port, "lockstep_stream_records_in_total").filter(|&v| v >= n);
    let half = std::fs::read_to_string(&first).unwrap().lines().count() as f64;
    wait_until(
        port,
        "the first half was not read",
        Duration::from_secs(60),
        read_at_least(half),
    );
    assert!(service.still_running(), "{}", service.log());
    moto.freeze();
    let frozen = Instant::now();
    let stalled = wait_until(
        port,
        "not reported stalled",
        Duration::from_secs(60),
        || http_get(port, "/healthz").and_then(|(code, health)| (code == 503).then_some(health)),
    );
    assert!(stalled.contains("\"stalled\""), "{stalled}");
    assert!(
        frozen.elapsed() >= Duration::from_secs(25),
        "stalled only once reads have failed for a while: {stalled}"
    );
    assert!(
        service.still_running(),
        "a stalled source is waited for, not fatal"
    );
    moto.thaw();
    wait_until(
        port,
        "reads did not resume",
        Duration::from_secs(60),
        || http_get(port, "/healthz").and_then(|(code, _)| (code == 200).then_some(())),
    );
    put(&moto, &wasm, "frozen", &second, None);
    wait_until(
        port,
        "the second half was not read",
        Duration::from_secs(60),
        read_at_least(3457.0),
    );
    service.stop();
    run_to_end(&moto, &args);
    assert_ends_golden("after Kinesis froze", &state, &online, &wasm);
}
