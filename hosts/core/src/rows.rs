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
    let mut text = Vec::with_capacity(27);
    if write_timestamp(micros, &mut text) {
        // Only ASCII digits and separators were written.
        Json::String(String::from_utf8(text).unwrap_or_default())
    } else {
        Json::from(micros)
    }
}

/// [`format_timestamp`] as text, for messages: RFC 3339 UTC with microseconds, or the
/// integer when out of range.
pub fn timestamp_text(micros: i64) -> String {
    match format_timestamp(micros) {
        Json::String(text) => text,
        other => other.to_string(),
    }
}

/// Appends `micros` as RFC 3339 UTC with microseconds; `false` (nothing written) when
/// chrono cannot represent it. Years 0 to 9999 are written digit by digit (every log
/// line and stored record has one, and a format string is parsed on every call);
/// others go through chrono's formatter, which signs them.
fn write_timestamp(micros: i64, out: &mut Vec<u8>) -> bool {
    use chrono::{Datelike, Timelike};
    let Some(t) = chrono::DateTime::from_timestamp_micros(micros) else {
        return false;
    };
    let year = t.year();
    if !(0..=9999).contains(&year) {
        use std::io::Write as _;
        let _ = write!(out, "{}", t.format("%Y-%m-%dT%H:%M:%S%.6fZ"));
        return true;
    }
    let digits = |out: &mut Vec<u8>, value: u32, width: usize| {
        let mut buf = [b'0'; 6];
        let mut v = value;
        for slot in buf[..width].iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&buf[..width]);
    };
    digits(out, year as u32, 4);
    out.push(b'-');
    digits(out, t.month(), 2);
    out.push(b'-');
    digits(out, t.day(), 2);
    out.push(b'T');
    digits(out, t.hour(), 2);
    out.push(b':');
    digits(out, t.minute(), 2);
    out.push(b':');
    digits(out, t.second(), 2);
    out.push(b'.');
    digits(out, t.timestamp_subsec_micros(), 6);
    out.push(b'Z');
    true
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
        DataType::LargeUtf8 => Json::String(column.as_string::<i64>().value(row).to_owned()),
        DataType::Utf8View => Json::String(column.as_string_view().value(row).to_owned()),
        DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, _) => {
            format_timestamp(column.as_primitive::<TimestampMicrosecondType>().value(row))
        }
        // Source columns of other types (rejects show the record as read): Arrow's
        // own text for the value, never a panic on an unexpected type.
        other => {
            let options = arrow_cast::display::FormatOptions::default();
            match arrow_cast::display::ArrayFormatter::try_new(column, &options) {
                Ok(formatter) => Json::String(formatter.value(row).to_string()),
                Err(_) => Json::String(format!("<a value of type {other}>")),
            }
        }
    }
}

#[cfg(test)]
mod value_tests {
    use super::value_json;
    use arrow_array::{Int32Array, StringViewArray, TimestampNanosecondArray};
    use serde_json::json;

    #[test]
    fn source_values_of_any_type_read_as_their_value() {
        let view = StringViewArray::from(vec![Some("card-7"), None]);
        assert_eq!(value_json(&view, 0), json!("card-7"));
        assert_eq!(value_json(&view, 1), json!(null));
        assert_eq!(value_json(&Int32Array::from(vec![5]), 0), json!("5"));
        let nanos = TimestampNanosecondArray::from(vec![1_704_067_200_000_000_001]);
        assert_eq!(
            value_json(&nanos, 0),
            json!("2024-01-01T00:00:00.000000001")
        );
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

/// A column resolved to its type once, not per cell.
enum TypedColumn<'a> {
    Int64(&'a arrow_array::Int64Array),
    Float64(&'a arrow_array::Float64Array),
    Boolean(&'a arrow_array::BooleanArray),
    Utf8(&'a arrow_array::StringArray),
    Timestamp(&'a arrow_array::TimestampMicrosecondArray),
    Other,
}

/// Writes rows of one batch as the JSON text of [`row_json`] (the same bytes) without
/// building objects: column names quoted and column types resolved once per batch.
pub struct RowWriter<'a> {
    keys: Vec<String>,
    columns: Vec<(&'a dyn Array, TypedColumn<'a>)>,
}

impl<'a> RowWriter<'a> {
    /// A writer of `batch`'s rows.
    pub fn new(batch: &'a RecordBatch) -> Self {
        let columns = batch
            .columns()
            .iter()
            .map(|column| {
                let column = column.as_ref();
                let typed = match column.data_type() {
                    DataType::Int64 => TypedColumn::Int64(column.as_primitive()),
                    DataType::Float64 => TypedColumn::Float64(column.as_primitive()),
                    DataType::Boolean => TypedColumn::Boolean(column.as_boolean()),
                    DataType::Utf8 => TypedColumn::Utf8(column.as_string()),
                    DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, _) => {
                        TypedColumn::Timestamp(column.as_primitive())
                    }
                    _ => TypedColumn::Other,
                };
                (column, typed)
            })
            .collect();
        RowWriter {
            keys: quoted_keys(batch.schema_ref()),
            columns,
        }
    }

    /// Appends row `row` as one JSON object.
    pub fn write(&self, row: usize, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (key, column)) in self.keys.iter().zip(&self.columns).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key.as_bytes());
            out.push(b':');
            Self::cell(column, row, out);
        }
        out.push(b'}');
    }

    /// Appends row `row` as a JSON array of its values in column order: the object of
    /// [`Self::write`] without its keys, for a reader that knows the columns.
    pub fn write_values(&self, row: usize, out: &mut Vec<u8>) {
        out.push(b'[');
        for (i, column) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            Self::cell(column, row, out);
        }
        out.push(b']');
    }

