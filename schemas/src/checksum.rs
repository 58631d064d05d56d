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
    /// Sorted by name.
    columns: Vec<HashedColumn>,
}

/// One column as the hasher sees it.
#[derive(Debug, Clone)]
struct HashedColumn {
    /// Its index in the row.
    index: usize,
    /// Its name as encoded (u32 length, bytes), ready to copy.
    prefix: Box<[u8]>,
    /// Part of the key: never left out.
    key: bool,
    /// The schema default, left out like NULL.
    default: Option<SqlValue>,
}

impl RowHasher {
    /// The hasher of rows written with `shape`.
    pub fn new(shape: &RowShape) -> Self {
        let mut columns: Vec<_> = shape
            .columns
            .iter()
            .enumerate()
            .map(|(index, c)| {
                let mut prefix = (c.name.len() as u32).to_le_bytes().to_vec();
                prefix.extend_from_slice(c.name.as_bytes());
                HashedColumn {
                    index,
                    prefix: prefix.into(),
                    key: c.pk > 0,
                    default: c.default.as_deref().and_then(parse_sql_literal),
                }
            })
            .collect();
        // By name: the prefix's bytes after the length.
        columns.sort_by(|a, b| a.prefix[4..].cmp(&b.prefix[4..]));
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

    /// The shape's column indexes in hash order (by name). A statement or a
    /// trigger that hands a row's values over in this order can have it
    /// hashed by [`RowHasher::hash_sorted`].
    pub fn sorted_indexes(&self) -> impl Iterator<Item = usize> + '_ {
        self.columns.iter().map(|c| c.index)
    }

    /// The number of columns hashed (the shape's).
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// True for a shape without columns.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The hash of a row read straight from SQLite, `value(k)` being the
    /// value of the k-th column in [`RowHasher::sorted_indexes`] order: the
    /// same digest as [`RowHasher::hash`] of the row as [`SqlValue`]s, with
    /// nothing allocated per row.
    pub fn hash_sorted<'v>(&self, value: impl Fn(usize) -> rusqlite::types::ValueRef<'v>) -> u64 {
        ENCODED.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            for (k, c) in self.columns.iter().enumerate() {
                c.push(&mut buf, Piece::from(value(k)));
            }
            xxh3_64(&buf)
        })
    }

    /// The canonical encoding of `row` (see the module docs), appended to `out`.
    fn encode(&self, row: &[SqlValue], out: &mut Vec<u8>) {
        for c in &self.columns {
            c.push(
                out,
                Piece::from(row.get(c.index).unwrap_or(&SqlValue::Null)),
            );
        }
    }
}

/// One value as the encoding sees it, borrowed from a [`SqlValue`] or from
/// SQLite.
#[derive(Clone, Copy)]
enum Piece<'a> {
    Null,
    Integer(i64),
    Real(f64),
    /// Valid UTF-8.
    Text(&'a [u8]),
    Blob(&'a [u8]),
}

impl<'a> From<&'a SqlValue> for Piece<'a> {
    fn from(v: &'a SqlValue) -> Self {
        match v {
            SqlValue::Null => Piece::Null,
            SqlValue::Integer(i) => Piece::Integer(*i),
            SqlValue::Real(f) => Piece::Real(*f),
            SqlValue::Text(t) => Piece::Text(t.as_bytes()),
            SqlValue::Blob(b) => Piece::Blob(b),
        }
    }
}

impl<'a> From<rusqlite::types::ValueRef<'a>> for Piece<'a> {
    /// As [`SqlValue`]'s conversion: text that is not UTF-8 counts as a BLOB.
    fn from(v: rusqlite::types::ValueRef<'a>) -> Self {
        use rusqlite::types::ValueRef;
        match v {
            ValueRef::Null => Piece::Null,
            ValueRef::Integer(i) => Piece::Integer(i),
            ValueRef::Real(f) => Piece::Real(f),
            ValueRef::Text(t) if std::str::from_utf8(t).is_ok() => Piece::Text(t),
            ValueRef::Text(t) | ValueRef::Blob(t) => Piece::Blob(t),
        }
    }
}

impl HashedColumn {
    /// The column's part of the encoding, appended to `out`: nothing when
    /// it is not part of the key and NULL or its default.
    #[inline]
    fn push(&self, out: &mut Vec<u8>, v: Piece) {
        if !self.key {
            let is_default = match (&self.default, v) {
                (_, Piece::Null) => true,
                (Some(SqlValue::Integer(d)), Piece::Integer(i)) => *d == i,
                (Some(SqlValue::Real(d)), Piece::Real(f)) => *d == f,
                (Some(SqlValue::Text(d)), Piece::Text(t)) => d.as_bytes() == t,
                (Some(SqlValue::Blob(d)), Piece::Blob(b)) => d.as_slice() == b,
                _ => false,
            };
            if is_default {
                return;
            }
        }
        out.extend_from_slice(&self.prefix);
        match v {
            Piece::Null => out.push(0),
            Piece::Integer(i) => {
                out.push(1);
                out.extend_from_slice(&i.to_le_bytes());
            }
            Piece::Real(f) => {
                out.push(2);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            Piece::Text(t) => {
                out.push(3);
                out.extend_from_slice(&(t.len() as u32).to_le_bytes());
                out.extend_from_slice(t);
            }
            Piece::Blob(b) => {
                out.push(4);
                out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                out.extend_from_slice(b);
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

    fn as_ref(v: &SqlValue) -> rusqlite::types::ValueRef<'_> {
        use rusqlite::types::ValueRef;
        match v {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Integer(i) => ValueRef::Integer(*i),
            SqlValue::Real(f) => ValueRef::Real(*f),
            SqlValue::Text(t) => ValueRef::Text(t.as_bytes()),
            SqlValue::Blob(b) => ValueRef::Blob(b),
        }
    }

    /// Text SQLite holds that is not UTF-8 hashes as the BLOB the follower
    /// would read it as.
    #[test]
    fn text_that_is_not_utf8_hashes_as_a_blob() {
        let s = shape(vec![col("id", 1, None), col("v", 0, None)]);
        let h = RowHasher::new(&s);
        let bad = [0xff_u8, 0xfe];
        let row = [SqlValue::Integer(1), SqlValue::Blob(bad.to_vec())];
        let sorted: Vec<rusqlite::types::ValueRef> = vec![
            rusqlite::types::ValueRef::Integer(1),
            rusqlite::types::ValueRef::Text(&bad),
        ];
        assert_eq!(h.hash_sorted(|k| sorted[k]), h.hash(&row));
    }

    proptest! {
        /// Hashing SQLite's values handed over in name order gives the
        /// digest of the row as values, defaults and NULLs left out alike.
        #[test]
        fn hash_sorted_equals_hash(values in prop::collection::vec(value(), 4)) {
            let s = shape(vec![
                col("id", 1, None), col("b", 0, Some("0")), col("a", 0, Some("'x'")), col("c", 0, Some("1.5")),
            ]);
            let h = RowHasher::new(&s);
            let order: Vec<usize> = h.sorted_indexes().collect();
            prop_assert_eq!(h.hash_sorted(|k| as_ref(&values[order[k]])), h.hash(&values));
            for v in [SqlValue::Integer(0), SqlValue::Text("x".into()), SqlValue::Real(1.5)] {
                let mut d = values.clone();
                d[1] = v.clone();
                d[2] = v.clone();
                d[3] = v;
                prop_assert_eq!(h.hash_sorted(|k| as_ref(&d[order[k]])), h.hash(&d));
            }
        }

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
