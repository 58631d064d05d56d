//! Verification on demand, beside the rolling check at commit records: every
//! table's checksum recomputed from its rows and compared with the stored
//! rolling value (`consumer verify`, `GET /verify`), and per-key-range hashes
//! for a comparison with a peer (`GET /verify/buckets`, `GET /verify/keys`,
//! `consumer verify --against`). Reads the replica only, each answer in one
//! read transaction, so it holds one position.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use barista_schemas::checksum::{self, RowHasher};
use barista_schemas::envelope::RowShape;
use barista_schemas::json::to_json;
use barista_schemas::Position;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::checksums::{recompute, recorded_divergence, scan, stored_or_own_shape, Divergence};
use crate::state::Shared;

/// Key ranges per table: rows go to a bucket by a hash of their key.
pub const BUCKETS: u64 = 64;

/// One table, recomputed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCheck {
    /// The table.
    pub table: String,
    /// Rows.
    pub rows: u64,
    /// The rolling value the apply transaction keeps, if any yet (a table
    /// not written since checksums were turned on has none).
    pub stored: Option<i64>,
    /// Recomputed from the rows now (under the stored shape, else the
    /// table's own columns).
    pub recomputed: i64,
    /// `stored` is absent or equals `recomputed`.
    pub ok: bool,
}

/// Every table of a replica, recomputed at one position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The replica's position.
    pub position: Position,
    /// Every table's `ok`.
    pub ok: bool,
    /// A divergence the follower recorded at a commit record, if any.
    pub diverged: Option<Divergence>,
    /// Per table, by name.
    pub tables: Vec<TableCheck>,
}

/// A table's rows by key range, at one position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buckets {
    /// The table.
    pub table: String,
    /// The replica's position.
    pub position: Position,
    /// Rows.
    pub rows: u64,
    /// [`BUCKETS`] wrapping sums of row hashes (i64 bits).
    pub buckets: Vec<i64>,
}

/// A key and its row's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyHash {
    /// The key, column → value (the read API's JSON).
    pub key: serde_json::Value,
    /// The row's hash (i64 bits).
    pub hash: i64,
}

/// The rows of one key range, at one position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keys {
    /// The table.
    pub table: String,
    /// The replica's position.
    pub position: Position,
    /// The bucket.
    pub bucket: u64,
    /// Its rows, in key order.
    pub keys: Vec<KeyHash>,
}

/// The replica's tables (barista's own and SQLite's left out), by name.
pub fn user_tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_barista\\_%' ESCAPE '\\' \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )?
    .query_map([], |r| r.get(0))?
    .collect()
}

