//! The follower's HTTP side: `/` (the lag page, for people), `/metrics`
//! (Prometheus), `/status` (JSON), `/ready` (503 until the leader is heard,
//! above the configured lag, or when halted), `/admin/pause` and
//! `/admin/resume` for operators and tests, the dead letters
//! (`/dead-letters…`, see [`crate::held`]), `/snapshot` (see
//! [`crate::snapshot`]), and the read API (`/tables/…`, see [`crate::serve`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::serve::poisoned;
use crate::state::Shared;

/// The follower's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(lag_page))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/ready", get(ready))
        .route("/admin/pause", post(pause))
        .route("/admin/resume", post(resume))
        .with_state(shared.clone())
        .merge(crate::held::router(shared.clone()))
        .merge(crate::snapshot::router(shared.replica.clone()))
        .merge(crate::verify::router(shared.clone()))
        .merge(crate::serve::router(shared))
}

/// The lag page: one self-contained HTML file (no CDN, no network but this
/// follower's own `/status`, which it polls every second), compiled into the
/// binary so a follower in a container without internet still serves it.
pub const LAG_PAGE: &str = include_str!("page/lag.html");

async fn lag_page() -> Response {
    // no-store: an operator reloading after an upgrade gets the new page.
    ([(header::CACHE_CONTROL, "no-store")], Html(LAG_PAGE)).into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    barista_runtime::metrics::openmetrics(&s.metrics.registry)
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
        "ready": st.halted.is_none() && st.diverged.is_none() && within,
        "seconds_lag": st.seconds_lag,
        "max_lag_seconds": s.max_lag_seconds,
        "position": st.applied_position,
        "halted": st.halted,
        "diverged": st.diverged,
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

#[cfg(test)]
mod tests {
    use super::LAG_PAGE;

    /// The page must work with no internet: it may name no other origin.
    /// The one `http://` allowed is the SVG namespace, which is an
    /// identifier, never fetched.
    #[test]
    fn the_lag_page_loads_nothing_from_elsewhere() {
        let stripped = LAG_PAGE.replace("http://www.w3.org/2000/svg", "");
        for needle in ["http://", "https://", "//cdn", "@import", "url("] {
            assert!(
                !stripped.contains(needle),
                "lag page refers to {needle:?}: it must be self-contained"
            );
        }
        assert!(
            LAG_PAGE.contains("connect-src 'self'"),
            "CSP keeps it local"
        );
    }
}
