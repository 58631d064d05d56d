//! Derives a table's Avro schemas: the key record (primary-key columns) and
//! the value envelope. Names SQLite allows but Avro does not are adjusted
//! predictably (illegal characters become `_`, a leading digit gets a `_`
//! prefix, collisions get `_2`, `_3`…); the SQLite name is kept in the field's
//! `sqlite.column` attribute so a follower recreates the original column.

use std::collections::HashSet;

use apache_avro::Schema;
use serde_json::json;

use crate::contract::{ATTR_COLUMN, ATTR_DECLTYPE, ATTR_PK};
use crate::table::TableShape;
use crate::value::ColumnCodec;
use crate::ContractError;

/// The `Source` record every envelope embeds (`schemas/avro/source.avsc`).
pub const SOURCE_AVSC: &str = include_str!("../avro/source.avsc");
/// The commits-topic record (`schemas/avro/commit.avsc`).
pub const COMMIT_AVSC: &str = include_str!("../avro/commit.avsc");

/// Makes `name` a legal Avro name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn avro_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Avro field names for a list of column names: legal and unique.
pub fn field_names<'a>(columns: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut taken = HashSet::new();
    columns
        .into_iter()
        .map(|c| {
            let base = avro_name(c);
            let mut candidate = base.clone();
            let mut n = 2;
            while !taken.insert(candidate.to_ascii_lowercase()) {
                candidate = format!("{base}_{n}");
                n += 1;
            }
            candidate
        })
        .collect()
}

/// The Avro namespace of a table's records.
pub fn namespace(table: &str) -> String {
    format!("barista.{}", avro_name(table))
}

fn integer_pk(shape: &TableShape, i: usize) -> bool {
    let pk = shape.pk_indexes();
    pk == [i] && shape.columns[i].decl_type.eq_ignore_ascii_case("INTEGER") && !shape.without_rowid
}

/// Per-column codecs in declared order.
pub fn codecs(shape: &TableShape) -> Vec<ColumnCodec> {
    shape
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| ColumnCodec::for_column(c, shape.strict, integer_pk(shape, i)))
        .collect()
}

fn field_json(shape: &TableShape, i: usize, name: &str, codec: &ColumnCodec) -> serde_json::Value {
    let col = &shape.columns[i];
    let mut f = json!({ "name": name, "type": codec.avro_type_json() });
    if codec.nullable {
        f["default"] = serde_json::Value::Null;
    } else if let Some(default) = col.default.as_deref().and_then(|d| avro_default(codec, d)) {
        f["default"] = default;
    }
    f[ATTR_COLUMN] = json!(col.name);
    f[ATTR_DECLTYPE] = json!(col.decl_type);
    if col.pk > 0 {
        f[ATTR_PK] = json!(col.pk);
    }
    f
}

/// The Avro default of a NOT NULL column declared with a literal `DEFAULT`, so that adding
/// `ADD COLUMN visits INTEGER NOT NULL DEFAULT 0` is a compatible schema change: a reader of
/// the new schema fills the field in for data written before it existed, as SQLite does for
/// the rows already in the table. Avro takes a union's default from its first branch, so only
/// a literal of the first branch's storage class qualifies; expressions (`CURRENT_TIMESTAMP`,
/// `(random())`) and blobs have no Avro default.
pub fn avro_default(codec: &ColumnCodec, sql_default: &str) -> Option<serde_json::Value> {
    use crate::value::StorageClass;
    let d = sql_default.trim();
    match codec.classes.first()? {
        StorageClass::Integer => d.parse::<i64>().ok().map(|i| json!(i)),
        StorageClass::Real => d
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(|f| json!(f)),
        StorageClass::Text => {
            let inner = d.strip_prefix('\'')?.strip_suffix('\'')?;
            // Inside a SQL string literal a quote is doubled; a lone one means `d` was an
            // expression such as `'a' || 'b'`.
            if inner.replace("''", "").contains('\'') {
                return None;
            }
            Some(json!(inner.replace("''", "'")))
        }
        StorageClass::Blob => None,
    }
}

/// The key schema: a record of the primary-key columns in key order.
pub fn key_schema_json(shape: &TableShape) -> serde_json::Value {
    let codecs = codecs(shape);
    let names = field_names(shape.columns.iter().map(|c| c.name.as_str()));
    let fields: Vec<_> = shape
        .pk_indexes()
        .into_iter()
        .map(|i| field_json(shape, i, &names[i], &codecs[i]))
        .collect();
    json!({ "type": "record", "name": "Key", "namespace": namespace(&shape.name), "fields": fields })
}

