//! One snapshot chunk, DBLog's way: the rows are read in a read transaction (WAL: no writer
//! waits for it), and only a tiny high-watermark row is written to the leader.
//!
//! 1. Read transaction: the table's next `chunk_rows` rows after the last key, and `seen`, the
//!    changelog's newest position in the same snapshot of the database. The chunk is exactly
//!    the table's rows of its key range as of `seen` (DBLog's low watermark, read instead of
//!    written).
//! 2. Write transaction (the high watermark, microseconds): the keys of the table that changes
//!    after `seen` touched are removed from the chunk (those changes are in the changelog and
//!    carry the rows themselves), and a marker ([`OP_SNAPSHOT_CHUNK`]) is inserted at position
//!    `base + k + 1`, `base` being the newest position and `k` the rows left. SQLite hands out
//!    max(position)+1 next, so positions `base+1 ..= base+k` are reserved for the chunk: no
//!    change can ever get them.
//! 3. The tail, reading the marker, publishes the chunk's rows at those positions. Every key
//!    left in the chunk is unchanged between `seen` and the marker, so its row at the marker
//!    is the row the chunk read, and every change before or after has a lower or higher
//!    position: followers applying in position order end equal to the leader.
//!
//! The rows stay in memory ([`Pending`]) until the prune point passes the marker (a rewind
//! may need them again); the snapshot's progress (`_barista_snapshots`, last key) is recorded
//! in that same prune transaction, so only once Kafka has the chunk. A producer killed before
//! that reads the chunk again after restarting; the marker it finds without rows publishes
//! nothing (its positions stay unused, which followers never notice: each event names its
//! partition predecessor). The end marker is written only once every chunk is recorded.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use barista_schemas::{Position, SqlValue, TableShape};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, TransactionBehavior};

use super::{Progress, Step};
use crate::capture::{still_captured, Capture, CaptureError};
use crate::triggers::{quote, OP_DELETE, OP_INSERT, OP_SNAPSHOT_CHUNK, OP_SNAPSHOT_END, OP_UPDATE};

/// A chunk whose high watermark is committed, kept until the prune point passes it.
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    /// `_barista_tables.id`.
    pub tbl: i64,
    /// The snapshot it belongs to.
    id: i64,
    /// Its rows in key order at positions `high - rows.len() ..= high - 1`; `None` where a
    /// change in the window touched the key (that position stays unused).
    pub rows: Vec<Option<Vec<SqlValue>>>,
    /// The last key it read: the snapshot's progress once it is in Kafka.
    last_key: Vec<SqlValue>,
    /// Rows it read (window keys included).
    read: i64,
    /// The table's row count, when this chunk counted it.
    counted: Option<i64>,
    /// Its progress is in `_barista_snapshots`.
    recorded: bool,
}

/// Where the snapshot in progress reads next (ahead of the recorded progress by the chunks
/// not in Kafka yet).
#[derive(Debug, Clone)]
struct Cursor {
    tbl: i64,
    id: i64,
    name: String,
    last: Vec<SqlValue>,
    rows: i64,
    chunks: i64,
    total: Option<i64>,
    /// A chunk came back short: nothing left to read.
    exhausted: bool,
}

impl Cursor {
    fn progress(&self, done: bool) -> Progress {
        Progress {
            table: self.name.clone(),
            id: self.id,
            rows: self.rows,
            total: self.total,
            chunks: self.chunks,
            done,
        }
    }
}

/// The chunks read but not pruned yet, by the position of their high watermark, and the
/// cursor of the snapshot in progress. Lives in [`Capture`].
#[derive(Debug, Default)]
pub(crate) struct Pending {
    chunks: BTreeMap<i64, Chunk>,
    cursor: Option<Cursor>,
    /// Tests: runs between a chunk's read and its watermark (writes into the window).
    #[cfg(test)]
    pub(crate) between: Option<Between>,
}

/// A test's writes between a chunk's read and its watermark.
#[cfg(test)]
pub(crate) struct Between(pub Box<dyn FnMut() + Send>);

#[cfg(test)]
impl std::fmt::Debug for Between {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Between")
    }
}

impl Pending {
    /// The chunk whose high watermark is at `high`, if this process read it.
    pub(crate) fn at(&self, high: i64) -> Option<&Chunk> {
        self.chunks.get(&high)
    }

