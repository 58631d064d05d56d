//! Adding a follower at any time: seeded from a peer's or the leader's
//! `/snapshot` rather than from all of history, also after retention deleted
//! part of it; a seed interrupted midway leaves no replica behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use barista_schemas::contract::{commits_topic, dead_letter_topic, table_topic};
use barista_schemas::snapshot::{HEADER_SNAPSHOT_BYTES, TRAILER_LEN};
use barista_tests::process::{free_port, Proc};
use barista_tests::*;
use rand::RngCore;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use rusqlite::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::crash::{consumer_args, producer_args};

/// The consumer binary's flags with HTTP on `port`.
fn follower_args(
    replica: &Path,
    id: &str,
    s: (&str, &str, &str),
    port: u16,
    extra: &[&str],
) -> Vec<String> {
    let (brokers, registry, prefix) = s;
    let mut a = consumer_args(replica, id, brokers, registry, prefix);
    for v in a.iter_mut().filter(|v| *v == "127.0.0.1:0") {
        *v = format!("127.0.0.1:{port}");
    }
    a.extend(extra.iter().map(|e| e.to_string()));
    a
}

/// Rows of the workload's tables.
type Rows = std::collections::BTreeMap<String, Vec<Vec<barista_schemas::SqlValue>>>;

/// A position and the rows at it, read in ONE read transaction: `sql` reads
/// the position (the leader's newest changelog position, or a replica's).
fn state_at(conn: &mut Connection, sql: &str) -> rusqlite::Result<(i64, Rows)> {
    let tx = conn.transaction()?;
    let position: i64 = tx.query_row(sql, [], |r| r.get(0))?;
    let mut rows = Rows::new();
    for t in crate::crash::TABLES {
        let mut stmt = tx.prepare(&format!("SELECT * FROM {t} ORDER BY id"))?;
        let n = stmt.column_count();
        let all = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| r.get_ref(i).map(barista_schemas::SqlValue::from))
                    .collect::<Result<Vec<_>, _>>()
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.insert(t.to_owned(), all);
    }
    tx.commit()?;
    Ok((position, rows))
}

const LEADER_POSITION_SQL: &str = "SELECT coalesce(max(position), 0) FROM _barista_changelog";
const REPLICA_POSITION_SQL: &str = "SELECT coalesce(max(position), 0) FROM _barista_position";

/// `/status` of a follower on `port`, or `None` while it does not answer.
async fn status(port: u16) -> Option<serde_json::Value> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}/status"))
        .await
        .ok()?;
    r.json().await.ok()
}

/// Waits until the replica equals the leader row for row and is at the
/// leader's position, failing early with the log if the process exits.
async fn caught_up_proc(proc: &mut Proc, leader: &Path, replica: &Path) {
    let (l, r) = (leader.to_owned(), replica.to_owned());
    wait_until(Duration::from_secs(120), || {
        proc.assert_running();
        if !r.exists() {
            return Err("no replica yet".into());
        }
        same_rows(&l, &r)?;
        let (want, have) = (leader_position(&l), replica_position(&r));
        (want == have)
            .then_some(())
            .ok_or(format!("leader at {want}, replica at {have}"))
    })
    .await;
}

fn files_named_like(dir: &Path, part: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(part))
        .collect()
}

