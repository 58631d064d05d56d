use std::collections::HashMap;

use rusqlite::Connection;
use tokio::sync::mpsc::error::TryRecvError;

use super::*;
use crate::capture::open_leader;

mod groups;
mod tables;

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
