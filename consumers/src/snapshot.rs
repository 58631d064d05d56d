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

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use barista_schemas::snapshot::{
    copy_consistent, SnapshotCopy, HEADER_SNAPSHOT_LEADER_TS_MS, HEADER_SNAPSHOT_POSITION,
    HEADER_SNAPSHOT_SHA256, SNAPSHOT_CONTENT_TYPE, SNAPSHOT_PATH,
};
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

/// Bytes read from the copy per chunk of the body.
const CHUNK: usize = 256 * 1024;

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
            stream_copy(copy, permit)
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

/// Streams a finished copy with its length, hash and position; `guard` is
/// held until the body ends (or the client goes away).
pub fn stream_copy(copy: SnapshotCopy, guard: impl Send + 'static) -> Response {
    let SnapshotCopy {
        file,
        len,
        sha256,
        position,
        leader_ts_ms,
    } = copy;
    let file = tokio::fs::File::from_std(file);
    let body = futures::stream::unfold(Some((file, guard, vec![0u8; CHUNK])), |state| async move {
        let (mut file, guard, mut buf) = state?;
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                let chunk = axum::body::Bytes::copy_from_slice(&buf[..n]);
                Some((Ok(chunk), Some((file, guard, buf))))
            }
            // Ends the body after the error.
            Err(e) => Some((Err::<axum::body::Bytes, _>(e), None)),
        }
    });
    (
        [
            (header::CONTENT_TYPE, SNAPSHOT_CONTENT_TYPE.to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        [
            (HEADER_SNAPSHOT_SHA256, sha256),
            (HEADER_SNAPSHOT_POSITION, position.0.to_string()),
            (HEADER_SNAPSHOT_LEADER_TS_MS, leader_ts_ms.to_string()),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
