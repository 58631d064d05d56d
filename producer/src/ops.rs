//! Ops, beside the pipeline: what the producer tells operators. Every stage reports into one
//! shared [`Ops`] (positions, acknowledgements, errors, which tables are captured or skipped
//! and why); a sampler measures the backlog on the leader (see [`backlog`]); [`http`] serves
//! it as `/metrics` (Prometheus), `/status` (JSON) and `/ready`.
//!
//! Reads: reports from the stages, the backlog samples. Writes: nothing outside itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use barista_runtime::{lock, Poisoned};
use serde::Serialize;

use crate::config::ProducerConfig;
use crate::tail::now_ms;

pub mod backlog;
pub mod http;
mod snapshot;
mod metrics;
#[cfg(test)]
mod tests;

pub use metrics::Metrics;

/// What the details lock guards, for the poisoned-lock error.
const DETAILS: &str = "producer status";

/// A captured table as `/status` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TableStatus {
    /// The leader table.
    pub table: String,
    /// Its topic.
    pub topic: String,
    /// The topic's partitions, as the broker last reported them.
    pub partitions: i32,
}

/// A table that is not captured, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SkippedTable {
    /// The leader table.
    pub table: String,
    /// Why it is not captured: `no primary key`, `not in --tables`, a topic-name clash…
    pub reason: String,
}

/// The last error of a kind, and when it happened.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorNote {
    /// Milliseconds since the epoch.
    pub at_ms: i64,
    /// What went wrong.
    pub error: String,
}

/// Whether the producer is doing its job, as `/ready` answers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Readiness {
    /// `/ready` answers 200 when true, 503 otherwise.
    pub ready: bool,
    /// Why, in words.
    pub reason: String,
}

/// The readiness decision. Changes waiting (`backlog_rows > 0`) are a failure only when the
/// producer has made no progress on them for longer than `grace`: the oldest of them has
/// waited that long AND Kafka acknowledged nothing in that time. Acknowledgements still coming
/// mean it is catching up (after an outage, a large snapshot), not stuck. An empty backlog is
/// ready, tables or not: nothing to publish is not a failure.
pub fn readiness(
    backlog_rows: i64,
    oldest_unacked: Duration,
    since_last_ack: Option<Duration>,
    grace: Duration,
) -> Readiness {
    if backlog_rows <= 0 {
        return Readiness {
            ready: true,
            reason: "every captured change is acknowledged by Kafka".into(),
        };
    }
    // No acknowledgement since start counts as "as long as the oldest change has waited".
    let stalled = since_last_ack.map_or(oldest_unacked, |a| a.min(oldest_unacked));
    if stalled <= grace {
        return Readiness {
            ready: true,
            reason: format!("publishing: {backlog_rows} changelog rows not acknowledged yet"),
        };
    }
    Readiness {
        ready: false,
        reason: format!(
            "{backlog_rows} changelog rows wait for Kafka and nothing was acknowledged for {:.1}s \
             (grace {:.1}s): Kafka or the schema registry is unreachable or refusing",
            stalled.as_secs_f64(),
            grace.as_secs_f64()
        ),
    }
}

/// What the producer is doing, as `/status` `state` names it. Pure.
pub fn state(readiness: &Readiness, started: bool, tables_captured: usize) -> &'static str {
    if !readiness.ready {
        "publishing_blocked"
    } else if !started {
        "starting"
    } else if tables_captured == 0 {
        "waiting_for_tables"
    } else {
        "capturing"
    }
}

