//! Faults: the broker down mid-stream, the registry down, the producer killed.

use std::time::Duration;

use barista_tests::*;
use rdkafka::mocking::MockCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_down_mid_stream_loses_nothing() {
    let Setup {
        dir,
        leader,
        expected,
        cluster,
        brokers,
        registry,
        prefix,
    } = Setup::new_with(1, "down").await;
    let producer =
        RunningProducer::start(producer_config(&leader, &brokers, registry.url(), &prefix));
    let follower = RunningFollower::start(follower_config(
        &dir.path().join("r.db"),
        &unique("f"),
        &brokers,
        registry.url(),
        &prefix,
    ));
    wait_for_capture(&leader).await;
    let (l, mut exp) = (leader.clone(), expected.clone());
    let mut exp = tokio::task::spawn_blocking(move || {
        write_workload(&l, 11, 50, &mut exp);
        exp
    })
    .await
    .unwrap();
    let r = follower.replica.clone();
    wait_until(Duration::from_secs(60), || same_rows(&leader, &r)).await;

    cluster.broker_down(1).unwrap();
    let l = leader.clone();
    exp = tokio::task::spawn_blocking(move || {
        write_workload(&l, 12, 100, &mut exp);
        exp
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await; // the outage itself, not a wait for a condition
    cluster.broker_up(1).unwrap();

    wait_until(Duration::from_secs(90), || same_rows(&leader, &r)).await;
    assert!(!producer.is_finished(), "producer must survive the outage");
    check_events(&brokers, registry.url(), &prefix, "customers", &exp).await;
    check_events(&brokers, registry.url(), &prefix, "everything", &exp).await;
    follower.stop().await.unwrap();
    producer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_down_then_up_loses_nothing() {
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
    let url = format!("http://{addr}");
    let prefix = unique("reg");
    create_topics(&cluster, &prefix, &["customers", "everything"]);
    let producer = RunningProducer::start(producer_config(&leader, &brokers, &url, &prefix));
    let follower = RunningFollower::start(follower_config(
        &dir.path().join("r.db"),
        &unique("f"),
        &brokers,
        &url,
        &prefix,
    ));
    wait_for_capture(&leader).await;
    let (l, mut exp) = (leader.clone(), expected.clone());
    exp = tokio::task::spawn_blocking(move || {
        write_workload(&l, 21, 60, &mut exp);
        exp
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await; // the outage itself
    assert!(
        !producer.is_finished() && !follower.is_finished(),
        "both wait for the registry"
    );
    let registry = start_registry_at(dir.path(), addr).await;
    let r = follower.replica.clone();
    wait_until(Duration::from_secs(60), || same_rows(&leader, &r)).await;
    check_events(&brokers, registry.url(), &prefix, "customers", &exp).await;
    check_events(&brokers, registry.url(), &prefix, "everything", &exp).await;
    follower.stop().await.unwrap();
    producer.stop().await.unwrap();
}
