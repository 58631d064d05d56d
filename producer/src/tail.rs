//! Tail, the stage between capture and encode: the capture thread. It owns the leader
//! connection (rusqlite is synchronous: one owner per connection, on its own thread so it
//! never blocks a runtime worker), polls `PRAGMA data_version`, and hands each new commit group
//! `(last read, head]` to the publisher in chunks, or a heartbeat when the leader is idle. A
//! group acknowledged in part (see [`crate::ack`]) is taken up after its last acknowledged
//! chunk, ending where it ended before.
//!
//! While a group is handed over, the thread reads the leader head between chunks: each head
//! it reads is a transaction boundary (a position every committed transaction ends at or
//! starts after). The next groups end at those boundaries instead of merging everything
//! committed meanwhile into one. A backlog written while nobody watched has no recorded
//! boundary: the changelog does not say where its transactions end, so it stays one group
//! (acknowledged chunk by chunk).
//!
//! Reads: the changelog (through [`Capture`]) and [`Control`] messages from the publisher and
//! the acker. Writes: [`CaptureMsg`]s to the publisher; pruning of the changelog.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use barista_schemas::Position;
use tokio::sync::mpsc;

use crate::ack::{Acked, OpenGroup};
use crate::capture::{Capture, CapturedTable, ChangeRow};
use crate::checksums::Checksums;
use crate::ops::Ops;
use barista_schemas::checksum::TableChecksum;

#[cfg(test)]
mod tests;

/// Milliseconds since the epoch on this host's clock, as `ts_ms` fields carry them (0 for a
/// clock set before 1970).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How often the leader head is read while the publisher has no room for the next chunk.
const OBSERVE_EVERY: Duration = Duration::from_millis(50);

/// What the capture thread hands to the publisher.
#[derive(Debug)]
pub(crate) enum CaptureMsg {
    /// Part of a commit group `(first ..= last)`; `done` on its last chunk.
    Chunk {
        /// The generation it was read in (see [`Control::Rewind`]).
        gen: u64,
        /// The group's first position.
        first: Position,
        /// The group's last position: the leader head when it was read.
        last: Position,
        /// The last position this chunk scanned (`last` on the group's last chunk): once its
        /// records are acknowledged, everything up to here is in Kafka.
        upto: Position,
        /// The leader clock just before the group was found.
        ts_ms: i64,
        /// The changes, in position order.
        rows: Vec<ChangeRow>,
        /// Tables dropped (or renamed away) in the whole group: (position, name), on the
        /// group's first chunk only.
        drops: Vec<(Position, String)>,
        /// The group's last chunk.
        done: bool,
        /// On the last chunk: the checksum of every table the group changed, at `last`.
        checksums: Vec<TableChecksum>,
        /// On the last chunk: the snapshots that started or ended in the group.
        snapshots: Vec<barista_schemas::TableSnapshot>,
    },
    /// Tables captured while running (their snapshot rows follow in the
    /// next group): the publisher creates their topics before it sends them.
    Tables(Vec<CapturedTable>),
    /// The leader is idle at `position`.
    Heartbeat {
        /// The generation it was read in.
        gen: u64,
        /// Everything up to here was handed over.
        position: Position,
        /// The leader clock.
        ts_ms: i64,
    },
}

/// What the publisher and the acker tell the capture thread.
#[derive(Debug)]
pub(crate) enum Control {
    /// Start again after `from`, tagging chunks with `gen`.
    Rewind {
        /// The new generation.
        gen: u64,
        /// Resend every change after this position.
        from: Position,
        /// The group `from` lies inside: the rest of it is sent as the same group.
        open: Option<OpenGroup>,
    },
    /// Everything acknowledged there is in Kafka: record it and prune the changelog.
    Prune(Acked),
}

/// Whether the thread goes on polling.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// Stop requested, or the publisher is gone.
    Stop,
    /// A rewind came while a group was handed over: the rest of it is not sent, and
    /// `next_from` is the rewind's.
    Rewound,
}

