//! The contract between the leader and its followers: how a SQLite table becomes
//! Avro schemas, what a change event looks like on the wire, and the names of
//! topics, subjects and headers. Both the producer and the consumers depend on
//! this crate and nothing else of each other.

/// Avro schemas derived from a table shape, with Avro-legal names.
pub mod avro_schema;
/// The envelope in Avro binary without apache-avro `Value` trees.
pub mod binary;
/// Table checksums: the canonical row hash and its order-independent sum.
pub mod checksum;
/// Commit groups and heartbeats on the commits topic.
pub mod commit;
/// Topic, subject and header names: every name that crosses a process boundary.
pub mod contract;
/// The change-event envelope (`before`, `after`, `op`, `source`, `ts_ms`).
pub mod envelope;
/// The read API's JSON encoding of SQLite values (exact per storage class).
pub mod json;
/// The seed snapshot: a consistent, hashed copy a new follower starts from.
pub mod snapshot;
/// A captured table's shape, read from SQLite (`PRAGMA table_xinfo`).
pub mod table;
/// SQLite values and their exact round trip through Avro unions.
pub mod value;

pub use avro_schema::{key_schema_json, value_schema_json, TableSchemas};
pub use commit::{Commit, DroppedTable, PartitionTail, TableSnapshot};
pub use envelope::{ChangeEvent, Op, Source};
pub use table::{Affinity, Column, TableShape};
pub use value::SqlValue;

/// A leader position: the change sequence number assigned by the changelog.
/// Strictly increasing and never reused, even after the changelog is pruned.
/// Zero means "before the first change". On the wire (Avro, JSON, SQLite) it
/// is a plain integer.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Position(pub i64);

impl Position {
    /// Before the first change.
    pub const ZERO: Position = Position(0);

    /// The position right after this one.
    pub fn next(self) -> Position {
        Position(self.0 + 1)
    }

    /// How many positions `self` is ahead of `other` (0 when it is not).
    pub fn ahead_of(self, other: Position) -> i64 {
        (self.0 - other.0).max(0)
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Stored as an INTEGER (changelog, replica position and offsets tables).
impl rusqlite::ToSql for Position {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        self.0.to_sql()
    }
}

impl rusqlite::types::FromSql for Position {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        i64::column_result(v).map(Position)
    }
}

impl From<i64> for Position {
    fn from(p: i64) -> Position {
        Position(p)
    }
}

impl From<Position> for i64 {
    fn from(p: Position) -> i64 {
        p.0
    }
}

/// Errors that cross the contract: a caller branches on them (poison vs. retry).
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// The bytes or the decoded Avro value do not have the envelope's shape.
    #[error("not a barista change event: {0}")]
    Malformed(String),
    /// SQLite could not describe the table.
    #[error("reading the shape of table {table:?}: {source}")]
    Sqlite {
        /// The table being inspected.
        table: String,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The table cannot be captured safely; the message says why and what to do.
    #[error("table {table:?} cannot be captured: {why}")]
    NotCapturable {
        /// The refused table.
        table: String,
        /// Why, and what to do about it.
        why: String,
    },
    /// An Avro schema could not be built or parsed.
    #[error("avro schema for {subject}: {source}")]
    Avro {
        /// The subject or table the schema is for.
        subject: String,
        /// apache-avro's error.
        source: Box<apache_avro::Error>,
    },
}
