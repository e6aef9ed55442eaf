//! Golden event sets: the inputs of `golden/<plugin>/`, the regression and skew
//! baseline.
//!
//! Each set is a few thousand generated events (skewed entities, bursts, duplicates)
//! plus a block of hand-written edge cases, delivered in an arrival order that is out
//! of event-time order by at most [`MAX_DISORDER`]: an event never arrives after one
//! whose event time is more than that later. Any stream whose allowed lateness is at
//! least [`MAX_DISORDER`] therefore sees no late event in a golden set, and must
//! compute exactly what the batch host computes.

use crate::{EPOCH_2024, Kind, Rng, SECOND, events};
use serde_json::{Value as Json, json};

/// The largest gap, in event time, by which a golden event can arrive behind a later
/// one (UTC microseconds): five minutes.
pub const MAX_DISORDER: i64 = 5 * MINUTE;

/// Generated events in each golden set (before edge cases).
const BULK_EVENTS: usize = 3_000;
/// Entities of the generated events: skewed, so a few have hundreds of events and
/// many have one or two.
const BULK_ENTITIES: u64 = 200;

const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;

/// The golden events for `kind` as JSON lines, in arrival order. The same seed gives
/// the same bytes.
pub fn golden_events(kind: Kind, seed: u64) -> String {
    let time_field = "ts";
    let mut records: Vec<(i64, Json)> = events(kind, BULK_EVENTS, BULK_ENTITIES, seed)
        .lines()
        .filter_map(|line| serde_json::from_str::<Json>(line).ok())
        .filter_map(|mut record| {
            let ts = compress(record.get(time_field)?.as_i64()?);
            record[time_field] = Json::from(ts);
            Some((ts, record))
        })
        .collect();
    records.extend(match kind {
        Kind::Transactions => transaction_cases(),
        Kind::Logins => activity_cases(),
        Kind::Clicks => click_cases(),
    });
    let mut out = String::new();
    for record in in_bounded_disorder(records, seed) {
        out.push_str(&record.to_string());
        out.push('\n');
    }
    out
}

/// Packs generated history eight times denser, in whole seconds: arrival disorder
/// then reorders many neighbours, and more events share an instant.
fn compress(ts: i64) -> i64 {
    let packed = EPOCH_2024 + (ts - EPOCH_2024) / 8;
    packed - packed.rem_euclid(SECOND)
}

/// Orders `records` (with their event times) as they would arrive: each is delayed by
/// a random amount in `[0, MAX_DISORDER]` after its event time, ties kept in input
/// order. An event with time `t` can thus only arrive after one with time `u` when
/// `u - t <= MAX_DISORDER`.
fn in_bounded_disorder(records: Vec<(i64, Json)>, seed: u64) -> Vec<Json> {
    let mut rng = Rng::new(seed ^ 0x601d);
    let mut arrivals: Vec<(i64, usize, Json)> = records
        .into_iter()
        .enumerate()
        .map(|(i, (time, record))| {
            let delay = rng.below(MAX_DISORDER as u64 + 1) as i64;
            (time.saturating_add(delay), i, record)
        })
        .collect();
    arrivals.sort_by_key(|(arrival, i, _)| (*arrival, *i));
    arrivals.into_iter().map(|(_, _, record)| record).collect()
}

/// RFC 3339 text of UTC microseconds with a `+05:30` offset: the decoder must read
/// zones, not just `Z`.
fn rfc3339_offset(micros: i64) -> String {
    let zone = chrono::FixedOffset::east_opt(5 * 3600 + 30 * 60);
    match (chrono::DateTime::from_timestamp_micros(micros), zone) {
        (Some(t), Some(zone)) => t
            .with_timezone(&zone)
            .format("%Y-%m-%dT%H:%M:%S%.6f%:z")
            .to_string(),
        // Out of chrono's range: the integer form reads back as the same instant.
        _ => micros.to_string(),
    }
}

