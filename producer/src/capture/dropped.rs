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
use rusqlite::{params, TransactionBehavior};

use super::{Capture, CaptureError};
use crate::triggers::{self, OP_DROP};

impl Capture {
    /// Records a drop marker for every captured table that no longer exists under its name.
    /// Returns their names. Runs before [`Capture::check_schema`] (which would take a missing
    /// table for drift) and before the head is read, so the marker joins the commit group of
    /// the leader transaction that dropped the table.
    pub fn notice_drops(&mut self) -> Result<Vec<String>, CaptureError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA schema_version", [], |r| r.get(0))?;
        if version == self.drops_version {
            return Ok(Vec::new());
        }
        // Looked at under the write lock: no table can go between the look and the marker.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut gone = Vec::new();
        for (id, t) in &self.tables {
            if self.dropped.contains(id) {
                continue;
            }
            let name = &t.schemas.shape.name;
            let exists: bool = tx.query_row(
                "SELECT count(*) > 0 FROM pragma_table_list WHERE schema = 'main' AND type = 'table' AND name = ?1",
                [name],
                |r| r.get(0),
            )?;
            // A table that still exists but lost its triggers was dropped and created
            // again (or rebuilt: create, copy, drop, rename): the old one is gone too, and
            // the new one is captured afresh, snapshot included, by `adopt_new_tables`.
            if !exists || !triggers::installed(&tx, *id)? {
                gone.push((*id, name.clone()));
            }
        }
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
        let version: i64 = tx.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
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
