//! The one decoding path from raw records into a plugin's input schema.
//!
//! Both hosts and the CLI decode through here, so a value can never be parsed two
//! ways. The rules, per input type:
//!
//! | type | accepted | refused |
//! |---|---|---|
//! | int64 | JSON integers in range | fractions, strings, booleans |
//! | float64 | any JSON number; `"NaN"`, `"Infinity"`, `"-Infinity"` | other strings |
//! | boolean | `true`, `false` | numbers, strings |
//! | string | JSON strings | numbers (no silent coercion) |
//! | timestamp | integer microseconds since the epoch (UTC); RFC 3339 strings with a zone (`Z` or `+hh:mm`) | strings without a zone, fractions |
//!
//! A missing field or `null` is null; null in a non-nullable field (the entity key and
//! the event time always are) is an error. Fields not in the schema are ignored.

use crate::DecodeError;
use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use lockstep_abi::{Manifest, ValueType};
use serde_json::Value as Json;
use std::sync::Arc;

/// One decoded value (`None` = null).
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// int64
    Int64(i64),
    /// float64
    Float64(f64),
    /// boolean
    Boolean(bool),
    /// string
    String(String),
    /// timestamp, UTC microseconds
    Timestamp(i64),
}

fn kind(v: &Json) -> String {
    match v {
        Json::Null => "null".into(),
        Json::Bool(b) => format!("boolean {b}"),
        Json::Number(n) => format!("number {n}"),
        Json::String(s) if s.chars().count() > 40 => {
            format!("string \"{}…\"", s.chars().take(40).collect::<String>())
        }
        Json::String(s) => format!("string \"{s}\""),
        Json::Array(_) => "an array".into(),
        Json::Object(_) => "an object".into(),
    }
}

/// Parses an RFC 3339 timestamp with a zone into UTC microseconds.
pub fn parse_timestamp(s: &str) -> Result<i64, String> {
    let t = chrono::DateTime::parse_from_rfc3339(s.trim())
        .map_err(|e| format!("\"{s}\" is not an RFC 3339 timestamp with a time zone ({e})"))?;
    let secs = t.timestamp();
    let micros = secs
        .checked_mul(1_000_000)
        .and_then(|us| us.checked_add(i64::from(t.timestamp_subsec_micros())))
        .ok_or_else(|| format!("\"{s}\" is out of the representable range"))?;
    if t.timestamp_subsec_nanos() % 1000 != 0 {
        return Err(format!(
            "\"{s}\" has sub-microsecond precision, which would be lost"
        ));
    }
    Ok(micros)
}

/// Decodes one JSON value as `ty`; `Ok(None)` for null.
pub fn parse_json_value(v: &Json, ty: ValueType) -> Result<Option<Scalar>, String> {
    if v.is_null() {
        return Ok(None);
    }
    let wrong = || format!("expected {ty}, got {}", kind(v));
    Ok(Some(match ty {
        ValueType::Int64 => match v {
            Json::Number(n) => match n.as_i64() {
                Some(x) => Scalar::Int64(x),
                None if n.is_u64() => return Err(format!("{n} is out of range for int64")),
                None => return Err(wrong()),
            },
            _ => return Err(wrong()),
        },
        ValueType::Float64 => match v {
            Json::Number(n) => Scalar::Float64(n.as_f64().ok_or_else(wrong)?),
            Json::String(s) => match s.as_str() {
                "NaN" => Scalar::Float64(f64::NAN),
                "Infinity" => Scalar::Float64(f64::INFINITY),
                "-Infinity" => Scalar::Float64(f64::NEG_INFINITY),
                _ => return Err(wrong()),
            },
            _ => return Err(wrong()),
        },
        ValueType::Boolean => Scalar::Boolean(v.as_bool().ok_or_else(wrong)?),
        ValueType::String => Scalar::String(v.as_str().ok_or_else(wrong)?.to_owned()),
        ValueType::Timestamp => match v {
            Json::Number(n) => Scalar::Timestamp(n.as_i64().ok_or_else(|| {
                format!(
                    "expected timestamp (integer microseconds or RFC 3339), got {}",
                    kind(v)
                )
            })?),
            Json::String(s) => Scalar::Timestamp(parse_timestamp(s)?),
            _ => return Err(wrong()),
        },
    }))
}

