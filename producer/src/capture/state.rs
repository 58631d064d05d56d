//! Capture's acknowledgement bookkeeping in the leader: `_barista_state` (the acknowledged
//! position, and the commit group it lies inside when a producer stopped mid-group) and
//! `_barista_partitions`, read at start and written by [`Capture::prune`], which also deletes
//! the changelog rows up to the prune point (see [`crate::ack`] for what these mean).
//!
//! Reads and writes: `_barista_state`, `_barista_partitions`, `_barista_changelog` (deletes),
//! `_barista_checksums` (through [`super::sums::store`]).

use std::collections::HashMap;

use barista_schemas::Position;
use rusqlite::types::FromSql;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{sums, Capture, CaptureError};
use crate::ack::{Acked, OpenGroup, TopicPartition};

impl Capture {
    /// Every change up to this position is acknowledged by Kafka.
    pub fn acked(&self) -> Result<Position, CaptureError> {
        let v: Option<i64> = state_value(&self.conn, "acked")?;
        Ok(Position(v.unwrap_or(0)))
    }

    /// The group the acknowledged position lies inside, if a producer stopped mid-group
    /// (see [`crate::ack`]): `_barista_state` key `group`, JSON. An unreadable value is
    /// ignored: the producer then starts the group's rest as a group of its own, which is
    /// safe but not one group on followers.
    pub(crate) fn open_group(&self) -> Result<Option<OpenGroup>, CaptureError> {
        let v: Option<String> = state_value(&self.conn, "group")?;
        Ok(v.and_then(|v| match serde_json::from_str(&v) {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!(error = %e, "the stored open commit group is unreadable: ignored");
                None
            }
        }))
    }

    /// Last acknowledged position per (topic, partition).
    pub fn acked_partitions(&self) -> Result<HashMap<TopicPartition, Position>, CaptureError> {
        let mut stmt = self
            .conn
            .prepare("SELECT topic, partition, last_position FROM _barista_partitions")?;
        let rows = stmt
            .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), Position(r.get(2)?))))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Records that everything up to `acked.position` is in Kafka, and the group it lies
    /// inside if any, and deletes the changelog rows up to the prune point (the end of the
    /// last group acknowledged whole: [`Acked::prune_point`]), keeping the newest row (see
    /// changelog.sql). With `sums` (the table checksums as of the prune point),
    /// `_barista_checksums` is replaced by them in the same transaction, so the stored sums
    /// and the prune point agree. An older instruction than the one recorded changes nothing.
    pub(crate) fn prune(
        &mut self,
        acked: &Acked,
        sums: Option<&[(String, u64)]>,
    ) -> Result<usize, CaptureError> {
        let (position, partitions) = (acked.position, &acked.partitions);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let recorded: Option<i64> = state_value(&tx, "acked")?;
        if recorded.is_some_and(|r| r > position.0) {
            return Ok(0);
        }
        tx.execute(
            "INSERT INTO _barista_state(key, value) VALUES ('acked', ?1) \
             ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
            [position.0],
        )?;
        match &acked.open {
            Some(g) => {
                let json = serde_json::to_string(g).unwrap_or_default();
                tx.execute(
                    "INSERT INTO _barista_state(key, value) VALUES ('group', ?1) \
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    [json],
                )?;
            }
            None => {
                tx.execute("DELETE FROM _barista_state WHERE key = 'group'", [])?;
            }
        }
        let prune_point = acked.prune_point();
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO _barista_partitions(topic, partition, last_position) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(topic, partition) DO UPDATE SET last_position = max(last_position, excluded.last_position)",
            )?;
            for ((topic, partition), last) in partitions {
                stmt.execute(params![topic, partition, last.0])?;
            }
        }
        if let Some(sums) = sums {
            sums::store(&tx, prune_point, sums)?;
        }
        // Snapshot chunks Kafka has (and followers will never be sent again): their
        // progress, and their rows out of memory.
        self.chunks.acknowledge(&tx, prune_point, true)?;
        let n = tx.execute(
            "DELETE FROM _barista_changelog WHERE position <= ?1 \
             AND position < (SELECT max(position) FROM _barista_changelog)",
            [prune_point.0],
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// True when DDL committed since the last poll looked for drops, drift and new tables
    /// (`PRAGMA schema_version` moved past what they saw).
    pub(crate) fn ddl_unseen(&self) -> Result<bool, CaptureError> {
        let now = super::schema_version(&self.conn)?;
        Ok([
            self.schema_version,
            self.adopted_version,
            self.drops_version,
        ]
        .iter()
        .any(|v| *v != now))
    }
}

/// The value stored in `_barista_state` under `key`, if any.
fn state_value<T: FromSql>(conn: &Connection, key: &str) -> rusqlite::Result<Option<T>> {
    conn.query_row(
        "SELECT value FROM _barista_state WHERE key = ?1",
        [key],
        |r| r.get(0),
    )
    .optional()
}
