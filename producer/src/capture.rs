//! Capture, the leader side: installs the changelog and its triggers in the
//! leader database, publishes existing rows as a snapshot, reads committed
//! changes by position, and prunes what Kafka has acknowledged.
//!
//! Reads: the captured tables (via `_barista_changelog`). Writes: barista's own
//! `_barista_*` tables only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use barista_schemas::{Op, Position, SqlValue, TableSchemas, TableShape};
use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};

use crate::triggers::{
    self, OP_DELETE, OP_DROP, OP_INSERT, OP_SNAPSHOT_CHUNK, OP_SNAPSHOT_END, OP_SNAPSHOT_START,
    OP_UPDATE,
};

mod adopt;
mod drift;
mod dropped;
mod history;
mod state;
mod sums;
#[cfg(test)]
mod tests;

use history::{load_history, schemas_at, SchemaHistory};

pub(crate) const SCHEMA_SQL: &str = include_str!("sql/changelog.sql");

/// Errors of the capture stage.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// SQLite failed (busy beyond the timeout, I/O, corrupt file…).
    #[error("leader database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Syncing the leader's WAL file failed.
    #[error("leader database file: {0}")]
    Io(#[from] std::io::Error),
    /// A table cannot be captured, or its schema no longer matches.
    #[error(transparent)]
    Contract(#[from] barista_schemas::ContractError),
    /// A captured table's columns changed without the migration command.
    #[error(
        "table {table:?} changed behind barista's back: capture triggers were made for columns {was:?}, \
         the table now has {now:?}. Values written to the changed columns since then were not captured. \
         Run schema changes through `producer migrate`. To resume, check that the new schema is compatible \
         (`barista-schemas check --leader …`), then restart the producer with --repair-triggers: it re-creates \
         the triggers and re-publishes the table's rows as an incremental snapshot (op = r), so the values \
         written meanwhile still reach Kafka and followers delete the keys the leader lost"
    )]
    Drift {
        /// The table.
        table: String,
        /// Columns the triggers know.
        was: Vec<String>,
        /// Columns the table has now.
        now: Vec<String>,
    },
    /// At start: barista's triggers on a captured table are gone (the table was rebuilt or
    /// dropped and created again while the producer was down, or someone dropped them).
    /// While running, the same is handled as a drop and a new table with a snapshot.
    #[error(
        "the capture triggers of table {table:?} are missing (was it dropped, or rebuilt with \
         CREATE/INSERT/DROP/RENAME?). Changes to it since then were not captured. Restart the producer \
         with --repair-triggers to re-create them and re-publish the table's rows as an incremental snapshot (op = r)"
    )]
    TriggersMissing {
        /// The table.
        table: String,
    },
}

pub use crate::triggers::OP_SCHEMA_CHANGE;
pub use adopt::{Adopted, NOT_LISTED, NO_PRIMARY_KEY};
pub(crate) use sums::Mark;

/// Opens the leader database for capture: WAL (so the producer's reads never
/// block writers) and a busy timeout (so barista's own short writes wait for
/// the application's instead of failing).
pub fn open_leader(path: &Path) -> Result<Connection, CaptureError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // Switching to WAL needs a moment with no other connection inside a
    // transaction, and SQLite answers BUSY at once instead of waiting: retry.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Ok(()) => return Ok(conn),
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < deadline =>
            {
                tracing::debug!("leader busy while switching to WAL; retrying");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// One change read back from the changelog.
#[derive(Debug, Clone)]
pub struct ChangeRow {
    /// Leader position.
    pub position: Position,
    /// `_barista_tables.id` of the table.
    pub table_id: i64,
    /// What happened.
    pub op: Op,
    /// Row before.
    pub before: Option<Vec<SqlValue>>,
    /// Row after.
    pub after: Option<Vec<SqlValue>>,
    /// The schemas of the table as it was when this change was captured (they change at
    /// schema-change markers).
    pub schemas: Arc<TableSchemas>,
}

/// `PRAGMA schema_version`: moves with every DDL, barista's own triggers included.
fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA schema_version", [], |r| r.get(0))
}

/// Whether captured table `id` is still there as captured: a table named `name` exists and
/// barista's triggers for `id` are on it. False after a DROP, a RENAME away, a drop and create
/// under the same name, or a rebuild.
pub(crate) fn still_captured(conn: &Connection, id: i64, name: &str) -> rusqlite::Result<bool> {
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_list WHERE schema = 'main' AND type = 'table' AND name = ?1",
        [name],
        |r| r.get(0),
    )?;
    Ok(exists && triggers::installed(conn, id)?)
}