/// The producer's status, as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// `starting`, `waiting_for_tables`, `capturing` or `publishing_blocked` (see [`state`]).
    pub state: &'static str,
    /// The leader file.
    pub leader: String,
    /// `source.db` in events.
    pub db_name: String,
    /// The last position handed to Kafka (its commit group's commit record sent).
    pub published_position: i64,
    /// Every change up to here is acknowledged by Kafka.
    pub acked_position: i64,
    /// The leader's epoch (0 until the first takeover; see README "Taking over").
    pub epoch: i64,
    /// The newest position in the leader's changelog.
    pub leader_position: i64,
    /// Changelog rows beyond the acknowledged position.
    pub backlog_rows: i64,
    /// Their approximate size in bytes.
    pub backlog_bytes: i64,
    /// How long the oldest of them has waited (0 when none), to within the sampling interval.
    pub oldest_unacked_seconds: f64,
    /// When Kafka last acknowledged a commit group, milliseconds since the epoch.
    pub last_ack_at_ms: Option<i64>,
    /// Seconds since then.
    pub seconds_since_last_ack: Option<f64>,
    /// Times the producer re-sent from the oldest unacknowledged position after a failure.
    pub resends: u64,
    /// Kafka errors: failed deliveries, topic creation or metadata failures, client errors.
    pub broker_errors: u64,
    /// Schema registry requests that failed.
    pub registry_errors: u64,
    /// The last Kafka error.
    pub last_broker_error: Option<ErrorNote>,
    /// The last schema registry error.
    pub last_registry_error: Option<ErrorNote>,
    /// Captured tables and their topics.
    pub tables: Vec<TableStatus>,
    /// Tables that are not captured, with the reason.
    pub skipped: Vec<SkippedTable>,
    /// Table snapshots in progress: rows copied so far, of about `total`.
    pub snapshots: Vec<crate::snapshot::Progress>,
    /// `/ready`'s answer.
    pub readiness: Readiness,
}

/// What the stages report that is not a number.
#[derive(Debug, Default)]
struct Details {
    /// Published tables by name.
    tables: BTreeMap<String, TableStatus>,
    /// Not captured, as capture decided: name → reason.
    skipped_by_capture: BTreeMap<String, String>,
    /// Captured but not published (topic-name clash): name → reason.
    skipped_by_topic: BTreeMap<String, String>,
    last_broker_error: Option<ErrorNote>,
    last_registry_error: Option<ErrorNote>,
}

