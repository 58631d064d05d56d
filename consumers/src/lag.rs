//! Lag, in three units, and the follower's status: offsets behind the high
//! watermark (per partition), positions behind the leader, and seconds behind
//! the leader on the leader's own clock. Shared by the follower loop (writer)
//! and the HTTP endpoints (readers).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use barista_reads::{leader_now_ms, LeaderClock};
use barista_schemas::Position;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
    /// Seconds behind the leader (leader clock).
    pub seconds_lag: Gauge<f64, AtomicU64>,
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
    /// Changes of large commit groups written into an open replica
    /// transaction before their group was complete (memory stays bounded).
    pub streamed: Counter,
}

impl Metrics {
    /// Registers every metric under `barista_follower_*`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("barista_follower");
        let m = Metrics {
            offset_lag: Family::default(),
            position_lag: Gauge::default(),
            seconds_lag: Gauge::default(),
            applied_position: Gauge::default(),
            leader_position: Gauge::default(),
            changes_applied: Counter::default(),
            duplicates: Counter::default(),
            dead_letters: Counter::default(),
            batches: Counter::default(),
            streamed: Counter::default(),
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
        registry.register(
            "seconds_lag",
            "Seconds behind the leader, on the leader's clock",
            m.seconds_lag.clone(),
        );
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
            "streamed_changes",
            "Changes of large commit groups written ahead of the group's commit",
            m.streamed.clone(),
        );
        Metrics { registry, ..m }
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
    /// Seconds behind the leader on the leader's clock; 0 when caught up.
    pub seconds_lag: f64,
    /// Sum of per-partition offset lag.
    pub offset_lag: i64,
    /// Per "topic/partition".
    pub partitions: BTreeMap<String, PartitionStatus>,
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
}

/// Seconds behind, on the leader's clock ([`leader_now_ms`]): how long ago the
/// leader was where the replica is. Zero when the replica holds everything the
/// leader is known to have and the producer was heard from (a commit record
/// or a heartbeat) within `grace`: heartbeats keep an idle follower at zero.
/// A follower that has heard nothing for longer cannot vouch for being
/// current, so its lag then counts the silence too (a stopped producer or a
/// broker that stopped delivering shows up here, not only in positions).
/// Before anything was heard there is nothing to measure against: zero.
pub fn seconds_behind(
    applied: Position,
    applied_ts_ms: i64,
    leader: Position,
    clock: Option<LeaderClock>,
    grace: std::time::Duration,
) -> f64 {
    let Some(c) = clock else {
        return 0.0;
    };
    if applied >= leader && c.received.elapsed() <= grace {
        return 0.0;
    }
    ((leader_now_ms(Some(c)) - applied_ts_ms).max(0)) as f64 / 1000.0
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
            0.0
        );
        // Behind: how long ago the leader was where the replica is.
        let behind = seconds_behind(P(4), now - 3_000, P(5), Some(heard), grace);
        assert!((3.0..3.5).contains(&behind), "{behind}");
        // Nothing heard at all: nothing to measure against.
        assert_eq!(seconds_behind(P(0), 0, P(0), None, grace), 0.0);
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
        let silent = seconds_behind(P(5), now - 2_000, P(5), Some(heard), grace);
        assert!((2.0..2.5).contains(&silent), "{silent}");
    }
}
