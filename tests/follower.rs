//! The follower under trouble: duplicates stored by the broker, poison
//! messages, an operator pause (lag in three units), and `/metrics` scraped
//! over real HTTP and parsed as Prometheus text.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use barista_schemas::contract::{
    dead_letter_topic, table_topic, HEADER_DLQ_ERROR, HEADER_DLQ_FOLLOWER, HEADER_DLQ_OFFSET,
    HEADER_DLQ_PARTITION, HEADER_DLQ_SCHEMA_ID, HEADER_DLQ_TOPIC, HEADER_POSITION,
    HEADER_TOMBSTONE,
};
use barista_tests::process::Proc;
use barista_tests::*;
use rdkafka::mocking::MockCluster;

const TABLES: [&str; 2] = ["customers", "everything"];

/// Every data message of the prefix's table topics that carries a change
/// (tombstones left out), as position → how many times it is stored.
fn stored_changes(brokers: &str, prefix: &str) -> BTreeMap<i64, usize> {
    let mut copies = BTreeMap::new();
    for t in TABLES {
        for (p, o, _, payload, headers) in read_topic(brokers, &table_topic(prefix, t)) {
            if payload.is_none() || headers.iter().any(|(k, _)| k == HEADER_TOMBSTONE) {
                continue;
            }
            let pos: i64 = headers
                .iter()
                .find(|(k, _)| k == HEADER_POSITION)
                .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
                .unwrap_or_else(|| panic!("{t}/{p}@{o} has no position header"));
            *copies.entry(pos).or_insert(0) += 1;
        }
    }
    copies
}

/// The mock cluster keeps no idempotence state for a non-transactional
/// producer, so a Produce request whose response arrives after
/// `socket.timeout.ms` is retried and appended again: the topic really holds
/// changes twice (and later changes between the copies). The follower must
/// apply each position once and still equal the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_stored_twice_by_the_broker_are_applied_once() {
    let mut s = Setup::new_with(1, "dup").await;
    let mut pc = s.producer_config();
    pc.kafka_options = vec![("socket.timeout.ms".into(), "400".into())];
    let producer = RunningProducer::start(pc);
    let follower = RunningFollower::start(s.follower_config("r.db"));
    wait_for_capture(&s.leader).await;
    s.write(31, 20).await;
    s.caught_up(&follower).await;

    // Responses now come after the producer gave up on them: every request
    // in this window is appended, timed out, and sent (appended) again.
    s.cluster
        .broker_round_trip_time(-1, Duration::from_millis(1000))
        .unwrap();
    s.write(32, 60).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // the fault window itself, not a wait for a condition
    s.cluster
        .broker_round_trip_time(-1, Duration::from_millis(0))
        .unwrap();
    s.write(33, 20).await;
    s.caught_up(&follower).await;

    let copies = stored_changes(&s.brokers, &s.prefix);
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    eprintln!(
        "{} distinct changes, {duplicates} stored more than once",
        copies.len()
    );
    assert!(
        duplicates > 0,
        "the fault did not make the broker store any change twice; the test proves nothing"
    );
    // Every change in Kafka was applied exactly once, every extra copy was
    // counted as a skipped duplicate, and the replica is the leader.
    let st = follower.status();
    assert_eq!(st.changes_applied, copies.len() as u64, "changes applied");
    assert_eq!(st.duplicates, duplicates as u64, "duplicates skipped");
    assert_eq!(st.dead_letters, 0);
    same_rows(&s.leader, &follower.replica).unwrap();

    // A second follower that reads the whole history, duplicates and all,
    // from scratch ends in the same place.
    let fresh = RunningFollower::start(s.follower_config("r2.db"));
    s.caught_up(&fresh).await;
    assert_eq!(fresh.status().changes_applied, copies.len() as u64);
    assert_eq!(fresh.status().duplicates, duplicates as u64);

    fresh.stop().await.unwrap();
    follower.stop().await.unwrap();
    producer.stop().await.unwrap();
}

