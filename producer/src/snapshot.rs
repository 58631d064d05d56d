//! Incremental snapshots: a table's existing rows reach Kafka in chunks, in primary-key order,
//! by Netflix's DBLog watermark algorithm (see [`chunk`]): each chunk is read in a read
//! transaction, which in WAL mode no writer waits for, and only a tiny high-watermark row is
//! written to the leader; the rows themselves never enter the changelog. The tail publishes
//! them at positions the watermark reserved, minus the keys changed between the read and the
//! watermark, so followers applying in position order end equal to the leader.
//!
//! Progress (`_barista_snapshots`, `_barista_snapshot_keys`) is recorded once Kafka has a
//! chunk (in the prune transaction): a producer killed at any moment reads again the chunks
//! Kafka did not have, and skips nothing. A start marker ([`OP_SNAPSHOT_START`]) and an end
//! marker ([`OP_SNAPSHOT_END`]) bound each snapshot in the changelog; followers use them to
//! answer `snapshotting` meanwhile and to delete, at the end, rows the leader no longer has.
//!
//! Reads: captured tables, `_barista_signals`. Writes: `_barista_changelog` (markers),
//! `_barista_snapshots`, `_barista_snapshot_keys`, `_barista_signals` (processed).

use std::collections::BTreeMap;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use crate::capture::{Capture, CaptureError};
use crate::triggers::{quote, OP_SNAPSHOT_END, OP_SNAPSHOT_START};

pub(crate) mod chunk;
mod driver;
#[cfg(test)]
mod tests;

pub use chunk::step;
pub use driver::{Board, Driver, Pacing, DEFAULT_PAUSE_FACTOR};

/// The bookkeeping tables (see `sql/snapshots.sql`).
pub(crate) const SQL: &str = include_str!("sql/snapshots.sql");

/// Default rows per chunk (read without the write lock; see `snapshot-bench`).
pub const DEFAULT_CHUNK_ROWS: usize = 10_000;

/// A newly captured table of at most this many rows is copied inside the capturing
/// transaction instead ([`first`]).
const INLINE_ROWS: usize = 1000;

/// One snapshot's progress, for `/status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// The leader table.
    pub table: String,
    /// The snapshot (the position of its start marker).
    pub id: i64,
    /// Rows copied so far.
    pub rows: i64,
    /// Rows the table had when counted (an estimate; `None` before the first chunk).
    pub total: Option<i64>,
    /// Chunks committed.
    pub chunks: i64,
    /// Done: its end marker is in the changelog.
    pub done: bool,
}

/// Starts (or restarts from the beginning) a snapshot of captured table `tbl` inside the
/// caller's write transaction: a start marker, and its progress row. Returns its id.
pub fn begin(conn: &Connection, tbl: i64) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO _barista_changelog(tbl, op) VALUES (?1, ?2)",
        params![tbl, OP_SNAPSHOT_START],
    )?;
    let id = conn.last_insert_rowid();
    conn.execute(
        "UPDATE _barista_changelog SET a0 = ?1 WHERE position = ?1",
        [id],
    )?;
    conn.execute(
        "INSERT OR REPLACE INTO _barista_snapshots(tbl, id, rows, total, chunks, started_ms) \
         VALUES (?1, ?2, 0, NULL, 0, CAST(unixepoch('subsec') * 1000 AS INTEGER))",
        params![tbl, id],
    )?;
    conn.execute("DELETE FROM _barista_snapshot_keys WHERE tbl = ?1", [tbl])?;
    Ok(id)
}

/// The snapshot of a table captured for the first time, inside the caller's write transaction
/// (the one installing its triggers): a table of at most [`INLINE_ROWS`] rows is copied
/// right there, as one chunk without markers (followers get the table whole, in the commit
/// group that created it, and have nothing to delete); a larger one gets an incremental
/// snapshot ([`begin`]). Returns the rows copied inline, or `None` when it went incremental.
pub(crate) fn first(
    conn: &Connection,
    tbl: i64,
    table: &str,
    columns: &[String],
) -> rusqlite::Result<Option<usize>> {
    let small: bool = conn.query_row(
        &format!(
            "SELECT count(*) <= {INLINE_ROWS} FROM (SELECT 1 FROM {} LIMIT {})",
            quote(table),
            INLINE_ROWS + 1
        ),
        [],
        |r| r.get(0),
    )?;
    if small {
        return crate::triggers::snapshot(conn, tbl, table, columns).map(Some);
    }
    begin(conn, tbl)?;
    Ok(None)
}

