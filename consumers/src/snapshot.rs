//! `GET /snapshot`: a consistent copy of this follower's replica (rows,
//! position, stored offsets) for a new follower to start from, see
//! [`barista_schemas::snapshot`]. The copy is made on a read-only connection
//! in one read transaction (the replica is in WAL mode, so the applier keeps
//! committing meanwhile), hashed, then streamed with `Content-Length`, its
//! SHA-256 and its position in headers.
//!
//! One snapshot at a time per follower: each copy takes as much disk as the
//! replica, and a second request is told to retry (503) rather than double it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use barista_schemas::snapshot::{copy_consistent, SNAPSHOT_PATH};
use tokio::sync::Semaphore;

struct Snapshots {
    replica: PathBuf,
    busy: Arc<Semaphore>,
}

/// The `/snapshot` route of a follower whose replica is `replica`.
pub fn router(replica: PathBuf) -> Router {
    Router::new()
        .route(SNAPSHOT_PATH, get(snapshot))
        .with_state(Arc::new(Snapshots {
            replica,
            busy: Arc::new(Semaphore::new(1)),
        }))
}

async fn snapshot(State(s): State<Arc<Snapshots>>) -> Response {
    let Ok(permit) = s.busy.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            "a snapshot is being served already; retry later",
        )
            .into_response();
    };
    if !s.replica.exists() {
        return (StatusCode::SERVICE_UNAVAILABLE, "no replica yet").into_response();
    }
    let replica = s.replica.clone();
    let started = Instant::now();
    let copy = tokio::task::spawn_blocking(move || {
        copy_consistent(&replica, temp_dir(&replica), |_| Ok(()))
    })
    .await;
    match copy {
        Ok(Ok(copy)) => {
            tracing::info!(bytes = copy.len, position = %copy.position, copy_ms = started.elapsed().as_millis() as u64,
                "serving a snapshot of the replica");
            barista_runtime::snapshot::stream_copy(copy, permit)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "snapshot failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("snapshot failed: {e}"),
            )
                .into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("snapshot task failed: {e}"),
        )
            .into_response(),
    }
}

/// The directory of `file`, where its copy is made.
fn temp_dir(file: &Path) -> &Path {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
