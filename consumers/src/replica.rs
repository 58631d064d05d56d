//! Apply, the last stage: writes decoded changes to the replica SQLite file,
//! together with the Kafka offsets and the leader position they bring the
//! replica to, in ONE transaction. A crash either keeps all of it or none of
//! it, and the follower restarts from the stored offsets: exactly-once in effect.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use barista_schemas::envelope::{DecodedChange, RowShape};
use barista_schemas::{Position, SqlValue};
use rusqlite::{params, params_from_iter, Connection};

use crate::chain::TopicPartition;
use crate::checksums::{Divergence, LeaderSum, Sums};

use barista_schemas::snapshot::REPLICA_SQL;

use crate::table_snapshots as snapshots;

/// The statements of the apply transaction: rows with their checksums, and
/// progress.
#[path = "replica_write.rs"]
mod write;
use write::{write_changes, write_progress};

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Stored progress of a replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// (topic, partition) → (next offset, last applied position).
    pub offsets: HashMap<TopicPartition, (i64, Position)>,
    /// Every leader change up to here is applied.
    pub position: Position,
    /// Leader clock at `position`.
    pub leader_ts_ms: i64,
}

/// One transaction's worth of work.
#[derive(Debug, Default)]
pub struct Batch {
    /// Changes in leader position order.
    pub changes: Vec<DecodedChange>,
    /// Offsets and applied positions to store.
    pub offsets: Vec<(TopicPartition, (i64, Position))>,
    /// The replica's new position and its leader time.
    pub position: Option<(Position, i64)>,
    /// Tables dropped on the leader: (position, name), in position order.
    pub drops: Vec<(Position, String)>,
    /// The leader's checksums to compare with the replica's at commit.
    pub checksums: Vec<LeaderSum>,
    /// Table snapshots that start or end in these groups (see [`crate::table_snapshots`]).
    pub snapshots: Vec<barista_schemas::TableSnapshot>,
}

/// A change an operator skipped: a row of `_barista_skipped`.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedChange {
    /// Where the message is.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The leader position it claimed.
    pub position: Position,
    /// The writer schema id in its frame, if framed.
    pub schema_id: Option<u32>,
    /// The message key (the row's primary key, Avro-encoded) as sent.
    pub key: Option<Vec<u8>>,
    /// Why it could not be applied.
    pub error: String,
    /// The operator's reason.
    pub reason: String,
}

/// Statements prepared for one table under one writer shape.
struct TableSql {
    upsert: String,
    delete: String,
    pk: Vec<usize>,
}

/// A follower's replica database.
pub struct Replica {
    conn: Connection,
    /// Writer shapes already reconciled with the replica table.
    known: HashMap<usize, Arc<TableSql>>,
    /// Keeps the shapes alive so their addresses (the keys above) stay unique.
    shapes: Vec<Arc<RowShape>>,
    /// A write transaction is open: part of a commit group too large to hold
    /// in memory was applied ([`Replica::apply_partial`]); readers do not see
    /// it until [`Replica::apply`] commits the rest of the group.
    open: bool,
    /// Table checksums, kept in the apply transaction.
    sums: Sums,
    /// Recorded when a leader checksum differed (see [`Replica::divergence`]).
    divergence: Option<Divergence>,
}

impl Replica {
    /// Opens (creating if needed) a replica file in WAL mode, so readers never
    /// block the applier and always see a committed snapshot.
    pub fn open(path: &Path) -> rusqlite::Result<Replica> {
        Self::open_with(path, true)
    }

