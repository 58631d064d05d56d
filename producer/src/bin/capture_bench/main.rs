//! `capture-bench`: what barista's capture triggers cost the leader's writers.
//!
//! Measures upsert throughput on a `customers` table in a real database file
//! (WAL, synchronous=NORMAL) with no capture, with the cheapest possible
//! trigger (key only), with barista's triggers (installed by
//! `Capture::install`), and with JSON-building triggers. Every measurement
//! runs on a fresh database in a temporary directory; setups are interleaved
//! and repeated, and the medians are compared as cost ratios (time per row).

/// What is compared: the capture setups and the SQL that installs each.
mod setups;
/// The work: the `customers` table and the seeded upserts.
mod workload;
/// The databases: per-setup templates and a fresh copy per measurement.
mod database;
/// One timed run of a workload, and the check that the triggers logged it.
mod measure;
/// The printed header, rows/s table and cost ratios.
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::bail;
use clap::Parser;

use crate::database::{build_template, fresh_copy, ScratchDir};
use crate::measure::{check_logged, measure, Sample};
use crate::setups::{Setup, EXPERIMENTS, SETUPS};
use crate::workload::{upserts, Workload};

/// Measure the leader write cost of barista's capture triggers against no
/// capture, a key-only trigger floor and JSON-building triggers.
#[derive(Debug, Parser)]
#[command(
    name = "capture-bench",
    after_help = "Examples:\n  cargo run --release -p barista-producer --bin capture-bench\n  \
capture-bench --rounds 9 --rows 50000 --single-rows 10000\n  \
capture-bench --experiments --setups key-only,barista,x-lean\n\n\
Each measurement runs on a fresh copy of a per-setup database file (WAL, synchronous=NORMAL) in a\n\
temp directory, preloaded with --customers rows; the upserts alternate between a new key and a\n\
random existing key, so both the INSERT and the ON CONFLICT DO UPDATE paths (and triggers) run.\n\
Setups are interleaved round by round. The table shows median rows/s; cost ratios (time per row,\n\
1.05x = 5% more time per upsert) are medians of per-round ratios of neighbouring measurements, by\n\
wall clock and by on-CPU time. On a busy machine, count instructions instead (deterministic):\n  \
valgrind --tool=callgrind --callgrind-out-file=/dev/null capture-bench --setups barista --rounds 1\n\
  --single-rows 1 --rows N  (run with two values of N; the difference / rows is the cost per row)"
)]
struct Args {
    /// Measurements per setup and workload; the median is reported.
    #[arg(long, env = "BARISTA_BENCH_ROUNDS", default_value_t = 5)]
    rounds: usize,
    /// Upserts per batched measurement (transactions of --batch rows).
    #[arg(long, env = "BARISTA_BENCH_ROWS", default_value_t = 100_000)]
    rows: usize,
    /// Upserts per single-row measurement (one transaction each).
    #[arg(long, env = "BARISTA_BENCH_SINGLE_ROWS", default_value_t = 20_000)]
    single_rows: usize,
    /// Rows per transaction in the batched workload.
    #[arg(long, env = "BARISTA_BENCH_BATCH", default_value_t = 1000)]
    batch: usize,
    /// Customers in the table before each measurement (the "existing keys").
    #[arg(long, env = "BARISTA_BENCH_CUSTOMERS", default_value_t = 10_000)]
    customers: usize,
    /// SQLite page size of the bench databases.
    #[arg(long, env = "BARISTA_BENCH_PAGE_SIZE", default_value_t = 4096)]
    page_size: u32,
    /// Also run the experimental trigger variants (x-*), for investigation.
    #[arg(long, env = "BARISTA_BENCH_EXPERIMENTS")]
    experiments: bool,
    /// Run only these setups (comma-separated names), e.g. to profile one.
    #[arg(long, env = "BARISTA_BENCH_SETUPS", value_delimiter = ',')]
    setups: Vec<String>,
    /// Directory for the temporary databases (default: the system temp dir).
    #[arg(long, env = "BARISTA_BENCH_DIR")]
    dir: Option<PathBuf>,
}

fn run(args: &Args) -> anyhow::Result<()> {
    if args.rounds == 0 || args.rows == 0 || args.single_rows == 0 {
        bail!("--rounds, --rows and --single-rows must be at least 1");
    }
    let mut setups: Vec<Setup> = SETUPS.to_vec();
    if args.experiments {
        setups.extend(EXPERIMENTS);
    }
    if !args.setups.is_empty() {
        for name in &args.setups {
            if !setups.iter().any(|s| s.name == name) {
                bail!("unknown setup {name:?} (x-* setups need --experiments)");
            }
        }
        setups.retain(|s| args.setups.iter().any(|n| n == s.name));
    }
    let scratch = ScratchDir::new(args.dir.clone())?;
    let path = scratch.0.join("leader.db");
    let workloads = [Workload::Batched, Workload::Single];

    report::print_header(args, &scratch.0);

    let started = Instant::now();
    let templates: Vec<PathBuf> = setups
        .iter()
        .map(|setup| {
            let t = scratch.0.join(format!("template-{}.db", setup.name));
            build_template(setup, &t, args).map(|()| t)
        })
        .collect::<anyhow::Result<_>>()?;

    // samples[setup][workload][round]
    let mut samples: Vec<[Vec<Sample>; 2]> = vec![[Vec::new(), Vec::new()]; setups.len()];
    for round in 0..args.rounds {
        let seed = 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(round as u64 + 1);
        let work = [
            upserts(args.rows, args.customers, seed),
            upserts(args.single_rows, args.customers, seed),
        ];
        for (w, workload) in workloads.iter().enumerate() {
            // Rotate the order every round so no setup always runs first or
            // last; neighbours in time share the machine's mood, which the
            // paired ratios in the report rely on.
            for k in 0..setups.len() {
                let s = (k + round) % setups.len();
                let conn = fresh_copy(&templates[s], &path, args.page_size)?;
                let sample = measure(&conn, *workload, args.batch, &work[w])?;
                check_logged(&conn, &setups[s], work[w].len())?;
                samples[s][w].push(sample);
            }
        }
        eprint!(
            "\r  round {}/{} ({:.0?}) ",
            round + 1,
            args.rounds,
            started.elapsed()
        );
    }
    eprintln!();

    report::print_results(args.batch, &setups, &samples);
    println!("\ntotal {:.1?}", started.elapsed());
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("capture-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
