//! `barista-demo`: the embedded default. One command runs the whole pipeline
//! on this machine with nothing else to start: librdkafka's in-process mock
//! cluster (real Kafka protocol on loopback), barista's embedded registry, a
//! coffee-shop leader under load, the producer and several followers. It shows
//! lag live and ends with a report, including whether every replica equals
//! the leader row for row.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use barista_client::{Session, SessionConfig};
use barista_consumer::{FollowerConfig, Shared};
use barista_producer::ProducerConfig;
use barista_registry::{CompatibilityLevel, RegistryConfig};
use barista_schemas::contract;
use clap::Parser;
use rand::Rng;
use rusqlite::{params, Connection};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// mimalloc rather than glibc malloc: with many small short-lived buffers per
/// change, glibc's free lists (malloc_consolidate, unlink_chunk) took about a
/// quarter of the CPU in the sustained benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run barista end to end on the embedded default: an in-process Kafka (mock
/// cluster), the embedded schema registry, a coffee-shop leader, the producer
/// and followers, then report throughput, lag and replica equality.
#[derive(Debug, Parser)]
#[command(
    name = "barista-demo",
    version,
    after_help = "Example:\n  cargo run --release -p barista-demo -- --duration 20 --rate 2000 --followers 3"
)]
struct Args {
    /// How long the workload runs, in seconds.
    #[arg(long, env = "BARISTA_DEMO_DURATION", default_value_t = 15)]
    duration: u64,
    /// Leader transactions per second (each: one order + one preference update).
    #[arg(long, env = "BARISTA_DEMO_RATE", default_value_t = 1000)]
    rate: u64,
    /// Number of followers.
    #[arg(long, env = "BARISTA_DEMO_FOLLOWERS", default_value_t = 3)]
    followers: usize,
    /// Customers seeded before capture starts (published as the snapshot).
    #[arg(long, env = "BARISTA_DEMO_CUSTOMERS", default_value_t = 1000)]
    customers: i64,
    /// Keep the databases in this directory (default: a temporary one).
    #[arg(long, env = "BARISTA_DEMO_DIR")]
    dir: Option<PathBuf>,
}

const COFFEES: &[&str] = &[
    "espresso",
    "flat white",
    "cortado",
    "latte",
    "cappuccino",
    "americano",
    "mocha",
    "ristretto",
];

fn leader_head(leader: &Path) -> i64 {
    Connection::open(leader)
        .and_then(|c| {
            c.query_row(
                "SELECT coalesce(max(position), 0) FROM _barista_changelog",
                [],
                |r| r.get(0),
            )
        })
        .unwrap_or(0)
}

