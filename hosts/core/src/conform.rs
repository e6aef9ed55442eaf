//! Conforms Arrow columns from typed sources (Parquet, CSV, SQL results) to a plugin's
//! input schema, under the same rules as [`crate::decode`] applies to JSON: widening
//! that loses nothing is done, anything else is an error naming the column.
//!
//! | input type | accepted from |
//! |---|---|
//! | int64 | any signed or unsigned integer that fits |
//! | float64 | any float, any integer |
//! | boolean | boolean |
//! | string | Utf8, LargeUtf8, Utf8View, dictionary of strings |
//! | timestamp | timestamps with a time zone (converted to UTC µs, refusing sub-µs digits), int64 microseconds, RFC 3339 strings with a zone |
//!
//! Naive timestamps (no zone) are refused: the same bytes would mean different instants
//! on different machines. Null in a non-nullable field makes the row a reject.

use crate::decode::{parse_text, parse_timestamp};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampNanosecondType};
use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, TimestampMicrosecondArray};
use arrow_schema::{ArrowError, DataType, SchemaRef, TimeUnit};
use arrow_select::filter::filter_record_batch;
use lockstep_abi::{Manifest, ValueType};
use std::sync::Arc;

/// A column that cannot carry a plugin input field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column `{column}`: {message}")]
pub struct ConformError {
    /// The source column.
    pub column: String,
    /// What is wrong.
    pub message: String,
}

/// A row that was dropped, with its position in the source and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowReject {
    /// 0-based row within the batch given to [`conform`].
    pub row: usize,
    /// The column at fault.
    pub column: String,
    /// Why.
    pub reason: String,
}

fn arrow_cast(array: &dyn Array, to: &DataType) -> Result<ArrayRef, ArrowError> {
    // `safe: false` makes overflow an error instead of a silent null.
    let options = arrow_cast::CastOptions {
        safe: false,
        ..Default::default()
    };
    arrow_cast::cast_with_options(array, to, &options)
}

fn column(
    array: &ArrayRef,
    name: &str,
    ty: ValueType,
) -> Result<(ArrayRef, Option<Vec<String>>), ConformError> {
    let err = |message: String| ConformError {
        column: name.to_owned(),
        message,
    };
    let from = array.data_type().clone();
    let refuse = || {
        err(format!(
            "has type {from}, which cannot carry the plugin's {ty} without loss"
        ))
    };
    let cast = |to: &DataType| arrow_cast(array.as_ref(), to).map_err(|e| err(e.to_string()));
    let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Ok(match ty {
        ValueType::Int64 => match from {
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
                (cast(&DataType::Int64)?, None)
            }
            DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
                (cast(&DataType::Int64)?, None)
            }
            _ => return Err(refuse()),
        },
        ValueType::Float64 => match from {
            DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                (cast(&DataType::Float64)?, None)
            }
            d if d.is_integer() => (cast(&DataType::Float64)?, None),
            _ => return Err(refuse()),
        },
        ValueType::Boolean => match from {
            DataType::Boolean => (array.clone(), None),
            _ => return Err(refuse()),
        },
        ValueType::String => match from {
            DataType::Utf8 => (array.clone(), None),
            DataType::LargeUtf8 | DataType::Utf8View => (cast(&DataType::Utf8)?, None),
            DataType::Dictionary(_, ref v)
                if matches!(
                    v.as_ref(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                ) =>
            {
                (cast(&DataType::Utf8)?, None)
            }
            _ => return Err(refuse()),
        },
        ValueType::Timestamp => match from {
            DataType::Timestamp(unit, Some(_)) => {
                if unit == TimeUnit::Nanosecond {
                    let ns = array.as_primitive::<TimestampNanosecondType>();
                    if ns.iter().flatten().any(|v| v % 1000 != 0) {
                        return Err(err("has sub-microsecond digits, which would be lost".into()));
                    }
                }
                (cast(&utc)?, None)
            }
            DataType::Timestamp(_, None) => {
                return Err(err(
                    "is a timestamp without a time zone; say which instant it is, e.g. \
                     --sql \"SELECT …, CAST(ts AS TIMESTAMP) AT TIME ZONE 'UTC' AS ts FROM source\""
                        .into(),
                ));
            }
            DataType::Int64 => {
                let values = array.as_primitive::<Int64Type>();
                (
                    Arc::new(
                        TimestampMicrosecondArray::new(
                            values.values().clone(),
                            values.nulls().cloned(),
                        )
                        .with_timezone("UTC"),
                    ) as ArrayRef,
                    None,
                )
            }
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                let text = cast(&DataType::Utf8)?;
                let text = text.as_string::<i32>();
                let mut problems = vec![String::new(); text.len()];
                let mut any = false;
                let parsed: TimestampMicrosecondArray = (0..text.len())
                    .map(|i| {
                        if text.is_null(i) {
                            return None;
                        }
                        match parse_timestamp(text.value(i)) {
                            Ok(v) => Some(v),
                            Err(e) => {
                                problems[i] = e;
                                any = true;
                                None
                            }
                        }
                    })
                    .collect();
                (
                    Arc::new(parsed.with_timezone("UTC")) as ArrayRef,
                    any.then_some(problems),
                )
            }
            _ => return Err(refuse()),
        },
    })
}

