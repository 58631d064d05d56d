//! The real binaries killed with SIGKILL at random points while a writer
//! works the leader, then restarted with the same flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use barista_schemas::{Op, SqlValue};
use barista_tests::process::Proc;
use barista_tests::*;
use rand::{Rng, SeedableRng};
use rusqlite::Connection;

pub const TABLES: [&str; 2] = ["customers", "everything"];

pub fn producer_args(leader: &Path, brokers: &str, registry: &str, prefix: &str) -> Vec<String> {
    vec![
        "--leader".into(),
        leader.display().to_string(),
        "--brokers".into(),
        brokers.into(),
        "--registry".into(),
        registry.into(),
        "--topic-prefix".into(),
        prefix.into(),
        "--heartbeat-interval-ms".into(),
        "200".into(),
        // Several producers run at once: none may take the default 8089.
        "--http-listen".into(),
        "127.0.0.1:0".into(),
    ]
}

pub fn consumer_args(
    replica: &Path,
    id: &str,
    brokers: &str,
    registry: &str,
    prefix: &str,
) -> Vec<String> {
    vec![
        "--replica".into(),
        replica.display().to_string(),
        "--follower-id".into(),
        id.into(),
        "--brokers".into(),
        brokers.into(),
        "--registry".into(),
        registry.into(),
        "--topic-prefix".into(),
        prefix.into(),
        "--http-listen".into(),
        "127.0.0.1:0".into(),
        "--gap-timeout-ms".into(),
        "30000".into(),
    ]
}

/// Starts `n` followers of `prefix` as `consumer` processes: `follower-0`, … on
/// `replica-1.db`, … in `dir`, logging to `consumer-0.log`, …
pub fn start_followers(
    dir: &Path,
    n: usize,
    brokers: &str,
    registry: &str,
    prefix: &str,
) -> (Vec<PathBuf>, Vec<Proc>) {
    let replicas: Vec<PathBuf> = (1..=n)
        .map(|i| dir.join(format!("replica-{i}.db")))
        .collect();
    let followers = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Proc::start(
                "consumer",
                consumer_args(r, &format!("follower-{i}"), brokers, registry, prefix),
                &dir.join(format!("consumer-{i}.log")),
            )
        })
        .collect();
    (replicas, followers)
}

/// Waits until every replica is at the leader's position `end`, at most `limit` after
/// `since` (the last fault), with the producer and every follower running all along.
/// Returns how long after `since` that was. `context` adds to the failure message.
pub async fn wait_replicas_at(
    replicas: &[PathBuf],
    followers: &mut [Proc],
    producer: &mut Proc,
    end: i64,
    since: Instant,
    limit: Duration,
    context: impl Fn() -> String,
) -> Duration {
    wait_until(limit.saturating_sub(since.elapsed()), || {
        producer.assert_running();
        let mut behind = Vec::new();
        for (r, f) in replicas.iter().zip(followers.iter_mut()) {
            f.assert_running();
            let at = replica_position(r);
            if at < end {
                behind.push(format!("{} at position {at}", r.display()));
            }
        }
        behind.is_empty().then_some(()).ok_or(format!(
            "every follower must reach the leader's position {end} within {limit:?} of the \
             last fault (issue 18); {:.0?} after it: {}; {}",
            since.elapsed(),
            behind.join(", "),
            context()
        ))
    })
    .await;
    since.elapsed()
}

