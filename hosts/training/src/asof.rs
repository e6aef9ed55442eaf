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
    let mut next = 0;
    // The latest row seen so far of the current label's key.
    let mut last: Option<usize> = None;
    for i in order {
        let (key, time) = (&labels[i].0, labels[i].1);
        if last.is_some_and(|l| features[l].key != *key) {
            last = None;
        }
        while let Some(row) = features.get(next) {
            match row.key.cmp(key) {
                Ordering::Less => next += 1,
                Ordering::Greater => break,
                Ordering::Equal => {
                    let visible = if spec.inclusive {
                        row.time <= time
                    } else {
                        row.time < time
                    };
                    if !visible {
                        break;
                    }
                    last = Some(next);
                    next += 1;
                }
            }
        }
        out[i] = last.filter(|&l| {
            let row = &features[l];
            row.key == *key
                && !row.deleted
                && spec
                    .ttl
                    .is_none_or(|ttl| time.saturating_sub(row.time) <= ttl)
        });
    }
    Ok(out)
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
