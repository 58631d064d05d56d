//! Reads, the follower's last stage: rows of the replica over HTTP, each
//! answer with the position it was served at, read in the SAME SQLite read
//! transaction as the rows, and with the consistency the client asks for.
//!
//! ```text
//! GET /tables/{table}/row?{pk column}={value}[&…]      one row by primary key
//! GET /tables/{table}/row?key=[<typed JSON values>]     same, exact storage class
//! GET /tables/{table}/rows?limit=100&after=[…]          a page in primary-key order
//!   consistency, on both: min_position=P  timeout_ms=T  max_staleness_ms=S
//! ```
//!
//! `min_position` waits (on a `watch` of the applied position, woken by the
//! apply transaction's commit — no polling) up to `timeout_ms`, then answers
//! 503 `{"error":"behind",…}`. `max_staleness_ms` refuses with 503
//! `{"error":"stale",…}` when the snapshot served is older than that on the
//! leader's clock. Values use [`barista_schemas::json`].
//!
//! The lookups ([`read_row`], [`read_page`]) take the SQL that reads the
//! position, so the leader can serve the very same API from its own file.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use barista_schemas::json::{from_json, to_json};
use barista_schemas::SqlValue;
use rusqlite::{params_from_iter, Connection, OpenFlags, OptionalExtension};
use serde_json::{json, Map, Value};

use crate::follower::Shared;
use crate::lag::leader_now_ms;

/// The replica's position and the leader time it is known fresh as of.
pub const REPLICA_POSITION_SQL: &str =
    "SELECT position, leader_ts_ms FROM _barista_position WHERE id = 1";
/// The leader's position (its changelog head) and its clock, for a leader
/// serving the read API from its own file.
pub const LEADER_POSITION_SQL: &str = "SELECT coalesce(max(position), 0), \
     CAST(unixepoch('subsec') * 1000 AS INTEGER) FROM _barista_changelog";

/// Longest `timeout_ms` honoured; larger values are capped.
pub const MAX_TIMEOUT_MS: u64 = 30_000;
/// `timeout_ms` when `min_position` is given without one.
pub const DEFAULT_TIMEOUT_MS: u64 = 1_000;
/// `limit` when not given.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest `limit` honoured; larger values are capped.
pub const MAX_LIMIT: usize = 1_000;
/// What a client should do with a "behind" or "stale" answer.
pub const RETRY_HINT: &str = "retry another follower or read the leader";

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
            ReadError::Sqlite(_) => (StatusCode::INTERNAL_SERVER_ERROR, "sqlite"),
        };
        (
            code,
            Json(json!({ "error": kind, "detail": self.to_string() })),
        )
            .into_response()
    }
}

/// The consistency a request asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Consistency {
    /// Answer only at or after this position (read-your-writes with the
    /// client's write token; monotonic reads with the highest position seen).
    pub min_position: Option<i64>,
    /// Refuse when the snapshot is older than this on the leader's clock.
    pub max_staleness_ms: Option<u64>,
    /// How long to wait for `min_position` (capped at [`MAX_TIMEOUT_MS`]).
    pub timeout: Duration,
}

/// Which row: primary key columns by name (values as text, compared with the
/// column's affinity, so `id=42` finds INTEGER 42), or the whole key as a JSON
/// array of typed values (exact storage class; needed for BLOB keys).
#[derive(Debug, Clone, PartialEq)]
pub enum RowKey {
    /// `?{column}={value}` for every primary key column.
    Named(Vec<(String, String)>),
    /// `?key=[…]` in primary key order.
    Typed(Vec<SqlValue>),
}

/// A parsed read request.
#[derive(Debug, Clone)]
pub struct ReadRequest {
    /// Consistency options.
    pub consistency: Consistency,
    /// For `/row`.
    pub key: RowKey,
    /// For `/rows`: page size.
    pub limit: usize,
    /// For `/rows`: the previous page's `next_after`.
    pub after: Option<Vec<SqlValue>>,
}

