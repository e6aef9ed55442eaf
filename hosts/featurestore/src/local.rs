//! `featurestore-local`: the embedded online store behind the SageMaker Feature Store
//! runtime wire protocol (REST-JSON):
//!
//! | operation      | request                                                       |
//! |----------------|---------------------------------------------------------------|
//! | PutRecord      | `PUT /FeatureGroup/{name}` `{"Record": [{"FeatureName", "ValueAsString"}]}` |
//! | GetRecord      | `GET /FeatureGroup/{name}?RecordIdentifierValueAsString=…&FeatureName=…` |
//! | DeleteRecord   | `DELETE /FeatureGroup/{name}?RecordIdentifierValueAsString=…&EventTime=…` |
//! | BatchGetRecord | `POST /BatchGetRecord` `{"Identifiers": [{"FeatureGroupName", "RecordIdentifiersValueAsString", "FeatureNames"}]}` |
//!
//! Errors come back as the service sends them: an HTTP status, the
//! `x-amzn-ErrorType` header (`ValidationError`, `ResourceNotFound`, …) and a JSON
//! `message`, so SDK clients raise their usual exceptions.
//!
//! As in SageMaker, a group is defined before records are put: which feature is the
//! record identifier and which the event time ([`GroupDefinition`]). Per record
//! identifier the record with the latest event time is kept; an older put is
//! acknowledged and ignored, as SageMaker's online store does. Signatures are not
//! checked: this is a local endpoint.

use crate::wire::{PLUGIN_HASH_FEATURE, parse_event_time, value_text};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use lockstep_online::{
    DeleteOutcome, EmbeddedStore, GroupRef, OnlineError, OnlineRecord, OnlineStore,
};
use serde_json::{Map, Value as Json, json};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

/// What a feature group is, as far as the runtime API needs: the names of its record
/// identifier and event-time features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDefinition {
    /// The record identifier feature.
    pub record_identifier: String,
    /// The event-time feature.
    pub event_time: String,
}

/// Parses `NAME=RECORD_ID` or `NAME=RECORD_ID:EVENT_TIME` (event time defaults to
/// `event_time`).
pub fn parse_group(text: &str) -> Result<(String, GroupDefinition), String> {
    let (name, rest) = text.split_once('=').ok_or_else(|| {
        format!("`{text}` is not a group definition: use NAME=RECORD_ID[:EVENT_TIME]")
    })?;
    let (id, time) = rest.split_once(':').unwrap_or((rest, "event_time"));
    if name.is_empty() || id.is_empty() || time.is_empty() {
        return Err(format!(
            "`{text}` has an empty part: use NAME=RECORD_ID[:EVENT_TIME]"
        ));
    }
    Ok((
        name.to_owned(),
        GroupDefinition {
            record_identifier: id.to_owned(),
            event_time: time.to_owned(),
        },
    ))
}

/// The embedded store and the groups defined on it.
pub struct LocalStore {
    store: EmbeddedStore,
    groups: HashMap<String, GroupDefinition>,
}

impl LocalStore {
    /// Serves `store` with these groups defined.
    pub fn new(store: EmbeddedStore, groups: HashMap<String, GroupDefinition>) -> Self {
        LocalStore { store, groups }
    }

    /// The group version a wire group name (or its ARN) is kept under in the
    /// embedded store.
    fn group_ref(&self, name: &str, plugin_hash: &str) -> Result<GroupRef, ApiError> {
        let name = group_name_of(name);
        let def = self.groups.get(name).ok_or_else(|| {
            ApiError::not_found(format!(
                "Resource Not Found: feature group {name} is not defined here; start \
                 featurestore-local with --group {name}=RECORD_ID_FEATURE"
            ))
        })?;
        Ok(GroupRef {
            name: name.to_owned(),
            version: "sagemaker".to_owned(),
            plugin_hash: plugin_hash.to_owned(),
            entity_key: def.record_identifier.clone(),
        })
    }
}

/// The group name a request names: the name itself, or the last part of a feature
/// group ARN (`arn:aws:sagemaker:REGION:ACCOUNT:feature-group/NAME`), which the API
/// accepts wherever it takes a name.
fn group_name_of(name_or_arn: &str) -> &str {
    match name_or_arn.strip_prefix("arn:") {
        Some(rest) => rest
            .split_once(":feature-group/")
            .map_or(name_or_arn, |(_, name)| name),
        None => name_or_arn,
    }
}

/// How DeleteRecord deletes (`DeletionMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeletionMode {
    /// A delete older than the stored record leaves it, quietly (the default).
    Soft,
    /// A delete older than the stored record is a ValidationError.
    Hard,
}

/// An error in the service's shape.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn validation(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "ValidationError",
            message: message.into(),
        }
    }
    fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "ResourceNotFound",
            message: message.into(),
        }
    }
    fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "InternalFailure",
            message: message.into(),
        }
    }
}

