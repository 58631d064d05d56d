//! Takeover, on the database file: the leader's epoch, turning a stopped follower's replica
//! into a leader (`producer --promote`), and the report of what a replaced leader committed
//! that never reached Kafka (`producer --fenced-report`).
//!
//! Positions continue across a takeover: the promoted file's changelog gets a takeover marker
//! at the replica's position P, so the capture triggers number the first new change P + 1 (they
//! take `max(position) + 1`, see changelog.sql). Tokens and `min_position` from before the
//! takeover therefore keep their meaning.
//!
//! Reads and writes: the replica's bookkeeping (`_barista_position`, `_barista_offsets`, …,
//! dropped by the promotion), the leader's (`_barista_state`, `_barista_changelog`,
//! `_barista_tables`, `_barista_partitions`), the replicated tables (rebuilt to the leader's
//! declared columns).

use std::collections::HashMap;

use barista_schemas::envelope::RowShape;
use barista_schemas::{Position, TableShape};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::triggers::{self, quote, OP_DELETE, OP_INSERT, OP_SNAPSHOT, OP_UPDATE};

/// Changelog op of the takeover marker: not a change; it holds the position the promoted
/// replica was at, so that numbering continues after it. Kept beside the other op codes.
pub use crate::triggers::OP_TAKEOVER;

/// The replica's bookkeeping, replaced by the leader's at promotion.
const REPLICA_TABLES: &[&str] = &[
    "_barista_offsets",
    "_barista_position",
    "_barista_skipped",
    "_barista_checksums",
    "_barista_diverged",
    "_barista_replica_snapshots",
    "_barista_replica_snapshot_seen",
    "_barista_fence",
];

/// Why a promotion was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    /// The file has no replica position: not a follower's replica.
    #[error("{0} is not a follower's replica (no _barista_position); --promote turns a replica into a leader")]
    NotAReplica(String),
    /// The file already has a changelog.
    #[error("{0} is already a leader (it has a _barista_changelog); start the producer without --promote")]
    AlreadyALeader(String),
    /// SQLite.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// A table's columns could not be read.
    #[error(transparent)]
    Contract(#[from] barista_schemas::ContractError),
}

/// A promoted replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promotion {
    /// The new epoch.
    pub epoch: i64,
    /// The first position of the new epoch: the replica's position + 1.
    pub takeover: Position,
}

/// A `_barista_state` value.
fn state<T: rusqlite::types::FromSql>(conn: &Connection, key: &str) -> rusqlite::Result<Option<T>> {
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE name = '_barista_state'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(None);
    }
    conn.query_row(
        "SELECT value FROM _barista_state WHERE key = ?1",
        [key],
        |r| r.get(0),
    )
    .optional()
}

/// The leader's epoch (`_barista_state` key `epoch`): 0 until the file is promoted.
pub fn epoch(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(state(conn, "epoch")?.unwrap_or(0))
}

/// The newest changelog position: what `--drain` waits for Kafka to acknowledge.
pub fn head(conn: &Connection) -> rusqlite::Result<Position> {
    conn.query_row(
        "SELECT coalesce(max(position), 0) FROM _barista_changelog",
        [],
        |r| r.get(0),
    )
    .map(Position)
}

/// The epoch-change record this leader still has to publish: its first position, set by the
/// promotion and cleared once Kafka acknowledged the record.
pub fn pending_takeover(conn: &Connection) -> rusqlite::Result<Option<Position>> {
    Ok(state::<i64>(conn, "takeover_pending")?.map(Position))
}

/// Kafka acknowledged the epoch-change record.
pub fn takeover_published(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM _barista_state WHERE key = 'takeover_pending'",
        [],
    )?;
    Ok(())
}

/// The replica's position, if `conn` is a follower's replica.
pub fn replica_position(conn: &Connection) -> rusqlite::Result<Option<Position>> {
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE name = '_barista_position'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(None);
    }
    Ok(Some(Position(conn.query_row(
        "SELECT coalesce(max(position), 0) FROM _barista_position",
        [],
        |r| r.get(0),
    )?)))
}

/// The epoch the replica's follower knew last (its fence), 0 when none.
pub fn replica_epoch(conn: &Connection) -> rusqlite::Result<i64> {
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE name = '_barista_fence'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(0);
    }
    conn.query_row(
        "SELECT coalesce(max(epoch), 0) FROM _barista_fence",
        [],
        |r| r.get(0),
    )
}

