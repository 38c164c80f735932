//! The daemon's HTTP endpoints: `/healthz` (the process is alive), `/readyz` (it can reach
//! its database) and `/metrics` (Prometheus). The billing HTTP API will live here too.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct Readiness {
    database_error: Mutex<Option<String>>,
    claim_error: Mutex<Option<String>>,
}

impl Readiness {
    /// Records whether the last database check failed, and why.
    pub fn set_database(&self, error: Option<String>) {
        *self
            .database_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = error;
    }

    /// Records whether claiming work keeps failing, and why (a daemon that cannot claim does
    /// no work, however well its database answers other queries).
    pub fn set_claims(&self, error: Option<String>) {
        *self
            .claim_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = error;
    }

    fn problem(&self) -> Option<String> {
        let read = |m: &Mutex<Option<String>>| {
            m.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        };
        read(&self.database_error)
            .map(|e| format!("database: {e}"))
            .or_else(|| read(&self.claim_error).map(|e| format!("cannot claim work: {e}")))
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    match s.ready.problem() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// The router of the daemon's endpoints.
pub fn router(metrics: Arc<Metrics>, ready: Arc<Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(self::metrics))
        .with_state(AppState { metrics, ready })
}

/// Serves the endpoints on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
    shutdown: CancellationToken,
) {
    let app = router(metrics, ready);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "HTTP server failed");
    }
}