/// The producer's shared operational state: written by the stages, read by the endpoints.
pub struct Ops {
    /// Prometheus metrics; the numbers in [`Status`] are read from them.
    pub metrics: Metrics,
    leader: PathBuf,
    db_name: String,
    ready_grace: Duration,
    /// Milliseconds since the epoch of the last acknowledgement; 0 = none yet.
    last_ack_ms: AtomicI64,
    /// Capture installed and the topics exist.
    started: AtomicBool,
    details: Mutex<Details>,
    /// Incremental snapshots in progress, and their metrics.
    pub snapshots: crate::snapshot::Board,
    /// Held while `/snapshot` serves a copy of the leader: one at a time.
    snapshot_busy: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Ops {
    /// Empty state for the producer configured by `config`.
    pub fn new(config: &ProducerConfig) -> Ops {
        let mut metrics = Metrics::new();
        let snapshots = crate::snapshot::Board::default();
        snapshots.register(&mut metrics.registry);
        Ops {
            metrics,
            snapshots,
            leader: config.leader.clone(),
            db_name: config.db_name.clone(),
            ready_grace: config.ready_grace,
            last_ack_ms: AtomicI64::new(0),
            started: AtomicBool::new(false),
            details: Mutex::new(Details::default()),
            snapshot_busy: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// Capture is installed and the topics exist: publishing can start.
    pub(crate) fn started(&self) {
        self.started.store(true, Ordering::Relaxed);
    }

    /// Kafka acknowledged every change up to `position`.
    pub(crate) fn acked(&self, position: i64) {
        self.metrics.acked_position.set(position);
        self.last_ack_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// A Kafka error (counted, and kept as the last one).
    pub(crate) fn broker_error(&self, error: impl Into<String>) {
        self.metrics.broker_errors.inc();
        let note = Some(ErrorNote {
            at_ms: now_ms(),
            error: error.into(),
        });
        // A poisoned lock loses only this note; the count above is kept.
        if let Ok(mut d) = lock(&self.details, DETAILS) {
            d.last_broker_error = note;
        }
    }

    /// A schema registry error (counted, and kept as the last one).
    pub(crate) fn registry_error(&self, error: impl Into<String>) {
        self.metrics.registry_errors.inc();
        let note = Some(ErrorNote {
            at_ms: now_ms(),
            error: error.into(),
        });
        if let Ok(mut d) = lock(&self.details, DETAILS) {
            d.last_registry_error = note;
        }
    }

    /// `table` is published on `topic` with `partitions` partitions (again, after a topic grew).
    pub(crate) fn table_published(&self, table: &str, topic: &str, partitions: i32) {
        self.edit(|d| {
            d.skipped_by_topic.remove(table);
            d.tables.insert(
                table.to_owned(),
                TableStatus {
                    table: table.to_owned(),
                    topic: topic.to_owned(),
                    partitions,
                },
            );
        });
    }

    /// `topic` has `partitions` partitions now.
    pub(crate) fn topic_grew(&self, topic: &str, partitions: i32) {
        self.edit(|d| {
            for t in d.tables.values_mut().filter(|t| t.topic == topic) {
                t.partitions = partitions;
            }
        });
    }

    /// `table` is captured but not published, because of `reason` (a topic-name clash).
    pub(crate) fn table_refused(&self, table: &str, reason: String) {
        self.edit(|d| {
            d.skipped_by_topic.insert(table.to_owned(), reason);
        });
    }

    /// `table` was dropped or renamed away on the leader.
    pub(crate) fn table_gone(&self, table: &str) {
        self.edit(|d| {
            d.tables.remove(table);
            d.skipped_by_topic.remove(table);
        });
    }

    /// The tables capture leaves alone, with the reason: the whole current list.
    pub(crate) fn skipped_by_capture(&self, skipped: BTreeMap<String, String>) {
        self.edit(|d| d.skipped_by_capture = skipped);
    }

    fn edit(&self, f: impl FnOnce(&mut Details)) {
        // A poisoned lock: a panic elsewhere while editing the status. The status is not
        // worth stopping the producer for; the next read reports the poisoning.
        if let Ok(mut d) = lock(&self.details, DETAILS) {
            f(&mut d);
            self.metrics.tables_captured.set(d.tables.len() as i64);
            let skipped = d
                .skipped_by_capture
                .keys()
                .chain(d.skipped_by_topic.keys())
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            self.metrics.tables_skipped.set(skipped as i64);
        }
    }

    /// How long since the last acknowledgement, if there was one.
    fn since_last_ack(&self) -> Option<Duration> {
        let at = self.last_ack_ms.load(Ordering::Relaxed);
        (at > 0).then(|| Duration::from_millis((now_ms() - at).max(0) as u64))
    }

    /// `/ready`'s answer now.
    pub fn readiness(&self) -> Readiness {
        let m = &self.metrics;
        readiness(
            m.backlog_rows.get(),
            Duration::from_secs_f64(m.oldest_unacked_seconds.get().max(0.0)),
            self.since_last_ack(),
            self.ready_grace,
        )
    }

    /// `/status` now.
    pub fn status(&self) -> Result<Status, Poisoned> {
        let m = &self.metrics;
        let readiness = self.readiness();
        let d = lock(&self.details, DETAILS)?;
        let mut skipped: BTreeMap<&String, &String> = d.skipped_by_capture.iter().collect();
        skipped.extend(d.skipped_by_topic.iter());
        let last_ack = self.last_ack_ms.load(Ordering::Relaxed);
        Ok(Status {
            state: state(
                &readiness,
                self.started.load(Ordering::Relaxed),
                d.tables.len(),
            ),
            leader: self.leader.display().to_string(),
            db_name: self.db_name.clone(),
            published_position: m.published_position.get(),
            acked_position: m.acked_position.get(),
            epoch: m.epoch.get(),
            leader_position: m.leader_position.get(),
            backlog_rows: m.backlog_rows.get(),
            backlog_bytes: m.backlog_bytes.get(),
            oldest_unacked_seconds: m.oldest_unacked_seconds.get(),
            last_ack_at_ms: (last_ack > 0).then_some(last_ack),
            seconds_since_last_ack: self.since_last_ack().map(|d| d.as_secs_f64()),
            resends: m.resends.get(),
            broker_errors: m.broker_errors.get(),
            registry_errors: m.registry_errors.get(),
            last_broker_error: d.last_broker_error.clone(),
            last_registry_error: d.last_registry_error.clone(),
            tables: d.tables.values().cloned().collect(),
            skipped: skipped
                .into_iter()
                .map(|(t, r)| SkippedTable {
                    table: t.clone(),
                    reason: r.clone(),
                })
                .collect(),
            snapshots: self.snapshots.running(),
            readiness,
        })
    }
}
