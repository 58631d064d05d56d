//! Drift: DDL made behind barista's back on a captured table (columns added without
//! `producer migrate`) stops capture before it reads past it, naming the table and the
//! columns; tables that went away are left to [`super::dropped`].
//!
//! Reads: the leader's tables and barista's bookkeeping. Writes: nothing.

use barista_schemas::TableShape;

use super::{schema_version, still_captured, Capture, CaptureError};

impl Capture {
    /// Detects DDL made behind barista's back while it runs: when `PRAGMA schema_version`
    /// moved, compares every captured table's columns with the ones its triggers were made for
    /// (which `producer migrate` updates in the same transaction as the DDL) and checks that
    /// the triggers still exist. Cheap when nothing changed: one pragma.
    pub fn check_schema(&mut self) -> Result<(), CaptureError> {
        let version = schema_version(&self.conn)?;
        if version == self.schema_version {
            return Ok(());
        }
        let mut ids: Vec<i64> = self
            .tables
            .keys()
            .copied()
            .filter(|id| !self.dropped.contains(id))
            .collect();
        ids.sort();
        for id in ids {
            let (name, was): (String, String) = self.conn.query_row(
                "SELECT name, columns FROM _barista_tables WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let was: Vec<String> = serde_json::from_str(&was).unwrap_or_default();
            // Gone, or its triggers gone (dropped and created again, or rebuilt), since
            // [`Capture::notice_drops`] looked: it records the drop on the next poll (the
            // schema version it saw has moved).
            if !still_captured(&self.conn, id, &name)? {
                continue;
            }
            let now = match TableShape::read(&self.conn, &name) {
                Ok(shape) => shape.column_names(),
                Err(_) => Vec::new(),
            };
            if now != was {
                return Err(CaptureError::Drift {
                    table: name,
                    was,
                    now,
                });
            }
        }
        self.schema_version = version;
        Ok(())
    }
}
