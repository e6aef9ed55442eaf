//! Label rows: numbered in file order and given the instants the match compares.
//!
//! A label time may come as a timestamp of any unit with a zone (an instant: converted
//! exactly), as RFC 3339 text with an offset, or — only when asked — as a timestamp
//! without a zone, read as UTC. Anything else is refused, naming the column: a bare
//! number or a zoneless time has no single meaning, and guessing would shift every
//! label silently.

use crate::asof::AsOf;
use crate::error::{TrainingError, external};
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use futures::StreamExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Added column: the label's row in the file, from 0.
pub(crate) const ROW: &str = "__label_row";
/// Added column: the instant that decides visibility (see [`crate::asof`]).
pub(crate) const BOUND: &str = "__label_bound";
/// Added column: the instant the TTL is measured from.
pub(crate) const AGE_FROM: &str = "__label_age_from";

/// How a label time column is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeKind {
    /// A timestamp with a zone, or one without read as UTC.
    Timestamp(TimeUnit),
    /// RFC 3339 text.
    Text,
}

/// Decides how to read `field` as the label time, or says why it cannot be one.
pub(crate) fn time_kind(field: &Field, assume_utc: bool) -> Result<TimeKind, String> {
    let name = field.name();
    match field.data_type() {
        DataType::Timestamp(unit, Some(_)) => Ok(TimeKind::Timestamp(*unit)),
        DataType::Timestamp(unit, None) if assume_utc => Ok(TimeKind::Timestamp(*unit)),
        DataType::Timestamp(_, None) => Err(format!(
            "label time column `{name}` is a timestamp without a time zone ({}), which names no \
             single instant: store it with its zone (pandas: `.dt.tz_localize(\"UTC\")`) or \
             pass --assume-utc",
            field.data_type()
        )),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Ok(TimeKind::Text),
        other => Err(format!(
            "label time column `{name}` is {other}: it must be a timestamp with a time zone or \
             RFC 3339 text (numbers and dates name no single instant)"
        )),
    }
}

