//! SQLite values and their exact round trip through Avro. A column's Avro type
//! is a union of the storage classes its affinity can hold, so every value a
//! non-STRICT table accepts (`'abc'` in an INTEGER column, a BLOB anywhere)
//! reaches the follower unchanged.

use apache_avro::types::Value as Avro;

use crate::table::{Affinity, Column};
use crate::ContractError;

/// One SQLite value, by storage class.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// NULL.
    Null,
    /// A 64-bit signed integer.
    Integer(i64),
    /// An IEEE 754 double.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl SqlValue {
    /// The storage class, or None for NULL.
    pub fn class(&self) -> Option<StorageClass> {
        match self {
            SqlValue::Null => None,
            SqlValue::Integer(_) => Some(StorageClass::Integer),
            SqlValue::Real(_) => Some(StorageClass::Real),
            SqlValue::Text(_) => Some(StorageClass::Text),
            SqlValue::Blob(_) => Some(StorageClass::Blob),
        }
    }
}

impl From<rusqlite::types::ValueRef<'_>> for SqlValue {
    fn from(v: rusqlite::types::ValueRef<'_>) -> Self {
        use rusqlite::types::ValueRef;
        match v {
            ValueRef::Null => SqlValue::Null,
            ValueRef::Integer(i) => SqlValue::Integer(i),
            ValueRef::Real(f) => SqlValue::Real(f),
            // SQLite text is UTF-8 unless a writer stored invalid bytes through
            // the C API; keep those lossless as a BLOB rather than mangle them.
            ValueRef::Text(t) => match std::str::from_utf8(t) {
                Ok(s) => SqlValue::Text(s.to_owned()),
                Err(_) => SqlValue::Blob(t.to_vec()),
            },
            ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
        }
    }
}

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Integer(i) => ValueRef::Integer(*i),
            SqlValue::Real(f) => ValueRef::Real(*f),
            SqlValue::Text(s) => ValueRef::Text(s.as_bytes()),
            SqlValue::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// A SQLite storage class other than NULL, and its Avro primitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageClass {
    /// INTEGER → `long`.
    Integer,
    /// REAL → `double`.
    Real,
    /// TEXT → `string`.
    Text,
    /// BLOB → `bytes`.
    Blob,
}

impl StorageClass {
    /// The Avro primitive type name.
    pub fn avro_type(self) -> &'static str {
        match self {
            StorageClass::Integer => "long",
            StorageClass::Real => "double",
            StorageClass::Text => "string",
            StorageClass::Blob => "bytes",
        }
    }
}

/// How one column's values are written as Avro: its union branches in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnCodec {
    /// `null` is the first branch (and the default).
    pub nullable: bool,
    /// The non-null branches, the declared type's class first.
    pub classes: Vec<StorageClass>,
}

impl ColumnCodec {
    /// The codec of a column. `integer_pk`: the column is the rowid alias.
    pub fn for_column(col: &Column, strict: bool, integer_pk: bool) -> Self {
        use StorageClass::*;
        let classes = if integer_pk {
            vec![Integer]
        } else if strict {
            match col.decl_type.to_ascii_uppercase().as_str() {
                "INT" | "INTEGER" => vec![Integer],
                "REAL" => vec![Real],
                "TEXT" => vec![Text],
                "BLOB" => vec![Blob],
                _ => vec![Text, Integer, Real, Blob], // ANY keeps what it is given
            }
        } else {
            // What each affinity can end up storing (datatype3.html, 3.0).
            match col.affinity {
                Affinity::Integer | Affinity::Numeric => vec![Integer, Real, Text, Blob],
                Affinity::Real => vec![Real, Text, Blob],
                Affinity::Text => vec![Text, Blob],
                Affinity::Blob if col.decl_type.trim().is_empty() => {
                    vec![Text, Integer, Real, Blob]
                }
                Affinity::Blob => vec![Blob, Integer, Real, Text],
            }
        };
        ColumnCodec {
            nullable: col.nullable,
            classes,
        }
    }

    /// The Avro type as JSON.
    pub fn avro_type_json(&self) -> serde_json::Value {
        let mut branches: Vec<serde_json::Value> = Vec::new();
        if self.nullable {
            branches.push("null".into());
        }
        branches.extend(
            self.classes
                .iter()
                .map(|c| serde_json::Value::from(c.avro_type())),
        );
        if branches.len() == 1 {
            branches.pop().unwrap_or_default()
        } else {
            serde_json::Value::Array(branches)
        }
    }

    /// The union branch `v` is written as, `None` when the column's type is
    /// not a union. Fails only when the value's storage class is not one the
    /// column can hold (a schema that no longer matches the table).
    pub fn branch(&self, v: &SqlValue) -> Result<Option<usize>, ContractError> {
        let union = self.nullable || self.classes.len() > 1;
        let Some(class) = v.class() else {
            return if self.nullable {
                Ok(Some(0))
            } else {
                Err(ContractError::Malformed("NULL in a NOT NULL column".into()))
            };
        };
        let idx = self
            .classes
            .iter()
            .position(|c| *c == class)
            .ok_or_else(|| {
                ContractError::Malformed(format!(
                    "a {class:?} value in a column typed {:?}",
                    self.classes
                ))
            })?;
        Ok(union.then_some(idx + usize::from(self.nullable)))
    }

    /// Encodes one value (see [`ColumnCodec::branch`]).
    pub fn to_avro(&self, v: &SqlValue) -> Result<Avro, ContractError> {
        let branch = self.branch(v)?;
        let inner = match v {
            SqlValue::Integer(i) => Avro::Long(*i),
            SqlValue::Real(f) => Avro::Double(*f),
            SqlValue::Text(s) => Avro::String(s.clone()),
            SqlValue::Blob(b) => Avro::Bytes(b.clone()),
            SqlValue::Null => Avro::Null,
        };
        Ok(match branch {
            Some(i) => Avro::Union(i as u32, Box::new(inner)),
            None => inner,
        })
    }
}

/// Decodes an Avro value (any union depth) back into a SQLite value.
pub fn from_avro(v: &Avro) -> Result<SqlValue, ContractError> {
    Ok(match v {
        Avro::Union(_, inner) => return from_avro(inner),
        Avro::Null => SqlValue::Null,
        Avro::Long(i) => SqlValue::Integer(*i),
        Avro::Int(i) => SqlValue::Integer(i64::from(*i)),
        Avro::Boolean(b) => SqlValue::Integer(i64::from(*b)),
        Avro::Double(f) => SqlValue::Real(*f),
        Avro::Float(f) => SqlValue::Real(f64::from(*f)),
        Avro::String(s) => SqlValue::Text(s.clone()),
        Avro::Enum(_, s) => SqlValue::Text(s.clone()),
        Avro::Bytes(b) | Avro::Fixed(_, b) => SqlValue::Blob(b.clone()),
        other => {
            return Err(ContractError::Malformed(format!(
                "a column value of unsupported Avro type: {other:?}"
            )))
        }
    })
}
