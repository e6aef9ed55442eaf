//! `lockstep gen events --out X.parquet`: synthetic transactions as Parquet, streamed.

use anyhow::{Context, Result};
use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use lockstep_gen::TransactionStream;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::path::Path;
use std::sync::Arc;

/// Rows per chunk and per row group.
const CHUNK: usize = 128 * 1024;

/// Writes every transaction of `stream` to `path` (ZSTD, 128k-row groups), in the
/// `txn_velocity` input schema with a UTC microsecond timestamp.
pub fn write(path: &Path, stream: &mut TransactionStream) -> Result<()> {
    let tmp = path.with_extension("parquet.partial");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_max_row_group_row_count(Some(CHUNK))
        .build();
    let mut writer: Option<ArrowWriter<std::fs::File>> = None;
    while let Some(t) = stream.next_chunk(CHUNK) {
        let columns: [(&str, ArrayRef); 5] = [
            ("card_id", Arc::new(StringArray::from(t.card_id))),
            (
                "ts",
                Arc::new(TimestampMicrosecondArray::from(t.ts).with_timezone("UTC")),
            ),
            ("amount", Arc::new(Float64Array::from(t.amount))),
            ("merchant", Arc::new(StringArray::from(t.merchant))),
            ("txn_id", Arc::new(StringArray::from(t.txn_id))),
        ];
        let batch = RecordBatch::try_from_iter(columns)?;
        let w = match &mut writer {
            Some(w) => w,
            None => writer.insert(ArrowWriter::try_new(
                file.try_clone()?,
                batch.schema(),
                Some(props.clone()),
            )?),
        };
        w.write(&batch)
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    match writer {
        Some(w) => {
            w.close()
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
        None => anyhow::bail!("no rows to write: --rows must be at least 1"),
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
