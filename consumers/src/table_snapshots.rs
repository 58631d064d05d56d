//! Incremental snapshots on a follower (the producer's `snapshot` module makes them): while a
//! table's snapshot runs, reads of it answer 503 `snapshotting` (the replica holds only part
//! of it, or a part not yet repaired); when it ends, rows the snapshot did not copy and no
//! change wrote since it started are deleted, at the end's commit group: those are keys the
//! leader no longer has (written behind its capture triggers' back).
//!
//! Why that deletion is exact: every key the leader has when the snapshot ends was either
//! copied by one of its chunks (op r) or written by a change after its range was copied (c or
//! u); a key deleted after being copied is deleted by its own change. So a replica row
//! touched by neither is one the leader does not have. Keys are only recorded when the
//! replica's table had rows when the snapshot started (a repair); a table's first snapshot
//! has nothing to delete.
//!
//! State, in the replica (so it commits with the rows it describes):
//! `_barista_replica_snapshots` (one row per table being snapshotted) and
//! `_barista_replica_snapshot_seen` (the keys touched meanwhile, repairs only).

use std::collections::HashMap;
use std::sync::Arc;

use barista_schemas::envelope::DecodedChange;
use barista_schemas::{Op, Position, SqlValue, TableSnapshot};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use serde::Serialize;

use crate::checksums::{stored_or_own_shape, Reads, Sums};

/// The state tables.
pub const SQL: &str = "
CREATE TABLE IF NOT EXISTS _barista_replica_snapshots (
    tbl              TEXT PRIMARY KEY,
    id               INTEGER NOT NULL,   -- the leader's snapshot id; 0 when it began mid-group
    started_position INTEGER NOT NULL,
    rows             INTEGER NOT NULL DEFAULT 0,  -- snapshot rows applied so far
    repair           INTEGER NOT NULL    -- the table had rows: keys are recorded
);
CREATE TABLE IF NOT EXISTS _barista_replica_snapshot_seen (
    tbl TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (tbl, key)
) WITHOUT ROWID;";

/// A table being snapshotted, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaSnapshot {
    /// The table.
    pub table: String,
    /// The leader's snapshot id (0: learned from its first rows).
    pub id: i64,
    /// Where it started.
    pub started_position: i64,
    /// Snapshot rows applied so far.
    pub rows: i64,
    /// Rows the snapshot did not touch will be deleted at its end.
    pub repair: bool,
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A key as recorded: the same text for the same SQLite values, whichever side read them.
fn key_text(key: &[&SqlValue]) -> String {
    format!("{key:?}")
}

/// The tables being snapshotted.
pub fn running(conn: &Connection) -> rusqlite::Result<Vec<ReplicaSnapshot>> {
    conn.prepare_cached(
        "SELECT tbl, id, started_position, rows, repair FROM _barista_replica_snapshots ORDER BY tbl",
    )?
    .query_map([], |r| {
        Ok(ReplicaSnapshot {
            table: r.get(0)?,
            id: r.get(1)?,
            started_position: r.get(2)?,
            rows: r.get(3)?,
            repair: r.get(4)?,
        })
    })?
    .collect()
}

/// Starts table `table`'s snapshot state at `position` (replacing one in progress). A state
/// its first rows started earlier in the same open transaction (id 0: a streamed group whose
/// start marker arrives with its commit record) is kept, keys and all, under the real id.
fn start(conn: &Connection, table: &str, id: i64, position: Position) -> rusqlite::Result<()> {
    let adopted = conn
        .prepare_cached("UPDATE _barista_replica_snapshots SET id = ?2 WHERE tbl = ?1 AND id = 0")?
        .execute(params![table, id])?;
    if adopted > 0 {
        return Ok(());
    }
    let has_rows = conn
        .query_row(
            &format!("SELECT EXISTS(SELECT 1 FROM {})", quote(table)),
            [],
            |r| r.get::<_, bool>(0),
        )
        .unwrap_or(false);
    conn.prepare_cached(
        "INSERT OR REPLACE INTO _barista_replica_snapshots(tbl, id, started_position, rows, repair) \
         VALUES (?1, ?2, ?3, 0, ?4)",
    )?
    .execute(params![table, id, position.0, has_rows])?;
    conn.prepare_cached("DELETE FROM _barista_replica_snapshot_seen WHERE tbl = ?1")?
        .execute([table])?;
    tracing::info!(table, snapshot = id, %position, repair = has_rows, "table snapshot started: reads answer 503 snapshotting until it ends");
    Ok(())
}

