//! [`SageMakerStore`]: the online store trait over the SageMaker Feature Store runtime.

use crate::wire::{
    EVENT_TIME_FEATURE, PLUGIN_HASH_FEATURE, group_name, parse_event_time, row_from_record,
    value_text,
};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use aws_sdk_sagemakerfeaturestoreruntime as sm;
use lockstep_aws::AwsOptions;
use lockstep_core::rows::row_json;
use lockstep_online::{
    DeleteOutcome, GroupRef, OnlineError, OnlineRecord, OnlineStore, PutSummary,
};
use sm::types::{BatchGetRecordIdentifier, DeletionMode, FeatureValue};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How to reach the service and how hard to push it.
#[derive(Debug, Clone)]
pub struct SageMakerOptions {
    /// Endpoint (e.g. `featurestore-local`; AWS's when unset), region and
    /// credentials; unset fields come from the standard AWS environment.
    pub aws: AwsOptions,
    /// PutRecord calls in flight at once.
    pub max_in_flight: usize,
    /// PutRecord calls per second at most (the account's quota); unlimited when unset.
    pub max_puts_per_second: Option<f64>,
}

impl Default for SageMakerOptions {
    fn default() -> Self {
        SageMakerOptions {
            aws: AwsOptions::default(),
            max_in_flight: 32,
            max_puts_per_second: None,
        }
    }
}

/// The online store over the SageMaker Feature Store runtime API.
///
/// `put` keeps the latest row per entity of the batch (the service keeps only that
/// one anyway), then sends one PutRecord per entity, `max_in_flight` at a time and
/// paced to `max_puts_per_second`; the SDK retries throttling and server errors with
/// backoff, and what still fails comes back as a transient error for the caller to
/// retry. Calls run on the caller's runtime.
pub struct SageMakerStore {
    client: sm::Client,
    options: SageMakerOptions,
    /// Row schemas seen per group, to read text values back with their types.
    schemas: Mutex<HashMap<String, SchemaRef>>,
    label: String,
}

fn unavailable(store: &str, e: impl std::fmt::Display) -> OnlineError {
    OnlineError::Unavailable {
        store: store.to_owned(),
        message: e.to_string(),
    }
}

impl SageMakerStore {
    /// A store at `endpoint` (AWS's when `None`) with default options.
    pub async fn connect(endpoint: Option<&str>) -> Self {
        Self::with_options(SageMakerOptions {
            aws: AwsOptions {
                endpoint: endpoint.map(str::to_owned),
                ..AwsOptions::default()
            },
            ..SageMakerOptions::default()
        })
        .await
    }

    /// A store with `options`.
    pub async fn with_options(options: SageMakerOptions) -> Self {
        let label = options
            .aws
            .endpoint
            .clone()
            .unwrap_or_else(|| "sagemaker".to_owned());
        let config = options.aws.sdk_config().await;
        SageMakerStore {
            client: sm::Client::new(&config),
            options,
            schemas: Mutex::new(HashMap::new()),
            label,
        }
    }

    /// Reads `group`'s values back typed by `schema` (its row schema).
    pub fn set_schema(&self, group: &GroupRef, schema: SchemaRef) {
        if let Ok(mut s) = self.schemas.lock() {
            s.insert(group.id(), schema);
        }
    }

    fn schema_of(&self, group: &GroupRef) -> Option<SchemaRef> {
        self.schemas.lock().ok()?.get(&group.id()).cloned()
    }

    /// Whether a failed call may pass later (throttling, 5xx, the network).
    fn classify<E, R>(&self, e: sm::error::SdkError<E, R>) -> OnlineError
    where
        E: sm::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        // The SDK's own rendering of the whole chain, the service's message included.
        let text = sm::error::DisplayErrorContext(&e).to_string();
        match &e {
            sm::error::SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or("");
                match code {
                    "ValidationError" | "AccessForbidden" | "ResourceNotFound" => {
                        OnlineError::Rows(format!(
                            "{}: {code}: {}",
                            self.label,
                            service.err().message().unwrap_or(&text)
                        ))
                    }
                    _ => unavailable(&self.label, text),
                }
            }
            _ => unavailable(&self.label, text),
        }
    }
}

