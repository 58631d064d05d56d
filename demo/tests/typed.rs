//! The typed consumer against real Confluent-framed bytes: change events encoded by the
//! producer's own code (schemas derived from a real leader file, framed and registered by
//! schema_registry_converter in the embedded registry over HTTP), before and after the
//! `stamps` migration. Also checks that the checked-in contracts are what the demo derives.

use std::collections::BTreeMap;

use barista_demo::typed::{
    CustomerV1, CustomerV2, TypedDecoder, CUSTOMERS_VALUE_V1, CUSTOMERS_VALUE_V2,
};
use barista_demo::{LEADER_SQL, MIGRATION_0002_SQL, TOPIC_PREFIX};
use barista_registry::contracts::derive_from_leader;
use barista_registry::{CompatibilityLevel, RegistryConfig};
use barista_schemas::{ChangeEvent, Op, Position, Source, SqlValue, TableSchemas, TableShape};
use schema_registry_converter::async_impl::avro::AvroEncoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde_json::Value;

/// `value` (an envelope schema) with the leader epoch field in its `source` record, as
/// customers-value v3 has it.
fn with_epoch(mut value: Value) -> Value {
    let v3 = contract("coffee.customers-value", 3);
    let source_fields = |v: &Value| -> Vec<Value> {
        let f = v["fields"].as_array().unwrap();
        let source = f.iter().find(|f| f["name"] == "source").unwrap();
        source["type"]["fields"].as_array().unwrap().clone()
    };
    let epoch = source_fields(&v3)
        .into_iter()
        .find(|f| f["name"] == "epoch")
        .unwrap();
    let fields = value["fields"].as_array_mut().unwrap();
    let source = fields.iter_mut().find(|f| f["name"] == "source").unwrap();
    source["type"]["fields"].as_array_mut().unwrap().push(epoch);
    value
}

