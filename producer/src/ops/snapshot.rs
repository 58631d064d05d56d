//! `GET /snapshot` on the producer: the leader's file as a replica, for the
//! first follower when there is no peer to seed from (or none healthy).
//!
//! The copy is made in one read transaction on the leader (`VACUUM INTO`,
//! see [`barista_schemas::snapshot`]; the leader is in WAL mode, so writers
//! go on). Then, in the copy only: every trigger goes (barista's capture,
//! and the application's, whose effects arrive as changes of their own and
//! would be applied twice), views go, and every table that is not captured
//! (barista's bookkeeping, tables without a primary key) goes. The position
//! is the newest changelog position of the copy, which the triggers wrote
//! in the same transactions as the rows; the copy gets the replica's
//! bookkeeping with that position and NO offsets.
//!
//! A follower seeded from it reads every partition from the earliest offset
//! Kafka still has, drops changes at or below the position as duplicates,
//! and halts on a gap: a change above the position whose predecessor on its
//! partition is gone.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use barista_schemas::snapshot::{
    copy_consistent, SnapshotCopy, HEADER_SNAPSHOT_LEADER_TS_MS, HEADER_SNAPSHOT_POSITION,
    HEADER_SNAPSHOT_SHA256, SNAPSHOT_CONTENT_TYPE,
};
use rusqlite::Connection;
use tokio::io::AsyncReadExt;

use super::Ops;
use crate::tail::now_ms;

/// Bytes read from the copy per chunk of the body.
const CHUNK: usize = 256 * 1024;

/// Serves a snapshot of the leader (one at a time: each copy takes as much
/// disk as the leader).
pub(super) async fn serve(State(ops): State<Arc<Ops>>) -> Response {
    let Ok(permit) = ops.snapshot_busy.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            "a snapshot is being served already; retry later",
        )
            .into_response();
    };
    let leader = ops.leader.clone();
    let started = Instant::now();
    let copy = tokio::task::spawn_blocking(move || {
        let dir = match leader.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => ".".into(),
        };
        copy_consistent(&leader, &dir, as_replica)
    })
    .await;
    let copy = match copy {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "leader snapshot failed");
            let body = format!("leader snapshot failed: {e}");
            return (StatusCode::INTERNAL_SERVER_ERROR, body).into_response();
        }
        Err(e) => {
            let body = format!("leader snapshot task failed: {e}");
            return (StatusCode::INTERNAL_SERVER_ERROR, body).into_response();
        }
    };
    tracing::info!(bytes = copy.len, position = %copy.position, copy_ms = started.elapsed().as_millis() as u64,
        "serving a snapshot of the leader");
    stream(copy, permit)
}

/// Turns a copy of the leader into a replica at the leader's position.
pub fn as_replica(c: &Connection) -> rusqlite::Result<()> {
    let exists = |name: &str| -> rusqlite::Result<bool> {
        c.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
    };
    let captured: HashSet<String> = if exists("_barista_tables")? {
        c.prepare("SELECT name FROM _barista_tables")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    } else {
        HashSet::new()
    };
    let position: i64 = if exists("_barista_changelog")? {
        c.query_row(
            "SELECT coalesce(max(position), 0) FROM _barista_changelog",
            [],
            |r| r.get(0),
        )?
    } else {
        0
    };
    let objects: Vec<(String, String)> = c
        .prepare(
            "SELECT type, name FROM sqlite_schema WHERE type IN ('trigger', 'view', 'table') \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY type = 'table'",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    c.execute_batch("BEGIN")?;
    for (kind, name) in objects {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match kind.as_str() {
            "trigger" => c.execute_batch(&format!("DROP TRIGGER IF EXISTS {quoted}"))?,
            "view" => c.execute_batch(&format!("DROP VIEW IF EXISTS {quoted}"))?,
            _ if !captured.contains(&name) => {
                c.execute_batch(&format!("DROP TABLE IF EXISTS {quoted}"))?
            }
            _ => {}
        }
    }
    c.execute_batch(barista_schemas::snapshot::REPLICA_SQL)?;
    let now = now_ms();
    c.execute(
        "INSERT INTO _barista_position(id, position, leader_ts_ms, applied_at_ms) VALUES (1, ?1, ?2, ?2)",
        rusqlite::params![position, now],
    )?;
    c.execute_batch("COMMIT")
}

/// Streams a finished copy with its length, hash and position; `guard` is
/// held until the body ends (or the client goes away).
fn stream(copy: SnapshotCopy, guard: impl Send + 'static) -> Response {
    let file = tokio::fs::File::from_std(copy.file);
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
            (header::CONTENT_LENGTH, copy.len.to_string()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        [
            (HEADER_SNAPSHOT_SHA256, copy.sha256),
            (HEADER_SNAPSHOT_POSITION, copy.position.0.to_string()),
            (HEADER_SNAPSHOT_LEADER_TS_MS, copy.leader_ts_ms.to_string()),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
