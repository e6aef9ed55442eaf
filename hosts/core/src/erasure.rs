//! The replay boundary of erased entities, as every host applies it.
//!
//! An erasure of an entity at time `T` means: no event of that entity with an event
//! time at or before `T` is ever applied again — whether it comes from a Kinesis replay,
//! a backfill over the raw lake, a hand-off of states or anything else. Events after
//! `T` are a new life of the entity and flow as usual. The hosts drop such events where
//! they decode them, before ordering, so an erased event never moves a watermark, never
//! counts as a duplicate and never reaches a plugin: a run over input that holds them
//! equals a run over input that never held them.
//!
//! This module holds the rule and the in-memory set it is judged against; reading the
//! erasure ledger (a file store) is another crate's work.

use crate::key::{EntityKey, KeyHasher};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, BooleanArray, RecordBatch};
use arrow_schema::{ArrowError, DataType};
use std::collections::HashMap;

/// The erased entities of one group version: each key with the latest time it was
/// erased at (UTC µs). Empty for a group nothing was erased from, and then free to
/// consult. Text and integer keys are kept apart so that a row's key is looked up as
/// it lies in its column, without building an [`EntityKey`] per event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erasures {
    text: HashMap<String, i64, KeyHasher>,
    ints: HashMap<i64, i64, KeyHasher>,
}

impl Erasures {
    /// No erased entity.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `key` was erased at `erased_at` (UTC µs); a later erasure of the
    /// same key moves its boundary later, an earlier one changes nothing.
    pub fn insert(&mut self, key: EntityKey, erased_at: i64) {
        let at = match key {
            EntityKey::Str(s) => self.text.entry(s).or_insert(erased_at),
            EntityKey::Int(i) => self.ints.entry(i).or_insert(erased_at),
        };
        *at = (*at).max(erased_at);
    }

    /// Adds every erasure of `other`.
    pub fn extend(&mut self, other: &Erasures) {
        for (key, at) in other.iter() {
            self.insert(key, at);
        }
    }

    /// How many entities are erased.
    pub fn len(&self) -> usize {
        self.text.len() + self.ints.len()
    }

    /// Whether nothing is erased.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty() && self.ints.is_empty()
    }

    /// The latest time `key` was erased at, if it was.
    pub fn erased_at(&self, key: &EntityKey) -> Option<i64> {
        match key {
            EntityKey::Str(s) => self.text.get(s.as_str()).copied(),
            EntityKey::Int(i) => self.ints.get(i).copied(),
        }
    }

    /// Each erased key with its boundary, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (EntityKey, i64)> + '_ {
        self.text
            .iter()
            .map(|(k, t)| (EntityKey::Str(k.clone()), *t))
            .chain(self.ints.iter().map(|(k, t)| (EntityKey::Int(*k), *t)))
    }

    /// The rule: an event of `key` at `event_time` is dropped when the key was erased
    /// at or after that time.
    pub fn drops(&self, key: &EntityKey, event_time: i64) -> bool {
        self.erased_at(key).is_some_and(|at| event_time <= at)
    }

    /// Whether the event at `row` of `keys` (Utf8 or Int64) and `times` is dropped.
    fn drops_row(&self, keys: &dyn Array, times: &[i64], row: usize) -> bool {
        if keys.is_null(row) {
            return false;
        }
        let at = match keys.data_type() {
            DataType::Utf8 => self.text.get(keys.as_string::<i32>().value(row)),
            DataType::Int64 => self.ints.get(&keys.as_primitive::<Int64Type>().value(row)),
            _ => None,
        };
        at.is_some_and(|at| times[row] <= *at)
    }

    /// `batch` without the events this set drops (`key_col`: the entity key, Utf8 or
    /// Int64; `time_col`: the event time, timestamp µs), and how many it dropped. The
    /// batch itself, uncopied, when nothing is erased or nothing in it is.
    pub fn filter(
        &self,
        batch: &RecordBatch,
        key_col: usize,
        time_col: usize,
    ) -> Result<(RecordBatch, usize), ArrowError> {
        if self.is_empty() || batch.num_rows() == 0 {
            return Ok((batch.clone(), 0));
        }
        let keys = batch.column(key_col);
        let times = batch
            .column(time_col)
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| {
                ArrowError::InvalidArgumentError(format!(
                    "the event time column is {}, not a timestamp in µs",
                    batch.column(time_col).data_type()
                ))
            })?;
        let values = times.values();
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|row| Some(!self.drops_row(keys.as_ref(), values, row)))
            .collect();
        let dropped = keep.false_count();
        if dropped == 0 {
            return Ok((batch.clone(), 0));
        }
        Ok((
            arrow_select::filter::filter_record_batch(batch, &keep)?,
            dropped,
        ))
    }
}

