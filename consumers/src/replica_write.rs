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
/// checksums: the replica's row at each key written leaves its table's sum
/// before the write, the row written enters it after.
pub(super) fn write_changes(
    conn: &Connection,
    sums: &mut Sums,
    changes: &[DecodedChange],
    sqls: &[Arc<TableSql>],
) -> rusqlite::Result<()> {
    let mut reads = crate::checksums::Reads::default();
    for (c, sql) in changes.iter().zip(sqls) {
        let at = c.source.position;
        let mut take_out =
            |sums: &mut Sums, key: &[&SqlValue]| sums.take_out(conn, &mut reads, &c.shape, key, at);
        match c.op {
            Op::Create | Op::Read | Op::Update => {
                let Some(after) = &c.after else { continue };
                if let Some(before) = &c.before {
                    // The key itself changed: the old row goes.
                    if sql.pk.iter().any(|&i| before.get(i) != after.get(i)) {
                        let key: Vec<&SqlValue> = sql.pk.iter().map(|&i| &before[i]).collect();
                        let slot = take_out(sums, &key)?;
                        conn.prepare_cached(&sql.delete)?
                            .execute(params_from_iter(key))?;
                        sums.removed(slot);
                    }
                }
                let key: Vec<&SqlValue> = sql.pk.iter().map(|&i| &after[i]).collect();
                let slot = take_out(sums, &key)?;
                conn.prepare_cached(&sql.upsert)?
                    .execute(params_from_iter(after.iter()))?;
                sums.put_in(slot, after);
            }
            Op::Delete => {
                let Some(before) = &c.before else { continue };
                let key: Vec<&SqlValue> = sql.pk.iter().map(|&i| &before[i]).collect();
                let slot = take_out(sums, &key)?;
                conn.prepare_cached(&sql.delete)?
                    .execute(params_from_iter(key))?;
                sums.removed(slot);
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
