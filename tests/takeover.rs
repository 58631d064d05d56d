//! Issue 17, taking over when the leader is lost, with the real binaries on the nisshi broker:
//! a planned switchover (stop writes, `producer --drain`, `--promote` a follower) and an
//! unplanned failover (SIGKILL the producer, promote a follower, the old producer fenced).
//! Three followers; the promoted one's consumer is stopped, the other two run throughout and
//! are never restarted or re-seeded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use barista_tests::process::Proc;
use barista_tests::*;
use rusqlite::Connection;
use serde_json::Value;

use crate::broker::{nisshi, Broker};
use crate::crash::{consumer_args, producer_args};

/// A pipeline on a real broker: the leader, its producer, three followers serving HTTP.
struct Cluster {
    dir: tempfile::TempDir,
    _broker: Broker,
    brokers: String,
    registry: barista_registry::RunningRegistry,
    prefix: String,
    leader: PathBuf,
    producer: Proc,
    replicas: Vec<PathBuf>,
    followers: Vec<Proc>,
    ports: Vec<u16>,
}

impl Cluster {
    async fn start(bin: PathBuf, name: &str) -> Cluster {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::start_on(bin, dir.path(), "memory://nisshi/");
        let brokers = broker.addr.clone();
        let registry = start_registry(dir.path()).await;
        let leader = dir.path().join("leader.db");
        seed(&leader, &mut Expected::new());
        let prefix = unique(name);
        let producer = Proc::start(
            "producer",
            producer_args(&leader, &brokers, registry.url(), &prefix),
            &dir.path().join("producer.log"),
        );
        wait_for_capture(&leader).await;
        let mut c = Cluster {
            _broker: broker,
            brokers,
            registry,
            prefix,
            leader,
            producer,
            replicas: Vec::new(),
            followers: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        for i in 1..=3 {
            let replica = c.dir.path().join(format!("replica-{i}.db"));
            let log = c.dir.path().join(format!("consumer-{i}.log"));
            let args = consumer_args(
                &replica,
                &format!("follower-{i}"),
                &c.brokers,
                c.registry.url(),
                &c.prefix,
            );
            let mut p = Proc::start("consumer", args, &log);
            // Port 0, read back from the log: no port is guessed, none taken in between.
            let mut port = 0;
            wait_until(Duration::from_secs(30), || {
                p.assert_running();
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let line = text
                    .lines()
                    .find(|l| l.contains("follower HTTP listening"))
                    .ok_or("no 'follower HTTP listening' line yet")?;
                let at = line
                    .find("127.0.0.1:")
                    .ok_or(format!("no address in {line:?}"))?;
                port = line[at + "127.0.0.1:".len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .map_err(|e| format!("{e}"))?;
                Ok(())
            })
            .await;
            c.followers.push(p);
            c.replicas.push(replica);
            c.ports.push(port);
        }
        c
    }

    /// The producer's arguments for `leader`, plus `extra`.
    fn producer_args(&self, leader: &Path, extra: &[&str]) -> Vec<String> {
        let mut args = producer_args(leader, &self.brokers, self.registry.url(), &self.prefix);
        // Events keep the leader's logical name after the takeover.
        args.extend(["--db-name".into(), "leader".into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    async fn get(&self, follower: usize, path: &str) -> (u16, Value) {
        let url = format!("http://127.0.0.1:{}{path}", self.ports[follower]);
        let r = reqwest::get(&url).await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn status(&self, follower: usize) -> Value {
        self.get(follower, "/status").await.1
    }

    /// Until every running follower in `which` holds `replica`'s rows, applied up to the
    /// same position, with every partition read.
    async fn converged(&mut self, reference: &Path, which: &[usize]) {
        for &i in which {
            let r = self.replicas[i].clone();
            let start = std::time::Instant::now();
            loop {
                self.followers[i].assert_running();
                let same = same_rows(reference, &r);
                let s = self.status(i).await;
                let want = position_of(reference);
                let at = s["applied_position"].as_i64().unwrap_or(-1);
                if same.is_ok() && at == want && s["offset_lag"] == 0 {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(120),
                    "follower-{} never converged on {} (at {want}): {same:?}; status {s}\n{}",
                    i + 1,
                    reference.display(),
                    self.followers[i].log_tail(30)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A leader's head, or a replica's position.
fn position_of(file: &Path) -> i64 {
    let conn = Connection::open(file).unwrap();
    let leader: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE name = '_barista_changelog'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(conn);
    if leader {
        leader_position(file)
    } else {
        replica_position(file)
    }
}

fn state(leader: &Path, key: &str) -> Option<i64> {
    Connection::open(leader)
        .unwrap()
        .query_row(
            "SELECT value FROM _barista_state WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .ok()
}

/// Writes `txns` transactions of the random workload at about 1,000 a second.
async fn workload(leader: &Path, seed: u64, txns: usize) {
    let l = leader.to_owned();
    tokio::task::spawn_blocking(move || {
        write_workload_paced(
            &l,
            seed,
            txns,
            Duration::from_millis(1),
            &mut Expected::new(),
        )
    })
    .await
    .unwrap();
}

/// Starts `producer --promote` on follower `i`'s replica (its consumer stopped first) and
/// waits until its epoch-change record is published. Returns it and the takeover position.
async fn promote(c: &mut Cluster, i: usize) -> (Proc, i64) {
    let s = c.followers[i].terminate(Duration::from_secs(30));
    assert!(s.success(), "consumer on SIGTERM: {s}");
    let replica = c.replicas[i].clone();
    let before = replica_position(&replica);
    let mut p = Proc::start(
        "producer",
        c.producer_args(&replica, &["--promote"]),
        &c.dir.path().join("promoted.log"),
    );
    wait_until(Duration::from_secs(60), || {
        p.assert_running();
        match (
            state(&replica, "epoch"),
            state(&replica, "takeover_pending"),
        ) {
            (Some(1), None) => Ok(()),
            other => Err(format!("epoch, pending takeover: {other:?}")),
        }
    })
    .await;
    let takeover = state(&replica, "takeover").unwrap();
    assert_eq!(
        takeover,
        before + 1,
        "positions continue after the replica's"
    );
    (p, takeover)
}

/// Reads customer `id` from follower `f` with `min_position`; the answer's position and name.
async fn read_customer(c: &Cluster, f: usize, id: i64, min: i64) -> (i64, String) {
    let (status, body) = c
        .get(
            f,
            &format!("/tables/customers/row?id={id}&min_position={min}&timeout_ms=20000"),
        )
        .await;
    assert_eq!(status, 200, "read at min_position {min}: {body}");
    let at = body["position"].as_i64().unwrap();
    assert!(at >= min, "served at {at} < min_position {min}: {body}");
    (
        at,
        body["row"]["name"].as_str().unwrap_or_default().to_owned(),
    )
}

/// A customer the random workload (ids 1 to 59) never touches.
const OURS: i64 = 1000;

/// Names customer `id` (created if needed) on `leader`; returns the write's token.
fn rename(leader: &Path, id: i64, name: &str) -> i64 {
    let mut conn = Connection::open(leader).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let ((), token) = barista_producer::token::write_with_token(&mut conn, |tx| {
        tx.execute(
            "INSERT INTO customers(id, name) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET name = excluded.name",
            rusqlite::params![id, name],
        )
        .map(drop)
    })
    .unwrap();
    token.0
}

/// Planned: writes at about 1,000 transactions/s, stop writes, `--drain`, promote follower 1,
/// writes on the new leader. Nothing is lost, followers 2 and 3 (never restarted) equal the
/// new leader, and tokens from both sides of the takeover are honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planned_switchover_loses_nothing_and_keeps_tokens() {
    let Some(bin) = nisshi() else { return };
    let mut c = Cluster::start(bin, "switchover").await;
    let old = c.leader.clone();
    let token_before = rename(&old, OURS, "before the takeover");
    workload(&old, 171, 3000).await;
    // Stop writes (done), stop the producer, drain what is committed.
    let s = c.producer.terminate(Duration::from_secs(30));
    assert!(s.success(), "producer on SIGTERM: {s}");
    let mut drain = Proc::start(
        "producer",
        c.producer_args(&old, &["--drain"]),
        &c.dir.path().join("drain.log"),
    );
    let drained = wait_exit(&mut drain, Duration::from_secs(120)).await;
    assert_eq!(drained.code(), Some(0), "--drain\n{}", drain.log_tail(20));
    let head = leader_position(&old);
    assert_eq!(
        state(&old, "acked"),
        Some(head),
        "drained: all acknowledged"
    );
    // Zero loss: every follower equals the old leader at its head.
    c.converged(&old, &[0, 1, 2]).await;

    let (mut promoted, takeover) = promote(&mut c, 0).await;
    assert_eq!(takeover, head + 1);
    let new = c.replicas[0].clone();
    // A token from before the takeover is honoured after it.
    assert_eq!(
        read_customer(&c, 1, OURS, token_before).await.1,
        "before the takeover"
    );
    // Read-your-writes across the takeover: the new leader's first change is head + 1.
    let token_after = rename(&new, OURS, "after the takeover");
    assert_eq!(token_after, takeover);
    for f in [1, 2] {
        let (at, name) = read_customer(&c, f, OURS, token_after).await;
        assert_eq!(name, "after the takeover", "follower-{} at {at}", f + 1);
    }
    workload(&new, 172, 1500).await;
    c.converged(&new, &[1, 2]).await;
    for f in [1, 2] {
        let s = c.status(f).await;
        assert_eq!(
            (s["epoch"].as_i64(), s["takeover_position"].as_i64()),
            (Some(1), Some(takeover)),
            "{s}"
        );
        assert_eq!(
            s["fenced"], 0,
            "nothing of the old leader after a drain: {s}"
        );
    }
    promoted.assert_running();
    assert!(promoted.terminate(Duration::from_secs(30)).success());
    for f in [1, 2] {
        assert!(c.followers[f].terminate(Duration::from_secs(30)).success());
    }
}

/// Unplanned: the producer is SIGKILLed while the application keeps writing for a while.
/// Follower 1 is promoted; everything Kafka acknowledged is on the new leader and on the
/// other followers; the old producer, restarted, is fenced with exit code 3; the fenced
/// report counts exactly the old leader's changes from the takeover position on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unplanned_failover_keeps_what_kafka_acknowledged_and_fences_the_old_producer() {
    let Some(bin) = nisshi() else { return };
    let mut c = Cluster::start(bin, "failover").await;
    let old = c.leader.clone();
    let l = old.clone();
    let writer = tokio::task::spawn_blocking(move || {
        write_workload_paced(
            &l,
            181,
            2500,
            Duration::from_millis(1),
            &mut Expected::new(),
        )
    });
    wait_until(Duration::from_secs(60), || {
        let acked = state(&old, "acked").unwrap_or(0);
        (acked > 1500)
            .then_some(())
            .ok_or(format!("acknowledged up to {acked}"))
    })
    .await;
    c.producer.kill9();
    // What Kafka acknowledged before the kill, as far as the leader was told.
    let acked = state(&old, "acked").unwrap();
    writer.await.unwrap(); // the application writes on: these never reach Kafka
    assert!(leader_position(&old) > acked);

    // The followers apply every group whole in Kafka (the killed producer's last group may
    // be there in part: never applied, it keeps their offset lag above 0); follower 1 is
    // promoted once all three agree and stay put. (`--promote` itself refuses a replica
    // behind a whole group in Kafka.)
    let start = std::time::Instant::now();
    let mut last = Vec::new();
    loop {
        let mut at = Vec::new();
        for f in 0..3 {
            at.push(c.status(f).await["applied_position"].as_i64().unwrap_or(-1));
        }
        if at.iter().all(|a| *a >= acked && *a == at[0]) && last == at {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "acked {acked}; followers at {at:?}"
        );
        last = at;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (mut promoted, takeover) = promote(&mut c, 0).await;
    assert!(
        takeover > acked,
        "every acknowledged change is on the new leader"
    );
    let new = c.replicas[0].clone();
    workload(&new, 182, 500).await;
    c.converged(&new, &[1, 2]).await;
    for f in [1, 2] {
        let s = c.status(f).await;
        assert_eq!(
            (s["epoch"].as_i64(), s["takeover_position"].as_i64()),
            (Some(1), Some(takeover)),
            "{s}"
        );
        // The killed producer's unfinished group, when it left one (sent past the takeover,
        // never committed), is ignored and counted, never applied.
        eprintln!(
            "follower-{}: {} fenced message(s) ignored",
            f + 1,
            s["fenced"]
        );
    }

    // The old producer comes back: fenced, exit code 3, naming the takeover.
    c.producer.restart();
    let s = wait_exit(&mut c.producer, Duration::from_secs(60)).await;
    let log = c.producer.log_tail(20);
    assert_eq!(s.code(), Some(3), "fenced exit code\n{log}");
    assert!(
        log.contains(&format!("epoch 1 took over at position {takeover}")),
        "{log}"
    );
    // The fenced report: the old leader's changes from the takeover on, never merged.
    let lost: (i64, i64, i64) = Connection::open(&old)
        .unwrap()
        .query_row(
            "SELECT count(*), min(position), max(position) FROM _barista_changelog WHERE position >= ?1 AND op IN (1, 2, 3, 4)",
            [takeover],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!(lost.0 > 0, "the application wrote after the kill");
    let mut report = Proc::start(
        "producer",
        c.producer_args(&old, &["--fenced-report"]),
        &c.dir.path().join("report.log"),
    );
    let s = wait_exit(&mut report, Duration::from_secs(60)).await;
    let text = report.log_tail(20);
    assert_eq!(s.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "fenced writes: {} change(s) this leader committed at or after position {takeover} were never published as part of the new leader's history: positions {}..={}",
            lost.0, lost.1, lost.2
        )),
        "{text}"
    );
    // Nothing of them reached the followers: they equal the new leader (checked above) and
    // keep following it.
    workload(&new, 183, 200).await;
    c.converged(&new, &[1, 2]).await;
    promoted.assert_running();
    assert!(promoted.terminate(Duration::from_secs(30)).success());
    for f in [1, 2] {
        assert!(c.followers[f].terminate(Duration::from_secs(30)).success());
    }
}

/// A producer still running when a follower is promoted reads the new epoch in the commits
/// topic and stops (exit code 3); what its leader is written afterwards never reaches the
/// followers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_producer_stops_when_another_leader_takes_over() {
    let Some(bin) = nisshi() else { return };
    let mut c = Cluster::start(bin, "fenced").await;
    let old = c.leader.clone();
    workload(&old, 191, 300).await;
    c.converged(&old, &[0, 1, 2]).await;
    let (mut promoted, takeover) = promote(&mut c, 0).await;
    let s = wait_exit(&mut c.producer, Duration::from_secs(60)).await;
    let log = c.producer.log_tail(20);
    assert_eq!(s.code(), Some(3), "fenced while running\n{log}");
    assert!(
        log.contains(&format!("epoch 1 took over at position {takeover}")),
        "{log}"
    );
    // The old leader's writes from now on stay there.
    workload(&old, 192, 100).await;
    let new = c.replicas[0].clone();
    workload(&new, 193, 100).await;
    c.converged(&new, &[1, 2]).await;
    assert!(same_rows(&old, &new).is_err(), "the two leaders differ");
    promoted.assert_running();
    assert!(promoted.terminate(Duration::from_secs(30)).success());
    for f in [1, 2] {
        assert!(c.followers[f].terminate(Duration::from_secs(30)).success());
    }
}

/// Until `p` exits (panics with its log after `timeout`).
async fn wait_exit(p: &mut Proc, timeout: Duration) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(s) = p.exited() {
            return s;
        }
        assert!(
            start.elapsed() < timeout,
            "{} still running\n{}",
            p.name(),
            p.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
