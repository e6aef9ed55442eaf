//! Event order and duplicates (the contract's section 4).
//!
//! Per entity, events are applied in ascending `(event_time, event_id)`, ids compared
//! **by value**: int64 and timestamps numerically, strings by their UTF-8 bytes,
//! `false` before `true` — what `ORDER BY event_time, event_id NULLS LAST` gives in
//! DuckDB, Spark or Postgres. Events whose id is null (or whose plugin declares no id
//! field) come after the declared ids of their instant, ordered by a 128-bit hash of
//! their canonical encoding (every input field, in schema order, with its type and
//! null-ness): an arbitrary but fixed order, the same in every host.
//!
//! Events with equal ids are applied once: the first in that order is kept, and if two
//! share id and time the tie is broken by the content hash, so the survivor never
//! depends on arrival order. Identity (duplicates) uses the 128-bit hash of the id's
//! canonical bytes; order uses the value.

use crate::CoreError;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use arrow_array::{
    Array, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow_schema::{DataType, TimeUnit};
use lockstep_abi::Manifest;
use std::collections::{HashMap, HashSet};
use xxhash_rust::xxh3::{Xxh3, xxh3_128};

/// The events of a batch in application order, grouped by entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ordered {
    /// Row indices into the batch, in application order, duplicates removed.
    pub indices: Vec<u32>,
    /// Start of each entity's run in `indices`; runs are ordered by entity key.
    pub entity_starts: Vec<usize>,
    /// How many events were dropped as duplicates.
    pub duplicates: usize,
}

impl Ordered {
    /// The `[start, end)` ranges of `indices` for each entity.
    pub fn entity_ranges(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let ends = self
            .entity_starts
            .iter()
            .skip(1)
            .copied()
            .chain([self.indices.len()]);
        self.entity_starts.iter().copied().zip(ends)
    }
}

