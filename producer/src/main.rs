//! `producer`: capture a leader SQLite database into Kafka. Thin: parse
//! flags, start tracing, run until SIGINT/SIGTERM, map errors to exit codes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use barista_producer::migrate::{Migration, Outcome};
use barista_producer::ProducerConfig;
use barista_runtime::args::parse_kv;
use barista_runtime::{exit, logs, run_until_signal};
use clap::{Parser, Subcommand};

/// mimalloc rather than glibc malloc: with many small short-lived buffers per
/// change, glibc's free lists (malloc_consolidate, unlink_chunk) took about a
/// quarter of the CPU in the sustained benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Capture every write to a leader SQLite database and publish it to Kafka as
/// Avro change events registered in a schema registry.
#[derive(Debug, Parser)]
#[command(
    name = "producer",
    version,
    after_help = "Example:\n  producer --leader shop.db --brokers localhost:9092 --registry http://localhost:8081\n\n\
Capture installs triggers and bookkeeping tables (_barista_*) in the leader database, publishes the\n\
existing rows as a snapshot (op = r), then streams every insert, update and delete from any writer.\n\
Topics: <prefix>.<table> (key = primary key) and <prefix>.__commits (commit groups, heartbeats).\n\
Tables without a primary key (or not in --tables) are skipped with a warning; tables created\n\
later are picked up while running. The leader must exist (pass --create for a new, empty one).\n\n\
HTTP (--http-listen, default 127.0.0.1:8089):\n  \
curl localhost:8089/metrics   Prometheus: barista_producer_backlog_rows, _oldest_unacked_seconds, ...\n  \
curl localhost:8089/status    JSON: state, positions, backlog, last errors, captured and skipped tables\n  \
curl localhost:8089/ready     200 while publishing or idle; 503 once changes have waited for Kafka\n                                \
longer than --ready-grace-ms with nothing acknowledged (the body says why)\n\n\
Schema changes go through `producer migrate` (see `producer migrate --help`).\n\
Table checksums: `producer verify --leader shop.db` compares them with the leader's rows.\n\n\
Takeover: `producer --drain` (planned: publish all, exit 0), `producer --leader replica.db --promote`\n\
(a stopped follower becomes the next epoch's leader), `producer --fenced-report` (on the old leader).\n\
Exit codes: 0 stopped (or drained), 1 failure, 2 bad configuration, 3 fenced: a newer epoch took over.",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Leader SQLite database file. It must exist unless --create is given.
    #[arg(long, env = "BARISTA_LEADER", default_value = "leader.db")]
    leader: PathBuf,
    /// Create the leader file when it does not exist, as an empty database: capture starts as
    /// soon as a table with a primary key is created in it. Without this flag a missing leader
    /// is refused (exit 2), so a mistyped path never starts capture on a new, empty file.
    #[arg(long = "create", env = "BARISTA_CREATE_LEADER")]
    create_leader: bool,
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
    /// Topic prefix: topics are <prefix>.<table>.
    #[arg(long, env = "BARISTA_TOPIC_PREFIX", default_value = "barista")]
    topic_prefix: String,
    /// Tables to capture, comma-separated (default: every table with a primary key).
    #[arg(long, env = "BARISTA_TABLES", value_delimiter = ',')]
    tables: Vec<String>,
    /// Partitions of the topics barista creates.
    #[arg(long, env = "BARISTA_PARTITIONS", default_value_t = 3)]
    partitions: i32,
    /// Replication factor of the topics barista creates.
    #[arg(long, env = "BARISTA_REPLICATION_FACTOR", default_value_t = 1)]
    replication_factor: i32,
    /// Logical database name in events (default: the leader file's stem).
    #[arg(long, env = "BARISTA_DB_NAME")]
    db_name: Option<String>,
    /// How often to look for new commits, in milliseconds.
    #[arg(long, env = "BARISTA_POLL_INTERVAL_MS", default_value_t = 1)]
    poll_interval_ms: u64,
    /// Heartbeat interval when the leader is idle, in milliseconds.
    #[arg(long, env = "BARISTA_HEARTBEAT_INTERVAL_MS", default_value_t = 1000)]
    heartbeat_interval_ms: u64,
    /// Changelog rows per chunk. A commit group larger than this is announced by a begin
    /// record, streamed, and acknowledged chunk by chunk: a producer stopped mid-group
    /// resumes after its last acknowledged chunk.
    #[arg(long, env = "BARISTA_CHUNK_SIZE", default_value_t = 5000)]
    chunk_size: usize,
    /// Extra librdkafka property, key=value (repeatable; comma-separated in the env var).
    #[arg(short = 'X', long = "kafka-option", env = "BARISTA_KAFKA_OPTIONS", value_delimiter = ',', value_parser = parse_kv)]
    kafka_options: Vec<(String, String)>,
    /// retention.ms of the topics barista creates (table topics and <prefix>.__commits), in ms;
    /// -1 keeps everything. Default: the broker's log.retention.ms (7 days on Apache Kafka).
    /// A follower whose unapplied history is deleted halts; re-seed it from a snapshot.
    #[arg(long, env = "BARISTA_RETENTION_MS", allow_negative_numbers = true)]
    retention_ms: Option<i64>,
    /// Re-create the triggers of tables whose columns changed, or whose triggers were dropped,
    /// behind barista's back, and re-snapshot those tables (followers end equal to the leader,
    /// keys it no longer has deleted).
    #[arg(long, env = "BARISTA_REPAIR_TRIGGERS")]
    repair_triggers: bool,
    /// Rows per snapshot chunk: each is read in a read transaction (no writer waits for it)
    /// and held in the producer's memory until Kafka has it; the leader gets one tiny
    /// watermark write per chunk, so larger chunks mean fewer of them.
    #[arg(long, env = "BARISTA_SNAPSHOT_CHUNK_ROWS", default_value_t = barista_producer::snapshot::DEFAULT_CHUNK_ROWS)]
    snapshot_chunk_rows: usize,
    /// After each snapshot chunk, pause this many times as long as it took (its read and its
    /// watermark; at least 1 ms): higher is gentler on the application, and slower.
    #[arg(long, env = "BARISTA_SNAPSHOT_PAUSE_FACTOR", default_value_t = barista_producer::snapshot::DEFAULT_PAUSE_FACTOR)]
    snapshot_pause_factor: u32,
    /// Address for /metrics (Prometheus), /status (JSON) and /ready. Use 0.0.0.0:8089 in a
    /// container; port 0 picks a free port (the log line "producer HTTP listening" names it).
    #[arg(long, env = "BARISTA_HTTP_LISTEN", default_value = "127.0.0.1:8089")]
    http_listen: SocketAddr,
    /// /ready answers 503 once changes have waited this long (milliseconds) with nothing
    /// acknowledged by Kafka: the broker or the registry is down or refusing.
    #[arg(long, env = "BARISTA_READY_GRACE_MS", default_value_t = 30_000)]
    ready_grace_ms: u64,
    /// Keep a checksum per table and carry it in commit records (on by default; off only to
    /// measure what it costs: followers then have nothing to compare with).
    #[arg(long, env = "BARISTA_CHECKSUMS", default_value_t = true, action = clap::ArgAction::Set, hide = true)]
    checksums: bool,
    /// Take over as leader: --leader names a follower's replica whose consumer is stopped. It
    /// becomes the leader of the next epoch (triggers installed, positions continuing after the
    /// replica's), an epoch-change record is published, then it runs as the producer. Refused
    /// while Kafka holds commit groups the replica has not applied. See "Taking over" in README.
    #[arg(long, env = "BARISTA_PROMOTE", conflicts_with_all = ["fenced_report", "create_leader"])]
    promote: bool,
    /// Publish everything committed so far, wait until Kafka acknowledged it, and exit 0: the
    /// step before promoting a follower in a planned switchover (stop the writers first).
    #[arg(long, env = "BARISTA_DRAIN")]
    drain: bool,
    /// On a replaced (fenced) leader: print how many changes it committed at or after the
    /// takeover position, and their positions, then exit. They were never published as part
    /// of the new leader's history and are never merged into it. Changes nothing.
    #[arg(long, conflicts_with_all = ["drain", "create_leader"])]
    fenced_report: bool,
}

