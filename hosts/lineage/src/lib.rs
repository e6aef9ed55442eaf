//! The served-feature log: which value of which feature every answer of the serving
//! path gave, from where, made by which plugin — and finding one answer again by the
//! request id its response carried.
//!
//! `serve --log-features LOCATION` hands each `/v1/features` answer to a bounded queue
//! ([`lockstep_serving::http::FeatureLog`]: never waited on, a full queue drops and
//! counts). [`FeatureLogWriter`] drains it off the request path and writes one row per
//! entity answered into Parquet files under hourly partitions, flushed every
//! [`LogOptions::flush_every`] or [`LogOptions::flush_rows`]:
//!
//! ```text
//! <location>/served/date=2026-12-06/hour=18/part-<writer>-<n>.parquet
//!   request_id, served_at, feature_group, version, plugin_hash, entity, source,
//!   event_time, features (JSON array), feature_values (JSON array)
//! ```
//!
//! DuckDB reads them as they are (`read_parquet('<location>/served/**/*.parquet')`).
//! [`find`] reads the hour a request id names and returns its rows. The location is a
//! directory or `s3://bucket/prefix`. This crate writes and reads the log; it never
//! decides what is served.

use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use futures::TryStreamExt;
use lockstep_aws::AwsOptions;
use lockstep_client::api::{FeatureResponse, Source};
use lockstep_serving::http::ServedAnswer;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Why the log could not be written or read.
#[derive(Debug, Error)]
pub enum LineageError {
    /// The location cannot be used.
    #[error("the served-feature log location {location}")]
    Location {
        /// As given.
        location: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Reading, writing or listing an object failed.
    #[error("{action} {location}")]
    Object {
        /// What was being done.
        action: &'static str,
        /// The object or prefix.
        location: String,
        /// Why.
        #[source]
        source: object_store::Error,
    },
    /// A file could not be encoded or decoded.
    #[error("the served-feature log file {location}")]
    Parquet {
        /// The file.
        location: String,
        /// Why.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Rows could not be assembled.
    #[error("assembling served-feature log rows")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// The id is not one `serve` gives.
    #[error(
        "`{0}` is not a request id of `lockstep serve` (they look like 18e3c1a2b4f00-1a2b3c4d-7)"
    )]
    NotARequestId(String),
}

/// How the writer flushes.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Answers waiting for the writer at most; beyond, answers are dropped and counted.
    pub queue: usize,
    /// Write a file at least this often while answers come.
    pub flush_every: Duration,
    /// …or once this many rows wait.
    pub flush_rows: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            queue: 65_536,
            flush_every: Duration::from_secs(10),
            flush_rows: 200_000,
        }
    }
}

/// One entity of one answer, as logged.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedRow {
    /// The request id the response carried.
    pub request_id: String,
    /// When it was answered, µs since the epoch.
    pub served_at: i64,
    /// The feature group.
    pub group: String,
    /// Its version.
    pub version: String,
    /// The component that made the values (`None` for defaults).
    pub plugin_hash: Option<String>,
    /// The entity key.
    pub entity: String,
    /// `cache`, `store`, `missing` or `default`.
    pub source: String,
    /// The event time of the row served, RFC 3339 (`None` for defaults).
    pub event_time: Option<String>,
    /// The features, in value order.
    pub features: Vec<String>,
    /// The values as served (exact JSON).
    pub values: Vec<serde_json::Value>,
}

/// The log's columns.
pub fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new("served_at", ts, false),
        Field::new("feature_group", DataType::Utf8, false),
        Field::new("version", DataType::Utf8, false),
        Field::new("plugin_hash", DataType::Utf8, true),
        Field::new("entity", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("event_time", DataType::Utf8, true),
        Field::new("features", DataType::Utf8, false),
        Field::new("feature_values", DataType::Utf8, false),
    ]))
}

/// A log location: an object store and a prefix in it.
struct Location {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    text: String,
}

impl Location {
    fn open(location: &str, aws: &AwsOptions) -> Result<Self, LineageError> {
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| LineageError::Location {
            location: location.to_owned(),
            source,
        };
        let (store, prefix): (Arc<dyn ObjectStore>, String) =
            if location.starts_with("s3://") || location.starts_with("s3a://") {
                let (bucket, prefix) = lockstep_aws::parse_s3_url(location)
                    .ok_or_else(|| failed("expected s3://BUCKET[/PREFIX]".into()))?;
                (
                    lockstep_aws::s3_object_store(aws, &bucket).map_err(|e| failed(e.into()))?,
                    prefix,
                )
            } else {
                std::fs::create_dir_all(location).map_err(|e| failed(e.into()))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(location)
                    .map_err(|e| failed(e.into()))?;
                (Arc::new(store), String::new())
            };
        Ok(Location {
            store,
            prefix,
            text: location.trim_end_matches('/').to_owned(),
        })
    }

