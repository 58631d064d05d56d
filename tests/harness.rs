//! Test harness: a leader file, an in-process Kafka (librdkafka's mock
//! cluster, real Kafka protocol over loopback), the embedded registry over
//! real HTTP, and the real producer and followers, each test with its own
//! temp directory, topic prefix and ports.

/// Headless Chromium as a test driver, and a reader for the DOM it dumps.
pub mod browser;
/// The real binaries as child processes, and a real broker process.
pub mod process;
/// The shared workload and [`Setup`], the mock-cluster fixture.
pub mod workload;
/// [`Shop`], the read-path fixture with followers serving HTTP.
pub mod shop;

pub use shop::Shop;
pub use workload::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use barista_consumer::{FollowerConfig, Shared};
use barista_producer::ProducerConfig;
use barista_registry::{CompatibilityLevel, RegistryConfig, RunningRegistry};
use barista_schemas::contract::{commits_topic, dead_letter_topic, table_topic};
use barista_schemas::SqlValue;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rusqlite::Connection;
use tokio_util::sync::CancellationToken;

/// Polls `cond` until it returns `Ok`, or panics after `timeout` with the
/// last reason it gave. Never a bare sleep.
#[track_caller]
pub fn wait_until_blocking(timeout: Duration, mut cond: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match cond() {
            Ok(()) => return,
            Err(why) if start.elapsed() > timeout => {
                panic!("condition not met after {timeout:?}: {why}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Async version of [`wait_until_blocking`].
pub async fn wait_until<F>(timeout: Duration, mut cond: F)
where
    F: FnMut() -> Result<(), String>,
{
    let start = Instant::now();
    loop {
        match cond() {
            Ok(()) => return,
            Err(why) if start.elapsed() > timeout => {
                panic!("condition not met after {timeout:?}: {why}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A random-enough unique name for topics and groups.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", rand::random::<u32>())
}

/// The embedded registry on a free loopback port.
pub async fn start_registry(dir: &Path) -> RunningRegistry {
    start_registry_at(dir, "127.0.0.1:0".parse().unwrap()).await
}

/// The embedded registry on a given address.
pub async fn start_registry_at(dir: &Path, addr: std::net::SocketAddr) -> RunningRegistry {
    barista_registry::spawn(
        RegistryConfig {
            db_path: dir.join("registry.db"),
            default_level: CompatibilityLevel::Backward,
        },
        addr,
    )
    .await
    .expect("registry starts")
}

/// A running producer task.
pub struct RunningProducer {
    token: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningProducer {
    /// Starts `barista_producer::run` in the background.
    pub fn start(config: ProducerConfig) -> Self {
        Self::start_on(None, config)
    }

    /// Starts it serving `/metrics`, `/status` and `/ready` on a loopback port bound first
    /// (port 0, so no other test can take it in between); returns it and that address.
    pub fn serving(config: ProducerConfig) -> (Self, std::net::SocketAddr) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        (Self::start_on(Some(listener), config), addr)
    }

    fn start_on(listener: Option<tokio::net::TcpListener>, config: ProducerConfig) -> Self {
        let token = CancellationToken::new();
        let t = token.clone();
        let handle = tokio::spawn(async move {
            let r = barista_producer::run_on(listener, config, t.cancelled_owned()).await;
            if let Err(e) = &r {
                eprintln!("producer failed: {e:#}");
            }
            r
        });
        RunningProducer { token, handle }
    }

    /// Asks it to drain and stop; returns its result.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.token.cancel();
        self.handle.await?
    }

    /// True once it returned (for example with an error).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

/// A running follower task and its shared state.
pub struct RunningFollower {
    /// Status, metrics, pause switch.
    pub shared: Arc<Shared>,
    /// The replica file.
    pub replica: PathBuf,
    token: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningFollower {
    /// Starts `barista_consumer::run_with` in the background.
    pub fn start(config: FollowerConfig) -> Self {
        Self::start_on(None, config)
    }

    /// Starts it serving HTTP on a loopback port bound first (port 0, so no
    /// other test can take it in between); returns it and that address.
    pub fn serving(config: FollowerConfig) -> (Self, std::net::SocketAddr) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        (Self::start_on(Some(listener), config), addr)
    }

    /// Like [`RunningFollower::serving`], with applying paused from the very
    /// start (as if an operator paused it before it ever reached Kafka): it
    /// hears the leader's commit records but applies nothing.
    pub fn serving_paused(config: FollowerConfig) -> (Self, std::net::SocketAddr) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let shared = Shared::new(&config);
        shared.paused.send_replace(true);
        (Self::start_shared(Some(listener), config, shared), addr)
    }

    fn start_on(listener: Option<tokio::net::TcpListener>, config: FollowerConfig) -> Self {
        let shared = Shared::new(&config);
        Self::start_shared(listener, config, shared)
    }

    fn start_shared(
        listener: Option<tokio::net::TcpListener>,
        config: FollowerConfig,
        shared: Arc<Shared>,
    ) -> Self {
        let token = CancellationToken::new();
        let (t, s, replica) = (token.clone(), shared.clone(), config.replica.clone());
        let handle = tokio::spawn(async move {
            let r = barista_consumer::run_on(listener, config, s, t.cancelled_owned()).await;
            if let Err(e) = &r {
                eprintln!("follower failed: {e:#}");
            }
            r
        });
        RunningFollower {
            shared,
            replica,
            token,
            handle,
        }
    }

    /// Stops it; returns its result.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.token.cancel();
        self.handle.await?
    }

    /// The follower's current status.
    pub fn status(&self) -> barista_consumer::lag::Status {
        self.shared.status.lock().unwrap().clone()
    }

    /// True once it returned.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

/// Every row of every user table, by table then primary key order, as exact
/// SQLite values (storage class included), read in ONE read transaction: a
/// table the follower renames or drops meanwhile is listed and read from the
/// same state.
pub fn dump(path: &Path) -> BTreeMap<String, Vec<Vec<SqlValue>>> {
    let mut conn =
        Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let conn = conn.transaction().unwrap();
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '\\_barista\\_%' ESCAPE '\\'",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = BTreeMap::new();
    for t in tables {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY 1, 2"))
            .unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| r.get_ref(i).map(SqlValue::from))
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        out.insert(t, rows);
    }
    out
}

/// Ok when the replica holds exactly the leader's rows, else a short diff.
pub fn same_rows(leader: &Path, replica: &Path) -> Result<(), String> {
    if !replica.exists() {
        return Err("replica file not created yet".into());
    }
    let (l, r) = (dump(leader), dump(replica));
    if l == r {
        return Ok(());
    }
    for (t, rows) in &l {
        match r.get(t) {
            None => return Err(format!("replica lacks table {t}")),
            Some(rr) if rr != rows => {
                return Err(format!(
                    "table {t}: leader has {} rows, replica {}; first difference: {:?}",
                    rows.len(),
                    rr.len(),
                    rows.iter().zip(rr).find(|(a, b)| a != b).or(None)
                ));
            }
            _ => {}
        }
    }
    Err("replica has extra tables".into())
}

/// Creates a prefix's topics on the mock cluster, which does not answer
/// CreateTopics (a real broker does; the producer creates them there).
pub fn create_topics<C: rdkafka::ClientContext>(
    cluster: &rdkafka::mocking::MockCluster<'_, C>,
    prefix: &str,
    tables: &[&str],
) {
    for t in tables {
        cluster.create_topic(&table_topic(prefix, t), 3, 1).unwrap();
    }
    cluster.create_topic(&commits_topic(prefix), 1, 1).unwrap();
    cluster
        .create_topic(&dead_letter_topic(prefix), 1, 1)
        .unwrap();
}

/// Producer settings for tests: fast polling and heartbeats.
pub fn producer_config(
    leader: &Path,
    brokers: &str,
    registry: &str,
    prefix: &str,
) -> ProducerConfig {
    let mut c = ProducerConfig::new(leader, brokers, registry);
    c.topic_prefix = prefix.to_owned();
    c.heartbeat_interval = Duration::from_millis(200);
    c
}

/// Follower settings for tests.
pub fn follower_config(
    replica: &Path,
    id: &str,
    brokers: &str,
    registry: &str,
    prefix: &str,
) -> FollowerConfig {
    let mut c = FollowerConfig::new(replica, id, brokers, registry);
    c.topic_prefix = prefix.to_owned();
    c.gap_timeout = Duration::from_secs(20);
    c
}

/// Reads every message of `topic` from the beginning up to the high
/// watermark: (partition, offset, key, payload, headers).
pub type RawMessage = (
    i32,
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Vec<u8>)>,
);

/// See [`RawMessage`].
pub fn read_topic(brokers: &str, topic: &str) -> Vec<RawMessage> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader-"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    let parts = md.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    let mut highs = BTreeMap::new();
    for p in 0..parts {
        let (_, h) = c
            .fetch_watermarks(topic, p, Duration::from_secs(5))
            .unwrap();
        highs.insert(p, h);
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut pos: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while highs
        .iter()
        .any(|(p, h)| pos.get(p).copied().unwrap_or(0) < *h)
    {
        assert!(
            Instant::now() < deadline,
            "reading {topic} timed out at {pos:?} of {highs:?}"
        );
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            use rdkafka::message::Headers;
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| (x.key.to_owned(), x.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            pos.insert(m.partition(), m.offset() + 1);
            out.push((
                m.partition(),
                m.offset(),
                m.key().map(<[u8]>::to_vec),
                m.payload().map(<[u8]>::to_vec),
                headers,
            ));
        }
    }
    out
}

/// Async version of [`wait_until`] for conditions that must await (HTTP).
pub async fn wait_until_async<F, Fut>(timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    loop {
        match cond().await {
            Ok(()) => return,
            Err(why) if start.elapsed() > timeout => {
                panic!("condition not met after {timeout:?}: {why}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Writes one message with a plain (non-barista) producer and returns the
/// offset the broker gave it: for poison and replayed messages.
pub async fn produce_raw(
    brokers: &str,
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: &[(&str, &[u8])],
) -> i64 {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut rec: rdkafka::producer::FutureRecord<'_, [u8], [u8]> =
        FutureRecord::to(topic).partition(partition).headers(h);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    if let Some(v) = payload {
        rec = rec.payload(v);
    }
    let delivered = p
        .send(rec, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    delivered.offset
}

/// The newest position in the leader's changelog (the producer keeps the
/// newest row when it prunes).
pub fn leader_position(leader: &Path) -> i64 {
    Connection::open(leader)
        .unwrap()
        .query_row(
            "SELECT coalesce(max(position), 0) FROM _barista_changelog",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// The position a replica file says its rows are at (0 before the first apply).
pub fn replica_position(replica: &Path) -> i64 {
    let conn =
        Connection::open_with_flags(replica, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.query_row(
        "SELECT coalesce(max(position), 0) FROM _barista_position",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// The stored next offset of one partition in a replica, if any.
pub fn replica_offset(replica: &Path, topic: &str, partition: i32) -> Option<i64> {
    let conn =
        Connection::open_with_flags(replica, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.query_row(
        "SELECT next_offset FROM _barista_offsets WHERE topic = ?1 AND partition = ?2",
        rusqlite::params![topic, partition],
        |r| r.get(0),
    )
    .ok()
}
