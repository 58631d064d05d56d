//! The writer shape a replica table's sum is taken under: stored as JSON beside the sum in
//! `_barista_checksums`, or read from the replica table itself when none is stored.

use barista_schemas::envelope::{RowColumn, RowShape};
use rusqlite::{Connection, OptionalExtension};

/// A shape as stored with its table's sum.
pub fn shape_json(shape: &RowShape) -> String {
    let cols: Vec<serde_json::Value> = shape
        .columns
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name, "decl_type": c.decl_type, "pk": c.pk,
                "nullable": c.nullable, "default": c.default,
            })
        })
        .collect();
    serde_json::json!({ "table": shape.table, "columns": cols }).to_string()
}

/// A stored shape back, or None when it does not parse.
pub fn shape_from_json(s: &str) -> Option<RowShape> {
    let v: serde_json::Value = serde_json::from_str(s).ok()?;
    let columns = v["columns"]
        .as_array()?
        .iter()
        .map(|c| {
            Some(RowColumn {
                name: c["name"].as_str()?.to_owned(),
                decl_type: c["decl_type"].as_str().unwrap_or_default().to_owned(),
                pk: c["pk"].as_u64()? as u32,
                nullable: c["nullable"].as_bool().unwrap_or(true),
                default: c["default"].as_str().map(str::to_owned),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(RowShape {
        table: v["table"].as_str()?.to_owned(),
        columns,
    })
}

/// The shape a table's sum is taken under: the stored one, else (a table
/// never written since checksums) the replica table's own columns.
pub fn stored_or_own_shape(conn: &Connection, table: &str) -> rusqlite::Result<Option<RowShape>> {
    let stored: Option<String> = conn
        .query_row(
            "SELECT shape FROM _barista_checksums WHERE tbl = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(shape) = stored.as_deref().and_then(shape_from_json) {
        return Ok(Some(shape));
    }
    let columns: Vec<RowColumn> = conn
        .prepare("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1)")?
        .query_map([table], |r| {
            Ok(RowColumn {
                name: r.get(0)?,
                decl_type: r.get(1)?,
                nullable: r.get::<_, i64>(2)? == 0,
                default: r.get(3)?,
                pk: r.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok((!columns.is_empty()).then(|| RowShape {
        table: table.to_owned(),
        columns,
    }))
}