/// A captured table.
#[derive(Debug, Clone)]
pub struct CapturedTable {
    /// `_barista_tables.id`.
    pub id: i64,
    /// Derived schemas and codecs.
    pub schemas: Arc<TableSchemas>,
}

/// The capture side of one leader database.
pub struct Capture {
    conn: Connection,
    tables: HashMap<i64, CapturedTable>,
    /// Per table, the schema-change markers still in the changelog: (marker position, the
    /// schemas rows before it were captured with), oldest first.
    history: SchemaHistory,
    /// `PRAGMA schema_version` when the installed triggers were last known to fit the tables.
    schema_version: i64,
    /// `--tables`: only these are captured (empty: every table with a primary key).
    pub(crate) wanted: Vec<String>,
    /// `PRAGMA schema_version` when new tables were last looked for.
    adopted_version: i64,
    /// New tables already reported as not captured.
    pub(crate) reported: HashSet<String>,
    /// Tables not captured now: name → reason.
    skipped: BTreeMap<String, String>,
    /// Captured tables dropped (or renamed away) on the leader: their drop is recorded.
    dropped: HashSet<i64>,
    /// `PRAGMA schema_version` when dropped tables were last looked for.
    drops_version: i64,
    /// Schema-change and drop markers [`Capture::read`] scanned, for the table checksums.
    marks: Vec<Mark>,
    /// Snapshot chunks read and not pruned yet (their rows are not in the changelog).
    chunks: crate::snapshot::chunk::Pending,
}

