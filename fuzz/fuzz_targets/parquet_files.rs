//! Any bytes as a Parquet file, as the batch host reads a source file: the footer and
//! metadata checks first (`hosts/batch/src/parquet_check.rs`, which turn a damaged
//! file into an error naming it), then, for a file that passes them, the arrow reader
//! over every row group and column. An error is fine; a panic is a crash.
//! Seeds: `fuzz/seeds/parquet_files` (small files in each codec).
#![no_main]

use libfuzzer_sys::fuzz_target;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

#[path = "../../hosts/batch/src/parquet_check.rs"]
#[allow(dead_code)]
mod parquet_check;

fuzz_target!(|data: &[u8]| {
    let size = data.len() as u64;
    if parquet_check::footer_problem(size, data).is_some()
        || parquet_check::metadata_problem(size, data).is_some()
    {
        return;
    }
    let bytes = bytes::Bytes::copy_from_slice(data);
    let Ok(builder) = ParquetRecordBatchReaderBuilder::try_new(bytes) else {
        return;
    };
    let Ok(reader) = builder.with_batch_size(64).build() else {
        return;
    };
    for batch in reader {
        if batch.is_err() {
            return;
        }
    }
});
