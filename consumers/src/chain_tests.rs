//! The per-partition chain's unit tests (see [`super`]).

use super::fixture::change;
use super::*;

const P: fn(i64) -> Position = Position;

fn offer(c: &mut PartitionChain, offset: i64, pos: i64, prev: Option<i64>) -> Offer {
    c.offer(offset, change(pos, prev), Position::ZERO, Instant::now())
}

fn positions(changes: &[DecodedChange]) -> Vec<i64> {
    changes.iter().map(|c| c.source.position.0).collect()
}

#[test]
fn changes_in_chain_order_advance_the_chain() {
    let mut c = PartitionChain::new(0, Position::ZERO);
    for (o, (p, prev)) in [(1, None), (4, Some(1)), (9, Some(4))]
        .into_iter()
        .enumerate()
    {
        assert!(matches!(
            offer(&mut c, o as i64, p, prev),
            Offer::Buffered { .. }
        ));
    }
    assert_eq!(c.contiguous(), P(9));
    assert_eq!(
        c.gap(Instant::now() + Duration::from_secs(99), Duration::ZERO),
        None
    );
}

#[test]
fn a_resent_change_is_a_duplicate_whether_buffered_or_applied() {
    let mut c = PartitionChain::new(0, Position::ZERO);
    offer(&mut c, 0, 1, None);
    offer(&mut c, 1, 2, Some(1));
    assert_eq!(offer(&mut c, 2, 2, Some(1)), Offer::Duplicate);
    assert_eq!(positions(&c.take_through(P(2))), [1, 2]);
    assert_eq!(c.applied(), P(2));
    assert_eq!(offer(&mut c, 3, 1, None), Offer::Duplicate);
    // Below the replica's position, even if this partition applied less.
    let mut fresh = PartitionChain::new(0, Position::ZERO);
    let dup = fresh.offer(0, change(5, None), P(7), Instant::now());
    assert_eq!(dup, Offer::Duplicate);
    assert!(fresh.is_applied(P(7), P(7)) && !fresh.is_applied(P(8), P(7)));
}

#[test]
fn a_gap_holds_the_chain_until_the_resend_fills_it() {
    let t0 = Instant::now();
    let mut c = PartitionChain::new(0, Position::ZERO);
    c.offer(0, change(1, None), Position::ZERO, t0);
    // 3 names 2, which has not arrived: the chain stops at 1.
    c.offer(1, change(3, Some(2)), Position::ZERO, t0);
    assert_eq!(c.contiguous(), P(1));
    assert_eq!(c.ready_through(P(3)), 1);
    let timeout = Duration::from_secs(30);
    assert_eq!(c.gap(t0 + Duration::from_secs(10), timeout), None);
    let gap = c.gap(t0 + Duration::from_secs(31), timeout).unwrap();
    assert_eq!((gap.position, gap.prev, gap.have), (P(3), Some(P(2)), P(1)));
    // The resend arrives (a rewind resends from the acknowledged point).
    c.offer(
        2,
        change(2, Some(1)),
        Position::ZERO,
        t0 + Duration::from_secs(20),
    );
    assert_eq!(c.contiguous(), P(3));
    assert_eq!(c.gap(t0 + Duration::from_secs(99), timeout), None);
}

#[test]
fn the_gap_clock_starts_at_the_first_wait_not_the_latest() {
    let t0 = Instant::now();
    let mut c = PartitionChain::new(0, Position::ZERO);
    c.offer(0, change(3, Some(2)), Position::ZERO, t0);
    c.offer(
        1,
        change(4, Some(3)),
        Position::ZERO,
        t0 + Duration::from_secs(5),
    );
    let gap = c.gap(t0 + Duration::from_secs(7), Duration::from_secs(6));
    assert_eq!(gap.map(|g| g.waited), Some(Duration::from_secs(7)));
}

#[test]
fn the_restart_offset_is_the_oldest_unapplied_message() {
    let mut c = PartitionChain::new(10, P(0));
    assert_eq!(c.next_offset(), 10);
    for (o, p, prev) in [(10, 1, None), (11, 2, Some(1)), (12, 3, Some(2))] {
        c.consumed(o);
        offer(&mut c, o, p, prev);
    }
    assert_eq!(c.next_offset(), 10);
    c.take_through(P(2));
    assert_eq!(c.next_offset(), 12);
    c.take_through(P(3));
    assert_eq!(c.next_offset(), 13);
    c.high_watermark = 20;
    assert_eq!(c.offset_lag(), 7);
}

