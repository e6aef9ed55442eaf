//! Exact comparison of two sets of emitted rows: the golden check and the skew check.
//!
//! Rows are JSON objects as [`crate::rows`] prints them, so values compare by their
//! exact text: floats print as the shortest text that reads back to the same bits,
//! which makes equal text equal bits (`-0.0` differs from `0.0`; every NaN is the
//! canonical NaN the engine produces). Rows are matched by entity key, event time and
//! their position among the entity's rows at that instant, which is the order the
//! plugin emitted them in.

use crate::rows::row_json;
use arrow_array::RecordBatch;
use serde_json::{Map, Value as Json};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One emitted row, as a JSON object.
pub type Row = Map<String, Json>;

/// The name of the event-time column of emitted rows.
pub const EVENT_TIME: &str = crate::schema::EVENT_TIME;

/// `batches` as rows, keeping only `columns` (in that order); a column a batch lacks
/// is null.
pub fn rows_of(batches: &[RecordBatch], columns: &[String]) -> Vec<Row> {
    let mut out = Vec::new();
    for batch in batches {
        for r in 0..batch.num_rows() {
            let mut all = row_json(batch, r);
            out.push(
                columns
                    .iter()
                    .map(|c| (c.clone(), all.remove(c).unwrap_or(Json::Null)))
                    .collect(),
            );
        }
    }
    out
}

/// The rows a plugin emitted (`batches`, in its row schema) in canonical order, with
/// only the row-schema columns (store columns such as write times are dropped).
pub fn canonical_rows(batches: &[RecordBatch], manifest: &lockstep_abi::Manifest) -> Vec<Row> {
    let columns: Vec<String> = crate::schema::row_schema(manifest)
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut rows = rows_of(batches, &columns);
    canonical_order(&mut rows, &manifest.entity_key);
    rows
}

/// Orders JSON scalars: numbers numerically, strings by bytes (RFC 3339 timestamps
/// thus chronologically), and otherwise by kind.
fn order_json(a: &Json, b: &Json) -> Ordering {
    fn rank(v: &Json) -> u8 {
        match v {
            Json::Null => 0,
            Json::Bool(_) => 1,
            Json::Number(_) => 2,
            Json::String(_) => 3,
            Json::Array(_) => 4,
            Json::Object(_) => 5,
        }
    }
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => x
                .as_f64()
                .unwrap_or(f64::NAN)
                .total_cmp(&y.as_f64().unwrap_or(f64::NAN)),
        },
        (Json::String(x), Json::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        _ => rank(a)
            .cmp(&rank(b))
            .then_with(|| a.to_string().cmp(&b.to_string())),
    }
}

fn field<'a>(row: &'a Row, name: &str) -> &'a Json {
    row.get(name).unwrap_or(&Json::Null)
}

/// Puts rows in canonical order: by entity key, then event time; rows that tie keep
/// their order (the order the plugin emitted them in), so sort each host's output
/// from an order that keeps an entity's rows in emission order.
pub fn canonical_order(rows: &mut [Row], key: &str) {
    rows.sort_by(|a, b| {
        order_json(field(a, key), field(b, key))
            .then_with(|| order_json(field(a, EVENT_TIME), field(b, EVENT_TIME)))
    });
}

/// One difference between the two sides.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    /// The entity key.
    pub entity: Json,
    /// The row's event time.
    pub event_time: Json,
    /// The row's position among the entity's rows at that instant.
    pub nth: usize,
    /// The differing column, or `None` when the whole row is on one side only.
    pub column: Option<String>,
    /// The left side's value (`None`: no such row on the left).
    pub left: Option<Json>,
    /// The right side's value (`None`: no such row on the right).
    pub right: Option<Json>,
}

