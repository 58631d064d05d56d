//! Which schemas a change was captured with: per table, the schema-change markers still in
//! the changelog and the schemas rows before each were captured with. Capture loads them at
//! start and adds each marker it reads.
//!
//! Reads: schema-change markers in `_barista_changelog`. Writes: nothing.

use std::collections::HashMap;
use std::sync::Arc;

use barista_schemas::{Position, TableSchemas, TableShape};
use rusqlite::Connection;

use super::{CaptureError, CapturedTable, OP_SCHEMA_CHANGE};

/// Per table, the schema-change markers still in the changelog: (marker position, the schemas
/// rows before it were captured with), oldest first.
pub(super) type SchemaHistory = HashMap<i64, Vec<(Position, Arc<TableSchemas>)>>;

/// The schemas a change of `table_id` at `position` was captured with: those before the first
/// later schema-change marker, else the current ones.
pub(super) fn schemas_at(
    tables: &HashMap<i64, CapturedTable>,
    history: &SchemaHistory,
    table_id: i64,
    position: Position,
) -> Option<Arc<TableSchemas>> {
    let current = &tables.get(&table_id)?.schemas;
    Some(
        history
            .get(&table_id)
            .and_then(|markers| markers.iter().find(|(at, _)| *at > position))
            .map_or_else(|| current.clone(), |(_, before)| before.clone()),
    )
}

/// The schema-change markers in the changelog, per table: (position, schemas before it).
pub(super) fn load_history(conn: &Connection) -> Result<SchemaHistory, CaptureError> {
    let mut stmt = conn.prepare(
        "SELECT position, tbl, a0 FROM _barista_changelog WHERE op = ?1 ORDER BY position",
    )?;
    let markers = stmt
        .query_map([OP_SCHEMA_CHANGE], |r| {
            Ok((
                Position(r.get(0)?),
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut history: SchemaHistory = HashMap::new();
    for (position, table, before) in markers {
        let before = Arc::new(TableSchemas::derive(TableShape::from_json(&before)?)?);
        history.entry(table).or_default().push((position, before));
    }
    Ok(history)
}
