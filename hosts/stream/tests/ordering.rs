//! The stream host's ordering contract: whatever the arrival order within the allowed
//! lateness, and however records are grouped, it emits exactly the batch result.

use arrow_array::RecordBatch;
use lockstep_core::compare::{Row, canonical_order, canonical_rows, compare};
use lockstep_core::decode::decode_json_lines;
use lockstep_core::key::StateMap;
use lockstep_executor::Executor;
use lockstep_runtime::{Plugin, Runtime, RuntimeConfig};
use lockstep_stream::{Record, StreamConfig, StreamProcessor};
use proptest::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

const SECOND: i64 = 1_000_000;
const MINUTE: i64 = 60 * SECOND;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn plugin(name: &str) -> Plugin {
    static BUILT: OnceLock<std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>> =
        OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let bytes = built.entry(name.to_owned()).or_insert_with(|| {
        let out = lockstep_build::build(&repo("plugins").join(name), &Default::default())
            .expect("build plugin");
        std::fs::read(out.path).expect("read component")
    });
    Runtime::new(RuntimeConfig::default())
        .expect("runtime")
        .load(bytes)
        .expect("load")
}

fn canonical(plugin: &Plugin, batches: &[RecordBatch]) -> Vec<Row> {
    canonical_rows(batches, plugin.manifest())
}

/// Streams `lines` in this order, `per_push` records at a time, then drains.
fn stream(
    plugin: &Plugin,
    lines: &[&str],
    per_push: usize,
    lateness: i64,
) -> (Vec<RecordBatch>, lockstep_stream::StreamStats, Vec<String>) {
    let mut p = StreamProcessor::new(
        plugin,
        StreamConfig {
            allowed_lateness: lateness,
            ..StreamConfig::default()
        },
    )
    .expect("processor");
    let sequences: Vec<String> = (0..lines.len()).map(|i| i.to_string()).collect();
    let mut rows = Vec::new();
    let mut late = Vec::new();
    for chunk in lines
        .iter()
        .zip(&sequences)
        .collect::<Vec<_>>()
        .chunks(per_push.max(1))
    {
        let records: Vec<Record> = chunk
            .iter()
            .map(|(line, seq)| Record {
                shard: "shard-0",
                sequence: seq,
                data: line.as_bytes(),
                partition_key: None,
            })
            .collect();
        let step = p.push(&records).expect("push");
        assert!(step.dead.is_empty(), "{:?}", step.dead);
        late.extend(step.late.into_iter().map(|l| l.sequence));
        rows.push(step.rows);
    }
    rows.push(p.drain().expect("drain").rows);
    assert_eq!(p.buffered(), 0);
    (rows, p.stats().clone(), late)
}

#[test]
fn every_golden_set_streams_to_its_golden_rows() {
    for name in ["txn_velocity", "churn_features", "clickstream_clean"] {
        let plugin = plugin(name);
        let events = std::fs::read_to_string(repo("golden").join(name).join("events.jsonl"))
            .expect("events");
        let lines: Vec<&str> = events.lines().collect();
        let expected_text =
            std::fs::read_to_string(repo("golden").join(name).join("expected.jsonl"))
                .expect("expected");
        let mut expected: Vec<Row> = expected_text
            .lines()
            .map(|l| serde_json::from_str(l).expect("row"))
            .collect();
        canonical_order(&mut expected, &plugin.manifest().entity_key);
        for per_push in [1, 97, 5_000] {
            let (rows, stats, late) = stream(&plugin, &lines, per_push, 5 * MINUTE);
            assert!(
                late.is_empty(),
                "{name}: golden events arrived late: {late:?}"
            );
            assert_eq!(stats.events, lines.len() as u64);
            let c = compare(
                &plugin.manifest().entity_key,
                &canonical(&plugin, &rows),
                &expected,
                10,
            );
            assert!(
                c.identical(),
                "{name}, {per_push} per push:\n{}",
                c.render("stream", "golden")
            );
        }
    }
}

