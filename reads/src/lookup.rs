//! Lookups: one row by primary key, or a page in key order, read in the SAME
//! SQLite read transaction as the position they are served at. The position
//! SQL is the caller's: a replica's `_barista_position`, or a leader's
//! changelog head (`barista_producer::token::LEADER_POSITION_SQL`), so the
//! leader serves the very same API from its own file.

use barista_schemas::json::to_json;
use barista_schemas::{Position, SqlValue};
use rusqlite::{params_from_iter, Connection, OptionalExtension};
use serde_json::{Map, Value};

use crate::request::{RowKey, MAX_LIMIT};
use crate::ReadError;

/// The replica's position and the leader time it is known fresh as of.
pub const REPLICA_POSITION_SQL: &str =
    "SELECT position, leader_ts_ms FROM _barista_position WHERE id = 1";

/// Rows read in one snapshot, with the position of that snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot<T> {
    /// Every leader change up to here is in the rows, and none after.
    pub position: Position,
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
    snapshotting(conn, table)?;
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

/// A follower's table whose incremental snapshot has not ended (the consumer's
/// `table_snapshots` state, read in the caller's transaction) is refused. Files without that
/// state (a leader, an older replica) have none.
fn snapshotting(conn: &Connection, table: &str) -> Result<(), ReadError> {
    let state = conn
        .prepare_cached(
            "SELECT rows, started_position FROM _barista_replica_snapshots WHERE tbl = ?1",
        )
        .and_then(|mut s| {
            s.query_row([table], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        });
    match state {
        Ok(Some((rows, since))) => Err(ReadError::Snapshotting {
            table: table.to_owned(),
            rows,
            since,
        }),
        Ok(None) => Ok(()),
        Err(e) if e.to_string().contains("no such table") => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn position(conn: &Connection, position_sql: &str) -> Result<(Position, i64), ReadError> {
    match conn
        .query_row(position_sql, [], |r| Ok((Position(r.get(0)?), r.get(1)?)))
        .optional()
    {
        Ok(p) => Ok(p.unwrap_or((Position::ZERO, 0))),
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

#[cfg(test)]
#[path = "lookup_tests.rs"]
mod tests;
