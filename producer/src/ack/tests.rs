use super::*;

fn tp(topic: &str, partition: i32) -> TopicPartition {
    (topic.to_owned(), partition)
}

/// A change event at `position` on `topic`/`partition`.
fn change(position: i64, topic: &str, partition: i32) -> Sent {
    Sent {
        position: Position(position),
        chain: Some(tp(topic, partition)),
        closes: Closes::Nothing,
    }
}

/// The tombstone after a delete at `position`.
fn tombstone(position: i64) -> Sent {
    Sent {
        position: Position(position),
        chain: None,
        closes: Closes::Nothing,
    }
}

/// The commit record closing the group that ends at `position`.
fn commit(position: i64) -> Sent {
    Sent {
        position: Position(position),
        chain: None,
        closes: Closes::Group,
    }
}

/// The group `(first ..= last)` as of a chunk's end: its tails so far.
fn group(first: i64, last: i64, tails: &[(&str, i32, i64, i64)]) -> OpenGroup {
    OpenGroup {
        first: Position(first),
        last: Position(last),
        ts_ms: 7,
        tails: tails
            .iter()
            .map(|(t, p, pos, n)| (t.to_string(), *p, Position(*pos), *n))
            .collect(),
    }
}

/// The mark after a chunk of `open` that scanned up to `upto`.
fn chunk_end(upto: i64, open: &OpenGroup) -> Sent {
    Sent {
        position: Position(upto),
        chain: None,
        closes: Closes::Chunk(open.clone()),
    }
}

fn tails(pairs: &[(&str, i32, i64)]) -> HashMap<TopicPartition, Position> {
    pairs
        .iter()
        .map(|(t, p, pos)| (tp(t, *p), Position(*pos)))
        .collect()
}

/// Delivers `sent` in order, idle after the last; returns the prune instructions.
fn deliver(acks: &mut Acks, sent: Vec<Sent>) -> Vec<Acked> {
    let n = sent.len();
    let now = Instant::now();
    let gen = acks.gen;
    sent.into_iter()
        .enumerate()
        .filter_map(|(i, s)| acks.delivered(gen, s, now, i + 1 == n))
        .collect()
}

#[test]
fn changes_alone_acknowledge_nothing_until_their_commit_record() {
    let mut acks = Acks::new(Acked::default());
    let prunes = deliver(
        &mut acks,
        vec![change(1, "t", 0), change(2, "t", 1), tombstone(2)],
    );
    assert!(prunes.is_empty());
    assert_eq!(acks.acked(), &Acked::default());
    assert_eq!(deliver(&mut acks, vec![commit(2)]).len(), 1);
    assert_eq!(acks.acked().position, Position(2));
}

#[test]
fn a_commit_record_takes_its_groups_partition_tails_with_it() {
    let mut acks = Acks::new(Acked::default());
    let prunes = deliver(
        &mut acks,
        vec![
            change(1, "t", 0),
            change(2, "t", 1),
            change(3, "t", 0),
            change(4, "u", 0),
            commit(4),
        ],
    );
    let expected = Acked {
        position: Position(4),
        partitions: tails(&[("t", 0, 3), ("t", 1, 2), ("u", 0, 4)]),
        open: None,
    };
    assert_eq!(prunes, std::slice::from_ref(&expected));
    assert_eq!(acks.acked(), &expected);
}

#[test]
fn a_prune_instruction_carries_every_acknowledged_tail_not_only_the_last_groups() {
    let start = Acked {
        position: Position(10),
        partitions: tails(&[("t", 0, 9), ("t", 2, 7)]),
        open: None,
    };
    let mut acks = Acks::new(start);
    let prunes = deliver(
        &mut acks,
        vec![
            change(11, "t", 0),
            commit(11),
            change(12, "t", 1),
            commit(12),
        ],
    );
    assert_eq!(
        prunes.last(),
        Some(&Acked {
            position: Position(12),
            partitions: tails(&[("t", 0, 11), ("t", 1, 12), ("t", 2, 7)]),
            open: None,
        })
    );
}

