//! Reads a leader table's shape from SQLite: its columns in declared order,
//! their declared types and affinities, nullability and the primary key.
//! Refuses tables that cannot be captured safely.

use rusqlite::{Connection, OptionalExtension};

use crate::ContractError;

/// SQLite type affinity of a column (<https://sqlite.org/datatype3.html>, 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    /// Declared type contains "INT".
    Integer,
    /// Declared type contains "CHAR", "CLOB" or "TEXT".
    Text,
    /// Declared type contains "BLOB", or no declared type.
    Blob,
    /// Declared type contains "REAL", "FLOA" or "DOUB".
    Real,
    /// Anything else.
    Numeric,
}

impl Affinity {
    /// The affinity SQLite gives a declared type.
    pub fn of(decl_type: &str) -> Self {
        let t = decl_type.to_ascii_uppercase();
        if t.contains("INT") {
            Affinity::Integer
        } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
            Affinity::Text
        } else if t.contains("BLOB") || t.trim().is_empty() {
            Affinity::Blob
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            Affinity::Real
        } else {
            Affinity::Numeric
        }
    }
}

/// One column of a captured table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The column name as SQLite knows it.
    pub name: String,
    /// The declared type, as written in the DDL (may be empty).
    pub decl_type: String,
    /// The affinity of the declared type.
    pub affinity: Affinity,
    /// Whether the column can hold NULL.
    pub nullable: bool,
    /// 1-based index in the primary key, 0 when not part of it.
    pub pk: u32,
    /// The column's `DEFAULT` as SQL text (`0`, `'espresso'`, `CURRENT_TIMESTAMP`), if any.
    pub default: Option<String>,
}

/// The shape of a captured table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    /// The table name as SQLite knows it.
    pub name: String,
    /// Columns in declared order (generated columns included, hidden columns of
    /// virtual tables excluded).
    pub columns: Vec<Column>,
    /// A STRICT table: SQLite enforces the declared types.
    pub strict: bool,
    /// The table is `WITHOUT ROWID`.
    pub without_rowid: bool,
}

