//! Table checksums: one number per table that the leader and every replica
//! compute from their own rows, so a replica that differs from its leader is
//! noticed (and a hand edit of a replica with it).
//!
//! A table's checksum is the wrapping sum of [`row_hash`] over its rows, so
//! it is order-independent and kept incrementally: a change subtracts the hash
//! of the row as it was and adds the hash of the row as it is now.
//!
//! The canonical encoding a row hash is taken over, for a row in the order of
//! a writer schema's [`RowShape`]:
//! - columns sorted by name (byte order), so column order never matters;
//! - a column is left out when it is not part of the key and its value is
//!   NULL or equals the column's default in the schema. A column added with a
//!   default therefore changes no row's hash, on the leader or on a replica
//!   that added it with that default; and a replica's column that the writer
//!   schema no longer has (a dropped field the replica keeps) is never part of
//!   the shape, so it is left out too;
//! - each column that stays: its name (u32 length, bytes), its storage class
//!   (one byte: 1 INTEGER, 2 REAL, 3 TEXT, 4 BLOB, 0 NULL) and its value
//!   (i64 / f64 bits little-endian; u32 length and bytes for TEXT and BLOB).
//!
//! The hash is xxh3-64 of that encoding. On the wire (commit records) and in
//! SQLite a checksum is the u64's bits as an i64.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::envelope::RowShape;
use crate::SqlValue;

/// One table's checksum at a commit group's last position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableChecksum {
    /// The leader table.
    pub table: String,
    /// The wrapping sum of its rows' hashes, as i64 bits.
    pub sum: i64,
}

/// How a shape's columns enter the hash: sorted by name, with their defaults.
#[derive(Debug, Clone)]
pub struct RowHasher {
    /// (index in the row, name, in the key, default value) sorted by name.
    columns: Vec<(usize, String, bool, Option<SqlValue>)>,
}

