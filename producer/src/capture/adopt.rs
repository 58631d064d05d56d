//! Tables that appear while the producer runs: when `PRAGMA schema_version`
//! moves, a table created since is captured like the ones found at start
//! (bookkeeping row, triggers, the start marker of its snapshot) in ONE
//! leader write transaction; its existing rows follow in chunks
//! ([`crate::snapshot`]), ordered against its changes by position, so no write
//! is lost or doubled across the snapshot/stream boundary.
//!
//! Also the one place that decides whether a table is captured at all, at start and later:
//! not in `--tables`, no primary key, or otherwise not capturable means skipped, warned about
//! once per run, and listed with its reason in `/status`.
//!
//! Reads: the leader's table list. Writes: `_barista_tables`, the changelog
//! (snapshot rows), triggers.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use barista_schemas::{ContractError, TableSchemas, TableShape};
use rusqlite::{params, Connection, TransactionBehavior};

use super::{schema_version, Capture, CaptureError, CapturedTable};
use crate::triggers;

/// The reason given for a table without a primary key.
pub const NO_PRIMARY_KEY: &str = "no primary key";
/// The reason given for a table left out by an explicit `--tables` list.
pub const NOT_LISTED: &str = "not in --tables";

/// What [`Capture::adopt_new_tables`] found.
#[derive(Debug, Default)]
pub struct Adopted {
    /// Newly captured, snapshot taken.
    pub tables: Vec<CapturedTable>,
    /// Not captured, with the reason (no primary key, not in `--tables`),
    /// each reported once per run.
    pub skipped: Vec<(String, String)>,
    /// The table list was looked at again: [`Capture::skipped`] is current.
    pub rescanned: bool,
}

/// Whether a table is captured.
pub(super) enum Verdict {
    /// It can be: its shape.
    Capture(TableShape),
    /// It is not: a short reason (for `/status`) and the whole story (for the log).
    Skip {
        /// `no primary key`, `not in --tables`, or why it cannot be captured.
        reason: String,
        /// What to do about it.
        detail: String,
    },
}

/// Decides whether table `name` is captured, given the `--tables` list (`wanted`, empty =
/// every table that can be).
pub(super) fn classify(
    conn: &Connection,
    wanted: &[String],
    name: &str,
) -> Result<Verdict, CaptureError> {
    if !wanted.is_empty() && !wanted.iter().any(|w| w == name) {
        return Ok(Verdict::Skip {
            reason: NOT_LISTED.into(),
            detail: "add it to --tables to capture it".into(),
        });
    }
    match TableShape::read(conn, name) {
        Ok(shape) => Ok(Verdict::Capture(shape)),
        Err(ContractError::NotCapturable { why, .. }) => {
            // Classified by the table itself, not by the message's words.
            let keyed: bool = conn.query_row(
                "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE pk > 0",
                [name],
                |r| r.get(0),
            )?;
            let reason = if keyed {
                why.clone()
            } else {
                NO_PRIMARY_KEY.into()
            };
            Ok(Verdict::Skip {
                reason,
                detail: why,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// At start: the tables to capture (every listed one when `wanted` is explicit, where a table
/// that cannot be captured is an error; else every table that can be) and the ones skipped,
/// with their reason, each warned about.
pub(super) fn tables_at_start(
    conn: &Connection,
    wanted: &[String],
) -> Result<(Vec<String>, BTreeMap<String, String>), CaptureError> {
    let mut names = Vec::new();
    let mut skipped = BTreeMap::new();
    for name in TableShape::list_tables(conn)? {
        if wanted.contains(&name) {
            // Read, and refused loudly when it cannot be captured, by install.
            continue;
        }
        match classify(conn, wanted, &name)? {
            Verdict::Capture(_) => names.push(name),
            Verdict::Skip { reason, detail } => {
                tracing::warn!(table = %name, %reason, %detail, "table not captured");
                skipped.insert(name, reason);
            }
        }
    }
    if !wanted.is_empty() {
        names = wanted.to_vec();
    }
    Ok((names, skipped))
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
        let mut adopted = Adopted {
            rescanned: true,
            ..Adopted::default()
        };
        let mut added = Vec::new();
        let mut skipped = BTreeMap::new();
        let mut details = BTreeMap::new();
        for name in TableShape::list_tables(&tx)? {
            if known.contains(&name) {
                continue;
            }
            let shape = match classify(&tx, &self.wanted, &name)? {
                Verdict::Capture(shape) => shape,
                Verdict::Skip { reason, detail } => {
                    skipped.insert(name.clone(), reason);
                    details.insert(name, detail);
                    continue;
                }
            };
            let columns = shape.column_names();
            triggers::widen_changelog(&tx, columns.len())?;
            tx.execute(
                "INSERT INTO _barista_tables(name, columns) VALUES (?1, ?2)",
                params![name, triggers::columns_json(&columns)],
            )?;
            let id = tx.last_insert_rowid();
            triggers::replace(&tx, id, &name, &columns)?;
            // A small table's rows right here; a larger one's follow in chunks.
            match crate::snapshot::first(&tx, id, &name, &columns)? {
                Some(rows) => {
                    tracing::info!(table = %name, rows, "new table captured: snapshot taken")
                }
                None => {
                    tracing::info!(table = %name, "new table captured: incremental snapshot started")
                }
            }
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
        adopted.skipped = skipped
            .iter()
            .filter(|(name, _)| self.reported.insert((*name).clone()))
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        for (name, reason) in &adopted.skipped {
            let detail = details.get(name).map_or("", String::as_str);
            tracing::warn!(table = %name, %reason, %detail, "new table not captured");
        }
        self.skipped = skipped;
        for t in &added {
            self.tables.insert(t.id, t.clone());
        }
        adopted.tables = added;
        Ok(adopted)
    }
}