/// Runs the paced random workload (seed `seed`) on a blocking thread while
/// killing `proc` with SIGKILL at random points (and restarting it after a
/// random pause) until the writer is done; at least three kills must land.
/// Returns what the leader now holds and the number of kills.
async fn kill_while_writing(
    proc: &mut Proc,
    seed: u64,
    leader: &Path,
    mut expected: Expected,
) -> (Expected, usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let l = leader.to_owned();
    let writer = tokio::task::spawn_blocking(move || {
        write_workload_paced(&l, seed, 1500, Duration::from_millis(2), &mut expected);
        expected
    });
    let mut kills = 0;
    while !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..700))).await;
        proc.assert_running();
        proc.kill9();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        proc.restart();
    }
    eprintln!("{} killed {kills} times mid-stream", proc.name());
    assert!(
        kills >= 3,
        "only {kills} kills: the writer finished too soon"
    );
    (writer.await.unwrap(), kills)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producer_killed_with_sigkill_resends_everything_in_order() {
    let Setup {
        dir,
        leader,
        expected,
        cluster: _cluster,
        brokers,
        registry,
        prefix,
    } = Setup::new_with(3, "kill").await;
    let mut producer = Proc::start(
        "producer",
        producer_args(&leader, &brokers, registry.url(), &prefix),
        &dir.path().join("producer.log"),
    );
    let follower = RunningFollower::start(follower_config(
        &dir.path().join("replica.db"),
        &unique("f"),
        &brokers,
        registry.url(),
        &prefix,
    ));
    wait_for_capture(&leader).await;

    let (exp, _) = kill_while_writing(&mut producer, 31, &leader, expected).await;

    // Every change acknowledged by Kafka: the changelog is pruned to its newest row.
    wait_until(Duration::from_secs(60), || {
        producer.assert_running();
        changelog_pruned(&leader)
    })
    .await;
    // At least once, in order per key, none missing (duplicates are
    // recognised by their position and counted).
    for t in TABLES {
        check_events(&brokers, registry.url(), &prefix, t, &exp).await;
    }
    // And the follower, which saw the resends, equals the leader.
    let r = follower.replica.clone();
    wait_until(Duration::from_secs(60), || {
        same_rows(&leader, &r).map_err(|e| format!("{e}; follower status: {:?}", follower.status()))
    })
    .await;
    follower.stop().await.unwrap();
    let status = producer.terminate(Duration::from_secs(30));
    assert!(status.success(), "SIGTERM: drain and exit 0, got {status}");
    registry.shutdown().await.unwrap();
}

/// Installs triggers on the replica's tables that record every row change
/// the follower applies, in one audit table inside the replica (so a crash
/// rolls the audit back together with the change). The name starts with
/// `_barista_` so the leader/replica comparison skips it.
fn install_audit(replica: &Path) {
    let conn = Connection::open(replica).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut sql = String::from(
        "CREATE TABLE _barista_test_audit(seq INTEGER PRIMARY KEY, tbl, id, c1, c2, c3, c4, c5, deleted);",
    );
    for (t, cols) in [
        ("customers", "name, coffee"),
        ("everything", "i, r, t, b, a"),
    ] {
        let n = cols.split(',').count();
        let new: Vec<String> = cols.split(", ").map(|c| format!("NEW.{c}")).collect();
        let slots: Vec<String> = (1..=n).map(|i| format!("c{i}")).collect();
        sql.push_str(&format!(
            "CREATE TRIGGER audit_{t}_ins AFTER INSERT ON {t} BEGIN
               INSERT INTO _barista_test_audit(tbl, id, {s}, deleted) VALUES ('{t}', NEW.id, {v}, 0); END;
             CREATE TRIGGER audit_{t}_upd AFTER UPDATE ON {t} BEGIN
               INSERT INTO _barista_test_audit(tbl, id, {s}, deleted) VALUES ('{t}', NEW.id, {v}, 0); END;
             CREATE TRIGGER audit_{t}_del AFTER DELETE ON {t} BEGIN
               INSERT INTO _barista_test_audit(tbl, id, deleted) VALUES ('{t}', OLD.id, 1); END;",
            s = slots.join(", "),
            v = new.join(", "),
        ));
    }
    conn.execute_batch(&sql).unwrap();
}

