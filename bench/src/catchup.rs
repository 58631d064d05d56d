//! Catch-up through a large streamed group (issue 18): a follower killed
//! halfway through a commit group of N changes and started again, on a topic
//! that holds several resent copies of the group, against a follower that
//! was never restarted applying the group from a topic that holds it once.
//!
//! The copies are made the way a crash loop makes them: a producer process
//! is SIGKILLed while it publishes the group, and a new one publishes it
//! again from the start. Each run starts from a copy of the leader file
//! taken before anything was published, so every run resends the whole
//! group whatever the producer acknowledges; the group is one leader
//! transaction, so no producer may split it. Producers and followers are
//! separate processes (this binary's hidden `produce` and `follow`
//! commands), killed with SIGKILL.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use barista_schemas::contract;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::env::{self, Broker};
use crate::load::replica_position;

/// A topic prefix holding `copies` copies of one group.
pub struct Topic {
    /// Topic prefix.
    pub prefix: String,
    /// The group's last position (its first is 1).
    pub head: i64,
    /// Messages in the data topic, every copy together.
    pub messages: i64,
}

/// Sum of the high watermarks of `topic`'s partitions.
fn messages_in(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let mut sum = 0;
    for p in 0..partitions {
        sum += c.fetch_watermarks(topic, p, Duration::from_secs(10))?.1;
    }
    Ok(sum)
}

/// Where the child processes log: `$BARISTA_BENCH_LOG_DIR` (kept after the
/// run), else the bench's temp dir (deleted with it).
fn log_path(dir: &Path, name: &str) -> PathBuf {
    std::env::var_os("BARISTA_BENCH_LOG_DIR")
        .map_or_else(|| dir.to_path_buf(), PathBuf::from)
        .join(name)
}

fn spawn_self(args: &[&str], log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Command::new(std::env::current_exe()?)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("BARISTA_BENCH_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting a child process of the bench")
}

