//! Unit tests of the apply transaction's checksums (a child module of
//! `checksums.rs`), on temp replica files.

use std::sync::Arc;

use barista_schemas::checksum::{self, RowHasher};
use barista_schemas::envelope::{DecodedChange, RowColumn, RowShape};
use barista_schemas::{Op, Position, Source, SqlValue};

use super::*;
use crate::replica::{Batch, Replica};

#[path = "checksums_tests_memo.rs"]
mod memo;

fn col(name: &str, pk: u32, default: Option<&str>) -> RowColumn {
    RowColumn {
        name: name.into(),
        decl_type: if pk > 0 {
            "INTEGER".into()
        } else {
            String::new()
        },
        pk,
        nullable: pk == 0 && default.is_none(),
        default: default.map(str::to_owned),
    }
}

fn shape2() -> Arc<RowShape> {
    Arc::new(RowShape {
        table: "t".into(),
        columns: vec![col("id", 1, None), col("v", 0, None)],
    })
}

fn change(
    shape: &Arc<RowShape>,
    pos: i64,
    op: Op,
    before: Option<Vec<SqlValue>>,
    after: Option<Vec<SqlValue>>,
) -> DecodedChange {
    DecodedChange {
        shape: shape.clone(),
        op,
        before,
        after,
        source: Source {
            connector: "barista".into(),
            db: "d".into(),
            table: shape.table.clone(),
            position: Position(pos),
            txn: Position(pos),
            prev_position: None,
            snapshot: false,
            ts_ms: 0,
            epoch: 0,
        },
        ts_ms: 0,
    }
}

fn row(id: i64, v: &str) -> Vec<SqlValue> {
    vec![SqlValue::Integer(id), SqlValue::Text(v.into())]
}

fn batch(changes: Vec<DecodedChange>, leader: Vec<LeaderSum>) -> Batch {
    let last = changes.last().map_or(Position::ZERO, |c| c.source.position);
    Batch {
        changes,
        offsets: vec![],
        position: Some((last, 0)),
        drops: vec![],
        checksums: leader,
        snapshots: vec![],
    }
}

/// The sum of `rows` under `shape`, as the leader would send it.
fn leader_sum(shape: &RowShape, rows: &[Vec<SqlValue>], since: i64) -> LeaderSum {
    let h = RowHasher::new(shape);
    let sum = rows
        .iter()
        .fold(0u64, |s, r| checksum::apply(s, None, Some(h.hash(r))));
    LeaderSum {
        table: shape.table.clone(),
        sum: checksum::to_wire(sum),
        since: Position(since),
    }
}

