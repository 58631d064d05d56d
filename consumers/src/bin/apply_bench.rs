//! `apply-bench`: how fast a follower applies changes, against the fastest
//! plain way to write the same rows into SQLite.
//!
//! The same change stream (inserts, then updates of existing keys) goes into
//! a fresh replica file per measurement, in transactions of `--batch` rows:
//!
//! - `raw upsert`: a prepared `INSERT … ON CONFLICT DO UPDATE` of each change's
//!   after-image, nothing else (the baseline);
//! - `barista apply`: `Replica::apply` of already decoded batches (rows,
//!   offsets and position in one transaction);
//! - `barista decode+apply`: the follower's path per message: `Decoder::change`
//!   on the Confluent-framed Avro bytes (schema fetched once by id over HTTP,
//!   then cached, as in a follower), then `Replica::apply`;
//! - `apply-nosums`, `decode+apply-nosums`: the same with the table checksums
//!   off (`FollowerConfig::checksums`), to price them: the on/off ratio of
//!   the median CPU time per change.
//!
//! Setups are interleaved round by round; medians are reported with the ratio
//! barista/raw (changes per second).

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use barista_consumer::decode::Decoder;
use barista_consumer::replica::{Batch, Replica};
use barista_schemas::envelope::DecodedChange;
use barista_schemas::{ChangeEvent, Op, Position, Source, SqlValue, TableSchemas, TableShape};
use clap::Parser;
use rusqlite::Connection;

/// mimalloc rather than glibc malloc: with many small short-lived buffers per
/// change, glibc's free lists (malloc_consolidate, unlink_chunk) took about a
/// quarter of the CPU in the sustained benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measure the follower's apply rate (decode + replica transaction) against a
/// raw batched SQLite upsert of the same rows, in the same run.
#[derive(Debug, Parser)]
#[command(
    name = "apply-bench",
    after_help = "Examples:\n  cargo run --release -p barista-consumer --bin apply-bench\n  \
apply-bench --changes 200000 --keys 50000 --batch 500 --rounds 7\n  \
BARISTA_BENCH_ROUNDS=9 apply-bench --setups raw,decode+apply\n\n\
Each measurement writes --changes changes (first an insert of every key, then updates of random\n\
keys) into a fresh file (WAL, synchronous=NORMAL) in a temp directory, --batch changes per\n\
transaction. Reported: median changes/s over --rounds, median on-CPU microseconds per change\n\
(this thread's schedstat), and barista/raw ratios of the medians (goal: >= 0.5). To see where\n\
the time goes:\n  \
perf record --call-graph dwarf apply-bench --setups decode+apply --rounds 2 && perf report --children"
)]
struct Args {
    /// Measurements per setup; the median is reported.
    #[arg(long, env = "BARISTA_BENCH_ROUNDS", default_value_t = 5)]
    rounds: usize,
    /// Changes per measurement.
    #[arg(long, env = "BARISTA_BENCH_CHANGES", default_value_t = 100_000)]
    changes: usize,
    /// Distinct keys (the first --keys changes insert them; the rest update).
    #[arg(long, env = "BARISTA_BENCH_KEYS", default_value_t = 20_000)]
    keys: usize,
    /// Changes per transaction, for barista and the raw upsert alike.
    #[arg(long, env = "BARISTA_BENCH_BATCH", default_value_t = 1000)]
    batch: usize,
    /// Run only these setups: raw, apply, apply-nosums, decode+apply,
    /// decode+apply-nosums (comma-separated).
    #[arg(long, env = "BARISTA_BENCH_SETUPS", value_delimiter = ',')]
    setups: Vec<String>,
    /// Directory for the temporary databases (default: the system temp dir).
    #[arg(long, env = "BARISTA_BENCH_DIR")]
    dir: Option<PathBuf>,
}

const TABLE: &str = "customers";
const TABLE_SQL: &str = "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, \
                         coffee TEXT, visits INTEGER, updated_at REAL)";
const RAW_UPSERT: &str = "INSERT INTO customers(id, name, coffee, visits, updated_at) \
                          VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(id) DO UPDATE SET \
                          name = excluded.name, coffee = excluded.coffee, \
                          visits = excluded.visits, updated_at = excluded.updated_at";