#[test]
fn prunes_wait_while_reports_keep_coming_and_go_out_when_the_acker_is_idle() {
    let mut acks = Acks::new(Acked::default());
    let t0 = Instant::now();
    assert!(
        acks.delivered(0, commit(1), t0, false).is_some(),
        "the first is due"
    );
    assert!(acks.delivered(0, commit(2), t0, false).is_none());
    assert!(acks
        .delivered(0, commit(3), t0 + Duration::from_millis(100), false)
        .is_none());
    let late = acks.delivered(0, commit(4), t0 + Duration::from_millis(300), false);
    assert_eq!(late.map(|a| a.position), Some(Position(4)));
    let idle = acks.delivered(0, commit(5), t0 + Duration::from_millis(301), true);
    assert_eq!(idle.map(|a| a.position), Some(Position(5)));
    assert_eq!(
        acks.acked().position,
        Position(5),
        "a skipped prune still moves the position"
    );
}

#[test]
fn a_rewind_after_a_failure_restarts_after_the_last_acknowledged_group() {
    let mut acks = Acks::new(Acked::default());
    deliver(&mut acks, vec![change(1, "t", 0), commit(1)]);
    // The next group fails half way: 2 is delivered, its commit record never is.
    deliver(&mut acks, vec![change(2, "t", 0), change(3, "t", 1)]);
    let rewind = acks.rewind();
    assert_eq!(
        rewind,
        Rewind {
            gen: 1,
            from: Position(1),
            last_sent: tails(&[("t", 0, 1)]),
            open: None,
        }
    );
    assert_eq!(acks.gen, 1);
}

#[test]
fn a_rewind_before_anything_is_acknowledged_starts_from_what_capture_recorded() {
    let start = Acked {
        position: Position(40),
        partitions: tails(&[("t", 0, 38)]),
        open: None,
    };
    let mut acks = Acks::new(start.clone());
    let rewind = acks.rewind();
    assert_eq!(rewind.from, start.position);
    assert_eq!(rewind.last_sent, start.partitions);
}

#[test]
fn a_rewind_forgets_the_unacknowledged_group_so_the_next_commit_does_not_carry_it() {
    let mut acks = Acks::new(Acked::default());
    deliver(&mut acks, vec![change(1, "t", 0), change(2, "u", 0)]);
    acks.rewind();
    // Resent: this time the group lands on other partitions (a new partition count, say).
    deliver(
        &mut acks,
        vec![change(1, "t", 1), change(2, "t", 1), commit(2)],
    );
    assert_eq!(acks.acked().partitions, tails(&[("t", 1, 2)]));
}

#[test]
fn reports_of_an_older_generation_change_nothing() {
    let mut acks = Acks::new(Acked::default());
    acks.rewind();
    let now = Instant::now();
    assert!(acks.delivered(0, change(1, "t", 0), now, false).is_none());
    assert!(acks.delivered(0, commit(1), now, true).is_none());
    assert_eq!(acks.acked(), &Acked::default());
    // The stale change's tail did not sneak into the next group either.
    assert!(acks.delivered(1, commit(1), now, true).is_some());
    assert_eq!(acks.acked().partitions, HashMap::new());
}

#[test]
fn resent_duplicates_never_move_the_position_or_a_tail_back() {
    let mut acks = Acks::new(Acked::default());
    deliver(
        &mut acks,
        vec![change(5, "t", 0), change(6, "t", 1), commit(6)],
    );
    // Delivered twice (a resend that overlapped an acknowledgement): an older group end
    // and an older change on a partition.
    deliver(&mut acks, vec![change(4, "t", 0), commit(4)]);
    assert_eq!(
        acks.acked(),
        &Acked {
            position: Position(6),
            partitions: tails(&[("t", 0, 5), ("t", 1, 6)]),
            open: None,
        }
    );
}

#[test]
fn a_group_of_only_tombstones_moves_the_position_but_no_tail() {
    let mut acks = Acks::new(Acked::default());
    deliver(&mut acks, vec![tombstone(3), commit(3)]);
    assert_eq!(acks.acked().position, Position(3));
    assert!(acks.acked().partitions.is_empty());
}

#[test]
fn a_chunk_mark_acknowledges_the_chunk_and_leaves_its_group_open() {
    let mut acks = Acks::new(Acked::default());
    let open = group(1, 10, &[("t", 0, 3, 2), ("t", 1, 2, 1)]);
    let prunes = deliver(
        &mut acks,
        vec![
            change(1, "t", 0),
            change(2, "t", 1),
            change(3, "t", 0),
            // Position 4 is a change of a table not captured now: scanned, not sent.
            chunk_end(4, &open),
        ],
    );
    let expected = Acked {
        position: Position(4),
        partitions: tails(&[("t", 0, 3), ("t", 1, 2)]),
        open: Some(open),
    };
    assert_eq!(prunes, std::slice::from_ref(&expected));
    assert_eq!(acks.acked(), &expected);
    assert_eq!(
        expected.prune_point(),
        Position(0),
        "the open group's rows stay in the changelog"
    );
}