    /// [`Self::write`] into `object` and [`Self::write_values`] into `values`, each
    /// value formatted once.
    fn write_both(&self, row: usize, object: &mut Vec<u8>, values: &mut Vec<u8>) {
        object.push(b'{');
        values.push(b'[');
        for (i, (key, column)) in self.keys.iter().zip(&self.columns).enumerate() {
            if i > 0 {
                object.push(b',');
                values.push(b',');
            }
            object.extend_from_slice(key.as_bytes());
            object.push(b':');
            let start = object.len();
            Self::cell(column, row, object);
            values.extend_from_slice(&object[start..]);
        }
        object.push(b'}');
        values.push(b']');
    }

    fn cell((array, typed): &(&dyn Array, TypedColumn<'_>), row: usize, out: &mut Vec<u8>) {
        if array.is_null(row) {
            out.extend_from_slice(b"null");
        } else {
            write_value(*array, typed, row, out);
        }
    }
}

/// One non-null cell as JSON text: the bytes [`value_json`] serializes to.
fn write_value(array: &dyn Array, column: &TypedColumn<'_>, row: usize, out: &mut Vec<u8>) {
    // Serializing into a Vec cannot fail.
    let _ = match column {
        TypedColumn::Int64(c) => {
            out.extend_from_slice(itoa::Buffer::new().format(c.value(row)).as_bytes());
            Ok(())
        }
        TypedColumn::Float64(c) => {
            let x = c.value(row);
            if x.is_finite() {
                serde_json::to_writer(&mut *out, &x)
            } else {
                serde_json::to_writer(&mut *out, &format_float(x))
            }
        }
        TypedColumn::Boolean(c) => {
            out.extend_from_slice(if c.value(row) { b"true" } else { b"false" });
            Ok(())
        }
        TypedColumn::Utf8(c) => serde_json::to_writer(&mut *out, c.value(row)),
        TypedColumn::Timestamp(c) => {
            let micros = c.value(row);
            out.push(b'"');
            if write_timestamp(micros, out) {
                out.push(b'"');
            } else {
                out.pop();
                out.extend_from_slice(itoa::Buffer::new().format(micros).as_bytes());
            }
            Ok(())
        }
        TypedColumn::Other => serde_json::to_writer(&mut *out, &value_json(array, row)),
    };
}

/// Every row of a batch as the JSON text of [`RowWriter`], formatted once for all
/// the writers that need it (a row log and an online store): one object line per row,
/// and the same row as an array of its values.
#[derive(Debug, Clone, Default)]
pub struct RowsText {
    /// The rows as objects, each followed by `\n`.
    lines: Vec<u8>,
    /// Where each row's line ends (after its `\n`).
    ends: Vec<usize>,
    /// The rows as arrays of values ([`RowWriter::write_values`]), back to back.
    values: Vec<u8>,
    /// Where each row's array ends.
    value_ends: Vec<usize>,
}

impl RowsText {
    /// Formats every row of `batch`.
    pub fn of(batch: &RecordBatch) -> Self {
        let mut text = RowsText::default();
        text.refill(batch);
        text
    }

    /// Formats every row of `batch` in place of the rows held, reusing their memory: a
    /// writer that formats round after round keeps one `RowsText` (buffers of tens of
    /// MB, freshly mapped each time, cost a page fault per 4 KiB).
    pub fn refill(&mut self, batch: &RecordBatch) {
        let writer = RowWriter::new(batch);
        self.lines.clear();
        self.ends.clear();
        self.values.clear();
        self.value_ends.clear();
        self.ends.reserve(batch.num_rows());
        self.value_ends.reserve(batch.num_rows());
        for row in 0..batch.num_rows() {
            writer.write_both(row, &mut self.lines, &mut self.values);
            self.lines.push(b'\n');
            self.ends.push(self.lines.len());
            self.value_ends.push(self.values.len());
        }
    }

    /// How many rows.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Row `row`'s JSON object text, without its newline.
    pub fn row(&self, row: usize) -> &[u8] {
        let line = &self.lines[span(&self.ends, row)];
        &line[..line.len() - 1]
    }

