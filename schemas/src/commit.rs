//! Commit groups on the commits topic (`schemas/avro/commit.avsc`). After the
//! changes of a group are sent, the producer sends one `Commit` naming, per
//! partition, the group's last position there. A follower applies a group only
//! once it holds all of it, so it never exposes part of a leader transaction,
//! across tables and partitions. A `Commit` with no changes is a heartbeat.

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::avro_schema::COMMIT_AVSC;
use crate::checksum::TableChecksum;
use crate::{ContractError, Position};

/// The tail of a commit group in one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionTail {
    /// Data topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The group's last position in this partition.
    pub last_position: Position,
    /// How many changes of the group went to this partition.
    pub count: i64,
}

/// A table dropped (or renamed away) on the leader, inside a commit group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedTable {
    /// The leader table, as named when it was dropped.
    pub table: String,
    /// Where in the group: changes at lower positions came before the drop.
    pub position: Position,
}

/// An incremental snapshot that started or ended inside a commit group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSnapshot {
    /// The leader table.
    pub table: String,
    /// The snapshot: the position of its start marker.
    pub id: i64,
    /// Where in the group it started or ended.
    pub position: Position,
    /// False: it started there; true: it ended there.
    pub done: bool,
}

/// A commit group, or a heartbeat when `first_position > last_position`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// Logical leader database name.
    pub db: String,
    /// First position of the group.
    pub first_position: Position,
    /// Last position of the group: the leader's position once it is applied.
    pub last_position: Position,
    /// Leader clock when the producer read the group.
    pub ts_ms: i64,
    /// Where the group's changes went.
    pub partitions: Vec<PartitionTail>,
    /// Tables dropped in this group (absent in records written before v2).
    #[serde(default)]
    pub dropped: Vec<DroppedTable>,
    /// The leader's checksum ([`crate::checksum`]) of every table this group
    /// changed, at `last_position`, sorted by table, in the shape of the
    /// writer schema of the table's last change event in the group (a table
    /// whose shape changed after its last change in the group, or that the
    /// group dropped, is left out; so is one whose sum the leader cannot know
    /// at the moment). Absent in records written before v3, and in begin
    /// records and heartbeats.
    #[serde(default)]
    pub checksums: Vec<TableChecksum>,
    /// Incremental snapshots that started or ended in this group, in position order
    /// (absent in records written before v4).
    #[serde(default)]
    pub snapshots: Vec<TableSnapshot>,
    /// The epoch of the leader that wrote it (absent, so 0, before v5). A record of a higher
    /// epoch than known with no changes is a takeover at `first_position`
    /// ([`Commit::takeover`]).
    #[serde(default)]
    pub epoch: i64,
}

impl Commit {
    /// True when the record carries no changes.
    pub fn is_heartbeat(&self) -> bool {
        self.first_position > self.last_position
    }

    /// The position where this record's epoch starts, when it is an epoch-change record
    /// (`producer --promote` writes one, with no changes, before anything else of its epoch).
    /// Whether it is news is the reader's business: compare `epoch` with what it knows.
    pub fn takeover(&self) -> Option<Position> {
        (self.is_heartbeat() && self.epoch > 0 && self.partitions.is_empty())
            .then_some(self.first_position)
    }

    /// The parsed commit schema.
    pub fn schema() -> Result<Schema, ContractError> {
        Schema::parse_str(COMMIT_AVSC).map_err(|e| ContractError::Avro {
            subject: "commit".into(),
            source: Box::new(e),
        })
    }

    /// As an Avro value of [`Commit::schema`].
    #[allow(deprecated)] // see the note on the tests module
    pub fn to_avro(&self) -> Result<apache_avro::types::Value, ContractError> {
        apache_avro::to_value(self).map_err(|e| ContractError::Avro {
            subject: "commit".into(),
            source: Box::new(e),
        })
    }

