//! The coffee shop: its leader schema and migrations (the source of the checked-in contracts
//! `schemas/contracts/coffee.*`), and a typed consumer compiled against one version of them.

/// The leader schema as first shipped (v1 of every coffee subject).
pub const LEADER_SQL: &str = include_str!("sql/leader.sql");
/// Migration 0002: `customers.stamps INTEGER NOT NULL DEFAULT 0` (v2 of the customers subjects).
pub const MIGRATION_0002_SQL: &str = include_str!("sql/0002_customer_stamps.sql");
/// The topic prefix the demo produces under.
pub const TOPIC_PREFIX: &str = "coffee";

/// A typed consumer compiled against one contract version, reading every compatible version.
pub mod typed;