    /// Row `row` as a JSON array of its values, in column order.
    pub fn values(&self, row: usize) -> &[u8] {
        &self.values[span(&self.value_ends, row)]
    }

    /// Every row, each followed by a newline: JSON lines.
    pub fn lines(&self) -> &[u8] {
        &self.lines
    }
}

/// Where item `i` of back-to-back items lies, given where each ends.
fn span(ends: &[usize], i: usize) -> std::ops::Range<usize> {
    (if i == 0 { 0 } else { ends[i - 1] })..ends[i]
}

/// The column names of `schema`, JSON-quoted.
fn quoted_keys(schema: &arrow_schema::Schema) -> Vec<String> {
    schema
        .fields()
        .iter()
        .map(|f| Json::String(f.name().clone()).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_text_holds_each_row_as_written_alone() {
        use arrow_array::{ArrayRef, Float64Array, StringArray};
        let batch = RecordBatch::try_from_iter([
            (
                "k",
                std::sync::Arc::new(StringArray::from(vec![Some("a\"b"), None, Some("é")]))
                    as ArrayRef,
            ),
            (
                "x",
                std::sync::Arc::new(Float64Array::from(vec![Some(0.1), Some(f64::NAN), None])),
            ),
        ])
        .expect("batch");
        let text = RowsText::of(&batch);
        let writer = RowWriter::new(&batch);
        let mut joined = Vec::new();
        assert_eq!(text.len(), 3);
        for row in 0..3 {
            let mut alone = Vec::new();
            writer.write(row, &mut alone);
            assert_eq!(text.row(row), alone.as_slice(), "row {row}");
            let mut values = Vec::new();
            writer.write_values(row, &mut values);
            assert_eq!(text.values(row), values.as_slice(), "row {row}");
            // The array is the object's values, in column order.
            let object: Map<String, Json> = serde_json::from_slice(&alone).expect("object");
            let array: Vec<Json> = serde_json::from_slice(&values).expect("array");
            assert_eq!(
                object.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
                array
            );
            joined.extend_from_slice(&alone);
            joined.push(b'\n');
        }
        assert_eq!(text.lines(), joined.as_slice());
        assert!(RowsText::of(&batch.slice(0, 0)).is_empty());
        // Refilled, it holds the new rows only.
        let mut refilled = RowsText::of(&batch);
        refilled.refill(&batch.slice(1, 2));
        let again = RowsText::of(&batch.slice(1, 2));
        assert_eq!(refilled.lines(), again.lines());
        assert_eq!((refilled.len(), refilled.values(1)), (2, again.values(1)));
    }

    #[test]
    fn timestamps_print_as_chrono_formats_them_at_every_range() {
        let chrono_text = |micros: i64| {
            chrono::DateTime::from_timestamp_micros(micros)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        };
        let mut samples = vec![
            0,
            -1,
            1,
            1_709_251_200_000_000,
            253_402_300_799_999_999, // 9999-12-31T23:59:59.999999
            253_402_300_800_000_000, // year 10000
            -62_167_219_200_000_000, // 0000-01-01
            -62_167_219_200_000_001, // year -1
            i64::MAX,
            i64::MIN,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push(x as i64 >> (x % 12));
        }
        for micros in samples {
            let ours = match format_timestamp(micros) {
                Json::String(s) => Some(s),
                _ => None,
            };
            assert_eq!(ours, chrono_text(micros), "{micros}");
        }
    }

    #[test]
    fn written_rows_are_the_bytes_of_row_json() {
        use arrow_array::{
            BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
        };
        use arrow_schema::{Field, Schema, TimeUnit};
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![
            Field::new("k \"quoted\" é", DataType::Utf8, true),
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("f", DataType::Float64, true),
            Field::new("i", DataType::Int64, true),
            Field::new("b", DataType::Boolean, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("a\"b\\c\n"),
                    None,
                    Some("日本"),
                    Some(""),
                    Some("\u{1}"),
                ])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![
                        Some(0),
                        Some(-1),
                        None,
                        Some(i64::MAX),
                        Some(1_704_067_200_000_001),
                    ])
                    .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from(vec![
                    Some(-0.0),
                    Some(f64::NAN),
                    Some(f64::INFINITY),
                    Some(f64::MIN_POSITIVE / 2.0),
                    Some(0.1 + 0.2),
                ])),
                Arc::new(Int64Array::from(vec![
                    Some(i64::MIN),
                    Some(i64::MAX),
                    None,
                    Some(0),
                    Some(-7),
                ])),
                Arc::new(BooleanArray::from(vec![
                    Some(true),
                    Some(false),
                    None,
                    Some(true),
                    None,
                ])),
            ],
        )
        .unwrap();
        let writer = RowWriter::new(&batch);
        for row in 0..batch.num_rows() {
            let mut out = Vec::new();
            writer.write(row, &mut out);
            let want = Json::Object(row_json(&batch, row)).to_string();
            assert_eq!(String::from_utf8(out).unwrap(), want, "row {row}");
        }
    }

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
