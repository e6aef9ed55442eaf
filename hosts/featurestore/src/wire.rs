//! Lockstep rows ⇄ SageMaker records: names, values as text, event times.

use arrow_schema::{DataType, Schema};
use chrono::{DateTime, Utc};
use lockstep_online::GroupRef;
use serde_json::{Map, Value as Json};

/// The feature every record Lockstep writes carries: the hash of the component that
/// computed it.
pub const PLUGIN_HASH_FEATURE: &str = "lockstep_plugin_hash";

/// The name of the event-time feature in Lockstep rows.
pub const EVENT_TIME_FEATURE: &str = lockstep_core::schema::EVENT_TIME;

/// The SageMaker feature group name of a Lockstep group version: `name-vVERSION`,
/// with every character SageMaker does not allow in a name (`[a-zA-Z0-9-]`) turned
/// into `-`. Example: `txn_velocity` version `1.2.0` → `txn-velocity-v1-2-0`.
pub fn group_name(group: &GroupRef) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect()
    };
    format!("{}-v{}", clean(&group.name), clean(&group.version))
}

/// One JSON value as a record's `ValueAsString`; `None` for null (a missing feature).
/// Numbers keep the exact text Lockstep prints (shortest round-trip for floats).
pub fn value_text(v: &Json) -> Option<String> {
    match v {
        Json::Null => None,
        Json::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A record's text back as the JSON value Lockstep prints for a column of `data_type`:
/// numbers for numeric columns, strings otherwise. Text that does not fit the type
/// stays text.
pub fn value_json(text: &str, data_type: Option<&DataType>) -> Json {
    let numeric = matches!(
        data_type,
        Some(
            DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::UInt8
                | DataType::UInt16
                | DataType::UInt32
                | DataType::UInt64
                | DataType::Float32
                | DataType::Float64
        )
    );
    if numeric && let Ok(n) = serde_json::from_str::<serde_json::Number>(text) {
        return Json::Number(n);
    }
    if matches!(data_type, Some(DataType::Boolean)) {
        match text {
            "true" => return Json::Bool(true),
            "false" => return Json::Bool(false),
            _ => {}
        }
    }
    Json::String(text.to_owned())
}

/// A record (feature name → text) back as a Lockstep row, typed by `schema` when
/// known; the Lockstep-added features are left out.
pub fn row_from_record(record: &[(String, String)], schema: Option<&Schema>) -> Map<String, Json> {
    let mut row = Map::new();
    // Columns in schema order first, so rows read back print like rows written.
    if let Some(schema) = schema {
        for field in schema.fields() {
            if let Some((_, text)) = record.iter().find(|(n, _)| n == field.name()) {
                row.insert(
                    field.name().clone(),
                    value_json(text, Some(field.data_type())),
                );
            } else {
                row.insert(field.name().clone(), Json::Null);
            }
        }
        return row;
    }
    for (name, text) in record {
        if name != PLUGIN_HASH_FEATURE {
            row.insert(name.clone(), Json::String(text.clone()));
        }
    }
    row
}

/// Parses an event time as SageMaker accepts it: ISO-8601 / RFC 3339 text, or
/// fractional seconds since the epoch. UTC microseconds.
pub fn parse_event_time(text: &str) -> Result<i64, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc).timestamp_micros());
    }
    // ISO-8601 without an offset: UTC, as SageMaker reads it.
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text.trim_end_matches('Z'), format) {
            return Ok(t.and_utc().timestamp_micros());
        }
    }
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs.abs() < 1e13 => Ok((secs * 1e6).round() as i64),
        _ => Err(format!(
            "`{text}` is not an event time: use ISO-8601 (2024-01-31T12:00:00Z) or seconds \
             since the epoch"
        )),
    }
}

/// UTC microseconds as ISO-8601 text, for messages.
pub fn format_event_time(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| micros.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::Field;

    #[test]
    fn group_names_are_valid_sagemaker_names() {
        let g = GroupRef {
            name: "txn_velocity".into(),
            version: "1.2.0".into(),
            plugin_hash: "h".into(),
            entity_key: "card_id".into(),
        };
        assert_eq!(group_name(&g), "txn-velocity-v1-2-0");
    }

    #[test]
    fn values_survive_the_text_round_trip_by_type() {
        let schema = Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("n", DataType::Float64, true),
            Field::new("i", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]);
        let row: Map<String, Json> =
            serde_json::from_str(r#"{"k":"123","n":-0.0,"i":-9223372036854775808,"s":null}"#)
                .unwrap();
        let record: Vec<(String, String)> = row
            .iter()
            .filter_map(|(k, v)| value_text(v).map(|t| (k.clone(), t)))
            .collect();
        let back = row_from_record(&record, Some(&schema));
        assert_eq!(back, row);
        // A string key that looks like a number stays a string.
        assert_eq!(back["k"], Json::String("123".into()));
    }

    #[test]
    fn event_times_in_every_accepted_form() {
        assert_eq!(parse_event_time("1970-01-01T00:00:01Z"), Ok(1_000_000));
        assert_eq!(parse_event_time("1970-01-01T00:00:01.5"), Ok(1_500_000));
        assert_eq!(parse_event_time("1.25"), Ok(1_250_000));
        assert!(
            parse_event_time("yesterday")
                .unwrap_err()
                .contains("ISO-8601")
        );
        assert!(parse_event_time("NaN").is_err());
    }
}
