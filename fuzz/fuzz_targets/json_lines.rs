//! Any bytes as JSON lines: decoding (with rejects) and then ordering never panic, and
//! what decodes orders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_core::decode::decode_json_lines;
use lockstep_core::order::{order_events, with_order_columns};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let m = common::manifest();
    let mut rejects = Vec::new();
    let batch = decode_json_lines(text, &m, Some(&mut rejects))
        .expect("with a rejects list, bad records are rejects, not errors");
    let ordered = order_events(&batch, &m).expect("decoded events order");
    assert!(ordered.indices.len() + ordered.duplicates == batch.num_rows());
    with_order_columns(&batch, &m).expect("decoded events get order columns");
});
