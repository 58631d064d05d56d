//! Incremental snapshots: a table's existing rows are copied into the changelog in chunks, in
//! primary-key order, each chunk in its own short leader write transaction
//! (`INSERT INTO _barista_changelog … SELECT … WHERE key > last ORDER BY key LIMIT n`).
//!
//! Why that is enough to merge a chunk with the changes made meanwhile: the chunk is read and
//! appended under the leader's one write lock, so it is exactly the rows of its key range as of
//! its own changelog positions. Every change committed before it has a lower position, every
//! change after it a higher one. A follower applies the changelog in position order (snapshot
//! rows as upserts), so whatever order writes and chunks interleave in, each key ends as the
//! leader has it. This is DBLog's low/high watermark window reduced to zero width: the write
//! lock is the watermark. The price is that a writer may wait for one chunk (a few
//! milliseconds at the default size), never for the table.
//!
//! Progress (`_barista_snapshots`, `_barista_snapshot_keys`) is written in the chunk's own
//! transaction: a producer killed at any moment resumes after the last committed chunk, and
//! nothing is copied twice or skipped. A start marker ([`OP_SNAPSHOT_START`]) and an end
//! marker ([`OP_SNAPSHOT_END`]) bound each snapshot in the changelog; followers use them to
//! answer `snapshotting` meanwhile and to delete, at the end, rows the leader no longer has.
//!
//! Reads: captured tables, `_barista_signals`. Writes: `_barista_changelog` (snapshot rows and
//! markers), `_barista_snapshots`, `_barista_snapshot_keys`, `_barista_signals` (processed).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use barista_schemas::{SqlValue, TableShape};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use crate::capture::CaptureError;
use crate::triggers::{quote, OP_SNAPSHOT, OP_SNAPSHOT_END, OP_SNAPSHOT_START};

mod driver;
#[cfg(test)]
mod tests;

pub use driver::{Board, Driver, Pacing, DEFAULT_PAUSE_FACTOR};

/// The bookkeeping tables (see `sql/snapshots.sql`).
pub(crate) const SQL: &str = include_str!("sql/snapshots.sql");

/// Default rows per chunk: about 1 ms of the write lock for a narrow table (`snapshot-bench`),
/// well under the 10 ms a writer may wait.
pub const DEFAULT_CHUNK_ROWS: usize = 1000;

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
/// (the one installing its triggers): a table of at most [`DEFAULT_CHUNK_ROWS`] rows is copied
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
            "SELECT count(*) <= {DEFAULT_CHUNK_ROWS} FROM (SELECT 1 FROM {} LIMIT {})",
            quote(table),
            DEFAULT_CHUNK_ROWS + 1
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
    /// The snapshot's progress after the chunk.
    pub progress: Progress,
    /// How long the write transaction held the lock (from BEGIN IMMEDIATE acquired to COMMIT).
    pub held: Duration,
}

