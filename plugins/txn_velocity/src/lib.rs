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
//! A window also changes when a transaction leaves it, with no new transaction: each
//! transaction asks to be woken when it leaves each window (1 h, 24 h and 7 d later,
//! rounded up to the next whole minute: the manifest's timer resolution), and a
//! wake-up emits the card's row at that instant. So the stored rows change exactly
//! where the windows change (to the minute): a card idle since 09:00 has a row at
//! 10:00 with `txn_count_1h = 0`, and a training label at 14:00 gets 0, not the 09:00
//! count. Wake-ups follow the contract's rule (`lockstep_abi::timers`): after every
//! transaction at or before their instant, before any later one.
//!
//! Windows are maintained incrementally, so an event costs O(1) amortised whatever the
//! card's volume: counts and sums are running values (sums Neumaier-compensated and
//! reset to exactly zero when a window empties), maxima come from monotonic queues,
//! distinct merchants from a counted set. All of it is deterministic: the same events
//! in the same order give the same bits in every host.
//!
//! Non-finite amounts follow IEEE arithmetic without polluting later windows: a window
//! holding a NaN has a NaN sum and mean, one holding +inf (and no -inf) sums to +inf,
//! and `max` ignores NaN (null if the window holds nothing else).

use lockstep_sdk::prelude::*;
use std::collections::{BTreeMap, VecDeque};

const WINDOWS: [i64; 3] = [Timestamp::HOUR, Timestamp::DAY, 7 * Timestamp::DAY];
/// Index of the 24 h window, which also counts distinct merchants.
const DAY_WINDOW: usize = 1;
/// Index of the longest window: the events state must keep.
const LONGEST: usize = 2;

/// One card transaction. Its fields are the input schema (`#[derive(Event)]`).
#[derive(Deserialize, Event)]
pub struct Transaction<'a> {
    /// card identifier
    #[event(key)]
    pub card_id: &'a str,
    /// transaction time
    #[event(time)]
    pub ts: Timestamp,
    /// transaction amount
    pub amount: f64,
    /// merchant identifier
    pub merchant: &'a str,
    /// transaction id, used to drop duplicates
    #[event(id)]
    pub txn_id: Option<&'a str>,
}

/// The features, in order (`#[derive(Features)]`).
#[derive(Serialize, Features, Debug, Clone, PartialEq)]
pub struct Velocity {
    /// transactions in the last 1h
    #[feat(default = 0)]
    pub txn_count_1h: i64,
    /// sum of amounts in the last 1h
    #[feat(default = 0.0)]
    pub txn_sum_1h: f64,
    /// mean amount in the last 1h
    pub txn_mean_1h: Option<f64>,
    /// largest amount in the last 1h
    pub txn_max_1h: Option<f64>,
    /// transactions in the last 24h
    #[feat(default = 0)]
    pub txn_count_24h: i64,
    /// sum of amounts in the last 24h
    #[feat(default = 0.0)]
    pub txn_sum_24h: f64,
    /// mean amount in the last 24h
    pub txn_mean_24h: Option<f64>,
    /// largest amount in the last 24h
    pub txn_max_24h: Option<f64>,
    /// transactions in the last 7d
    #[feat(default = 0)]
    pub txn_count_7d: i64,
    /// sum of amounts in the last 7d
    #[feat(default = 0.0)]
    pub txn_sum_7d: f64,
    /// mean amount in the last 7d
    pub txn_mean_7d: Option<f64>,
    /// largest amount in the last 7d
    pub txn_max_7d: Option<f64>,
    /// seconds since the previous transaction
    pub secs_since_prev_txn: Option<f64>,
    /// distinct merchants in the last 24 h
    #[feat(default = 0)]
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

/// A running sum that can also subtract: finite values in a compensated sum,
/// non-finite ones counted so they leave the window cleanly.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
struct RunningSum {
    sum: f64,
    compensation: f64,
    finite: u64,
    pos_inf: u32,
    neg_inf: u32,
    nan: u32,
}

impl RunningSum {
    /// Adds `x` (`entering`) or removes it (`!entering`).
    fn update(&mut self, x: f64, entering: bool) {
        let step = |n: &mut u32| {
            *n = if entering {
                *n + 1
            } else {
                n.saturating_sub(1)
            }
        };
        if x.is_nan() {
            step(&mut self.nan);
        } else if x == f64::INFINITY {
            step(&mut self.pos_inf);
        } else if x == f64::NEG_INFINITY {
            step(&mut self.neg_inf);
        } else {
            let x = if entering { x } else { -x };
            let t = self.sum + x;
            // Neumaier: keep the low-order bits the addition drops.
            self.compensation += if self.sum.abs() >= x.abs() {
                (self.sum - t) + x
            } else {
                (x - t) + self.sum
            };
            self.sum = t;
            self.finite = if entering {
                self.finite + 1
            } else {
                self.finite.saturating_sub(1)
            };
            if self.finite == 0 {
                self.sum = 0.0;
                self.compensation = 0.0;
            }
        }
    }

