use std::path::Path;

use barista_schemas::checksum::{from_wire, RowHasher};
use barista_schemas::envelope::RowShape;
use barista_schemas::{Position as P, SqlValue, TableSchemas, TableShape};
use rusqlite::Connection;

use super::verify::{verify, Verdict};
use super::*;
use crate::capture::open_leader;
use crate::triggers;

mod replace;

/// Every row of `table` as the leader holds it now, in its columns' declared order.
fn rows_of(conn: &Connection, shape: &TableShape) -> Vec<Vec<SqlValue>> {
    let cols: Vec<String> = shape
        .columns
        .iter()
        .map(|c| triggers::quote(&c.name))
        .collect();
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {} FROM {}",
            cols.join(", "),
            triggers::quote(&shape.name)
        ))
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            (0..cols.len())
                .map(|i| Ok(SqlValue::from(r.get_ref(i)?)))
                .collect()
        })
        .unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

/// A sum recomputed from scratch: every row of `table` as the leader holds it now, hashed
/// in the shape derived from its columns now.
fn recomputed(conn: &Connection, table: &str) -> u64 {
    let schemas = TableSchemas::derive(TableShape::read(conn, table).unwrap()).unwrap();
    let hasher = RowHasher::new(&RowShape::from_value_schema(&schemas.value_json).unwrap());
    rows_of(conn, &schemas.shape)
        .iter()
        .fold(0u64, |sum, row| sum.wrapping_add(hasher.hash(row)))
}

/// A capture on a leader file and the checksums kept from what it reads.
struct Rig {
    path: std::path::PathBuf,
    app: Connection,
    capture: Capture,
    sums: Checksums,
    read: P,
    /// Every change read so far, in order: what followers are sent.
    seen: Vec<crate::capture::ChangeRow>,
}

impl Rig {
    fn new(dir: &Path, ddl: &str) -> Rig {
        let path = dir.join("leader.db");
        let app = open_leader(&path).unwrap();
        app.execute_batch(ddl).unwrap();
        Self::start(path, app)
    }

    /// A producer starting on the file: capture installed, sums loaded as of the acked
    /// position.
    fn start(path: std::path::PathBuf, app: Connection) -> Rig {
        let capture = Capture::install(open_leader(&path).unwrap(), &[], false).unwrap();
        let read = capture.acked().unwrap();
        let sums = Checksums::load(&capture, read).unwrap();
        Rig {
            path,
            app,
            capture,
            sums,
            read,
            seen: Vec::new(),
        }
    }

    /// Reads the next group in chunks of 2 changes, as the tail does: its commit record's
    /// checksums, by table.
    fn group(&mut self) -> Vec<(String, u64)> {
        let head = self.capture.head().unwrap();
        let mut from = self.read;
        loop {
            let (rows, scanned) = self.capture.read(from, head, 2).unwrap();
            let marks = self.capture.take_marks();
            self.sums.apply(&self.capture, &rows, &marks).unwrap();
            self.seen.extend(rows);
            from = scanned.unwrap_or(head);
            if scanned.is_none_or(|s| s >= head) {
                break;
            }
        }
        self.read = head;
        self.sums
            .end_group(head)
            .into_iter()
            .map(|c| (c.table, from_wire(c.sum)))
            .collect()
    }

    fn expect(&self, tables: &[&str]) -> Vec<(String, u64)> {
        tables
            .iter()
            .map(|t| (t.to_string(), recomputed(&self.app, t)))
            .collect()
    }

    /// Kafka acknowledged everything read: stored with the prune.
    fn ack(&mut self) {
        let sums = self.sums.acknowledged(self.read);
        self.capture
            .prune(
                &crate::ack::Acked {
                    position: self.read,
                    ..Default::default()
                },
                Some(&sums),
            )
            .unwrap();
    }
}

const THREE_TABLES: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v);
    CREATE TABLE u(a TEXT, b INTEGER NOT NULL DEFAULT 0, c REAL, PRIMARY KEY (a, b));
    CREATE TABLE w(id INTEGER PRIMARY KEY, v);
    INSERT INTO t VALUES (1, 'one'), (2, x'00ff'), (3, 3.5);
    INSERT INTO u VALUES ('x', 0, NULL), ('y', 1, 2.5);";

#[test]
fn a_group_carries_exactly_the_tables_it_changed_with_their_sums_there() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rig::new(dir.path(), THREE_TABLES);
    // The snapshot: t and u have rows, w has none and is in no record.
    assert_eq!(r.group(), r.expect(&["t", "u"]));
    r.app
        .execute_batch(
            "BEGIN; INSERT INTO w VALUES (1, 'w'); UPDATE t SET v = 'uno' WHERE id = 1;
             DELETE FROM t WHERE id = 2; INSERT INTO t VALUES (4, NULL); COMMIT;",
        )
        .unwrap();
    assert_eq!(r.group(), r.expect(&["t", "w"]));
    // A key change, and a row changed and changed back: u's sum is as it was.
    let u_before = recomputed(&r.app, "u");
    r.app
        .execute_batch(
            "BEGIN; UPDATE u SET a = 'z' WHERE a = 'x'; UPDATE u SET a = 'x' WHERE a = 'z'; COMMIT;",
        )
        .unwrap();
    assert_eq!(r.group(), [("u".to_string(), u_before)]);
    r.app.execute_batch("DELETE FROM t").unwrap();
    assert_eq!(r.group(), [("t".to_string(), 0)]);
}