/// The outcome of [`compare`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Comparison {
    /// Rows on the left.
    pub left_rows: usize,
    /// Rows on the right.
    pub right_rows: usize,
    /// Distinct entities across both sides.
    pub entities: usize,
    /// Rows on both sides whose values differ in at least one column.
    pub differing_rows: usize,
    /// Rows on the left only.
    pub only_left: usize,
    /// Rows on the right only.
    pub only_right: usize,
    /// Differing values per column.
    pub per_column: BTreeMap<String, usize>,
    /// The first differences, in canonical order.
    pub first: Vec<Mismatch>,
}

impl Comparison {
    /// Whether the two sides are identical.
    pub fn identical(&self) -> bool {
        self.differing_rows == 0 && self.only_left == 0 && self.only_right == 0
    }

    /// A readable account of the differences, naming the sides `left` and `right`.
    pub fn render(&self, left: &str, right: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} rows in {left}, {} in {right}, {} entities: {} rows differ, {} only in {left}, {} only in {right}",
            self.left_rows,
            self.right_rows,
            self.entities,
            self.differing_rows,
            self.only_left,
            self.only_right
        );
        if !self.per_column.is_empty() {
            let _ = writeln!(out, "differing values per column:");
            for (column, n) in &self.per_column {
                let _ = writeln!(out, "  {column:<32} {n}");
            }
        }
        if !self.first.is_empty() {
            let _ = writeln!(out, "first differences:");
        }
        let show = |v: &Option<Json>| match v {
            Some(v) => v.to_string(),
            None => "(no row)".to_owned(),
        };
        for m in &self.first {
            let nth = if m.nth > 0 {
                format!(" (row {} at that time)", m.nth + 1)
            } else {
                String::new()
            };
            match &m.column {
                Some(column) => {
                    let _ = writeln!(
                        out,
                        "  entity {} at {}{nth}: {column}: {left} {}, {right} {}",
                        m.entity,
                        m.event_time,
                        show(&m.left),
                        show(&m.right)
                    );
                }
                None => {
                    let side = if m.left.is_some() { left } else { right };
                    let _ = writeln!(
                        out,
                        "  entity {} at {}{nth}: a row only in {side}: {}",
                        m.entity,
                        m.event_time,
                        show(if m.left.is_some() { &m.left } else { &m.right })
                    );
                }
            }
        }
        out
    }
}