fn stored(r: &Replica, table: &str) -> i64 {
    r.connection()
        .query_row(
            "SELECT sum FROM _barista_checksums WHERE tbl = ?1",
            [table],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn the_rolling_sum_follows_creates_updates_deletes_and_key_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Replica::open(&dir.path().join("r.db")).unwrap();
    let s = shape2();
    r.apply(&batch(
        vec![
            change(&s, 1, Op::Create, None, Some(row(1, "a"))),
            change(&s, 2, Op::Create, None, Some(row(2, "b"))),
            // A resend of 1 (a re-snapshot, say): its old hash goes first.
            change(&s, 3, Op::Read, None, Some(row(1, "a"))),
            change(&s, 4, Op::Update, Some(row(2, "b")), Some(row(2, "c"))),
            change(&s, 5, Op::Update, Some(row(1, "a")), Some(row(7, "a"))),
            change(&s, 6, Op::Create, None, Some(row(3, "x"))),
            change(&s, 7, Op::Delete, Some(row(3, "x")), None),
        ],
        vec![leader_sum(&s, &[row(2, "c"), row(7, "a")], 1)],
    ))
    .unwrap();
    assert_eq!(r.divergence(), None);
    let rep = crate::verify::report(r.connection()).unwrap();
    assert!(rep.ok, "{rep:?}");
    assert_eq!(rep.tables[0].stored, Some(rep.tables[0].recomputed));
    assert_eq!(
        stored(&r, "t"),
        leader_sum(&s, &[row(2, "c"), row(7, "a")], 1).sum
    );
}

#[test]
fn a_hand_edit_is_found_at_the_next_commit_that_touches_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let mut r = Replica::open(&path).unwrap();
    let s = shape2();
    let one = vec![
        change(&s, 1, Op::Create, None, Some(row(1, "a"))),
        change(&s, 2, Op::Create, None, Some(row(2, "b"))),
    ];
    r.apply(&batch(
        one,
        vec![leader_sum(&s, &[row(1, "a"), row(2, "b")], 1)],
    ))
    .unwrap();
    // Someone edits row 2 with a plain SQLite connection.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("UPDATE t SET v = 'zz' WHERE id = 2", [])
        .unwrap();
    // A change to another key of the table: the edited row still counts.
    let two = vec![change(&s, 3, Op::Create, None, Some(row(3, "c")))];
    r.apply(&batch(
        two,
        vec![leader_sum(&s, &[row(1, "a"), row(2, "b"), row(3, "c")], 3)],
    ))
    .unwrap();
    let d = r.divergence().cloned().expect("diverged");
    assert_eq!((d.table.as_str(), d.position), ("t", Position(3)));
    assert_eq!(
        d.leader,
        leader_sum(&s, &[row(1, "a"), row(2, "b"), row(3, "c")], 3).sum
    );
    // Committed anyway, and recorded: a reopened replica knows.
    let n: i64 = r
        .connection()
        .query_row("SELECT count(*) FROM t", [], |x| x.get(0))
        .unwrap();
    assert_eq!(n, 3);
    drop(r);
    assert_eq!(Replica::open(&path).unwrap().divergence(), Some(&d));
    // `verify` cannot see it (the rolling value follows the rows) but a
    // comparison with the leader did.
    assert!(
        crate::verify::report(Replica::open(&path).unwrap().connection())
            .unwrap()
            .diverged
            .is_some()
    );
}

#[test]
fn a_hand_edit_of_a_table_never_written_again_is_found_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let mut r = Replica::open(&path).unwrap();
    let s = shape2();
    r.apply(&batch(
        vec![change(&s, 1, Op::Create, None, Some(row(1, "a")))],
        vec![],
    ))
    .unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("DELETE FROM t", [])
        .unwrap();
    let rep = crate::verify::report(r.connection()).unwrap();
    assert!(!rep.ok);
    assert_eq!(rep.tables[0].recomputed, 0);
}

#[test]
fn a_shape_change_or_a_replica_from_before_checksums_is_recomputed_from_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let mut r = Replica::open(&path).unwrap();
    let s = shape2();
    r.apply(&batch(
        vec![change(&s, 1, Op::Create, None, Some(row(1, "a")))],
        vec![],
    ))
    .unwrap();
    // A replica from before this version: no stored sums.
    r.connection()
        .execute("DELETE FROM _barista_checksums", [])
        .unwrap();
    // The writer adds a column with a default, then drops `v`: the shape
    // the sum is taken under changes twice.
    let wide = Arc::new(RowShape {
        table: "t".into(),
        columns: vec![
            col("id", 1, None),
            col("v", 0, None),
            col("n", 0, Some("0")),
        ],
    });
    let narrow = Arc::new(RowShape {
        table: "t".into(),
        columns: vec![col("id", 1, None), col("n", 0, Some("0"))],
    });
    let wide_row = |id, v: &str, n| {
        vec![
            SqlValue::Integer(id),
            SqlValue::Text(v.into()),
            SqlValue::Integer(n),
        ]
    };
    r.apply(&batch(
        vec![change(
            &wide,
            2,
            Op::Create,
            None,
            Some(wide_row(2, "b", 5)),
        )],
        vec![leader_sum(
            &wide,
            &[wide_row(1, "a", 0), wide_row(2, "b", 5)],
            2,
        )],
    ))
    .unwrap();
    assert_eq!(r.divergence(), None);
    let narrow_row = |id, n| vec![SqlValue::Integer(id), SqlValue::Integer(n)];
    r.apply(&batch(
        vec![change(
            &narrow,
            3,
            Op::Update,
            Some(narrow_row(2, 5)),
            Some(narrow_row(2, 6)),
        )],
        // The replica keeps `v`; the leader's rows no longer have it.
        vec![leader_sum(
            &narrow,
            &[narrow_row(1, 0), narrow_row(2, 6)],
            3,
        )],
    ))
    .unwrap();
    assert_eq!(r.divergence(), None);
    assert!(crate::verify::report(r.connection()).unwrap().ok);
}

