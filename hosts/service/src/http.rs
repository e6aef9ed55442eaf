//! `/healthz` and `/metrics`.

use crate::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A read that has not succeeded for this long makes the service unhealthy.
const STALL: Duration = Duration::from_secs(30);

/// What the loop reports about itself.
#[derive(Debug)]
pub(crate) struct Health {
    last_read: Instant,
    last_commit: Option<Instant>,
    last_error: Option<String>,
    stopping: bool,
    /// The cache's last failure, and until when it is left alone.
    cache_error: Option<(String, Instant)>,
}

impl Health {
    pub(crate) fn new() -> Self {
        Health {
            last_read: Instant::now(),
            last_commit: None,
            last_error: None,
            stopping: false,
            cache_error: None,
        }
    }
    pub(crate) fn cache_ok(&mut self) {
        self.cache_error = None;
    }
    pub(crate) fn cache_failed(&mut self, message: String, pause: Duration) {
        self.cache_error = Some((message, Instant::now() + pause));
    }
    pub(crate) fn cache_paused(&self) -> bool {
        self.cache_error
            .as_ref()
            .is_some_and(|(_, until)| Instant::now() < *until)
    }
    pub(crate) fn read_ok(&mut self) {
        self.last_read = Instant::now();
    }
    pub(crate) fn committed(&mut self) {
        self.last_commit = Some(Instant::now());
        self.last_error = None;
    }
    pub(crate) fn error(&mut self, message: String) {
        self.last_error = Some(message);
    }
    pub(crate) fn stopping(&mut self) {
        self.stopping = true;
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Mutex<Health>>,
}

async fn healthz(State(s): State<Shared>) -> impl IntoResponse {
    let h = match s.health.lock() {
        Ok(h) => h,
        Err(poisoned) => poisoned.into_inner(),
    };
    let since_read = h.last_read.elapsed();
    let healthy = !h.stopping && since_read < STALL;
    let body = json!({
        "status": if healthy { "ok" } else if h.stopping { "stopping" } else { "stalled" },
        "seconds_since_read": since_read.as_secs_f64(),
        "seconds_since_commit": h.last_commit.map(|c| c.elapsed().as_secs_f64()),
        "last_error": h.last_error,
        // Serving falls back to the store while the cache is down: degraded, not down.
        "cache": match &h.cache_error {
            None => json!({"ok": true}),
            Some((message, _)) => json!({"ok": false, "error": message}),
        },
    });
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body))
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// Serves until the runtime stops.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Mutex<Health>>,
) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(self::metrics))
        .with_state(Shared { metrics, health });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %lockstep_core::ErrorChain(&e), "the metrics endpoint stopped");
    }
}
