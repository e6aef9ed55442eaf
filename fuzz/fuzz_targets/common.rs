//! A manifest with every input type, nullable and not, and a declared id.

use lockstep_abi::{Manifest, Value, ValueType};

pub fn manifest() -> Manifest {
    Manifest::builder("fuzz", "1.0.0")
        .keyed_stateful(1)
        .field("k", ValueType::String, "")
        .field("t", ValueType::Timestamp, "")
        .optional_field("id", ValueType::String, "")
        .optional_field("n", ValueType::Int64, "")
        .optional_field("x", ValueType::Float64, "")
        .optional_field("b", ValueType::Boolean, "")
        .entity_key("k")
        .event_time("t")
        .event_id("id")
        .feature("f", ValueType::Int64, "", Value::Null)
        .build()
}
