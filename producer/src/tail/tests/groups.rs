//! A large group in flight: acknowledged in part, resumed after a rewind or a restart as the
//! same group, and the boundaries read between its chunks.

use super::*;
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
