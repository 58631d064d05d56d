//! Table checksums on the follower side (issue 13): every replica keeps the
//! leader's checksum from its own rows and compares it at each commit record.
//! A hand edit of a running replica stops it at the next group that touches
//! the table (`/status` `diverged`, `/ready` 503, the metric at 1, reads still
//! served); `consumer verify` and `GET /verify` find a table corrupted but
//! never written again, and `--against` a healthy peer names the key or the
//! missing table; a long run through duplicates, a producer SIGKILL, a broker
//! outage, two migrations and a large streamed group never raises a false
//! alarm.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use barista_producer::migrate::{migrate, Migration, Outcome};
use barista_tests::process::{binary, Proc};
use barista_tests::workload::*;
use barista_tests::*;
use rand::{Rng, SeedableRng};
use rusqlite::{params, Connection};
use serde_json::Value;

use crate::crash::producer_args;

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (code, body) = get(addr, path).await;
    (
        code,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn edit(file: &Path, sql: &str) {
    let c = Connection::open(file).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.execute_batch(sql).unwrap();
}

/// `consumer verify` with `args`: (exit code, stdout).
fn verify(args: &[&str]) -> (i32, String) {
    let out = Command::new(binary("consumer"))
        .arg("verify")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "consumer verify {args:?}: {:?}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hand_edits_of_a_running_replica_are_found_at_the_next_group_that_touches_the_table() {
    let mut s = Setup::new_with(1, "sumedit").await;
    let producer = RunningProducer::start(s.producer_config());
    // Three replicas edited by hand, one left alone.
    let edits = [
        "UPDATE customers SET coffee = 'decaf' WHERE id = 3",
        "DELETE FROM customers WHERE id = 4",
        "INSERT INTO customers VALUES (999, 'ghost', 'latte')",
    ];
    let followers: Vec<(RunningFollower, SocketAddr)> = (0..4)
        .map(|i| RunningFollower::serving(s.follower_config(&format!("r{i}.db"))))
        .collect();
    wait_for_capture(&s.leader).await;
    s.write(41, 30).await;
    edit(&s.leader, "INSERT OR IGNORE INTO customers VALUES (3, 'c3', 'espresso'); INSERT OR IGNORE INTO customers VALUES (4, 'c4', 'espresso');");
    for (f, _) in &followers {
        s.caught_up(f).await;
    }
    for (sql, (f, _)) in edits.iter().zip(&followers) {
        edit(&f.replica, sql);
    }

    // A group that changes only the other table compares only that one.
    edit(
        &s.leader,
        "INSERT INTO everything(id, t) VALUES (700, 'other table')",
    );
    let other = leader_position(&s.leader);
    for (f, _) in &followers {
        wait_until(Duration::from_secs(30), || {
            let st = f.status();
            (st.applied_position.0 == other)
                .then_some(())
                .ok_or(format!("want {other}: {st:?}"))
        })
        .await;
        assert_eq!(f.status().diverged, None, "customers was not in that group");
    }

    // The next group that changes customers (another row) finds each edit.
    edit(
        &s.leader,
        "INSERT INTO customers VALUES (500, 'new', 'mocha')",
    );
    let at = leader_position(&s.leader);
    for (f, addr) in &followers[..3] {
        wait_until(Duration::from_secs(30), || {
            f.status()
                .diverged
                .map(|_| ())
                .ok_or(format!("not diverged yet: {:?}", f.status()))
        })
        .await;
        let d = f.status().diverged.unwrap();
        assert_eq!((d.table.as_str(), d.position.0), ("customers", at));
        assert_ne!(d.leader, d.replica);
        let (code, st) = get_json(*addr, "/status").await;
        assert_eq!(code, 200);
        assert_eq!(st["diverged"]["table"], "customers", "{st}");
        assert_eq!(st["diverged"]["position"], at, "{st}");
        let (code, ready) = get_json(*addr, "/ready").await;
        assert_eq!(code, 503, "{ready}");
        let (_, metrics) = get(*addr, "/metrics").await;
        assert!(
            metrics.contains("\nbarista_follower_diverged 1\n"),
            "{metrics}"
        );
        let (code, rows) = get(*addr, "/tables/customers/rows?limit=5").await;
        assert_eq!(code, 200, "reads are still served: {rows}");
        assert_eq!(replica_position(&f.replica), at, "the group was committed");
    }
    let (healthy, healthy_addr) = &followers[3];
    s.caught_up(healthy).await;
    assert_eq!(healthy.status().diverged, None);
    let (code, _) = get(*healthy_addr, "/ready").await;
    assert_eq!(code, 200);
    let (_, metrics) = get(*healthy_addr, "/metrics").await;
    assert!(
        metrics.contains("\nbarista_follower_diverged 0\n"),
        "{metrics}"
    );

    // Stopped means stopped: later groups are not applied, also after a restart.
    s.write(42, 10).await;
    s.caught_up(healthy).await;
    let mut followers = followers;
    let (first, _) = followers.remove(0);
    assert_eq!(replica_position(&first.replica), at);
    let replica = first.replica.clone();
    first.stop().await.unwrap();
    let mut config = s.follower_config("r0.db");
    config.replica = replica.clone();
    let (again, addr) = RunningFollower::serving(config);
    wait_until(Duration::from_secs(30), || {
        again
            .status()
            .diverged
            .map(|_| ())
            .ok_or("restarted: not diverged yet".to_owned())
    })
    .await;
    let (code, _) = get(addr, "/ready").await;
    assert_eq!(code, 503);
    tokio::time::sleep(Duration::from_millis(500)).await; // let it (not) apply
    assert_eq!(replica_position(&replica), at);

    again.stop().await.unwrap();
    for (f, _) in followers {
        f.stop().await.unwrap();
    }
    producer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_finds_a_table_corrupted_but_never_written_again_and_against_a_peer_names_the_key_or_the_table(
) {
    let mut s = Setup::new_with(1, "sumverify").await;
    let producer = RunningProducer::start(s.producer_config());
    let (healthy, healthy_addr) = RunningFollower::serving(s.follower_config("a.db"));
    let (corrupt, corrupt_addr) = RunningFollower::serving(s.follower_config("b.db"));
    let (lacking, _) = RunningFollower::serving(s.follower_config("c.db"));
    wait_for_capture(&s.leader).await;
    s.write(51, 40).await;
    edit(
        &s.leader,
        "INSERT INTO everything(id, t) VALUES (800, 'to be tampered with')",
    );
    for f in [&healthy, &corrupt, &lacking] {
        s.caught_up(f).await;
    }
    let (a, b, c) = (
        healthy.replica.display().to_string(),
        corrupt.replica.display().to_string(),
        lacking.replica.display().to_string(),
    );
    let (code, out) = verify(&["--replica", &a]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok        everything"), "{out}");

    // Never written again: only a recomputation can tell.
    edit(
        &corrupt.replica,
        "UPDATE everything SET t = 'tampered' WHERE id = 800",
    );
    edit(&lacking.replica, "DROP TABLE everything");

    let (code, out) = verify(&["--replica", &b]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("MISMATCH  everything"), "{out}");
    assert!(out.contains("ok        customers"), "{out}");
    let (code, v) = get_json(corrupt_addr, "/verify").await;
    assert_eq!(code, 200);
    assert_eq!(v["ok"], false, "{v}");
    let bad: Vec<&Value> = v["tables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["ok"] == false)
        .collect();
    assert_eq!(bad.len(), 1, "{v}");
    assert_eq!(bad[0]["table"], "everything");
    let (_, v) = get_json(healthy_addr, "/verify").await;
    assert_eq!(v["ok"], true, "{v}");

    let peer = format!("http://{healthy_addr}");
    let (code, out) = verify(&["--replica", &b, "--against", &peer]);
    assert_eq!(code, 1, "{out}");
    let diffs: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(diffs, [r#"changed everything {"id":800}"#], "{out}");

    let (code, out) = verify(&["--replica", &c, "--against", &peer]);
    assert_eq!(code, 1, "{out}");
    let diffs: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(diffs, ["missing-table everything"], "{out}");

    let (code, out) = verify(&["--replica", &a, "--against", &peer]);
    assert_eq!((code, out.lines().last()), (0, Some("equal")), "{out}");

    for f in [healthy, corrupt, lacking] {
        f.stop().await.unwrap();
    }
    producer.stop().await.unwrap();
}

/// What the long run's writer is told, and what it did.
#[derive(Default)]
struct Writer {
    stop: AtomicBool,
    /// 1 while the `note` column exists and may be written.
    phase: AtomicU8,
    /// One transaction of [`BIG`] rows, next.
    big: AtomicBool,
    /// Write nothing else meanwhile.
    hold: AtomicBool,
    /// The writer saw `hold` between two transactions: nothing in flight.
    holding: AtomicBool,
    written: AtomicU64,
}

/// Tells the writer to stop when dropped.
struct StopOnDrop(Arc<Writer>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
    }
}

/// More rows than the producer's chunk: a group announced by a begin record
/// and streamed into an open replica transaction by a follower with a small
/// `batch_max`.
const BIG: i64 = 20_000;

fn value(rng: &mut impl Rng) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match rng.random_range(0..7) {
        0 => V::Null,
        1 => V::Integer(rng.random()),
        2 => V::Real(rng.random::<f64>() * 1e6),
        3 => V::Text(format!("t{}", rng.random::<u16>())),
        4 => V::Text("héllo ☕".into()),
        5 => V::Blob((0..rng.random_range(0..20)).map(|_| rng.random()).collect()),
        _ => V::Integer(0),
    }
}

/// Random inserts, updates and deletes by column name (so they survive the
/// migrations), with `INSERT OR REPLACE`, `UPDATE OR REPLACE`, `INSERT OR IGNORE` and
/// upserts among them, until told to stop.
fn write_until_stopped(leader: &Path, w: &Writer, pace: Duration) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(61);
    let mut conn = Connection::open(leader).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    let mut live: [std::collections::HashSet<i64>; 2] = Default::default();
    for (i, t) in ["customers", "everything"].iter().enumerate() {
        let mut stmt = conn.prepare(&format!("SELECT id FROM {t}")).unwrap();
        live[i] = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    }
    while !w.stop.load(Ordering::SeqCst) {
        let big = w.big.load(Ordering::SeqCst);
        if !big && w.hold.load(Ordering::SeqCst) {
            w.holding.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let tx = conn.transaction().unwrap();
        let mut n = 0;
        if big {
            for id in 10_000..10_000 + BIG {
                let v = value(&mut rng);
                if live[1].insert(id) {
                    tx.execute(
                        "INSERT INTO everything(id, i, t) VALUES (?1, ?2, 'big')",
                        params![id, v],
                    )
                    .unwrap();
                } else {
                    tx.execute("UPDATE everything SET i = ?2 WHERE id = ?1", params![id, v])
                        .unwrap();
                }
                n += 1;
            }
            tx.commit().unwrap();
            w.written.fetch_add(n, Ordering::SeqCst);
            w.big.store(false, Ordering::SeqCst);
            continue;
        }
        for _ in 0..rng.random_range(1..10) {
            let t = rng.random_range(0..2usize);
            let id = rng.random_range(1..3_000i64);
            let exists = live[t].contains(&id);
            let (a, b) = (value(&mut rng), value(&mut rng));
            match (t, exists, rng.random_bool(0.2)) {
                (0, false, _) => {
                    tx.execute(
                        "INSERT INTO customers(id, name, coffee) VALUES (?1, ?2, ?3)",
                        params![id, format!("n{id}"), a],
                    )
                    .unwrap();
                    live[t].insert(id);
                }
                (1, false, _) => {
                    tx.execute(
                        "INSERT INTO everything(id, i, r, t, b, a) VALUES (?1, ?2, ?3, ?4, ?5, ?2)",
                        params![id, a, b, format!("{id}"), vec![1u8, 2]],
                    )
                    .unwrap();
                    live[t].insert(id);
                }
                (_, true, true) => {
                    let table = ["customers", "everything"][t];
                    tx.execute(&format!("DELETE FROM {table} WHERE id = ?1"), [id])
                        .unwrap();
                    live[t].remove(&id);
                }
                // REPLACE conflict resolution deletes rows without firing delete triggers:
                // the row with the key, or the row a key change lands on.
                (0, true, false) if rng.random_bool(0.15) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO customers(id, name, coffee) VALUES (?1, ?2, ?3)",
                        params![id, format!("r{id}"), a],
                    )
                    .unwrap();
                }
                (0, true, false) if rng.random_bool(0.1) => {
                    let to = rng.random_range(1..3_000i64);
                    if to != id {
                        tx.execute(
                            "UPDATE OR REPLACE customers SET id = ?2 WHERE id = ?1",
                            params![id, to],
                        )
                        .unwrap();
                        live[0].remove(&id);
                        live[0].insert(to);
                    }
                }
                // Conflicts that delete nothing.
                (0, true, false) if rng.random_bool(0.1) => {
                    tx.execute(
                        "INSERT OR IGNORE INTO customers(id, name, coffee) VALUES (?1, 'ignored', ?2)",
                        params![id, a],
                    )
                    .unwrap();
                    tx.execute(
                        "INSERT INTO customers(id, name, coffee) VALUES (?1, 'upsert', ?2) \
                         ON CONFLICT(id) DO UPDATE SET coffee = excluded.coffee",
                        params![id, b],
                    )
                    .unwrap();
                }
                (0, true, false) => {
                    tx.execute(
                        "UPDATE customers SET coffee = ?2 WHERE id = ?1",
                        params![id, a],
                    )
                    .unwrap();
                    if w.phase.load(Ordering::SeqCst) == 1 {
                        // The column may be gone already: a failed statement
                        // leaves the transaction as it was.
                        let _ = tx.execute(
                            "UPDATE customers SET note = ?2 WHERE id = ?1",
                            params![id, b],
                        );
                    }
                }
                _ => {
                    tx.execute(
                        "UPDATE everything SET r = ?2, b = ?3 WHERE id = ?1",
                        params![id, a, b],
                    )
                    .unwrap();
                }
            }
            n += 1;
        }
        tx.commit().unwrap();
        w.written.fetch_add(n, Ordering::SeqCst);
        if !pace.is_zero() {
            std::thread::sleep(pace);
        }
    }
}

/// Rows on the leader's columns only: a replica keeps a column the leader
/// dropped.
fn same_rows_on_leader_columns(leader: &Path, replica: &Path) -> Result<(), String> {
    let (l, r) = (
        Connection::open(leader).unwrap(),
        Connection::open(replica).unwrap(),
    );
    for t in ["customers", "everything"] {
        let cols: Vec<String> = l
            .prepare(&format!("SELECT name FROM pragma_table_info('{t}')"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let sql = format!("SELECT {} FROM {t} ORDER BY id", cols.join(", "));
        let rows = |c: &Connection| -> Result<Vec<Vec<rusqlite::types::Value>>, String> {
            let mut stmt = c.prepare(&sql).map_err(|e| e.to_string())?;
            let n = stmt.column_count();
            let out = stmt
                .query_map([], |r| (0..n).map(|i| r.get(i)).collect())
                .map_err(|e| e.to_string())?
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string());
            out
        };
        let (a, b) = (rows(&l)?, rows(&r)?);
        if a != b {
            return Err(format!("{t}: leader {} rows, replica {}", a.len(), b.len()));
        }
    }
    Ok(())
}

/// Before a divergence fails the test: whose stored sum disagrees with its own rows, the
/// leader's or the replicas' (`producer verify`, `consumer verify` on each replica here).
/// Both replicas agreeing with their rows while the leader's stored sum does not would put
/// the fault in the producer's kept sums; a replica that disagrees, in the follower's.
fn explain_divergence(leader: &Path) {
    let out = Command::new(binary("producer"))
        .args(["verify", "--leader"])
        .arg(leader)
        .output()
        .unwrap();
    eprintln!(
        "producer verify --leader: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = leader.parent().unwrap();
    for f in ["plain.db", "streamed.db"] {
        verify(&["--replica", &dir.join(f).display().to_string()]);
    }
}

/// One transaction of [`BIG`] rows while `follower` is caught up with the
/// leader, so that it reads the group's first chunk before its commit record
/// and streams it.
async fn big_group(w: &Writer, leader: &Path, follower: &RunningFollower) {
    w.holding.store(false, Ordering::SeqCst);
    w.hold.store(true, Ordering::SeqCst);
    // Until the writer's transaction in flight (if any) has committed.
    wait_until(Duration::from_secs(30), || {
        w.holding
            .load(Ordering::SeqCst)
            .then_some(())
            .ok_or("the writer is still in a transaction".to_owned())
    })
    .await;
    let head = leader_position(leader);
    wait_until(Duration::from_secs(600), || {
        let st = follower.status();
        if st.diverged.is_some() || st.halted.is_some() {
            explain_divergence(leader);
            panic!("diverged or halted while catching up: {st:?}");
        }
        (st.applied_position.0 >= head)
            .then_some(())
            .ok_or(format!("catching up to {head}: {st:?}"))
    })
    .await;
    w.big.store(true, Ordering::SeqCst);
    wait_until(Duration::from_secs(60), || {
        (!w.big.load(Ordering::SeqCst))
            .then_some(())
            .ok_or("large transaction not written yet".to_owned())
    })
    .await;
    w.hold.store(false, Ordering::SeqCst);
    w.holding.store(false, Ordering::SeqCst);
}

fn migrate_now(leader: &Path, registry: &str, prefix: &str, ddl: &str) {
    let m = Migration {
        leader: leader.to_owned(),
        ddl: ddl.to_owned(),
        registry_url: registry.to_owned(),
        topic_prefix: prefix.to_owned(),
    };
    // `migrate` holds its SQLite connection across awaits: its own thread and runtime.
    let outcome = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(migrate(&m))
    })
    .join()
    .unwrap()
    .unwrap();
    assert!(matches!(outcome, Outcome::Applied(_)), "{ddl}: {outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_false_alarm_through_duplicates_a_producer_sigkill_a_broker_outage_migrations_and_a_streamed_group(
) {
    let changes: u64 = std::env::var("BARISTA_SUMS_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let s = Setup::new_with(1, "sumlong").await;
    let mut args = producer_args(&s.leader, &s.brokers, s.registry.url(), &s.prefix);
    // Responses slower than this are given up on and the batch sent again:
    // the broker stores it twice.
    args.extend(["-X".into(), "socket.timeout.ms=400".into()]);
    let mut producer = Proc::start("producer", args, &s.dir.path().join("producer.log"));
    let (plain, plain_addr) = RunningFollower::serving(s.follower_config("plain.db"));
    let mut small = s.follower_config("streamed.db");
    small.batch_max = 200;
    let (streamed, _) = RunningFollower::serving(small);
    wait_for_capture(&s.leader).await;
    let start = Instant::now();

    let w = Arc::new(Writer::default());
    let (l, w2) = (s.leader.clone(), w.clone());
    let writer =
        tokio::task::spawn_blocking(move || write_until_stopped(&l, &w2, Duration::from_millis(1)));
    // A failed assertion stops the writer too (the runtime waits for it before the test ends).
    let _stop = StopOnDrop(w.clone());
    // Any divergence at any time fails the test, with when and where.
    let watch = {
        let (a, b) = (plain.shared.clone(), streamed.shared.clone());
        tokio::spawn(async move {
            loop {
                for sh in [&a, &b] {
                    let st = sh.status.lock().unwrap().clone();
                    if st.diverged.is_some() || st.halted.is_some() {
                        return Some(st);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let written = |w: &Writer| w.written.load(Ordering::SeqCst);

    // 1. Duplicates: the broker answers after the producer gave up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.cluster
        .broker_round_trip_time(-1, Duration::from_millis(1000))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await; // the fault window itself
    s.cluster
        .broker_round_trip_time(-1, Duration::from_millis(0))
        .unwrap();
    eprintln!(
        "after the duplicates window: {} changes written",
        written(&w)
    );
    // 2. The producer killed with SIGKILL, twice, and restarted.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        producer.assert_running();
        producer.kill9();
        tokio::time::sleep(Duration::from_millis(200)).await;
        producer.restart();
    }
    // 3. The broker goes away and comes back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.cluster.broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await; // the outage itself
    s.cluster.broker_up(1).unwrap();
    eprintln!("after the outage: {} changes written", written(&w));
    // 4. A column added, written, then dropped, mid-stream; a large group between.
    migrate_now(
        &s.leader,
        s.registry.url(),
        &s.prefix,
        "ALTER TABLE customers ADD COLUMN note TEXT;",
    );
    w.phase.store(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    big_group(&w, &s.leader, &streamed).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    w.phase.store(2, Ordering::SeqCst);
    migrate_now(
        &s.leader,
        s.registry.url(),
        &s.prefix,
        "ALTER TABLE customers DROP COLUMN note;",
    );
    eprintln!("after the migrations: {} changes written", written(&w));
    // Another large group, after the drop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    big_group(&w, &s.leader, &streamed).await;
    // 5. Go on up to the number of changes asked for.
    wait_until(Duration::from_secs(900), || {
        let n = written(&w);
        (n >= changes)
            .then_some(())
            .ok_or(format!("{n} of {changes} changes written"))
    })
    .await;
    w.stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    let total = written(&w);

    wait_until(Duration::from_secs(300), || {
        producer.assert_running();
        changelog_pruned(&s.leader)
    })
    .await;
    let head = leader_position(&s.leader);
    for f in [&plain, &streamed] {
        let (l, r) = (s.leader.clone(), f.replica.clone());
        wait_until(Duration::from_secs(600), || {
            if let Some(d) = &f.status().diverged {
                explain_divergence(&l);
                panic!("false alarm: {d:?}");
            }
            let st = f.status();
            if st.applied_position.0 == head {
                same_rows_on_leader_columns(&l, &r)
            } else {
                Err(format!("at {}, leader at {head}", st.applied_position))
            }
        })
        .await;
    }
    if watch.is_finished() {
        explain_divergence(&s.leader);
        panic!(
            "diverged or halted during the run: {:?}",
            watch.await.unwrap()
        );
    }
    watch.abort();
    let (p, st) = (plain.status(), streamed.status());
    eprintln!(
        "{total} changes in {:?}; plain follower: {} applied, {} duplicates; streamed: {} applied",
        start.elapsed(),
        p.changes_applied,
        p.duplicates,
        st.changes_applied
    );
    assert!(
        p.duplicates > 0,
        "no duplicates reached the follower: the test proves less"
    );
    assert!(
        streamed.shared.metrics.streamed.get() > 0,
        "no group was streamed: the test proves less"
    );
    // And on demand: every rolling sum equals its recomputation, and the two
    // replicas agree key range by key range.
    let (_, v) = get_json(plain_addr, "/verify").await;
    assert_eq!(v["ok"], true, "{v}");
    let (code, out) = verify(&["--replica", &streamed.replica.display().to_string()]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = verify(&[
        "--replica",
        &streamed.replica.display().to_string(),
        "--against",
        &format!("http://{plain_addr}"),
    ]);
    assert_eq!(code, 0, "{out}");

    plain.stop().await.unwrap();
    streamed.stop().await.unwrap();
    let status = producer.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}");
}

/// A migration read in the same commit group as the table's last change
/// before it: the leader's sum at the group's end is in the new shape, the
/// follower's last change of the table in the old one. The producer was
/// stopped meanwhile, so the tail reads both in one group.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_migration_in_the_same_group_as_the_tables_last_change_is_no_false_alarm() {
    let s = Setup::new_with(1, "summerge").await;
    let producer = RunningProducer::start(s.producer_config());
    let (f, _) = RunningFollower::serving(s.follower_config("r.db"));
    wait_for_capture(&s.leader).await;
    migrate_now(
        &s.leader,
        s.registry.url(),
        &s.prefix,
        "ALTER TABLE customers ADD COLUMN note TEXT;",
    );
    edit(
        &s.leader,
        "UPDATE customers SET note = 'x' WHERE id <= 10; INSERT INTO everything(id) VALUES (1)",
    );
    let head = leader_position(&s.leader);
    wait_until(Duration::from_secs(60), || {
        let st = f.status();
        (st.applied_position.0 == head)
            .then_some(())
            .ok_or(format!("{st:?}"))
    })
    .await;
    producer.stop().await.unwrap();
    edit(
        &s.leader,
        "UPDATE customers SET coffee = 'last' WHERE id = 1",
    );
    migrate_now(
        &s.leader,
        s.registry.url(),
        &s.prefix,
        "ALTER TABLE customers DROP COLUMN note;",
    );
    let producer = RunningProducer::start(s.producer_config());
    let head = leader_position(&s.leader);
    let (l, r) = (s.leader.clone(), f.replica.clone());
    wait_until(Duration::from_secs(60), || {
        let st = f.status();
        if let Some(d) = &st.diverged {
            panic!("false alarm: {d:?}");
        }
        if st.applied_position.0 == head {
            same_rows_on_leader_columns(&l, &r)
        } else {
            Err(format!("at {}, leader at {head}", st.applied_position))
        }
    })
    .await;
    // A later change of the table, in the new shape, is compared.
    edit(
        &s.leader,
        "UPDATE customers SET coffee = 'later' WHERE id = 2",
    );
    let head = leader_position(&s.leader);
    wait_until(Duration::from_secs(60), || {
        let st = f.status();
        (st.applied_position.0 == head)
            .then_some(())
            .ok_or(format!("{st:?}"))
    })
    .await;
    assert_eq!(f.status().diverged, None);
    f.stop().await.unwrap();
    producer.stop().await.unwrap();
}
