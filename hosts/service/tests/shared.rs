//! Several feature groups on one stream (`StreamService::with_groups`): the golden
//! events of the three example plugins interleaved on two shards, each record tagged
//! with its kind. Each group must write exactly the rows a service of that group alone
//! writes over the records it takes, through a stop and a resume; records no group
//! takes are kept with why; a group added to the state is refused.

use lockstep_online::{EmbeddedStore, GroupRef};
use lockstep_runtime::{Plugin, Runtime, RuntimeConfig};
use lockstep_service::source::{ShardInfo, ShardRecord};
use lockstep_service::{
    GroupLane, MemorySource, ServiceConfig, ServiceError, StreamService, Summary,
};
use lockstep_stream::Route;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

fn repo(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(dir)
}

/// The example plugins with their kind tag and entity key.
const KINDS: [(&str, &str, &str); 3] = [
    ("txn_velocity", "txn", "card_id"),
    ("clickstream_clean", "view", "user_id"),
    ("churn_features", "activity", "customer_id"),
];

fn plugin(name: &str) -> Plugin {
    let built = lockstep_build::build(
        &repo("plugins").join(name),
        &lockstep_build::BuildOptions::default(),
    )
    .expect("build");
    Runtime::new(RuntimeConfig::default())
        .expect("runtime")
        .load_file(&built.path)
        .expect("load")
}

