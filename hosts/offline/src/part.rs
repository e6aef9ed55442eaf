//! One hour partition's file: the columns the store adds, how a file is encoded, and
//! what a write put in place. Shared by the store (which reads and summarises) and the
//! writer (which encodes and commits).

use crate::backend::Backend;
use crate::{OfflineError, layout};
use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use lockstep_abi::Manifest;
use lockstep_core::schema::row_schema;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::arrow::{ArrowSchemaConverter, ArrowWriter, add_encoded_arrow_schema_to_metadata};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::SchemaDescriptor;
use std::path::PathBuf;
use std::sync::Arc;

/// Columns the store adds after the plugin's row columns, in order.
pub const STORE_COLUMNS: [&str; 4] = [
    "write_time",
    "api_invocation_time",
    "is_deleted",
    "plugin_hash",
];

/// Rows per Parquet row group: large enough for good compression and scans, small
/// enough that readers can skip by statistics.
pub(crate) const ROW_GROUP_ROWS: usize = 128 * 1024;

/// The schema of stored rows: the plugin's row columns, then [`STORE_COLUMNS`].
pub(crate) fn stored_schema(manifest: &Manifest) -> SchemaRef {
    let mut fields: Vec<Field> = row_schema(manifest)
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    fields.push(Field::new(STORE_COLUMNS[0], ts.clone(), false));
    fields.push(Field::new(STORE_COLUMNS[1], ts, false));
    fields.push(Field::new(STORE_COLUMNS[2], DataType::Boolean, false));
    fields.push(Field::new(STORE_COLUMNS[3], DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    /// Rows written.
    pub rows: usize,
    /// Hour partitions written (each replaced whole).
    pub partitions: usize,
    /// The files, in partition order.
    pub files: Vec<PathBuf>,
    /// The hour partitions written, in the same order.
    pub hours: Vec<layout::Hour>,
    /// Each file written, in the same order, as a table's log records it.
    pub parts: Vec<WrittenPart>,
}

/// One file a write put in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenPart {
    /// Its path relative to the store root, `/`-separated.
    pub rel: String,
    /// Rows in it.
    pub rows: usize,
    /// Its size in bytes.
    pub bytes: u64,
    /// SHA-256 of its bytes, lowercase hex.
    pub sha256: String,
    /// Its hour partition.
    pub hour: layout::Hour,
}

/// Encodes hour partitions of one schema as the Parquet files they are put as.
///
/// Built once per commit: the writer properties, the Parquet schema and the Arrow
/// schema kept in each file's metadata are the same for every hour, and a sparse year
/// writes thousands of small files, where working them out again for each was a
/// noticeable part of the encoding. The bytes are those `ArrowWriter::try_new` writes
/// with the same properties (a test holds them equal).
pub(crate) struct PartEncoder {
    schema: SchemaRef,
    props: WriterProperties,
    parquet_schema: SchemaDescriptor,
}

impl PartEncoder {
    /// An encoder for batches of `schema`.
    pub(crate) fn new(schema: SchemaRef) -> Result<Self, parquet::errors::ParquetError> {
        let mut props = writer_properties();
        let parquet_schema = ArrowSchemaConverter::new()
            .with_coerce_types(props.coerce_types())
            .convert(&schema)?;
        add_encoded_arrow_schema_to_metadata(&schema, &mut props);
        Ok(PartEncoder {
            schema,
            props,
            parquet_schema,
        })
    }

    /// The schema of the batches it encodes.
    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Encodes `batch` (of the encoder's schema) as the file `rel_dir/file_name`: its
    /// path relative to the store root, and its bytes (put in place by the backend).
    pub(crate) fn encode(
        &self,
        backend: &Backend,
        rel_dir: &str,
        file_name: &str,
        batch: &RecordBatch,
    ) -> Result<(String, Vec<u8>), OfflineError> {
        let rel = format!("{rel_dir}/{file_name}");
        let parquet = |source| OfflineError::Parquet {
            path: backend.locate(&rel),
            source,
        };
        let options = ArrowWriterOptions::new()
            .with_properties(self.props.clone())
            .with_parquet_schema(self.parquet_schema.clone())
            .with_skip_arrow_metadata(true);
        let mut writer =
            ArrowWriter::try_new_with_options(Vec::new(), self.schema.clone(), options)
                .map_err(parquet)?;
        writer.write(batch).map_err(parquet)?;
        let bytes = writer.into_inner().map_err(parquet)?;
        Ok((rel, bytes))
    }
}

/// How every hour file is written.
fn writer_properties() -> WriterProperties {
    let props = WriterProperties::builder()
        // Snappy, the codec Spark, Glue and DuckDB write by default, which every
        // engine reads. ZSTD makes files ~35 % smaller but costs a backfill ~20 % of
        // its CPU: the writer sets up a ZSTD context per column chunk, and a backfill
        // writes hundreds of hour files (2M transactions: 3.3 s against 4.2 s).
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by("lockstep".into())
        // Feature columns are mostly distinct floats: a dictionary is built, found too
        // big and abandoned for each of them, and its page compressed on the way.
        // Without it a backfill writes ~8 % faster and the files come out ~23 %
        // smaller (2M transactions, txn_velocity: 91 MB against 118 MB).
        .set_dictionary_enabled(false);
    // The store's own columns hold one value per file (one write time, one plugin
    // hash): as a dictionary each page is a few bytes of run-length indices, where
    // plain pages made the 64-character hash a third of every file's bytes before
    // compression, and Snappy the largest cost of a commit.
    STORE_COLUMNS
        .iter()
        .fold(props, |props, column| {
            props.set_column_dictionary_enabled((*column).into(), true)
        })
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{
        ArrayRef, BooleanArray, Float64Array, StringArray, TimestampMicrosecondArray,
    };

    #[test]
    fn the_reused_encoder_writes_the_bytes_a_fresh_arrow_writer_writes() {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let schema = Arc::new(Schema::new(vec![
            Field::new("card_id", DataType::Utf8, false),
            Field::new("event_time", ts.clone(), false),
            Field::new("txn_sum", DataType::Float64, true),
            Field::new(STORE_COLUMNS[0], ts.clone(), false),
            Field::new(STORE_COLUMNS[1], ts, false),
            Field::new(STORE_COLUMNS[2], DataType::Boolean, false),
            Field::new(STORE_COLUMNS[3], DataType::Utf8, false),
        ]));
        let batch = |n: usize| {
            let stamp = TimestampMicrosecondArray::from(vec![7; n]).with_timezone("UTC");
            let columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("card-{i}")),
                )),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values((0..n).map(|i| i as i64 * 1_000))
                        .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from_iter(
                    (0..n).map(|i| (i % 3 != 0).then_some(i as f64 / 7.0)),
                )),
                Arc::new(stamp.clone()),
                Arc::new(stamp),
                Arc::new(BooleanArray::from(vec![false; n])),
                Arc::new(StringArray::from(vec!["a-hash"; n])),
            ];
            RecordBatch::try_new(schema.clone(), columns).expect("batch")
        };
        let backend = Backend::local(std::env::temp_dir()).expect("backend");
        let encoder = PartEncoder::new(schema.clone()).expect("encoder");
        for n in [0, 1, 40, 5_000] {
            let (rel, reused) = encoder
                .encode(
                    &backend,
                    "g/version=1/year=2024",
                    "part-0.parquet",
                    &batch(n),
                )
                .expect("encode");
            assert_eq!(rel, "g/version=1/year=2024/part-0.parquet");
            let mut fresh =
                ArrowWriter::try_new(Vec::new(), schema.clone(), Some(writer_properties()))
                    .expect("writer");
            fresh.write(&batch(n)).expect("write");
            assert_eq!(reused, fresh.into_inner().expect("close"), "{n} rows");
        }
    }
}
