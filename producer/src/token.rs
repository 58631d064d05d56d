//! Tokens for the writer's side: the leader position a write transaction
//! brings the database to, to hand to a client so its later reads on a
//! follower can ask for at least that position (read-your-writes).
//!
//! Why `max(position)` inside the writer's own transaction is exact: the
//! capture triggers append one changelog row per change in the writer's
//! transaction, numbered `max(position) + 1` (INTEGER PRIMARY KEY). SQLite
//! has a single writer: from its first write (or `BEGIN IMMEDIATE`) until
//! `COMMIT`, this transaction holds the write lock, so no other connection can
//! append to the changelog, and what it reads is everything committed before
//! it plus its own rows. Its `max(position)` is therefore its own last change,
//! or the head of the leader when it wrote nothing captured. The producer
//! never prunes the newest changelog row, so the maximum is never lost.
//! Followers apply whole commit groups, so once a follower's position is at
//! least the token, every change of this transaction is visible there.
//!
//! Any language can do the same in SQL (see [`COMMIT_POSITION_SQL`]):
//!
//! ```sql
//! BEGIN IMMEDIATE;
//! UPDATE customers SET favourite = 'cortado' WHERE id = 7;
//! SELECT coalesce(max(position), 0) AS token FROM _barista_changelog;
//! COMMIT;   -- the token is valid only if COMMIT succeeds
//! ```

use barista_schemas::Position;
use rusqlite::{Connection, Transaction, TransactionBehavior};

/// The leader's position (its changelog head) and its clock, for a leader
/// serving the read API from its own file (`barista_reads::read_row` and
/// `read_page` take it as their position SQL).
pub const LEADER_POSITION_SQL: &str = "SELECT coalesce(max(position), 0), \
     CAST(unixepoch('subsec') * 1000 AS INTEGER) FROM _barista_changelog";

/// The SQL that reads the token; run it inside the write transaction, after
/// its writes and before `COMMIT`.
pub const COMMIT_POSITION_SQL: &str = "SELECT coalesce(max(position), 0) FROM _barista_changelog";

/// The leader position this transaction's commit will bring the database to:
/// the position of its last captured change, or the current head when it
/// changed no captured table. Call after the writes, before `commit()`; the
/// value is a valid token only once the commit succeeded. Needs capture
/// installed (`_barista_changelog` exists).
pub fn commit_position(tx: &Transaction<'_>) -> rusqlite::Result<Position> {
    tx.query_row(COMMIT_POSITION_SQL, [], |r| r.get(0))
}

/// Runs `write` in a `BEGIN IMMEDIATE` transaction (the write lock is taken
/// up front, so even a transaction that writes nothing captured sees the
/// newest head), commits, and returns its result with the token.
pub fn write_with_token<T, E>(
    conn: &mut Connection,
    write: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
) -> Result<(T, Position), E>
where
    E: From<rusqlite::Error>,
{
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let out = write(&tx)?;
    let token = commit_position(&tx)?;
    tx.commit()?;
    Ok((out, token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{open_leader, Capture};

    #[test]
    fn token_is_the_transactions_last_change_or_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leader.db");
        let conn = open_leader(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v); CREATE TABLE uncaptured(x);",
        )
        .unwrap();
        let cap = Capture::install(conn, &["t".into()], false).unwrap();
        let mut a = open_leader(&path).unwrap();
        let mut b = open_leader(&path).unwrap();

        let ((), t1) = write_with_token(&mut a, |tx| {
            tx.execute_batch("INSERT INTO t VALUES (1, 'a'); INSERT INTO t VALUES (2, 'b');")
        })
        .unwrap();
        assert_eq!(t1, Position(2));
        let ((), t2) = write_with_token(&mut b, |tx| {
            tx.execute_batch("UPDATE t SET v = 'c' WHERE id = 1")
        })
        .unwrap();
        assert_eq!(t2, Position(3));
        // Nothing captured written: the head, so a read with it sees t2 too.
        let ((), t3) = write_with_token(&mut a, |tx| {
            tx.execute_batch("INSERT INTO uncaptured VALUES (1)")
        })
        .unwrap();
        assert_eq!(t3, Position(3));
        assert_eq!(cap.head().unwrap(), barista_schemas::Position(3));

        // A rolled-back transaction's number is handed out again: its token
        // must never be used, which is why the token is read before COMMIT
        // but only returned after it succeeded.
        let tx = a
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        tx.execute_batch("INSERT INTO t VALUES (3, 'x')").unwrap();
        assert_eq!(commit_position(&tx).unwrap(), Position(4));
        drop(tx);
        let ((), t4) = write_with_token(&mut b, |tx| {
            tx.execute_batch("INSERT INTO t VALUES (4, 'y')")
        })
        .unwrap();
        assert_eq!(t4, Position(4));
    }
}