/// Poison written to a table topic by someone other than the producer: bytes
/// that are not the Confluent wire format, and a well-framed message whose
/// schema id the registry does not know. Neither carries a position, so
/// neither is a leader change: both go to the dead-letter topic with where
/// they came from, and the follower keeps applying. A poison message that
/// does claim a position is dead-lettered too, and its partition is marked
/// blocked with its offset kept, so the message is never silently skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_goes_to_the_dead_letter_topic_and_the_follower_keeps_serving() {
    let mut s = Setup::new_with(1, "poison").await;
    let producer = RunningProducer::start(s.producer_config());
    let fc = s.follower_config("r.db");
    let follower_id = fc.follower_id.clone();
    let (follower, addr) = RunningFollower::serving(fc);
    wait_for_capture(&s.leader).await;
    s.write(41, 20).await;
    s.caught_up(&follower).await;

    let topic = table_topic(&s.prefix, "customers");
    let corrupt: &[u8] = b"\xffthis is not avro";
    let unknown_id: u32 = 0x7fff_0001;
    let mut framed = vec![0u8];
    framed.extend_from_slice(&unknown_id.to_be_bytes());
    framed.extend_from_slice(&[2, 4, 6, 8]);
    let o1 = produce_raw(
        &s.brokers,
        &topic,
        0,
        Some(b"k1"),
        Some(corrupt),
        &[("origin", b"test")],
    )
    .await;
    let o2 = produce_raw(&s.brokers, &topic, 1, Some(b"k2"), Some(&framed), &[]).await;
    // The leader goes on writing; the follower must go on applying.
    s.write(42, 40).await;
    s.caught_up(&follower).await;
    wait_until(Duration::from_secs(30), || {
        let n = follower.status().dead_letters;
        (n == 2).then_some(()).ok_or(format!("{n} dead letters"))
    })
    .await;
    let st = follower.status();
    assert!(
        st.partitions.values().all(|p| p.blocked.is_none()),
        "a message that is not a change blocks nothing: {st:?}"
    );
    let ready = reqwest::get(format!("http://{addr}/ready")).await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());

    let dlq = read_topic(&s.brokers, &dead_letter_topic(&s.prefix));
    assert_eq!(dlq.len(), 2, "dead-letter topic: {dlq:?}");
    let headers = |m: &RawMessage| -> HashMap<String, String> {
        m.4.iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    };
    let by_offset: HashMap<(String, String), &RawMessage> = dlq
        .iter()
        .map(|m| {
            let h = headers(m);
            (
                (
                    h[HEADER_DLQ_PARTITION].clone(),
                    h[HEADER_DLQ_OFFSET].clone(),
                ),
                m,
            )
        })
        .collect();
    let m1 = by_offset[&("0".to_owned(), o1.to_string())];
    let h1 = headers(m1);
    assert_eq!(m1.3.as_deref(), Some(corrupt), "payload kept as is");
    assert_eq!(m1.2.as_deref(), Some(&b"k1"[..]), "key kept");
    assert_eq!(h1[HEADER_DLQ_TOPIC], topic);
    assert_eq!(h1[HEADER_DLQ_SCHEMA_ID], "", "no frame, no schema id");
    assert_eq!(h1[HEADER_DLQ_FOLLOWER], follower_id);
    assert_eq!(h1["origin"], "test", "original headers kept");
    assert!(
        h1[HEADER_DLQ_ERROR].contains("Confluent"),
        "error says why: {}",
        h1[HEADER_DLQ_ERROR]
    );
    let m2 = by_offset[&("1".to_owned(), o2.to_string())];
    let h2 = headers(m2);
    assert_eq!(m2.3.as_deref(), Some(&framed[..]));
    assert_eq!(h2[HEADER_DLQ_TOPIC], topic);
    assert_eq!(h2[HEADER_DLQ_SCHEMA_ID], unknown_id.to_string());
    assert!(!h2[HEADER_DLQ_ERROR].is_empty());

    // A poison message that claims to be a leader change.
    let claimed = 1_000_000_000i64;
    let o3 = produce_raw(
        &s.brokers,
        &topic,
        2,
        Some(b"k3"),
        Some(corrupt),
        &[(HEADER_POSITION, claimed.to_string().as_bytes())],
    )
    .await;
    s.write(43, 20).await;
    // Its position is not in the leader's chain, so the changes after it
    // still apply; but the partition's offset stays at the poison message.
    s.caught_up_but_offsets(&follower).await;
    let key = format!("{topic}/2");
    wait_until(Duration::from_secs(30), || {
        let st = follower.status();
        let part = &st.partitions[&key];
        match (&part.blocked, st.dead_letters) {
            (Some(why), 3)
                if why.contains(&format!("offset {o3}"))
                    && part.next_offset == o3
                    && part.offset_lag == part.high_watermark - o3
                    && part.high_watermark > o3 =>
            {
                Ok(())
            }
            _ => Err(format!("{st:?}")),
        }
    })
    .await;
    // The replica keeps its offset at the poison message, so a restart reads
    // it again rather than skipping it.
    let stored = replica_offset(&follower.replica, &topic, 2).unwrap();
    assert!(
        stored <= o3,
        "stored next offset {stored} passed poison at {o3}"
    );
    let dlq = read_topic(&s.brokers, &dead_letter_topic(&s.prefix));
    assert_eq!(dlq.len(), 3);
    let ready = reqwest::get(format!("http://{addr}/ready")).await.unwrap();
    assert_eq!(ready.status(), 200, "reads are still served");

    // A poison message claiming a position the leader gives to another change
    // holds its partition only until that partition's chain passes it.
    let soon = leader_position(&s.leader) + 3;
    let o4 = produce_raw(
        &s.brokers,
        &topic,
        0,
        Some(b"k4"),
        Some(corrupt),
        &[(HEADER_POSITION, soon.to_string().as_bytes())],
    )
    .await;
    let key0 = format!("{topic}/0");
    wait_until(Duration::from_secs(30), || {
        let st = follower.status();
        match (&st.partitions[&key0].blocked, st.dead_letters) {
            (Some(why), 4) if why.contains(&format!("offset {o4}")) => Ok(()),
            _ => Err(format!("{st:?}")),
        }
    })
    .await;
    s.write(44, 30).await;
    s.caught_up_but_offsets(&follower).await;
    wait_until(Duration::from_secs(30), || {
        let st = follower.status();
        let p0 = &st.partitions[&key0];
        (p0.blocked.is_none() && p0.offset_lag == 0 && p0.next_offset > o4)
            .then_some(())
            .ok_or(format!("{st:?}"))
    })
    .await;
    assert!(
        follower.status().partitions[&key].blocked.is_some(),
        "position {claimed} is still ahead of its partition's chain"
    );

    follower.stop().await.unwrap();
    producer.stop().await.unwrap();
}