/// Decodes one text cell (CSV and other text formats) as `ty`, by the same rules as a
/// JSON scalar of that type: integers in range, floats including `NaN`, `Infinity`,
/// `-Infinity`, `true`/`false`, timestamps as integer microseconds or RFC 3339 with a
/// zone. An empty cell is null.
pub fn parse_text(text: &str, ty: ValueType) -> Result<Option<Scalar>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let wrong = || format!("expected {ty}, got \"{text}\"");
    Ok(Some(match ty {
        ValueType::String => Scalar::String(text.to_owned()),
        ValueType::Int64 => Scalar::Int64(text.trim().parse().map_err(|_| wrong())?),
        ValueType::Float64 => match text.trim() {
            "NaN" => Scalar::Float64(f64::NAN),
            "Infinity" => Scalar::Float64(f64::INFINITY),
            "-Infinity" => Scalar::Float64(f64::NEG_INFINITY),
            t if t
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E')) =>
            {
                Scalar::Float64(t.parse().map_err(|_| wrong())?)
            }
            _ => return Err(wrong()),
        },
        ValueType::Boolean => match text.trim() {
            "true" => Scalar::Boolean(true),
            "false" => Scalar::Boolean(false),
            _ => return Err(wrong()),
        },
        ValueType::Timestamp => match text.trim().parse::<i64>() {
            Ok(micros) => Scalar::Timestamp(micros),
            Err(_) => Scalar::Timestamp(parse_timestamp(text)?),
        },
    }))
}

pub(crate) enum ColumnBuilder {
    Int64(Int64Builder),
    Float64(Float64Builder),
    Boolean(BooleanBuilder),
    String(StringBuilder),
    Timestamp(TimestampMicrosecondBuilder),
}

impl ColumnBuilder {
    pub(crate) fn new(ty: ValueType) -> Self {
        match ty {
            ValueType::Int64 => ColumnBuilder::Int64(Int64Builder::new()),
            ValueType::Float64 => ColumnBuilder::Float64(Float64Builder::new()),
            ValueType::Boolean => ColumnBuilder::Boolean(BooleanBuilder::new()),
            ValueType::String => ColumnBuilder::String(StringBuilder::new()),
            ValueType::Timestamp => {
                ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
            }
        }
    }

    pub(crate) fn push(&mut self, v: Option<Scalar>) {
        match (self, v) {
            (ColumnBuilder::Int64(b), Some(Scalar::Int64(x))) => b.append_value(x),
            (ColumnBuilder::Float64(b), Some(Scalar::Float64(x))) => b.append_value(x),
            (ColumnBuilder::Boolean(b), Some(Scalar::Boolean(x))) => b.append_value(x),
            (ColumnBuilder::String(b), Some(Scalar::String(x))) => b.append_value(x),
            (ColumnBuilder::Timestamp(b), Some(Scalar::Timestamp(x))) => b.append_value(x),
            (ColumnBuilder::Int64(b), _) => b.append_null(),
            (ColumnBuilder::Float64(b), _) => b.append_null(),
            (ColumnBuilder::Boolean(b), _) => b.append_null(),
            (ColumnBuilder::String(b), _) => b.append_null(),
            (ColumnBuilder::Timestamp(b), _) => b.append_null(),
        }
    }

    pub(crate) fn finish_array(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Int64(b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(b) => Arc::new(b.finish()),
            ColumnBuilder::Boolean(b) => Arc::new(b.finish()),
            ColumnBuilder::String(b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(b) => Arc::new(b.finish()),
        }
    }
}

/// A record that was refused, with its line and reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// Why (names the line and field).
    pub error: DecodeError,
    /// The raw record, for the rejects file.
    pub raw: String,
}

/// Decodes JSON lines into the input schema of `manifest`, row by row.
pub struct JsonDecoder {
    fields: Vec<(String, ValueType, bool)>,
    schema: arrow_schema::SchemaRef,
    columns: Vec<ColumnBuilder>,
    row: Vec<Option<Scalar>>,
    rows: usize,
}

impl JsonDecoder {
    /// A decoder for `manifest`'s input schema.
    pub fn new(manifest: &Manifest) -> Self {
        JsonDecoder {
            fields: manifest
                .input
                .iter()
                .map(|f| (f.name.clone(), f.ty, f.nullable))
                .collect(),
            schema: crate::schema::input_schema(manifest),
            columns: manifest
                .input
                .iter()
                .map(|f| ColumnBuilder::new(f.ty))
                .collect(),
            row: Vec::with_capacity(manifest.input.len()),
            rows: 0,
        }
    }

