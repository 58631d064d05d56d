//! `seed-bench`: how fast a follower is seeded from a peer's `/snapshot`,
//! against `cp` of the same replica file, measured in the same run.
//!
//! A replica of `--size-mb` (random, incompressible blobs) is served by the
//! follower's snapshot route on loopback; each round copies it with `cp`
//! (the baseline: no consistency, no hash, no fsync) and seeds a new replica
//! from it (online backup in one read transaction + SHA-256 on the serving
//! side; download + SHA-256 + fsync + rename on the seeding side). Rounds are
//! interleaved; medians are reported with the ratio seed/cp in MB/s.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use barista_consumer::FollowerConfig;
use barista_schemas::snapshot::REPLICA_SQL;
use clap::Parser;
use rand::RngCore as _;
use rusqlite::Connection;

/// Seed a follower from a peer's snapshot and compare with `cp`.
#[derive(Debug, Parser)]
#[command(name = "seed-bench")]
struct Args {
    /// Size of the replica to seed, in MB.
    #[arg(long, default_value_t = 1024)]
    size_mb: u64,
    /// Rounds (each: one cp, one seed).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where the files go (needs about 4 × size free); default: a temp dir
    /// under the current directory.
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    barista_runtime::logs::init_tracing();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return barista_runtime::exit::failure("seed-bench", &anyhow::Error::from(e)),
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => barista_runtime::exit::failure("seed-bench", &e),
    }
}

fn make_replica(path: &Path, size_mb: u64) -> anyhow::Result<()> {
    let c = Connection::open(path)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.execute_batch(REPLICA_SQL)?;
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")?;
    let rows = (size_mb * 16) as i64; // 64 KiB each
    let mut rng = rand::rng();
    let mut blob = vec![0u8; 64 * 1024];
    c.execute_batch("BEGIN")?;
    for id in 0..rows {
        rng.fill_bytes(&mut blob);
        c.execute("INSERT INTO t VALUES (?1, ?2)", rusqlite::params![id, blob])?;
    }
    c.execute("INSERT INTO _barista_position VALUES (1, ?1, 0, 0)", [rows])?;
    c.execute_batch("COMMIT")?;
    c.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir_in(".")?,
    };
    let peer = dir.path().join("peer.db");
    eprintln!(
        "making a {} MB replica in {}",
        args.size_mb,
        dir.path().display()
    );
    let (p, mb) = (peer.clone(), args.size_mb);
    tokio::task::spawn_blocking(move || make_replica(&p, mb)).await??;
    let bytes = std::fs::metadata(&peer)?.len();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = barista_consumer::snapshot::router(peer.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://{addr}/snapshot");

    let (mut cps, mut seeds) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let copy = dir.path().join("copy.db");
        let t = Instant::now();
        let st = std::process::Command::new("cp")
            .arg(&peer)
            .arg(&copy)
            .status()
            .context("running cp")?;
        anyhow::ensure!(st.success(), "cp failed");
        cps.push(t.elapsed());
        std::fs::remove_file(&copy)?;

        let seeded = dir.path().join("seeded.db");
        let mut config = FollowerConfig::new(&seeded, "bench", "unused:9092", "http://unused");
        config.seed_from = Some(url.clone());
        let t = Instant::now();
        let mut never = std::pin::pin!(std::future::pending::<()>());
        anyhow::ensure!(barista_consumer::seed::seed_if_asked(&config, &mut never).await?);
        seeds.push(t.elapsed());
        std::fs::remove_file(&seeded)?;
        eprintln!(
            "round {round}: cp {:.2}s, seed {:.2}s",
            cps[round].as_secs_f64(),
            seeds[round].as_secs_f64()
        );
    }
    let mbps = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    let (cp, seed) = (median(cps), median(seeds));
    println!(
        "replica: {:.0} MB, {} rounds, medians",
        bytes as f64 / 1e6,
        args.rounds
    );
    println!(
        "  cp (baseline)       {:>8.2} s  {:>8.1} MB/s",
        cp.as_secs_f64(),
        mbps(cp)
    );
    println!(
        "  seed from /snapshot {:>8.2} s  {:>8.1} MB/s  ({:.2}× cp's rate)",
        seed.as_secs_f64(),
        mbps(seed),
        mbps(seed) / mbps(cp)
    );
    Ok(())
}
