//! `producer verify`: each captured table's checksum recomputed from the leader file and
//! compared with the one the producer stored with the acknowledged position. A difference
//! means a row changed without the capture triggers seeing it (a hand edit with the triggers
//! dropped, a restored backup, a bug), so followers hold other rows than the leader.
//!
//! Reads: the leader file, in one read transaction. Writes: nothing.

use std::fmt;

use barista_schemas::checksum::{from_wire, to_wire, RowHasher};
use barista_schemas::envelope::RowShape;
use barista_schemas::{Position, TableSchemas, TableShape};
use rusqlite::Connection;

use super::recompute::{sum_at, SumAt};
use crate::capture::CaptureError;
use crate::triggers;

/// What `producer verify` found for one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The recomputed sum equals the stored one.
    Ok {
        /// The sum (i64 bits, as stored).
        sum: i64,
        /// The position it is as of.
        position: Position,
    },
    /// They differ.
    Mismatch {
        /// Recomputed from the leader file's rows (i64 bits).
        leader_file: i64,
        /// Stored by the producer (i64 bits).
        stored: i64,
        /// The position both are as of.
        position: Position,
    },
    /// Nothing to compare, and why.
    Unknown(String),
}

/// One table's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableVerdict {
    /// The leader table.
    pub table: String,
    /// What was found.
    pub verdict: Verdict,
}

impl fmt::Display for TableVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.verdict {
            Verdict::Ok { sum, position } => {
                write!(f, "{}: ok sum={sum} position={position}", self.table)
            }
            Verdict::Mismatch {
                leader_file,
                stored,
                position,
            } => write!(
                f,
                "{}: MISMATCH leader-file={leader_file} stored={stored} position={position}",
                self.table
            ),
            Verdict::Unknown(why) => write!(f, "{}: not verified ({why})", self.table),
        }
    }
}

/// Why `producer verify` cannot look at a file at all.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The file is not a leader barista captured (wrong path?): bad usage.
    #[error("{0} is not a leader database barista captured (no _barista_tables): wrong file?")]
    NotALeader(String),
    /// Reading it failed.
    #[error(transparent)]
    Capture(#[from] CaptureError),
}

impl From<rusqlite::Error> for VerifyError {
    fn from(e: rusqlite::Error) -> Self {
        VerifyError::Capture(e.into())
    }
}

/// Verifies every captured table of the leader open on `conn`, in one read transaction, in
/// table name order.
pub fn verify(conn: &Connection, file: &str) -> Result<Vec<TableVerdict>, VerifyError> {
    let tx = conn.unchecked_transaction()?;
    if !triggers::capture_installed(&tx)? {
        return Err(VerifyError::NotALeader(file.to_owned()));
    }
    let has_sums: bool = tx.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = '_barista_checksums'",
        [],
        |r| r.get(0),
    )?;
    let tables: Vec<(i64, String)> = tx
        .prepare("SELECT id, name FROM _barista_tables WHERE name NOT LIKE '\\_barista\\_dropped\\_%' ESCAPE '\\' ORDER BY name")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (id, table) in tables {
        let verdict = one(&tx, id, &table, has_sums)?;
        out.push(TableVerdict { table, verdict });
    }
    tx.commit()?;
    Ok(out)
}

fn one(conn: &Connection, id: i64, table: &str, has_sums: bool) -> Result<Verdict, VerifyError> {
    let stored: Option<(i64, i64)> = if has_sums {
        rusqlite::OptionalExtension::optional(conn.query_row(
            "SELECT sum, position FROM _barista_checksums WHERE tbl = ?1",
            [table],
            |r| Ok((r.get(0)?, r.get(1)?)),
        ))?
    } else {
        None
    };
    let Some((stored, position)) = stored else {
        return Ok(Verdict::Unknown(
            "no stored checksum: the producer stores one with each acknowledged position; \
             start it (with checksums on) and let Kafka acknowledge a change"
                .into(),
        ));
    };
    let position = Position(position);
    if !triggers::installed(conn, id)? {
        return Ok(Verdict::Unknown(
            "its capture triggers are missing (see `producer --help`, --repair-triggers)".into(),
        ));
    }
    let shape = match TableShape::read(conn, table) {
        Ok(s) => s,
        Err(e) => return Ok(Verdict::Unknown(format!("cannot read the table: {e}"))),
    };
    let schemas = TableSchemas::derive(shape).map_err(CaptureError::from)?;
    let hasher = RowHasher::new(
        &RowShape::from_value_schema(&schemas.value_json).map_err(CaptureError::from)?,
    );
    Ok(match sum_at(conn, id, position, &schemas.shape, &hasher)? {
        SumAt::Known(sum) if sum == from_wire(stored) => Verdict::Ok {
            sum: stored,
            position,
        },
        SumAt::Known(sum) => Verdict::Mismatch {
            leader_file: to_wire(sum),
            stored,
            position,
        },
        SumAt::Unknown(why) => Verdict::Unknown(why),
    })
}
