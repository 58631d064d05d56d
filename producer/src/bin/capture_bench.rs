//! `capture-bench`: what barista's capture triggers cost the leader's writers.
//!
//! Measures upsert throughput on a `customers` table in a real database file
//! (WAL, synchronous=NORMAL) with no capture, with the cheapest possible
//! trigger (key only), with barista's triggers (installed by
//! `Capture::install`), and with JSON-building triggers. Every measurement
//! runs on a fresh database in a temporary directory; setups are interleaved
//! and repeated, and the medians are compared as cost ratios (time per row).

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use barista_producer::capture::Capture;
use clap::Parser;
use rusqlite::{params, Connection};

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

const TABLE_SQL: &str =
    "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, coffee TEXT, \
                         visits INTEGER, updated_at REAL)";

const UPSERT_SQL: &str = "INSERT INTO customers(id, name, coffee, visits, updated_at) VALUES (?1, ?2, ?3, 1, ?4) \
                          ON CONFLICT(id) DO UPDATE SET name = excluded.name, coffee = excluded.coffee, \
                          visits = customers.visits + 1, updated_at = excluded.updated_at";

/// The key-only floor: the least a row trigger can do and still say which row
/// changed.
const KEY_ONLY_SQL: &str = "CREATE TABLE log(k);
    CREATE TRIGGER log_ins AFTER INSERT ON customers BEGIN INSERT INTO log(k) VALUES (NEW.id); END;
    CREATE TRIGGER log_upd AFTER UPDATE ON customers BEGIN INSERT INTO log(k) VALUES (NEW.id); END;
    CREATE TRIGGER log_del AFTER DELETE ON customers BEGIN INSERT INTO log(k) VALUES (OLD.id); END;";

/// JSON images, as Debezium's SQLite connector builds them in its triggers.
const JSON_SQL: &str =
    "CREATE TABLE json_log(id INTEGER PRIMARY KEY, tbl TEXT NOT NULL, op TEXT NOT NULL, \
                        before TEXT, after TEXT);
    CREATE TRIGGER json_ins AFTER INSERT ON customers BEGIN
      INSERT INTO json_log(tbl, op, after) VALUES ('customers', 'c',
        json_object('id', NEW.id, 'name', NEW.name, 'coffee', NEW.coffee, 'visits', NEW.visits,
                    'updated_at', NEW.updated_at)); END;
    CREATE TRIGGER json_upd AFTER UPDATE ON customers BEGIN
      INSERT INTO json_log(tbl, op, before, after) VALUES ('customers', 'u',
        json_object('id', OLD.id, 'name', OLD.name, 'coffee', OLD.coffee, 'visits', OLD.visits,
                    'updated_at', OLD.updated_at),
        json_object('id', NEW.id, 'name', NEW.name, 'coffee', NEW.coffee, 'visits', NEW.visits,
                    'updated_at', NEW.updated_at)); END;
    CREATE TRIGGER json_del AFTER DELETE ON customers BEGIN
      INSERT INTO json_log(tbl, op, before) VALUES ('customers', 'd',
        json_object('id', OLD.id, 'name', OLD.name, 'coffee', OLD.coffee, 'visits', OLD.visits,
                    'updated_at', OLD.updated_at)); END;";