#[test]
fn a_future_dated_event_is_a_dead_letter_and_never_moves_the_watermark() {
    let plugin = plugin("txn_velocity");
    let events = std::fs::read_to_string(repo("golden/txn_velocity/events.jsonl")).expect("events");
    let mut lines: Vec<String> = events.lines().map(str::to_owned).collect();
    let future = [
        r#"{"card_id":"card-0001","ts":"9999-12-31T23:59:59Z","amount":1.0,"merchant":"m","txn_id":"far"}"#,
        // Two years ahead of any clock this test runs on: as bad.
        r#"{"card_id":"card-0002","ts":"2100-01-01T00:00:00Z","amount":1.0,"merchant":"m","txn_id":"near"}"#,
    ];
    lines.insert(3, future[0].to_owned());
    lines.insert(lines.len() / 2, future[1].to_owned());
    // The golden events arrive up to five minutes late; the bound is the default one.
    let config = StreamConfig {
        allowed_lateness: 5 * MINUTE,
        ..StreamConfig::default()
    };
    let mut p = StreamProcessor::new(&plugin, config).expect("processor");
    let sequences: Vec<String> = (0..lines.len()).map(|i| i.to_string()).collect();
    let mut rows = Vec::new();
    let mut dead = Vec::new();
    let mut late = 0;
    for (chunk, seqs) in lines.chunks(50).zip(sequences.chunks(50)) {
        let records: Vec<Record> = chunk
            .iter()
            .zip(seqs)
            .map(|(line, seq)| Record {
                shard: "shard-0",
                sequence: seq,
                data: line.as_bytes(),
                partition_key: None,
            })
            .collect();
        let step = p.push(&records).expect("push");
        late += step.late.len();
        dead.extend(step.dead);
        rows.push(step.rows);
        // No watermark in the future: it trails the real events.
        assert!(
            p.watermark().is_none_or(|w| w < 4_102_444_800_000_000),
            "{:?}",
            p.watermark()
        );
    }
    rows.push(p.drain().expect("drain").rows);
    assert_eq!(late, 0, "a future event made real ones late");
    assert_eq!(dead.len(), 2, "{dead:?}");
    for d in &dead {
        assert!(
            d.reason.contains("in the future") && d.reason.contains("ts"),
            "{}",
            d.reason
        );
    }
    // Everything else is applied: the golden rows exactly.
    let expected_text =
        std::fs::read_to_string(repo("golden/txn_velocity/expected.jsonl")).expect("rows");
    let mut expected: Vec<Row> = expected_text
        .lines()
        .map(|l| serde_json::from_str(l).expect("row"))
        .collect();
    canonical_order(&mut expected, &plugin.manifest().entity_key);
    let c = compare("card_id", &canonical(&plugin, &rows), &expected, 10);
    assert!(c.identical(), "{}", c.render("stream", "golden"));
}

