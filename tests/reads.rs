//! Reads from followers: a Jepsen-style history checker for read-your-writes
//! and monotonic reads (with and without tokens) under injected lag, bounded
//! staleness on the leader's clock, consistent prefix through the read API,
//! and the replica file read by a plain SQLite client.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use barista_client::{Server, Session, SessionConfig};
use barista_producer::token::write_with_token;
use barista_tests::*;
use rand::{Rng, SeedableRng};
use rusqlite::{params, Connection};
use serde_json::{json, Value};

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub(crate) const CUSTOMERS: i64 = 6;

pub(crate) fn coffee_shop(leader: &Path) {
    barista_shop::create_schema(leader).unwrap();
    let c = Connection::open(leader).unwrap();
    for id in 1..=CUSTOMERS {
        c.execute(
            "INSERT INTO customers(id, name, favourite) VALUES (?1, ?2, 'espresso')",
            params![id, format!("customer {id}")],
        )
        .unwrap();
    }
    // An order before capture, so both tables are in the snapshot.
    c.execute("INSERT INTO orders VALUES (0, 1, 'espresso', 0)", [])
        .unwrap();
}

/// One operation of the history.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// An order by `client`: `key`'s version (visits) became `version`.
    Write {
        client: usize,
        key: i64,
        version: i64,
        token: i64,
    },
    /// `client` read `key` at `version` (0: no such row), served by `server`
    /// at `position`.
    Read {
        client: usize,
        key: i64,
        version: i64,
        position: i64,
        server: Server,
    },
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Violations {
    /// A client read a version older than its own last write to the key.
    pub(crate) read_your_writes: usize,
    /// A client read a version older than one it had read before.
    pub(crate) monotonic: usize,
}

/// Checks each client's history in its own order (a client's operations are
/// sequential, so its order is real-time order).
pub(crate) fn check(history: &[Event]) -> Violations {
    let mut v = Violations::default();
    let mut wrote: HashMap<(usize, i64), i64> = HashMap::new();
    let mut seen: HashMap<(usize, i64), i64> = HashMap::new();
    for e in history {
        match *e {
            Event::Write {
                client,
                key,
                version,
                ..
            } => {
                let w = wrote.entry((client, key)).or_default();
                *w = (*w).max(version);
            }
            Event::Read {
                client,
                key,
                version,
                ..
            } => {
                if version < wrote.get(&(client, key)).copied().unwrap_or(0) {
                    v.read_your_writes += 1;
                }
                let s = seen.entry((client, key)).or_default();
                if version < *s {
                    v.monotonic += 1;
                }
                *s = (*s).max(version);
            }
        }
    }
    v
}

#[test]
fn the_checker_finds_what_it_looks_for() {
    let r = |client, key, version| Event::Read {
        client,
        key,
        version,
        position: 0,
        server: Server::Leader,
    };
    let w = |client, key, version| Event::Write {
        client,
        key,
        version,
        token: 0,
    };
    assert_eq!(
        check(&[w(0, 1, 2), r(0, 1, 1), r(1, 1, 2), r(1, 1, 1), r(1, 2, 5)]),
        Violations {
            read_your_writes: 1,
            monotonic: 1
        }
    );
}

struct HistoryRun {
    history: Vec<Event>,
    stats: Vec<barista_client::Stats>,
}