impl Args {
    fn into_config(self) -> Result<ProducerConfig, String> {
        if self.partitions < 1 {
            return Err("--partitions must be at least 1".into());
        }
        let mut c = ProducerConfig::new(self.leader, &self.brokers, &self.registry_url);
        c.topic_prefix = self.topic_prefix;
        c.tables = self.tables.into_iter().filter(|t| !t.is_empty()).collect();
        c.partitions = self.partitions;
        c.replication_factor = self.replication_factor;
        if let Some(n) = self.db_name {
            c.db_name = n;
        }
        c.poll_interval = Duration::from_millis(self.poll_interval_ms.max(1));
        c.heartbeat_interval = Duration::from_millis(self.heartbeat_interval_ms.max(10));
        c.kafka_options = self.kafka_options;
        if self.chunk_size < 1 {
            return Err("--chunk-size must be at least 1".into());
        }
        c.chunk_size = self.chunk_size;
        if let Some(ms) = self.retention_ms {
            if ms < -1 || ms == 0 {
                return Err("--retention-ms must be positive, or -1 to keep everything".into());
            }
            c.retention_ms = Some(ms);
        }
        c.repair_triggers = self.repair_triggers;
        if self.snapshot_chunk_rows == 0 {
            return Err("--snapshot-chunk-rows must be at least 1".into());
        }
        c.snapshot.chunk_rows = self.snapshot_chunk_rows;
        c.snapshot.pause_factor = self.snapshot_pause_factor;
        c.snapshot.max_unacked = c
            .snapshot
            .max_unacked
            .max(4 * self.snapshot_chunk_rows as i64);
        c.create_leader = self.create_leader;
        c.http_listen = Some(self.http_listen);
        c.ready_grace = Duration::from_millis(self.ready_grace_ms);
        c.checksums = self.checksums;
        c.promote = self.promote;
        c.drain = self.drain;
        if let Some(why) = c.missing_leader() {
            return Err(why);
        }
        Ok(c)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply DDL to a captured leader in one transaction, only if the new Avro schemas are
    /// compatible with the registry's latest versions.
    #[command(after_help = "Example:\n  \
        producer migrate --leader shop.db --ddl 0002_customer_stamps.sql --registry http://localhost:8081 --topic-prefix coffee\n\n\
In ONE SQLite transaction (BEGIN IMMEDIATE): drop barista's triggers, apply the DDL, derive the new\n\
schemas and check each changed subject with POST /compatibility/subjects/<subject>/versions/latest.\n\
Compatible: re-create the triggers, record a schema-change marker the running producer follows,\n\
commit, register the new versions (exit 0). Incompatible: roll back, print the field, the rule and a\n\
safe alternative (exit 1); the leader is unchanged. Bad usage: exit 2.")]
    Migrate(MigrateArgs),
    /// Check the table checksums the producer stored against the leader's rows: finds rows
    /// changed behind the capture triggers' back.
    #[command(after_help = "Example:\n  \
        producer verify --leader shop.db\n\n\
With each position Kafka acknowledged, the producer stores a checksum per captured table in the\n\
leader (_barista_checksums): the sum of a hash of every row. The same numbers travel in commit\n\
records, and followers compare them with their own rows. This command recomputes each table's\n\
checksum from the leader file itself, as of the stored position (the rows now, minus the changes\n\
still in the changelog after it), in one read transaction, and prints one line per table:\n  \
customers: ok sum=… position=…\n  \
customers: MISMATCH leader-file=… stored=… position=…   a row changed without the triggers\n  \
customers: not verified (why)                          e.g. no stored checksum yet\n\n\
Safe while the producer runs: it only reads. A MISMATCH means the leader's rows are not what was\n\
published (a write made with the triggers dropped, a restored file): followers hold other rows.\n\
To re-publish the table while the producer runs: `producer snapshot --table T` (or stop it, drop\n\
its three _barista_<id>_* triggers and start it with --repair-triggers). Its rows are published\n\
again as an incremental snapshot (op = r); when it ends, followers also delete the rows the\n\
leader lost. Check the writer first.\n\n\
Exit status: 0 no mismatch, 1 a mismatch (or the file could not be read), 2 bad usage (no such\n\
file, or not a leader barista captured).")]
    Verify(VerifyArgs),
    /// Re-snapshot captured tables while the producer runs: followers end equal to the leader.
    #[command(after_help = "Example:\n  \
        producer snapshot --leader shop.db --table customers\n\n\
Queues the request as a row of _barista_signals in the leader (any SQL client can do the same:\n  \
INSERT INTO _barista_signals(type, data) VALUES ('snapshot', 'customers');)\n\
and returns. The running producer (or the next one started) copies the table's rows into the\n\
changelog in chunks, each in one short write transaction: the application never waits for\n\
more than one chunk. Changes keep flowing meanwhile. When the snapshot ends, every follower\n\
equals the leader for that table, including the deletion of rows the leader no longer has\n\
(written behind the triggers' back). While it runs, followers answer 503 `snapshotting` for the\n\
table; the producer's /status shows its progress under `snapshots`.")]
    Snapshot(SnapshotArgs),
}

