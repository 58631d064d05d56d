//! The real binaries against a real, separate Kafka-compatible broker
//! process (`nisshi`), restarted mid-stream on its SQLite storage.
//!
//! The broker binary comes from `BARISTA_NISSHI`, else
//! `$HOME/.cache/barista/bin/nisshi-0.8.1` (`.ci/install-nisshi` builds it
//! there). Set `BARISTA_SKIP_REAL_BROKER=1` to skip these tests; they say so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use barista_schemas::contract::{commits_topic, table_topic};
use barista_tests::process::{free_port, Proc};
use barista_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::crash::{consumer_args, producer_args, TABLES};

/// The broker binary, or None when the environment says to skip.
pub(crate) fn nisshi() -> Option<PathBuf> {
    if std::env::var_os("BARISTA_SKIP_REAL_BROKER").is_some_and(|v| !v.is_empty() && v != "0") {
        eprintln!("SKIPPED: real-broker test (BARISTA_SKIP_REAL_BROKER is set)");
        return None;
    }
    let path = std::env::var_os("BARISTA_NISSHI")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/barista/bin/nisshi-0.8.1")
        });
    assert!(
        path.exists(),
        "the nisshi broker is not at {}: run `bash .ci/install-nisshi` (once; 12 to 35 minutes), \
         point BARISTA_NISSHI at a nisshi binary, or set BARISTA_SKIP_REAL_BROKER=1 to skip",
        path.display()
    );
    Some(path)
}

/// A nisshi broker on a free loopback port, storing its log in SQLite in
/// `dir` so that a restart keeps every record.
pub(crate) struct Broker {
    proc: Proc,
    pub(crate) addr: String,
}

impl Broker {
    pub(crate) fn start(bin: PathBuf, dir: &Path) -> Broker {
        Broker::start_on(bin, dir, "sqlite://broker.db")
    }

    /// On the storage engine `storage` (`sqlite://broker.db` in `dir`, `memory://nisshi/`),
    /// logging warnings only: at `info` nisshi logs every field of every response (gigabytes
    /// a minute under a backlog, and most of its CPU: a follower then reads a few changes a
    /// second from it).
    pub(crate) fn start_on(bin: PathBuf, dir: &Path, storage: &str) -> Broker {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let proc = Proc::start_program_with_env(
            bin,
            [
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                storage,
                "--group-initial-rebalance-delay",
                "0s",
            ],
            &[("RUST_LOG", "warn")],
            &dir.join("broker.log"),
            Some(dir),
        );
        let mut b = Broker {
            proc,
            addr: format!("127.0.0.1:{port}"),
        };
        b.wait_ready();
        b
    }

    /// Until it answers a metadata request.
    fn wait_ready(&mut self) {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .create()
            .unwrap();
        wait_until_blocking(Duration::from_secs(30), || {
            self.proc.assert_running();
            c.fetch_metadata(None, Duration::from_secs(1))
                .map(|_| ())
                .map_err(|e| format!("broker not ready: {e}"))
        });
    }

    /// Stops it (SIGTERM) and starts it again on the same port and storage.
    pub(crate) fn restart(&mut self) {
        let status = self.proc.terminate(Duration::from_secs(20));
        eprintln!("broker stopped ({status}); restarting");
        self.proc.restart();
        self.wait_ready();
    }
}

