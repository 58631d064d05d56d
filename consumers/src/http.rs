//! The follower's HTTP side: `/metrics` (Prometheus), `/status` (JSON),
//! `/ready` (503 until the leader is heard, above the configured lag, or when halted), and
//! `/admin/pause` / `/admin/resume` for operators and tests, and the read
//! API (`/tables/…`, see [`crate::serve`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::serve::poisoned;
use crate::state::Shared;

/// The follower's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/ready", get(ready))
        .route("/admin/pause", post(pause))
        .route("/admin/resume", post(resume))
        .with_state(shared.clone())
        .merge(crate::serve::router(shared))
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &s.metrics.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn status(State(s): State<Arc<Shared>>) -> Response {
    match s.status() {
        Ok(st) => Json(st.clone()).into_response(),
        Err(e) => poisoned(e),
    }
}

async fn ready(State(s): State<Arc<Shared>>) -> Response {
    let st = match s.status() {
        Ok(st) => st.clone(),
        Err(e) => return poisoned(e),
    };
    // Ready only once the leader was heard and the lag is known and small:
    // an unknown lag is not a small one.
    let within = st.seconds_lag.is_some_and(|l| l <= s.max_lag_seconds);
    let body = serde_json::json!({
        "ready": st.halted.is_none() && within,
        "seconds_lag": st.seconds_lag,
        "max_lag_seconds": s.max_lag_seconds,
        "position": st.applied_position,
        "halted": st.halted,
    });
    let code = if body["ready"] == true {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn pause(State(s): State<Arc<Shared>>) -> StatusCode {
    s.paused.send_replace(true);
    StatusCode::NO_CONTENT
}

async fn resume(State(s): State<Arc<Shared>>) -> StatusCode {
    s.paused.send_replace(false);
    StatusCode::NO_CONTENT
}
