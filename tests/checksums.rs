//! Table checksums on the leader side (issue 13): commit records carry, for the tables their
//! group changed, the same sums one recomputes from the leader's rows at the group's last
//! position, also after the producer was stopped or killed and restarted; `producer verify`
//! finds a row changed behind the triggers' back.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use barista_schemas::checksum::{to_wire, RowHasher};
use barista_schemas::contract::{commits_topic, table_topic, GROUP_BEGIN, HEADER_GROUP};
use barista_schemas::envelope::RowShape;
use barista_schemas::{Commit, SqlValue, TableSchemas, TableShape};
use barista_tests::process::{binary, Proc};
use barista_tests::workload::*;
use barista_tests::*;
use rand::{Rng, SeedableRng};
use rusqlite::Connection;

use crate::crash::producer_args;

/// Every captured table's checksum recomputed from the leader's rows now, as i64 bits.
fn leader_sums(leader: &Path) -> BTreeMap<String, i64> {
    let conn = Connection::open(leader).unwrap();
    let mut out = BTreeMap::new();
    for table in ["customers", "everything"] {
        let schemas = TableSchemas::derive(TableShape::read(&conn, table).unwrap()).unwrap();
        let hasher = RowHasher::new(&RowShape::from_value_schema(&schemas.value_json).unwrap());
        let n = schemas.shape.columns.len();
        let mut stmt = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
        let mut rows = stmt.query([]).unwrap();
        let mut sum = 0u64;
        while let Some(r) = rows.next().unwrap() {
            let row: Vec<SqlValue> = (0..n)
                .map(|i| SqlValue::from(r.get_ref(i).unwrap()))
                .collect();
            sum = sum.wrapping_add(hasher.hash(&row));
        }
        out.insert(table.to_owned(), to_wire(sum));
    }
    out
}

/// The commits topic decoded: (commit, is a begin record).
#[allow(deprecated)] // apache-avro's datum helpers; see schemas/src/commit.rs
fn commits(brokers: &str, prefix: &str) -> Vec<(Commit, bool)> {
    let schema = Commit::schema().unwrap();
    read_topic(brokers, &commits_topic(prefix))
        .into_iter()
        .filter_map(|(_, _, _, payload, headers)| {
            let payload = payload?;
            // Confluent framing: magic byte and schema id; the producer writes the current
            // commit schema.
            let v = apache_avro::from_avro_datum(&schema, &mut &payload[5..], None).unwrap();
            let begin = headers
                .iter()
                .any(|(k, v)| k == HEADER_GROUP && v == GROUP_BEGIN.as_bytes());
            Some((Commit::from_avro(v).unwrap(), begin))
        })
        .collect()
}

/// Waits until the commit record of the group ending at the leader's head is in Kafka (the
/// writers are idle), and checks it: the sums it carries are those of the leader's rows,
/// for exactly the tables it changed. Checks too that no begin record or heartbeat carries
/// any. Returns the tables it carried.
async fn check_last_group(brokers: &str, prefix: &str, leader: &Path) -> Vec<String> {
    let head = leader_position(leader);
    let (b, p) = (brokers.to_owned(), prefix.to_owned());
    wait_until(Duration::from_secs(60), move || {
        let seen = commits(&b, &p);
        seen.iter()
            .any(|(c, begin)| !begin && !c.is_heartbeat() && c.last_position.0 == head)
            .then_some(())
            .ok_or(format!("no commit record at {head} yet"))
    })
    .await;
    let seen = commits(brokers, prefix);
    for (c, begin) in &seen {
        if *begin || c.is_heartbeat() {
            assert!(c.checksums.is_empty(), "{c:?}");
        }
    }
    let (last, _) = seen
        .iter()
        .rev()
        .find(|(c, begin)| !begin && !c.is_heartbeat() && c.last_position.0 == head)
        .unwrap();
    let want = leader_sums(leader);
    let changed: Vec<String> = ["customers", "everything"]
        .into_iter()
        .filter(|t| {
            last.partitions
                .iter()
                .any(|p| p.topic == table_topic(prefix, t))
        })
        .map(str::to_owned)
        .collect();
    let carried: Vec<String> = last.checksums.iter().map(|c| c.table.clone()).collect();
    assert_eq!(carried, changed, "{last:?}");
    for c in &last.checksums {
        assert_eq!(c.sum, want[&c.table], "{} at {head}: {last:?}", c.table);
    }
    carried
}

