//! Lag, in three units, and the follower's status: offsets behind the high
//! watermark (per partition), positions behind the leader, and seconds behind
//! the leader on the leader's own clock. Shared by the follower loop (writer)
//! and the HTTP endpoints (readers).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use barista_reads::{leader_now_ms, LeaderClock};
use barista_schemas::Position;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// Labels of a per-partition metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: String,
}

/// The follower's Prometheus metrics.
pub struct Metrics {
    /// Registry to encode from.
    pub registry: Registry,
    /// Offsets behind the high watermark, per partition.
    pub offset_lag: Family<PartitionLabels, Gauge>,
    /// Positions behind the leader.
    pub position_lag: Gauge,
    /// Seconds behind the leader (leader clock); no sample while unknown.
    pub seconds_lag: OptionalGauge,
    /// The replica's position.
    pub applied_position: Gauge,
    /// The leader's newest known position.
    pub leader_position: Gauge,
    /// Changes applied.
    pub changes_applied: Counter,
    /// Duplicates skipped (same position seen again).
    pub duplicates: Counter,
    /// Messages sent to the dead-letter topic.
    pub dead_letters: Counter,
    /// Replica transactions committed.
    pub batches: Counter,
    /// Dead-lettered messages holding a partition's chain (and so every
    /// later commit group) back.
    pub held_messages: Gauge,
    /// Changes of large commit groups written into an open replica
    /// transaction before their group was complete (memory stays bounded).
    pub streamed: Counter,
    /// 1 when a table's checksum differed from the leader's (applying stopped).
    pub diverged: Gauge,
    /// Changes and commit records of a replaced leader (an older epoch) at or past the
    /// takeover position: ignored, never applied.
    pub fenced: Counter,
}