impl TableShape {
    /// Reads the shape of `table`, refusing tables that cannot be captured safely.
    pub fn read(conn: &Connection, table: &str) -> Result<Self, ContractError> {
        let sql_err = |source| ContractError::Sqlite {
            table: table.to_owned(),
            source,
        };
        let listed: Option<(String, i64, i64)> = conn
            .query_row(
                "SELECT type, wr, strict FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
                [table],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(sql_err)?;
        let Some((kind, wr, strict)) = listed else {
            return Err(ContractError::NotCapturable {
                table: table.to_owned(),
                why: "no such table in the leader database".into(),
            });
        };
        if kind != "table" {
            return Err(ContractError::NotCapturable {
                table: table.to_owned(),
                why: format!("it is a {kind}; only ordinary tables can carry capture triggers"),
            });
        }
        let mut stmt = conn
            .prepare("SELECT name, type, \"notnull\", pk, hidden, dflt_value FROM pragma_table_xinfo(?1) ORDER BY cid")
            .map_err(sql_err)?;
        let rows = stmt
            .query_map([table], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)? != 0,
                    r.get::<_, i64>(3)? as u32,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })
            .map_err(sql_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql_err)?;
        let without_rowid = wr != 0;
        let strict = strict != 0;
        let pk_count = rows.iter().filter(|r| r.3 > 0).count();
        let mut columns = Vec::with_capacity(rows.len());
        for (name, decl_type, not_null, pk, hidden, default) in rows {
            if hidden == 1 {
                continue;
            }
            // An INTEGER PRIMARY KEY is the rowid itself and can never be NULL;
            // WITHOUT ROWID and STRICT tables make every key column NOT NULL.
            let integer_pk = pk_count == 1 && pk == 1 && decl_type.eq_ignore_ascii_case("INTEGER");
            let nullable = !(not_null || integer_pk || (pk > 0 && (without_rowid || strict)));
            columns.push(Column {
                affinity: Affinity::of(&decl_type),
                name,
                decl_type,
                nullable,
                pk,
                default,
            });
        }
        if pk_count == 0 {
            return Err(ContractError::NotCapturable {
                table: table.to_owned(),
                why: "it has no PRIMARY KEY. Its rows are known only by rowid, which VACUUM renumbers, \
                      so a follower could not match changes to rows. Declare a primary key \
                      (for example `id INTEGER PRIMARY KEY`, which keeps the existing rowids), \
                      or leave the table out with --tables."
                    .into(),
            });
        }
        Ok(TableShape {
            name: table.to_owned(),
            columns,
            strict,
            without_rowid,
        })
    }

    /// Every ordinary user table of the database, in name order (barista's own
    /// `_barista_*` tables and SQLite's `sqlite_*` tables excluded).
    pub fn list_tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
        let mut stmt = conn.prepare(
            "SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'table' \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_barista\\_%' ESCAPE '\\' \
             ORDER BY name",
        )?;
        let names = stmt.query_map([], |r| r.get(0))?.collect();
        names
    }

    /// Indexes of the primary-key columns, in key order.
    pub fn pk_indexes(&self) -> Vec<usize> {
        let mut pk: Vec<(u32, usize)> = self
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.pk > 0)
            .map(|(i, c)| (c.pk, i))
            .collect();
        pk.sort();
        pk.into_iter().map(|(_, i)| i).collect()
    }

    /// Column names in declared order.
    pub fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }

    /// The same table with only the named columns, in this shape's order: the shape a table
    /// had before columns were added to it.
    pub fn restricted_to(&self, names: &[String]) -> TableShape {
        TableShape {
            columns: self
                .columns
                .iter()
                .filter(|c| names.contains(&c.name))
                .cloned()
                .collect(),
            ..self.clone()
        }
    }

    /// The shape as JSON, as schema-change markers in the leader's changelog store it: the
    /// producer needs the exact shape rows before and after a migration were captured with.
    pub fn to_json(&self) -> String {
        let columns: Vec<serde_json::Value> = self
            .columns
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name, "type": c.decl_type, "nullable": c.nullable,
                    "pk": c.pk, "default": c.default,
                })
            })
            .collect();
        serde_json::json!({
            "name": self.name, "columns": columns, "strict": self.strict,
            "without_rowid": self.without_rowid,
        })
        .to_string()
    }

    /// Reads [`TableShape::to_json`] back.
    pub fn from_json(text: &str) -> Result<TableShape, ContractError> {
        let bad = |why: &str| ContractError::Malformed(format!("table shape: {why}"));
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
        let columns = v["columns"]
            .as_array()
            .ok_or_else(|| bad("no columns"))?
            .iter()
            .map(|c| {
                let decl_type = c["type"].as_str().unwrap_or_default().to_owned();
                Column {
                    name: c["name"].as_str().unwrap_or_default().to_owned(),
                    affinity: Affinity::of(&decl_type),
                    decl_type,
                    nullable: c["nullable"].as_bool().unwrap_or(true),
                    pk: c["pk"].as_u64().unwrap_or(0) as u32,
                    default: c["default"].as_str().map(str::to_owned),
                }
            })
            .collect();
        Ok(TableShape {
            name: v["name"].as_str().ok_or_else(|| bad("no name"))?.to_owned(),
            columns,
            strict: v["strict"].as_bool().unwrap_or(false),
            without_rowid: v["without_rowid"].as_bool().unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_shape_and_refuses_tables_without_key() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, coffee TEXT, score REAL);
             CREATE TABLE loose(a, b);
             CREATE TABLE pair(a TEXT, b INT, c BLOB, PRIMARY KEY(b, a)) WITHOUT ROWID;",
        )
        .unwrap();
        let s = TableShape::read(&conn, "customers").unwrap();
        assert_eq!(s.column_names(), ["id", "name", "coffee", "score"]);
        assert!(!s.columns[0].nullable && !s.columns[1].nullable && s.columns[2].nullable);
        assert_eq!(s.columns[3].affinity, Affinity::Real);
        let err = TableShape::read(&conn, "loose").unwrap_err().to_string();
        assert!(
            err.contains("no PRIMARY KEY") && err.contains("VACUUM"),
            "{err}"
        );
        let p = TableShape::read(&conn, "pair").unwrap();
        assert_eq!(p.pk_indexes(), [1, 0]);
        assert!(p.without_rowid && !p.columns[0].nullable);
        assert_eq!(TableShape::from_json(&p.to_json()).unwrap(), p);
        assert_eq!(TableShape::from_json(&s.to_json()).unwrap(), s);
        assert_eq!(
            TableShape::list_tables(&conn).unwrap(),
            ["customers", "loose", "pair"]
        );
    }
}