impl EntityKey {
    /// The key `text` names in a column of `data_type` (Utf8 or Int64): how keys
    /// written as text (a ledger, a command line) meet keys in data. `None` when the
    /// text cannot be such a key (`x` for an Int64 key).
    pub fn parse(text: &str, data_type: &DataType) -> Option<EntityKey> {
        match data_type {
            DataType::Int64 => text.trim().parse().ok().map(EntityKey::Int),
            DataType::Utf8 | DataType::LargeUtf8 => Some(EntityKey::Str(text.to_owned())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, Int64Array, StringArray, TimestampMicrosecondArray};
    use std::sync::Arc;

    fn batch(keys: ArrayRef, times: Vec<i64>) -> RecordBatch {
        RecordBatch::try_from_iter([
            ("k", keys),
            (
                "t",
                Arc::new(TimestampMicrosecondArray::from(times).with_timezone("UTC")) as ArrayRef,
            ),
        ])
        .expect("batch")
    }

    #[test]
    fn events_at_or_before_the_erasure_are_dropped_later_ones_are_a_new_life() {
        let mut erased = Erasures::new();
        erased.insert(EntityKey::Str("a".into()), 10);
        let b = batch(
            Arc::new(StringArray::from(vec!["a", "a", "a", "b", "a"])),
            vec![9, 10, 11, 5, 3],
        );
        let (kept, dropped) = erased.filter(&b, 0, 1).expect("filter");
        assert_eq!(dropped, 3);
        let keys = kept.column(0).as_string::<i32>();
        let times = kept.column(1).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(
            (0..kept.num_rows())
                .map(|r| (keys.value(r), times.value(r)))
                .collect::<Vec<_>>(),
            vec![("a", 11), ("b", 5)]
        );
    }

    #[test]
    fn the_latest_erasure_of_a_key_is_its_boundary() {
        let mut erased = Erasures::new();
        erased.insert(EntityKey::Int(7), 20);
        erased.insert(EntityKey::Int(7), 10);
        assert_eq!(erased.erased_at(&EntityKey::Int(7)), Some(20));
        let b = batch(Arc::new(Int64Array::from(vec![7, 7, 8])), vec![20, 21, 1]);
        let (kept, dropped) = erased.filter(&b, 0, 1).expect("filter");
        assert_eq!((kept.num_rows(), dropped), (2, 1));
    }

    #[test]
    fn keys_written_as_text_meet_keys_of_either_type() {
        assert_eq!(
            EntityKey::parse("42", &DataType::Int64),
            Some(EntityKey::Int(42))
        );
        assert_eq!(EntityKey::parse("x", &DataType::Int64), None);
        assert_eq!(
            EntityKey::parse("42", &DataType::Utf8),
            Some(EntityKey::Str("42".into()))
        );
    }

    #[test]
    fn a_batch_without_erased_entities_is_not_copied() {
        let mut erased = Erasures::new();
        erased.insert(EntityKey::Str("z".into()), 100);
        let b = batch(Arc::new(StringArray::from(vec!["a"])), vec![1]);
        let (kept, dropped) = erased.filter(&b, 0, 1).expect("filter");
        assert_eq!(dropped, 0);
        assert!(Arc::ptr_eq(kept.column(0), b.column(0)));
        // A time column that is not a timestamp is an error, not a silent keep.
        let wrong =
            RecordBatch::try_from_iter([("k", b.column(0).clone()), ("t", b.column(0).clone())])
                .expect("batch");
        assert!(erased.filter(&wrong, 0, 1).is_err());
    }
}
