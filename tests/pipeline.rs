//! The whole pipeline on the mock cluster: every storage class, multi-row
//! transactions from a writer that is not the producer, two followers.

use std::time::Duration;

use barista_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_write_reaches_kafka_and_two_replicas_row_for_row() {
    let Setup {
        dir,
        leader,
        expected,
        cluster: _cluster,
        brokers,
        registry,
        prefix,
    } = Setup::new_with(3, "e2e").await;
    let producer =
        RunningProducer::start(producer_config(&leader, &brokers, registry.url(), &prefix));
    let followers: Vec<RunningFollower> = (1..=2)
        .map(|i| {
            RunningFollower::start(follower_config(
                &dir.path().join(format!("r{i}.db")),
                &unique("f"),
                &brokers,
                registry.url(),
                &prefix,
            ))
        })
        .collect();

    wait_for_capture(&leader).await;
    let l = leader.clone();
    let mut exp = expected.clone();
    let exp = tokio::task::spawn_blocking(move || {
        write_workload(&l, 7, 300, &mut exp);
        exp
    })
    .await
    .unwrap();

    for f in &followers {
        let r = f.replica.clone();
        wait_until(Duration::from_secs(60), || same_rows(&leader, &r)).await;
    }
    for f in &followers {
        wait_until(Duration::from_secs(10), || {
            let s = f.status();
            (s.position_lag == 0
                && s.seconds_lag == Some(0.0)
                && s.offset_lag == 0
                && s.applied_position.0 > 0)
                .then_some(())
                .ok_or(format!("lag not zero: {s:?}"))
        })
        .await;
        assert_eq!(f.status().dead_letters, 0);
    }
    check_events(&brokers, registry.url(), &prefix, "customers", &exp).await;
    check_events(&brokers, registry.url(), &prefix, "everything", &exp).await;

    // The changelog is pruned down to its newest row once Kafka acknowledged.
    wait_until(Duration::from_secs(10), || changelog_pruned(&leader)).await;
    for f in followers {
        f.stop().await.unwrap();
    }
    producer.stop().await.unwrap();
    registry.shutdown().await.unwrap();
}
