//! Incremental snapshots with the real binaries: a table too large for one chunk, captured
//! while a writer changes it and while the producer is killed with SIGKILL mid-snapshot.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use barista_tests::process::Proc;
use barista_tests::*;
use rand::{Rng, SeedableRng};
use rusqlite::{Connection, OptionalExtension};

use crate::crash::producer_args;

const ROWS: i64 = 40_000;

/// Whether `table` holds the same rows on the leader and the replica (other tables may be
/// missing on the replica: one the leader never wrote to is never created there).
fn same_table(leader: &Path, replica: &Path, table: &str) -> Result<(), String> {
    let (l, r) = (dump(leader), dump(replica));
    let (l, r) = (l.get(table), r.get(table));
    if l == r {
        return Ok(());
    }
    let (l, r) = (
        l.cloned().unwrap_or_default(),
        r.cloned().unwrap_or_default(),
    );
    let only_l = l.iter().filter(|x| !r.contains(x)).count();
    let only_r = r.iter().filter(|x| !l.contains(x)).count();
    let first = r.iter().find(|x| !l.contains(x));
    Err(format!(
        "{table} differs: {} rows on the leader, {} on the replica; {only_l} only on the leader, \
         {only_r} only on the replica (first: {first:?})",
        l.len(),
        r.len()
    ))
}