/// The capture thread's inputs; [`Tail::run`] is its body.
pub(crate) struct Tail {
    /// The leader's capture side.
    pub capture: Capture,
    /// To the publisher. Bounded: a slow publisher holds the thread back, not memory.
    pub tx: mpsc::Sender<CaptureMsg>,
    /// From the publisher (rewind) and the acker (prune).
    pub ctl: std_mpsc::Receiver<Control>,
    /// Set at shutdown, after the final prune was sent.
    pub stop: Arc<AtomicBool>,
    /// Everything up to here was handed over (or acknowledged, at start).
    pub next_from: Position,
    /// The group `next_from` lies inside, to finish before anything else (at start, or
    /// after a rewind).
    pub open: Option<OpenGroup>,
    /// Pause between polls.
    pub poll: Duration,
    /// Idle time after which a heartbeat is sent.
    pub heartbeat: Duration,
    /// Changelog rows per chunk.
    pub chunk: usize,
    /// The generation chunks are tagged with.
    pub gen: u64,
    /// Told about tables that go, and about the tables capture skips.
    pub ops: Arc<Ops>,
    /// Keep the table checksums (loaded when the thread starts, as of `next_from`).
    pub checksums: bool,
    /// The table checksums, as of the last position read.
    pub sums: Option<Checksums>,
    /// Incremental snapshots: signals, pacing (see [`crate::snapshot`]).
    pub snapshots: crate::snapshot::Driver,
    /// Transaction boundaries read between chunks and not yet pruned past: position → the
    /// leader clock just before it was read. Groups end at them.
    pub boundaries: BTreeMap<Position, i64>,
}

/// What the previous poll saw.
struct Seen {
    /// `PRAGMA data_version`: when it did not move, nobody committed.
    data_version: i64,
    /// When the last chunk or heartbeat went out.
    sent_at: Instant,
}