/// (a) History deleted under a stopped follower: on restart it halts with
/// the exact command that re-seeds it; that command, pointed at a healthy
/// peer, gives a replica equal to the leader, which then keeps following.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_whose_history_was_deleted_halts_with_the_seed_command_that_fixes_it() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let leader = dir.path().join("leader.db");
    {
        let c = Connection::open(&leader).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch("CREATE TABLE big(id INTEGER PRIMARY KEY, payload BLOB NOT NULL);")
            .unwrap();
    }
    // One partition: librdkafka's mock keeps about 5 MiB of it, so writing
    // more deletes its oldest history, as retention would.
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let prefix = unique("reseed");
    let topic = table_topic(&prefix, "big");
    cluster.create_topic(&topic, 1, 1).unwrap();
    cluster.create_topic(&commits_topic(&prefix), 1, 1).unwrap();
    cluster
        .create_topic(&dead_letter_topic(&prefix), 1, 1)
        .unwrap();
    let registry = start_registry(dir.path()).await;
    let s = (brokers.as_str(), registry.url(), prefix.as_str());
    let write_big = |from: usize, to: usize| {
        let c = Connection::open(&leader).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        let mut rng = rand::rng();
        for i in from..to {
            // Random bytes: the producer compresses with lz4.
            let mut blob = vec![0u8; 200 * 1024];
            rng.fill_bytes(&mut blob);
            c.execute(
                "INSERT INTO big VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET payload = excluded.payload",
                rusqlite::params![(i % 10) as i64, blob],
            )
            .unwrap();
        }
    };

    let mut producer = Proc::start(
        "producer",
        producer_args(&leader, s.0, s.1, s.2),
        &dir.path().join("producer.log"),
    );
    let (peer_port, lost_port) = (free_port(), free_port());
    let peer_replica = dir.path().join("peer.db");
    let mut peer = Proc::start(
        "consumer",
        follower_args(&peer_replica, "peer", s, peer_port, &[]),
        &dir.path().join("peer.log"),
    );
    let lost_replica = dir.path().join("lost.db");
    let lost_log = dir.path().join("lost.log");
    let mut lost = Proc::start(
        "consumer",
        follower_args(&lost_replica, "lost", s, lost_port, &[]),
        &lost_log,
    );
    wait_for_triggers(&leader).await;
    write_big(0, 5);
    caught_up_proc(&mut peer, &leader, &peer_replica).await;
    caught_up_proc(&mut lost, &leader, &lost_replica).await;
    let stored = replica_offset(&lost_replica, &topic, 0).expect("an offset stored");
    assert!(lost.terminate(Duration::from_secs(30)).success());

    // ~12 MiB more on the one partition while `lost` is stopped.
    write_big(5, 65);
    caught_up_proc(&mut peer, &leader, &peer_replica).await;
    let earliest = low_watermark(&brokers, &topic);
    assert!(
        earliest > stored,
        "the mock kept the history: earliest offset {earliest}, stored {stored}"
    );
    producer.assert_running();

    // Restarted, it cannot catch up from Kafka: it halts, printing the command.
    lost.restart();
    wait_until(Duration::from_secs(60), || match lost.exited() {
        Some(st) if !st.success() => Ok(()),
        Some(st) => panic!("exited with {st}, expected a failure"),
        None => Err("still running".into()),
    })
    .await;
    let log = std::fs::read_to_string(&lost_log).unwrap();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("no longer in Kafka"))
        .unwrap_or_else(|| panic!("no halt message\n{}", lost.log_tail(30)));
    let command = line
        .split('`')
        .find(|part| part.contains("--reseed"))
        .unwrap_or_else(|| panic!("no command in: {line}"));
    eprintln!("halt message names: {command}");
    // The command: the flags it was started with, --reseed, and a
    // placeholder for the peer, which the operator fills in.
    let words: Vec<String> = command
        .split_whitespace()
        .map(|w| w.trim_matches('\'').to_owned())
        .collect();
    for flag in [
        "--replica",
        "--follower-id",
        "--brokers",
        "--registry",
        "--topic-prefix",
    ] {
        assert!(
            words.iter().any(|w| w == flag),
            "{flag} missing from {command}"
        );
    }
    assert!(words.ends_with(&[
        "--reseed".to_owned(),
        "--seed-from".to_owned(),
        barista_consumer::seed::PEER_PLACEHOLDER.to_owned()
    ]));
    let peer_url = format!("http://127.0.0.1:{peer_port}/snapshot");
    let args: Vec<String> = words[1..]
        .iter()
        .map(|w| {
            if w == barista_consumer::seed::PEER_PLACEHOLDER {
                peer_url.clone()
            } else {
                w.clone()
            }
        })
        .collect();
    let mut reseeded = Proc::start_program(PathBuf::from(&words[0]), args, &lost_log, None);
    caught_up_proc(&mut reseeded, &leader, &lost_replica).await;
    let resumed = replica_offset(&lost_replica, &topic, 0).unwrap();
    assert!(
        resumed >= earliest,
        "resumes at {resumed}, before {earliest}"
    );
    // And it follows from there.
    write_big(65, 70);
    caught_up_proc(&mut reseeded, &leader, &lost_replica).await;
    caught_up_proc(&mut peer, &leader, &peer_replica).await;
    assert!(files_named_like(dir.path(), "seed-partial").is_empty());
    assert!(reseeded.terminate(Duration::from_secs(30)).success());
    assert!(peer.terminate(Duration::from_secs(30)).success());
    assert!(producer.terminate(Duration::from_secs(30)).success());
    registry.shutdown().await.unwrap();
}