fn parse_num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, ReadError> {
    v.parse()
        .map_err(|_| ReadError::BadRequest(format!("{name}={v:?} is not a valid number")))
}

fn parse_key_array(name: &str, v: &str) -> Result<Vec<SqlValue>, ReadError> {
    let arr: Vec<Value> = serde_json::from_str(v).map_err(|e| {
        ReadError::BadRequest(format!("{name} must be a JSON array of key values: {e}"))
    })?;
    arr.iter()
        .map(from_json)
        .collect::<Result<_, _>>()
        .map_err(|e| ReadError::BadRequest(format!("{name}: {e}")))
}

impl ReadRequest {
    /// Parses query parameters. `paged` is true for `/rows`, where every
    /// parameter must be known; for `/row` the others name key columns.
    pub fn parse(params: &[(String, String)], paged: bool) -> Result<Self, ReadError> {
        let mut r = ReadRequest {
            consistency: Consistency::default(),
            key: RowKey::Named(Vec::new()),
            limit: DEFAULT_LIMIT,
            after: None,
        };
        let mut timeout = None;
        let mut named = Vec::new();
        for (k, v) in params {
            match k.as_str() {
                "min_position" => r.consistency.min_position = Some(parse_num(k, v)?),
                "max_staleness_ms" => r.consistency.max_staleness_ms = Some(parse_num(k, v)?),
                "timeout_ms" => timeout = Some(parse_num::<u64>(k, v)?),
                "limit" if paged => r.limit = parse_num::<usize>(k, v)?.clamp(1, MAX_LIMIT),
                "after" if paged => r.after = Some(parse_key_array(k, v)?),
                "key" if !paged => r.key = RowKey::Typed(parse_key_array(k, v)?),
                _ if !paged => named.push((k.clone(), v.clone())),
                _ => {
                    return Err(ReadError::BadRequest(format!(
                        "unknown parameter {k:?} (known: limit, after, min_position, max_staleness_ms, timeout_ms)"
                    )))
                }
            }
        }
        if !named.is_empty() {
            if matches!(r.key, RowKey::Typed(_)) {
                return Err(ReadError::BadRequest(
                    "give the key either as ?key=[…] or by column, not both".into(),
                ));
            }
            r.key = RowKey::Named(named);
        }
        let default = if r.consistency.min_position.is_some() {
            DEFAULT_TIMEOUT_MS
        } else {
            0
        };
        r.consistency.timeout =
            Duration::from_millis(timeout.unwrap_or(default).min(MAX_TIMEOUT_MS));
        Ok(r)
    }
}

/// Rows read in one snapshot, with the position of that snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot<T> {
    /// Every leader change up to here is in the rows, and none after.
    pub position: i64,
    /// The leader time stored with the position.
    pub leader_ts_ms: i64,
    /// What was read.
    pub data: T,
}

/// A page of rows in primary key order.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Rows as `{column: value}`.
    pub rows: Vec<Map<String, Value>>,
    /// Pass as `after` for the next page; None on the last page.
    pub next_after: Option<Vec<Value>>,
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Columns and primary key (in key order) of a user table.
fn table_info(conn: &Connection, table: &str) -> Result<(Vec<String>, Vec<String>), ReadError> {
    let lower = table.to_ascii_lowercase();
    if lower.starts_with("_barista_") || lower.starts_with("sqlite_") {
        return Err(ReadError::UnknownTable(table.to_owned()));
    }
    let cols: Vec<(String, i64)> = conn
        .prepare_cached("SELECT name, pk FROM pragma_table_info(?1) ORDER BY cid")?
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    if cols.is_empty() {
        return Err(ReadError::UnknownTable(table.to_owned()));
    }
    let mut pk: Vec<(i64, String)> = cols
        .iter()
        .filter(|(_, p)| *p > 0)
        .map(|(n, p)| (*p, n.clone()))
        .collect();
    pk.sort();
    Ok((
        cols.into_iter().map(|(n, _)| n).collect(),
        pk.into_iter().map(|(_, n)| n).collect(),
    ))
}