/// The labels' schema after numbering: theirs, then [`ROW`], [`BOUND`], [`AGE_FROM`].
pub(crate) fn numbered_schema(labels: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = labels.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(ROW, DataType::UInt64, false));
    fields.push(Field::new(BOUND, DataType::Int64, false));
    fields.push(Field::new(AGE_FROM, DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// The labels file read in order (one partition), numbered and checked.
#[derive(Debug)]
pub(crate) struct NumberedLabels {
    pub source: Arc<dyn ExecutionPlan>,
    pub schema: SchemaRef,
    pub path: PathBuf,
    /// Columns that must have a value in every row: the groups' entity keys.
    pub keys: Vec<usize>,
    pub time: usize,
    pub kind: TimeKind,
    pub spec: AsOf,
}

impl PartitionStream for NumberedLabels {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let schema = self.schema.clone();
        let stream = match self.source.execute(0, ctx) {
            Ok(s) => s,
            Err(e) => {
                return Box::pin(RecordBatchStreamAdapter::new(
                    schema,
                    futures::stream::once(async { Err(e) }),
                ));
            }
        };
        let (path, keys, time, kind, spec) = (
            self.path.clone(),
            self.keys.clone(),
            self.time,
            self.kind,
            self.spec,
        );
        let names: Vec<String> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mut next_row = 0u64;
        let out = schema.clone();
        let numbered = stream.map(move |batch| {
            let batch = batch?;
            let first = next_row;
            next_row += batch.num_rows() as u64;
            let row_error = |i: usize, message: String| {
                external(TrainingError::LabelRow {
                    path: path.clone(),
                    row: first + i as u64 + 1,
                    message,
                })
            };
            for &k in &keys {
                let column = batch.column(k);
                if column.null_count() > 0 {
                    let i = (0..column.len()).find(|&i| column.is_null(i)).unwrap_or(0);
                    return Err(row_error(
                        i,
                        format!("the entity key `{}` is null", names[k]),
                    ));
                }
            }
            let (bound, age_from) =
                instants(batch.column(time), kind, spec).map_err(|(i, m)| row_error(i, m))?;
            let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
            columns.push(Arc::new(UInt64Array::from_iter_values(
                first..first + batch.num_rows() as u64,
            )));
            columns.push(Arc::new(bound));
            columns.push(Arc::new(age_from));
            Ok(RecordBatch::try_new(out.clone(), columns)?)
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, numbered))
    }
}

/// Each label's visibility bound and TTL reference in µs, exact for any unit: a
/// nanosecond time rounds down for an inclusive bound and up for a strict one, so
/// "at or before" and "strictly before" keep their meaning at the finer grain.
fn instants(
    column: &ArrayRef,
    kind: TimeKind,
    spec: AsOf,
) -> Result<(Int64Array, Int64Array), (usize, String)> {
    let n = column.len();
    let mut micros: Vec<(i64, i64)> = Vec::with_capacity(n); // (rounded down, rounded up)
    let null = |i: usize| (i, "the label time is null".to_owned());
    match kind {
        TimeKind::Text => {
            let text = arrow_cast::cast(column, &DataType::Utf8).map_err(|e| (0, e.to_string()))?;
            let text = text.as_string::<i32>();
            for i in 0..n {
                if text.is_null(i) {
                    return Err(null(i));
                }
                let us = lockstep_core::decode::parse_timestamp(text.value(i))
                    .map_err(|m| (i, format!("label time: {m}")))?;
                micros.push((us, us));
            }
        }
        TimeKind::Timestamp(unit) => {
            // Every unit is an i64 count underneath: read it as one, once per batch.
            let raw = arrow_cast::cast(column, &DataType::Int64).map_err(|e| (0, e.to_string()))?;
            let raw = raw.as_primitive::<Int64Type>();
            let micros_per_unit = match unit {
                TimeUnit::Second => 1_000_000,
                TimeUnit::Millisecond => 1_000,
                TimeUnit::Microsecond | TimeUnit::Nanosecond => 1,
            };
            for i in 0..n {
                if raw.is_null(i) {
                    return Err(null(i));
                }
                let v = raw.value(i);
                let pair = if unit == TimeUnit::Nanosecond {
                    let floor = v.div_euclid(1_000);
                    (floor, floor + i64::from(v.rem_euclid(1_000) != 0))
                } else {
                    let us = v.checked_mul(micros_per_unit).ok_or_else(|| {
                        (
                            i,
                            format!("label time {v} is out of the representable range"),
                        )
                    })?;
                    (us, us)
                };
                micros.push(pair);
            }
        }
    }
    let bound = micros
        .iter()
        .map(|&(floor, ceil)| if spec.inclusive { floor } else { ceil });
    let age_from = micros.iter().map(|&(_, ceil)| ceil);
    Ok((
        Int64Array::from_iter_values(bound),
        Int64Array::from_iter_values(age_from),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::TimestampNanosecondArray;

    #[test]
    fn nanosecond_labels_round_so_that_strict_and_inclusive_stay_exact() {
        let column: ArrayRef =
            Arc::new(TimestampNanosecondArray::from(vec![10_000, 10_500, -1]).with_timezone("UTC"));
        let kind = TimeKind::Timestamp(TimeUnit::Nanosecond);
        let (strict, age) = instants(&column, kind, AsOf::default()).unwrap();
        // A row at 10 µs is strictly before 10.5 µs but not before 10 µs.
        assert_eq!(strict.values().as_ref(), &[10, 11, 0]);
        assert_eq!(age.values().as_ref(), &[10, 11, 0]);
        let inclusive = AsOf {
            inclusive: true,
            ttl: None,
        };
        let (incl, _) = instants(&column, kind, inclusive).unwrap();
        assert_eq!(incl.values().as_ref(), &[10, 10, -1]);
    }

    #[test]
    fn zoneless_numbers_and_dates_are_refused_by_name() {
        let naive = Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), true);
        assert!(
            time_kind(&naive, false)
                .unwrap_err()
                .contains("--assume-utc")
        );
        assert_eq!(
            time_kind(&naive, true),
            Ok(TimeKind::Timestamp(TimeUnit::Millisecond))
        );
        let number = Field::new("t", DataType::Int64, true);
        assert!(
            time_kind(&number, false)
                .unwrap_err()
                .contains("`t` is Int64")
        );
        let date = Field::new("t", DataType::Date32, true);
        assert!(time_kind(&date, false).is_err());
    }

    #[test]
    fn text_times_need_a_zone_and_nulls_name_the_row() {
        let column: ArrayRef = Arc::new(arrow_array::StringArray::from(vec![
            Some("2024-01-01T00:00:00Z"),
            Some("2024-01-01T00:00:00"),
        ]));
        let (i, message) = instants(&column, TimeKind::Text, AsOf::default()).unwrap_err();
        assert_eq!(i, 1);
        assert!(message.contains("time zone"), "{message}");
        let column: ArrayRef = Arc::new(arrow_array::StringArray::from(vec![None::<&str>]));
        assert_eq!(
            instants(&column, TimeKind::Text, AsOf::default())
                .unwrap_err()
                .0,
            0
        );
    }
}