/// Waits until the producer installed its capture triggers.
async fn wait_for_triggers(leader: &Path) {
    let l = leader.to_owned();
    wait_until(Duration::from_secs(30), move || {
        let n: i64 = Connection::open(&l)
            .and_then(|c| {
                c.query_row(
                    "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND name LIKE '_barista_%'",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap_or(0);
        (n >= 3).then_some(()).ok_or(format!("{n} triggers"))
    })
    .await;
}

fn low_watermark(brokers: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("wm"))
        .create()
        .unwrap();
    c.fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap()
        .0
}

/// (b) A follower seeded from a peer while the leader writes about a
/// thousand transactions a second: its position only ever grows, is never
/// ahead of the leader's, and it ends equal to the leader row for row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_seeded_from_a_peer_under_writes_ends_equal_and_never_goes_back() {
    let setup = Setup::new_with(1, "seedlive").await;
    let producer = RunningProducer::start(setup.producer_config());
    let (peer, peer_addr) = RunningFollower::serving(setup.follower_config("peer.db"));
    wait_for_capture(&setup.leader).await;
    let (l, mut exp) = (setup.leader.clone(), setup.expected.clone());
    let writer = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        write_workload_paced(&l, 7, 4000, Duration::from_micros(500), &mut exp);
        let rate = 4000.0 / started.elapsed().as_secs_f64();
        eprintln!("the leader wrote {rate:.0} transactions/s");
    });
    // The peer has applied some of it.
    wait_until(Duration::from_secs(60), || {
        let p = peer.status().applied_position.0;
        (p > 200).then_some(()).ok_or(format!("peer at {p}"))
    })
    .await;
    assert!(!writer.is_finished(), "the writer must still be writing");
    let port = free_port();
    let replica = setup.dir.path().join("seeded.db");
    let log = setup.dir.path().join("seeded.log");
    let url = format!("http://{peer_addr}/snapshot");
    let s = (
        setup.brokers.as_str(),
        setup.registry.url(),
        setup.prefix.as_str(),
    );
    let mut seeded = Proc::start(
        "consumer",
        follower_args(&replica, "seeded", s, port, &["--seed-from", &url]),
        &log,
    );
    // The leader's states as the writer goes: position → rows, sampled in
    // read transactions as fast as they come.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (l, halt) = (setup.leader.clone(), stop.clone());
    let leader_states = std::thread::spawn(move || {
        let mut conn = Connection::open(&l).unwrap();
        let mut states = std::collections::HashMap::new();
        while !halt.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((p, rows)) = state_at(&mut conn, LEADER_POSITION_SQL) {
                states.entry(p).or_insert(rows);
            }
        }
        states
    });
    let mut follower_states: Vec<(i64, Rows)> = Vec::new();
    let mut seen: Vec<i64> = Vec::new();
    let mut while_writing = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        seeded.assert_running();
        if let Some(st) = status(port).await {
            let p = st["applied_position"].as_i64().unwrap();
            let leader_now = leader_position(&setup.leader);
            assert!(
                p <= leader_now,
                "follower at {p}, ahead of the leader at {leader_now}"
            );
            if let Some(&last) = seen.last() {
                assert!(p >= last, "position went back from {last} to {p}");
            }
            seen.push(p);
            if let Ok(mut c) =
                Connection::open_with_flags(&replica, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            {
                if let Ok(st) = state_at(&mut c, REPLICA_POSITION_SQL) {
                    follower_states.push(st);
                }
            }
            if !writer.is_finished() {
                while_writing += 1;
            } else if p == leader_now && same_rows(&setup.leader, &replica).is_ok() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not caught up; last positions {:?}\n{}",
            &seen[seen.len().saturating_sub(5)..],
            seeded.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    writer.await.unwrap();
    caught_up_proc(&mut seeded, &setup.leader, &replica).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let leader_states = leader_states.join().unwrap();
    // Every state the follower had that the sampler also saw on the leader
    // is the leader's, row for row.
    let mut compared = 0;
    for (p, rows) in &follower_states {
        if let Some(want) = leader_states.get(p) {
            assert_eq!(
                rows, want,
                "the follower's rows at position {p} are not the leader's"
            );
            compared += 1;
        }
    }
    eprintln!(
        "{compared} of {} follower states compared with the leader's at the same position ({} leader states sampled)",
        follower_states.len(),
        leader_states.len()
    );
    assert!(compared > 0, "no follower state met a sampled leader state");
    eprintln!(
        "{} status samples ({while_writing} while the leader wrote), positions {}..{}",
        seen.len(),
        seen[0],
        seen[seen.len() - 1]
    );
    assert!(
        while_writing > 0,
        "the follower served nothing while the leader wrote"
    );
    assert!(
        seen[0] > 0,
        "it started from the peer's snapshot, not from zero"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("replica seeded"), "{}", seeded.log_tail(30));
    assert!(
        text.contains("mb_per_s"),
        "progress logged: {}",
        seeded.log_tail(30)
    );
    assert!(seeded.terminate(Duration::from_secs(30)).success());
    peer.stop().await.unwrap();
    producer.stop().await.unwrap();
}

/// What the bad peer does to the snapshot for its n-th client.
const BAD_PEER: [&str; 3] = ["dies midway", "flips a byte", "drops the trailer"];

/// A peer that serves the real snapshot (fetched once) wrongly to its first
/// clients, one way each ([`BAD_PEER`]), and whole to the next one.
async fn bad_peer(real: String) -> std::net::SocketAddr {
    let resp = reqwest::get(&real).await.unwrap();
    assert!(resp.status().is_success());
    let head: String = resp
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-barista-snapshot-"))
        .map(|(k, v)| format!("{k}: {}\r\n", v.to_str().unwrap()))
        .collect();
    let file_len: usize = resp.headers()[HEADER_SNAPSHOT_BYTES]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = resp.bytes().await.unwrap().to_vec();
    assert_eq!(body.len(), file_len + TRAILER_LEN);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for n in 0.. {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => req.extend_from_slice(&buf[..k]),
                }
            }
            let mut body = body.clone();
            let upto = match BAD_PEER.get(n).copied() {
                Some("dies midway") => file_len / 2,
                Some("flips a byte") => {
                    // In a row's bytes, past the header: still a database.
                    body[file_len - 100] ^= 0x20;
                    body.len()
                }
                Some(_) => file_len,
                None => body.len(),
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{head}connection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(&body[..upto]).await;
            let _ = sock.flush().await;
            // Dropped: the connection closes, early for the first ones.
        }
    });
    addr
}