/// Before the changes of a batch (inside its transaction): the snapshots it starts, then
/// the keys its changes write to tables being snapshotted. A snapshot row of a table with no
/// state (its start marker is in the commit record of a group streamed before it arrived)
/// starts the state itself.
pub fn take_in(
    conn: &Connection,
    marks: &[TableSnapshot],
    changes: &[DecodedChange],
) -> rusqlite::Result<()> {
    for m in marks.iter().filter(|m| !m.done) {
        start(conn, &m.table, m.id, m.position)?;
    }
    // Per table: None = not being snapshotted; Some(repair).
    let mut state: HashMap<String, Option<bool>> = HashMap::new();
    let mut copied: HashMap<String, i64> = HashMap::new();
    for c in changes {
        let table = &c.shape.table;
        let repair = match state.get(table) {
            Some(s) => *s,
            None => {
                let mut s: Option<bool> = conn
                    .prepare_cached("SELECT repair FROM _barista_replica_snapshots WHERE tbl = ?1")?
                    .query_row([table], |r| r.get(0))
                    .optional()?;
                if s.is_none() && c.op == Op::Read {
                    start(conn, table, 0, c.source.position)?;
                    s = Some(conn.query_row(
                        "SELECT repair FROM _barista_replica_snapshots WHERE tbl = ?1",
                        [table],
                        |r| r.get(0),
                    )?);
                }
                state.insert(table.clone(), s);
                s
            }
        };
        let Some(repair) = repair else { continue };
        if c.op == Op::Read {
            *copied.entry(table.clone()).or_default() += 1;
        }
        let Some(after) = (c.op != Op::Delete).then_some(c.after.as_ref()).flatten() else {
            continue;
        };
        if repair {
            let key: Vec<&SqlValue> = c.shape.pk_indexes().iter().map(|&i| &after[i]).collect();
            conn.prepare_cached(
                "INSERT OR IGNORE INTO _barista_replica_snapshot_seen(tbl, key) VALUES (?1, ?2)",
            )?
            .execute(params![table, key_text(&key)])?;
        }
    }
    for (table, n) in copied {
        conn.prepare_cached(
            "UPDATE _barista_replica_snapshots SET rows = rows + ?2 WHERE tbl = ?1",
        )?
        .execute(params![table, n])?;
    }
    Ok(())
}

/// After the changes of a batch (inside its transaction, before its commit): the snapshots
/// it ends. A repair deletes the table's rows nobody touched since it started, their hashes
/// leaving the table's checksum. An end for another snapshot than the one in progress (an
/// older one, superseded) changes nothing.
pub fn finish(
    conn: &Connection,
    sums: &mut Sums,
    marks: &[TableSnapshot],
    position: Position,
) -> rusqlite::Result<()> {
    for m in marks.iter().filter(|m| m.done) {
        let state: Option<(i64, bool)> = conn
            .prepare_cached("SELECT id, repair FROM _barista_replica_snapshots WHERE tbl = ?1")?
            .query_row([&m.table], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((id, repair)) = state else { continue };
        if id != m.id && id != 0 {
            continue;
        }
        let mut deleted = 0;
        if repair {
            deleted = delete_untouched(conn, sums, &m.table, position)?;
        }
        conn.prepare_cached("DELETE FROM _barista_replica_snapshots WHERE tbl = ?1")?
            .execute([&m.table])?;
        conn.prepare_cached("DELETE FROM _barista_replica_snapshot_seen WHERE tbl = ?1")?
            .execute([&m.table])?;
        tracing::info!(table = %m.table, snapshot = m.id, %position, deleted, "table snapshot ended");
    }
    // Snapshot rows no start marker claimed by the end of the transaction: a small table's
    // first snapshot, copied whole in the transaction that captured it (no markers). The
    // table is complete here; readers never saw the state.
    conn.prepare_cached(
        "DELETE FROM _barista_replica_snapshot_seen WHERE tbl IN          (SELECT tbl FROM _barista_replica_snapshots WHERE id = 0)",
    )?
    .execute([])?;
    conn.prepare_cached("DELETE FROM _barista_replica_snapshots WHERE id = 0")?
        .execute([])?;
    Ok(())
}

/// A table dropped on the leader: its snapshot state goes with it.
pub fn dropped(conn: &Connection, table: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM _barista_replica_snapshots WHERE tbl = ?1")?
        .execute([table])?;
    conn.prepare_cached("DELETE FROM _barista_replica_snapshot_seen WHERE tbl = ?1")?
        .execute([table])?;
    Ok(())
}

/// Deletes `table`'s rows whose key is not recorded as touched; returns how many.
fn delete_untouched(
    conn: &Connection,
    sums: &mut Sums,
    table: &str,
    position: Position,
) -> rusqlite::Result<usize> {
    let Some(shape) = stored_or_own_shape(conn, table)? else {
        return Ok(0);
    };
    let shape = Arc::new(shape);
    let pk: Vec<String> = shape
        .pk_indexes()
        .iter()
        .map(|&i| quote(&shape.columns[i].name))
        .collect();
    let mut untouched: Vec<Vec<SqlValue>> = Vec::new();
    {
        let mut seen = conn.prepare_cached(
            "SELECT EXISTS(SELECT 1 FROM _barista_replica_snapshot_seen WHERE tbl = ?1 AND key = ?2)",
        )?;
        let mut stmt = conn.prepare(&format!("SELECT {} FROM {}", pk.join(", "), quote(table)))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let key: Vec<SqlValue> = (0..pk.len())
                .map(|i| r.get_ref(i).map(SqlValue::from))
                .collect::<Result<_, _>>()?;
            let refs: Vec<&SqlValue> = key.iter().collect();
            if !seen.query_row(params![table, key_text(&refs)], |r| r.get::<_, bool>(0))? {
                untouched.push(key);
            }
        }
    }
    let where_: Vec<String> = pk
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} IS ?{}", i + 1))
        .collect();
    let delete = format!(
        "DELETE FROM {} WHERE {}",
        quote(table),
        where_.join(" AND ")
    );
    let mut reads = Reads::default();
    for key in &untouched {
        let refs: Vec<&SqlValue> = key.iter().collect();
        sums.delete(conn, &mut reads, &shape, &refs, position)?;
        conn.prepare_cached(&delete)?
            .execute(params_from_iter(key.iter()))?;
    }
    Ok(untouched.len())
}
