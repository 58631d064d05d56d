//! A follower never overstates its freshness: from its first second (before
//! Kafka was ever reached) it reports the replica's stored position, an
//! unknown seconds lag (`null`, no metric sample) and not ready; while it
//! catches up, its seconds lag is the age of the replica's position on the
//! leader's clock, not the leader's clock minus zero.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use barista_tests::process::free_port;
use barista_tests::*;
use serde_json::Value;

async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("http://{addr}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

async fn metrics_text(addr: SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Restarted while the broker is unreachable: the status, readiness, metrics
/// and reads all speak of the position the replica file holds, and nothing
/// claims the follower is current.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_restarted_without_kafka_reports_its_stored_position_and_is_not_ready() {
    let mut s = Setup::new_with(1, "cutoff").await;
    let producer = RunningProducer::start(s.producer_config());
    let fc = s.follower_config("r.db");
    let follower = RunningFollower::start(fc.clone());
    wait_for_capture(&s.leader).await;
    s.write(71, 30).await;
    s.caught_up(&follower).await;
    follower.stop().await.unwrap();
    producer.stop().await.unwrap();
    let at = replica_position(&s.dir.path().join("r.db"));
    assert!(at > 0);

    let mut cut_off = fc;
    cut_off.brokers = format!("127.0.0.1:{}", free_port()); // nobody listens
    let started = Instant::now();
    let (f, addr) = RunningFollower::serving(cut_off);
    wait_until_async(Duration::from_secs(5), || async move {
        match get(addr, "/status").await {
            (200, st) if st["applied_position"] == at => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the stored position shows at once"
    );
    let (_, st) = get(addr, "/status").await;
    assert!(
        st["seconds_lag"].is_null(),
        "never heard the leader: seconds lag is unknown, not 0: {st}"
    );
    let (code, ready) = get(addr, "/ready").await;
    assert_eq!(code, 503, "not ready before hearing the leader: {ready}");
    assert_eq!(ready["ready"], false);
    let m = metrics_text(addr).await;
    assert!(
        !m.lines()
            .any(|l| l.starts_with("barista_follower_seconds_lag")),
        "no seconds-lag sample while it is unknown:\n{m}"
    );
    assert!(
        m.lines()
            .any(|l| l == format!("barista_follower_applied_position {at}")),
        "{m}"
    );

    // The replica answers what it holds: a token at its position is served...
    let (code, read) = get(
        addr,
        &format!("/tables/customers/rows?min_position={at}&timeout_ms=200"),
    )
    .await;
    assert_eq!(code, 200, "{read}");
    assert_eq!(read["position"], at);
    assert!(read["lag"]["seconds_lag"].is_null(), "{read}");
    // ...and one past it is refused naming the real position.
    let (code, read) = get(
        addr,
        &format!(
            "/tables/customers/rows?min_position={}&timeout_ms=200",
            at + 1
        ),
    )
    .await;
    assert_eq!(code, 503, "{read}");
    assert_eq!(read["error"], "behind");
    assert_eq!(read["applied_position"], at);
    f.stop().await.unwrap();
}

/// A new follower that has heard the leader but applied nothing yet reports
/// how old its position is on the leader's clock: since the leader's first
/// commit group, a few seconds, not 1.8 × 10⁹ s. It is not ready above
/// `max_lag_seconds`, and reads zero once caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_follower_catching_up_reports_the_age_of_its_position() {
    let mut s = Setup::new_with(1, "age").await;
    let before_capture = Instant::now();
    let producer = RunningProducer::start(s.producer_config());
    wait_for_capture(&s.leader).await;
    let after_capture = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await; // the history's age under test
    s.write(72, 20).await;
    let head = leader_position(&s.leader);

    let mut fc = s.follower_config("new.db");
    fc.max_lag_seconds = 1.0;
    let (f, addr) = RunningFollower::serving_paused(fc);
    wait_until(Duration::from_secs(30), || {
        let st = f.status();
        (st.leader_position.0 == head)
            .then_some(())
            .ok_or(format!("leader at {head}: {st:?}"))
    })
    .await;
    let (_, st) = get(addr, "/status").await;
    let heard_at = Instant::now();
    assert_eq!(st["applied_position"], 0, "paused from the start: {st}");
    let lag = st["seconds_lag"]
        .as_f64()
        .unwrap_or_else(|| panic!("heard the leader: the lag is known: {st}"));
    let lo = heard_at.duration_since(after_capture).as_secs_f64() - 0.5;
    let hi = heard_at.duration_since(before_capture).as_secs_f64() + 1.0;
    assert!(
        (lo..hi).contains(&lag),
        "seconds lag {lag} should be the age of position 0 on the leader's clock, in {lo:.1}..{hi:.1}"
    );
    let (code, ready) = get(addr, "/ready").await;
    assert_eq!(code, 503, "{ready}");

    reqwest::Client::new()
        .post(format!("http://{addr}/admin/resume"))
        .send()
        .await
        .unwrap();
    s.caught_up(&f).await;
    let (code, ready) = get(addr, "/ready").await;
    assert_eq!(code, 200, "{ready}");
    f.stop().await.unwrap();
    producer.stop().await.unwrap();
}
