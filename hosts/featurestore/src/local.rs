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
//! As in SageMaker, a group is defined before records are put ([`GroupDefinition`]):
//! which feature is the record identifier and which the event time, and — from a
//! CreateFeatureGroup request — every feature's type and the group's TtlDuration; then
//! a put with an undefined feature or a value not of its type is a ValidationError.
//! Per record identifier the record with the latest event time is kept; an older put
//! is acknowledged and ignored, as SageMaker's online store does. A record with a TTL
//! (the put's `TtlDuration`, else the group's) expires at `EventTime + TtlDuration`
//! and is not returned from then on. Names and values are held to the service's
//! patterns and lengths. Signatures are not checked: this is a local endpoint.

pub use crate::definition::{GroupDefinition, parse_group, parse_group_definitions};
use crate::definition::{MAX_NAME_OR_ARN_CHARS, MAX_VALUE_CHARS, check_name, parse_ttl};
use crate::wire::{PLUGIN_HASH_FEATURE, format_event_time, parse_event_time, value_text};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use lockstep_core::now_micros;
use lockstep_online::{DeleteOutcome, EmbeddedStore, GroupRef, OnlineError, OnlineRecord};
use serde_json::{Map, Value as Json, json};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

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
        if name.len() > MAX_NAME_OR_ARN_CHARS {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value at 'featureGroupName' failed to satisfy \
                 constraint: Member must have length less than or equal to {MAX_NAME_OR_ARN_CHARS}"
            )));
        }
        let name = group_name_of(name);
        check_name("featureGroupName", name).map_err(ApiError::validation)?;
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

/// The key a record's expiry is kept under in its stored row: not a valid feature
/// name (names start with a letter or digit), so it cannot collide with one.
const EXPIRES_AT: &str = "__expires_at";

/// The online and offline targets a request names (`TargetStores`), both when none.
fn target_stores<'a>(targets: impl Iterator<Item = &'a str>) -> Result<bool, ApiError> {
    let mut online = false;
    let mut any = false;
    for t in targets {
        any = true;
        match t {
            "OnlineStore" => online = true,
            "OfflineStore" => {}
            bad => {
                return Err(ApiError::validation(format!(
                    "1 validation error detected: Value '{bad}' at 'targetStores' failed to \
                     satisfy constraint: Member must satisfy enum value set: [OnlineStore, \
                     OfflineStore]"
                )));
            }
        }
    }
    Ok(online || !any)
}

/// A record identifier as a request carries it, held to the service's length.
fn check_identifier(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.chars().count() > MAX_VALUE_CHARS {
        return Err(ApiError::validation(format!(
            "1 validation error detected: a record identifier must have between 1 and \
             {MAX_VALUE_CHARS} characters"
        )));
    }
    Ok(())
}

/// Whether responses should carry `ExpiresAt` (`ExpirationTimeResponse`).
fn expiration_response(value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("Disabled") => Ok(false),
        Some("Enabled") => Ok(true),
        Some(other) => Err(ApiError::validation(format!(
            "1 validation error detected: Value '{other}' at 'expirationTimeResponse' failed to \
             satisfy constraint: Member must satisfy enum value set: [Enabled, Disabled]"
        ))),
    }
}

/// When a stored record expires (UTC µs), if it has a TTL.
fn expires_at(record: &OnlineRecord) -> Option<i64> {
    record.row.get(EXPIRES_AT).and_then(Json::as_i64)
}