#[test]
fn late_events_are_kept_apart_and_late_redeliveries_are_duplicates() {
    let plugin = plugin("txn_velocity");
    let t0 = lockstep_gen::EPOCH_2024;
    let ev = |id: &str, card: &str, t: i64| {
        format!(r#"{{"card_id":"{card}","ts":{t},"amount":1.5,"merchant":"m","txn_id":"{id}"}}"#)
    };
    let lines = [
        ev("a", "c1", t0),
        // The watermark moves to t0 + 30 s.
        ev("b", "c1", t0 + 90 * SECOND),
        // Behind it, but a redelivery of an event taken: a duplicate.
        ev("a", "c1", t0),
        // Behind it and new: late.
        ev("c", "c2", t0 + 20 * SECOND),
        // Exactly at the watermark: in time.
        ev("d", "c2", t0 + 30 * SECOND),
    ];
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    for per_push in [1, 2, 5] {
        let (rows, stats, late) = stream(&plugin, &refs, per_push, MINUTE);
        assert_eq!(late, vec!["3".to_owned()], "{per_push} per push");
        assert_eq!((stats.late, stats.duplicates, stats.applied), (1, 1, 3));
        let all = canonical(&plugin, &rows);
        assert_eq!(all.len(), 3, "{all:?}");
    }
}

#[test]
fn bad_records_become_dead_letters_and_the_stream_goes_on() {
    let plugin = plugin("txn_velocity");
    let mut p = StreamProcessor::new(&plugin, StreamConfig::default()).expect("processor");
    let good = br#"{"card_id":"c","ts":1704067200000000,"amount":2.0,"merchant":"m"}"#;
    let records = [
        Record {
            shard: "s-1",
            sequence: "10",
            data: b"{not json",
            partition_key: None,
        },
        Record {
            shard: "s-1",
            sequence: "11",
            data: br#"{"card_id":"c","amount":2.0,"merchant":"m"}"#,
            partition_key: None,
        },
        Record {
            shard: "s-1",
            sequence: "12",
            data: br#"{"card_id":"c","ts":"yesterday","amount":2.0,"merchant":"m"}"#,
            partition_key: None,
        },
        Record {
            shard: "s-1",
            sequence: "13",
            data: &[0xff, 0xfe],
            partition_key: None,
        },
        Record {
            shard: "s-1",
            sequence: "14",
            data: good,
            partition_key: Some("another-card"),
        },
        Record {
            shard: "s-1",
            sequence: "15",
            data: good,
            partition_key: Some("c"),
        },
    ];
    let step = p.push(&records).expect("push");
    let reasons: Vec<(&str, &str)> = step
        .dead
        .iter()
        .map(|d| (d.sequence.as_str(), d.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    assert!(reasons[0].1.contains("malformed JSON"), "{reasons:?}");
    assert!(
        reasons[1].1.contains("field `ts`") && reasons[1].1.contains("missing"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].1.contains("field `ts`") && reasons[2].1.contains("yesterday"),
        "{reasons:?}"
    );
    assert!(reasons[3].1.contains("UTF-8"), "{reasons:?}");
    assert!(
        reasons[4].0 == "14"
            && reasons[4]
                .1
                .contains("partition key `another-card` is not the entity key `c`"),
        "{reasons:?}"
    );
    assert_eq!(step.dead[0].to_json()["shard"], "s-1");
    let rest = p.drain().expect("drain");
    assert_eq!(rest.rows.num_rows(), 1, "the good record was applied");
    assert_eq!(p.stats().dead, 5);
}

#[test]
fn a_handed_off_state_continues_where_the_backfill_stopped() {
    let plugin = plugin("txn_velocity");
    let all = lockstep_gen::transactions(2_000, 30, 9);
    let text = all.to_json_lines();
    let lines: Vec<&str> = text.lines().collect();
    let m = plugin.manifest().clone();
    // Backfill the first events (those before T), stream the rest from its states.
    let mut times: Vec<i64> = all.ts.clone();
    times.sort_unstable();
    let t = times[times.len() / 2];
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for (line, ts) in lines.iter().zip(&all.ts) {
        if *ts < t {
            before.push(*line);
        } else {
            after.push(*line);
        }
    }
    let mut states = StateMap::default();
    let backfill = Executor::new(&plugin)
        .expect("executor")
        .run_to_end(
            &decode_json_lines(&before.join("\n"), &m, None).expect("decode"),
            &mut states,
        )
        .expect("backfill");
    let mut p = StreamProcessor::new(
        &plugin,
        StreamConfig {
            allowed_lateness: 10 * MINUTE,
            ..StreamConfig::default()
        },
    )
    .expect("processor")
    .with_states(states);
    let records: Vec<Record> = after
        .iter()
        .map(|l| Record {
            shard: "s",
            sequence: "0",
            data: l.as_bytes(),
            partition_key: None,
        })
        .collect();
    let mut rows = vec![backfill.rows.clone()];
    rows.push(p.push(&records).expect("push").rows);
    rows.push(p.drain().expect("drain").rows);
    let whole = Executor::new(&plugin)
        .expect("executor")
        .run_to_end(
            &decode_json_lines(&text, &m, None).expect("decode"),
            &mut StateMap::default(),
        )
        .expect("whole");
    let c = compare(
        &m.entity_key,
        &canonical(&plugin, &rows),
        &canonical(&plugin, &[whole.rows]),
        10,
    );
    assert!(
        c.identical(),
        "{}",
        c.render("backfill + stream", "one batch")
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Random events for any example plugin, a random arrival order within the allowed
    /// lateness and random grouping: the stream equals the batch executor, row for row,
    /// bit for bit.
    #[test]
    fn any_arrival_order_within_the_lateness_gives_zero_skew(
        which in 0usize..3,
        seed in any::<u64>(),
        rows in 1usize..600,
        entities in 1u64..40,
        per_push in 1usize..300,
    ) {
        let (name, kind) = [
            ("txn_velocity", lockstep_gen::Kind::Transactions),
            ("churn_features", lockstep_gen::Kind::Logins),
            ("clickstream_clean", lockstep_gen::Kind::Clicks),
        ][which];
        let plugin = plugin(name);
        let text = lockstep_gen::events(kind, rows, entities, seed);
        let lateness = 10 * MINUTE;
        // Arrival: each event delayed by up to the allowed lateness after its time.
        let mut rng = lockstep_gen::Rng::new(seed ^ 0xa11);
        let mut arrivals: Vec<(i64, usize, &str)> = text
            .lines()
            .enumerate()
            .map(|(i, l)| {
                let ts = serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["ts"].as_i64())
                    .unwrap_or(0);
                (ts + rng.below(lateness as u64 + 1) as i64, i, l)
            })
            .collect();
        arrivals.sort();
        let lines: Vec<&str> = arrivals.iter().map(|(_, _, l)| *l).collect();
        let (streamed, stats, late) = stream(&plugin, &lines, per_push, lateness);
        prop_assert!(late.is_empty());
        prop_assert_eq!(stats.events, rows as u64);
        let m = plugin.manifest();
        let batch = Executor::new(&plugin)
            .expect("executor")
            .run_to_end(&decode_json_lines(&text, m, None).expect("decode"), &mut StateMap::default())
            .expect("run");
        let c = compare(&m.entity_key, &canonical(&plugin, &streamed), &canonical(&plugin, &[batch.rows]), 5);
        prop_assert!(c.identical(), "{name}: {}", c.render("stream", "batch"));
    }
}

/// Records routed as Kinesis routes them: by the MD5 of the partition key (the entity).
fn route<'a>(lines: &[&'a str], specs: &[lockstep_stream::ShardSpec]) -> Vec<Vec<&'a str>> {
    let mut out = vec![Vec::new(); specs.len()];
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        let h = lockstep_stream::partition_hash(v["card_id"].as_str().unwrap_or(""));
        let i = specs
            .iter()
            .position(|s| s.hash_range.0 <= h && h <= s.hash_range.1)
            .expect("a shard holds every hash");
        out[i].push(*line);
    }
    out
}