    fn key(&self, rel: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(rel)
        } else {
            ObjectPath::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn describe(&self, rel: &str) -> String {
        format!("{}/{rel}", self.text)
    }
}

/// What a writer did, when its queue closed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Answers logged.
    pub answers: u64,
    /// Rows written (one per entity answered).
    pub rows: u64,
    /// Files written.
    pub files: u64,
    /// Answers that could not be read back (never expected: the server wrote them).
    pub unreadable: u64,
}

/// Drains a served-feature queue into Parquet files; see the [crate] docs.
pub struct FeatureLogWriter;

impl FeatureLogWriter {
    /// Starts the writer at `location` on the current runtime: the queue to hand to
    /// [`lockstep_serving::http::FeatureLog::new`], and the task, which ends — after
    /// writing what it holds — once every sender is gone. A failed write is logged and
    /// its rows dropped (the server goes on answering).
    #[allow(clippy::type_complexity)]
    pub fn start(
        location: &str,
        aws: &AwsOptions,
        options: LogOptions,
    ) -> Result<
        (
            tokio::sync::mpsc::Sender<ServedAnswer>,
            tokio::task::JoinHandle<WriterStats>,
        ),
        LineageError,
    > {
        let location = Location::open(location, aws)?;
        let (queue, mut answers) = tokio::sync::mpsc::channel::<ServedAnswer>(options.queue.max(1));
        let writer = writer_id();
        let task = tokio::spawn(async move {
            let mut stats = WriterStats::default();
            let mut held: Vec<ServedRow> = Vec::new();
            let mut tick = tokio::time::interval(options.flush_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    next = answers.recv() => match next {
                        Some(answer) => {
                            stats.answers += 1;
                            match rows_of(&answer) {
                                Some(rows) => held.extend(rows),
                                None => stats.unreadable += 1,
                            }
                            if held.len() >= options.flush_rows {
                                flush(&location, &writer, &mut held, &mut stats).await;
                            }
                        }
                        None => break,
                    },
                    _ = tick.tick() => flush(&location, &writer, &mut held, &mut stats).await,
                }
            }
            flush(&location, &writer, &mut held, &mut stats).await;
            stats
        });
        Ok((queue, task))
    }
}

/// Writes `held` as one file per hour, then empties it.
async fn flush(
    location: &Location,
    writer: &str,
    held: &mut Vec<ServedRow>,
    stats: &mut WriterStats,
) {
    if held.is_empty() {
        return;
    }
    let rows = std::mem::take(held);
    let mut by_hour: std::collections::BTreeMap<i64, Vec<ServedRow>> = Default::default();
    for row in rows {
        by_hour
            .entry(row.served_at.div_euclid(3_600_000_000))
            .or_default()
            .push(row);
    }
    for (hour, rows) in by_hour {
        let rel = format!(
            "{}/part-{writer}-{}.parquet",
            hour_dir(hour * 3_600_000_000),
            stats.files
        );
        let n = rows.len() as u64;
        // Encoding is CPU work: off the runtime's workers, which answer requests.
        let encoded = tokio::task::spawn_blocking(move || encode(&rows)).await;
        let written = match encoded {
            Ok(Ok(bytes)) => location
                .store
                .put(&location.key(&rel), PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|source| LineageError::Object {
                    action: "writing",
                    location: location.describe(&rel),
                    source,
                }),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(LineageError::Location {
                location: location.describe(&rel),
                source: e.to_string().into(),
            }),
        };
        match written {
            Ok(()) => {
                stats.files += 1;
                stats.rows += n;
            }
            Err(e) => tracing::warn!(error = %e, rows = n, "served-feature log rows not written"),
        }
    }
}

/// The partition folder of the hour holding `micros`.
fn hour_dir(micros: i64) -> String {
    let at = chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default();
    format!(
        "served/date={}/hour={}",
        at.format("%Y-%m-%d"),
        at.format("%H")
    )
}

