//! The hash of each replica row this connection wrote or scanned, by key (a
//! child module of `checksums.rs`), so that a change takes the hash of the
//! row the replica had out of its table's sum without reading the row again.
//!
//! Only this connection writes the replica while the memo is kept: another
//! connection's commit (`PRAGMA data_version`, see [`super::Sums::begin`]) or
//! a rollback forgets every table's memo, and the next change then reads the
//! rows. A memo is taken under one writer shape: a table whose shape changes
//! is recomputed from its rows and its memo rebuilt. A table's memo is
//! complete when it holds every row of the table; a key missing from a
//! complete memo has no row, otherwise the row is read.
//!
//! Here too: the per-change steps of [`Sums`] that use the memo
//! ([`Sums::replace`], [`Sums::delete`]: one memo probe each) and the full
//! scan that recomputes a table's sum and fills its memo. Reads the replica
//! (the scan; an indexed read when the memo cannot answer); writes nothing.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use barista_schemas::checksum::{self, RowHasher};
use barista_schemas::envelope::RowShape;
use barista_schemas::{Position, SqlValue};
use rusqlite::types::ValueRef;
use rusqlite::{params_from_iter, Connection, OptionalExtension, ToSql};
use xxhash_rust::xxh3::xxh3_128;

use super::{quote, Reads, ShapePlan, Sums};

/// At most this many rows' hashes are kept, over all tables (hash tables of
/// about 18 MB for one-integer keys, 35 MB for others, at that count).
/// A table's memo that would grow past it is dropped (and rebuilt by the
/// next recompute); its changes read the rows until then.
pub(super) const MEMO_ROWS: usize = 900_000;

/// A row's key, as the memo knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum KeyHash {
    /// A key of one integer (every rowid table's `INTEGER PRIMARY KEY`, the
    /// common case), spread over 64 bits by an odd multiplier: a bijection,
    /// so distinct integers never share it, and the map's bucket and tag
    /// bits vary.
    Integer(u64),
    /// Any other key: xxh3-128 of its values (storage class and value, in
    /// key order). 128 bits: two keys of one table never share it in
    /// practice.
    Hashed(u128),
}

/// Row hashes by key, the keys of one integer in a map of their own: 16
/// bytes an entry instead of 32, so twice as many rows stay in the CPU's
/// cache (the lookup's cache miss is most of what a memo costs per change).
#[derive(Default)]
pub(super) struct Rows {
    integers: HashMap<u64, u64, BuildHasherDefault<KeyHasher>>,
    hashed: HashMap<u128, u64, BuildHasherDefault<KeyHasher>>,
}

impl Rows {
    pub(super) fn insert(&mut self, k: KeyHash, h: u64) -> Option<u64> {
        match k {
            KeyHash::Integer(k) => self.integers.insert(k, h),
            KeyHash::Hashed(k) => self.hashed.insert(k, h),
        }
    }

    pub(super) fn remove(&mut self, k: KeyHash) -> Option<u64> {
        match k {
            KeyHash::Integer(k) => self.integers.remove(&k),
            KeyHash::Hashed(k) => self.hashed.remove(&k),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.integers.len() + self.hashed.len()
    }
}

/// The memo of one table.
#[derive(Default)]
pub(super) struct Memo {
    /// Row hash by key.
    pub(super) rows: Rows,
    /// Holds every row of the table.
    pub(super) complete: bool,
    /// The writer shape (as stored) the hashes were taken under.
    pub(super) shape: String,
}

/// The key hashes are hashes already: the map uses their low bits as they
/// are (SipHash would cost more than the rest of a lookup).
#[derive(Default)]
pub(super) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

/// The memo's key of a row whose key values are `values`, in key order.
/// Text that is not UTF-8 counts as a BLOB, as the row hash counts it. A
/// key of one integer skips the hash (see [`KeyHash::Integer`]).
pub(super) fn key_hash<'a>(mut values: impl Iterator<Item = ValueRef<'a>>) -> KeyHash {
    let first = values.next();
    let second = values.next();
    if let (Some(ValueRef::Integer(i)), None) = (first, second) {
        return KeyHash::Integer((i as u64).wrapping_mul(SPREAD));
    }
    KeyHash::Hashed(hashed_key(first.into_iter().chain(second).chain(values)))
}

/// 2^64 divided by the golden ratio, odd.
const SPREAD: u64 = 0x9E37_79B9_7F4A_7C15;

fn hashed_key<'a>(values: impl Iterator<Item = ValueRef<'a>>) -> u128 {
    KEY.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.clear();
        for v in values {
            match v {
                ValueRef::Null => buf.push(0),
                ValueRef::Integer(i) => {
                    buf.push(1);
                    buf.extend_from_slice(&i.to_le_bytes());
                }
                ValueRef::Real(f) => {
                    buf.push(2);
                    buf.extend_from_slice(&f.to_bits().to_le_bytes());
                }
                ValueRef::Text(t) | ValueRef::Blob(t) => {
                    let utf8 = matches!(v, ValueRef::Text(_)) && std::str::from_utf8(t).is_ok();
                    buf.push(if utf8 { 3 } else { 4 });
                    buf.extend_from_slice(&(t.len() as u32).to_le_bytes());
                    buf.extend_from_slice(t);
                }
            }
        }
        xxh3_128(&buf)
    })
}

