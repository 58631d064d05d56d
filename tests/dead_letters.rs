//! Poison inside the leader's chain, and what an operator does about it.
//!
//! The realistic cause: the follower reads writer schemas from its own
//! registry (a mirror of the producer's, restored from a backup taken before
//! a migration), so the new schema version of `customers` is unknown to it.
//! Each change written with that version is a real change with a position
//! that the follower cannot decode: it is dead-lettered and holds its
//! partition's chain, and through the commit groups every later group, for
//! every table. The follower is the real `consumer` binary, the operator
//! the real `consumer dead-letters …` subcommands, the registries real HTTP
//! servers, Kafka the mock cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use barista_producer::migrate::{migrate, Migration, Outcome};
use barista_registry::RunningRegistry;
use barista_schemas::contract::{dead_letter_topic, table_topic, HEADER_POSITION};
use barista_schemas::SqlValue;
use barista_tests::process::{binary, free_port, Proc};
use barista_tests::*;
use rusqlite::Connection;
use serde_json::Value;

/// A `_barista_skipped` row: topic, partition, offset, position, reason,
/// error, replica_position, skipped_at.
type SkipRow = (String, i32, i64, i64, String, String, i64, String);

/// One held message as the test expects `/status` to name it.
#[derive(Debug, Clone, PartialEq)]
struct Poison {
    topic: String,
    partition: i32,
    offset: i64,
    position: i64,
}

/// A follower (the `consumer` binary) held by poison changes to `customers`.
struct Held {
    s: Setup,
    producer: RunningProducer,
    /// The follower's registry: a copy of the producer's from before the migration.
    mirror: Option<RunningRegistry>,
    mirror_dir: PathBuf,
    mirror_addr: std::net::SocketAddr,
    follower: Proc,
    url: String,
    replica: PathBuf,
    /// The leader's (and replica's) position just before the poison.
    before_position: i64,
    /// The replica's rows at that position.
    before: BTreeMap<String, Vec<Vec<SqlValue>>>,
    /// The customers ids whose changes are poison, and the messages.
    ids: Vec<i64>,
    poison: Vec<Poison>,
    http: reqwest::Client,
}

/// A copy of a registry's SQLite file, consistent while it runs.
fn copy_registry(from_dir: &Path, to_dir: &Path) {
    std::fs::create_dir_all(to_dir).unwrap();
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(to_dir.join(format!("registry.db{ext}")));
    }
    Connection::open(from_dir.join("registry.db"))
        .unwrap()
        .execute(
            "VACUUM INTO ?1",
            [to_dir.join("registry.db").display().to_string()],
        )
        .unwrap();
}

