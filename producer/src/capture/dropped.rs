//! Tables that go away while the producer runs: `DROP TABLE`, `ALTER TABLE … RENAME` (a drop
//! of the old name plus, through [`super::adopt`], a new table under the new name with a
//! snapshot of its rows), or a table dropped and created again under its name, or rebuilt
//! (its triggers are gone: a drop, then the new table with a snapshot). SQLite runs no trigger for DDL, so the producer notices when
//! `PRAGMA schema_version` moves and records a drop marker in the changelog then, in one
//! leader transaction with removing the table's triggers (a renamed table keeps them, and
//! they would log its writes under the old table). Changes to the table before the drop have
//! lower positions; followers drop their copy at the marker's position.
//!
//! Reads: the leader's table list. Writes: drop markers, triggers, `_barista_tables` names.

use barista_schemas::Position;
use rusqlite::{params, Connection, TransactionBehavior};

use std::collections::{HashMap, HashSet};

use super::{schema_version, still_captured, Capture, CaptureError, CapturedTable};
use crate::triggers::{self, OP_DROP};

impl Capture {
    /// Records a drop marker for every captured table that no longer exists under its name.
    /// Returns their names. Runs before [`Capture::check_schema`] (which would take a missing
    /// table for drift) and before the head is read, so the marker joins the commit group of
    /// the leader transaction that dropped the table.
    pub fn notice_drops(&mut self) -> Result<Vec<String>, CaptureError> {
        let version = schema_version(&self.conn)?;
        if version == self.drops_version {
            return Ok(Vec::new());
        }
        // Cheap look first: most DDL drops nothing, and then no write lock is taken. A table
        // that goes after the look moves the version past `version`: the next poll sees it.
        if gone(&self.tables, &self.dropped, &self.conn)?.is_empty() {
            self.drops_version = version;
            return Ok(Vec::new());
        }
        // Again under the write lock: no table can go between the look and the marker.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut gone = gone(&self.tables, &self.dropped, &tx)?;
        gone.sort();
        for (id, name) in &gone {
            tx.execute_batch(&triggers::drop_sql(*id))?;
            let at = triggers::record_drop(&tx, *id, name)?;
            // Frees the name for a table created under it later (a new id, a new snapshot);
            // `_barista_` names are never user tables.
            tx.execute(
                "UPDATE _barista_tables SET name = ?1 WHERE id = ?2",
                params![format!("_barista_dropped_{id}_{name}"), id],
            )?;
            tracing::info!(table = %name, position = at, "table dropped or renamed away on the leader: drop recorded");
        }
        let version = schema_version(&tx)?;
        tx.commit()?;
        self.drops_version = version;
        self.dropped.extend(gone.iter().map(|(id, _)| *id));
        Ok(gone.into_iter().map(|(_, name)| name).collect())
    }

    /// The drop markers with `after < position <= upto`: (position, table name), oldest
    /// first. Read for a whole commit group before its changes, so the group's first record
    /// (a begin record when it spans chunks) can name them. Self-describing (the name is in
    /// a0): a drop recorded before a restart is still published after it.
    pub fn drops_between(
        &self,
        after: Position,
        upto: Position,
    ) -> Result<Vec<(Position, String)>, CaptureError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT position, a0 FROM _barista_changelog \
             WHERE position > ?1 AND position <= ?2 AND op = ?3 ORDER BY position",
        )?;
        let drops = stmt
            .query_map(params![after.0, upto.0, OP_DROP], |r| {
                Ok((Position(r.get(0)?), r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        Ok(drops)
    }
}

/// Captured tables, not yet recorded as dropped, that are no longer there as captured.
/// A table that still exists but lost its triggers was dropped and created again (or
/// rebuilt: create, copy, drop, rename): the old one is gone too, and the new one is
/// captured afresh, snapshot included, by `adopt_new_tables`.
fn gone(
    tables: &HashMap<i64, CapturedTable>,
    dropped: &HashSet<i64>,
    conn: &Connection,
) -> Result<Vec<(i64, String)>, CaptureError> {
    let mut gone = Vec::new();
    for (id, t) in tables {
        let name = &t.schemas.shape.name;
        if !dropped.contains(id) && !still_captured(conn, *id, name)? {
            gone.push((*id, name.clone()));
        }
    }
    Ok(gone)
}
