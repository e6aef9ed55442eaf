//! `txn_velocity`: per-card transaction velocity features.
//!
//! For every transaction, the features of the card's windows ending at (and
//! including) that transaction: count, sum, mean and max of the amount over the last
//! 1 h, 24 h and 7 d, the seconds since the card's previous transaction, and the number
//! of distinct merchants in the last 24 h. Windows are half-open: `(t - W, t]`.
//!
//! `read(state, as_of)` gives the same features for windows ending at `as_of`, so a
//! window that slid since the last transaction is exact at request time; there
//! `secs_since_prev_txn` is the time since the last transaction.
//!
//! Non-finite amounts are kept as they are: a NaN amount makes that window's sum and
//! mean NaN, and `max` ignores NaN (IEEE `maxNum`). Both hosts see the same values.

use lockstep_sdk::prelude::*;
use std::collections::VecDeque;

const WINDOWS: [i64; 3] = [Timestamp::HOUR, Timestamp::DAY, 7 * Timestamp::DAY];

/// One card transaction.
#[derive(Deserialize)]
pub struct Transaction<'a> {
    /// The card (entity key).
    pub card_id: &'a str,
    /// When it happened.
    pub ts: Timestamp,
    /// Amount in the card's currency.
    pub amount: f64,
    /// Merchant identifier.
    pub merchant: &'a str,
}

/// The features, in manifest order.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Velocity {
    pub txn_count_1h: i64,
    pub txn_sum_1h: f64,
    pub txn_mean_1h: Option<f64>,
    pub txn_max_1h: Option<f64>,
    pub txn_count_24h: i64,
    pub txn_sum_24h: f64,
    pub txn_mean_24h: Option<f64>,
    pub txn_max_24h: Option<f64>,
    pub txn_count_7d: i64,
    pub txn_sum_7d: f64,
    pub txn_mean_7d: Option<f64>,
    pub txn_max_7d: Option<f64>,
    pub secs_since_prev_txn: Option<f64>,
    pub distinct_merchants_24h: i64,
}

/// A transaction kept in the 7-day window.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct Kept {
    ts: i64,
    amount: f64,
    /// FNV-1a hash of the merchant id: distinct counts need identity, not the text.
    merchant: u64,
}

/// Per-card state: the last 7 days of transactions, oldest first.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
pub struct CardState {
    recent: VecDeque<Kept>,
    last_ts: Option<i64>,
}

/// The transform.
pub struct TxnVelocity;

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[derive(Clone, Copy)]
struct Agg {
    count: i64,
    sum: f64,
    max: Option<f64>,
}

/// Aggregates the windows ending at `at` over `recent` (oldest first), newest to oldest
/// so each window is a prefix of the walk.
fn aggregate(recent: &VecDeque<Kept>, at: i64, merchants: &mut Vec<u64>) -> ([Agg; 3], i64) {
    let mut aggs = [Agg {
        count: 0,
        sum: 0.0,
        max: None,
    }; 3];
    merchants.clear();
    for kept in recent.iter().rev() {
        if kept.ts > at {
            continue;
        }
        let age = at.saturating_sub(kept.ts);
        if age >= WINDOWS[2] {
            break;
        }
        for (agg, &w) in aggs.iter_mut().zip(&WINDOWS) {
            if age < w {
                agg.count += 1;
                agg.sum += kept.amount;
                agg.max = Some(match agg.max {
                    Some(m) => m.max(kept.amount),
                    None => kept.amount,
                });
            }
        }
        if age < WINDOWS[1] {
            merchants.push(kept.merchant);
        }
    }
    merchants.sort_unstable();
    merchants.dedup();
    (aggs, merchants.len() as i64)
}

fn row(aggs: [Agg; 3], distinct: i64, since_prev: Option<i64>) -> Velocity {
    let mean = |a: Agg| (a.count > 0).then(|| a.sum / a.count as f64);
    let [h, d, w] = aggs;
    Velocity {
        txn_count_1h: h.count,
        txn_sum_1h: h.sum,
        txn_mean_1h: mean(h),
        txn_max_1h: h.max,
        txn_count_24h: d.count,
        txn_sum_24h: d.sum,
        txn_mean_24h: mean(d),
        txn_max_24h: d.max,
        txn_count_7d: w.count,
        txn_sum_7d: w.sum,
        txn_mean_7d: mean(w),
        txn_max_7d: w.max,
        secs_since_prev_txn: since_prev.map(|us| us as f64 / Timestamp::SECOND as f64),
        distinct_merchants_24h: distinct,
    }
}

impl Transform for TxnVelocity {
    type Event<'a> = Transaction<'a>;
    type Row = Velocity;
    type State = CardState;

    fn manifest() -> Manifest {
        use ValueType::*;
        let zero_f = || Value::Float64(0.0);
        let mut b = ManifestBuilder::new("txn_velocity", "1.0.0")
            .description("Per-card transaction velocity: counts, sums, means and maxima over 1 h, 24 h and 7 d windows.")
            .keyed_stateful(1)
            .field("card_id", String, "card identifier")
            .field("ts", Timestamp, "transaction time")
            .field("amount", Float64, "transaction amount")
            .field("merchant", String, "merchant identifier")
            .optional_field("txn_id", String, "transaction id, used to drop duplicates")
            .entity_key("card_id")
            .event_time("ts")
            .event_id("txn_id")
            .supports_read();
        for w in ["1h", "24h", "7d"] {
            b = b
                .feature(
                    &format!("txn_count_{w}"),
                    Int64,
                    &format!("transactions in the last {w}"),
                    Value::Int64(0),
                )
                .feature(
                    &format!("txn_sum_{w}"),
                    Float64,
                    &format!("sum of amounts in the last {w}"),
                    zero_f(),
                )
                .feature(
                    &format!("txn_mean_{w}"),
                    Float64,
                    &format!("mean amount in the last {w}"),
                    Value::Null,
                )
                .feature(
                    &format!("txn_max_{w}"),
                    Float64,
                    &format!("largest amount in the last {w}"),
                    Value::Null,
                );
        }
        b.feature(
            "secs_since_prev_txn",
            Float64,
            "seconds since the previous transaction",
            Value::Null,
        )
        .feature(
            "distinct_merchants_24h",
            Int64,
            "distinct merchants in the last 24 h",
            Value::Int64(0),
        )
        .build()
    }

