//! Ack, the stage after publish: from delivery reports, taken in send order, decides how far
//! Kafka has acknowledged the leader's changes, what capture may prune, and where to start
//! again after a failed delivery. Pure: no Kafka and no tokio; the acker task in
//! [`crate::publish`] awaits the reports and feeds them in.
//!
//! Reads: what each sent message was (position, partition chain, whether it closes a commit
//! group) and that Kafka acknowledged it. Writes: the acknowledged position and partition
//! tails, prune instructions for capture, the rewind point.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use barista_schemas::Position;

#[cfg(test)]
mod tests;

pub use barista_schemas::contract::TopicPartition;

/// What a sent message's delivery report acknowledges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sent {
    /// The leader position the message carries.
    pub position: Position,
    /// The partition whose `prev_position` chain a change event extends; `None` for
    /// tombstones and commit records, which are not part of a chain.
    pub chain: Option<TopicPartition>,
    /// The commit record that closes a group: only its acknowledgement moves the
    /// acknowledged position (and so pruning and the restart point).
    pub group_end: bool,
}

/// How far Kafka has acknowledged: every change up to `position`, and per partition the last
/// change acknowledged there (the `prev_position` of the next one sent to it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Acked {
    /// Every change up to here is in Kafka, its group's commit record included.
    pub position: Position,
    /// The last acknowledged change per partition.
    pub partitions: HashMap<TopicPartition, Position>,
}

/// Where the publisher starts again after a failed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rewind {
    /// The new generation: reports and chunks of older ones are stale.
    pub gen: u64,
    /// Capture resends every change after this position.
    pub from: Position,
    /// The last position per partition as of `from`: the resent events' `prev_position`.
    pub last_sent: HashMap<TopicPartition, Position>,
}

/// Prune at most this often while reports keep coming: each prune is a write transaction on
/// the leader. An idle acker prunes at once.
const PRUNE_EVERY: Duration = Duration::from_millis(250);

/// The acknowledgement state of one producer run.
#[derive(Debug)]
pub(crate) struct Acks {
    /// Reports of other generations were sent before a rewind and are ignored.
    gen: u64,
    acked: Acked,
    /// Tails of the group whose commit record is not acknowledged yet.
    group: HashMap<TopicPartition, Position>,
    /// When capture was last told to prune.
    pruned_at: Option<Instant>,
}

impl Acks {
    /// Starts from what capture recorded as acknowledged, in generation 0.
    pub fn new(acked: Acked) -> Acks {
        Acks {
            gen: 0,
            acked,
            group: HashMap::new(),
            pruned_at: None,
        }
    }

    /// The current generation.
    pub fn gen(&self) -> u64 {
        self.gen
    }

    /// How far Kafka has acknowledged.
    pub fn acked(&self) -> &Acked {
        &self.acked
    }

    /// Kafka acknowledged `sent`, sent in generation `gen`. Reports must come in send order:
    /// then the acknowledged position only moves past a group once its commit record and
    /// everything sent before it are acknowledged. Moving it per change would let a crash
    /// between a group's last change and its commit record skip that record on restart, and
    /// followers would wait for it forever.
    ///
    /// Returns what capture may now prune when this closes a group and a prune is due (one
    /// per [`PRUNE_EVERY`], or at once when `idle`, nothing else awaiting its report).
    pub fn delivered(&mut self, gen: u64, sent: Sent, now: Instant, idle: bool) -> Option<Acked> {
        if gen != self.gen {
            return None;
        }
        if let Some(tp) = sent.chain {
            self.group.insert(tp, sent.position);
        }
        if !sent.group_end {
            return None;
        }
        self.acked.position = self.acked.position.max(sent.position);
        // The group's tails go with it; max, so a partition's tail never moves back.
        for (tp, position) in self.group.drain() {
            let tail = self.acked.partitions.entry(tp).or_insert(position);
            *tail = (*tail).max(position);
        }
        let due = idle
            || self
                .pruned_at
                .is_none_or(|t| now.duration_since(t) > PRUNE_EVERY);
        if !due {
            return None;
        }
        self.pruned_at = Some(now);
        Some(self.acked.clone())
    }

    /// After a failed delivery: a new generation, the unacknowledged group forgotten (it is
    /// sent again whole), and the point to resend from.
    pub fn rewind(&mut self) -> Rewind {
        self.gen += 1;
        self.group.clear();
        Rewind {
            gen: self.gen,
            from: self.acked.position,
            last_sent: self.acked.partitions.clone(),
        }
    }
}
