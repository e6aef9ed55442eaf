//! The as-of match: which feature row each label may see.
//!
//! Feature rows come sorted by (entity key, event time), rows of equal time in the
//! order they were emitted; the latest of them is the one a reader at that instant
//! sees. Labels come in any order and keep it: the result has one entry per label, so
//! no label is ever dropped or repeated. One merge pass over both, after sorting the
//! label positions: O((L + F) + L log L).

use std::cmp::Ordering;
use thiserror::Error;

/// How labels see feature rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AsOf {
    /// A feature row at exactly the label time is seen (default: only strictly before).
    pub inclusive: bool,
    /// A feature row older than this (label time − event time > ttl, µs) is not seen.
    pub ttl: Option<i64>,
}

/// One feature row as the match needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureRow<K> {
    /// The entity.
    pub key: K,
    /// Its event time (µs).
    pub time: i64,
    /// A deletion marker: the entity has no features from this instant on.
    pub deleted: bool,
}

/// Why the match could not run.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AsOfError {
    /// The feature rows are not sorted by (key, time).
    #[error(
        "feature row {index} is out of order: rows must be sorted by entity key, then event time"
    )]
    Unsorted {
        /// The first row out of order.
        index: usize,
    },
}

/// For each label `(key, time)`, in label order, the index of the feature row it sees,
/// or `None`.
pub fn match_labels<K: Ord>(
    labels: &[(K, i64)],
    features: &[FeatureRow<K>],
    spec: AsOf,
) -> Result<Vec<Option<usize>>, AsOfError> {
    for (i, pair) in features.windows(2).enumerate() {
        let order = pair[0]
            .key
            .cmp(&pair[1].key)
            .then(pair[0].time.cmp(&pair[1].time));
        if order == Ordering::Greater {
            return Err(AsOfError::Unsorted { index: i + 1 });
        }
    }
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by(|&a, &b| {
        labels[a]
            .0
            .cmp(&labels[b].0)
            .then(labels[a].1.cmp(&labels[b].1))
    });
    let mut out = vec![None; labels.len()];
    let mut cursor = Cursor::default();
    for i in order {
        let (key, time) = (&labels[i].0, labels[i].1);
        let rows = Slice { features, key };
        let label = Label {
            bound: time,
            age_from: time,
        };
        // Every row is available: the cursor never asks for more.
        if let Step::Seen(seen) = cursor.seek(&rows, label, spec, features.len(), true) {
            out[i] = seen;
        }
    }
    Ok(out)
}

/// Feature rows as the cursor reads them, compared with the current label.
pub(crate) trait FeatureRows {
    /// How row `row`'s entity key compares with the label's.
    fn key_cmp(&self, row: usize) -> Ordering;
    /// Row `row`'s event time (µs).
    fn time(&self, row: usize) -> i64;
    /// Whether row `row` is a deletion marker.
    fn deleted(&self, row: usize) -> bool;
}

/// A label's instant as the cursor needs it, in µs: `bound` decides visibility (rows
/// before it, or at it when inclusive), `age_from` measures the TTL. They differ only
/// for labels finer than a microsecond: `bound` is the time rounded down when inclusive
/// and up when strict, `age_from` rounded up, so that the comparisons are exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Label {
    pub bound: i64,
    pub age_from: i64,
}

/// What [`Cursor::seek`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The rows available end before the label's could: fetch more and seek again.
    NeedMore,
    /// The row the label sees, if any.
    Seen(Option<usize>),
}

/// The merge state over feature rows sorted by (key, time), fed labels sorted the same
/// way: each feature row is passed once, whatever the number of labels. Row numbers
/// run on across batches, so a stream of batches is read like one long slice.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cursor {
    /// The first row not yet passed.
    pub next: usize,
    /// The latest visible row of the key last sought, if any.
    pub last: Option<usize>,
}

impl Cursor {
    /// Moves past every row `label` may see among the first `available` rows and
    /// returns the one it sees (`exhausted`: no rows come after those).
    pub(crate) fn seek(
        &mut self,
        rows: &impl FeatureRows,
        label: Label,
        spec: AsOf,
        available: usize,
        exhausted: bool,
    ) -> Step {
        if self
            .last
            .is_some_and(|l| rows.key_cmp(l) != Ordering::Equal)
        {
            self.last = None;
        }
        loop {
            if self.next >= available {
                if exhausted {
                    break;
                }
                return Step::NeedMore;
            }
            match rows.key_cmp(self.next) {
                Ordering::Less => self.next += 1,
                Ordering::Greater => break,
                Ordering::Equal => {
                    let time = rows.time(self.next);
                    let visible = if spec.inclusive {
                        time <= label.bound
                    } else {
                        time < label.bound
                    };
                    if !visible {
                        break;
                    }
                    self.last = Some(self.next);
                    self.next += 1;
                }
            }
        }
        Step::Seen(self.last.filter(|&l| {
            !rows.deleted(l)
                && spec
                    .ttl
                    .is_none_or(|ttl| label.age_from.saturating_sub(rows.time(l)) <= ttl)
        }))
    }
}

/// A slice of rows seen from one label's key.
struct Slice<'a, K> {
    features: &'a [FeatureRow<K>],
    key: &'a K,
}

impl<K: Ord> FeatureRows for Slice<'_, K> {
    fn key_cmp(&self, row: usize) -> Ordering {
        self.features[row].key.cmp(self.key)
    }
    fn time(&self, row: usize) -> i64 {
        self.features[row].time
    }
    fn deleted(&self, row: usize) -> bool {
        self.features[row].deleted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, time: i64) -> FeatureRow<String> {
        FeatureRow {
            key: key.into(),
            time,
            deleted: false,
        }
    }

    #[test]
    fn strictly_before_by_default_and_ties_see_the_last_emitted_row() {
        let features = vec![row("a", 1), row("a", 5), row("a", 5), row("b", 3)];
        let labels = vec![
            ("a".to_owned(), 5),
            ("a".into(), 6),
            ("b".into(), 3),
            ("c".into(), 9),
            ("a".into(), 0),
        ];
        let strict = match_labels(&labels, &features, AsOf::default()).unwrap();
        assert_eq!(strict, vec![Some(0), Some(2), None, None, None]);
        let inclusive = match_labels(
            &labels,
            &features,
            AsOf {
                inclusive: true,
                ttl: None,
            },
        )
        .unwrap();
        assert_eq!(inclusive, vec![Some(2), Some(2), Some(3), None, None]);
    }

    #[test]
    fn ttl_edges_and_deletions() {
        let mut features = vec![row("a", 10), row("a", 20)];
        let labels = vec![("a".to_owned(), 25), ("a".into(), 26)];
        let spec = AsOf {
            inclusive: false,
            ttl: Some(5),
        };
        assert_eq!(
            match_labels(&labels, &features, spec).unwrap(),
            vec![Some(1), None]
        );
        features[1].deleted = true;
        assert_eq!(
            match_labels(&labels, &features, AsOf::default()).unwrap(),
            vec![None, None]
        );
    }

    #[test]
    fn unsorted_features_are_refused_with_the_row() {
        let features = vec![row("a", 2), row("a", 1)];
        assert_eq!(
            match_labels(&[("a".to_owned(), 3)], &features, AsOf::default()),
            Err(AsOfError::Unsorted { index: 1 })
        );
    }
}