/// A streamed group takes each partition's changes as far as its chain
/// goes: a change from before a migration (another partition, behind) can
/// be applied after one from after it. The leader's sum is under the shape
/// of the table's change with the highest position; so is the replica's.
#[test]
fn a_streamed_group_that_applies_an_old_shape_change_last_is_no_false_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Replica::open(&dir.path().join("r.db")).unwrap();
    let wide = Arc::new(RowShape {
        table: "t".into(),
        columns: vec![col("id", 1, None), col("v", 0, None), col("n", 0, None)],
    });
    // `v` dropped at position 4.
    let narrow = Arc::new(RowShape {
        table: "t".into(),
        columns: vec![col("id", 1, None), col("n", 0, None)],
    });
    let w = |id, v: &str, n| {
        vec![
            SqlValue::Integer(id),
            SqlValue::Text(v.into()),
            SqlValue::Integer(n),
        ]
    };
    let n = |id, n| vec![SqlValue::Integer(id), SqlValue::Integer(n)];
    r.apply(&batch(
        vec![
            change(&wide, 1, Op::Create, None, Some(w(1, "a", 0))),
            change(&wide, 2, Op::Create, None, Some(w(2, "b", 0))),
        ],
        vec![],
    ))
    .unwrap();
    // The group 3..=5: key 2's partition is ahead and streams its change
    // from after the drop first; key 1's change from before it comes last.
    r.apply_partial(&[change(&narrow, 5, Op::Update, Some(n(2, 0)), Some(n(2, 6)))])
        .unwrap();
    r.apply(&batch(
        vec![change(
            &wide,
            3,
            Op::Update,
            Some(w(1, "a", 0)),
            Some(w(1, "a", 7)),
        )],
        vec![leader_sum(&narrow, &[n(1, 7), n(2, 6)], 3)],
    ))
    .unwrap();
    assert_eq!(r.divergence(), None);
    // The stored sum is the leader's, under the new shape, and verify agrees.
    assert_eq!(
        stored(&r, "t"),
        leader_sum(&narrow, &[n(1, 7), n(2, 6)], 3).sum
    );
    assert!(crate::verify::report(r.connection()).unwrap().ok);
    // The next group is compared as usual.
    r.apply(&batch(
        vec![change(&narrow, 6, Op::Delete, Some(n(1, 7)), None)],
        vec![leader_sum(&narrow, &[n(2, 6)], 6)],
    ))
    .unwrap();
    assert_eq!(r.divergence(), None);
}

#[test]
fn a_leader_sum_from_a_group_without_a_change_of_the_table_is_not_compared() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Replica::open(&dir.path().join("r.db")).unwrap();
    let s = shape2();
    // The leader's sum comes from a later group (a migration's, say) than
    // the replica's last change of the table: under another shape maybe.
    r.apply(&batch(
        vec![change(&s, 1, Op::Create, None, Some(row(1, "a")))],
        vec![LeaderSum {
            table: "t".into(),
            sum: 12345,
            since: Position(2),
        }],
    ))
    .unwrap();
    assert_eq!(r.divergence(), None);
}

