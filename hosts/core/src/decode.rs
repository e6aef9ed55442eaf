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
//! the event time always are) is an error. An entity key must not be the empty string
//! ([`entity_key_problem`]: one rule for every host and format). Fields not in the schema are ignored; of a
//! repeated field, the last value counts.
//!
//! JSON records are decoded in one typed pass straight into column values; a record
//! that pass does not take is decoded again through a `serde_json` tree, which holds
//! the reference rules and gives the errors. The typed pass never accepts what the
//! tree pass refuses (a proptest checks it), so the two are one path.

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

/// Decoding straight from JSON text into scalars, by the rules of
/// [`parse_json_value`]. Values arrive through the same `serde_json` parser and visitor
/// calls a JSON tree is built from, so numbers get the same bits; fields outside the
/// schema are walked with `deserialize_any` (not skipped), so what is malformed or
/// nested too deep for a tree is refused here too.
mod typed {
    use super::{Scalar, parse_timestamp};
    use lockstep_abi::ValueType;
    use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::fmt;

    /// Anything this pass does not take; the generic pass says why.
    fn refused<E: de::Error>() -> E {
        E::custom("refused")
    }

    /// A whole record: an object whose schema fields land in `row` by position.
    pub(super) struct RecordSeed<'a> {
        pub(super) fields: &'a [(String, ValueType, bool)],
        pub(super) row: &'a mut Vec<Option<Scalar>>,
    }

    impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for RecordSeed<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(index) = map.next_key_seed(FieldIndex(self.fields))? {
                match index {
                    // A repeated key overwrites: the last value wins, as in a tree.
                    Some(i) => self.row[i] = map.next_value_seed(TypedValue(self.fields[i].1))?,
                    None => map.next_value_seed(Walk)?,
                }
            }
            Ok(())
        }
    }

    /// A key, as its position in the schema (`None` outside it).
    struct FieldIndex<'a>(&'a [(String, ValueType, bool)]);

    impl<'de> DeserializeSeed<'de> for FieldIndex<'_> {
        type Value = Option<usize>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for FieldIndex<'_> {
        type Value = Option<usize>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a field name")
        }
        fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<usize>, E> {
            Ok(self.0.iter().position(|(name, _, _)| name == key))
        }
    }

    /// One schema field's value, decoded as its type.
    struct TypedValue(ValueType);

    impl<'de> DeserializeSeed<'de> for TypedValue {
        type Value = Option<Scalar>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Scalar>, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for TypedValue {
        type Value = Option<Scalar>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a {} value", self.0)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<Scalar>, E> {
            Ok(None)
        }
        fn visit_bool<E: de::Error>(self, b: bool) -> Result<Option<Scalar>, E> {
            match self.0 {
                ValueType::Boolean => Ok(Some(Scalar::Boolean(b))),
                _ => Err(refused()),
            }
        }
        fn visit_i64<E: de::Error>(self, x: i64) -> Result<Option<Scalar>, E> {
            match self.0 {
                ValueType::Int64 => Ok(Some(Scalar::Int64(x))),
                ValueType::Timestamp => Ok(Some(Scalar::Timestamp(x))),
                ValueType::Float64 => Ok(Some(Scalar::Float64(x as f64))),
                _ => Err(refused()),
            }
        }
        fn visit_u64<E: de::Error>(self, x: u64) -> Result<Option<Scalar>, E> {
            match (self.0, i64::try_from(x)) {
                (ValueType::Int64, Ok(x)) => Ok(Some(Scalar::Int64(x))),
                (ValueType::Timestamp, Ok(x)) => Ok(Some(Scalar::Timestamp(x))),
                (ValueType::Float64, _) => Ok(Some(Scalar::Float64(x as f64))),
                _ => Err(refused()),
            }
        }
        fn visit_f64<E: de::Error>(self, x: f64) -> Result<Option<Scalar>, E> {
            match self.0 {
                // A tree holds no non-finite number (it becomes null); the parser
                // never yields one, but the rule is kept the same regardless.
                _ if !x.is_finite() => Ok(None),
                ValueType::Float64 => Ok(Some(Scalar::Float64(x))),
                _ => Err(refused()),
            }
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Option<Scalar>, E> {
            match self.0 {
                ValueType::String => Ok(Some(Scalar::String(s.to_owned()))),
                ValueType::Float64 => match s {
                    "NaN" => Ok(Some(Scalar::Float64(f64::NAN))),
                    "Infinity" => Ok(Some(Scalar::Float64(f64::INFINITY))),
                    "-Infinity" => Ok(Some(Scalar::Float64(f64::NEG_INFINITY))),
                    _ => Err(refused()),
                },
                ValueType::Timestamp => parse_timestamp(s)
                    .map(|t| Some(Scalar::Timestamp(t)))
                    .map_err(|_| refused()),
                _ => Err(refused()),
            }
        }
    }

    /// A value outside the schema, parsed (so it is checked as a tree would be) and
    /// dropped.
    struct Walk;

    impl<'de> DeserializeSeed<'de> for Walk {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Walk {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Walk)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while map.next_key_seed(Walk)?.is_some() {
                map.next_value_seed(Walk)?;
            }
            Ok(())
        }
    }
}