#[derive(Debug, clap::Args)]
struct SnapshotArgs {
    /// Leader SQLite database file (the producer must have captured it).
    #[arg(long, env = "BARISTA_LEADER", default_value = "leader.db")]
    leader: PathBuf,
    /// A captured table to re-snapshot (repeatable, or comma-separated).
    #[arg(long = "table", required = true, value_delimiter = ',')]
    tables: Vec<String>,
}

fn snapshot(args: SnapshotArgs) -> ExitCode {
    let file = args.leader.display().to_string();
    if !args.leader.is_file() {
        eprintln!("producer snapshot: no such file: {file}");
        return ExitCode::from(2);
    }
    let conn = match rusqlite::Connection::open_with_flags(
        &args.leader,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("producer snapshot: opening {file}: {e}");
            return ExitCode::from(2);
        }
    };
    let _ = conn.busy_timeout(Duration::from_secs(10));
    let captured: Result<Vec<String>, _> = conn
        .prepare("SELECT name FROM _barista_tables")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect());
    let Ok(captured) = captured else {
        eprintln!(
            "producer snapshot: {file} is not a leader barista captured (no _barista_tables)"
        );
        return ExitCode::from(2);
    };
    let unknown: Vec<&String> = args
        .tables
        .iter()
        .filter(|t| !captured.contains(t))
        .collect();
    if !unknown.is_empty() {
        eprintln!("producer snapshot: not captured: {unknown:?} (captured: {captured:?})");
        return ExitCode::from(2);
    }
    match barista_producer::snapshot::request(&conn, &args.tables) {
        Ok(id) => {
            println!(
                "snapshot of {} requested (signal {id}); the producer's /status shows its progress",
                args.tables.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("producer snapshot: {file}: {e}");
            ExitCode::from(1)
        }
    }
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// Leader SQLite database file (the producer must have captured it).
    #[arg(long, env = "BARISTA_LEADER", default_value = "leader.db")]
    leader: PathBuf,
}

