//! `consumer verify`: checks a replica file on demand. Alone, every table's
//! checksum is recomputed from its rows and compared with the rolling value
//! the follower keeps; with `--against URL`, the replica's rows are compared
//! with a peer follower's, key range by key range, naming the keys and
//! tables that differ.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use barista_schemas::Position;

use crate::verify::{self, Buckets, KeyHash, Keys, Report};

/// `consumer verify` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:\n  \
consumer verify --replica replica-1.db\n  \
consumer verify --replica replica-2.db --against http://127.0.0.1:8091\n\n\
Without --against: one line per table (ok, MISMATCH, or no-sum for a table not written since \
checksums were on), then the divergence the follower recorded, if any. The file may belong to a \
running follower: it is read in one read transaction.\n\n\
With --against: the peer's /verify/buckets and /verify/keys are compared with the same hashes \
computed from this file; each difference is one line: `changed TABLE KEY`, `missing TABLE KEY` \
(the peer has the row, this replica does not), `extra TABLE KEY`, `missing-table TABLE`, \
`extra-table TABLE`. Both sides must be at the same leader position for this to mean anything: \
it retries until they are (a follower that is behind catches up) for --wait-ms, then gives up \
with exit code 2 naming both positions (stop the producer's writers, or stop the follower that \
is ahead at the other's position, and run it again).\n\n\
Exit codes: 0 equal, 1 a difference (repair: re-seed the replica from a healthy peer with \
`consumer --reseed --seed-from URL`, or re-snapshot the table), 2 not comparable or not \
checked (no such file, peer unreachable).")]
pub struct VerifyArgs {
    /// The replica SQLite file to check.
    #[arg(long, env = "BARISTA_REPLICA", default_value = "replica.db")]
    pub replica: PathBuf,
    /// A healthy peer follower's HTTP address (`http://host:port`) to
    /// compare rows with.
    #[arg(long, env = "BARISTA_VERIFY_AGAINST")]
    pub against: Option<String>,
    /// With --against: how long to wait for both sides to be at the same
    /// position (ms).
    #[arg(long, env = "BARISTA_VERIFY_WAIT_MS", default_value_t = 30_000)]
    pub wait_ms: u64,
}

/// What `consumer verify` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every table equal.
    Equal,
    /// A difference (printed).
    Differs,
    /// The two sides never met at one position.
    NotComparable,
}

/// Runs `consumer verify`, printing one line per table or difference.
pub async fn run(a: VerifyArgs) -> anyhow::Result<Outcome> {
    if !a.replica.exists() {
        anyhow::bail!("no replica file at {}", a.replica.display());
    }
    match &a.against {
        None => {
            let path = a.replica.clone();
            let r = tokio::task::spawn_blocking(move || verify::in_read_txn(&path, verify::report))
                .await?
                .with_context(|| format!("reading {}", a.replica.display()))?;
            Ok(print_report(&r))
        }
        Some(peer) => {
            let diff = against(&a.replica, peer, Duration::from_millis(a.wait_ms)).await?;
            Ok(print_diff(&diff))
        }
    }
}

fn print_report(r: &Report) -> Outcome {
    println!("replica at position {}", r.position);
    for t in &r.tables {
        match t.stored {
            None => println!(
                "no-sum    {}  rows={} recomputed={} (not written since checksums were on)",
                t.table, t.rows, t.recomputed
            ),
            Some(s) if t.ok => println!("ok        {}  rows={} sum={s}", t.table, t.rows),
            Some(s) => println!(
                "MISMATCH  {}  rows={} stored={s} recomputed={}",
                t.table, t.rows, t.recomputed
            ),
        }
    }
    if let Some(d) = &r.diverged {
        println!(
            "DIVERGED  {} at position {}: leader {} replica {} (recorded by the follower)",
            d.table, d.position, d.leader, d.replica
        );
    }
    if r.ok && r.diverged.is_none() {
        Outcome::Equal
    } else {
        Outcome::Differs
    }
}

/// The differences between a replica file and a peer at one position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// The position both were at; None when they never met.
    pub position: Option<Position>,
    /// (this replica's, the peer's) positions last seen.
    pub positions: (Position, Position),
    /// One line per difference.
    pub lines: Vec<String>,
}

