//! A guest written against the WIT world directly (`tests/plugins/raw`, no SDK) that
//! answers with malformed payloads, lies about its counts and offsets, recurses without
//! end or answers with 48 MiB: each is an error naming the plugin and what is wrong,
//! the events are skipped as the plugin's failures (never a panic, never a row), and
//! the same executor goes on to apply the next batch.

use lockstep_core::decode::decode_json_lines;
use lockstep_core::key::StateMap;
use lockstep_executor::Executor;
use lockstep_runtime::{Runtime, RuntimeConfig};
use lockstep_tests::component;

fn events(mode: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"key\":\"k{}\",\"ts\":{},\"mode\":\"{mode}\"}}\n",
                i % 2,
                1_000 + i
            )
        })
        .collect()
}

#[test]
fn every_malformed_answer_is_a_named_failure_and_the_host_goes_on() {
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let plugin = runtime
        .load(&component("tests/plugins/raw", &[]))
        .expect("a guest without the SDK loads like any other");
    let mut executor = Executor::new(&plugin).expect("executor");
    let mut states = StateMap::default();
    let manifest = plugin.manifest().clone();
    let run = |executor: &mut Executor, states: &mut StateMap, mode: &str| {
        let batch = decode_json_lines(&events(mode, 4), &manifest, None).expect("decode");
        executor
            .run(&batch, states)
            .unwrap_or_else(|e| panic!("{mode}: the host must go on, not fail the run: {e}"))
    };

    let cases = [
        ("garbage", "apply response"),
        ("wrong_entities", "entity count differs"),
        ("rows_dont_add_up", "do not add up"),
        ("huge_row_count", "truncated"),
        ("bad_offsets", "raw_guest"),
        ("source_out_of_range", "source event out of range"),
        ("truncated", "raw_guest"),
        ("trailing", "raw_guest"),
        ("deep", "raw_guest"),
        ("gigantic", "apply response"),
    ];
    for (mode, expected) in cases {
        let out = run(&mut executor, &mut states, mode);
        assert_eq!(
            out.rows.num_rows(),
            0,
            "{mode}: no row from a broken answer"
        );
        assert_eq!(
            out.failed.len(),
            4,
            "{mode}: every event is the plugin's failure: {:?}",
            out.failed
        );
        for failed in &out.failed {
            assert!(
                failed.message.contains("raw_guest") && failed.message.contains(expected),
                "{mode}: `{}` should name the plugin and `{expected}`",
                failed.message
            );
        }
        // The same executor (and instance) answers a well-formed batch right after.
        let ok = run(&mut executor, &mut states, "ok");
        assert_eq!(ok.rows.num_rows(), 4, "after {mode}");
        assert!(ok.failed.is_empty(), "after {mode}: {:?}", ok.failed);
    }
}
