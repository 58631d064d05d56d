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

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use rusqlite::types::ValueRef;
use xxhash_rust::xxh3::xxh3_128;

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
pub(super) fn key_hash<'a>(values: impl Iterator<Item = ValueRef<'a>>) -> KeyHash {
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