/// The value schema: the Debezium-style envelope around a `Value` row record.
pub fn value_schema_json(shape: &TableShape) -> serde_json::Value {
    let codecs = codecs(shape);
    let names = field_names(shape.columns.iter().map(|c| c.name.as_str()));
    let fields: Vec<_> = (0..shape.columns.len())
        .map(|i| field_json(shape, i, &names[i], &codecs[i]))
        .collect();
    let row =
        json!({ "type": "record", "name": "Value", "fields": fields, "sqlite.table": shape.name });
    let source: serde_json::Value = serde_json::from_str(SOURCE_AVSC).unwrap_or_default();
    json!({
        "type": "record",
        "name": "Envelope",
        "namespace": namespace(&shape.name),
        "fields": [
            { "name": "before", "type": ["null", row], "default": null },
            { "name": "after", "type": ["null", "Value"], "default": null },
            { "name": "op", "type": "string", "doc": "c create, u update, d delete, r snapshot read" },
            { "name": "source", "type": source },
            { "name": "ts_ms", "type": "long", "doc": "When the producer processed the event (leader clock)." }
        ]
    })
}

/// A table's schemas and codecs, ready to encode its rows.
#[derive(Debug, Clone)]
pub struct TableSchemas {
    /// The table's shape.
    pub shape: TableShape,
    /// Key schema as registered (JSON text).
    pub key_json: String,
    /// Value schema as registered (JSON text).
    pub value_json: String,
    /// Parsed key schema.
    pub key: Schema,
    /// Parsed value schema.
    pub value: Schema,
    /// Column codecs in declared order.
    pub codecs: Vec<ColumnCodec>,
    /// Avro field names in declared order.
    pub field_names: Vec<String>,
}

impl TableSchemas {
    /// Derives and parses the schemas of a table.
    pub fn derive(shape: TableShape) -> Result<Self, ContractError> {
        let key_json = key_schema_json(&shape).to_string();
        let value_json = value_schema_json(&shape).to_string();
        let parse = |s: &str| {
            Schema::parse_str(s).map_err(|e| ContractError::Avro {
                subject: shape.name.clone(),
                source: Box::new(e),
            })
        };
        let key = parse(&key_json)?;
        let value = parse(&value_json)?;
        Ok(TableSchemas {
            codecs: codecs(&shape),
            field_names: field_names(shape.columns.iter().map(|c| c.name.as_str())),
            shape,
            key_json,
            value_json,
            key,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_adjusted_predictably() {
        assert_eq!(avro_name("order id"), "order_id");
        assert_eq!(avro_name("2fa"), "_2fa");
        assert_eq!(avro_name("café"), "caf_");
        assert_eq!(
            field_names(["a b", "a_b", "A-B"]),
            ["a_b", "a_b_2", "A_B_3"]
        );
    }

    #[test]
    fn derived_schemas_parse() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE \"weird table\"(\"1st\" INTEGER PRIMARY KEY, \"full name\" TEXT NOT NULL, x, y BLOB)")
            .unwrap();
        let s = TableSchemas::derive(TableShape::read(&conn, "weird table").unwrap()).unwrap();
        assert_eq!(s.field_names, ["_1st", "full_name", "x", "y"]);
        assert!(
            s.key_json.contains("\"sqlite.column\":\"1st\""),
            "{}",
            s.key_json
        );
        assert_eq!(s.codecs[0].avro_type_json(), json!("long"));
        assert_eq!(s.codecs[1].avro_type_json(), json!(["string", "bytes"]));
        assert_eq!(
            s.codecs[3].avro_type_json(),
            json!(["null", "bytes", "long", "double", "string"])
        );
    }

    #[test]
    fn literal_defaults_of_not_null_columns_become_avro_defaults() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, visits INTEGER NOT NULL DEFAULT 0,
               coffee TEXT NOT NULL DEFAULT 'flat white', note TEXT NOT NULL DEFAULT 'it''s',
               at REAL NOT NULL DEFAULT CURRENT_TIMESTAMP, score REAL NOT NULL DEFAULT 1.5,
               odd INTEGER NOT NULL DEFAULT 'x', maybe TEXT DEFAULT 'y')",
        )
        .unwrap();
        let s = TableSchemas::derive(TableShape::read(&conn, "t").unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&s.value_json).unwrap();
        let fields = v["fields"][0]["type"][1]["fields"].as_array().unwrap();
        let defaults: Vec<Option<&serde_json::Value>> =
            fields.iter().map(|f| f.get("default")).collect();
        assert_eq!(
            defaults,
            [
                None,
                Some(&json!(0)),
                Some(&json!("flat white")),
                Some(&json!("it's")),
                None,
                Some(&json!(1.5)),
                None,
                Some(&serde_json::Value::Null),
            ]
        );
    }
}
