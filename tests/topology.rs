//! Tables and partitions that appear while followers run: a follower holds
//! a partition as soon as a commit group names it, and never applies a group
//! without the rows of a partition it does not hold yet.

use std::time::Duration;

use barista_producer::token::write_with_token;
use barista_schemas::contract::table_topic;
use barista_tests::*;
use rusqlite::Connection;

/// The regression from "Tables and partitions that appear": a table created
/// on the leader, the producer restarted to capture it (its snapshot and
/// later writes are published), and the followers left running. Before, both
/// followers reported themselves current at the leader's head while their
/// replicas lacked the table for good; now they follow its topic from the
/// start and end equal to the leader, the new table included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_captured_after_the_followers_started_reaches_them_without_a_restart() {
    let mut s = Setup::new_with(1, "newtable").await;
    let config = s.producer_config();
    let producer = RunningProducer::start(config.clone());
    let followers: Vec<RunningFollower> = ["r1.db", "r2.db"]
        .into_iter()
        .map(|f| RunningFollower::start(s.follower_config(f)))
        .collect();
    wait_for_capture(&s.leader).await;
    s.write(91, 20).await;
    for f in &followers {
        s.caught_up(f).await;
    }

    // A table appears on the leader and is filled while the producer runs.
    let leader = Connection::open(&s.leader).unwrap();
    leader
        .execute_batch(
            "CREATE TABLE late(id INTEGER PRIMARY KEY, v TEXT);
             INSERT INTO late VALUES (1, 'one'), (2, 'two'), (3, 'three');",
        )
        .unwrap();
    // The mock cluster does not answer CreateTopics (a real broker does, and
    // the producer creates the topic there).
    s.cluster
        .create_topic(&table_topic(&s.prefix, "late"), 3, 1)
        .unwrap();
    producer.stop().await.unwrap();
    let producer = RunningProducer::start(config);
    wait_until(Duration::from_secs(30), || {
        leader
            .query_row(
                "SELECT count(*) FROM _barista_tables WHERE name = 'late'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| e.to_string())
            .and_then(|n| (n == 1).then_some(()).ok_or("late not captured yet".into()))
    })
    .await;
    // One transaction across the new table and an existing one, then more.
    leader
        .execute_batch(
            "BEGIN;
             UPDATE late SET v = 'uno' WHERE id = 1;
             DELETE FROM late WHERE id = 2;
             INSERT INTO late VALUES (4, 'four');
             INSERT INTO customers(id, name, coffee) VALUES (90001, 'late comer', 'ristretto');
             COMMIT;",
        )
        .unwrap();
    s.write(92, 20).await;

    for f in &followers {
        s.caught_up(f).await;
        let rows: Vec<(i64, String)> = Connection::open(&f.replica)
            .unwrap()
            .prepare("SELECT id, v FROM late ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [(1, "uno".into()), (3, "three".into()), (4, "four".into())]
        );
        let late = f
            .status()
            .partitions
            .keys()
            .filter(|k| k.contains(".late/"))
            .count();
        assert!(late > 0, "the follower holds the new topic's partitions");
    }
    for f in followers {
        f.stop().await.unwrap();
    }
    producer.stop().await.unwrap();
}

