//! Incremental snapshots against a real leader file and a concurrent writer: a replica built
//! from the changelog alone, in position order and with a follower's semantics (snapshot rows
//! and inserts/updates upsert, deletes delete), must end equal to the leader.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use barista_schemas::{Op, Position, SqlValue};
use rand::{Rng, SeedableRng};
use rusqlite::Connection;

use crate::capture::{open_leader, Capture};

type Rows = BTreeMap<String, Vec<SqlValue>>;

/// A key as a map key (`SqlValue` has no order).
fn k(key: &[SqlValue]) -> String {
    format!("{key:?}")
}

/// The table's rows by key (the key columns first, then the rest), as the leader has them.
fn leader_rows(conn: &Connection, table: &str, key_width: usize) -> Rows {
    let mut stmt = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
    let width = stmt.column_count();
    let rows = stmt
        .query_map([], |r| {
            let row: Vec<SqlValue> = (0..width)
                .map(|i| SqlValue::from(r.get_ref(i).unwrap()))
                .collect();
            Ok((k(&row[..key_width]), row))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows
}

/// Applies the changelog after `from` to `replica` as a follower would; returns the head.
fn follow(cap: &mut Capture, replica: &mut Rows, from: Position, key_width: usize) -> Position {
    let head = cap.head().unwrap();
    let mut at = from;
    loop {
        let (rows, scanned) = cap.read(at, head, 10_000).unwrap();
        for c in rows {
            match c.op {
                Op::Delete => {
                    let before = c.before.unwrap();
                    replica.remove(&k(&before[..key_width]));
                }
                _ => {
                    if let Some(before) = &c.before {
                        replica.remove(&k(&before[..key_width]));
                    }
                    let after = c.after.unwrap();
                    replica.insert(k(&after[..key_width]), after);
                }
            }
        }
        match scanned {
            Some(s) if s < head => at = s,
            _ => return head,
        }
    }
}

/// Writes to the rows around the snapshot's cursor (read from its progress table) until
/// stopped: updates, deletes, re-inserts and key changes, each its own transaction.
fn writer(path: std::path::PathBuf, seed: u64, stop: Arc<AtomicBool>, writes: Arc<AtomicI64>) {
    let conn = open_leader(&path).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let cursor: i64 = conn
            .query_row(
                "SELECT coalesce((SELECT value FROM _barista_snapshot_keys WHERE i = 0), 0)",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0);
        // Mostly the chunk being read next, sometimes just behind the cursor.
        let id = (cursor + rng.random_range(-20..60)).clamp(1, 2100);
        let sql = match rng.random_range(0..5) {
            0 | 1 => format!("UPDATE t SET v = v || 'u', n = n + 1 WHERE id = {id}"),
            2 => format!("DELETE FROM t WHERE id = {id}"),
            3 => format!("INSERT OR REPLACE INTO t VALUES ({id}, 'new', 0, x'01')"),
            _ => format!(
                "UPDATE OR IGNORE t SET id = {} WHERE id = {id}",
                (id + rng.random_range(1..200)).min(2100)
            ),
        };
        let _ = conn.execute_batch(&sql);
        writes.fetch_add(1, Ordering::Relaxed);
        // An application's pace, not a tight loop: SQLite's busy handler is not fair, and a
        // writer that never lets go would starve the snapshot's watermark for seconds.
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
}

#[test]
fn concurrent_updates_and_deletes_in_the_chunk_being_read_leave_replicas_equal_over_20_seeds() {
    for seed in 0..20u64 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leader.db");
        let app = open_leader(&path).unwrap();
        app.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER, b BLOB);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 2000)
             INSERT INTO t SELECT i, 'v' || i, i, randomblob(8) FROM s;",
        )
        .unwrap();
        let mut cap = Capture::install(open_leader(&path).unwrap(), &[], false).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicI64::new(0));
        let w = {
            let (path, stop, writes) = (path.clone(), stop.clone(), writes.clone());
            std::thread::spawn(move || writer(path, seed, stop, writes))
        };
        // And writes in every chunk's window, between its read and its watermark, to the
        // rows it read: these are the keys the watermark must take out of the chunk.
        let window = Arc::new(AtomicI64::new(0));
        cap.snapshot_parts().1.between = Some(super::chunk::Between(Box::new({
            let (conn, window) = (open_leader(&path).unwrap(), window.clone());
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed + 1000);
            move || {
                let cursor: i64 = conn
                    .query_row(
                        "SELECT coalesce((SELECT value FROM _barista_snapshot_keys WHERE i = 0), 0)",
                        [],
                        |r| r.get(0),
                    )
                    .unwrap();
                for _ in 0..rng.random_range(0..4) {
                    let id = cursor + rng.random_range(1..40);
                    let sql = match rng.random_range(0..4) {
                        0 => format!("UPDATE t SET v = v || 'w', n = n + 1 WHERE id = {id}"),
                        1 => format!("DELETE FROM t WHERE id = {id}"),
                        2 => format!("INSERT OR IGNORE INTO t VALUES ({id}, 'back', 0, x'02')"),
                        _ => format!("UPDATE OR IGNORE t SET id = {} WHERE id = {id}", id + 1000),
                    };
                    if conn.execute_batch(&sql).is_ok() {
                        window.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })));
        // The writer is writing before the first chunk is read.
        while writes.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        let mut replica = Rows::new();
        let mut at = Position(0);
        let mut chunks = 0;
        loop {
            let step = super::step(&mut cap, 37 + seed as usize)
                .unwrap()
                .expect("a snapshot in progress");
            chunks += 1;
            at = follow(&mut cap, &mut replica, at, 1);
            // Kafka took it: progress recorded (the writer aims at the next chunk).
            super::acknowledge_all(&mut cap).unwrap();
            if step.progress.done {
                break;
            }
            // The writer commits between any two chunks.
            let before = writes.load(Ordering::Relaxed);
            while writes.load(Ordering::Relaxed) == before {
                std::thread::yield_now();
            }
        }
        // Writes after the snapshot are streamed as usual.
        std::thread::sleep(std::time::Duration::from_millis(5));
        stop.store(true, Ordering::Relaxed);
        w.join().unwrap();
        follow(&mut cap, &mut replica, at, 1);
        assert!(super::running(cap.conn()).unwrap().is_empty());
        assert!(
            writes.load(Ordering::Relaxed) > 20,
            "seed {seed}: the writer barely ran"
        );
        assert!(chunks > 10, "seed {seed}: {chunks} chunks");
        assert!(
            window.load(Ordering::Relaxed) > 10,
            "seed {seed}: few writes in the windows"
        );
        assert_eq!(replica, leader_rows(&app, "t", 1), "seed {seed}");
    }
}