/// The snapshot in progress of table `big`: (snapshot id, rows copied).
fn progress(leader: &Path) -> Option<(i64, i64)> {
    let conn = Connection::open(leader).ok()?;
    conn.query_row(
        "SELECT s.id, s.rows FROM _barista_snapshots s JOIN _barista_tables t ON t.id = s.tbl \
         WHERE t.name = 'big'",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .ok()
    .flatten()
}

/// Sets the flag when dropped: a failed test's writer stops too (the runtime waits for it).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Single-row writes to `big` (updates, deletes, inserts of new and deleted keys) until
/// stopped.
fn writer(leader: &Path, seed: u64, stop: &AtomicBool) -> usize {
    let conn = Connection::open(leader).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = rng.random_range(1..=ROWS + 500);
        let sql = match rng.random_range(0..4) {
            0 | 1 => format!("UPDATE big SET v = v || '+', n = n + 1 WHERE id = {id}"),
            2 => format!("DELETE FROM big WHERE id = {id}"),
            _ => format!("INSERT OR REPLACE INTO big VALUES ({id}, 'w{id}', 0)"),
        };
        conn.execute_batch(&sql).unwrap();
        n += 1;
        std::thread::sleep(Duration::from_micros(500));
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producer_killed_mid_snapshot_resumes_where_it_stopped_and_the_follower_ends_equal() {
    let Setup {
        dir,
        leader,
        cluster,
        brokers,
        registry,
        prefix,
        ..
    } = Setup::new_with(3, "snapkill").await;
    // A table created while the producer runs: the mock cluster cannot create its topic.
    cluster
        .create_topic(&format!("{prefix}.big"), 3, 1)
        .unwrap();
    let mut args = producer_args(&leader, &brokers, registry.url(), &prefix);
    args.extend(["--snapshot-chunk-rows".into(), "100".into()]);
    let mut producer = Proc::start("producer", args, &dir.path().join("producer.log"));
    let replica = dir.path().join("replica.db");
    let follower = RunningFollower::start(follower_config(
        &replica,
        &unique("f"),
        &brokers,
        registry.url(),
        &prefix,
    ));
    wait_for_capture(&leader).await;
    // A table created while the producer runs, too large for one chunk.
    Connection::open(&leader)
        .unwrap()
        .execute_batch(&format!(
            "CREATE TABLE big(id INTEGER PRIMARY KEY, v TEXT, n INTEGER);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {ROWS})
             INSERT INTO big SELECT i, 'v' || i, i FROM s;"
        ))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let w = {
        let (l, stop) = (leader.clone(), stop.clone());
        tokio::task::spawn_blocking(move || writer(&l, 16, &stop))
    };
    // Kill it three times mid-snapshot; each time it resumes the same snapshot, never below
    // the rows it had copied.
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let mut snapshot = None;
    for kill in 0..3 {
        let l = leader.clone();
        let min = (kill + 1) * 3000;
        wait_until(Duration::from_secs(120), move || match progress(&l) {
            Some((_, rows)) if rows >= min => Ok(()),
            p => Err(format!("snapshot progress {p:?}, waiting for {min} rows")),
        })
        .await;
        producer.assert_running();
        producer.kill9();
        let (id, rows) = progress(&leader).expect("killed mid-snapshot");
        assert!(rows < ROWS, "the snapshot ended before kill {kill}");
        assert_eq!(*snapshot.get_or_insert(id), id, "the same snapshot resumes");
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        producer.restart();
        let l = leader.clone();
        wait_until(Duration::from_secs(60), move || match progress(&l) {
            Some((i, r)) if i == id && r > rows => Ok(()),
            None => Ok(()),
            p => Err(format!("after restart: {p:?}, killed at ({id}, {rows})")),
        })
        .await;
    }
    let l = leader.clone();
    wait_until(Duration::from_secs(180), move || match progress(&l) {
        None => Ok(()),
        p => Err(format!("snapshot still running: {p:?}")),
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let writes = w.await.unwrap();
    assert!(writes > 100, "only {writes} concurrent writes");
    let r = replica.clone();
    wait_until(Duration::from_secs(120), || {
        same_table(&leader, &r, "big")
            .map_err(|e| format!("{e}; follower status: {:?}", follower.status()))
    })
    .await;
    let copied: i64 = Connection::open(&replica)
        .unwrap()
        .query_row("SELECT count(*) FROM big", [], |r| r.get(0))
        .unwrap();
    assert!(copied > ROWS / 2, "{copied} rows on the follower");
    assert_eq!(follower.status().diverged, None);
    follower.stop().await.unwrap();
    let status = producer.terminate(Duration::from_secs(30));
    assert!(status.success(), "SIGTERM: drain and exit 0, got {status}");
    registry.shutdown().await.unwrap();
}

/// `table`'s `_barista_tables` id on the leader.
fn table_id(leader: &Path, table: &str) -> i64 {
    Connection::open(leader)
        .unwrap()
        .query_row(
            "SELECT id FROM _barista_tables WHERE name = ?1",
            [table],
            |r| r.get(0),
        )
        .unwrap()
}

/// True once the leader has no snapshot in progress and no unprocessed signal.
fn snapshots_idle(leader: &Path) -> Result<(), String> {
    let conn = Connection::open(leader).map_err(|e| e.to_string())?;
    let (running, pending): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM _barista_snapshots), \
                    (SELECT count(*) FROM _barista_signals WHERE processed_ms IS NULL)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(|e| e.to_string())?;
    (running == 0 && pending == 0).then_some(()).ok_or(format!(
        "{running} snapshots running, {pending} signals pending"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repair_snapshot_after_writes_behind_baristas_back_deletes_the_keys_the_leader_lost() {
    let Setup {
        dir,
        leader,
        cluster,
        brokers,
        registry,
        prefix,
        ..
    } = Setup::new_with(3, "snaprepair").await;
    // A table created while the producer runs: the mock cluster cannot create its topic.
    cluster.create_topic(&format!("{prefix}.t"), 3, 1).unwrap();
    let args = producer_args(&leader, &brokers, registry.url(), &prefix);
    let mut producer = Proc::start("producer", args.clone(), &dir.path().join("producer.log"));
    let (follower, addr) = RunningFollower::serving(follower_config(
        &dir.path().join("replica.db"),
        &unique("f"),
        &brokers,
        registry.url(),
        &prefix,
    ));
    let replica = follower.replica.clone();
    wait_for_capture(&leader).await;
    Connection::open(&leader)
        .unwrap()
        .execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 3000)
             INSERT INTO t SELECT i, 'v' || i FROM s;",
        )
        .unwrap();
    let (l, r) = (leader.clone(), replica.clone());
    wait_until(Duration::from_secs(120), move || {
        snapshots_idle(&l)?;
        same_table(&l, &r, "t")
    })
    .await;
    // The producer stops; the triggers are dropped; rows are inserted, updated and deleted
    // that barista never sees.
    assert!(producer.terminate(Duration::from_secs(30)).success());
    let id = table_id(&leader, "t");
    Connection::open(&leader)
        .unwrap()
        .execute_batch(&format!(
            "DROP TRIGGER _barista_{id}_ins; DROP TRIGGER _barista_{id}_upd; DROP TRIGGER _barista_{id}_del;
             DELETE FROM t WHERE id % 7 = 0;
             UPDATE t SET v = 'behind' WHERE id % 5 = 0;
             INSERT INTO t SELECT id + 10000, 'new' FROM t WHERE id <= 50;"
        ))
        .unwrap();
    assert!(same_table(&leader, &replica, "t").is_err());
    // --repair-triggers: triggers back, and a re-snapshot through the incremental path.
    let mut repaired = args.clone();
    repaired.push("--repair-triggers".into());
    let mut producer = Proc::start("producer", repaired, &dir.path().join("producer2.log"));
    let (l, r) = (leader.clone(), replica.clone());
    wait_until(Duration::from_secs(120), move || {
        snapshots_idle(&l)?;
        same_table(&l, &r, "t")
    })
    .await;
    let gone: i64 = Connection::open(&replica)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM t WHERE id % 7 = 0 AND id <= 3000",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        gone, 0,
        "keys deleted behind barista's back are gone from the follower"
    );
    // A key the repair deleted comes back on the leader: the follower must not still count the
    // hash of the row it deleted (a false `diverged` at the next commit record).
    Connection::open(&leader)
        .unwrap()
        .execute("INSERT INTO t VALUES (7, 'back')", [])
        .unwrap();

    // On demand, with the CLI, while the application writes: the same path, and the
    // checksums agree afterwards (a change after the snapshot carries the leader's sum).
    let out = std::process::Command::new(barista_tests::process::binary("producer"))
        .args([
            "snapshot",
            "--leader",
            &leader.display().to_string(),
            "--table",
            "t",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app = Connection::open(&leader).unwrap();
    for i in 0..50 {
        app.execute("UPDATE t SET v = v || '!' WHERE id = ?1", [i * 40 + 1])
            .unwrap();
    }
    let (l, r) = (leader.clone(), replica.clone());
    wait_until(Duration::from_secs(120), move || {
        snapshots_idle(&l)?;
        same_table(&l, &r, "t")
    })
    .await;
    app.execute("UPDATE t SET v = 'last' WHERE id = 1", [])
        .unwrap();
    let (l, r) = (leader.clone(), replica.clone());
    wait_until(Duration::from_secs(60), move || {
        let (lp, rp) = (leader_position(&l), replica_position(&r));
        (rp >= lp)
            .then_some(())
            .ok_or(format!("replica at {rp}, leader at {lp}"))
    })
    .await;
    let status: serde_json::Value = reqwest::get(format!("http://{addr}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(status["diverged"].is_null(), "{status}");
    assert_eq!(status["snapshots"], serde_json::json!([]), "{status}");
    follower.stop().await.unwrap();
    assert!(producer.terminate(Duration::from_secs(30)).success());
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_still_in_its_initial_snapshot_answers_snapshotting_not_a_partial_table() {
    let Setup {
        dir,
        leader,
        cluster,
        brokers,
        registry,
        prefix,
        ..
    } = Setup::new_with(3, "snap503").await;
    // A table created while the producer runs: the mock cluster cannot create its topic.
    cluster
        .create_topic(&format!("{prefix}.big"), 3, 1)
        .unwrap();
    let mut args = producer_args(&leader, &brokers, registry.url(), &prefix);
    args.extend(["--snapshot-chunk-rows".into(), "100".into()]);
    let mut producer = Proc::start("producer", args, &dir.path().join("producer.log"));
    let (follower, addr) = RunningFollower::serving(follower_config(
        &dir.path().join("replica.db"),
        &unique("f"),
        &brokers,
        registry.url(),
        &prefix,
    ));
    let replica = follower.replica.clone();
    wait_for_capture(&leader).await;
    Connection::open(&leader)
        .unwrap()
        .execute_batch(
            "CREATE TABLE big(id INTEGER PRIMARY KEY, v TEXT);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 20000)
             INSERT INTO big SELECT i, 'v' || i FROM s;",
        )
        .unwrap();
    let http = reqwest::Client::new();
    let snapshotting_on_follower = |r: &Path| -> Option<i64> {
        Connection::open(r)
            .ok()?
            .query_row(
                "SELECT rows FROM _barista_replica_snapshots WHERE tbl = 'big'",
                [],
                |r| r.get(0),
            )
            .ok()
    };
    let (mut refused, mut status_seen) = (0, false);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the snapshot never ended"
        );
        let before = snapshotting_on_follower(&replica);
        let resp = http
            .get(format!("http://{addr}/tables/big/rows?limit=5"))
            .send()
            .await
            .unwrap();
        let code = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap();
        let after = snapshotting_on_follower(&replica);
        match code {
            503 => {
                assert_eq!(body["error"], "snapshotting", "{body}");
                refused += 1;
                if !status_seen {
                    let s: serde_json::Value = reqwest::get(format!("http://{addr}/status"))
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    status_seen = s["snapshots"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|t| t["table"] == "big"));
                }
            }
            // Served: the snapshot had ended on the follower (it cannot start again).
            // A snapshot still running once the answer came was running when it was read:
            // a partial table. One that ended between the two looks is no evidence either
            // way (the read may have come after the end), so only the next answer counts.
            200 => {
                assert!(
                    after.is_none(),
                    "a partial table was served (snapshot rows before the request {before:?}, \
                     after it {after:?}): {body}"
                );
                if refused > 0 && before.is_none() {
                    break;
                }
            }
            // Not created on the follower yet (its group not applied).
            404 => assert!(before.is_none(), "{body}"),
            _ => panic!("{code}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refused > 0 && status_seen,
        "refused {refused} reads, status seen: {status_seen}"
    );
    let l = leader.clone();
    wait_until(Duration::from_secs(60), move || {
        same_table(&l, &replica, "big")
    })
    .await;
    follower.stop().await.unwrap();
    assert!(producer.terminate(Duration::from_secs(30)).success());
    registry.shutdown().await.unwrap();
}