/// A column as the canonical bytes its values hash as: a tag byte (`0xff` for a null),
/// then the value: 8 little-endian bytes (a float by its bits), a boolean's byte, or a
/// string's length (8 bytes) and its UTF-8. Every id and content hash of every host
/// comes from these bytes.
enum Canonical<'a> {
    Int64(&'a Int64Array),
    Float64(&'a Float64Array),
    Boolean(&'a BooleanArray),
    Utf8(&'a StringArray),
    Timestamp(&'a TimestampMicrosecondArray),
    /// Any other type: its tag alone.
    Other(&'a dyn Array),
}

impl<'a> Canonical<'a> {
    fn of(column: &'a dyn Array) -> Self {
        match column.data_type() {
            DataType::Int64 => Canonical::Int64(column.as_primitive()),
            DataType::Float64 => Canonical::Float64(column.as_primitive()),
            DataType::Boolean => Canonical::Boolean(column.as_boolean()),
            DataType::Utf8 => Canonical::Utf8(column.as_string()),
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                Canonical::Timestamp(column.as_primitive())
            }
            _ => Canonical::Other(column),
        }
    }

    fn array(&self) -> &'a dyn Array {
        match self {
            Canonical::Int64(c) => *c,
            Canonical::Float64(c) => *c,
            Canonical::Boolean(c) => *c,
            Canonical::Utf8(c) => *c,
            Canonical::Timestamp(c) => *c,
            Canonical::Other(c) => *c,
        }
    }

    /// Appends the canonical bytes of the value at `row`.
    fn write(&self, row: usize, out: &mut Vec<u8>) {
        if self.array().is_null(row) {
            out.push(0xff);
            return;
        }
        match self {
            Canonical::Int64(c) => {
                out.push(0);
                out.extend_from_slice(&c.value(row).to_le_bytes());
            }
            Canonical::Float64(c) => {
                out.push(1);
                out.extend_from_slice(&c.value(row).to_bits().to_le_bytes());
            }
            Canonical::Boolean(c) => out.extend_from_slice(&[2, c.value(row) as u8]),
            Canonical::Utf8(c) => {
                let s = c.value(row);
                out.push(3);
                out.extend_from_slice(&(s.len() as u64).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Canonical::Timestamp(c) => {
                out.push(4);
                out.extend_from_slice(&c.value(row).to_le_bytes());
            }
            Canonical::Other(_) => out.push(0xfe),
        }
    }
}

/// The one-shot hash of `prefix` then the canonical bytes of `row` in each column.
/// (One-shot over a row's bytes, not a streaming hasher per value: a 10M-event
/// backfill spent ~4 % of its CPU in the streaming form.)
fn hash_row(columns: &[Canonical<'_>], row: usize, prefix: &[u8], bytes: &mut Vec<u8>) -> u128 {
    bytes.clear();
    bytes.extend_from_slice(prefix);
    for column in columns {
        column.write(row, bytes);
    }
    xxh3_128(bytes)
}

/// [`hash_row`] of every row.
fn hash_rows(columns: &[&dyn Array], n: usize, prefix: &[u8]) -> Vec<u128> {
    let columns: Vec<Canonical<'_>> = columns.iter().map(|c| Canonical::of(*c)).collect();
    let mut bytes = Vec::new();
    (0..n)
        .map(|row| hash_row(&columns, row, prefix, &mut bytes))
        .collect()
}

/// Hash of the whole event: every column of the batch in order.
pub fn content_hash(batch: &RecordBatch, row: usize) -> u128 {
    let columns: Vec<Canonical<'_>> = batch
        .columns()
        .iter()
        .map(|c| Canonical::of(c.as_ref()))
        .collect();
    hash_row(&columns, row, b"", &mut Vec::new())
}

/// [`content_hash`] of every row of `batch`, each column's type looked at once.
pub fn content_hashes(batch: &RecordBatch) -> Vec<u128> {
    let columns: Vec<&dyn Array> = batch.columns().iter().map(|c| c.as_ref()).collect();
    hash_rows(&columns, batch.num_rows(), b"")
}

/// [`declared_id`] of every row of `batch`.
pub fn declared_ids(batch: &RecordBatch, id_column: Option<usize>) -> Vec<Option<u128>> {
    let n = batch.num_rows();
    match id_column {
        Some(c) => {
            let column = batch.column(c).as_ref();
            hash_rows(&[column], n, b"id")
                .into_iter()
                .enumerate()
                .map(|(row, h)| column.is_valid(row).then_some(h))
                .collect()
        }
        None => vec![None; n],
    }
}

/// [`event_id`] of every row of `batch`; content hashes are computed only when some
/// row has no declared id.
pub fn event_ids(batch: &RecordBatch, id_column: Option<usize>) -> Vec<u128> {
    let declared = declared_ids(batch, id_column);
    if declared.iter().all(Option::is_some) {
        return declared.into_iter().flatten().collect();
    }
    declared
        .into_iter()
        .zip(content_hashes(batch))
        .map(|(declared, content)| declared.unwrap_or(content))
        .collect()
}

/// One 128-bit hash of an entity and an event id: the identity of an event within a
/// stream, for sets that would otherwise hold the key text. Two events confused by it
/// are as unlikely as two contents with one [`content_hash`].
pub fn identity(key: &crate::key::EntityKey, id: u128) -> u128 {
    use crate::key::EntityKey;
    let mut h = Xxh3::new();
    match key {
        EntityKey::Str(s) => {
            h.update(&[3]);
            h.update(s.as_bytes());
        }
        EntityKey::Int(i) => {
            h.update(&[0]);
            h.update(&i.to_le_bytes());
        }
    }
    h.update(&id.to_le_bytes());
    h.digest128()
}

/// The hash of `row`'s declared id field; `None` when the manifest declares none or
/// the field is null (the content hash is then the id, see [`event_id`]).
pub fn declared_id(batch: &RecordBatch, id_column: Option<usize>, row: usize) -> Option<u128> {
    match id_column {
        Some(c) if batch.column(c).is_valid(row) => Some(hash_row(
            &[Canonical::of(batch.column(c).as_ref())],
            row,
            b"id",
            &mut Vec::new(),
        )),
        _ => None,
    }
}

/// The event id of `row`: the declared id field if present and not null, else the
/// content hash.
pub fn event_id(batch: &RecordBatch, id_column: Option<usize>, row: usize, content: u128) -> u128 {
    declared_id(batch, id_column, row).unwrap_or(content)
}

/// Column holding each event's identity (the 128-bit hash of its declared id, else its
/// content hash), appended by [`with_order_columns`]: what duplicates are recognised by.
/// It is not a sort key: ids order by value (see [`sort_columns`]).
pub const EVENT_ID_COLUMN: &str = "__lockstep_event_id";
/// Column holding each event's content hash: the last sort key, which orders events
/// without an id and breaks ties between equal ids.
pub const CONTENT_COLUMN: &str = "__lockstep_content";

/// The latest event time among `events` (in `manifest`'s input schema), `None` when
/// there is none: the end of a finite input, up to which the batch host wakes entities
/// after their last event (see `lockstep_abi::timers`).
pub fn latest_event_time(
    events: &RecordBatch,
    manifest: &Manifest,
) -> Result<Option<i64>, CoreError> {
    let column = manifest
        .input_index(&manifest.event_time)
        .and_then(|i| events.columns().get(i))
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        .ok_or_else(|| {
            CoreError::Input(format!(
                "no timestamp column `{}` among the events",
                manifest.event_time
            ))
        })?;
    Ok(column.iter().flatten().max())
}

/// The columns a sort engine orders events by, all ascending with **nulls last**: the
/// entity key, the event time, the declared event id (by value, when the manifest
/// declares one), then [`CONTENT_COLUMN`]. Sorting a batch made by
/// [`with_order_columns`] this way gives the order [`order_events`] gives.
pub fn sort_columns(manifest: &Manifest) -> Vec<&str> {
    let mut columns = vec![manifest.entity_key.as_str(), manifest.event_time.as_str()];
    if let Some(id) = &manifest.event_id {
        columns.push(id.as_str());
    }
    columns.push(CONTENT_COLUMN);
    columns
}

/// The Arrow type of [`EVENT_ID_COLUMN`] and [`CONTENT_COLUMN`]: a 128-bit integer,
/// which sorts, gathers and row-encodes as a fixed-width primitive. (As 16-byte
/// `FixedSizeBinary` the sort's gather took Arrow's slow generic path: 2.5 % of a
/// backfill's CPU.) Values are stored by [`order_value`], which keeps their order.
pub const ORDER_COLUMN_TYPE: DataType = DataType::Decimal128(38, 0);

/// An unsigned 128-bit id or hash as stored in an order column: the top bit flipped,
/// so that signed order of the stored values is unsigned order of the originals.
pub fn order_value(v: u128) -> i128 {
    (v ^ (1 << 127)) as i128
}

/// The fields of [`EVENT_ID_COLUMN`] and [`CONTENT_COLUMN`], as
/// [`with_order_columns`] appends them.
pub fn order_fields() -> [arrow_schema::Field; 2] {
    [
        arrow_schema::Field::new(EVENT_ID_COLUMN, ORDER_COLUMN_TYPE, false),
        arrow_schema::Field::new(CONTENT_COLUMN, ORDER_COLUMN_TYPE, false),
    ]
}

/// The id or hash an order column value stands for (inverse of [`order_value`]).
pub fn from_order_value(v: i128) -> u128 {
    (v as u128) ^ (1 << 127)
}

/// `batch` (in `manifest`'s input schema) with [`EVENT_ID_COLUMN`] and
/// [`CONTENT_COLUMN`] appended. Sorting by [`sort_columns`] gives the order
/// [`order_events`] gives; [`EVENT_ID_COLUMN`] then tells duplicates apart.
pub fn with_order_columns(
    batch: &RecordBatch,
    manifest: &Manifest,
) -> Result<RecordBatch, CoreError> {
    use arrow_array::Decimal128Array;
    let id_col = manifest
        .event_id
        .as_deref()
        .and_then(|id| manifest.input_index(id));
    let n = batch.num_rows();
    let hashes = content_hashes(batch);
    let declared = declared_ids(batch, id_col);
    let mut ids = Vec::with_capacity(n);
    let mut contents = Vec::with_capacity(n);
    for (content, declared) in hashes.into_iter().zip(declared) {
        ids.push(order_value(declared.unwrap_or(content)));
        contents.push(order_value(content));
    }
    let ids = Decimal128Array::from(ids).with_data_type(ORDER_COLUMN_TYPE);
    let contents = Decimal128Array::from(contents).with_data_type(ORDER_COLUMN_TYPE);
    let mut fields: Vec<arrow_schema::FieldRef> =
        batch.schema_ref().fields().iter().cloned().collect();
    fields.extend(order_fields().map(std::sync::Arc::new));
    let mut columns = batch.columns().to_vec();
    columns.push(std::sync::Arc::new(ids));
    columns.push(std::sync::Arc::new(contents));
    Ok(RecordBatch::try_new(
        std::sync::Arc::new(arrow_schema::Schema::new(fields)),
        columns,
    )?)
}

/// Orders the events of `batch` (in `manifest`'s input schema) per the contract and
/// drops duplicates.
pub fn order_events(batch: &RecordBatch, manifest: &Manifest) -> Result<Ordered, CoreError> {
    let col = |name: &str| {
        manifest
            .input_index(name)
            .ok_or_else(|| CoreError::Input(format!("manifest has no input field `{name}`")))
    };
    let key_col = batch.column(col(&manifest.entity_key)?);
    let time_col = batch.column(col(&manifest.event_time)?);
    let id_col = manifest.event_id.as_deref().map(col).transpose()?;
    if key_col.null_count() > 0 || time_col.null_count() > 0 {
        return Err(CoreError::Input(format!(
            "entity key `{}` and event time `{}` must not be null",
            manifest.entity_key, manifest.event_time
        )));
    }
    let times = time_col
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| {
            CoreError::Input(format!(
                "`{}` is not a timestamp column",
                manifest.event_time
            ))
        })?;

    // Rank entities by key so the output order is a function of the keys alone.
    let n = batch.num_rows();
    let mut entity_of = vec![0u32; n];
    match key_col.data_type() {
        DataType::Utf8 => {
            let keys = key_col.as_string::<i32>();
            let mut ids: HashMap<&str, u32> = HashMap::new();
            for (row, slot) in entity_of.iter_mut().enumerate() {
                let next = ids.len() as u32;
                *slot = *ids.entry(keys.value(row)).or_insert(next);
            }
            remap_by_rank(&mut entity_of, ids.into_iter().collect());
        }
        DataType::Int64 => {
            let keys = key_col.as_primitive::<Int64Type>();
            let mut ids: HashMap<i64, u32> = HashMap::new();
            for (row, slot) in entity_of.iter_mut().enumerate() {
                let next = ids.len() as u32;
                *slot = *ids.entry(keys.value(row)).or_insert(next);
            }
            remap_by_rank(&mut entity_of, ids.into_iter().collect());
        }
        other => {
            return Err(CoreError::Input(format!(
                "entity key of type {other} is not supported"
            )));
        }
    }

    // Sorted by (entity, time, id rank, content, row): the rank is the declared id's
    // place by value (nulls last, equal ids equal). The content hash only decides among
    // events equal in (entity, time, rank), so it is computed for those alone: with a
    // declared id most events need none. Events without an id share the last rank and
    // are ordered by their content hash, which is their id.
    let declared = declared_ids(batch, id_col);
    let ranks = match id_col {
        Some(c) => value_ranks(batch.column(c).as_ref())?,
        None => vec![u32::MAX; n],
    };
    let contents = declared
        .iter()
        .any(Option::is_none)
        .then(|| content_hashes(batch));
    let mut keyed: Vec<(u32, i64, u32, u128, u32)> = (0..n)
        .map(|row| {
            let content = match declared[row] {
                Some(_) => 0,
                None => contents
                    .as_ref()
                    .map_or_else(|| content_hash(batch, row), |c| c[row]),
            };
            (
                entity_of[row],
                times.value(row),
                ranks[row],
                content,
                row as u32,
            )
        })
        .collect();
    keyed.sort_unstable();
    let mut at = 0;
    while at < keyed.len() {
        let (entity, time, rank, _, _) = keyed[at];
        let end = at
            + keyed[at..]
                .iter()
                .take_while(|k| (k.0, k.1, k.2) == (entity, time, rank))
                .count();
        if end - at > 1 && rank != u32::MAX {
            for k in &mut keyed[at..end] {
                k.3 = match &contents {
                    Some(contents) => contents[k.4 as usize],
                    None => content_hash(batch, k.4 as usize),
                };
            }
            keyed[at..end].sort_unstable();
        }
        at = end;
    }

    let mut indices = Vec::with_capacity(n);
    let mut entity_starts = Vec::new();
    let mut seen: HashSet<u128> = HashSet::new();
    let mut current = None;
    let mut duplicates = 0;
    for (entity, _, _, content, row) in keyed {
        let id = declared[row as usize].unwrap_or(content);
        if current != Some(entity) {
            current = Some(entity);
            seen.clear();
            entity_starts.push(indices.len());
        }
        if seen.insert(id) {
            indices.push(row);
        } else {
            duplicates += 1;
        }
    }
    Ok(Ordered {
        indices,
        entity_starts,
        duplicates,
    })
}

/// Each row's rank among the column's values, by value (Arrow's order, the one the
/// batch host's sort uses); equal values share a rank and nulls get `u32::MAX`.
fn value_ranks(column: &dyn Array) -> Result<Vec<u32>, CoreError> {
    let options = arrow_schema::SortOptions {
        descending: false,
        nulls_first: false,
    };
    let mut ranks = arrow_ord::rank::rank(column, Some(options))?;
    for (row, rank) in ranks.iter_mut().enumerate() {
        if column.is_null(row) {
            *rank = u32::MAX;
        }
    }
    Ok(ranks)
}

/// Replaces first-seen entity numbers by the rank of their key.
fn remap_by_rank<K: Ord>(entity_of: &mut [u32], mut keys: Vec<(K, u32)>) {
    keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut rank = vec![0u32; keys.len()];
    for (r, (_, first_seen)) in keys.iter().enumerate() {
        rank[*first_seen as usize] = r as u32;
    }
    for e in entity_of {
        *e = rank[*e as usize];
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn order_values_keep_unsigned_order_and_round_trip() {
        let values = [
            0u128,
            1,
            (1 << 127) - 1,
            1 << 127,
            (1 << 127) + 1,
            u128::MAX - 1,
            u128::MAX,
        ];
        for pair in values.windows(2) {
            assert!(
                super::order_value(pair[0]) < super::order_value(pair[1]),
                "{pair:?}"
            );
        }
        for v in values {
            assert_eq!(super::from_order_value(super::order_value(v)), v);
        }
    }

    use super::*;
    use crate::decode::decode_json_lines;
    use lockstep_abi::{Value, ValueType};

    fn manifest(with_id: bool) -> Manifest {
        let m = Manifest::builder("g", "1.0.0")
            .keyed_stateful(1)
            .field("k", ValueType::String, "")
            .field("t", ValueType::Timestamp, "")
            .optional_field("id", ValueType::String, "")
            .optional_field("x", ValueType::Int64, "")
            .entity_key("k")
            .event_time("t")
            .feature("f", ValueType::Int64, "", Value::Null);
        if with_id { m.event_id("id") } else { m }.build()
    }

    fn order(text: &str, with_id: bool) -> (Vec<i64>, Vec<usize>, usize) {
        let m = manifest(with_id);
        let batch = decode_json_lines(text, &m, None).expect("decode");
        let o = order_events(&batch, &m).expect("order");
        let xs = batch.column(3).as_primitive::<Int64Type>();
        (
            o.indices.iter().map(|&i| xs.value(i as usize)).collect(),
            o.entity_starts,
            o.duplicates,
        )
    }

    #[test]
    fn orders_by_entity_then_time_and_drops_duplicates() {
        let text = r#"{"k":"b","t":5,"x":1}
{"k":"a","t":9,"x":2}
{"k":"b","t":1,"x":3}
{"k":"a","t":9,"x":2}
{"k":"b","t":1,"x":3}"#;
        let (xs, starts, dups) = order(text, false);
        assert_eq!(xs, vec![2, 3, 1]);
        assert_eq!(starts, vec![0, 1]);
        assert_eq!(dups, 2);
    }

    #[test]
    fn declared_ids_deduplicate_even_when_content_differs() {
        let text = r#"{"k":"a","t":2,"id":"e1","x":10}
{"k":"a","t":1,"id":"e1","x":20}
{"k":"a","t":3,"id":null,"x":30}"#;
        let (xs, _, dups) = order(text, true);
        assert_eq!(xs, vec![20, 30], "the earliest event with id e1 is kept");
        assert_eq!(dups, 1);
    }

    #[test]
    fn equal_times_apply_in_ascending_id_order_by_value() {
        // Arrival order f3, f1, f4, f2; the contract says f1, f2, f3, f4.
        let text = r#"{"k":"a","t":5,"id":"f3","x":3}
{"k":"a","t":5,"id":"f1","x":1}
{"k":"a","t":5,"id":"f4","x":4}
{"k":"a","t":5,"id":"f2","x":2}
{"k":"a","t":4,"id":"f9","x":0}"#;
        assert_eq!(order(text, true).0, vec![0, 1, 2, 3, 4]);
        // Strings compare by their UTF-8 bytes: "B" < "a" < "aa" < "é".
        let text = r#"{"k":"a","t":5,"id":"é","x":4}
{"k":"a","t":5,"id":"aa","x":3}
{"k":"a","t":5,"id":"B","x":1}
{"k":"a","t":5,"id":"a","x":2}"#;
        assert_eq!(order(text, true).0, vec![1, 2, 3, 4]);
        // Null ids come after the declared ones of their instant.
        let text = r#"{"k":"a","t":5,"id":null,"x":9}
{"k":"a","t":5,"id":"z","x":1}
{"k":"a","t":6,"id":"a","x":10}"#;
        assert_eq!(order(text, true).0, vec![1, 9, 10]);
    }

    #[test]
    fn integer_ids_compare_numerically() {
        let mut m = manifest(true);
        m.input[2].ty = ValueType::Int64;
        let text = r#"{"k":"a","t":5,"id":10,"x":3}
{"k":"a","t":5,"id":-3,"x":1}
{"k":"a","t":5,"id":9,"x":2}
{"k":"a","t":5,"id":10,"x":4}"#;
        let batch = decode_json_lines(text, &m, None).expect("decode");
        let o = order_events(&batch, &m).expect("order");
        let xs = batch.column(3).as_primitive::<Int64Type>();
        let got: Vec<i64> = o.indices.iter().map(|&i| xs.value(i as usize)).collect();
        // -3 < 9 < 10 (not "10" < "9"), and the second 10 is a duplicate.
        assert_eq!(got.len(), 3);
        assert_eq!(&got[..2], &[1, 2]);
        assert!(got[2] == 3 || got[2] == 4);
        assert_eq!(o.duplicates, 1);
    }

    proptest::proptest! {
        /// The order (and the copy of a duplicate kept) is the one a sort engine gets
        /// from the columns of `with_order_columns`: the batch host's order.
        #[test]
        fn order_equals_sorting_by_the_order_columns(
            events in proptest::collection::vec(
                (0..2u8, 0..3i64, proptest::option::of(0..2u8), 0..4i64),
                0..24,
            ),
        ) {
            let lines: Vec<String> = events
                .iter()
                .map(|(k, t, id, x)| {
                    let id = id.map_or("null".to_owned(), |i| format!("\"e{i}\""));
                    format!(r#"{{"k":"{k}","t":{t},"id":{id},"x":{x}}}"#)
                })
                .collect();
            let m = manifest(true);
            let batch = decode_json_lines(&lines.join("\n"), &m, None).expect("decode");
            let ordered = order_events(&batch, &m).expect("order");
            let with = with_order_columns(&batch, &m).expect("order columns");
            // The stored values, as the batch host's sort compares them.
            let bytes = |name: &str, row: usize| {
                with.column_by_name(name)
                    .and_then(|c| c.as_primitive_opt::<arrow_array::types::Decimal128Type>())
                    .map(|c| c.value(row))
                    .expect("order column")
            };
            let mut rows: Vec<usize> = (0..batch.num_rows()).collect();
            // Ids by value, nulls last: `e0` < `e1` < null.
            rows.sort_by_key(|&r| {
                let (k, t, id, _) = events[r];
                (k, t, id.is_none(), id, bytes(CONTENT_COLUMN, r), r)
            });
            let mut seen = std::collections::HashSet::new();
            let expected: Vec<u32> = rows
                .into_iter()
                .filter(|&r| seen.insert((events[r].0, bytes(EVENT_ID_COLUMN, r))))
                .map(|r| r as u32)
                .collect();
            proptest::prop_assert_eq!(ordered.indices, expected);
        }
    }

    proptest::proptest! {
        /// The column-wise hashes are the per-row ones, bit for bit, for every type,
        /// with nulls, and on a slice (an offset into the buffers).
        #[test]
        fn column_wise_hashes_equal_the_per_row_ones(
            rows in proptest::collection::vec(
                (
                    proptest::option::of(proptest::num::i64::ANY),
                    proptest::option::of(proptest::num::f64::ANY),
                    proptest::option::of(proptest::bool::ANY),
                    proptest::option::of(".{0,12}"),
                    proptest::option::of(proptest::num::i64::ANY),
                ),
                0..20,
            ),
            skip in 0..3usize,
        ) {
            use arrow_array::{
                BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
                UInt8Array,
            };
            let batch = RecordBatch::try_from_iter([
                ("i", std::sync::Arc::new(rows.iter().map(|r| r.0).collect::<Int64Array>()) as arrow_array::ArrayRef),
                ("f", std::sync::Arc::new(rows.iter().map(|r| r.1).collect::<Float64Array>())),
                ("b", std::sync::Arc::new(rows.iter().map(|r| r.2).collect::<BooleanArray>())),
                ("s", std::sync::Arc::new(rows.iter().map(|r| r.3.clone()).collect::<StringArray>())),
                ("t", std::sync::Arc::new(rows.iter().map(|r| r.4).collect::<TimestampMicrosecondArray>().with_timezone("UTC"))),
                ("other", std::sync::Arc::new(rows.iter().map(|r| r.0.map(|v| v as u8)).collect::<UInt8Array>())),
            ])
            .expect("batch");
            let skip = skip.min(batch.num_rows());
            let batch = batch.slice(skip, batch.num_rows() - skip);
            let per_row: Vec<u128> = (0..batch.num_rows()).map(|r| content_hash(&batch, r)).collect();
            proptest::prop_assert_eq!(content_hashes(&batch), per_row);
            for id_column in [None, Some(0), Some(3)] {
                let per_row: Vec<Option<u128>> = (0..batch.num_rows())
                    .map(|r| declared_id(&batch, id_column, r))
                    .collect();
                proptest::prop_assert_eq!(&declared_ids(&batch, id_column), &per_row);
                let ids: Vec<u128> = (0..batch.num_rows())
                    .map(|r| event_id(&batch, id_column, r, content_hash(&batch, r)))
                    .collect();
                proptest::prop_assert_eq!(event_ids(&batch, id_column), ids);
            }
        }
    }

    /// The bits of content hashes and declared ids are part of the batch host's order
    /// (ties) and of every checkpoint's identities: they must not change by accident.
    #[test]
    fn hashes_keep_their_bits() {
        use arrow_array::{
            BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
        };
        let batch = RecordBatch::try_from_iter([
            (
                "i",
                std::sync::Arc::new(Int64Array::from(vec![Some(-7), None]))
                    as arrow_array::ArrayRef,
            ),
            (
                "f",
                std::sync::Arc::new(Float64Array::from(vec![Some(-0.0), Some(f64::NAN)])),
            ),
            (
                "b",
                std::sync::Arc::new(BooleanArray::from(vec![None, Some(true)])),
            ),
            (
                "s",
                std::sync::Arc::new(StringArray::from(vec![Some("card-1"), Some("")])),
            ),
            (
                "t",
                std::sync::Arc::new(
                    TimestampMicrosecondArray::from(vec![Some(1_704_067_200_000_000), None])
                        .with_timezone("UTC"),
                ),
            ),
        ])
        .expect("batch");
        let contents = [
            0xf0966af65bd805e4d360405f21bc1653,
            0xa91c264b9d2c6f154b09b93f0efd9235,
        ];
        let ids = [
            0xa0113306d921057525c75b77e70b11d1,
            0xcab14c621375df03faa6d89147c8b3d7,
        ];
        assert_eq!(content_hashes(&batch), contents);
        assert_eq!(declared_ids(&batch, Some(3)), ids.map(Some));
        for row in 0..2 {
            assert_eq!(content_hash(&batch, row), contents[row]);
            assert_eq!(declared_id(&batch, Some(3), row), Some(ids[row]));
        }
        assert_eq!(declared_ids(&batch, Some(0))[1], None, "a null id is no id");
    }

    #[test]
    fn result_does_not_depend_on_arrival_order() {
        let lines = [
            r#"{"k":"a","t":1,"id":"x","x":1}"#,
            r#"{"k":"a","t":1,"id":"x","x":2}"#,
            r#"{"k":"a","t":1,"x":3}"#,
            r#"{"k":"b","t":0,"x":4}"#,
            r#"{"k":"a","t":0,"x":5}"#,
        ];
        let expected = order(&lines.join("\n"), true);
        let mut reversed = lines;
        reversed.reverse();
        assert_eq!(order(&reversed.join("\n"), true).0, expected.0);
    }
}
