//! Tables that change while the tail runs: DDL behind barista's back, tables created,
//! dropped and renamed.

use super::*;
#[test]
fn ddl_behind_baristas_back_stops_the_thread_with_the_drift_error() {
    let mut r = rig(100, Duration::from_secs(3600));
    r.app.execute_batch("ALTER TABLE t ADD COLUMN w").unwrap();
    let e = r.tail.poll_once(&mut r.seen).unwrap_err().to_string();
    assert!(e.contains("changed behind barista's back"), "{e}");
}

#[test]
fn a_table_created_while_running_is_captured_with_the_transaction_that_created_it() {
    let mut r = rig(100, Duration::from_secs(3600));
    r.app
        .execute_batch("INSERT INTO t VALUES (1, 'a')")
        .unwrap();
    r.poll();
    // One leader transaction creates a table, fills it and writes to `t`.
    r.app
        .execute_batch(
            "BEGIN; CREATE TABLE fresh(k TEXT PRIMARY KEY, n INTEGER);
             INSERT INTO fresh VALUES ('x', 1), ('y', 2); INSERT INTO t VALUES (2, 'b'); COMMIT;",
        )
        .unwrap();
    r.poll();
    // The new table is announced before the group that holds its snapshot,
    // and that group is the creating transaction's: one group, whole.
    assert_eq!(
        r.chunks(),
        [(0, 1, 1, vec![1], true), (0, 2, 4, vec![2, 3, 4], true)]
    );
    assert_eq!(r.announced, [("fresh".to_owned(), 1)]);
    // Its writes from now on are captured by its triggers.
    r.app
        .execute_batch("UPDATE fresh SET n = 3 WHERE k = 'x'")
        .unwrap();
    r.poll();
    assert_eq!(r.chunks(), [(0, 5, 5, vec![5], true)]);
    assert_eq!(r.announced.len(), 1, "announced once");
}

#[test]
fn a_new_table_without_a_primary_key_or_off_the_list_is_not_captured() {
    let mut r = rig(100, Duration::from_secs(3600));
    r.app
        .execute_batch("CREATE TABLE loose(a, b); INSERT INTO loose VALUES (1, 2);")
        .unwrap();
    r.poll();
    assert_eq!(r.chunks(), []);
    assert!(r.announced.is_empty());
    assert!(r.tail.capture.reported.contains("loose"));
    // With an explicit --tables list, other new tables are only reported.
    r.tail.capture.wanted = vec!["t".to_owned()];
    r.app
        .execute_batch("CREATE TABLE other(id INTEGER PRIMARY KEY); INSERT INTO other VALUES (1);")
        .unwrap();
    r.poll();
    assert_eq!(r.chunks(), []);
    assert!(r.announced.is_empty());
    assert!(r.tail.capture.reported.contains("other"));
}

/// A chunk's group and the drops in it: (first, last, [(position, table)]).
type GroupDrops = (i64, i64, Vec<(i64, String)>);

/// Every chunk handed over so far, with its drops.
fn drops_of(r: &mut Rig) -> Vec<GroupDrops> {
    let mut out = Vec::new();
    while let Ok(m) = r.rx.try_recv() {
        if let CaptureMsg::Chunk {
            first, last, drops, ..
        } = m
        {
            out.push((
                first.0,
                last.0,
                drops.into_iter().map(|(p, n)| (p.0, n)).collect(),
            ));
        }
    }
    out
}

#[test]
fn a_dropped_table_is_recorded_in_the_group_that_dropped_it() {
    let mut r = rig(100, Duration::from_secs(3600));
    r.app
        .execute_batch("INSERT INTO t VALUES (1, 'a'); CREATE TABLE u(id INTEGER PRIMARY KEY);")
        .unwrap();
    r.poll();
    r.app.execute_batch("INSERT INTO u VALUES (7)").unwrap();
    r.poll();
    drops_of(&mut r);
    r.app
        .execute_batch("BEGIN; INSERT INTO t VALUES (2, 'b'); DROP TABLE u; COMMIT;")
        .unwrap();
    assert_eq!(r.poll(), Flow::Continue, "a drop is not drift");
    // t's insert at 3, then the marker at 4, one group.
    assert_eq!(drops_of(&mut r), [(3, 4, vec![(4, "u".to_owned())])]);
    // A table created again under the name is a new table, captured afresh.
    r.app
        .execute_batch("CREATE TABLE u(id INTEGER PRIMARY KEY, v); INSERT INTO u VALUES (8, 'x');")
        .unwrap();
    r.poll();
    assert_eq!(r.chunks(), [(0, 5, 5, vec![5], true)]);
    assert_eq!(r.announced.last().map(|a| a.0.as_str()), Some("u"));
}

