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
//! ([`Sums::take_out`], [`Sums::put_in`], [`Sums::removed`]) and the full
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

use super::{quote, Reads, ShapePlan, Slot, Sums};

/// At most this many rows' hashes are kept, over all tables (about 25 MB).
/// A table's memo that would grow past it is dropped (and rebuilt by the
/// next recompute); its changes read the rows until then.
pub(super) const MEMO_ROWS: usize = 900_000;

/// A row's key, as the memo knows it: xxh3-128 of the key's values (storage
/// class and value, in key order). 128 bits: two keys of one table never
/// share it in practice.
pub(super) type KeyHash = u128;

/// The memo of one table.
#[derive(Default)]
pub(super) struct Memo {
    /// Row hash by key.
    pub(super) rows: HashMap<KeyHash, u64, BuildHasherDefault<KeyHasher>>,
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

    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

/// The memo's key of a row whose key values are `values`, in key order.
/// Text that is not UTF-8 counts as a BLOB, as the row hash counts it.
///
/// A key of one integer (every rowid table's `INTEGER PRIMARY KEY`, the
/// common case) skips the hash: the integer, spread over the low 64 bits by
/// an odd multiplier (a bijection, so distinct integers never share a key,
/// and the map's bucket and tag bits vary), under a top bit that tells it
/// from the xxh3 of other keys (those could meet it by chance only, one in
/// 2^127 per pair, as two of them can meet each other).
pub(super) fn key_hash<'a>(mut values: impl Iterator<Item = ValueRef<'a>>) -> KeyHash {
    let first = values.next();
    let second = values.next();
    if let (Some(ValueRef::Integer(i)), None) = (first, second) {
        return ONE_INTEGER | u128::from((i as u64).wrapping_mul(SPREAD));
    }
    hashed_key(first.into_iter().chain(second).chain(values))
}

/// The top bit of a [`key_hash`] of one integer.
const ONE_INTEGER: u128 = 1 << 127;
/// 2^64 divided by the golden ratio, odd.
const SPREAD: u64 = 0x9E37_79B9_7F4A_7C15;

fn hashed_key<'a>(values: impl Iterator<Item = ValueRef<'a>>) -> KeyHash {
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
    /// Before a write to `key` (values in `shape`'s key order) by the change
    /// at `position`: the replica's row there, if any, leaves the sum (its
    /// hash from the memo, else from reading it). The [`Slot`] is handed to
    /// [`Sums::put_in`] or [`Sums::removed`] after the write.
    pub fn take_out<'c>(
        &mut self,
        conn: &'c Connection,
        reads: &mut Reads<'c>,
        shape: &Arc<RowShape>,
        key: &[&SqlValue],
        position: Position,
    ) -> rusqlite::Result<Slot> {
        if !self.enabled {
            return Ok(Slot {
                table: usize::MAX,
                key: 0,
            });
        }
        let i = self.table(conn, shape)?;
        let t = &mut self.open[i];
        if position >= t.last {
            t.last = position;
            if !Arc::ptr_eq(&t.last_plan, &t.plan) {
                t.last_plan = t.plan.clone();
            }
        }
        let k = key_hash(key.iter().map(|v| value_ref(v)));
        let had = match t.memo.rows.get(&k) {
            Some(&h) => Some(h),
            None if t.memo.complete => None,
            None => {
                let hasher = &t.plan.hasher;
                reads
                    .statement(conn, &t.plan)?
                    .query_row(params_from_iter(key), |r| {
                        // A column index below the statement's column count cannot fail.
                        Ok(hasher.hash_sorted(|c| r.get_ref(c).unwrap_or(ValueRef::Null)))
                    })
                    .optional()?
            }
        };
        if let Some(h) = had {
            t.sum = checksum::apply(t.sum, Some(h), None);
        }
        Ok(Slot { table: i, key: k })
    }

    /// After writing `row` (in `shape`'s order) where [`Sums::take_out`]
    /// left `slot`: it enters the sum and the memo.
    pub fn put_in(&mut self, slot: Slot, row: &[SqlValue]) {
        let Some(t) = self.open.get_mut(slot.table) else {
            return;
        };
        let h = t.plan.hasher.hash(row);
        t.sum = checksum::apply(t.sum, None, Some(h));
        if t.memo.rows.insert(slot.key, h).is_none() {
            self.memo_rows += 1;
            if self.memo_rows > self.memo_cap {
                // Over budget: this table's memo goes; its changes read rows until
                // its next recompute.
                self.memo_rows -= t.memo.rows.len();
                t.memo.rows = Default::default();
                t.memo.complete = false;
            }
        }
    }

    /// After deleting the row where [`Sums::take_out`] left `slot`: the table
    /// has no row at that key.
    pub fn removed(&mut self, slot: Slot) {
        if let Some(t) = self.open.get_mut(slot.table) {
            if t.memo.rows.remove(&slot.key).is_some() {
                self.memo_rows -= 1;
            }
        }
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

/// A value as SQLite would hand it back.
fn value_ref(v: &SqlValue) -> ValueRef<'_> {
    match v.to_sql() {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(r)) => r,
        // SqlValue's ToSql only borrows.
        _ => ValueRef::Null,
    }
}
