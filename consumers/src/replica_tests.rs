//! Unit tests of the replica (a child module of `replica.rs`).

use super::*;

#[test]
fn a_skip_is_stored_once_per_position_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Replica::open(&dir.path().join("r.db")).unwrap();
    let mut s = SkippedChange {
        topic: "p.customers".into(),
        partition: 1,
        offset: 42,
        position: Position(113),
        schema_id: Some(6),
        key: Some(vec![0, 0, 0, 0, 1, 2]),
        error: "schema 6 not found".into(),
        reason: "first".into(),
    };
    r.record_skip(&s).unwrap();
    s.reason = "second thoughts".into();
    r.record_skip(&s).unwrap();
    assert_eq!(
        r.skipped().unwrap(),
        [(("p.customers".to_owned(), 1), Position(113))]
    );
    let (reason, at): (String, String) = r
        .conn
        .query_row(
            "SELECT reason, skipped_at FROM _barista_skipped",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(reason, "second thoughts");
    assert!(at.ends_with('Z'), "{at}");
    assert!(!r.is_open(), "its own transaction, committed");
}