fn position(conn: &Connection, position_sql: &str) -> Result<(i64, i64), ReadError> {
    match conn
        .query_row(position_sql, [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
    {
        Ok(p) => Ok(p.unwrap_or((0, 0))),
        // A leader without capture installed, a replica not initialised.
        Err(e) if e.to_string().contains("no such table") => Err(ReadError::Unavailable(format!(
            "no position to serve at yet ({e})"
        ))),
        Err(e) => Err(e.into()),
    }
}

fn row_json(columns: &[String], r: &rusqlite::Row<'_>) -> rusqlite::Result<Map<String, Value>> {
    let mut m = Map::new();
    for (i, c) in columns.iter().enumerate() {
        m.insert(c.clone(), to_json(&SqlValue::from(r.get_ref(i)?)));
    }
    Ok(m)
}

/// Reads one row by primary key and the position, in ONE read transaction
/// (a WAL snapshot: the applier can commit meanwhile, this read does not see
/// it, neither in the rows nor in the position).
pub fn read_row(
    conn: &mut Connection,
    position_sql: &str,
    table: &str,
    key: &RowKey,
) -> Result<Snapshot<Option<Map<String, Value>>>, ReadError> {
    let tx = conn.transaction()?;
    let (columns, pk) = table_info(&tx, table)?;
    let values: Vec<SqlValue> = match key {
        RowKey::Typed(v) if v.len() == pk.len() => v.clone(),
        RowKey::Typed(v) => {
            return Err(ReadError::BadRequest(format!(
                "key has {} values; the primary key of {table} is {pk:?}",
                v.len()
            )))
        }
        RowKey::Named(named) => {
            let unknown: Vec<&str> = named
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| !pk.iter().any(|p| p == k))
                .collect();
            if !unknown.is_empty() || named.len() != pk.len() {
                return Err(ReadError::BadRequest(format!(
                    "give every primary key column of {table} once: {pk:?} (got {:?})",
                    named.iter().map(|(k, _)| k).collect::<Vec<_>>()
                )));
            }
            pk.iter()
                .map(|p| {
                    let v = named.iter().find(|(k, _)| k == p).map(|(_, v)| v.clone());
                    SqlValue::Text(v.unwrap_or_default())
                })
                .collect()
        }
    };
    let where_: Vec<String> = pk
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = ?{}", quote(c), i + 1))
        .collect();
    let cols: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    let sql = format!(
        "SELECT {} FROM {} WHERE {}",
        cols.join(", "),
        quote(table),
        where_.join(" AND ")
    );
    // Rows first, then the position: both inside the same snapshot, so the
    // order does not matter for consistency.
    let row = tx
        .prepare_cached(&sql)?
        .query_row(params_from_iter(values.iter()), |r| row_json(&columns, r))
        .optional()?;
    let (position, leader_ts_ms) = position(&tx, position_sql)?;
    tx.finish()?;
    Ok(Snapshot {
        position,
        leader_ts_ms,
        data: row,
    })
}

/// Reads up to `limit` rows after `after` in primary key order, and the
/// position, in ONE read transaction.
pub fn read_page(
    conn: &mut Connection,
    position_sql: &str,
    table: &str,
    after: Option<&[SqlValue]>,
    limit: usize,
) -> Result<Snapshot<Page>, ReadError> {
    let tx = conn.transaction()?;
    let (columns, pk) = table_info(&tx, table)?;
    let pkq: Vec<String> = pk.iter().map(|c| quote(c)).collect();
    let cols: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    let limit = limit.clamp(1, MAX_LIMIT);
    let (where_, args): (String, Vec<SqlValue>) = match after {
        Some(a) if a.len() == pk.len() => {
            let marks: Vec<String> = (1..=a.len()).map(|i| format!("?{i}")).collect();
            (
                format!("WHERE ({}) > ({})", pkq.join(", "), marks.join(", ")),
                a.to_vec(),
            )
        }
        Some(a) => {
            return Err(ReadError::BadRequest(format!(
                "after has {} values; the primary key of {table} is {pk:?}",
                a.len()
            )))
        }
        None => (String::new(), Vec::new()),
    };
    let sql = format!(
        "SELECT {} FROM {} {where_} ORDER BY {} LIMIT {}",
        cols.join(", "),
        quote(table),
        pkq.join(", "),
        limit + 1
    );
    let mut rows: Vec<Map<String, Value>> = tx
        .prepare_cached(&sql)?
        .query_map(params_from_iter(args.iter()), |r| row_json(&columns, r))?
        .collect::<Result<_, _>>()?;
    let next_after = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|r| {
            pk.iter()
                .map(|c| r.get(c).cloned().unwrap_or(Value::Null))
                .collect()
        })
    } else {
        None
    };
    let (position, leader_ts_ms) = position(&tx, position_sql)?;
    tx.finish()?;
    Ok(Snapshot {
        position,
        leader_ts_ms,
        data: Page { rows, next_after },
    })
}