/// One leader transaction that changes a row of each table.
fn touch_both(leader: &Path, n: i64) {
    let conn = Connection::open(leader).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute_batch(&format!(
        "BEGIN; UPDATE customers SET coffee = 'ristretto {n}' WHERE id = (SELECT min(id) FROM customers);
         INSERT INTO everything(id, i, t) VALUES ({}, {n}, 'touched'); COMMIT;",
        1_000_000 + n
    ))
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_records_carry_the_leader_sums_of_the_tables_they_changed_across_restarts() {
    let mut s = Setup::new_with(1, "sums").await;
    let producer = RunningProducer::start(s.producer_config());
    wait_for_capture(&s.leader).await;
    // The snapshot: only customers has rows.
    assert_eq!(
        check_last_group(&s.brokers, &s.prefix, &s.leader).await,
        ["customers"]
    );
    s.write(7, 200).await;
    check_last_group(&s.brokers, &s.prefix, &s.leader).await;
    touch_both(&s.leader, 1);
    assert_eq!(
        check_last_group(&s.brokers, &s.prefix, &s.leader)
            .await
            .len(),
        2
    );
    // Stopped (drained, acknowledged sums stored), written meanwhile, started again.
    producer.stop().await.unwrap();
    s.write(8, 100).await;
    let producer = RunningProducer::start(s.producer_config());
    touch_both(&s.leader, 2);
    assert_eq!(
        check_last_group(&s.brokers, &s.prefix, &s.leader)
            .await
            .len(),
        2
    );
    producer.stop().await.unwrap();
    s.registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sums_continue_exactly_after_sigkill_and_verify_finds_a_hand_edit() {
    let Setup {
        dir,
        leader,
        mut expected,
        cluster: _cluster,
        brokers,
        registry,
        prefix,
    } = Setup::new_with(1, "sumkill").await;
    let mut producer = Proc::start(
        "producer",
        producer_args(&leader, &brokers, registry.url(), &prefix),
        &dir.path().join("producer.log"),
    );
    wait_for_capture(&leader).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let l = leader.clone();
    let writer = tokio::task::spawn_blocking(move || {
        write_workload_paced(&l, 13, 800, Duration::from_millis(2), &mut expected);
    });
    let mut kills = 0;
    while !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..500))).await;
        producer.assert_running();
        producer.kill9();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        producer.restart();
    }
    writer.await.unwrap();
    assert!(kills >= 3, "only {kills} kills");
    touch_both(&leader, 1);
    assert_eq!(check_last_group(&brokers, &prefix, &leader).await.len(), 2);

    // Everything acknowledged: the stored sums are the leader's.
    wait_until(Duration::from_secs(60), || changelog_pruned(&leader)).await;
    let verify = |file: &Path| {
        Command::new(binary("producer"))
            .args(["verify", "--leader"])
            .arg(file)
            .output()
            .unwrap()
    };
    let ok = verify(&leader);
    let out = String::from_utf8_lossy(&ok.stdout).to_string();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        out.contains("customers: ok sum=") && out.contains("everything: ok sum="),
        "{out}"
    );

    // A write that bypassed the triggers, made while the producer is stopped, in one
    // transaction that re-creates the trigger with the producer's own SQL.
    let status = producer.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    let conn = Connection::open(&leader).unwrap();
    let (name, sql): (String, String) = conn
        .query_row(
            "SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'everything' AND name GLOB '_barista_*_upd'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; DROP TRIGGER \"{name}\"; UPDATE everything SET t = 'behind its back' \
         WHERE id = (SELECT min(id) FROM everything); {sql}; COMMIT;"
    ))
    .unwrap();
    let bad = verify(&leader);
    let out = String::from_utf8_lossy(&bad.stdout).to_string();
    assert_eq!(bad.status.code(), Some(1), "{out}");
    assert!(out.contains("everything: MISMATCH leader-file="), "{out}");
    assert!(out.contains("customers: ok"), "{out}");
    // Bad usage.
    let missing = verify(&dir.path().join("nope.db"));
    assert_eq!(missing.status.code(), Some(2));
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_migration_the_sums_are_taken_in_the_new_shape() {
    let mut s = Setup::new_with(1, "sumshape").await;
    let producer = RunningProducer::start(s.producer_config());
    wait_for_capture(&s.leader).await;
    s.write(21, 100).await;
    check_last_group(&s.brokers, &s.prefix, &s.leader).await;
    // A dropped column changes every row's hash; the UPDATE in the migration runs with the
    // triggers down, so no change event carries it: only a recomputation sees it.
    let m = barista_producer::migrate::Migration {
        leader: s.leader.clone(),
        ddl: "ALTER TABLE everything DROP COLUMN a; \
              ALTER TABLE customers ADD COLUMN stamps INTEGER NOT NULL DEFAULT 0; \
              UPDATE customers SET stamps = 3 WHERE id = (SELECT max(id) FROM customers);"
            .into(),
        registry_url: s.registry.url().to_owned(),
        topic_prefix: s.prefix.clone(),
    };
    let outcome = barista_producer::migrate::migrate(&m).await.unwrap();
    assert!(
        matches!(outcome, barista_producer::migrate::Outcome::Applied(_)),
        "{outcome:?}"
    );
    touch_both(&s.leader, 1);
    assert_eq!(
        check_last_group(&s.brokers, &s.prefix, &s.leader)
            .await
            .len(),
        2
    );
    // And across a restart, with the marker acknowledged.
    producer.stop().await.unwrap();
    Connection::open(&s.leader)
        .unwrap()
        .execute_batch(
            "UPDATE customers SET stamps = stamps + 1 WHERE id % 3 = 0; \
             DELETE FROM everything WHERE id % 4 = 1; UPDATE everything SET t = 'after' WHERE id % 2 = 0;",
        )
        .unwrap();
    let producer = RunningProducer::start(s.producer_config());
    touch_both(&s.leader, 2);
    check_last_group(&s.brokers, &s.prefix, &s.leader).await;
    producer.stop().await.unwrap();
    s.registry.shutdown().await.unwrap();
}
