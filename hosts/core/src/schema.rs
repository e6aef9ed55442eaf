//! A plugin manifest as Arrow schemas.

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use lockstep_abi::{Manifest, ValueType};
use std::sync::Arc;

/// Name of the row column that holds each row's event time.
pub const EVENT_TIME: &str = "event_time";

/// The Arrow type that carries values of `ty`. Timestamps are UTC microseconds.
pub fn arrow_type(ty: ValueType) -> DataType {
    match ty {
        ValueType::Int64 => DataType::Int64,
        ValueType::Float64 => DataType::Float64,
        ValueType::Boolean => DataType::Boolean,
        ValueType::String => DataType::Utf8,
        ValueType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
    }
}

/// The schema events are decoded into: the manifest's input fields, in order.
pub fn input_schema(m: &Manifest) -> SchemaRef {
    Arc::new(Schema::new(
        m.input
            .iter()
            .map(|f| Field::new(&f.name, arrow_type(f.ty), f.nullable))
            .collect::<Vec<_>>(),
    ))
}

/// The schema of emitted rows: entity key, `event_time`, then the features.
pub fn row_schema(m: &Manifest) -> SchemaRef {
    let key_ty = m
        .input
        .iter()
        .find(|f| f.name == m.entity_key)
        .map(|f| arrow_type(f.ty))
        .unwrap_or(DataType::Utf8);
    let mut fields = vec![
        Field::new(&m.entity_key, key_ty, false),
        Field::new(EVENT_TIME, arrow_type(ValueType::Timestamp), false),
    ];
    fields.extend(
        m.features
            .iter()
            .map(|f| Field::new(&f.name, arrow_type(f.ty), true)),
    );
    Arc::new(Schema::new(fields))
}
