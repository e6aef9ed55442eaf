//! Erasing entities from a large offline store: builds a group of ROWS rows (each of
//! CARDS cards active for a few hours, cards spread over 30 days), then purges ERASED
//! cards — a clustered block (cards active in the same days: a subject-access batch)
//! or cards drawn at random (the worst case: every hour holds one) — and reports the
//! time, the hours scanned and rewritten, the bytes rewritten, and whether exactly the
//! hours that held an erased card's row changed (every other file compared byte for
//! byte before and after).
//!
//! usage: erase-offline STORE_DIR [ROWS=10000000] [CARDS=1000000] [ERASED=100000] [clustered|random]

use arrow_array::TimestampMicrosecondArray;
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use lockstep_bench::arg;
use lockstep_core::{EntityKey, Erasures};
use lockstep_offline::{OfflineStore, WriterOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

const JANUARY_2024: i64 = 1_704_067_200_000_000;
const HOUR: i64 = 3_600_000_000;
const HOURS: i64 = 30 * 24;
/// How long a card is active: its rows fall in this many hours after its start.
const ACTIVE_HOURS: i64 = 6;

fn card_name(card: u64) -> String {
    format!("card-{card:07}")
}

/// The start of card `card`'s activity: cards in order over the 30 days.
fn card_start(card: u64, cards: u64) -> i64 {
    JANUARY_2024 + (card as i64 * (HOURS - ACTIVE_HOURS) / cards as i64) * HOUR
}

fn files_hashes(root: &std::path::Path) -> BTreeMap<String, u64> {
    fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut BTreeMap<String, u64>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                walk(&p, root, out);
            } else if p.extension().is_some_and(|e| e == "parquet") {
                let bytes = std::fs::read(&p).unwrap_or_default();
                let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
                out.insert(rel, fnv64(&bytes));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// FNV-1a 64: enough to tell a changed file from an unchanged one.
fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[tokio::main]
async fn main() {
    let Some(store_dir) = std::env::args().nth(1) else {
        eprintln!("usage: erase-offline STORE_DIR [ROWS] [CARDS] [ERASED] [clustered|random]");
        std::process::exit(2);
    };
    let rows = arg(2, 10_000_000);
    let cards = arg(3, 1_000_000).max(1);
    let erased_count = arg(4, 100_000).min(cards);
    let mode = std::env::args()
        .nth(5)
        .unwrap_or_else(|| "clustered".into());
    let store = OfflineStore::open(&store_dir).expect("open the offline store");
    let m = lockstep_bench::card_profile_manifest();
    let group = store
        .register(&m, "synthetic-card-profile", 0)
        .await
        .expect("register card_profile");

    // The erased cards, and the hours their rows fall in.
    let mut state = 11u64;
    let erased: BTreeSet<u64> = match mode.as_str() {
        "random" => {
            let mut set = BTreeSet::new();
            while (set.len() as u64) < erased_count {
                set.insert(lockstep_bench::splitmix(&mut state) % cards);
            }
            set
        }
        _ => {
            let first = cards / 3;
            (first..first + erased_count).collect()
        }
    };

    let built = Instant::now();
    let mut writer = store.writer(&group, 1, WriterOptions::default());
    let schema = lockstep_core::schema::row_schema(&m);
    let mut held_erased: BTreeSet<i64> = BTreeSet::new();
    let mut erased_rows = 0u64;
    let chunk = 200_000u64;
    let mut written = 0u64;
    let mut state = 7u64;
    while written < rows {
        let n = chunk.min(rows - written);
        let mut ids = Vec::with_capacity(n as usize);
        let mut times = Vec::with_capacity(n as usize);
        for i in 0..n {
            let card = (written + i) % cards;
            let t = card_start(card, cards)
                + (lockstep_bench::splitmix(&mut state) % (ACTIVE_HOURS * HOUR) as u64) as i64;
            if erased.contains(&card) {
                held_erased.insert(t.div_euclid(HOUR));
                erased_rows += 1;
            }
            ids.push(card_name(card));
            times.push(t);
        }
        let risk: Vec<f64> = (0..n)
            .map(|_| (lockstep_bench::splitmix(&mut state) % 10_000) as f64 / 100.0)
            .collect();
        let age: Vec<i64> = (0..n)
            .map(|_| (lockstep_bench::splitmix(&mut state) % 3650) as i64)
            .collect();
        let cb: Vec<i64> = (0..n)
            .map(|_| (lockstep_bench::splitmix(&mut state) % 4) as i64)
            .collect();
        let ticket: Vec<f64> = (0..n)
            .map(|_| (lockstep_bench::splitmix(&mut state) % 50_000) as f64 / 100.0)
            .collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(TimestampMicrosecondArray::from(times).with_timezone("UTC")),
            Arc::new(Float64Array::from(risk)),
            Arc::new(Int64Array::from(age)),
            Arc::new(Int64Array::from(cb)),
            Arc::new(Float64Array::from(ticket)),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
        writer.write(&batch).expect("write");
        written += n;
    }
    let summary = writer.commit().await.expect("commit");
    let build_secs = built.elapsed().as_secs_f64();
    let store_bytes: u64 = summary.parts.iter().map(|p| p.bytes).sum();
    let before = files_hashes(std::path::Path::new(&store_dir));

    let mut boundary = Erasures::new();
    for card in &erased {
        boundary.insert(
            EntityKey::Str(card_name(*card)),
            JANUARY_2024 + HOURS * HOUR,
        );
    }
    let dry_started = Instant::now();
    let found = store
        .purge(&group, &boundary, "erase-offline dry run", true)
        .await
        .expect("dry run");
    let dry_secs = dry_started.elapsed().as_secs_f64();
    let started = Instant::now();
    let done = store
        .purge(&group, &boundary, "erase-offline", false)
        .await
        .expect("purge");
    let purge_secs = started.elapsed().as_secs_f64();
    let after = files_hashes(std::path::Path::new(&store_dir));
    let changed: BTreeSet<&String> = before
        .iter()
        .filter(|(rel, hash)| after.get(*rel) != Some(hash))
        .map(|(rel, _)| rel)
        .collect();
    let rewritten: BTreeSet<&String> = done.hours_rewritten.iter().collect();
    let only_those = changed == rewritten && rewritten.len() == held_erased.len();
    println!(
        "{}",
        serde_json::json!({
            "mode": mode,
            "rows": rows,
            "cards": cards,
            "erased_cards": erased.len(),
            "erased_rows_generated": erased_rows,
            "hours": summary.partitions,
            "store_bytes": store_bytes,
            "build_seconds": build_secs,
            "dry_run_seconds": dry_secs,
            "dry_run_rows_found": found.rows_removed,
            "purge_seconds": purge_secs,
            "rows_removed": done.rows_removed,
            "hours_scanned": done.hours_scanned,
            "hours_holding_erased_rows": held_erased.len(),
            "hours_rewritten": done.hours_rewritten.len(),
            "files_changed": changed.len(),
            "only_those_hours_changed": only_those,
            "bytes_read": done.bytes_read,
            "bytes_rewritten_before": done.bytes_before,
            "bytes_rewritten_after": done.bytes_after,
        })
    );
    assert_eq!(
        done.rows_removed as u64, erased_rows,
        "every erased row removed"
    );
    assert!(only_those, "files outside the erased cards' hours changed");
}
