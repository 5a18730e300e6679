//! The HTTP listener: metrics, liveness and readiness (contract section 6).
//!
//! One `axum` server on `SMS_DISPATCH_HTTP_ADDR`. It stops with the worker
//! (the same [`Shutdown`] token).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::health::Health;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Health,
}

/// The routes, for tests that call them without a socket.
pub fn router(metrics: Metrics, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics_route))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
}

/// Binds `addr` and serves until `shutdown`. Returns the bound address (the
/// real port when `addr` has port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: Shutdown,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    info!(addr = %local, "http listening");
    let task = tokio::spawn(async move {
        let stop = async move { shutdown.requested().await };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
        {
            warn!(error = %e, "http server stopped with an error");
        }
    });
    Ok((local, task))
}

async fn metrics_route(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = state.metrics.render(accept);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.health.readiness() {
        Ok(()) => (StatusCode::OK, axum::Json(json!({"status": "ready"}))).into_response(),
        Err(not_ready) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "status": "not_ready",
                "reason": not_ready.reason,
                "detail": not_ready.detail,
            })),
        )
            .into_response(),
    }
}