#[test]
fn a_dead_lettered_change_blocks_and_keeps_its_offset_until_passed() {
    let mut c = PartitionChain::new(0, P(0));
    c.consumed(0);
    offer(&mut c, 0, 1, None);
    c.consumed(1);
    assert!(c.block(1, P(2), "poison".into()));
    c.consumed(2);
    offer(&mut c, 2, 3, Some(2));
    assert_eq!(c.contiguous(), P(1));
    assert_eq!(c.blocked().map(|b| b.position), Some(P(2)));
    // A blocked partition is not a lost one: no gap, however long.
    assert_eq!(
        c.gap(Instant::now() + Duration::from_secs(999), Duration::ZERO),
        None
    );
    c.take_through(P(1));
    assert_eq!(
        c.next_offset(),
        1,
        "the poison's offset is the restart point"
    );
    // A message already passed by the chain blocks nothing.
    assert!(!c.block(0, P(1), "late".into()));
}

#[test]
fn a_blocked_position_the_chain_passes_is_released() {
    let mut c = PartitionChain::new(0, P(0));
    offer(&mut c, 0, 1, None);
    // A message that only claimed position 2: the chain goes 1 → 3.
    assert!(c.block(1, P(2), "claimed".into()));
    match offer(&mut c, 2, 3, Some(1)) {
        Offer::Buffered { released } => assert_eq!(
            released
                .iter()
                .map(|b| (b.offset, b.position))
                .collect::<Vec<_>>(),
            [(1, P(2))]
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.blocked(), None);
    assert_eq!(c.contiguous(), P(3));
}

#[test]
fn skipping_a_held_position_releases_the_changes_behind_it() {
    let mut c = PartitionChain::new(0, P(0));
    for o in 0..4 {
        c.consumed(o);
    }
    offer(&mut c, 0, 1, None);
    assert!(c.block(1, P(2), "poison".into()));
    offer(&mut c, 2, 3, Some(2));
    offer(&mut c, 3, 4, Some(3));
    assert_eq!(c.contiguous(), P(1));
    assert_eq!(c.next_offset(), 0);
    c.take_through(P(1));
    assert_eq!(c.next_offset(), 1, "held at the poison");
    let released = c.skip(P(2), Instant::now());
    assert_eq!(
        released
            .iter()
            .map(|b| (b.offset, b.position))
            .collect::<Vec<_>>(),
        [(1, P(2))]
    );
    assert_eq!(
        c.contiguous(),
        P(4),
        "the chain passes the skipped position"
    );
    assert!(c.held().is_empty() && c.is_skipped(P(2)));
    assert_eq!(
        c.next_offset(),
        2,
        "the poison is no longer the restart point"
    );
    assert_eq!(positions(&c.take_through(P(4))), [3, 4], "nothing for 2");
}

#[test]
fn a_skipped_position_at_the_tail_completes_its_partition() {
    let mut c = PartitionChain::new(0, P(0));
    offer(&mut c, 0, 1, None);
    assert!(c.block(1, P(2), "poison".into()));
    c.consumed(1);
    c.skip(P(2), Instant::now());
    // A group whose last change here is the skipped one can complete.
    assert_eq!(c.contiguous(), P(2));
    assert_eq!(c.next_offset(), 0, "change 1 is still to apply");
    c.take_through(P(2));
    assert_eq!(c.next_offset(), 2);
}

#[test]
fn a_skip_does_not_jump_a_gap_below_it() {
    let mut c = PartitionChain::new(0, P(0));
    offer(&mut c, 0, 1, None);
    // 3 names 2, which never arrived; 5 is poison; 6 follows it.
    offer(&mut c, 1, 3, Some(2));
    assert!(c.block(2, P(5), "poison".into()));
    offer(&mut c, 3, 6, Some(5));
    c.skip(P(5), Instant::now());
    assert_eq!(c.contiguous(), P(1), "2 is still missing");
    let gap = c.gap(Instant::now() + Duration::from_secs(99), Duration::ZERO);
    assert_eq!(
        gap.map(|g| g.prev),
        Some(Some(P(2))),
        "a real gap, not hidden"
    );
    // The resend of 2 arrives: the chain goes through the skipped 5.
    offer(&mut c, 4, 2, Some(1));
    assert_eq!(c.contiguous(), P(6));
}

#[test]
fn a_skip_restored_after_a_restart_passes_the_poison_read_again() {
    // The replica stored offset 1 (the poison's) and position 1.
    let mut c = PartitionChain::new(1, P(1));
    c.skip(P(2), Instant::now());
    assert!(c.is_skipped(P(2)), "a re-read of the poison is not decoded");
    assert!(!c.is_applied(P(2), P(1)));
    c.consumed(1);
    c.consumed(2);
    offer(&mut c, 2, 3, Some(2));
    assert_eq!(c.contiguous(), P(3));
    assert_eq!(c.held(), []);
}

#[test]
fn a_replayed_message_is_unblocked_and_its_change_keeps_the_offset() {
    let mut c = PartitionChain::new(0, P(0));
    c.consumed(0);
    assert!(c.block(0, P(1), "poison".into()));
    c.consumed(1);
    offer(&mut c, 1, 2, Some(1));
    assert_eq!(c.contiguous(), P(0));
    // The replay decodes it: it enters the chain like any change.
    match offer(&mut c, 0, 1, None) {
        Offer::Buffered { released } => assert_eq!(released.len(), 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.unblock(0), None, "the chain released it already");
    assert_eq!(c.contiguous(), P(2));
    assert_eq!(c.next_offset(), 0, "its offset stays until it is applied");
}

#[test]
fn take_through_leaves_later_changes_buffered() {
    let mut c = PartitionChain::new(0, P(0));
    offer(&mut c, 0, 2, None);
    offer(&mut c, 1, 5, Some(2));
    offer(&mut c, 2, 7, Some(5));
    assert_eq!(c.pending_through(P(6)), 2);
    assert_eq!(positions(&c.take_through(P(6))), [2, 5]);
    assert_eq!(c.applied(), P(5));
    assert_eq!(positions(&c.take_through(P(6))), Vec::<i64>::new());
    assert_eq!(c.applied(), P(5), "taking nothing moves nothing");
    assert_eq!(c.pending_through(P(7)), 1);
}

#[test]
fn a_stale_watermark_sample_never_shows_the_chain_ahead_of_its_partition() {
    let mut c = PartitionChain::new(0, P(0));
    c.saw_high_watermark(10);
    c.consumed(14); // read offset 14: the partition holds at least 15
    assert_eq!(c.high_watermark, 15);
    c.saw_high_watermark(12); // a sample taken before offset 14 arrived
    assert_eq!((c.high_watermark, c.offset_lag()), (15, 0));
    c.saw_high_watermark(20);
    assert_eq!(c.offset_lag(), 5);
}

fn change_of(epoch: i64, pos: i64, prev: Option<i64>) -> DecodedChange {
    let mut ch = change(pos, prev);
    ch.source.epoch = epoch;
    ch
}

/// The replaced leader sent 11 and 12 past its last whole group (10); the promoted follower
/// numbers its own changes from 11 too. Whichever arrives first, the new epoch's are applied.
#[test]
fn a_newer_epochs_change_replaces_a_replaced_leaders_at_the_same_position() {
    let now = Instant::now();
    let mut c = PartitionChain::new(0, P(10));
    for (o, p, prev) in [(0, 11, 10), (1, 12, 11)] {
        c.offer(o, change_of(0, p, Some(prev)), P(10), now);
    }
    assert_eq!(c.contiguous(), P(12));
    // A new-epoch change read before the takeover record: it replaces the old one.
    assert!(matches!(
        c.offer(2, change_of(1, 11, Some(10)), P(10), now),
        Offer::Buffered { .. }
    ));
    // The same position again from the old epoch is a duplicate, not a replacement.
    assert_eq!(
        c.offer(3, change_of(0, 11, Some(10)), P(10), now),
        Offer::Duplicate
    );
    // The takeover record: the old epoch's 12 is dropped, the chain reaches only 11.
    let fence = crate::fence::Fence {
        epoch: 1,
        takeover: P(11),
    };
    assert_eq!(c.fence(fence, now), 1);
    assert_eq!(c.contiguous(), P(11));
    let taken = c.take_through(P(12));
    assert_eq!(positions(&taken), vec![11]);
    assert_eq!(taken[0].source.epoch, 1);
}