/// Why a string entity key is refused, if it is: the empty string names no entity
/// (and cannot be a Kinesis partition key or a SageMaker record identifier). Every
/// decoding path, JSON lines and typed columns alike, applies this one rule.
pub fn entity_key_problem(key: &str) -> Option<&'static str> {
    key.is_empty()
        .then_some("must not be empty: an entity key names an entity")
}

/// The lead over the host's clock an event time may have by default (`--max-future`):
/// an hour covers producers whose clocks drift, and refuses the year-9999 and
/// next-year typos that would otherwise move a stream's watermark past every real event.
pub const DEFAULT_MAX_FUTURE_MICROS: i64 = 3_600_000_000;

/// Why an event at `time` (UTC µs) is refused when the latest time accepted is
/// `latest` (the host's clock plus its allowed lead), if it is. Both hosts apply this
/// one rule before an event is ordered, so such an event is a reject in the batch host,
/// a dead letter in the stream host, and never moves a watermark.
pub fn event_time_problem(time: i64, latest: Option<i64>) -> Option<String> {
    let latest = latest?;
    let text = |t: i64| match crate::rows::format_timestamp(t) {
        Json::String(s) => s,
        other => other.to_string(),
    };
    (time > latest).then(|| {
        format!(
            "{} is in the future: later than {} (the host's clock plus --max-future)",
            text(time),
            text(latest)
        )
    })
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
    /// The entity key's position in `fields`.
    key: Option<usize>,
    /// The event time's position in `fields`.
    time: Option<usize>,
    /// Events later than this (UTC µs) are refused ([`event_time_problem`]).
    latest_event_time: Option<i64>,
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
            key: manifest.input_index(&manifest.entity_key),
            time: manifest.input_index(&manifest.event_time),
            latest_event_time: None,
        }
    }

    /// Refuses events later than `latest` (UTC µs) from now on; `None` accepts any time.
    pub fn set_latest_event_time(&mut self, latest: Option<i64>) {
        self.latest_event_time = latest;
    }

    /// Decodes one record (`line` is its 1-based position, for errors). A record is
    /// taken whole or not at all.
    pub fn push_record(&mut self, text: &str, line: u64) -> Result<(), DecodeError> {
        // The typed pass decodes straight into scalars; anything it does not accept
        // (a bad record, or a duplicate key whose first value is bad) is decoded
        // again by `decode_generic`, which keeps the one set of rules and
        // error messages. The typed pass never accepts what that one refuses.
        if !self.decode_typed(text) {
            self.decode_generic(text, line)?;
        }
        if let Some(key) = self.key
            && let Some(Some(Scalar::String(value))) = self.row.get(key)
            && let Some(problem) = entity_key_problem(value)
        {
            return Err(DecodeError {
                line,
                field: Some(self.fields[key].0.clone()),
                message: problem.to_owned(),
            });
        }
        if let Some(time) = self.time
            && let Some(Some(Scalar::Timestamp(t))) = self.row.get(time)
            && let Some(problem) = event_time_problem(*t, self.latest_event_time)
        {
            return Err(DecodeError {
                line,
                field: Some(self.fields[time].0.clone()),
                message: problem,
            });
        }
        for (column, value) in self.columns.iter_mut().zip(self.row.drain(..)) {
            column.push(value);
        }
        self.rows += 1;
        Ok(())
    }

    /// Decodes `text` into `self.row` without building a JSON tree; `false` when the
    /// record is not accepted as is (the row is then left in any state).
    fn decode_typed(&mut self, text: &str) -> bool {
        self.row.clear();
        self.row.resize(self.fields.len(), None);
        let mut de = serde_json::Deserializer::from_str(text);
        let seed = typed::RecordSeed {
            fields: &self.fields,
            row: &mut self.row,
        };
        if serde::de::DeserializeSeed::deserialize(seed, &mut de).is_err() || de.end().is_err() {
            return false;
        }
        self.fields
            .iter()
            .zip(&self.row)
            .all(|((_, _, nullable), value)| *nullable || value.is_some())
    }

    /// Decodes `text` into `self.row` through a JSON tree: the reference rules, and
    /// the errors.
    fn decode_generic(&mut self, text: &str, line: u64) -> Result<(), DecodeError> {
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
    use lockstep_abi::Value;
    use serde_json::json;

    fn manifest() -> Manifest {
        Manifest::builder("g", "1.0.0")
            .field("k", ValueType::String, "")
            .field("t", ValueType::Timestamp, "")
            .optional_field("x", ValueType::Float64, "")
            .optional_field("n", ValueType::Int64, "")
            .optional_field("b", ValueType::Boolean, "")
            .entity_key("k")
            .event_time("t")
            .feature("f", ValueType::Int64, "", Value::Null)
            .build()
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

    /// One token of a generated record: valid values of every type, values of the
    /// wrong type, and text a strict parser must refuse.
    fn json_token() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        prop_oneof![
            any::<i64>().prop_map(|x| x.to_string()),
            any::<u64>().prop_map(|x| x.to_string()),
            any::<f64>().prop_map(|x| format!("{x:e}")),
            any::<f64>().prop_map(|x| format!("{x:?}")),
            Just("-0".to_owned()),
            Just("1e400".to_owned()),
            Just("01".to_owned()),
            Just("1.".to_owned()),
            Just("true".to_owned()),
            Just("null".to_owned()),
            Just("\"NaN\"".to_owned()),
            Just("\"-Infinity\"".to_owned()),
            Just("\"inf\"".to_owned()),
            Just("\"2024-01-01T00:00:00.5+01:00\"".to_owned()),
            Just("\"2024-01-01T00:00:00\"".to_owned()),
            Just("\"2024-01-01T00:00:00.0000001Z\"".to_owned()),
            Just("\"caf\\u00e9 \\\"q\\\"\"".to_owned()),
            Just("\"\\ud800\"".to_owned()),
            Just("\"\\x\"".to_owned()),
            Just("[1,{\"a\":[null]}]".to_owned()),
            Just("{\"k\":1}".to_owned()),
            Just(deep(100)),
            Just(deep(200)),
            "[a-z]{0,3}".prop_map(|t| format!("\"{t}\"")),
        ]
    }

    proptest::proptest! {
        /// The typed pass accepts a record only if the reference pass does, with the
        /// same values to the bit; otherwise the reference pass decides.
        #[test]
        fn typed_decoding_agrees_with_the_reference(
            members in proptest::collection::vec(
                (proptest::sample::select(vec!["k", "t", "x", "n", "b", "\\u006b", "extra"]), json_token()),
                0..8,
            ),
            cut in proptest::option::of(0usize..200),
        ) {
            let body: Vec<String> = members.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let mut text = format!("{{{}}}", body.join(","));
            if let Some(cut) = cut {
                let cut = cut.min(text.len());
                if text.is_char_boundary(cut) {
                    text.truncate(cut);
                }
            }
            let m = manifest();
            let (mut typed, mut generic) = (JsonDecoder::new(&m), JsonDecoder::new(&m));
            if typed.decode_typed(&text) {
                let reference = generic.decode_generic(&text, 1);
                proptest::prop_assert!(reference.is_ok(), "{text}: typed accepted, reference said {reference:?}");
                proptest::prop_assert_eq!(format!("{:?}", typed.row), format!("{:?}", generic.row), "{}", text);
            }
        }
    }

    #[test]
    fn typed_decoding_takes_ordinary_records() {
        let m = manifest();
        let mut d = JsonDecoder::new(&m);
        for text in [
            r#"{"k":"a","t":1,"x":1.5,"n":-3,"b":true}"#,
            r#"{"t":"2024-01-01T00:00:00Z","k":"a","x":"NaN","extra":{"deep":[1,[2]]}}"#,
            r#"{"\u006b":"é","t":1,"k":"b","n":null}"#,
        ] {
            assert!(d.decode_typed(text), "{text}");
        }
        assert_eq!(
            d.row[0],
            Some(Scalar::String("b".into())),
            "the last of a repeated key wins"
        );
        assert_eq!(d.row[3], None);
        for text in [
            // A bad first value of a repeated key: the reference pass decides.
            r#"{"k":"a","t":1,"n":"bad","n":2}"#,
            r#"{"k":"a","t":1,"n":1.5}"#,
            r#"{"k":"a"}"#,
            r#"{"k":null,"t":1}"#,
            r#"[1]"#,
            r#"{"k":"a","t":1} x"#,
            r#"{"k":"a","t":1,"extra":"\ud800"}"#,
        ] {
            assert!(!d.decode_typed(text), "{text}");
        }
        let mut batch = JsonDecoder::new(&m);
        batch
            .push_record(r#"{"k":"a","t":1,"n":"bad","n":2}"#, 1)
            .expect("a repeated key's last value decides");
        let e = batch
            .push_record(r#"{"k":"a","t":1,"n":2,"n":"bad"}"#, 2)
            .expect_err("the last value is bad");
        assert_eq!(
            e.to_string(),
            "line 2, field `n`: expected int64, got string \"bad\""
        );
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
