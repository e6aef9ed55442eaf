//! The merge against a naive reference: for every label, scan every row.

use lockstep_training::asof::{AsOf, FeatureRow, match_labels};
use proptest::prelude::*;

fn reference(labels: &[(u8, i64)], features: &[FeatureRow<u8>], spec: AsOf) -> Vec<Option<usize>> {
    labels
        .iter()
        .map(|(key, time)| {
            let mut best: Option<usize> = None;
            for (i, row) in features.iter().enumerate() {
                let visible = row.key == *key
                    && if spec.inclusive {
                        row.time <= *time
                    } else {
                        row.time < *time
                    };
                // Later rows win ties: the input is in emission order within a time.
                if visible && best.is_none_or(|b| features[b].time <= row.time) {
                    best = Some(i);
                }
            }
            best.filter(|&b| {
                !features[b].deleted && spec.ttl.is_none_or(|ttl| time - features[b].time <= ttl)
            })
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn the_merge_equals_the_naive_scan(
        mut rows in prop::collection::vec((0u8..5, 0i64..20, prop::bool::weighted(0.15)), 0..60),
        labels in prop::collection::vec((0u8..6, -2i64..24), 0..40),
        inclusive in any::<bool>(),
        ttl in prop::option::of(0i64..10),
    ) {
        // Sorted by (key, time); the sort is stable, so equal times keep their order.
        rows.sort_by_key(|(k, t, _)| (*k, *t));
        let features: Vec<FeatureRow<u8>> = rows
            .into_iter()
            .map(|(key, time, deleted)| FeatureRow { key, time, deleted })
            .collect();
        let spec = AsOf { inclusive, ttl };
        let got = match_labels(&labels, &features, spec).unwrap();
        prop_assert_eq!(got.len(), labels.len());
        prop_assert_eq!(got, reference(&labels, &features, spec));
    }
}
