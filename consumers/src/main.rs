//! `consumer`: a follower that keeps a SQLite replica of the leader. Thin:
//! parse flags, start tracing, run until SIGINT/SIGTERM, map errors to exit codes.
//! `consumer dead-letters …` instead asks a running follower about the
//! messages it could not apply.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use barista_consumer::dead_letters_cli::{self, DeadLettersCommand};
use barista_consumer::verify_cli::{self, Outcome, VerifyArgs};
use barista_consumer::FollowerConfig;
use barista_runtime::args::parse_kv;
use barista_runtime::{exit, logs, run_until_signal};
use clap::{Parser, Subcommand};

/// mimalloc rather than glibc malloc: with many small short-lived buffers per
/// change, glibc's free lists (malloc_consolidate, unlink_chunk) took about a
/// quarter of the CPU in the sustained benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keep a SQLite read replica of a barista leader up to date from Kafka, and
/// report how far behind it is.
#[derive(Debug, Parser)]
#[command(
    name = "consumer",
    version,
    after_help = "Example:\n  consumer --replica replica-1.db --follower-id follower-1 --brokers localhost:9092 \\\n    --registry http://localhost:8081 --http-listen 127.0.0.1:8091\n\n\
Then: curl localhost:8091/status (JSON lag), /metrics (Prometheus), /ready (503 above --max-lag-seconds).\n\
Reads: curl 'localhost:8091/tables/customers/row?id=7&min_position=4711&timeout_ms=500'\n\
       curl 'localhost:8091/tables/customers/rows?limit=100&max_staleness_ms=2000'\n\
  every answer carries the position it was read at; 503 {\"error\":\"behind\"|\"stale\"} means read elsewhere.\n\
Each follower is its own consumer group and reads every partition. The replica can be opened\n\
read-only by any SQLite client; its position is in the table _barista_position.\n\
A message it cannot apply that holds later changes back: consumer dead-letters --help.\n\
A new follower at any time: consumer --replica new.db --follower-id follower-2 \\\n\
    --seed-from http://<peer>:8091/snapshot   (a peer's or the producer's snapshot, then follows)\n\
Every commit record's table checksums are compared with the replica's; on a mismatch the follower\n\
stops applying (reads go on; /status shows `diverged`). Check a replica on demand: consumer verify --help."
)]
struct Args {
    /// Without a subcommand: run the follower.
    #[command(subcommand)]
    command: Option<Command>,
    /// Replica SQLite file (created if missing).
    #[arg(long, env = "BARISTA_REPLICA", default_value = "replica.db")]
    replica: PathBuf,
    /// Follower id; also its Kafka consumer group.
    #[arg(long, env = "BARISTA_FOLLOWER_ID", default_value = "follower-1")]
    follower_id: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "BARISTA_BROKERS", default_value = "localhost:9092")]
    brokers: String,
    /// Schema registry URL (Confluent API).
    #[arg(
        long = "registry",
        env = "BARISTA_REGISTRY_URL",
        default_value = "http://localhost:8081"
    )]
    registry_url: String,
    /// Topic prefix used by the producer.
    #[arg(long, env = "BARISTA_TOPIC_PREFIX", default_value = "barista")]
    topic_prefix: String,
    /// Tables to follow, comma-separated (default: all the producer publishes).
    #[arg(long, env = "BARISTA_TABLES", value_delimiter = ',')]
    tables: Vec<String>,
    /// Address for /metrics, /status, /ready and the read API (/tables/…).
    #[arg(long, env = "BARISTA_HTTP_LISTEN", default_value = "127.0.0.1:8090")]
    http_listen: SocketAddr,
    /// /ready answers 503 above this lag, in seconds on the leader's clock.
    #[arg(long, env = "BARISTA_MAX_LAG_SECONDS", default_value_t = 10.0)]
    max_lag_seconds: f64,
    /// Silence from the producer (no commit record or heartbeat) longer than
    /// this (ms) counts as lag: the follower can no longer vouch for being
    /// current. Keep it above the producer's --heartbeat-interval-ms.
    #[arg(long, env = "BARISTA_HEARTBEAT_GRACE_MS", default_value_t = 3_000)]
    heartbeat_grace_ms: u64,
    /// How long a gap in the change chain may wait for a resend before the follower halts (ms).
    #[arg(long, env = "BARISTA_GAP_TIMEOUT_MS", default_value_t = 30_000)]
    gap_timeout_ms: u64,
    /// Extra librdkafka property, key=value (repeatable; comma-separated in the env var).
    #[arg(short = 'X', long = "kafka-option", env = "BARISTA_KAFKA_OPTIONS", value_delimiter = ',', value_parser = parse_kv)]
    kafka_options: Vec<(String, String)>,
    /// When the replica file does not exist, download it from this snapshot URL (a healthy
    /// peer's or the producer's /snapshot) instead of replaying all of Kafka's history.
    #[arg(long, env = "BARISTA_SEED_FROM")]
    seed_from: Option<String>,
    /// Replace an existing replica (for example one halted because retention deleted its
    /// history) with a snapshot from --seed-from.
    #[arg(long, env = "BARISTA_RESEED", requires = "seed_from")]
    reseed: bool,
    /// Keep table checksums and compare them with the leader's at every
    /// commit record (`--checksums false` only to measure their cost).
    #[arg(long, env = "BARISTA_CHECKSUMS", default_value_t = true, action = clap::ArgAction::Set)]
    checksums: bool,
}

