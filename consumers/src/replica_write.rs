//! The apply transaction's statements (a child module of `replica.rs`):
//! the changes, in order, with the table checksums kept beside them, and the
//! offsets and position they bring the replica to.

use std::sync::Arc;

use barista_schemas::envelope::DecodedChange;
use barista_schemas::{Op, SqlValue};
use rusqlite::{params, params_from_iter, Connection};

use super::{Batch, TableSql};
use crate::checksums::Sums;

/// Writes changes in order (inside the caller's transaction), keeping the
/// checksums: before each write, the replica's row at its key leaves its
/// table's sum and the row written enters it.
pub(super) fn write_changes(
    conn: &Connection,
    sums: &mut Sums,
    changes: &[DecodedChange],
    sqls: &[Arc<TableSql>],
) -> rusqlite::Result<()> {
    let mut reads = crate::checksums::Reads::default();
    for (c, sql) in changes.iter().zip(sqls) {
        let at = c.source.position;
        match c.op {
            Op::Create | Op::Read | Op::Update => {
                let Some(after) = &c.after else { continue };
                if let Some(before) = &c.before {
                    // The key itself changed: the old row goes.
                    if sql.pk.iter().any(|&i| before.get(i) != after.get(i)) {
                        let key: Vec<&SqlValue> = sql.pk.iter().map(|&i| &before[i]).collect();
                        sums.delete(conn, &mut reads, &c.shape, &key, at)?;
                        conn.prepare_cached(&sql.delete)?
                            .execute(params_from_iter(key))?;
                    }
                }
                let key: Vec<&SqlValue> = sql.pk.iter().map(|&i| &after[i]).collect();
                sums.replace(conn, &mut reads, &c.shape, &key, at, after)?;
                conn.prepare_cached(&sql.upsert)?
                    .execute(params_from_iter(after.iter()))?;
            }
            Op::Delete => {
                let Some(before) = &c.before else { continue };
                let key: Vec<&SqlValue> = sql.pk.iter().map(|&i| &before[i]).collect();
                sums.delete(conn, &mut reads, &c.shape, &key, at)?;
                conn.prepare_cached(&sql.delete)?
                    .execute(params_from_iter(key))?;
            }
        }
    }
    Ok(())
}

/// Stores the batch's offsets and the replica's position (inside the
/// caller's transaction).
pub(super) fn write_progress(conn: &Connection, batch: &Batch) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO _barista_offsets(topic, partition, next_offset, applied_position) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT(topic, partition) DO UPDATE SET next_offset = excluded.next_offset, \
         applied_position = excluded.applied_position",
    )?;
    for ((topic, partition), (next, applied)) in &batch.offsets {
        stmt.execute(params![topic, partition, next, applied])?;
    }
    if let Some((position, ts)) = batch.position {
        conn.prepare_cached(
            "INSERT INTO _barista_position(id, position, leader_ts_ms, applied_at_ms) VALUES (1, ?1, ?2, \
             CAST(unixepoch('subsec') * 1000 AS INTEGER)) ON CONFLICT(id) DO UPDATE SET position = excluded.position, \
             leader_ts_ms = excluded.leader_ts_ms, applied_at_ms = excluded.applied_at_ms",
        )?
        .execute(params![position, ts])?;
    }
    Ok(())
}