const COFFEES: [&str; 5] = ["espresso", "flat white", "cortado", "latte", "filter"];
const SCHEMA_ID: u32 = 1;

/// The change stream: events in position order and their wire bytes.
struct Stream {
    events: Vec<ChangeEvent>,
    payloads: Vec<Vec<u8>>,
    value_schema: String,
}

fn make_stream(changes: usize, keys: usize) -> anyhow::Result<Stream> {
    let conn = Connection::open_in_memory()?;
    conn.execute_batch(TABLE_SQL)?;
    let schemas = TableSchemas::derive(TableShape::read(&conn, TABLE)?)?;
    // Seeded: every run writes the same stream.
    let mut rng = StdRng::seed_from_u64(0x9e37_79b9_7f4a_7c15);
    let mut rows: Vec<Option<Vec<SqlValue>>> = vec![None; keys + 1];
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schemas.value).build()?;
    let mut events = Vec::with_capacity(changes);
    let mut payloads = Vec::with_capacity(changes);
    for i in 0..changes {
        let position = i as i64 + 1;
        let id = if i < keys {
            i + 1
        } else {
            rng.random_range(1..=keys)
        };
        let before = rows[id].clone();
        let visits = match &before {
            Some(r) => match r[3] {
                SqlValue::Integer(v) => v + 1,
                _ => 1,
            },
            None => 1,
        };
        let after = vec![
            SqlValue::Integer(id as i64),
            SqlValue::Text(format!("customer {id}")),
            SqlValue::Text(COFFEES[rng.random_range(0..COFFEES.len())].to_owned()),
            SqlValue::Integer(visits),
            SqlValue::Real(1.7e9 + position as f64 / 1000.0),
        ];
        rows[id] = Some(after.clone());
        let ev = ChangeEvent {
            op: if before.is_some() {
                Op::Update
            } else {
                Op::Create
            },
            before,
            after: Some(after),
            source: Source {
                connector: "barista".into(),
                db: "bench".into(),
                table: TABLE.into(),
                position: Position(position),
                txn: Position(position),
                prev_position: (position > 1).then_some(Position(position - 1)),
                snapshot: false,
                ts_ms: 1_700_000_000_000 + position,
                epoch: 0,
            },
            ts_ms: 1_700_000_000_000 + position,
        };
        let datum = writer.write_value_to_vec(schemas.envelope_value(&ev)?)?;
        let mut framed = Vec::with_capacity(5 + datum.len());
        framed.push(0);
        framed.extend_from_slice(&SCHEMA_ID.to_be_bytes());
        framed.extend_from_slice(&datum);
        events.push(ev);
        payloads.push(framed);
    }
    Ok(Stream {
        events,
        payloads,
        value_schema: schemas.value_json,
    })
}

