//! The workload every mock-cluster test shares: a seeded leader with every
//! storage class, a writer that is not the producer, what it wrote per key,
//! checks on the events in Kafka, and [`Setup`] (leader, mock cluster with
//! the prefix's topics, registry) with the producer and follower configs.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use barista_consumer::FollowerConfig;
use barista_registry::RunningRegistry;
use barista_schemas::envelope::{decode_envelope, RowShape};
use barista_schemas::{Op, Position, SqlValue};
use rand::{Rng, SeedableRng};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rusqlite::{params, Connection};
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;

use crate::*;

pub const SCHEMA: &str = "
    CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, coffee TEXT);
    CREATE TABLE everything(id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB, a);";

/// What happened to one key, in order: (op, row after as stored).
pub type KeyHistory = Vec<(Op, Option<Vec<SqlValue>>)>;
/// What the writer did, per (table, key).
pub type Expected = BTreeMap<(String, i64), KeyHistory>;

fn any_value(rng: &mut impl Rng) -> SqlValue {
    match rng.random_range(0..9) {
        0 => SqlValue::Null,
        1 => SqlValue::Integer(i64::MAX),
        2 => SqlValue::Integer(i64::MIN),
        3 => SqlValue::Integer(rng.random()),
        4 => SqlValue::Real(rng.random::<f64>() * 1e6 - 5e5),
        5 => SqlValue::Text("héllo ☕ 世界 \u{1F600}".into()),
        6 => SqlValue::Text(format!("t{}", rng.random::<u16>())),
        7 => SqlValue::Blob((0..rng.random_range(0..40)).map(|_| rng.random()).collect()),
        _ => SqlValue::Blob(vec![0, 255, 0]),
    }
}

pub fn stored(conn: &Connection, table: &str, id: i64) -> Vec<SqlValue> {
    let mut stmt = conn
        .prepare_cached(&format!("SELECT * FROM {table} WHERE id = ?1"))
        .unwrap();
    let n = stmt.column_count();
    stmt.query_row([id], |r| {
        (0..n)
            .map(|i| r.get_ref(i).map(SqlValue::from))
            .collect::<Result<Vec<_>, _>>()
    })
    .unwrap()
}

/// Seeds rows before capture starts (they must arrive as op = r).
pub fn seed(leader: &Path, expected: &mut Expected) {
    let conn = Connection::open(leader).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    for id in 1..=20 {
        conn.execute(
            "INSERT INTO customers VALUES (?1, ?2, 'espresso')",
            params![id, format!("c{id}")],
        )
        .unwrap();
        expected
            .entry(("customers".into(), id))
            .or_default()
            .push((Op::Read, Some(stored(&conn, "customers", id))));
    }
}

/// Waits until the producer has installed capture (its triggers exist), so
/// the writes that follow are streamed rather than folded into the snapshot.
pub async fn wait_for_capture(leader: &Path) {
    let l = leader.to_owned();
    wait_until(Duration::from_secs(30), move || {
        let n: i64 = Connection::open(&l)
            .and_then(|c| c.query_row("SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND name LIKE '_barista_%'", [], |r| r.get(0)))
            .unwrap_or(0);
        (n >= 6).then_some(()).ok_or(format!("{n} capture triggers"))
    })
    .await;
}

/// A random workload from a separate connection: inserts, updates and
/// deletes of single rows inside multi-row transactions.
pub fn write_workload(leader: &Path, seed: u64, txns: usize, expected: &mut Expected) {
    write_workload_paced(leader, seed, txns, Duration::ZERO, expected)
}