#[test]
fn a_rewind_goes_back_to_the_sums_as_of_the_acknowledged_position() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rig::new(dir.path(), THREE_TABLES);
    r.group();
    let acked = r.read;
    let at_ack = r.sums.live();
    r.app.execute_batch("UPDATE t SET v = 'x'").unwrap();
    let first = r.group();
    r.app.execute_batch("DELETE FROM u WHERE b = 1").unwrap();
    r.group();
    // A failed delivery: capture starts again after the acknowledged position.
    r.sums.rewind(acked);
    assert_eq!(r.sums.live(), at_ack);
    r.read = acked;
    assert_eq!(r.group(), r.expect(&["t", "u"]));
    assert_eq!(
        r.expect(&["t"]),
        first,
        "t did not change after the first group"
    );
}

#[test]
fn a_restarted_producer_continues_from_the_sums_stored_with_the_acked_position() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rig::new(dir.path(), THREE_TABLES);
    r.group();
    r.app
        .execute_batch("UPDATE t SET v = 'x' WHERE id = 1")
        .unwrap();
    r.group();
    r.ack();
    // Read but not acknowledged when the producer dies.
    r.app
        .execute_batch("INSERT INTO t VALUES (9, 'nine')")
        .unwrap();
    r.group();
    let stored: Vec<(String, i64, i64)> = r
        .app
        .prepare("SELECT tbl, sum, position FROM _barista_checksums ORDER BY tbl")
        .unwrap()
        .query_map([], |x| Ok((x.get(0)?, x.get(1)?, x.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(stored.len(), 3, "{stored:?}");
    // The snapshot is 1..=5, the update 6: stored as of 6, not as of the unacknowledged 7.
    assert!(stored.iter().all(|(_, _, p)| *p == 6), "{stored:?}");
    let Rig { path, app, .. } = r;
    app.execute_batch("UPDATE u SET c = 1.25 WHERE a = 'x'; DELETE FROM t WHERE id = 3")
        .unwrap();
    let mut r = Rig::start(path, app);
    assert_eq!(r.read, P(6));
    assert_eq!(r.group(), r.expect(&["t", "u"]));
}

#[test]
fn without_stored_sums_they_are_recomputed_consistently_with_the_changelog() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rig::new(dir.path(), THREE_TABLES);
    r.group();
    r.app
        .execute_batch("UPDATE t SET v = 'x' WHERE id = 1")
        .unwrap();
    r.group();
    r.ack();
    // A leader an older barista captured (or any gap): no stored sums, changes pending.
    r.app
        .execute_batch(
            "DELETE FROM _barista_checksums; INSERT INTO t VALUES (7, 'seven');
             UPDATE u SET c = 9.5; DELETE FROM t WHERE id = 1;",
        )
        .unwrap();
    let Rig { path, app, .. } = r;
    let mut r = Rig::start(path, app);
    assert_eq!(r.group(), r.expect(&["t", "u"]));
    // Stored at another position than the acknowledged one: a gap, recomputed too.
    r.ack();
    r.app
        .execute_batch("UPDATE _barista_checksums SET sum = 1, position = 1; UPDATE t SET v = 0")
        .unwrap();
    let Rig { path, app, .. } = r;
    let mut r = Rig::start(path, app);
    assert_eq!(r.group(), r.expect(&["t"]));
}

#[test]
fn a_shape_change_recomputes_the_sum_in_the_new_shape() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rig::new(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v, gone TEXT); INSERT INTO t VALUES (1, 'a', 'g'), (2, 'b', NULL);",
    );
    r.group();
    r.app
        .execute_batch("UPDATE t SET v = 'c' WHERE id = 2")
        .unwrap();
    // The migration drops a column and rewrites a row that capture does not see; more
    // changes follow in the same group.
    triggers::migrate_for_test(
        &r.app,
        "t",
        "ALTER TABLE t DROP COLUMN gone; UPDATE t SET v = 'hidden' WHERE id = 1;",
    );
    r.app
        .execute_batch("INSERT INTO t VALUES (3, 'd')")
        .unwrap();
    assert_eq!(r.group(), r.expect(&["t"]));
    // A marker with no change after it: the sum is recomputed at once, and what is stored
    // is in the new shape.
    triggers::migrate_for_test(
        &r.app,
        "t",
        "ALTER TABLE t ADD COLUMN n INTEGER NOT NULL DEFAULT 5; UPDATE t SET v = 'e' WHERE id = 3;",
    );
    assert_eq!(r.group(), []);
    // Changes, then a shape change, in one group: the sum is in a shape none of the group's
    // change events has, so the record leaves the table out; the next change brings it.
    r.app
        .execute_batch("UPDATE t SET v = 'f' WHERE id = 3")
        .unwrap();
    triggers::migrate_for_test(&r.app, "t", "ALTER TABLE t ADD COLUMN m TEXT;");
    assert_eq!(r.group(), []);
    r.app
        .execute_batch("UPDATE t SET m = 'g' WHERE id = 3")
        .unwrap();
    assert_eq!(r.group(), r.expect(&["t"]));
    r.ack();
    let Rig { path, app, .. } = r;
    app.execute_batch("UPDATE t SET n = 6 WHERE id = 2")
        .unwrap();
    let mut r = Rig::start(path, app);
    assert_eq!(r.group(), r.expect(&["t"]));
}

