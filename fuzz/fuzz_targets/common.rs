//! A manifest with every input type, nullable and not, and a declared id.

use lockstep_abi::{Feature, Field, Kind, Manifest, Value, ValueType};

pub fn manifest() -> Manifest {
    let f = |n: &str, ty, nullable| Field {
        name: n.into(),
        ty,
        nullable,
        description: String::new(),
    };
    Manifest {
        name: "fuzz".into(),
        version: "1.0.0".into(),
        description: String::new(),
        input: vec![
            f("k", ValueType::String, false),
            f("t", ValueType::Timestamp, false),
            f("id", ValueType::String, true),
            f("n", ValueType::Int64, true),
            f("x", ValueType::Float64, true),
            f("b", ValueType::Boolean, true),
        ],
        entity_key: "k".into(),
        event_time: "t".into(),
        event_id: Some("id".into()),
        features: vec![Feature {
            name: "f".into(),
            ty: ValueType::Int64,
            description: String::new(),
            default_value: Value::Null,
        }],
        kind: Kind::KeyedStateful,
        state_version: 1,
        supports_read: false,
    }
}