#[async_trait::async_trait]
impl OnlineStore for SageMakerStore {
    async fn put(
        &self,
        group: &GroupRef,
        rows: &RecordBatch,
        _write_time: i64,
    ) -> Result<PutSummary, OnlineError> {
        self.set_schema(group, rows.schema());
        // Only each entity's latest row of the batch is sent, by the store's rule.
        let mut order: Vec<usize> = lockstep_online::latest_rows(rows, group)?
            .iter()
            .map(|latest| latest.row)
            .collect();
        order.sort_unstable();
        let name = group_name(group);
        let mut records: Vec<Vec<FeatureValue>> = Vec::with_capacity(order.len());
        for r in order {
            let mut features = Vec::new();
            for (fname, value) in &row_json(rows, r) {
                if let Some(text) = value_text(value) {
                    features.push(
                        FeatureValue::builder()
                            .feature_name(fname)
                            .value_as_string(text)
                            .build(),
                    );
                }
            }
            features.push(
                FeatureValue::builder()
                    .feature_name(PLUGIN_HASH_FEATURE)
                    .value_as_string(&group.plugin_hash)
                    .build(),
            );
            records.push(features);
        }
        let written = records.len();
        let stale = rows.num_rows() - written;
        let limiter = Arc::new(Semaphore::new(self.options.max_in_flight.max(1)));
        let pace = self
            .options
            .max_puts_per_second
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(1.0 / r));
        {
            let mut tasks = tokio::task::JoinSet::new();
            let started = Instant::now();
            for (i, features) in records.into_iter().enumerate() {
                if let Some(gap) = pace {
                    let due = started + gap * i as u32;
                    tokio::time::sleep_until(due.into()).await;
                }
                let permit = limiter
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| unavailable(&self.label, e))?;
                let call = self
                    .client
                    .put_record()
                    .feature_group_name(&name)
                    .set_record(Some(features));
                tasks.spawn(async move {
                    let out = call.send().await;
                    drop(permit);
                    out
                });
            }
            let mut first_error = None;
            while let Some(done) = tasks.join_next().await {
                let result = done.map_err(|e| unavailable(&self.label, e))?;
                if let Err(e) = result
                    && first_error.is_none()
                {
                    first_error = Some(self.classify(e));
                }
            }
            match first_error {
                // Puts are idempotent (latest event time wins): the caller retries all.
                Some(e) => Err(e),
                None => Ok(PutSummary { written, stale }),
            }
        }
    }

    async fn get(
        &self,
        group: &GroupRef,
        keys: &[String],
    ) -> Result<Vec<Option<OnlineRecord>>, OnlineError> {
        let name = group_name(group);
        let schema = self.schema_of(group);
        let mut found: HashMap<String, OnlineRecord> = HashMap::new();
        // Each key once on the wire.
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<String> = keys.iter().filter(|k| seen.insert(*k)).cloned().collect();
        for chunk in unique.chunks(100) {
            let ident = BatchGetRecordIdentifier::builder()
                .feature_group_name(&name)
                .set_record_identifiers_value_as_string(Some(chunk.to_vec()))
                .build();
            let out = self
                .client
                .batch_get_record()
                .identifiers(ident)
                .send()
                .await
                .map_err(|e| self.classify(e))?;
            if let Some(err) = out.errors().first() {
                return Err(OnlineError::Rows(format!(
                    "{}: {} for `{}`: {}",
                    self.label,
                    err.error_code().unwrap_or("error"),
                    err.record_identifier_value_as_string().unwrap_or(""),
                    err.error_message().unwrap_or("")
                )));
            }
            for rec in out.records() {
                let features: Vec<(String, String)> = rec
                    .record()
                    .iter()
                    .map(|f| {
                        (
                            f.feature_name().unwrap_or_default().to_owned(),
                            f.value_as_string().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect();
                let text = |n: &str| {
                    features
                        .iter()
                        .find(|(f, _)| f == n)
                        .map(|(_, v)| v.clone())
                };
                let event_time = text(EVENT_TIME_FEATURE)
                    .map(|t| parse_event_time(&t))
                    .transpose()
                    .map_err(OnlineError::Rows)?
                    .unwrap_or(0);
                found.insert(
                    rec.record_identifier_value_as_string()
                        .unwrap_or_default()
                        .to_owned(),
                    OnlineRecord {
                        event_time,
                        // The protocol does not return when a record was written.
                        write_time: 0,
                        plugin_hash: text(PLUGIN_HASH_FEATURE).unwrap_or_default(),
                        row: row_from_record(&features, schema.as_deref()),
                    },
                );
            }
        }
        // A key asked for twice is answered twice.
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    async fn delete(&self, group: &GroupRef, key: &str) -> Result<bool, OnlineError> {
        let existed = self
            .get(group, &[key.to_owned()])
            .await?
            .into_iter()
            .flatten()
            .next()
            .is_some();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.client
            .delete_record()
            .feature_group_name(group_name(group))
            .record_identifier_value_as_string(key)
            .event_time(now)
            .deletion_mode(DeletionMode::HardDelete)
            .send()
            .await
            .map_err(|e| self.classify(e))?;
        Ok(existed)
    }

    /// DeleteRecord at `at` (which the protocol carries in milliseconds: a time with a
    /// finer part is rounded up, so the delete never reaches back less far than asked).
    /// A record newer than the delete is found by reading it first: a HardDelete would
    /// be refused by the service, and a SoftDelete would leave it.
    async fn delete_as_of(
        &self,
        group: &GroupRef,
        key: &str,
        at: i64,
        soft: bool,
    ) -> Result<DeleteOutcome, OnlineError> {
        let stored = self
            .get(group, &[key.to_owned()])
            .await?
            .into_iter()
            .flatten()
            .next()
            .map(|r| r.event_time);
        if let Some(stored) = stored.filter(|s| *s > at) {
            return Ok(DeleteOutcome::Newer { stored });
        }
        let millis = at.div_euclid(1000) + i64::from(at.rem_euclid(1000) != 0);
        let event_time = chrono::DateTime::from_timestamp_millis(millis)
            .ok_or_else(|| OnlineError::Rows(format!("{}: no time {at} µs", self.label)))?
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.client
            .delete_record()
            .feature_group_name(group_name(group))
            .record_identifier_value_as_string(key)
            .event_time(event_time)
            .deletion_mode(if soft {
                DeletionMode::SoftDelete
            } else {
                DeletionMode::HardDelete
            })
            .send()
            .await
            .map_err(|e| self.classify(e))?;
        Ok(DeleteOutcome::Deleted {
            existed: stored.is_some(),
        })
    }
}