/// The snapshots in progress, oldest first.
pub fn running(conn: &Connection) -> rusqlite::Result<Vec<Progress>> {
    let mut stmt = conn.prepare_cached(
        "SELECT t.name, s.id, s.rows, s.total, s.chunks FROM _barista_snapshots s \
         JOIN _barista_tables t ON t.id = s.tbl ORDER BY s.id",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok(Progress {
                table: r.get(0)?,
                id: r.get(1)?,
                rows: r.get(2)?,
                total: r.get(3)?,
                chunks: r.get(4)?,
                done: false,
            })
        })?
        .collect();
    rows
}

/// Whether table `tbl`'s content as of `position` is not known from the changelog alone: a
/// snapshot of it is in progress now, or one starts or ends after `position` (the tail will
/// read that marker again).
pub(crate) fn unsettled_after(
    conn: &Connection,
    tbl: i64,
    position: i64,
) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM _barista_snapshots WHERE tbl = ?1) \
             OR EXISTS(SELECT 1 FROM _barista_changelog WHERE tbl = ?1 AND position > ?2 AND op IN (?3, ?4))",
        params![tbl, position, OP_SNAPSHOT_START, OP_SNAPSHOT_END],
        |r| r.get(0),
    )
}

/// The snapshot start and end markers with `after < position <= upto`, in position order, for
/// the commit record of the group they are in.
pub(crate) fn marks_between(
    conn: &Connection,
    after: i64,
    upto: i64,
) -> rusqlite::Result<Vec<barista_schemas::TableSnapshot>> {
    let mut stmt = conn.prepare_cached(
        "SELECT c.position, c.op, c.a0, t.name FROM _barista_changelog c          JOIN _barista_tables t ON t.id = c.tbl          WHERE c.position > ?1 AND c.position <= ?2 AND c.op IN (?3, ?4) ORDER BY c.position",
    )?;
    let marks = stmt
        .query_map(
            params![after, upto, OP_SNAPSHOT_START, OP_SNAPSHOT_END],
            |r| {
                Ok(barista_schemas::TableSnapshot {
                    position: barista_schemas::Position(r.get(0)?),
                    done: r.get::<_, i64>(1)? == OP_SNAPSHOT_END,
                    id: r.get(2)?,
                    table: r.get(3)?,
                })
            },
        )?
        .collect();
    marks
}

/// The table names a signal's `data` names: one name, names separated by commas, or JSON
/// `{"data-collections": [...]}` (Debezium's form) or `{"tables": [...]}` or `[...]`.
fn signal_tables(data: &str) -> Vec<String> {
    let names: Option<Vec<String>> = match serde_json::from_str::<serde_json::Value>(data) {
        Ok(serde_json::Value::Array(a)) => Some(a),
        Ok(serde_json::Value::Object(o)) => o
            .get("data-collections")
            .or_else(|| o.get("tables"))
            .and_then(|v| v.as_array().cloned()),
        _ => None,
    }
    .map(|a| {
        a.iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    });
    names
        .unwrap_or_else(|| data.split(',').map(|s| s.trim().to_owned()).collect())
        .into_iter()
        // Debezium names collections "schema.table": SQLite's is "main".
        .map(|n| n.strip_prefix("main.").map(str::to_owned).unwrap_or(n))
        .filter(|n| !n.is_empty())
        .collect()
}