    /// [`Replica::open`], keeping table checksums or not. Without them the
    /// stored sums are forgotten, so that turning them on again recomputes
    /// them rather than trust sums the rows moved away from.
    pub fn open_with(path: &Path, checksums: bool) -> rusqlite::Result<Replica> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(REPLICA_SQL)?;
        conn.execute_batch(crate::table_snapshots::SQL)?;
        if !checksums {
            conn.execute_batch("DELETE FROM _barista_checksums")?;
        }
        let divergence = crate::checksums::recorded_divergence(&conn)?;
        Ok(Replica {
            conn,
            known: HashMap::new(),
            shapes: Vec::new(),
            open: false,
            sums: Sums::new(checksums),
            divergence,
        })
    }

    /// The replica differs from the leader: a commit record's checksum of a
    /// table did not match (recorded in `_barista_diverged`, so it survives
    /// a restart).
    pub fn divergence(&self) -> Option<&Divergence> {
        self.divergence.as_ref()
    }

    /// The replica's connection, for reads in the applier's own task
    /// (verification, benchmarks).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Reads the stored progress.
    pub fn progress(&self) -> rusqlite::Result<Progress> {
        let mut p = Progress::default();
        let mut stmt = self.conn.prepare(
            "SELECT topic, partition, next_offset, applied_position FROM _barista_offsets",
        )?;
        let rows = stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?))))?;
        for row in rows {
            let (k, v) = row?;
            p.offsets.insert(k, v);
        }
        if let Some((pos, ts)) = self
            .conn
            .query_row(
                "SELECT position, leader_ts_ms FROM _barista_position WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map(Some)
            .or_else(|e| {
                if e == rusqlite::Error::QueryReturnedNoRows {
                    Ok(None)
                } else {
                    Err(e)
                }
            })?
        {
            p.position = pos;
            p.leader_ts_ms = ts;
        }
        Ok(p)
    }

    /// Records a skipped change, durably before the chain releases what it
    /// held: in a transaction of its own, or, while part of a large group is
    /// open ([`Replica::apply_partial`]), in that one (committed, like the
    /// release, only with the rest of the group).
    pub fn record_skip(&mut self, s: &SkippedChange) -> rusqlite::Result<()> {
        let own = !self.open;
        if own {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
        }
        let r = self.conn.execute(
            "INSERT INTO _barista_skipped(topic, partition, offset, position, schema_id, message_key, \
             error, reason, replica_position, skipped_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, \
             coalesce((SELECT position FROM _barista_position WHERE id = 1), 0), \
             strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) \
             ON CONFLICT(topic, partition, position) DO UPDATE SET offset = excluded.offset, \
             error = excluded.error, reason = excluded.reason, skipped_at = excluded.skipped_at",
            params![
                s.topic,
                s.partition,
                s.offset,
                s.position,
                s.schema_id,
                s.key,
                s.error,
                s.reason
            ],
        );
        if !own {
            return r.map(drop);
        }
        match r.and_then(|_| self.conn.execute_batch("COMMIT")) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Every skipped position, per partition.
    pub fn skipped(&self) -> rusqlite::Result<Vec<(TopicPartition, Position)>> {
        self.conn
            .prepare("SELECT topic, partition, position FROM _barista_skipped")?
            .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?
            .collect()
    }

    /// Creates the table of a writer shape, or adds the columns it lacks.
    /// A column the writer no longer has stays in the replica and keeps its
    /// last values; new rows leave it NULL.
    fn reconcile(&mut self, shape: &Arc<RowShape>) -> rusqlite::Result<Arc<TableSql>> {
        let key = Arc::as_ptr(shape) as usize;
        if let Some(sql) = self.known.get(&key) {
            return Ok(sql.clone());
        }
        let t = quote(&shape.table);
        let existing: Vec<String> = self
            .conn
            .prepare("SELECT name FROM pragma_table_info(?1)")?
            .query_map([&shape.table], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let pk = shape.pk_indexes();
        if existing.is_empty() {
            let cols: Vec<String> = shape
                .columns
                .iter()
                .map(|c| format!("{} {}", quote(&c.name), c.decl_type))
                .collect();
            let pkc: Vec<String> = pk.iter().map(|&i| quote(&shape.columns[i].name)).collect();
            self.conn.execute_batch(&format!(
                "CREATE TABLE {t} ({}, PRIMARY KEY ({}))",
                cols.join(", "),
                pkc.join(", ")
            ))?;
            tracing::info!(table = %shape.table, "replica table created");
        } else {
            for c in &shape.columns {
                if !existing.iter().any(|e| e.eq_ignore_ascii_case(&c.name)) {
                    // The writer's default (a NOT NULL column's literal DEFAULT on the
                    // leader) fills the rows already here, as SQLite did on the leader.
                    let default = c
                        .default
                        .as_deref()
                        .map(|d| format!(" DEFAULT {d}"))
                        .unwrap_or_default();
                    self.conn.execute_batch(&format!(
                        "ALTER TABLE {t} ADD COLUMN {} {}{default}",
                        quote(&c.name),
                        c.decl_type
                    ))?;
                    tracing::info!(table = %shape.table, column = %c.name, "replica column added");
                }
            }
        }
        let names: Vec<String> = shape.columns.iter().map(|c| quote(&c.name)).collect();
        let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
        let pk_names: Vec<String> = pk.iter().map(|&i| names[i].clone()).collect();
        let set: Vec<String> = (0..names.len())
            .filter(|i| !pk.contains(i))
            .map(|i| format!("{n} = excluded.{n}", n = names[i]))
            .collect();
        let action = if set.is_empty() {
            "NOTHING".to_owned()
        } else {
            format!("UPDATE SET {}", set.join(", "))
        };
        let upsert = format!(
            "INSERT INTO {t} ({}) VALUES ({}) ON CONFLICT ({}) DO {action}",
            names.join(", "),
            marks.join(", "),
            pk_names.join(", ")
        );
        let where_: Vec<String> = pk_names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n} IS ?{}", i + 1))
            .collect();
        let delete = format!("DELETE FROM {t} WHERE {}", where_.join(" AND "));
        let sql = Arc::new(TableSql { upsert, delete, pk });
        self.known.insert(key, sql.clone());
        self.shapes.push(shape.clone());
        Ok(sql)
    }

    fn delete(&self, sql: &TableSql, row: &[SqlValue]) -> rusqlite::Result<()> {
        let key: Vec<&SqlValue> = sql.pk.iter().map(|&i| &row[i]).collect();
        self.conn
            .prepare_cached(&sql.delete)?
            .execute(params_from_iter(key))?;
        Ok(())
    }

    /// Applies a batch in one transaction: rows, offsets and position. If
    /// [`Replica::apply_partial`] opened a transaction, the batch completes
    /// and commits it. Upserts use `INSERT … ON CONFLICT DO UPDATE` (never
    /// `INSERT OR REPLACE`, which would delete and re-insert the row).
    pub fn apply(&mut self, batch: &Batch) -> rusqlite::Result<()> {
        if !batch.drops.is_empty() {
            return self.apply_with_drops(batch);
        }
        let sqls = self.reconcile_all(&batch.changes)?;
        self.begin()?;
        let r = snapshots::take_in(&self.conn, &batch.snapshots, &batch.changes)
            .and_then(|()| write_changes(&self.conn, &mut self.sums, &batch.changes, &sqls));
        self.commit(r, batch)
    }

    /// Ends the batch's transaction: its progress and COMMIT after `written`
    /// succeeded, else a rollback.
    fn commit(&mut self, written: rusqlite::Result<()>, batch: &Batch) -> rusqlite::Result<()> {
        let position = batch.position.map_or(Position::ZERO, |p| p.0);
        let r = written
            .and_then(|()| {
                snapshots::finish(&self.conn, &mut self.sums, &batch.snapshots, position)
            })
            .and_then(|()| write_progress(&self.conn, batch))
            .and_then(|()| self.sums.settle(&self.conn, &batch.checksums, position))
            .and_then(|d| self.conn.execute_batch("COMMIT").map(|()| d));
        match r {
            Ok(d) => {
                self.open = false;
                self.sums.end(true);
                if d.is_some() {
                    self.divergence = d;
                }
                Ok(())
            }
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    /// [`Replica::apply`] for a batch in which the leader dropped tables: the
    /// changes before each drop, the drop, then the rest, all in the one
    /// transaction (a table dropped and created again under its name comes
    /// back with only what followed the drop).
    fn apply_with_drops(&mut self, batch: &Batch) -> rusqlite::Result<()> {
        self.begin()?;
        let mut rest = &batch.changes[..];
        let mut r = snapshots::take_in(&self.conn, &batch.snapshots, &batch.changes);
        for (at, table) in &batch.drops {
            let n = rest.partition_point(|c| c.source.position < *at);
            r = self.write_reconciled(&rest[..n]).and_then(|()| {
                // Dropping invalidates what was reconciled for it.
                self.known.clear();
                self.conn
                    .execute_batch(&format!("DROP TABLE IF EXISTS {}", quote(table)))?;
                snapshots::dropped(&self.conn, table)?;
                self.sums.dropped(&self.conn, table)
            });
            if r.is_err() {
                break;
            }
            rest = &rest[n..];
        }
        let r = r.and_then(|()| self.write_reconciled(rest));
        self.commit(r, batch)
    }

    /// Reconciles and writes `changes` inside the open transaction.
    fn write_reconciled(&mut self, changes: &[DecodedChange]) -> rusqlite::Result<()> {
        let sqls = self.reconcile_all(changes)?;
        write_changes(&self.conn, &mut self.sums, changes, &sqls)
    }

    /// Applies changes of a commit group that is not complete yet, inside a
    /// write transaction left open: memory stays bounded however large the
    /// group (a snapshot of a big table is one group), and readers see none of
    /// it until [`Replica::apply`] commits the whole group. A crash rolls it
    /// back; the follower then reads the group again from the stored offsets.
    pub fn apply_partial(&mut self, changes: &[DecodedChange]) -> rusqlite::Result<()> {
        let sqls = self.reconcile_all(changes)?;
        self.begin()?;
        snapshots::take_in(&self.conn, &[], changes)
            .and_then(|()| write_changes(&self.conn, &mut self.sums, changes, &sqls))
            .inspect_err(|_| self.rollback())
    }

    /// Rolls back a partially applied group (a replaced leader's, see `crate::fence`).
    pub fn abandon_partial(&mut self) {
        self.rollback();
    }

    /// True while a partially applied group is uncommitted.
    pub fn is_open(&self) -> bool {
        self.open
    }

    fn reconcile_all(&mut self, changes: &[DecodedChange]) -> rusqlite::Result<Vec<Arc<TableSql>>> {
        let mut sqls = Vec::with_capacity(changes.len());
        for c in changes {
            match self.reconcile(&c.shape) {
                Ok(sql) => sqls.push(sql),
                Err(e) => {
                    self.rollback();
                    return Err(e);
                }
            }
        }
        Ok(sqls)
    }

    fn begin(&mut self) -> rusqlite::Result<()> {
        if !self.open {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.open = true;
            if let Err(e) = self.sums.begin(&self.conn) {
                self.rollback();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Rolls back an open transaction, and forgets what was reconciled: DDL
    /// run inside the transaction (a new table or column) is undone with it.
    fn rollback(&mut self) {
        if self.open {
            let _ = self.conn.execute_batch("ROLLBACK");
            self.open = false;
            self.known.clear();
            self.sums.end(false);
        }
    }

    /// The checksum side (unit tests).
    #[cfg(test)]
    pub(crate) fn sums_mut(&mut self) -> &mut Sums {
        &mut self.sums
    }

    /// Deletes by key outside a batch (tests).
    #[doc(hidden)]
    pub fn delete_row(&mut self, shape: &Arc<RowShape>, row: &[SqlValue]) -> rusqlite::Result<()> {
        let sql = self.reconcile(shape)?;
        self.delete(&sql, row)
    }
}

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;