    /// Kafka has everything up to `upto`: records the progress of the chunks up to there,
    /// in order, inside the caller's write transaction; `forget` drops their rows too.
    pub(crate) fn acknowledge(
        &mut self,
        conn: &Connection,
        upto: Position,
        forget: bool,
    ) -> rusqlite::Result<()> {
        for chunk in self.chunks.range_mut(..=upto.0).map(|(_, c)| c) {
            if chunk.recorded {
                continue;
            }
            let moved = conn.execute(
                "UPDATE _barista_snapshots SET rows = rows + ?3, chunks = chunks + 1, \
                 total = coalesce(total, ?4) WHERE tbl = ?1 AND id = ?2",
                params![chunk.tbl, chunk.id, chunk.read, chunk.counted],
            )?;
            // Zero: its snapshot was restarted or ended meanwhile.
            if moved == 1 {
                conn.execute(
                    "DELETE FROM _barista_snapshot_keys WHERE tbl = ?1",
                    [chunk.tbl],
                )?;
                let mut put = conn.prepare_cached(
                    "INSERT INTO _barista_snapshot_keys(tbl, i, value) VALUES (?1, ?2, ?3)",
                )?;
                for (i, v) in chunk.last_key.iter().enumerate() {
                    put.execute(params![chunk.tbl, i as i64, v])?;
                }
            }
            chunk.recorded = true;
        }
        if forget {
            self.chunks = self.chunks.split_off(&(upto.0 + 1));
        }
        Ok(())
    }

    /// Whether a chunk of snapshot `id` is not in Kafka yet.
    fn unrecorded(&self, id: i64) -> bool {
        self.chunks.values().any(|c| c.id == id && !c.recorded)
    }
}

/// A key as a set member: `SqlValue` has neither order nor hash, and its `Debug` form tells
/// every storage class and value apart (floats print exactly).
fn key_of(key: &[SqlValue]) -> String {
    format!("{key:?}")
}

/// `PRAGMA schema_version`: any DDL (a drop, a migration, a trigger removed) moves it.
fn schema_version(c: &Connection) -> rusqlite::Result<i64> {
    c.query_row("PRAGMA schema_version", [], |r| r.get(0))
}