/// Publishes a group of `n` changes `copies` times under a new prefix: the
/// first `copies - 1` runs are SIGKILLed after `k / copies` of the group,
/// the last one runs until Kafka acknowledged the whole group.
pub async fn publish(
    broker: &Broker,
    registry: &str,
    dir: &Path,
    n: i64,
    partitions: i32,
    copies: usize,
) -> anyhow::Result<Topic> {
    let tag = rand::random::<u32>();
    let base = dir.join(format!("catchup-leader-{tag}.db"));
    env::leader(&base)?;
    {
        let mut w = env::writer(&base)?;
        // One leader transaction: one commit group, whatever the producer.
        env::write_rows(&mut w, 1, n + 1, n)?;
        w.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
    }
    let head = env::head(&env::writer(&base)?)?;
    let prefix = format!("c{tag}");
    broker.create_barista_topics(&prefix, partitions).await?;
    let topic = contract::table_topic(&prefix, "items");
    let bootstrap = broker.bootstrap();
    let log = log_path(dir, "catchup-produce.log");
    for k in 1..=copies {
        let leader = dir.join(format!("catchup-leader-{tag}-{k}.db"));
        std::fs::copy(&base, &leader)?;
        let before = messages_in(&bootstrap, &topic, partitions)?;
        let parts = partitions.to_string();
        let mut child = spawn_self(
            &[
                "produce",
                "--leader",
                path_str(&leader)?,
                "--brokers",
                &bootstrap,
                "--registry",
                registry,
                "--topic-prefix",
                &prefix,
                "--partitions",
                &parts,
            ],
            &log,
        )?;
        let start = Instant::now();
        let last = k == copies;
        let target = before + n * k as i64 / copies as i64;
        let r = loop {
            if let Some(s) = child.try_wait()? {
                break Err(anyhow::anyhow!(
                    "the producer exited with {s}; see {}",
                    log.display()
                ));
            }
            let done = if last {
                env::acked(&env::writer(&leader)?)? >= head
            } else {
                messages_in(&bootstrap, &topic, partitions)? >= target
            };
            if done {
                break Ok(());
            }
            if start.elapsed() > Duration::from_secs(1800) {
                break Err(anyhow::anyhow!("copy {k} not published in 30 minutes"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // SIGKILL: a crash mid-group (the last run has been acknowledged).
        let _ = child.kill();
        let _ = child.wait();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", leader.display()));
        }
        r?;
    }
    let _ = std::fs::remove_file(&base);
    Ok(Topic {
        messages: messages_in(&bootstrap, &topic, partitions)?,
        prefix,
        head,
    })
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("a temp path that is not UTF-8")
}

/// A follower process with its HTTP endpoints on a free loopback port.
struct FollowerProcess {
    child: Child,
    addr: String,
}

impl FollowerProcess {
    fn start(
        broker: &Broker,
        registry: &str,
        replica: &Path,
        id: &str,
        prefix: &str,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .to_string();
        let child = spawn_self(
            &[
                "follow",
                "--replica",
                path_str(replica)?,
                "--brokers",
                &broker.bootstrap(),
                "--registry",
                registry,
                "--topic-prefix",
                prefix,
                "--follower-id",
                id,
                "--http-listen",
                &addr,
            ],
            log,
        )?;
        Ok(FollowerProcess { child, addr })
    }

    fn check(&mut self, log: &Path) -> anyhow::Result<()> {
        if let Some(s) = self.child.try_wait()? {
            bail!("the follower exited with {s}; see {}", log.display());
        }
        Ok(())
    }

    /// A metric's value from `/metrics` (`None` while unreachable).
    fn metric(&self, name: &str) -> Option<f64> {
        let body = http_get(&self.addr, "/metrics").ok()?;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET on loopback.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (_, body) = out.split_once("\r\n\r\n").context("no HTTP body")?;
    Ok(body.to_owned())
}

/// Waits until the replica holds `head`; the time it took.
async fn until_applied(
    f: &mut FollowerProcess,
    replica: &Path,
    head: i64,
    log: &Path,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut shown = Instant::now();
    while replica_position(replica) < head {
        f.check(log)?;
        if shown.elapsed() >= Duration::from_secs(5)
            && std::env::var_os("BARISTA_BENCH_LOG_DIR").is_some()
        {
            // Progress for whoever investigates (the children's logs are kept too).
            eprintln!(
                "    {:5.0} s: streamed {:?}, duplicates {:?}",
                start.elapsed().as_secs_f64(),
                f.metric("barista_follower_streamed_changes_total"),
                f.metric("barista_follower_duplicates_total"),
            );
            shown = Instant::now();
        }
        if start.elapsed() > Duration::from_secs(1800) {
            bail!("the follower did not apply the group in 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(start.elapsed())
}

fn remove_replica(replica: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", replica.display()));
    }
}

/// A follower that was never restarted: changes/s from its start until it
/// applied the group.
pub async fn never_restarted(
    broker: &Broker,
    registry: &str,
    dir: &Path,
    topic: &Topic,
) -> anyhow::Result<f64> {
    let tag = rand::random::<u32>();
    let replica = dir.join(format!("catchup-replica-{tag}.db"));
    let log = log_path(dir, "catchup-follow.log");
    let id = format!("catchup-{tag}");
    let mut f = FollowerProcess::start(broker, registry, &replica, &id, &topic.prefix, &log)?;
    let r = until_applied(&mut f, &replica, topic.head, &log).await;
    f.kill();
    remove_replica(&replica);
    Ok(topic.head as f64 / r?.as_secs_f64())
}

/// A follower SIGKILLed once it streamed half of the group (its open replica
/// transaction is lost), then started again: changes/s from the restart
/// until it applied the group.
pub async fn restarted(
    broker: &Broker,
    registry: &str,
    dir: &Path,
    topic: &Topic,
) -> anyhow::Result<f64> {
    let tag = rand::random::<u32>();
    let replica = dir.join(format!("catchup-replica-{tag}.db"));
    let log = log_path(dir, "catchup-follow.log");
    let id = format!("catchup-{tag}");
    let mut f = FollowerProcess::start(broker, registry, &replica, &id, &topic.prefix, &log)?;
    let start = Instant::now();
    let half = (topic.head / 2) as f64;
    let r = loop {
        if let Err(e) = f.check(&log) {
            break Err(e);
        }
        if f.metric("barista_follower_streamed_changes_total")
            .is_some_and(|v| v >= half)
        {
            break Ok(());
        }
        if replica_position(&replica) >= topic.head {
            break Err(anyhow::anyhow!(
                "the follower applied the group before it was seen halfway"
            ));
        }
        if start.elapsed() > Duration::from_secs(1800) {
            break Err(anyhow::anyhow!(
                "the follower did not get halfway in 30 minutes"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    f.kill();
    if let Err(e) = r {
        remove_replica(&replica);
        return Err(e);
    }
    let mut f = FollowerProcess::start(broker, registry, &replica, &id, &topic.prefix, &log)?;
    let r = until_applied(&mut f, &replica, topic.head, &log).await;
    f.kill();
    remove_replica(&replica);
    Ok(topic.head as f64 / r?.as_secs_f64())
}
