//! Shared helpers for the workspace integration tests: build plugins from source once
//! per test process, and make apply requests from generated data.

use lockstep_abi::{ApplyRequest, ColumnBuilder, ValueType};
use std::collections::HashMap;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Component bytes of the plugin crate at `crate_dir` (relative to the workspace)
/// built with `features`. Built from source once per process; builds are serialised
/// because variants of one crate share an output path.
pub fn component(crate_dir: &str, features: &[&str]) -> Vec<u8> {
    static BUILT: OnceLock<Mutex<HashMap<String, Vec<u8>>>> = OnceLock::new();
    let cache = BUILT.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    let key = format!("{crate_dir}+{}", features.join(","));
    if let Some(bytes) = cache.get(&key) {
        return bytes.clone();
    }
    let options = lockstep_build::BuildOptions {
        features: features.iter().map(|f| f.to_string()).collect(),
        verbose: false,
        target_dir: None,
    };
    let built = lockstep_build::build(&workspace().join(crate_dir), &options)
        .unwrap_or_else(|e| panic!("building {crate_dir}: {e}"));
    let bytes = std::fs::read(&built.path).expect("read component");
    cache.insert(key, bytes.clone());
    bytes
}

/// An apply request for the hostile test plugin: one entity, events in `modes` order.
pub fn hostile_request(modes: &[&str]) -> Vec<u8> {
    let mut key = ColumnBuilder::new(ValueType::String);
    let mut ts = ColumnBuilder::new(ValueType::Timestamp);
    let mut mode = ColumnBuilder::new(ValueType::String);
    for (i, m) in modes.iter().enumerate() {
        key.push_str("k");
        ts.push_i64(i as i64);
        mode.push_str(m);
    }
    let mut req = ApplyRequest::new(&[modes.len() as u32], &[None], 3).expect("header");
    for c in [&key, &ts, &mode] {
        req.column(c).expect("column");
    }
    req.finish().expect("request")
}

/// Apply requests for `txn_velocity` over generated transactions; see
/// [`lockstep_gen::velocity_requests`].
pub fn velocity_requests(events: usize, cards: u64, seed: u64, per_call: usize) -> Vec<Vec<u8>> {
    lockstep_gen::velocity_requests(&lockstep_gen::transactions(events, cards, seed), per_call)
        .expect("requests")
}

/// One apply request carrying every event of `jsonl` (decoded for `plugin`) as a
/// single entity run, without ordering: enough to compare two implementations.
pub fn single_entity_request(plugin: &lockstep_runtime::Plugin, jsonl: &str) -> Vec<u8> {
    let batch =
        lockstep_core::decode::decode_json_lines(jsonl, plugin.manifest(), None).expect("decode");
    let mut req = ApplyRequest::new(&[batch.num_rows() as u32], &[None], batch.num_columns())
        .expect("header");
    for (column, ty) in batch.columns().iter().zip(plugin.input_types()) {
        lockstep_core::convert::write_column(&mut req, column.as_ref(), ty).expect("column");
    }
    req.finish().expect("request")
}
