//! Schema evolution while everything runs: `producer migrate` adds and drops columns under
//! the registry's compatibility check and the followers evolve their replicas without a
//! restart; an incompatible migration leaves the leader untouched; DDL made behind barista's
//! back stops the producer before a column's values are lost, and `--repair-triggers`
//! re-publishes the table so they still arrive.

use std::path::Path;
use std::time::Duration;

use barista_producer::migrate::{migrate, Migration, Outcome};
use barista_schemas::SqlValue;
use barista_tests::*;
use rdkafka::mocking::MockCluster;
use rusqlite::Connection;

const SCHEMA: &str =
    "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, coffee TEXT);
    INSERT INTO customers VALUES (1, 'Ada', 'flat white'), (2, 'Bo', 'espresso');";

fn leader_with_customers(dir: &Path) -> std::path::PathBuf {
    let leader = dir.join("leader.db");
    let c = Connection::open(&leader).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.execute_batch(SCHEMA).unwrap();
    leader
}

fn write(leader: &Path, sql: &str) {
    let c = Connection::open(leader).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.execute_batch(sql).unwrap();
}

/// The replica's rows of `customers` with the named columns, by id.
fn replica_rows(replica: &Path, columns: &str) -> Result<Vec<Vec<SqlValue>>, String> {
    let c = Connection::open_with_flags(replica, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    let mut stmt = c
        .prepare(&format!("SELECT {columns} FROM customers ORDER BY id"))
        .map_err(|e| e.to_string())?;
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        (0..n)
            .map(|i| r.get_ref(i).map(SqlValue::from))
            .collect::<Result<Vec<_>, _>>()
    })
    .and_then(|rows| rows.collect())
    .map_err(|e| e.to_string())
}