/// Edge cases for `txn_velocity`.
fn transaction_cases() -> Vec<(i64, Json)> {
    let t0 = EPOCH_2024 + 2 * 86_400 * SECOND;
    let mut out = Vec::new();
    let mut txn = |card: &str, ts: i64, amount: Json, merchant: &str, id: Option<String>| {
        let mut record = json!({"card_id": card, "ts": ts, "amount": amount, "merchant": merchant});
        if let Some(id) = id {
            record["txn_id"] = Json::String(id);
        }
        out.push((ts, record));
    };
    // An entity with exactly one event.
    txn(
        "edge-single",
        t0,
        json!(12.5),
        "merchant-0001",
        Some("e-single".into()),
    );
    // A burst: 25 events at one instant, ids out of lexical order on arrival.
    for k in 0..25 {
        let id = format!("e-burst-{:02}", (k * 7) % 25);
        txn(
            "edge-burst",
            t0 + HOUR,
            json!(1.0 + k as f64),
            "merchant-0002",
            Some(id),
        );
    }
    // Delivered three times: applied once.
    for _ in 0..3 {
        txn(
            "edge-dup",
            t0 + 2 * HOUR,
            json!(99.99),
            "merchant-0003",
            Some("e-dup".into()),
        );
    }
    // No event id: identity is the content hash; an exact repeat is a duplicate, a
    // different amount at the same instant is not.
    for amount in [5.0, 5.0, 6.0, 7.25] {
        txn(
            "edge-noid",
            t0 + 3 * HOUR,
            json!(amount),
            "merchant-0004",
            None,
        );
    }
    // Extreme floats: overflow to infinity, NaN, signed zero, subnormals, and sums
    // whose value depends on the order of addition.
    let extremes = [
        json!(1.797_693_134_862_315_7e308),
        json!(1.797_693_134_862_315_7e308),
        json!(-0.0),
        json!(5e-324),
        json!(0.1),
        json!(0.2),
        json!(0.3),
        json!(1e16),
        json!(1.0),
        json!(-1e16),
        json!("Infinity"),
        json!("-Infinity"),
        json!("NaN"),
        json!(-1.797_693_134_862_315_7e308),
    ];
    for (k, amount) in extremes.into_iter().enumerate() {
        let card = if k < 10 {
            "edge-float"
        } else {
            "edge-nonfinite"
        };
        txn(
            card,
            t0 + 4 * HOUR + k as i64 * MINUTE,
            amount,
            "merchant-0005",
            Some(format!("e-float-{k:02}")),
        );
    }
    // Strings: empty, non-ASCII, long; a non-ASCII entity key.
    txn(
        "edge-strings",
        t0 + 5 * HOUR,
        json!(3.0),
        "",
        Some("e-str-0".into()),
    );
    txn(
        "edge-strings",
        t0 + 5 * HOUR + SECOND,
        json!(4.0),
        "Café ☕ 東京 — ü",
        Some("e-str-1".into()),
    );
    txn(
        "edge-strings",
        t0 + 5 * HOUR + 2 * SECOND,
        json!(5.0),
        &"m".repeat(2_000),
        Some("e-str-2".into()),
    );
    txn(
        "карта-🚀-東京",
        t0 + 5 * HOUR,
        json!(8.0),
        "merchant-0006",
        Some("e-str-3".into()),
    );
    txn(
        "карта-🚀-東京",
        t0 + 5 * HOUR + MINUTE,
        json!(9.0),
        "merchant-0006",
        Some("".into()),
    );
    // Hour boundaries (the offline store partitions by hour) and microsecond steps.
    let h = t0 + 6 * HOUR;
    for (k, ts) in [h - 1, h, h + 1, h + HOUR - 1].into_iter().enumerate() {
        txn(
            "edge-boundary",
            ts,
            json!(10.0 * k as f64),
            "merchant-0007",
            Some(format!("e-bound-{k}")),
        );
    }
    // Many events for one entity, spread over days: windows slide and expire.
    for k in 0..400i64 {
        let ts = t0 + k * 37 * MINUTE;
        txn(
            "edge-many",
            ts,
            json!((k % 13) as f64 * 1.5),
            "merchant-0008",
            Some(format!("e-many-{k:03}")),
        );
    }
    // Long gaps: a card idle for hours, days and past every window, with times off
    // the minute, so its windows empty with no transaction to show it (wake-ups).
    for (k, ts) in [
        t0 + 9 * HOUR,
        t0 + 9 * HOUR + 17 * SECOND + 123,
        t0 + 2 * 86_400 * SECOND + 14 * HOUR,
        t0 + 12 * 86_400 * SECOND + 14 * HOUR,
    ]
    .into_iter()
    .enumerate()
    {
        txn(
            "edge-idle",
            ts,
            json!(5.0 + k as f64),
            "merchant-0010",
            Some(format!("e-idle-{k}")),
        );
    }
    // A time zone offset in the raw record.
    let ts = t0 + 7 * HOUR;
    out.push((
        ts,
        json!({"card_id": "edge-zone", "ts": rfc3339_offset(ts), "amount": 42.0, "merchant": "merchant-0009", "txn_id": "e-zone"}),
    ));
    out
}

