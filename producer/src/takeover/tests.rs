use super::*;

/// A follower's replica as the consumer leaves it: replicated tables without the leader's
/// NOT NULL and DEFAULT, and the replica's bookkeeping at position 41.
fn replica() -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(barista_schemas::snapshot::REPLICA_SQL)
        .unwrap();
    conn.execute_batch(
        "CREATE TABLE customers (id INTEGER, name TEXT, visits INTEGER, PRIMARY KEY (id));
         INSERT INTO customers VALUES (1, 'a', 3), (2, 'b', 0);
         INSERT INTO _barista_position(id, position, leader_ts_ms, applied_at_ms) VALUES (1, 41, 0, 0);
         INSERT INTO _barista_offsets VALUES ('p.customers', 0, 10, 40), ('p.customers', 1, 7, 41), ('p.__commits', 0, 99, 41);",
    )
    .unwrap();
    conn
}

fn shapes() -> HashMap<String, RowShape> {
    let col = |name: &str, decl: &str, pk, nullable, default: Option<&str>| {
        barista_schemas::envelope::RowColumn {
            name: name.into(),
            decl_type: decl.into(),
            pk,
            nullable,
            default: default.map(str::to_owned),
        }
    };
    HashMap::from([(
        "customers".to_owned(),
        RowShape {
            table: "customers".into(),
            columns: vec![
                col("id", "INTEGER", 1, false, None),
                col("name", "TEXT", 0, false, None),
                col("visits", "INTEGER", 0, false, Some("0")),
            ],
        },
    )])
}

#[test]
fn a_promoted_replica_numbers_its_first_change_after_its_position() {
    let mut conn = replica();
    let p = promote_file(&mut conn, "r.db", 2, &shapes(), "p.__commits").unwrap();
    assert_eq!(
        p,
        Promotion {
            epoch: 2,
            takeover: Position(42)
        }
    );
    assert_eq!(epoch(&conn).unwrap(), 2);
    assert_eq!(pending_takeover(&conn).unwrap(), Some(Position(42)));
    // The application's next write is captured at 42: tokens keep counting.
    conn.execute("UPDATE customers SET visits = visits + 1 WHERE id = 1", [])
        .unwrap();
    let token: i64 = conn
        .query_row("SELECT max(position) FROM _barista_changelog", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(token, 42);
    // The leader's declared columns are back: NOT NULL and DEFAULT.
    let shape = TableShape::read(&conn, "customers").unwrap();
    assert!(shape.columns.iter().all(|c| !c.nullable));
    assert_eq!(shape.columns[2].default.as_deref(), Some("0"));
    // The rows survived the rebuild, and the prev_position chain continues per partition.
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM customers", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 2);
    let tails: Vec<(i32, i64)> = conn
        .prepare("SELECT partition, last_position FROM _barista_partitions ORDER BY partition")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(tails, vec![(0, 40), (1, 41)]);
    // The replica's bookkeeping is gone; promoting again is refused.
    assert_eq!(replica_position(&conn).unwrap(), None);
    assert!(matches!(
        promote_file(&mut conn, "r.db", 3, &shapes(), "p.__commits"),
        Err(PromoteError::NotAReplica(_))
    ));
    takeover_published(&conn).unwrap();
    assert_eq!(pending_takeover(&conn).unwrap(), None);
}

#[test]
fn a_leader_file_is_not_promoted() {
    let mut conn = Connection::open_in_memory().unwrap();
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY)")
        .unwrap();
    assert!(matches!(
        promote_file(&mut conn, "l.db", 1, &HashMap::new(), "p.__commits"),
        Err(PromoteError::NotAReplica(_))
    ));
}

#[test]
fn the_fenced_report_counts_changes_from_the_takeover_on() {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(crate::capture::SCHEMA_SQL).unwrap();
    conn.execute_batch(
        "INSERT INTO _barista_changelog(position, tbl, op) VALUES (10, 1, 1), (11, 1, 2), (12, 1, 5), (13, 1, 3), (14, 1, 1);
         INSERT INTO _barista_state(key, value) VALUES ('acked', 13);",
    )
    .unwrap();
    let w = fenced_writes(&conn, Position(11)).unwrap();
    assert_eq!(
        w,
        FencedWrites {
            changes: 3, // 11, 13, 14; 12 is a schema-change marker
            range: Some((Position(11), Position(14))),
            sent_unapplied: 2,
            acked: Position(13),
        }
    );
    assert_eq!(fenced_writes(&conn, Position(15)).unwrap().changes, 0);
}