/// Compares `left` and `right`, both in [canonical order](canonical_order), on every
/// column either side has; keeps the first `keep` differences.
pub fn compare(key: &str, left: &[Row], right: &[Row], keep: usize) -> Comparison {
    let mut c = Comparison {
        left_rows: left.len(),
        right_rows: right.len(),
        ..Comparison::default()
    };
    // Position of each row among its entity's rows at the same instant.
    let nths = |rows: &[Row]| -> Vec<usize> {
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let same = i > 0
                && field(&rows[i - 1], key) == field(row, key)
                && field(&rows[i - 1], EVENT_TIME) == field(row, EVENT_TIME);
            out.push(if same { out[i - 1] + 1 } else { 0 });
        }
        out
    };
    let (left_nth, right_nth) = (nths(left), nths(right));
    let position =
        |row: &Row, nth: usize| (field(row, key).clone(), field(row, EVENT_TIME).clone(), nth);
    let mut last_entity: Option<Json> = None;
    let mut count_entity = |entity: &Json, c: &mut Comparison| {
        if last_entity.as_ref() != Some(entity) {
            c.entities += 1;
            last_entity = Some(entity.clone());
        }
    };
    let (mut i, mut j) = (0, 0);
    while i < left.len() || j < right.len() {
        let ord = match (left.get(i), right.get(j)) {
            (Some(l), Some(r)) => order_json(field(l, key), field(r, key))
                .then_with(|| order_json(field(l, EVENT_TIME), field(r, EVENT_TIME)))
                .then_with(|| left_nth[i].cmp(&right_nth[j])),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match ord {
            Ordering::Equal => {
                let (l, r) = (&left[i], &right[j]);
                count_entity(field(l, key), &mut c);
                let mut differs = false;
                let mut columns: Vec<&String> = l.keys().collect();
                columns.extend(r.keys().filter(|k| !l.contains_key(*k)));
                for column in columns {
                    let (a, b) = (l.get(column), r.get(column));
                    if a.map(Json::to_string) != b.map(Json::to_string) {
                        differs = true;
                        *c.per_column.entry(column.clone()).or_default() += 1;
                        if c.first.len() < keep {
                            let (entity, event_time, nth) = position(l, left_nth[i]);
                            c.first.push(Mismatch {
                                entity,
                                event_time,
                                nth,
                                column: Some(column.clone()),
                                left: a.cloned(),
                                right: b.cloned(),
                            });
                        }
                    }
                }
                c.differing_rows += usize::from(differs);
                i += 1;
                j += 1;
            }
            Ordering::Less => {
                count_entity(field(&left[i], key), &mut c);
                c.only_left += 1;
                if c.first.len() < keep {
                    let (entity, event_time, nth) = position(&left[i], left_nth[i]);
                    c.first.push(Mismatch {
                        entity,
                        event_time,
                        nth,
                        column: None,
                        left: Some(Json::Object(left[i].clone())),
                        right: None,
                    });
                }
                i += 1;
            }
            Ordering::Greater => {
                count_entity(field(&right[j], key), &mut c);
                c.only_right += 1;
                if c.first.len() < keep {
                    let (entity, event_time, nth) = position(&right[j], right_nth[j]);
                    c.first.push(Mismatch {
                        entity,
                        event_time,
                        nth,
                        column: None,
                        left: None,
                        right: Some(Json::Object(right[j].clone())),
                    });
                }
                j += 1;
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(entity: &str, time: &str, x: Json) -> Row {
        let Json::Object(m) = json!({"id": entity, "event_time": time, "x": x}) else {
            unreachable!("a literal object")
        };
        m
    }

    #[test]
    fn identical_sides_compare_equal_and_count_entities() {
        let mut a = vec![
            row("b", "2024-01-01T00:00:00.000000Z", json!(1.5)),
            row("a", "2024-01-01T00:00:01.000000Z", json!(2.0)),
            row("a", "2024-01-01T00:00:00.000000Z", json!(3.0)),
        ];
        canonical_order(&mut a, "id");
        assert_eq!(a[0]["x"], json!(3.0));
        let c = compare("id", &a, &a, 10);
        assert!(c.identical(), "{}", c.render("l", "r"));
        assert_eq!((c.left_rows, c.entities), (3, 2));
    }

    #[test]
    fn values_compare_by_bits_and_differences_are_located() {
        let t = "2024-01-01T00:00:00.000000Z";
        let left = vec![
            row("a", t, json!(0.0)),
            row("a", t, json!(0.30000000000000004)),
            row("b", t, json!("NaN")),
        ];
        let right = vec![
            row("a", t, json!(-0.0)),
            row("a", t, json!(0.3)),
            row("c", t, json!(1)),
        ];
        let c = compare("id", &left, &right, 10);
        assert!(!c.identical());
        assert_eq!((c.differing_rows, c.only_left, c.only_right), (2, 1, 1));
        assert_eq!(c.per_column.get("x"), Some(&2));
        assert_eq!(c.first[1].nth, 1, "the second row at that instant");
        assert_eq!(c.first[1].right, Some(json!(0.3)));
        let text = c.render("batch", "stream");
        assert!(
            text.contains("x: batch 0.30000000000000004, stream 0.3"),
            "{text}"
        );
        assert!(text.contains("a row only in batch"), "{text}");
        assert!(text.contains("a row only in stream"), "{text}");
    }

    #[test]
    fn a_missing_column_is_a_difference() {
        let t = "2024-01-01T00:00:00.000000Z";
        let left = vec![row("a", t, json!(1))];
        let mut right = left.clone();
        right[0].insert("extra".into(), json!(null));
        let c = compare("id", &left, &right, 10);
        assert_eq!(c.per_column.get("extra"), Some(&1));
    }
}
