//! Deterministic synthetic events: the same seed gives the same bytes on any machine.
//!
//! Realistic where it matters to feature code: entity popularity is skewed (a few
//! entities have many events), timestamps come in bursts and collide at second
//! resolution, arrival order is only roughly chronological, and a share of events is
//! delivered twice.

use serde_json::json;

pub mod golden;

/// SplitMix64: tiny, fast and fully specified, so data never changes under us.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, n)`; `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Skewed pick in `[0, n)`: low indices are much more likely (roughly Zipf).
    pub fn skewed(&mut self, n: u64) -> u64 {
        let u = self.unit();
        ((n as f64) * u * u * u).min(n as f64 - 1.0) as u64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// 2024-01-01T00:00:00Z in microseconds.
pub const EPOCH_2024: i64 = 1_704_067_200_000_000;
const SECOND: i64 = 1_000_000;
const DAY: i64 = 86_400 * SECOND;

/// Card transactions as columns, in arrival order.
#[derive(Debug, Clone, Default)]
pub struct Transactions {
    /// Entity key.
    pub card_id: Vec<String>,
    /// Event time, UTC microseconds.
    pub ts: Vec<i64>,
    /// Amount.
    pub amount: Vec<f64>,
    /// Merchant.
    pub merchant: Vec<String>,
    /// Event id (duplicates share it).
    pub txn_id: Vec<String>,
}

impl Transactions {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    /// Writes them as JSON lines, in the `txn_velocity` input schema.
    pub fn write_json_lines(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        for i in 0..self.len() {
            let line = json!({"card_id": self.card_id[i], "ts": self.ts[i], "amount": self.amount[i],
                              "merchant": self.merchant[i], "txn_id": self.txn_id[i]});
            writeln!(out, "{line}")?;
        }
        Ok(())
    }

    /// As JSON lines, in the `txn_velocity` input schema.
    pub fn to_json_lines(&self) -> String {
        let mut out = String::with_capacity(self.len() * 110);
        for i in 0..self.len() {
            out.push_str(
                &json!({"card_id": self.card_id[i], "ts": self.ts[i], "amount": self.amount[i],
                        "merchant": self.merchant[i], "txn_id": self.txn_id[i]})
                .to_string(),
            );
            out.push('\n');
        }
        out
    }
}

/// `rows` transactions over `cards` cards and 30 days, with ~1% duplicates.
pub fn transactions(rows: usize, cards: u64, seed: u64) -> Transactions {
    let mut stream = TransactionStream::new(rows, cards, seed);
    stream.next_chunk(rows).unwrap_or_default()
}

/// [`transactions`] in chunks, in constant memory: for inputs larger than memory.
/// Chunks concatenated equal `transactions(rows, cards, seed)`.
#[derive(Debug, Clone)]
pub struct TransactionStream {
    rows: usize,
    cards: u64,
    seed: u64,
    next: usize,
    arrivals: Rng,
}

impl TransactionStream {
    /// A stream of `rows` transactions over `cards` cards.
    pub fn new(rows: usize, cards: u64, seed: u64) -> Self {
        TransactionStream {
            rows,
            cards: cards.max(1),
            seed,
            next: 0,
            arrivals: Rng::new(seed),
        }
    }

    /// The next at most `max` transactions, or `None` at the end.
    pub fn next_chunk(&mut self, max: usize) -> Option<Transactions> {
        if self.next >= self.rows {
            return None;
        }
        let end = self.rows.min(self.next.saturating_add(max.max(1)));
        let mut t = Transactions::default();
        for i in self.next..end {
            // ~1% of arrivals repeat an earlier transaction, byte for byte, possibly
            // long after it: every row's content is a pure function of its index, so
            // the repeat is regenerated instead of remembered.
            let original = if i > 0 && self.arrivals.below(100) == 0 {
                self.arrivals.below(i as u64) as usize
            } else {
                i
            };
            self.push_row(&mut t, original);
        }
        self.next = end;
        Some(t)
    }

    fn push_row(&self, t: &mut Transactions, i: usize) {
        let mut rng = Rng::new(self.seed ^ (i as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
        let span = 30 * DAY;
        // Roughly chronological arrival with jitter; whole seconds so bursts collide.
        let base = EPOCH_2024 + (span as f64 * (i as f64 / self.rows.max(1) as f64)) as i64;
        let jitter = rng.below(600) as i64 * SECOND;
        t.ts.push((base + jitter) / SECOND * SECOND);
        t.card_id
            .push(format!("card-{:06}", rng.skewed(self.cards)));
        t.amount
            .push(((3.0 + 1.1 * rng.normal()).exp() * 100.0).round() / 100.0);
        t.merchant
            .push(format!("merchant-{:04}", rng.skewed(2_000)));
        t.txn_id.push(format!("txn-{i:09}"));
    }
}

/// Customer activity (`churn_features` input) as JSON lines.
pub fn activity(rows: usize, customers: u64, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let customers = customers.max(1);
    let mut out = String::with_capacity(rows * 120);
    for c in 0..customers.min(rows as u64) {
        let ts = EPOCH_2024 - rng.below(365) as i64 * DAY;
        out.push_str(&json!({"customer_id": format!("cust-{c:05}"), "ts": ts, "event_type": "signup", "event_id": format!("su-{c}")}).to_string());
        out.push('\n');
    }
    for i in customers.min(rows as u64) as usize..rows {
        let c = rng.skewed(customers);
        let ts = EPOCH_2024 + rng.below(120 * 86_400) as i64 * SECOND;
        let (kind, minutes) = match rng.below(10) {
            0..=3 => ("login", None),
            4..=8 => ("session", Some((rng.unit() * 60.0 * 100.0).round() / 100.0)),
            _ => ("ticket", None),
        };
        out.push_str(
            &json!({"customer_id": format!("cust-{c:05}"), "ts": ts, "event_type": kind,
                             "session_minutes": minutes, "event_id": format!("ev-{i}")})
            .to_string(),
        );
        out.push('\n');
    }
    out
}

/// Page views (`clickstream_clean` input) as JSON lines, with bots and junk URLs.
pub fn clicks(rows: usize, users: u64, seed: u64) -> String {
    const PAGES: [&str; 6] = [
        "/",
        "/Cart/",
        "/product/42?ref=ad",
        "/search?q=shoes",
        "/checkout",
        "/help#faq",
    ];
    const AGENTS: [&str; 5] = [
        "Mozilla/5.0 (Windows NT 10.0) Chrome/120",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) Mobile",
        "Mozilla/5.0 (Linux; Android 14) Mobile",
        "Googlebot/2.1 (+http://www.google.com/bot.html)",
        "python-requests/2.31",
    ];
    let mut rng = Rng::new(seed);
    let mut out = String::with_capacity(rows * 200);
    for i in 0..rows {
        let page = PAGES[rng.below(PAGES.len() as u64) as usize];
        let url = if rng.below(50) == 0 {
            "javascript:void(0)".to_owned()
        } else {
            format!("https://www.shop.example{page}")
        };
        let referrer = match rng.below(3) {
            0 => None,
            1 => Some("https://shop.example/"),
            _ => Some("https://search.example/?q=shop"),
        };
        let dwell = if rng.below(20) == 0 {
            -1
        } else {
            rng.below(120_000) as i64
        };
        out.push_str(&json!({"user_id": format!("user-{:05}", rng.skewed(users.max(1))),
            "ts": EPOCH_2024 + rng.below(7 * 86_400) as i64 * SECOND, "url": url, "referrer": referrer,
            "user_agent": AGENTS[rng.skewed(AGENTS.len() as u64) as usize], "dwell_ms": dwell,
            "event_id": format!("pv-{i}")}).to_string());
        out.push('\n');
    }
    out
}

/// Apply requests for `txn_velocity` over `t`: events grouped by card and ordered by
/// `(time, txn_id)` as hosts order them (duplicates kept: both sides of a comparison
/// see the same bytes), at most `per_call` events per request unless one card has
/// more, no card split across requests, every card starting without state.
pub fn velocity_requests(
    t: &Transactions,
    per_call: usize,
) -> Result<Vec<Vec<u8>>, lockstep_abi::AbiError> {
    use lockstep_abi::{ApplyRequest, ColumnBuilder, ValueType};
    let mut order: Vec<usize> = (0..t.len()).collect();
    order.sort_by(|&a, &b| {
        (&t.card_id[a], t.ts[a], &t.txn_id[a]).cmp(&(&t.card_id[b], t.ts[b], &t.txn_id[b]))
    });
    let mut requests = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let mut end = (start + per_call.max(1)).min(order.len());
        while end < order.len() && t.card_id[order[end]] == t.card_id[order[end - 1]] {
            end += 1;
        }
        let slice = &order[start..end];
        let mut counts: Vec<u32> = Vec::new();
        for (j, &i) in slice.iter().enumerate() {
            if j == 0 || t.card_id[i] != t.card_id[slice[j - 1]] {
                counts.push(0);
            }
            if let Some(c) = counts.last_mut() {
                *c += 1;
            }
        }
        let mut cols = [
            ColumnBuilder::new(ValueType::String),
            ColumnBuilder::new(ValueType::Timestamp),
            ColumnBuilder::new(ValueType::Float64),
            ColumnBuilder::new(ValueType::String),
            ColumnBuilder::new(ValueType::String),
        ];
        for &i in slice {
            cols[0].push_str(&t.card_id[i]);
            cols[1].push_i64(t.ts[i]);
            cols[2].push_f64(t.amount[i]);
            cols[3].push_str(&t.merchant[i]);
            cols[4].push_str(&t.txn_id[i]);
        }
        let states = vec![None; counts.len()];
        let mut req = ApplyRequest::new(&counts, &states, cols.len())?;
        for c in &cols {
            req.column(c)?;
        }
        requests.push(req.finish()?);
        start = end;
    }
    Ok(requests)
}

/// The kinds of events [`events`] makes, one per example plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Card transactions (`txn_velocity`).
    Transactions,
    /// Customer activity: signups, logins, sessions, tickets (`churn_features`).
    Logins,
    /// Page views (`clickstream_clean`).
    Clicks,
}

