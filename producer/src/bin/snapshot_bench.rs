//! `snapshot-bench`: what a table snapshot costs the leader's writers, and how fast it goes.
//!
//! A real leader file (WAL, synchronous=NORMAL) with a `customers` table of `--rows` rows,
//! captured by barista. An application thread commits single-row transactions at
//! `--rate` per second on its own connection, and the commit latency of each is recorded:
//! - `none`: no snapshot runs (the baseline);
//! - `blocking`: the old snapshot, the whole table copied into the changelog in ONE write
//!   transaction;
//! - `incremental`: `barista_producer::snapshot`, chunks of `--chunk-rows` rows read in read
//!   transactions, one tiny high-watermark write each, paced as the producer paces them.
//!
//! Then the snapshot's leader-side rate (rows read and announced per second) against
//! a floor: a raw `SELECT *` of the table that also builds the same bytes in memory.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use barista_producer::capture::{open_leader, Capture};
use clap::Parser;
use rusqlite::Connection;

/// Writer latency during a snapshot: none vs the old blocking one vs the incremental one.
#[derive(Debug, Parser)]
#[command(
    name = "snapshot-bench",
    after_help = "Example:\n  cargo run --release -p barista-producer --bin snapshot-bench -- --rows 1000000 --rate 1000"
)]
struct Args {
    /// Rows in the captured table.
    #[arg(long, default_value_t = 1_000_000)]
    rows: i64,
    /// Application commits per second (one row each).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Rows per incremental snapshot chunk.
    #[arg(long, default_value_t = barista_producer::snapshot::DEFAULT_CHUNK_ROWS)]
    chunk_rows: usize,
    /// Pause after each chunk, as a multiple of the time it took.
    #[arg(long, default_value_t = barista_producer::snapshot::DEFAULT_PAUSE_FACTOR)]
    pause_factor: u32,
    /// How long the baseline (no snapshot) writes, in seconds.
    #[arg(long, default_value_t = 5)]
    baseline_seconds: u64,
    /// Directory for the scratch databases (default: a temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

/// A leader with `rows` customers, captured (its snapshot not started).
fn leader(path: &Path, rows: i64) -> anyhow::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let conn = open_leader(path)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(&format!(
        "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, favourite TEXT, visits INTEGER NOT NULL);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows})
         INSERT INTO customers SELECT i, 'customer ' || i, 'cortado', i % 17 FROM s;"
    ))?;
    drop(Capture::install(conn, &[], false)?);
    // Install started an incremental snapshot; each mode decides what runs.
    open_leader(path)?
        .execute_batch("DELETE FROM _barista_snapshots; DELETE FROM _barista_snapshot_keys;")?;
    Ok(())
}

/// Commits single-row transactions at `rate`/s until `stop`; returns each commit's latency.
fn application(
    path: &Path,
    rate: u64,
    rows: i64,
    stop: &AtomicBool,
) -> anyhow::Result<Vec<Duration>> {
    let conn = open_leader(path)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let every = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = Instant::now();
    let mut lat = Vec::new();
    let mut i: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = start + every * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let id = (i as i64 * 7919) % rows + 1;
        let t = Instant::now();
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; UPDATE customers SET visits = visits + 1 WHERE id = {id}; COMMIT;"
        ))?;
        lat.push(t.elapsed());
        i += 1;
    }
    Ok(lat)
}

/// p50, p99 and max of `lat`, in ms.
fn summary(lat: &mut [Duration]) -> (f64, f64, f64) {
    lat.sort();
    let at = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    (at(0.5), at(0.99), at(1.0))
}

/// Runs `snapshot` on `path` while the application writes; returns its latencies and how long
/// the snapshot took.
fn during(
    path: &Path,
    args: &Args,
    snapshot: impl FnOnce(&mut Connection) -> anyhow::Result<()>,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let stop = Arc::new(AtomicBool::new(false));
    let app = {
        let (p, s, rate, rows) = (path.to_owned(), stop.clone(), args.rate, args.rows);
        std::thread::spawn(move || application(&p, rate, rows, &s))
    };
    // Let the application settle into its pace first.
    std::thread::sleep(Duration::from_millis(300));
    let mut conn = open_leader(path)?;
    let t = Instant::now();
    let r = snapshot(&mut conn);
    let took = t.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let lat = app
        .join()
        .map_err(|_| anyhow::anyhow!("application thread panicked"))??;
    r?;
    Ok((lat, took))
}

