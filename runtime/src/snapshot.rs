//! `GET /snapshot` answers, the same for a follower and the producer: a
//! finished [`SnapshotCopy`] streamed with its length, hash and position in
//! headers (see [`barista_schemas::snapshot`]).

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use barista_schemas::snapshot::{
    SnapshotCopy, HEADER_SNAPSHOT_LEADER_TS_MS, HEADER_SNAPSHOT_POSITION, HEADER_SNAPSHOT_SHA256,
    SNAPSHOT_CONTENT_TYPE,
};
use tokio::io::AsyncReadExt;

/// Bytes read from the copy per body chunk.
const CHUNK: usize = 256 * 1024;

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
