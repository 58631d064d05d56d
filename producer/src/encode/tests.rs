use std::time::Duration;

use barista_schemas::avro_schema::COMMIT_AVSC;
use barista_schemas::{DroppedTable, Op, PartitionTail, Position, Source, TableShape};

use super::*;
use crate::registry::fake::serve;

fn schemas(ddl: &str) -> TableSchemas {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    conn.execute_batch(ddl).unwrap();
    TableSchemas::derive(TableShape::read(&conn, "t").unwrap()).unwrap()
}

fn encoder(url: &str) -> Encoder {
    let ops = crate::ops::Ops::new(&crate::ProducerConfig::new("l.db", "b", url));
    Encoder::new(
        Registry::new(url, Duration::from_secs(5)).unwrap(),
        std::sync::Arc::new(ops),
    )
}

fn quick() -> Backoff {
    Backoff::between(Duration::from_millis(1), Duration::from_millis(2))
}

/// What the schema_registry_converter produced for the first message of a subject: the
/// Confluent framing around apache-avro's encoding of the value.
#[allow(deprecated)] // apache-avro's one-shot encoder: the reference the direct writer must match
fn framed(id: u32, schema: &apache_avro::Schema, value: apache_avro::types::Value) -> Vec<u8> {
    let mut bytes = vec![0];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend(apache_avro::to_avro_datum(schema, value).unwrap());
    bytes
}

#[tokio::test]
async fn every_message_encodes_as_the_converter_encoded_the_first() {
    let s = schemas("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT NOT NULL, x)");
    let row = vec![
        SqlValue::Integer(7),
        SqlValue::Text("cortado".into()),
        SqlValue::Blob(vec![0, 255]),
    ];
    let event = ChangeEvent {
        op: Op::Update,
        before: Some(row.clone()),
        ..created(row.clone())
    };
    let commit = Commit {
        db: "shop".into(),
        first_position: Position(12),
        last_position: Position(13),
        ts_ms: 1_700_000_000_000,
        partitions: vec![PartitionTail {
            topic: "shop.t".into(),
            partition: 2,
            last_position: Position(13),
            count: 2,
        }],
        dropped: vec![DroppedTable {
            table: "gone".into(),
            position: Position(12),
        }],
        checksums: vec![barista_schemas::checksum::TableChecksum {
            table: "t".into(),
            sum: i64::MIN,
        }],
        snapshots: vec![barista_schemas::TableSnapshot {
            table: "t".into(),
            id: 12,
            position: Position(12),
            done: false,
        }],
        epoch: 0,
    };
    let fake = serve(vec![(200, r#"{"id": 258}"#)]).await;
    let mut enc = encoder(&fake.url);
    let mut backoff = quick();
    for _ in 0..2 {
        let key = enc
            .encode(&Payload::Key(&s, &row), "t-key", &s.key_json, &mut backoff)
            .await
            .unwrap();
        assert_eq!(key, framed(258, &s.key, s.key_value(&row).unwrap()));
        let value = enc
            .encode(
                &Payload::Envelope(&s, &event),
                "t-value",
                &s.value_json,
                &mut backoff,
            )
            .await
            .unwrap();
        assert_eq!(
            value,
            framed(258, &s.value, s.envelope_value(&event).unwrap())
        );
        let c = enc
            .encode(
                &Payload::Commit(&commit),
                "c-value",
                COMMIT_AVSC,
                &mut backoff,
            )
            .await
            .unwrap();
        assert_eq!(
            c,
            framed(258, &Commit::schema().unwrap(), commit.to_avro().unwrap())
        );
    }
    assert_eq!(
        fake.requests().len(),
        3,
        "one registration per subject, not per message"
    );
}

#[tokio::test]
async fn a_subject_whose_schema_changed_is_registered_again() {
    let old = schemas("CREATE TABLE t(id INTEGER PRIMARY KEY)");
    let new = schemas("CREATE TABLE t(id INTEGER PRIMARY KEY, extra)");
    let fake = serve(vec![(200, r#"{"id": 1}"#), (200, r#"{"id": 2}"#)]).await;
    let mut enc = encoder(&fake.url);
    let mut backoff = quick();
    let mut ids = Vec::new();
    for (s, row) in [
        (&old, vec![SqlValue::Integer(1)]),
        (&old, vec![SqlValue::Integer(2)]),
        (&new, vec![SqlValue::Integer(3), SqlValue::Null]),
        (&new, vec![SqlValue::Integer(4), SqlValue::Integer(5)]),
    ] {
        let event = created(row);
        let bytes = enc
            .encode(
                &Payload::Envelope(s, &event),
                "t-value",
                &s.value_json,
                &mut backoff,
            )
            .await
            .unwrap();
        ids.push(bytes[4]);
    }
    assert_eq!(ids, [1, 1, 2, 2]);
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn an_unavailable_registry_is_retried_until_it_answers() {
    let fake = serve(vec![
        (500, r#"{"error_code": 50001, "message": "store failed"}"#),
        (503, ""),
        (200, r#"{"id": 9}"#),
    ])
    .await;
    let mut backoff = quick();
    let bytes = encoder(&fake.url)
        .encode(
            &Payload::Commit(&heartbeat()),
            "c-value",
            COMMIT_AVSC,
            &mut backoff,
        )
        .await
        .unwrap();
    assert_eq!(bytes[..5], [0, 0, 0, 0, 9]);
    assert_eq!(fake.requests().len(), 3);
    assert_eq!(
        backoff.peek(),
        Duration::from_millis(2),
        "the shared backoff grew"
    );
}

#[tokio::test]
async fn a_refused_schema_stops_the_run_with_the_migrate_advice() {
    let fake = serve(vec![(
        409,
        r#"{"error_code": 409, "message": "Schema being registered is incompatible with an earlier schema"}"#,
    )])
    .await;
    let e = heartbeat_refusal(&fake.url).await;
    assert!(e.starts_with("the schema registry refused a schema (c-value: HTTP 409, error code 409: Schema being registered is incompatible"), "{e}");
    assert!(
        e.ends_with("If a table changed, run the change through `producer migrate`"),
        "{e}"
    );
    assert_eq!(fake.requests().len(), 1, "a refusal is not retried");
}

#[tokio::test]
async fn something_that_is_not_a_registry_stops_the_run() {
    let fake = serve(vec![(200, "<html></html>")]).await;
    let e = heartbeat_refusal(&fake.url).await;
    assert!(e.contains("is the schema registry URL right?"), "{e}");
}

fn created(row: Vec<SqlValue>) -> ChangeEvent {
    ChangeEvent {
        op: Op::Create,
        before: None,
        after: Some(row),
        source: Source {
            connector: "barista".into(),
            db: "shop".into(),
            table: "t".into(),
            position: Position(12),
            txn: Position(13),
            prev_position: Some(Position(3)),
            snapshot: false,
            ts_ms: 1_700_000_000_000,
            epoch: 0,
        },
        ts_ms: 1_700_000_000_001,
    }
}

/// The error encoding a heartbeat against the registry at `url` stops with.
async fn heartbeat_refusal(url: &str) -> String {
    encoder(url)
        .encode(
            &Payload::Commit(&heartbeat()),
            "c-value",
            COMMIT_AVSC,
            &mut quick(),
        )
        .await
        .unwrap_err()
        .to_string()
}

fn heartbeat() -> Commit {
    Commit {
        db: "shop".into(),
        first_position: Position(5),
        last_position: Position(4),
        ts_ms: 1,
        partitions: vec![],
        dropped: vec![],
        checksums: vec![],
        snapshots: vec![],
        epoch: 0,
    }
}