async fn post(addr: SocketAddr, path: &str) {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "POST {path}: {}", r.status());
}

async fn ready_code(addr: SocketAddr) -> Result<u16, String> {
    reqwest::get(format!("http://{addr}/ready"))
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

/// A producer that falls silent (stopped, or cut off from Kafka) shows up in
/// the follower's seconds lag once the heartbeat grace has passed, although no
/// position is known to be missing, and readiness fails; both recover when
/// the producer is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_producer_shows_up_as_seconds_lag() {
    let mut s = Setup::new_with(1, "silent").await;
    let config = s.producer_config();
    let producer = RunningProducer::start(config.clone());
    let mut fc = s.follower_config("r.db");
    fc.heartbeat_grace = Duration::from_millis(1_500);
    fc.max_lag_seconds = 2.0;
    let (follower, addr) = RunningFollower::serving(fc);
    wait_for_capture(&s.leader).await;
    s.write(61, 10).await;
    s.caught_up(&follower).await;
    assert_eq!(ready_code(addr).await, Ok(200));

    producer.stop().await.unwrap();
    wait_until(Duration::from_secs(20), || {
        let st = follower.status();
        (st.seconds_lag.is_some_and(|l| l > 2.0) && st.position_lag == 0)
            .then_some(())
            .ok_or(format!("{st:?}"))
    })
    .await;
    assert_eq!(
        ready_code(addr).await,
        Ok(503),
        "a follower nobody vouches for is not ready"
    );
    same_rows(&s.leader, &follower.replica).unwrap();

    let producer = RunningProducer::start(config);
    s.caught_up(&follower).await;
    assert_eq!(ready_code(addr).await, Ok(200));
    follower.stop().await.unwrap();
    producer.stop().await.unwrap();
}