    /// Decodes one record (`line` is its 1-based position, for errors). A record is
    /// taken whole or not at all.
    pub fn push_record(&mut self, text: &str, line: u64) -> Result<(), DecodeError> {
        let err = |field: Option<&str>, message: String| DecodeError {
            line,
            field: field.map(str::to_owned),
            message,
        };
        let object: serde_json::Map<String, Json> = match serde_json::from_str(text) {
            Ok(Json::Object(o)) => o,
            Ok(other) => {
                return Err(err(
                    None,
                    format!("expected a JSON object, got {}", kind(&other)),
                ));
            }
            Err(e) => return Err(err(None, format!("malformed JSON: {e}"))),
        };
        self.row.clear();
        for (name, ty, nullable) in &self.fields {
            let value = match object.get(name) {
                Some(v) => parse_json_value(v, *ty).map_err(|m| err(Some(name), m))?,
                None => None,
            };
            if value.is_none() && !nullable {
                return Err(err(Some(name), "is required but missing or null".into()));
            }
            self.row.push(value);
        }
        for (column, value) in self.columns.iter_mut().zip(self.row.drain(..)) {
            column.push(value);
        }
        self.rows += 1;
        Ok(())
    }

    /// Rows decoded since the last [`JsonDecoder::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no rows are pending.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The decoded rows as one batch; the decoder is empty afterwards.
    pub fn finish(&mut self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        self.rows = 0;
        let arrays = self.columns.iter_mut().map(|c| c.finish_array()).collect();
        RecordBatch::try_new(self.schema.clone(), arrays)
    }
}

