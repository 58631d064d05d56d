//! barista's producer: the leader side of the pipeline.
//!
//! leader.db ─► triggers ─► capture (changelog) ─► tail (capture thread) ─►
//! encode (Avro, registry) ─► publish (Kafka) ─► ack ─► prune, back in capture.

/// Validated configuration.
pub mod config;
/// Triggers: the SQL that puts every write to a captured table in the changelog.
pub mod triggers;
/// Capture: install, snapshot, read the changelog by position, prune.
pub mod capture;
/// Checksums: per table, the sum of its rows' hashes, kept from the changes the tail reads.
pub mod checksums;
/// Tail: the capture thread, handing commit groups to the publisher in chunks.
mod tail;
/// The registry door: the one place that speaks to the schema registry.
pub mod registry;
/// Encode: Confluent-framed Avro with each subject's registered schema.
mod encode;
/// Kafka: the idempotent producer, topics, one send with back-pressure.
pub mod kafka;
/// Topics of captured tables: one table per topic, new tables' topics while running.
mod topics;
/// Publish: change events, tombstones and commit records to Kafka; rewinds after a failure.
mod publish;
/// Ack: how far Kafka has acknowledged, what to prune, where to rewind to.
mod ack;
/// The run: wires the stages together, drains on shutdown.
pub mod pipeline;
/// Ops: metrics, status and readiness over HTTP; the backlog measured on the leader.
pub mod ops;
/// Schema changes: DDL, compatibility check and new triggers in one transaction.
pub mod migrate;
/// Takeover on the file: the epoch, promoting a replica, what a replaced leader never published.
pub mod takeover;
/// Fencing: the epochs in the commits topic; a producer of an older epoch stops.
pub mod fence;
/// Promote and the fenced report: a takeover's Kafka and registry side.
pub mod promote;
/// Tokens: the position a write transaction commits at, for read-your-writes.
pub mod token;

/// Incremental, resumable, on-demand table snapshots.
pub mod snapshot;

pub use ack::TopicPartition;
pub use config::ProducerConfig;
pub use pipeline::{run, run_on};