/// A paused follower falls behind in all three units while the leader
/// writes (and its readiness fails), catches up after resume, and reads zero
/// seconds behind while the leader is idle, thanks to heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_follower_lag_grows_in_three_units_and_returns_to_zero() {
    let mut s = Setup::new_with(1, "lag").await;
    let producer = RunningProducer::start(s.producer_config());
    let mut fc = s.follower_config("r.db");
    fc.max_lag_seconds = 1.0;
    let (follower, addr) = RunningFollower::serving(fc);
    wait_for_capture(&s.leader).await;
    s.write(51, 20).await;
    s.caught_up(&follower).await;

    post(addr, "/admin/pause").await;
    wait_until(Duration::from_secs(10), || {
        follower
            .status()
            .paused
            .then_some(())
            .ok_or("not paused yet".into())
    })
    .await;
    let at_pause = replica_position(&follower.replica);
    s.write(52, 30).await;
    let head = leader_position(&s.leader);
    wait_until(Duration::from_secs(30), || {
        let st = follower.status();
        (st.leader_position.0 == head
            && st.position_lag == head - at_pause
            && st.offset_lag > 0
            && st.seconds_lag.is_some_and(|l| l > 1.0))
        .then_some(())
        .ok_or(format!("leader at {head}, paused at {at_pause}: {st:?}"))
    })
    .await;
    let first = follower.status();
    wait_until_async(Duration::from_secs(30), || async {
        match ready_code(addr).await? {
            503 => Ok(()),
            c => Err(format!("/ready answered {c} while lagging")),
        }
    })
    .await;

    // More writes: every unit grows.
    s.write(53, 30).await;
    let head2 = leader_position(&s.leader);
    assert!(head2 > head);
    wait_until(Duration::from_secs(30), || {
        let st = follower.status();
        (st.position_lag == head2 - at_pause
            && st.offset_lag > first.offset_lag
            && st.seconds_lag > first.seconds_lag
            && first.seconds_lag.is_some())
        .then_some(())
        .ok_or(format!("first {first:?}, now {st:?}"))
    })
    .await;
    assert_eq!(
        replica_position(&follower.replica),
        at_pause,
        "a paused follower applies nothing"
    );

    post(addr, "/admin/resume").await;
    s.caught_up(&follower).await;
    wait_until_async(Duration::from_secs(30), || async {
        match ready_code(addr).await? {
            200 => Ok(()),
            c => Err(format!("/ready answered {c} after catching up")),
        }
    })
    .await;

    // Idle leader: heartbeats keep the leader clock moving, and a replica
    // that has everything is zero seconds behind, heartbeat after heartbeat.
    let clock_before = follower.status();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await; // sampling, not waiting for a condition
        let st = follower.status();
        assert_eq!(st.seconds_lag, Some(0.0), "idle leader: {st:?}");
        assert_eq!(st.position_lag, 0, "idle leader: {st:?}");
        assert_eq!(st.offset_lag, 0, "idle leader: {st:?}");
    }
    assert_eq!(
        follower.status().applied_position,
        clock_before.applied_position
    );

    follower.stop().await.unwrap();
    producer.stop().await.unwrap();
}

/// One scrape of `/metrics`, parsed by a Prometheus text parser.
async fn scrape(addr: SocketAddr) -> Result<prometheus_parse::Scrape, String> {
    let r = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("/metrics answered {}", r.status()));
    }
    let body = r.text().await.map_err(|e| e.to_string())?;
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .map_err(|e| e.to_string())
}

/// The value of the one sample named `name` whose labels include `labels`.
fn sample(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&prometheus_parse::Sample> = s
        .samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    match found[0].value {
        prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: not a scalar: {other:?}"),
    }
}

