//! The per-partition chain, pure (no Kafka, SQLite or tokio): decoded changes
//! of one data partition buffered by position, and the `prev_position` chain
//! the producer threads through them.
//!
//! A change whose predecessor this partition never received is a **gap**: it
//! waits for a resend, and [`PartitionChain::gap`] says how long it has. A
//! change at or below what was applied, or already buffered, is a
//! **duplicate** (a resend after a producer rewind). A change that went to the
//! dead-letter topic **blocks** the chain at its position until the chain
//! passes it; meanwhile its offset stays the restart point. An operator may
//! **skip** such a position on purpose: the chain then counts it as passed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use barista_schemas::envelope::DecodedChange;
use barista_schemas::Position;

pub use barista_schemas::contract::TopicPartition;

/// A message that claimed a leader position and could not be applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocked {
    /// Its Kafka offset.
    pub offset: i64,
    /// The position it claimed.
    pub position: Position,
    /// Why it is held, for `/status`.
    pub reason: String,
}

/// What [`PartitionChain::offer`] did with a change.
#[derive(Debug, PartialEq)]
pub enum Offer {
    /// Already applied or buffered: dropped.
    Duplicate,
    /// Buffered. The chain passed these dead-lettered messages' positions:
    /// they were not missing changes of this partition and hold nothing now.
    Buffered {
        /// Blocked messages no longer held.
        released: Vec<Blocked>,
    },
}

/// A change waiting for a predecessor that has not arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The first change past the chain.
    pub position: Position,
    /// The predecessor it names.
    pub prev: Option<Position>,
    /// How far the chain reaches.
    pub have: Position,
    /// How long it has waited.
    pub waited: Duration,
}

/// One data partition's buffer and chain.
#[derive(Debug, Default)]
pub struct PartitionChain {
    /// The offset after the last message consumed.
    consumed: i64,
    /// The last position applied from this partition.
    applied: Position,
    /// The chain reaches here without a hole.
    contiguous: Position,
    buffered: BTreeMap<Position, (i64, DecodedChange)>,
    gap_since: Option<Instant>,
    /// Oldest first: their offsets stay stored until the chain passes them.
    blocked: Vec<Blocked>,
    /// Positions an operator skipped: the chain passes them without a
    /// change (their predecessor unknown, since they could not be decoded).
    /// Kept for the process's life (a handful), so that a resend of one is
    /// never applied.
    skipped: BTreeSet<Position>,
    /// The partition's high watermark as last seen.
    pub high_watermark: i64,
}

impl PartitionChain {
    /// A chain resuming at `next_offset`, with `applied` the last position
    /// the replica holds from this partition.
    pub fn new(next_offset: i64, applied: Position) -> Self {
        PartitionChain {
            consumed: next_offset,
            applied,
            contiguous: applied,
            ..PartitionChain::default()
        }
    }

    /// The last position applied from this partition.
    pub fn applied(&self) -> Position {
        self.applied
    }

    /// How far the chain reaches without a hole.
    pub fn contiguous(&self) -> Position {
        self.contiguous
    }

    /// Why the partition is blocked, if it is.
    pub fn blocked(&self) -> Option<&Blocked> {
        self.blocked.first()
    }

    /// Every dead-lettered message that holds the chain back, oldest first.
    pub fn held(&self) -> &[Blocked] {
        &self.blocked
    }

    /// True when an operator skipped `position` and the chain has not
    /// applied past it: a message claiming it is neither decoded nor applied.
    pub fn is_skipped(&self, position: Position) -> bool {
        self.skipped.contains(&position)
    }

    /// Records that the message at `offset` was consumed (offsets only
    /// grow: a batch may count a duplicate before an earlier message of the
    /// same partition is handled).
    pub fn consumed(&mut self, offset: i64) {
        self.consumed = self.consumed.max(offset + 1);
        // A message at `offset` is proof the partition reaches past it: a
        // watermark sampled before it arrived never reads below what was read.
        self.saw_high_watermark(offset + 1);
    }