/// Where the source columns come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceKind {
    /// Typed columns (Parquet, SQL results): only lossless widening.
    #[default]
    Typed,
    /// Text cells (CSV): every string column is parsed by [`parse_text`]'s rules.
    Text,
}

/// Parses a text column into `ty` cell by cell; unparseable cells become per-row
/// problems (an empty string where every cell is fine).
fn parse_text_column(
    text: &arrow_array::StringArray,
    ty: ValueType,
) -> (ArrayRef, Option<Vec<String>>) {
    let mut builder = crate::decode::ColumnBuilder::new(ty);
    let mut problems = vec![String::new(); text.len()];
    let mut any = false;
    for (i, problem) in problems.iter_mut().enumerate() {
        if text.is_null(i) {
            builder.push(None);
            continue;
        }
        match parse_text(text.value(i), ty) {
            Ok(v) => builder.push(v),
            Err(e) => {
                *problem = e;
                any = true;
                builder.push(None);
            }
        }
    }
    (builder.finish_array(), any.then_some(problems))
}

/// Conforms `batch` to `manifest`'s input schema. Rows with a null in a non-nullable
/// field or an unparseable value are dropped and reported; a mistyped column, or a
/// missing one that is not nullable, is an error (a missing nullable column is null,
/// as a missing JSON field is).
pub fn conform(
    batch: &RecordBatch,
    manifest: &Manifest,
    schema: &SchemaRef,
    kind: SourceKind,
) -> Result<(RecordBatch, Vec<RowReject>), ConformError> {
    conform_bounded(batch, manifest, schema, kind, None)
}

