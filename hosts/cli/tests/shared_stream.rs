//! `lockstep stream` in a feature repository: the three example groups on one Kinesis
//! stream (a moto server on loopback), one service. Each group's rows must equal its
//! golden rows (what the batch host computes for its events) and pass the skew gate
//! against its own batch run; records no group takes are kept with why; a stop and
//! restart goes on from the joint checkpoint.

mod common;

use common::{Serve, group, http, lockstep, plugin, repo, s, text};
use lockstep_core::compare::{Row, canonical_order, compare};
use lockstep_testkit::Moto;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// (plugin, kind tag, entity key).
const GROUPS: [(&str, &str, &str); 3] = [
    ("txn_velocity", "txn", "card_id"),
    ("clickstream_clean", "view", "user_id"),
    ("churn_features", "activity", "customer_id"),
];

fn read_rows(path: &Path, key: &str) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut rows: Vec<Row> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    canonical_order(&mut rows, key);
    rows
}

fn lockstep_env(moto: &Moto, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(args)
        .envs(moto.env())
        .output()
        .expect("run lockstep")
}

/// The repository: lockstep.toml naming the three built plugins (pinned by hash), each
/// group's events tagged with its kind in `data/<kind>.jsonl`, and the whole stream
/// interleaved in `data/stream.jsonl` (with two records no group takes).
fn repository(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let mut toml = String::from(
        "[offline]\nstore = \"offline\"\n\n[online]\nstore = \"embedded:online\"\n\n\
         [stream]\nlateness = \"5m\"\nstate = \"state\"\n",
    );
    let mut per_kind = Vec::new();
    for (name, kind, _) in GROUPS {
        let wasm = plugin(name);
        let g = group(&wasm);
        toml.push_str(&format!(
            "\n[[group]]\nname = \"{name}\"\nplugin = \"{}\"\nsha256 = \"{}\"\nversion = \"{}\"\n\
             batch = {{ source = \"data/{kind}.jsonl\" }}\n\
             stream = {{ kinesis = \"events\", field = \"kind\", equals = \"{kind}\" }}\n",
            s(&wasm),
            g.plugin_hash,
            g.version
        ));
        let golden = std::fs::read_to_string(repo("golden").join(name).join("events.jsonl"))
            .expect("golden events");
        let tagged: Vec<String> = golden
            .lines()
            .map(|line| {
                let mut v: serde_json::Value = serde_json::from_str(line).expect("json");
                v["kind"] = serde_json::json!(kind);
                v.to_string()
            })
            .collect();
        std::fs::write(
            dir.join("data").join(format!("{kind}.jsonl")),
            tagged.join("\n") + "\n",
        )
        .unwrap();
        per_kind.push(tagged);
    }
    std::fs::write(dir.join("lockstep.toml"), toml).unwrap();
    let mut stream = Vec::new();
    let longest = per_kind.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..longest {
        for kind in &per_kind {
            if let Some(line) = kind.get(i) {
                stream.push(line.clone());
            }
        }
        if i == 10 {
            stream.push(r#"{"kind":"refund","card_id":"card-x"}"#.to_owned());
            stream.push(r#"{"card_id":"card-y","no kind":true}"#.to_owned());
        }
    }
    let all = dir.join("data").join("stream.jsonl");
    std::fs::write(&all, stream.join("\n") + "\n").unwrap();
    all
}

#[test]
fn one_service_runs_the_three_example_groups_each_equal_to_its_own_batch_run() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let config = root.join("lockstep.toml");
    let all = repository(root);
    let endpoint = moto.endpoint();

    // The stream: every record keyed by its own group's entity key.
    let put = |events: &Path, create: bool| {
        let mut args = vec![
            "stream",
            "put",
            "--key",
            "card_id",
            "--key",
            "user_id",
            "--key",
            "customer_id",
            "--stream",
            "events",
            "--events",
            s(events),
            "--endpoint-url",
            &endpoint,
        ];
        if create {
            args.extend(["--create-shards", "4"]);
        }
        let out = lockstep_env(&moto, &args);
        assert!(out.status.success(), "put: {}", text(&out.stderr));
    };
    let text_all = std::fs::read_to_string(&all).unwrap();
    let lines: Vec<&str> = text_all.lines().collect();
    let first = root.join("first.jsonl");
    let rest = root.join("rest.jsonl");
    std::fs::write(&first, lines[..lines.len() / 2].join("\n") + "\n").unwrap();
    std::fs::write(&rest, lines[lines.len() / 2..].join("\n") + "\n").unwrap();
    // `plan` looks the groups' stream up: not there yet, then there.
    let plan = |expect: &str| {
        let out = lockstep_env(
            &moto,
            &["--config", s(&config), "plan", "--endpoint-url", &endpoint],
        );
        assert!(out.status.success(), "plan: {}", text(&out.stderr));
        let shown = text(&out.stdout);
        assert_eq!(
            shown.matches(expect).count(),
            3,
            "each group's stream line says {expect:?}:\n{shown}"
        );
    };
    plan("Kinesis stream events (not found: create it");
    put(&first, true);
    plan("Kinesis stream events (exists: ACTIVE, 4 open shards)");
    let local = lockstep(&["--config", s(&config), "plan", "--local"]);
    assert!(
        local.status.success(),
        "plan --local: {}",
        text(&local.stderr)
    );
    assert_eq!(
        text(&local.stdout)
            .matches("Kinesis stream events, the records")
            .count(),
        3,
        "nothing looked up:\n{}",
        text(&local.stdout)
    );

    let service = |drain: bool| {
        let mut args = vec![
            "--config",
            s(&config),
            "stream",
            "--endpoint-url",
            &endpoint,
            "--stop-when-idle",
            "--idle-poll",
            "50ms",
            "--idle-watermark",
            "off",
        ];
        if drain {
            args.push("--drain-on-stop");
        }
        let out = lockstep_env(&moto, &args);
        assert!(
            out.status.success(),
            "lockstep stream: {}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    // The first half, stopped without draining; then the rest, from the checkpoint.
    let printed = service(false);
    for (name, kind, _) in GROUPS {
        assert!(
            printed.contains(&format!("group {name}@"))
                && printed.contains(&format!("whose kind = \"{kind}\"")),
            "{printed}"
        );
    }
    put(&rest, false);
    let printed = service(true);
    assert!(printed.contains("unrouted: "), "{printed}");

    let state = root.join("state").join("events");
    let unrouted = std::fs::read_to_string(state.join("unrouted.jsonl")).expect("unrouted log");
    assert_eq!(unrouted.lines().count(), 2, "{unrouted}");
    assert!(unrouted.contains(r#"`kind` is \"refund\""#), "{unrouted}");
    assert!(unrouted.contains("`kind` is absent"), "{unrouted}");

    for (name, kind, key) in GROUPS {
        // Each group's rows are its golden rows: what the batch host computes.
        let got = read_rows(&state.join(name).join("rows.jsonl"), key);
        let want = read_rows(&repo("golden").join(name).join("expected.jsonl"), key);
        let cmp = compare(key, &got, &want, 5);
        assert!(
            cmp.identical(),
            "{name}: {} rows vs {} golden\n{}",
            got.len(),
            want.len(),
            cmp.render("lockstep stream", "golden")
        );
        // The skew gate: the batch host over the group's own events agrees with the
        // service's log bit for bit.
        let out = lockstep(&[
            "skew-check",
            "--plugin",
            s(&plugin(name)),
            "--events",
            s(&root.join("data").join(format!("{kind}.jsonl"))),
            "--stream-log",
            s(&state.join(name)),
        ]);
        assert!(
            out.status.success() && text(&out.stdout).contains("batch = stream"),
            "{name}: {}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }

    // Every group's latest rows are in the one online store, under its own version.
    let store = lockstep_online::EmbeddedStore::open(root.join("online")).expect("store");
    let mut latest_of: Vec<std::collections::BTreeMap<String, Row>> = Vec::new();
    for (name, _, key) in GROUPS {
        let g = group(&plugin(name));
        let want = read_rows(&repo("golden").join(name).join("expected.jsonl"), key);
        let mut latest = std::collections::BTreeMap::new();
        for row in &want {
            let k = match &row[key] {
                serde_json::Value::String(k) => k.clone(),
                other => other.to_string(),
            };
            latest.insert(k, row.clone());
        }
        let keys: Vec<String> = latest.keys().cloned().collect();
        let stored = store
            .get_blocking(&g, &keys)
            .expect("read the online store");
        for (k, record) in keys.iter().zip(stored) {
            let record = record.unwrap_or_else(|| panic!("{name}: {k} not stored"));
            assert_eq!(&record.row, &latest[k], "{name}: {k}");
        }
        latest_of.push(latest);
    }
    drop(store);

    // `lockstep serve` in the repository serves all three groups, and one Feast-style
    // request asks for a feature of each (each group by its own entity key).
    let serve = Serve::spawn({
        let mut command = Command::new(env!("CARGO_BIN_EXE_lockstep"));
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .current_dir(root)
            .stderr(std::process::Stdio::null());
        command
    });
    let features = ["txn_count_24h", "page_domain", "tenure_months"];
    let entity = |i: usize| latest_of[i].keys().next().expect("an entity").clone();
    let request = serde_json::json!({
        "features": GROUPS
            .iter()
            .zip(features)
            .map(|((name, _, _), f)| format!("{name}:{f}"))
            .collect::<Vec<_>>(),
        "entities": {
            "card_id": [entity(0)],
            "user_id": [entity(1)],
            "customer_id": [entity(2)],
        },
    });
    let (status, body) = http(
        &serve.base,
        "POST",
        "/get-online-features",
        None,
        &request.to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("json");
    let names = answer["metadata"]["feature_names"]
        .as_array()
        .expect("names");
    for (i, feature) in features.iter().enumerate() {
        let column = names
            .iter()
            .position(|n| n == feature)
            .unwrap_or_else(|| panic!("{feature} not answered: {body}"));
        let served = &answer["results"][column]["values"][0];
        let want = &latest_of[i][&entity(i)][*feature];
        assert_eq!(served, want, "{feature} of {}: {body}", entity(i));
    }
    // The native API's batch form: one call, one answer per group, in order.
    let batch = serde_json::json!({
        "requests": GROUPS
            .iter()
            .zip(features)
            .enumerate()
            .map(|(i, ((name, _, _), f))| {
                serde_json::json!({"group": name, "entities": [entity(i)], "features": [f]})
            })
            .collect::<Vec<_>>(),
    });
    let (status, body) = http(
        &serve.base,
        "POST",
        "/v1/features/batch",
        None,
        &batch.to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("json");
    for (i, feature) in features.iter().enumerate() {
        let one = &answer["answers"][i];
        assert_eq!(one["group"], GROUPS[i].0, "{body}");
        assert_eq!(
            &one["entities"][0]["values"][0],
            &latest_of[i][&entity(i)][*feature],
            "{feature} of {}: {body}",
            entity(i)
        );
    }
    // The Python client, rows naming the three key columns (Feast's style): each group
    // asked by its own, in one call; an entity a group does not hold is missing there.
    let script = format!(
        "import json\n\
         from lockstep_client import Client\n\
         r = Client({url:?}, timeout=5).get_online_features(features={features:?}, \
         entity_rows=[{{'card_id': {c:?}, 'user_id': {u:?}, 'customer_id': {k:?}}}, \
         {{'card_id': 'card-nobody', 'user_id': {u:?}, 'customer_id': {k:?}}}])\n\
         print(json.dumps({{'values': r.values, 'sources': r.sources, 'columns': list(r.to_dict())}}))\n",
        url = serve.base,
        features = GROUPS
            .iter()
            .zip(features)
            .map(|((name, _, _), f)| format!("{name}:{f}"))
            .collect::<Vec<_>>(),
        c = entity(0),
        u = entity(1),
        k = entity(2),
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .env("PYTHONPATH", repo("clients/python"))
        .output()
        .expect("python3");
    assert!(out.status.success(), "python client: {}", text(&out.stderr));
    let answer: serde_json::Value =
        serde_json::from_str(text(&out.stdout).trim()).expect("the client's JSON");
    for (i, feature) in features.iter().enumerate() {
        assert_eq!(
            &answer["values"][feature][0],
            &latest_of[i][&entity(i)][*feature],
            "python client: {feature} of {}",
            entity(i)
        );
        if i > 0 {
            assert_eq!(
                answer["values"][feature][1], answer["values"][feature][0],
                "the second row's other keys are the first's"
            );
        }
    }
    let sources = answer["sources"][1].as_object().expect("sources");
    assert_eq!(
        sources
            .iter()
            .filter(|(group, source)| group.starts_with("txn_velocity@") && *source == "missing")
            .count(),
        1,
        "{answer}"
    );
    assert_eq!(
        answer["columns"],
        serde_json::json!([
            "card_id",
            "user_id",
            "customer_id",
            "txn_count_24h",
            "page_domain",
            "tenure_months"
        ])
    );
    drop(serve);

    // `stream run` in the repository takes what its flags leave out from the file:
    // the online store, the lateness and a state directory of its own beside the
    // shared service's. Without a route it reads every record: the other kinds are
    // its dead letters, and its rows are txn_velocity's golden rows.
    let out = lockstep_env(
        &moto,
        &[
            "--config",
            s(&config),
            "stream",
            "run",
            "--plugin",
            s(&plugin("txn_velocity")),
            "--stream",
            "events",
            "--endpoint-url",
            &endpoint,
            "--stop-when-idle",
            "--drain-on-stop",
            "--idle-poll",
            "50ms",
            "--idle-watermark",
            "off",
        ],
    );
    assert!(
        out.status.success(),
        "stream run: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let own = root.join("state").join("events.txn_velocity");
    let got = read_rows(&own.join("rows.jsonl"), "card_id");
    let want = read_rows(
        &repo("golden").join("txn_velocity").join("expected.jsonl"),
        "card_id",
    );
    let cmp = compare("card_id", &got, &want, 5);
    assert!(
        cmp.identical(),
        "stream run: {}",
        cmp.render("stream run", "golden")
    );
    let dead = std::fs::read_to_string(own.join("dead-letters.jsonl")).expect("dead letters");
    assert!(
        dead.lines().count() > 100,
        "the other kinds: {}",
        dead.len()
    );
}

#[test]
fn lockstep_stream_says_which_stream_when_groups_read_several() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("lockstep.toml"),
        "[[group]]\nname = \"a\"\nplugin = \"a\"\nversion = \"v1\"\nstream = { kinesis = \"one\" }\n\n\
         [[group]]\nname = \"b\"\nplugin = \"b\"\nversion = \"v1\"\nstream = { kinesis = \"two\" }\n\n\
         [[group]]\nname = \"c\"\nplugin = \"c\"\nversion = \"v1\"\n",
    )
    .unwrap();
    let config = dir.path().join("lockstep.toml");
    let out = lockstep(&["--config", s(&config), "stream"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("one, two") && err.contains("--kinesis"),
        "{err}"
    );
    let out = lockstep(&["--config", s(&config), "stream", "c"]);
    assert!(
        text(&out.stderr).contains("group `c` has no stream source"),
        "{}",
        text(&out.stderr)
    );
    let out = lockstep(&["--config", s(&config), "stream", "--kinesis", "three"]);
    assert!(
        text(&out.stderr).contains("no group in") && text(&out.stderr).contains("`three`"),
        "{}",
        text(&out.stderr)
    );
    // Outside a repository, `stream run` has nowhere to take an online store from.
    let outside = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(["stream", "run", "--plugin"])
        .arg(plugin("txn_velocity"))
        .args(["--stream", "events"])
        .current_dir(outside.path())
        .output()
        .expect("run lockstep");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--online-store is needed outside a feature repository"),
        "{}",
        text(&out.stderr)
    );
}