/// The stored record, unless it has expired: an expired record is hard deleted, so it
/// is as if absent.
fn live(record: Option<OnlineRecord>, now: i64) -> Option<OnlineRecord> {
    record.filter(|r| expires_at(r).is_none_or(|at| at > now))
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
    let online = target_stores(
        body.get("TargetStores")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .map(|t| t.as_str().unwrap_or("")),
    )?;
    let ttl = match body.get("TtlDuration") {
        None | Some(Json::Null) => None,
        Some(ttl) => Some(parse_ttl(ttl).map_err(ApiError::validation)?),
    };
    let mut row = Map::new();
    let mut plugin_hash = String::new();
    for f in features {
        if f.get("ValueAsStringList").is_some() {
            return Err(ApiError::validation(
                "ValueAsStringList: collection types are not supported here",
            ));
        }
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
        for (fname, value) in &row {
            let value = value.as_str().unwrap_or_default();
            def.check_feature(fname, value)
                .map_err(ApiError::validation)?;
        }
        if !plugin_hash.is_empty() && !def.features.is_empty() {
            def.check_feature(PLUGIN_HASH_FEATURE, &plugin_hash)
                .map_err(ApiError::validation)?;
        }
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
        if !online {
            // Only the offline store was asked for, and this endpoint has none.
            return Ok(StatusCode::OK);
        }
        if let Some(ttl) = ttl.or(def.ttl_micros) {
            row.insert(
                EXPIRES_AT.to_owned(),
                Json::from(event_time.saturating_add(ttl)),
            );
        }
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

/// A stored record as the wire's answer (`Record`, and `ExpiresAt` when asked for and
/// the record has a TTL), its features restricted to `names` when given.
fn record_answer(record: &OnlineRecord, names: &[String], expiration: bool) -> Map<String, Json> {
    let mut answer = Map::new();
    answer.insert("Record".into(), Json::Array(record_json(record, names)));
    if let (true, Some(at)) = (expiration, expires_at(record)) {
        answer.insert("ExpiresAt".into(), Json::String(format_event_time(at)));
    }
    answer
}

/// A stored record as the wire's feature list, restricted to `names` when given.
fn record_json(record: &OnlineRecord, names: &[String]) -> Vec<Json> {
    let wanted = |n: &str| names.is_empty() || names.iter().any(|w| w == n);
    let mut out: Vec<Json> = record
        .row
        .iter()
        .filter(|(n, _)| *n != EXPIRES_AT && wanted(n))
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
    check_identifier(&key)?;
    let names: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "FeatureName")
        .map(|(_, v)| v.clone())
        .collect();
    let expiration = expiration_response(
        pairs
            .iter()
            .find(|(k, _)| k == "ExpirationTimeResponse")
            .map(|(_, v)| v.as_str()),
    )?;
    blocking(move || {
        let group = s.group_ref(&name, "")?;
        let found = s.store.get_blocking(&group, std::slice::from_ref(&key))?;
        Ok(axum::Json(
            match live(found.into_iter().next().flatten(), now_micros()) {
                Some(record) => Json::Object(record_answer(&record, &names, expiration)),
                // SageMaker answers a missing record with an empty result.
                None => json!({}),
            },
        ))
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
    check_identifier(&key)?;
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
    // Without TargetStores both stores are meant; this endpoint has the online one.
    let online = target_stores(
        pairs
            .iter()
            .filter(|(k, _)| k == "TargetStores" || k.starts_with("TargetStores."))
            .map(|(_, v)| v.as_str()),
    )?;
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
    let expiration =
        expiration_response(body.get("ExpirationTimeResponse").and_then(Json::as_str))?;
    blocking(move || {
        let now = now_micros();
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
            if keys.is_empty() || keys.len() > 100 {
                return Err(ApiError::validation(
                    "RecordIdentifiersValueAsString must hold between 1 and 100 identifiers",
                ));
            }
            for key in &keys {
                check_identifier(key)?;
            }
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
            for (key, found) in keys.iter().zip(s.store.get_blocking(&group, &keys)?) {
                if let Some(record) = live(found, now) {
                    let mut answer = record_answer(&record, &names, expiration);
                    answer.insert("FeatureGroupName".into(), json!(name));
                    answer.insert("RecordIdentifierValueAsString".into(), json!(key));
                    records.push(Json::Object(answer));
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