/// [`conform`], also rejecting rows whose event time is later than `latest_event_time`
/// (UTC µs; see [`crate::decode::event_time_problem`], the rule JSON lines follow).
pub fn conform_bounded(
    batch: &RecordBatch,
    manifest: &Manifest,
    schema: &SchemaRef,
    kind: SourceKind,
    latest_event_time: Option<i64>,
) -> Result<(RecordBatch, Vec<RowReject>), ConformError> {
    let n = batch.num_rows();
    let mut keep = vec![true; n];
    let mut rejects = Vec::new();
    let mut columns = Vec::with_capacity(manifest.input.len());
    for field in &manifest.input {
        let source = batch.column_by_name(&field.name);
        if source.is_none() && field.nullable {
            columns.push(arrow_array::new_null_array(
                &crate::schema::arrow_type(field.ty),
                n,
            ));
            continue;
        }
        let Some(source) = source else {
            let available: Vec<&str> = batch
                .schema_ref()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            return Err(ConformError {
                column: field.name.clone(),
                message: format!(
                    "is missing from the source (it has: {})",
                    available.join(", ")
                ),
            });
        };
        let (array, problems) = match (kind, source.data_type()) {
            (SourceKind::Text, DataType::Utf8) => {
                parse_text_column(source.as_string::<i32>(), field.ty)
            }
            _ => column(source, &field.name, field.ty)?,
        };
        let keys = (field.name == manifest.entity_key)
            .then(|| array.as_string_opt::<i32>())
            .flatten();
        let times = (field.name == manifest.event_time && latest_event_time.is_some())
            .then(|| array.as_primitive_opt::<arrow_array::types::TimestampMicrosecondType>())
            .flatten();
        for row in 0..n {
            let reason = match &problems {
                Some(p) if !p[row].is_empty() => Some(p[row].clone()),
                _ if !field.nullable && array.is_null(row) => {
                    Some("is required but null".to_owned())
                }
                _ => keys
                    .filter(|k| k.is_valid(row))
                    .and_then(|k| crate::decode::entity_key_problem(k.value(row)))
                    .map(str::to_owned)
                    .or_else(|| {
                        times.filter(|t| t.is_valid(row)).and_then(|t| {
                            crate::decode::event_time_problem(t.value(row), latest_event_time)
                        })
                    }),
            };
            if let Some(reason) = reason
                && keep[row]
            {
                keep[row] = false;
                rejects.push(RowReject {
                    row,
                    column: field.name.clone(),
                    reason,
                });
            }
        }
        columns.push(array);
    }
    let internal = |e: ArrowError| ConformError {
        column: String::new(),
        message: e.to_string(),
    };
    if rejects.is_empty() {
        return Ok((
            RecordBatch::try_new(schema.clone(), columns).map_err(internal)?,
            rejects,
        ));
    }
    // Rejected rows may hold nulls the schema forbids: filter under a relaxed schema,
    // then put the real one back.
    let relaxed = Arc::new(arrow_schema::Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    let all = RecordBatch::try_new(relaxed, columns).map_err(internal)?;
    let kept = filter_record_batch(&all, &BooleanArray::from(keep)).map_err(internal)?;
    let kept = RecordBatch::try_new(schema.clone(), kept.columns().to_vec()).map_err(internal)?;
    rejects.sort_by_key(|r| r.row);
    Ok((kept, rejects))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::input_schema;
    use arrow_array::{
        Float32Array, Int32Array, StringArray, TimestampNanosecondArray, UInt64Array,
    };
    use lockstep_abi::Value;

    fn manifest() -> Manifest {
        Manifest::builder("g", "1.0.0")
            .field("k", ValueType::String, "")
            .field("t", ValueType::Timestamp, "")
            .optional_field("n", ValueType::Int64, "")
            .optional_field("x", ValueType::Float64, "")
            .entity_key("k")
            .event_time("t")
            .feature("f", ValueType::Int64, "", Value::Null)
            .build()
    }

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).expect("batch")
    }

    #[test]
    fn an_empty_entity_key_is_rejected_as_json_lines_reject_it() {
        let m = manifest();
        let b = batch(vec![
            (
                "k",
                Arc::new(StringArray::from(vec!["a", "", "b"])) as ArrayRef,
            ),
            (
                "t",
                Arc::new(StringArray::from(vec!["2024-01-01T00:00:00Z"; 3])),
            ),
        ]);
        // Typed sources (Parquet, JSON) hold "" as a value; in CSV text it is null.
        let (out, rejects) =
            conform(&b, &m, &input_schema(&m), SourceKind::Typed).expect("conform");
        assert_eq!(out.num_rows(), 2);
        assert_eq!(rejects.len(), 1);
        assert_eq!((rejects[0].row, rejects[0].column.as_str()), (1, "k"));
        let json = crate::decode::decode_json_lines(r#"{"k":"","t":2}"#, &m, None)
            .expect_err("an empty key");
        assert_eq!(json.field.as_deref(), Some("k"));
        assert_eq!(json.message, rejects[0].reason, "one rule, one message");
    }

    #[test]
    fn events_beyond_the_latest_time_are_rejected_as_json_lines_reject_them() {
        let m = manifest();
        let b = batch(vec![
            (
                "k",
                Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef,
            ),
            (
                "t",
                Arc::new(StringArray::from(vec!["10", "9999-12-31T23:59:59Z", "11"])),
            ),
        ]);
        let (out, rejects) = conform_bounded(&b, &m, &input_schema(&m), SourceKind::Text, Some(11))
            .expect("conform");
        assert_eq!(out.num_rows(), 2);
        assert_eq!((rejects[0].row, rejects[0].column.as_str()), (1, "t"));
        assert!(
            rejects[0].reason.contains("in the future"),
            "{}",
            rejects[0].reason
        );
        let (all, none) = conform(&b, &m, &input_schema(&m), SourceKind::Text).expect("conform");
        assert_eq!((all.num_rows(), none.len()), (3, 0), "no bound, no refusal");
        let mut decoder = crate::decode::JsonDecoder::new(&m);
        decoder.set_latest_event_time(Some(11));
        let e = decoder
            .push_record(r#"{"k":"b","t":"9999-12-31T23:59:59Z"}"#, 2)
            .expect_err("future");
        assert_eq!(
            (e.field.as_deref(), e.message.as_str()),
            (Some("t"), rejects[0].reason.as_str())
        );
        decoder
            .push_record(r#"{"k":"c","t":11}"#, 3)
            .expect("at the bound");
    }

    #[test]
    fn widens_losslessly_and_parses_text_times_like_json() {
        let m = manifest();
        let b = batch(vec![
            (
                "x",
                Arc::new(Float32Array::from(vec![1.5, 2.0])) as ArrayRef,
            ),
            ("k", Arc::new(StringArray::from(vec!["a", "b"]))),
            ("n", Arc::new(Int32Array::from(vec![Some(7), None]))),
            (
                "t",
                Arc::new(StringArray::from(vec![
                    "2024-01-01T00:00:00Z",
                    "2024-01-01T01:00:00+01:00",
                ])),
            ),
            ("ignored", Arc::new(StringArray::from(vec!["?", "?"]))),
        ]);
        let (out, rejects) =
            conform(&b, &m, &input_schema(&m), SourceKind::Typed).expect("conform");
        assert!(rejects.is_empty());
        assert_eq!(out.schema(), input_schema(&m));
        let t = out
            .column(1)
            .as_primitive::<arrow_array::types::TimestampMicrosecondType>();
        assert_eq!(
            (t.value(0), t.value(1)),
            (1_704_067_200_000_000, 1_704_067_200_000_000)
        );
    }

    #[test]
    fn bad_rows_become_rejects_and_bad_columns_errors() {
        let m = manifest();
        let b = batch(vec![
            (
                "k",
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])) as ArrayRef,
            ),
            (
                "t",
                Arc::new(StringArray::from(vec![
                    "2024-01-01T00:00:00Z",
                    "2024-01-01T00:00:00Z",
                    "noon",
                ])),
            ),
        ]);
        let (out, rejects) =
            conform(&b, &m, &input_schema(&m), SourceKind::Typed).expect("conform");
        assert_eq!(out.num_rows(), 1);
        assert_eq!(
            rejects
                .iter()
                .map(|r| (r.row, r.column.as_str()))
                .collect::<Vec<_>>(),
            vec![(1, "k"), (2, "t")]
        );
        assert!(
            rejects[1]
                .reason
                .contains("\"noon\" is not an RFC 3339 timestamp"),
            "{}",
            rejects[1].reason
        );

        let missing = batch(vec![(
            "k",
            Arc::new(StringArray::from(vec!["a"])) as ArrayRef,
        )]);
        let err = conform(&missing, &m, &input_schema(&m), SourceKind::Typed).expect_err("no t");
        assert_eq!(err.column, "t");
        assert!(
            err.message.contains("missing from the source (it has: k)"),
            "{err}"
        );

        let wrong = batch(vec![
            ("k", Arc::new(Int32Array::from(vec![1])) as ArrayRef),
            (
                "t",
                Arc::new(StringArray::from(vec!["2024-01-01T00:00:00Z"])),
            ),
        ]);
        let err = conform(&wrong, &m, &input_schema(&m), SourceKind::Typed)
            .expect_err("int key for a string field");
        assert_eq!(
            err.to_string(),
            "column `k`: has type Int32, which cannot carry the plugin's string without loss"
        );

        let naive = batch(vec![
            ("k", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
            ("t", Arc::new(TimestampNanosecondArray::from(vec![0]))),
        ]);
        assert!(
            conform(&naive, &m, &input_schema(&m), SourceKind::Typed)
                .expect_err("naive")
                .message
                .contains("without a time zone")
        );

        let big = batch(vec![
            ("k", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
            (
                "t",
                Arc::new(StringArray::from(vec!["2024-01-01T00:00:00Z"])),
            ),
            ("n", Arc::new(UInt64Array::from(vec![u64::MAX]))),
        ]);
        let err = conform(&big, &m, &input_schema(&m), SourceKind::Typed).expect_err("overflow");
        assert_eq!(err.column, "n");
    }

    #[test]
    fn text_sources_parse_every_cell_by_the_shared_rules() {
        let m = manifest();
        let b = batch(vec![
            ("k", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
            (
                "t",
                Arc::new(StringArray::from(vec!["2024-01-01T00:00:00Z", "5"])),
            ),
            ("n", Arc::new(StringArray::from(vec!["", "x"]))),
        ]);
        let (out, rejects) = conform(&b, &m, &input_schema(&m), SourceKind::Text).expect("conform");
        assert_eq!(out.num_rows(), 1);
        assert!(out.column(2).is_null(0), "an empty cell is null");
        assert!(
            out.column(3).is_null(0),
            "a missing nullable column is null"
        );
        assert_eq!((rejects[0].row, rejects[0].column.as_str()), (1, "n"));
    }

    #[test]
    fn sub_microsecond_digits_are_refused() {
        let m = manifest();
        let b = batch(vec![
            ("k", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
            (
                "t",
                Arc::new(TimestampNanosecondArray::from(vec![1_001]).with_timezone("UTC")),
            ),
        ]);
        assert!(
            conform(&b, &m, &input_schema(&m), SourceKind::Typed)
                .expect_err("ns")
                .message
                .contains("sub-microsecond")
        );
    }
}
