use std::collections::HashMap;

use rusqlite::Connection;
use tokio::sync::mpsc::error::TryRecvError;

use super::*;
use crate::capture::open_leader;

struct Rig {
    _dir: tempfile::TempDir,
    /// The application's connection to the leader.
    app: Connection,
    tail: Tail,
    seen: Seen,
    rx: mpsc::Receiver<CaptureMsg>,
    ctl: std_mpsc::Sender<Control>,
    /// Tables announced so far, and how many chunks were handed over before each.
    announced: Vec<(String, usize)>,
}

/// A leader with table `t` captured (empty), and a tail on it reading `chunk` rows at a time.
fn rig(chunk: usize, heartbeat: Duration) -> Rig {
    rig_with(chunk, heartbeat, 64)
}

/// Like [`rig`], with room for `cap` messages between the tail and the publisher.
fn rig_with(chunk: usize, heartbeat: Duration, cap: usize) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leader.db");
    let conn = open_leader(&path).unwrap();
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        .unwrap();
    let capture = Capture::install(conn, &[], false).unwrap();
    let (tx, rx) = mpsc::channel(cap);
    let (ctl, ctl_rx) = std_mpsc::channel();
    Rig {
        app: open_leader(&path).unwrap(),
        _dir: dir,
        tail: Tail {
            capture,
            tx,
            ctl: ctl_rx,
            stop: Arc::new(AtomicBool::new(false)),
            next_from: Position(0),
            open: None,
            poll: Duration::from_millis(1),
            heartbeat,
            chunk,
            gen: 0,
            ops: Arc::new(crate::ops::Ops::new(&crate::ProducerConfig::new(
                "l.db", "b", "r",
            ))),
            checksums: true,
            sums: None,
            snapshots: crate::snapshot::Driver::default(),
            boundaries: Default::default(),
        },
        seen: Seen {
            data_version: i64::MIN,
            sent_at: Instant::now(),
        },
        rx,
        ctl,
        announced: Vec::new(),
    }
}

impl Rig {
    fn poll(&mut self) -> Flow {
        self.tail.poll_once(&mut self.seen).unwrap()
    }

    /// Everything handed over so far, as (gen, first, last, positions, done) or a heartbeat's
    /// (gen, position).
    fn chunks(&mut self) -> Vec<(u64, i64, i64, Vec<i64>, bool)> {
        let mut out = Vec::new();
        loop {
            match self.rx.try_recv() {
                Ok(CaptureMsg::Chunk {
                    gen,
                    first,
                    last,
                    rows,
                    done,
                    ..
                }) => out.push((
                    gen,
                    first.0,
                    last.0,
                    rows.iter().map(|r| r.position.0).collect(),
                    done,
                )),
                Ok(CaptureMsg::Tables(tables)) => {
                    for t in tables {
                        self.announced
                            .push((t.schemas.shape.name.clone(), out.len()));
                    }
                }
                Ok(CaptureMsg::Heartbeat { .. }) => panic!("a heartbeat among chunks"),
                Err(TryRecvError::Empty) => return out,
                Err(e) => panic!("{e}"),
            }
        }
    }
}

const FIVE_ROWS: &str = "BEGIN; INSERT INTO t VALUES (1, 'a'); INSERT INTO t VALUES (2, 'b'); \
    INSERT INTO t VALUES (3, 'c'); UPDATE t SET v = 'd' WHERE id = 1; DELETE FROM t WHERE id = 2; \
    COMMIT;";

#[test]
fn a_commit_group_is_handed_over_in_chunks_and_only_the_last_is_done() {
    let mut r = rig(2, Duration::from_secs(3600));
    r.app.execute_batch(FIVE_ROWS).unwrap();
    assert_eq!(r.poll(), Flow::Continue);
    assert_eq!(
        r.chunks(),
        [
            (0, 1, 5, vec![1, 2], false),
            (0, 1, 5, vec![3, 4], false),
            (0, 1, 5, vec![5], true),
        ]
    );
    assert_eq!(r.tail.next_from, Position(5));
    // Nothing new: nothing handed over, and no heartbeat before the interval.
    assert_eq!(r.poll(), Flow::Continue);
    assert_eq!(r.chunks(), []);
}