impl From<OnlineError> for ApiError {
    fn from(e: OnlineError) -> Self {
        match e {
            OnlineError::OtherPlugin { .. } | OnlineError::Rows(_) => {
                ApiError::validation(e.to_string())
            }
            OnlineError::Unavailable { .. } => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "ServiceUnavailable",
                message: e.to_string(),
            },
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert("x-amzn-ErrorType", HeaderValue::from_static(self.kind));
        (
            self.status,
            headers,
            axum::Json(json!({"message": self.message})),
        )
            .into_response()
    }
}

type Shared = Arc<LocalStore>;

/// Serves the API on `listener` until `shutdown` completes (in-flight calls finish).
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<LocalStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(store))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The routes, for embedding.
pub fn router(store: Arc<LocalStore>) -> Router {
    Router::new()
        .route(
            "/FeatureGroup/{name}",
            put(put_record).get(get_record).delete(delete_record),
        )
        .route("/BatchGetRecord", post(batch_get_record))
        .layer(axum::middleware::map_response(service_shaped_limits))
        .with_state(store)
}

/// A request refused before it reached a handler (a body over the size limit) is
/// answered in the service's shape too, so SDK clients raise a ValidationError that
/// says why, not an unmodelled 413.
async fn service_shaped_limits(response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE
        && !response.headers().contains_key("x-amzn-ErrorType")
    {
        return ApiError::validation(
            "the request is too large: a record must stay within the service's size limit",
        )
        .into_response();
    }
    response
}

fn query_pairs(raw: Option<String>) -> Vec<(String, String)> {
    raw.map(|q| {
        form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
    .unwrap_or_default()
}

fn json_body(body: &Bytes) -> Result<Json, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::validation(format!("the request body is not JSON: {e}")))
}

/// Runs a store call off the async threads (redb blocks on disk).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("the store call failed: {e}")))?
}

async fn put_record(
    State(s): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let body = json_body(&body)?;
    let features = body
        .get("Record")
        .and_then(Json::as_array)
        .ok_or_else(|| ApiError::validation("1 validation error detected: Record is required"))?;
    if features.is_empty() {
        return Err(ApiError::validation(
            "Record must hold at least one feature",
        ));
    }
    let mut row = Map::new();
    let mut plugin_hash = String::new();
    for f in features {
        let (Some(fname), Some(value)) = (
            f.get("FeatureName").and_then(Json::as_str),
            f.get("ValueAsString").and_then(Json::as_str),
        ) else {
            return Err(ApiError::validation(
                "every feature needs FeatureName and ValueAsString as strings",
            ));
        };
        if fname == PLUGIN_HASH_FEATURE {
            plugin_hash = value.to_owned();
            continue;
        }
        if row
            .insert(fname.to_owned(), Json::String(value.to_owned()))
            .is_some()
        {
            return Err(ApiError::validation(format!(
                "feature {fname} appears twice in the record"
            )));
        }
    }
    blocking(move || {
        let group = s.group_ref(&name, &plugin_hash)?;
        let def = &s.groups[&group.name];
        let key = match row.get(&def.record_identifier) {
            Some(Json::String(k)) => k.clone(),
            _ => {
                return Err(ApiError::validation(format!(
                    "the record has no value for the record identifier feature {}",
                    def.record_identifier
                )));
            }
        };
        let event_time = match row.get(&def.event_time) {
            Some(Json::String(t)) => parse_event_time(t).map_err(ApiError::validation)?,
            _ => {
                return Err(ApiError::validation(format!(
                    "the record has no value for the event time feature {}",
                    def.event_time
                )));
            }
        };
        let record = OnlineRecord {
            event_time,
            write_time: now_micros(),
            plugin_hash,
            row,
        };
        s.store.put_records(&group, vec![(key, record)])?;
        Ok(StatusCode::OK)
    })
    .await
}

/// A stored record as the wire's feature list, restricted to `names` when given.
fn record_json(record: &OnlineRecord, names: &[String]) -> Vec<Json> {
    let wanted = |n: &str| names.is_empty() || names.iter().any(|w| w == n);
    let mut out: Vec<Json> = record
        .row
        .iter()
        .filter(|(n, _)| wanted(n))
        .filter_map(|(n, v)| value_text(v).map(|t| json!({"FeatureName": n, "ValueAsString": t})))
        .collect();
    if !record.plugin_hash.is_empty() && wanted(PLUGIN_HASH_FEATURE) {
        out.push(json!({"FeatureName": PLUGIN_HASH_FEATURE, "ValueAsString": record.plugin_hash}));
    }
    out
}

async fn get_record(
    State(s): State<Shared>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<Json>, ApiError> {
    let pairs = query_pairs(query);
    let key = pairs
        .iter()
        .find(|(k, _)| k == "RecordIdentifierValueAsString")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| ApiError::validation("RecordIdentifierValueAsString is required"))?;
    let names: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "FeatureName")
        .map(|(_, v)| v.clone())
        .collect();
    blocking(move || {
        let group = s.group_ref(&name, "")?;
        let found = s.store.get(&group, std::slice::from_ref(&key))?;
        Ok(axum::Json(match found.into_iter().next().flatten() {
            Some(record) => json!({"Record": record_json(&record, &names)}),
            // SageMaker answers a missing record with an empty result.
            None => json!({}),
        }))
    })
    .await
}

