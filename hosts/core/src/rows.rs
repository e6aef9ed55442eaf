//! Emitted rows as JSON objects: the CLI's output and the golden files' format.
//!
//! Exact and reversible through [`crate::decode`]: floats print as the shortest text
//! that parses back to the same bits, non-finite floats as `"NaN"`, `"Infinity"`,
//! `"-Infinity"`, timestamps as RFC 3339 UTC with microseconds.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use serde_json::{Map, Value as Json};

/// Formats UTC microseconds as RFC 3339 (`2024-01-01T00:00:00.000000Z`); out-of-range
/// values fall back to the integer.
pub fn format_timestamp(micros: i64) -> Json {
    match chrono::DateTime::from_timestamp_micros(micros) {
        Some(t) => Json::String(t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()),
        None => Json::from(micros),
    }
}

/// A float as JSON, keeping non-finite values as strings.
pub fn format_float(x: f64) -> Json {
    if x.is_nan() {
        Json::String("NaN".into())
    } else if x.is_infinite() {
        Json::String(if x > 0.0 { "Infinity" } else { "-Infinity" }.into())
    } else {
        serde_json::Number::from_f64(x)
            .map(Json::Number)
            .unwrap_or(Json::Null)
    }
}

/// One value of `column` as JSON.
pub fn value_json(column: &dyn Array, row: usize) -> Json {
    if column.is_null(row) {
        return Json::Null;
    }
    match column.data_type() {
        DataType::Int64 => Json::from(column.as_primitive::<Int64Type>().value(row)),
        DataType::Float64 => format_float(column.as_primitive::<Float64Type>().value(row)),
        DataType::Boolean => Json::Bool(column.as_boolean().value(row)),
        DataType::Utf8 => Json::String(column.as_string::<i32>().value(row).to_owned()),
        DataType::Timestamp(_, _) => {
            format_timestamp(column.as_primitive::<TimestampMicrosecondType>().value(row))
        }
        other => Json::String(format!("<unsupported {other}>")),
    }
}

/// Row `row` of `batch` as a JSON object, columns in schema order.
pub fn row_json(batch: &RecordBatch, row: usize) -> Map<String, Json> {
    batch
        .schema_ref()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| (f.name().clone(), value_json(c.as_ref(), row)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_exact_and_reversible() {
        assert_eq!(
            format_timestamp(1_704_067_200_000_001),
            Json::String("2024-01-01T00:00:00.000001Z".into())
        );
        assert_eq!(
            format_float(f64::NEG_INFINITY),
            Json::String("-Infinity".into())
        );
        let x = 0.1 + 0.2;
        let text = format_float(x).to_string();
        assert_eq!(text.parse::<f64>().map(f64::to_bits), Ok(x.to_bits()));
        assert_eq!(format_timestamp(i64::MAX), Json::from(i64::MAX));
    }
}
