//! The change-event envelope: `{before, after, op, source, ts_ms}`, Debezium's
//! shape. Encoding takes a table's derived schemas; decoding works from the
//! writer's schema alone, so a follower needs nothing but the registry.

use std::sync::Arc;

use apache_avro::types::Value as Avro;
use serde::{Deserialize, Serialize};

use crate::avro_schema::TableSchemas;
use crate::contract::{ATTR_COLUMN, ATTR_DECLTYPE, ATTR_PK, CONNECTOR};
use crate::value::{from_avro, SqlValue};
use crate::{ContractError, Position};

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `c`: inserted.
    Create,
    /// `u`: updated (`before` and `after` both present).
    Update,
    /// `d`: deleted (`after` absent).
    Delete,
    /// `r`: read by the initial snapshot.
    Read,
}

impl Op {
    /// The one-letter code on the wire.
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
        }
    }

    /// Parses the one-letter code.
    pub fn from_code(s: &str) -> Option<Op> {
        Some(match s {
            "c" => Op::Create,
            "u" => Op::Update,
            "d" => Op::Delete,
            "r" => Op::Read,
            _ => return None,
        })
    }
}

/// `source`: where the change came from (`schemas/avro/source.avsc`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Always "barista".
    pub connector: String,
    /// Logical leader database name.
    pub db: String,
    /// Leader table.
    pub table: String,
    /// Leader position of this change.
    pub position: Position,
    /// Commit group (transaction) id: the group's last position.
    pub txn: Position,
    /// Position of the previous change sent to the same partition.
    pub prev_position: Option<Position>,
    /// Part of the initial snapshot.
    pub snapshot: bool,
    /// Leader clock when the producer read the change.
    pub ts_ms: i64,
    /// The leader's epoch (0 before the first takeover; absent, so 0, in events written
    /// before epochs existed).
    #[serde(default)]
    pub epoch: i64,
}

/// One change to one row, as the producer publishes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// What happened.
    pub op: Op,
    /// The row before (updates, deletes), in declared column order.
    pub before: Option<Vec<SqlValue>>,
    /// The row after (creates, updates, snapshot reads).
    pub after: Option<Vec<SqlValue>>,
    /// Where it came from.
    pub source: Source,
    /// When the producer processed it (leader clock).
    pub ts_ms: i64,
}

impl ChangeEvent {
    /// The row that carries the key: `after`, or `before` for a delete.
    pub fn key_row(&self) -> Option<&[SqlValue]> {
        self.after.as_deref().or(self.before.as_deref())
    }
}

fn source_value(s: &Source) -> Avro {
    Avro::Record(vec![
        ("connector".into(), Avro::String(CONNECTOR.into())),
        ("db".into(), Avro::String(s.db.clone())),
        ("table".into(), Avro::String(s.table.clone())),
        ("position".into(), Avro::Long(s.position.0)),
        ("txn".into(), Avro::Long(s.txn.0)),
        (
            "prev_position".into(),
            match s.prev_position {
                Some(p) => Avro::Union(1, Box::new(Avro::Long(p.0))),
                None => Avro::Union(0, Box::new(Avro::Null)),
            },
        ),
        ("snapshot".into(), Avro::Boolean(s.snapshot)),
        ("ts_ms".into(), Avro::Long(s.ts_ms)),
        ("epoch".into(), Avro::Long(s.epoch)),
    ])
}

impl TableSchemas {
    /// Fails unless `row` has one value per column.
    pub(crate) fn check_row(&self, row: &[SqlValue]) -> Result<(), ContractError> {
        if row.len() == self.codecs.len() {
            return Ok(());
        }
        Err(ContractError::Malformed(format!(
            "row of {} values for table {:?} of {} columns",
            row.len(),
            self.shape.name,
            self.codecs.len()
        )))
    }

