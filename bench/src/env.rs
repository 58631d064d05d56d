//! What every benchmark runs on: a broker (the in-process mock cluster or a
//! nisshi broker process), the embedded registry, a leader file with
//! ~100-byte rows, and the measuring tools (CPU time, RSS, percentiles).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use barista_producer::capture::Capture;
use barista_registry::{CompatibilityLevel, RegistryConfig, RunningRegistry};
use barista_schemas::contract;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::ClientConfig;
use rusqlite::{params, Connection};

/// Which broker the run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerKind {
    /// librdkafka's in-process mock cluster (keeps ~5 MiB per partition).
    Mock,
    /// A nisshi broker process on loopback, in-memory storage.
    Nisshi,
}

/// A running broker.
pub enum Broker {
    /// In-process.
    Mock(MockCluster<'static, DefaultProducerContext>),
    /// A separate process.
    Nisshi {
        /// The broker process.
        child: Child,
        /// host:port.
        addr: String,
    },
}

impl Broker {
    /// Starts the broker of `kind`; `nisshi` is the broker binary.
    pub fn start(
        kind: BrokerKind,
        nisshi: &Path,
        storage: &str,
        dir: &Path,
    ) -> anyhow::Result<Broker> {
        match kind {
            BrokerKind::Mock => Ok(Broker::Mock(
                MockCluster::new(1).context("starting the mock cluster")?,
            )),
            BrokerKind::Nisshi => {
                if !nisshi.exists() {
                    bail!(
                        "no nisshi broker at {}: run `bash .ci/install-nisshi` or pass --nisshi",
                        nisshi.display()
                    );
                }
                let port = std::net::TcpListener::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port();
                let url = format!("tcp://127.0.0.1:{port}");
                let log = std::fs::File::create(dir.join("nisshi.log"))?;
                let child = Command::new(nisshi)
                    .args(["broker", "--listener-url", &url])
                    .args(["--advertised-listener-url", &url])
                    .args(["--group-initial-rebalance-delay", "0s"])
                    .args(["--storage-engine", storage])
                    // At `info` nisshi logs every field of every response: most of its CPU.
                    .env("RUST_LOG", "warn")
                    .current_dir(dir)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()
                    .with_context(|| format!("starting {}", nisshi.display()))?;
                let b = Broker::Nisshi {
                    child,
                    addr: format!("127.0.0.1:{port}"),
                };
                b.wait_ready()?;
                Ok(b)
            }
        }
    }

    /// Bootstrap servers.
    pub fn bootstrap(&self) -> String {
        match self {
            Broker::Mock(m) => m.bootstrap_servers(),
            Broker::Nisshi { addr, .. } => addr.clone(),
        }
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()?;
        let start = Instant::now();
        loop {
            match c.fetch_metadata(None, Duration::from_secs(1)) {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() > Duration::from_secs(30) => {
                    bail!("broker not ready after 30 s: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Creates a topic (the mock cluster does not answer CreateTopics).
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        match self {
            Broker::Mock(m) => Ok(m.create_topic(name, partitions, 1)?),
            Broker::Nisshi { .. } => {
                let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                    .set("bootstrap.servers", self.bootstrap())
                    .create()?;
                let r = admin
                    .create_topics(
                        &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
                        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
                    )
                    .await?;
                for x in r {
                    x.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
                }
                Ok(())
            }
        }
    }

    /// Creates barista's topics for `prefix` with `partitions` each.
    pub async fn create_barista_topics(&self, prefix: &str, partitions: i32) -> anyhow::Result<()> {
        self.create_topic(&contract::table_topic(prefix, "items"), partitions)
            .await?;
        self.create_topic(&contract::commits_topic(prefix), 1)
            .await?;
        self.create_topic(&contract::dead_letter_topic(prefix), 1)
            .await
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Broker::Nisshi { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The embedded registry on a free loopback port.
pub async fn registry(dir: &Path) -> anyhow::Result<RunningRegistry> {
    barista_registry::spawn(
        RegistryConfig {
            db_path: dir.join("registry.db"),
            default_level: CompatibilityLevel::Backward,
        },
        "127.0.0.1:0".parse()?,
    )
    .await
}

/// The benchmark table: about 100 bytes per row.
pub const TABLE_SQL: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, \
                             note TEXT, qty INTEGER, price REAL)";

/// A leader file with the benchmark table and barista's capture installed.
pub fn leader(path: &Path) -> anyhow::Result<()> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(TABLE_SQL)?;
    Capture::install(conn, &[], false)?;
    Ok(())
}

/// Opens the leader for writing.
pub fn writer(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(Duration::from_secs(30))?;
    Ok(conn)
}

/// Writes rows `from..to` in transactions of `batch`.
pub fn write_rows(conn: &mut Connection, from: i64, to: i64, batch: i64) -> anyhow::Result<()> {
    let mut id = from;
    while id < to {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO items(id, name, note, qty, price) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for i in id..(id + batch).min(to) {
                stmt.execute(params![
                    i,
                    format!("item-{i:012}-espresso"),
                    "a double shot, oat milk, no sugar; pick up at the side counter",
                    i % 17,
                    i as f64 * 0.25
                ])?;
            }
        }
        tx.commit()?;
        id += batch;
    }
    Ok(())
}

/// The newest position the leader handed out.
pub fn head(conn: &Connection) -> anyhow::Result<i64> {
    Ok(conn.query_row(
        "SELECT coalesce(max(position), 0) FROM _barista_changelog",
        [],
        |r| r.get(0),
    )?)
}

/// The position up to which Kafka acknowledged.
pub fn acked(conn: &Connection) -> anyhow::Result<i64> {
    Ok(conn
        .query_row(
            "SELECT value FROM _barista_state WHERE key = 'acked'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap_or(0))
}

/// This process's CPU time (user + system), from /proc.
pub fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat(5): 12 and 13 here.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// The median of `v` (0 when empty).
pub fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

/// The `p`th percentile of `v`, nearest rank (0 when empty).
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// The default nisshi binary: `$BARISTA_NISSHI` or the CI cache.
pub fn default_nisshi() -> PathBuf {
    std::env::var_os("BARISTA_NISSHI")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/barista/bin/nisshi-0.8.1")
        })
}
