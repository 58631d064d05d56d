//! Why a read could not be answered, and the HTTP answer for each reason.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Why a read could not be answered. Callers branch on it for the status code.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The table does not exist here (or is barista's own).
    #[error("unknown table {0:?}")]
    UnknownTable(String),
    /// The request is malformed: the message says what is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// The database cannot be read yet (a follower that has not created its
    /// replica, a leader without capture installed).
    #[error("not ready: {0}")]
    Unavailable(String),
    /// A follower's table whose snapshot has not ended: it holds only part of the leader's
    /// table (or a part not yet repaired). Retry later, another follower, or the leader.
    #[error(
        "table {table:?} is being snapshotted: {rows} rows copied so far, since position {since}"
    )]
    Snapshotting {
        /// The table.
        table: String,
        /// Snapshot rows applied so far.
        rows: i64,
        /// Where the snapshot started.
        since: i64,
    },
    /// SQLite failed while reading.
    #[error("reading: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

impl ReadError {
    /// HTTP status and JSON body.
    pub fn into_response(self) -> Response {
        let (code, kind) = match &self {
            ReadError::UnknownTable(_) => (StatusCode::NOT_FOUND, "unknown_table"),
            ReadError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ReadError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ReadError::Snapshotting { .. } => (StatusCode::SERVICE_UNAVAILABLE, "snapshotting"),
            ReadError::Sqlite(_) => (StatusCode::INTERNAL_SERVER_ERROR, "sqlite"),
        };
        if let ReadError::Snapshotting { table, rows, since } = &self {
            return (
                code,
                Json(json!({
                    "error": kind,
                    "detail": self.to_string(),
                    "table": table,
                    "snapshot_rows": rows,
                    "snapshot_started_position": since,
                    "hint": "retry later, another follower, or read the leader",
                })),
            )
                .into_response();
        }
        (
            code,
            Json(json!({ "error": kind, "detail": self.to_string() })),
        )
            .into_response()
    }
}
