//! The whole pipeline in this process: a leader, barista's producer, and one
//! follower, for the latency, sustained-throughput and memory benchmarks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use barista_consumer::{FollowerConfig, Shared};
use barista_producer::ProducerConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::env::{self, Broker};

/// A leader with capture installed and its producer running.
pub struct Leader {
    /// The leader file.
    pub path: PathBuf,
    /// Topic prefix.
    pub prefix: String,
    token: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Leader {
    /// Creates the leader (with `rows` rows already committed) and starts
    /// its producer.
    pub async fn start(
        broker: &Broker,
        registry: &str,
        dir: &Path,
        partitions: i32,
        rows: i64,
    ) -> anyhow::Result<Leader> {
        let path = dir.join(format!("leader-{}.db", rand::random::<u32>()));
        env::leader(&path)?;
        if rows > 0 {
            let mut w = env::writer(&path)?;
            env::write_rows(&mut w, 1, rows + 1, 1000)?;
        }
        let prefix = format!("b{}", rand::random::<u32>());
        broker.create_barista_topics(&prefix, partitions).await?;
        let mut config = ProducerConfig::new(&path, &broker.bootstrap(), registry);
        config.topic_prefix = prefix.clone();
        config.partitions = partitions;
        config.heartbeat_interval = Duration::from_millis(100);
        let token = CancellationToken::new();
        let t = token.clone();
        let task =
            tokio::spawn(async move { barista_producer::run(config, t.cancelled_owned()).await });
        Ok(Leader {
            path,
            prefix,
            token,
            task,
        })
    }

    /// Fails if the producer stopped.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.task.is_finished() {
            bail!("the producer stopped");
        }
        Ok(())
    }

    /// Waits until Kafka acknowledged everything committed so far.
    pub async fn wait_published(&self, timeout: Duration) -> anyhow::Result<()> {
        let conn = env::writer(&self.path)?;
        let head = env::head(&conn)?;
        let start = Instant::now();
        while env::acked(&conn)? < head {
            self.check()?;
            if start.elapsed() > timeout {
                bail!("not published after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Drains and stops the producer.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.token.cancel();
        self.task.await??;
        let _ = std::fs::remove_file(&self.path);
        Ok(())
    }
}

/// A follower running in this process.
pub struct Follower {
    /// Metrics and status.
    pub shared: Arc<Shared>,
    /// The replica file.
    pub replica: PathBuf,
    token: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Follower {
    /// Starts a follower of `leader`'s topics.
    pub fn start(broker: &Broker, registry: &str, dir: &Path, prefix: &str) -> Follower {
        Self::start_with(broker, registry, dir, prefix, vec![])
    }

    /// Starts a follower with extra librdkafka properties (`-X` on the binary).
    pub fn start_with(
        broker: &Broker,
        registry: &str,
        dir: &Path,
        prefix: &str,
        kafka_options: Vec<(String, String)>,
    ) -> Follower {
        let replica = dir.join(format!("replica-{}.db", rand::random::<u32>()));
        Self::start_on(broker, registry, &replica, prefix, kafka_options)
    }

    /// Starts a follower of `prefix`'s topics on the replica file `replica`
    /// (for example a seeded one: it resumes from the offsets stored in it).
    pub fn start_on(
        broker: &Broker,
        registry: &str,
        replica: &Path,
        prefix: &str,
        kafka_options: Vec<(String, String)>,
    ) -> Follower {
        let replica = replica.to_owned();
        let mut config = FollowerConfig::new(
            &replica,
            &format!("bench-{}", rand::random::<u32>()),
            &broker.bootstrap(),
            registry,
        );
        config.topic_prefix = prefix.to_owned();
        config.kafka_options = kafka_options;
        let shared = Shared::new(&config);
        let token = CancellationToken::new();
        let (t, s) = (token.clone(), shared.clone());
        let task = tokio::spawn(async move {
            barista_consumer::run_with(config, s, t.cancelled_owned()).await
        });
        Follower {
            shared,
            replica,
            token,
            task,
        }
    }

    /// The newest leader position applied.
    pub fn applied(&self) -> i64 {
        self.shared.metrics.applied_position.get()
    }

    /// Fails if the follower stopped (for example halted).
    pub fn check(&self) -> anyhow::Result<()> {
        if self.task.is_finished() {
            let why = self.shared.status.lock().unwrap().halted.clone();
            bail!("the follower stopped: {why:?}");
        }
        Ok(())
    }

    /// Waits until it applied `position`.
    pub async fn wait_applied(&self, position: i64, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while self.applied() < position {
            self.check()?;
            if start.elapsed() > timeout {
                bail!(
                    "follower at {} of {position} after {timeout:?}",
                    self.applied()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Stops it.
    pub async fn stop(self) -> anyhow::Result<()> {
        let replica = self.replica.clone();
        self.stop_keeping_replica().await?;
        let _ = std::fs::remove_file(&replica);
        Ok(())
    }

    /// Stops it and leaves its replica file.
    pub async fn stop_keeping_replica(self) -> anyhow::Result<()> {
        self.token.cancel();
        self.task.await??;
        Ok(())
    }
}
