//! The HTTP API: `POST /v1/features`, `POST /get-online-features` (Feast),
//! `GET /v1/groups`, `GET /metrics`, `GET /healthz`; with an [`Access`] policy, every
//! request shows a tenant's bearer token and reads only its groups.

use crate::access::{Access, Caller, Refusal, Tenant};
use crate::answer_queue::AnswerQueue;
use crate::metrics::{ApiLabel, StatusLabel};
use crate::{FeatureServer, ServeError, feast};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lockstep_client::api::{BatchRequest, BatchResponse, ErrorBody, FeatureRequest, MAX_BATCH};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

/// Where answers go for the served-feature log: an [`AnswerQueue`], never waited on. An
/// answer the queue cannot take is dropped and counted (`feature_log_dropped`): a slow
/// log never slows an answer.
#[derive(Clone)]
pub struct FeatureLog {
    queue: Arc<AnswerQueue>,
    dropped: prometheus_client::metrics::counter::Counter,
}

impl FeatureLog {
    /// Answers go to `queue` (drained by a thread of the log's own, so that no runtime
    /// worker does the log's work); those it cannot take are counted in `server`'s
    /// metrics.
    pub fn new(queue: Arc<AnswerQueue>, server: &FeatureServer) -> Self {
        FeatureLog {
            queue,
            dropped: server.metrics().feature_log_dropped.clone(),
        }
    }

    fn log(&self, request_id: &str, served_at: i64, body: &[u8]) {
        if !self.queue.push(request_id, served_at, body) {
            self.dropped.inc();
        }
    }
}

/// What the HTTP layer adds to the reader.
#[derive(Clone, Default)]
pub struct HttpOptions {
    /// Tenants and their tokens (open to anyone when `None`).
    pub access: Option<Arc<Access>>,
    /// The served-feature log (none when `None`).
    pub feature_log: Option<FeatureLog>,
}

/// The router over `server`, open to anyone who reaches it.
pub fn router(server: FeatureServer) -> Router {
    router_with(server, HttpOptions::default())
}

/// The router over `server` with `options`: with an access policy, requests need a
/// tenant's token and read only the tenant's groups (`/metrics` and `/healthz` as the
/// policy says); with a feature log, every `/v1/features` answer goes to it.
pub fn router_with(server: FeatureServer, options: HttpOptions) -> Router {
    let mut router = Router::new()
        .route("/v1/features", post(features))
        .route("/v1/features/batch", post(features_batch))
        .route("/get-online-features", post(feast_features))
        .route("/v1/groups", get(groups))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz));
    if let Some(log) = options.feature_log {
        router = router.layer(axum::Extension(log));
    }
    match options.access {
        Some(access) => router
            .layer(axum::middleware::from_fn_with_state(
                Guard {
                    access,
                    server: server.clone(),
                },
                guard,
            ))
            .with_state(server),
        None => router.with_state(server),
    }
}

/// Serves `router(server)` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: FeatureServer,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, server, HttpOptions::default(), shutdown).await
}

/// Serves `router_with(server, options)` on `listener` until `shutdown` completes.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    server: FeatureServer,
    options: HttpOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router_with(server, options))
        .with_graceful_shutdown(shutdown)
        .await
}

/// What the access guard needs.
#[derive(Clone)]
struct Guard {
    access: Arc<Access>,
    server: FeatureServer,
}

/// A request's tenant, for the handlers' group checks.
#[derive(Clone)]
struct Granted {
    tenant: Arc<Tenant>,
    guard: Guard,
}

impl Granted {
    /// The 403 answer when the tenant may not read `name` (`version`, or the highest
    /// served); `None` when it may.
    fn refusal(&self, name: &str, version: Option<&str>, path: &str) -> Option<Response> {
        // An unknown group is the handler's 404; only a served one is checked here.
        let Ok(served) = self.guard.server.group(name, version) else {
            return None;
        };
        if self.tenant.may_read(name, &served.group.version) {
            return None;
        }
        let id = served.group.id();
        refuse(
            &self.guard,
            Refusal {
                tenant: Some(self.tenant.name.clone()),
                group: Some(id.clone()),
                status: 403,
                reason: "a group the tenant may not read",
                path: path.to_owned(),
            },
        );
        Some(error(
            StatusCode::FORBIDDEN,
            format!("tenant `{}` may not read {id}", self.tenant.name),
        ))
    }
}

