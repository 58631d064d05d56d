//! The seed section: a new follower seeded from a peer's `/snapshot`, against
//! `cp` of the same replica file on the same disk (until the follower can
//! start), and against `cp` + fsync (until the seeded file is on disk, which
//! the follower does not wait for), then the time until the seeded follower
//! has caught up with what the leader wrote after its snapshot.
//!
//! The peer is a real follower of a real leader and producer (this run's
//! broker), its replica grown to `size_mb` with a table of random,
//! incompressible 64 KiB blobs written into it directly (the pipeline cannot
//! push a gigabyte through the mock cluster, which keeps ~5 MiB per
//! partition). Each round: `cp`, `cp` + fsync, a seed over loopback; then the
//! leader commits `behind` changes and the seeded follower is started on
//! the seeded file (its stored offsets, its own consumer group) and timed
//! until it applied the leader's newest position.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use barista_consumer::FollowerConfig;
use rand::RngCore as _;
use rusqlite::Connection;

use crate::env::{self, median, Broker};
use crate::pipeline::{Follower, Leader};

/// What one round measured, in seconds.
struct Round {
    cp: f64,
    cp_fsync: f64,
    seed: f64,
    /// From the seed's start until its bytes were on disk (fsynced beside
    /// the follower, which does not wait for it).
    durable: f64,
    /// CPU time of this process (both ends of the seed) during the seed.
    seed_cpu: f64,
    catch_up: f64,
}

