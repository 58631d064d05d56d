//! `GET /snapshot`: a consistent copy of this follower's replica (rows,
//! position, stored offsets) for a new follower to start from, see
//! [`barista_schemas::snapshot`]. The pages are streamed straight out of one
//! read transaction on a read-only connection (the replica is in WAL mode, so
//! the applier keeps committing meanwhile), with `Content-Length`, the
//! position in headers and the hash in a trailer.
//!
//! One snapshot at a time per follower: while it is sent, the WAL cannot be
//! checkpointed past its read transaction and grows with what the follower
//! applies; a second request is told to retry (503) rather than double that.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use barista_schemas::snapshot::{open_replica, SNAPSHOT_PATH};
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
    barista_runtime::snapshot::serve("the replica", move || open_replica(&replica), permit).await
}