    /// A high watermark sampled from the broker (or implied by a message);
    /// the chain keeps the highest seen, so a stale sample never shows the
    /// follower ahead of its partition.
    pub fn saw_high_watermark(&mut self, hw: i64) {
        self.high_watermark = self.high_watermark.max(hw);
    }

    /// True when a message claiming `position` needs no decoding: applied
    /// here or by the replica (`floor`, the replica's position).
    pub fn is_applied(&self, position: Position, floor: Position) -> bool {
        position <= self.applied.max(floor)
    }

    /// Buffers a decoded change read at `offset`, unless it is a duplicate,
    /// and follows the chain as far as it now reaches.
    pub fn offer(
        &mut self,
        offset: i64,
        change: DecodedChange,
        floor: Position,
        now: Instant,
    ) -> Offer {
        let p = change.source.position;
        if self.is_applied(p, floor) {
            return Offer::Duplicate;
        }
        match self.buffered.get(&p) {
            // The same position from a newer leader epoch: a promoted follower's change
            // replaces what the replaced leader sent there (read before the takeover record).
            Some((_, held)) if held.source.epoch < change.source.epoch => {
                self.contiguous = self.applied;
            }
            Some(_) => return Offer::Duplicate,
            None => {}
        }
        self.buffered.insert(p, (offset, change));
        Offer::Buffered {
            released: self.advance(now),
        }
    }

    /// Follows the `prev_position` chain through the buffer; starts or ends
    /// the gap clock. Returns the blocked messages the chain has passed.
    fn advance(&mut self, now: Instant) -> Vec<Blocked> {
        let mut c = self.contiguous.max(self.applied);
        let mut reached_end = true;
        for (pos, (_, ch)) in self.buffered.range(c.next()..) {
            // A skipped position below this change counts as passed when the
            // chain gets to it: the operator vouched for it (and, since it
            // could not be decoded, for its unknown predecessor).
            while let Some(&s) = self.skipped.range(c.next()..*pos).next() {
                c = s;
            }
            if ch.source.prev_position.is_none_or(|p| p <= c) {
                c = *pos;
            } else {
                reached_end = false;
                break;
            }
        }
        if reached_end {
            while let Some(&s) = self.skipped.range(c.next()..).next() {
                c = s;
            }
        }
        self.contiguous = c;
        let waiting = self.buffered.range(c.next()..).next().is_some();
        self.gap_since = waiting.then(|| self.gap_since.unwrap_or(now));
        let (released, held) = std::mem::take(&mut self.blocked)
            .into_iter()
            .partition(|b| b.position <= c);
        self.blocked = held;
        released
    }

    /// A newer leader epoch took over (see [`crate::fence`]): drops the buffered changes of a
    /// replaced leader at or past the takeover position and follows the chain again without
    /// them. Returns how many were dropped.
    pub fn fence(&mut self, fence: crate::fence::Fence, now: Instant) -> usize {
        let before = self.buffered.len();
        self.buffered
            .retain(|p, (_, c)| fence.admits(c.source.epoch, *p));
        let dropped = before - self.buffered.len();
        if dropped > 0 {
            self.contiguous = self.applied;
            self.advance(now);
        }
        dropped
    }

    /// A message claiming `position` went to the dead-letter topic. Unless
    /// the chain already passed that position, it holds the chain (the next
    /// change names it as `prev_position`) and keeps its offset as the
    /// restart point. Returns whether it now blocks.
    pub fn block(&mut self, offset: i64, position: Position, reason: String) -> bool {
        if position <= self.contiguous {
            return false;
        }
        self.blocked.push(Blocked {
            offset,
            position,
            reason,
        });
        true
    }

