//! The follower's validated configuration, parsed once by the binary (or
//! built by tests and the demo) and read by every stage.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Validated follower configuration.
#[derive(Debug, Clone)]
pub struct FollowerConfig {
    /// Replica SQLite file.
    pub replica: PathBuf,
    /// Follower id: its Kafka consumer group.
    pub follower_id: String,
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Schema registry URL.
    pub registry_url: String,
    /// Topic prefix.
    pub topic_prefix: String,
    /// Tables to follow; empty = every table topic under the prefix.
    pub tables: Vec<String>,
    /// HTTP address for metrics, status, readiness and reads; None = off
    /// (or a listener the caller bound, see [`crate::run_with`]).
    pub http_listen: Option<SocketAddr>,
    /// Readiness fails above this lag (seconds, leader clock).
    pub max_lag_seconds: f64,
    /// How long a gap may wait for a resend before the follower halts.
    pub gap_timeout: Duration,
    /// Most changes per replica transaction when several commit groups are
    /// applied together; also how many changes of one large group are held
    /// in memory before they are streamed into an open replica transaction
    /// (committed, and visible, only with the rest of the group).
    pub batch_max: usize,
    /// Extra librdkafka properties.
    pub kafka_options: Vec<(String, String)>,
    /// How often to log a lag line.
    pub log_interval: Duration,
    /// How long the follower may hear nothing from the producer (commit
    /// records, heartbeats) before its seconds lag counts the silence.
    pub heartbeat_grace: Duration,
    /// Where to download a snapshot from when the replica file does not
    /// exist (or, with `reseed`, to replace it): a peer's or the producer's
    /// `/snapshot` URL.
    pub seed_from: Option<String>,
    /// Replace an existing replica with a snapshot from `seed_from`.
    pub reseed: bool,
    /// The command line the follower was started with (the binary sets it),
    /// from which the re-seed command in a halt message is made; empty =
    /// made from this configuration.
    pub command_line: Vec<String>,
    /// Keep table checksums in the replica and compare them with the
    /// leader's at every commit record (on by default; off only to measure
    /// their cost).
    pub checksums: bool,
}

impl FollowerConfig {
    /// Local defaults.
    pub fn new(
        replica: impl Into<PathBuf>,
        follower_id: &str,
        brokers: &str,
        registry_url: &str,
    ) -> Self {
        FollowerConfig {
            replica: replica.into(),
            follower_id: follower_id.to_owned(),
            brokers: brokers.to_owned(),
            registry_url: registry_url.to_owned(),
            topic_prefix: barista_schemas::contract::DEFAULT_TOPIC_PREFIX.to_owned(),
            tables: Vec::new(),
            http_listen: None,
            max_lag_seconds: 10.0,
            gap_timeout: Duration::from_secs(30),
            batch_max: 5_000,
            kafka_options: Vec::new(),
            log_interval: Duration::from_secs(10),
            heartbeat_grace: Duration::from_secs(3),
            seed_from: None,
            reseed: false,
            command_line: Vec::new(),
            checksums: true,
        }
    }
}