impl Tail {
    /// Runs the capture thread until [`Tail::stop`] is set or the publisher goes away.
    pub fn spawn(self) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
        std::thread::Builder::new()
            .name("barista-capture".into())
            .spawn(move || self.run())
            .context("spawning the capture thread")
    }

    /// The thread's body; an error stops capture (the publisher then stops too).
    pub fn run(mut self) -> anyhow::Result<()> {
        self.load_sums()?;
        let mut seen = Seen {
            data_version: i64::MIN,
            sent_at: Instant::now(),
        };
        while self.poll_once(&mut seen)? == Flow::Continue {
            std::thread::sleep(self.poll);
        }
        Ok(())
    }

    /// Loads the table checksums when asked to keep them and not loaded yet: as of the prune
    /// point, where they were stored (the acknowledged position, or the start of the group
    /// it lies inside; [`Tail::take_up`] brings them on to the acknowledged position).
    pub(crate) fn load_sums(&mut self) -> anyhow::Result<()> {
        if self.checksums && self.sums.is_none() {
            self.sums = Some(
                Checksums::load(&self.capture, self.prune_point())
                    .context("loading the table checksums")?,
            );
        }
        Ok(())
    }

    /// Where the changelog was pruned to: `next_from`, or just before the open group.
    fn prune_point(&self) -> Position {
        match &self.open {
            Some(g) => Position(g.first.0 - 1).min(self.next_from),
            None => self.next_from,
        }
    }

    /// Applies the publisher's and the acker's controls: prunes, and a rewind (the last one
    /// wins; [`Flow::Rewound`] when there was one).
    fn controls(&mut self) -> Flow {
        let mut flow = Flow::Continue;
        while let Ok(c) = self.ctl.try_recv() {
            match c {
                Control::Rewind { gen, from, open } => {
                    self.gen = gen;
                    self.next_from = from;
                    self.open = open;
                    flow = Flow::Rewound;
                    let base = self.prune_point();
                    if let Some(sums) = &mut self.sums {
                        sums.rewind(base);
                    }
                }
                Control::Prune(acked) => self.prune(&acked),
            }
        }
        flow
    }

    /// Records what Kafka acknowledged and prunes the changelog up to the prune point.
    fn prune(&mut self, acked: &Acked) {
        let sums = self
            .sums
            .as_mut()
            .map(|s| s.acknowledged(acked.prune_point()));
        let kept = self.boundaries.split_off(&acked.prune_point().next());
        self.boundaries = kept;
        match self.capture.prune(acked, sums.as_deref()) {
            Ok(n) => tracing::debug!(acked = %acked.position, pruned = n, "changelog pruned"),
            Err(e) => tracing::warn!(error = %e, "pruning the changelog failed; will retry"),
        }
    }

    /// One poll: apply controls, then hand over new commits, or a heartbeat when due.
    fn poll_once(&mut self, seen: &mut Seen) -> anyhow::Result<Flow> {
        if self.controls() == Flow::Rewound {
            seen.data_version = i64::MIN;
        }
        if self.stop.load(Ordering::SeqCst) {
            return Ok(Flow::Stop);
        }
        if let Some(open) = self.open.take() {
            match self.take_up(open)? {
                Flow::Stop => return Ok(Flow::Stop),
                Flow::Rewound => {
                    seen.data_version = i64::MIN;
                    return Ok(Flow::Continue);
                }
                Flow::Continue => {}
            }
            seen.sent_at = Instant::now();
        }
        // The leader time is taken BEFORE looking for new commits: everything
        // committed before `now` is then at or below the head read next, so
        // "(position, ts_ms)" in a commit record or heartbeat means "every
        // write committed on the leader before ts_ms is at or below position".
        // Bounded-staleness reads on followers rely on that direction.
        let now = now_ms();
        let dv = self.capture.data_version().context("polling the leader")?;
        let head = if dv != seen.data_version {
            // Another connection committed: if that was DDL made behind our back, stop
            // before reading past it (see CaptureError::Drift for how to resume).
            // Drops, then drift, then new tables, all BEFORE the head is read:
            // a drop marker or a new table's snapshot joins the group of the
            // leader transaction that dropped or created the table.
            for gone in self.capture.notice_drops()? {
                self.ops.table_gone(&gone);
            }
            self.capture.check_schema()?;
            let adopted = self.capture.adopt_new_tables()?;
            if adopted.rescanned {
                self.ops.skipped_by_capture(self.capture.skipped().clone());
            }
            if !adopted.tables.is_empty()
                && self
                    .tx
                    .blocking_send(CaptureMsg::Tables(adopted.tables))
                    .is_err()
            {
                return Ok(Flow::Stop);
            }
            self.capture.head().context("reading the leader head")?
        } else {
            self.next_from
        };
        seen.data_version = dv;
        if head > self.next_from {
            // The groups end at the boundaries read meanwhile, the last at the head.
            let ends = self.boundaries.range(self.next_from.next()..head);
            let ends: Vec<_> = ends.map(|(p, t)| (*p, *t)).chain([(head, now)]).collect();
            for (end, ts_ms) in ends {
                match self.send_group(self.next_from.next(), end, ts_ms)? {
                    Flow::Stop => return Ok(Flow::Stop),
                    Flow::Rewound => {
                        seen.data_version = i64::MIN;
                        return Ok(Flow::Continue);
                    }
                    Flow::Continue => self.next_from = end,
                }
            }
            seen.sent_at = Instant::now();
        } else if seen.sent_at.elapsed() >= self.heartbeat {
            let beat = CaptureMsg::Heartbeat {
                gen: self.gen,
                position: self.next_from,
                ts_ms: now,
            };
            if self.tx.blocking_send(beat).is_err() {
                return Ok(Flow::Stop);
            }
            seen.sent_at = Instant::now();
        }
        if self.snapshot_tick()? {
            // This connection's own commit does not move data_version: read the head.
            seen.data_version = i64::MIN;
        }
        Ok(Flow::Continue)
    }

    /// Finishes `open`, a group acknowledged up to `next_from`: the table checksums are
    /// brought from the group's start to there (from the changelog rows the prune point
    /// kept), then the rest is handed over as the same group (same first and last position,
    /// same leader time) and `next_from` moves to its end.
    fn take_up(&mut self, open: OpenGroup) -> anyhow::Result<Flow> {
        tracing::info!(first = %open.first, last = %open.last, acked = %self.next_from, "taking up the commit group after its last acknowledged chunk");
        if let Some(sums) = &mut self.sums {
            let mut at = Position(open.first.0 - 1);
            while at < self.next_from {
                let (rows, scanned) = self
                    .capture
                    .read(at, self.next_from, self.chunk)
                    .context("reading the changelog")?;
                let marks = self.capture.take_marks();
                sums.apply(&self.capture, &rows, &marks)
                    .context("keeping the table checksums")?;
                at = scanned.unwrap_or(self.next_from);
            }
        }
        let flow = self.send_group(open.first, open.last, open.ts_ms)?;
        if flow == Flow::Continue {
            self.next_from = self.next_from.max(open.last);
        }
        Ok(flow)
    }

    /// Hands over the group `(first - 1, head]` from `next_from` on (the group's start, or
    /// its last acknowledged chunk) in chunks of at most `chunk` rows; the first chunk
    /// carries the whole group's drops, the last its snapshot marks.
    fn send_group(&mut self, first: Position, head: Position, ts_ms: i64) -> anyhow::Result<Flow> {
        let mut from = self.next_from;
        let mut drops = self
            .capture
            .drops_between(Position(first.0 - 1), head)
            .context("reading the changelog")?;
        let mut snapshots =
            crate::snapshot::marks_between(self.capture.conn(), first.0 - 1, head.0)
                .context("reading the changelog")?;
        loop {
            let (rows, scanned) = self
                .capture
                .read(from, head, self.chunk)
                .context("reading the changelog")?;
            let done = scanned.is_none_or(|s| s >= head);
            from = scanned.unwrap_or(head);
            let marks = self.capture.take_marks();
            let mut checksums = Vec::new();
            if let Some(sums) = &mut self.sums {
                sums.apply(&self.capture, &rows, &marks)
                    .context("keeping the table checksums")?;
                if done {
                    checksums = sums.end_group(head);
                }
            }
            let chunk = CaptureMsg::Chunk {
                gen: self.gen,
                first,
                last: head,
                upto: from,
                ts_ms,
                rows,
                drops: std::mem::take(&mut drops),
                done,
                checksums,
                snapshots: if done {
                    std::mem::take(&mut snapshots)
                } else {
                    Vec::new()
                },
            };
            match self.hand_over(chunk, head)? {
                Flow::Continue => {}
                flow => return Ok(flow),
            }
            if done {
                let positions = head.0 - first.0 + 1;
                self.ops.metrics.group_positions.observe(positions as f64);
                if positions > self.chunk as i64 {
                    tracing::info!(%first, last = %head, positions, "large commit group handed over");
                }
                return Ok(Flow::Continue);
            }
            self.observe(head)?;
            // Prunes while a large group goes out: the leader stores its progress chunk by
            // chunk. A rewind ends the group here.
            if self.controls() == Flow::Rewound {
                return Ok(Flow::Rewound);
            }
        }
    }

    /// Hands a chunk of the group ending at `head` to the publisher. While the publisher has
    /// no room (Kafka is slower than the leader's writers), it goes on reading the leader
    /// head (every [`OBSERVE_EVERY`]) as transaction boundaries, so what commits meanwhile
    /// goes out as bounded groups, and on storing prunes. [`Flow::Rewound`] drops the chunk.
    fn hand_over(&mut self, chunk: CaptureMsg, head: Position) -> anyhow::Result<Flow> {
        let mut chunk = chunk;
        let mut observed = Instant::now();
        loop {
            match self.tx.try_send(chunk) {
                Ok(()) => return Ok(Flow::Continue),
                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(Flow::Stop),
                Err(mpsc::error::TrySendError::Full(c)) => chunk = c,
            }
            if observed.elapsed() >= OBSERVE_EVERY {
                self.observe(head)?;
                if self.controls() == Flow::Rewound {
                    return Ok(Flow::Rewound);
                }
                observed = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Between two chunks of the group ending at `head`: records the leader head, when it
    /// moved past `head` and past the last boundary read, as a transaction boundary. Not
    /// when DDL committed since the last poll: the next poll first records its drop markers
    /// and new tables' snapshots, which must join the group of the transaction that made them.
    fn observe(&mut self, head: Position) -> anyhow::Result<()> {
        let ts_ms = now_ms();
        let now = self.capture.head().context("reading the leader head")?;
        let last = self.boundaries.keys().next_back().copied().unwrap_or(head);
        if now > head.max(last) && !self.capture.ddl_unseen()? {
            tracing::debug!(boundary = %now, group_end = %head, "transaction boundary read");
            self.boundaries.insert(now, ts_ms);
        }
        Ok(())
    }
}