/// The customers id of each stored Confluent-framed Avro key `{id: long}`
/// (zigzag varint after the 5-byte frame), with its partition.
fn partitions_of_ids(brokers: &str, topic: &str) -> BTreeMap<i64, i32> {
    let mut out = BTreeMap::new();
    for (p, _, key, _, _) in read_topic(brokers, topic) {
        let Some(key) = key else { continue };
        let (mut n, mut shift) = (0u64, 0);
        for b in &key[5..] {
            n |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        out.insert((n >> 1) as i64 ^ -((n & 1) as i64), p);
    }
    out
}

fn leader_ids(leader: &Path) -> Vec<i64> {
    Connection::open(leader)
        .unwrap()
        .prepare("SELECT id FROM customers ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

impl Held {
    /// Runs everything up to the held state: `poisoned` customers rows on
    /// as many different partitions are changed in ONE leader transaction
    /// (with a change to `everything`), then two transactions that touch
    /// only `everything`.
    async fn start(name: &str, poisoned: usize) -> Held {
        let mut s = Setup::new_with(1, name).await;
        let producer = RunningProducer::start(s.producer_config());
        wait_for_capture(&s.leader).await;
        s.write(71, 30).await;
        let l = s.leader.clone();
        wait_until(Duration::from_secs(60), || changelog_pruned(&l)).await;

        // The follower's registry: restored from a backup taken now.
        let mirror_dir = s.dir.path().join("mirror");
        copy_registry(s.dir.path(), &mirror_dir);
        let mirror = start_registry(&mirror_dir).await;
        let mirror_addr = mirror.local_addr();

        let replica = s.dir.path().join("replica.db");
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let args = [
            "--replica",
            &replica.display().to_string(),
            "--follower-id",
            &unique("f"),
            "--brokers",
            &s.brokers,
            "--registry",
            mirror.url(),
            "--topic-prefix",
            &s.prefix,
            "--http-listen",
            &format!("127.0.0.1:{port}"),
        ]
        .map(str::to_owned);
        let mut follower = Proc::start("consumer", args, &s.dir.path().join("consumer.log"));
        let http = reqwest::Client::new();
        let mut h = Held {
            s,
            producer,
            mirror: Some(mirror),
            mirror_dir,
            mirror_addr,
            follower: {
                follower.assert_running();
                follower
            },
            url,
            replica,
            before_position: 0,
            before: BTreeMap::new(),
            ids: Vec::new(),
            poison: Vec::new(),
            http,
        };
        h.caught_up().await;

        // The migration registers a new customers schema in the producer's
        // registry only.
        let m = Migration {
            leader: h.s.leader.clone(),
            ddl: "ALTER TABLE customers ADD COLUMN stamps INTEGER NOT NULL DEFAULT 0;".into(),
            registry_url: h.s.registry.url().to_owned(),
            topic_prefix: h.s.prefix.clone(),
        };
        assert!(matches!(migrate(&m).await.unwrap(), Outcome::Applied(_)));
        h.follower_at(leader_position(&h.s.leader)).await;
        h.before_position = leader_position(&h.s.leader);
        h.before = dump(&h.replica);

        // Poison customers ids on different partitions, among live rows.
        let customers = table_topic(&h.s.prefix, "customers");
        let parts = partitions_of_ids(&h.s.brokers, &customers);
        let mut used = std::collections::HashSet::new();
        for id in leader_ids(&h.s.leader) {
            if h.ids.len() < poisoned && used.insert(parts[&id]) {
                h.ids.push(id);
            }
        }
        assert_eq!(
            h.ids.len(),
            poisoned,
            "ids on distinct partitions: {parts:?}"
        );
        let ids: Vec<String> = h.ids.iter().map(i64::to_string).collect();
        let conn = Connection::open(&h.s.leader).unwrap();
        conn.execute_batch(&format!(
            "BEGIN;
             UPDATE customers SET coffee = 'poison', stamps = 7 WHERE id IN ({});
             INSERT INTO everything VALUES (1001, 1, 1.5, 'same group', x'01', NULL);
             COMMIT;
             INSERT INTO everything VALUES (1002, 2, 2.5, 'later group', x'02', 'x');
             UPDATE everything SET t = 'later still' WHERE id = 1001;",
            ids.join(", ")
        ))
        .unwrap();
        let l = h.s.leader.clone();
        wait_until(Duration::from_secs(60), || changelog_pruned(&l)).await;

        // Where Kafka stored the poison changes.
        for (partition, offset, _, _, headers) in read_topic(&h.s.brokers, &customers) {
            let Some(position) = headers
                .iter()
                .find(|(k, _)| k == HEADER_POSITION)
                .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
            else {
                continue;
            };
            if position > h.before_position {
                h.poison.push(Poison {
                    topic: customers.clone(),
                    partition,
                    offset,
                    position,
                });
            }
        }
        h.poison.sort_by_key(|p| p.position);
        assert_eq!(h.poison.len(), poisoned, "{:?}", h.poison);
        h.wait_held(&h.poison.clone()).await;
        h
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        r.json().await.map_err(|e| e.to_string())
    }

    async fn status(&mut self) -> Value {
        self.follower.assert_running();
        self.get("/status").await.unwrap_or_default()
    }

    /// Waits until the follower's status is at `position`.
    async fn follower_at(&mut self, position: i64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let st = self.status().await;
            if st["applied_position"] == position && st["position_lag"] == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "follower not at {position}: {st}\n{}",
                self.follower.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn caught_up(&mut self) {
        let (l, r) = (self.s.leader.clone(), self.replica.clone());
        wait_until(Duration::from_secs(60), || same_rows(&l, &r)).await;
        self.follower_at(leader_position(&self.s.leader)).await;
    }

    /// Waits until `/status` says exactly these messages hold it back.
    async fn wait_held(&mut self, want: &[Poison]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let st = self.status().await;
            let got: Vec<Poison> = st["held_by"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .map(|h| Poison {
                            topic: h["topic"].as_str().unwrap_or_default().into(),
                            partition: h["partition"].as_i64().unwrap_or(-1) as i32,
                            offset: h["offset"].as_i64().unwrap_or(-1),
                            position: h["position"].as_i64().unwrap_or(-1),
                        })
                        .collect()
                })
                .unwrap_or_default();
            if got == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "held_by {got:?}, want {want:?}: {st}\n{}",
                self.follower.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `consumer dead-letters <args>` against the follower: (success, stdout, stderr).
    async fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let sub = args[0];
        let out = tokio::process::Command::new(binary("consumer"))
            .arg("dead-letters")
            .arg(sub)
            .args(["--follower", &self.url])
            .args(&args[1..])
            .output()
            .await
            .unwrap();
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        eprintln!("$ consumer dead-letters {}\n{o}{e}", args.join(" "));
        (out.status.success(), o, e)
    }

    fn at(p: &Poison) -> [String; 3] {
        [
            p.topic.clone(),
            p.partition.to_string(),
            p.offset.to_string(),
        ]
    }

    async fn metric(&self, name: &str) -> f64 {
        let body = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics:\n{body}"))
    }

    /// Restores the follower's registry from the producer's (current) one.
    async fn restore_registry(&mut self) {
        self.mirror.take().unwrap().shutdown().await.unwrap();
        copy_registry(self.s.dir.path(), &self.mirror_dir);
        self.mirror = Some(start_registry_at(&self.mirror_dir, self.mirror_addr).await);
    }

    /// Distinct leader positions stored in the data topics.
    fn changes_in_kafka(&self) -> usize {
        let mut positions = std::collections::HashSet::new();
        for t in ["customers", "everything"] {
            for (_, _, _, payload, headers) in
                read_topic(&self.s.brokers, &table_topic(&self.s.prefix, t))
            {
                if payload.is_none() {
                    continue;
                }
                if let Some((_, v)) = headers.iter().find(|(k, _)| k == HEADER_POSITION) {
                    positions.insert(v.clone());
                }
            }
        }
        positions.len()
    }

    async fn stop(mut self) {
        let s = self.follower.terminate(Duration::from_secs(30));
        assert!(s.success(), "consumer on SIGTERM: {s}");
        self.producer.stop().await.unwrap();
    }
}

/// A poison change inside the chain holds every later commit group, the
/// other table's included; `/status` (`held_by`), `/metrics` and
/// `consumer dead-letters list|show` name it; nothing after it is applied;
/// the replica keeps serving reads at the position before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_change_in_the_chain_holds_every_later_group_and_status_names_it() {
    let mut h = Held::start("held", 1).await;
    let p = h.poison[0].clone();
    assert_eq!(
        p.position,
        h.before_position + 1,
        "the first change of the poisoned transaction"
    );

    // Nothing after it is applied, in either table, however long we look.
    let head = leader_position(&h.s.leader);
    assert!(
        head >= h.before_position + 4,
        "the later groups exist: head {head}"
    );
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await; // sampling a steady state, not waiting for a condition
        assert_eq!(replica_position(&h.replica), h.before_position);
        assert_eq!(
            dump(&h.replica),
            h.before,
            "the replica moved past the poison"
        );
    }
    let st = h.status().await;
    assert_eq!(st["applied_position"], h.before_position);
    assert_eq!(st["position_lag"], head - h.before_position, "{st}");
    let held = &st["held_by"][0];
    assert!(held["error"].as_str().unwrap().contains("schema"), "{held}");
    assert!(held["since"].as_i64().unwrap() > 0, "{held}");
    let key = format!("{}/{}", p.topic, p.partition);
    assert!(
        st["partitions"][&key]["blocked"]
            .as_str()
            .unwrap()
            .contains(&format!("offset {}", p.offset)),
        "{st}"
    );
    assert_eq!(h.metric("barista_follower_held_messages").await, 1.0);

    // The replica still serves reads, at the position before the poison.
    let id = h.ids[0];
    let row = h
        .get(&format!("/tables/customers/row?id={id}"))
        .await
        .unwrap();
    assert_eq!(row["position"], h.before_position, "{row}");
    assert_eq!(row["found"], true, "{row}");
    assert_ne!(row["row"]["coffee"], "poison", "{row}");

    // The operator's view.
    let (ok, out, _) = h.cli(&["list"]).await;
    assert!(ok);
    let line = out.lines().nth(1).unwrap_or_default();
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cols[..5],
        [
            "yes",
            p.topic.as_str(),
            &p.partition.to_string(),
            &p.offset.to_string(),
            &p.position.to_string()
        ],
        "{out}"
    );
    let [t, pa, o] = Held::at(&p);
    let (ok, out, _) = h.cli(&["show", &t, &pa, &o]).await;
    assert!(ok);
    assert!(out.contains(&format!("position:  {}", p.position)), "{out}");
    assert!(
        out.contains(&format!("{HEADER_POSITION}: {}", p.position)),
        "{out}"
    );
    assert!(out.contains("held:      yes"), "{out}");
    assert!(out.contains("key (hex): 00"), "a framed key: {out}");
    // The dead-letter topic has its copy.
    let dlq = read_topic(&h.s.brokers, &dead_letter_topic(&h.s.prefix));
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    h.stop().await;
}

