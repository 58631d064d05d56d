use super::*;

use barista_schemas::Position as P;

fn leader() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let conn = open_leader(&dir.path().join("leader.db")).unwrap();
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        .unwrap();
    (dir, conn)
}

#[test]
fn snapshot_then_stream_with_every_storage_class() {
    let (dir, conn) = leader();
    conn.execute("INSERT INTO t VALUES (1, 'before capture')", [])
        .unwrap();
    let mut cap = Capture::install(conn, &[], false).unwrap();
    let app = open_leader(&dir.path().join("leader.db")).unwrap();
    app.execute_batch(
        "BEGIN; INSERT INTO t VALUES (2, x'00ff'); UPDATE t SET v = 9223372036854775807 WHERE id = 1;
         INSERT INTO t VALUES (3, 1.5); DELETE FROM t WHERE id = 2; COMMIT;",
    )
    .unwrap();
    let (rows, _) = cap.read(P(0), cap.head().unwrap(), 100).unwrap();
    let ops: Vec<_> = rows.iter().map(|r| (r.position, r.op)).collect();
    assert_eq!(
        ops,
        [
            (P(1), Op::Read),
            (P(2), Op::Create),
            (P(3), Op::Update),
            (P(4), Op::Create),
            (P(5), Op::Delete)
        ]
    );
    assert_eq!(
        rows[1].after.as_ref().unwrap()[1],
        SqlValue::Blob(vec![0, 255])
    );
    assert_eq!(
        rows[2].after.as_ref().unwrap()[1],
        SqlValue::Integer(i64::MAX)
    );
    assert_eq!(
        rows[2].before.as_ref().unwrap()[1],
        SqlValue::Text("before capture".into())
    );
}

#[test]
fn positions_are_never_reused_after_pruning() {
    let (dir, conn) = leader();
    let mut cap = Capture::install(conn, &[], false).unwrap();
    let app = open_leader(&dir.path().join("leader.db")).unwrap();
    app.execute_batch("INSERT INTO t VALUES (1, 'a'); INSERT INTO t VALUES (2, 'b');")
        .unwrap();
    assert_eq!(cap.head().unwrap(), P(2));
    cap.prune(
        &crate::ack::Acked {
            position: P(2),
            ..Default::default()
        },
        None,
    )
    .unwrap();
    assert_eq!(
        cap.backlog().unwrap(),
        1,
        "the newest row is kept so its number is never handed out again"
    );
    app.execute_batch("VACUUM; INSERT INTO t VALUES (3, 'c');")
        .unwrap();
    let (rows, _) = cap.read(P(2), cap.head().unwrap(), 10).unwrap();
    assert_eq!(rows.iter().map(|r| r.position).collect::<Vec<_>>(), [P(3)]);
}

#[test]
fn refuses_tables_without_key_and_detects_drift() {
    let (dir, conn) = leader();
    conn.execute_batch("CREATE TABLE loose(a, b)").unwrap();
    let err = Capture::install(conn, &["loose".into()], false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no PRIMARY KEY"), "{err}");
    let conn = open_leader(&dir.path().join("leader.db")).unwrap();
    drop(Capture::install(conn, &["t".into()], false).unwrap());
    let conn = open_leader(&dir.path().join("leader.db")).unwrap();
    conn.execute_batch("ALTER TABLE t ADD COLUMN w").unwrap();
    let err = Capture::install(conn, &["t".into()], false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("changed behind barista's back"), "{err}");
}

#[test]
fn a_blank_leader_installs_and_waits_and_keyless_tables_are_skipped_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blank.db");
    let conn = open_leader(&path).unwrap();
    conn.execute_batch("CREATE TABLE loose(a, b)").unwrap();
    let mut cap = Capture::install(conn, &[], false).unwrap();
    assert!(cap.tables().is_empty());
    let skipped = |c: &Capture| -> Vec<(String, String)> {
        c.skipped()
            .iter()
            .map(|(t, r)| (t.clone(), r.clone()))
            .collect()
    };
    assert_eq!(skipped(&cap), [("loose".into(), NO_PRIMARY_KEY.into())]);
    // The readers work on a changelog that no table has widened yet.
    assert_eq!(cap.head().unwrap(), P(0));
    assert!(cap.read(P(0), P(0), 10).unwrap().0.is_empty());
    assert!(cap.drops_between(P(0), P(0)).unwrap().is_empty());

    let app = open_leader(&path).unwrap();
    app.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a');
         CREATE TABLE loose2(x);",
    )
    .unwrap();
    let adopted = cap.adopt_new_tables().unwrap();
    let names: Vec<&str> = adopted
        .tables
        .iter()
        .map(|t| t.schemas.shape.name.as_str())
        .collect();
    assert_eq!(names, ["t"]);
    assert!(adopted.rescanned);
    assert_eq!(
        adopted.skipped,
        [("loose2".to_owned(), NO_PRIMARY_KEY.to_owned())],
        "loose was reported at start already"
    );
    assert_eq!(
        skipped(&cap),
        [
            ("loose".into(), NO_PRIMARY_KEY.into()),
            ("loose2".into(), NO_PRIMARY_KEY.into())
        ]
    );
    let (rows, _) = cap.read(P(0), cap.head().unwrap(), 10).unwrap();
    assert_eq!(rows.iter().map(|r| r.op).collect::<Vec<_>>(), [Op::Read]);
    // A skipped table that goes leaves the list.
    app.execute_batch("DROP TABLE loose").unwrap();
    cap.adopt_new_tables().unwrap();
    assert_eq!(skipped(&cap), [("loose2".into(), NO_PRIMARY_KEY.into())]);
}