fn contract(subject: &str, version: u32) -> Value {
    let path = manifest_dir()
        .join("../schemas/contracts")
        .join(subject)
        .join(format!("v{version}.avsc"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn the_checked_in_contracts_are_what_the_demo_leader_derives() {
    let dir = tempfile::tempdir().unwrap();
    let leader = dir.path().join("shop.db");
    let conn = rusqlite::Connection::open(&leader).unwrap();
    conn.execute_batch(LEADER_SQL).unwrap();
    let (v1, _) = derive_from_leader(&leader, TOPIC_PREFIX).unwrap();
    // The commit record is barista's own contract, not the leader's: v2 added the tables
    // dropped in a group, v3 the tables' checksums, v4 the snapshots, v5 the leader epoch.
    // The epoch (issue 17) is in every change event's source too: customers-value v3 is v2
    // (the `stamps` migration) with it, orders-value v2 is v1 with it. A fresh leader derives
    // customers-value v1 with the epoch, which no deployment registered before v3.
    let expected: BTreeMap<String, Value> = v1
        .keys()
        .map(|subject| {
            let schema = match subject.as_str() {
                "coffee.__commits-value" => contract(subject, 5),
                "coffee.orders-value" => contract(subject, 2),
                "coffee.customers-value" => with_epoch(contract(subject, 1)),
                _ => contract(subject, 1),
            };
            (subject.clone(), schema)
        })
        .collect();
    assert_eq!(v1, expected);
    assert_eq!(v1.len(), 5);

    conn.execute_batch(MIGRATION_0002_SQL).unwrap();
    let (v2, _) = derive_from_leader(&leader, TOPIC_PREFIX).unwrap();
    for (subject, schema) in &v2 {
        let expected = match subject.as_str() {
            "coffee.customers-value" => contract(subject, 3),
            _ => expected[subject].clone(),
        };
        assert_eq!(schema, &expected, "{subject}");
    }
    assert_eq!(
        with_epoch(contract("coffee.customers-value", 2)),
        contract("coffee.customers-value", 3)
    );
    assert_eq!(
        serde_json::from_str::<Value>(CUSTOMERS_VALUE_V2).unwrap(),
        contract("coffee.customers-value", 2)
    );
}

/// Encodes one snapshot event of customer 1 as the producer does, registering `schemas`.
async fn encode(
    encoder: &AvroEncoder,
    schemas: &TableSchemas,
    row: Vec<SqlValue>,
    position: i64,
) -> Vec<u8> {
    let event = ChangeEvent {
        op: Op::Read,
        source: Source {
            connector: "barista".into(),
            db: "shop".into(),
            table: "customers".into(),
            position: Position(position),
            txn: Position(position),
            prev_position: None,
            snapshot: true,
            ts_ms: 0,
            epoch: 0,
        },
        before: None,
        after: Some(row),
        ts_ms: 0,
    };
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
        "coffee.customers".into(),
        false,
        SuppliedSchema::new(None, SchemaType::Avro, schemas.value_json.clone()),
    );
    encoder
        .encode_value(schemas.envelope_value(&event).unwrap(), &strategy)
        .await
        .unwrap_or_else(|e| panic!("encoding position {position}: {e:?}"))
}

fn customer_row(conn: &rusqlite::Connection) -> Vec<SqlValue> {
    let mut stmt = conn
        .prepare("SELECT * FROM customers WHERE id = 1")
        .unwrap();
    let n = stmt.column_count();
    stmt.query_row([], |r| {
        (0..n).map(|i| r.get_ref(i).map(SqlValue::from)).collect()
    })
    .unwrap()
}

#[tokio::test]
async fn a_v1_struct_reads_v2_events_and_a_v2_struct_reads_v1_events_with_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let registry = barista_registry::spawn(
        RegistryConfig {
            db_path: dir.path().join("registry.db"),
            default_level: CompatibilityLevel::FullTransitive,
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let encoder = AvroEncoder::new(SrSettings::new(registry.url().to_owned()));
    let conn = rusqlite::Connection::open(dir.path().join("shop.db")).unwrap();
    conn.execute_batch(LEADER_SQL).unwrap();
    conn.execute_batch("INSERT INTO customers VALUES (1, 'Ada', 'flat white', 3)")
        .unwrap();
    let v1 = TableSchemas::derive(TableShape::read(&conn, "customers").unwrap()).unwrap();
    let written_v1 = encode(&encoder, &v1, customer_row(&conn), 1).await;

    conn.execute_batch(MIGRATION_0002_SQL).unwrap();
    conn.execute_batch("UPDATE customers SET stamps = 7 WHERE id = 1")
        .unwrap();
    let v2 = TableSchemas::derive(TableShape::read(&conn, "customers").unwrap()).unwrap();
    // schema_registry_converter's encoder caches one schema per subject: a new schema for the
    // same subject needs a fresh encoder (the producer does the same after a migration).
    let encoder = AvroEncoder::new(SrSettings::new(registry.url().to_owned()));
    let written_v2 = encode(&encoder, &v2, customer_row(&conn), 2).await;
    assert_ne!(
        written_v1[1..5],
        written_v2[1..5],
        "two registered versions"
    );

    let mut old_reader =
        TypedDecoder::<CustomerV1>::new(registry.url(), CUSTOMERS_VALUE_V1).unwrap();
    let ada_v1 = CustomerV1 {
        id: 1,
        name: "Ada".into(),
        favourite: "flat white".into(),
        visits: 3,
    };
    for (bytes, position) in [(&written_v1, 1), (&written_v2, 2)] {
        let change = old_reader.decode(bytes).await.unwrap();
        assert_eq!(change.after, Some(ada_v1.clone()));
        assert_eq!(
            (change.op.as_str(), change.source.position),
            ("r", position)
        );
    }

    let mut new_reader =
        TypedDecoder::<CustomerV2>::new(registry.url(), CUSTOMERS_VALUE_V2).unwrap();
    let stamps: Vec<i64> = [
        new_reader.decode(&written_v1).await.unwrap(),
        new_reader.decode(&written_v2).await.unwrap(),
    ]
    .into_iter()
    .map(|c| c.after.unwrap().stamps)
    .collect();
    assert_eq!(
        stamps,
        [0, 7],
        "v1 data gets the default; v2 data its value"
    );

    // The struct is what fails when the contract does not fit it: a v2 struct over the v1
    // reader schema lacks `stamps`, and says so instead of inventing a value.
    let mut wrong = TypedDecoder::<CustomerV2>::new(registry.url(), CUSTOMERS_VALUE_V1).unwrap();
    let err = format!("{:#}", wrong.decode(&written_v2).await.unwrap_err());
    assert!(err.contains("stamps"), "{err}");
    registry.shutdown().await.unwrap();
}

/// This crate's directory as cargo names it when it runs the test, not as it was when the
/// test was compiled: a target dir shared by checkouts at other paths (CI's cache) keeps a
/// test binary whose `env!("CARGO_MANIFEST_DIR")` names another checkout.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