#[test]
fn resharding_keeps_every_entity_in_order_and_applies_each_event_once() {
    use lockstep_stream::{ShardSpec, ShardedProcessor};
    let plugin = plugin("txn_velocity");
    let events = lockstep_gen::transactions(3_000, 80, 21);
    let text = events.to_json_lines();
    let lateness = 10 * MINUTE;
    let mut rng = lockstep_gen::Rng::new(77);
    let mut arrivals: Vec<(i64, &str)> = text
        .lines()
        .zip(&events.ts)
        .map(|(l, t)| (t + rng.below(lateness as u64 + 1) as i64, l))
        .collect();
    arrivals.sort();
    let lines: Vec<&str> = arrivals.iter().map(|(_, l)| *l).collect();
    let (first, second, third) = (&lines[..1_000], &lines[1_000..2_000], &lines[2_000..]);
    let mid = u128::MAX / 3;
    let root = ShardSpec {
        id: "s0".into(),
        parents: vec![],
        hash_range: (0, u128::MAX),
    };
    let left = ShardSpec {
        id: "s1".into(),
        parents: vec!["s0".into()],
        hash_range: (0, mid),
    };
    let right = ShardSpec {
        id: "s2".into(),
        parents: vec!["s0".into()],
        hash_range: (mid + 1, u128::MAX),
    };
    let merged = ShardSpec {
        id: "s3".into(),
        parents: vec!["s1".into(), "s2".into()],
        hash_range: (0, u128::MAX),
    };
    let mut p = ShardedProcessor::new(
        &plugin,
        StreamConfig {
            allowed_lateness: lateness,
            ..StreamConfig::default()
        },
    );
    let mut rows = Vec::new();
    let mut push = |p: &mut ShardedProcessor, shard: &str, lines: &[&str]| {
        for chunk in lines.chunks(64) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).expect("json");
                    v["card_id"].as_str().unwrap_or("").to_owned()
                })
                .collect();
            let recs: Vec<Record> = chunk
                .iter()
                .zip(&keys)
                .map(|(l, k)| Record {
                    shard,
                    sequence: "0",
                    data: l.as_bytes(),
                    partition_key: Some(k),
                })
                .collect();
            let step = p.push(shard, &recs).expect("push");
            assert!(
                step.late.is_empty() && step.dead.is_empty(),
                "{:?} {:?}",
                step.late,
                step.dead
            );
            rows.push(step.rows);
        }
    };
    // The first third through the root shard, then a split: the root is read to its
    // end before its children, which are read one after the other (a child lags).
    p.open(root).expect("open");
    push(&mut p, "s0", first);
    p.close("s0").expect("close");
    p.open(left.clone()).expect("open");
    p.open(right.clone()).expect("open");
    let halves = route(second, &[left, right]);
    push(&mut p, "s1", &halves[0]);
    push(&mut p, "s2", &halves[1]);
    // Then the two merge back.
    p.close("s1").expect("close");
    p.close("s2").expect("close");
    p.open(merged).expect("open");
    push(&mut p, "s3", third);
    rows.push(p.drain().expect("drain").rows);
    assert_eq!(p.stats().events, 3_000);

    let m = plugin.manifest();
    let batch = Executor::new(&plugin)
        .expect("executor")
        .run_to_end(
            &decode_json_lines(&text, m, None).expect("decode"),
            &mut StateMap::default(),
        )
        .expect("run");
    let c = compare(
        &m.entity_key,
        &canonical(&plugin, &rows),
        &canonical(&plugin, &[batch.rows]),
        10,
    );
    assert!(c.identical(), "{}", c.render("resharded stream", "batch"));
}

