//! The producer's HTTP side: `/metrics` (Prometheus text), `/status` (JSON) and `/ready`
//! (200 while publishing or with nothing to publish; 503 when changes have waited for Kafka
//! longer than the grace period), and `/snapshot` (the leader as a replica, for seeding a
//! follower; see [`super::snapshot`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::Ops;

/// The producer's routes.
pub fn router(ops: Arc<Ops>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/ready", get(ready))
        .route(
            barista_schemas::snapshot::SNAPSHOT_PATH,
            get(super::snapshot::serve),
        )
        .with_state(ops)
}

/// Serves the routes on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ops: Arc<Ops>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(ops))
        .with_graceful_shutdown(stop)
        .await
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    barista_runtime::metrics::openmetrics(&ops.metrics.registry)
}

async fn status(State(ops): State<Arc<Ops>>) -> Response {
    match ops.status() {
        Ok(s) => Json(s).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn ready(State(ops): State<Arc<Ops>>) -> Response {
    let status = match ops.status() {
        Ok(s) => s,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let body = serde_json::json!({
        "ready": status.readiness.ready,
        "reason": status.readiness.reason,
        "state": status.state,
        "backlog_rows": status.backlog_rows,
        "oldest_unacked_seconds": status.oldest_unacked_seconds,
        "seconds_since_last_ack": status.seconds_since_last_ack,
        "last_broker_error": status.last_broker_error,
        "last_registry_error": status.last_registry_error,
    });
    let code = if status.readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}
