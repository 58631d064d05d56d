//! Tables that appear while the producer runs: when `PRAGMA schema_version`
//! moves, a table created since is captured like the ones found at start
//! (bookkeeping row, a snapshot of its rows as `op = r`, triggers) in ONE
//! leader write transaction, so no write to it is lost or doubled across the
//! snapshot/stream boundary. The tail adopts BEFORE it reads the head, so a
//! leader transaction that created a table and wrote to others reaches the
//! followers in one commit group with the new table's snapshot.
//!
//! Reads: the leader's table list. Writes: `_barista_tables`, the changelog
//! (snapshot rows), triggers.

use std::collections::HashSet;
use std::sync::Arc;

use barista_schemas::{ContractError, TableSchemas, TableShape};
use rusqlite::{params, TransactionBehavior};

use super::{schema_version, Capture, CaptureError, CapturedTable};
use crate::triggers;

/// What [`Capture::adopt_new_tables`] found.
#[derive(Debug, Default)]
pub struct Adopted {
    /// Newly captured, snapshot taken.
    pub tables: Vec<CapturedTable>,
    /// Not captured, with the reason (no primary key, not in `--tables`),
    /// each reported once per run.
    pub skipped: Vec<(String, String)>,
}

impl Capture {
    /// Captures the tables created since the last look, when `PRAGMA
    /// schema_version` moved (one pragma otherwise). With an explicit table
    /// list (`--tables`), only listed tables are captured; every other new
    /// table is reported as ignored. A table without a primary key is
    /// reported and left alone. A table created and dropped in between was
    /// never seen: nothing is published for it.
    pub fn adopt_new_tables(&mut self) -> Result<Adopted, CaptureError> {
        let version = schema_version(&self.conn)?;
        if version == self.adopted_version {
            return Ok(Adopted::default());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let known: HashSet<String> = tx
            .prepare("SELECT name FROM _barista_tables")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut adopted = Adopted::default();
        let mut added = Vec::new();
        for name in TableShape::list_tables(&tx)? {
            if known.contains(&name) {
                continue;
            }
            if !self.wanted.is_empty() && !self.wanted.contains(&name) {
                adopted
                    .skipped
                    .push((name, "not in the --tables list".to_owned()));
                continue;
            }
            let shape = match TableShape::read(&tx, &name) {
                Ok(shape) => shape,
                Err(ContractError::NotCapturable { why, .. }) => {
                    adopted.skipped.push((name, why));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let columns = shape.column_names();
            triggers::widen_changelog(&tx, columns.len())?;
            tx.execute(
                "INSERT INTO _barista_tables(name, columns) VALUES (?1, ?2)",
                params![name, triggers::columns_json(&columns)],
            )?;
            let id = tx.last_insert_rowid();
            let rows = triggers::snapshot(&tx, id, &name, &columns)?;
            triggers::replace(&tx, id, &name, &columns)?;
            tracing::info!(table = %name, rows, "new table captured: snapshot taken");
            added.push(CapturedTable {
                id,
                schemas: Arc::new(TableSchemas::derive(shape)?),
            });
        }
        // Creating triggers moved the schema version once more.
        let version = schema_version(&tx)?;
        tx.commit()?;
        self.adopted_version = version;
        // Reported once per run; a table that becomes capturable later (dropped
        // and created again with a primary key) is still captured then.
        adopted
            .skipped
            .retain(|(name, _)| self.reported.insert(name.clone()));
        for (name, why) in &adopted.skipped {
            tracing::warn!(table = %name, reason = %why, "new table not captured");
        }
        for t in &added {
            self.tables.insert(t.id, t.clone());
        }
        adopted.tables = added;
        Ok(adopted)
    }
}
