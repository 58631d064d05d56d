//! `REPLACE` conflict resolution deletes rows without firing delete triggers (SQLite, with
//! `recursive_triggers` off, its default): the row with the same key, and any row holding a
//! value of another UNIQUE constraint. Each such row must reach followers as a delete, and
//! leave the kept checksum; conflicts that delete nothing (`OR IGNORE`, upserts, a failed
//! plain insert) must log nothing of the kind.

use std::collections::BTreeMap;

use barista_schemas::{Op, SqlValue};

use super::*;

/// What a follower would hold after applying every change the rig read, by table and key; a
/// delete of a key it does not hold, or an insert over one it does, fails the test (a false
/// delete, or a missing one).
fn replica(rig: &Rig) -> BTreeMap<String, BTreeMap<String, Vec<SqlValue>>> {
    let mut tables: BTreeMap<String, BTreeMap<String, Vec<SqlValue>>> = BTreeMap::new();
    for row in &rig.seen {
        let shape = &row.schemas.shape;
        let key = |values: &Vec<SqlValue>| {
            let k: Vec<&SqlValue> = shape.pk_indexes().iter().map(|&i| &values[i]).collect();
            format!("{k:?}")
        };
        let rows = tables.entry(shape.name.clone()).or_default();
        if let Some(before) = &row.before {
            let gone = rows.remove(&key(before));
            assert!(
                gone.is_some(),
                "{:?} at {:?} of a key the replica does not hold: {before:?}",
                row.op,
                row.position
            );
        }
        if let Some(after) = &row.after {
            let was = rows.insert(key(after), after.clone());
            assert!(
                was.is_none(),
                "{:?} at {:?} over a key the replica holds (a delete is missing): {was:?} -> {after:?}",
                row.op,
                row.position
            );
        }
    }
    tables
}

/// Every row of `table` on the leader, by key, as [`replica`] holds them.
fn leader(rig: &Rig, table: &str) -> BTreeMap<String, Vec<SqlValue>> {
    let shape = TableShape::read(&rig.app, table).unwrap();
    rows_of(&rig.app, &shape)
        .into_iter()
        .map(|row| {
            let k: Vec<&SqlValue> = shape.pk_indexes().iter().map(|&i| &row[i]).collect();
            (format!("{k:?}"), row)
        })
        .collect()
}

/// Runs `sql` on the leader, reads the group it made, and checks both what followers end
/// with and the kept checksum against the leader's rows.
fn step(rig: &mut Rig, sql: &str, tables: &[&str]) {
    rig.app.execute_batch(sql).unwrap();
    let sums = rig.group();
    let expected = rig.expect(tables);
    let replica = replica(rig);
    for t in tables {
        let empty = BTreeMap::new();
        assert_eq!(
            replica.get(*t).unwrap_or(&empty),
            &leader(rig, t),
            "{t} after {sql}"
        );
    }
    for (t, sum) in expected {
        if let Some((_, kept)) = sums.iter().find(|(name, _)| *name == t) {
            assert_eq!(*kept, sum, "{t}'s kept checksum after {sql}");
        }
    }
}

/// The number of changes of `op` the rig read so far.
fn count(rig: &Rig, op: Op) -> usize {
    rig.seen.iter().filter(|r| r.op == op).count()
}

#[test]
fn insert_or_replace_of_an_existing_row_is_a_delete_then_an_insert() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = Rig::new(dir.path(), "CREATE TABLE t(id INTEGER PRIMARY KEY, v);");
    step(&mut rig, "INSERT INTO t VALUES (1, 'a'), (2, 'b');", &["t"]);
    step(
        &mut rig,
        "INSERT OR REPLACE INTO t VALUES (1, 'c');",
        &["t"],
    );
    step(&mut rig, "REPLACE INTO t VALUES (2, 'b');", &["t"]);
    assert_eq!(count(&rig, Op::Delete), 2);
    // Several rows in one statement, some of them new.
    step(
        &mut rig,
        "WITH RECURSIVE s(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM s WHERE x < 3)
         INSERT OR REPLACE INTO t SELECT x, 'n' || x FROM s;",
        &["t"],
    );
    assert_eq!(count(&rig, Op::Delete), 4);
}

