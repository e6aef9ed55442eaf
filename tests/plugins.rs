//! Every example plugin, built from source to a component, run through the runtime and
//! the shared host path, and checked against the same code compiled natively.

use lockstep_abi::{ApplyRequestView, ApplyResponse, ReadRequest, ReadResponse};
use lockstep_core::decode::decode_json_lines;
use lockstep_core::key::StateMap;
use lockstep_core::rows::row_json;
use lockstep_executor::Executor;
use lockstep_runtime::{Plugin, Runtime, RuntimeConfig};
use lockstep_sdk::{Transform, engine};
use lockstep_tests::{component, velocity_requests};

fn load(crate_dir: &str) -> Plugin {
    let rt = Runtime::new(RuntimeConfig::default()).expect("runtime");
    rt.load(&component(crate_dir, &[])).expect("load")
}

fn rows(plugin: &Plugin, jsonl: &str, per_call: usize) -> Vec<String> {
    let batch = decode_json_lines(jsonl, plugin.manifest(), None).expect("decode");
    let out = Executor::new(plugin)
        .expect("executor")
        .with_max_events_per_call(per_call)
        .run(&batch, &mut StateMap::default())
        .expect("run");
    (0..out.rows.num_rows())
        .map(|r| serde_json::Value::Object(row_json(&out.rows, r)).to_string())
        .collect()
}

fn manifest_matches_native<T: Transform>(plugin: &Plugin) {
    assert_eq!(
        plugin.manifest(),
        &T::manifest(),
        "manifest read through Wasm equals the native one"
    );
}

#[test]
fn txn_velocity_in_wasm_equals_native_byte_for_byte() {
    let plugin = load("plugins/txn_velocity");
    manifest_matches_native::<txn_velocity::TxnVelocity>(&plugin);
    let mut instance = plugin.instantiate().expect("instance");
    for request in velocity_requests(30_000, 800, 5, 5_000) {
        let wasm = instance.apply(&request).expect("wasm");
        let native = engine::apply::<txn_velocity::TxnVelocity>(&request).expect("native");
        assert!(wasm == native, "responses differ");
        let view = ApplyRequestView::parse(&request, &plugin.input_types()).expect("request");
        let parsed = ApplyResponse::parse(
            &wasm,
            &plugin.feature_types(),
            view.n_entities(),
            view.n_events(),
        )
        .expect("response follows the layout");
        let from_events = (0..parsed.n_rows())
            .filter(|&r| parsed.source_event(r) != lockstep_abi::timers::WAKE_ROW as usize)
            .count();
        assert_eq!(from_events, view.n_events(), "one row per transaction");
    }
}

#[test]
fn read_in_wasm_equals_native_and_slides_windows() {
    let plugin = load("plugins/txn_velocity");
    let events = lockstep_gen::transactions(2_000, 20, 9).to_json_lines();
    let batch = decode_json_lines(&events, plugin.manifest(), None).expect("decode");
    let mut states = StateMap::default();
    Executor::new(&plugin)
        .expect("executor")
        .run(&batch, &mut states)
        .expect("run");
    let mut keys: Vec<_> = states.keys().cloned().collect();
    keys.sort();
    let state_refs: Vec<Option<&[u8]>> = keys.iter().map(|k| Some(states[k].as_slice())).collect();
    let far_future = lockstep_gen::EPOCH_2024 + 400 * 86_400_000_000;
    let as_of = vec![far_future; keys.len()];
    let request = ReadRequest::encode(&state_refs, &as_of).expect("encode");
    let wasm = plugin
        .instantiate()
        .expect("instance")
        .read(&request)
        .expect("read");
    let native = engine::read::<txn_velocity::TxnVelocity>(&request).expect("native read");
    assert!(wasm == native);
    let parsed = ReadResponse::parse(&wasm, &plugin.feature_types(), keys.len()).expect("parse");
    let count_7d = plugin
        .manifest()
        .feature_index("txn_count_7d")
        .expect("feature");
    // A year after the last event every window is empty.
    assert!((0..keys.len()).all(|i| parsed.features[count_7d].i64(i) == 0));
}