#[test]
fn each_commit_is_its_own_group() {
    let mut r = rig(100, Duration::from_secs(3600));
    r.app
        .execute_batch("INSERT INTO t VALUES (1, 'a')")
        .unwrap();
    r.poll();
    r.app
        .execute_batch(
            "BEGIN; INSERT INTO t VALUES (2, 'b'); INSERT INTO t VALUES (3, 'c'); COMMIT;",
        )
        .unwrap();
    r.poll();
    assert_eq!(
        r.chunks(),
        [(0, 1, 1, vec![1], true), (0, 2, 3, vec![2, 3], true)]
    );
}

#[test]
fn an_idle_leader_gets_a_heartbeat_at_its_position() {
    let mut r = rig(100, Duration::ZERO);
    r.app
        .execute_batch("INSERT INTO t VALUES (1, 'a')")
        .unwrap();
    r.poll();
    assert_eq!(r.chunks().len(), 1);
    r.poll();
    match r.rx.try_recv() {
        Ok(CaptureMsg::Heartbeat { gen, position, .. }) => {
            assert_eq!((gen, position), (0, Position(1)))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_rewind_resends_after_its_position_in_the_new_generation() {
    let mut r = rig(100, Duration::from_secs(3600));
    r.app.execute_batch(FIVE_ROWS).unwrap();
    r.poll();
    r.chunks();
    r.ctl
        .send(Control::Rewind {
            gen: 1,
            from: Position(2),
            open: None,
        })
        .unwrap();
    r.poll();
    assert_eq!(r.chunks(), [(1, 3, 5, vec![3, 4, 5], true)]);
}

#[test]
fn a_prune_records_the_acknowledgement_and_deletes_the_shipped_rows() {
    let mut r = rig(100, Duration::from_secs(3600));
    r.app.execute_batch(FIVE_ROWS).unwrap();
    r.poll();
    let partitions: HashMap<_, _> = [(("t".to_owned(), 0), Position(4))].into();
    r.ctl
        .send(Control::Prune(Acked {
            position: Position(5),
            partitions: partitions.clone(),
            open: None,
        }))
        .unwrap();
    r.poll();
    assert_eq!(r.tail.capture.acked().unwrap(), Position(5));
    assert_eq!(r.tail.capture.acked_partitions().unwrap(), partitions);
    assert_eq!(
        r.tail.capture.backlog().unwrap(),
        1,
        "the newest row is kept"
    );
}

/// The group `(first ..= last)` acknowledged in part, at leader time 77.
fn open(first: i64, last: i64) -> OpenGroup {
    OpenGroup {
        first: Position(first),
        last: Position(last),
        ts_ms: 77,
        tails: vec![("t".into(), 0, Position(2), 2)],
    }
}

/// The checksums on the last chunk handed over.
fn last_sums(rx: &mut mpsc::Receiver<CaptureMsg>) -> Vec<TableChecksum> {
    let mut sums = None;
    while let Ok(msg) = rx.try_recv() {
        if let CaptureMsg::Chunk {
            done: true,
            checksums,
            ..
        } = msg
        {
            sums = Some(checksums);
        }
    }
    sums.expect("a last chunk")
}

#[test]
fn a_rewind_mid_group_sends_the_rest_as_the_same_group_with_the_same_checksums() {
    let mut straight = rig(2, Duration::from_secs(3600));
    straight.tail.load_sums().unwrap();
    straight.app.execute_batch(FIVE_ROWS).unwrap();
    straight.poll();
    let expected = last_sums(&mut straight.rx);
    assert!(!expected.is_empty());

    let mut r = rig(2, Duration::from_secs(3600));
    r.tail.load_sums().unwrap();
    r.app.execute_batch(FIVE_ROWS).unwrap();
    r.poll();
    r.chunks();
    r.ctl
        .send(Control::Rewind {
            gen: 1,
            from: Position(2),
            open: Some(open(1, 5)),
        })
        .unwrap();
    // Committed meanwhile: not part of the group taken up, but of the next one.
    r.app
        .execute_batch("INSERT INTO t VALUES (9, 'z')")
        .unwrap();
    r.poll();
    let mut msgs = Vec::new();
    while let Ok(m) = r.rx.try_recv() {
        msgs.push(m);
    }
    let shape: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            CaptureMsg::Chunk {
                gen,
                first,
                last,
                upto,
                ts_ms,
                rows,
                done,
                ..
            } => Some((
                *gen,
                first.0,
                last.0,
                upto.0,
                *ts_ms,
                rows.iter().map(|r| r.position.0).collect::<Vec<_>>(),
                *done,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(shape[0], (1, 1, 5, 4, 77, vec![3, 4], false));
    assert_eq!(shape[1], (1, 1, 5, 5, 77, vec![5], true));
    assert_eq!(shape[2].1..=shape[2].2, 6..=6, "the next group: {shape:?}");
    let sums = msgs.iter().find_map(|m| match m {
        CaptureMsg::Chunk {
            done: true,
            last,
            checksums,
            ..
        } if *last == Position(5) => Some(checksums.clone()),
        _ => None,
    });
    assert_eq!(
        sums,
        Some(expected),
        "the checksums at the group's end count the part acknowledged before the rewind"
    );
}

#[test]
fn a_prune_mid_group_records_the_open_group_and_keeps_its_rows() {
    let mut r = rig(2, Duration::from_secs(3600));
    r.app.execute_batch(FIVE_ROWS).unwrap();
    r.poll();
    r.ctl
        .send(Control::Prune(Acked {
            position: Position(4),
            partitions: [(("t".to_owned(), 0), Position(4))].into(),
            open: Some(open(1, 5)),
        }))
        .unwrap();
    r.poll();
    assert_eq!(r.tail.capture.acked().unwrap(), Position(4));
    assert_eq!(r.tail.capture.open_group().unwrap(), Some(open(1, 5)));
    assert_eq!(
        r.tail.capture.backlog().unwrap(),
        5,
        "the open group's rows stay until its commit record is acknowledged"
    );
    // An older instruction arriving late changes nothing.
    r.ctl
        .send(Control::Prune(Acked {
            position: Position(2),
            partitions: HashMap::new(),
            open: Some(open(1, 5)),
        }))
        .unwrap();
    r.poll();
    assert_eq!(r.tail.capture.acked().unwrap(), Position(4));
    r.ctl
        .send(Control::Prune(Acked {
            position: Position(5),
            partitions: HashMap::new(),
            open: None,
        }))
        .unwrap();
    r.poll();
    assert_eq!(r.tail.capture.open_group().unwrap(), None);
    assert_eq!(r.tail.capture.backlog().unwrap(), 1);
}

#[test]
fn heads_read_between_chunks_are_boundaries_the_next_groups_end_at() {
    let mut r = rig(2, Duration::from_secs(3600));
    r.app.execute_batch(FIVE_ROWS).unwrap();
    r.poll();
    r.chunks();
    // While the group (1 ..= 5) was handed over, a transaction committed and the head was
    // read between two chunks; then another one committed.
    r.app
        .execute_batch(
            "BEGIN; INSERT INTO t VALUES (6, 'e'); INSERT INTO t VALUES (7, 'f'); COMMIT;",
        )
        .unwrap();
    r.tail.observe(Position(5)).unwrap();
    r.app
        .execute_batch(
            "BEGIN; INSERT INTO t VALUES (8, 'g'); INSERT INTO t VALUES (9, 'h'); COMMIT;",
        )
        .unwrap();
    r.poll();
    assert_eq!(
        r.chunks(),
        [(0, 6, 7, vec![6, 7], true), (0, 8, 9, vec![8, 9], true)],
        "two groups, not one of four changes"
    );
    // Pruned past, a boundary is forgotten.
    r.ctl
        .send(Control::Prune(Acked {
            position: Position(9),
            ..Acked::default()
        }))
        .unwrap();
    r.poll();
    assert!(r.tail.boundaries.is_empty());
}

#[test]
fn no_boundary_is_read_past_ddl_the_last_poll_has_not_seen() {
    let mut r = rig(2, Duration::from_secs(3600));
    r.app.execute_batch(FIVE_ROWS).unwrap();
    r.poll();
    r.chunks();
    r.app
        .execute_batch("BEGIN; INSERT INTO t VALUES (6, 'e'); DROP TABLE t; COMMIT;")
        .unwrap();
    r.tail.observe(Position(5)).unwrap();
    assert!(
        r.tail.boundaries.is_empty(),
        "the drop's marker must join its transaction's group"
    );
}

#[test]
fn a_prune_that_comes_while_a_group_goes_out_is_stored_before_its_last_chunk() {
    let mut r = rig_with(2, Duration::from_secs(3600), 1);
    r.app.execute_batch(FIVE_ROWS).unwrap();
    let (mut tail, mut seen) = (r.tail, r.seen);
    let thread = std::thread::spawn(move || {
        tail.poll_once(&mut seen).unwrap();
        tail
    });
    // The acker acknowledged the first chunk while the tail hands over the next ones.
    r.ctl
        .send(Control::Prune(Acked {
            position: Position(2),
            partitions: HashMap::new(),
            open: Some(open(1, 5)),
        }))
        .unwrap();
    let mut stored_at_last_chunk = None;
    while let Some(msg) = r.rx.blocking_recv() {
        if let CaptureMsg::Chunk { done: true, .. } = msg {
            stored_at_last_chunk = Some(
                r.app
                    .query_row(
                        "SELECT value FROM _barista_state WHERE key = 'acked'",
                        [],
                        |row| row.get::<_, i64>(0),
                    )
                    .unwrap(),
            );
            break;
        }
    }
    let tail = thread.join().unwrap();
    assert_eq!(
        stored_at_last_chunk,
        Some(2),
        "stored chunk by chunk, not once the group is handed over"
    );
    assert_eq!(tail.capture.open_group().unwrap(), Some(open(1, 5)));
}

#[test]
fn a_rewind_that_comes_while_a_group_goes_out_ends_it_there() {
    // One row per chunk, room for one chunk: the tail hands over chunk k + 1 only once
    // chunk k was taken.
    let mut r = rig_with(1, Duration::from_secs(3600), 1);
    r.app.execute_batch(FIVE_ROWS).unwrap();
    let (mut tail, mut seen) = (r.tail, r.seen);
    let thread = std::thread::spawn(move || {
        assert_eq!(tail.poll_once(&mut seen).unwrap(), Flow::Continue);
        tail
    });
    let mut got = Vec::new();
    match r.rx.blocking_recv() {
        Some(CaptureMsg::Chunk {
            gen, rows, done, ..
        }) => got.push((gen, rows[0].position.0, done)),
        other => panic!("{other:?}"),
    }
    // A failed delivery: rewound before the second chunk is taken, so the tail reads it
    // before it hands over the fourth.
    r.ctl
        .send(Control::Rewind {
            gen: 1,
            from: Position(0),
            open: None,
        })
        .unwrap();
    loop {
        match r.rx.try_recv() {
            Ok(CaptureMsg::Chunk {
                gen, rows, done, ..
            }) => got.push((gen, rows[0].position.0, done)),
            Ok(other) => panic!("{other:?}"),
            Err(TryRecvError::Empty) if thread.is_finished() => break,
            Err(TryRecvError::Empty) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("{e}"),
        }
    }
    let tail = thread.join().unwrap();
    assert!(
        got.len() <= 3 && got.iter().all(|(gen, _, done)| *gen == 0 && !done),
        "generation 0 stops mid-group: {got:?}"
    );
    assert_eq!((tail.gen, tail.next_from), (1, Position(0)));
}

#[test]
fn the_stop_flag_and_a_departed_publisher_end_the_thread() {
    let mut r = rig(100, Duration::from_secs(3600));
    r.tail.stop.store(true, Ordering::SeqCst);
    assert_eq!(r.poll(), Flow::Stop);

    let mut r = rig(100, Duration::from_secs(3600));
    r.app.execute_batch(FIVE_ROWS).unwrap();
    drop(r.rx);
    assert_eq!(
        r.tail.poll_once(&mut r.seen).unwrap(),
        Flow::Stop,
        "nobody to hand the group to"
    );

    let r = rig(100, Duration::from_secs(3600));
    r.tail.stop.store(true, Ordering::SeqCst);
    let thread = r.tail.spawn().unwrap();
    thread.join().unwrap().unwrap();
}

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
