//! The producer's Prometheus metrics, all under `barista_producer_*`. The names are a
//! contract with dashboards: change them only together.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The producer's Prometheus metrics.
pub struct Metrics {
    /// Registry to encode from.
    pub registry: Registry,
    /// Changelog rows not yet acknowledged by Kafka.
    pub backlog_rows: Gauge,
    /// Approximate bytes of those rows.
    pub backlog_bytes: Gauge,
    /// Age of the oldest unacknowledged change; 0 when none.
    pub oldest_unacked_seconds: Gauge<f64, AtomicU64>,
    /// The last position handed to Kafka.
    pub published_position: Gauge,
    /// Every change up to here is acknowledged by Kafka.
    pub acked_position: Gauge,
    /// The leader's epoch (0 until the first takeover).
    pub epoch: Gauge,
    /// The newest position in the leader's changelog.
    pub leader_position: Gauge,
    /// Positions per commit group handed to Kafka (last - first + 1).
    pub group_positions: Histogram,
    /// Re-sends from the oldest unacknowledged position after a failed delivery.
    pub resends: Counter,
    /// Kafka errors.
    pub broker_errors: Counter,
    /// Schema registry errors.
    pub registry_errors: Counter,
    /// Tables captured and published.
    pub tables_captured: Gauge,
    /// Tables left alone (no primary key, not in --tables, topic-name clash…).
    pub tables_skipped: Gauge,
}

impl Metrics {
    /// Registers every metric under `barista_producer_*` (counters get `_total` from the
    /// OpenMetrics encoder).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("barista_producer");
        let m = Metrics {
            registry: Registry::default(),
            backlog_rows: Gauge::default(),
            backlog_bytes: Gauge::default(),
            oldest_unacked_seconds: Gauge::default(),
            published_position: Gauge::default(),
            acked_position: Gauge::default(),
            epoch: Gauge::default(),
            leader_position: Gauge::default(),
            group_positions: Histogram::new(exponential_buckets(1.0, 4.0, 12)),
            resends: Counter::default(),
            broker_errors: Counter::default(),
            registry_errors: Counter::default(),
            tables_captured: Gauge::default(),
            tables_skipped: Gauge::default(),
        };
        registry.register(
            "backlog_rows",
            "Changelog rows not yet acknowledged by Kafka",
            m.backlog_rows.clone(),
        );
        registry.register(
            "backlog_bytes",
            "Approximate bytes of the changelog rows not yet acknowledged by Kafka",
            m.backlog_bytes.clone(),
        );
        registry.register(
            "oldest_unacked_seconds",
            "Age of the oldest change not yet acknowledged by Kafka (0 when none)",
            m.oldest_unacked_seconds.clone(),
        );
        registry.register(
            "published_position",
            "Last leader position handed to Kafka",
            m.published_position.clone(),
        );
        registry.register(
            "acked_position",
            "Every leader change up to this position is acknowledged by Kafka",
            m.acked_position.clone(),
        );
        registry.register(
            "epoch",
            "The leader's epoch: 0 until the first takeover, one more at each producer --promote",
            m.epoch.clone(),
        );
        registry.register(
            "leader_position",
            "Newest position in the leader's changelog",
            m.leader_position.clone(),
        );
        registry.register(
            "group_positions",
            "Positions per commit group handed to Kafka (how large leader transactions, or what merged between two polls, get)",
            m.group_positions.clone(),
        );
        registry.register(
            "resends",
            "Re-sends from the oldest unacknowledged position after a failed delivery",
            m.resends.clone(),
        );
        registry.register(
            "broker_errors",
            "Kafka errors: failed deliveries, topic or metadata failures, client errors",
            m.broker_errors.clone(),
        );
        registry.register(
            "registry_errors",
            "Schema registry requests that failed",
            m.registry_errors.clone(),
        );
        registry.register(
            "tables_captured",
            "Leader tables captured and published",
            m.tables_captured.clone(),
        );
        registry.register(
            "tables_skipped",
            "Leader tables not captured (no primary key, not in --tables, topic-name clash)",
            m.tables_skipped.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