#[test]
fn a_dropped_table_is_forgotten_and_a_repair_snapshot_replaces_the_sum() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rig::new(dir.path(), THREE_TABLES);
    r.group();
    r.app
        .execute_batch("DROP TABLE w; UPDATE t SET v = 1")
        .unwrap();
    r.capture.notice_drops().unwrap();
    assert_eq!(r.group(), r.expect(&["t"]));
    r.ack();
    let names: Vec<String> = r
        .app
        .prepare("SELECT tbl FROM _barista_checksums ORDER BY tbl")
        .unwrap()
        .query_map([], |x| x.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(names, ["t", "u"]);
    // Triggers lost while the producer is down, a write they missed, then a restart with
    // --repair-triggers: the re-snapshot is the table's content, the sum follows it. While it
    // runs the sum is unknown (followers hold part of it); its end marker sets it, and the
    // next group that changes the table carries it.
    let Rig {
        path, app, capture, ..
    } = r;
    drop(capture);
    app.execute_batch("DROP TRIGGER _barista_1_upd; UPDATE t SET v = 'missed' WHERE id = 3;")
        .unwrap();
    let capture = Capture::install(open_leader(&path).unwrap(), &[], true).unwrap();
    let read = capture.acked().unwrap();
    let sums = Checksums::load(&capture, read).unwrap();
    let mut r = Rig {
        path,
        app,
        capture,
        sums,
        read,
        seen: Vec::new(),
    };
    crate::snapshot::run_all(&mut r.capture, 2).unwrap();
    assert_eq!(r.group(), []);
    r.app
        .execute_batch("UPDATE t SET v = 'after' WHERE id = 1")
        .unwrap();
    assert_eq!(r.group(), r.expect(&["t"]));
}

#[test]
fn verify_finds_a_row_changed_behind_the_triggers_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rig::new(dir.path(), THREE_TABLES);
    let file = r.path.display().to_string();
    let lines = |conn: &Connection| -> Vec<String> {
        verify(conn, &file)
            .unwrap()
            .iter()
            .map(|v| v.to_string())
            .collect()
    };
    // Freshly captured: no sum is stored before the first acknowledgement.
    let unknown = lines(&r.app);
    assert_eq!(unknown.len(), 3);
    assert!(
        unknown
            .iter()
            .all(|l| l.contains("not verified (no stored checksum")),
        "{unknown:?}"
    );
    r.group();
    r.ack();
    // Changes after the stored position are taken into account.
    r.app
        .execute_batch("UPDATE t SET v = 'later'; DELETE FROM u")
        .unwrap();
    let ok = verify(&r.app, &file).unwrap();
    assert!(
        ok.iter().all(|v| matches!(v.verdict, Verdict::Ok { .. })),
        "{ok:?}"
    );
    // A hand edit with the trigger dropped, then re-created with the producer's own SQL.
    let sql: String = r
        .app
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE name = '_barista_1_upd'",
            [],
            |x| x.get(0),
        )
        .unwrap();
    r.app
        .execute_batch(&format!(
            "DROP TRIGGER _barista_1_upd; UPDATE t SET v = 'edited' WHERE id = 3; {sql};"
        ))
        .unwrap();
    let found = verify(&r.app, &file).unwrap();
    let t = found.iter().find(|v| v.table == "t").unwrap();
    let Verdict::Mismatch {
        leader_file,
        stored,
        ..
    } = t.verdict
    else {
        panic!("{found:?}");
    };
    assert_ne!(leader_file, stored);
    assert!(t.to_string().starts_with("t: MISMATCH leader-file="), "{t}");
    assert!(found
        .iter()
        .filter(|v| v.table != "t")
        .all(|v| matches!(v.verdict, Verdict::Ok { .. })));
    // Not a leader: refused.
    let other = Connection::open(dir.path().join("other.db")).unwrap();
    assert!(matches!(
        verify(&other, "other.db"),
        Err(super::verify::VerifyError::NotALeader(_))
    ));
}