/// Serves the one writer schema by id, the way a registry answers
/// `GET /schemas/ids/{id}`. The decoder asks once and caches it, so this
/// only stands in for the registry's answer, not for per-message work.
async fn serve_schema(schema: String) -> anyhow::Result<String> {
    let body = serde_json::json!({ "schema": schema });
    let app = axum::Router::new().route(
        "/schemas/ids/{id}",
        axum::routing::get(move || {
            let body = body.clone();
            async move { axum::Json(body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// This thread's time on a CPU (Linux schedstat), if readable.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
    (ns > 0).then(|| Duration::from_nanos(ns))
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu: Option<Duration>,
}

fn measure(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Sample> {
    let (cpu0, t0) = (thread_cpu(), Instant::now());
    f()?;
    let wall = t0.elapsed();
    let cpu = cpu0.zip(thread_cpu()).map(|(a, b)| b.saturating_sub(a));
    Ok(Sample { wall, cpu })
}

fn fresh(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(path)
}

fn run_raw(path: &Path, stream: &Stream, batch: usize) -> anyhow::Result<()> {
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(TABLE_SQL)?;
    for chunk in stream.events.chunks(batch) {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(RAW_UPSERT)?;
            for ev in chunk {
                let row = ev.after.as_ref().context("an upsert without a row")?;
                stmt.execute(rusqlite::params_from_iter(row.iter()))?;
            }
        }
        tx.commit()?;
    }
    Ok(())
}

fn batch_of(changes: Vec<DecodedChange>, next_offset: i64) -> Batch {
    let last = changes
        .last()
        .map_or((Position(0), 0), |c| (c.source.position, c.ts_ms));
    Batch {
        changes,
        offsets: vec![(("bench.customers".to_owned(), 0), (next_offset, last.0))],
        position: Some(last),
        drops: Vec::new(),
        checksums: Vec::new(),
        snapshots: Vec::new(),
    }
}

fn run_apply(path: &Path, batches: &[Batch], checksums: bool) -> anyhow::Result<()> {
    let mut replica = Replica::open_with(path, checksums)?;
    for b in batches {
        replica.apply(b)?;
    }
    Ok(())
}

fn run_decode_apply(
    rt: &tokio::runtime::Runtime,
    decoder: &Decoder,
    path: &Path,
    stream: &Stream,
    batch: usize,
    checksums: bool,
) -> anyhow::Result<()> {
    let mut replica = Replica::open_with(path, checksums)?;
    let mut offset = 0i64;
    for chunk in stream.payloads.chunks(batch) {
        let changes = rt.block_on(async {
            let mut out = Vec::with_capacity(chunk.len());
            for p in chunk {
                out.push(decoder.change(p).await?);
            }
            Ok::<_, barista_consumer::decode::DecodeError>(out)
        })?;
        offset += chunk.len() as i64;
        replica.apply(&batch_of(changes, offset))?;
    }
    Ok(())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apply-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.rounds > 0 && a.batch > 0,
        "--rounds and --batch must be > 0"
    );
    anyhow::ensure!(
        a.keys > 0 && a.changes >= a.keys,
        "--changes must be at least --keys (> 0)"
    );
    const SETUPS: [&str; 5] = [
        "raw",
        "apply",
        "apply-nosums",
        "decode+apply",
        "decode+apply-nosums",
    ];
    let setups: Vec<&str> = if a.setups.is_empty() {
        SETUPS.to_vec()
    } else {
        for s in &a.setups {
            anyhow::ensure!(
                SETUPS.contains(&s.as_str()),
                "unknown setup {s:?}; expected one of {SETUPS:?}"
            );
        }
        SETUPS
            .into_iter()
            .filter(|s| a.setups.iter().any(|x| x == s))
            .collect()
    };
    let base = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("barista-apply-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = bench(&a, &setups, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench(a: &Args, setups: &[&str], dir: &Path) -> anyhow::Result<()> {
    let stream = make_stream(a.changes, a.keys).context("building the change stream")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let url = rt.block_on(serve_schema(stream.value_schema.clone()))?;
    let decoder = Decoder::new(&url)?;
    // Decode once up front for the apply-only setup (and to check the stream).
    let mut batches = Vec::new();
    let mut offset = 0i64;
    for chunk in stream.payloads.chunks(a.batch) {
        let changes = rt.block_on(async {
            let mut out = Vec::with_capacity(chunk.len());
            for p in chunk {
                out.push(decoder.change(p).await?);
            }
            Ok::<_, barista_consumer::decode::DecodeError>(out)
        })?;
        offset += chunk.len() as i64;
        batches.push(batch_of(changes, offset));
    }
    let shape = Arc::clone(&batches[0].changes[0].shape);
    anyhow::ensure!(shape.table == TABLE, "decoded a change of {}", shape.table);

    println!(
        "apply-bench: {} changes ({} inserts, {} updates) on {} keys, {} changes per transaction, {} rounds",
        a.changes,
        a.keys,
        a.changes - a.keys,
        a.keys,
        a.batch,
        a.rounds
    );
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); setups.len()];
    for round in 0..a.rounds {
        // Rotate the order each round so no setup always runs first.
        for k in 0..setups.len() {
            let i = (k + round) % setups.len();
            let path = fresh(dir, &format!("{}.db", setups[i].replace('+', "-")))?;
            let s = match setups[i] {
                "raw" => measure(|| run_raw(&path, &stream, a.batch))?,
                "apply" => measure(|| run_apply(&path, &batches, true))?,
                "apply-nosums" => measure(|| run_apply(&path, &batches, false))?,
                s => {
                    let sums = s == "decode+apply";
                    measure(|| run_decode_apply(&rt, &decoder, &path, &stream, a.batch, sums))?
                }
            };
            check_rows(&path, &stream, a.keys)?;
            samples[i].push(s);
        }
    }

    let n = a.changes as f64;
    let rate = |xs: &[Sample]| median(xs.iter().map(|s| n / s.wall.as_secs_f64()).collect());
    let cpu = |xs: &[Sample]| {
        let v: Vec<f64> = xs
            .iter()
            .filter_map(|s| s.cpu)
            .map(|c| c.as_secs_f64() * 1e6 / n)
            .collect();
        (!v.is_empty()).then(|| median(v))
    };
    println!(
        "\n{:<22} {:>16} {:>18}",
        "setup", "changes/s", "CPU µs/change"
    );
    let label = |s: &str| match s {
        "raw" => "raw upsert",
        "apply" => "barista apply",
        "apply-nosums" => "apply, no checksums",
        "decode+apply" => "barista decode+apply",
        _ => "decode+apply, no sums",
    };
    let mut rates = std::collections::HashMap::new();
    for (i, s) in setups.iter().enumerate() {
        let r = rate(&samples[i]);
        rates.insert(*s, (r, cpu(&samples[i])));
        println!(
            "{:<22} {:>16.0} {:>18}",
            label(s),
            r,
            cpu(&samples[i]).map_or("n/a".into(), |c| format!("{c:.2}"))
        );
    }
    if let Some((raw, raw_cpu)) = rates.get("raw").copied() {
        println!();
        for s in ["apply", "decode+apply"] {
            if let Some((r, c)) = rates.get(s).copied() {
                let cpu_ratio = raw_cpu
                    .zip(c)
                    .map_or("n/a".into(), |(a, b)| format!("{:.2}", a / b));
                println!(
                    "ratio {} / raw: {:.2} by wall clock, {cpu_ratio} by CPU time (goal >= 0.5)",
                    label(s),
                    r / raw
                );
            }
        }
    }
    // The table checksums' cost: the same path with them on and off.
    let index = |s: &str| setups.iter().position(|x| *x == s).unwrap_or(usize::MAX);
    for (on, off) in [
        ("apply", "apply-nosums"),
        ("decode+apply", "decode+apply-nosums"),
    ] {
        if let (Some((r_on, c_on)), Some((r_off, c_off))) =
            (rates.get(on).copied(), rates.get(off).copied())
        {
            let cpu = c_on.zip(c_off).map_or("n/a".into(), |(a, b)| {
                format!(
                    "{:.3} (+{:.1} % CPU per change)",
                    a / b,
                    (a / b - 1.0) * 100.0
                )
            });
            // The same ratio taken round by round (the two ran next to each other), then its
            // median: steadier than the ratio of medians when the machine's speed drifts.
            let (i_on, i_off) = (index(on), index(off));
            let paired: Vec<f64> = samples[i_on]
                .iter()
                .zip(&samples[i_off])
                .filter_map(|(a, b)| Some(a.cpu?.as_secs_f64() / b.cpu?.as_secs_f64()))
                .collect();
            let paired = if paired.is_empty() {
                "n/a".to_owned()
            } else {
                let m = median(paired);
                format!("{m:.3} (+{:.1} %)", (m - 1.0) * 100.0)
            };
            println!(
                "checksums on/off, {on}: CPU µs/change {cpu}; median of the rounds' ratios {paired}; \
                 wall-clock rate {:.3} (goal: at most +5 % CPU)",
                r_on / r_off
            );
        }
    }
    Ok(())
}

/// Every measurement must leave the same rows: the last after-image per key.
fn check_rows(path: &Path, stream: &Stream, keys: usize) -> anyhow::Result<()> {
    let conn = Connection::open(path)?;
    let n: i64 = conn.query_row("SELECT count(*) FROM customers", [], |r| r.get(0))?;
    anyhow::ensure!(
        n == keys as i64,
        "{}: {n} rows, expected {keys}",
        path.display()
    );
    let last = stream.events.last().context("empty stream")?;
    let row = last.after.as_ref().context("no row")?;
    let got: i64 = conn.query_row(
        "SELECT visits FROM customers WHERE id = ?1",
        [&row[0]],
        |r| r.get(0),
    )?;
    anyhow::ensure!(
        SqlValue::Integer(got) == row[3],
        "{}: last change not applied",
        path.display()
    );
    Ok(())
}