/// Edge cases for `churn_features`.
fn activity_cases() -> Vec<(i64, Json)> {
    let t0 = EPOCH_2024 + 5 * 86_400 * SECOND;
    let mut out = Vec::new();
    let mut ev = |customer: &str, ts: i64, kind: &str, minutes: Json, id: Option<String>| {
        let mut record = json!({"customer_id": customer, "ts": ts, "event_type": kind, "session_minutes": minutes});
        if let Some(id) = id {
            record["event_id"] = Json::String(id);
        }
        out.push((ts, record));
    };
    ev(
        "edge-single",
        t0,
        "login",
        Json::Null,
        Some("c-single".into()),
    );
    // Signup, login and session at one instant.
    for (k, kind) in ["session", "signup", "login"].into_iter().enumerate() {
        ev(
            "edge-tied",
            t0 + HOUR,
            kind,
            if kind == "session" {
                json!(30.0)
            } else {
                Json::Null
            },
            Some(format!("c-tied-{k}")),
        );
    }
    for _ in 0..3 {
        ev(
            "edge-dup",
            t0 + 2 * HOUR,
            "session",
            json!(15.5),
            Some("c-dup".into()),
        );
    }
    for minutes in [json!(10.0), json!(10.0), json!(11.0)] {
        ev("edge-noid", t0 + 3 * HOUR, "session", minutes, None);
    }
    // Session lengths at the edges of float64, missing, and absurd.
    let extremes = [
        Json::Null,
        json!(-0.0),
        json!(5e-324),
        json!(1.797_693_134_862_315_7e308),
        json!(1.797_693_134_862_315_7e308),
        json!(-5.0),
        json!("NaN"),
        json!("Infinity"),
        json!("-Infinity"),
        json!(0.1),
    ];
    ev(
        "edge-float",
        t0 + 4 * HOUR - DAY_MICROS,
        "signup",
        Json::Null,
        Some("c-float-su".into()),
    );
    for (k, minutes) in extremes.into_iter().enumerate() {
        ev(
            "edge-float",
            t0 + 4 * HOUR + k as i64 * MINUTE,
            "session",
            minutes,
            Some(format!("c-float-{k:02}")),
        );
    }
    // Unknown and oddly spelled event types, empty and non-ASCII strings.
    for (k, kind) in ["", "SIGNUP", "登录", "ticket ", "logout"]
        .into_iter()
        .enumerate()
    {
        ev(
            "edge-types",
            t0 + 5 * HOUR + k as i64 * SECOND,
            kind,
            Json::Null,
            Some(format!("c-type-{k}")),
        );
    }
    ev(
        "клиент-🚀",
        t0 + 5 * HOUR,
        "signup",
        Json::Null,
        Some("".into()),
    );
    ev(
        "клиент-🚀",
        t0 + 6 * HOUR,
        "ticket",
        Json::Null,
        Some("c-utf-1".into()),
    );
    // A long history: windows of 30 and 90 days slide past old events.
    ev(
        "edge-many",
        t0 - 200 * DAY_MICROS,
        "signup",
        Json::Null,
        Some("c-many-su".into()),
    );
    for k in 0..300i64 {
        let kind = ["login", "session", "session", "ticket"][(k % 4) as usize];
        let minutes = if kind == "session" {
            json!((k % 17) as f64 + 0.25)
        } else {
            Json::Null
        };
        ev(
            "edge-many",
            t0 - 150 * DAY_MICROS + k * 13 * HOUR,
            kind,
            minutes,
            Some(format!("c-many-{k:03}")),
        );
    }
    let ts = t0 + 7 * HOUR;
    out.push((
        ts,
        json!({"customer_id": "edge-zone", "ts": rfc3339_offset(ts), "event_type": "login", "event_id": "c-zone"}),
    ));
    out
}

const DAY_MICROS: i64 = 86_400 * SECOND;