/// Copies the next chunk of the oldest snapshot in progress: at most `chunk_rows` rows after
/// its last key, in key order, in ONE short write transaction that also records progress; a
/// chunk shorter than `chunk_rows` is the last one and writes the end marker. `None`: no
/// snapshot in progress.
pub fn step(conn: &mut Connection, chunk_rows: usize) -> Result<Option<Step>, CaptureError> {
    let chunk_rows = chunk_rows.max(1);
    let next: Option<(i64, i64, Option<i64>, String)> = conn
        .prepare_cached(
            "SELECT s.tbl, s.id, s.total, t.name FROM _barista_snapshots s \
             JOIN _barista_tables t ON t.id = s.tbl ORDER BY s.id LIMIT 1",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    let Some((tbl, id, total, name)) = next else {
        return Ok(None);
    };
    // Counted once, in a read transaction of its own: no write lock for the scan.
    let counted = match total {
        Some(_) => None,
        None => conn
            .query_row(&format!("SELECT count(*) FROM {}", quote(&name)), [], |r| {
                r.get::<_, i64>(0)
            })
            .ok(),
    };
    // The table's shape is read before the lock, and trusted inside it only if no DDL
    // committed in between (`PRAGMA schema_version`): the lock is held for the copy alone.
    let version = |c: &Connection| -> rusqlite::Result<i64> {
        c.query_row("PRAGMA schema_version", [], |r| r.get(0))
    };
    let early = (
        version(conn)?,
        crate::capture::still_captured(conn, tbl, &name)?,
        TableShape::read(conn, &name).ok(),
    );
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let locked = Instant::now();
    let (captured, shape) = match early {
        (v, captured, Some(shape)) if v == version(&tx)? => (captured, Some(shape)),
        _ => (crate::capture::still_captured(&tx, tbl, &name)?, None),
    };
    if !captured {
        // Dropped or rebuilt: capture handles that as a drop; this snapshot has nothing left.
        tx.execute("DELETE FROM _barista_snapshots WHERE tbl = ?1", [tbl])?;
        tx.execute("DELETE FROM _barista_snapshot_keys WHERE tbl = ?1", [tbl])?;
        tx.commit()?;
        tracing::warn!(table = %name, snapshot = id, "table gone during its snapshot: abandoned");
        return Ok(Some(Step {
            progress: Progress {
                table: name,
                id,
                rows: 0,
                total,
                chunks: 0,
                done: true,
            },
            held: locked.elapsed(),
        }));
    }
    let shape = match shape {
        Some(shape) => shape,
        None => TableShape::read(&tx, &name)?,
    };
    let pk = shape.pk_indexes();
    let cols: Vec<String> = shape.columns.iter().map(|c| quote(&c.name)).collect();
    let slots: Vec<String> = (0..cols.len()).map(|i| format!("a{i}")).collect();
    let key: Vec<&str> = pk.iter().map(|&i| cols[i].as_str()).collect();
    let last: Vec<SqlValue> = tx
        .prepare_cached("SELECT value FROM _barista_snapshot_keys WHERE tbl = ?1 ORDER BY i")?
        .query_map([tbl], |r| r.get_ref(0).map(SqlValue::from))?
        .collect::<Result<_, _>>()?;
    let after = if last.len() == key.len() {
        let marks: Vec<String> = (1..=key.len()).map(|i| format!("?{i}")).collect();
        format!("WHERE ({}) > ({})", key.join(", "), marks.join(", "))
    } else {
        String::new()
    };
    let copied = tx.execute(
        &format!(
            "INSERT INTO _barista_changelog(tbl, op, {}) SELECT {tbl}, {OP_SNAPSHOT}, {} FROM {} {after} \
             ORDER BY {} LIMIT {chunk_rows}",
            slots.join(", "),
            cols.join(", "),
            quote(&name),
            key.join(", "),
        ),
        params_from_iter(last.iter()),
    )?;
    if copied > 0 {
        // The chunk was inserted in key order: its last row holds the last key.
        let at = tx.last_insert_rowid();
        let pk_slots: Vec<&str> = pk.iter().map(|&i| slots[i].as_str()).collect();
        let last_key: Vec<SqlValue> = tx.query_row(
            &format!(
                "SELECT {} FROM _barista_changelog WHERE position = ?1",
                pk_slots.join(", ")
            ),
            [at],
            |r| {
                (0..pk.len())
                    .map(|i| r.get_ref(i).map(SqlValue::from))
                    .collect()
            },
        )?;
        tx.execute("DELETE FROM _barista_snapshot_keys WHERE tbl = ?1", [tbl])?;
        let mut put = tx.prepare_cached(
            "INSERT INTO _barista_snapshot_keys(tbl, i, value) VALUES (?1, ?2, ?3)",
        )?;
        for (i, v) in last_key.iter().enumerate() {
            put.execute(params![tbl, i as i64, v])?;
        }
    }
    let (rows, total, chunks): (i64, Option<i64>, i64) = tx.query_row(
        "UPDATE _barista_snapshots SET rows = rows + ?2, total = coalesce(total, ?3), chunks = chunks + 1 \
         WHERE tbl = ?1 RETURNING rows, total, chunks",
        params![tbl, copied as i64, counted],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let done = copied < chunk_rows;
    if done {
        tx.execute(
            "INSERT INTO _barista_changelog(tbl, op, a0) VALUES (?1, ?2, ?3)",
            params![tbl, OP_SNAPSHOT_END, id],
        )?;
        tx.execute("DELETE FROM _barista_snapshots WHERE tbl = ?1", [tbl])?;
        tx.execute("DELETE FROM _barista_snapshot_keys WHERE tbl = ?1", [tbl])?;
    }
    tx.commit()?;
    let held = locked.elapsed();
    if done {
        tracing::info!(table = %name, snapshot = id, rows, chunks, "snapshot done");
    }
    Ok(Some(Step {
        progress: Progress {
            table: name,
            id,
            rows,
            total,
            chunks,
            done,
        },
        held,
    }))
}

/// Every snapshot in progress, run to its end without pausing (tests, and tools that own the
/// leader). Returns the final progress per table.
pub fn run_all(
    conn: &mut Connection,
    chunk_rows: usize,
) -> Result<BTreeMap<String, Progress>, CaptureError> {
    let mut out = BTreeMap::new();
    while let Some(step) = step(conn, chunk_rows)? {
        out.insert(step.progress.table.clone(), step.progress);
    }
    Ok(out)
}
