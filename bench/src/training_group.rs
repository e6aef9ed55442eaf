//! Writes a synthetic feature group into an offline store, for the training-set
//! benchmark's second group: `card_profile`, keyed by `card_id` like `txn_velocity`,
//! rows spread over January 2024, written through the offline store's own writer.
//!
//! usage: training-group STORE_DIR [ROWS=10000000] [CARDS=1000000] [SEED=7]

use arrow_array::TimestampMicrosecondArray;
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use lockstep_bench::arg;
use lockstep_offline::{OfflineStore, WriterOptions};
use std::sync::Arc;

const JANUARY_2024: i64 = 1_704_067_200_000_000;
const THIRTY_DAYS: i64 = 30 * 86_400 * 1_000_000;

#[tokio::main]
async fn main() {
    let Some(store_dir) = std::env::args().nth(1) else {
        eprintln!("usage: training-group STORE_DIR [ROWS] [CARDS] [SEED]");
        std::process::exit(2);
    };
    let rows = arg(2, 10_000_000) as usize;
    let cards = arg(3, 1_000_000).max(1);
    let mut state = arg(4, 7);
    let store = OfflineStore::open(&store_dir).expect("open the offline store");
    let m = lockstep_bench::card_profile_manifest();
    let group = store
        .register(&m, "synthetic-card-profile", 0)
        .await
        .expect("register card_profile");
    let mut writer = store.writer(&group, 1, WriterOptions::default());
    let schema = lockstep_core::schema::row_schema(&m);
    let chunk = 100_000;
    let mut written = 0;
    while written < rows {
        let n = chunk.min(rows - written);
        let mut ids = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        let (mut risk, mut age, mut chargebacks, mut ticket) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for _ in 0..n {
            let r = lockstep_bench::splitmix(&mut state);
            ids.push(format!("card-{:06}", r % cards));
            times.push(
                JANUARY_2024 + (lockstep_bench::splitmix(&mut state) % THIRTY_DAYS as u64) as i64,
            );
            risk.push((lockstep_bench::splitmix(&mut state) % 10_000) as f64 / 10_000.0);
            age.push((lockstep_bench::splitmix(&mut state) % 3_650) as i64);
            chargebacks.push((lockstep_bench::splitmix(&mut state) % 4) as i64);
            ticket.push((lockstep_bench::splitmix(&mut state) % 50_000) as f64 / 100.0);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(TimestampMicrosecondArray::from(times).with_timezone("UTC")),
            Arc::new(Float64Array::from(risk)),
            Arc::new(Int64Array::from(age)),
            Arc::new(Int64Array::from(chargebacks)),
            Arc::new(Float64Array::from(ticket)),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
        writer.write(&batch).expect("write");
        written += n;
    }
    let summary = writer.commit().await.expect("commit");
    println!(
        "card_profile@1.0.0: {} rows in {} hour partitions under {store_dir}",
        summary.rows, summary.partitions
    );
}