#[test]
fn churn_and_clickstream_in_wasm_equal_native() {
    for (dir, jsonl) in [
        (
            "plugins/churn_features",
            lockstep_gen::activity(8_000, 300, 2),
        ),
        (
            "plugins/clickstream_clean",
            lockstep_gen::clicks(8_000, 300, 2),
        ),
    ] {
        let plugin = load(dir);
        let batch = decode_json_lines(&jsonl, plugin.manifest(), None).expect("decode");
        let out = Executor::new(&plugin)
            .expect("executor")
            .run(&batch, &mut StateMap::default())
            .expect("run");
        assert!(out.rows.num_rows() > 0, "{dir} emitted rows");
        // Feed one encoded request to both sides.
        let request = lockstep_tests::single_entity_request(&plugin, &jsonl);
        let wasm = plugin
            .instantiate()
            .expect("instance")
            .apply(&request)
            .expect("wasm");
        let native = match dir {
            "plugins/churn_features" => engine::apply::<churn_features::ChurnFeatures>(&request),
            _ => engine::apply::<clickstream_clean::ClickstreamClean>(&request),
        }
        .expect("native");
        assert!(wasm == native, "{dir}: responses differ");
    }
    manifest_matches_native::<churn_features::ChurnFeatures>(&load("plugins/churn_features"));
    manifest_matches_native::<clickstream_clean::ClickstreamClean>(&load(
        "plugins/clickstream_clean",
    ));
}

#[test]
fn splitting_an_entity_across_calls_changes_nothing() {
    let plugin = load("plugins/txn_velocity");
    let events = lockstep_gen::transactions(6_000, 30, 4).to_json_lines();
    let whole = rows(&plugin, &events, 100_000);
    assert_eq!(
        rows(&plugin, &events, 7),
        whole,
        "state carried between calls is exact"
    );
    assert_eq!(rows(&plugin, &events, 1), whole);
}

#[test]
fn arrival_order_and_redelivery_change_nothing() {
    for (dir, jsonl) in [
        (
            "plugins/txn_velocity",
            lockstep_gen::transactions(4_000, 50, 8).to_json_lines(),
        ),
        (
            "plugins/churn_features",
            lockstep_gen::activity(4_000, 50, 8),
        ),
        (
            "plugins/clickstream_clean",
            lockstep_gen::clicks(4_000, 50, 8),
        ),
    ] {
        let plugin = load(dir);
        let expected = rows(&plugin, &jsonl, 16_384);
        let mut lines: Vec<&str> = jsonl.lines().collect();
        lines.reverse();
        let mut redelivered = lines.clone();
        redelivered.extend(lines.iter().step_by(3));
        assert_eq!(
            rows(&plugin, &redelivered.join("\n"), 1_000),
            expected,
            "{dir}"
        );
    }
}