/// Edge cases for `clickstream_clean`.
fn click_cases() -> Vec<(i64, Json)> {
    let t0 = EPOCH_2024 + 6 * HOUR;
    let chrome = "Mozilla/5.0 (Windows NT 10.0) Chrome/120";
    let mut out = Vec::new();
    let mut view = |user: &str,
                    ts: i64,
                    url: &str,
                    referrer: Json,
                    agent: Json,
                    dwell: Json,
                    id: Option<String>| {
        let mut record = json!({"user_id": user, "ts": ts, "url": url, "referrer": referrer, "user_agent": agent, "dwell_ms": dwell});
        if let Some(id) = id {
            record["event_id"] = Json::String(id);
        }
        out.push((ts, record));
    };
    view(
        "edge-single",
        t0,
        "https://www.shop.example/",
        Json::Null,
        json!(chrome),
        json!(1_000),
        Some("p-single".into()),
    );
    for k in 0..10 {
        view(
            "edge-tied",
            t0 + HOUR,
            "https://www.shop.example/cart",
            Json::Null,
            json!(chrome),
            json!(k * 100),
            Some(format!("p-tied-{}", (k * 3) % 10)),
        );
    }
    for _ in 0..3 {
        view(
            "edge-dup",
            t0 + 2 * HOUR,
            "https://www.shop.example/",
            Json::Null,
            json!(chrome),
            json!(5),
            Some("p-dup".into()),
        );
    }
    for dwell in [json!(7), json!(7), json!(8)] {
        view(
            "edge-noid",
            t0 + 3 * HOUR,
            "https://www.shop.example/",
            Json::Null,
            json!(chrome),
            dwell,
            None,
        );
    }
    // Dwell times at the int64 limits, zero, negative, missing.
    for (k, dwell) in [
        json!(i64::MAX),
        json!(i64::MIN),
        json!(0),
        json!(-1),
        Json::Null,
        json!(i64::MAX - 1),
    ]
    .into_iter()
    .enumerate()
    {
        view(
            "edge-ints",
            t0 + 4 * HOUR + k as i64 * SECOND,
            "https://www.shop.example/p",
            Json::Null,
            json!(chrome),
            dwell,
            Some(format!("p-int-{k}")),
        );
    }
    // URLs and agents: empty, upper case, non-ASCII, non-http, very long, missing.
    let urls = [
        "",
        "HTTPS://WWW.SHOP.EXAMPLE/Cart/",
        "https://例え.jp/パス?q=靴#上",
        "javascript:void(0)",
        "ftp://shop.example/file",
        "https://www.shop.example/search?q=",
        "https://www.shop.example/%E2%9C%93",
    ];
    for (k, url) in urls.into_iter().enumerate() {
        view(
            "edge-urls",
            t0 + 5 * HOUR + k as i64 * SECOND,
            url,
            json!("https://search.example/"),
            json!(chrome),
            json!(300),
            Some(format!("p-url-{k}")),
        );
    }
    let long = format!("https://www.shop.example/{}", "a".repeat(4_000));
    view(
        "edge-urls",
        t0 + 5 * HOUR + 10 * SECOND,
        &long,
        Json::Null,
        Json::Null,
        Json::Null,
        Some("p-url-long".into()),
    );
    for (k, agent) in [
        Json::Null,
        json!(""),
        json!("Googlebot/2.1"),
        json!("curl/8.0"),
        json!("Mozilla/5.0 (Linux; Android 14) Mobile ✓"),
    ]
    .into_iter()
    .enumerate()
    {
        view(
            "edge-agents",
            t0 + 6 * HOUR + k as i64 * SECOND,
            "https://www.shop.example/",
            json!(""),
            agent,
            json!(20),
            Some(format!("p-ua-{k}")),
        );
    }
    view(
        "посетитель-🚀",
        t0 + 6 * HOUR,
        "https://www.shop.example/",
        Json::Null,
        json!(chrome),
        json!(1),
        Some("".into()),
    );
    for k in 0..300i64 {
        let page = ["/", "/cart", "/checkout", "/product/1"][(k % 4) as usize];
        view(
            "edge-many",
            t0 + k * 17 * MINUTE,
            &format!("https://www.shop.example{page}"),
            Json::Null,
            json!(chrome),
            json!(k * 11),
            Some(format!("p-many-{k:03}")),
        );
    }
    let ts = t0 + 7 * HOUR;
    out.push((
        ts,
        json!({"user_id": "edge-zone", "ts": rfc3339_offset(ts), "url": "https://www.shop.example/", "event_id": "p-zone"}),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(text: &str) -> Vec<i64> {
        text.lines()
            .map(|l| serde_json::from_str::<Json>(l).unwrap_or(Json::Null))
            .map(|r| match &r["ts"] {
                Json::Number(n) => n.as_i64().unwrap_or(i64::MIN),
                // The one zoned record per set: checked apart below.
                _ => i64::MIN,
            })
            .collect()
    }

    #[test]
    fn arrival_is_out_of_order_but_never_by_more_than_the_bound() {
        for kind in [Kind::Transactions, Kind::Logins, Kind::Clicks] {
            let text = golden_events(kind, 1);
            assert_eq!(text, golden_events(kind, 1), "not deterministic");
            let ts: Vec<i64> = times(&text)
                .into_iter()
                .filter(|&t| t != i64::MIN)
                .collect();
            assert!(ts.len() > BULK_EVENTS, "{kind:?}: too few events");
            let mut max_seen = i64::MIN;
            let mut behind = 0;
            for &t in &ts {
                assert!(
                    t >= max_seen.saturating_sub(MAX_DISORDER),
                    "{kind:?}: an event {} µs behind",
                    max_seen - t
                );
                if t < max_seen {
                    behind += 1;
                }
                max_seen = max_seen.max(t);
            }
            assert!(behind > 100, "{kind:?}: only {behind} events out of order");
        }
    }

    #[test]
    fn zoned_timestamps_name_the_same_instant() {
        assert_eq!(
            rfc3339_offset(EPOCH_2024),
            "2024-01-01T05:30:00.000000+05:30"
        );
        assert_eq!(
            rfc3339_offset(EPOCH_2024 - 1),
            "2024-01-01T05:29:59.999999+05:30"
        );
    }
}
