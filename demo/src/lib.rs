//! The coffee shop: its leader schema and migrations (the source of the checked-in contracts
//! `schemas/contracts/coffee.*`), and a typed consumer compiled against one version of them.

/// The leader schema and its migrations live with the leader service.
pub use barista_shop::{LEADER_SQL, MIGRATION_0002_SQL};
/// The topic prefix the demo produces under.
pub const TOPIC_PREFIX: &str = "coffee";

/// A typed consumer compiled against one contract version, reading every compatible version.
pub mod typed;