#[test]
fn changes_after_the_last_chunk_mark_acknowledge_nothing() {
    let mut acks = Acks::new(Acked::default());
    let open = group(1, 10, &[("t", 0, 1, 1)]);
    deliver(&mut acks, vec![change(1, "t", 0), chunk_end(1, &open)]);
    assert!(deliver(&mut acks, vec![change(2, "t", 0), change(3, "t", 1)]).is_empty());
    assert_eq!(acks.acked().position, Position(1));
    assert_eq!(acks.acked().partitions, tails(&[("t", 0, 1)]));
}

#[test]
fn the_commit_record_closes_the_open_group_and_moves_the_prune_point_past_it() {
    let mut acks = Acks::new(Acked::default());
    let open = group(1, 4, &[("t", 0, 2, 2)]);
    deliver(
        &mut acks,
        vec![change(1, "t", 0), change(2, "t", 0), chunk_end(2, &open)],
    );
    assert_eq!(acks.acked().prune_point(), Position(0));
    let prunes = deliver(
        &mut acks,
        vec![change(3, "t", 1), change(4, "t", 0), commit(4)],
    );
    let expected = Acked {
        position: Position(4),
        partitions: tails(&[("t", 0, 4), ("t", 1, 3)]),
        open: None,
    };
    assert_eq!(prunes.last(), Some(&expected));
    assert_eq!(expected.prune_point(), Position(4));
}

#[test]
fn the_prune_point_is_the_end_of_the_last_whole_group_before_the_open_one() {
    let acked = Acked {
        position: Position(250),
        partitions: HashMap::new(),
        open: Some(group(101, 400, &[])),
    };
    assert_eq!(acked.prune_point(), Position(100));
}

#[test]
fn a_rewind_mid_group_resends_after_the_last_acknowledged_chunk_as_the_same_group() {
    let mut acks = Acks::new(Acked::default());
    deliver(&mut acks, vec![change(1, "t", 0), commit(1)]);
    let first_chunk = group(2, 9, &[("t", 0, 3, 2)]);
    deliver(
        &mut acks,
        vec![
            change(2, "t", 0),
            change(3, "t", 0),
            chunk_end(3, &first_chunk),
        ],
    );
    // The second chunk fails half way.
    deliver(&mut acks, vec![change(4, "t", 1)]);
    let rewind = acks.rewind();
    assert_eq!(
        rewind,
        Rewind {
            gen: 1,
            from: Position(3),
            last_sent: tails(&[("t", 0, 3)]),
            open: Some(first_chunk),
        }
    );
}

#[test]
fn a_producer_restarted_mid_group_finishes_it_from_what_capture_recorded() {
    // What a killed producer left: the group (11 ..= 30) acknowledged up to 20.
    let open = group(11, 30, &[("t", 0, 19, 4), ("u", 0, 20, 6)]);
    let start = Acked {
        position: Position(20),
        partitions: tails(&[("t", 0, 19), ("u", 0, 20)]),
        open: Some(open.clone()),
    };
    let mut acks = Acks::new(start.clone());
    assert_eq!(acks.rewind().from, Position(20), "it resends after 20");
    let next = group(11, 30, &[("t", 0, 25, 5), ("u", 0, 20, 6)]);
    deliver(&mut acks, vec![change(25, "t", 0), chunk_end(26, &next)]);
    assert_eq!(acks.acked().open, Some(next));
    assert_eq!(acks.acked().prune_point(), Position(10));
    deliver(&mut acks, vec![change(30, "u", 0), commit(30)]);
    assert_eq!(
        acks.acked(),
        &Acked {
            position: Position(30),
            partitions: tails(&[("t", 0, 25), ("u", 0, 30)]),
            open: None,
        }
    );
}

#[test]
fn a_late_duplicate_chunk_mark_does_not_reopen_an_acknowledged_group() {
    let mut acks = Acks::new(Acked::default());
    let open = group(1, 4, &[("t", 0, 2, 2)]);
    deliver(&mut acks, vec![change(4, "t", 0), commit(4)]);
    deliver(&mut acks, vec![change(2, "t", 0), chunk_end(2, &open)]);
    assert_eq!(acks.acked().position, Position(4));
    assert_eq!(acks.acked().open, None);
    assert_eq!(acks.acked().partitions, tails(&[("t", 0, 4)]));
}