/// `rows` events of `kind` over `entities` entities as JSON lines.
pub fn events(kind: Kind, rows: usize, entities: u64, seed: u64) -> String {
    match kind {
        Kind::Transactions => transactions(rows, entities, seed).to_json_lines(),
        Kind::Logins => activity(rows, entities, seed),
        Kind::Clicks => clicks(rows, entities, seed),
    }
}

/// Replaces `count` lines of `jsonl` (chosen by `seed`) with malformed records:
/// truncated JSON, a non-object, a missing or null field, a wrong type. Returns the
/// text and the 1-based line numbers that were broken, in order.
pub fn corrupt(jsonl: &str, count: usize, seed: u64) -> (String, Vec<u64>) {
    let mut lines: Vec<String> = jsonl.lines().map(str::to_owned).collect();
    let mut rng = Rng::new(seed ^ 0xbad);
    let mut broken = std::collections::BTreeSet::new();
    while broken.len() < count.min(lines.len()) {
        broken.insert(rng.below(lines.len() as u64) as usize);
    }
    for &i in &broken {
        let line = &lines[i];
        let mut object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).unwrap_or_default();
        let first_key = object.keys().next().cloned().unwrap_or_default();
        lines[i] = match rng.below(5) {
            0 => line[..line.len() / 2].to_owned(),
            1 => "[\"not\", \"an\", \"object\"]".to_owned(),
            2 => {
                object.remove(&first_key);
                serde_json::Value::Object(object).to_string()
            }
            3 => {
                object.insert(first_key, serde_json::Value::Null);
                serde_json::Value::Object(object).to_string()
            }
            _ => {
                for v in object.values_mut() {
                    if v.is_number() {
                        *v = serde_json::Value::String("not a number".into());
                        break;
                    }
                }
                serde_json::Value::Object(object).to_string()
            }
        };
    }
    let mut text = lines.join("\n");
    text.push('\n');
    (text, broken.into_iter().map(|i| i as u64 + 1).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_data_other_seed_other_data() {
        assert_eq!(
            transactions(500, 50, 7).to_json_lines(),
            transactions(500, 50, 7).to_json_lines()
        );
        assert_ne!(
            transactions(500, 50, 7).to_json_lines(),
            transactions(500, 50, 8).to_json_lines()
        );
        assert_eq!(clicks(100, 10, 1), clicks(100, 10, 1));
        assert_eq!(activity(100, 10, 1).lines().count(), 100);
    }

    #[test]
    fn corrupt_breaks_exactly_the_lines_it_reports() {
        let clean = events(Kind::Transactions, 200, 20, 3);
        let (dirty, broken) = corrupt(&clean, 15, 9);
        assert_eq!(broken.len(), 15);
        let changed: Vec<u64> = clean
            .lines()
            .zip(dirty.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| i as u64 + 1)
            .collect();
        assert_eq!(changed, broken);
        assert_eq!(dirty.lines().count(), 200);
    }

    #[test]
    fn chunks_concatenate_to_the_whole_and_duplicates_repeat_their_original() {
        let whole = transactions(3_000, 40, 11);
        let mut stream = TransactionStream::new(3_000, 40, 11);
        let mut joined = Transactions::default();
        while let Some(c) = stream.next_chunk(257) {
            joined.card_id.extend(c.card_id);
            joined.ts.extend(c.ts);
            joined.amount.extend(c.amount);
            joined.merchant.extend(c.merchant);
            joined.txn_id.extend(c.txn_id);
        }
        assert_eq!(joined.to_json_lines(), whole.to_json_lines());
        let mut first = std::collections::HashMap::new();
        for i in 0..whole.len() {
            let row = (
                &whole.card_id[i],
                whole.ts[i],
                whole.amount[i].to_bits(),
                &whole.merchant[i],
            );
            assert_eq!(*first.entry(&whole.txn_id[i]).or_insert(row), row);
        }
    }

    #[test]
    fn data_has_duplicates_and_skew() {
        let t = transactions(20_000, 1_000, 1);
        let mut ids = t.txn_id.clone();
        ids.sort();
        ids.dedup();
        let dups = t.len() - ids.len();
        assert!(
            (100..400).contains(&dups),
            "about 1% duplicates, got {dups}"
        );
        let hot = t
            .card_id
            .iter()
            .filter(|c| c.as_str() == "card-000000")
            .count();
        assert!(
            hot > 20_000 / 1_000 * 5,
            "the hottest card has far more than its share: {hot}"
        );
    }
}
