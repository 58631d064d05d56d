//! Capture's side of the table checksums ([`crate::checksums`]): the markers a read scanned,
//! the schemas a table had at a position, a table's sum recomputed from the leader at a
//! position, and the sums stored with the acknowledged position.
//!
//! Reads: the captured tables, `_barista_changelog`, `_barista_checksums`. Writes:
//! `_barista_checksums` (inside [`Capture::prune`]'s transaction).

use std::collections::HashMap;
use std::sync::Arc;

use barista_schemas::checksum::{from_wire, to_wire, RowHasher};
use barista_schemas::{Position, TableSchemas};
use rusqlite::{params, Connection};

use super::history::schemas_at;
use super::{Capture, CaptureError};
use crate::checksums::recompute::{sum_at, SumAt};

/// A marker [`Capture::read`] scanned: not a change, but it matters to a table's checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    /// The table's shape changed here (a `producer migrate` or a `--repair-triggers` marker).
    Shape(Position, i64),
    /// The table was dropped (or renamed away) here.
    Drop(Position, i64),
    /// A snapshot of the table starts here: its sum is unknown until the snapshot ends.
    SnapshotStart(Position, i64),
    /// A snapshot of the table ended here: the table's sum is recomputed as of here.
    SnapshotEnd(Position, i64),
}

impl Capture {
    /// The markers scanned by [`Capture::read`] since the last call, in position order.
    pub(crate) fn take_marks(&mut self) -> Vec<Mark> {
        std::mem::take(&mut self.marks)
    }

    /// The schemas table `id` had just after `position` (its rows as of `position` are in
    /// this shape); `None` for a table not captured now.
    pub(crate) fn schemas_after(&self, id: i64, position: Position) -> Option<Arc<TableSchemas>> {
        schemas_at(&self.tables, &self.history, id, position)
    }

    /// Table `id`'s checksum as of `position` in `schemas`' shape, recomputed from the leader
    /// in one read transaction (see [`sum_at`]).
    pub(crate) fn sum_at(
        &self,
        id: i64,
        position: Position,
        schemas: &TableSchemas,
        hasher: &RowHasher,
    ) -> Result<SumAt, CaptureError> {
        // Deferred: a read transaction, one snapshot of the rows and the changelog.
        let tx = self.conn.unchecked_transaction()?;
        let sum = sum_at(&tx, id, position, &schemas.shape, hasher)?;
        tx.commit()?;
        Ok(sum)
    }

    /// The stored checksums, by table name, when they were stored with `acked` (sums stored
    /// at another position are a gap: they are recomputed instead).
    pub(crate) fn stored_sums(
        &self,
        acked: Position,
    ) -> Result<HashMap<String, u64>, CaptureError> {
        let mut stmt = self
            .conn
            .prepare("SELECT tbl, sum FROM _barista_checksums WHERE position = ?1")?;
        let rows = stmt
            .query_map([acked.0], |r| Ok((r.get(0)?, from_wire(r.get(1)?))))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}

/// Replaces the stored checksums by `sums` as of `acked`: a table left out (dropped, or its
/// sum unknown now) loses its row.
pub(super) fn store(
    conn: &Connection,
    acked: Position,
    sums: &[(String, u64)],
) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM _barista_checksums", [])?;
    let mut stmt = conn
        .prepare_cached("INSERT INTO _barista_checksums(tbl, sum, position) VALUES (?1, ?2, ?3)")?;
    for (table, sum) in sums {
        stmt.execute(params![table, to_wire(*sum), acked.0])?;
    }
    Ok(())
}
