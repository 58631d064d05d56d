//! `barista-bench`: what barista costs and how stale its replicas get, each
//! figure next to a baseline measured in the same run on the same broker.

mod catchup;
mod env;
mod latency;
mod load;
mod pipeline;
mod publish;
mod seed;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use env::{median, percentile, Broker, BrokerKind};

/// The allocator of the product's binaries (`producer`, `consumer`), so the
/// figures are theirs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Benchmarks side by side: publish throughput against raw librdkafka,
/// end-to-end latency against one produce→consume hop, sustained
/// throughput, and follower memory with and without a backlog.
#[derive(Debug, Parser)]
#[command(
    name = "barista-bench",
    after_help = "Examples:\n  cargo run --release -p barista-bench\n  \
cargo run --release -p barista-bench -- --broker nisshi\n  \
barista-bench --sections latency --rates 1000,10000 --latency-seconds 10\n  \
barista-bench --broker nisshi --long        # 10x sizes, a 10-million-change backlog\n  \
barista-bench --sections seed --seed-size-mb 1024   # seeding a follower vs cp\n\n\
Every section runs barista and its baseline in the same process against the same broker and prints\n\
medians and the ratio. Leader write cost (capture-bench) and follower apply rate (apply-bench) have\n\
their own commands. The machine is shared and noisy: compare ratios, not absolute figures."
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Broker to run against.
    #[arg(long, env = "BARISTA_BENCH_BROKER", value_enum, default_value = "mock")]
    broker: BrokerKind,
    /// The nisshi broker binary (for --broker nisshi).
    #[arg(long, env = "BARISTA_NISSHI", default_value_os_t = env::default_nisshi())]
    nisshi: PathBuf,
    /// nisshi's storage engine (relative paths are in the bench's temp dir).
    #[arg(
        long,
        env = "BARISTA_BENCH_NISSHI_STORAGE",
        default_value = "memory://nisshi/"
    )]
    nisshi_storage: String,
    /// Sections to run, comma-separated: publish, latency, sustained, memory, catchup,
    /// seed (not run by default: it needs about 4 × --seed-size-mb of disk).
    #[arg(
        long,
        env = "BARISTA_BENCH_SECTIONS",
        value_delimiter = ',',
        default_value = "publish,latency,sustained,memory,catchup"
    )]
    sections: Vec<String>,
    /// Rounds of the publish section (median reported).
    #[arg(long, env = "BARISTA_BENCH_ROUNDS", default_value_t = 3)]
    rounds: usize,
    /// Changes per publish measurement.
    #[arg(long, env = "BARISTA_BENCH_PUBLISH_CHANGES", default_value_t = 100_000)]
    publish_changes: i64,
    /// Offered rates for the latency section, changes/s.
    #[arg(
        long,
        env = "BARISTA_BENCH_RATES",
        value_delimiter = ',',
        default_value = "1000,10000"
    )]
    rates: Vec<u64>,
    /// `fetch.wait.max.ms` of the follower and of the hop's consumer in the
    /// latency section. 10 is the follower's default. librdkafka's mock
    /// cluster (and nisshi) hold a fetch that finds no data for this long
    /// even when data arrives meanwhile, so on them it adds up to this much
    /// to every latency; Apache Kafka answers a waiting fetch as data comes.
    #[arg(long, env = "BARISTA_BENCH_FETCH_WAIT_MS", default_value_t = 10)]
    fetch_wait_ms: u64,
    /// Seconds per latency measurement.
    #[arg(long, env = "BARISTA_BENCH_LATENCY_SECONDS", default_value_t = 5)]
    latency_seconds: u64,
    /// Seconds the leader writes flat out in the sustained section.
    #[arg(long, env = "BARISTA_BENCH_SUSTAINED_SECONDS", default_value_t = 5)]
    sustained_seconds: u64,
    /// Backlog for the memory section (default: 100k on mock, whose
    /// partitions keep ~5 MiB each; 1M on nisshi).
    #[arg(long, env = "BARISTA_BENCH_BACKLOG")]
    backlog: Option<i64>,
    /// Changes in the catchup section's commit group (default: 20k on mock,
    /// whose partitions keep ~5 MiB each; 1M on nisshi).
    #[arg(long, env = "BARISTA_BENCH_CATCHUP_CHANGES")]
    catchup_changes: Option<i64>,
    /// Copies of the group the catchup section's topic holds (the producer
    /// SIGKILLed mid-group `copies - 1` times).
    #[arg(long, env = "BARISTA_BENCH_CATCHUP_COPIES", default_value_t = 5)]
    catchup_copies: usize,
    /// Partitions of every benchmark topic.
    #[arg(long, env = "BARISTA_BENCH_PARTITIONS", default_value_t = 6)]
    partitions: i32,
    /// Longer runs: 10x changes and seconds, a 10-million-change backlog.
    #[arg(long, env = "BARISTA_BENCH_LONG")]
    long: bool,
    /// Size of the replica the seed section seeds, in MB.
    #[arg(long, env = "BARISTA_BENCH_SEED_SIZE_MB", default_value_t = 1024)]
    seed_size_mb: u64,
    /// Changes the leader commits after each seed, which the seeded follower
    /// then catches up with.
    #[arg(long, env = "BARISTA_BENCH_SEED_BEHIND", default_value_t = 10_000)]
    seed_behind: i64,
    /// Directory for the temporary databases (default: the system temp dir).
    #[arg(long, env = "BARISTA_BENCH_DIR")]
    dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// (internal) Run one follower in this process, for the memory section.
    #[command(hide = true)]
    Follow {
        #[arg(long)]
        replica: PathBuf,
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        registry: String,
        #[arg(long)]
        topic_prefix: String,
        #[arg(long, default_value = "bench-mem")]
        follower_id: String,
        #[arg(long)]
        http_listen: Option<std::net::SocketAddr>,
    },
    /// (internal) Run one producer in this process, for the catchup section.
    #[command(hide = true)]
    Produce {
        #[arg(long)]
        leader: PathBuf,
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        registry: String,
        #[arg(long)]
        topic_prefix: String,
        #[arg(long)]
        partitions: i32,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("barista-bench: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let r = match args.command {
        Some(Cmd::Follow {
            ref replica,
            ref brokers,
            ref registry,
            ref topic_prefix,
            ref follower_id,
            http_listen,
        }) => {
            let mut c =
                barista_consumer::FollowerConfig::new(replica, follower_id, brokers, registry);
            c.topic_prefix = topic_prefix.clone();
            c.http_listen = http_listen;
            rt.block_on(barista_consumer::run(c, std::future::pending()))
        }
        Some(Cmd::Produce {
            ref leader,
            ref brokers,
            ref registry,
            ref topic_prefix,
            partitions,
        }) => {
            let mut c = barista_producer::ProducerConfig::new(leader, brokers, registry);
            c.topic_prefix = topic_prefix.clone();
            c.partitions = partitions;
            c.http_listen = None;
            rt.block_on(barista_producer::run(c, std::future::pending()))
        }
        None => {
            for s in &args.sections {
                if ![
                    "publish",
                    "latency",
                    "sustained",
                    "memory",
                    "catchup",
                    "seed",
                ]
                .contains(&s.as_str())
                {
                    eprintln!("barista-bench: bad configuration: unknown section {s:?}");
                    return ExitCode::from(2);
                }
            }
            rt.block_on(run(&args))
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("barista-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let tmp = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let dir = tmp.path();
    let broker = Broker::start(args.broker, &args.nisshi, &args.nisshi_storage, dir)?;
    let registry = env::registry(dir).await?;
    let reg = registry.url().to_owned();
    let scale = if args.long { 10 } else { 1 };
    let has = |s: &str| args.sections.iter().any(|x| x == s);
    let parts = args.partitions;
    println!(
        "barista-bench: broker {:?} ({}), {} CPUs, {parts} partitions per topic, embedded registry",
        args.broker,
        broker.bootstrap(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // A size for the baselines: barista's mean event size.
    let mut event_size = 400.0;
    if has("publish") {
        let n = args.publish_changes * scale;
        println!(
            "\n## publish: {n} committed changes of ~100-byte rows, until Kafka acknowledged all"
        );
        let (mut b, mut r) = (Vec::new(), Vec::new());
        // The table checksums' cost: the same run without them, in the same round.
        let mut plain = Vec::new();
        for round in 1..=args.rounds {
            // Alternating which goes first: a later run in a round tends to be slower (the
            // broker holds more), which must not count for or against the checksums.
            let ((run, size), (without, _)) = if round % 2 == 1 {
                let without = publish::barista(&broker, &reg, dir, n, parts, false).await?;
                (
                    publish::barista(&broker, &reg, dir, n, parts, true).await?,
                    without,
                )
            } else {
                let with = publish::barista(&broker, &reg, dir, n, parts, true).await?;
                (
                    with,
                    publish::barista(&broker, &reg, dir, n, parts, false).await?,
                )
            };
            println!(
                "  round {round}: table checksums on {:.2} µs CPU/change, off {:.2} µs; on/off {:.3}",
                run.cpu_us,
                without.cpu_us,
                run.cpu_us / without.cpu_us
            );
            plain.push(without);
            event_size = size;
            let raw = publish::raw(&broker, n, size.round() as usize, parts).await?;
            println!(
                "  round {round}: barista {:>9.0}/s ({:.1} µs CPU/change)   raw librdkafka {:>9.0}/s ({:.1} µs CPU/msg)   ratio {:.2}",
                run.rate, run.cpu_us, raw.rate, raw.cpu_us, run.rate / raw.rate
            );
            b.push((run.rate, run.cpu_us));
            r.push((raw.rate, raw.cpu_us));
        }
        let br: Vec<f64> = b.iter().map(|x| x.0).collect();
        let rr: Vec<f64> = r.iter().map(|x| x.0).collect();
        let ratios: Vec<f64> = br.iter().zip(&rr).map(|(a, b)| a / b).collect();
        println!(
            "  median: barista {:.0} changes/s, raw {:.0} msgs/s of {:.0} bytes; barista/raw {:.2} (goal >= 0.5: {}); CPU/change {:.1} vs {:.1} µs",
            median(&br),
            median(&rr),
            event_size,
            median(&ratios),
            if median(&ratios) >= 0.5 { "ok" } else { "MISSED" },
            median(&b.iter().map(|x| x.1).collect::<Vec<_>>()),
            median(&r.iter().map(|x| x.1).collect::<Vec<_>>()),
        );
        let on: Vec<f64> = b.iter().map(|x| x.1).collect();
        let off: Vec<f64> = plain.iter().map(|x| x.cpu_us).collect();
        let cost: Vec<f64> = on.iter().zip(&off).map(|(a, b)| a / b).collect();
        println!(
            "  table checksums: CPU/change {:.2} µs with, {:.2} µs without (medians); with/without {:.3} (goal <= 1.05: {}); changes/s {:.0} with, {:.0} without",
            median(&on),
            median(&off),
            median(&cost),
            if median(&cost) <= 1.05 { "ok" } else { "MISSED" },
            median(&br),
            median(&plain.iter().map(|x| x.rate).collect::<Vec<_>>()),
        );
        let hash_ns = median(
            &(0..5)
                .map(|_| publish::row_hash_ns(1_000_000))
                .collect::<anyhow::Result<Vec<_>>>()?,
        );
        println!(
            "  table checksums, measured alone: {hash_ns:.0} ns to hash a row = {:.1} % of the CPU/change without them (an update hashes two rows)",
            hash_ns / 10.0 / median(&off)
        );
    }

    if has("latency") {
        let secs = Duration::from_secs(args.latency_seconds * scale as u64);
        println!("\n## latency: leader commit → visible on a follower, vs one produce→consume hop ({secs:?} per rate, fetch.wait.max.ms={})", args.fetch_wait_ms);
        for &rate in &args.rates {
            let fw = args.fetch_wait_ms;
            let b = latency::barista(&broker, &reg, dir, rate, secs, parts, fw).await?;
            let h =
                latency::raw(&broker, rate, secs, event_size.round() as usize, parts, fw).await?;
            let (b50, b99) = (percentile(&b.ms, 50.0), percentile(&b.ms, 99.0));
            let (h50, h99) = (percentile(&h.ms, 50.0), percentile(&h.ms, 99.0));
            println!(
                "  {rate:>6}/s: barista p50 {b50:6.2} ms  p99 {b99:6.2} ms  max {:6.1} ms ({} txns) | hop p50 {h50:6.2} ms  p99 {h99:6.2} ms | ratio p50 {:.2} p99 {:.2} | goal p50 <= 5, p99 <= 20: {}",
                percentile(&b.ms, 100.0),
                b.ms.len(),
                b50 / h50,
                b99 / h99,
                if b50 <= 5.0 && b99 <= 20.0 { "ok" } else { "MISSED" }
            );
        }
    }

    if has("sustained") {
        let secs = Duration::from_secs(args.sustained_seconds * scale as u64);
        println!("\n## sustained: the leader writes 1000-row transactions flat out for {secs:?}; one follower");
        let s = load::sustained(&broker, &reg, dir, secs, parts).await?;
        println!(
            "  leader wrote {} changes at {:.0}/s; end to end (first write → follower applied the last) {:.0} changes/s (goal >= 100000: {}); {:.1} µs CPU/change for the whole process",
            s.written,
            s.write_rate,
            s.apply_rate,
            if s.apply_rate >= 100_000.0 { "ok" } else { "MISSED" },
            s.cpu_us
        );
        println!(
            "  position lag each second while writing: {:?}",
            s.lag_series
        );
        println!(
            "  then each second until caught up, (not yet acknowledged by Kafka, acknowledged but not applied): {:?}",
            s.drain_series
        );
    }

    if has("memory") {
        let backlog = args.backlog.unwrap_or(match args.broker {
            BrokerKind::Mock => 100_000,
            BrokerKind::Nisshi => 1_000_000 * scale,
        });
        println!(
            "\n## memory: follower process RSS while it applies a backlog, vs none (backlogs of {} and {backlog} changes)",
            backlog / 10
        );
        let empty = load::memory(&broker, &reg, dir, 0, parts, Duration::from_secs(3)).await?;
        let small = load::memory(
            &broker,
            &reg,
            dir,
            backlog / 10,
            parts,
            Duration::from_secs(3),
        )
        .await?;
        let full = load::memory(&broker, &reg, dir, backlog, parts, Duration::from_secs(3)).await?;
        for m in [&empty, &small, &full] {
            println!(
                "  backlog {:>9}: peak RSS {:6.1} MiB, applied in {:5.1} s ({:.0} changes/s)",
                m.backlog,
                m.peak_mib,
                m.seconds,
                m.backlog as f64 / m.seconds
            );
        }
        println!(
            "  peak RSS, backlog {} vs backlog {}: {:.2}x (goal: flat, i.e. ~1.0x); vs none: {:.2}x",
            full.backlog,
            small.backlog,
            full.peak_mib / small.peak_mib,
            full.peak_mib / empty.peak_mib
        );
    }
    if has("catchup") {
        let n = args.catchup_changes.unwrap_or(match args.broker {
            BrokerKind::Mock => 20_000,
            BrokerKind::Nisshi => 1_000_000 * scale,
        });
        let copies = args.catchup_copies.max(1);
        println!(
            "\n## catchup: a follower SIGKILLed halfway through a {n}-change streamed group and restarted, the topic holding {copies} copies (the producer SIGKILLed mid-group {} times), vs a follower never restarted, the group once",
            copies - 1
        );
        let once = catchup::publish(&broker, &reg, dir, n, parts, 1).await?;
        let many = catchup::publish(&broker, &reg, dir, n, parts, copies).await?;
        println!(
            "  topics: {} messages (the group once), {} messages ({copies} copies)",
            once.messages, many.messages
        );
        let (mut base, mut again) = (Vec::new(), Vec::new());
        for round in 1..=args.rounds {
            let b = catchup::never_restarted(&broker, &reg, dir, &once).await?;
            let r = catchup::restarted(&broker, &reg, dir, &many).await?;
            println!(
                "  round {round}: never restarted {b:>8.0} changes/s   restarted halfway, {copies} copies {r:>8.0} changes/s   ratio {:.2}",
                r / b
            );
            base.push(b);
            again.push(r);
        }
        let ratios: Vec<f64> = again.iter().zip(&base).map(|(r, b)| r / b).collect();
        println!(
            "  median: never restarted {:.0} changes/s, restarted {:.0} changes/s; restarted/never {:.2} (goal >= 0.5: {})",
            median(&base),
            median(&again),
            median(&ratios),
            if median(&ratios) >= 0.5 { "ok" } else { "MISSED" }
        );
    }
    if has("seed") {
        seed::run(
            &broker,
            &reg,
            dir,
            parts,
            args.seed_size_mb,
            args.seed_behind,
            args.rounds,
        )
        .await?;
    }
    registry.shutdown().await?;
    Ok(())
}
