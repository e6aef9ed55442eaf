//! The feature repository as a user drives it: `init`, then `plan`/`apply`,
//! `backfill`, `materialize` and `serve` from the made directory with no flags, the
//! served values checked against the sample events by an independent reading of the
//! plugin's documented rule; a changed plugin refused for its version; the online
//! store swapped for `featurestore-local` (the SageMaker protocol) by one line of the
//! file and a re-materialize, serving identical values.

mod common;

use common::{FeatureStoreLocal, Serve, s, text};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Credentials the SageMaker client asks for (featurestore-local takes any).
const AWS_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
];

/// `lockstep ARGS` run in `dir`.
fn in_repo(dir: &Path, args: &[&str]) -> Output {
    in_repo_with(dir, args, Vec::new())
}

/// `lockstep ARGS` run in `dir` with `env` set.
fn in_repo_with(dir: &Path, args: &[&str], env: Vec<(&str, String)>) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(args)
        .current_dir(dir)
        .envs(env)
        .output()
        .expect("run lockstep")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    ok_with(dir, args, Vec::new())
}

/// [`ok`] with `env` set.
fn ok_with(dir: &Path, args: &[&str], env: Vec<(&str, String)>) -> String {
    let out = in_repo_with(dir, args, env);
    assert!(
        out.status.success(),
        "lockstep {args:?} failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A `lockstep serve` started in the repository with no flags but a free port (and
/// `env` set), and a deadline for values, not latency: the file's 5 ms holds on an idle
/// machine (the serving benchmark measures it), not beside the other tests' builds.
fn serve_in(dir: &Path, env: &[(&str, &str)]) -> Serve {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lockstep"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--timeout", "2s"])
        .current_dir(dir)
        .envs(env.iter().copied())
        .stderr(Stdio::null());
    Serve::spawn(command)
}

impl Serve {
    /// Every entity's (source, events, last_amount) as served.
    fn features(&self, entities: &[String]) -> BTreeMap<String, (String, Json, Json)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = lockstep_client::Client::new(&self.base).expect("client");
        let answer = runtime
            .block_on(
                client.get_features(&lockstep_client::api::FeatureRequest::new(
                    "my_features",
                    entities.iter().map(String::as_str),
                )),
            )
            .expect("an answer");
        assert_eq!(answer.features, ["events", "last_amount"]);
        assert!(!answer.degraded);
        answer
            .entities
            .into_iter()
            .map(|e| {
                (
                    e.entity,
                    (
                        serde_json::to_value(e.source)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .expect("a source"),
                        e.values[0].clone(),
                        e.values[1].clone(),
                    ),
                )
            })
            .collect()
    }
}

/// The scaffolded plugin's rule, read from its documentation and applied to the raw
/// events: per entity, the number of events and the last non-null amount, in time
/// order.
fn expected(events: &Path) -> BTreeMap<String, (i64, Option<f64>)> {
    let mut rows: Vec<(i64, String, Option<f64>)> = std::fs::read_to_string(events)
        .expect("events")
        .lines()
        .map(|line| {
            let v: Json = serde_json::from_str(line).expect("json");
            (
                v["ts"].as_i64().expect("ts"),
                v["entity"].as_str().expect("entity").to_owned(),
                v["amount"].as_f64(),
            )
        })
        .collect();
    rows.sort_by_key(|r| r.0);
    let mut out: BTreeMap<String, (i64, Option<f64>)> = BTreeMap::new();
    for (_, entity, amount) in rows {
        let e = out.entry(entity).or_default();
        e.0 += 1;
        if amount.is_some() {
            e.1 = amount;
        }
    }
    out
}

/// The component `apply` built, found under the repository's build directory.
fn built_component(repo: &Path) -> PathBuf {
    fn find(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                find(&path, out);
            } else if path.file_name().and_then(|n| n.to_str()) == Some("my_features.wasm")
                && !path.components().any(|c| c.as_os_str() == "deps")
            {
                out.push(path);
            }
        }
    }
    let mut found = Vec::new();
    find(&repo.join(".lockstep/target"), &mut found);
    found.pop().expect("a built my_features.wasm")
}