/// Turns the replica in `conn` into a leader of epoch `epoch`, in ONE transaction: each
/// replicated table rebuilt with the leader's declared columns (`shapes`, from the registry's
/// latest value schemas: NOT NULL and DEFAULT are not kept by a replica, and the derived Avro
/// schemas must be the ones already registered), the replica's bookkeeping replaced by the
/// leader's, the capture triggers installed, a takeover marker at the replica's position, the
/// acknowledged position set to it, and each partition's last position (the `prev_position`
/// chain) taken from the replica's offsets. `commits` (the commits topic) is left out of those.
pub fn promote_file(
    conn: &mut Connection,
    file: &str,
    epoch: i64,
    shapes: &HashMap<String, RowShape>,
    commits: &str,
) -> Result<Promotion, PromoteError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let Some(position) = replica_position(&tx)? else {
        return Err(PromoteError::NotAReplica(file.to_owned()));
    };
    let has_changelog: bool = tx.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE name = '_barista_changelog'",
        [],
        |r| r.get(0),
    )?;
    if has_changelog {
        return Err(PromoteError::AlreadyALeader(file.to_owned()));
    }
    let tails: Vec<(String, i64, i64)> = tx
        .prepare(
            "SELECT topic, partition, applied_position FROM _barista_offsets \
             WHERE topic != ?1 AND applied_position > 0",
        )?
        .query_map([commits], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for t in REPLICA_TABLES {
        tx.execute_batch(&format!("DROP TABLE IF EXISTS {t}"))?;
    }
    for name in TableShape::list_tables(&tx)? {
        if let Some(shape) = shapes.get(&name) {
            rebuild(&tx, &name, shape)?;
        }
    }
    tx.execute_batch(crate::capture::SCHEMA_SQL)?;
    tx.execute_batch(crate::snapshot::SQL)?;
    triggers::widen_changelog(&tx, 0)?;
    for name in TableShape::list_tables(&tx)? {
        let shape = TableShape::read(&tx, &name)?;
        if shape.pk_indexes().is_empty() {
            continue;
        }
        let columns = shape.column_names();
        tx.execute(
            "INSERT INTO _barista_tables(name, columns) VALUES (?1, ?2)",
            params![name, triggers::columns_json(&columns)],
        )?;
        let id = tx.last_insert_rowid();
        triggers::widen_changelog(&tx, columns.len())?;
        triggers::replace(&tx, id, &name, &columns)?;
    }
    tx.execute(
        "INSERT INTO _barista_changelog(position, tbl, op) VALUES (?1, 0, ?2)",
        params![position.0, OP_TAKEOVER],
    )?;
    let takeover = position.next();
    for (key, value) in [
        ("acked", position.0),
        ("epoch", epoch),
        ("takeover", takeover.0),
        ("takeover_pending", takeover.0),
    ] {
        tx.execute(
            "INSERT INTO _barista_state(key, value) VALUES (?1, ?2) \
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
    }
    for (topic, partition, last) in tails {
        tx.execute(
            "INSERT INTO _barista_partitions(topic, partition, last_position) VALUES (?1, ?2, ?3)",
            params![topic, partition, last],
        )?;
    }
    tx.commit()?;
    Ok(Promotion { epoch, takeover })
}

/// Re-creates `name` with the leader's declared columns (`shape`), rows kept; replica columns
/// the leader no longer has are left out.
fn rebuild(conn: &Connection, name: &str, shape: &RowShape) -> rusqlite::Result<()> {
    let have: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info(?1)")?
        .query_map([name], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let cols: Vec<String> = shape
        .columns
        .iter()
        .map(|c| {
            let mut d = format!("{} {}", quote(&c.name), c.decl_type);
            if !c.nullable {
                d.push_str(" NOT NULL");
            }
            if let Some(v) = &c.default {
                d.push_str(&format!(" DEFAULT {v}"));
            }
            d
        })
        .collect();
    let pk: Vec<String> = shape
        .pk_indexes()
        .iter()
        .map(|&i| quote(&shape.columns[i].name))
        .collect();
    let select: Vec<String> = shape
        .columns
        .iter()
        .map(
            |c| match have.iter().any(|h| h.eq_ignore_ascii_case(&c.name)) {
                true => quote(&c.name),
                false => c.default.clone().unwrap_or_else(|| "NULL".into()),
            },
        )
        .collect();
    let (t, tmp) = (quote(name), quote(&format!("_barista_promote_{name}")));
    conn.execute_batch(&format!(
        "CREATE TABLE {tmp} ({}, PRIMARY KEY ({}));
         INSERT INTO {tmp} SELECT {} FROM {t};
         DROP TABLE {t};
         ALTER TABLE {tmp} RENAME TO {t};",
        cols.join(", "),
        pk.join(", "),
        select.join(", "),
    ))
}

/// What a replaced leader committed after the takeover position: never published as part of
/// the new leader's history, and never merged into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencedWrites {
    /// Changes (inserts, updates, deletes, snapshot rows) at or after the takeover position.
    pub changes: i64,
    /// Their first and last position.
    pub range: Option<(Position, Position)>,
    /// Of them, how many Kafka acknowledged as sent (events past the last whole commit group:
    /// sent, but followers never applied them).
    pub sent_unapplied: i64,
    /// This leader's acknowledged position.
    pub acked: Position,
}

/// Counts the changes in this (old) leader's changelog from `takeover` on.
pub fn fenced_writes(conn: &Connection, takeover: Position) -> rusqlite::Result<FencedWrites> {
    let (changes, first, last): (i64, Option<i64>, Option<i64>) = conn.query_row(
        "SELECT count(*), min(position), max(position) FROM _barista_changelog \
         WHERE position >= ?1 AND op IN (?2, ?3, ?4, ?5)",
        params![takeover.0, OP_INSERT, OP_UPDATE, OP_DELETE, OP_SNAPSHOT],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let acked = Position(state(conn, "acked")?.unwrap_or(0));
    let sent_unapplied: i64 = conn.query_row(
        "SELECT count(*) FROM _barista_changelog \
         WHERE position >= ?1 AND position <= ?2 AND op IN (?3, ?4, ?5, ?6)",
        params![
            takeover.0,
            acked.0,
            OP_INSERT,
            OP_UPDATE,
            OP_DELETE,
            OP_SNAPSHOT
        ],
        |r| r.get(0),
    )?;
    Ok(FencedWrites {
        changes,
        range: first.zip(last).map(|(a, b)| (Position(a), Position(b))),
        sent_unapplied,
        acked,
    })
}

#[cfg(test)]
#[path = "takeover/tests.rs"]
mod tests;
