//! Commit-group planning without Kafka or SQLite: decoded changes built by
//! hand, chains and groups as the follower loop feeds them.

use std::time::Instant;

use barista_schemas::{Commit, PartitionTail, Position};

use super::*;
use crate::chain::fixture::change;

const P: fn(i64) -> Position = Position;
const COMMITS: &str = "p.__commits";

fn tp(topic: &str, partition: i32) -> TopicPartition {
    (topic.to_owned(), partition)
}

/// A commit record of `first ..= last`, tails as (topic, partition, last).
fn group(first: i64, last: i64, ts_ms: i64, tails: &[(&str, i32, i64)]) -> Commit {
    Commit {
        db: "test".into(),
        first_position: Position(first),
        last_position: Position(last),
        ts_ms,
        partitions: tails
            .iter()
            .map(|(t, p, l)| PartitionTail {
                topic: (*t).to_owned(),
                partition: *p,
                last_position: Position(*l),
                count: 1,
            })
            .collect(),
        dropped: vec![],
        checksums: vec![],
        snapshots: vec![],
        epoch: 0,
    }
}

fn heartbeat(position: i64, ts_ms: i64) -> Commit {
    group(position + 1, position, ts_ms, &[])
}

/// Chains for the given partitions, all fresh.
fn chains(parts: &[(&str, i32)]) -> Chains {
    parts
        .iter()
        .map(|(t, p)| (tp(t, *p), PartitionChain::new(0, Position::ZERO)))
        .collect()
}

/// Offers `(position, prev)` at the next offset of `(topic, partition)`.
fn feed(chains: &mut Chains, topic: &str, partition: i32, changes: &[(i64, Option<i64>)]) {
    let chain = chains.get_mut(&tp(topic, partition)).unwrap();
    for (p, prev) in changes {
        // Offsets in this partition are consecutive: after the buffered ones.
        let offset = chain.next_offset() + chain.pending_through(Position(i64::MAX)) as i64;
        chain.consumed(offset);
        chain.offer(offset, change(*p, *prev), Position::ZERO, Instant::now());
    }
}

fn applied(planned: Planned) -> ApplyPlan {
    match planned.plan {
        Plan::Apply(a) => a,
        other => panic!("expected an apply plan, got {other:?}"),
    }
}

fn positions(changes: &[DecodedChange]) -> Vec<i64> {
    changes.iter().map(|c| c.source.position.0).collect()
}

#[test]
fn a_whole_group_applies_in_position_order_across_partitions() {
    let mut ch = chains(&[("p.a", 0), ("p.a", 1), ("p.b", 0)]);
    let mut g = CommitGroups::new(COMMITS.into(), 0, Scope::all());
    // Partitions deliver in any order relative to each other.
    feed(&mut ch, "p.b", 0, &[(2, None), (5, Some(2))]);
    feed(&mut ch, "p.a", 1, &[(3, None)]);
    feed(&mut ch, "p.a", 0, &[(1, None), (4, Some(1))]);
    g.consumed(0);
    g.record(
        0,
        group(1, 5, 77, &[("p.a", 0, 4), ("p.a", 1, 3), ("p.b", 0, 5)]),
        false,
    );
    let a = applied(g.plan(&mut ch, P(0), 0, 5_000));
    assert_eq!((a.position, a.leader_ts_ms), (P(5), 77));
    assert_eq!(positions(&a.changes), [1, 2, 3, 4, 5]);
    let offsets: HashMap<_, _> = a.offsets.into_iter().collect();
    assert_eq!(offsets[&tp("p.a", 0)], (2, P(4)));
    assert_eq!(offsets[&tp("p.b", 0)], (2, P(5)));
    assert_eq!(
        offsets[&tp(COMMITS, 0)],
        (1, P(5)),
        "the commit record is done"
    );
}

#[test]
fn a_group_waits_for_a_partition_behind_its_tail() {
    let mut ch = chains(&[("p.a", 0), ("p.b", 0)]);
    let mut g = CommitGroups::new(COMMITS.into(), 0, Scope::all());
    feed(&mut ch, "p.a", 0, &[(1, None)]);
    g.record(0, group(1, 2, 10, &[("p.a", 0, 1), ("p.b", 0, 2)]), false);
    assert!(matches!(g.plan(&mut ch, P(0), 0, 5_000).plan, Plan::Wait));
    assert_eq!(
        g.next_offset(),
        0,
        "the record stays the commits restart point"
    );
    feed(&mut ch, "p.b", 0, &[(2, None)]);
    assert_eq!(applied(g.plan(&mut ch, P(0), 0, 5_000)).position, P(2));
}