/// Replay: while the cause is not fixed it says why and the message stays
/// held; once the follower's registry is restored, one message replayed by
/// name and the other by `--all` decode, enter their chains, and the held
/// groups are applied once: the replica ends equal to the leader row for
/// row, the new column included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_after_the_registry_is_restored_applies_the_held_groups_once() {
    let mut h = Held::start("replay", 2).await;
    let p = h.poison[0].clone();
    let [t, pa, o] = Held::at(&p);

    let (ok, _, err) = h.cli(&["replay", &t, &pa, &o]).await;
    assert!(!ok, "replay must fail while the schema is missing");
    assert!(
        err.contains("still cannot be decoded") && err.contains("still held"),
        "{err}"
    );
    h.wait_held(&h.poison.clone()).await;
    assert_eq!(replica_position(&h.replica), h.before_position);

    h.restore_registry().await;
    let (ok, out, err) = h.cli(&["replay", &t, &pa, &o]).await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("replayed") && out.contains("still held by"),
        "{out}"
    );
    assert_eq!(
        replica_position(&h.replica),
        h.before_position,
        "the group also waits for the second"
    );
    let (ok, out, err) = h.cli(&["replay", "--all"]).await;
    assert!(ok, "{out}{err}");
    let q = &h.poison[1];
    assert!(
        out.contains(&format!(
            "{}/{} offset {} replayed",
            q.topic, q.partition, q.offset
        )) && out.contains("nothing holds"),
        "{out}"
    );
    h.caught_up().await;
    same_rows(&h.s.leader, &h.replica).unwrap();
    h.wait_held(&[]).await;
    assert_eq!(h.metric("barista_follower_held_messages").await, 0.0);
    let st = h.status().await;
    assert_eq!(
        st["changes_applied"].as_u64().unwrap() as usize,
        h.changes_in_kafka(),
        "every change applied exactly once: {st}"
    );
    assert_eq!(st["dead_letters"], 2, "{st}");
    let (_, out, _) = h.cli(&["list"]).await;
    assert!(out.lines().nth(1).unwrap().starts_with("no "), "{out}");
    assert!(out.contains("replayed: decoded as position"), "{out}");
    let (ok, _, err) = h.cli(&["skip", &t, &pa, &o, "--reason", "too late"]).await;
    assert!(
        !ok && err.contains("409") && err.contains("holds nothing back"),
        "{err}"
    );
    h.stop().await;
}