fn refuse(guard: &Guard, refusal: Refusal) {
    guard
        .server
        .metrics()
        .refused_requests
        .get_or_create(&StatusLabel {
            status: refusal.status,
        })
        .inc();
    guard.access.refused(refusal);
}

async fn guard(State(guard): State<Guard>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if path == "/metrics" || path == "/healthz" {
        if guard.access.operations_allowed(header) {
            return next.run(request).await;
        }
        refuse(
            &guard,
            Refusal {
                tenant: None,
                group: None,
                status: 401,
                reason: "not the operations token",
                path: path.clone(),
            },
        );
        return unauthorized("this endpoint needs the operations token");
    }
    match guard.access.caller(header) {
        Caller::Tenant(tenant) => {
            request.extensions_mut().insert(Granted { tenant, guard });
            next.run(request).await
        }
        Caller::Refused(reason) => {
            refuse(
                &guard,
                Refusal {
                    tenant: None,
                    group: None,
                    status: 401,
                    reason,
                    path,
                },
            );
            // The reason says which case, never the token.
            unauthorized(&format!(
                "refused: {reason}; send Authorization: Bearer <token>"
            ))
        }
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, message.to_owned());
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

fn error(status: StatusCode, message: String) -> Response {
    let body = serde_json::to_vec(&ErrorBody { error: message }).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let status = match self {
            ServeError::UnknownGroup { .. } => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        error(status, self.to_string())
    }
}

fn json_body(value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ServeError> {
    serde_json::from_slice(body).map_err(|e| ServeError::BadRequest(format!("request body: {e}")))
}

async fn features(
    State(server): State<FeatureServer>,
    granted: Option<axum::Extension<Granted>>,
    log: Option<axum::Extension<FeatureLog>>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let request = match parse::<FeatureRequest>(&body) {
        Ok(request) => request,
        Err(e) => return e.into_response(),
    };
    if let Some(granted) = &granted
        && let Some(refused) =
            granted.refusal(&request.group, request.version.as_deref(), "/v1/features")
    {
        return refused;
    }
    let answer = match server.get(&request).await {
        Ok(answer) => match serde_json::to_vec(&answer) {
            Ok(body) => {
                let (request_id, served_at) = request_id();
                if let Some(axum::Extension(log)) = &log {
                    log.log(&request_id, served_at, &body);
                }
                let mut response =
                    ([(header::CONTENT_TYPE, "application/json")], body).into_response();
                if let Ok(id) = header::HeaderValue::from_str(&request_id) {
                    response.headers_mut().insert(REQUEST_ID, id);
                }
                response
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        Err(e) => e.into_response(),
    };
    observe(&server, "native", started);
    answer
}

/// `POST /v1/features/batch`: several groups' features in one call, each answered as
/// `/v1/features` would answer it alone (its own deadline, its own degraded flag, its
/// own line in the feature log), all read at once.
async fn features_batch(
    State(server): State<FeatureServer>,
    granted: Option<axum::Extension<Granted>>,
    log: Option<axum::Extension<FeatureLog>>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let batch = match parse::<BatchRequest>(&body) {
        Ok(batch) => batch,
        Err(e) => return e.into_response(),
    };
    if batch.requests.is_empty() || batch.requests.len() > MAX_BATCH {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "a batch holds 1 to {MAX_BATCH} requests, not {}",
                batch.requests.len()
            ),
        );
    }
    if let Some(granted) = &granted {
        for request in &batch.requests {
            if let Some(refused) = granted.refusal(
                &request.group,
                request.version.as_deref(),
                "/v1/features/batch",
            ) {
                return refused;
            }
        }
    }
    let answers =
        futures_util::future::join_all(batch.requests.iter().map(|r| server.get(r))).await;
    let mut served = BatchResponse {
        answers: Vec::with_capacity(answers.len()),
        request_ids: Vec::with_capacity(answers.len()),
    };
    for answer in answers {
        match answer {
            Ok(answer) => served.answers.push(answer),
            // The first request that cannot be answered (an unknown group or feature,
            // too many entities) is the batch's answer: nothing is half-served.
            Err(e) => return e.into_response(),
        }
    }
    for answer in &served.answers {
        let (request_id, served_at) = request_id();
        if let Some(axum::Extension(log)) = &log {
            match serde_json::to_vec(answer) {
                Ok(body) => log.log(&request_id, served_at, &body),
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        served.request_ids.push(request_id);
    }
    let response = json_body(&served);
    observe(&server, "native_batch", started);
    response
}

/// The response header naming an answer in the served-feature log.
pub const REQUEST_ID: &str = "x-request-id";

/// A new request id and the time it names: `<µs since the epoch, hex>-<process tag>-<n>`.
/// Unique across processes (the tag is random per process) and readable for its time,
/// so that the log's reader goes straight to the hour that holds it.
fn request_id() -> (String, i64) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static TAG: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tag = *TAG.get_or_init(|| {
        let mut bytes = [0u8; 4];
        // Without a random source, the process id still separates processes.
        match getrandom::fill(&mut bytes) {
            Ok(()) => u32::from_le_bytes(bytes),
            Err(_) => std::process::id(),
        }
    });
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (format!("{at:013x}-{tag:08x}-{n:x}"), at)
}

/// The time a request id names (µs since the epoch), if it is one of ours.
pub fn request_time(request_id: &str) -> Option<i64> {
    let (hex, _) = request_id.split_once('-')?;
    i64::from_str_radix(hex, 16).ok()
}

async fn feast_features(
    State(server): State<FeatureServer>,
    granted: Option<axum::Extension<Granted>>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let request = match parse::<feast::FeastRequest>(&body) {
        Ok(request) => request,
        Err(e) => return e.into_response(),
    };
    if let Some(granted) = &granted {
        for reference in &request.features {
            let view = reference
                .split_once(':')
                .map_or(reference.as_str(), |(v, _)| v);
            if let Some(refused) = granted.refusal(view, None, "/get-online-features") {
                return refused;
            }
        }
    }
    let answer = feast::get_online_features(&server, request)
        .await
        .map(|r| json_body(&r));
    observe(&server, "feast", started);
    answer.unwrap_or_else(IntoResponse::into_response)
}

fn observe(server: &FeatureServer, api: &'static str, started: Instant) {
    server
        .metrics()
        .request_seconds
        .get_or_create(&ApiLabel { api })
        .observe(started.elapsed().as_secs_f64());
}

async fn groups(
    State(server): State<FeatureServer>,
    granted: Option<axum::Extension<Granted>>,
) -> Response {
    let groups: Vec<_> = server
        .groups()
        .iter()
        .filter(|g| {
            granted
                .as_ref()
                .is_none_or(|granted| granted.tenant.may_read(&g.group.name, &g.group.version))
        })
        .map(|g| {
            json!({
                "name": g.group.name,
                "version": g.group.version,
                "plugin_hash": g.group.plugin_hash,
                "entity_key": g.group.entity_key,
                "features": g.features,
            })
        })
        .collect();
    json_body(&json!({ "groups": groups }))
}

async fn metrics(State(server): State<FeatureServer>) -> Response {
    let (cache, store) = server.breakers_open();
    let m = server.metrics();
    for (backend, open) in [("cache", cache), ("store", store)] {
        m.breaker_open
            .get_or_create(&crate::metrics::BackendLabel { backend })
            .set(i64::from(open));
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

/// Always 200 while the process serves (it answers degraded rather than failing);
/// the body says which circuits are open.
async fn healthz(State(server): State<FeatureServer>) -> Response {
    let (cache, store) = server.breakers_open();
    json_body(&json!({
        "status": if cache || store { "degraded" } else { "ok" },
        "cache_circuit_open": cache,
        "store_circuit_open": store,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_and_name_their_time() {
        let (a, at) = request_id();
        let (b, _) = request_id();
        assert_ne!(a, b);
        assert_eq!(request_time(&a), Some(at));
        assert_eq!(request_time("not-an-id"), None);
    }

    #[test]
    fn a_full_log_queue_drops_and_counts_never_waits() {
        let log = FeatureLog {
            queue: Arc::new(AnswerQueue::new(200, 2)),
            dropped: Default::default(),
        };
        for n in 0..3 {
            log.log(&n.to_string(), 0, &[b' '; 60]);
        }
        assert_eq!(log.dropped.get(), 1, "room for one answer a stripe");
    }
}