fn dump(path: &Path) -> anyhow::Result<Vec<(i64, String, i64)>> {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut out: Vec<(i64, String, i64)> = c
        .prepare("SELECT id, favourite, visits FROM customers ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let orders: Vec<(i64, String, i64)> = c
        .prepare("SELECT id, coffee, customer_id FROM orders ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    out.extend(orders.into_iter().map(|(i, c, k)| (-i, c, k)));
    Ok(out)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error,rdkafka=off,librdkafka=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("barista-demo: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(demo(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("barista-demo: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn demo(args: Args) -> anyhow::Result<bool> {
    anyhow::ensure!(args.followers >= 1, "--followers must be at least 1");
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let leader = dir.join("leader.db");
    for f in std::fs::read_dir(&dir)?.flatten() {
        if f.file_name().to_string_lossy().ends_with(".db")
            || f.file_name().to_string_lossy().contains(".db-")
        {
            std::fs::remove_file(f.path())?;
        }
    }
    println!(
        "barista demo: the coffee shop. Databases in {}",
        dir.display()
    );

    // The leader: customers and their usual, orders that change it.
    {
        barista_shop::create_schema(&leader)?;
        let mut c = Connection::open(&leader)?;
        let tx = c.transaction()?;
        for id in 1..=args.customers {
            tx.execute(
                "INSERT INTO customers(id, name, favourite) VALUES (?1, ?2, ?3)",
                params![
                    id,
                    format!("customer {id}"),
                    COFFEES[id as usize % COFFEES.len()]
                ],
            )?;
        }
        tx.commit()?;
    }

    let cluster = rdkafka::mocking::MockCluster::new(3)
        .context("starting the in-process Kafka (mock cluster)")?;
    let brokers = cluster.bootstrap_servers();
    let prefix = "coffee";
    for t in ["customers", "orders"] {
        cluster.create_topic(&contract::table_topic(prefix, t), 3, 1)?;
    }
    cluster.create_topic(&contract::commits_topic(prefix), 1, 1)?;
    cluster.create_topic(&contract::dead_letter_topic(prefix), 1, 1)?;
    let registry = barista_registry::spawn(
        RegistryConfig {
            db_path: dir.join("registry.db"),
            default_level: CompatibilityLevel::Backward,
        },
        "127.0.0.1:0".parse()?,
    )
    .await?;
    println!(
        "kafka (in-process mock cluster): {brokers}\nschema registry (embedded):      {}",
        registry.url()
    );

    let token = CancellationToken::new();
    let mut pc = ProducerConfig::new(&leader, &brokers, registry.url());
    pc.topic_prefix = prefix.into();
    pc.heartbeat_interval = Duration::from_millis(250);
    let t = token.clone();
    let producer =
        tokio::spawn(async move { barista_producer::run(pc, t.cancelled_owned()).await });
    // The shop: the leader service that answers each order with its token.
    let (shop_addr, shop) = barista_shop::spawn(
        leader.clone(),
        "127.0.0.1:0".parse()?,
        token.clone().cancelled_owned(),
    )
    .await?;
    let mut followers = Vec::new();
    let mut follower_urls = Vec::new();
    for i in 1..=args.followers {
        let mut fc = FollowerConfig::new(
            dir.join(format!("replica-{i}.db")),
            &format!("demo-follower-{i}-{}", std::process::id()),
            &brokers,
            registry.url(),
        );
        fc.topic_prefix = prefix.into();
        fc.log_interval = Duration::from_secs(3600);
        // A free loopback port for the follower's HTTP reads.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        fc.http_listen = Some(addr);
        follower_urls.push(format!("http://{addr}"));
        let shared = Shared::new(&fc);
        let (t, s) = (token.clone(), shared.clone());
        let handle =
            tokio::spawn(
                async move { barista_consumer::run_with(fc, s, t.cancelled_owned()).await },
            );
        followers.push((fc_path(&dir, i), shared, handle));
    }

    // The workload: orders at the given rate, each changing the customer's usual.
    let stop = Arc::new(AtomicBool::new(false));
    let txns = Arc::new(AtomicU64::new(0));
    let writer = {
        let (leader, stop, txns, rate, customers) = (
            leader.clone(),
            stop.clone(),
            txns.clone(),
            args.rate.max(1),
            args.customers,
        );
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut c = Connection::open(&leader)?;
            c.busy_timeout(Duration::from_secs(10))?;
            let mut rng = rand::rng();
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                if txns.load(Ordering::Relaxed) >= due {
                    std::thread::sleep(Duration::from_micros(500));
                    continue;
                }
                let id = rng.random_range(1..=customers);
                let coffee = COFFEES[rng.random_range(0..COFFEES.len())];
                let tx = c.transaction()?;
                tx.execute("INSERT INTO orders(customer_id, coffee, ordered_at) VALUES (?1, ?2, unixepoch('subsec'))", params![id, coffee])?;
                tx.execute(
                    "UPDATE customers SET favourite = ?2, visits = visits + 1 WHERE id = ?1",
                    params![id, coffee],
                )?;
                if rng.random_ratio(1, 10) {
                    tx.execute(
                        "DELETE FROM orders WHERE id = (SELECT min(id) FROM orders)",
                        [],
                    )?;
                }
                tx.commit()?;
                txns.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };

    // Read-heavy mix: regulars order through the shop and ask "what's my
    // usual?" through a sticky session: followers first, with the session's
    // token as min_position, the leader only when every follower is behind.
    let reads = Arc::new(AtomicU64::new(0));
    let session = Arc::new(Session::new(SessionConfig::new(
        follower_urls.clone(),
        format!("http://{shop_addr}"),
    ))?);
    let reader = {
        let (session, stop, reads, customers) =
            (session.clone(), stop.clone(), reads.clone(), args.customers);
        let leader = leader.clone();
        tokio::spawn(async move {
            // Regulars come in once the producer has installed capture (the
            // leader answers reads with its changelog head as position).
            while !stop.load(Ordering::Relaxed) && leader_head(&leader) == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut ordered: HashMap<i64, i64> = HashMap::new();
            let (mut orders, mut stale, mut errors) = (0u64, 0u64, 0u64);
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                // Ten regulars; every seventh visit they order.
                let id = (i % 10 + 1).min(customers);
                if i % 7 == 0 {
                    let coffee = COFFEES[(i / 7) as usize % COFFEES.len()];
                    match session
                        .write("orders", &json!({"customer_id": id, "coffee": coffee}))
                        .await
                    {
                        Ok(v) => {
                            ordered.insert(id, v["visits"].as_i64().unwrap_or(0));
                            orders += 1;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "order failed");
                            errors += 1;
                        }
                    }
                    continue;
                }
                let a = match session
                    .get_row("customers", &[("id", &id.to_string())])
                    .await
                {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "read failed");
                        errors += 1;
                        continue;
                    }
                };
                let visits = a.row().and_then(|r| r["visits"].as_i64()).unwrap_or(0);
                if visits < ordered.get(&id).copied().unwrap_or(0) {
                    stale += 1;
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
            (orders, stale, errors)
        })
    };

    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut lags: Vec<Vec<f64>> = vec![Vec::new(); followers.len()];
    let mut behind: Vec<Vec<f64>> = vec![Vec::new(); followers.len()];
    let mut last_print = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut caught_up_at = None;
    loop {
        tick.tick().await;
        let running = started.elapsed() < Duration::from_secs(args.duration);
        if !running && !stop.load(Ordering::Relaxed) {
            stop.store(true, Ordering::Relaxed);
            println!(
                "\nworkload stopped after {:?}; waiting for followers to catch up",
                started.elapsed()
            );
        }
        let head = leader_head(&leader);
        let statuses = followers
            .iter()
            .map(|f| f.1.status().map(|s| s.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, s) in statuses.iter().enumerate() {
            if running {
                lags[i].extend(s.seconds_lag); // unknown (not heard yet) is no sample
                behind[i].push((head - s.applied_position.0).max(0) as f64);
            }
        }
        if last_print.elapsed() >= Duration::from_millis(if tty { 200 } else { 2000 }) {
            let line: Vec<String> = statuses
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    format!(
                        "f{}: {:>5} behind, {}",
                        i + 1,
                        (head - s.applied_position.0).max(0),
                        s.seconds_lag
                            .map_or("    ?s".to_owned(), |l| format!("{l:>5.3}s"))
                    )
                })
                .collect();
            let text = format!(
                "[{:>5.1}s] leader pos {head:>7} | txns {:>6} | reads {:>7} | {}",
                started.elapsed().as_secs_f64(),
                txns.load(Ordering::Relaxed),
                reads.load(Ordering::Relaxed),
                line.join(" | ")
            );
            if tty {
                print!("\r{text}\x1b[K");
                use std::io::Write;
                let _ = std::io::stdout().flush();
            } else {
                println!("{text}");
            }
            last_print = Instant::now();
        }
        if !running && head > 0 && statuses.iter().all(|s| s.applied_position.0 >= head) {
            caught_up_at = Some(started.elapsed());
            break;
        }
        if !running && started.elapsed() > Duration::from_secs(args.duration + 60) {
            break;
        }
        if producer.is_finished() || followers.iter().any(|f| f.2.is_finished()) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (session_orders, session_stale, session_errors) = reader.await?;
    let served = session.stats();
    let writer_result = writer
        .join()
        .map_err(|_| anyhow::anyhow!("workload thread panicked"))?;
    token.cancel();
    let producer_result = producer.await?;
    let mut follower_results = Vec::new();
    let applied: Vec<u64> = followers
        .iter()
        .map(|f| f.1.metrics.changes_applied.get())
        .collect();
    for f in followers.iter_mut() {
        follower_results.push((&mut f.2).await?);
    }
    shop.await??;
    registry.shutdown().await?;
    writer_result?;
    producer_result.context("producer")?;
    for r in follower_results {
        r.context("follower")?;
    }

    let head = leader_head(&leader);
    let elapsed = started.elapsed().as_secs_f64();
    let leader_rows = dump(&leader)?;
    println!("\n\n== barista demo report ==");
    println!("leader transactions       {}", txns.load(Ordering::Relaxed));
    println!("changes captured          {head} (leader position, snapshot included)");
    let total = (served.followers + served.leader).max(1);
    println!(
        "session reads             {} ({} by followers = {:.1}%, {} by the leader; {} behind answers retried elsewhere)",
        reads.load(Ordering::Relaxed),
        served.followers,
        100.0 * served.followers as f64 / total as f64,
        served.leader,
        served.retries
    );
    println!(
        "session orders            {session_orders} (token = commit position); reads older than the session's own order: {session_stale}; failed requests: {session_errors}"
    );
    let mut all_equal = true;
    for (i, f) in followers.iter().enumerate() {
        let mut l = lags[i].clone();
        l.sort_by(f64::total_cmp);
        let mut b = behind[i].clone();
        b.sort_by(f64::total_cmp);
        let equal = dump(&f.0)? == leader_rows;
        all_equal &= equal;
        println!(
            "follower {}: applied {} changes ({:.0}/s); lag p50/p99: {:.0}/{:.0} positions, {:.3}/{:.3} s; replica {}",
            i + 1,
            applied[i],
            applied[i] as f64 / elapsed,
            percentile(&b, 0.5),
            percentile(&b, 0.99),
            percentile(&l, 0.5),
            percentile(&l, 0.99),
            if equal { "EQUALS the leader row for row" } else { "DIFFERS from the leader" }
        );
    }
    if let Some(t) = caught_up_at {
        println!("all followers caught up at {:.1}s", t.as_secs_f64());
    }
    println!(
        "{}",
        if all_equal {
            "RESULT: every replica equals the leader"
        } else {
            "RESULT: a replica differs from the leader"
        }
    );
    Ok(all_equal)
}

fn fc_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("replica-{i}.db"))
}