impl Capture {
    /// Installs capture on `tables` (every table with a primary key when
    /// empty) in ONE write transaction: bookkeeping tables, triggers, and a
    /// snapshot of the existing rows appended to the changelog as `op = r`.
    /// Because the snapshot and the trigger installation commit together, no
    /// write can fall between them: nothing is lost or duplicated across the
    /// snapshot/stream boundary. Tables already captured keep their state;
    /// their triggers are checked against the table (see [`CaptureError::Drift`]).
    pub fn install(
        mut conn: Connection,
        tables: &[String],
        repair: bool,
    ) -> Result<Self, CaptureError> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(SCHEMA_SQL)?;
        tx.execute_batch(crate::snapshot::SQL)?;
        // The changelog's readers name a0 and a1 (markers) even when no table is captured yet.
        triggers::widen_changelog(&tx, 0)?;
        let (names, skipped) = adopt::tables_at_start(&tx, tables)?;
        let mut captured = HashMap::new();
        for name in &names {
            let shape = TableShape::read(&tx, name)?;
            let columns = shape.column_names();
            let existing: Option<(i64, String)> = tx
                .query_row(
                    "SELECT id, columns FROM _barista_tables WHERE name = ?1",
                    [name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map(Some)
                .or_else(|e| {
                    if e == rusqlite::Error::QueryReturnedNoRows {
                        Ok(None)
                    } else {
                        Err(e)
                    }
                })?;
            triggers::widen_changelog(&tx, columns.len())?;
            let id = match existing {
                Some((id, was)) => {
                    let was: Vec<String> = serde_json::from_str(&was).unwrap_or_default();
                    let drifted = was != columns;
                    let lost_triggers = !triggers::installed(&tx, id)?;
                    if drifted || lost_triggers {
                        if !repair {
                            return Err(if drifted {
                                CaptureError::Drift {
                                    table: name.clone(),
                                    was,
                                    now: columns,
                                }
                            } else {
                                CaptureError::TriggersMissing {
                                    table: name.clone(),
                                }
                            });
                        }
                        tracing::warn!(table = %name, ?was, now = ?columns, "re-creating capture triggers and re-publishing the table as a snapshot");
                        triggers::record_columns(&tx, id, &columns)?;
                        // Changes still in the changelog were captured with the old columns: a
                        // marker tells the reader so. Columns can only have been added behind
                        // our back (SQLite refuses to drop one a trigger names), so the old
                        // shape is the new one restricted to the old names.
                        if drifted {
                            let old = shape.restricted_to(&was);
                            triggers::record_schema_change(&tx, id, &old, &shape)?;
                        }
                        // The rows as they are now, after the marker and after the new
                        // triggers, in chunks (see crate::snapshot): whatever was written while
                        // the triggers were blind reaches Kafka this way, and at its end
                        // followers delete the keys the leader no longer has.
                        let snap = crate::snapshot::begin(&tx, id)?;
                        tracing::info!(table = %name, snapshot = snap, "repair snapshot started");
                    }
                    id
                }
                None => {
                    tx.execute(
                        "INSERT INTO _barista_tables(name, columns) VALUES (?1, ?2)",
                        params![name, triggers::columns_json(&columns)],
                    )?;
                    let id = tx.last_insert_rowid();
                    match crate::snapshot::first(&tx, id, name, &columns)? {
                        Some(rows) => tracing::info!(table = %name, rows, "snapshot taken"),
                        None => tracing::info!(table = %name, "incremental snapshot started"),
                    }
                    id
                }
            };
            triggers::replace(&tx, id, name, &columns)?;
            captured.insert(
                id,
                CapturedTable {
                    id,
                    schemas: Arc::new(TableSchemas::derive(shape)?),
                },
            );
        }
        let history = load_history(&tx)?;
        let schema_version = schema_version(&tx)?;
        tx.commit()?;
        tracing::info!(tables = ?names, "capture installed");
        Ok(Capture {
            conn,
            tables: captured,
            history,
            schema_version,
            wanted: tables.to_vec(),
            adopted_version: schema_version,
            reported: skipped.keys().cloned().collect(),
            skipped,
            dropped: HashSet::new(),
            drops_version: schema_version,
            marks: Vec::new(),
            chunks: Default::default(),
        })
    }

    /// The leader connection (reads).
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The leader connection, for the snapshot module's short transactions.
    pub(crate) fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// The leader connection and the snapshot chunks not pruned yet.
    pub(crate) fn snapshot_parts(
        &mut self,
    ) -> (&mut Connection, &mut crate::snapshot::chunk::Pending) {
        (&mut self.conn, &mut self.chunks)
    }

    /// The captured tables by id.
    pub fn tables(&self) -> &HashMap<i64, CapturedTable> {
        &self.tables
    }

    /// The tables not captured now, with the reason ([`NO_PRIMARY_KEY`], [`NOT_LISTED`], …).
    pub fn skipped(&self) -> &BTreeMap<String, String> {
        &self.skipped
    }

    /// `PRAGMA data_version`: changes when another connection commits. Cheap
    /// enough to poll every millisecond.
    pub fn data_version(&self) -> Result<i64, CaptureError> {
        Ok(self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?)
    }

    /// The newest committed position (0 when nothing was ever captured).
    pub fn head(&self) -> Result<Position, CaptureError> {
        let max: Option<i64> =
            self.conn
                .query_row("SELECT max(position) FROM _barista_changelog", [], |r| {
                    r.get(0)
                })?;
        Ok(Position(max.unwrap_or(0)).max(self.acked()?))
    }

    /// Reads up to `limit` changelog rows with `after < position <= upto`, in
    /// order. Returns the changes and the last position scanned (rows of
    /// tables not captured now are scanned but not returned).
    pub fn read(
        &mut self,
        after: Position,
        upto: Position,
        limit: usize,
    ) -> Result<(Vec<ChangeRow>, Option<Position>), CaptureError> {
        // Disjoint borrows: the statement borrows the connection while markers update the
        // table schemas and their history.
        let (conn, tables, history, marks, chunks) = (
            &self.conn,
            &mut self.tables,
            &mut self.history,
            &mut self.marks,
            &self.chunks,
        );
        let mut stmt = conn.prepare_cached(
            "SELECT * FROM _barista_changelog WHERE position > ?1 AND position <= ?2 ORDER BY position LIMIT ?3",
        )?;
        let mut names: Vec<String> = Vec::new();
        let mut out = Vec::new();
        let mut scanned = None;
        let mut rows = stmt.query(params![after.0, upto.0, limit as i64])?;
        while let Some(r) = rows.next()? {
            if names.is_empty() {
                // Taken from the statement as its first step left it: a migration since the
                // cached statement was prepared widened the changelog, and SQLite re-prepares
                // `SELECT *` at that step, with the new columns (the names read before the
                // step would be the old ones, and the new columns would read as NULL).
                let stmt: &rusqlite::Statement<'_> = r.as_ref();
                names = stmt.column_names().map(|s| s.to_string()).collect();
            }
            let idx = |n: &str| names.iter().position(|c| c == n);
            let position = Position(r.get(0)?);
            scanned = Some(position);
            let table_id: i64 = r.get(1)?;
            let op_code: i64 = r.get(2)?;
            if op_code == OP_SNAPSHOT_START || op_code == OP_SNAPSHOT_END {
                // Not a change: the table's content is being (re)copied; see crate::snapshot.
                if tables.contains_key(&table_id) {
                    marks.push(if op_code == OP_SNAPSHOT_START {
                        Mark::SnapshotStart(position, table_id)
                    } else {
                        Mark::SnapshotEnd(position, table_id)
                    });
                }
                continue;
            }
            if op_code == crate::takeover::OP_TAKEOVER {
                // Not a change: the position a promoted replica was at (crate::takeover).
                continue;
            }
            if op_code == OP_SNAPSHOT_CHUNK {
                // A snapshot chunk's high watermark: its rows, held in memory, take the
                // positions it reserved just below it (see crate::snapshot::chunk).
                match chunks.at(position.0).filter(|c| c.tbl == table_id) {
                    Some(chunk) => {
                        let first = position.0 - chunk.rows.len() as i64;
                        for (i, row) in chunk.rows.iter().enumerate() {
                            let Some(row) = row else { continue };
                            let at = Position(first + i as i64);
                            let Some(schemas) = schemas_at(tables, history, table_id, at) else {
                                break;
                            };
                            out.push(ChangeRow {
                                position: at,
                                table_id,
                                op: Op::Read,
                                before: None,
                                after: Some(row.clone()),
                                schemas,
                            });
                        }
                    }
                    None => {
                        tracing::debug!(position = %position, table_id, "a snapshot chunk read by an earlier run: skipped (it is read again)")
                    }
                }
                continue;
            }
            if op_code == OP_DROP {
                // Not a change: see [`Capture::drops_between`].
                marks.push(Mark::Drop(position, table_id));
                continue;
            }
            if op_code == OP_SCHEMA_CHANGE {
                // A migration committed here: rows after it carry the new columns. Known
                // markers (loaded at start, or seen before a rewind) change nothing.
                let known = history
                    .get(&table_id)
                    .is_some_and(|m| m.iter().any(|(at, _)| *at == position));
                if tables.contains_key(&table_id) {
                    marks.push(Mark::Shape(position, table_id));
                }
                if let Some(table) = tables.get_mut(&table_id).filter(|_| !known) {
                    let shape = |side: &str| -> Result<Arc<TableSchemas>, CaptureError> {
                        let text: String = r.get(idx(side).unwrap_or(usize::MAX))?;
                        Ok(Arc::new(TableSchemas::derive(TableShape::from_json(
                            &text,
                        )?)?))
                    };
                    let (before, after) = (shape("a0")?, shape("a1")?);
                    tracing::info!(position = %position, table = %after.shape.name, columns = ?after.shape.column_names(), "schema change");
                    history
                        .entry(table_id)
                        .or_default()
                        .push((position, before));
                    table.schemas = after;
                }
                continue;
            }
            let Some(schemas) = schemas_at(tables, history, table_id, position) else {
                // A table captured by an earlier configuration but not now: its
                // changes are skipped on purpose, and said so.
                tracing::debug!(
                    position = %position,
                    table_id,
                    "change of a table not captured now, skipped"
                );
                continue;
            };
            let width = schemas.shape.columns.len();
            let image = |side: &str| -> rusqlite::Result<Vec<SqlValue>> {
                (0..width)
                    .map(|i| match idx(&format!("{side}{i}")) {
                        Some(c) => r.get_ref(c).map(SqlValue::from),
                        None => Ok(SqlValue::Null),
                    })
                    .collect()
            };
            let (op, before, after) = match op_code {
                OP_INSERT => (Op::Create, None, Some(image("a")?)),
                OP_UPDATE => (Op::Update, Some(image("b")?), Some(image("a")?)),
                OP_DELETE => (Op::Delete, Some(image("b")?), None),
                _ => (Op::Read, None, Some(image("a")?)),
            };
            out.push(ChangeRow {
                position,
                table_id,
                op,
                before,
                after,
                schemas,
            });
        }
        Ok((out, scanned))
    }

    /// Number of rows still in the changelog.
    pub fn backlog(&self) -> Result<i64, CaptureError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM _barista_changelog", [], |r| r.get(0))?)
    }
}