#[test]
fn a_repository_made_by_init_backfills_materializes_and_serves_the_documented_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    ok(dir.path(), &["init", "demo"]);
    let repo = dir.path().join("demo");

    // plan, then apply; apply again changes nothing.
    let plan = ok(&repo, &["plan"]);
    assert!(
        plan.contains("1 to register, 0 unchanged, 0 refused"),
        "{plan}"
    );
    assert!(plan.contains("+ my_features@0.1.0"), "{plan}");
    let applied = ok(&repo, &["apply"]);
    assert!(applied.contains("applied: 1 registered"), "{applied}");
    let again = ok(&repo, &["apply"]);
    assert!(again.contains("0 to register, 1 unchanged"), "{again}");
    assert!(again.contains("applied: 0 registered"), "{again}");

    // backfill, materialize (twice: the same store), serve.
    let backfilled = ok(&repo, &["backfill"]);
    assert!(
        backfilled.contains("backfilling my_features@0.1.0"),
        "{backfilled}"
    );
    // On embedded defaults the backfill loads the online store too: serve answers at
    // once after init, apply, backfill.
    assert!(
        backfilled.contains("materialized my_features@0.1.0: 2000 rows"),
        "{backfilled}"
    );
    let first = ok(&repo, &["materialize"]);
    assert!(
        first.contains("materialized my_features@0.1.0: 2000 rows"),
        "{first}"
    );
    let second = ok(&repo, &["materialize"]);
    assert!(second.contains("2000 rows"), "{second}");
    // A window before the sample's first event loads nothing; an empty one is refused.
    let none = ok(&repo, &["materialize", "--to", "2026-01-01T00:00:00Z"]);
    assert!(none.contains(": 0 rows from 0 hour files"), "{none}");
    let out = in_repo(
        &repo,
        &[
            "materialize",
            "--from",
            "2026-01-02T00:00:00Z",
            "--to",
            "2026-01-01T00:00:00Z",
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--from must be before --to"));

    let want = expected(&repo.join("data/events.jsonl"));
    assert_eq!(want.len(), 40, "the sample has 40 entities");

    // A training set in the repository needs no --offline-store and no --group: every
    // group of the file at its version. A label after the sample's last event sees
    // each entity's final values.
    let labels: Vec<String> = want
        .keys()
        .take(5)
        .map(|e| format!(r#"{{"entity":"{e}","label_time":"2027-01-01T00:00:00Z"}}"#))
        .collect();
    std::fs::write(repo.join("labels.jsonl"), labels.join("\n") + "\n").expect("labels");
    ok(
        &repo,
        &[
            "training-set",
            "--labels",
            "labels.jsonl",
            "--out",
            "train.parquet",
        ],
    );
    let read = Command::new("python3")
        .arg("-c")
        .arg(
            "import json, pyarrow.parquet as pq\n\
             t = pq.read_table('train.parquet').to_pylist()\n\
             print(json.dumps([[r['entity'], r['my_features__events'], r['my_features__last_amount']] for r in t]))",
        )
        .current_dir(&repo)
        .output()
        .expect("python3");
    assert!(read.status.success(), "{}", text(&read.stderr));
    let rows: Vec<(String, i64, Option<f64>)> = serde_json::from_slice(&read.stdout).expect("rows");
    assert_eq!(rows.len(), 5);
    for (entity, events, last) in rows {
        assert_eq!(
            (events, last),
            want[&entity],
            "{entity} in the training set"
        );
    }
    let mut entities: Vec<String> = want.keys().cloned().collect();
    entities.push("user-999".into());
    // The group's own defaults file, named in lockstep.toml, replaces the manifest's
    // default for an entity with no record.
    std::fs::write(repo.join("defaults.json"), r#"{"events": 7}"#).expect("defaults");
    let config = repo.join("lockstep.toml");
    let made = std::fs::read_to_string(&config).expect("config");
    let with_defaults = made.replace(
        "version = \"0.1.0\"",
        "version = \"0.1.0\"\ndefaults = \"defaults.json\"",
    );
    assert_ne!(with_defaults, made);
    std::fs::write(&config, with_defaults).expect("write config");
    let serve = serve_in(&repo, &[]);
    let served = serve.features(&entities);
    for (entity, (count, amount)) in &want {
        let (source, events, last) = &served[entity];
        assert_eq!(source, "store", "{entity}: no cache configured");
        assert_eq!(events.as_i64(), Some(*count), "{entity}");
        assert_eq!(last.as_f64(), *amount, "{entity}");
    }
    assert_eq!(served["user-999"].0, "missing");
    // The embedded store is the running serve's: a materialize says who holds it.
    let held = in_repo(&repo, &["materialize"]);
    assert!(!held.status.success());
    assert!(
        text(&held.stderr).contains("another process has it open"),
        "{}",
        text(&held.stderr)
    );
    assert_eq!(
        served["user-999"].1.as_i64(),
        Some(7),
        "the group's defaults file, not the manifest's 0"
    );

    // The Python client, against the same server: the values the Rust client read.
    let expected = serde_json::json!({
        "version": "0.1.0",
        "features": ["events", "last_amount"],
        "entities": served
            .iter()
            .map(|(entity, (source, events, last))| {
                (entity.clone(), serde_json::json!({"source": source, "values": [events, last]}))
            })
            .collect::<serde_json::Map<_, _>>(),
    });
    let expected_file = dir.path().join("expected.json");
    std::fs::write(&expected_file, expected.to_string()).expect("write expected");
    let python = common::repo("clients/python");
    let out = Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(python.join("tests"))
        .env("PYTHONPATH", &python)
        .env("LOCKSTEP_URL", &serve.base)
        .env("LOCKSTEP_GROUP", "my_features")
        .env("LOCKSTEP_KEY", "entity")
        .env("LOCKSTEP_EXPECTED", &expected_file)
        .output()
        .expect("python3 -m pytest");
    let report = text(&out.stdout);
    assert!(
        out.status.success(),
        "the Python client's tests failed:\n{report}\n{}",
        text(&out.stderr)
    );
    assert!(
        report.contains("8 passed"),
        "every Python test ran:\n{report}"
    );
    drop(serve);

    // A cache in front of the store (`[cache]`): materialize writes each entity's
    // record through to it, replacing an older entry and keeping a newer one.
    let redis = lockstep_testkit::Redis::start(&[]);
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            std::fs::read(built_component(&repo)).expect("component"),
        ))
    };
    let (older, newer) = (&entities[0], &entities[1]);
    let planted = |entity: &str, at: i64| {
        let row = serde_json::json!({"entity": entity, "event_time": "2026-01-01T00:00:00Z",
                                     "events": -1, "last_amount": null});
        lockstep_cache::CacheEntry {
            key: lockstep_cache::cache_key("my_features@0.1.0", entity),
            event_time: at,
            value: lockstep_cache::record_value(at, &hash, row.as_object().expect("object")),
        }
    };
    let io = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cache = io
        .block_on(lockstep_cache::RedisCache::connect(
            &redis.url(),
            None,
            std::time::Duration::from_secs(2),
        ))
        .expect("cache");
    io.block_on(cache.put(&[planted(older, 1), planted(newer, i64::MAX / 2)]))
        .expect("plant entries");
    let without_cache = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        format!("{without_cache}\n[cache]\nurl = \"{}\"\n", redis.url()),
    )
    .expect("write config");
    let skipped = ok(&repo, &["materialize", "--no-cache"]);
    assert!(skipped.contains("the cache is left as it is"), "{skipped}");
    assert!(!skipped.contains("cache: "), "{skipped}");
    let loaded = ok(&repo, &["materialize"]);
    assert!(
        loaded.contains("cache: 39 entries written, 1 newer kept, 0 removed"),
        "{loaded}"
    );
    let serve = serve_in(&repo, &[]);
    let through_cache = serve.features(&entities);
    for entity in want.keys() {
        let (source, events, last) = &through_cache[entity];
        assert_eq!(source, "cache", "{entity}: loaded into the cache");
        if entity == newer {
            assert_eq!(events.as_i64(), Some(-1), "the newer entry stays");
        } else {
            assert_eq!(
                (events, last),
                (&served[entity].1, &served[entity].2),
                "{entity}: the store's record, through the cache"
            );
        }
    }
    drop(serve);
    // A cache that is not there stops the materialize, naming it and the way round.
    drop(redis);
    let out = in_repo(&repo, &["materialize"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("connecting to the cache") && err.contains("--no-cache"),
        "{err}"
    );
    std::fs::write(&config, &without_cache).expect("restore config");

    // Swap the online store: one line of the file, one materialize, the same values.
    let wasm = built_component(&repo);
    let g = common::group(&wasm);
    let featurestore = FeatureStoreLocal::start(
        &dir.path().join("featurestore"),
        &[&format!(
            "{}=entity",
            lockstep_featurestore::wire::group_name(&g)
        )],
    );
    let text_before = std::fs::read_to_string(&config).expect("config");
    let swapped = text_before.replace("store = \"embedded\"", "store = \"sagemaker:${FS_URL}\"");
    assert_ne!(
        swapped, text_before,
        "the [online] line is in the made file"
    );
    std::fs::write(&config, swapped).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .arg("materialize")
        .current_dir(&repo)
        .envs(AWS_ENV)
        .env("FS_URL", &featurestore.url)
        .output()
        .expect("materialize");
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Without the variable the file names what is missing, and where.
    let out = in_repo(&repo, &["materialize"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("FS_URL") && err.contains("lockstep.toml:"),
        "{err}"
    );
    let fs_url = featurestore.url.clone();
    let mut env = AWS_ENV.to_vec();
    env.push(("FS_URL", &fs_url));
    let serve = serve_in(&repo, &env);
    let from_sagemaker = serve.features(&entities);
    for entity in &entities {
        assert_eq!(
            (&from_sagemaker[entity].1, &from_sagemaker[entity].2),
            (&served[entity].1, &served[entity].2),
            "{entity}: the same values from either store"
        );
    }
    drop(serve);
    std::fs::write(&config, &text_before).expect("restore config");

    // A changed plugin for the same version: plan and apply refuse it, naming the fix,
    // and register nothing.
    let lib = repo.join("plugins/my_features/src/lib.rs");
    let code = std::fs::read_to_string(&lib).expect("lib.rs");
    let changed = code.replace("seen.events += 1;", "seen.events += 2;");
    assert_ne!(changed, code);
    std::fs::write(&lib, changed).expect("write lib.rs");
    let out = in_repo(&repo, &["plan"]);
    assert!(!out.status.success(), "a refused plan fails");
    let shown = text(&out.stdout);
    assert!(shown.contains("1 refused"), "{shown}");
    assert!(
        shown.contains("! my_features@0.1.0") && shown.contains("bump"),
        "{shown}"
    );
    let out = in_repo(&repo, &["apply"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("nothing applied"),
        "{}",
        text(&out.stderr)
    );
    let out = in_repo(&repo, &["backfill"]);
    assert!(
        !out.status.success(),
        "a backfill with the changed plugin is refused too"
    );
}

#[test]
fn outside_a_repository_the_repository_commands_say_how_to_make_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    for command in ["plan", "apply", "backfill", "materialize"] {
        let out = in_repo(dir.path(), &[command]);
        assert!(!out.status.success(), "{command}");
        let err = text(&out.stderr);
        assert!(
            err.contains("no lockstep.toml") && err.contains("lockstep init"),
            "{command}: {err}"
        );
    }
    let out = in_repo(dir.path(), &["serve"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--plugin"),
        "{}",
        text(&out.stderr)
    );
    // --config names a file; a broken one is refused with its line.
    let config = dir.path().join("elsewhere.toml");
    std::fs::write(&config, "[online]\nstore = \"embedded\"\nstroe = \"x\"\n").expect("write");
    let out = in_repo(dir.path(), &["--config", s(&config), "plan"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("stroe") && err.contains("line 3"), "{err}");
}

/// The sample's event times, read from the file.
fn event_times(events: &Path) -> Vec<i64> {
    std::fs::read_to_string(events)
        .expect("events")
        .lines()
        .map(|line| {
            serde_json::from_str::<Json>(line).expect("json")["ts"]
                .as_i64()
                .expect("ts")
        })
        .collect()
}

/// `backfill --from/--to` over a repository made by `init`: the plugin runs over the
/// history before `--to` (one row per event, so the counts are the sample's), only
/// the window's rows are written and the rest of the store stays; a window off the
/// hour is refused before anything runs.
#[test]
fn a_backfill_over_a_window_writes_its_rows_and_keeps_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    ok(dir.path(), &["init", "demo"]);
    let repo = dir.path().join("demo");
    ok(&repo, &["backfill"]);
    let times = event_times(&repo.join("data/events.jsonl"));
    // 2026-01-01T12:00Z and 18:00Z, inside the sample (2026-01-01T00:00 to 01-02T09:30).
    let (from, to) = (1_767_268_800_000_000_i64, 1_767_290_400_000_000_i64);
    let before = times.iter().filter(|t| **t < from).count();
    let inside = times.iter().filter(|t| (from..to).contains(*t)).count();
    let after = times.len() - before - inside;
    assert!(before > 0 && inside > 0 && after > 0);
    let window = ok(
        &repo,
        &[
            "backfill",
            "--from",
            "2026-01-01T12:00:00Z",
            "--to",
            "2026-01-01T18:00:00Z",
        ],
    );
    assert!(
        window.contains(&format!(
            "up to 2026-01-01T18:00:00.000000Z: {after} events at or after it left out"
        )),
        "{window}"
    );
    assert!(
        window.contains(&format!(
            "from 2026-01-01T12:00:00.000000Z: {before} rows before it computed"
        )),
        "{window}"
    );
    assert!(
        window.contains(&format!("wrote      {inside} rows into 6 hour partitions")),
        "{window}"
    );
    assert!(
        window.contains(&format!("read       {} events from", times.len())),
        "every event is read, those after the window too:\n{window}"
    );
    // The store still holds one row per event: the window replaced, the rest kept.
    let loaded = ok(&repo, &["materialize"]);
    assert!(
        loaded.contains(&format!(
            "materialized my_features@0.1.0: {} rows",
            times.len()
        )),
        "{loaded}"
    );
    // Off the hour: refused, naming the flag and the hour to use.
    let out = in_repo(&repo, &["backfill", "--from", "2026-01-01T12:30:00Z"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("--from 2026-01-01T12:30:00.000000Z is not on the hour")
            && err.contains("2026-01-01T12:00:00.000000Z"),
        "{err}"
    );
}

/// With `[offline] glue_database`, `plan` looks each group's Glue table up (a moto
/// server): not there before the first backfill, there with its version after.
#[test]
fn plan_looks_up_each_groups_glue_table() {
    let moto = lockstep_testkit::Moto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    ok(dir.path(), &["init", "demo"]);
    let repo = dir.path().join("demo");
    let config = std::fs::read_to_string(repo.join("lockstep.toml")).expect("config");
    let config = config.replacen(
        "[offline]\n",
        "[offline]\nglue_database = \"features\"\n",
        1,
    );
    std::fs::write(repo.join("lockstep.toml"), config).expect("write");
    let run = |args: &[&str]| ok_with(&repo, args, moto.env());
    let plan = run(&["plan"]);
    assert!(
        plan.contains(
            "catalog: Glue table features.my_features (not found: the group's first \
             `lockstep backfill` creates it)"
        ),
        "{plan}"
    );
    let backfilled = run(&["backfill"]);
    assert!(
        backfilled.contains("glue table features.my_features (created)"),
        "{backfilled}"
    );
    let plan = run(&["plan"]);
    assert!(
        plan.contains(
            "catalog: Glue table features.my_features (exists: latest version 0.1.0, data at "
        ),
        "{plan}"
    );
    // --local looks nothing up; an endpoint with nothing behind it is said, not fatal.
    let local = run(&["plan", "--local"]);
    assert!(
        local.contains("catalog: Glue table features.my_features\n"),
        "{local}"
    );
    let unreachable = run(&["plan", "--endpoint-url", "http://127.0.0.1:9"]);
    assert!(
        unreachable.contains("catalog: Glue table features.my_features (not checked: "),
        "{unreachable}"
    );
}