/// Skip: two poison changes of one leader transaction on two partitions.
/// Skipping the first records it in the replica but releases nothing yet
/// (the group also waits for the second); a restart reads the first again
/// from the stored offset and does not hold on it; skipping the second
/// releases every held group. The replica then equals the leader except the
/// two skipped changes' effects, and a second restart holds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skip_records_the_decision_in_the_replica_and_survives_a_restart() {
    let mut h = Held::start("skip", 2).await;
    let (a, b) = (h.poison[0].clone(), h.poison[1].clone());

    let [t, pa, o] = Held::at(&a);
    let (ok, _, err) = h.cli(&["skip", &t, &pa, &o, "--reason", " "]).await;
    assert!(
        !ok && err.contains("reason"),
        "a skip needs a reason: {err}"
    );
    let reason_a = "schema lost with the registry backup; ticket OPS-1";
    let (ok, out, err) = h.cli(&["skip", &t, &pa, &o, "--reason", reason_a]).await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!(
            "still held by {}/{} offset {}",
            b.topic, b.partition, b.offset
        )),
        "{out}"
    );
    h.wait_held(std::slice::from_ref(&b)).await;
    assert_eq!(
        replica_position(&h.replica),
        h.before_position,
        "the group still waits for the second"
    );
    assert!(
        replica_offset(&h.replica, &a.topic, a.partition).unwrap() <= a.offset,
        "the stored offset is still at (or before) the first poison"
    );

    // A restart reads the first poison again: it does not hold again.
    let st = h.follower.terminate(Duration::from_secs(30));
    assert!(st.success(), "{st}");
    h.follower.restart();
    h.wait_held(std::slice::from_ref(&b)).await;
    let st = h.status().await;
    assert_eq!(
        st["dead_letters"], 1,
        "only the second is dead-lettered again: {st}"
    );

    let [t, pb, o] = Held::at(&b);
    let reason_b = "same lost schema; ticket OPS-1";
    let (ok, out, err) = h.cli(&["skip", &t, &pb, &o, "--reason", reason_b]).await;
    assert!(ok && out.contains("nothing holds"), "{out}{err}");
    h.follower_at(leader_position(&h.s.leader)).await;
    h.wait_held(&[]).await;
    // Knowingly different from the leader: not compared with its checksums
    // (no false divergence), and said so.
    let st = h.status().await;
    assert_eq!(st["unverified"], serde_json::json!(["customers"]), "{st}");
    assert!(st.get("diverged").is_none(), "{st}");

    // The replica: the leader, except the skipped changes' effects. Its
    // customers table never saw the new schema (no column `stamps`), and
    // the two rows keep their values from before the skipped update.
    let (leader, replica) = (dump(&h.s.leader), dump(&h.replica));
    assert_eq!(leader["everything"], replica["everything"]);
    assert_eq!(replica["customers"], h.before["customers"]);
    let projected: Vec<Vec<SqlValue>> = leader["customers"]
        .iter()
        .map(|r| r[..3].to_vec())
        .collect();
    let differ: Vec<i64> = projected
        .iter()
        .zip(&replica["customers"])
        .filter(|(l, r)| l != r)
        .map(|(l, _)| match l[0] {
            SqlValue::Integer(id) => id,
            ref v => panic!("{v:?}"),
        })
        .collect();
    assert_eq!(projected.len(), replica["customers"].len());
    assert_eq!(differ, h.ids, "exactly the skipped changes' rows differ");
    for r in &replica["customers"] {
        if let SqlValue::Integer(id) = r[0] {
            if h.ids.contains(&id) {
                assert_ne!(r[2], SqlValue::Text("poison".into()));
            }
        }
    }

    // The skips, in the replica, with reason and time.
    let conn = Connection::open_with_flags(&h.replica, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let skipped: Vec<SkipRow> = conn
        .prepare(
            "SELECT topic, partition, offset, position, reason, error, replica_position, skipped_at \
             FROM _barista_skipped ORDER BY position",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    for (row, (p, reason)) in skipped.iter().zip([(&a, reason_a), (&b, reason_b)]) {
        assert_eq!(
            (&row.0, row.1, row.2, row.3),
            (&p.topic, p.partition, p.offset, p.position)
        );
        assert_eq!(row.4, reason);
        assert!(row.5.contains("schema"), "{row:?}");
        assert_eq!(row.6, h.before_position);
        assert!(
            row.7.len() >= 20 && row.7.ends_with('Z'),
            "a UTC time: {}",
            row.7
        );
    }
    drop(conn);

    // Another restart: nothing holds, nothing is dead-lettered again.
    h.follower.terminate(Duration::from_secs(30));
    h.follower.restart();
    h.follower_at(leader_position(&h.s.leader)).await;
    let st = h.status().await;
    assert_eq!(st["held_by"], serde_json::json!([]), "{st}");
    assert_eq!(st["dead_letters"], 0, "{st}");
    assert_eq!(st["unverified"], serde_json::json!(["customers"]), "{st}");
    assert!(st.get("diverged").is_none(), "{st}");
    h.stop().await;
}