    fn value(&self) -> f64 {
        if self.nan > 0 || (self.pos_inf > 0 && self.neg_inf > 0) {
            f64::NAN
        } else if self.pos_inf > 0 {
            f64::INFINITY
        } else if self.neg_inf > 0 {
            f64::NEG_INFINITY
        } else if cfg!(feature = "naive-sum") {
            self.sum
        } else {
            self.sum + self.compensation
        }
    }
}

/// One sliding window over the card's kept transactions.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
struct Window {
    /// Sequence number of the oldest transaction still in the window.
    start: u64,
    count: i64,
    sum: RunningSum,
    /// (sequence, amount), amounts strictly decreasing: the front is the maximum.
    max: VecDeque<(u64, f64)>,
}

/// Per-card state: the last 7 days of transactions and the running windows.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
pub struct CardState {
    /// Sequence number of `recent[0]`.
    base: u64,
    recent: VecDeque<Kept>,
    windows: [Window; 3],
    /// Merchant hash → transactions in the 24 h window.
    merchants_24h: BTreeMap<u64, u32>,
    last_ts: Option<i64>,
}

/// The transform.
pub struct TxnVelocity;

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl CardState {
    fn push(&mut self, kept: Kept) {
        let seq = self.base + self.recent.len() as u64;
        self.recent.push_back(kept);
        for w in &mut self.windows {
            w.count += 1;
            w.sum.update(kept.amount, true);
            if !kept.amount.is_nan() {
                while w.max.back().is_some_and(|&(_, m)| m <= kept.amount) {
                    w.max.pop_back();
                }
                w.max.push_back((seq, kept.amount));
            }
        }
        *self.merchants_24h.entry(kept.merchant).or_insert(0) += 1;
    }

    /// Moves every window's start past transactions at least its width older than `at`.
    fn evict(&mut self, at: i64) {
        for (i, w) in self.windows.iter_mut().enumerate() {
            while let Some(kept) = self.recent.get((w.start - self.base) as usize) {
                // By age, not by `at - width`: that saturates near i64::MIN.
                if at.saturating_sub(kept.ts) < WINDOWS[i] {
                    break;
                }
                w.count -= 1;
                w.sum.update(kept.amount, false);
                if w.max.front().is_some_and(|&(seq, _)| seq == w.start) {
                    w.max.pop_front();
                }
                if i == DAY_WINDOW
                    && let Some(n) = self.merchants_24h.get_mut(&kept.merchant)
                {
                    *n -= 1;
                    if *n == 0 {
                        self.merchants_24h.remove(&kept.merchant);
                    }
                }
                w.start += 1;
            }
        }
        while self.base < self.windows[LONGEST].start && self.recent.pop_front().is_some() {
            self.base += 1;
        }
    }

    fn row(&self, since_prev: Option<i64>) -> Velocity {
        let agg = |w: &Window| {
            let sum = w.sum.value();
            let mean = (w.count > 0).then(|| sum / w.count as f64);
            (w.count, sum, mean, w.max.front().map(|&(_, m)| m))
        };
        let (h, d, w) = (
            agg(&self.windows[0]),
            agg(&self.windows[1]),
            agg(&self.windows[2]),
        );
        Velocity {
            txn_count_1h: h.0,
            txn_sum_1h: h.1,
            txn_mean_1h: h.2,
            txn_max_1h: h.3,
            txn_count_24h: d.0,
            txn_sum_24h: d.1,
            txn_mean_24h: d.2,
            txn_max_24h: d.3,
            txn_count_7d: w.0,
            txn_sum_7d: w.1,
            txn_mean_7d: w.2,
            txn_max_7d: w.3,
            secs_since_prev_txn: since_prev.map(|us| us as f64 / Timestamp::SECOND as f64),
            distinct_merchants_24h: self.merchants_24h.len() as i64,
        }
    }
}

impl Transform for TxnVelocity {
    type Event<'a> = Transaction<'a>;
    type Row = Velocity;
    type State = CardState;