/// The scratch directory, removed however the bench ends.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let scratch = Scratch(
        args.dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
            .join(format!("snapshot-bench-{}", std::process::id())),
    );
    std::fs::create_dir_all(&scratch.0)?;
    let path = scratch.0.join("leader.db");
    println!(
        "snapshot-bench: {} rows, application {} single-row commits/s, chunk {} rows, pause {}x the chunk's time",
        args.rows, args.rate, args.chunk_rows, args.pause_factor
    );

    leader(&path, args.rows).context("building the leader")?;
    let (mut none, _) = during(&path, &args, |_| {
        std::thread::sleep(Duration::from_secs(args.baseline_seconds));
        Ok(())
    })?;

    leader(&path, args.rows)?;
    let (mut blocking, blocking_took) = during(&path, &args, |conn| {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let columns: Vec<String> = ["id", "name", "favourite", "visits"]
            .map(String::from)
            .to_vec();
        barista_producer::triggers::snapshot(&tx, 1, "customers", &columns)?;
        tx.commit()?;
        Ok(())
    })?;

    leader(&path, args.rows)?;
    let (chunk_rows, pause_factor) = (args.chunk_rows, args.pause_factor);
    let mut held = Vec::new();
    let mut cap = Capture::install(open_leader(&path)?, &[], false)?;
    let (mut incremental, incremental_took) = during(&path, &args, |conn| {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        barista_producer::snapshot::begin(conn, 1)?;
        conn.execute_batch("COMMIT")?;
        let mut unacked = 0;
        while let Some(step) = barista_producer::snapshot::step(&mut cap, chunk_rows)? {
            if step.progress.done {
                break;
            }
            // Kafka's acknowledgement, as the producer's prune transaction records it (one
            // per 20 chunks here; the producer prunes anyway, snapshot or not).
            unacked += 1;
            if step.waiting || unacked >= 20 {
                barista_producer::snapshot::acknowledge_all(&mut cap)?;
                unacked = 0;
            }
            if step.waiting {
                continue;
            }
            held.push(step.held);
            // The producer's pacing (see snapshot::driver).
            std::thread::sleep((step.took * pause_factor).max(Duration::from_millis(1)));
        }
        Ok(())
    })?;
    drop(cap);

    // The floor: read every row once and build the same bytes.
    let conn = open_leader(&path)?;
    let t = Instant::now();
    let mut bytes = 0usize;
    {
        let mut stmt = conn.prepare("SELECT * FROM customers")?;
        let mut rows = stmt.query([])?;
        let mut buf = Vec::with_capacity(256);
        while let Some(r) = rows.next()? {
            buf.clear();
            for i in 0..4 {
                match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Integer(v) => {
                        buf.extend_from_slice(&v.to_le_bytes())
                    }
                    rusqlite::types::ValueRef::Text(s) | rusqlite::types::ValueRef::Blob(s) => {
                        buf.extend_from_slice(s)
                    }
                    rusqlite::types::ValueRef::Real(f) => buf.extend_from_slice(&f.to_le_bytes()),
                    rusqlite::types::ValueRef::Null => buf.push(0),
                }
            }
            bytes += buf.len();
        }
    }
    let floor = t.elapsed();

    println!("\nwriter commit latency (ms)      p50      p99      max   commits");
    for (name, lat) in [
        ("no snapshot", &mut none),
        ("blocking snapshot (old)", &mut blocking),
        ("incremental snapshot", &mut incremental),
    ] {
        let n = lat.len();
        let (p50, p99, max) = summary(lat);
        println!("  {name:<26} {p50:>8.3} {p99:>8.3} {max:>8.1} {n:>9}");
    }
    let (_, base_p99, _) = summary(&mut none);
    let (_, inc_p99, inc_max) = summary(&mut incremental);
    let (_, _, blk_max) = summary(&mut blocking);
    held.sort();
    let held_max = held.last().copied().unwrap_or_default();
    let held_p50 = held.get(held.len() / 2).copied().unwrap_or_default();
    println!(
        "\nincremental p99 / baseline p99 = {:.2} (goal <= 2), incremental max = {:.1} ms (goal <= 50), old blocking max = {:.1} ms",
        inc_p99 / base_p99,
        inc_max,
        blk_max
    );
    println!(
        "chunks: {}, write lock held per chunk (its watermark) p50 {:.3} ms, max {:.3} ms",
        held.len(),
        held_p50.as_secs_f64() * 1000.0,
        held_max.as_secs_f64() * 1000.0
    );
    let rate = |d: Duration| args.rows as f64 / d.as_secs_f64();
    println!(
        "snapshot rows/s: incremental {:.0}, old blocking {:.0}; floor (SELECT * building {} bytes) {:.0}; incremental / floor = {:.2}",
        rate(incremental_took),
        rate(blocking_took),
        bytes,
        rate(floor),
        rate(incremental_took) / rate(floor)
    );
    Ok(())
}