/// Every golden event tagged `"kind"`, interleaved round-robin across the kinds
/// (each kind's own order kept), with two records no group takes and one txn record
/// its plugin cannot decode; as (partition key, payload).
fn interleaved() -> Vec<(String, String)> {
    let per_kind: Vec<Vec<(String, String)>> = KINDS
        .iter()
        .map(|(name, kind, key)| {
            let text = std::fs::read_to_string(repo("golden").join(name).join("events.jsonl"))
                .expect("golden events");
            text.lines()
                .map(|line| {
                    let mut event: serde_json::Value = serde_json::from_str(line).expect("json");
                    let partition = event[*key].as_str().unwrap_or("unkeyed").to_owned();
                    event["kind"] = serde_json::json!(kind);
                    (partition, event.to_string())
                })
                .collect()
        })
        .collect();
    let mut out = Vec::new();
    let longest = per_kind.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..longest {
        for kind in &per_kind {
            if let Some(record) = kind.get(i) {
                out.push(record.clone());
            }
        }
        if i == 100 {
            out.push(("x".into(), r#"{"kind": "click", "user_id": "x"}"#.into()));
            out.push(("x".into(), "not json at all".into()));
            out.push((
                "card-bad".into(),
                r#"{"kind": "txn", "card_id": "card-bad", "ts": "yesterday"}"#.into(),
            ));
        }
    }
    out
}

/// `records` on two shards by partition key, as Kinesis puts them; a record's
/// sequence number is its position in the whole stream (a group's records run alone
/// keep theirs, so its dead letters name the same places).
fn shards(records: &[(usize, String, String)]) -> Vec<(ShardInfo, Vec<ShardRecord>)> {
    MemorySource::shards_by_hash(
        2,
        records
            .iter()
            .map(|(i, key, data)| (*i as u64, key.clone(), data.as_bytes().to_vec())),
    )
}

fn config(state: &Path, drain: bool) -> ServiceConfig {
    let mut config = ServiceConfig::new("in-memory", state.join("state"));
    config.stop_when_idle = true;
    config.drain_on_stop = drain;
    config.handle_signals = false;
    config.idle_watermark = false;
    config.idle_poll = std::time::Duration::from_millis(5);
    config.round_records = 700;
    config
}

async fn run(
    service: StreamService,
    records: Vec<(usize, String, String)>,
) -> Result<Summary, ServiceError> {
    service
        .run_from(Arc::new(AtomicBool::new(false)), move |resume| async move {
            Ok(Box::new(MemorySource::new(shards(&records), &resume, 250))
                as Box<dyn lockstep_service::Source>)
        })
        .await
}

fn lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

fn lanes(plugins: &[Plugin], copy: bool) -> Vec<GroupLane> {
    let mut lanes: Vec<GroupLane> = plugins
        .iter()
        .zip(KINDS)
        .map(|(plugin, (_, kind, _))| GroupLane {
            route: Some(Route {
                field: "kind".into(),
                equals: kind.into(),
            }),
            ..GroupLane::new(
                plugin.clone(),
                GroupRef::of(plugin.manifest(), plugin.hash()),
            )
        })
        .collect();
    if copy {
        // A second group over the same plugin and route: it decodes with the first.
        let mut group = GroupRef::of(plugins[0].manifest(), plugins[0].hash());
        group.name = "txn_velocity_copy".into();
        lanes.push(GroupLane {
            group,
            ..lanes[0].clone()
        });
    }
    lanes
}

#[tokio::test]
async fn each_group_on_a_shared_stream_writes_what_it_writes_alone_across_a_resume() {
    let plugins: Vec<Plugin> = KINDS.iter().map(|(name, _, _)| plugin(name)).collect();
    let records: Vec<(usize, String, String)> = interleaved()
        .into_iter()
        .enumerate()
        .map(|(i, (key, data))| (i, key, data))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");

    // Shared: the first half of the stream, stopped (nothing drained), then all of it.
    let shared_dir = dir.path().join("shared");
    let store = || Arc::new(EmbeddedStore::open(shared_dir.join("online")).expect("store"));
    let half = records[..records.len() / 2].to_vec();
    let first = run(
        StreamService::with_groups(lanes(&plugins, true), store(), config(&shared_dir, false))
            .expect("service"),
        half,
    )
    .await
    .expect("first half");
    assert!(!first.resumed);
    let second = run(
        StreamService::with_groups(lanes(&plugins, true), store(), config(&shared_dir, true))
            .expect("service"),
        records.clone(),
    )
    .await
    .expect("the rest");
    assert!(second.resumed, "the second run goes on from the checkpoint");
    assert_eq!(second.groups.len(), 4);
    assert_eq!(first.unrouted + second.unrouted, 2, "click and not-json");
    let unrouted = lines(&shared_dir.join("state/unrouted.jsonl"));
    assert_eq!(unrouted.len(), 2, "{unrouted:?}");
    assert!(
        unrouted
            .iter()
            .any(|l| l.contains(r#"`kind` is \"click\""#) && l.contains("no group takes it")),
        "{unrouted:?}"
    );
    assert!(
        unrouted.iter().any(|l| l.contains("not a JSON object")),
        "{unrouted:?}"
    );

    // Alone: each group over the records it takes, in one run.
    for (i, (name, kind, _)) in KINDS.iter().enumerate() {
        let alone_dir = dir.path().join(format!("alone-{name}"));
        let taken: Vec<(usize, String, String)> = records
            .iter()
            .filter(|(_, _, data)| {
                serde_json::from_str::<serde_json::Value>(data)
                    .is_ok_and(|v| v["kind"].as_str() == Some(kind))
            })
            .cloned()
            .collect();
        let plugin = &plugins[i];
        let alone = run(
            StreamService::new(
                plugin.clone(),
                Arc::new(EmbeddedStore::open(alone_dir.join("online")).expect("store")),
                GroupRef::of(plugin.manifest(), plugin.hash()),
                config(&alone_dir, true),
            ),
            taken,
        )
        .await
        .expect("alone");
        let shared_rows = lines(&shared_dir.join("state").join(name).join("rows.jsonl"));
        let alone_rows = lines(&alone.rows_log);
        assert!(alone_rows.len() > 1000, "{name}: {} rows", alone_rows.len());
        assert_eq!(
            shared_rows.len(),
            alone_rows.len(),
            "{name}: rows on the shared stream"
        );
        assert!(shared_rows == alone_rows, "{name}: rows differ");
        let shared_dead = lines(
            &shared_dir
                .join("state")
                .join(name)
                .join("dead-letters.jsonl"),
        );
        assert_eq!(shared_dead, lines(&alone.dead_log), "{name}: dead letters");
        if *name == "txn_velocity" {
            assert_eq!(shared_dead.len(), 1, "the bad txn record: {shared_dead:?}");
            // The copy decoded with it: the same rows, the same dead letter.
            let copy = lines(&shared_dir.join("state/txn_velocity_copy/rows.jsonl"));
            assert!(copy == shared_rows, "the copy's rows differ");
            assert_eq!(
                lines(&shared_dir.join("state/txn_velocity_copy/dead-letters.jsonl")),
                shared_dead
            );
        }
    }

    // The state holds these four groups: three of them, or a fifth, are refused.
    let err = run(
        StreamService::with_groups(lanes(&plugins, false), store(), config(&shared_dir, true))
            .expect("service"),
        records.clone(),
    )
    .await
    .expect_err("a group removed");
    let text = err.to_string();
    assert!(
        text.contains("txn_velocity_copy") && text.contains("new state directory"),
        "{text}"
    );
}

#[test]
fn groups_are_named_once_and_name_a_directory() {
    let plugin = plugin("txn_velocity");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(EmbeddedStore::open(dir.path().join("online")).expect("store"));
    let lane = GroupLane::new(
        plugin.clone(),
        GroupRef::of(plugin.manifest(), plugin.hash()),
    );
    let twice = StreamService::with_groups(
        vec![lane.clone(), lane.clone()],
        store.clone(),
        config(dir.path(), true),
    );
    assert!(
        twice.is_err_and(|e| e.to_string().contains("given twice")),
        "a group twice"
    );
    let mut bad = lane.clone();
    bad.group.name = "../up".into();
    assert!(
        StreamService::with_groups(vec![bad], store.clone(), config(dir.path(), true))
            .is_err_and(|e| e.to_string().contains("state directory"))
    );
    assert!(StreamService::with_groups(Vec::new(), store, config(dir.path(), true)).is_err());
}