async fn delete_record(
    State(s): State<Shared>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    let pairs = query_pairs(query);
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let key = get("RecordIdentifierValueAsString")
        .ok_or_else(|| ApiError::validation("RecordIdentifierValueAsString is required"))?;
    let event_time =
        get("EventTime").ok_or_else(|| ApiError::validation("EventTime is required"))?;
    let at = parse_event_time(&event_time).map_err(ApiError::validation)?;
    let mode = match get("DeletionMode").as_deref() {
        None | Some("SoftDelete") => DeletionMode::Soft,
        Some("HardDelete") => DeletionMode::Hard,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{other}' at 'deletionMode' failed to \
                 satisfy constraint: Member must satisfy enum value set: [SoftDelete, HardDelete]"
            )));
        }
    };
    let targets: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "TargetStores" || k.starts_with("TargetStores."))
        .map(|(_, v)| v.as_str())
        .collect();
    if let Some(bad) = targets
        .iter()
        .find(|t| !matches!(**t, "OnlineStore" | "OfflineStore"))
    {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{bad}' at 'targetStores' failed to satisfy \
             constraint: Member must satisfy enum value set: [OnlineStore, OfflineStore]"
        )));
    }
    // Without TargetStores both stores are meant; this endpoint has the online one.
    let online = targets.is_empty() || targets.contains(&"OnlineStore");
    blocking(move || {
        let group = s.group_ref(&name, "")?;
        if !online {
            return Ok(StatusCode::OK);
        }
        match s.store.delete_at(&group, &key, at)? {
            DeleteOutcome::Newer { stored } if mode == DeletionMode::Hard => {
                Err(ApiError::validation(format!(
                    "the record {key} has an event time ({}) later than the delete's \
                     EventTime {event_time}: a HardDelete must not be older than the record",
                    crate::wire::format_event_time(stored)
                )))
            }
            // A soft delete older than the record leaves it, as the service does.
            DeleteOutcome::Newer { .. } | DeleteOutcome::Deleted { .. } => Ok(StatusCode::OK),
        }
    })
    .await
}

async fn batch_get_record(
    State(s): State<Shared>,
    body: Bytes,
) -> Result<axum::Json<Json>, ApiError> {
    let body = json_body(&body)?;
    let identifiers = body
        .get("Identifiers")
        .and_then(Json::as_array)
        .cloned()
        .ok_or_else(|| ApiError::validation("Identifiers is required"))?;
    if identifiers.is_empty() || identifiers.len() > 100 {
        return Err(ApiError::validation(
            "Identifiers must hold between 1 and 100 entries",
        ));
    }
    blocking(move || {
        let mut records = Vec::new();
        let mut errors = Vec::new();
        for ident in &identifiers {
            let name = ident
                .get("FeatureGroupName")
                .and_then(Json::as_str)
                .ok_or_else(|| ApiError::validation("every identifier needs FeatureGroupName"))?;
            let keys: Vec<String> = ident
                .get("RecordIdentifiersValueAsString")
                .and_then(Json::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .ok_or_else(|| {
                    ApiError::validation("every identifier needs RecordIdentifiersValueAsString")
                })?;
            let names: Vec<String> = ident
                .get("FeatureNames")
                .and_then(Json::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let group = match s.group_ref(name, "") {
                Ok(g) => g,
                Err(e) => {
                    for key in &keys {
                        errors.push(json!({"FeatureGroupName": name,
                            "RecordIdentifierValueAsString": key,
                            "ErrorCode": e.kind, "ErrorMessage": e.message}));
                    }
                    continue;
                }
            };
            for (key, found) in keys.iter().zip(s.store.get(&group, &keys)?) {
                if let Some(record) = found {
                    records.push(json!({"FeatureGroupName": name,
                        "RecordIdentifierValueAsString": key,
                        "Record": record_json(&record, &names)}));
                }
            }
        }
        Ok(axum::Json(json!({
            "Records": records,
            "Errors": errors,
            "UnprocessedIdentifiers": [],
        })))
    })
    .await
}

/// Completes on SIGTERM or Ctrl-C: the graceful-shutdown trigger for [`serve`].
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_definitions_parse_or_say_why_not() {
        assert_eq!(
            parse_group("g=card_id"),
            Ok((
                "g".into(),
                GroupDefinition {
                    record_identifier: "card_id".into(),
                    event_time: "event_time".into()
                }
            ))
        );
        assert_eq!(parse_group("g=id:ts").unwrap().1.event_time, "ts");
        assert!(parse_group("g").unwrap_err().contains("NAME=RECORD_ID"));
        assert!(parse_group("=id").is_err());
    }
}
