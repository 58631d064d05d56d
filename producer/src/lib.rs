//! barista's producer: the leader side of the pipeline.
//!
//! leader.db ─► capture (triggers + changelog) ─► encode (Avro, registry) ─►
//! publish (idempotent Kafka producer) ─► prune once acknowledged.

/// Triggers, changelog, snapshot, pruning.
pub mod capture;
/// Validated configuration.
pub mod config;
/// Kafka: the idempotent producer, topics, one send with back-pressure.
pub mod kafka;
/// Schema changes: DDL, compatibility check and new triggers in one transaction.
pub mod migrate;
/// Encode changes as Confluent-framed Avro and publish them, tracking acks.
pub mod pipeline;
/// The registry door: the one place that speaks to the schema registry.
pub mod registry;
/// Triggers: the SQL that puts every write to a captured table in the changelog.
pub mod triggers;
/// Tokens: the position a write transaction commits at, for read-your-writes.
pub mod token;

pub use config::ProducerConfig;
pub use pipeline::run;
