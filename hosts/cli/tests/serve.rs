//! `lockstep serve`: the serving path as a process, over an embedded store the plugin's
//! own rows filled, read with the Rust client; bad configuration is refused by name.

mod common;

use common::{Serve, group, http, http_full, lockstep, plugin, s, text};
use lockstep_client::Client;
use lockstep_client::api::{FeatureRequest, Source};
use lockstep_online::{EmbeddedStore, OnlineRecord};
use serde_json::{Map, Value as Json, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

impl Serve {
    fn start(args: &[&str]) -> Serve {
        Self::start_with(args, Stdio::null(), &[])
    }

    /// `serve` with `args`, its error output to `stderr`, with `env` set.
    fn start_with(args: &[&str], stderr: impl Into<Stdio>, env: &[(&str, &str)]) -> Serve {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lockstep"));
        command
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .stderr(stderr);
        Serve::spawn(command)
    }
}

/// Each card's last row, as `plugin run` emitted them.
fn latest_rows(wasm: &Path, dir: &Path) -> BTreeMap<String, Map<String, Json>> {
    let events = dir.join("events.jsonl");
    let out = lockstep(&[
        "gen",
        "events",
        "--kind",
        "transactions",
        "--rows",
        "3000",
        "--entities",
        "40",
        "--out",
        s(&events),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = lockstep(&["plugin", "run", s(wasm), "--events", s(&events)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut latest = BTreeMap::new();
    for line in text(&out.stdout).lines() {
        let row: Map<String, Json> = serde_json::from_str(line).expect("a JSON row");
        let card = row["card_id"].as_str().expect("card_id").to_owned();
        // Rows come out in event order per card: the last one is the latest.
        latest.insert(card, row);
    }
    latest
}

#[test]
fn serve_answers_with_the_stores_rows_and_refuses_bad_configuration_by_name() {
    let wasm = plugin("txn_velocity");
    let dir = tempfile::tempdir().unwrap();
    let latest = latest_rows(&wasm, dir.path());
    assert!(latest.len() >= 30, "{} cards", latest.len());
    let g = group(&wasm);
    let data = dir.path().join("online");
    {
        let store = EmbeddedStore::open(&data).unwrap();
        let records = latest
            .iter()
            .map(|(card, row)| {
                let t = row["event_time"].as_str().unwrap();
                let event_time = chrono_micros(t);
                (
                    card.clone(),
                    OnlineRecord {
                        event_time,
                        write_time: 1,
                        plugin_hash: g.plugin_hash.clone(),
                        row: row.clone(),
                    },
                )
            })
            .collect();
        store.put_records(&g, records).unwrap();
    }
    let defaults = dir.path().join("defaults.json");
    std::fs::write(
        &defaults,
        json!({"txn_velocity@1.0.0": {"txn_count_1h": 1, "txn_sum_1h": 42.5}}).to_string(),
    )
    .unwrap();

    // Refusals, each naming what is wrong: `serve` over this store with `extra`
    // arguments exits non-zero and says `why`; returns its error output.
    let store = format!("embedded:{}", s(&data));
    let refused = |extra: &[&str], why: &str| -> String {
        let mut args = vec!["serve", "--plugin", s(&wasm), "--online-store", &store];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--listen", "127.0.0.1:0"]);
        let out = lockstep(&args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert!(err.contains(why), "{extra:?}: {err}");
        err
    };
    for (file, why) in [
        (
            json!({"txn_velocity@1.0.0": {"txn_count_1h": "many"}}),
            "is not a int64",
        ),
        (
            json!({"txn_velocity@1.0.0": {"nope": 1}}),
            "no feature `nope`",
        ),
        (
            json!({"other@1.0.0": {}}),
            "`other@1.0.0` is not a served group",
        ),
    ] {
        let bad = dir.path().join("bad-defaults.json");
        std::fs::write(&bad, file.to_string()).unwrap();
        refused(&["--defaults", s(&bad)], why);
    }
    for (flag, why) in [
        ("--xfetch-beta=-1", "must be a number ≥ 0"),
        ("--xfetch-beta=NaN", "must be a number ≥ 0"),
        ("--timeout=0ms", "more than zero"),
    ] {
        refused(&[flag], why);
    }
    let port = lockstep_testkit::free_port();
    let cache = format!("redis://u:secret@127.0.0.1:{port}");
    let err = refused(&["--cache", &cache], "connecting to the cache");
    assert!(
        err.contains(&port.to_string()) && !err.contains("secret"),
        "{err}"
    );

    let serve = Serve::start(&[
        "--plugin",
        s(&wasm),
        "--online-store",
        &store,
        "--defaults",
        s(&defaults),
        "--timeout",
        "1s",
    ]);
    // The store is open: a second server on it is refused with the way out.
    refused(&[], "featurestore-local");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = Client::new(&serve.base).unwrap();
        let cards: Vec<String> = latest
            .keys()
            .take(10)
            .cloned()
            .chain(["card-unknown".to_owned()])
            .collect();
        let answer = client
            .get_features(&FeatureRequest::new("txn_velocity", cards.clone()))
            .await
            .unwrap();
        assert_eq!(answer.version, "1.0.0");
        assert!(!answer.degraded);
        for (entity, card) in answer.entities.iter().zip(&cards) {
            assert_eq!(&entity.entity, card);
            match latest.get(card) {
                Some(row) => {
                    assert_eq!(entity.source, Source::Store);
                    assert_eq!(entity.plugin_hash.as_deref(), Some(g.plugin_hash.as_str()));
                    assert_eq!(
                        entity.event_time.as_ref(),
                        row["event_time"].as_str().map(str::to_owned).as_ref()
                    );
                    let expected: Vec<Json> =
                        answer.features.iter().map(|f| row[f].clone()).collect();
                    assert_eq!(entity.values, expected, "{card}");
                }
                None => {
                    assert_eq!(entity.source, Source::Missing);
                    // The snapshot's defaults replaced the manifest's.
                    let at = |f: &str| answer.features.iter().position(|x| x == f).unwrap();
                    assert_eq!(entity.values[at("txn_count_1h")], json!(1));
                    assert_eq!(entity.values[at("txn_sum_1h")], json!(42.5));
                }
            }
        }
    });
    feast_reads_what_the_api_answers(&serve, &latest);
    // SIGTERM stops it cleanly.
    let mut serve = serve;
    let status = Command::new("kill")
        .args(["-TERM", &serve.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = serve.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

fn chrono_micros(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .expect("an RFC 3339 time")
        .timestamp_micros()
}

/// `lockstep cache-acl --user cards --group GROUP`, the password in the environment
/// when given.
fn cache_acl(group: &str, password: Option<&str>) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lockstep"));
    command.args(["cache-acl", "--user", "cards", "--group", group]);
    match password {
        Some(password) => command.env("LOCKSTEP_TENANT_PASSWORD", password),
        None => command.env_remove("LOCKSTEP_TENANT_PASSWORD"),
    };
    command.output().unwrap()
}

#[test]
fn cache_acl_prints_rules_redis_accepts_and_they_fence_the_tenant_in() {
    let out = cache_acl("txn_velocity@1.0.0", None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("set LOCKSTEP_TENANT_PASSWORD"),
        "{}",
        text(&out.stderr)
    );
    let out = cache_acl("txn_velocity", Some("pw"));
    assert!(
        text(&out.stderr).contains("NAME@VERSION"),
        "{}",
        text(&out.stderr)
    );

    let redis = lockstep_testkit::Redis::start(&[]);
    let password = "a \"tricky\" pass\\word";
    let out = cache_acl("txn_velocity@1.0.0", Some(password));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let command = text(&out.stdout);
    assert!(command.starts_with("ACL SETUSER \"cards\" "), "{command}");
    // Through redis-cli, as an operator would.
    let mut cli = Command::new("redis-cli")
        .args(["-p", &redis.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    cli.stdin
        .take()
        .unwrap()
        .write_all(command.as_bytes())
        .unwrap();
    let answer = cli.wait_with_output().unwrap();
    assert_eq!(text(&answer.stdout).trim(), "OK", "{command}");
    let as_tenant = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args([
                "-p",
                &redis.port().to_string(),
                "--user",
                "cards",
                "--pass",
                password,
                "--no-auth-warning",
            ])
            .args(args)
            .output()
            .unwrap();
        text(&out.stdout)
    };
    assert_eq!(
        as_tenant(&["hmget", "lockstep:txn_velocity@1.0.0:c1", "t", "v"]).trim(),
        ""
    );
    assert!(as_tenant(&["hmget", "lockstep:other@1.0.0:c1", "t"]).contains("NOPERM"));
    assert!(as_tenant(&["hset", "lockstep:txn_velocity@1.0.0:c1", "t", "1"]).contains("NOPERM"));
}

/// The Python with Feast installed: `LOCKSTEP_FEAST_PYTHON`, else the virtual
/// environment `scripts/test.sh` makes.
fn feast_python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("LOCKSTEP_FEAST_PYTHON") {
        return p.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    let venv = Path::new(&home).join(".cache/lockstep/feast-venv/bin/python");
    assert!(
        venv.exists(),
        "Feast is not installed at {}: run scripts/test.sh (it installs feast==0.67.0 there) \
         or set LOCKSTEP_FEAST_PYTHON",
        venv.display()
    );
    venv
}

/// Feast's stock SDK with `online_store: type: remote` reads the same values that
/// `/v1/features` answers (Feast sends fields of its own, such as
/// `include_feature_view_version_metadata`: they must not be refused).
fn feast_reads_what_the_api_answers(serve: &Serve, latest: &BTreeMap<String, Map<String, Json>>) {
    let cards: Vec<&String> = latest.keys().take(8).collect();
    let features = [
        ("txn_count_1h", "Int64"),
        ("txn_sum_1h", "Float64"),
        ("txn_max_24h", "Float64"),
    ];
    let mut args: Vec<String> = vec![
        common::repo("tests/python/feast_remote.py")
            .display()
            .to_string(),
        "--url".into(),
        serve.base.clone(),
        "--view".into(),
        "txn_velocity".into(),
        "--key".into(),
        "card_id".into(),
    ];
    for (name, ty) in features {
        args.extend(["--feature".into(), format!("{name}:{ty}")]);
    }
    for card in cards.iter().map(|c| c.as_str()).chain(["card-unknown"]) {
        args.extend(["--entity".into(), card.to_owned()]);
    }
    let out = Command::new(feast_python())
        .args(&args)
        .output()
        .expect("run the Feast client");
    assert!(
        out.status.success(),
        "the Feast client failed against serve: {}",
        text(&out.stderr)
    );
    let answer: Map<String, Json> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
    for (name, _) in features {
        let got = answer[name].as_array().expect("a list per feature");
        assert_eq!(got.len(), cards.len() + 1, "{name}: {answer:?}");
        for (card, value) in cards.iter().zip(got) {
            let want = &latest[*card][name];
            // Feast hands numbers back through protobuf: compare as numbers.
            assert_eq!(
                value.as_f64(),
                want.as_f64(),
                "{name} of {card}: Feast read {value}, the store holds {want}"
            );
        }
        assert_eq!(got[cards.len()], Json::Null, "{name} of an unknown card");
    }
}

#[test]
fn tenants_read_their_groups_everything_else_is_refused_audited_and_no_token_is_ever_said() {
    let velocity = plugin("txn_velocity");
    let churn = plugin("churn_features");
    let (v, c) = (group(&velocity), group(&churn));
    let dir = tempfile::tempdir().expect("tempdir");
    let token = |name: &str, groups: &[&str]| -> (String, String) {
        let mut args = vec!["tenant", "token", "--name", name];
        for g in groups {
            args.extend_from_slice(&["--group", g]);
        }
        let out = lockstep(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let said = text(&out.stdout);
        let token = said
            .lines()
            .find_map(|l| l.strip_prefix("token: "))
            .expect("the token")
            .to_owned();
        let entry = said
            .split_once("[[tenant]]")
            .expect("an entry")
            .1
            .to_owned();
        assert!(
            !entry.contains(&token),
            "the entry holds the hash, not the token"
        );
        (token, format!("[[tenant]]{entry}"))
    };
    let (fraud, fraud_entry) = token("fraud", &[&v.name]);
    let (gone, gone_entry) = token("gone", &[&v.name, &c.name]);
    let ops = "ops-token-for-the-test";
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(
        &tenants,
        format!(
            "{fraud_entry}\n{}revoked = true\n\n[operations]\ntoken_sha256 = \"{}\"\n",
            gone_entry,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(ops.as_bytes()))
        ),
    )
    .expect("tenants");
    let audit = dir.path().join("audit");
    let log = dir.path().join("serve.log");
    let data = dir.path().join("online");
    let serve = Serve::start_with(
        &[
            "--plugin",
            s(&velocity),
            "--plugin",
            s(&churn),
            "--online-store",
            &format!("embedded:{}", s(&data)),
            "--tenants",
            s(&tenants),
            "--audit",
            s(&audit),
        ],
        std::fs::File::create(&log).expect("log"),
        &[("RUST_LOG", "debug")],
    );
    let ask = |group: &str| format!("{{\"group\":\"{group}\",\"entities\":[\"card-1\"]}}");

    // Its own group: answered (no row yet, so missing, but answered).
    let (status, body) = http(
        &serve.base,
        "POST",
        "/v1/features",
        Some(&fraud),
        &ask(&v.name),
    );
    assert_eq!(status, 200, "{body}");
    // Another group: 403, naming tenant and group.
    let (status, body) = http(
        &serve.base,
        "POST",
        "/v1/features",
        Some(&fraud),
        &ask(&c.name),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("fraud") && body.contains(&c.id()), "{body}");
    // Feast's API is fenced the same way.
    let feast = format!(
        "{{\"features\":[\"{}:{}\"],\"entities\":{{\"{}\":[\"c1\"]}}}}",
        c.name, "churn_score", c.entity_key
    );
    let (status, _) = http(
        &serve.base,
        "POST",
        "/get-online-features",
        Some(&fraud),
        &feast,
    );
    assert_eq!(status, 403);
    // The group list shows only its groups.
    let (status, body) = http(&serve.base, "GET", "/v1/groups", Some(&fraud), "");
    assert_eq!(status, 200);
    assert!(body.contains(&v.name) && !body.contains(&c.name), "{body}");
    // No token, a wrong one, a revoked tenant's: 401, the token never echoed.
    for (token, why) in [
        (None, "no bearer token"),
        (Some("lst_not-a-real-token"), "an unknown token"),
        (Some(gone.as_str()), "a revoked tenant's token"),
    ] {
        let (status, body) = http(&serve.base, "POST", "/v1/features", token, &ask(&v.name));
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(body.contains(why), "{body}");
        assert!(token.is_none_or(|t| !body.contains(t)), "{body}");
    }
    // Operations endpoints take their own token.
    assert_eq!(http(&serve.base, "GET", "/metrics", None, "").0, 401);
    assert_eq!(
        http(&serve.base, "GET", "/metrics", Some(&fraud), "").0,
        401
    );
    let (status, metrics) = http(&serve.base, "GET", "/metrics", Some(ops), "");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("lockstep_serve_refused_requests_total{status=\"401\"} 5")
            && metrics.contains("lockstep_serve_refused_requests_total{status=\"403\"} 2"),
        "{metrics}"
    );

    // Refusals reach the audit log within about a second of the burst.
    let refused = || {
        let out = lockstep(&[
            "audit",
            "show",
            "--audit",
            s(&audit),
            "--action",
            "serve.refused",
            "--json",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while refused().lines().count() < 7 {
        assert!(
            std::time::Instant::now() < deadline,
            "refusals not audited: {}",
            refused()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let entries = refused();
    assert!(
        entries.contains("\"tenant\":\"fraud\"") && entries.contains(&c.name),
        "{entries}"
    );
    drop(serve);
    let verified = lockstep(&["audit", "verify", "--audit", s(&audit)]);
    assert!(verified.status.success(), "{}", text(&verified.stdout));
    // No token appears anywhere: logs, audit log, configuration recorded at start.
    let mut everything = std::fs::read_to_string(&log).expect("log");
    for path in std::fs::read_dir(audit.join("digests"))
        .expect("digests")
        .flatten()
    {
        everything.push_str(&std::fs::read_to_string(path.path()).expect("digest"));
    }
    everything.push_str(&refused());
    let started = lockstep(&[
        "audit",
        "show",
        "--audit",
        s(&audit),
        "--action",
        "serve.start",
        "--json",
    ]);
    let start: Json = serde_json::from_str(text(&started.stdout).trim()).expect("one serve.start");
    let names: Vec<&str> = start["details"]["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["fraud", "gone"], "{start}");
    everything.push_str(&text(&started.stdout));
    for secret in [fraud.as_str(), gone.as_str(), ops, "lst_not-a-real-token"] {
        assert!(!everything.contains(secret), "a token was written down");
    }
}

#[test]
fn every_answer_is_logged_and_lineage_finds_its_values_plugin_and_offline_rows() {
    let wasm = plugin("txn_velocity");
    let g = group(&wasm);
    let dir = tempfile::tempdir().expect("tempdir");
    let latest = latest_rows(&wasm, dir.path());
    let events = dir.path().join("events.jsonl");
    // The offline store from the same events: the served rows are among its rows.
    let offline = dir.path().join("offline");
    let out = lockstep(&[
        "batch",
        "run",
        "--plugin",
        s(&wasm),
        "--source",
        s(&events),
        "--offline-store",
        s(&offline),
        "--no-cache",
        "--no-audit",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let data = dir.path().join("online");
    {
        let store = EmbeddedStore::open(&data).expect("store");
        let records = latest
            .iter()
            .map(|(card, row)| {
                let event_time = chrono_micros(row["event_time"].as_str().expect("time"));
                (
                    card.clone(),
                    OnlineRecord {
                        event_time,
                        write_time: 1,
                        plugin_hash: g.plugin_hash.clone(),
                        row: row.clone(),
                    },
                )
            })
            .collect();
        store.put_records(&g, records).expect("put");
    }
    let log = dir.path().join("served");
    let serve = Serve::start(&[
        "--plugin",
        s(&wasm),
        "--online-store",
        &format!("embedded:{}", s(&data)),
        "--log-features",
        s(&log),
    ]);
    let cards: Vec<&String> = latest.keys().take(3).collect();
    let ask = format!(
        "{{\"group\":\"{}\",\"entities\":[\"{}\",\"{}\",\"{}\"]}}",
        g.name, cards[0], cards[1], cards[2]
    );
    let (status, head, body) = http_full(&serve.base, "POST", "/v1/features", None, &ask);
    assert_eq!(status, 200, "{body}");
    let request_id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("the answer carries its request id")
        .trim()
        .to_owned();
    let answered: Json = serde_json::from_str(&body).expect("json");
    let (second, head2, _) = http_full(&serve.base, "POST", "/v1/features", None, &ask);
    assert_eq!(second, 200);
    assert!(!head2.contains(&request_id), "each answer has its own id");
    // A batch logs each of its answers under its own id.
    let batch = format!(
        "{{\"requests\":[{{\"group\":\"{0}\",\"entities\":[\"{1}\"]}},\
         {{\"group\":\"{0}\",\"entities\":[\"{2}\",\"{3}\"]}}]}}",
        g.name, cards[0], cards[1], cards[2]
    );
    let (status, _, batch_body) =
        http_full(&serve.base, "POST", "/v1/features/batch", None, &batch);
    assert_eq!(status, 200, "{batch_body}");
    let batch_answer: Json = serde_json::from_str(&batch_body).expect("json");
    let batch_ids: Vec<String> = batch_answer["request_ids"]
        .as_array()
        .expect("request ids")
        .iter()
        .map(|id| id.as_str().expect("an id").to_owned())
        .collect();
    assert_eq!(batch_ids.len(), 2, "{batch_body}");
    // A clean stop writes what the log holds.
    let mut serve = serve;
    assert!(
        Command::new("kill")
            .args(["-TERM", &serve.child.id().to_string()])
            .status()
            .expect("kill")
            .success()
    );
    assert!(serve.child.wait().expect("wait").success());

    // `lineage ID --json`: one JSON line per entity of the answer logged under ID.
    let lineage = |id: &str| -> Vec<Json> {
        let out = lockstep(&[
            "lineage",
            id,
            "--log",
            s(&log),
            "--offline-store",
            s(&offline),
            "--json",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect()
    };
    let rows = lineage(&request_id);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let features: Vec<&str> = answered["features"]
        .as_array()
        .expect("features")
        .iter()
        .map(|f| f.as_str().expect("name"))
        .collect();
    for (row, entity) in rows
        .iter()
        .zip(answered["entities"].as_array().expect("entities"))
    {
        assert_eq!(row["entity"], entity["entity"]);
        assert_eq!(row["source"], "store");
        assert_eq!(row["plugin_hash"].as_str(), Some(g.plugin_hash.as_str()));
        assert_eq!(row["event_time"], entity["event_time"]);
        for (i, f) in features.iter().enumerate() {
            assert_eq!(row["values"][*f], entity["values"][i], "{f}");
        }
        // The value served is a row the backfill stored, at that event time.
        assert_eq!(
            row["offline_write_times"].as_array().map(Vec::len),
            Some(1),
            "{row}"
        );
    }
    // The batch's second answer is found by its own id, with its two entities.
    let entities: Vec<Json> = lineage(&batch_ids[1])
        .into_iter()
        .map(|row| row["entity"].clone())
        .collect();
    assert_eq!(
        entities,
        [Json::from(cards[1].as_str()), Json::from(cards[2].as_str())]
    );
    // DuckDB reads the log as it is: 2 answers of 3 entities, the batch's of 1 and 2.
    let duck = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import duckdb; print(duckdb.sql(\"SELECT count(*), count(DISTINCT request_id) \
                 FROM read_parquet('{}/served/**/*.parquet')\").fetchall())",
                s(&log)
            ),
        ])
        .output()
        .expect("python3");
    assert_eq!(
        text(&duck.stdout).trim(),
        "[(9, 4)]",
        "{}",
        text(&duck.stderr)
    );
    // An id that is not one, or one not in the log, is said so.
    let bad = lockstep(&["lineage", "nonsense", "--log", s(&log)]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("is not a request id"));
    let absent = lockstep(&["lineage", "18e3c1a2b4f00-00000000-0", "--log", s(&log)]);
    assert!(
        !absent.status.success()
            && text(&absent.stderr).contains("is not in the served-feature log")
    );
}

/// One definition of a tenant: `cache-acl --tenants` takes the Redis user and groups
/// from the file `serve --tenants` reads, and gives the rules `--user/--group` give
/// for a version; a bare group name covers every version of it and nothing else.
#[test]
fn cache_acl_reads_the_tenants_file_serve_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(
        &tenants,
        format!(
            "[[tenant]]\nname = \"fraud\"\ntoken_sha256 = \"{0}\"\ngroups = [\"txn_velocity@1.0.0\"]\n\
             redis_user = \"cards\"\n\n[[tenant]]\nname = \"churn\"\ntoken_sha256 = \"{1}\"\n\
             groups = [\"churn_features\"]\nredis_user = \"churn-user\"\n\n[[tenant]]\n\
             name = \"nouser\"\ntoken_sha256 = \"{2}\"\ngroups = [\"g\"]\n",
            "a".repeat(64),
            "b".repeat(64),
            "c".repeat(64)
        ),
    )
    .expect("tenants");
    let from_file = |tenant: &str| {
        Command::new(env!("CARGO_BIN_EXE_lockstep"))
            .args(["cache-acl", "--tenants", s(&tenants), "--tenant", tenant])
            .env("LOCKSTEP_TENANT_PASSWORD", "pw")
            .output()
            .expect("run")
    };
    let fraud = from_file("fraud");
    assert!(fraud.status.success(), "{}", text(&fraud.stderr));
    assert_eq!(
        text(&fraud.stdout),
        text(&cache_acl("txn_velocity@1.0.0", Some("pw")).stdout),
        "the same rules from the file as from the flags"
    );
    let churn = text(&from_file("churn").stdout);
    assert!(
        churn.contains("\"~lockstep:churn_features@*:*\""),
        "{churn}"
    );
    assert!(churn.starts_with("ACL SETUSER \"churn-user\" "), "{churn}");
    // Redis takes them, and they fence the user in: any version of its group, nothing else.
    let redis = lockstep_testkit::Redis::start(&[]);
    let port = redis.port().to_string();
    let mut cli = Command::new("redis-cli")
        .args(["-p", &port])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli");
    use std::io::Write;
    cli.stdin
        .take()
        .expect("stdin")
        .write_all(churn.as_bytes())
        .expect("write");
    assert_eq!(
        text(&cli.wait_with_output().expect("wait").stdout).trim(),
        "OK"
    );
    let read = |key: &str| {
        let out = Command::new("redis-cli")
            .args([
                "-p",
                &port,
                "--user",
                "churn-user",
                "--pass",
                "pw",
                "--no-auth-warning",
            ])
            .args(["hmget", key, "t"])
            .output()
            .expect("redis-cli");
        text(&out.stdout)
    };
    assert!(!read("lockstep:churn_features@2.0.0:c1").contains("NOPERM"));
    assert!(read("lockstep:txn_velocity@1.0.0:c1").contains("NOPERM"));
    let missing = from_file("nouser");
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("names no redis_user"),
        "{}",
        text(&missing.stderr)
    );
}