/// Issue "Tables and partitions that appear", (a): with everything running
/// and nothing restarted, a table is created and written in one transaction
/// with an existing table, then a second table with a composite key appears.
/// Both replicas end equal to the leader, and a read of the new table at the
/// creating transaction's token sees its rows: the new table's snapshot and
/// that transaction's other writes arrive as one commit group.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tables_created_while_everything_runs_reach_the_followers_without_restarts() {
    let mut s = Setup::new_with(1, "live").await;
    let producer = RunningProducer::start(s.producer_config());
    let followers: Vec<(RunningFollower, std::net::SocketAddr)> = ["r1.db", "r2.db"]
        .into_iter()
        .map(|f| RunningFollower::serving(s.follower_config(f)))
        .collect();
    wait_for_capture(&s.leader).await;
    s.write(93, 20).await;
    for (f, _) in &followers {
        s.caught_up(f).await;
    }
    // The mock cluster does not answer CreateTopics: the topics exist first,
    // as an operator may create them (a real broker lets the producer).
    for t in ["late", "pairs"] {
        s.cluster
            .create_topic(&table_topic(&s.prefix, t), 3, 1)
            .unwrap();
    }

    let mut leader = Connection::open(&s.leader).unwrap();
    let ((), token) = write_with_token(&mut leader, |tx| {
        tx.execute_batch(
            "CREATE TABLE late(id INTEGER PRIMARY KEY, v TEXT);
             INSERT INTO late VALUES (1, 'one'), (2, 'two');
             UPDATE customers SET coffee = 'flat white' WHERE id = (SELECT min(id) FROM customers);",
        )
    })
    .unwrap();
    leader
        .execute_batch(
            "CREATE TABLE pairs(a TEXT, b INTEGER, v, PRIMARY KEY(a, b));
             INSERT INTO pairs VALUES ('x', 1, 1.5), ('x', 2, x'00ff'), ('y', 1, NULL);",
        )
        .unwrap();
    s.write(94, 10).await;
    leader
        .execute_batch("UPDATE late SET v = 'uno' WHERE id = 1; DELETE FROM pairs WHERE a = 'y';")
        .unwrap();

    let http = reqwest::Client::new();
    for (f, addr) in &followers {
        let url =
            format!("http://{addr}/tables/late/row?id=2&min_position={token}&timeout_ms=20000");
        let r: serde_json::Value = http.get(url).send().await.unwrap().json().await.unwrap();
        assert_eq!(
            r["row"]["v"], "two",
            "read at the creating transaction's token: {r}"
        );
        s.caught_up(f).await;
    }
    for (f, _) in followers {
        f.stop().await.unwrap();
    }
    producer.stop().await.unwrap();
}

/// (d) `DROP TABLE` and `ALTER TABLE … RENAME` on the leader while everything
/// runs: followers drop the table in the transaction that applies the drop's
/// position (reads of it answer 404), and a renamed table is a drop of the
/// old name plus a new table with a snapshot of its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_and_renamed_tables_are_dropped_and_renamed_on_every_follower() {
    let mut s = Setup::new_with(1, "drop").await;
    for t in ["doomed", "moved", "renamed"] {
        s.cluster
            .create_topic(&table_topic(&s.prefix, t), 3, 1)
            .unwrap();
    }
    let producer = RunningProducer::start(s.producer_config());
    let (follower, addr) = RunningFollower::serving(s.follower_config("r.db"));
    wait_for_capture(&s.leader).await;
    let leader = Connection::open(&s.leader).unwrap();
    leader
        .execute_batch(
            "CREATE TABLE doomed(id INTEGER PRIMARY KEY, v); INSERT INTO doomed VALUES (1, 'x');
             CREATE TABLE moved(id INTEGER PRIMARY KEY, v); INSERT INTO moved VALUES (1, 'a'), (2, 'b');",
        )
        .unwrap();
    s.write(95, 10).await;
    s.caught_up(&follower).await;
    let http = reqwest::Client::new();
    let row = |table: &str| format!("http://{addr}/tables/{table}/row?id=1");
    assert_eq!(http.get(row("doomed")).send().await.unwrap().status(), 200);

    // In one leader transaction: a write to an existing table, the drop.
    leader
        .execute_batch(
            "BEGIN; UPDATE doomed SET v = 'last words' WHERE id = 1;
             INSERT INTO customers(id, name, coffee) VALUES (90002, 'mourner', 'black'); DROP TABLE doomed; COMMIT;
             ALTER TABLE moved RENAME TO renamed; UPDATE renamed SET v = 'c' WHERE id = 2;",
        )
        .unwrap();
    s.write(96, 10).await;
    s.caught_up(&follower).await;
    let tables = dump(&follower.replica);
    assert!(
        !tables.contains_key("doomed") && !tables.contains_key("moved"),
        "{:?}",
        tables.keys()
    );
    assert_eq!(http.get(row("doomed")).send().await.unwrap().status(), 404);
    let r: serde_json::Value = http
        .get(row("renamed"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["row"]["v"], "a", "{r}");

    // A table created again under a dropped name starts from its own rows.
    leader
        .execute_batch(
            "CREATE TABLE doomed(id INTEGER PRIMARY KEY, w); INSERT INTO doomed VALUES (2, 'new');",
        )
        .unwrap();
    s.caught_up(&follower).await;
    follower.stop().await.unwrap();
    producer.stop().await.unwrap();
}