fn print_diff(d: &Diff) -> Outcome {
    let Some(p) = d.position else {
        println!(
            "not comparable: this replica is at position {}, the peer at {}; they never met",
            d.positions.0, d.positions.1
        );
        return Outcome::NotComparable;
    };
    println!("compared at position {p}");
    for l in &d.lines {
        println!("{l}");
    }
    if d.lines.is_empty() {
        println!("equal");
        Outcome::Equal
    } else {
        Outcome::Differs
    }
}

/// Not at the same position: try again.
struct Moved(Position, Position);

/// Compares the replica at `path` with the follower at `peer`, retrying
/// until both are at the same position or `wait` passed.
pub async fn against(path: &Path, peer: &str, wait: Duration) -> anyhow::Result<Diff> {
    let http = reqwest::Client::new();
    let peer = peer.trim_end_matches('/');
    let start = Instant::now();
    loop {
        match compare_once(&http, path, peer).await? {
            Ok(diff) => return Ok(diff),
            Err(Moved(mine, theirs)) if start.elapsed() >= wait => {
                return Ok(Diff {
                    position: None,
                    positions: (mine, theirs),
                    lines: vec![],
                })
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn get<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: String,
) -> anyhow::Result<Option<T>> {
    let r = http
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if r.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let r = r.error_for_status().with_context(|| format!("GET {url}"))?;
    Ok(Some(r.json().await.with_context(|| format!("GET {url}"))?))
}

async fn local<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let p = path.to_owned();
    tokio::task::spawn_blocking(move || verify::in_read_txn(&p, f))
        .await?
        .with_context(|| format!("reading {}", path.display()))
}

async fn compare_once(
    http: &reqwest::Client,
    path: &Path,
    peer: &str,
) -> anyhow::Result<Result<Diff, Moved>> {
    let theirs: Report = get(http, format!("{peer}/verify"))
        .await?
        .context("the peer has no /verify")?;
    let (mine, position) = local(path, |c| {
        Ok((verify::user_tables(c)?, verify::position(c)?))
    })
    .await?;
    if position != theirs.position {
        return Ok(Err(Moved(position, theirs.position)));
    }
    let mine: BTreeSet<String> = mine.into_iter().collect();
    let their_tables: BTreeSet<String> = theirs.tables.iter().map(|t| t.table.clone()).collect();
    let mut lines = Vec::new();
    for t in their_tables.difference(&mine) {
        lines.push(format!("missing-table {t}"));
    }
    for t in mine.difference(&their_tables) {
        lines.push(format!("extra-table {t}"));
    }
    for table in mine.intersection(&their_tables) {
        let q = urlencode(table);
        let Some(tb) = get::<Buckets>(http, format!("{peer}/verify/buckets?table={q}")).await?
        else {
            continue;
        };
        let t = table.clone();
        let Some(mb) = local(path, move |c| verify::buckets(c, &t)).await? else {
            continue;
        };
        if tb.position != position || mb.position != position {
            return Ok(Err(Moved(mb.position, tb.position)));
        }
        for b in 0..tb.buckets.len().min(mb.buckets.len()) {
            if tb.buckets[b] == mb.buckets[b] {
                continue;
            }
            let Some(tk) =
                get::<Keys>(http, format!("{peer}/verify/keys?table={q}&bucket={b}")).await?
            else {
                continue;
            };
            let t = table.clone();
            let Some(mk) = local(path, move |c| verify::keys(c, &t, b as u64)).await? else {
                continue;
            };
            if tk.position != position || mk.position != position {
                return Ok(Err(Moved(mk.position, tk.position)));
            }
            lines.extend(key_lines(table, &mk.keys, &tk.keys));
        }
    }
    Ok(Ok(Diff {
        position: Some(position),
        positions: (position, position),
        lines,
    }))
}

/// `changed`, `missing` (on this side) and `extra` keys of one key range.
fn key_lines(table: &str, mine: &[KeyHash], theirs: &[KeyHash]) -> Vec<String> {
    let m: BTreeMap<String, i64> = mine.iter().map(|k| (k.key.to_string(), k.hash)).collect();
    let t: BTreeMap<String, i64> = theirs.iter().map(|k| (k.key.to_string(), k.hash)).collect();
    let mut out = Vec::new();
    for (k, h) in &t {
        match m.get(k) {
            None => out.push(format!("missing {table} {k}")),
            Some(mh) if mh != h => out.push(format!("changed {table} {k}")),
            Some(_) => {}
        }
    }
    for k in m.keys().filter(|k| !t.contains_key(*k)) {
        out.push(format!("extra {table} {k}"));
    }
    out
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