/// Reads the next chunk of the oldest snapshot in progress and commits its high watermark
/// (see the module docs); or, once every row was read and every chunk is in Kafka, writes
/// the end marker. `None`: no snapshot in progress.
pub fn step(cap: &mut Capture, chunk_rows: usize) -> Result<Option<Step>, CaptureError> {
    let started = Instant::now();
    let chunk_rows = chunk_rows.max(1);
    let (conn, pending) = cap.snapshot_parts();
    let next: Option<(i64, i64, String, i64, Option<i64>, i64)> = conn
        .prepare_cached(
            "SELECT s.tbl, s.id, t.name, s.rows, s.total, s.chunks FROM _barista_snapshots s \
             JOIN _barista_tables t ON t.id = s.tbl ORDER BY s.id LIMIT 1",
        )?
        .query_row([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .optional()?;
    let Some((tbl, id, name, rows, total, chunks)) = next else {
        pending.cursor = None;
        return Ok(None);
    };
    let mut cursor = match pending.cursor.take() {
        Some(c) if c.tbl == tbl && c.id == id => c,
        // A new snapshot, or a restart: from the recorded progress.
        _ => Cursor {
            last: conn
                .prepare_cached(
                    "SELECT value FROM _barista_snapshot_keys WHERE tbl = ?1 ORDER BY i",
                )?
                .query_map([tbl], |r| r.get_ref(0).map(SqlValue::from))?
                .collect::<Result<_, _>>()?,
            tbl,
            id,
            name,
            rows,
            chunks,
            total,
            exhausted: false,
        },
    };
    let mut step = if cursor.exhausted {
        finish(conn, pending, &cursor)?
    } else {
        read(conn, pending, &mut cursor, chunk_rows)?
    };
    step.took = started.elapsed();
    if !step.progress.done {
        pending.cursor = Some(cursor);
    }
    Ok(Some(step))
}

/// What the read transaction found.
struct Read {
    version: i64,
    shape: TableShape,
    seen: i64,
    counted: Option<i64>,
    rows: Vec<Vec<SqlValue>>,
}

/// Steps 1 and 2 of the module docs for `cursor`.
fn read(
    conn: &mut Connection,
    pending: &mut Pending,
    cursor: &mut Cursor,
    chunk_rows: usize,
) -> Result<Step, CaptureError> {
    let Some(r) = read_chunk(conn, cursor, chunk_rows)? else {
        // Dropped or rebuilt: capture handles that as a drop; this snapshot has nothing left.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        forget(&tx, cursor.tbl)?;
        tx.commit()?;
        tracing::warn!(table = %cursor.name, snapshot = cursor.id, "table gone during its snapshot: abandoned");
        return Ok(Step {
            progress: cursor.progress(true),
            held: Duration::ZERO,
            waiting: false,
            took: Duration::ZERO,
        });
    };
    if r.rows.is_empty() {
        cursor.exhausted = true;
        return finish(conn, pending, cursor);
    }
    #[cfg(test)]
    if let Some(between) = pending.between.as_mut() {
        (between.0)();
    }
    let pk = r.shape.pk_indexes();
    // The watermark's commit must not fsync under the write lock (that fsync, about 1 ms, was
    // most of what the old chunks held the lock for): synchronous=NORMAL for it alone, and
    // the WAL synced right after, before the tail can publish the chunk.
    let synchronous: i64 = conn.query_row("PRAGMA synchronous", [], |row| row.get(0))?;
    conn.pragma_update(None, "synchronous", 1)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let locked = Instant::now();
    if schema_version(&tx)? != r.version {
        // DDL since the read: the rows may be in another shape, or the table gone. Read again.
        drop(tx);
        conn.pragma_update(None, "synchronous", synchronous)?;
        return Ok(Step {
            progress: cursor.progress(false),
            held: locked.elapsed(),
            waiting: true,
            took: Duration::ZERO,
        });
    }
    // Positions base+1 ..= base+read are the chunk's, in key order; the marker takes the next.
    let read = r.rows.len();
    let base: i64 = tx.query_row(
        "SELECT max(coalesce((SELECT max(position) FROM _barista_changelog), 0), \
                    coalesce((SELECT value FROM _barista_state WHERE key = 'acked'), 0))",
        [],
        |row| row.get(0),
    )?;
    let high = base + read as i64 + 1;
    tx.execute(
        "INSERT INTO _barista_changelog(position, tbl, op, a0, a1) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![high, cursor.tbl, OP_SNAPSHOT_CHUNK, cursor.id, read as i64],
    )?;
    tx.commit()?;
    let held = locked.elapsed();
    conn.pragma_update(None, "synchronous", synchronous)?;
    if synchronous > 1 {
        sync_wal(conn)?;
    }
    // In key order (pk_indexes is), as `_barista_snapshot_keys` stores it.
    let last_row = &r.rows[read - 1];
    let last_key: Vec<SqlValue> = pk.iter().map(|&i| last_row[i].clone()).collect();
    // The window (seen, high): its changes are committed now, and were read by nobody's
    // lock. A row whose key one of them touched (before or after) is left out: the change
    // carries the row itself, and its position stays unused.
    let changed = window_keys(conn, cursor.tbl, r.seen, high, &pk)?;
    let rows: Vec<Option<Vec<SqlValue>>> = r
        .rows
        .into_iter()
        .map(|row| {
            if changed.is_empty() {
                return Some(row);
            }
            let k: Vec<SqlValue> = pk.iter().map(|&i| row[i].clone()).collect();
            (!changed.contains(&key_of(&k))).then_some(row)
        })
        .collect();
    let kept = rows.iter().filter(|r| r.is_some()).count();
    tracing::debug!(table = %cursor.name, snapshot = cursor.id, high, read, kept, "snapshot chunk read");
    pending.chunks.insert(
        high,
        Chunk {
            tbl: cursor.tbl,
            id: cursor.id,
            rows,
            last_key: last_key.clone(),
            read: read as i64,
            counted: r.counted,
            recorded: false,
        },
    );
    cursor.last = last_key;
    cursor.rows += read as i64;
    cursor.chunks += 1;
    cursor.total = cursor.total.or(r.counted);
    cursor.exhausted = read < chunk_rows;
    Ok(Step {
        progress: cursor.progress(false),
        held,
        waiting: false,
        took: Duration::ZERO,
    })
}

/// The keys (as [`key_of`]) of table `tbl` that a change with `seen < position < high`
/// touched, before or after. `pk`: the key's column indexes.
fn window_keys(
    conn: &Connection,
    tbl: i64,
    seen: i64,
    high: i64,
    pk: &[usize],
) -> rusqlite::Result<HashSet<String>> {
    let slot = |side: &str| -> Vec<String> { pk.iter().map(|i| format!("{side}{i}")).collect() };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT op, {}, {} FROM _barista_changelog WHERE position > ?1 AND position < ?2 \
         AND tbl = ?3 AND op IN ({OP_INSERT}, {OP_UPDATE}, {OP_DELETE})",
        slot("a").join(", "),
        slot("b").join(", ")
    ))?;
    let mut rows = stmt.query(params![seen, high, tbl])?;
    let mut changed = HashSet::new();
    while let Some(row) = rows.next()? {
        let op: i64 = row.get(0)?;
        let key = |from: usize| -> rusqlite::Result<String> {
            let k: Vec<SqlValue> = (from..from + pk.len())
                .map(|c| row.get_ref(c).map(SqlValue::from))
                .collect::<Result<_, _>>()?;
            Ok(key_of(&k))
        };
        if op != OP_DELETE {
            changed.insert(key(1)?);
        }
        if op != OP_INSERT {
            changed.insert(key(1 + pk.len())?);
        }
    }
    Ok(changed)
}