    fn apply(
        state: &mut CardState,
        txn: Transaction<'_>,
        out: &mut Emit<'_, Velocity>,
    ) -> Result<(), Error> {
        let t = txn.ts.micros();
        let horizon = t.saturating_sub(WINDOWS[2]);
        while state.recent.front().is_some_and(|k| k.ts <= horizon) {
            state.recent.pop_front();
        }
        state.recent.push_back(Kept {
            ts: t,
            amount: txn.amount,
            merchant: fnv1a(txn.merchant),
        });
        let since_prev = state.last_ts.map(|p| t.saturating_sub(p));
        state.last_ts = Some(t);
        let mut merchants = Vec::new();
        let (aggs, distinct) = aggregate(&state.recent, t, &mut merchants);
        out.emit(row(aggs, distinct, since_prev))
    }

    fn read(state: &CardState, as_of: Timestamp) -> Option<Velocity> {
        let at = as_of.micros();
        let last = state.last_ts.filter(|&l| l <= at)?;
        let mut merchants = Vec::new();
        let (aggs, distinct) = aggregate(&state.recent, at, &mut merchants);
        Some(row(aggs, distinct, Some(at.saturating_sub(last))))
    }
}

lockstep_sdk::export!(TxnVelocity);

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_sdk::testing::{check_manifest, run_timed};

    fn txn<'a>(
        card: &'a str,
        secs: i64,
        amount: f64,
        merchant: &'a str,
    ) -> (Timestamp, Transaction<'a>) {
        let ts = Timestamp::from_secs(secs);
        (
            ts,
            Transaction {
                card_id: card,
                ts,
                amount,
                merchant,
            },
        )
    }

    #[test]
    fn manifest_is_valid() {
        check_manifest::<TxnVelocity>().expect("valid manifest");
    }

    #[test]
    fn windows_count_sum_mean_max_and_slide() {
        let mut state = CardState::default();
        let rows = run_timed::<TxnVelocity>(
            &mut state,
            [
                txn("c", 0, 10.0, "m1"),
                txn("c", 1800, 30.0, "m2"),
                txn("c", 3600, 5.0, "m1"), // the first one is exactly 1 h old: out of the 1 h window
                txn("c", 8 * 86_400, 1.0, "m3"), // everything before is older than 7 d
            ],
        )
        .expect("apply");
        let r = &rows[2].1;
        assert_eq!(
            (r.txn_count_1h, r.txn_sum_1h, r.txn_max_1h),
            (2, 35.0, Some(30.0))
        );
        assert_eq!(
            (r.txn_count_24h, r.txn_sum_24h, r.txn_mean_24h),
            (3, 45.0, Some(15.0))
        );
        assert_eq!(r.distinct_merchants_24h, 2);
        assert_eq!(r.secs_since_prev_txn, Some(1800.0));
        assert_eq!(rows[0].1.secs_since_prev_txn, None);
        let last = &rows[3].1;
        assert_eq!(
            (
                last.txn_count_7d,
                last.txn_sum_7d,
                last.distinct_merchants_24h
            ),
            (1, 1.0, 1)
        );
        assert_eq!(state.recent.len(), 1, "state keeps only the 7-day window");
    }

    #[test]
    fn read_slides_the_window_to_the_request_time() {
        let mut state = CardState::default();
        run_timed::<TxnVelocity>(
            &mut state,
            [txn("c", 0, 10.0, "m"), txn("c", 100, 20.0, "m")],
        )
        .expect("apply");
        let at = |s| TxnVelocity::read(&state, Timestamp::from_secs(s)).expect("has events");
        assert_eq!(at(200).txn_count_1h, 2);
        let later = at(3650);
        assert_eq!(
            (later.txn_count_1h, later.txn_sum_1h, later.txn_mean_1h),
            (1, 20.0, Some(20.0))
        );
        assert_eq!(later.secs_since_prev_txn, Some(3550.0));
        assert_eq!(at(100 + 7 * 86_400).txn_count_7d, 0);
        assert_eq!(at(100 + 7 * 86_400).txn_mean_7d, None);
        assert!(TxnVelocity::read(&CardState::default(), Timestamp(0)).is_none());
    }

    #[test]
    fn extreme_values_do_not_panic() {
        let mut state = CardState::default();
        let rows = run_timed::<TxnVelocity>(
            &mut state,
            [
                (
                    Timestamp(i64::MIN),
                    Transaction {
                        card_id: "c",
                        ts: Timestamp(i64::MIN),
                        amount: f64::NAN,
                        merchant: "",
                    },
                ),
                (
                    Timestamp(i64::MAX),
                    Transaction {
                        card_id: "c",
                        ts: Timestamp(i64::MAX),
                        amount: f64::INFINITY,
                        merchant: "é",
                    },
                ),
            ],
        )
        .expect("apply");
        assert_eq!(rows[1].1.txn_max_7d, Some(f64::INFINITY));
        assert!(rows[0].1.txn_sum_1h.is_nan());
    }
}