impl RowHasher {
    /// The hasher of rows written with `shape`.
    pub fn new(shape: &RowShape) -> Self {
        let mut columns: Vec<_> = shape
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let default = c.default.as_deref().and_then(parse_sql_literal);
                (i, c.name.clone(), c.pk > 0, default)
            })
            .collect();
        columns.sort_by(|a, b| a.1.as_bytes().cmp(b.1.as_bytes()));
        RowHasher { columns }
    }

    /// The hash of `row`, given in the shape's column order.
    pub fn hash(&self, row: &[SqlValue]) -> u64 {
        // The encoding is written to a buffer and hashed in one call: the same digest as
        // feeding xxh3's streaming state piece by piece, at a fraction of the cost (a row's
        // pieces are a few bytes each). Producers hash every change with it.
        ENCODED.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            self.encode(row, &mut buf);
            xxh3_64(&buf)
        })
    }

    /// The canonical encoding of `row` (see the module docs), appended to `out`.
    fn encode(&self, row: &[SqlValue], out: &mut Vec<u8>) {
        for (i, name, key, default) in &self.columns {
            let v = row.get(*i).unwrap_or(&SqlValue::Null);
            if !key && (matches!(v, SqlValue::Null) || default.as_ref() == Some(v)) {
                continue;
            }
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            match v {
                SqlValue::Null => out.push(0),
                SqlValue::Integer(i) => {
                    out.push(1);
                    out.extend_from_slice(&i.to_le_bytes());
                }
                SqlValue::Real(f) => {
                    out.push(2);
                    out.extend_from_slice(&f.to_bits().to_le_bytes());
                }
                SqlValue::Text(t) => {
                    out.push(3);
                    out.extend_from_slice(&(t.len() as u32).to_le_bytes());
                    out.extend_from_slice(t.as_bytes());
                }
                SqlValue::Blob(b) => {
                    out.push(4);
                    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
    }
}

thread_local! {
    /// [`RowHasher::hash`]'s buffer, reused: no allocation per row.
    static ENCODED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The hash of one row written with `shape` (see the module docs).
pub fn row_hash(shape: &RowShape, row: &[SqlValue]) -> u64 {
    RowHasher::new(shape).hash(row)
}

/// A table checksum after a change: `before`'s hash out, `after`'s in.
pub fn apply(sum: u64, before: Option<u64>, after: Option<u64>) -> u64 {
    sum.wrapping_sub(before.unwrap_or(0))
        .wrapping_add(after.unwrap_or(0))
}

/// As stored and sent: the u64's bits.
pub fn to_wire(sum: u64) -> i64 {
    sum as i64
}

/// From its stored or sent form.
pub fn from_wire(sum: i64) -> u64 {
    sum as u64
}

/// A schema default (a SQL literal, as [`crate::envelope::RowColumn::default`]
/// holds it) as a value: integers, reals and quoted text. Anything else is
/// not a value the hasher can compare with, so such a column is never left
/// out.
fn parse_sql_literal(s: &str) -> Option<SqlValue> {
    let s = s.trim();
    if let Some(t) = s.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
        return Some(SqlValue::Text(t.replace("''", "'")));
    }
    if let Ok(i) = s.parse::<i64>() {
        return Some(SqlValue::Integer(i));
    }
    s.parse::<f64>().ok().map(SqlValue::Real)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::RowColumn;
    use proptest::prelude::*;

    fn col(name: &str, pk: u32, default: Option<&str>) -> RowColumn {
        RowColumn {
            name: name.into(),
            decl_type: String::new(),
            pk,
            nullable: default.is_none(),
            default: default.map(str::to_owned),
        }
    }

    fn shape(columns: Vec<RowColumn>) -> RowShape {
        RowShape {
            table: "t".into(),
            columns,
        }
    }

    fn value() -> impl Strategy<Value = SqlValue> {
        prop_oneof![
            Just(SqlValue::Null),
            any::<i64>().prop_map(SqlValue::Integer),
            any::<f64>()
                .prop_filter("SQLite stores no NaN", |f| !f.is_nan())
                .prop_map(SqlValue::Real),
            ".{0,8}".prop_map(SqlValue::Text),
            prop::collection::vec(any::<u8>(), 0..8).prop_map(SqlValue::Blob),
        ]
    }

    #[test]
    fn storage_class_and_value_both_count() {
        let s = shape(vec![col("id", 1, None), col("v", 0, None)]);
        let id = SqlValue::Integer(1);
        let hashes = [
            row_hash(&s, &[id.clone(), SqlValue::Integer(7)]),
            row_hash(&s, &[id.clone(), SqlValue::Real(7.0)]),
            row_hash(&s, &[id.clone(), SqlValue::Text("7".into())]),
            row_hash(&s, &[id.clone(), SqlValue::Blob(b"7".to_vec())]),
            row_hash(&s, &[id.clone(), SqlValue::Integer(8)]),
            row_hash(&s, &[SqlValue::Integer(2), SqlValue::Integer(7)]),
        ];
        for (i, a) in hashes.iter().enumerate() {
            for b in &hashes[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn a_column_added_with_a_default_changes_no_row() {
        let before = shape(vec![col("id", 1, None), col("name", 0, None)]);
        let after = shape(vec![
            col("id", 1, None),
            col("name", 0, None),
            col("stamps", 0, Some("0")),
            col("note", 0, None),
            col("tier", 0, Some("'basic'")),
        ]);
        let row = [SqlValue::Integer(3), SqlValue::Text("ann".into())];
        let widened = [
            SqlValue::Integer(3),
            SqlValue::Text("ann".into()),
            SqlValue::Integer(0),
            SqlValue::Null,
            SqlValue::Text("basic".into()),
        ];
        assert_eq!(row_hash(&before, &row), row_hash(&after, &widened));
        // A value other than the default counts.
        let mut stamped = widened.clone();
        stamped[2] = SqlValue::Integer(1);
        assert_ne!(row_hash(&before, &row), row_hash(&after, &stamped));
    }

    #[test]
    fn the_key_is_always_hashed_even_when_it_equals_a_default() {
        let s = shape(vec![col("id", 1, Some("0")), col("v", 0, None)]);
        let a = row_hash(&s, &[SqlValue::Integer(0), SqlValue::Text("x".into())]);
        let b = row_hash(&s, &[SqlValue::Null, SqlValue::Text("x".into())]);
        assert_ne!(a, b);
    }

    #[test]
    fn defaults_are_parsed_as_sqlite_literals() {
        assert_eq!(
            parse_sql_literal("'it''s'"),
            Some(SqlValue::Text("it's".into()))
        );
        assert_eq!(parse_sql_literal("-5"), Some(SqlValue::Integer(-5)));
        assert_eq!(parse_sql_literal("1.5"), Some(SqlValue::Real(1.5)));
        assert_eq!(parse_sql_literal("X'00'"), None);
    }

    /// The encoding fed to xxh3's streaming state piece by piece, as the hash was first
    /// written: the one-shot hash must give the same digest.
    fn streamed(h: &RowHasher, row: &[SqlValue]) -> u64 {
        let mut buf = Vec::new();
        h.encode(row, &mut buf);
        let mut x = xxhash_rust::xxh3::Xxh3::new();
        for piece in buf.chunks(3) {
            x.update(piece);
        }
        x.digest()
    }

    /// A row's hash is part of the contract: pinned, as the first implementation computed
    /// it, so no rewrite of the hasher changes it for leaders or replicas already running.
    #[test]
    fn the_hash_of_a_known_row_is_pinned() {
        let s = shape(vec![
            col("id", 1, None),
            col("name", 0, None),
            col("n", 0, Some("0")),
            col("r", 0, None),
            col("b", 0, None),
            col("z", 0, None),
        ]);
        let row = [
            SqlValue::Integer(7),
            SqlValue::Text("ann ☕".into()),
            SqlValue::Integer(0),
            SqlValue::Real(1.5),
            SqlValue::Blob(vec![0, 255]),
            SqlValue::Null,
        ];
        assert_eq!(row_hash(&s, &row), 6544694214353216022);
    }

    proptest! {
        /// Hashing the encoding in one call is xxh3 of the same bytes as streaming it.
        #[test]
        fn one_shot_equals_streaming(values in prop::collection::vec(value(), 3)) {
            let s = shape(vec![col("id", 1, None), col("a", 0, Some("0")), col("b", 0, None)]);
            let h = RowHasher::new(&s);
            prop_assert_eq!(h.hash(&values), streamed(&h, &values));
        }

        /// Column order never matters: the same columns in another order hash
        /// the same.
        #[test]
        fn column_order_does_not_matter(values in prop::collection::vec(value(), 3)) {
            let s = shape(vec![col("id", 1, None), col("a", 0, None), col("b", 0, None)]);
            let r = shape(vec![col("b", 0, None), col("id", 1, None), col("a", 0, None)]);
            let row = values.clone();
            let reordered = [values[2].clone(), values[0].clone(), values[1].clone()];
            prop_assert_eq!(row_hash(&s, &row), row_hash(&r, &reordered));
        }

        /// Kept incrementally, the sum equals the sum recomputed from the
        /// rows, whatever the order of the changes.
        #[test]
        fn incremental_sum_equals_the_recomputed_one(
            ops in prop::collection::vec((0i64..6, prop::option::of(value())), 0..40)
        ) {
            let s = shape(vec![col("id", 1, None), col("v", 0, Some("0"))]);
            let h = RowHasher::new(&s);
            let mut rows = std::collections::BTreeMap::new();
            let mut sum = 0u64;
            for (id, v) in ops {
                let before = rows.get(&id).map(|r: &Vec<SqlValue>| h.hash(r));
                let after = v.map(|v| vec![SqlValue::Integer(id), v]);
                sum = apply(sum, before, after.as_ref().map(|r| h.hash(r)));
                match after {
                    Some(r) => { rows.insert(id, r); }
                    None => { rows.remove(&id); }
                }
            }
            let recomputed = rows.values().fold(0u64, |acc, r| acc.wrapping_add(h.hash(r)));
            prop_assert_eq!(sum, recomputed);
        }
    }
}