#[test]
fn a_renamed_table_is_a_drop_and_a_new_table_with_its_rows() {
    let mut r = rig(100, Duration::from_secs(3600));
    r.app
        .execute_batch("INSERT INTO t VALUES (1, 'a'), (2, 'b');")
        .unwrap();
    r.poll();
    drops_of(&mut r);
    r.app.execute_batch("ALTER TABLE t RENAME TO t2").unwrap();
    r.poll();
    // The drop of `t` at 3, the snapshot of `t2` at 4 and 5.
    assert_eq!(drops_of(&mut r), [(3, 5, vec![(3, "t".to_owned())])]);
    // t's old triggers are gone: writes to t2 are captured once, as t2's.
    r.app
        .execute_batch("UPDATE t2 SET v = 'c' WHERE id = 1")
        .unwrap();
    r.poll();
    let (rows, _) = r.tail.capture.read(Position(5), Position(99), 10).unwrap();
    let t2 = r
        .tail
        .capture
        .tables()
        .values()
        .find(|t| t.schemas.shape.name == "t2")
        .unwrap()
        .id;
    assert_eq!(
        rows.iter()
            .map(|c| (c.position.0, c.table_id))
            .collect::<Vec<_>>(),
        [(6, t2)]
    );
}

#[test]
fn two_tables_created_at_once_are_both_captured() {
    let mut r = rig(100, Duration::from_secs(3600));
    r.app
        .execute_batch(
            "CREATE TABLE doomed(id INTEGER PRIMARY KEY, v); INSERT INTO doomed VALUES (1, 'x');
             CREATE TABLE moved(id INTEGER PRIMARY KEY, v); INSERT INTO moved VALUES (1, 'a'), (2, 'b');",
        )
        .unwrap();
    for _ in 0..3 {
        assert_eq!(r.poll(), Flow::Continue);
    }
    r.app
        .execute_batch("INSERT INTO moved VALUES (3, 'c')")
        .unwrap();
    assert_eq!(r.poll(), Flow::Continue);
}

#[test]
fn a_group_of_several_chunks_names_its_drops_on_the_first() {
    let mut r = rig(2, Duration::from_secs(3600));
    r.app
        .execute_batch("CREATE TABLE u(id INTEGER PRIMARY KEY); INSERT INTO u VALUES (1);")
        .unwrap();
    r.poll();
    drops_of(&mut r);
    r.app
        .execute_batch(
            "BEGIN; INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c'); DROP TABLE u;
             CREATE TABLE u(id INTEGER PRIMARY KEY, v); INSERT INTO u VALUES (9, 'x'); COMMIT;",
        )
        .unwrap();
    r.poll();
    // 2..4 t's inserts, 5 the drop of u, 6 the new u's snapshot: in chunks of 2.
    assert_eq!(
        drops_of(&mut r),
        [
            (2, 6, vec![(5, "u".to_owned())]),
            (2, 6, vec![]),
            (2, 6, vec![]),
        ]
    );
}

#[test]
fn a_table_created_and_dropped_between_two_looks_publishes_nothing() {
    let mut r = rig(100, Duration::from_secs(3600));
    r.app
        .execute_batch(
            "CREATE TABLE brief(id INTEGER PRIMARY KEY); INSERT INTO brief VALUES (1);
             DROP TABLE brief; INSERT INTO t VALUES (1, 'a');",
        )
        .unwrap();
    assert_eq!(r.poll(), Flow::Continue);
    assert_eq!(r.chunks(), [(0, 1, 1, vec![1], true)]);
    assert!(r.announced.is_empty());
}