    fn row_value(&self, row: &[SqlValue]) -> Result<Avro, ContractError> {
        self.check_row(row)?;
        let fields = self
            .field_names
            .iter()
            .zip(&self.codecs)
            .zip(row)
            .map(|((name, codec), v)| {
                codec.to_avro(v).map(|a| (name.clone(), a)).map_err(|e| {
                    ContractError::Malformed(format!(
                        "table {:?} column {:?}: {e}",
                        self.shape.name, name
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Avro::Record(fields))
    }

    /// The Avro key record of a row.
    pub fn key_value(&self, row: &[SqlValue]) -> Result<Avro, ContractError> {
        let fields = self
            .shape
            .pk_indexes()
            .into_iter()
            .map(|i| {
                let v = row
                    .get(i)
                    .ok_or_else(|| ContractError::Malformed("short row".into()))?;
                Ok((self.field_names[i].clone(), self.codecs[i].to_avro(v)?))
            })
            .collect::<Result<Vec<_>, ContractError>>()?;
        Ok(Avro::Record(fields))
    }

    /// The Avro envelope of a change.
    pub fn envelope_value(&self, ev: &ChangeEvent) -> Result<Avro, ContractError> {
        let opt_row = |r: &Option<Vec<SqlValue>>| -> Result<Avro, ContractError> {
            Ok(match r {
                Some(row) => Avro::Union(1, Box::new(self.row_value(row)?)),
                None => Avro::Union(0, Box::new(Avro::Null)),
            })
        };
        Ok(Avro::Record(vec![
            ("before".into(), opt_row(&ev.before)?),
            ("after".into(), opt_row(&ev.after)?),
            ("op".into(), Avro::String(ev.op.code().into())),
            ("source".into(), source_value(&ev.source)),
            ("ts_ms".into(), Avro::Long(ev.ts_ms)),
        ]))
    }
}

/// A column as the writer's schema describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowColumn {
    /// SQLite column name on the leader.
    pub name: String,
    /// Declared SQLite type on the leader.
    pub decl_type: String,
    /// 1-based primary-key index, 0 if not in the key.
    pub pk: u32,
    /// Whether the column may be NULL.
    pub nullable: bool,
    /// The field's Avro default when it is not null (a NOT NULL column's literal DEFAULT), as a
    /// SQL literal (`0`, `1.5`, `'it''s'`): a follower that adds the column declares it with
    /// this DEFAULT, so rows written before the column existed read as they do on the leader.
    pub default: Option<String>,
}

/// The row shape a writer schema describes: enough for a follower to create and
/// evolve its replica table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowShape {
    /// Leader table name.
    pub table: String,
    /// Columns in the writer's order.
    pub columns: Vec<RowColumn>,
}

impl RowShape {
    /// Reads the row shape from the text of an envelope (value) schema.
    pub fn from_value_schema(schema_json: &str) -> Result<RowShape, ContractError> {
        let bad = |what: &str| ContractError::Malformed(format!("value schema: {what}"));
        let v: serde_json::Value =
            serde_json::from_str(schema_json).map_err(|e| bad(&e.to_string()))?;
        let before = v["fields"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["name"] == "before"))
            .ok_or_else(|| bad("no `before` field"))?;
        let row = before["type"]
            .as_array()
            .and_then(|u| u.iter().find(|b| b.is_object()))
            .ok_or_else(|| bad("`before` is not a union with a record"))?;
        let table = row["sqlite.table"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| {
                v["namespace"]
                    .as_str()
                    .and_then(|n| n.rsplit('.').next())
                    .map(str::to_owned)
            })
            .ok_or_else(|| bad("no table name"))?;
        let columns = row["fields"]
            .as_array()
            .ok_or_else(|| bad("row record without fields"))?
            .iter()
            .map(|f| {
                let name = f[ATTR_COLUMN]
                    .as_str()
                    .or(f["name"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                let nullable = match &f["type"] {
                    serde_json::Value::Array(b) => b.iter().any(|t| t == "null"),
                    t => t == "null",
                };
                let default = match &f["default"] {
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    serde_json::Value::String(s) => Some(format!("'{}'", s.replace('\'', "''"))),
                    _ => None,
                };
                RowColumn {
                    name,
                    decl_type: f[ATTR_DECLTYPE].as_str().unwrap_or_default().to_owned(),
                    pk: f[ATTR_PK].as_u64().unwrap_or(0) as u32,
                    nullable,
                    default,
                }
            })
            .collect();
        Ok(RowShape { table, columns })
    }

    /// Indexes of the key columns, in key order.
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
}

/// A change as a follower decodes it.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedChange {
    /// The writer's row shape.
    pub shape: Arc<RowShape>,
    /// What happened.
    pub op: Op,
    /// Row before, in the shape's column order.
    pub before: Option<Vec<SqlValue>>,
    /// Row after.
    pub after: Option<Vec<SqlValue>>,
    /// Where it came from.
    pub source: Source,
    /// Producer time.
    pub ts_ms: i64,
}

fn field<'a>(fields: &'a [(String, Avro)], name: &str) -> Result<&'a Avro, ContractError> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .ok_or_else(|| ContractError::Malformed(format!("missing field `{name}`")))
}

fn unwrap_union(v: &Avro) -> &Avro {
    match v {
        Avro::Union(_, inner) => unwrap_union(inner),
        v => v,
    }
}

fn long(v: &Avro, what: &str) -> Result<i64, ContractError> {
    match unwrap_union(v) {
        Avro::Long(i) => Ok(*i),
        Avro::Int(i) => Ok(i64::from(*i)),
        _ => Err(ContractError::Malformed(format!("`{what}` is not a long"))),
    }
}

fn string(v: &Avro, what: &str) -> Result<String, ContractError> {
    match unwrap_union(v) {
        Avro::String(s) => Ok(s.clone()),
        _ => Err(ContractError::Malformed(format!(
            "`{what}` is not a string"
        ))),
    }
}

/// Decodes the `Source` record.
pub fn decode_source(v: &Avro) -> Result<Source, ContractError> {
    let Avro::Record(f) = unwrap_union(v) else {
        return Err(ContractError::Malformed("`source` is not a record".into()));
    };
    Ok(Source {
        connector: string(field(f, "connector")?, "connector")?,
        db: string(field(f, "db")?, "db")?,
        table: string(field(f, "table")?, "table")?,
        position: Position(long(field(f, "position")?, "position")?),
        txn: Position(long(field(f, "txn")?, "txn")?),
        prev_position: match field(f, "prev_position").map(unwrap_union) {
            Ok(Avro::Null) | Err(_) => None,
            Ok(v) => Some(Position(long(v, "prev_position")?)),
        },
        snapshot: matches!(
            field(f, "snapshot").map(unwrap_union),
            Ok(Avro::Boolean(true))
        ),
        ts_ms: long(field(f, "ts_ms")?, "ts_ms")?,
        // Written before epochs existed: the first epoch.
        epoch: match field(f, "epoch") {
            Ok(v) => long(unwrap_union(v), "epoch")?,
            Err(_) => 0,
        },
    })
}

/// Decodes an envelope value written with a schema of shape `shape`.
pub fn decode_envelope(shape: Arc<RowShape>, v: &Avro) -> Result<DecodedChange, ContractError> {
    let Avro::Record(f) = v else {
        return Err(ContractError::Malformed("the value is not a record".into()));
    };
    let row = |name: &str| -> Result<Option<Vec<SqlValue>>, ContractError> {
        match unwrap_union(field(f, name)?) {
            Avro::Null => Ok(None),
            Avro::Record(cols) => {
                if cols.len() != shape.columns.len() {
                    return Err(ContractError::Malformed(format!(
                        "`{name}` has {} fields",
                        cols.len()
                    )));
                }
                cols.iter()
                    .map(|(_, v)| from_avro(v))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some)
            }
            _ => Err(ContractError::Malformed(format!(
                "`{name}` is not a record"
            ))),
        }
    };
    let op_code = string(field(f, "op")?, "op")?;
    let op = Op::from_code(&op_code)
        .ok_or_else(|| ContractError::Malformed(format!("unknown op {op_code:?}")))?;
    Ok(DecodedChange {
        op,
        before: row("before")?,
        after: row("after")?,
        source: decode_source(field(f, "source")?)?,
        ts_ms: long(field(f, "ts_ms")?, "ts_ms")?,
        shape,
    })
}