impl Metrics {
    /// Registers every metric under `barista_follower_*`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("barista_follower");
        let m = Metrics {
            offset_lag: Family::default(),
            position_lag: Gauge::default(),
            seconds_lag: OptionalGauge::default(),
            applied_position: Gauge::default(),
            leader_position: Gauge::default(),
            changes_applied: Counter::default(),
            duplicates: Counter::default(),
            dead_letters: Counter::default(),
            batches: Counter::default(),
            held_messages: Gauge::default(),
            streamed: Counter::default(),
            diverged: Gauge::default(),
            fenced: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "offset_lag",
            "Offsets behind the partition's high watermark",
            m.offset_lag.clone(),
        );
        registry.register(
            "position_lag",
            "Leader positions not yet applied",
            m.position_lag.clone(),
        );
        registry.register_collector(Box::new(m.seconds_lag.clone()));
        registry.register(
            "applied_position",
            "Leader position the replica is at",
            m.applied_position.clone(),
        );
        registry.register(
            "leader_position",
            "Newest leader position known",
            m.leader_position.clone(),
        );
        registry.register(
            "changes_applied",
            "Changes applied to the replica",
            m.changes_applied.clone(),
        );
        registry.register(
            "fenced",
            "Changes and commit records of a replaced leader (older epoch) past the takeover position, ignored",
            m.fenced.clone(),
        );
        registry.register(
            "duplicates",
            "Duplicate changes skipped by position",
            m.duplicates.clone(),
        );
        registry.register(
            "dead_letters",
            "Messages sent to the dead-letter topic",
            m.dead_letters.clone(),
        );
        registry.register(
            "batches",
            "Replica transactions committed",
            m.batches.clone(),
        );
        registry.register(
            "held_messages",
            "Dead-lettered messages holding later commit groups back (see /dead-letters)",
            m.held_messages.clone(),
        );
        registry.register(
            "streamed_changes",
            "Changes of large commit groups written ahead of the group's commit",
            m.streamed.clone(),
        );
        registry.register(
            "diverged",
            "1 when a table's checksum differed from the leader's: applying stopped (see /status)",
            m.diverged.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Sets the seconds lag, or removes its sample while it is unknown.
    pub fn set_seconds_lag(&self, seconds: Option<f64>) {
        // f64 bits in an atomic; NaN stands for unknown.
        let bits = seconds.unwrap_or(f64::NAN).to_bits();
        self.seconds_lag.0.store(bits, Ordering::Relaxed);
    }
}

/// `barista_follower_seconds_lag`: a gauge that has no sample at all while
/// the lag is unknown, rather than a made-up 0 (a dashboard then shows a
/// gap, and an alert on `> N` does not fire on a value nobody measured).
#[derive(Debug, Clone)]
pub struct OptionalGauge(Arc<AtomicU64>);

impl Default for OptionalGauge {
    fn default() -> Self {
        OptionalGauge(Arc::new(AtomicU64::new(f64::NAN.to_bits())))
    }
}

impl Collector for OptionalGauge {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let v = f64::from_bits(self.0.load(Ordering::Relaxed));
        if v.is_nan() {
            return Ok(());
        }
        let g = ConstGauge::new(v);
        let metric = encoder.encode_descriptor(
            "seconds_lag",
            "Seconds behind the leader, on the leader's clock (no sample while unknown)",
            None,
            g.metric_type(),
        )?;
        g.encode(metric)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Per-partition status.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PartitionStatus {
    /// Next offset the replica will read.
    pub next_offset: i64,
    /// High watermark last seen.
    pub high_watermark: i64,
    /// high_watermark - next_offset.
    pub offset_lag: i64,
    /// Last leader position applied from this partition.
    pub applied_position: Position,
    /// Why this partition is blocked, if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
}

/// The follower's status, as `/status` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// Follower id (consumer group).
    pub follower: String,
    /// The replica's position.
    pub applied_position: Position,
    /// The leader's newest known position.
    pub leader_position: Position,
    /// leader_position - applied_position.
    pub position_lag: i64,
    /// Seconds behind the leader on the leader's clock; 0 when caught up;
    /// `null` while unknown (the leader not heard yet, or the age of the
    /// replica's position not learned yet).
    pub seconds_lag: Option<f64>,
    /// Sum of per-partition offset lag.
    pub offset_lag: i64,
    /// Per "topic/partition".
    pub partitions: BTreeMap<String, PartitionStatus>,
    /// The large commit group the follower is streaming into an open
    /// replica transaction (announced by a begin record): its first and
    /// last position and how many of its changes are written; `null` when
    /// none.
    pub group: Option<crate::groups::GroupProgress>,
    /// Changes applied since start.
    pub changes_applied: u64,
    /// Duplicates skipped since start.
    pub duplicates: u64,
    /// Dead letters since start.
    pub dead_letters: u64,
    /// Applying is paused by an operator.
    pub paused: bool,
    /// The follower stopped applying: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
    /// Dead-lettered messages that hold later commit groups back, oldest
    /// first: replay or skip them (`consumer dead-letters --help`).
    pub held_by: Vec<crate::held::HeldBy>,
    /// A table whose checksum differed from the leader's at a commit
    /// record: applying stopped there; re-seed the replica.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diverged: Option<crate::checksums::Divergence>,
    /// Tables not compared with the leader's checksums because an operator
    /// skipped a change of them (`_barista_skipped`).
    pub unverified: Vec<String>,
    /// Tables whose snapshot runs: reads of them answer 503 `snapshotting` until it ends.
    pub snapshots: Vec<crate::table_snapshots::ReplicaSnapshot>,
    /// The leader epoch the follower follows (0 before any takeover).
    pub epoch: i64,
    /// Where that epoch took over (`null` before any takeover).
    pub takeover_position: Option<Position>,
    /// Changes and commit records of a replaced leader (an older epoch) at or past the
    /// takeover position, ignored since start: writes the old leader made after it lost.
    pub fenced: u64,
}

/// Seconds behind, on the leader's clock ([`leader_now_ms`]): how long ago the
/// leader was where the replica is. Zero when the replica holds everything the
/// leader is known to have and the producer was heard from (a commit record
/// or a heartbeat) within `grace`: heartbeats keep an idle follower at zero.
/// A follower that has heard nothing for longer cannot vouch for being
/// current, so its lag then counts the silence too (a stopped producer or a
/// broker that stopped delivering shows up here, not only in positions).
/// Unknown (`None`) before anything was heard, and while the replica's
/// position has no known leader time (`applied_ts_ms` 0: a new replica that
/// has not yet seen the commit record that took the leader past it): a
/// follower never claims a freshness it cannot show, and never reports the
/// leader's clock minus zero.
pub fn seconds_behind(
    applied: Position,
    applied_ts_ms: i64,
    leader: Position,
    clock: Option<LeaderClock>,
    grace: std::time::Duration,
) -> Option<f64> {
    let c = clock?;
    if applied >= leader && c.received.elapsed() <= grace {
        return Some(0.0);
    }
    if applied_ts_ms <= 0 {
        return None;
    }
    Some(((leader_now_ms(Some(c)) - applied_ts_ms).max(0)) as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const P: fn(i64) -> Position = Position;

    #[test]
    fn seconds_lag_is_zero_when_caught_up_and_grows_on_the_leader_clock() {
        let grace = std::time::Duration::from_secs(3);
        let now = leader_now_ms(None);
        let heard = LeaderClock {
            ts_ms: now,
            received: Instant::now(),
        };
        // Caught up, heard from just now: zero, however old the position's time.
        assert_eq!(
            seconds_behind(P(5), now - 1_000, P(5), Some(heard), grace),
            Some(0.0)
        );
        // Behind: how long ago the leader was where the replica is.
        let behind = seconds_behind(P(4), now - 3_000, P(5), Some(heard), grace).unwrap();
        assert!((3.0..3.5).contains(&behind), "{behind}");
        // Nothing heard at all: unknown, not zero.
        assert_eq!(seconds_behind(P(0), 0, P(0), None, grace), None);
        // Heard, behind, and the position's leader time not learned yet.
        assert_eq!(seconds_behind(P(0), 0, P(5), Some(heard), grace), None);
    }

    #[test]
    fn silence_longer_than_the_grace_counts_as_lag() {
        let grace = std::time::Duration::from_millis(50);
        let now = leader_now_ms(None);
        let heard = LeaderClock {
            ts_ms: now - 2_000,
            received: Instant::now() - std::time::Duration::from_secs(2),
        };
        // Caught up with the last heartbeat, which came 2 s ago.
        let silent = seconds_behind(P(5), now - 2_000, P(5), Some(heard), grace).unwrap();
        assert!((2.0..2.5).contains(&silent), "{silent}");
    }
}

#[cfg(test)]
mod metrics_tests {
    use super::Metrics;

    fn text(m: &Metrics) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        out
    }

    #[test]
    fn an_unknown_seconds_lag_has_no_sample() {
        let m = Metrics::new();
        assert!(!text(&m).contains("seconds_lag"), "{}", text(&m));
        m.set_seconds_lag(Some(1.5));
        assert!(
            text(&m).contains("\nbarista_follower_seconds_lag 1.5\n"),
            "{}",
            text(&m)
        );
        m.set_seconds_lag(None);
        assert!(!text(&m).contains("seconds_lag"), "{}", text(&m));
    }
}