pub(crate) fn topic_exists(brokers: &str, topic: &str) -> Result<(), String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| e.to_string())?;
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    md.topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .then_some(())
        .ok_or(format!("{topic} not created yet"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binaries_on_a_real_broker_survive_its_restart_without_loss() {
    let Some(bin) = nisshi() else { return };
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(bin, dir.path());
    let brokers = broker.addr.clone();
    let registry = start_registry(dir.path()).await;
    let leader = dir.path().join("leader.db");
    let mut expected = Expected::new();
    seed(&leader, &mut expected);
    let prefix = unique("real");

    // The producer creates its topics on a real broker.
    let mut producer = Proc::start(
        "producer",
        producer_args(&leader, &brokers, registry.url(), &prefix),
        &dir.path().join("producer.log"),
    );
    wait_for_capture(&leader).await;
    let tables = TABLES.iter().map(|t| table_topic(&prefix, t));
    for topic in tables.chain([commits_topic(&prefix)]) {
        wait_until(Duration::from_secs(60), || {
            producer.assert_running();
            topic_exists(&brokers, &topic)
        })
        .await;
    }
    let (replicas, mut consumers) =
        crate::crash::start_followers(dir.path(), 2, &brokers, registry.url(), &prefix);

    // A workload of several seconds; the broker restarts early in it. (nisshi
    // on SQLite storage answers a fetch in tens of milliseconds: the workload
    // is sized for it.)
    let start = leader_position(&leader);
    let l = leader.clone();
    let writer = tokio::task::spawn_blocking(move || {
        write_workload_paced(&l, 51, 600, Duration::from_millis(5), &mut expected);
        expected
    });
    // Early in it: about a tenth of its changes committed (1 to 5 per transaction).
    wait_until(Duration::from_secs(30), || {
        let at = leader_position(&leader);
        (at >= start + 180)
            .then_some(())
            .ok_or(format!("the workload wrote up to {at} from {start}"))
    })
    .await;
    assert!(
        !writer.is_finished(),
        "the writer finished before the restart"
    );
    tokio::task::block_in_place(|| broker.restart());
    eprintln!(
        "broker back; the writer {}",
        if writer.is_finished() {
            "finished meanwhile"
        } else {
            "is still writing"
        }
    );
    let exp = writer.await.unwrap();

    for (r, c) in replicas.iter().zip(consumers.iter_mut()) {
        let start = std::time::Instant::now();
        wait_until(Duration::from_secs(240), || {
            producer.assert_running();
            c.assert_running();
            same_rows(&leader, r).map_err(|e| {
                if start.elapsed() > Duration::from_secs(230) {
                    format!("{e}\n{}\n{}", c.log_tail(30), producer.log_tail(30))
                } else {
                    e
                }
            })
        })
        .await;
    }
    // Kafka holds every change, in order per key, none missing.
    for t in TABLES {
        check_events(&brokers, registry.url(), &prefix, t, &exp).await;
    }
    for c in &mut consumers {
        let s = c.terminate(Duration::from_secs(30));
        assert!(s.success(), "consumer on SIGTERM: {s}");
    }
    let s = producer.terminate(Duration::from_secs(30));
    assert!(s.success(), "producer on SIGTERM: {s}");
    registry.shutdown().await.unwrap();
}

/// Issue "Tables and partitions that appear", on the real binaries and a real
/// broker: (a) a table created and written in one transaction with an
/// existing table, then a table with a composite key, with everything
/// running; (b) a follower started only after those tables appeared; (e) a
/// table created while the producer is down, captured when it starts again,
/// with the followers left running; (d) a table dropped and one renamed.
/// Every replica ends equal to the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binaries_on_a_real_broker_follow_tables_that_appear() {
    let Some(bin) = nisshi() else { return };
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(bin, dir.path());
    let brokers = broker.addr.clone();
    let registry = start_registry(dir.path()).await;
    let leader = dir.path().join("leader.db");
    let mut expected = Expected::new();
    seed(&leader, &mut expected);
    let prefix = unique("appear");
    let mut producer = Proc::start(
        "producer",
        producer_args(&leader, &brokers, registry.url(), &prefix),
        &dir.path().join("producer.log"),
    );
    wait_for_capture(&leader).await;
    let follower = |i: usize| {
        Proc::start(
            "consumer",
            consumer_args(
                &dir.path().join(format!("replica-{i}.db")),
                &format!("follower-{i}"),
                &brokers,
                registry.url(),
                &prefix,
            ),
            &dir.path().join(format!("consumer-{i}.log")),
        )
    };
    let mut consumers = vec![follower(1)];
    let l = leader.clone();
    tokio::task::spawn_blocking(move || write_workload(&l, 61, 40, &mut expected))
        .await
        .unwrap();

    // (a) With everything running.
    let app = rusqlite::Connection::open(&leader).unwrap();
    app.execute_batch(
        "BEGIN;
         CREATE TABLE late(id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO late VALUES (1, 'one'), (2, 'two'), (3, 'three');
         UPDATE customers SET coffee = 'cortado' WHERE id = (SELECT min(id) FROM customers);
         COMMIT;
         CREATE TABLE pairs(a TEXT, b INTEGER, v, PRIMARY KEY(a, b));
         INSERT INTO pairs VALUES ('x', 1, 1.5), ('x', 2, x'00ff'), ('y', 1, NULL);",
    )
    .unwrap();
    // (b) A follower that starts after the tables appeared.
    consumers.push(follower(2));
    app.execute_batch("UPDATE late SET v = 'uno' WHERE id = 1; DELETE FROM pairs WHERE a = 'y';")
        .unwrap();

    // (e) A table created while the producer is down; the followers run on.
    let s = producer.terminate(Duration::from_secs(30));
    assert!(s.success(), "producer on SIGTERM: {s}");
    app.execute_batch(
        "CREATE TABLE while_down(id INTEGER PRIMARY KEY, v);
         INSERT INTO while_down VALUES (1, 'a'), (2, 'b');",
    )
    .unwrap();
    producer.restart();
    app.execute_batch(
        "UPDATE while_down SET v = 'c' WHERE id = 2; INSERT INTO late VALUES (4, 'four');",
    )
    .unwrap();
    // (d) A table dropped, and one renamed, while everything runs.
    app.execute_batch("DROP TABLE pairs; ALTER TABLE while_down RENAME TO moved_on;")
        .unwrap();

    for (i, c) in consumers.iter_mut().enumerate() {
        let replica = dir.path().join(format!("replica-{}.db", i + 1));
        let start = std::time::Instant::now();
        wait_until(Duration::from_secs(120), || {
            producer.assert_running();
            c.assert_running();
            same_rows(&leader, &replica).map_err(|e| {
                if start.elapsed() > Duration::from_secs(110) {
                    format!("{e}\n{}\n{}", c.log_tail(30), producer.log_tail(30))
                } else {
                    e
                }
            })
        })
        .await;
        let tables = dump(&replica);
        for t in ["late", "moved_on"] {
            assert!(tables.contains_key(t), "replica {} lacks {t}", i + 1);
        }
        for t in ["pairs", "while_down"] {
            assert!(!tables.contains_key(t), "replica {} still has {t}", i + 1);
        }
    }
    for c in &mut consumers {
        let s = c.terminate(Duration::from_secs(30));
        assert!(s.success(), "consumer on SIGTERM: {s}");
    }
    let s = producer.terminate(Duration::from_secs(30));
    assert!(s.success(), "producer on SIGTERM: {s}");
    drop(broker);
    registry.shutdown().await.unwrap();
}

/// `--retention-ms` reaches the topics the producer creates on a real
/// broker: every table topic and the commits topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_producer_creates_its_topics_with_the_retention_it_was_given() {
    let Some(bin) = nisshi() else { return };
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(bin, dir.path());
    let brokers = broker.addr.clone();
    let registry = start_registry(dir.path()).await;
    let leader = dir.path().join("leader.db");
    seed(&leader, &mut Expected::new());
    let prefix = unique("retention");
    let mut args = producer_args(&leader, &brokers, registry.url(), &prefix);
    args.extend(["--retention-ms".into(), "3600000".into()]);
    let mut producer = Proc::start("producer", args, &dir.path().join("producer.log"));
    let topics: Vec<String> = TABLES
        .iter()
        .map(|t| table_topic(&prefix, t))
        .chain([commits_topic(&prefix)])
        .collect();
    for topic in &topics {
        wait_until(Duration::from_secs(60), || {
            producer.assert_running();
            topic_exists(&brokers, topic)
        })
        .await;
    }
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
    let specs: Vec<rdkafka::admin::ResourceSpecifier> = topics
        .iter()
        .map(|t| rdkafka::admin::ResourceSpecifier::Topic(t))
        .collect();
    let described = admin
        .describe_configs(&specs, &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();
    for (topic, r) in topics.iter().zip(described) {
        let resource = r.unwrap_or_else(|e| panic!("describing {topic}: {e}"));
        let retention = resource.get("retention.ms").and_then(|e| e.value.clone());
        assert_eq!(retention.as_deref(), Some("3600000"), "{topic}");
    }
    assert!(producer.terminate(Duration::from_secs(30)).success());
}