/// A crash after any checkpoint: the states changed so far and the shards saved are
/// all a new processor gets; it replays from the saved positions and must end with
/// exactly the golden rows, the rows emitted after the checkpoint being lost with
/// the crash (a service's logs are cut back to the checkpoint).
#[test]
fn restoring_any_checkpoint_and_replaying_ends_with_the_golden_rows() {
    use lockstep_stream::{SavedShard, ShardSpec, ShardedProcessor, partition_hash};
    let plugin = plugin("txn_velocity");
    let key = plugin.manifest().entity_key.clone();
    let events = std::fs::read_to_string(repo("golden/txn_velocity/events.jsonl")).unwrap();
    let expected_text =
        std::fs::read_to_string(repo("golden/txn_velocity/expected.jsonl")).unwrap();
    let mut expected: Vec<Row> = expected_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    canonical_order(&mut expected, &key);
    let half = u128::MAX / 2;
    let specs = [
        ShardSpec {
            id: "s0".into(),
            parents: vec![],
            hash_range: (0, half),
        },
        ShardSpec {
            id: "s1".into(),
            parents: vec![],
            hash_range: (half + 1, u128::MAX),
        },
    ];
    // Records per shard, keyed as a producer keys them.
    let mut shards: [Vec<(String, String)>; 2] = [Vec::new(), Vec::new()];
    for line in events.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let k = v[&key]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v[&key].to_string());
        let shard = usize::from(partition_hash(&k) > half);
        shards[shard].push((k, line.to_owned()));
    }
    let config = StreamConfig {
        allowed_lateness: 5 * MINUTE,
        ..StreamConfig::default()
    };
    for (per_round, crashes) in [
        (7usize, vec![3usize, 40, 41, 200]),
        (100, vec![1, 9, 20]),
        (1_000, vec![1]),
    ] {
        let mut kept: Vec<RecordBatch> = Vec::new();
        let mut saved_states = StateMap::default();
        let mut saved_shards: Vec<SavedShard>;
        let mut saved_next: [usize; 2];
        let mut p = ShardedProcessor::new(&plugin, config);
        for spec in &specs {
            p.open(spec.clone()).unwrap();
        }
        let mut next = [0usize; 2];
        let mut round = 0;
        let mut pending: Vec<RecordBatch> = Vec::new();
        loop {
            let done = next.iter().zip(&shards).all(|(n, s)| *n >= s.len());
            if done {
                break;
            }
            for (i, spec) in specs.iter().enumerate() {
                let end = (next[i] + per_round).min(shards[i].len());
                let seqs: Vec<String> = (next[i]..end).map(|s| s.to_string()).collect();
                let records: Vec<Record> = shards[i][next[i]..end]
                    .iter()
                    .zip(&seqs)
                    .map(|((k, line), seq)| Record {
                        shard: &spec.id,
                        sequence: seq,
                        data: line.as_bytes(),
                        partition_key: Some(k),
                    })
                    .collect();
                pending.push(p.push(&spec.id, &records).unwrap().rows);
                next[i] = end;
            }
            round += 1;
            // Every round ends with a checkpoint; its rows become durable with it.
            let checkpoint = p.checkpoint();
            for (k, state) in checkpoint.changed {
                match state {
                    Some(s) => saved_states.insert(k, s),
                    None => saved_states.remove(&k),
                };
            }
            saved_shards = checkpoint.shards;
            saved_next = next;
            kept.append(&mut pending);
            if crashes.contains(&round) {
                // Work after the checkpoint, lost in the crash.
                for (i, spec) in specs.iter().enumerate() {
                    let end = (next[i] + per_round).min(shards[i].len());
                    let records: Vec<Record> = shards[i][next[i]..end]
                        .iter()
                        .map(|(k, line)| Record {
                            shard: &spec.id,
                            sequence: "lost",
                            data: line.as_bytes(),
                            partition_key: Some(k),
                        })
                        .collect();
                    let _ = p.push(&spec.id, &records).unwrap();
                }
                p = ShardedProcessor::restore(
                    &plugin,
                    config,
                    saved_states.clone(),
                    saved_shards.clone(),
                )
                .unwrap();
                next = saved_next;
            }
        }
        kept.push(p.drain().unwrap().rows);
        let c = compare(&key, &canonical(&plugin, &kept), &expected, 10);
        assert!(
            c.identical(),
            "{per_round} per round, crashes {crashes:?}:\n{}",
            c.render("restored", "golden")
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    /// The replay boundary: events of erased entities at or before their erasure time
    /// are dropped as if they had never arrived (no row, no watermark move, no late
    /// event), in any arrival order within the lateness; the rest equals the batch
    /// executor over the input without them. Erasures set halfway through the stream
    /// drop the entities' state and held events there and then.
    #[test]
    fn erased_events_are_dropped_as_if_they_never_arrived(
        seed in any::<u64>(),
        rows in 50usize..400,
        entities in 2u64..12,
        erased_count in 1usize..3,
        cut_permille in 0i64..1000,
    ) {
        use lockstep_core::{EntityKey, Erasures};
        let plugin = plugin("txn_velocity");
        let m = plugin.manifest();
        let text = lockstep_gen::events(lockstep_gen::Kind::Transactions, rows, entities, seed);
        let parsed: Vec<(String, i64, &str)> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("json");
                (v["card_id"].as_str().unwrap_or("").to_owned(), v["ts"].as_i64().unwrap_or(0), l)
            })
            .collect();
        let (first, last) = (
            parsed.iter().map(|p| p.1).min().unwrap_or(0),
            parsed.iter().map(|p| p.1).max().unwrap_or(0),
        );
        let at = first + (last - first) * cut_permille / 1000;
        let mut keys: Vec<String> = parsed.iter().map(|p| p.0.clone()).collect();
        keys.sort();
        keys.dedup();
        let erased: Vec<String> = keys.into_iter().take(erased_count).collect();
        let mut erasures = Erasures::new();
        for k in &erased {
            erasures.insert(EntityKey::Str(k.clone()), at);
        }
        let erasures = std::sync::Arc::new(erasures);
        // Arrival within the lateness, as above.
        let lateness = 10 * MINUTE;
        let mut rng = lockstep_gen::Rng::new(seed ^ 0xe7a5);
        let mut arrivals: Vec<(i64, usize, &str)> = parsed
            .iter()
            .enumerate()
            .map(|(i, p)| (p.1 + rng.below(lateness as u64 + 1) as i64, i, p.2))
            .collect();
        arrivals.sort();
        let mut p = StreamProcessor::new(&plugin, StreamConfig { allowed_lateness: lateness, ..StreamConfig::default() })
            .expect("processor");
        p.set_erasures(erasures.clone()).expect("erasures");
        let mut out = Vec::new();
        let sequences: Vec<String> = (0..arrivals.len()).map(|i| i.to_string()).collect();
        for ((_, _, line), seq) in arrivals.iter().zip(&sequences) {
            let step = p
                .push(&[Record { shard: "s", sequence: seq, data: line.as_bytes(), partition_key: None }])
                .expect("push");
            prop_assert!(step.late.is_empty());
            out.push(step.rows);
        }
        out.push(p.drain().expect("drain").rows);
        let dropped = parsed
            .iter()
            .filter(|(k, t, _)| erased.contains(k) && *t <= at)
            .count();
        prop_assert_eq!(p.stats().erased, dropped as u64);
        let kept: String = parsed
            .iter()
            .filter(|(k, t, _)| !(erased.contains(k) && *t <= at))
            .map(|(_, _, l)| format!("{l}\n"))
            .collect();
        let batch = Executor::new(&plugin)
            .expect("executor")
            .run_to_end(&decode_json_lines(&kept, m, None).expect("decode"), &mut StateMap::default())
            .expect("run");
        let c = compare(&m.entity_key, &canonical(&plugin, &out), &canonical(&plugin, &[batch.rows]), 5);
        prop_assert!(c.identical(), "{}", c.render("stream", "batch without the erased events"));
    }
}