#[test]
fn extreme_values_flow_through_without_error() {
    let plugin = load("plugins/txn_velocity");
    let jsonl = [
        // The shortest key there is (an empty one names no entity: refused).
        r#"{"card_id":" ","ts":-9223372036854775808,"amount":"NaN","merchant":"é"}"#,
        r#"{"card_id":" ","ts":9223372036854775807,"amount":"Infinity","merchant":""}"#,
        r#"{"card_id":"💳","ts":0,"amount":"-Infinity","merchant":"m","txn_id":null}"#,
        r#"{"card_id":"💳","ts":0,"amount":1.7976931348623157e308,"merchant":"m","txn_id":"x"}"#,
        r#"{"card_id":"💳","ts":1,"amount":-0.0,"merchant":"m","txn_id":"x"}"#,
    ]
    .join("\n");
    let out = rows(&plugin, &jsonl, 16_384);
    // Four transactions (the second `x` is a duplicate), and the three wake-ups of the
    // first (when it leaves each window) before the one at the end of time, which asks
    // for none: they would be past it.
    assert_eq!(out.len(), 7, "{out:#?}");
    let last_of_time = out
        .iter()
        .find(|r| r.contains(r#""txn_max_7d":"Infinity""#) && r.contains(r#""card_id":" ""#))
        .expect("the row of the transaction at the end of time");
    assert!(
        last_of_time.contains(r#""txn_count_7d":1"#),
        "{last_of_time}"
    );
    assert_eq!(rows(&plugin, &jsonl, 1), out);
}

/// What a sort engine feeds the batch host: events with order columns, sorted, cut into
/// batches of any size. Applying them batch by batch must equal applying them at once.
#[test]
fn ordered_batches_of_any_size_equal_one_whole_run() {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::TimestampMicrosecondType;
    use arrow_array::{RecordBatch, UInt32Array};
    use lockstep_core::order::{CONTENT_COLUMN, with_order_columns};

    let plugin = load("plugins/txn_velocity");
    let jsonl = lockstep_gen::transactions(5_000, 40, 12).to_json_lines();
    let events = decode_json_lines(&jsonl, plugin.manifest(), None).expect("decode");
    let mut reference_states = StateMap::default();
    let reference = Executor::new(&plugin)
        .expect("executor")
        .run(&events, &mut reference_states)
        .expect("run");

    let with_order = with_order_columns(&events, plugin.manifest()).expect("order columns");
    let keys = with_order.column(0).as_string::<i32>();
    let times = with_order
        .column(1)
        .as_primitive::<TimestampMicrosecondType>();
    // txn_velocity's id: a string, by its bytes, nulls last.
    let id_index = with_order
        .schema()
        .index_of(plugin.manifest().event_id.as_deref().expect("declared id"))
        .expect("id column");
    let ids = with_order.column(id_index).as_string::<i32>();
    let contents = with_order
        .column_by_name(CONTENT_COLUMN)
        .expect("contents")
        .as_primitive::<arrow_array::types::Decimal128Type>();
    let mut order: Vec<u32> = (0..with_order.num_rows() as u32).collect();
    order.sort_by_key(|&i| {
        let i = i as usize;
        let id = ids.is_valid(i).then(|| ids.value(i));
        (
            keys.value(i),
            times.value(i),
            id.is_none(),
            id,
            contents.value(i),
        )
    });
    let sorted = arrow_select::take::take_record_batch(&with_order, &UInt32Array::from(order))
        .expect("take");

    for batch_rows in [1usize, 7, 333, 100_000] {
        let mut executor = Executor::new(&plugin)
            .expect("executor")
            .with_max_events_per_call(50);
        let mut states = StateMap::default();
        let mut run = executor.ordered(&mut states);
        let mut rows: Vec<RecordBatch> = Vec::new();
        let mut at = 0;
        while at < sorted.num_rows() {
            let len = batch_rows.min(sorted.num_rows() - at);
            rows.push(run.push(&sorted.slice(at, len)).expect("push"));
            at += len;
        }
        assert_eq!(
            run.stats().duplicates,
            reference.stats.duplicates,
            "batches of {batch_rows}"
        );
        let got = arrow_select::concat::concat_batches(reference.rows.schema_ref(), &rows)
            .expect("concat");
        assert_eq!(got, reference.rows, "batches of {batch_rows}");
        assert_eq!(
            states, reference_states,
            "final states, batches of {batch_rows}"
        );

        // Discarding finished entities' states changes no row and keeps at most the
        // entity still open.
        let mut executor = Executor::new(&plugin)
            .expect("executor")
            .with_max_events_per_call(50);
        let mut states = StateMap::default();
        let mut run = executor.ordered(&mut states).discard_finished_states();
        let mut rows: Vec<RecordBatch> = Vec::new();
        let mut at = 0;
        let mut most = 0;
        while at < sorted.num_rows() {
            let len = batch_rows.min(sorted.num_rows() - at);
            rows.push(run.push(&sorted.slice(at, len)).expect("push"));
            at += len;
            most = most.max(run.states_held());
        }
        let got = arrow_select::concat::concat_batches(reference.rows.schema_ref(), &rows)
            .expect("concat");
        assert_eq!(got, reference.rows, "discarding, batches of {batch_rows}");
        assert!(most <= 1, "at most the open entity's state, held {most}");
    }
}

/// A plugin that fails, panics or loops on one event fails on it alone, from the same
/// state, every time: every host skips exactly those events, names them, and applies
/// everything else — whatever the calls were cut into (the batch host's calls, the
/// stream host's releases).
#[test]
fn events_the_plugin_fails_on_are_skipped_and_named_alike_however_calls_are_cut() {
    use lockstep_stream::{Record, StreamConfig, StreamProcessor};
    let rt = Runtime::new(RuntimeConfig {
        cpu_budget: std::time::Duration::from_millis(300),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let plugin = rt
        .load(&component("tests/plugins/hostile", &[]))
        .expect("load");
    let events = [
        ("a", 0, "ok"),
        ("a", 1, "fail"),
        ("b", 0, "ok"),
        ("a", 2, "ok"),
        ("b", 1, "spin"),
        ("a", 3, "panic"),
        ("c", 0, "ok"),
        ("a", 4, "ok"),
        ("b", 2, "ok"),
        ("c", 1, "ok"),
    ];
    let lines: Vec<String> = events
        .iter()
        .map(|(k, t, m)| format!(r#"{{"key":"{k}","ts":{t},"mode":"{m}"}}"#))
        .collect();
    let batch = decode_json_lines(&lines.join("\n"), plugin.manifest(), None).expect("decode");
    // Each entity's `n` counts the events applied to it: failed ones never count.
    let expected_rows = vec![
        r#"{"key":"a","event_time":"1970-01-01T00:00:00.000000Z","n":1}"#,
        r#"{"key":"a","event_time":"1970-01-01T00:00:00.000002Z","n":2}"#,
        r#"{"key":"a","event_time":"1970-01-01T00:00:00.000004Z","n":3}"#,
        r#"{"key":"b","event_time":"1970-01-01T00:00:00.000000Z","n":1}"#,
        r#"{"key":"b","event_time":"1970-01-01T00:00:00.000002Z","n":2}"#,
        r#"{"key":"c","event_time":"1970-01-01T00:00:00.000000Z","n":1}"#,
        r#"{"key":"c","event_time":"1970-01-01T00:00:00.000001Z","n":2}"#,
    ];
    let failed_rows = [1usize, 4, 5];
    for per_call in [16_384, 1, 2, 3] {
        let out = Executor::new(&plugin)
            .expect("executor")
            .with_max_events_per_call(per_call)
            .run(&batch, &mut StateMap::default())
            .expect("a failing event does not fail the run");
        let rows: Vec<String> = (0..out.rows.num_rows())
            .map(|r| serde_json::Value::Object(row_json(&out.rows, r)).to_string())
            .collect();
        assert_eq!(rows, expected_rows, "{per_call} per call");
        let mut failed: Vec<usize> = out.failed.iter().map(|f| f.row).collect();
        failed.sort_unstable();
        assert_eq!(failed, failed_rows, "{per_call} per call: {:?}", out.failed);
        assert_eq!(out.stats.failed, 3);
        assert_eq!(out.stats.events_applied, 7);
        let message = |row: usize| {
            out.failed
                .iter()
                .find(|f| f.row == row)
                .map(|f| f.message.clone())
                .unwrap_or_default()
        };
        assert!(message(1).contains("asked to fail for a"), "{}", message(1));
        assert!(message(4).contains("CPU budget"), "{}", message(4));
        assert!(message(5).contains("asked to panic at 3"), "{}", message(5));
    }

    // The stream host: the same rows, the same events dead-lettered with the shard and
    // sequence number of their record, whether released at once or one by one.
    for per_push in [10, 1] {
        let mut p = StreamProcessor::new(&plugin, StreamConfig::default()).expect("processor");
        let sequences: Vec<String> = (0..lines.len()).map(|i| format!("seq-{i}")).collect();
        let mut rows = Vec::new();
        let mut dead = Vec::new();
        for chunk in (0..lines.len()).collect::<Vec<_>>().chunks(per_push) {
            let records: Vec<Record> = chunk
                .iter()
                .map(|&i| Record {
                    shard: "shard-7",
                    sequence: &sequences[i],
                    data: lines[i].as_bytes(),
                    partition_key: None,
                })
                .collect();
            let step = p.push(&records).expect("push");
            dead.extend(step.dead);
            rows.push(step.rows);
        }
        let step = p.drain().expect("drain");
        dead.extend(step.dead);
        rows.push(step.rows);
        let all = arrow_select::concat::concat_batches(&rows[0].schema(), &rows).expect("rows");
        let mut streamed: Vec<String> = (0..all.num_rows())
            .map(|r| serde_json::Value::Object(row_json(&all, r)).to_string())
            .collect();
        streamed.sort();
        assert_eq!(streamed, expected_rows, "{per_push} per push");
        let mut named: Vec<(String, String)> = dead
            .iter()
            .map(|d| (d.shard.clone(), d.sequence.clone()))
            .collect();
        named.sort();
        assert_eq!(
            named,
            failed_rows
                .iter()
                .map(|i| ("shard-7".to_owned(), format!("seq-{i}")))
                .collect::<Vec<_>>()
        );
        assert!(
            dead.iter()
                .all(|d| d.reason.contains("the plugin failed") && d.record.contains("\"key\""))
        );
        assert_eq!(p.stats().plugin_failures, 3);
    }
}