/// Every row change applied to the replica since the audit was installed,
/// per (table, key), in order: the row's non-key columns, or None for a delete.
fn audit(replica: &Path) -> BTreeMap<(String, i64), Vec<Option<Vec<SqlValue>>>> {
    let conn = Connection::open(replica).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT tbl, id, deleted, c1, c2, c3, c4, c5 FROM _barista_test_audit ORDER BY seq",
        )
        .unwrap();
    let mut out: BTreeMap<_, Vec<_>> = BTreeMap::new();
    let rows = stmt
        .query_map([], |r| {
            let tbl: String = r.get(0)?;
            let width = if tbl == "customers" { 2 } else { 5 };
            let cols = (3..3 + width)
                .map(|i| r.get_ref(i).map(SqlValue::from))
                .collect::<Result<Vec<_>, _>>()?;
            let deleted: bool = r.get(2)?;
            Ok(((tbl, r.get::<_, i64>(1)?), (!deleted).then_some(cols)))
        })
        .unwrap();
    for row in rows {
        let (k, v) = row.unwrap();
        out.entry(k).or_default().push(v);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_killed_with_sigkill_applies_every_change_exactly_once() {
    let Setup {
        dir,
        leader,
        mut expected,
        cluster: _cluster,
        brokers,
        registry,
        prefix,
    } = Setup::new_with(3, "killc").await;
    let replica = dir.path().join("replica.db");
    // One row in each table, so that the snapshot creates both replica
    // tables before the audit triggers go in.
    let conn = Connection::open(&leader).unwrap();
    conn.execute(
        "INSERT INTO everything VALUES (100, 1, 1.5, 'x', x'00', NULL)",
        [],
    )
    .unwrap();
    expected.insert(
        ("everything".into(), 100),
        vec![(Op::Read, Some(stored(&conn, "everything", 100)))],
    );
    drop(conn);
    let producer =
        RunningProducer::start(producer_config(&leader, &brokers, registry.url(), &prefix));
    wait_for_capture(&leader).await;
    let mut consumer = Proc::start(
        "consumer",
        consumer_args(&replica, &unique("f"), &brokers, registry.url(), &prefix),
        &dir.path().join("consumer.log"),
    );
    // The snapshot reaches the replica; then the audit goes in, so every
    // change of the workload below is recorded exactly as often as the
    // follower applies it.
    wait_until(Duration::from_secs(60), || {
        consumer.assert_running();
        same_rows(&leader, &replica)
    })
    .await;
    consumer.kill9();
    install_audit(&replica);
    consumer.restart();

    let (exp, kills) = kill_while_writing(&mut consumer, 41, &leader, expected).await;
    wait_until(Duration::from_secs(60), || {
        consumer.assert_running();
        same_rows(&leader, &replica)
    })
    .await;

    // Exactly once: per key, the replica applied the writer's changes in
    // the writer's order, each once. A change applied twice (for example
    // re-read from Kafka after a crash between the replica commit and the
    // Kafka offset commit) would appear twice here.
    let applied = audit(&replica);
    let mut changes = 0;
    for (key, history) in &exp {
        let want: Vec<Option<Vec<SqlValue>>> = history
            .iter()
            .filter(|(op, _)| *op != Op::Read)
            .map(|(_, after)| after.as_ref().map(|row| row[1..].to_vec()))
            .collect();
        let got = applied.get(key).cloned().unwrap_or_default();
        if got != want {
            let at = got.iter().zip(&want).take_while(|(g, w)| g == w).count();
            panic!(
                "{key:?}: the replica applied {} changes, the writer made {}; they part at #{at}: \
                 applied {:?}, written {:?}",
                got.len(),
                want.len(),
                got.get(at),
                want.get(at)
            );
        }
        changes += want.len();
    }
    assert_eq!(
        applied.len(),
        exp.values()
            .filter(|h| h.len() > 1 || h[0].0 != Op::Read)
            .count(),
        "the replica applied changes to keys the writer never changed"
    );
    eprintln!("{changes} changes applied exactly once across {kills} SIGKILLs");
    let status = consumer.terminate(Duration::from_secs(30));
    assert!(status.success(), "SIGTERM: exit 0, got {status}");
    producer.stop().await.unwrap();
    registry.shutdown().await.unwrap();
}
