//! One measurement: a workload's upserts on a fresh database, timed by wall
//! clock and by this thread's on-CPU time, with the bytes it wrote; and the
//! check that the setup's triggers logged every upsert.

use std::time::{Duration, Instant};

use anyhow::bail;
use rusqlite::{params, Connection};

use crate::setups::Setup;
use crate::workload::{Upsert, Workload, UPSERT_SQL};

/// This thread's time on a CPU (Linux schedstat, nanoseconds), if readable:
/// unlike wall time it does not count waiting for the other processes that
/// share the machine, nor for fsync.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
    (ns > 0).then(|| Duration::from_nanos(ns))
}

/// Bytes this thread has passed to write() (WAL frames, checkpoints), if
/// readable: deterministic, unlike the clocks, so it shows what a setup adds
/// to the I/O even on a busy machine.
fn thread_written() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/thread-self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
}

/// One measurement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) rows: usize,
    pub(crate) wall: Duration,
    pub(crate) cpu: Option<Duration>,
    pub(crate) written: Option<u64>,
}

impl Sample {
    pub(crate) fn rate(&self) -> f64 {
        self.rows as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Runs one workload on a prepared connection.
pub(crate) fn measure(
    conn: &Connection,
    workload: Workload,
    batch: usize,
    work: &[Upsert],
) -> anyhow::Result<Sample> {
    let mut upsert = conn.prepare_cached(UPSERT_SQL)?;
    let (cpu_start, written_start) = (thread_cpu(), thread_written());
    let start = Instant::now();
    match workload {
        Workload::Batched => {
            let mut begin = conn.prepare_cached("BEGIN IMMEDIATE")?;
            let mut commit = conn.prepare_cached("COMMIT")?;
            for chunk in work.chunks(batch.max(1)) {
                begin.execute([])?;
                for u in chunk {
                    upsert.execute(params![u.id, u.name, u.coffee, u.updated_at])?;
                }
                commit.execute([])?;
            }
        }
        // Autocommit: each upsert (with its triggers) is its own transaction.
        Workload::Single => {
            for u in work {
                upsert.execute(params![u.id, u.name, u.coffee, u.updated_at])?;
            }
        }
    }
    let wall = start.elapsed();
    let cpu = cpu_start
        .zip(thread_cpu())
        .map(|(a, b)| b.saturating_sub(a));
    let written = written_start
        .zip(thread_written())
        .map(|(a, b)| b.saturating_sub(a));
    Ok(Sample {
        rows: work.len(),
        wall,
        cpu,
        written,
    })
}

/// Checks the triggers did their job, so a broken setup cannot look fast.
pub(crate) fn check_logged(conn: &Connection, setup: &Setup, rows: usize) -> anyhow::Result<()> {
    if let Some(log) = setup.log {
        let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {log}"), [], |r| r.get(0))?;
        if n as usize != rows {
            bail!("{}: {log} has {n} rows after {rows} upserts", setup.name);
        }
    }
    Ok(())
}