/// Three clients order and read through sessions while one follower is
/// paused, then the broker is slowed down, then the other follower is paused.
async fn history(use_tokens: bool) -> HistoryRun {
    let shop = Shop::start(coffee_shop, 2, true).await;
    let leader_url = shop.shop_url.clone().unwrap();
    let history = Arc::new(Mutex::new(Vec::new()));
    let ops = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    let mut sessions = Vec::new();
    for client in 0..3usize {
        let mut cfg = SessionConfig::new(shop.urls(), leader_url.clone());
        cfg.use_tokens = use_tokens;
        cfg.wait = Duration::from_secs(2);
        let session = Arc::new(Session::new(cfg).unwrap());
        sessions.push(session.clone());
        let (history, ops, stop) = (history.clone(), ops.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(client as u64);
            let mut mine = 1 + client as i64;
            while !stop.load(Ordering::SeqCst) {
                let key = if rng.random_bool(0.5) {
                    mine
                } else {
                    rng.random_range(1..=CUSTOMERS)
                };
                if rng.random_ratio(1, 4) {
                    mine = key;
                    let v = session
                        .write(
                            "orders",
                            &json!({ "customer_id": key, "coffee": format!("c{client}") }),
                        )
                        .await
                        .unwrap();
                    history.lock().unwrap().push(Event::Write {
                        client,
                        key,
                        version: v["visits"].as_i64().unwrap(),
                        token: v["token"].as_i64().unwrap(),
                    });
                } else {
                    let a = session
                        .get_row("customers", &[("id", &key.to_string())])
                        .await
                        .unwrap();
                    let version = a
                        .row()
                        .and_then(|r| r.get("visits"))
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    history.lock().unwrap().push(Event::Read {
                        client,
                        key,
                        version,
                        position: a.position,
                        server: a.served_by,
                    });
                }
                ops.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let after = |n: u64| {
        let ops = ops.clone();
        move || {
            let o = ops.load(Ordering::SeqCst);
            (o >= n)
                .then_some(())
                .ok_or(format!("{o} of {n} operations"))
        }
    };
    // Lag, injected three ways in turn.
    shop.admin(0, "pause").await;
    wait_until(Duration::from_secs(120), after(150)).await;
    shop.admin(0, "resume").await;
    shop.cluster
        .broker_round_trip_time(1, Duration::from_millis(40))
        .unwrap();
    wait_until(Duration::from_secs(120), after(300)).await;
    shop.cluster
        .broker_round_trip_time(1, Duration::from_millis(0))
        .unwrap();
    shop.admin(1, "pause").await;
    wait_until(Duration::from_secs(120), after(450)).await;
    shop.admin(1, "resume").await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let history = history.lock().unwrap().clone();
    let stats = sessions.iter().map(|s| s.stats()).collect();
    shop.caught_up().await;
    shop.stop().await;
    HistoryRun { history, stats }
}

fn summary(run: &HistoryRun) -> (usize, usize, usize, usize) {
    let reads = run
        .history
        .iter()
        .filter(|e| matches!(e, Event::Read { .. }))
        .count();
    let by_followers = run
        .history
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Read {
                    server: Server::Follower(_),
                    ..
                }
            )
        })
        .count();
    let writes = run.history.len() - reads;
    let tokens = run
        .history
        .iter()
        .filter_map(|e| match e {
            Event::Write { token, .. } => Some(*token),
            _ => None,
        })
        .max()
        .unwrap_or(0) as usize;
    (reads, by_followers, writes, tokens)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_with_tokens_has_no_stale_reads_and_followers_serve_them() {
    let run = history(true).await;
    let v = check(&run.history);
    let (reads, by_followers, writes, top) = summary(&run);
    let share = by_followers as f64 / reads as f64;
    eprintln!(
        "WITH tokens: {writes} writes, {reads} reads, {by_followers} by followers ({:.1}%), \
         read-your-writes violations {}, monotonic-read violations {}, highest token {top}, sessions {:?}",
        share * 100.0,
        v.read_your_writes,
        v.monotonic,
        run.stats
    );
    assert_eq!(v, Violations::default(), "history: {:?}", run.history);
    assert!(
        share >= 0.9,
        "followers served only {by_followers} of {reads} reads"
    );
    // Every read was served at or after the session's own last write.
    for e in &run.history {
        if let Event::Read { position, .. } = e {
            assert!(*position > 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_without_tokens_shows_the_checker_can_fail() {
    let run = history(false).await;
    let v = check(&run.history);
    let (reads, by_followers, writes, _) = summary(&run);
    eprintln!(
        "WITHOUT tokens: {writes} writes, {reads} reads, {by_followers} by followers, \
         read-your-writes violations {}, monotonic-read violations {}",
        v.read_your_writes, v.monotonic
    );
    assert!(
        v.read_your_writes + v.monotonic > 0,
        "a paused follower without tokens must produce stale reads"
    );
}

/// A read answered under max_staleness: (asked at, key, visits read,
/// leader_ts_ms served), times on the leader's clock.
type Answered = (i64, i64, i64, i64);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_staleness_is_never_exceeded_on_the_leader_clock() {
    const MAX_STALENESS_MS: i64 = 1_000;
    let shop = Shop::start(coffee_shop, 1, true).await;
    // Heartbeats now take a slow broker round trip: the follower's estimate
    // of the leader clock from heartbeats alone runs late by that much.
    shop.cluster
        .broker_round_trip_time(1, Duration::from_millis(150))
        .unwrap();
    let leader_url = shop.shop_url.clone().unwrap();
    let follower = shop.followers[0].1.clone();
    let writes: Arc<Mutex<Vec<(i64, i64, i64)>>> = Arc::default(); // (committed by, key, visits)
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (writes, stop, http) = (writes.clone(), stop.clone(), shop.http.clone());
        tokio::spawn(async move {
            let mut key = 0;
            while !stop.load(Ordering::SeqCst) {
                key = key % CUSTOMERS + 1;
                let v: Value = http
                    .post(format!("{leader_url}/orders"))
                    .json(&json!({"customer_id": key, "coffee": "ristretto"}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                // The commit happened before this instant.
                let done = wall_ms();
                writes
                    .lock()
                    .unwrap()
                    .push((done, key, v["visits"].as_i64().unwrap()));
                tokio::time::sleep(Duration::from_millis(5)).await; // pacing, not a wait
            }
        })
    };
    let answered: Arc<Mutex<Vec<Answered>>> = Arc::default();
    let refused = Arc::new(AtomicU64::new(0));
    let reader = {
        let (answered, refused, stop, http) = (
            answered.clone(),
            refused.clone(),
            stop.clone(),
            shop.http.clone(),
        );
        tokio::spawn(async move {
            let mut key = 0;
            while !stop.load(Ordering::SeqCst) {
                key = key % CUSTOMERS + 1;
                let asked = wall_ms();
                let r = http
                    .get(format!(
                        "{follower}/tables/customers/row?id={key}&max_staleness_ms={MAX_STALENESS_MS}"
                    ))
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let b: Value = r.json().await.unwrap();
                if status.is_success() {
                    answered.lock().unwrap().push((
                        asked,
                        key,
                        b["row"]["visits"].as_i64().unwrap(),
                        b["leader_ts_ms"].as_i64().unwrap(),
                    ));
                } else {
                    assert_eq!(b["error"], "stale", "{b}");
                    refused.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    let answers = |n: usize| {
        let a = answered.clone();
        move || {
            let got = a.lock().unwrap().len();
            (got >= n)
                .then_some(())
                .ok_or(format!("{got} answered reads"))
        }
    };
    wait_until(Duration::from_secs(60), answers(50)).await;
    shop.admin(0, "pause").await;
    let r = refused.clone();
    wait_until(Duration::from_secs(60), move || {
        let n = r.load(Ordering::SeqCst);
        (n >= 20).then_some(()).ok_or(format!("{n} refused"))
    })
    .await;
    shop.admin(0, "resume").await;
    let before = answered.lock().unwrap().len();
    wait_until(Duration::from_secs(60), answers(before + 50)).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    reader.await.unwrap();

    let answered = answered.lock().unwrap().clone();
    let writes = writes.lock().unwrap().clone();
    let mut worst = 0;
    for (asked, key, visits, served_ts) in &answered {
        let staleness = asked - served_ts;
        worst = worst.max(staleness);
        assert!(
            staleness <= MAX_STALENESS_MS,
            "a read asked at {asked} was served from leader time {served_ts}: {staleness} ms stale"
        );
        // And the rows agree: every write committed before the bound is in.
        let must_see = writes
            .iter()
            .filter(|(done, k, _)| k == key && *done < asked - MAX_STALENESS_MS)
            .map(|w| w.2)
            .max()
            .unwrap_or(0);
        assert!(
            *visits >= must_see,
            "read at {asked} of customer {key}: visits {visits}, but {must_see} committed more than {MAX_STALENESS_MS} ms before"
        );
    }
    eprintln!(
        "max_staleness {MAX_STALENESS_MS} ms: {} reads answered (worst {worst} ms behind the request on the leader clock), {} refused as stale, {} writes",
        answered.len(),
        refused.load(Ordering::SeqCst),
        writes.len()
    );
    shop.cluster
        .broker_round_trip_time(1, Duration::from_millis(0))
        .unwrap();
    shop.caught_up().await;
    shop.stop().await;
}

const ACCOUNTS: i64 = 8;
const OPENING: i64 = 1_000;

fn bank(leader: &Path) {
    let c = Connection::open(leader).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.execute_batch(
        "CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, sent INTEGER NOT NULL);
         CREATE TABLE transfers(id INTEGER PRIMARY KEY, src INTEGER NOT NULL, dst INTEGER NOT NULL, amount INTEGER NOT NULL);",
    )
    .unwrap();
    // Transfer 0 exists before capture, so both tables are in the snapshot.
    c.execute("INSERT INTO transfers VALUES (0, 1, 1, 0)", [])
        .unwrap();
    for id in 1..=ACCOUNTS {
        c.execute(
            "INSERT INTO accounts VALUES (?1, ?2, 0)",
            params![id, OPENING],
        )
        .unwrap();
    }
}

/// Transfers between accounts (keys in different partitions) and a row in a
/// second table, one leader transaction each, with the token of each.
fn transfers(leader: &Path, n: usize) -> Vec<i64> {
    let mut c = Connection::open(leader).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    (0..n)
        .map(|_| {
            let (src, dst) = (
                rng.random_range(1..=ACCOUNTS),
                rng.random_range(1..=ACCOUNTS),
            );
            let amount = rng.random_range(1..50i64);
            let ((), token) = write_with_token(&mut c, |tx| {
                tx.execute(
                    "UPDATE accounts SET balance = balance - ?2, sent = sent + ?2 WHERE id = ?1",
                    params![src, amount],
                )?;
                tx.execute(
                    "UPDATE accounts SET balance = balance + ?2 WHERE id = ?1",
                    params![dst, amount],
                )?;
                tx.execute(
                    "INSERT INTO transfers(src, dst, amount) VALUES (?1, ?2, ?3)",
                    params![src, dst, amount],
                )?;
                Ok::<_, rusqlite::Error>(())
            })
            .unwrap();
            // Pacing, so the follower applies many small groups while the
            // readers look (not a wait for a condition).
            std::thread::sleep(Duration::from_millis(3));
            token.0
        })
        .collect()
}

/// What one consistent read saw.
#[derive(Debug)]
struct BankView {
    position: i64,
    balances: i64,
    sent: i64,
    transfers: Option<(i64, i64)>, // (count, sum of amounts), when read
}

/// Every view must be a state the leader had: the money is all there, and
/// it is exactly the state after the transactions whose token is at or
/// below the view's position.
fn check_bank(views: &[BankView], tokens: &[i64]) {
    for v in views {
        assert_eq!(
            v.balances,
            ACCOUNTS * OPENING,
            "money created or lost: {v:?}"
        );
        // Transfer 0 came with the snapshot.
        let committed = 1 + tokens.iter().filter(|t| **t <= v.position).count() as i64;
        if let Some((count, amount)) = v.transfers {
            assert_eq!(
                count, committed,
                "transfers at position {}: {v:?}",
                v.position
            );
            assert_eq!(v.sent, amount, "accounts and transfers disagree: {v:?}");
        }
    }
    let positions: std::collections::BTreeSet<i64> = views.iter().map(|v| v.position).collect();
    eprintln!(
        "{} consistent reads at {} distinct positions, {} transfers",
        views.len(),
        positions.len(),
        tokens.len()
    );
    assert!(
        positions.len() >= 10,
        "the reads must have happened while transfers were being applied: {positions:?}"
    );
}

async fn run_bank<F, Fut>(mut read: F)
where
    F: FnMut(PathBuf, String, reqwest::Client) -> Fut,
    Fut: std::future::Future<Output = Option<BankView>>,
{
    let shop = Shop::start(bank, 1, false).await;
    let (replica, url) = (
        shop.followers[0].0.replica.clone(),
        shop.followers[0].1.clone(),
    );
    let l = shop.leader.clone();
    let writer = tokio::task::spawn_blocking(move || transfers(&l, 400));
    let mut views = Vec::new();
    while !writer.is_finished() {
        if let Some(v) = read(replica.clone(), url.clone(), shop.http.clone()).await {
            views.push(v);
        }
    }
    let tokens = writer.await.unwrap();
    shop.caught_up().await;
    views.extend(read(replica.clone(), url.clone(), shop.http.clone()).await);
    let last = views.last().map(|v| v.position).unwrap_or(0);
    assert_eq!(
        last,
        *tokens.last().unwrap(),
        "the last read is at the last transfer"
    );
    check_bank(&views, &tokens);
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consistent_prefix_no_transfer_is_ever_half_visible_through_the_read_api() {
    run_bank(|_, url, http| async move {
        // All accounts in one page: one snapshot.
        let b: Value = http
            .get(format!("{url}/tables/accounts/rows?limit=1000"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let rows = b["rows"].as_array()?;
        if rows.len() != ACCOUNTS as usize {
            return None; // the replica is still empty
        }
        let sum = |c: &str| rows.iter().map(|r| r[c].as_i64().unwrap()).sum::<i64>();
        Some(BankView {
            position: b["position"].as_i64().unwrap(),
            balances: sum("balance"),
            sent: sum("sent"),
            transfers: None,
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_file_read_only_in_one_transaction_gives_position_and_rows_together() {
    run_bank(|replica, _, _| async move {
        tokio::task::spawn_blocking(move || {
            let mut c =
                Connection::open_with_flags(&replica, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .ok()?;
            // One read transaction: one WAL snapshot for every statement.
            let tx = c.transaction().ok()?;
            let position: i64 = tx
                .query_row(
                    "SELECT position FROM _barista_position WHERE id = 1",
                    [],
                    |r| r.get(0),
                )
                .ok()?;
            let (balances, sent): (i64, i64) = tx
                .query_row("SELECT sum(balance), sum(sent) FROM accounts", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .ok()?;
            let transfers: (i64, i64) = tx
                .query_row(
                    "SELECT count(*), coalesce(sum(amount), 0) FROM transfers",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .ok()?;
            Some(BankView {
                position,
                balances,
                sent,
                transfers: Some(transfers),
            })
        })
        .await
        .unwrap()
    })
    .await;
}