#[test]
fn a_gap_in_a_partition_holds_the_group_until_the_resend() {
    let mut ch = chains(&[("p.a", 0)]);
    let mut g = CommitGroups::new(COMMITS.into(), 0, Scope::all());
    // 3 names 2 as its predecessor; 2 was lost on the way and is resent.
    feed(&mut ch, "p.a", 0, &[(1, None), (3, Some(2))]);
    g.record(0, group(1, 3, 10, &[("p.a", 0, 3)]), false);
    assert!(matches!(g.plan(&mut ch, P(0), 0, 5_000).plan, Plan::Wait));
    feed(&mut ch, "p.a", 0, &[(2, Some(1))]);
    let a = applied(g.plan(&mut ch, P(0), 0, 5_000));
    assert_eq!(positions(&a.changes), [1, 2, 3]);
}

#[test]
fn a_group_naming_a_partition_the_follower_does_not_hold_is_not_complete() {
    // The follower started before table `new` existed: it holds only p.a.
    let mut ch = chains(&[("p.a", 0)]);
    let mut g = CommitGroups::new(COMMITS.into(), 0, Scope::all());
    feed(&mut ch, "p.a", 0, &[(1, None)]);
    let c = group(1, 2, 10, &[("p.a", 0, 1), ("p.new", 0, 2)]);
    assert_eq!(g.unheld(&c, &ch), [tp("p.new", 0)]);
    g.record(0, c, false);
    let planned = g.plan(&mut ch, P(0), 0, 5_000);
    assert!(
        matches!(planned.plan, Plan::Wait),
        "applying would move the position past rows the replica never got"
    );
    assert_eq!(ch[&tp("p.a", 0)].applied(), P(0), "nothing taken");
    // Once it holds the partition (a restart, or discovery), the group applies.
    ch.insert(tp("p.new", 0), PartitionChain::new(0, Position::ZERO));
    feed(&mut ch, "p.new", 0, &[(2, None)]);
    assert_eq!(
        positions(&applied(g.plan(&mut ch, P(0), 0, 5_000)).changes),
        [1, 2]
    );
}

#[test]
fn a_topic_left_out_on_purpose_is_not_waited_for() {
    let mut ch = chains(&[("p.a", 0)]);
    let scope = Scope::only(["p.a".to_owned()]);
    let mut g = CommitGroups::new(COMMITS.into(), 0, scope);
    feed(&mut ch, "p.a", 0, &[(1, None)]);
    let c = group(1, 2, 10, &[("p.a", 0, 1), ("p.other", 0, 2)]);
    assert!(g.unheld(&c, &ch).is_empty());
    g.record(0, c, false);
    let a = applied(g.plan(&mut ch, P(0), 0, 5_000));
    assert_eq!((a.position, positions(&a.changes)), (P(2), vec![1]));
}

#[test]
fn heartbeats_move_freshness_not_the_position_and_are_dropped() {
    let mut ch = chains(&[("p.a", 0)]);
    let mut g = CommitGroups::new(COMMITS.into(), 0, Scope::all());
    g.record(0, heartbeat(7, 100), false);
    g.record(1, heartbeat(7, 300), false);
    g.record(2, heartbeat(9, 400), false); // the leader moved on: not yet fresh
    g.consumed(2);
    let planned = g.plan(&mut ch, P(7), 50, 5_000);
    assert!(matches!(planned.plan, Plan::Wait));
    assert_eq!(planned.fresh_ts_ms, Some(300));
    assert_eq!(g.next_offset(), 3, "heartbeats are never a restart point");
}

#[test]
fn a_new_position_is_fresh_as_of_the_newest_record_it_covers() {
    let mut ch = chains(&[("p.a", 0)]);
    let mut g = CommitGroups::new(COMMITS.into(), 0, Scope::all());
    feed(&mut ch, "p.a", 0, &[(1, None)]);
    g.record(0, group(1, 1, 10, &[("p.a", 0, 1)]), false);
    g.record(1, heartbeat(1, 90), false);
    assert_eq!(applied(g.plan(&mut ch, P(0), 0, 5_000)).leader_ts_ms, 90);
    // And never older than what the old position was fresh as of.
    feed(&mut ch, "p.a", 0, &[(2, Some(1))]);
    g.record(2, group(2, 2, 20, &[("p.a", 0, 2)]), false);
    assert_eq!(applied(g.plan(&mut ch, P(1), 95, 5_000)).leader_ts_ms, 95);
}