#[test]
fn a_replace_through_another_unique_column_deletes_that_row_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = Rig::new(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, email TEXT UNIQUE COLLATE NOCASE, a, b, v,
                        UNIQUE (a, b));
         CREATE UNIQUE INDEX t_v ON t(v COLLATE BINARY);",
    );
    step(
        &mut rig,
        "INSERT INTO t VALUES (1, 'a@x', 1, 1, 'one'), (2, 'b@x', 1, 2, 'two'),
                              (3, NULL, NULL, NULL, 'three'), (4, NULL, NULL, NULL, 'four');",
        &["t"],
    );
    // Row 1 holds the email (in another case), row 2 the pair (a, b): both are deleted.
    step(
        &mut rig,
        "INSERT OR REPLACE INTO t VALUES (5, 'A@X', 1, 2, 'five');",
        &["t"],
    );
    assert_eq!(count(&rig, Op::Delete), 2);
    // NULLs never conflict: nothing is deleted.
    step(
        &mut rig,
        "INSERT OR REPLACE INTO t VALUES (6, NULL, NULL, NULL, 'six');",
        &["t"],
    );
    assert_eq!(count(&rig, Op::Delete), 2);
    // The same key and another row's value at once.
    step(
        &mut rig,
        "INSERT OR REPLACE INTO t VALUES (6, NULL, NULL, NULL, 'three');",
        &["t"],
    );
    assert_eq!(count(&rig, Op::Delete), 4);
}

#[test]
fn update_or_replace_onto_another_rows_key_or_value_deletes_that_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = Rig::new(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, u UNIQUE, v);
         INSERT INTO t VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3), (4, 'd', 4);",
    );
    step(&mut rig, "", &["t"]);
    step(
        &mut rig,
        "UPDATE OR REPLACE t SET id = 2 WHERE id = 1;",
        &["t"],
    );
    step(
        &mut rig,
        "UPDATE OR REPLACE t SET u = 'c' WHERE id = 4;",
        &["t"],
    );
    assert_eq!(count(&rig, Op::Delete), 2);
    // Updates that keep their own key and values delete nothing.
    step(&mut rig, "UPDATE OR REPLACE t SET v = v + 1;", &["t"]);
    assert_eq!(count(&rig, Op::Delete), 2);
}

#[test]
fn conflicts_that_delete_nothing_log_no_delete() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = Rig::new(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, u UNIQUE, v);
         INSERT INTO t VALUES (-1, 'minus', 0), (1, 'a', 1), (2, 'b', 2);",
    );
    step(&mut rig, "", &["t"]);
    step(
        &mut rig,
        "INSERT OR IGNORE INTO t VALUES (1, 'z', 9); INSERT OR IGNORE INTO t VALUES (9, 'b', 9);",
        &["t"],
    );
    // An upsert updates; the insert after the ignored one (a new key) is only an insert.
    step(
        &mut rig,
        "INSERT INTO t VALUES (2, 'b', 20) ON CONFLICT(id) DO UPDATE SET v = excluded.v;
         INSERT INTO t VALUES (7, 'g', 7);",
        &["t"],
    );
    // A conflicting plain insert fails; its statement's work is undone.
    assert!(rig
        .app
        .execute_batch("INSERT INTO t VALUES (1, 'q', 1)")
        .is_err());
    step(
        &mut rig,
        "UPDATE OR IGNORE t SET u = 'a' WHERE id = 7;",
        &["t"],
    );
    step(&mut rig, "UPDATE t SET v = 'later' WHERE id = 1;", &["t"]);
    // A key SQLite picks: the BEFORE trigger sees -1 for it, the row -1 stays.
    step(
        &mut rig,
        "INSERT OR REPLACE INTO t(u, v) VALUES ('new', 5);",
        &["t"],
    );
    assert_eq!(count(&rig, Op::Delete), 0);
}

#[test]
fn with_recursive_triggers_on_each_replaced_row_is_deleted_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = Rig::new(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, u UNIQUE, v);
         INSERT INTO t VALUES (1, 'a', 1), (2, 'b', 2);",
    );
    step(&mut rig, "", &["t"]);
    rig.app
        .execute_batch("PRAGMA recursive_triggers = ON")
        .unwrap();
    step(
        &mut rig,
        "INSERT OR REPLACE INTO t VALUES (1, 'b', 3);",
        &["t"],
    );
    assert_eq!(count(&rig, Op::Delete), 2);
}

#[test]
fn a_composite_key_without_rowid_table_replaces_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = Rig::new(
        dir.path(),
        "CREATE TABLE w(a TEXT, b INTEGER, v, PRIMARY KEY (a, b)) WITHOUT ROWID;
         INSERT INTO w VALUES ('x', 1, 'one'), ('x', 2, 'two');",
    );
    step(&mut rig, "", &["w"]);
    step(&mut rig, "REPLACE INTO w VALUES ('x', 2, 'deux');", &["w"]);
    step(
        &mut rig,
        "UPDATE OR REPLACE w SET b = 2 WHERE b = 1;",
        &["w"],
    );
    assert_eq!(count(&rig, Op::Delete), 2);
}
