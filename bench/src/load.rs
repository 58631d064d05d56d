//! Sustained throughput (the leader writing as fast as it can, one follower)
//! and follower memory (RSS while it works off a backlog, against RSS with
//! no backlog).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rusqlite::{Connection, OpenFlags};

use crate::env::{self, Broker};
use crate::pipeline::{Follower, Leader};

/// What the sustained run measured.
pub struct Sustained {
    /// Changes written by the leader.
    pub written: i64,
    /// Leader write rate while writing (changes/s).
    pub write_rate: f64,
    /// Changes applied per second from the first write until the follower
    /// held the last one: what the pipeline sustains end to end.
    pub apply_rate: f64,
    /// Position lag sampled once a second while writing.
    pub lag_series: Vec<i64>,
    /// After the writer stopped, each second: (changes Kafka has not
    /// acknowledged yet, changes acknowledged but not applied).
    pub drain_series: Vec<(i64, i64)>,
    /// Process CPU time per change (µs): leader, producer, broker (when in
    /// process) and follower together.
    pub cpu_us: f64,
}

/// The leader writes 1000-row transactions as fast as it can for
/// `duration`; the pipeline is timed until the follower caught up.
pub async fn sustained(
    broker: &Broker,
    registry: &str,
    dir: &Path,
    duration: Duration,
    partitions: i32,
) -> anyhow::Result<Sustained> {
    let leader = Leader::start(broker, registry, dir, partitions, 0).await?;
    let follower = Follower::start(broker, registry, dir, &leader.prefix);
    {
        let mut w = env::writer(&leader.path)?;
        env::write_rows(&mut w, 1, 2, 1)?;
        follower
            .wait_applied(env::head(&w)?, Duration::from_secs(60))
            .await?;
    }
    let base = follower.applied();
    let path = leader.path.clone();
    let cpu0 = env::cpu_time();
    let t0 = Instant::now();
    let writer = tokio::task::spawn_blocking(move || -> anyhow::Result<(i64, Duration)> {
        let mut w = env::writer(&path)?;
        let start = Instant::now();
        let mut id = 10i64;
        while start.elapsed() < duration {
            env::write_rows(&mut w, id, id + 1000, 1000)?;
            id += 1000;
        }
        Ok((id - 10, start.elapsed()))
    });
    let mut lag_series = Vec::new();
    let probe = env::writer(&leader.path)?;
    let mut next_sample = Instant::now() + Duration::from_secs(1);
    while !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if Instant::now() >= next_sample {
            lag_series.push(env::head(&probe)? - follower.applied());
            next_sample += Duration::from_secs(1);
        }
        follower.check()?;
        leader.check()?;
    }
    let (written, wrote_for) = writer.await??;
    let head = env::head(&probe)?;
    // Draining: where the backlog sits each second, producer (not yet
    // acknowledged by Kafka) or follower (acknowledged, not yet applied).
    let mut drain_series = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while follower.applied() < head {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the follower did not catch up in 600 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        if Instant::now() >= next_sample {
            let acked = env::acked(&probe)?;
            drain_series.push((head - acked, acked - follower.applied()));
            next_sample += Duration::from_secs(1);
        }
        follower.check()?;
        leader.check()?;
    }
    let elapsed = t0.elapsed();
    let cpu = env::cpu_time() - cpu0;
    let applied = follower.applied() - base;
    drop(probe);
    follower.stop().await?;
    leader.stop().await?;
    Ok(Sustained {
        written,
        write_rate: written as f64 / wrote_for.as_secs_f64(),
        apply_rate: applied as f64 / elapsed.as_secs_f64(),
        lag_series,
        drain_series,
        cpu_us: cpu.as_secs_f64() * 1e6 / written as f64,
    })
}

/// Peak and final RSS of a follower process.
pub struct Memory {
    /// Changes waiting in Kafka when the follower started.
    pub backlog: i64,
    /// Peak RSS (MiB) while it worked.
    pub peak_mib: f64,
    /// Seconds it took to apply the backlog.
    pub seconds: f64,
}

fn rss_of(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
}

/// The position a replica file holds (0 while unreadable).
pub fn replica_position(replica: &Path) -> i64 {
    Connection::open_with_flags(replica, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| c.query_row("SELECT position FROM _barista_position", [], |r| r.get(0)))
        .unwrap_or(0)
}

/// `backlog` changes are published with no follower running; then a
/// follower starts in its own process (this binary, `follow`) and its RSS is
/// sampled every 50 ms until it applied everything (and for at least
/// `min_watch`).
pub async fn memory(
    broker: &Broker,
    registry: &str,
    dir: &Path,
    backlog: i64,
    partitions: i32,
    min_watch: Duration,
) -> anyhow::Result<Memory> {
    let leader = Leader::start(broker, registry, dir, partitions, backlog.max(1)).await?;
    leader
        .wait_published(Duration::from_secs(1800))
        .await
        .context("publishing the backlog")?;
    let head = env::head(&env::writer(&leader.path)?)?;
    let replica = dir.join(format!("mem-replica-{}.db", rand::random::<u32>()));
    let log = std::fs::File::create(dir.join("follow.log"))?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("follow")
        .arg("--replica")
        .arg(&replica)
        .args(["--brokers", &broker.bootstrap(), "--registry", registry])
        .args(["--topic-prefix", &leader.prefix])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the follower process")?;
    let pid = child.id();
    let start = Instant::now();
    let mut peak: f64 = 0.0;
    let result = loop {
        if let Some(s) = child.try_wait()? {
            break Err(anyhow::anyhow!(
                "the follower process exited with {s}; see {}",
                dir.join("follow.log").display()
            ));
        }
        peak = peak.max(rss_of(pid).unwrap_or(0.0));
        if replica_position(&replica) >= head && start.elapsed() >= min_watch {
            break Ok(());
        }
        if start.elapsed() > Duration::from_secs(1800) {
            break Err(anyhow::anyhow!(
                "the follower did not catch up in 30 minutes"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let seconds = start.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    leader.stop().await?;
    let _ = std::fs::remove_file(&replica);
    result?;
    if peak == 0.0 {
        bail!("could not read the follower's RSS");
    }
    Ok(Memory {
        backlog: head,
        peak_mib: peak,
        seconds,
    })
}