/// `/metrics` over real HTTP, parsed as Prometheus text, agrees with the
/// replica file and the leader: applied position, zero lag when caught up,
/// changes applied, and per-partition offset lag for every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_scraped_over_http_match_the_replica() {
    let mut s = Setup::new_with(1, "metrics").await;
    let producer = RunningProducer::start(s.producer_config());
    let fc = s.follower_config("r.db");
    let (follower, addr) = RunningFollower::serving(fc);
    wait_for_capture(&s.leader).await;
    s.write(61, 80).await;
    s.caught_up(&follower).await;

    let head = leader_position(&s.leader);
    let changes = stored_changes(&s.brokers, &s.prefix);
    let m = scrape(addr).await.unwrap();
    let at = replica_position(&follower.replica);
    assert_eq!(at, head, "replica file is at the leader's head");
    // Gauges must be typed as gauges: the TYPE lines were understood.
    for g in [
        "position_lag",
        "seconds_lag",
        "applied_position",
        "leader_position",
    ] {
        let name = format!("barista_follower_{g}");
        let x = m.samples.iter().find(|x| x.metric == name).unwrap();
        assert!(
            matches!(x.value, prometheus_parse::Value::Gauge(_)),
            "{name}: {:?}",
            x.value
        );
    }
    assert_eq!(
        sample(&m, "barista_follower_applied_position", &[]),
        at as f64
    );
    assert_eq!(
        sample(&m, "barista_follower_leader_position", &[]),
        head as f64
    );
    assert_eq!(sample(&m, "barista_follower_position_lag", &[]), 0.0);
    assert_eq!(sample(&m, "barista_follower_seconds_lag", &[]), 0.0);
    assert_eq!(
        sample(&m, "barista_follower_changes_applied_total", &[]),
        changes.len() as f64,
        "every change in Kafka applied once"
    );
    assert_eq!(sample(&m, "barista_follower_dead_letters_total", &[]), 0.0);
    let batches = sample(&m, "barista_follower_batches_total", &[]);
    assert!(
        batches >= 1.0 && batches <= changes.len() as f64,
        "{batches}"
    );
    for t in TABLES {
        let topic = table_topic(&s.prefix, t);
        for p in 0..3 {
            let lag = sample(
                &m,
                "barista_follower_offset_lag",
                &[("topic", &topic), ("partition", &p.to_string())],
            );
            assert_eq!(lag, 0.0, "{topic}/{p}");
        }
    }

    // Paused and behind: the scrape shows the same lag the replica file has.
    post(addr, "/admin/pause").await;
    s.write(62, 30).await;
    let head2 = leader_position(&s.leader);
    let r = follower.replica.clone();
    wait_until_async(Duration::from_secs(30), || {
        let r = r.clone();
        async move {
            let m = scrape(addr).await?;
            let at = replica_position(&r) as f64;
            let (applied, leader, lag, secs) = (
                sample(&m, "barista_follower_applied_position", &[]),
                sample(&m, "barista_follower_leader_position", &[]),
                sample(&m, "barista_follower_position_lag", &[]),
                sample(&m, "barista_follower_seconds_lag", &[]),
            );
            let offsets: f64 = m
                .samples
                .iter()
                .filter(|x| x.metric == "barista_follower_offset_lag")
                .map(|x| match x.value {
                    prometheus_parse::Value::Gauge(v) => v,
                    _ => 0.0,
                })
                .sum();
            (applied == at
                && leader == head2 as f64
                && lag == leader - applied
                && lag > 0.0
                && secs > 0.0
                && offsets > 0.0)
                .then_some(())
                .ok_or(format!(
                    "replica at {at}, leader {head2}; scraped applied {applied} leader {leader} lag {lag} seconds {secs} offsets {offsets}"
                ))
        }
    })
    .await;
    post(addr, "/admin/resume").await;
    s.caught_up(&follower).await;

    follower.stop().await.unwrap();
    producer.stop().await.unwrap();
}