    fn manifest() -> Manifest {
        let manifest = lockstep_sdk::schema::manifest::<Self>("txn_velocity", "1.0.0")
            .description("Per-card transaction velocity: counts, sums, means and maxima over 1 h, 24 h and 7 d windows.")
            .keyed_stateful(if cfg!(feature = "no-timers") { 1 } else { 2 })
            .supports_read();
        if cfg!(feature = "no-timers") {
            return manifest.build();
        }
        manifest.timers(Timestamp::MINUTE as u64).build()
    }

    fn apply(
        state: &mut CardState,
        txn: Transaction<'_>,
        out: &mut Emit<'_, Velocity>,
    ) -> Result<(), Error> {
        let t = txn.ts.micros();
        // Evict first: a window that empties resets to an exact zero before `t` enters.
        state.evict(t);
        state.push(Kept {
            ts: t,
            amount: txn.amount,
            merchant: fnv1a(txn.merchant),
        });
        let since_prev = state.last_ts.map(|p| t.saturating_sub(p));
        state.last_ts = Some(t);
        out.emit(state.row(since_prev))?;
        // Each window changes again when this transaction leaves it.
        if cfg!(feature = "no-timers") {
            return Ok(());
        }
        for width in WINDOWS {
            if let Some(leaves) = t.checked_add(width) {
                out.wake_at(Timestamp(leaves))?;
            }
        }
        Ok(())
    }

    fn wake(
        state: &mut CardState,
        at: Timestamp,
        out: &mut Emit<'_, Velocity>,
    ) -> Result<(), Error> {
        let t = at.micros();
        let Some(last) = state.last_ts.filter(|&l| l <= t) else {
            return Ok(());
        };
        // In place: what leaves now would leave at the next transaction anyway, in the
        // same order, so the sums keep their bits.
        state.evict(t);
        out.emit(state.row(Some(t.saturating_sub(last))))
    }