/// The rows of one answer, one per entity; `None` if its body is not an answer.
fn rows_of(answer: &ServedAnswer) -> Option<Vec<ServedRow>> {
    let response: FeatureResponse<Box<RawValue>> = serde_json::from_slice(&answer.body).ok()?;
    Some(
        response
            .entities
            .iter()
            .map(|e| ServedRow {
                request_id: answer.request_id.clone(),
                served_at: answer.served_at,
                group: response.group.clone(),
                version: response.version.clone(),
                plugin_hash: e.plugin_hash.clone(),
                entity: e.entity.clone(),
                source: source_name(e.source).to_owned(),
                event_time: e.event_time.clone(),
                features: response.features.clone(),
                values: e
                    .values
                    .iter()
                    .map(|v| serde_json::from_str(v.get()).unwrap_or(serde_json::Value::Null))
                    .collect(),
            })
            .collect(),
    )
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::Cache => "cache",
        Source::Store => "store",
        Source::Missing => "missing",
        Source::Default => "default",
    }
}

fn encode(rows: &[ServedRow]) -> Result<Vec<u8>, LineageError> {
    let text = |f: &dyn Fn(&ServedRow) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let optional = |f: &dyn Fn(&ServedRow) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from_iter(rows.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        text(&|r| r.request_id.clone()),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.served_at))
                .with_timezone("UTC"),
        ),
        text(&|r| r.group.clone()),
        text(&|r| r.version.clone()),
        optional(&|r| r.plugin_hash.clone()),
        text(&|r| r.entity.clone()),
        text(&|r| r.source.clone()),
        optional(&|r| r.event_time.clone()),
        text(&|r| serde_json::Value::from(r.features.clone()).to_string()),
        text(&|r| serde_json::Value::from(r.values.clone()).to_string()),
    ];
    let batch = RecordBatch::try_new(schema(), columns)?;
    let parquet = |source| LineageError::Parquet {
        location: "(being written)".into(),
        source,
    };
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(Vec::new(), schema(), None).map_err(parquet)?;
    writer.write(&batch).map_err(parquet)?;
    writer.into_inner().map_err(parquet)
}

/// The rows of the answer `request_id` names, read from the log at `location`.
pub async fn find(
    location: &str,
    aws: &AwsOptions,
    request_id: &str,
) -> Result<Vec<ServedRow>, LineageError> {
    let at = lockstep_serving::http::request_time(request_id)
        .ok_or_else(|| LineageError::NotARequestId(request_id.to_owned()))?;
    let location = Location::open(location, aws)?;
    let mut found = Vec::new();
    // The answer's hour; a flush lands rows in their answer's hour, so one folder holds
    // them all.
    let dir = hour_dir(at);
    let files: Vec<ObjectPath> = location
        .store
        .list(Some(&location.key(&dir)))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .map_err(|source| LineageError::Object {
            action: "listing",
            location: location.describe(&dir),
            source,
        })?;
    for file in files {
        let bytes = location
            .store
            .get(&file)
            .await
            .map_err(|source| LineageError::Object {
                action: "reading",
                location: file.to_string(),
                source,
            })?
            .bytes()
            .await
            .map_err(|source| LineageError::Object {
                action: "reading",
                location: file.to_string(),
                source,
            })?;
        let parquet = |source| LineageError::Parquet {
            location: file.to_string(),
            source,
        };
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(parquet)?
            .build()
            .map_err(parquet)?;
        for batch in reader {
            let batch = batch?;
            found.extend(rows_matching(&batch, request_id));
        }
    }
    Ok(found)
}

fn rows_matching(batch: &RecordBatch, request_id: &str) -> Vec<ServedRow> {
    let text = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
    };
    let (Some(ids), Some(groups), Some(versions), Some(hashes), Some(entities)) = (
        text("request_id"),
        text("feature_group"),
        text("version"),
        text("plugin_hash"),
        text("entity"),
    ) else {
        return Vec::new();
    };
    let (Some(sources), Some(times), Some(features), Some(values)) = (
        text("source"),
        text("event_time"),
        text("features"),
        text("feature_values"),
    ) else {
        return Vec::new();
    };
    let served = batch
        .column_by_name("served_at")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>());
    let optional = |a: &StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_owned());
    (0..batch.num_rows())
        .filter(|&i| ids.value(i) == request_id)
        .map(|i| ServedRow {
            request_id: request_id.to_owned(),
            served_at: served.map_or(0, |s| s.value(i)),
            group: groups.value(i).to_owned(),
            version: versions.value(i).to_owned(),
            plugin_hash: optional(hashes, i),
            entity: entities.value(i).to_owned(),
            source: sources.value(i).to_owned(),
            event_time: optional(times, i),
            features: serde_json::from_str(features.value(i)).unwrap_or_default(),
            values: serde_json::from_str(values.value(i)).unwrap_or_default(),
        })
        .collect()
}

/// This process's name in file names.
fn writer_id() -> String {
    let mut tag = [0u8; 4];
    let _ = getrandom::fill(&mut tag);
    format!("{}-{}", std::process::id(), hex::encode(tag))
}
