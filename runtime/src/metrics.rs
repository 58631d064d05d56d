//! `GET /metrics` for every barista process: a Prometheus registry as
//! OpenMetrics text.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;

/// The registry encoded as OpenMetrics text, or a 500 naming why it could
/// not be.
pub fn openmetrics(registry: &Registry) -> Response {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, registry) {
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