/// Schema text, every row and the schema cookie: what "the leader is unchanged" means.
fn leader_state(leader: &Path) -> (Vec<String>, BTreeRows, i64) {
    let c = Connection::open(leader).unwrap();
    let schema: Vec<String> = c
        .prepare("SELECT coalesce(sql, name) FROM sqlite_schema ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let version = c
        .query_row("PRAGMA schema_version", [], |r| r.get(0))
        .unwrap();
    (schema, dump(leader), version)
}
type BTreeRows = std::collections::BTreeMap<String, Vec<Vec<SqlValue>>>;

fn migration(dir: &Path, leader: &Path, registry: &str, prefix: &str, ddl: &str) -> Migration {
    let _ = dir;
    Migration {
        leader: leader.to_owned(),
        ddl: ddl.to_owned(),
        registry_url: registry.to_owned(),
        topic_prefix: prefix.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_evolve_a_running_follower_and_incompatible_ones_change_nothing() {
    let Running {
        dir,
        leader,
        _cluster,
        registry,
        config,
        producer,
        replica,
        follower,
    } = Running::start("evo").await;
    let prefix = config.topic_prefix.clone();

    // 1. A column with a literal DEFAULT: compatible, applied while both run.
    let m = migration(
        dir.path(),
        &leader,
        registry.url(),
        &prefix,
        "ALTER TABLE customers ADD COLUMN stamps INTEGER NOT NULL DEFAULT 0;",
    );
    let outcome = migrate(&m).await.unwrap();
    let Outcome::Applied(versions) = outcome else {
        panic!("expected the migration to apply: {outcome:?}")
    };
    assert_eq!(
        versions
            .iter()
            .map(|v| v.subject.clone())
            .collect::<Vec<_>>(),
        [format!("{prefix}.customers-value")],
        "the key did not change"
    );
    write(
        &leader,
        "UPDATE customers SET stamps = 4 WHERE id = 1; INSERT INTO customers VALUES (3, 'Cy', 'mocha', 9);",
    );
    // Row for row, the new column included: Bo (untouched since) reads the default 0 on both.
    wait_until(Duration::from_secs(60), || same_rows(&leader, &replica)).await;
    assert_eq!(
        replica_rows(&replica, "id, stamps").unwrap(),
        [
            vec![SqlValue::Integer(1), SqlValue::Integer(4)],
            vec![SqlValue::Integer(2), SqlValue::Integer(0)],
            vec![SqlValue::Integer(3), SqlValue::Integer(9)],
        ]
    );

    // 2. Incompatible migrations are refused, and the leader is exactly as before. Under
    // BACKWARD: a NOT NULL BLOB column whose DEFAULT has no Avro form (a reader of the new
    // schema would have no value for older events).
    let before = leader_state(&leader);
    let refused = |ddl: &str| {
        let m = migration(dir.path(), &leader, registry.url(), &prefix, ddl);
        async move {
            match migrate(&m).await.unwrap() {
                Outcome::Refused { problems, advice } => (problems.join("\n"), advice.join("\n")),
                other => panic!("expected a refusal: {other:?}"),
            }
        }
    };
    let (problems, advice) =
        refused("ALTER TABLE customers ADD COLUMN photo BLOB NOT NULL DEFAULT x'00';").await;
    assert!(
        problems.contains(&format!(
            "{prefix}.customers-value (compatibility BACKWARD)"
        )) && problems.contains("READER_FIELD_MISSING_DEFAULT_VALUE")
            && problems.contains("photo"),
        "{problems}"
    );
    assert!(
        advice.contains("column customers.photo is added NOT NULL without a literal DEFAULT")
            && advice.contains("add the column with a DEFAULT"),
        "{advice}"
    );
    assert_eq!(
        leader_state(&leader),
        before,
        "the leader must be untouched"
    );
    // Under FORWARD, consumers still on the old schema need every field it has without a
    // default: dropping NOT NULL `name` is refused.
    let status = reqwest::Client::new()
        .put(format!(
            "{}/config/{prefix}.customers-value",
            registry.url()
        ))
        .json(&serde_json::json!({ "compatibility": "FORWARD" }))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    let (problems, advice) = refused("ALTER TABLE customers DROP COLUMN name;").await;
    assert!(
        problems.contains("(compatibility FORWARD)")
            && problems.contains("READER_FIELD_MISSING_DEFAULT_VALUE")
            && problems.contains("name"),
        "{problems}"
    );
    assert!(
        advice.contains(
            "column customers.name is dropped but readers of the old schema need a value"
        ),
        "{advice}"
    );
    assert_eq!(
        leader_state(&leader),
        before,
        "the leader must be untouched"
    );

    // 3. Dropping a nullable column: compatible (its default is null) under FORWARD too. The leader stops writing it;
    // the replica keeps the column, with its old values, and new rows leave it NULL.
    let m = migration(
        dir.path(),
        &leader,
        registry.url(),
        &prefix,
        "ALTER TABLE customers DROP COLUMN coffee;",
    );
    assert!(matches!(migrate(&m).await.unwrap(), Outcome::Applied(_)));
    write(
        &leader,
        "INSERT INTO customers VALUES (4, 'Di', 2); UPDATE customers SET stamps = 5 WHERE id = 1;",
    );
    let r = replica.clone();
    wait_until(Duration::from_secs(60), move || {
        let rows = replica_rows(&r, "id, coffee, stamps")?;
        let want = vec![
            vec![
                SqlValue::Integer(1),
                SqlValue::Text("flat white".into()),
                SqlValue::Integer(5),
            ],
            vec![
                SqlValue::Integer(2),
                SqlValue::Text("espresso".into()),
                SqlValue::Integer(0),
            ],
            vec![
                SqlValue::Integer(3),
                SqlValue::Text("mocha".into()),
                SqlValue::Integer(9),
            ],
            vec![SqlValue::Integer(4), SqlValue::Null, SqlValue::Integer(2)],
        ];
        (rows == want)
            .then_some(())
            .ok_or(format!("replica: {rows:?}"))
    })
    .await;
    assert!(!producer.is_finished() && !follower.is_finished());
    assert_eq!(follower.status().dead_letters, 0);
    follower.stop().await.unwrap();
    producer.stop().await.unwrap();
    registry.shutdown().await.unwrap();
}

/// Waits for a producer to stop on its own and returns its error.
async fn failure(producer: RunningProducer) -> String {
    wait_until(Duration::from_secs(30), || {
        producer
            .is_finished()
            .then_some(())
            .ok_or("producer still running".into())
    })
    .await;
    format!(
        "{:#}",
        producer.stop().await.expect_err("the producer should fail")
    )
}

/// The customers leader with capture running, registered and caught up on one follower.
struct Running {
    dir: tempfile::TempDir,
    leader: std::path::PathBuf,
    _cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    registry: barista_registry::RunningRegistry,
    config: barista_producer::ProducerConfig,
    producer: RunningProducer,
    replica: std::path::PathBuf,
    follower: RunningFollower,
}

impl Running {
    async fn start(name: &str) -> Running {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let leader = leader_with_customers(dir.path());
        let cluster = MockCluster::new(1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let registry = start_registry(dir.path()).await;
        let prefix = unique(name);
        create_topics(&cluster, &prefix, &["customers"]);
        let config = producer_config(&leader, &brokers, registry.url(), &prefix);
        let producer = RunningProducer::start(config.clone());
        let replica = dir.path().join("replica.db");
        let follower = RunningFollower::start(follower_config(
            &replica,
            &unique("f"),
            &brokers,
            registry.url(),
            &prefix,
        ));
        wait_until(Duration::from_secs(60), || same_rows(&leader, &replica)).await;
        Running {
            dir,
            leader,
            _cluster: cluster,
            registry,
            config,
            producer,
            replica,
            follower,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ddl_behind_the_back_stops_the_producer_and_repair_republishes_the_table() {
    let Running {
        dir: _dir,
        leader,
        _cluster,
        registry,
        config,
        producer,
        replica,
        follower,
    } = Running::start("drift").await;

    // As from the sqlite3 shell: the triggers do not know `stamps`, so these values would be
    // missing from the events.
    write(
        &leader,
        "ALTER TABLE customers ADD COLUMN stamps INTEGER;
         UPDATE customers SET stamps = 7 WHERE id = 1;
         INSERT INTO customers VALUES (3, 'Cy', 'mocha', 9);",
    );
    let err = failure(producer).await;
    assert!(
        err.contains("table \"customers\" changed behind barista's back")
            && err.contains(r#"["id", "name", "coffee", "stamps"]"#)
            && err.contains("--repair-triggers"),
        "{err}"
    );

    // Resume as the message says: the snapshot re-published with the repair carries the
    // values written while the triggers were blind.
    let mut repair = config;
    repair.repair_triggers = true;
    let producer = RunningProducer::start(repair);
    wait_until(Duration::from_secs(60), || same_rows(&leader, &replica)).await;
    assert_eq!(
        replica_rows(&replica, "id, stamps").unwrap(),
        [
            vec![SqlValue::Integer(1), SqlValue::Integer(7)],
            vec![SqlValue::Integer(2), SqlValue::Null],
            vec![SqlValue::Integer(3), SqlValue::Integer(9)],
        ]
    );
    // Streaming goes on with the new column.
    write(&leader, "UPDATE customers SET stamps = 8 WHERE id = 2;");
    wait_until(Duration::from_secs(60), || same_rows(&leader, &replica)).await;
    assert_eq!(follower.status().dead_letters, 0);
    follower.stop().await.unwrap();
    producer.stop().await.unwrap();
    registry.shutdown().await.unwrap();
}

/// The registry is asked before the leader is locked: a migration waiting on a registry that
/// does not answer leaves the leader's writers free, and gives up changing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_migration_waiting_on_the_registry_does_not_block_writers() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let leader = leader_with_customers(dir.path());
    barista_producer::capture::Capture::install(Connection::open(&leader).unwrap(), &[], false)
        .unwrap();
    // A "registry" that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let before = leader_state(&leader);
    let m = migration(
        dir.path(),
        &leader,
        &url,
        "evo",
        "ALTER TABLE customers ADD COLUMN stamps INTEGER NOT NULL DEFAULT 0;",
    );
    // `migrate` holds its SQLite connection across awaits: its own thread and runtime.
    let pending = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(migrate(&m))
    });
    // It has reached the registry once the registry's connection arrives.
    silent.set_nonblocking(true).unwrap();
    let mut asked = None;
    wait_until(Duration::from_secs(10), || {
        asked = silent.accept().ok();
        asked
            .is_some()
            .then_some(())
            .ok_or_else(|| "the migration has not called the registry yet".to_owned())
    })
    .await;
    assert!(
        !pending.is_finished(),
        "the migration should still wait on the registry"
    );

    // An application write with a short busy timeout goes through meanwhile.
    let started = std::time::Instant::now();
    let c = Connection::open(&leader).unwrap();
    c.busy_timeout(Duration::from_millis(1_000)).unwrap();
    c.execute_batch("INSERT INTO customers VALUES (3, 'Cy', 'mocha')")
        .expect("a writer must not wait for the registry");
    let waited = started.elapsed();
    assert!(
        !pending.is_finished(),
        "the write must happen while the migration waits"
    );

    let err = pending
        .join()
        .unwrap()
        .expect_err("no registry, no migration");
    assert!(
        format!("{err:#}").contains("nothing was changed"),
        "the error says the leader is unchanged: {err:#}"
    );
    let (schema, rows, version) = leader_state(&leader);
    assert_eq!(
        (schema, version),
        (before.0, before.2),
        "the DDL was not applied"
    );
    assert_eq!(rows["customers"].len(), 3, "the write is kept");
    tracing::info!(?waited, "the write waited");
}

/// `--repair-triggers` asks the registry first: a column added behind barista's back that
/// makes an incompatible schema (NOT NULL with a default Avro cannot express, under BACKWARD)
/// stops the repair before it touches the leader, naming the field, the rule and the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_incompatible_repair_is_refused_before_it_changes_the_leader() {
    let Running {
        dir: _dir,
        leader,
        _cluster,
        registry,
        config,
        producer,
        replica: _,
        follower,
    } = Running::start("badrepair").await;

    write(
        &leader,
        "ALTER TABLE customers ADD COLUMN photo BLOB NOT NULL DEFAULT x'00';",
    );
    failure(producer).await;

    let before = leader_state(&leader);
    let mut repair = config;
    repair.repair_triggers = true;
    let producer = RunningProducer::start(repair);
    let err = failure(producer).await;
    assert!(
        err.contains("--repair-triggers stopped before changing anything")
            && err.contains("customers-value (compatibility BACKWARD)")
            && err.contains("photo")
            && err.contains("instead:"),
        "{err}"
    );
    assert_eq!(
        leader_state(&leader),
        before,
        "the refused repair changed the leader"
    );
    follower.stop().await.unwrap();
    registry.shutdown().await.unwrap();
}
