//! Any bytes as a message across the plugin boundary: every parser returns an error or
//! a value, never panics or reads out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_abi::{ApplyRequestView, ApplyResponse, ReadRequestView, ReadResponse, ValueType};

fuzz_target!(|data: &[u8]| {
    let types = [
        ValueType::String,
        ValueType::Timestamp,
        ValueType::Int64,
        ValueType::Float64,
        ValueType::Boolean,
    ];
    let (head, body) = data.split_at(data.len().min(2));
    let n_entities = head.first().copied().unwrap_or(0) as usize;
    let n_events = head.get(1).copied().unwrap_or(0) as usize;
    let _ = ApplyRequestView::parse(body, &types);
    let _ = ApplyResponse::parse(body, &types, n_entities, n_events);
    let _ = ReadRequestView::parse(body);
    let _ = ReadResponse::parse(body, &types, n_entities);
    let _ = lockstep_abi::state_version(body);
});
