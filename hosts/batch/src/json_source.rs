//! JSON-lines sources, streamed: lines are decoded by `lockstep-core`'s decoder (the one
//! every host uses) in batches as they are read, so a file larger than memory streams
//! like Parquet does. Local files are read on a blocking thread, S3 objects as a byte
//! stream split into lines. Bad lines become [`SourceReject`]s naming line and field.

use crate::SourceReject;
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::StreamExt;
use lockstep_abi::Manifest;
use lockstep_core::decode::JsonDecoder;
use object_store::{ObjectStore, ObjectStoreExt};
use std::io::BufRead;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Where the lines come from.
#[derive(Debug, Clone)]
pub(crate) enum JsonFile {
    /// A local file.
    Local(String),
    /// An object: the store, its key, and its URL for messages.
    Object(Arc<dyn ObjectStore>, object_store::path::Path, String),
}

/// One JSON-lines file as a DataFusion partition.
#[derive(Debug)]
pub(crate) struct JsonLinesPartition {
    pub(crate) file: JsonFile,
    pub(crate) manifest: Manifest,
    pub(crate) schema: SchemaRef,
    pub(crate) rejects: Arc<Mutex<Vec<SourceReject>>>,
    pub(crate) progress: Arc<crate::Progress>,
    /// Events later than this (UTC µs) are rejects.
    pub(crate) latest_event_time: Option<i64>,
}

/// Decodes lines into batches, keeping rejects.
struct LineDecoder {
    decoder: JsonDecoder,
    line: u64,
    rejects: Arc<Mutex<Vec<SourceReject>>>,
    progress: Arc<crate::Progress>,
    name: String,
    /// Rows per batch: the session's batch size, so memory accounting downstream
    /// (the sort's share of the pool) sees batches of the size it plans for.
    batch_rows: usize,
}

impl LineDecoder {
    /// Takes one line as read; a line that is not UTF-8 is a reject like any bad
    /// record (kept, with its text made readable), not the end of the job.
    fn push_bytes(&mut self, bytes: &[u8]) -> Result<Option<RecordBatch>, DataFusionError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => self.push(text),
            Err(e) => {
                self.line += 1;
                self.progress.rows_read.fetch_add(1, Ordering::Relaxed);
                self.progress.rejected.fetch_add(1, Ordering::Relaxed);
                let mut record = serde_json::Map::new();
                record.insert(
                    "line".into(),
                    serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()),
                );
                let mut sink = self.rejects.lock().unwrap_or_else(|p| p.into_inner());
                sink.push(SourceReject {
                    column: String::new(),
                    reason: format!("{}, line {}: not UTF-8 text ({e})", self.name, self.line),
                    record,
                });
                Ok(None)
            }
        }
    }

    /// Takes one line; returns a full batch when one is ready.
    fn push(&mut self, text: &str) -> Result<Option<RecordBatch>, DataFusionError> {
        self.line += 1;
        if text.trim().is_empty() {
            return Ok(None);
        }
        if let Err(error) = self.decoder.push_record(text, self.line) {
            self.progress.rows_read.fetch_add(1, Ordering::Relaxed);
            self.progress.rejected.fetch_add(1, Ordering::Relaxed);
            let record = match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => {
                    let mut map = serde_json::Map::new();
                    map.insert("line".into(), serde_json::Value::String(text.to_owned()));
                    map
                }
            };
            let mut sink = self.rejects.lock().unwrap_or_else(|p| p.into_inner());
            sink.push(SourceReject {
                column: error.field.clone().unwrap_or_default(),
                reason: format!("{}, line {}: {}", self.name, error.line, error.message),
                record,
            });
            return Ok(None);
        }
        if self.decoder.len() >= self.batch_rows {
            return self.finish().map(Some);
        }
        Ok(None)
    }

    fn finish(&mut self) -> Result<RecordBatch, DataFusionError> {
        Ok(self.decoder.finish()?)
    }
}

impl PartitionStream for JsonLinesPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (tx, rx) = mpsc::channel::<Result<RecordBatch, DataFusionError>>(2);
        let mut json = JsonDecoder::new(&self.manifest);
        json.set_latest_event_time(self.latest_event_time);
        let mut decoder = LineDecoder {
            decoder: json,
            line: 0,
            rejects: self.rejects.clone(),
            progress: self.progress.clone(),
            batch_rows: ctx.session_config().batch_size().max(1),
            name: match &self.file {
                JsonFile::Local(path) => path.clone(),
                JsonFile::Object(_, _, url) => url.clone(),
            },
        };
        match self.file.clone() {
            JsonFile::Local(path) => {
                tokio::task::spawn_blocking(move || {
                    let result = read_local(&path, &mut decoder, &tx);
                    if let Err(e) = result {
                        let _ = tx.blocking_send(Err(e));
                    }
                });
            }
            JsonFile::Object(store, key, url) => {
                tokio::spawn(async move {
                    if let Err(e) = read_object(store, key, &url, &mut decoder, &tx).await {
                        let _ = tx.send(Err(e)).await;
                    }
                });
            }
        }
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

fn read_local(
    path: &str,
    decoder: &mut LineDecoder,
    tx: &mpsc::Sender<Result<RecordBatch, DataFusionError>>,
) -> Result<(), DataFusionError> {
    let source = |e: std::io::Error| DataFusionError::Execution(format!("reading {path}: {e}"));
    let file = std::fs::File::open(path).map_err(source)?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(source)? == 0 {
            break;
        }
        let end = line
            .iter()
            .rposition(|b| !matches!(b, b'\n' | b'\r'))
            .map_or(0, |i| i + 1);
        if let Some(batch) = decoder.push_bytes(&line[..end])?
            && tx.blocking_send(Ok(batch)).is_err()
        {
            return Ok(()); // the consumer is gone
        }
    }
    let last = decoder.finish()?;
    if last.num_rows() > 0 {
        let _ = tx.blocking_send(Ok(last));
    }
    Ok(())
}

async fn read_object(
    store: Arc<dyn ObjectStore>,
    key: object_store::path::Path,
    url: &str,
    decoder: &mut LineDecoder,
    tx: &mpsc::Sender<Result<RecordBatch, DataFusionError>>,
) -> Result<(), DataFusionError> {
    let source = |e: object_store::Error| DataFusionError::Execution(format!("reading {url}: {e}"));
    let mut chunks = store.get(&key).await.map_err(source)?.into_stream();
    let mut pending: Vec<u8> = Vec::new();
    let emit =
        |bytes: &[u8], decoder: &mut LineDecoder| -> Result<Option<RecordBatch>, DataFusionError> {
            decoder.push_bytes(bytes.strip_suffix(b"\r").unwrap_or(bytes))
        };
    while let Some(chunk) = chunks.next().await {
        pending.extend_from_slice(&chunk.map_err(source)?);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
            let batch = emit(&pending[start..start + end], decoder)?;
            start += end + 1;
            if let Some(batch) = batch
                && tx.send(Ok(batch)).await.is_err()
            {
                return Ok(());
            }
        }
        pending.drain(..start);
    }
    if !pending.is_empty()
        && let Some(batch) = emit(&pending, decoder)?
        && tx.send(Ok(batch)).await.is_err()
    {
        return Ok(());
    }
    let last = decoder.finish()?;
    if last.num_rows() > 0 {
        let _ = tx.send(Ok(last)).await;
    }
    Ok(())
}