/// Experiment: barista's changelog and triggers written out by hand (same
/// interleaved a0, b0, a1, b1… columns as `widen_changelog` makes), to check
/// that the variants below are compared with the right thing.
const X_REPLICA_SQL: &str = "CREATE TABLE cl(position INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, op INTEGER NOT NULL,
      a0, b0, a1, b1, a2, b2, a3, b3, a4, b4);
    CREATE TRIGGER x_ins AFTER INSERT ON customers BEGIN INSERT INTO cl(tbl, op, a0, a1, a2, a3, a4)
      VALUES (1, 1, NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_upd AFTER UPDATE ON customers BEGIN INSERT INTO cl(tbl, op, b0, b1, b2, b3, b4, a0, a1, a2, a3, a4)
      VALUES (1, 2, OLD.id, OLD.name, OLD.coffee, OLD.visits, OLD.updated_at,
              NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_del AFTER DELETE ON customers BEGIN INSERT INTO cl(tbl, op, b0, b1, b2, b3, b4)
      VALUES (1, 3, OLD.id, OLD.name, OLD.coffee, OLD.visits, OLD.updated_at); END;";

/// Experiment: after images only (no before image on update): what the
/// before image costs.
const X_AFTER_ONLY_SQL: &str =
    "CREATE TABLE cl(position INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, op INTEGER NOT NULL,
      a0, a1, a2, a3, a4);
    CREATE TRIGGER x_ins AFTER INSERT ON customers BEGIN INSERT INTO cl(tbl, op, a0, a1, a2, a3, a4)
      VALUES (1, 1, NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_upd AFTER UPDATE ON customers BEGIN INSERT INTO cl(tbl, op, a0, a1, a2, a3, a4)
      VALUES (1, 2, NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_del AFTER DELETE ON customers BEGIN INSERT INTO cl(tbl, op, a0)
      VALUES (1, 3, OLD.id); END;";

/// Experiment: key plus table and op, no images: what the two small integers
/// and the changelog's shape cost without the column values.
const X_KEY_TBL_OP_SQL: &str = "CREATE TABLE cl(position INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, op INTEGER NOT NULL, k);
    CREATE TRIGGER x_ins AFTER INSERT ON customers BEGIN INSERT INTO cl(tbl, op, k) VALUES (1, 1, NEW.id); END;
    CREATE TRIGGER x_upd AFTER UPDATE ON customers BEGIN INSERT INTO cl(tbl, op, k) VALUES (1, 2, NEW.id); END;
    CREATE TRIGGER x_del AFTER DELETE ON customers BEGIN INSERT INTO cl(tbl, op, k) VALUES (1, 3, OLD.id); END;";

/// Experiment: barista's images, but only the columns the row has, in
/// declaration order a0..a4 then b0..b4 (inserts end in NULLs instead of
/// alternating with them).
const X_A_THEN_B_SQL: &str = "CREATE TABLE cl(position INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, op INTEGER NOT NULL,
      a0, a1, a2, a3, a4, b0, b1, b2, b3, b4);
    CREATE TRIGGER x_ins AFTER INSERT ON customers BEGIN INSERT INTO cl(tbl, op, a0, a1, a2, a3, a4)
      VALUES (1, 1, NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_upd AFTER UPDATE ON customers BEGIN INSERT INTO cl(tbl, op, b0, b1, b2, b3, b4, a0, a1, a2, a3, a4)
      VALUES (1, 2, OLD.id, OLD.name, OLD.coffee, OLD.visits, OLD.updated_at,
              NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_del AFTER DELETE ON customers BEGIN INSERT INTO cl(tbl, op, b0, b1, b2, b3, b4)
      VALUES (1, 3, OLD.id, OLD.name, OLD.coffee, OLD.visits, OLD.updated_at); END;";

/// Experiment: the update trigger logs only the key of the row before (the
/// after image is in the table until the next change), i.e. the same
/// payload as an insert: what the doubled update row costs.
const X_UPD_AFTER_PLUS_KEY_SQL: &str = "CREATE TABLE cl(position INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, op INTEGER NOT NULL,
      a0, b0, a1, b1, a2, b2, a3, b3, a4, b4);
    CREATE TRIGGER x_ins AFTER INSERT ON customers BEGIN INSERT INTO cl(tbl, op, a0, a1, a2, a3, a4)
      VALUES (1, 1, NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_upd AFTER UPDATE ON customers BEGIN INSERT INTO cl(tbl, op, b0, a0, a1, a2, a3, a4)
      VALUES (1, 2, OLD.id, NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_del AFTER DELETE ON customers BEGIN INSERT INTO cl(tbl, op, b0, b1, b2, b3, b4)
      VALUES (1, 3, OLD.id, OLD.name, OLD.coffee, OLD.visits, OLD.updated_at); END;";

/// Experiment: a lean changelog: no NOT NULL checks, only the slots one
/// table needs, and on update the after image plus the old key (what a
/// replica needs to apply it; the old row is the previous event's after
/// image). Deletes carry the old key.
const X_LEAN_SQL: &str = "CREATE TABLE cl(position INTEGER PRIMARY KEY, tbl, op, a0, a1, a2, a3, a4, b0);
    CREATE TRIGGER x_ins AFTER INSERT ON customers BEGIN INSERT INTO cl(tbl, op, a0, a1, a2, a3, a4)
      VALUES (1, 1, NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_upd AFTER UPDATE ON customers BEGIN INSERT INTO cl(tbl, op, a0, a1, a2, a3, a4, b0)
      VALUES (1, 2, NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at, OLD.id); END;
    CREATE TRIGGER x_del AFTER DELETE ON customers BEGIN INSERT INTO cl(tbl, op, b0)
      VALUES (1, 3, OLD.id); END;";

/// Experiment: barista's changelog and triggers as they are, minus the two
/// NOT NULL checks.
const X_NO_NOT_NULL_SQL: &str = "CREATE TABLE cl(position INTEGER PRIMARY KEY, tbl, op,
      a0, b0, a1, b1, a2, b2, a3, b3, a4, b4);
    CREATE TRIGGER x_ins AFTER INSERT ON customers BEGIN INSERT INTO cl(tbl, op, a0, a1, a2, a3, a4)
      VALUES (1, 1, NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_upd AFTER UPDATE ON customers BEGIN INSERT INTO cl(tbl, op, b0, b1, b2, b3, b4, a0, a1, a2, a3, a4)
      VALUES (1, 2, OLD.id, OLD.name, OLD.coffee, OLD.visits, OLD.updated_at,
              NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_del AFTER DELETE ON customers BEGIN INSERT INTO cl(tbl, op, b0, b1, b2, b3, b4)
      VALUES (1, 3, OLD.id, OLD.name, OLD.coffee, OLD.visits, OLD.updated_at); END;";

/// Experiment: a second, 30-column table captured next to customers: the
/// shared changelog grows to a0..a29/b0..b29 and every customers change
/// pays for the empty slots.
const X_WIDE_TABLE_SQL: &str = "CREATE TABLE wide(id INTEGER PRIMARY KEY, c1, c2, c3, c4, c5, c6, c7, c8, c9,
      c10, c11, c12, c13, c14, c15, c16, c17, c18, c19, c20, c21, c22, c23, c24, c25, c26, c27, c28, c29)";

/// Experiment: a 60-slot changelog (as wide as x-barista-wide30's) with the
/// images packed at the front: after image in c0..c4, before image in
/// c5..c9, so the 50 unused slots trail (SQLite still writes them as NULLs
/// unless built with SQLITE_ENABLE_NULL_TRIM).
fn x_packed_wide60_sql() -> String {
    let slots: Vec<String> = (0..60).map(|i| format!("c{i}")).collect();
    let new = "NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at";
    let old = "OLD.id, OLD.name, OLD.coffee, OLD.visits, OLD.updated_at";
    format!(
        "CREATE TABLE cl(position INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, op INTEGER NOT NULL, {slots});
         CREATE TRIGGER x_ins AFTER INSERT ON customers BEGIN
           INSERT INTO cl(tbl, op, c0, c1, c2, c3, c4) VALUES (1, 1, {new}); END;
         CREATE TRIGGER x_upd AFTER UPDATE ON customers BEGIN
           INSERT INTO cl(tbl, op, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9) VALUES (1, 2, {new}, {old}); END;
         CREATE TRIGGER x_del AFTER DELETE ON customers BEGIN
           INSERT INTO cl(tbl, op, c5, c6, c7, c8, c9) VALUES (1, 3, {old}); END;",
        slots = slots.join(", ")
    )
}

/// Experiment: a narrow shared changelog (position, tbl, op) for the order,
/// plus a per-table image table exactly as wide as the table, keyed by the
/// same position: two inserts per change, but no empty slots whatever the
/// widest captured table.
const X_SPLIT_SQL: &str = "CREATE TABLE cl(position INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, op INTEGER NOT NULL);
    CREATE TABLE cl_1(position INTEGER PRIMARY KEY, a0, a1, a2, a3, a4, b0, b1, b2, b3, b4);
    CREATE TRIGGER x_ins AFTER INSERT ON customers BEGIN
      INSERT INTO cl(tbl, op) VALUES (1, 1);
      INSERT INTO cl_1(position, a0, a1, a2, a3, a4)
        VALUES (last_insert_rowid(), NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_upd AFTER UPDATE ON customers BEGIN
      INSERT INTO cl(tbl, op) VALUES (1, 2);
      INSERT INTO cl_1(position, a0, a1, a2, a3, a4, b0, b1, b2, b3, b4)
        VALUES (last_insert_rowid(), NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at,
                OLD.id, OLD.name, OLD.coffee, OLD.visits, OLD.updated_at); END;
    CREATE TRIGGER x_del AFTER DELETE ON customers BEGIN
      INSERT INTO cl(tbl, op) VALUES (1, 3);
      INSERT INTO cl_1(position, b0, b1, b2, b3, b4)
        VALUES (last_insert_rowid(), OLD.id, OLD.name, OLD.coffee, OLD.visits, OLD.updated_at); END;";

/// How a fresh database is prepared for one setup.
#[derive(Debug, Clone, Copy)]
enum Install {
    None,
    Sql(&'static str),
    /// SQL made by a function (long generated variants).
    SqlFn(fn() -> String),
    Barista,
    /// Barista, after creating another table (SQL) that is captured too.
    BaristaWith(&'static str, &'static str),
}

/// One way of capturing (or not) the writes to `customers`.
#[derive(Debug, Clone, Copy)]
struct Setup {
    name: &'static str,
    install: Install,
    /// The table the triggers write to, emptied after the preload.
    log: Option<&'static str>,
}

const SETUPS: [Setup; 4] = [
    Setup {
        name: "none",
        install: Install::None,
        log: None,
    },
    Setup {
        name: "key-only",
        install: Install::Sql(KEY_ONLY_SQL),
        log: Some("log"),
    },
    Setup {
        name: "barista",
        install: Install::Barista,
        log: Some("_barista_changelog"),
    },
    Setup {
        name: "json",
        install: Install::Sql(JSON_SQL),
        log: Some("json_log"),
    },
];

const EXPERIMENTS: [Setup; 10] = [
    Setup {
        name: "x-split",
        install: Install::Sql(X_SPLIT_SQL),
        log: Some("cl"),
    },
    Setup {
        name: "x-packed-wide60",
        install: Install::SqlFn(x_packed_wide60_sql),
        log: Some("cl"),
    },
    Setup {
        name: "x-barista-wide30",
        install: Install::BaristaWith(X_WIDE_TABLE_SQL, "wide"),
        log: Some("_barista_changelog"),
    },
    Setup {
        name: "x-no-not-null",
        install: Install::Sql(X_NO_NOT_NULL_SQL),
        log: Some("cl"),
    },
    Setup {
        name: "x-lean",
        install: Install::Sql(X_LEAN_SQL),
        log: Some("cl"),
    },
    Setup {
        name: "x-replica",
        install: Install::Sql(X_REPLICA_SQL),
        log: Some("cl"),
    },
    Setup {
        name: "x-a-then-b",
        install: Install::Sql(X_A_THEN_B_SQL),
        log: Some("cl"),
    },
    Setup {
        name: "x-upd-after+key",
        install: Install::Sql(X_UPD_AFTER_PLUS_KEY_SQL),
        log: Some("cl"),
    },
    Setup {
        name: "x-after-only",
        install: Install::Sql(X_AFTER_ONLY_SQL),
        log: Some("cl"),
    },
    Setup {
        name: "x-key-tbl-op",
        install: Install::Sql(X_KEY_TBL_OP_SQL),
        log: Some("cl"),
    },
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Workload {
    Batched,
    Single,
}

/// One upsert's parameters, generated before the clock starts.
struct Upsert {
    id: i64,
    name: String,
    coffee: &'static str,
    updated_at: f64,
}

const COFFEES: [&str; 6] = [
    "espresso",
    "flat white",
    "cortado",
    "latte",
    "filter",
    "mocha",
];

/// Alternates a new key (appended after the preloaded ones) with a random
/// existing one: half inserts, half updates.
fn upserts(rows: usize, customers: usize, seed: u64) -> Vec<Upsert> {
    // Seeded: the same keys for every setup of a round, so setups are
    // compared on identical work.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next_new = customers as i64 + 1;
    (0..rows)
        .map(|i| {
            let r: u64 = rng.random();
            let id = if i % 2 == 1 || customers == 0 {
                next_new += 1;
                next_new - 1
            } else {
                1 + (r % customers as u64) as i64
            };
            Upsert {
                id,
                name: format!("customer {id} #{}", r % 1000),
                coffee: COFFEES[(r >> 20) as usize % COFFEES.len()],
                updated_at: 1.7e9 + i as f64 * 0.001,
            }
        })
        .collect()
}

/// Opens a bench connection with the production setting: WAL, and
/// synchronous=NORMAL (commits do not fsync; checkpoints do).
fn open(path: &Path, page_size: u32) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.pragma_update(None, "page_size", page_size)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if mode != "wal" {
        bail!("journal_mode is {mode}, not wal");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// Removes a database file and its WAL and shared-memory files.
fn remove_db(path: &Path) -> anyhow::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let f = PathBuf::from(format!("{}{suffix}", path.display()));
        if f.exists() {
            std::fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
        }
    }
    Ok(())
}

/// Builds the template database of `setup` at `path`: table, preloaded rows,
/// capture, an empty log, compacted, the WAL checkpointed away. Every setup
/// thus starts from the same table (barista's snapshot rows are removed).
fn build_template(setup: &Setup, path: &Path, args: &Args) -> anyhow::Result<()> {
    remove_db(path)?;
    let mut conn = open(path, args.page_size)?;
    conn.execute_batch(TABLE_SQL)?;
    {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare(UPSERT_SQL)?;
            for u in upserts(args.customers, 0, 0x5eed) {
                stmt.execute(params![u.id, u.name, u.coffee, u.updated_at])?;
            }
        }
        tx.commit()?;
    }
    match setup.install {
        Install::None => {}
        Install::Sql(sql) => conn
            .execute_batch(sql)
            .with_context(|| format!("installing {}", setup.name))?,
        Install::SqlFn(sql) => conn
            .execute_batch(&sql())
            .with_context(|| format!("installing {}", setup.name))?,
        Install::Barista | Install::BaristaWith(..) => {
            let mut tables = vec!["customers".to_owned()];
            if let Install::BaristaWith(sql, table) = setup.install {
                conn.execute_batch(sql)?;
                tables.push(table.to_owned());
            }
            // The triggers live in the file; the Capture (and its connection)
            // is not needed for the writes.
            let capture = Capture::install(conn, &tables, false).context("Capture::install")?;
            drop(capture);
            conn = open(path, args.page_size)?;
        }
    }
    if let Some(log) = setup.log {
        conn.execute_batch(&format!("DELETE FROM {log}"))?;
    }
    conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")?;
    drop(conn);
    // Closing the last connection checkpoints and deletes the WAL; the
    // template is the main file alone.
    Ok(())
}

/// A fresh database for one measurement: a copy of the setup's template.
fn fresh_copy(template: &Path, path: &Path, page_size: u32) -> anyhow::Result<Connection> {
    remove_db(path)?;
    std::fs::copy(template, path).with_context(|| format!("copying {}", template.display()))?;
    open(path, page_size)
}

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
struct Sample {
    rows: usize,
    wall: Duration,
    cpu: Option<Duration>,
    written: Option<u64>,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.rows as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Runs one workload on a prepared connection.
fn measure(
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
fn check_logged(conn: &Connection, setup: &Setup, rows: usize) -> anyhow::Result<()> {
    if let Some(log) = setup.log {
        let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {log}"), [], |r| r.get(0))?;
        if n as usize != rows {
            bail!("{}: {log} has {n} rows after {rows} upserts", setup.name);
        }
    }
    Ok(())
}

/// A goal for a cost ratio: its text and its test.
type Goal = (&'static str, fn(f64) -> bool);

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// 1234567.8 → "1,234,568".
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A temporary directory removed on drop (the bench keeps its dependencies
/// to the library's).
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(parent: Option<PathBuf>) -> anyhow::Result<Self> {
        let parent = parent.unwrap_or_else(std::env::temp_dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let dir = parent.join(format!(
            "capture-bench-{}-{}",
            std::process::id(),
            nanos.as_nanos()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

    println!("capture-bench: upserts into customers(id INTEGER PRIMARY KEY, name, coffee, visits, updated_at)");
    println!(
        "  50% new keys, 50% random existing keys; {} customers before each measurement",
        args.customers
    );
    println!(
        "  SQLite {} (rusqlite, bundled), real file under {}",
        rusqlite::version(),
        scratch.0.parent().unwrap_or(&scratch.0).display()
    );
    println!(
        "  journal_mode=WAL, synchronous=NORMAL (the common production setting: commits do not fsync, \
         checkpoints do), page_size={}",
        args.page_size
    );
    println!(
        "  batched: {} upserts in transactions of {}; single-row: {} upserts, one per commit (autocommit)",
        args.rows, args.batch, args.single_rows
    );
    println!(
        "  {} rounds, setups interleaved, fresh database per measurement\n",
        args.rounds
    );

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
            // paired ratios below rely on.
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

    let rates = |s: usize, w: usize| samples[s][w].iter().map(Sample::rate).collect::<Vec<_>>();
    let cell = |s: usize, w: usize| {
        let r = rates(s, w);
        let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = r.iter().copied().fold(0.0, f64::max);
        let bytes: Option<Vec<f64>> = samples[s][w]
            .iter()
            .map(|x| x.written.map(|b| b as f64 / x.rows as f64))
            .collect();
        let bytes = bytes.map_or_else(|| "n/a".to_owned(), |b| format!("{:.0}", median(&b)));
        format!(
            "{:>10} {:>18} {:>7}",
            thousands(median(&r)),
            format!("{}..{}", thousands(lo), thousands(hi)),
            bytes
        )
    };
    let batched = format!("batched, {} rows/txn", args.batch);
    println!("rows/s: median and min..max over rounds; B/row: bytes written (WAL + checkpoints) per upsert");
    println!("{:<16} {:^37}   {:^37}", "", batched, "single-row txns");
    println!(
        "{:<16} {:>10} {:>18} {:>7}   {:>10} {:>18} {:>7}",
        "setup", "rows/s", "min..max", "B/row", "rows/s", "min..max", "B/row"
    );
    println!("{}", "-".repeat(16 + 2 * 40));
    for (s, setup) in setups.iter().enumerate() {
        println!("{:<16} {}   {}", setup.name, cell(s, 0), cell(s, 1));
    }

    // cost(x) = time per row. cost(a)/cost(b) is taken per round, from
    // measurements of the same work run next to each other, and the median
    // of those paired ratios is shown: steadier than a ratio of medians when
    // other processes share the machine.
    let paired =
        |a: usize, b: usize, w: usize, clock: fn(&Sample) -> Option<Duration>| -> Option<f64> {
            let v: Option<Vec<f64>> = samples[a][w]
                .iter()
                .zip(&samples[b][w])
                .map(|(x, y)| Some(clock(x)?.as_secs_f64() / clock(y)?.as_secs_f64().max(1e-12)))
                .collect();
            v.map(|v| median(&v))
        };
    let wall_clock: fn(&Sample) -> Option<Duration> = |x| Some(x.wall);
    let cpu_clock: fn(&Sample) -> Option<Duration> = |x| x.cpu;
    let fmt = |r: Option<f64>| r.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}x"));
    let idx = |name: &str| setups.iter().position(|s| s.name == name);
    println!("\ncost per row, median of per-round paired ratios (wall clock, and on-CPU time in brackets)");
    println!("{:<46} {:>17}   {:>17}", "", "batched", "single-row");
    let line = |label: &str, a: Option<usize>, b: Option<usize>, goal: Option<Goal>| {
        let (Some(a), Some(b)) = (a, b) else { return };
        let (bw, bc) = (paired(a, b, 0, wall_clock), paired(a, b, 0, cpu_clock));
        let (sw, sc) = (paired(a, b, 1, wall_clock), paired(a, b, 1, cpu_clock));
        let tail = match (goal, bw, sw) {
            (Some((text, pass)), Some(bw), Some(sw)) => {
                let v = |ok: bool| if ok { "ok" } else { "MISSED" };
                format!("   {text}: {} / {}", v(pass(bw)), v(pass(sw)))
            }
            _ => String::new(),
        };
        println!(
            "{label:<46} {:>7} [{:>7}]   {:>7} [{:>7}]{tail}",
            fmt(bw),
            fmt(bc),
            fmt(sw),
            fmt(sc)
        );
    };
    let (none, key, barista, json) = (idx("none"), idx("key-only"), idx("barista"), idx("json"));
    line(
        "barista cost vs key-only floor:",
        barista,
        key,
        Some(("goal <= 1.10x", |r| r <= 1.10)),
    );
    line(
        "json cost vs barista:",
        json,
        barista,
        Some(("goal >= 1.5x", |r| r >= 1.5)),
    );
    line("barista cost vs no capture:", barista, none, None);
    line("key-only cost vs no capture:", key, none, None);
    line("json cost vs no capture:", json, none, None);
    if setups.iter().any(|s| s.name.starts_with("x-")) {
        println!("\nexperiments (x-*: trigger variants in this bench, not barista's), cost vs key-only floor:");
        line("barista (for comparison)", barista, key, None);
        for (s, setup) in setups
            .iter()
            .enumerate()
            .filter(|(_, s)| s.name.starts_with("x-"))
        {
            line(setup.name, Some(s), key, None);
        }
    }
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
