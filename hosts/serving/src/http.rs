//! The HTTP API: `POST /v1/features`, `POST /get-online-features` (Feast),
//! `GET /v1/groups`, `GET /metrics`, `GET /healthz`.

use crate::metrics::ApiLabel;
use crate::{FeatureServer, ServeError, feast};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lockstep_client::api::{ErrorBody, FeatureRequest};
use serde_json::json;
use std::time::Instant;

/// The router over `server`.
pub fn router(server: FeatureServer) -> Router {
    Router::new()
        .route("/v1/features", post(features))
        .route("/get-online-features", post(feast_features))
        .route("/v1/groups", get(groups))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(server)
}

/// Serves `router(server)` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: FeatureServer,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(server))
        .with_graceful_shutdown(shutdown)
        .await
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

async fn features(State(server): State<FeatureServer>, body: Bytes) -> Response {
    let started = Instant::now();
    let answer = match parse::<FeatureRequest>(&body) {
        Ok(request) => server.get(&request).await.map(|r| json_body(&r)),
        Err(e) => Err(e),
    };
    observe(&server, "native", started);
    answer.unwrap_or_else(IntoResponse::into_response)
}

async fn feast_features(State(server): State<FeatureServer>, body: Bytes) -> Response {
    let started = Instant::now();
    let answer = match parse::<feast::FeastRequest>(&body) {
        Ok(request) => feast::get_online_features(&server, request)
            .await
            .map(|r| json_body(&r)),
        Err(e) => Err(e),
    };
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

async fn groups(State(server): State<FeatureServer>) -> Response {
    let groups: Vec<_> = server
        .groups()
        .iter()
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