/// (c) The peer dies mid-download, or sends a corrupted or truncated
/// snapshot: each seed fails naming why, no replica (and no partial file) is
/// left, and running the same command again works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seed_whose_peer_dies_midway_leaves_no_replica_and_a_retry_works() {
    let mut setup = Setup::new_with(1, "seeddie").await;
    let producer = RunningProducer::start(setup.producer_config());
    let (peer, peer_addr) = RunningFollower::serving(setup.follower_config("peer.db"));
    wait_for_capture(&setup.leader).await;
    setup.write(11, 600).await;
    setup.caught_up(&peer).await;
    let fake = bad_peer(format!("http://{peer_addr}/snapshot")).await;
    let port = free_port();
    let replica = setup.dir.path().join("seeded.db");
    let url = format!("http://{fake}/snapshot");
    let s = (
        setup.brokers.as_str(),
        setup.registry.url(),
        setup.prefix.as_str(),
    );
    let log = setup.dir.path().join("seeded.log");
    let mut seeded = Proc::start(
        "consumer",
        follower_args(&replica, "seeded", s, port, &["--seed-from", &url]),
        &log,
    );
    let dir = setup.dir.path().to_owned();
    let dir = dir.as_path();
    for (n, why) in BAD_PEER.iter().enumerate() {
        if n > 0 {
            seeded.restart();
        }
        wait_until(Duration::from_secs(60), || match seeded.exited() {
            Some(st) if !st.success() => Ok(()),
            Some(st) => panic!("exited with {st}, expected a failure"),
            None => Err("still running".into()),
        })
        .await;
        seeded.kill9(); // reaps the exited process
        assert!(!replica.exists(), "a replica was left when the peer {why}");
        assert!(
            files_named_like(dir, "seeded.db").is_empty(),
            "{:?}",
            files_named_like(dir, "seeded.db")
        );
        let tail = seeded.log_tail(5);
        assert!(tail.contains("nothing was installed"), "{tail}");
        let reason = match *why {
            "flips a byte" => "hash mismatch",
            _ => "reading the snapshot (after",
        };
        assert!(tail.contains(reason), "the peer {why}: {tail}");
    }
    // The same command again: the peer serves the whole file this time.
    seeded.restart();
    caught_up_proc(&mut seeded, &setup.leader, &replica).await;
    setup.write(12, 100).await;
    caught_up_proc(&mut seeded, &setup.leader, &replica).await;
    assert!(files_named_like(dir, "seed-partial").is_empty());
    assert!(seeded.terminate(Duration::from_secs(30)).success());
    peer.stop().await.unwrap();
    producer.stop().await.unwrap();
}