#[test]
fn a_streamed_group_is_compared_when_its_commit_record_closes_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Replica::open(&dir.path().join("r.db")).unwrap();
    let s = shape2();
    let rows: Vec<_> = (1..=10).map(|i| row(i, "v")).collect();
    let part: Vec<_> = (1..=6)
        .map(|i| change(&s, i, Op::Create, None, Some(row(i, "v"))))
        .collect();
    r.apply_partial(&part).unwrap();
    let rest: Vec<_> = (7..=10)
        .map(|i| change(&s, i, Op::Create, None, Some(row(i, "v"))))
        .collect();
    let mut wrong = leader_sum(&s, &rows, 1);
    r.apply(&batch(rest, vec![wrong.clone()])).unwrap();
    assert_eq!(r.divergence(), None);
    // And a wrong leader sum is a divergence.
    wrong.sum = wrong.sum.wrapping_add(1);
    wrong.since = Position(11);
    r.apply(&batch(
        vec![change(&s, 11, Op::Delete, Some(row(10, "v")), None)],
        vec![wrong],
    ))
    .unwrap();
    assert!(r.divergence().is_some());
}

#[test]
fn without_checksums_the_stored_sums_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let s = shape2();
    let mut r = Replica::open(&path).unwrap();
    r.apply(&batch(
        vec![change(&s, 1, Op::Create, None, Some(row(1, "a")))],
        vec![],
    ))
    .unwrap();
    drop(r);
    let mut r = Replica::open_with(&path, false).unwrap();
    r.apply(&batch(
        vec![change(&s, 2, Op::Create, None, Some(row(2, "b")))],
        vec![LeaderSum {
            table: "t".into(),
            sum: 1,
            since: Position(2),
        }],
    ))
    .unwrap();
    assert_eq!(r.divergence(), None);
    let n: i64 = r
        .connection()
        .query_row("SELECT count(*) FROM _barista_checksums", [], |x| x.get(0))
        .unwrap();
    assert_eq!(n, 0);
    drop(r);
    // On again: recomputed at the next change, so it matches the leader.
    let mut r = Replica::open(&path).unwrap();
    r.apply(&batch(
        vec![change(&s, 3, Op::Create, None, Some(row(3, "c")))],
        vec![leader_sum(&s, &[row(1, "a"), row(2, "b"), row(3, "c")], 3)],
    ))
    .unwrap();
    assert_eq!(r.divergence(), None);
}

#[test]
fn buckets_and_keys_name_a_differing_row() {
    let dir = tempfile::tempdir().unwrap();
    let s = shape2();
    let mut a = Replica::open(&dir.path().join("a.db")).unwrap();
    let mut b = Replica::open(&dir.path().join("b.db")).unwrap();
    let changes: Vec<_> = (1..=200)
        .map(|i| change(&s, i, Op::Create, None, Some(row(i, "v"))))
        .collect();
    a.apply(&batch(changes.clone(), vec![])).unwrap();
    b.apply(&batch(changes, vec![])).unwrap();
    b.connection()
        .execute("UPDATE t SET v = 'w' WHERE id = 77", [])
        .unwrap();
    let ba = crate::verify::buckets(a.connection(), "t")
        .unwrap()
        .unwrap();
    let bb = crate::verify::buckets(b.connection(), "t")
        .unwrap()
        .unwrap();
    assert_eq!((ba.rows, ba.position), (200, Position(200)));
    let differ: Vec<_> = (0..ba.buckets.len())
        .filter(|&i| ba.buckets[i] != bb.buckets[i])
        .collect();
    assert_eq!(differ.len(), 1);
    let ka = crate::verify::keys(a.connection(), "t", differ[0] as u64)
        .unwrap()
        .unwrap();
    let kb = crate::verify::keys(b.connection(), "t", differ[0] as u64)
        .unwrap()
        .unwrap();
    let changed: Vec<_> = ka
        .keys
        .iter()
        .filter(|k| !kb.keys.contains(k))
        .map(|k| k.key.clone())
        .collect();
    assert_eq!(changed, vec![serde_json::json!({ "id": 77 })]);
    assert!(crate::verify::buckets(a.connection(), "nope")
        .unwrap()
        .is_none());
}

#[test]
fn a_stored_shape_round_trips() {
    let s = RowShape {
        table: "t".into(),
        columns: vec![col("id", 1, None), col("n", 0, Some("'it''s'"))],
    };
    assert_eq!(shape_from_json(&shape_json(&s)), Some(s));
}