#[test]
fn complete_groups_in_a_row_share_one_transaction_up_to_batch_max() {
    let mut ch = chains(&[("p.a", 0)]);
    let mut g = CommitGroups::new(COMMITS.into(), 0, Scope::all());
    let mut prev = None;
    for p in 1..=6 {
        feed(&mut ch, "p.a", 0, &[(p, prev)]);
        g.record(p - 1, group(p, p, p, &[("p.a", 0, p)]), false);
        prev = Some(p);
    }
    let first = applied(g.plan(&mut ch, P(0), 0, 4));
    assert_eq!(positions(&first.changes), [1, 2, 3, 4]);
    let offsets: HashMap<_, _> = first.offsets.into_iter().collect();
    assert_eq!(
        offsets[&tp(COMMITS, 0)],
        (4, P(4)),
        "resume at group 5's record"
    );
    let second = applied(g.plan(&mut ch, P(4), 4, 4));
    assert_eq!(positions(&second.changes), [5, 6]);
}

#[test]
fn a_group_after_a_missing_group_waits() {
    let mut ch = chains(&[("p.a", 0)]);
    let mut g = CommitGroups::new(COMMITS.into(), 0, Scope::all());
    feed(&mut ch, "p.a", 0, &[(3, None)]);
    g.record(0, group(3, 3, 10, &[("p.a", 0, 3)]), false);
    assert!(matches!(g.plan(&mut ch, P(1), 0, 5_000).plan, Plan::Wait));
}

#[test]
fn records_replayed_below_the_position_are_dropped_not_applied() {
    let mut ch = chains(&[("p.a", 0)]);
    let mut g = CommitGroups::new(COMMITS.into(), 0, Scope::all());
    g.record(0, group(1, 3, 10, &[("p.a", 0, 3)]), false);
    g.consumed(0);
    let planned = g.plan(&mut ch, P(5), 0, 5_000);
    assert!(matches!(planned.plan, Plan::Wait));
    assert_eq!(planned.fresh_ts_ms, Some(10));
    assert_eq!(g.next_offset(), 1);
}

#[test]
fn a_begun_group_streams_in_chunks_then_its_commit_applies_the_rest() {
    let mut ch = chains(&[("p.a", 0), ("p.b", 0)]);
    let mut g = CommitGroups::new(COMMITS.into(), 0, Scope::all());
    assert_eq!(g.progress(P(0)), None, "no begin record read yet");
    g.record(0, group(1, 6, 10, &[]), true);
    g.consumed(0);
    let span = |applied| {
        Some(GroupProgress {
            first: P(1),
            last: P(6),
            applied,
        })
    };
    assert_eq!(g.progress(P(0)), span(0), "announced, nothing written");
    // Three changes in chain order on each partition, then a hole on p.b.
    feed(&mut ch, "p.a", 0, &[(1, None), (3, Some(1))]);
    feed(&mut ch, "p.b", 0, &[(2, None), (6, Some(4))]);
    assert!(
        matches!(g.plan(&mut ch, P(0), 0, 4).plan, Plan::Wait),
        "3 ready of a batch of 4"
    );
    feed(&mut ch, "p.a", 0, &[(5, Some(3))]);
    match g.plan(&mut ch, P(0), 0, 3).plan {
        Plan::Stream(changes) => assert_eq!(positions(&changes), [1, 2, 3, 5]),
        other => panic!("expected a stream, got {other:?}"),
    }
    assert_eq!(g.progress(P(0)), span(4), "four in the open transaction");
    assert_eq!(
        g.next_offset(),
        0,
        "the begin record holds until the group applies"
    );
    feed(&mut ch, "p.b", 0, &[(4, Some(2))]);
    g.record(1, group(1, 6, 10, &[("p.a", 0, 5), ("p.b", 0, 6)]), false);
    g.consumed(1);
    let a = applied(g.plan(&mut ch, P(0), 0, 3));
    assert_eq!((a.position, positions(&a.changes)), (P(6), vec![4, 6]));
    assert_eq!(g.next_offset(), 2);
    assert_eq!(g.progress(P(6)), None, "applied: no group streams");
}