/// (d) No follower anywhere: the first one is seeded from the producer's
/// snapshot of the leader, reads Kafka from the earliest offset, drops what
/// the snapshot already holds, and ends equal to the leader. A seed the
/// machine lost before it was on disk is refused, then re-seeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_seeded_from_the_leader_ends_equal_to_it() {
    let mut setup = Setup::new_with(1, "seedleader").await;
    let (producer, addr) = RunningProducer::serving(setup.producer_config());
    wait_for_capture(&setup.leader).await;
    setup.write(21, 500).await;
    let (l, mut exp) = (setup.leader.clone(), setup.expected.clone());
    let writer = tokio::task::spawn_blocking(move || {
        write_workload_paced(&l, 22, 1500, Duration::from_millis(1), &mut exp);
    });
    let port = free_port();
    let replica = setup.dir.path().join("first.db");
    let url = format!("http://{addr}/snapshot");
    let s = (
        setup.brokers.as_str(),
        setup.registry.url(),
        setup.prefix.as_str(),
    );
    let mut first = Proc::start(
        "consumer",
        follower_args(&replica, "first", s, port, &["--seed-from", &url]),
        &setup.dir.path().join("first.log"),
    );
    writer.await.unwrap();
    caught_up_proc(&mut first, &setup.leader, &replica).await;
    let st = status(port).await.expect("status");
    assert!(
        st["duplicates"].as_u64().unwrap() > 0,
        "it read history below the snapshot's position and dropped it: {st}"
    );
    let c = Connection::open(&replica).unwrap();
    let barista: Vec<String> = c
        .prepare("SELECT type || ' ' || name FROM sqlite_schema WHERE type IN ('table', 'trigger', 'view') AND name LIKE '%barista%' ORDER BY 1")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for leader_only in [
        "trigger",
        "_barista_changelog",
        "_barista_tables",
        "_barista_state",
        "_barista_partitions",
    ] {
        assert!(
            !barista.iter().any(|o| o.contains(leader_only)),
            "the leader's {leader_only} is in the replica: {barista:?}"
        );
    }
    assert!(barista.contains(&"table _barista_position".to_owned()));
    // The follower did not wait for the disk; the file was fsynced beside it.
    let marker = barista_consumer::seed::unsynced_path(&replica);
    wait_until(Duration::from_secs(60), || {
        (!marker.exists())
            .then_some(())
            .ok_or("the seeded replica is not on disk yet".to_owned())
    })
    .await;
    assert!(first.terminate(Duration::from_secs(30)).success());
    drop(c);

    // The machine went down before a seed's bytes were on disk (a marker
    // from another boot): the replica may be torn. Without --seed-from the
    // follower stops with the re-seed command; with it, it re-seeds.
    std::fs::write(&marker, "an-earlier-boot").unwrap();
    let torn_log = setup.dir.path().join("torn.log");
    let mut torn = Proc::start(
        "consumer",
        follower_args(&replica, "first", s, port, &[]),
        &torn_log,
    );
    let t = Instant::now();
    let code = loop {
        if let Some(code) = torn.exited() {
            break code;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "it kept running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code.code(), Some(1));
    let log = std::fs::read_to_string(&torn_log).unwrap();
    assert!(
        log.contains("the machine went down before its bytes were on disk")
            && log.contains("--reseed --seed-from"),
        "{log}"
    );
    let mut reseeded = Proc::start(
        "consumer",
        follower_args(&replica, "first", s, port, &["--seed-from", &url]),
        &setup.dir.path().join("reseeded.log"),
    );
    setup.write(23, 200).await;
    caught_up_proc(&mut reseeded, &setup.leader, &replica).await;
    assert!(reseeded.log_tail(400).contains("re-seeding it"));
    assert!(reseeded.terminate(Duration::from_secs(30)).success());
    producer.stop().await.unwrap();
}

/// A follower holds its replica: the re-seed command run beside it (say, by an operator who
/// did not stop the service first) is refused naming the holder's pid, and replaces
/// nothing, so the holder keeps following its own file. Once the holder is SIGKILLed, the
/// lock file it leaves behind keeps nobody out: the same command re-seeds the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reseed_beside_a_running_follower_is_refused_and_works_once_that_one_is_killed() {
    let mut setup = Setup::new_with(1, "seedlock").await;
    let producer = RunningProducer::start(setup.producer_config());
    let (peer, peer_addr) = RunningFollower::serving(setup.follower_config("peer.db"));
    wait_for_capture(&setup.leader).await;
    setup.write(21, 300).await;
    setup.caught_up(&peer).await;
    let s = (
        setup.brokers.as_str(),
        setup.registry.url(),
        setup.prefix.as_str(),
    );
    let dir = setup.dir.path().to_owned();
    let replica = dir.join("held.db");
    let mut holder = Proc::start(
        "consumer",
        follower_args(&replica, "held", s, free_port(), &[]),
        &dir.join("holder.log"),
    );
    caught_up_proc(&mut holder, &setup.leader, &replica).await;
    let holder_pid = holder.pid().unwrap();

    let url = format!("http://{peer_addr}/snapshot");
    let mut reseed = Proc::start(
        "consumer",
        follower_args(
            &replica,
            "held",
            s,
            free_port(),
            &["--reseed", "--seed-from", &url],
        ),
        &dir.join("reseed.log"),
    );
    wait_until(Duration::from_secs(60), || match reseed.exited() {
        Some(st) if !st.success() => Ok(()),
        Some(st) => panic!("the re-seed beside a running follower exited with {st}"),
        None => Err("still running".into()),
    })
    .await;
    reseed.kill9(); // reaps it
    let tail = reseed.log_tail(5);
    assert!(
        tail.contains("is in use by another consumer")
            && tail.contains(&format!("pid {holder_pid}")),
        "{tail}"
    );
    assert!(!tail.contains("replica seeded"), "{tail}");
    // The holder's file was not replaced under it: it goes on following.
    setup.write(22, 100).await;
    caught_up_proc(&mut holder, &setup.leader, &replica).await;

    holder.kill9();
    let lock = barista_consumer::replica_lock::lock_path(&replica);
    assert!(lock.exists(), "a SIGKILLed holder leaves its lock file");
    setup.write(23, 100).await;
    reseed.restart();
    caught_up_proc(&mut reseed, &setup.leader, &replica).await;
    let log = std::fs::read_to_string(dir.join("reseed.log")).unwrap();
    assert!(log.contains("replica seeded"), "{}", reseed.log_tail(20));
    assert!(reseed.terminate(Duration::from_secs(30)).success());
    assert!(
        !lock.exists(),
        "a follower that stops removes its lock file"
    );
    peer.stop().await.unwrap();
    producer.stop().await.unwrap();
}
