//! The follower's read routes: the read API of [`barista_reads`] served from
//! the replica, waiting on the follower's published state for
//! `min_position` and judging `max_staleness_ms` on the leader's clock.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use barista_reads::{
    leader_now_ms, read_page, read_row, Consistency, ReadError, ReadPool, ReadRequest, Snapshot,
    REPLICA_POSITION_SQL, RETRY_HINT,
};
use barista_schemas::Position;
use rusqlite::Connection;
use serde_json::{json, Value};

use crate::state::Shared;

/// State of the follower's read routes.
pub struct Reads {
    shared: Arc<Shared>,
    pool: Arc<ReadPool>,
}

/// The read routes of a follower.
pub fn router(shared: Arc<Shared>) -> Router {
    let pool = Arc::new(ReadPool::new(shared.replica.clone()));
    Router::new()
        .route("/tables/{table}/row", get(get_row))
        .route("/tables/{table}/rows", get(get_rows))
        .with_state(Arc::new(Reads { shared, pool }))
}

async fn get_row(
    State(r): State<Arc<Reads>>,
    Path(table): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let req = match ReadRequest::parse(&q, false) {
        Ok(req) => req,
        Err(e) => return e.into_response(),
    };
    let t = table.clone();
    serve(&r, req.consistency, &table, move |c| {
        read_row(c, REPLICA_POSITION_SQL, &t, &req.key).map(|s| Snapshot {
            position: s.position,
            leader_ts_ms: s.leader_ts_ms,
            data: json!({ "found": s.data.is_some(), "row": s.data }),
        })
    })
    .await
}

async fn get_rows(
    State(r): State<Arc<Reads>>,
    Path(table): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let req = match ReadRequest::parse(&q, true) {
        Ok(req) => req,
        Err(e) => return e.into_response(),
    };
    let t = table.clone();
    serve(&r, req.consistency, &table, move |c| {
        read_page(c, REPLICA_POSITION_SQL, &t, req.after.as_deref(), req.limit).map(|s| Snapshot {
            position: s.position,
            leader_ts_ms: s.leader_ts_ms,
            data: json!({ "rows": s.data.rows, "next_after": s.data.next_after }),
        })
    })
    .await
}

/// Waits for `min_position`, reads, then judges staleness on the snapshot
/// actually read.
async fn serve(
    r: &Reads,
    want: Consistency,
    table: &str,
    read: impl FnOnce(&mut Connection) -> Result<Snapshot<Value>, ReadError> + Send + 'static,
) -> Response {
    let shared = &r.shared;
    if let Some(min) = want.min_position {
        // The applier publishes its position after the replica commit, so a
        // snapshot opened after this wakes up holds at least `min`.
        let mut rx = shared.state.subscribe();
        let reached = tokio::time::timeout(want.timeout, rx.wait_for(|s| s.position >= min))
            .await
            .is_ok_and(|r| r.is_ok());
        if !reached {
            let applied = rx.borrow().position;
            return behind(shared, min, applied, want.timeout);
        }
    }
    let snap = match r.pool.run(read).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    if let Some(min) = want.min_position {
        if snap.position < min {
            return behind(shared, min, snap.position, want.timeout);
        }
    }
    let fresh = shared.state();
    let fresh_ts = fresh.fresh_ts_for(snap.position, snap.leader_ts_ms);
    let staleness_ms = (leader_now_ms(fresh.clock) - fresh_ts).max(0);
    if let Some(max) = want.max_staleness_ms {
        if staleness_ms > max as i64 {
            tracing::debug!(table, staleness_ms, max, "read refused: stale");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "error": "stale",
                    "staleness_ms": staleness_ms,
                    "max_staleness_ms": max,
                    "applied_position": snap.position,
                    "hint": RETRY_HINT,
                })),
            )
                .into_response();
        }
    }
    let (follower, seconds_lag) = match shared.status() {
        Ok(s) => (s.follower.clone(), s.seconds_lag),
        Err(e) => return poisoned(e),
    };
    let leader_position = fresh.leader_position.max(snap.position);
    let mut body = json!({
        "served_by": follower,
        "table": table,
        "position": snap.position,
        "leader_ts_ms": fresh_ts,
        "staleness_ms": staleness_ms,
        "lag": {
            "leader_position": leader_position,
            "position_lag": leader_position.ahead_of(snap.position),
            "seconds_lag": seconds_lag,
        },
    });
    if let (Value::Object(b), Value::Object(d)) = (&mut body, snap.data) {
        b.extend(d);
    }
    Json(body).into_response()
}

fn behind(shared: &Shared, min: Position, applied: Position, timeout: Duration) -> Response {
    let leader = shared.state().leader_position;
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "error": "behind",
            "applied_position": applied,
            "min_position": min,
            "leader_position": leader,
            "waited_ms": timeout.as_millis() as u64,
            "hint": RETRY_HINT,
        })),
    )
        .into_response()
}

/// A poisoned status lock: the follower loop is stopping; say so.
pub(crate) fn poisoned(e: barista_runtime::Poisoned) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": "poisoned", "detail": e.to_string() })),
    )
        .into_response()
}
