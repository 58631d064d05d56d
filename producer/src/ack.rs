//! Ack, the stage after publish: from delivery reports, taken in send order, decides how far
//! Kafka has acknowledged the leader's changes, what capture may prune, and where to start
//! again after a failed delivery. Pure: no Kafka and no tokio; the acker task in
//! [`crate::publish`] awaits the reports and feeds them in.
//!
//! Reads: what each sent message was (position, partition chain, whether it closes a chunk or
//! a commit group) and that Kafka acknowledged it. Writes: the acknowledged position and
//! partition tails, the open group, prune instructions for capture, the rewind point.
//!
//! # Inside a commit group
//!
//! A group larger than one chunk is acknowledged chunk by chunk. The publisher follows each
//! chunk but the last with a chunk mark (no Kafka record, only a place in the report order):
//! once every report before it is in, the chunk is in Kafka.
//!
//! - **`acked`** ([`Acked::position`]): every change up to here is in Kafka. Inside a group it
//!   is the end of the last acknowledged chunk; it moves past the group only with its commit
//!   record. A producer that stops mid-group starts again after it, not at the group's start.
//! - **The open group** ([`Acked::open`]): the group `acked` lies inside (its first and last
//!   position and leader time, fixed when it was first read, and its partition tails so far).
//!   A restarted producer sends the rest of that same group, begin and commit record
//!   included: followers, who drop what they already hold by position, see one group.
//! - **The prune point** ([`Acked::prune_point`]): the end of the last group whose commit
//!   record is acknowledged. The changelog is pruned up to there and no further, and the table
//!   checksums are stored as of there: the open group's rows stay on the leader because its
//!   drop markers and the checksum state at `acked` are rebuilt from them on restart.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use barista_schemas::Position;

#[cfg(test)]
mod tests;

pub use barista_schemas::contract::TopicPartition;

/// What a sent message's delivery report acknowledges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sent {
    /// The leader position the message carries (a chunk mark: the last position its chunk
    /// scanned).
    pub position: Position,
    /// The partition whose `prev_position` chain a change event extends; `None` for
    /// tombstones, commit records and chunk marks, which are not part of a chain.
    pub chain: Option<TopicPartition>,
    /// What its acknowledgement closes.
    pub closes: Closes,
}

/// What an acknowledgement closes: only chunk marks and commit records move the acknowledged
/// position (and so pruning and the restart point).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Closes {
    /// A change event or tombstone: nothing on its own.
    Nothing,
    /// A chunk mark, not a Kafka record: every record of the chunk, and of the group before
    /// it, was sent before it. Carries the group as of the chunk's end.
    Chunk(OpenGroup),
    /// The commit record that closes a group.
    Group,
}

/// A commit group only partly acknowledged: what a restart needs to send the rest of it as
/// the same group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct OpenGroup {
    /// The group's first position.
    pub first: Position,
    /// Its last position: the leader head when it was first read. A restart ends it there
    /// too, whatever was committed since.
    pub last: Position,
    /// The leader clock just before it was first read.
    pub ts_ms: i64,
    /// Per partition: (topic, partition, last position, change events) sent in the group up
    /// to the chunk's end, for the group's commit record.
    pub tails: Vec<(String, i32, Position, i64)>,
}

impl OpenGroup {
    /// The tails as the publisher keeps them.
    pub fn tail_map(&self) -> BTreeMap<TopicPartition, (Position, i64)> {
        self.tails
            .iter()
            .map(|(t, p, last, n)| ((t.clone(), *p), (*last, *n)))
            .collect()
    }

    /// From the publisher's tails.
    pub fn with_tails(
        first: Position,
        last: Position,
        ts_ms: i64,
        tails: &BTreeMap<TopicPartition, (Position, i64)>,
    ) -> OpenGroup {
        OpenGroup {
            first,
            last,
            ts_ms,
            tails: tails
                .iter()
                .map(|((t, p), (last, n))| (t.clone(), *p, *last, *n))
                .collect(),
        }
    }
}

/// How far Kafka has acknowledged: every change up to `position`, and per partition the last
/// change acknowledged there (the `prev_position` of the next one sent to it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Acked {
    /// Every change up to here is in Kafka (see the module docs for inside a group).
    pub position: Position,
    /// The last acknowledged change per partition.
    pub partitions: HashMap<TopicPartition, Position>,
    /// The group `position` lies inside, when its commit record is not acknowledged yet.
    pub open: Option<OpenGroup>,
}

impl Acked {
    /// The end of the last group acknowledged whole, commit record included: the changelog
    /// is pruned up to here and the table checksums are stored as of here.
    pub fn prune_point(&self) -> Position {
        match &self.open {
            Some(g) => Position(g.first.0 - 1).min(self.position),
            None => self.position,
        }
    }
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
    /// The group `from` lies inside: its rest is sent as the same group.
    pub open: Option<OpenGroup>,
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
    /// Chain tails of the records sent since the last chunk mark or commit record.
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
    /// then the acknowledged position only moves at a chunk mark or a commit record, once
    /// everything sent before it is acknowledged. Moving it per change would let a crash
    /// between two changes of a chunk leave a tombstone unsent, and a group's end would be
    /// unknown to a restart. Inside a group it moves to the chunk's end and the group stays
    /// open (see the module docs): only the commit record closes it, so a crash between a
    /// group's last change and its commit record still sends that record on restart.
    ///
    /// Returns what capture may now record and prune when this closes a chunk or a group and
    /// a prune is due (one per [`PRUNE_EVERY`], or at once when `idle`, nothing else awaiting
    /// its report).
    pub fn delivered(&mut self, gen: u64, sent: Sent, now: Instant, idle: bool) -> Option<Acked> {
        if gen != self.gen {
            return None;
        }
        if let Some(tp) = sent.chain {
            self.group.insert(tp, sent.position);
        }
        let open = match sent.closes {
            Closes::Nothing => return None,
            Closes::Chunk(open) => Some(open),
            Closes::Group => None,
        };
        if sent.position < self.acked.position {
            // A resent duplicate of something already acknowledged: nothing new, and the
            // open group (or its absence) stays as it is.
            self.group.clear();
            return None;
        }
        self.acked.position = sent.position;
        self.acked.open = open;
        // The chunk's or group's tails go with it; max, so a partition's tail never moves
        // back.
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

    /// After a failed delivery: a new generation, what was sent after the last acknowledged
    /// chunk or group forgotten (it is sent again), and the point to resend from.
    pub fn rewind(&mut self) -> Rewind {
        self.gen += 1;
        self.group.clear();
        Rewind {
            gen: self.gen,
            from: self.acked.position,
            last_sent: self.acked.partitions.clone(),
            open: self.acked.open.clone(),
        }
    }
}
