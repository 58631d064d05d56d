//! The producer's configuration: parsed once from flags or `BARISTA_*`
//! environment variables into a validated [`ProducerConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use barista_schemas::contract::DEFAULT_TOPIC_PREFIX;

/// Validated producer configuration.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// The leader SQLite file.
    pub leader: PathBuf,
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Schema registry URL.
    pub registry_url: String,
    /// Topics are `<prefix>.<table>`.
    pub topic_prefix: String,
    /// Tables to capture; empty = every table with a primary key.
    pub tables: Vec<String>,
    /// Partitions for topics barista creates.
    pub partitions: i32,
    /// Replication factor for topics barista creates.
    pub replication_factor: i32,
    /// `retention.ms` of the topics barista creates (table topics and the
    /// commits topic); `None` = the broker's default (`log.retention.ms`,
    /// 7 days on Apache Kafka). A follower whose history retention deleted
    /// halts and must be re-seeded from a snapshot.
    pub retention_ms: Option<i64>,
    /// `source.db` in events.
    pub db_name: String,
    /// How often to look for new commits.
    pub poll_interval: Duration,
    /// Heartbeat interval when the leader is idle.
    pub heartbeat_interval: Duration,
    /// Extra librdkafka properties.
    pub kafka_options: Vec<(String, String)>,
    /// Re-create triggers of tables whose columns changed behind our back.
    pub repair_triggers: bool,
    /// Changelog rows read per chunk.
    pub chunk_size: usize,
    /// Incremental snapshots: rows per chunk, and how far ahead of Kafka they may run.
    pub snapshot: crate::snapshot::Pacing,
    /// Create the leader file when it does not exist. Off: a missing leader is an error
    /// (a mistyped path must not start capture on a new, empty database).
    pub create_leader: bool,
    /// Where to serve `/metrics`, `/status` and `/ready`; `None` = no HTTP (or a listener
    /// the caller bound, see [`crate::run_on`]).
    pub http_listen: Option<SocketAddr>,
    /// `/ready` fails when changes wait and nothing was acknowledged for longer than this.
    pub ready_grace: Duration,
    /// How often the backlog (changelog rows beyond the acknowledged position) is measured.
    pub backlog_interval: Duration,
    /// Keep a checksum per captured table, carry it in commit records and store it with the
    /// acknowledged position (see [`crate::checksums`]). Off only to measure its cost.
    pub checksums: bool,
    /// Turn the follower replica at `leader` into the leader of the next epoch before
    /// publishing (`--promote`, see [`crate::promote`]).
    pub promote: bool,
    /// Publish everything committed, wait until Kafka acknowledged it, then stop (`--drain`).
    pub drain: bool,
}

impl ProducerConfig {
    /// A configuration with local defaults for `leader`.
    pub fn new(leader: impl Into<PathBuf>, brokers: &str, registry_url: &str) -> Self {
        let leader = leader.into();
        ProducerConfig {
            db_name: leader
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("leader")
                .to_owned(),
            leader,
            brokers: brokers.to_owned(),
            registry_url: registry_url.to_owned(),
            topic_prefix: DEFAULT_TOPIC_PREFIX.to_owned(),
            tables: Vec::new(),
            partitions: 3,
            replication_factor: 1,
            retention_ms: None,
            poll_interval: Duration::from_millis(1),
            heartbeat_interval: Duration::from_millis(1000),
            kafka_options: Vec::new(),
            repair_triggers: false,
            chunk_size: 5000,
            snapshot: crate::snapshot::Pacing::default(),
            create_leader: false,
            http_listen: None,
            ready_grace: Duration::from_secs(30),
            backlog_interval: Duration::from_secs(1),
            checksums: true,
            promote: false,
            drain: false,
        }
    }

    /// Why the producer must not start on `leader`: it does not exist and creating it was not
    /// asked for (a mistyped path would otherwise start capture on a new, empty database).
    pub fn missing_leader(&self) -> Option<String> {
        (!self.create_leader && !self.leader.exists()).then(|| {
            format!(
                "no such file: {} (the leader database must exist; to start capture on a new, \
                 empty one, pass --create or set BARISTA_CREATE_LEADER=true)",
                self.leader.display()
            )
        })
    }
}