/// [`write_workload`] with a pause after each transaction, so that it spans
/// the faults a test injects meanwhile.
pub fn write_workload_paced(
    leader: &Path,
    seed: u64,
    txns: usize,
    pace: Duration,
    expected: &mut Expected,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut conn = Connection::open(leader).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut live: BTreeMap<&str, HashSet<i64>> = BTreeMap::new();
    for t in ["customers", "everything"] {
        let ids: Vec<i64> = conn
            .prepare(&format!("SELECT id FROM {t}"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        live.entry(t).or_default().extend(ids);
    }
    for _ in 0..txns {
        let tx = conn.transaction().unwrap();
        for _ in 0..rng.random_range(1..6) {
            let table = if rng.random_bool(0.5) {
                "customers"
            } else {
                "everything"
            };
            let set = live.entry(table).or_default();
            let id = rng.random_range(1..60i64);
            let op = if set.contains(&id) {
                if rng.random_bool(0.7) {
                    Op::Update
                } else {
                    Op::Delete
                }
            } else {
                Op::Create
            };
            match (table, op) {
                ("customers", Op::Create) => {
                    tx.execute(
                        "INSERT INTO customers VALUES (?1, ?2, ?3)",
                        params![id, format!("n{id}"), any_value(&mut rng)],
                    )
                    .unwrap();
                }
                ("customers", Op::Update) => {
                    tx.execute(
                        "UPDATE customers SET coffee = ?2 WHERE id = ?1",
                        params![id, any_value(&mut rng)],
                    )
                    .unwrap();
                }
                (_, Op::Create) => {
                    let v: Vec<SqlValue> = (0..5).map(|_| any_value(&mut rng)).collect();
                    tx.execute(
                        "INSERT INTO everything VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![id, v[0], v[1], v[2], v[3], v[4]],
                    )
                    .unwrap();
                }
                (_, Op::Update) => {
                    let v: Vec<SqlValue> = (0..5).map(|_| any_value(&mut rng)).collect();
                    tx.execute("UPDATE everything SET i = ?2, r = ?3, t = ?4, b = ?5, a = ?6 WHERE id = ?1", params![id, v[0], v[1], v[2], v[3], v[4]]).unwrap();
                }
                (_, _) => {
                    tx.execute(&format!("DELETE FROM {table} WHERE id = ?1"), [id])
                        .unwrap();
                }
            }
            let after = (op != Op::Delete).then(|| stored(&tx, table, id));
            if op == Op::Delete {
                set.remove(&id);
            } else {
                set.insert(id);
            }
            expected
                .entry((table.into(), id))
                .or_default()
                .push((op, after));
        }
        tx.commit().unwrap();
        if !pace.is_zero() {
            std::thread::sleep(pace);
        }
    }
}

/// Ok once Kafka acknowledged every change: the producer pruned the
/// changelog down to its newest row (kept so positions are never reused).
pub fn changelog_pruned(leader: &Path) -> Result<(), String> {
    let n: i64 = Connection::open(leader)
        .and_then(|c| c.query_row("SELECT count(*) FROM _barista_changelog", [], |r| r.get(0)))
        .map_err(|e| e.to_string())?;
    (n == 1)
        .then_some(())
        .ok_or(format!("{n} changelog rows not yet acknowledged"))
}

/// Reads a table's topic back through the registry and checks it against
/// what the writer did: per key, the same ops and after-images in order;
/// per partition, positions strictly increasing once Kafka-level duplicates
/// (same position again) are dropped.
pub async fn check_events(
    brokers: &str,
    registry: &str,
    prefix: &str,
    table: &str,
    expected: &Expected,
) {
    let topic = format!("{prefix}.{table}");
    let msgs = read_topic(brokers, &topic);
    let decoder = AvroDecoder::new(SrSettings::new(registry.to_owned()));
    let mut per_key: BTreeMap<i64, KeyHistory> = BTreeMap::new();
    let mut last_pos: BTreeMap<i32, Position> = BTreeMap::new();
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    for (partition, offset, _key, payload, _) in msgs {
        let Some(payload) = payload else { continue }; // tombstone
        let r = decoder
            .decode_with_schema(Some(&payload))
            .await
            .unwrap()
            .unwrap();
        let shape = Arc::new(RowShape::from_value_schema(&r.schema.raw).unwrap());
        let ev = decode_envelope(shape, &r.value).unwrap();
        if !seen.insert(ev.source.position) {
            duplicates += 1;
            continue;
        }
        let prev = last_pos
            .insert(partition, ev.source.position)
            .unwrap_or_default();
        assert!(
            ev.source.position > prev,
            "{topic}/{partition} offset {offset}: position {} after {prev}",
            ev.source.position
        );
        let key_row = ev.after.as_ref().or(ev.before.as_ref()).unwrap();
        let SqlValue::Integer(id) = key_row[0] else {
            panic!("key {:?}", key_row[0])
        };
        per_key.entry(id).or_default().push((ev.op, ev.after));
    }
    let want: BTreeMap<i64, Vec<_>> = expected
        .iter()
        .filter(|((t, _), _)| t == table)
        .map(|((_, id), v)| (*id, v.clone()))
        .collect();
    for (id, w) in &want {
        let got = per_key.get(id).cloned().unwrap_or_default();
        assert_eq!(
            &got, w,
            "{table} key {id}: events in Kafka differ from what the writer did"
        );
    }
    assert_eq!(
        per_key.len(),
        want.len(),
        "{table}: keys in Kafka that the writer never touched"
    );
    eprintln!(
        "{table}: {} keys checked, {duplicates} Kafka-level duplicates dropped by position",
        want.len()
    );
}

/// A leader with seeded rows, the mock cluster with the prefix's topics and
/// the embedded registry: everything a pipeline test needs but the processes.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub leader: PathBuf,
    pub expected: Expected,
    pub cluster: MockCluster<'static, DefaultProducerContext>,
    pub brokers: String,
    pub registry: RunningRegistry,
    pub prefix: String,
}

impl Setup {
    /// Seeds the leader and creates the prefix's topics on a mock cluster of
    /// `brokers` brokers.
    pub async fn new_with(brokers: i32, name: &str) -> Setup {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let leader = dir.path().join("leader.db");
        let mut expected = Expected::new();
        seed(&leader, &mut expected);
        let cluster = MockCluster::new(brokers).unwrap();
        let brokers = cluster.bootstrap_servers();
        let registry = start_registry(dir.path()).await;
        let prefix = unique(name);
        create_topics(&cluster, &prefix, &["customers", "everything"]);
        Setup {
            dir,
            leader,
            expected,
            cluster,
            brokers,
            registry,
            prefix,
        }
    }
}

impl Setup {
    pub fn producer_config(&self) -> barista_producer::ProducerConfig {
        producer_config(
            &self.leader,
            &self.brokers,
            self.registry.url(),
            &self.prefix,
        )
    }

    pub fn follower_config(&self, file: &str) -> FollowerConfig {
        follower_config(
            &self.dir.path().join(file),
            &unique("f"),
            &self.brokers,
            self.registry.url(),
            &self.prefix,
        )
    }

    /// Runs the random workload on a blocking thread.
    pub async fn write(&mut self, seed: u64, txns: usize) {
        let (l, mut exp) = (self.leader.clone(), self.expected.clone());
        self.expected = tokio::task::spawn_blocking(move || {
            write_workload(&l, seed, txns, &mut exp);
            exp
        })
        .await
        .unwrap();
    }

    /// Waits until the replica equals the leader and the follower reports
    /// no lag in any unit.
    pub async fn caught_up(&self, f: &RunningFollower) {
        self.caught_up_but_offsets(f).await;
        wait_until(Duration::from_secs(30), || {
            let s = f.status();
            (s.offset_lag == 0)
                .then_some(())
                .ok_or(format!("offsets behind: {s:?}"))
        })
        .await;
    }

    /// Waits until the replica equals the leader and the follower reports
    /// no lag in positions or seconds. Offset lag is left out: a partition
    /// blocked by a poison change keeps its offset at the poison message.
    pub async fn caught_up_but_offsets(&self, f: &RunningFollower) {
        let (l, r) = (self.leader.clone(), f.replica.clone());
        wait_until(Duration::from_secs(90), || {
            if let Some(h) = f.status().halted {
                panic!("follower halted: {h}");
            }
            same_rows(&l, &r)
        })
        .await;
        let want = leader_position(&self.leader);
        wait_until(Duration::from_secs(30), || {
            let s = f.status();
            (s.applied_position.0 == want && s.position_lag == 0 && s.seconds_lag == Some(0.0))
                .then_some(())
                .ok_or(format!("leader at {want}; follower {s:?}"))
        })
        .await;
    }
}