/// Read-only connections to a database file, reused across requests. Each is
/// used by one blocking task at a time (rusqlite is synchronous).
pub struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    /// A pool for `path`; connections are opened on demand.
    pub fn new(path: PathBuf) -> Self {
        ReadPool {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on a pooled read-only connection in a blocking task.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Connection) -> Result<T, ReadError> + Send + 'static,
    ) -> Result<T, ReadError> {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.idle.lock().ok().and_then(|mut v| v.pop());
            let mut conn = match conn {
                Some(c) => c,
                None => {
                    if !pool.path.exists() {
                        return Err(ReadError::Unavailable(format!(
                            "{} does not exist yet",
                            pool.path.display()
                        )));
                    }
                    let c = Connection::open_with_flags(
                        &pool.path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY
                            | OpenFlags::SQLITE_OPEN_NO_MUTEX
                            | OpenFlags::SQLITE_OPEN_URI,
                    )?;
                    c.busy_timeout(Duration::from_secs(5))?;
                    c
                }
            };
            let r = f(&mut conn);
            // A connection that failed is dropped rather than reused.
            if !matches!(r, Err(ReadError::Sqlite(_))) {
                if let Ok(mut v) = pool.idle.lock() {
                    v.push(conn);
                }
            }
            r
        })
        .await
        .map_err(|e| ReadError::Unavailable(format!("read task: {e}")))?
    }
}

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
        let mut rx = shared.applied.subscribe();
        let reached = tokio::time::timeout(want.timeout, rx.wait_for(|p| *p >= min))
            .await
            .is_ok_and(|r| r.is_ok());
        if !reached {
            let applied = *rx.borrow();
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
    let fresh = shared.freshness.lock().map(|f| *f).unwrap_or_default();
    // The shared freshness is about the applier's position; it holds for
    // this snapshot only if the snapshot is at least as new.
    let fresh_ts = if fresh.position <= snap.position {
        snap.leader_ts_ms.max(fresh.leader_ts_ms)
    } else {
        snap.leader_ts_ms
    };
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
    let status = shared.status.lock().map(|s| s.clone()).unwrap_or_default();
    let leader_position = fresh.leader_position.max(snap.position);
    let mut body = json!({
        "served_by": status.follower,
        "table": table,
        "position": snap.position,
        "leader_ts_ms": fresh_ts,
        "staleness_ms": staleness_ms,
        "lag": {
            "leader_position": leader_position,
            "position_lag": leader_position - snap.position,
            "seconds_lag": status.seconds_lag,
        },
    });
    if let (Value::Object(b), Value::Object(d)) = (&mut body, snap.data) {
        b.extend(d);
    }
    Json(body).into_response()
}