    fn read(state: &CardState, as_of: Timestamp) -> Option<Velocity> {
        let at = as_of.micros();
        let last = state.last_ts.filter(|&l| l <= at)?;
        let mut slid = state.clone();
        slid.evict(at);
        Some(slid.row(Some(at.saturating_sub(last))))
    }
}

lockstep_sdk::export!(TxnVelocity);

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_sdk::testing::{check_derived, check_manifest, run_timed};

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
                txn_id: None,
            },
        )
    }

    #[test]
    fn manifest_is_valid() {
        check_manifest::<TxnVelocity>().expect("valid manifest");
        check_derived::<TxnVelocity>().expect("the manifest matches the structs");
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

    /// The windows the naive way: scan everything kept, at `at`.
    fn naive(events: &[(i64, f64, &str)], at: i64) -> Velocity {
        let mut aggs = [(0i64, 0.0f64, None::<f64>); 3];
        let mut merchants = std::collections::BTreeSet::new();
        for &(ts, amount, merchant) in events.iter().filter(|e| e.0 <= at) {
            for (i, agg) in aggs.iter_mut().enumerate() {
                if at - ts < WINDOWS[i] {
                    agg.0 += 1;
                    agg.1 += amount;
                    agg.2 = Some(agg.2.map_or(amount, |m: f64| m.max(amount)));
                }
            }
            if at - ts < WINDOWS[DAY_WINDOW] {
                merchants.insert(merchant);
            }
        }
        let mean = |a: (i64, f64, Option<f64>)| (a.0 > 0).then(|| a.1 / a.0 as f64);
        Velocity {
            txn_count_1h: aggs[0].0,
            txn_sum_1h: aggs[0].1,
            txn_mean_1h: mean(aggs[0]),
            txn_max_1h: aggs[0].2,
            txn_count_24h: aggs[1].0,
            txn_sum_24h: aggs[1].1,
            txn_mean_24h: mean(aggs[1]),
            txn_max_24h: aggs[1].2,
            txn_count_7d: aggs[2].0,
            txn_sum_7d: aggs[2].1,
            txn_mean_7d: mean(aggs[2]),
            txn_max_7d: aggs[2].2,
            secs_since_prev_txn: None,
            distinct_merchants_24h: merchants.len() as i64,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    /// The documented rule, computed from the raw events alone: rows exist at every
    /// event time and wherever a transaction leaves a window (rounded up to the
    /// minute); a label at `label` sees the windows at the latest such instant before it.
    fn naive_at_label(events: &[(i64, f64, &str)], label: i64) -> Option<Velocity> {
        let minute = Timestamp::MINUTE;
        let instants = events.iter().flat_map(|&(ts, _, _)| {
            std::iter::once(ts).chain(
                WINDOWS
                    .iter()
                    .map(move |w| (ts + w + minute - 1).div_euclid(minute) * minute),
            )
        });
        let r = instants.filter(|&p| p < label).max()?;
        Some(naive(events, r))
    }

    proptest::proptest! {
        #[test]
        fn every_label_sees_the_windows_the_raw_events_give(
            gaps in proptest::collection::vec(0i64..3 * 3600, 1..40),
            amounts in proptest::collection::vec(-1e3f64..1e3, 40),
            merchants in proptest::collection::vec(0usize..4, 40),
            labels in proptest::collection::vec(0i64..10 * 86_400, 1..30),
            on_the_minute in proptest::bool::ANY,
        ) {
            const NAMES: [&str; 4] = ["a", "b", "c", "d"];
            // Times to the second, or to the minute (then every change point is on
            // the timer grid and the value at a label is the window just before it).
            let unit = if on_the_minute { Timestamp::MINUTE } else { Timestamp::SECOND };
            let mut t = 0i64;
            let events: Vec<(i64, f64, &str)> = gaps.iter().enumerate().map(|(i, g)| {
                t += g / (unit / Timestamp::SECOND) * unit;
                (t, amounts[i], NAMES[merchants[i]])
            }).collect();
            let horizon = 10 * Timestamp::DAY + Timestamp::HOUR;
            let rows = timeline(&events, horizon);
            for &label in &labels {
                let label = label * Timestamp::SECOND;
                let got = as_of(&rows, label);
                let want = naive_at_label(&events, label);
                proptest::prop_assert_eq!(got.is_some(), want.is_some(), "label {}", label);
                let (Some(got), Some(want)) = (got, want) else { continue };
                proptest::prop_assert_eq!(
                    (got.txn_count_1h, got.txn_count_24h, got.txn_count_7d, got.distinct_merchants_24h),
                    (want.txn_count_1h, want.txn_count_24h, want.txn_count_7d, want.distinct_merchants_24h),
                    "label {}", label
                );
                proptest::prop_assert_eq!((got.txn_max_1h, got.txn_max_24h, got.txn_max_7d), (want.txn_max_1h, want.txn_max_24h, want.txn_max_7d));
                proptest::prop_assert!(close(got.txn_sum_1h, want.txn_sum_1h) && close(got.txn_sum_24h, want.txn_sum_24h) && close(got.txn_sum_7d, want.txn_sum_7d));
                if on_the_minute {
                    // Exact: the windows just before the label, from the raw events.
                    let exact = naive(&events, label - 1);
                    proptest::prop_assert_eq!(
                        (got.txn_count_1h, got.txn_count_24h, got.txn_count_7d),
                        (exact.txn_count_1h, exact.txn_count_24h, exact.txn_count_7d),
                        "label {}", label
                    );
                }
            }
        }

        #[test]
        fn incremental_windows_match_a_naive_scan(
            gaps in proptest::collection::vec(0i64..4 * 3600, 1..120),
            amounts in proptest::collection::vec(-1e4f64..1e4, 120),
            merchants in proptest::collection::vec(0usize..5, 120),
            probe in 0i64..10 * 86_400,
        ) {
            const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];
            let mut t = 0i64;
            let events: Vec<(i64, f64, &str)> = gaps.iter().enumerate().map(|(i, g)| {
                t += g * Timestamp::SECOND;
                (t, amounts[i], NAMES[merchants[i]])
            }).collect();
            let mut state = CardState::default();
            let rows = run_timed::<TxnVelocity>(&mut state, events.iter().map(|&(ts, amount, merchant)| {
                (Timestamp(ts), Transaction { card_id: "c", ts: Timestamp(ts), amount, merchant, txn_id: None })
            })).expect("apply");
            for (i, (_, row)) in rows.iter().enumerate() {
                let want = naive(&events[..=i], events[i].0);
                proptest::prop_assert_eq!(
                    (row.txn_count_1h, row.txn_count_24h, row.txn_count_7d, row.distinct_merchants_24h),
                    (want.txn_count_1h, want.txn_count_24h, want.txn_count_7d, want.distinct_merchants_24h)
                );
                proptest::prop_assert_eq!((row.txn_max_1h, row.txn_max_24h, row.txn_max_7d), (want.txn_max_1h, want.txn_max_24h, want.txn_max_7d));
                proptest::prop_assert!(close(row.txn_sum_1h, want.txn_sum_1h) && close(row.txn_sum_24h, want.txn_sum_24h) && close(row.txn_sum_7d, want.txn_sum_7d));
            }
            let at = t + probe * Timestamp::SECOND;
            let read = TxnVelocity::read(&state, Timestamp(at)).expect("read");
            let want = naive(&events, at);
            proptest::prop_assert_eq!((read.txn_count_1h, read.txn_count_7d, read.distinct_merchants_24h, read.txn_max_7d), (want.txn_count_1h, want.txn_count_7d, want.distinct_merchants_24h, want.txn_max_7d));
            proptest::prop_assert!(close(read.txn_sum_7d, want.txn_sum_7d));
            proptest::prop_assert!(state.recent.len() as i64 == state.windows[LONGEST].count, "state keeps only the 7-day window");
        }
    }

    /// `txn` events driven as a host drives them: wake-ups between and after them.
    fn timeline(events: &[(i64, f64, &str)], until: i64) -> Vec<(Timestamp, Velocity)> {
        let mut card = lockstep_sdk::testing::Entity::<TxnVelocity>::new();
        let mut rows = Vec::new();
        for &(ts, amount, merchant) in events {
            let txn = Transaction {
                card_id: "c",
                ts: Timestamp(ts),
                amount,
                merchant,
                txn_id: None,
            };
            rows.extend(card.apply(Timestamp(ts), txn).expect("apply"));
        }
        rows.extend(card.advance(Timestamp(until)).expect("advance"));
        rows
    }

    /// What a training label at `label` sees: the last row strictly before it.
    fn as_of(rows: &[(Timestamp, Velocity)], label: i64) -> Option<&Velocity> {
        rows.iter().rev().find(|(t, _)| t.0 < label).map(|(_, r)| r)
    }

    #[test]
    fn a_card_idle_since_nine_has_a_row_at_ten_and_a_label_at_two_sees_zero() {
        let nine = 9 * Timestamp::HOUR;
        let events = [
            (nine - 20 * Timestamp::MINUTE, 5.0, "m1"),
            (nine, 10.0, "m2"),
        ];
        let two = 14 * Timestamp::HOUR;
        let rows = timeline(&events, two);
        let times: Vec<i64> = rows.iter().map(|(t, _)| t.0).collect();
        assert_eq!(
            times,
            [
                nine - 20 * Timestamp::MINUTE,
                nine,
                nine + 40 * Timestamp::MINUTE,
                nine + Timestamp::HOUR
            ],
            "a row when each transaction leaves the 1 h window; none after 14:00"
        );
        let at_two = as_of(&rows, two).expect("a row before 14:00");
        assert_eq!(
            (at_two.txn_count_1h, at_two.txn_sum_1h, at_two.txn_mean_1h),
            (0, 0.0, None)
        );
        assert_eq!((at_two.txn_count_24h, at_two.txn_sum_24h), (2, 15.0));
        assert_eq!(
            at_two.secs_since_prev_txn,
            Some(3600.0),
            "as of the wake-up"
        );
        // The naive window just before 14:00 over the raw events says the same.
        let naive = naive(&events, two - 1);
        assert_eq!(
            (
                at_two.txn_count_1h,
                at_two.txn_count_24h,
                at_two.txn_count_7d
            ),
            (naive.txn_count_1h, naive.txn_count_24h, naive.txn_count_7d)
        );
    }

    #[test]
    fn a_window_that_empties_sums_to_exactly_zero() {
        let mut state = CardState::default();
        let rows = run_timed::<TxnVelocity>(
            &mut state,
            [
                txn("c", 0, 0.1, "m"),
                txn("c", 1, 0.2, "m"),
                txn("c", 7200, 0.3, "m"),
            ],
        )
        .expect("apply");
        assert_eq!(
            rows[2].1.txn_sum_1h.to_bits(),
            0.3f64.to_bits(),
            "no residue from 0.1 + 0.2 - 0.1 - 0.2"
        );
        let empty = TxnVelocity::read(&state, Timestamp::from_secs(7200 + 3600)).expect("read");
        assert_eq!(
            (
                empty.txn_sum_1h.to_bits(),
                empty.txn_max_1h,
                empty.txn_mean_1h
            ),
            (0f64.to_bits(), None, None)
        );
    }

    #[test]
    fn non_finite_amounts_leave_the_window_cleanly() {
        let mut state = CardState::default();
        let rows = run_timed::<TxnVelocity>(
            &mut state,
            [
                txn("c", 0, f64::NAN, "m"),
                txn("c", 10, f64::INFINITY, "m"),
                txn("c", 4000, 2.0, "m"),
            ],
        )
        .expect("apply");
        assert!(rows[1].1.txn_sum_1h.is_nan(), "NaN and +inf together");
        assert_eq!(rows[1].1.txn_max_1h, Some(f64::INFINITY), "max ignores NaN");
        let r = &rows[2].1;
        assert_eq!(
            (r.txn_sum_1h, r.txn_max_1h),
            (2.0, Some(2.0)),
            "both left the 1 h window"
        );
        assert!(r.txn_sum_24h.is_nan());
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
                        txn_id: None,
                    },
                ),
                (
                    Timestamp(i64::MAX),
                    Transaction {
                        card_id: "c",
                        ts: Timestamp(i64::MAX),
                        amount: f64::INFINITY,
                        merchant: "é",
                        txn_id: None,
                    },
                ),
            ],
        )
        .expect("apply");
        assert_eq!(rows[1].1.txn_max_7d, Some(f64::INFINITY));
        assert!(rows[0].1.txn_sum_1h.is_nan());
    }
}
