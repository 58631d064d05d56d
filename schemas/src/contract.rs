//! Names that cross process boundaries, kept in one place so that the producer,
//! the consumers, the tests and operators' tools agree on them.

/// A Kafka topic and partition, as both sides name one.
pub type TopicPartition = (String, i32);

/// Default topic prefix: topics are `<prefix>.<table>`.
pub const DEFAULT_TOPIC_PREFIX: &str = "barista";
/// Suffix of the commits topic (`<prefix>.__commits`), one partition, that
/// carries commit groups and heartbeats.
pub const COMMITS_TOPIC_SUFFIX: &str = "__commits";
/// Suffix of the dead-letter topic (`<prefix>.__dead_letters`), where
/// followers put messages they can never apply.
pub const DEAD_LETTERS_TOPIC_SUFFIX: &str = "__dead_letters";
/// Value of `source.connector`.
pub const CONNECTOR: &str = "barista";

/// Header on every data message: the change's position (decimal ASCII), so a
/// message that cannot be decoded still says where it belongs.
pub const HEADER_POSITION: &str = "barista.position";
/// Header on a tombstone: marks it as the tombstone that follows a delete.
pub const HEADER_TOMBSTONE: &str = "barista.tombstone";
/// Header on a commit-topic record sent BEFORE a commit group that spans
/// several chunks (value `begin`): the record names the group's first and last
/// positions (no partitions), so a follower can stream a large group into an
/// open replica transaction instead of holding it in memory. The group's
/// commit record (no such header) still closes it.
pub const HEADER_GROUP: &str = "barista.group";
/// Value of [`HEADER_GROUP`] on a begin record.
pub const GROUP_BEGIN: &str = "begin";
/// Dead-letter headers: the error, and where the message came from.
pub const HEADER_DLQ_ERROR: &str = "barista.dlq.error";
/// Dead-letter header: original topic.
pub const HEADER_DLQ_TOPIC: &str = "barista.dlq.topic";
/// Dead-letter header: original partition.
pub const HEADER_DLQ_PARTITION: &str = "barista.dlq.partition";
/// Dead-letter header: original offset.
pub const HEADER_DLQ_OFFSET: &str = "barista.dlq.offset";
/// Dead-letter header: the Confluent schema id in the payload, when readable.
pub const HEADER_DLQ_SCHEMA_ID: &str = "barista.dlq.schema_id";
/// Dead-letter header: the follower that sent it.
pub const HEADER_DLQ_FOLLOWER: &str = "barista.dlq.follower";

/// Custom attribute on an Avro field: the SQLite column name before it was
/// made Avro-legal.
pub const ATTR_COLUMN: &str = "sqlite.column";
/// Custom attribute on an Avro field: the column's declared SQLite type.
pub const ATTR_DECLTYPE: &str = "sqlite.type";
/// Custom attribute on an Avro field: 1-based index in the primary key.
pub const ATTR_PK: &str = "sqlite.pk";

/// The data topic of a table: `<prefix>.<table>`, with characters Kafka does
/// not allow in topic names replaced by `_`.
pub fn table_topic(prefix: &str, table: &str) -> String {
    format!("{prefix}.{}", topic_safe(table))
}

/// True for barista's own topics (commits, dead letters) under any prefix:
/// they carry no table's changes.
pub fn is_internal_topic(topic: &str) -> bool {
    topic.rsplit_once('.').is_some_and(|(_, suffix)| {
        suffix == COMMITS_TOPIC_SUFFIX || suffix == DEAD_LETTERS_TOPIC_SUFFIX
    })
}

/// The commits topic of a prefix.
pub fn commits_topic(prefix: &str) -> String {
    format!("{prefix}.{COMMITS_TOPIC_SUFFIX}")
}

/// The dead-letter topic a follower writes poison messages to.
pub fn dead_letter_topic(prefix: &str) -> String {
    format!("{prefix}.{DEAD_LETTERS_TOPIC_SUFFIX}")
}

/// Subject of a topic's keys (Confluent's TopicNameStrategy).
pub fn key_subject(topic: &str) -> String {
    format!("{topic}-key")
}

/// Subject of a topic's values (Confluent's TopicNameStrategy).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

fn topic_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Kafka's default partitioner: `toPositive(murmur2(key)) % partitions`, so a
/// Java producer and barista agree on where a key lives.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    debug_assert!(partitions > 0);
    ((murmur2(key) & 0x7fff_ffff) % partitions as u32) as i32
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }

    #[test]
    fn topic_names_are_kafka_legal() {
        assert_eq!(table_topic("barista", "order items"), "barista.order_items");
        assert_eq!(table_topic("p", "café"), "p.caf_");
    }
}
