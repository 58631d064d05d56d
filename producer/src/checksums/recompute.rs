//! A table's checksum recomputed from the leader itself, as of a position: the sum over the
//! rows it has now, minus the effect of every change of it the changelog still holds after
//! that position. Used where no kept sum can be trusted (a leader captured by an older
//! barista, a gap, a shape change) and by `producer verify`.
//!
//! Reads: a captured table's rows and its `_barista_changelog` entries, inside the caller's
//! read transaction (one snapshot of both). Writes: nothing.

use barista_schemas::checksum::{apply, RowHasher};
use barista_schemas::{Position, SqlValue, TableShape};
use rusqlite::{Connection, OptionalExtension};

use crate::capture::{CaptureError, OP_SCHEMA_CHANGE};
use crate::triggers::{self, quote, OP_DELETE, OP_DROP, OP_INSERT, OP_UPDATE};

/// A recomputed checksum, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SumAt {
    /// The wrapping sum of the row hashes as of the position.
    Known(u64),
    /// Not computable from the leader now; the reason, for logs and `producer verify`.
    Unknown(String),
}

/// Table `id` (shaped `shape` just after `position`) as of `position`: the sum of `hasher`
/// over its rows now, minus (h(after) − h(before)) of each change of it after `position`
/// (a snapshot read changes nothing: it copies a row the table has). Run it inside one read transaction.
///
/// Unknown when the rows now are not in `shape`, or the changes after `position` are not all
/// in it: a schema change or a drop of the table after `position`, other columns now, or
/// its triggers gone (the table under that name is not the captured one).
pub fn sum_at(
    conn: &Connection,
    id: i64,
    position: Position,
    shape: &TableShape,
    hasher: &RowHasher,
) -> Result<SumAt, CaptureError> {
    let later: Option<(i64, i64)> = conn
        .query_row(
            "SELECT position, op FROM _barista_changelog WHERE tbl = ?1 AND position > ?2 \
             AND op IN (?3, ?4) ORDER BY position LIMIT 1",
            rusqlite::params![id, position.0, OP_SCHEMA_CHANGE, OP_DROP],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((at, op)) = later {
        let what = if op == OP_DROP {
            "a drop"
        } else {
            "a schema change"
        };
        return Ok(SumAt::Unknown(format!(
            "{what} of the table at position {at} is not behind position {position} yet"
        )));
    }
    // Table `id` itself, not another one created since under its name (whose drop marker
    // for `id` is not recorded yet): `id`'s triggers are still on it.
    if !triggers::installed(conn, id)? {
        return Ok(SumAt::Unknown("its capture triggers are missing".into()));
    }
    match TableShape::read(conn, &shape.name) {
        Ok(now) if now == *shape => {}
        Ok(_) => {
            return Ok(SumAt::Unknown(
                "the table's columns are not the ones captured at that position".into(),
            ))
        }
        Err(e) => return Ok(SumAt::Unknown(format!("the table cannot be read: {e}"))),
    }
    let width = shape.columns.len();
    let cols: Vec<String> = shape.columns.iter().map(|c| quote(&c.name)).collect();
    let mut sum = 0u64;
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM {}",
        cols.join(", "),
        quote(&shape.name)
    ))?;
    let mut rows = stmt.query([])?;
    let mut row = Vec::with_capacity(width);
    while let Some(r) = rows.next()? {
        row.clear();
        for i in 0..width {
            row.push(SqlValue::from(r.get_ref(i)?));
        }
        sum = sum.wrapping_add(hasher.hash(&row));
    }
    let slots = |side: &str| (0..width).map(|i| format!("{side}{i}")).collect::<Vec<_>>();
    let mut stmt = conn.prepare(&format!(
        "SELECT op, {}, {} FROM _barista_changelog WHERE tbl = ?1 AND position > ?2 \
         AND op IN ({OP_INSERT}, {OP_UPDATE}, {OP_DELETE})",
        slots("a").join(", "),
        slots("b").join(", ")
    ))?;
    let mut rows = stmt.query(rusqlite::params![id, position.0])?;
    while let Some(r) = rows.next()? {
        let op: i64 = r.get(0)?;
        let image = |from: usize| -> rusqlite::Result<Vec<SqlValue>> {
            (from..from + width)
                .map(|c| r.get_ref(c).map(SqlValue::from))
                .collect()
        };
        let after = (op != OP_DELETE).then(|| image(1)).transpose()?;
        let before = (op == OP_UPDATE || op == OP_DELETE)
            .then(|| image(1 + width))
            .transpose()?;
        // Undone: the change's after image out, its before image back in.
        sum = apply(
            sum,
            after.as_deref().map(|a| hasher.hash(a)),
            before.as_deref().map(|b| hasher.hash(b)),
        );
    }
    Ok(SumAt::Known(sum))
}
