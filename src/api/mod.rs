//! The daemon's HTTP endpoints: `/healthz` (the process is alive), `/readyz` (it can reach
//! its database), `/metrics` (Prometheus), and the billing API under `/v1` (a file per
//! resource). The API sits above the store and the catalog and calls the same store verbs the
//! CLI calls; nothing below imports it.

pub mod auth;
pub mod events;
pub mod idempotent;
pub mod instances;
pub mod openapi;
pub mod orders;
pub mod problem;
pub mod products;
pub mod tasks;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::metrics::Metrics;
use crate::store::SqlStore;

/// What the `/v1` routes work with.
#[derive(Clone)]
pub struct V1 {
    /// The store, as the CLI uses it.
    pub store: SqlStore,
    /// The catalog the daemon runs (hot-reloaded).
    pub catalog: tokio::sync::watch::Receiver<Arc<Catalog>>,
    /// Opens sealed root passwords for the admin's credentials call.
    pub keyring: Arc<crate::secrets::Keyring>,
    /// The newest event, for the feed's long polls.
    pub feed: events::FeedHead,
}

/// Requests to `/v1` carry at most this much body.
pub const MAX_BODY: usize = 64 * 1024;
/// A `/v1` request that takes longer is answered 408 (its database work is abandoned).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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

/// The router of the daemon's endpoints; `/v1` only with `v1`, `/ui/` only with `console`.
pub fn router(
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
    v1: Option<V1>,
    console: Option<crate::console::Console>,
) -> Router {
    let mut base = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(self::metrics))
        .with_state(AppState { metrics, ready });
    if let Some(console) = console {
        base = base.merge(
            crate::console::router(console)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
                .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                    axum::http::StatusCode::REQUEST_TIMEOUT,
                    REQUEST_TIMEOUT,
                )),
        );
    }
    let Some(v1) = v1 else { return base };
    let api = Router::new()
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/v1/products", get(products::list))
        .route("/v1/products/{id}", get(products::get_one))
        .route("/v1/instances", get(instances::list).post(orders::create))
        .route("/v1/instances/{id}", get(instances::get_one))
        .route("/v1/instances/{id}/history", get(instances::history))
        .route("/v1/instances/{id}/credentials", get(orders::credentials))
        .route("/v1/instances/{id}/suspend", post(orders::suspend))
        .route("/v1/instances/{id}/unsuspend", post(orders::unsuspend))
        .route("/v1/instances/{id}/terminate", post(orders::terminate))
        .route("/v1/instances/{id}/reboot", post(orders::reboot))
        .route("/v1/instances/{id}/reinstall", post(orders::reinstall))
        .route(
            "/v1/instances/{id}/change-product",
            post(orders::change_product),
        )
        .route("/v1/tasks", get(tasks::list))
        .route("/v1/tasks/{id}/complete", post(tasks::complete))
        .route("/v1/events", get(events::feed))
        .fallback(no_such_route)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(v1);
    base.merge(api)
}

async fn no_such_route(uri: axum::http::Uri) -> problem::Problem {
    problem::Problem::not_found(
        "no_such_route",
        format!("no route `{}`: see /v1/openapi.json", uri.path()),
    )
}

/// Bounds on the daemon's listener, so that slow or half-open clients cannot hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers before the connection is
    /// closed.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves the endpoints on `listener` until `shutdown` is cancelled, within `limits`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
    v1: Option<V1>,
    console: Option<crate::console::Console>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let app = router(metrics, ready, v1, console);
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
                }
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn half_open_clients_cannot_starve_the_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let limits = Limits {
            max_connections: 8,
            header_read_timeout: Duration::from_millis(500),
        };
        tokio::spawn(serve(
            listener,
            Arc::new(Metrics::default()),
            Arc::new(Readiness::default()),
            None,
            None,
            limits,
            shutdown.clone(),
        ));
        // Many more clients than connections send half a request and then nothing.
        let mut stalled = Vec::new();
        for _ in 0..40 {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            stalled.push(c);
        }
        // A well-behaved client is still answered once the stalled ones time out.
        let answer = tokio::time::timeout(Duration::from_secs(20), async {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).await.unwrap();
            out
        })
        .await
        .expect("the listener kept serving");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // The stalled connections were closed by the server.
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), stalled[0].read(&mut buf))
            .await
            .expect("closed, not held")
            .unwrap_or(0);
        assert!(
            n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        shutdown.cancel();
    }
}