/// Runs the section and prints its medians.
pub async fn run(
    broker: &Broker,
    registry: &str,
    dir: &Path,
    partitions: i32,
    size_mb: u64,
    behind: i64,
    rounds: usize,
) -> anyhow::Result<()> {
    let leader = Leader::start(broker, registry, dir, partitions, 10_000).await?;
    leader.wait_published(Duration::from_secs(120)).await?;
    let mut writer = env::writer(&leader.path)?;
    let peer = Follower::start(broker, registry, dir, &leader.prefix);
    peer.wait_applied(env::head(&writer)?, Duration::from_secs(120))
        .await?;
    let replica = peer.replica.clone();
    tokio::task::spawn_blocking(move || pad(&replica, size_mb)).await??;
    let bytes = std::fs::metadata(&peer.replica)?.len();
    println!(
        "\n## seed: a {:.0} MB replica from a peer's /snapshot over loopback, vs cp of the file; then catching up {behind} changes",
        bytes as f64 / 1e6
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/snapshot", listener.local_addr()?);
    let app = barista_consumer::snapshot::router(peer.replica.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut next_id = 10_001;
    let mut results = Vec::new();
    for round in 1..=rounds {
        let copy = dir.join("cp.db");
        let t = Instant::now();
        cp(&peer.replica, &copy)?;
        let cp_s = t.elapsed().as_secs_f64();
        std::fs::remove_file(&copy)?;
        let t = Instant::now();
        cp(&peer.replica, &copy)?;
        std::fs::File::open(&copy)?.sync_all()?;
        let cp_fsync = t.elapsed().as_secs_f64();
        std::fs::remove_file(&copy)?;

        let seeded = dir.join(format!("seeded-{round}.db"));
        let mut config = FollowerConfig::new(&seeded, "unused", "unused:9092", "http://unused");
        config.seed_from = Some(url.clone());
        let (t, cpu) = (Instant::now(), env::cpu_time());
        let mut never = std::pin::pin!(std::future::pending::<()>());
        anyhow::ensure!(barista_consumer::seed::seed_if_asked(&config, &mut never).await?);
        let seed = t.elapsed().as_secs_f64();
        let seed_cpu = (env::cpu_time() - cpu).as_secs_f64();
        let durable = tokio::spawn(until_gone(
            barista_consumer::seed::unsynced_path(&seeded),
            t,
        ));

        // The leader goes on after the snapshot; the seeded follower then
        // starts from the offsets in its file.
        env::write_rows(&mut writer, next_id, next_id + behind, 100)?;
        next_id += behind;
        leader.wait_published(Duration::from_secs(120)).await?;
        let head = env::head(&writer)?;
        let t = Instant::now();
        let follower = Follower::start_on(broker, registry, &seeded, &leader.prefix, vec![]);
        follower
            .wait_applied(head, Duration::from_secs(300))
            .await
            .context("the seeded follower catching up")?;
        let catch_up = t.elapsed().as_secs_f64();
        follower.stop_keeping_replica().await?;
        let count = |db: &Path| -> anyhow::Result<i64> {
            Ok(Connection::open(db)?.query_row("SELECT count(*) FROM items", [], |r| r.get(0))?)
        };
        let (want, got) = (count(&leader.path)?, count(&seeded)?);
        anyhow::ensure!(
            want == got,
            "the caught-up follower has {got} rows, the leader {want}"
        );
        let durable = durable.await??;
        std::fs::remove_file(&seeded)?;
        println!(
            "  round {round}: cp {cp_s:.2} s, cp + fsync {cp_fsync:.2} s, seed {seed:.2} s ({:.2}x cp's MB/s, {seed_cpu:.2} s CPU), on disk {durable:.2} s ({:.2}x cp + fsync's), caught up in {catch_up:.2} s",
            cp_s / seed,
            cp_fsync / durable
        );
        results.push(Round {
            cp: cp_s,
            cp_fsync,
            seed,
            durable,
            seed_cpu,
            catch_up,
        });
    }
    server.abort();
    peer.stop().await?;
    leader.stop().await?;

    let m = |f: fn(&Round) -> f64| median(&results.iter().map(f).collect::<Vec<_>>());
    let mbps = |s: f64| bytes as f64 / 1e6 / s;
    let ratio = m(|r| r.cp / r.seed);
    println!("  medians of {rounds} rounds:");
    println!(
        "    cp (baseline)        {:>6.2} s  {:>7.0} MB/s",
        m(|r| r.cp),
        mbps(m(|r| r.cp))
    );
    println!(
        "    cp + fsync           {:>6.2} s  {:>7.0} MB/s",
        m(|r| r.cp_fsync),
        mbps(m(|r| r.cp_fsync))
    );
    println!(
        "    seed from /snapshot  {:>6.2} s  {:>7.0} MB/s  seed/cp MB/s {ratio:.2} (goal >= 0.5: {}; until the follower can start)",
        m(|r| r.seed),
        mbps(m(|r| r.seed)),
        if ratio >= 0.5 { "ok" } else { "MISSED" },
    );
    println!(
        "    seed on disk         {:>6.2} s  {:>7.0} MB/s  seed on disk/(cp + fsync) MB/s {:.2} (the follower follows meanwhile)",
        m(|r| r.durable),
        mbps(m(|r| r.durable)),
        m(|r| r.cp_fsync / r.durable)
    );
    println!(
        "    seed CPU             {:>6.2} s  (server and client, both in this process; 2 threads or more at a time)",
        m(|r| r.seed_cpu)
    );
    println!(
        "    caught up            {:>6.2} s  after {behind} changes committed since the snapshot ({:.0} changes/s, from the follower's start)",
        m(|r| r.catch_up),
        behind as f64 / m(|r| r.catch_up)
    );
    Ok(())
}

/// When `marker` is gone (polled), in seconds since `since`.
async fn until_gone(marker: std::path::PathBuf, since: Instant) -> anyhow::Result<f64> {
    while marker.exists() {
        anyhow::ensure!(
            since.elapsed() < Duration::from_secs(600),
            "{} still there after 10 minutes",
            marker.display()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(since.elapsed().as_secs_f64())
}

/// `cp from to`.
fn cp(from: &Path, to: &Path) -> anyhow::Result<()> {
    let st = std::process::Command::new("cp")
        .arg(from)
        .arg(to)
        .status()
        .context("running cp")?;
    anyhow::ensure!(st.success(), "cp failed");
    Ok(())
}

/// Grows the replica to about `size_mb` MB with a table of random blobs,
/// written beside the running follower (WAL mode: it keeps applying), then
/// checkpointed into the file.
fn pad(replica: &Path, size_mb: u64) -> anyhow::Result<()> {
    let c = Connection::open(replica)?;
    c.busy_timeout(Duration::from_secs(30))?;
    c.execute_batch("CREATE TABLE bench_padding(id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")?;
    let mut rng = rand::rng();
    let mut blob = vec![0u8; 64 * 1024];
    for batch in 0..size_mb {
        c.execute_batch("BEGIN")?;
        for i in 0..16 {
            rng.fill_bytes(&mut blob);
            c.execute(
                "INSERT INTO bench_padding VALUES (?1, ?2)",
                rusqlite::params![(batch * 16 + i) as i64, blob],
            )?;
        }
        c.execute_batch("COMMIT")?;
    }
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}
