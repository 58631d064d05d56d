//! `GET /snapshot` answers, the same for a follower and the producer: a
//! [`Snapshot`] made and sent on a blocking thread, its bytes streamed as
//! they are read, with its length, hash name and position in headers and the
//! hash in a trailer (see [`barista_schemas::snapshot`]).

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use barista_schemas::snapshot::{
    Snapshot, SnapshotError, HEADER_SNAPSHOT_BYTES, HEADER_SNAPSHOT_HASH,
    HEADER_SNAPSHOT_LEADER_TS_MS, HEADER_SNAPSHOT_POSITION, SNAPSHOT_CONTENT_TYPE, SNAPSHOT_HASH,
    TRAILER_LEN,
};
use tokio::sync::{mpsc, oneshot};

/// A client that takes nothing for this long is dropped: the snapshot's read
/// transaction must not stay open for a client that is gone without closing.
const STALL: Duration = Duration::from_secs(60);

/// Chunks in flight between the reading thread and the connection.
const IN_FLIGHT: usize = 8;

/// Makes a snapshot with `make` on a blocking thread and answers with it,
/// streaming its bytes as they are read; `what` names it in logs ("the
/// replica", "the leader"). `guard` is held until the body ends (or the
/// client goes away).
pub async fn serve(
    what: &'static str,
    make: impl FnOnce() -> Result<Snapshot, SnapshotError> + Send + 'static,
    guard: impl Send + 'static,
) -> Response {
    let (meta_tx, meta_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(IN_FLIGHT);
    let handle = tokio::runtime::Handle::current();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || {
        let _guard = guard;
        let snapshot = match make() {
            Ok(s) => s,
            Err(e) => {
                let _ = meta_tx.send(Err(e));
                return;
            }
        };
        let meta = snapshot.meta();
        if meta_tx.send(Ok(meta)).is_err() {
            return;
        }
        tracing::info!(bytes = meta.len, position = %meta.position,
            prepare_ms = started.elapsed().as_millis() as u64, "serving a snapshot of {what}");
        let sent = snapshot.send(|chunk| {
            let send = tx.send(Ok(Bytes::from(chunk)));
            // The timer is made inside the runtime's context: this may be a
            // thread of the snapshot's own, outside it.
            let sent = handle.block_on(async { tokio::time::timeout(STALL, send).await });
            matches!(sent, Ok(Ok(())))
        });
        match sent {
            Ok(()) => tracing::info!(
                bytes = meta.len,
                seconds = started.elapsed().as_secs_f64(),
                "snapshot of {what} sent"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "snapshot of {what} not sent to the end");
                // Ends the body with an error: the client sees a truncated body.
                let _ = tx.try_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let meta = match meta_rx.await {
        Ok(Ok(meta)) => meta,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "snapshot of {what} failed");
            let body = format!("snapshot of {what} failed: {e}");
            return (StatusCode::INTERNAL_SERVER_ERROR, body).into_response();
        }
        Err(_) => {
            let body = format!("snapshot of {what} failed: its thread ended");
            return (StatusCode::INTERNAL_SERVER_ERROR, body).into_response();
        }
    };
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    (
        [
            (header::CONTENT_TYPE, SNAPSHOT_CONTENT_TYPE.to_owned()),
            (
                header::CONTENT_LENGTH,
                (meta.len + TRAILER_LEN as u64).to_string(),
            ),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        [
            (HEADER_SNAPSHOT_BYTES, meta.len.to_string()),
            (HEADER_SNAPSHOT_HASH, SNAPSHOT_HASH.to_owned()),
            (HEADER_SNAPSHOT_POSITION, meta.position.0.to_string()),
            (HEADER_SNAPSHOT_LEADER_TS_MS, meta.leader_ts_ms.to_string()),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