/// Makes what this connection committed durable, as synchronous=FULL would have at commit
/// but without holding the write lock: an fsync of the WAL file (SQLite keeps no lock on
/// it, so opening and closing another descriptor of it is harmless).
fn sync_wal(conn: &Connection) -> Result<(), CaptureError> {
    let Some(db) = conn.path().filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    match std::fs::File::open(format!("{db}-wal")) {
        Ok(wal) => Ok(wal.sync_data()?),
        // No WAL left: a checkpoint moved everything into the database file, synced.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Step 1: one read transaction. `None` when the table is no longer the one captured.
fn read_chunk(
    conn: &Connection,
    cursor: &Cursor,
    chunk_rows: usize,
) -> Result<Option<Read>, CaptureError> {
    // Deferred: a read transaction, one snapshot of the table and the changelog.
    let tx = conn.unchecked_transaction()?;
    let version = schema_version(&tx)?;
    if !still_captured(&tx, cursor.tbl, &cursor.name)? {
        return Ok(None);
    }
    let shape = TableShape::read(&tx, &cursor.name)?;
    let seen: i64 = tx.query_row(
        "SELECT coalesce(max(position), 0) FROM _barista_changelog",
        [],
        |r| r.get(0),
    )?;
    let counted = match cursor.total {
        Some(_) => None,
        None => Some(tx.query_row(
            &format!("SELECT count(*) FROM {}", quote(&cursor.name)),
            [],
            |r| r.get(0),
        )?),
    };
    let cols: Vec<String> = shape.columns.iter().map(|c| quote(&c.name)).collect();
    let key: Vec<&str> = shape
        .pk_indexes()
        .into_iter()
        .map(|i| cols[i].as_str())
        .collect();
    let after = if cursor.last.len() == key.len() {
        let marks: Vec<String> = (1..=key.len()).map(|i| format!("?{i}")).collect();
        format!("WHERE ({}) > ({})", key.join(", "), marks.join(", "))
    } else {
        String::new()
    };
    let width = cols.len();
    let rows = tx
        .prepare(&format!(
            "SELECT {} FROM {} {after} ORDER BY {} LIMIT {chunk_rows}",
            cols.join(", "),
            quote(&cursor.name),
            key.join(", "),
        ))?
        .query_map(params_from_iter(cursor.last.iter()), |r| {
            (0..width)
                .map(|i| r.get_ref(i).map(SqlValue::from))
                .collect::<rusqlite::Result<Vec<_>>>()
        })?
        .collect::<Result<_, _>>()?;
    tx.commit()?;
    Ok(Some(Read {
        version,
        shape,
        seen,
        counted,
        rows,
    }))
}

/// Every row was read: once every chunk is in Kafka, the end marker (a chunk lost with its
/// producer would otherwise be missing at the end, where followers delete what the snapshot
/// did not copy).
fn finish(conn: &mut Connection, pending: &Pending, cursor: &Cursor) -> Result<Step, CaptureError> {
    if pending.unrecorded(cursor.id) {
        return Ok(Step {
            progress: cursor.progress(false),
            held: Duration::ZERO,
            waiting: true,
            took: Duration::ZERO,
        });
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let locked = Instant::now();
    tx.execute(
        "INSERT INTO _barista_changelog(tbl, op, a0) VALUES (?1, ?2, ?3)",
        params![cursor.tbl, OP_SNAPSHOT_END, cursor.id],
    )?;
    forget(&tx, cursor.tbl)?;
    tx.commit()?;
    let (rows, chunks) = (cursor.rows, cursor.chunks);
    tracing::info!(table = %cursor.name, snapshot = cursor.id, rows, chunks, "snapshot done");
    Ok(Step {
        progress: cursor.progress(true),
        held: locked.elapsed(),
        waiting: false,
        took: Duration::ZERO,
    })
}

/// In `tx`: the snapshot of table `tbl` is over (done or abandoned); its progress and keys go.
fn forget(tx: &rusqlite::Transaction<'_>, tbl: i64) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM _barista_snapshots WHERE tbl = ?1", [tbl])?;
    tx.execute("DELETE FROM _barista_snapshot_keys WHERE tbl = ?1", [tbl])?;
    Ok(())
}
