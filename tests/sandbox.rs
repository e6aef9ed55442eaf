//! The sandbox: budgets, memory limits, panics, refused imports, malformed binaries,
//! determinism across engines, the artifact cache and threads.

use lockstep_runtime::{CallError, LoadError, Runtime, RuntimeConfig};
use lockstep_tests::{component, hostile_request, velocity_requests};
use std::time::{Duration, Instant};

fn runtime(budget_ms: u64, memory_mib: u64) -> Runtime {
    Runtime::new(RuntimeConfig {
        cpu_budget: Duration::from_millis(budget_ms),
        memory_limit: memory_mib << 20,
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

fn hostile() -> Vec<u8> {
    component("tests/plugins/hostile", &[])
}

#[test]
fn an_endless_loop_fails_within_its_budget_and_the_runtime_keeps_serving() {
    let rt = runtime(300, 256);
    let plugin = rt.load(&hostile()).expect("load");
    let mut instance = plugin.instantiate().expect("instance");
    let mut bystander = plugin.instantiate().expect("second instance");

    let started = Instant::now();
    let err = instance
        .apply(&hostile_request(&["ok", "spin"]))
        .expect_err("must be stopped");
    let took = started.elapsed();
    assert_eq!(
        err,
        CallError::CpuBudget {
            plugin: "hostile".into(),
            budget_ms: 300
        }
    );
    assert!(
        err.to_string()
            .contains("exceeded its CPU budget of 300 ms"),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "stopped after {took:?}"
    );

    // The same instance handle serves the next call with a fresh instance...
    assert!(instance.apply(&hostile_request(&["ok", "ok"])).is_ok());
    // ...and other instances of the same plugin were never affected.
    assert!(bystander.apply(&hostile_request(&["ok"])).is_ok());
}

#[test]
fn unbounded_allocation_fails_cleanly_at_the_memory_limit() {
    let rt = runtime(10_000, 64);
    let plugin = rt.load(&hostile()).expect("load");
    let mut instance = plugin.instantiate().expect("instance");
    let err = instance
        .apply(&hostile_request(&["hog"]))
        .expect_err("must hit the limit");
    assert_eq!(
        err,
        CallError::MemoryLimit {
            plugin: "hostile".into(),
            limit_mib: 64
        }
    );
    assert!(
        instance.apply(&hostile_request(&["ok"])).is_ok(),
        "recovers after the failure"
    );
}

#[test]
fn panics_and_errors_are_reported_with_their_message() {
    let rt = runtime(10_000, 128);
    let plugin = rt.load(&hostile()).expect("load");
    let mut instance = plugin.instantiate().expect("instance");
    match instance.apply(&hostile_request(&["ok", "panic"])) {
        Err(CallError::Panicked { plugin, message }) => {
            assert_eq!(plugin, "hostile");
            assert!(message.contains("asked to panic at 1"), "{message}");
        }
        other => panic!("expected a panic report, got {other:?}"),
    }
    match instance.apply(&hostile_request(&["ok", "ok", "fail"])) {
        Err(CallError::Plugin {
            event_index,
            message,
            ..
        }) => {
            assert_eq!(event_index, Some(2));
            assert!(message.contains("asked to fail for k"), "{message}");
        }
        other => panic!("expected a plugin error, got {other:?}"),
    }
    let garbage = instance
        .apply(b"not a batch")
        .expect_err("malformed request");
    assert!(
        garbage.to_string().contains("malformed apply request"),
        "{garbage}"
    );
}

#[test]
fn forbidden_imports_are_refused_at_load_by_name() {
    let rt = runtime(1_000, 64);
    for (feature, interface) in [
        ("clock", "wasi:clocks/"),
        ("random", "wasi:random/"),
        ("fs", "wasi:filesystem/"),
    ] {
        let bytes = component("tests/plugins/hostile", &[feature]);
        match rt.load(&bytes) {
            Err(err @ LoadError::ImportRefused { .. }) => {
                let text = err.to_string();
                let LoadError::ImportRefused { refused, .. } = err else {
                    unreachable!()
                };
                assert!(
                    refused
                        .iter()
                        .any(|r| r.import.starts_with(interface) && !r.reason.is_empty()),
                    "{feature}: expected {interface}* among {refused:?}"
                );
                assert!(
                    text.contains(interface),
                    "the message names the import: {text}"
                );
            }
            Err(other) => panic!("{feature}: wrong error {other}"),
            Ok(_) => panic!("{feature}: a plugin importing {interface} was accepted"),
        }
    }
}

#[test]
fn truncated_and_non_wasm_files_are_clear_errors() {
    let rt = runtime(1_000, 64);
    let good = component("plugins/txn_velocity", &[]);
    for cut in [0, 3, 8, 100, good.len() / 2, good.len() - 1] {
        let err = rt
            .load(&good[..cut])
            .err()
            .unwrap_or_else(|| panic!("truncated at {cut} loaded"));
        let text = err.to_string();
        assert!(
            matches!(
                err,
                LoadError::NotAComponent(_) | LoadError::Compile { .. } | LoadError::Exports { .. }
            ),
            "cut {cut}: {text}"
        );
    }
    let err = rt
        .load(b"#!/bin/sh\necho hi\n")
        .err()
        .expect("script refused");
    assert!(err.to_string().contains("WebAssembly magic"), "{err}");
    let missing = rt
        .load_file("/nonexistent/plugin.wasm")
        .err()
        .expect("missing file");
    assert!(
        missing.to_string().contains("/nonexistent/plugin.wasm"),
        "{missing}"
    );
}

#[test]
fn two_engines_give_byte_identical_rows_and_state() {
    let bytes = component("plugins/txn_velocity", &[]);
    let requests = velocity_requests(20_000, 500, 11, 4_096);
    let run = || {
        let rt = Runtime::new(RuntimeConfig {
            pooled_instances: 0,
            ..RuntimeConfig::default()
        })
        .expect("runtime");
        let mut instance = rt
            .load(&bytes)
            .expect("load")
            .instantiate()
            .expect("instance");
        requests
            .iter()
            .map(|r| instance.apply(r).expect("apply"))
            .collect::<Vec<_>>()
    };
    let first = run();
    let second = run();
    assert_eq!(first.len(), requests.len());
    assert!(first == second, "responses differ between engines");
}

#[test]
fn the_artifact_cache_skips_compilation_and_survives_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = component("plugins/churn_features", &[]);
    let rt = Runtime::new(RuntimeConfig::with_cache(dir.path())).expect("runtime");
    let cold = Instant::now();
    let first = rt.load(&bytes).expect("cold load");
    let cold = cold.elapsed();
    let artifacts: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(artifacts.len(), 1, "one artifact written: {artifacts:?}");
    assert!(
        artifacts[0].to_string_lossy().contains(first.hash()),
        "keyed by hash"
    );
    let warm = Instant::now();
    let second = rt.load(&bytes).expect("warm load");
    let warm = warm.elapsed();
    assert_eq!(first.hash(), second.hash());
    assert!(
        warm < cold,
        "cached load ({warm:?}) should beat compiling ({cold:?})"
    );

    std::fs::write(&artifacts[0], b"garbage").expect("corrupt");
    let third = rt
        .load(&bytes)
        .expect("a corrupt artifact is recompiled, not fatal");
    assert_eq!(third.manifest().name, "churn_features");
}

#[test]
fn instances_on_many_threads_agree() {
    let bytes = component("plugins/txn_velocity", &[]);
    let rt = runtime(10_000, 256);
    let plugin = rt.load(&bytes).expect("load");
    let requests = velocity_requests(5_000, 100, 3, 1_000);
    let outputs: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let plugin = plugin.clone();
                let requests = &requests;
                s.spawn(move || {
                    let mut instance = plugin.instantiate().expect("instance");
                    requests
                        .iter()
                        .map(|r| instance.apply(r).expect("apply"))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert!(outputs.windows(2).all(|w| w[0] == w[1]));
}
