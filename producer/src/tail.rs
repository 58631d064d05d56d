//! Tail, the stage between capture and encode: the capture thread. It owns the leader
//! connection (rusqlite is synchronous: one owner per connection, on its own thread so it
//! never blocks a runtime worker), polls `PRAGMA data_version`, and hands each new commit group
//! `(last read, head]` to the publisher in chunks, or a heartbeat when the leader is idle.
//!
//! Reads: the changelog (through [`Capture`]) and [`Control`] messages from the publisher and
//! the acker. Writes: [`CaptureMsg`]s to the publisher; pruning of the changelog.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use barista_schemas::Position;
use tokio::sync::mpsc;

use crate::ack::Acked;
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

    /// Loads the table checksums as of `next_from` (the acknowledged position) when asked to
    /// keep them and not loaded yet.
    pub(crate) fn load_sums(&mut self) -> anyhow::Result<()> {
        if self.checksums && self.sums.is_none() {
            self.sums = Some(
                Checksums::load(&self.capture, self.next_from)
                    .context("loading the table checksums")?,
            );
        }
        Ok(())
    }

    /// One poll: apply controls, then hand over new commits, or a heartbeat when due.
    fn poll_once(&mut self, seen: &mut Seen) -> anyhow::Result<Flow> {
        while let Ok(c) = self.ctl.try_recv() {
            match c {
                Control::Rewind { gen, from } => {
                    self.gen = gen;
                    self.next_from = from;
                    seen.data_version = i64::MIN;
                    if let Some(sums) = &mut self.sums {
                        sums.rewind(from);
                    }
                }
                Control::Prune(acked) => {
                    let sums = self.sums.as_mut().map(|s| s.acknowledged(acked.position));
                    match self
                        .capture
                        .prune(acked.position, &acked.partitions, sums.as_deref())
                    {
                        Ok(n) => {
                            tracing::debug!(acked = %acked.position, pruned = n, "changelog pruned")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "pruning the changelog failed; will retry")
                        }
                    }
                }
            }
        }
        if self.stop.load(Ordering::SeqCst) {
            return Ok(Flow::Stop);
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
            if self.send_group(head, now)? == Flow::Stop {
                return Ok(Flow::Stop);
            }
            self.next_from = head;
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
        Ok(Flow::Continue)
    }

    /// Hands over the group `(next_from, head]` in chunks of at most `chunk` rows.
    fn send_group(&mut self, head: Position, ts_ms: i64) -> anyhow::Result<Flow> {
        let first = Position(self.next_from.0 + 1);
        let mut from = self.next_from;
        let mut drops = self
            .capture
            .drops_between(self.next_from, head)
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
                ts_ms,
                rows,
                drops: std::mem::take(&mut drops),
                done,
                checksums,
            };
            if self.tx.blocking_send(chunk).is_err() {
                return Ok(Flow::Stop);
            }
            if done {
                return Ok(Flow::Continue);
            }
        }
    }
}
