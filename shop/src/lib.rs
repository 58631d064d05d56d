//! The coffee shop's leader service: the application in front of the leader
//! database. Orders are written to `leader.db` in one transaction each
//! (capture triggers record them in the same transaction), and the answer
//! carries the position of that commit as a **token**: a client passes it as
//! `min_position` to a follower to read its own write. The service also
//! serves barista's read API from the leader file itself, for clients that
//! fall back to the leader when every follower is too far behind.
//!
//! ```text
//! POST /orders {"customer_id": 7, "coffee": "cortado"}
//!   → {"order_id": 12, "customer_id": 7, "favourite": "cortado", "visits": 3, "token": 4711}
//! GET  /tables/{table}/row?id=7    GET /tables/{table}/rows?limit=…&after=…   (same as a follower)
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use barista_producer::token::{write_with_token, LEADER_POSITION_SQL};
use barista_reads::{read_page, read_row, ReadError, ReadPool, ReadRequest, Snapshot, RETRY_HINT};
use barista_schemas::Position;
use rusqlite::{params, Connection};
use serde::Deserialize;
use serde_json::{json, Value};

/// The shop's leader schema as first shipped (v1 of every `coffee.*` subject;
/// the source of the checked-in contracts `schemas/contracts/coffee.*`).
pub const LEADER_SQL: &str = include_str!("sql/leader.sql");
/// Migration 0002: `customers.stamps INTEGER NOT NULL DEFAULT 0` (v2 of the
/// customers subjects).
pub const MIGRATION_0002_SQL: &str = include_str!("sql/0002_customer_stamps.sql");

/// Creates the shop's tables, as of the latest migration, in the leader file
/// (WAL mode) unless they exist; capture is installed on them by the producer.
pub fn create_schema(leader: &FsPath) -> anyhow::Result<()> {
    let mut c =
        Connection::open(leader).with_context(|| format!("opening {}", leader.display()))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    let tx = c.transaction()?;
    let exists: bool = tx.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'customers'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        tx.execute_batch(LEADER_SQL)?;
        tx.execute_batch(MIGRATION_0002_SQL)?;
    }
    tx.commit()?;
    Ok(())
}

/// An order, as posted.
#[derive(Debug, Deserialize)]
pub struct Order {
    /// Who orders.
    pub customer_id: i64,
    /// What: it becomes their usual.
    pub coffee: String,
}

struct Shop {
    /// The one writer connection (SQLite has one writer anyway); used only
    /// inside blocking tasks, never across an await.
    writer: Mutex<Connection>,
    reads: Arc<ReadPool>,
}

/// The shop's routes on a leader file.
pub fn router(leader: &FsPath) -> anyhow::Result<Router> {
    let writer =
        Connection::open(leader).with_context(|| format!("opening {}", leader.display()))?;
    writer.busy_timeout(Duration::from_secs(10))?;
    let shop = Arc::new(Shop {
        writer: Mutex::new(writer),
        reads: Arc::new(ReadPool::new(leader.to_owned())),
    });
    Ok(Router::new()
        .route("/orders", post(order))
        .route("/tables/{table}/row", get(row))
        .route("/tables/{table}/rows", get(rows))
        .with_state(shop))
}

/// Serves the shop on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    leader: PathBuf,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = router(&leader)?;
    tracing::info!(addr = %listener.local_addr()?, leader = %leader.display(), "shop listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")
}

/// Binds `addr` and serves in the background; returns the bound address.
pub async fn spawn(
    leader: PathBuf,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr()?;
    Ok((bound, tokio::spawn(serve(listener, leader, shutdown))))
}

fn error(code: StatusCode, kind: &str, detail: impl ToString) -> Response {
    (
        code,
        Json(json!({ "error": kind, "detail": detail.to_string() })),
    )
        .into_response()
}

async fn order(State(shop): State<Arc<Shop>>, Json(o): Json<Order>) -> Response {
    let r = tokio::task::spawn_blocking(move || -> rusqlite::Result<Value> {
        let mut conn = shop
            .writer
            .lock()
            .map_err(|_| rusqlite::Error::InvalidQuery)?;
        let (v, token) = write_with_token(&mut conn, |tx| {
            tx.execute(
                "INSERT INTO orders(customer_id, coffee, ordered_at) VALUES (?1, ?2, unixepoch('subsec'))",
                params![o.customer_id, o.coffee],
            )?;
            let order_id = tx.last_insert_rowid();
            let visits: i64 = tx.query_row(
                "INSERT INTO customers(id, name, favourite, visits) VALUES (?1, 'customer ' || ?1, ?2, 1) \
                 ON CONFLICT(id) DO UPDATE SET favourite = excluded.favourite, visits = visits + 1 \
                 RETURNING visits",
                params![o.customer_id, o.coffee],
                |r| r.get(0),
            )?;
            Ok::<_, rusqlite::Error>(json!({
                "order_id": order_id,
                "customer_id": o.customer_id,
                "favourite": o.coffee,
                "visits": visits,
            }))
        })?;
        let mut v = v;
        v["token"] = json!(token);
        Ok(v)
    })
    .await;
    match r {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "sqlite", e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "task", e),
    }
}

async fn row(
    State(shop): State<Arc<Shop>>,
    Path(table): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let req = match ReadRequest::parse(&q, false) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let t = table.clone();
    let min = req.consistency.min_position;
    let r = shop
        .reads
        .run(move |c| {
            read_row(c, LEADER_POSITION_SQL, &t, &req.key).map(|s| Snapshot {
                position: s.position,
                leader_ts_ms: s.leader_ts_ms,
                data: json!({ "found": s.data.is_some(), "row": s.data }),
            })
        })
        .await;
    answer(&table, min, r)
}

async fn rows(
    State(shop): State<Arc<Shop>>,
    Path(table): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let req = match ReadRequest::parse(&q, true) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let t = table.clone();
    let min = req.consistency.min_position;
    let r = shop
        .reads
        .run(move |c| {
            read_page(c, LEADER_POSITION_SQL, &t, req.after.as_deref(), req.limit).map(|s| {
                Snapshot {
                    position: s.position,
                    leader_ts_ms: s.leader_ts_ms,
                    data: json!({ "rows": s.data.rows, "next_after": s.data.next_after }),
                }
            })
        })
        .await;
    answer(&table, min, r)
}

/// The leader's answer has the same shape as a follower's; it is never
/// stale. A `min_position` beyond its head is a token from another leader.
fn answer(table: &str, min: Option<Position>, r: Result<Snapshot<Value>, ReadError>) -> Response {
    let snap = match r {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    if let Some(min) = min.filter(|m| *m > snap.position) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "error": "behind",
                "applied_position": snap.position,
                "min_position": min,
                "hint": format!("the leader's head is below min_position: was the token issued by this leader? ({RETRY_HINT})"),
            })),
        )
            .into_response();
    }
    let mut body = json!({
        "served_by": "leader",
        "table": table,
        "position": snap.position,
        "leader_ts_ms": snap.leader_ts_ms,
        "staleness_ms": 0,
        "lag": { "leader_position": snap.position, "position_lag": 0, "seconds_lag": 0.0 },
    });
    if let (Value::Object(b), Value::Object(d)) = (&mut body, snap.data) {
        b.extend(d);
    }
    Json(body).into_response()
}