    /// An operator skipped `position` (a held message they decided not to
    /// apply, or one skipped before a restart): the chain counts it as
    /// passed. Returns the blocked messages now released, the skipped one
    /// among them.
    pub fn skip(&mut self, position: Position, now: Instant) -> Vec<Blocked> {
        if position > self.contiguous.max(self.applied) {
            self.skipped.insert(position);
        }
        let (mut released, held): (Vec<_>, Vec<_>) = std::mem::take(&mut self.blocked)
            .into_iter()
            .partition(|b| b.position == position);
        self.blocked = held;
        released.extend(self.advance(now));
        released
    }

    /// The message at `offset` no longer holds the chain: it was replayed
    /// (now buffered as a change, which keeps its offset as the restart
    /// point until applied). Returns it if it was held.
    pub fn unblock(&mut self, offset: i64) -> Option<Blocked> {
        let i = self.blocked.iter().position(|b| b.offset == offset)?;
        Some(self.blocked.remove(i))
    }

    /// A gap that has waited longer than `timeout`, unless a dead-lettered
    /// message explains it (then the partition is blocked, not lost).
    pub fn gap(&self, now: Instant, timeout: Duration) -> Option<Gap> {
        if !self.blocked.is_empty() {
            return None;
        }
        let waited = now.saturating_duration_since(self.gap_since?);
        if waited <= timeout {
            return None;
        }
        let (pos, (_, ch)) = self.buffered.range(self.contiguous.next()..).next()?;
        Some(Gap {
            position: *pos,
            prev: ch.source.prev_position,
            have: self.contiguous,
            waited,
        })
    }

    /// How many buffered changes are at or below `upto`.
    pub fn pending_through(&self, upto: Position) -> usize {
        self.buffered.range(..=upto).count()
    }

    /// How many buffered changes at or below `upto` the chain reaches.
    pub fn ready_through(&self, upto: Position) -> usize {
        self.pending_through(upto.min(self.contiguous))
    }

    /// Takes the buffered changes at or below `upto`, in position order, and
    /// counts them as applied.
    pub fn take_through(&mut self, upto: Position) -> Vec<DecodedChange> {
        let rest = self.buffered.split_off(&upto.next());
        let taken = std::mem::replace(&mut self.buffered, rest);
        if let Some((&last, _)) = taken.iter().next_back() {
            self.applied = last;
        }
        taken.into_values().map(|(_, c)| c).collect()
    }

    /// The offset a restart must read from: the oldest of what was consumed
    /// but not applied (buffered or blocked), else the next one.
    pub fn next_offset(&self) -> i64 {
        let buffered = self.buffered.values().map(|(o, _)| *o);
        let blocked = self.blocked.iter().map(|b| b.offset);
        buffered
            .chain(blocked)
            .fold(self.consumed, |low, o| low.min(o))
    }

    /// Offsets behind the high watermark.
    pub fn offset_lag(&self) -> i64 {
        (self.high_watermark - self.next_offset()).max(0)
    }
}

/// Decoded changes built by hand, for the pure cores' tests.
#[cfg(test)]
pub(crate) mod fixture {
    use std::sync::Arc;

    use barista_schemas::envelope::{DecodedChange, RowShape};
    use barista_schemas::{Op, Position, Source, SqlValue};

    /// A change to table `t` at `position`, chained after `prev`.
    pub fn change(position: i64, prev: Option<i64>) -> DecodedChange {
        DecodedChange {
            shape: Arc::new(RowShape {
                table: "t".into(),
                columns: Vec::new(),
            }),
            op: Op::Create,
            before: None,
            after: Some(vec![SqlValue::Integer(position)]),
            source: Source {
                connector: "barista".into(),
                db: "test".into(),
                table: "t".into(),
                position: Position(position),
                txn: Position(position),
                prev_position: prev.map(Position),
                snapshot: false,
                ts_ms: 0,
                epoch: 0,
            },
            ts_ms: 0,
        }
    }
}

#[cfg(test)]
#[path = "chain_tests.rs"]
mod tests;
