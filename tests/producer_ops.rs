//! Operating the producer (issue 14, issue 12): the real `producer` binary's `/metrics`,
//! `/status` and `/ready` while Kafka is down and after it returns, skipped tables listed with
//! their reason, and a producer started on a blank leader (`--create`) that waits for a table
//! and then replicates it.

use std::path::Path;
use std::time::Duration;

use barista_schemas::contract::table_topic;
use barista_tests::process::Proc;
use barista_tests::*;
use rdkafka::mocking::MockCluster;
use rusqlite::Connection;
use serde_json::Value;

use crate::crash::producer_args;

/// Starts the producer binary (listening on port 0, as `producer_args` asks) with `extra`
/// flags, and returns it with its HTTP base URL, read from its "producer HTTP listening" log
/// line: no port is guessed, so nothing can take it in between.
async fn start_producer(dir: &Path, name: &str, args: Vec<String>) -> (Proc, String) {
    let log = dir.join(format!("{name}.log"));
    let mut p = Proc::start("producer", args, &log);
    let mut url = String::new();
    wait_until(Duration::from_secs(30), || {
        p.assert_running();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let line = text
            .lines()
            .find(|l| l.contains("producer HTTP listening"))
            .ok_or("no 'producer HTTP listening' line yet")?;
        let at = line
            .find("127.0.0.1:")
            .ok_or(format!("no address in {line:?}"))?;
        let port: String = line[at + "127.0.0.1:".len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        url = format!("http://127.0.0.1:{port}");
        Ok(())
    })
    .await;
    (p, url)
}

/// Polls `cond` until it returns `Ok(value)`, while `p` must keep running; panics after
/// `timeout` with the last reason and the end of `p`'s log.
async fn until<T, F, Fut>(p: &mut Proc, timeout: Duration, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = std::time::Instant::now();
    loop {
        p.assert_running();
        match cond().await {
            Ok(v) => return v,
            Err(why) if start.elapsed() > timeout => {
                panic!(
                    "condition not met after {timeout:?}: {why}\n{}",
                    p.log_tail(30)
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// GET `url`: the status code and the body as JSON.
async fn get_json(url: &str) -> Result<(u16, Value), String> {
    let r = reqwest::get(url).await.map_err(|e| format!("{url}: {e}"))?;
    let code = r.status().as_u16();
    let body = r.json().await.map_err(|e| format!("{url}: {e}"))?;
    Ok((code, body))
}

/// The value of the sample `name` (no labels) in `/metrics`.
async fn metric(base: &str, name: &str) -> Result<f64, String> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(format!("{name} not in /metrics:\n{text}"))
}

/// `/status`'s `skipped` as (table, reason) pairs.
fn skipped(status: &Value) -> Vec<(String, String)> {
    status["skipped"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    (
                        t["table"].as_str().unwrap_or_default().to_owned(),
                        t["reason"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `/status`'s captured table names.
fn tables(status: &Value) -> Vec<String> {
    status["tables"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| t["table"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backlog_grows_and_ready_fails_while_kafka_is_down_then_both_recover() {
    let Setup {
        dir,
        leader,
        expected,
        cluster,
        brokers,
        registry,
        prefix,
    } = Setup::new_with(1, "opsdown").await;
    let mut args = producer_args(&leader, &brokers, registry.url(), &prefix);
    args.extend(["--ready-grace-ms".into(), "1500".into()]);
    let (mut producer, http) = start_producer(dir.path(), "producer", args).await;
    let follower = RunningFollower::start(follower_config(
        &dir.path().join("r.db"),
        &unique("f"),
        &brokers,
        registry.url(),
        &prefix,
    ));
    wait_for_capture(&leader).await;
    // The snapshot is acknowledged: nothing waits, ready.
    until(&mut producer, Duration::from_secs(60), || async {
        let (code, s) = get_json(&format!("{http}/ready")).await?;
        let rows = metric(&http, "barista_producer_backlog_rows").await?;
        let acked = metric(&http, "barista_producer_acked_position").await?;
        (code == 200 && rows == 0.0 && acked > 0.0)
            .then_some(())
            .ok_or(format!("ready {code} {s}, backlog {rows}, acked {acked}"))
    })
    .await;

    cluster.broker_down(1).unwrap();
    let l = leader.clone();
    let exp = tokio::task::spawn_blocking(move || {
        let mut exp = expected;
        write_workload(&l, 71, 60, &mut exp);
        exp
    })
    .await
    .unwrap();

    // The changelog grows beyond what Kafka acknowledged, and after the grace /ready says so.
    let first: (f64, f64) = until(&mut producer, Duration::from_secs(30), || async {
        // /ready first: while Kafka is down the age read after it can only be larger.
        let (code, body) = get_json(&format!("{http}/ready")).await?;
        let rows = metric(&http, "barista_producer_backlog_rows").await?;
        let age = metric(&http, "barista_producer_oldest_unacked_seconds").await?;
        (rows > 0.0 && code == 503)
            .then_some((rows, age))
            .ok_or(format!(
                "backlog {rows}, oldest {age}s, ready {code} {body}"
            ))
    })
    .await;
    assert!(
        first.1 > 1.5,
        "503 only after the 1.5 s grace: oldest {}s",
        first.1
    );
    let bytes = metric(&http, "barista_producer_backlog_bytes")
        .await
        .unwrap();
    assert!(bytes > 0.0, "backlog bytes {bytes}");
    // The oldest change keeps ageing while Kafka stays down.
    until(&mut producer, Duration::from_secs(30), || async {
        let age = metric(&http, "barista_producer_oldest_unacked_seconds").await?;
        let rows = metric(&http, "barista_producer_backlog_rows").await?;
        (age >= first.1 + 1.0 && rows >= first.0)
            .then_some(())
            .ok_or(format!(
                "oldest {age}s (first {}s), backlog {rows}",
                first.1
            ))
    })
    .await;
    let (code, s) = get_json(&format!("{http}/status")).await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(s["state"], "publishing_blocked", "{s}");
    assert!(s["backlog_rows"].as_i64().unwrap() > 0, "{s}");
    assert!(
        s["leader_position"].as_i64() > s["acked_position"].as_i64(),
        "{s}"
    );

    cluster.broker_up(1).unwrap();
    until(&mut producer, Duration::from_secs(90), || async {
        let rows = metric(&http, "barista_producer_backlog_rows").await?;
        let age = metric(&http, "barista_producer_oldest_unacked_seconds").await?;
        let (code, body) = get_json(&format!("{http}/ready")).await?;
        (rows == 0.0 && age == 0.0 && code == 200)
            .then_some(())
            .ok_or(format!(
                "backlog {rows}, oldest {age}s, ready {code} {body}"
            ))
    })
    .await;
    let r = follower.replica.clone();
    wait_until(Duration::from_secs(90), || same_rows(&leader, &r)).await;
    let (_, s) = get_json(&format!("{http}/status")).await.unwrap();
    assert_eq!(s["state"], "capturing", "{s}");
    assert_eq!(s["acked_position"], s["leader_position"], "{s}");
    assert!(s["last_ack_at_ms"].as_i64().unwrap() > 0, "{s}");
    check_events(&brokers, registry.url(), &prefix, "customers", &exp).await;
    follower.stop().await.unwrap();
    let status = producer.terminate(Duration::from_secs(30));
    assert!(status.success(), "SIGTERM: drain and exit 0, got {status}");
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_lists_skipped_tables_with_their_reason_including_ones_created_while_running() {
    let s = Setup::new_with(1, "skip").await;
    // Leader A, every table: one without a key, two whose names make the same topic.
    Connection::open(&s.leader)
        .unwrap()
        .execute_batch(
            r#"CREATE TABLE loose(a, b);
               CREATE TABLE "odd names"(id INTEGER PRIMARY KEY);
               CREATE TABLE odd_names(id INTEGER PRIMARY KEY);"#,
        )
        .unwrap();
    let odd_topic = table_topic(&s.prefix, "odd names");
    s.cluster.create_topic(&odd_topic, 3, 1).unwrap();
    let (mut a, http_a) = start_producer(
        s.dir.path(),
        "producer-a",
        producer_args(&s.leader, &s.brokers, s.registry.url(), &s.prefix),
    )
    .await;
    // Leader B, `--tables customers`.
    let leader_b = s.dir.path().join("leader-b.db");
    seed(&leader_b, &mut Expected::new());
    let prefix_b = unique("skipb");
    create_topics(&s.cluster, &prefix_b, &["customers"]);
    let mut args = producer_args(&leader_b, &s.brokers, s.registry.url(), &prefix_b);
    args.extend(["--tables".into(), "customers".into()]);
    let (mut b, http_b) = start_producer(s.dir.path(), "producer-b", args).await;

    let status = |url: String| async move {
        let (_, s) = get_json(&format!("{url}/status")).await?;
        Ok::<Value, String>(s)
    };
    let no_key = "no primary key".to_owned();
    let not_listed = "not in --tables".to_owned();
    until(&mut a, Duration::from_secs(60), || async {
        let st = status(http_a.clone()).await?;
        let skipped = skipped(&st);
        let clash = skipped.iter().any(|(t, r)| {
            t == "odd_names" && r.contains("topic name clash") && r.contains("odd names")
        });
        (st["state"] == "capturing"
            && tables(&st) == ["customers", "everything", "odd names"]
            && skipped.contains(&("loose".into(), no_key.clone()))
            && clash
            && skipped.len() == 2)
            .then_some(())
            .ok_or(format!("producer A: {st}"))
    })
    .await;
    until(&mut b, Duration::from_secs(60), || async {
        let st = status(http_b.clone()).await?;
        (st["state"] == "capturing"
            && tables(&st) == ["customers"]
            && skipped(&st) == [("everything".into(), not_listed.clone())])
        .then_some(())
        .ok_or(format!("producer B: {st}"))
    })
    .await;

    // Tables created while they run.
    Connection::open(&s.leader)
        .unwrap()
        .execute_batch("CREATE TABLE loose_later(x, y); INSERT INTO loose_later VALUES (1, 2);")
        .unwrap();
    Connection::open(&leader_b)
        .unwrap()
        .execute_batch("CREATE TABLE extra(id INTEGER PRIMARY KEY); INSERT INTO extra VALUES (1);")
        .unwrap();
    until(&mut a, Duration::from_secs(30), || async {
        let st = status(http_a.clone()).await?;
        let n = metric(&http_a, "barista_producer_tables_skipped").await?;
        (skipped(&st).contains(&("loose_later".into(), no_key.clone())) && n == 3.0)
            .then_some(())
            .ok_or(format!("producer A ({n} skipped): {st}"))
    })
    .await;
    until(&mut b, Duration::from_secs(30), || async {
        let st = status(http_b.clone()).await?;
        let n = metric(&http_b, "barista_producer_tables_skipped").await?;
        let want = vec![
            ("everything".to_owned(), not_listed.clone()),
            ("extra".to_owned(), not_listed.clone()),
        ];
        (skipped(&st) == want && n == 2.0 && tables(&st) == ["customers"])
            .then_some(())
            .ok_or(format!("producer B ({n} skipped): {st}"))
    })
    .await;
    assert_eq!(
        metric(&http_a, "barista_producer_tables_captured")
            .await
            .unwrap(),
        3.0
    );
    for p in [&mut a, &mut b] {
        let st = p.terminate(Duration::from_secs(30));
        assert!(st.success(), "SIGTERM: {st}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blank_leader_waits_for_a_table_then_replicates_it_row_for_row() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let leader = dir.path().join("blank.db");
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let registry = start_registry(dir.path()).await;
    let prefix = unique("blank");
    create_topics(&cluster, &prefix, &["menu"]);
    assert!(!leader.exists());
    let mut args = producer_args(&leader, &brokers, registry.url(), &prefix);
    args.push("--create".into());
    let (mut producer, http) = start_producer(dir.path(), "producer", args).await;
    let follower = RunningFollower::start(follower_config(
        &dir.path().join("r.db"),
        &unique("f"),
        &brokers,
        registry.url(),
        &prefix,
    ));

    // Up, with nothing to capture: waiting, and ready (nothing to publish is no failure).
    until(&mut producer, Duration::from_secs(60), || async {
        let (_, st) = get_json(&format!("{http}/status")).await?;
        let (code, ready) = get_json(&format!("{http}/ready")).await?;
        (st["state"] == "waiting_for_tables" && code == 200)
            .then_some(())
            .ok_or(format!("status {st}; ready {code} {ready}"))
    })
    .await;
    assert!(leader.exists(), "--create made the leader");
    // A table without a key changes nothing but the skipped list.
    let app = Connection::open(&leader).unwrap();
    app.execute_batch(
        "CREATE TABLE notes(body TEXT, at INTEGER); INSERT INTO notes VALUES ('hello', 1);",
    )
    .unwrap();
    until(&mut producer, Duration::from_secs(30), || async {
        let (_, st) = get_json(&format!("{http}/status")).await?;
        (st["state"] == "waiting_for_tables"
            && skipped(&st) == [("notes".into(), "no primary key".into())])
        .then_some(())
        .ok_or(format!("status {st}"))
    })
    .await;

    // A table with a key: captured, snapshot and stream, replicated row for row.
    app.execute_batch(
        "BEGIN;
         CREATE TABLE menu(id INTEGER PRIMARY KEY, item TEXT NOT NULL, price REAL, photo BLOB);
         INSERT INTO menu VALUES (1, 'espresso', 2.2, x'00ff'), (2, 'cortado', 2.8, NULL);
         COMMIT;",
    )
    .unwrap();
    until(&mut producer, Duration::from_secs(30), || async {
        let (_, st) = get_json(&format!("{http}/status")).await?;
        (st["state"] == "capturing" && tables(&st) == ["menu"])
            .then_some(())
            .ok_or(format!("status {st}"))
    })
    .await;
    app.execute_batch(
        "INSERT INTO menu VALUES (3, 'flat white', 3.1, NULL);
         UPDATE menu SET price = 2.4 WHERE id = 1;
         DELETE FROM menu WHERE id = 2;",
    )
    .unwrap();
    // The replica has the captured table only: compare it alone.
    let r = follower.replica.clone();
    wait_until(Duration::from_secs(60), || {
        let (l, f) = (dump(&leader), dump(&r));
        (l.contains_key("menu") && l.get("menu") == f.get("menu"))
            .then_some(())
            .ok_or(format!(
                "leader menu {:?}, replica menu {:?}",
                l.get("menu"),
                f.get("menu")
            ))
    })
    .await;
    assert_eq!(
        dump(&r).keys().collect::<Vec<_>>(),
        ["menu"],
        "only the captured table reaches the replica"
    );
    follower.stop().await.unwrap();
    let status = producer.terminate(Duration::from_secs(30));
    assert!(status.success(), "SIGTERM: drain and exit 0, got {status}");
    registry.shutdown().await.unwrap();
}

/// The library's `run_on` with a listener bound first, and the registry as the cause: while it
/// is down nothing can be encoded, so nothing is acknowledged and `/ready` says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ready_fails_naming_the_registry_while_it_is_down_then_recovers() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let leader = dir.path().join("leader.db");
    let mut expected = Expected::new();
    seed(&leader, &mut expected);
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    // Reserve a port, leave it closed: the registry is down.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let prefix = unique("regops");
    create_topics(&cluster, &prefix, &["customers", "everything"]);
    let mut config = producer_config(&leader, &brokers, &format!("http://{addr}"), &prefix);
    config.ready_grace = Duration::from_millis(1000);
    let (producer, http) = RunningProducer::serving(config);
    let http = format!("http://{http}");

    // The snapshot waits for the registry: after the grace, 503 with the registry's error.
    wait_until_async(Duration::from_secs(30), || async {
        let (code, body) = get_json(&format!("{http}/ready")).await?;
        let errors = metric(&http, "barista_producer_registry_errors_total").await?;
        let named = body["last_registry_error"]["error"]
            .as_str()
            .is_some_and(|e| e.contains(&addr.to_string()));
        (code == 503 && body["backlog_rows"].as_i64() > Some(0) && named && errors > 0.0)
            .then_some(())
            .ok_or(format!("ready {code} {body}, {errors} registry errors"))
    })
    .await;
    assert!(
        !producer.is_finished(),
        "the producer waits for the registry"
    );

    let registry = start_registry_at(dir.path(), addr).await;
    wait_until_async(Duration::from_secs(60), || async {
        let (code, body) = get_json(&format!("{http}/ready")).await?;
        (code == 200 && body["backlog_rows"] == 0 && body["state"] == "capturing")
            .then_some(())
            .ok_or(format!("ready {code} {body}"))
    })
    .await;
    producer.stop().await.unwrap();
    registry.shutdown().await.unwrap();
}