#[test]
fn an_erasure_while_running_drops_the_entitys_state_and_held_events() {
    use lockstep_core::{EntityKey, Erasures};
    let plugin = plugin("txn_velocity");
    let line = |card: &str, ts: i64, id: &str| {
        format!(
            "{{\"card_id\":\"{card}\",\"ts\":{ts},\"amount\":1.0,\"merchant\":\"m\",\"txn_id\":\"{id}\"}}"
        )
    };
    let t0 = 1_704_067_200_000_000i64;
    let lines = [
        line("a", t0, "1"),
        line("b", t0 + SECOND, "2"),
        line("a", t0 + 10 * MINUTE, "3"),
        // Held: the watermark (latest − 5 min) has not passed it.
        line("a", t0 + 12 * MINUTE, "4"),
    ];
    let mut p = StreamProcessor::new(
        &plugin,
        StreamConfig {
            allowed_lateness: 5 * MINUTE,
            ..StreamConfig::default()
        },
    )
    .expect("processor");
    let seqs: Vec<String> = (0..lines.len()).map(|i| i.to_string()).collect();
    let records: Vec<Record> = lines
        .iter()
        .zip(&seqs)
        .map(|(l, s)| Record {
            shard: "s",
            sequence: s,
            data: l.as_bytes(),
            partition_key: None,
        })
        .collect();
    p.push(&records).expect("push");
    assert!(p.states().contains_key(&EntityKey::Str("a".into())));
    assert_eq!(
        p.buffered(),
        2,
        "a's 10- and 12-minute events wait for the watermark"
    );
    let _ = p.take_changed();
    let mut erasures = Erasures::new();
    erasures.insert(EntityKey::Str("a".into()), t0 + 11 * MINUTE);
    let dropped = p
        .set_erasures(std::sync::Arc::new(erasures))
        .expect("erase");
    assert_eq!(dropped, vec![EntityKey::Str("a".into())]);
    assert!(!p.states().contains_key(&EntityKey::Str("a".into())));
    assert_eq!(
        p.buffered(),
        1,
        "only the held event after the erasure stays"
    );
    assert_eq!(
        p.take_changed(),
        vec![(EntityKey::Str("a".into()), None)],
        "the next checkpoint removes the state"
    );
    let rows = p.drain().expect("drain").rows;
    assert_eq!(rows.num_rows(), 1, "the new life: one row from no state");
}

