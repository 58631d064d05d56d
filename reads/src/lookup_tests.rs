//! Lookups and request parsing on a real SQLite file.

use std::time::Duration;

use barista_schemas::json::from_json;
use barista_schemas::{Position, SqlValue};
use rusqlite::Connection;
use serde_json::json;

use super::*;
use crate::request::{ReadRequest, MAX_TIMEOUT_MS};
use crate::ReadError;

fn db() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let c = Connection::open(dir.path().join("r.db")).unwrap();
    c.execute_batch(
        "CREATE TABLE _barista_position(id INTEGER PRIMARY KEY, position, leader_ts_ms, applied_at_ms);
         INSERT INTO _barista_position VALUES (1, 42, 1000, 0);
         CREATE TABLE t(id INTEGER, v, PRIMARY KEY(id));
         CREATE TABLE k(a TEXT, b BLOB, v, PRIMARY KEY(a, b));
         INSERT INTO t VALUES (1, 'one'), (2, x'00ff'), (3, 1.0), (4, 9223372036854775807), (5, NULL);
         INSERT INTO k VALUES ('x', x'01', 1), ('x', x'02', 2), ('y', x'00', 3);",
    )
    .unwrap();
    (dir, c)
}

fn q(s: &[(&str, &str)]) -> Vec<(String, String)> {
    s.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn row_by_named_key_uses_column_affinity_and_carries_the_position() {
    let (_d, mut c) = db();
    let req = ReadRequest::parse(&q(&[("id", "2")]), false).unwrap();
    let s = read_row(&mut c, REPLICA_POSITION_SQL, "t", &req.key).unwrap();
    assert_eq!(s.position, Position(42));
    assert_eq!(s.data.unwrap()["v"], json!({"blob": "AP8="}));
    let req = ReadRequest::parse(&q(&[("id", "9")]), false).unwrap();
    assert_eq!(
        read_row(&mut c, REPLICA_POSITION_SQL, "t", &req.key)
            .unwrap()
            .data,
        None
    );
}

#[test]
fn composite_blob_keys_by_typed_key_and_pages() {
    let (_d, mut c) = db();
    let req = ReadRequest::parse(&q(&[("key", r#"["x", {"blob": "Ag=="}]"#)]), false).unwrap();
    let s = read_row(&mut c, REPLICA_POSITION_SQL, "k", &req.key).unwrap();
    assert_eq!(s.data.unwrap()["v"], json!(2));
    let p1 = read_page(&mut c, REPLICA_POSITION_SQL, "k", None, 2).unwrap();
    assert_eq!(p1.data.rows.len(), 2);
    let after: Vec<SqlValue> = p1
        .data
        .next_after
        .unwrap()
        .iter()
        .map(|v| from_json(v).unwrap())
        .collect();
    let p2 = read_page(&mut c, REPLICA_POSITION_SQL, "k", Some(&after), 2).unwrap();
    assert_eq!(p2.data.rows.len(), 1);
    assert_eq!(p2.data.rows[0]["a"], json!("y"));
    assert_eq!(p2.data.next_after, None);
}

#[test]
fn bad_requests_and_barista_tables_are_refused() {
    let (_d, mut c) = db();
    for (table, key) in [("t", &[("nope", "1")][..]), ("k", &[("a", "x")][..])] {
        let req = ReadRequest::parse(&q(key), false).unwrap();
        assert!(matches!(
            read_row(&mut c, REPLICA_POSITION_SQL, table, &req.key),
            Err(ReadError::BadRequest(_))
        ));
    }
    assert!(matches!(
        read_page(&mut c, REPLICA_POSITION_SQL, "_barista_position", None, 1),
        Err(ReadError::UnknownTable(_))
    ));
    assert!(ReadRequest::parse(&q(&[("lmit", "3")]), true).is_err());
    let r =
        ReadRequest::parse(&q(&[("min_position", "7"), ("timeout_ms", "999999")]), true).unwrap();
    assert_eq!(r.consistency.timeout, Duration::from_millis(MAX_TIMEOUT_MS));
}
