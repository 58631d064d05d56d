//! barista's producer: the leader side of the pipeline.
//!
//! leader.db ─► capture (triggers + changelog) ─► encode (Avro, registry) ─►
//! publish (idempotent Kafka producer) ─► prune once acknowledged.

/// Validated configuration.
pub mod config;
/// Triggers, changelog, snapshot, pruning.
pub mod capture;
/// Kafka producer, topics and sends.
pub mod publish;
/// Encode changes as Confluent-framed Avro and publish them, tracking acks.
pub mod pipeline;

pub use config::ProducerConfig;
pub use pipeline::run;
