//! The plugin from `plugin-sdk/GUIDE.md`, compiled and tested with the SDK so the guide
//! cannot rot. Keep the two in step.

use lockstep_sdk::prelude::*;
use std::collections::VecDeque;

const WINDOW: i64 = 30 * Timestamp::DAY;

/// One input event, its input schema written once: fields are matched to the batch's
/// columns by name, typed by their Rust types. `&str` borrows from the batch (no copy);
/// `Option<T>` is a nullable field.
#[derive(Deserialize, Event)]
pub struct Order<'a> {
    /// Customer.
    #[event(key)]
    pub customer_id: &'a str,
    /// Order time.
    #[event(time)]
    pub ts: Timestamp,
    /// Order total.
    pub amount: f64,
    /// Coupon code, if any.
    pub coupon: Option<&'a str>,
    /// Unique order id: duplicates with the same id are applied once.
    #[event(id)]
    pub order_id: Option<&'a str>,
}

/// One output row: one feature per field, in order, with the value served when serving
/// degrades.
#[derive(Serialize, Features, Debug, PartialEq)]
pub struct Totals {
    /// Orders in the last 30 days.
    #[feat(default = 0)]
    pub orders_30d: i64,
    /// Spend in the last 30 days.
    #[feat(default = 0.0)]
    pub spent_30d: f64,
    /// This order used a coupon.
    #[feat(default = false)]
    pub used_coupon: bool,
}

/// Per-customer state. The SDK encodes it (compact, versioned); the host stores it.
#[derive(Serialize, Deserialize, Default)]
pub struct Recent {
    orders: VecDeque<(i64, f64)>,
}

/// The transform.
pub struct OrderTotals;

impl Transform for OrderTotals {
    type Event<'a> = Order<'a>;
    type Row = Totals;
    type State = Recent;

    fn manifest() -> Manifest {
        lockstep_sdk::schema::manifest::<Self>("order_totals", "1.0.0")
            .description("Orders and spend per customer over 30 days.")
            .keyed_stateful(1) // bump when `Recent` changes shape
            .build()
    }

    fn apply(
        state: &mut Recent,
        order: Order<'_>,
        out: &mut Emit<'_, Totals>,
    ) -> Result<(), Error> {
        let t = order.ts.micros();
        while state
            .orders
            .front()
            .is_some_and(|&(ts, _)| t - ts >= WINDOW)
        {
            state.orders.pop_front();
        }
        state.orders.push_back((t, order.amount));
        out.emit(Totals {
            orders_30d: state.orders.len() as i64,
            spent_30d: state.orders.iter().map(|&(_, a)| a).sum(),
            used_coupon: order.coupon.is_some(),
        })
    }
}

lockstep_sdk::export!(OrderTotals);

fn main() {
    println!("{}", OrderTotals::manifest().id());
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_sdk::testing::{check_derived, check_manifest, run_timed};

    #[test]
    fn counts_the_last_30_days() {
        check_manifest::<OrderTotals>().unwrap(); // the same rules hosts apply at load
        check_derived::<OrderTotals>().unwrap(); // the manifest matches the structs
        let order = |day: i64, amount| {
            let ts = Timestamp(day * Timestamp::DAY);
            (
                ts,
                Order {
                    customer_id: "c",
                    ts,
                    amount,
                    coupon: None,
                    order_id: None,
                },
            )
        };
        let rows = run_timed::<OrderTotals>(
            &mut Recent::default(),
            [order(0, 10.0), order(10, 5.0), order(40, 1.0)],
        )
        .unwrap();
        assert_eq!(
            rows[1].1,
            Totals {
                orders_30d: 2,
                spent_30d: 15.0,
                used_coupon: false
            }
        );
        assert_eq!(rows[2].1.orders_30d, 1);
    }
}