    /// From an Avro value written with any compatible commit schema.
    #[allow(deprecated)] // see the note on the tests module
    pub fn from_avro(v: apache_avro::types::Value) -> Result<Self, ContractError> {
        apache_avro::from_value(&v)
            .map_err(|e| ContractError::Malformed(format!("commit record: {e}")))
    }
}

// apache-avro 0.22 deprecates the datum helpers in favour of a builder API
// that schema_registry_converter 6 does not use yet; the bytes are the same.
#[cfg(test)]
#[allow(deprecated)]
mod tests {
    use super::*;

    /// The `.avsc` contract and the Rust type agree: a value made from the Rust
    /// type validates against the schema and comes back equal.
    #[test]
    fn avsc_and_rust_type_agree() {
        let schema = Commit::schema().unwrap();
        let c = Commit {
            db: "leader".into(),
            first_position: Position(10),
            last_position: Position(12),
            ts_ms: 1_700_000_000_000,
            partitions: vec![PartitionTail {
                topic: "barista.t".into(),
                partition: 2,
                last_position: Position(12),
                count: 3,
            }],
            dropped: vec![DroppedTable {
                table: "gone".into(),
                position: Position(11),
            }],
            checksums: vec![TableChecksum {
                table: "t".into(),
                sum: -42,
            }],
            snapshots: vec![TableSnapshot {
                table: "t".into(),
                id: 9,
                position: Position(11),
                done: true,
            }],
            epoch: 0,
        };
        let bytes = apache_avro::to_avro_datum(&schema, c.to_avro().unwrap()).unwrap();
        let back = apache_avro::from_avro_datum(&schema, &mut bytes.as_slice(), None).unwrap();
        assert_eq!(Commit::from_avro(back).unwrap(), c);
        assert!(!c.is_heartbeat());
    }

    #[test]
    fn source_avsc_and_rust_type_agree() {
        let schema = Schema::parse_str(crate::avro_schema::SOURCE_AVSC).unwrap();
        let s = crate::Source {
            connector: "barista".into(),
            db: "d".into(),
            table: "t".into(),
            position: Position(5),
            txn: Position(6),
            prev_position: None,
            snapshot: true,
            ts_ms: 7,
            epoch: 0,
        };
        let v = apache_avro::to_value(&s).unwrap().resolve(&schema).unwrap();
        let bytes = apache_avro::to_avro_datum(&schema, v).unwrap();
        let back = apache_avro::from_avro_datum(&schema, &mut bytes.as_slice(), None).unwrap();
        assert_eq!(crate::envelope::decode_source(&back).unwrap(), s);
    }

    /// A record written with v1 of the schema (no `dropped`) reads with no
    /// drops: followers read what older producers wrote.
    #[test]
    fn a_v1_record_reads_with_no_drops() {
        let v1 =
            Schema::parse_str(include_str!("../contracts/coffee.__commits-value/v1.avsc")).unwrap();
        let v2 = Commit::schema().unwrap();
        let old = apache_avro::types::Value::Record(vec![
            (
                "db".into(),
                apache_avro::types::Value::String("leader".into()),
            ),
            ("first_position".into(), apache_avro::types::Value::Long(3)),
            ("last_position".into(), apache_avro::types::Value::Long(4)),
            ("ts_ms".into(), apache_avro::types::Value::Long(5)),
            (
                "partitions".into(),
                apache_avro::types::Value::Array(vec![]),
            ),
        ]);
        let bytes = apache_avro::to_avro_datum(&v1, old).unwrap();
        let back = apache_avro::from_avro_datum(&v1, &mut bytes.as_slice(), Some(&v2)).unwrap();
        let c = Commit::from_avro(back).unwrap();
        assert_eq!((c.last_position, c.dropped), (Position(4), vec![]));
        // And the follower's generic path, with the writer's schema only.
        let back = apache_avro::from_avro_datum(&v1, &mut bytes.as_slice(), None).unwrap();
        assert!(Commit::from_avro(back).unwrap().dropped.is_empty());
    }
}