/// Subcommands that talk to a running follower instead of being one.
#[derive(Debug, Subcommand)]
enum Command {
    /// Messages the follower could not apply: list, show, replay or skip
    /// the ones that hold later changes back.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
    /// Check a replica: recompute every table's checksum from its rows and
    /// compare it with the stored rolling value, or (--against URL) compare
    /// its rows with a healthy peer's and name the keys that differ.
    Verify(VerifyArgs),
}

fn main() -> ExitCode {
    let a = Args::parse();
    match a.command {
        Some(Command::DeadLetters(c)) => return dead_letters(c),
        Some(Command::Verify(v)) => return verify(v),
        None => {}
    }
    logs::init_tracing();
    if a.follower_id.trim().is_empty() {
        return exit::bad_configuration("consumer", "--follower-id must not be empty");
    }
    let mut c = FollowerConfig::new(a.replica, &a.follower_id, &a.brokers, &a.registry_url);
    c.topic_prefix = a.topic_prefix;
    c.tables = a.tables.into_iter().filter(|t| !t.is_empty()).collect();
    c.http_listen = Some(a.http_listen);
    c.max_lag_seconds = a.max_lag_seconds;
    c.gap_timeout = Duration::from_millis(a.gap_timeout_ms);
    c.heartbeat_grace = Duration::from_millis(a.heartbeat_grace_ms);
    c.kafka_options = a.kafka_options;
    c.seed_from = a.seed_from;
    c.reseed = a.reseed;
    c.command_line = std::env::args().collect();
    c.checksums = a.checksums;
    run_until_signal("consumer", |shutdown| barista_consumer::run(c, shutdown))
}

/// Runs a `dead-letters` subcommand: prints the follower's answer, or the
/// reason it refused (exit code 1).
fn dead_letters(c: DeadLettersCommand) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return exit::failure("consumer dead-letters", &e.into()),
    };
    match rt.block_on(dead_letters_cli::run(c)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("consumer dead-letters: {e:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// Runs `consumer verify`: 0 equal, 1 a difference, 2 not comparable (or
/// not checked: no file, no peer).
fn verify(v: VerifyArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return exit::failure("consumer verify", &e.into()),
    };
    match rt.block_on(verify_cli::run(v)) {
        Ok(Outcome::Equal) => ExitCode::SUCCESS,
        Ok(Outcome::Differs) => ExitCode::from(1),
        Ok(Outcome::NotComparable) => ExitCode::from(2),
        Err(e) => {
            eprintln!("consumer verify: {e:#}");
            ExitCode::from(2)
        }
    }
}
