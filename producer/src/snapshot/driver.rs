//! The capture thread's side of incremental snapshots: between two polls, act on signals and
//! read the next chunk, paced so the leader's writers and the publisher keep up; and the
//! per-table progress `/status` and `/metrics` show.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Progress, DEFAULT_CHUNK_ROWS};
use crate::tail::Tail;

/// How fast snapshots go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Rows per chunk (read in one read transaction; one tiny watermark write each).
    pub chunk_rows: usize,
    /// No chunk while more than this many changelog positions wait for Kafka: a snapshot
    /// never fills the changelog faster than the broker takes it.
    pub max_unacked: i64,
    /// After each chunk, pause this many times as long as the chunk took (its read and its
    /// watermark; at least 1 ms): the snapshot has at most 1/(1+factor) of the time.
    pub pause_factor: u32,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            chunk_rows: DEFAULT_CHUNK_ROWS,
            max_unacked: 20 * DEFAULT_CHUNK_ROWS as i64,
            pause_factor: DEFAULT_PAUSE_FACTOR,
        }
    }
}

/// The capture thread's snapshot state.
#[derive(Debug, Default)]
pub struct Driver {
    /// How fast.
    pub pacing: Pacing,
    /// No chunk before this instant.
    resume_at: Option<Instant>,
}

/// See [`Pacing::pause_factor`]: measured with `snapshot-bench` (README, Snapshots).
pub const DEFAULT_PAUSE_FACTOR: u32 = 4;

/// With no snapshot to run: how often to look for a signal or a new one.
const IDLE_LOOK: Duration = Duration::from_millis(20);
/// With the changelog full: how long before looking again.
const FULL_LOOK: Duration = Duration::from_millis(5);

impl Driver {
    /// A driver with these settings.
    pub fn new(pacing: Pacing) -> Self {
        Driver {
            pacing,
            resume_at: None,
        }
    }
}

impl Tail {
    /// Acts on snapshot signals, then copies one chunk of the oldest snapshot in progress
    /// when it is time. True when a chunk was committed: the head moved on this connection,
    /// which `PRAGMA data_version` does not show.
    pub(crate) fn snapshot_tick(&mut self) -> anyhow::Result<bool> {
        let now = Instant::now();
        if self.snapshots.resume_at.is_some_and(|t| now < t) {
            return Ok(false);
        }
        let started = crate::snapshot::take_signals(self.capture.conn_mut())
            .context("reading _barista_signals")?;
        for table in started {
            self.ops.snapshots.started(&table);
        }
        let pacing = self.snapshots.pacing;
        let unacked = self.capture.head()?.0 - self.capture.acked()?.0;
        if unacked > pacing.max_unacked {
            self.snapshots.resume_at = Some(now + FULL_LOOK);
            return Ok(false);
        }
        let step = crate::snapshot::step(&mut self.capture, pacing.chunk_rows)
            .context("reading a snapshot chunk")?;
        let Some(step) = step else {
            self.snapshots.resume_at = Some(now + IDLE_LOOK);
            return Ok(false);
        };
        if step.waiting {
            // The end marker waits for Kafka to take the last chunks.
            self.snapshots.resume_at = Some(now + FULL_LOOK);
            return Ok(false);
        }
        // The snapshot's share of the leader's time (CPU, I/O, the WAL its reads pin) is at
        // most 1/(1+factor).
        let pause = (step.took * pacing.pause_factor).max(Duration::from_millis(1));
        self.snapshots.resume_at = Some(Instant::now() + pause);
        self.ops.snapshots.progress(&step.progress);
        Ok(true)
    }
}

/// Snapshot progress for `/status` and `/metrics`.
#[derive(Debug, Default)]
pub struct Board {
    running: Mutex<BTreeMap<String, Progress>>,
    rows: Family<Vec<(String, String)>, Gauge>,
    total: Family<Vec<(String, String)>, Gauge>,
    chunks: Counter,
    done: Counter,
    active: Gauge,
}

impl Board {
    /// Registers `snapshot_rows{table}`, `snapshot_total_rows{table}`, `snapshot_chunks`,
    /// `snapshots_done` and `snapshots_running` in the producer's registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "snapshot_rows",
            "Rows copied so far by the table's snapshot in progress (its last value stays after it ends)",
            self.rows.clone(),
        );
        registry.register(
            "snapshot_total_rows",
            "Rows the table had when its snapshot counted them (an estimate)",
            self.total.clone(),
        );
        registry.register(
            "snapshot_chunks",
            "Snapshot chunks copied into the changelog",
            self.chunks.clone(),
        );
        registry.register(
            "snapshots_done",
            "Table snapshots that reached their end",
            self.done.clone(),
        );
        registry.register(
            "snapshots_running",
            "Table snapshots in progress",
            self.active.clone(),
        );
    }

    /// A snapshot of `table` was requested (a signal): it shows before its first chunk.
    pub(crate) fn started(&self, table: &str) {
        self.progress(&Progress {
            table: table.to_owned(),
            id: 0,
            rows: 0,
            total: None,
            chunks: 0,
            done: false,
        });
    }

    /// The progress after a chunk.
    pub(crate) fn progress(&self, p: &Progress) {
        let labels = vec![("table".to_owned(), p.table.clone())];
        self.rows.get_or_create(&labels).set(p.rows);
        if let Some(total) = p.total {
            self.total.get_or_create(&labels).set(total);
        }
        if p.chunks > 0 {
            self.chunks.inc();
        }
        if let Ok(mut running) = self.running.lock() {
            if p.done {
                running.remove(&p.table);
                self.done.inc();
            } else {
                running.insert(p.table.clone(), p.clone());
            }
            self.active.set(running.len() as i64);
        }
    }

    /// The snapshots in progress, by table.
    pub fn running(&self) -> Vec<Progress> {
        self.running
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default()
    }
}