thread_local! {
    /// [`key_hash`]'s buffer, reused: nothing allocated per change.
    static KEY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Sums {
    /// The open table of a change at `position` under `shape`, with the
    /// position and shape of its latest change kept.
    fn changed(
        &mut self,
        conn: &Connection,
        shape: &Arc<RowShape>,
        position: Position,
    ) -> rusqlite::Result<usize> {
        let i = self.table(conn, shape)?;
        let t = &mut self.open[i];
        if position >= t.last {
            t.last = position;
            if !Arc::ptr_eq(&t.last_plan, &t.plan) {
                t.last_plan = t.plan.clone();
            }
        }
        Ok(i)
    }

    /// Before the change at `position` writes `row` (in `shape`'s order,
    /// its key at `key`): the replica's row at that key, if any, leaves its
    /// table's sum (its hash from the memo, else from reading it) and `row`
    /// enters it, memo included. One memo probe. Called before the write,
    /// inside the transaction: a write that then fails rolls the
    /// transaction back, and [`Sums::end`] forgets the memos with it.
    pub fn replace<'c>(
        &mut self,
        conn: &'c Connection,
        reads: &mut Reads<'c>,
        shape: &Arc<RowShape>,
        key: &[&SqlValue],
        position: Position,
        row: &[SqlValue],
    ) -> rusqlite::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let i = self.changed(conn, shape, position)?;
        let t = &mut self.open[i];
        let h = t.plan.hasher.hash(row);
        let k = key_hash(key.iter().map(|v| value_ref(v)));
        let had = match t.memo.rows.insert(k, h) {
            Some(old) => Some(old),
            None => {
                self.memo_rows += 1;
                if t.memo.complete {
                    None
                } else {
                    read_hash(conn, reads, &t.plan, key)?
                }
            }
        };
        t.sum = checksum::apply(t.sum, had, Some(h));
        if self.memo_rows > self.memo_cap {
            // Over budget: this table's memo goes; its changes read rows until
            // its next recompute.
            self.memo_rows -= t.memo.rows.len();
            t.memo.rows = Default::default();
            t.memo.complete = false;
        }
        Ok(())
    }

    /// Before the change at `position` deletes the row at `key` (values in
    /// `shape`'s key order): that row, if any, leaves the sum and the memo.
    /// One memo probe; called before the delete, as [`Sums::replace`] is.
    pub fn delete<'c>(
        &mut self,
        conn: &'c Connection,
        reads: &mut Reads<'c>,
        shape: &Arc<RowShape>,
        key: &[&SqlValue],
        position: Position,
    ) -> rusqlite::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let i = self.changed(conn, shape, position)?;
        let t = &mut self.open[i];
        let k = key_hash(key.iter().map(|v| value_ref(v)));
        let had = match t.memo.rows.remove(k) {
            Some(old) => {
                self.memo_rows -= 1;
                Some(old)
            }
            None if t.memo.complete => None,
            None => read_hash(conn, reads, &t.plan, key)?,
        };
        t.sum = checksum::apply(t.sum, had, None);
        Ok(())
    }

    /// The sum of `plan`'s table recomputed from its rows, and their memo
    /// (complete if it fits in what the other memos leave of the budget).
    pub(super) fn recompute(
        &mut self,
        conn: &Connection,
        plan: &ShapePlan,
    ) -> rusqlite::Result<(u64, Memo)> {
        let mut memo = Memo {
            complete: true,
            shape: plan.json.clone(),
            ..Memo::default()
        };
        let room = self.memo_cap.saturating_sub(self.memo_rows);
        let (sum, _) = scan_hashes(conn, &plan.shape, &plan.hasher, |r, h| {
            if memo.rows.len() < room {
                let k = key_hash(
                    plan.key_sorted
                        .iter()
                        .map(|&c| r.get_ref(c).unwrap_or(ValueRef::Null)),
                );
                memo.rows.insert(k, h);
            } else {
                memo.complete = false;
            }
        })?;
        self.memo_rows += memo.rows.len();
        Ok((sum, memo))
    }
}

/// [`recompute`], handing each row (its columns in the hasher's order) and
/// its hash to `each`. Hashes SQLite's values as read: nothing allocated per
/// row.
pub(super) fn scan_hashes(
    conn: &Connection,
    shape: &RowShape,
    hasher: &RowHasher,
    mut each: impl FnMut(&rusqlite::Row<'_>, u64),
) -> rusqlite::Result<(u64, u64)> {
    let cols: Vec<String> = hasher
        .sorted_indexes()
        .map(|i| quote(&shape.columns[i].name))
        .collect();
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM {}",
        cols.join(", "),
        quote(&shape.table)
    ))?;
    let mut rows = stmt.query([])?;
    let (mut sum, mut n) = (0u64, 0u64);
    while let Some(r) = rows.next()? {
        // A column index below the statement's column count cannot fail.
        let h = hasher.hash_sorted(|c| r.get_ref(c).unwrap_or(ValueRef::Null));
        sum = checksum::apply(sum, None, Some(h));
        n += 1;
        each(r, h);
    }
    Ok((sum, n))
}

/// The hash of the replica's row at `key` under `plan`, read from the table
/// (one indexed read), or None when there is no row.
fn read_hash<'c>(
    conn: &'c Connection,
    reads: &mut Reads<'c>,
    plan: &Arc<ShapePlan>,
    key: &[&SqlValue],
) -> rusqlite::Result<Option<u64>> {
    let hasher = &plan.hasher;
    reads
        .statement(conn, plan)?
        .query_row(params_from_iter(key), |r| {
            // A column index below the statement's column count cannot fail.
            Ok(hasher.hash_sorted(|c| r.get_ref(c).unwrap_or(ValueRef::Null)))
        })
        .optional()
}

/// A value as SQLite would hand it back.
fn value_ref(v: &SqlValue) -> ValueRef<'_> {
    match v.to_sql() {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(r)) => r,
        // SqlValue's ToSql only borrows.
        _ => ValueRef::Null,
    }
}