/// A bulk load of 20,000 rows in one leader transaction is one commit group
/// (a table's snapshot no longer is: it comes in chunks of its own). The
/// follower, allowed to hold 2,000 changes, streams it into an open replica
/// transaction; a reader polling the replica file meanwhile sees no row or
/// every row, never part.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_commit_group_is_streamed_and_never_half_visible() {
    const ROWS: i64 = 20_000;
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let leader = dir.path().join("leader.db");
    {
        let c = rusqlite::Connection::open(&leader).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch(
            "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, coffee TEXT)",
        )
        .unwrap();
    }
    let cluster = MockCluster::new(3).unwrap();
    let brokers = cluster.bootstrap_servers();
    let registry = start_registry(dir.path()).await;
    let prefix = unique("big");
    create_topics(&cluster, &prefix, &["customers"]);
    let mut pc = producer_config(&leader, &brokers, registry.url(), &prefix);
    pc.chunk_size = 1000;
    let producer = RunningProducer::start(pc);
    let replica = dir.path().join("replica.db");
    let mut fc = follower_config(&replica, &unique("f"), &brokers, registry.url(), &prefix);
    fc.batch_max = 2000;
    let follower = RunningFollower::start(fc);
    let l = leader.clone();
    wait_until(Duration::from_secs(30), move || {
        let n: i64 = rusqlite::Connection::open(&l)
            .and_then(|c| {
                c.query_row(
                    "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND name LIKE '_barista_%'",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap_or(0);
        (n >= 3).then_some(()).ok_or(format!("{n} capture triggers"))
    })
    .await;
    {
        let mut c = rusqlite::Connection::open(&leader).unwrap();
        let tx = c.transaction().unwrap();
        for id in 1..=ROWS {
            tx.execute(
                "INSERT INTO customers VALUES (?1, ?2, 'flat white')",
                rusqlite::params![id, format!("customer {id}")],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    // Watch the replica file the way any SQLite client would.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (r, s) = (replica.clone(), stop.clone());
    let reader = std::thread::spawn(move || {
        let mut seen = BTreeMap::<i64, usize>::new();
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            let n = rusqlite::Connection::open_with_flags(
                &r,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .and_then(|c| {
                c.query_row("SELECT count(*) FROM customers", [], |r| r.get::<_, i64>(0))
            });
            if let Ok(n) = n {
                *seen.entry(n).or_default() += 1;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        seen
    });
    wait_until(Duration::from_secs(120), || same_rows(&leader, &replica)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = reader.join().unwrap();
    let streamed = follower.shared.metrics.streamed.get();
    eprintln!("row counts the reader saw (count: times): {seen:?}; changes streamed ahead of their group's commit: {streamed}");
    assert!(
        streamed >= 2000,
        "the follower held the whole group in memory (streamed {streamed})"
    );
    assert!(
        seen.keys().all(|&n| n == 0 || n == ROWS),
        "a reader saw part of the snapshot: {seen:?}"
    );
    assert!(seen.contains_key(&ROWS), "the reader never saw the replica");

    // Small groups after it still apply.
    rusqlite::Connection::open(&leader)
        .unwrap()
        .execute("UPDATE customers SET coffee = 'cortado' WHERE id <= 10", [])
        .unwrap();
    wait_until(Duration::from_secs(30), || same_rows(&leader, &replica)).await;
    follower.stop().await.unwrap();
    producer.stop().await.unwrap();
    registry.shutdown().await.unwrap();
}

/// A thread that panics while holding a lock leaves what the lock guards
/// untrustworthy: the follower stops with an error naming the lock instead of
/// carrying on with a default (before, a poisoned status read as lag 0). The
/// restart resumes from the offsets and position its replica committed and
/// applies every later change exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poisoned_lock_stops_the_follower_and_the_restart_applies_exactly_once() {
    let mut s = Setup::new_with(1, "poisoned").await;
    let producer = RunningProducer::start(s.producer_config());
    let fc = s.follower_config("r.db");
    let follower = RunningFollower::start(fc.clone());
    wait_for_capture(&s.leader).await;
    s.write(81, 30).await;
    s.caught_up(&follower).await;

    let shared = follower.shared.clone();
    let _ = std::thread::spawn(move || {
        let _held = shared.status.lock().unwrap();
        panic!("injected: a panic while holding the follower's status lock");
    })
    .join();
    wait_until(Duration::from_secs(10), || {
        follower
            .is_finished()
            .then_some(())
            .ok_or_else(|| "the follower still runs on a poisoned lock".to_owned())
    })
    .await;
    let replica = follower.replica.clone();
    let err = follower
        .stop()
        .await
        .expect_err("a poisoned lock must stop the follower");
    assert!(
        format!("{err:#}").contains("follower status lock is poisoned"),
        "{err:#}"
    );

    // The leader moves on while the follower is down; it restarts on the
    // same replica and consumer group.
    s.write(82, 30).await;
    let stopped_at = replica_position(&replica);
    let restarted = RunningFollower::start(fc);
    s.caught_up(&restarted).await;
    let head = leader_position(&s.leader);
    let st = restarted.status();
    assert_eq!(
        st.changes_applied,
        (head - stopped_at) as u64,
        "every change after the stored position applied once, none before it again: {st:?}"
    );
    restarted.stop().await.unwrap();
    producer.stop().await.unwrap();
}

/// A producer that crashes mid-group sends the group again at each start, so
/// the topic holds several copies of it; a follower stopped halfway through
/// streaming it loses its open replica transaction and reads every copy again.
/// It applies each change once, ends equal to the leader, and its `/status`
/// shows the group's span and how much of it is written meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_restarted_mid_group_on_resent_copies_applies_each_change_once() {
    const ROWS: i64 = 20_000;
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("leader.db");
    {
        // Capture installed on the empty table, then one application transaction of ROWS
        // inserts: one commit group at positions 1 ..= ROWS, with nothing published yet.
        let mut c = rusqlite::Connection::open(&original).unwrap();
        c.execute_batch("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
            .unwrap();
        drop(
            barista_producer::capture::Capture::install(
                barista_producer::capture::open_leader(&original).unwrap(),
                &[],
                false,
            )
            .unwrap(),
        );
        let tx = c.transaction().unwrap();
        for id in 1..=ROWS {
            tx.execute(
                "INSERT INTO customers VALUES (?1, ?2)",
                rusqlite::params![id, format!("customer {id}")],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let registry = start_registry(dir.path()).await;
    let prefix = unique("copies");
    create_topics(&cluster, &prefix, &["customers"]);
    let topic = table_topic(&prefix, "customers");
    let client: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let c = &client;
    let stored = |_: &str| -> i64 {
        (0..3)
            .map(|p| {
                rdkafka::consumer::Consumer::fetch_watermarks(c, &topic, p, Duration::from_secs(5))
                    .unwrap()
                    .1
            })
            .sum()
    };
    // Producer processes, each on a copy of the leader as it was before
    // anything was published (so each sends the whole group again from its
    // start), the first two SIGKILLed once a twentieth of it is stored: the
    // topic holds copies, and no commit record yet.
    let run = |k: i32| {
        let leader = dir.path().join(format!("leader-{k}.db"));
        std::fs::copy(&original, &leader).unwrap();
        let args = crate::crash::producer_args(&leader, &brokers, registry.url(), &prefix);
        let log = dir.path().join(format!("producer-{k}.log"));
        (leader, Proc::start("producer", args, &log))
    };
    for k in 1..=2 {
        let before = stored(&brokers);
        let (_, mut p) = run(k);
        wait_until(Duration::from_secs(60), || {
            p.assert_running();
            let n = stored(&brokers) - before;
            (n >= 1_000)
                .then_some(())
                .ok_or(format!("copy {k}: {n} stored"))
        })
        .await;
        p.kill9();
        eprintln!("copy {k}: {} stored in all", stored(&brokers));
    }
    let replica = dir.path().join("replica.db");
    let id = unique("f");
    let mut fc = follower_config(&replica, &id, &brokers, registry.url(), &prefix);
    fc.batch_max = 1000;
    let follower = RunningFollower::start(fc.clone());
    wait_until(Duration::from_secs(60), || {
        let g = follower.status().group;
        match g {
            Some(g) if g.applied >= 1_000 => Ok(()),
            other => Err(format!(
                "group progress {other:?}, {} stored",
                stored(&brokers)
            )),
        }
    })
    .await;
    let g = follower.status().group.unwrap();
    assert_eq!((g.first.0, g.last.0), (1, ROWS), "the group's span: {g:?}");
    assert_eq!(
        replica_position(&replica),
        g.first.0 - 1,
        "nothing of the group visible yet"
    );
    follower.stop().await.unwrap();

    // The last producer run publishes all of it.
    let (leader, mut producer) = run(3);
    // Started again: the open transaction is gone; the copies are read again.
    let follower = RunningFollower::start(fc);
    wait_until(Duration::from_secs(120), || same_rows(&leader, &replica)).await;
    let m = &follower.shared.metrics;
    let (applied, duplicates) = (m.changes_applied.get(), m.duplicates.get());
    let copies = stored(&brokers);
    eprintln!("stored {copies} messages; applied {applied}, duplicates skipped {duplicates}");
    assert!(copies > ROWS, "the topic holds copies: {copies} messages");
    assert_eq!(
        applied, ROWS as u64,
        "each change applied once after the restart"
    );
    assert!(duplicates > 0, "the resent copies were skipped");
    assert_eq!(follower.status().group, None, "the group is applied");
    follower.stop().await.unwrap();
    producer.assert_running();
    producer.kill9();
    registry.shutdown().await.unwrap();
}
