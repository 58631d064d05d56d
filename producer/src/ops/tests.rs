use std::time::{Duration, Instant};

use super::backlog::{measure, FirstSeen, Measured};
use super::*;

const S: fn(u64) -> Duration = Duration::from_secs;

#[test]
fn an_empty_backlog_is_ready_however_long_kafka_was_silent() {
    let r = readiness(0, S(0), None, S(30));
    assert!(r.ready, "{r:?}");
    assert!(readiness(0, S(0), Some(S(3600)), S(30)).ready);
}

#[test]
fn waiting_changes_turn_not_ready_only_after_the_grace_without_acknowledgements() {
    let grace = S(30);
    // Just written: within the grace, whenever the last acknowledgement was.
    assert!(readiness(5, S(1), Some(S(3600)), grace).ready);
    // Waited longer than the grace, and Kafka acknowledged nothing meanwhile.
    let r = readiness(5, S(31), Some(S(31)), grace);
    assert!(!r.ready);
    assert!(r.reason.contains("5 changelog rows"), "{}", r.reason);
    // Nothing ever acknowledged since start: the oldest change's wait decides.
    assert!(!readiness(5, S(31), None, grace).ready);
    assert!(readiness(5, S(29), None, grace).ready);
    // Catching up: the oldest waited long, but acknowledgements keep coming.
    assert!(readiness(100_000, S(300), Some(S(1)), grace).ready);
}

#[test]
fn the_state_names_what_the_producer_is_doing() {
    let ready = readiness(0, S(0), None, S(30));
    let blocked = readiness(1, S(60), None, S(30));
    assert_eq!(state(&ready, false, 0), "starting");
    assert_eq!(state(&ready, true, 0), "waiting_for_tables");
    assert_eq!(state(&ready, true, 2), "capturing");
    assert_eq!(state(&blocked, true, 2), "publishing_blocked");
    assert_eq!(state(&blocked, false, 0), "publishing_blocked");
}

#[test]
fn the_oldest_unacknowledged_change_is_dated_by_the_sample_that_first_saw_it() {
    let t0 = Instant::now();
    let at = |s| t0 + S(s);
    let mut f = FirstSeen::default();
    assert_eq!(
        f.observe(at(0), 10, 10),
        Duration::ZERO,
        "nothing beyond acked"
    );
    assert_eq!(
        f.observe(at(1), 12, 10),
        Duration::ZERO,
        "11 first seen now"
    );
    assert_eq!(f.observe(at(2), 15, 10), S(1));
    assert_eq!(f.observe(at(5), 15, 10), S(4));
    // 11 and 12 acknowledged: 13 was first seen at 2.
    assert_eq!(f.observe(at(6), 15, 12), S(4));
    assert_eq!(f.observe(at(7), 15, 15), Duration::ZERO, "all acknowledged");
    assert_eq!(f.observe(at(8), 16, 15), Duration::ZERO);
    assert_eq!(f.observe(at(9), 16, 15), S(1));
}

#[test]
fn the_backlog_counts_rows_beyond_the_acknowledged_position() {
    let dir = tempfile::tempdir().unwrap();
    let conn = crate::capture::open_leader(&dir.path().join("l.db")).unwrap();
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    let conn = {
        let cap = crate::capture::Capture::install(conn, &[], false).unwrap();
        drop(cap);
        crate::capture::open_leader(&dir.path().join("l.db")).unwrap()
    };
    assert_eq!(
        measure(&conn, 0).unwrap(),
        Measured {
            head: 0,
            rows: 0,
            bytes: 0
        }
    );
    for i in 1..=4 {
        conn.execute("INSERT INTO t VALUES (?1, 'abcdefghij')", [i])
            .unwrap();
    }
    let m = measure(&conn, 1).unwrap();
    assert_eq!((m.head, m.rows), (4, 3));
    // Each row: position, tbl, op (8 bytes each), the key (8) and ten bytes of text.
    assert_eq!(m.bytes, 3 * (8 * 4 + 10));
    assert_eq!(measure(&conn, 9).unwrap().rows, 0);
    assert_eq!(measure(&conn, 9).unwrap().head, 9, "never below acked");
}

#[test]
fn status_lists_tables_and_skipped_ones_and_counts_them() {
    let ops = Ops::new(&ProducerConfig::new("l.db", "b", "r"));
    ops.table_published("a", "p.a", 3);
    ops.table_published("b", "p.b", 3);
    ops.topic_grew("p.b", 6);
    ops.table_refused("a b", "topic p.a_b is already used by table a_b".into());
    ops.skipped_by_capture(BTreeMap::from([(
        "loose".to_owned(),
        "no primary key".to_owned(),
    )]));
    ops.table_gone("a");
    let s = ops.status().unwrap();
    assert_eq!(
        s.tables,
        [TableStatus {
            table: "b".into(),
            topic: "p.b".into(),
            partitions: 6
        }]
    );
    let skipped: Vec<(&str, &str)> = s
        .skipped
        .iter()
        .map(|t| (t.table.as_str(), t.reason.as_str()))
        .collect();
    assert_eq!(
        skipped,
        [
            ("a b", "topic p.a_b is already used by table a_b"),
            ("loose", "no primary key")
        ]
    );
    assert_eq!(ops.metrics.tables_captured.get(), 1);
    assert_eq!(ops.metrics.tables_skipped.get(), 2);
    assert_eq!(s.state, "starting");
    ops.started();
    assert_eq!(ops.status().unwrap().state, "capturing");
}