// apache-avro 0.22 deprecates the datum helpers in favour of a builder API
// that schema_registry_converter 6 does not use yet; the bytes are the same.
#[cfg(test)]
#[allow(deprecated)]
pub(crate) mod tests {
    use super::*;
    use crate::table::TableShape;
    use apache_avro::{from_avro_datum, to_avro_datum};
    use proptest::prelude::*;

    fn schemas() -> TableSchemas {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB, n NUMERIC, x)")
            .unwrap();
        TableSchemas::derive(TableShape::read(&conn, "t").unwrap()).unwrap()
    }

    /// Any SQLite value but NaN (SQLite stores NaN as NULL).
    pub(crate) fn any_value() -> impl Strategy<Value = SqlValue> {
        prop_oneof![
            Just(SqlValue::Null),
            any::<i64>().prop_map(SqlValue::Integer),
            any::<f64>()
                .prop_filter("NaN is stored as NULL by SQLite", |f| !f.is_nan())
                .prop_map(SqlValue::Real),
            any::<String>().prop_map(SqlValue::Text),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(SqlValue::Blob),
        ]
    }

    proptest! {
        /// Every storage class round-trips exactly through the envelope, in any
        /// column whose affinity can hold it.
        #[test]
        fn envelope_round_trips(id in any::<i64>(), vals in proptest::collection::vec(any_value(), 6), pos in 1i64..i64::MAX) {
            let s = schemas();
            let mut row = vec![SqlValue::Integer(id)];
            row.extend(vals);
            // REAL affinity cannot hold an INTEGER; TEXT affinity neither INTEGER nor REAL.
            if let SqlValue::Integer(i) = row[2] { row[2] = SqlValue::Real(i as f64) }
            if matches!(row[3], SqlValue::Integer(_) | SqlValue::Real(_)) { row[3] = SqlValue::Text("t".into()) }
            let ev = ChangeEvent {
                op: Op::Update,
                before: Some(row.clone()),
                after: Some(row),
                source: Source { connector: "barista".into(), db: "leader".into(), table: "t".into(), position: Position(pos),
                    txn: Position(pos), prev_position: Some(Position(pos - 1)), snapshot: false, ts_ms: 42, epoch: pos % 3 },
                ts_ms: 43,
            };
            let bytes = to_avro_datum(&s.value, s.envelope_value(&ev).unwrap()).unwrap();
            let back = from_avro_datum(&s.value, &mut bytes.as_slice(), None).unwrap();
            let shape = Arc::new(RowShape::from_value_schema(&s.value_json).unwrap());
            let d = decode_envelope(shape, &back).unwrap();
            prop_assert_eq!(d.before, ev.before);
            prop_assert_eq!(d.after, ev.after);
            prop_assert_eq!(d.source, ev.source);
            prop_assert_eq!(d.op, Op::Update);
        }
    }

    #[test]
    fn row_shape_keeps_sqlite_names() {
        let s = schemas();
        let shape = RowShape::from_value_schema(&s.value_json).unwrap();
        assert_eq!(shape.table, "t");
        assert_eq!(
            shape
                .columns
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["id", "i", "r", "s", "b", "n", "x"]
        );
        assert_eq!(shape.pk_indexes(), [0]);
    }
}