/// The replica's position.
pub fn position(conn: &Connection) -> rusqlite::Result<Position> {
    Ok(conn
        .query_row(
            "SELECT position FROM _barista_position WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(Position::ZERO))
}

/// Runs `f` in one read transaction of a read-only connection to `path`.
pub fn in_read_txn<T>(
    path: &std::path::Path,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let mut conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let txn = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)?;
    let r = f(&txn)?;
    txn.commit()?;
    Ok(r)
}

/// Every table recomputed and compared with its stored rolling value.
pub fn report(conn: &Connection) -> rusqlite::Result<Report> {
    let position = position(conn)?;
    let mut tables = Vec::new();
    for table in user_tables(conn)? {
        let Some(shape) = stored_or_own_shape(conn, &table)? else {
            continue;
        };
        let (sum, rows) = recompute(conn, &shape, &RowHasher::new(&shape))?;
        let stored: Option<i64> = conn
            .query_row(
                "SELECT sum FROM _barista_checksums WHERE tbl = ?1",
                [&table],
                |r| r.get(0),
            )
            .optional()?;
        let recomputed = checksum::to_wire(sum);
        tables.push(TableCheck {
            ok: stored.is_none_or(|s| s == recomputed),
            table,
            rows,
            stored,
            recomputed,
        });
    }
    Ok(Report {
        position,
        ok: tables.iter().all(|t| t.ok),
        diverged: recorded_divergence(conn)?,
        tables,
    })
}

/// The key columns of `shape` alone, to put a row in its bucket.
fn key_shape(shape: &RowShape) -> (RowShape, Vec<usize>) {
    let pk = shape.pk_indexes();
    let columns = pk.iter().map(|&i| shape.columns[i].clone()).collect();
    let key = RowShape {
        table: shape.table.clone(),
        columns,
    };
    (key, pk)
}

/// Each row of `table` with its bucket and hash, in key order; None when the
/// table does not exist.
fn hashed_rows(
    conn: &Connection,
    table: &str,
    mut each: impl FnMut(u64, u64, &[&barista_schemas::SqlValue], &RowShape),
) -> rusqlite::Result<Option<()>> {
    let Some(shape) = stored_or_own_shape(conn, table)? else {
        return Ok(None);
    };
    let rows = RowHasher::new(&shape);
    let (key_shape, pk) = key_shape(&shape);
    let keys = RowHasher::new(&key_shape);
    scan(conn, &shape, |row| {
        let key: Vec<_> = pk.iter().map(|&i| row[i].clone()).collect();
        let bucket = keys.hash(&key) % BUCKETS;
        let refs: Vec<_> = key.iter().collect();
        each(bucket, rows.hash(row), &refs, &key_shape);
    })?;
    Ok(Some(()))
}

/// `table`'s rows by key range; None when the table does not exist.
pub fn buckets(conn: &Connection, table: &str) -> rusqlite::Result<Option<Buckets>> {
    let mut sums = vec![0u64; BUCKETS as usize];
    let mut rows = 0;
    let found = hashed_rows(conn, table, |b, h, _, _| {
        sums[b as usize] = checksum::apply(sums[b as usize], None, Some(h));
        rows += 1;
    })?;
    let position = position(conn)?;
    Ok(found.map(|()| Buckets {
        table: table.to_owned(),
        position,
        rows,
        buckets: sums.into_iter().map(checksum::to_wire).collect(),
    }))
}

/// The keys and row hashes of one of `table`'s key ranges.
pub fn keys(conn: &Connection, table: &str, bucket: u64) -> rusqlite::Result<Option<Keys>> {
    let mut keys = Vec::new();
    let found = hashed_rows(conn, table, |b, h, key, shape| {
        if b == bucket {
            let obj: serde_json::Map<_, _> = shape
                .columns
                .iter()
                .zip(key)
                .map(|(c, v)| (c.name.clone(), to_json(v)))
                .collect();
            keys.push(KeyHash {
                key: obj.into(),
                hash: checksum::to_wire(h),
            });
        }
    })?;
    let position = position(conn)?;
    Ok(found.map(|()| Keys {
        table: table.to_owned(),
        position,
        bucket,
        keys,
    }))
}

/// The verification routes of a follower.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/verify", get(get_verify))
        .route("/verify/buckets", get(get_buckets))
        .route("/verify/keys", get(get_keys))
        .with_state(shared)
}

/// Query of `/verify/buckets` and `/verify/keys`.
#[derive(Debug, Deserialize)]
pub struct TableQuery {
    /// The table.
    pub table: String,
    /// The bucket (`/verify/keys` only).
    pub bucket: Option<u64>,
}

async fn on_replica<T: Serialize + Send + 'static>(
    s: &Shared,
    f: impl FnOnce(&Connection) -> rusqlite::Result<Option<T>> + Send + 'static,
) -> Response {
    let path = s.replica.clone();
    match tokio::task::spawn_blocking(move || in_read_txn(&path, f)).await {
        Ok(Ok(Some(v))) => Json(v).into_response(),
        Ok(Ok(None)) => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": "no such table" })),
        )
            .into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn get_verify(State(s): State<Arc<Shared>>) -> Response {
    on_replica(&s, |c| report(c).map(Some)).await
}

async fn get_buckets(State(s): State<Arc<Shared>>, Query(q): Query<TableQuery>) -> Response {
    on_replica(&s, move |c| buckets(c, &q.table)).await
}

async fn get_keys(State(s): State<Arc<Shared>>, Query(q): Query<TableQuery>) -> Response {
    let Some(bucket) = q.bucket.filter(|b| *b < BUCKETS) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("bucket=0..{} is required", BUCKETS - 1),
        )
            .into_response();
    };
    on_replica(&s, move |c| keys(c, &q.table, bucket)).await
}