fn behind(shared: &Shared, min: i64, applied: i64, timeout: Duration) -> Response {
    let leader = shared
        .freshness
        .lock()
        .map(|f| f.leader_position)
        .unwrap_or(0);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let c = Connection::open(dir.path().join("r.db")).unwrap();
        c.execute_batch(
            "CREATE TABLE _barista_position(id INTEGER PRIMARY KEY, position, leader_ts_ms, applied_at_ms);
             INSERT INTO _barista_position VALUES (1, 42, 1000, 0);
             CREATE TABLE t(id INTEGER, v, PRIMARY KEY(id));
             CREATE TABLE k(a TEXT, b BLOB, v, PRIMARY KEY(a, b));
             INSERT INTO t VALUES (1, 'one'), (2, x'00ff'), (3, 1.0), (4, 9223372036854775807), (5, NULL);
             INSERT INTO k VALUES ('x', x'01', 1), ('x', x'02', 2), ('y', x'00', 3);",
        )
        .unwrap();
        (dir, c)
    }

    fn q(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn row_by_named_key_uses_column_affinity_and_carries_the_position() {
        let (_d, mut c) = db();
        let req = ReadRequest::parse(&q(&[("id", "2")]), false).unwrap();
        let s = read_row(&mut c, REPLICA_POSITION_SQL, "t", &req.key).unwrap();
        assert_eq!(s.position, 42);
        assert_eq!(s.data.unwrap()["v"], json!({"blob": "AP8="}));
        let req = ReadRequest::parse(&q(&[("id", "9")]), false).unwrap();
        assert_eq!(
            read_row(&mut c, REPLICA_POSITION_SQL, "t", &req.key)
                .unwrap()
                .data,
            None
        );
    }

    #[test]
    fn composite_blob_keys_by_typed_key_and_pages() {
        let (_d, mut c) = db();
        let req = ReadRequest::parse(&q(&[("key", r#"["x", {"blob": "Ag=="}]"#)]), false).unwrap();
        let s = read_row(&mut c, REPLICA_POSITION_SQL, "k", &req.key).unwrap();
        assert_eq!(s.data.unwrap()["v"], json!(2));
        let p1 = read_page(&mut c, REPLICA_POSITION_SQL, "k", None, 2).unwrap();
        assert_eq!(p1.data.rows.len(), 2);
        let after: Vec<SqlValue> = p1
            .data
            .next_after
            .unwrap()
            .iter()
            .map(|v| from_json(v).unwrap())
            .collect();
        let p2 = read_page(&mut c, REPLICA_POSITION_SQL, "k", Some(&after), 2).unwrap();
        assert_eq!(p2.data.rows.len(), 1);
        assert_eq!(p2.data.rows[0]["a"], json!("y"));
        assert_eq!(p2.data.next_after, None);
    }

    #[test]
    fn bad_requests_and_barista_tables_are_refused() {
        let (_d, mut c) = db();
        for (table, key) in [("t", &[("nope", "1")][..]), ("k", &[("a", "x")][..])] {
            let req = ReadRequest::parse(&q(key), false).unwrap();
            assert!(matches!(
                read_row(&mut c, REPLICA_POSITION_SQL, table, &req.key),
                Err(ReadError::BadRequest(_))
            ));
        }
        assert!(matches!(
            read_page(&mut c, REPLICA_POSITION_SQL, "_barista_position", None, 1),
            Err(ReadError::UnknownTable(_))
        ));
        assert!(ReadRequest::parse(&q(&[("lmit", "3")]), true).is_err());
        let r = ReadRequest::parse(&q(&[("min_position", "7"), ("timeout_ms", "999999")]), true)
            .unwrap();
        assert_eq!(r.consistency.timeout, Duration::from_millis(MAX_TIMEOUT_MS));
    }
}