#[test]
fn a_composite_text_key_is_copied_in_key_order_and_resumes_after_its_last_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leader.db");
    let app = open_leader(&path).unwrap();
    app.execute_batch(
        "CREATE TABLE k(a TEXT COLLATE NOCASE, b BLOB, v, PRIMARY KEY (a, b)) WITHOUT ROWID;
         INSERT INTO k VALUES ('x', x'01', 1), ('X', x'02', 2), ('y', x'03', 3), ('a', x'00', 4),
                              ('B', x'ff', 5), ('b', x'fe', 6), ('z', 1, 7);",
    )
    .unwrap();
    let mut cap = Capture::install(open_leader(&path).unwrap(), &[], false).unwrap();
    // Small: copied whole when captured. Then a re-snapshot, incremental.
    super::request(cap.conn(), &["k".to_owned()]).unwrap();
    assert_eq!(super::take_signals(cap.conn_mut()).unwrap(), ["k"]);
    // A chunk of 2, then a "restart": a new Capture resumes from the stored key.
    let first = super::step(&mut cap, 2).unwrap().unwrap();
    assert_eq!((first.progress.rows, first.progress.done), (2, false));
    let mut replica = Rows::new();
    let at = follow(&mut cap, &mut replica, Position(0), 2);
    super::acknowledge_all(&mut cap).unwrap();
    // A second chunk read but never in Kafka: the restarted producer reads it again.
    let second = super::step(&mut cap, 2).unwrap().unwrap();
    assert_eq!(second.progress.rows, 4);
    drop(cap);
    let mut cap = Capture::install(open_leader(&path).unwrap(), &[], false).unwrap();
    let done = super::run_all(&mut cap, 2).unwrap();
    assert_eq!(done["k"].rows, 7);
    // The lost chunk's watermark publishes nothing; its rows come with the chunk read again.
    follow(&mut cap, &mut replica, at, 2);
    assert_eq!(replica, leader_rows(&app, "k", 2));
}

#[test]
fn a_signal_row_starts_a_snapshot_and_records_what_was_done() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leader.db");
    let app = open_leader(&path).unwrap();
    app.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a');")
        .unwrap();
    let mut cap = Capture::install(open_leader(&path).unwrap(), &[], false).unwrap();
    super::run_all(&mut cap, 10).unwrap();
    app.execute_batch(
        "INSERT INTO _barista_signals(type, data) VALUES ('snapshot', 't');
         INSERT INTO _barista_signals(type, data) VALUES ('snapshot', '{\"data-collections\": [\"main.nope\"]}');",
    )
    .unwrap();
    assert_eq!(super::take_signals(cap.conn_mut()).unwrap(), ["t"]);
    let results: Vec<(String, bool)> = app
        .prepare("SELECT result, processed_ms IS NOT NULL FROM _barista_signals ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(results[0].0.starts_with("t: snapshot"), "{results:?}");
    assert_eq!(results[1].0, "nope: not captured");
    assert!(results.iter().all(|r| r.1));
    assert!(super::take_signals(cap.conn_mut()).unwrap().is_empty());
    let done = super::run_all(&mut cap, 10).unwrap();
    assert_eq!(done["t"].rows, 1);
}