#[test]
fn a_handed_off_state_of_an_erased_entity_is_dropped_before_any_shard_takes_it() {
    use lockstep_core::{EntityKey, Erasures};
    use lockstep_stream::{ShardSpec, ShardedProcessor};
    let plugin = plugin("txn_velocity");
    let t0 = 1_704_067_200_000_000i64;
    let line = |card: &str, ts: i64, id: &str| {
        format!(
            "{{\"card_id\":\"{card}\",\"ts\":{ts},\"amount\":1.0,\"merchant\":\"m\",\"txn_id\":\"{id}\"}}"
        )
    };
    // A backfill's final states for two cards.
    let backfilled = format!("{}\n{}\n", line("a", t0, "1"), line("b", t0, "2"));
    let mut states = StateMap::default();
    Executor::new(&plugin)
        .expect("executor")
        .run_to_end(
            &decode_json_lines(&backfilled, plugin.manifest(), None).expect("decode"),
            &mut states,
        )
        .expect("run");
    assert_eq!(states.len(), 2);
    let mut sharded = ShardedProcessor::new(&plugin, StreamConfig::default()).with_states(states);
    let mut erasures = Erasures::new();
    erasures.insert(EntityKey::Str("a".into()), t0 + MINUTE);
    assert_eq!(
        sharded
            .set_erasures(std::sync::Arc::new(erasures))
            .expect("erase"),
        1
    );
    sharded
        .open(ShardSpec {
            id: "s0".into(),
            parents: vec![],
            hash_range: (0, u128::MAX),
        })
        .expect("open");
    let later = [
        line("a", t0 + 2 * MINUTE, "3"),
        line("b", t0 + 2 * MINUTE, "4"),
    ];
    let records: Vec<Record> = later
        .iter()
        .enumerate()
        .map(|(i, l)| Record {
            shard: "s0",
            sequence: if i == 0 { "0" } else { "1" },
            data: l.as_bytes(),
            partition_key: None,
        })
        .collect();
    sharded.push("s0", &records).expect("push");
    let rows = canonical(&plugin, &[sharded.drain().expect("drain").rows]);
    let count = |card: &str| {
        rows.iter()
            .find(|r| r["card_id"] == serde_json::json!(card))
            .map(|r| r["txn_count_7d"].clone())
    };
    assert_eq!(
        count("a"),
        Some(serde_json::json!(1)),
        "a starts a new life: {rows:?}"
    );
    assert_eq!(
        count("b"),
        Some(serde_json::json!(2)),
        "b goes on from its state: {rows:?}"
    );
    let checkpoint = sharded.checkpoint();
    assert!(
        checkpoint
            .changed
            .iter()
            .any(|(k, v)| *k == EntityKey::Str("b".into()) && v.is_some()),
        "{:?}",
        checkpoint
            .changed
            .iter()
            .map(|(k, v)| (k, v.is_some()))
            .collect::<Vec<_>>()
    );
}