/// A producer killed after its begin record may close the same changes in shorter groups
/// when it restarts (it had stored no progress inside the group). What was streamed of the
/// announced group is in the open transaction: it must not commit at a position before it.
#[test]
fn a_group_closed_short_of_what_was_streamed_merges_with_the_next_one() {
    let mut ch = chains(&[("p.a", 0), ("p.b", 0)]);
    let mut g = CommitGroups::new(COMMITS.into(), 0, Scope::all());
    // The first run announces 1..=6 and sends 1..=5.
    g.record(0, group(1, 6, 10, &[]), true);
    g.consumed(0);
    feed(&mut ch, "p.a", 0, &[(1, None), (3, Some(1)), (5, Some(3))]);
    feed(&mut ch, "p.b", 0, &[(2, None), (4, Some(2))]);
    match g.plan(&mut ch, P(0), 0, 3).plan {
        Plan::Stream(changes) => assert_eq!(positions(&changes), [1, 2, 3, 4, 5]),
        other => panic!("expected a stream, got {other:?}"),
    }
    // The restarted producer closes 1..=3, then 4..=6.
    g.record(1, group(1, 3, 11, &[("p.a", 0, 3), ("p.b", 0, 2)]), false);
    g.consumed(1);
    match g.plan(&mut ch, P(0), 0, 3).plan {
        Plan::Wait => {}
        other => panic!(
            "4 and 5 are in the open transaction: committing it at position 3 shows readers \
             a state the leader never had; got {other:?}"
        ),
    }
    feed(&mut ch, "p.b", 0, &[(6, Some(4))]);
    g.record(2, group(4, 6, 12, &[("p.a", 0, 5), ("p.b", 0, 6)]), false);
    g.consumed(2);
    let a = applied(g.plan(&mut ch, P(0), 0, 3));
    assert_eq!((a.position, positions(&a.changes)), (P(6), vec![6]));
    assert_eq!(g.next_offset(), 3);
    assert_eq!(g.progress(P(6)), None);
}

#[test]
fn the_drops_of_every_group_applied_come_with_the_plan_in_position_order() {
    let mut ch = chains(&[("p.a", 0)]);
    let mut g = CommitGroups::new(COMMITS.into(), 0, Scope::all());
    feed(&mut ch, "p.a", 0, &[(1, None), (3, Some(1))]);
    let mut first = group(1, 2, 10, &[("p.a", 0, 1)]);
    first.dropped = vec![barista_schemas::DroppedTable {
        table: "gone".into(),
        position: P(2),
    }];
    let mut second = group(3, 4, 11, &[("p.a", 0, 3)]);
    second.dropped = vec![barista_schemas::DroppedTable {
        table: "also".into(),
        position: P(4),
    }];
    g.record(0, first, false);
    g.record(1, second, false);
    let a = applied(g.plan(&mut ch, P(0), 0, 5_000));
    assert_eq!(a.position, P(4));
    assert_eq!(
        a.drops,
        [(P(2), "gone".to_owned()), (P(4), "also".to_owned())]
    );
    // A group that is only a drop (no changes, no partitions) is complete.
    let mut only = group(5, 5, 12, &[]);
    only.dropped = vec![barista_schemas::DroppedTable {
        table: "last".into(),
        position: P(5),
    }];
    g.record(2, only, false);
    let b = applied(g.plan(&mut ch, P(4), 11, 5_000));
    assert_eq!((b.position, b.changes.len(), b.drops.len()), (P(5), 0, 1));
}

#[test]
fn a_begun_group_that_drops_a_table_streams_nothing_past_the_drop() {
    let mut ch = chains(&[("p.a", 0)]);
    let mut g = CommitGroups::new(COMMITS.into(), 0, Scope::all());
    // The group 1..=6 drops a table at 4 (it may be created again after).
    let mut begin = group(1, 6, 10, &[]);
    begin.dropped = vec![barista_schemas::DroppedTable {
        table: "t".into(),
        position: P(4),
    }];
    g.record(0, begin.clone(), true);
    feed(
        &mut ch,
        "p.a",
        0,
        &[
            (1, None),
            (2, Some(1)),
            (3, Some(2)),
            (5, Some(3)),
            (6, Some(5)),
        ],
    );
    match g.plan(&mut ch, P(0), 0, 2).plan {
        Plan::Stream(changes) => assert_eq!(positions(&changes), [1, 2, 3]),
        other => panic!("expected a stream, got {other:?}"),
    }
    assert!(matches!(g.plan(&mut ch, P(0), 0, 1).plan, Plan::Wait));
    let mut commit = group(1, 6, 10, &[("p.a", 0, 6)]);
    commit.dropped = begin.dropped;
    g.record(1, commit, false);
    let a = applied(g.plan(&mut ch, P(0), 0, 2));
    assert_eq!(positions(&a.changes), [5, 6]);
    assert_eq!(a.drops, [(P(4), "t".to_owned())]);
}