/// Decodes a whole JSON-lines text. Blank lines are skipped. With `rejects`, bad
/// records are collected there and decoding goes on; without, the first bad record
/// is the error.
pub fn decode_json_lines(
    text: &str,
    manifest: &Manifest,
    mut rejects: Option<&mut Vec<Reject>>,
) -> Result<RecordBatch, DecodeError> {
    let mut decoder = JsonDecoder::new(manifest);
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if let Err(error) = decoder.push_record(line, i as u64 + 1) {
            match rejects.as_deref_mut() {
                Some(out) => out.push(Reject {
                    error,
                    raw: line.to_owned(),
                }),
                None => return Err(error),
            }
        }
    }
    decoder.finish().map_err(|e| DecodeError {
        line: 0,
        field: None,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use lockstep_abi::{Feature, Field, Kind, Value};
    use serde_json::json;

    fn manifest() -> Manifest {
        let f = |n: &str, ty, nullable| Field {
            name: n.into(),
            ty,
            nullable,
            description: String::new(),
        };
        Manifest {
            name: "g".into(),
            version: "1.0.0".into(),
            description: String::new(),
            input: vec![
                f("k", ValueType::String, false),
                f("t", ValueType::Timestamp, false),
                f("x", ValueType::Float64, true),
                f("n", ValueType::Int64, true),
                f("b", ValueType::Boolean, true),
            ],
            entity_key: "k".into(),
            event_time: "t".into(),
            event_id: None,
            features: vec![Feature {
                name: "f".into(),
                ty: ValueType::Int64,
                description: String::new(),
                default_value: Value::Null,
            }],
            kind: Kind::Stateless,
            state_version: 0,
            supports_read: false,
        }
    }

    proptest::proptest! {
        /// Every float that rows print reads back through the decoder to the same
        /// bits: a JSON reader that rounds would corrupt inputs and golden files alike.
        #[test]
        fn printed_floats_decode_to_the_same_bits(bits in proptest::prelude::any::<u64>()) {
            let x = f64::from_bits(bits);
            let text = crate::rows::format_float(x).to_string();
            let line = format!(r#"{{"k":"a","t":0,"x":{text}}}"#);
            let batch = decode_json_lines(&line, &manifest(), None).expect("decodes");
            let back = batch.column(2).as_primitive::<arrow_array::types::Float64Type>().value(0);
            proptest::prop_assert!(back.to_bits() == x.to_bits() || (x.is_nan() && back.is_nan()), "{text} read back as {back:?}");
        }
    }

    #[test]
    fn decimal_text_is_read_exactly() {
        for text in [
            "201.29999999999998",
            "918.8299999999999",
            "2.2250738585072011e-308",
            "0.30000000000000004",
            "5e-324",
        ] {
            let line = format!(r#"{{"k":"a","t":0,"x":{text}}}"#);
            let batch = decode_json_lines(&line, &manifest(), None).expect("decodes");
            let back = batch
                .column(2)
                .as_primitive::<arrow_array::types::Float64Type>()
                .value(0);
            assert_eq!(
                back.to_bits(),
                text.parse::<f64>().map(f64::to_bits).unwrap_or(0),
                "{text}"
            );
        }
    }

    #[test]
    fn values_follow_the_documented_rules() {
        let ok = |v: Json, ty| parse_json_value(&v, ty).expect("accepted");
        assert_eq!(ok(json!(5), ValueType::Float64), Some(Scalar::Float64(5.0)));
        assert!(
            matches!(ok(json!("NaN"), ValueType::Float64), Some(Scalar::Float64(x)) if x.is_nan())
        );
        assert_eq!(
            ok(json!("-Infinity"), ValueType::Float64),
            Some(Scalar::Float64(f64::NEG_INFINITY))
        );
        assert_eq!(
            ok(json!(i64::MIN), ValueType::Int64),
            Some(Scalar::Int64(i64::MIN))
        );
        assert_eq!(
            ok(json!("2024-01-01T00:00:00Z"), ValueType::Timestamp),
            Some(Scalar::Timestamp(1_704_067_200_000_000))
        );
        assert_eq!(
            ok(json!("2024-01-01T01:00:00.5+01:00"), ValueType::Timestamp),
            Some(Scalar::Timestamp(1_704_067_200_500_000))
        );
        assert_eq!(ok(json!(null), ValueType::String), None);
        let bad = |v: Json, ty, msg: &str| {
            let e = parse_json_value(&v, ty).expect_err("refused");
            assert!(e.contains(msg), "`{e}` should contain `{msg}`");
        };
        bad(
            json!(1.5),
            ValueType::Int64,
            "expected int64, got number 1.5",
        );
        bad(json!(u64::MAX), ValueType::Int64, "out of range");
        bad(json!("7"), ValueType::Int64, "got string");
        bad(json!(7), ValueType::String, "expected string, got number 7");
        bad(
            json!("2024-01-01T00:00:00"),
            ValueType::Timestamp,
            "time zone",
        );
        bad(json!(1.5), ValueType::Timestamp, "integer microseconds");
        bad(json!("yes"), ValueType::Boolean, "expected boolean");
        bad(json!("inf"), ValueType::Float64, "expected float64");
    }

    #[test]
    fn text_cells_follow_the_json_rules() {
        let ok = |t: &str, ty| parse_text(t, ty).expect("accepted");
        assert_eq!(ok("", ValueType::Int64), None);
        assert_eq!(ok("-42", ValueType::Int64), Some(Scalar::Int64(-42)));
        assert_eq!(ok("1e3", ValueType::Float64), Some(Scalar::Float64(1000.0)));
        assert_eq!(
            ok("-Infinity", ValueType::Float64),
            Some(Scalar::Float64(f64::NEG_INFINITY))
        );
        assert_eq!(
            ok("2024-01-01T00:00:00Z", ValueType::Timestamp),
            Some(Scalar::Timestamp(1_704_067_200_000_000))
        );
        assert_eq!(ok("17", ValueType::Timestamp), Some(Scalar::Timestamp(17)));
        assert!(parse_text("1.5", ValueType::Int64).is_err());
        assert!(parse_text("inf", ValueType::Float64).is_err());
        assert!(parse_text("yes", ValueType::Boolean).is_err());
        assert!(
            parse_text("2024-01-01 00:00:00", ValueType::Timestamp)
                .unwrap_err()
                .contains("time zone")
        );
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let text = "{\"k\":\"a\",\"t\":1}\n\n{\"k\":\"a\",\"t\":2,\"n\":\"x\"}\n";
        let e = decode_json_lines(text, &manifest(), None).expect_err("bad line 3");
        assert_eq!((e.line, e.field.as_deref()), (3, Some("n")));
        assert_eq!(
            e.to_string(),
            "line 3, field `n`: expected int64, got string \"x\""
        );
        let e = decode_json_lines("{\"k\":\"a\"}", &manifest(), None).expect_err("missing t");
        assert_eq!(
            e.to_string(),
            "line 1, field `t`: is required but missing or null"
        );
        let e = decode_json_lines("{\"k\":", &manifest(), None).expect_err("malformed");
        assert!(e.to_string().starts_with("line 1: malformed JSON"), "{e}");
        let e = decode_json_lines("[1,2]", &manifest(), None).expect_err("array");
        assert!(
            e.to_string()
                .contains("expected a JSON object, got an array"),
            "{e}"
        );
    }

    #[test]
    fn rejects_are_collected_and_good_rows_kept_whole() {
        let text = "{\"k\":\"a\",\"t\":1,\"x\":1}\n{\"k\":\"b\",\"t\":2,\"x\":\"bad\"}\n{\"k\":null,\"t\":3}\n{\"k\":\"c\",\"t\":4,\"extra\":[1]}";
        let mut rejects = Vec::new();
        let batch = decode_json_lines(text, &manifest(), Some(&mut rejects)).expect("decodes");
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(
            rejects.iter().map(|r| r.error.line).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(rejects[0].raw, "{\"k\":\"b\",\"t\":2,\"x\":\"bad\"}");
        assert_eq!(batch.column(2).null_count(), 1, "row c has no x");
    }
}