/// A card with transactions at 08:40 and 09:00 and nothing after: once the shard's
/// watermark reaches 14:00 (a caught-up shard following the clock), the card was woken
/// when each transaction left its hour, so its latest row — what the online store
/// keeps — says `txn_count_1h = 0`; and the rows equal what the batch host computes
/// from the same events woken up to just before 14:00, also after a restore.
#[test]
fn an_idle_shard_watermark_wakes_idle_entities_as_the_batch_host_does() {
    let plugin = plugin("txn_velocity");
    let m = plugin.manifest().clone();
    let day = 1_704_067_200 * SECOND; // 2024-01-01T00:00Z
    let hour = 60 * MINUTE;
    let line = |card: &str, ts: i64, id: &str| {
        format!(r#"{{"card_id":"{card}","ts":{ts},"amount":10.0,"merchant":"m","txn_id":"{id}"}}"#)
    };
    let lines = [
        line("idle", day + 8 * hour + 40 * MINUTE, "a"),
        line("idle", day + 9 * hour, "b"),
        line("busy", day + 9 * hour, "c"),
    ];
    let records: Vec<Record> = lines
        .iter()
        .map(|l| Record {
            shard: "s",
            sequence: "1",
            data: l.as_bytes(),
            partition_key: None,
        })
        .collect();
    let config = StreamConfig {
        allowed_lateness: 5 * MINUTE,
        ..StreamConfig::default()
    };
    let two = day + 14 * hour;
    let mut p = StreamProcessor::new(&plugin, config).expect("processor");
    let mut rows = vec![p.push(&records).expect("push").rows];
    // Halfway, the shard is saved and restored: the wake-ups travel in the states.
    rows.push(
        p.advance_watermark(day + 9 * hour + 50 * MINUTE)
            .expect("advance")
            .rows,
    );
    let changed: StateMap = p
        .take_changed()
        .into_iter()
        .filter_map(|(k, s)| s.map(|s| (k, s)))
        .collect();
    let mut states = p.states().clone();
    states.extend(changed);
    let saved = lockstep_stream::ShardState::from_saved(p.pending(), states);
    let mut p = StreamProcessor::resume(&plugin, config, saved).expect("resume");
    rows.push(p.advance_watermark(two).expect("advance").rows);
    assert!(p.stats().woken >= 2, "{:?}", p.stats());

    let stream = canonical(&plugin, &rows);
    let idle: Vec<&Row> = stream
        .iter()
        .filter(|r| r.get("card_id") == Some(&serde_json::json!("idle")))
        .collect();
    let latest = idle.last().expect("rows of the idle card");
    assert_eq!(latest.get("txn_count_1h"), Some(&serde_json::json!(0)));
    assert_eq!(latest.get("txn_count_24h"), Some(&serde_json::json!(2)));
    assert_eq!(
        latest.get("event_time"),
        Some(&serde_json::json!("2024-01-01T10:00:00.000000Z")),
        "the last change before 14:00: the 09:00 transaction left the hour"
    );

    let events = decode_json_lines(&lines.join("\n"), &m, None).expect("decode");
    let batch = Executor::new(&plugin)
        .expect("executor")
        .run_until(&events, &mut StateMap::default(), Some(two - 1), &[])
        .expect("batch");
    let c = compare(
        &m.entity_key,
        &stream,
        &canonical(&plugin, &[batch.rows]),
        10,
    );
    assert!(c.identical(), "{}", c.render("stream", "batch"));
}
