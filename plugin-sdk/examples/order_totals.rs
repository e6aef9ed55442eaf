//! The plugin from `plugin-sdk/GUIDE.md`, compiled and tested with the SDK so the guide
//! cannot rot. Keep the two in step.

use lockstep_sdk::prelude::*;
use std::collections::VecDeque;

const WINDOW: i64 = 30 * Timestamp::DAY;

/// One input event. Fields are matched to the manifest's input fields by name;
/// `&str` borrows from the batch (no copy), `Option<T>` for nullable fields.
#[derive(Deserialize)]
pub struct Order<'a> {
    pub customer_id: &'a str,
    pub ts: Timestamp,
    pub amount: f64,
    pub coupon: Option<&'a str>,
}

/// One output row: one field per feature, in manifest order. `Option` = nullable.
#[derive(Serialize, Debug, PartialEq)]
pub struct Totals {
    pub orders_30d: i64,
    pub spent_30d: f64,
    pub used_coupon: bool,
}

/// Per-customer state. The SDK encodes it (compact, versioned); the host stores it.
#[derive(Serialize, Deserialize, Default)]
pub struct Recent {
    orders: VecDeque<(i64, f64)>,
}

pub struct OrderTotals;

impl Transform for OrderTotals {
    type Event<'a> = Order<'a>;
    type Row = Totals;
    type State = Recent;

    fn manifest() -> Manifest {
        ManifestBuilder::new("order_totals", "1.0.0")
            .description("Orders and spend per customer over 30 days.")
            .keyed_stateful(1) // bump when `Recent` changes shape
            .field("customer_id", ValueType::String, "customer")
            .field("ts", ValueType::Timestamp, "order time")
            .field("amount", ValueType::Float64, "order total")
            .optional_field("coupon", ValueType::String, "coupon code, if any")
            .optional_field("order_id", ValueType::String, "unique order id")
            .entity_key("customer_id")
            .event_time("ts")
            .event_id("order_id") // duplicates with the same id are applied once
            .feature(
                "orders_30d",
                ValueType::Int64,
                "orders in the last 30 days",
                Value::Int64(0),
            )
            .feature(
                "spent_30d",
                ValueType::Float64,
                "spend in the last 30 days",
                Value::Float64(0.0),
            )
            .feature(
                "used_coupon",
                ValueType::Boolean,
                "this order used a coupon",
                Value::Boolean(false),
            )
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
    use lockstep_sdk::testing::{check_manifest, run_timed};

    #[test]
    fn counts_the_last_30_days() {
        check_manifest::<OrderTotals>().unwrap(); // the same rules hosts apply at load
        let order = |day: i64, amount| {
            let ts = Timestamp(day * Timestamp::DAY);
            (
                ts,
                Order {
                    customer_id: "c",
                    ts,
                    amount,
                    coupon: None,
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