/// Acts on the signals not processed yet, in ONE write transaction: each `snapshot` signal
/// starts a snapshot of the captured tables it names (restarting one in progress). Returns
/// the tables whose snapshot started. A cheap read first: no write lock when there is none.
pub(crate) fn take_signals(conn: &mut Connection) -> Result<Vec<String>, CaptureError> {
    let pending: bool = conn
        .prepare_cached("SELECT EXISTS(SELECT 1 FROM _barista_signals WHERE processed_ms IS NULL)")?
        .query_row([], |r| r.get(0))?;
    if !pending {
        return Ok(Vec::new());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let signals: Vec<(i64, String, String)> = tx
        .prepare(
            "SELECT id, type, data FROM _barista_signals WHERE processed_ms IS NULL ORDER BY id",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut started = Vec::new();
    for (id, kind, data) in signals {
        let result = if !kind.eq_ignore_ascii_case("snapshot")
            && !kind.eq_ignore_ascii_case("execute-snapshot")
        {
            format!("ignored: unknown signal type {kind:?} (known: snapshot)")
        } else {
            let mut said = Vec::new();
            for name in signal_tables(&data) {
                let tbl: Option<i64> = tx
                    .query_row(
                        "SELECT id FROM _barista_tables WHERE name = ?1",
                        [&name],
                        |r| r.get(0),
                    )
                    .optional()?;
                match tbl {
                    Some(tbl) if crate::capture::still_captured(&tx, tbl, &name)? => {
                        let snap = begin(&tx, tbl)?;
                        tracing::info!(table = %name, snapshot = snap, signal = id, "snapshot requested");
                        said.push(format!("{name}: snapshot {snap} started"));
                        started.push(name);
                    }
                    _ => {
                        tracing::warn!(table = %name, signal = id, "snapshot signal names a table that is not captured");
                        said.push(format!("{name}: not captured"));
                    }
                }
            }
            if said.is_empty() {
                "ignored: no table named".to_owned()
            } else {
                said.join("; ")
            }
        };
        tx.execute(
            "UPDATE _barista_signals SET processed_ms = CAST(unixepoch('subsec') * 1000 AS INTEGER), \
             result = ?2 WHERE id = ?1",
            params![id, result],
        )?;
    }
    tx.commit()?;
    Ok(started)
}

/// Queues a snapshot request from outside the producer (`producer snapshot --table T`): one
/// signal row per call, acted on by the running producer at its next poll (or at its next
/// start). Returns the signal's id.
pub fn request(conn: &Connection, tables: &[String]) -> rusqlite::Result<i64> {
    conn.execute_batch(SQL)?;
    conn.execute(
        "INSERT INTO _barista_signals(type, data) VALUES ('snapshot', ?1)",
        [tables.join(",")],
    )?;
    Ok(conn.last_insert_rowid())
}

/// What one [`step`] did.
#[derive(Debug, Clone)]
pub struct Step {
    /// The snapshot's progress after it (rows read so far, Kafka's or not).
    pub progress: Progress,
    /// How long it held the leader's write lock (the high watermark, or the end marker).
    pub held: Duration,
    /// How long it took in all (the chunk's read, its watermark, the WAL sync).
    pub took: Duration,
    /// Nothing done: the last chunks are not in Kafka yet (the end marker waits for them),
    /// or DDL came between a chunk's read and its watermark (it is read again).
    pub waiting: bool,
}

/// Every chunk read so far is in Kafka (tests, and tools that own the leader): records their
/// progress, keeping their rows for a later [`Capture::read`].
pub fn acknowledge_all(cap: &mut Capture) -> Result<(), CaptureError> {
    let (conn, pending) = cap.snapshot_parts();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    pending.acknowledge(&tx, barista_schemas::Position(i64::MAX), false)?;
    tx.commit()?;
    Ok(())
}

/// Every snapshot in progress, run to its end without pausing, each chunk taken as in Kafka
/// at once (tests, and tools that own the leader). Returns the final progress per table.
pub fn run_all(
    cap: &mut Capture,
    chunk_rows: usize,
) -> Result<BTreeMap<String, Progress>, CaptureError> {
    let mut out = BTreeMap::new();
    while let Some(step) = step(cap, chunk_rows)? {
        acknowledge_all(cap)?;
        out.insert(step.progress.table.clone(), step.progress);
    }
    Ok(out)
}