#[test]
fn tables_left_out_of_the_list_are_skipped_with_that_reason() {
    let (dir, conn) = leader();
    conn.execute_batch("CREATE TABLE other(id INTEGER PRIMARY KEY)")
        .unwrap();
    let mut cap = Capture::install(conn, &["t".into()], false).unwrap();
    assert_eq!(
        cap.skipped().get("other").map(String::as_str),
        Some(NOT_LISTED)
    );
    let app = open_leader(&dir.path().join("leader.db")).unwrap();
    app.execute_batch("CREATE TABLE later(id INTEGER PRIMARY KEY)")
        .unwrap();
    let adopted = cap.adopt_new_tables().unwrap();
    assert!(adopted.tables.is_empty());
    assert_eq!(
        adopted.skipped,
        [("later".to_owned(), NOT_LISTED.to_owned())]
    );
    assert_eq!(cap.skipped().len(), 2);
    assert_eq!(cap.tables().len(), 1);
}

/// A migration widens the changelog (`SELECT *` gains columns) between two reads. The read
/// statement is cached, so SQLite re-prepares it at its first step: a read whose rows are
/// the marker and the first changes in the new shape must still see the new columns, not
/// NULL in their place (CI once saw "NULL in a NOT NULL column" for a column just added).
#[test]
fn a_read_that_meets_a_migration_sees_the_new_columns_of_the_rows_after_it() {
    let (dir, conn) = leader();
    conn.execute("INSERT INTO t VALUES (1, 'a')", []).unwrap();
    let mut cap = Capture::install(conn, &[], false).unwrap();
    let (rows, _) = cap.read(P(0), cap.head().unwrap(), 100).unwrap();
    assert_eq!(rows.len(), 1, "the snapshot read, which prepares the read");
    let seen = cap.head().unwrap();

    let app = open_leader(&dir.path().join("leader.db")).unwrap();
    crate::triggers::migrate_for_test(
        &app,
        "t",
        "ALTER TABLE t ADD COLUMN stamps INTEGER NOT NULL DEFAULT 0; \
         ALTER TABLE t ADD COLUMN note TEXT;",
    );
    app.execute_batch(
        "UPDATE t SET stamps = 4, note = 'n' WHERE id = 1; INSERT INTO t VALUES (2, 'b', 9, 'm');",
    )
    .unwrap();

    let (rows, _) = cap.read(seen, cap.head().unwrap(), 100).unwrap();
    let images: Vec<_> = rows
        .iter()
        .map(|r| (r.op, r.before.clone(), r.after.clone()))
        .collect();
    let (i, t) = (SqlValue::Integer, |s: &str| SqlValue::Text(s.into()));
    assert_eq!(
        images,
        [
            (
                Op::Update,
                Some(vec![i(1), t("a"), i(0), SqlValue::Null]),
                Some(vec![i(1), t("a"), i(4), t("n")])
            ),
            (Op::Create, None, Some(vec![i(2), t("b"), i(9), t("m")])),
        ]
    );
}