fn verify(args: VerifyArgs) -> ExitCode {
    use barista_producer::checksums::verify::{verify, Verdict, VerifyError};
    let file = args.leader.display().to_string();
    if !args.leader.is_file() {
        eprintln!("producer verify: no such file: {file}");
        return ExitCode::from(2);
    }
    let conn = match rusqlite::Connection::open_with_flags(
        &args.leader,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("producer verify: opening {file}: {e}");
            return ExitCode::from(2);
        }
    };
    // A running producer or writer may hold the write lock for a moment.
    let _ = conn.busy_timeout(Duration::from_secs(10));
    match verify(&conn, &file) {
        Ok(tables) => {
            for t in &tables {
                println!("{t}");
            }
            let bad = tables
                .iter()
                .filter(|t| matches!(t.verdict, Verdict::Mismatch { .. }))
                .count();
            if bad > 0 {
                eprintln!("producer verify: {bad} table(s) differ from their stored checksum");
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(e @ VerifyError::NotALeader(_)) => {
            eprintln!("producer verify: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("producer verify: {file}: {e}");
            ExitCode::from(1)
        }
    }
}

#[derive(Debug, clap::Args)]
struct MigrateArgs {
    /// Leader SQLite database file (the producer must have installed capture in it).
    #[arg(long, env = "BARISTA_LEADER", default_value = "leader.db")]
    leader: PathBuf,
    /// File with the DDL to apply (statements without BEGIN/COMMIT).
    #[arg(long, env = "BARISTA_MIGRATE_DDL")]
    ddl: PathBuf,
    /// Schema registry URL (Confluent API).
    #[arg(
        long = "registry",
        env = "BARISTA_REGISTRY_URL",
        default_value = "http://localhost:8081"
    )]
    registry_url: String,
    /// Topic prefix: subjects are <prefix>.<table>-key and -value.
    #[arg(long, env = "BARISTA_TOPIC_PREFIX", default_value = "barista")]
    topic_prefix: String,
}

fn migrate(args: MigrateArgs) -> ExitCode {
    let ddl = match std::fs::read_to_string(&args.ddl) {
        Ok(ddl) => ddl,
        Err(e) => {
            eprintln!("producer migrate: reading {}: {e}", args.ddl.display());
            return ExitCode::from(2);
        }
    };
    let migration = Migration {
        leader: args.leader,
        ddl,
        registry_url: args.registry_url,
        topic_prefix: args.topic_prefix,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("producer migrate: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(barista_producer::migrate::migrate(&migration)) {
        Ok(Outcome::Applied(versions)) => {
            for v in versions {
                println!("{}: registered schema id {}", v.subject, v.id);
            }
            println!("migration applied");
            ExitCode::SUCCESS
        }
        Ok(Outcome::NoSchemaChange) => {
            println!("migration applied; no captured table's schema changed");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Refused { problems, advice }) => {
            eprintln!("producer migrate: refused, the new schema is incompatible; rolled back, the leader is unchanged");
            for p in problems {
                eprintln!("  {p}");
            }
            for a in advice {
                eprintln!("  instead: {a}");
            }
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("producer migrate: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `--fenced-report`: prints what a replaced leader committed that was never published.
fn report(config: ProducerConfig) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("producer --fenced-report: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(barista_producer::promote::fenced_report(&config)) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("producer --fenced-report: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    match args.command.take() {
        Some(Command::Migrate(m)) => return migrate(m),
        Some(Command::Verify(v)) => return verify(v),
        Some(Command::Snapshot(s)) => return snapshot(s),
        None => {}
    }
    logs::init_tracing();
    let fenced_report = args.fenced_report;
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => return exit::bad_configuration("producer", e),
    };
    if fenced_report {
        return report(config);
    }
    run_until_signal("producer", |shutdown| {
        barista_producer::run(config, shutdown)
    })
}
