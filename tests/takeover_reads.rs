//! Issue 17: the history checker of `reads.rs` across a planned takeover. Three clients order
//! through the shop and read through sticky sessions (with tokens) while the leader is
//! switched: writes paused, `--drain`, a follower promoted, a shop started on the new leader,
//! every session told its address. Zero read-your-writes and zero monotonic-read violations,
//! across the takeover. (The producers and followers run in process on the mock cluster.)

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use barista_client::{Session, SessionConfig};
use barista_tests::*;
use rand::{Rng, SeedableRng};
use rusqlite::Connection;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::reads::{check, coffee_shop, Event, Violations, CUSTOMERS};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_with_tokens_has_no_violation_across_a_takeover() {
    let Shop {
        dir,
        leader,
        cluster,
        registry,
        producer,
        mut followers,
        shop_url,
        shop_stop,
        prefix,
        ..
    } = Shop::start(coffee_shop, 3, true).await;
    let brokers = cluster.bootstrap_servers();
    let urls: Vec<String> = followers.iter().map(|f| f.1.clone()).collect();
    let history = Arc::new(Mutex::new(Vec::new()));
    let ops = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Writes pause while the leader is switched; `writing` counts writes in flight.
    let writes = Arc::new(AtomicBool::new(true));
    let writing = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    let mut sessions = Vec::new();
    for client in 0..3usize {
        let mut cfg = SessionConfig::new(urls.clone(), shop_url.clone().unwrap());
        cfg.wait = Duration::from_secs(2);
        let session = Arc::new(Session::new(cfg).unwrap());
        sessions.push(session.clone());
        let (history, ops, stop, writes, writing) = (
            history.clone(),
            ops.clone(),
            stop.clone(),
            writes.clone(),
            writing.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(70 + client as u64);
            let mut mine = 1 + client as i64;
            while !stop.load(Ordering::SeqCst) {
                let key = if rng.random_bool(0.5) {
                    mine
                } else {
                    rng.random_range(1..=CUSTOMERS)
                };
                writing.fetch_add(1, Ordering::SeqCst);
                if rng.random_ratio(1, 4) && writes.load(Ordering::SeqCst) {
                    mine = key;
                    let v = session
                        .write(
                            "orders",
                            &json!({ "customer_id": key, "coffee": format!("c{client}") }),
                        )
                        .await
                        .unwrap();
                    writing.fetch_sub(1, Ordering::SeqCst);
                    history.lock().unwrap().push(Event::Write {
                        client,
                        key,
                        version: v["visits"].as_i64().unwrap(),
                        token: v["token"].as_i64().unwrap(),
                    });
                } else {
                    writing.fetch_sub(1, Ordering::SeqCst);
                    let a = session
                        .get_row("customers", &[("id", &key.to_string())])
                        .await
                        .unwrap();
                    let version = a
                        .row()
                        .and_then(|r| r.get("visits"))
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    history.lock().unwrap().push(Event::Read {
                        client,
                        key,
                        version,
                        position: a.position,
                        server: a.served_by,
                    });
                }
                ops.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let after = |n: u64| {
        let ops = ops.clone();
        move || {
            let o = ops.load(Ordering::SeqCst);
            (o >= n)
                .then_some(())
                .ok_or(format!("{o} of {n} operations"))
        }
    };
    wait_until(Duration::from_secs(120), after(200)).await;

    // The switchover, as README's procedure says: stop writes, drain, promote, point writes
    // at the new leader. Reads go on throughout.
    writes.store(false, Ordering::SeqCst);
    wait_until(Duration::from_secs(30), || {
        let n = writing.load(Ordering::SeqCst);
        (n == 0)
            .then_some(())
            .ok_or(format!("{n} writes in flight"))
    })
    .await;
    producer.stop().await.unwrap();
    let mut drain = producer_config(&leader, &brokers, registry.url(), &prefix);
    drain.drain = true;
    let drained = RunningProducer::start(drain);
    wait_until(Duration::from_secs(60), || {
        drained
            .is_finished()
            .then_some(())
            .ok_or("draining".to_owned())
    })
    .await;
    drained.stop().await.unwrap();
    for (f, _) in &followers {
        let r = f.replica.clone();
        wait_until(Duration::from_secs(60), || same_rows(&leader, &r)).await;
    }
    let (first, _) = followers.remove(0);
    let new = first.replica.clone();
    first.stop().await.unwrap();
    let mut promote = producer_config(&new, &brokers, registry.url(), &prefix);
    promote.promote = true;
    promote.db_name = "leader".into();
    let promoted = RunningProducer::start(promote);
    wait_until(Duration::from_secs(60), || {
        let state = |key: &str| -> Option<i64> {
            Connection::open(&new)
                .unwrap()
                .query_row(
                    "SELECT value FROM _barista_state WHERE key = ?1",
                    [key],
                    |r| r.get(0),
                )
                .ok()
        };
        match (state("epoch"), state("takeover_pending")) {
            (Some(1), None) if !promoted.is_finished() => Ok(()),
            other => Err(format!("epoch, takeover record pending: {other:?}")),
        }
    })
    .await;
    let new_shop_stop = CancellationToken::new();
    let (addr, _) = barista_shop::spawn(
        new.clone(),
        "127.0.0.1:0".parse().unwrap(),
        new_shop_stop.clone().cancelled_owned(),
    )
    .await
    .unwrap();
    shop_stop.cancel();
    for s in &sessions {
        s.follow_leader(format!("http://{addr}"));
    }
    let before = ops.load(Ordering::SeqCst);
    writes.store(true, Ordering::SeqCst);
    wait_until(Duration::from_secs(120), after(before + 200)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    let history = history.lock().unwrap().clone();
    let takeover_tokens = history
        .iter()
        .filter_map(|e| match e {
            Event::Write { token, .. } => Some(*token),
            _ => None,
        })
        .collect::<Vec<_>>();
    let v = check(&history);
    let stats: Vec<_> = sessions.iter().map(|s| s.stats()).collect();
    eprintln!(
        "ACROSS A TAKEOVER: {} operations, {} writes (tokens up to {:?}), read-your-writes violations {}, monotonic-read violations {}, sessions {stats:?}",
        history.len(),
        takeover_tokens.len(),
        takeover_tokens.iter().max(),
        v.read_your_writes,
        v.monotonic
    );
    assert_eq!(v, Violations::default(), "history: {history:?}");
    // Writes on both sides of the takeover.
    let new_head: i64 = Connection::open(&new)
        .unwrap()
        .query_row(
            "SELECT value FROM _barista_state WHERE key = 'takeover'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(takeover_tokens.iter().any(|t| *t < new_head));
    assert!(takeover_tokens.iter().any(|t| *t >= new_head));
    for (f, _) in &followers {
        let r = f.replica.clone();
        wait_until(Duration::from_secs(60), || same_rows(&new, &r)).await;
        assert_eq!(f.status().epoch, 1);
    }
    new_shop_stop.cancel();
    for (f, _) in followers {
        f.stop().await.unwrap();
    }
    promoted.stop().await.unwrap();
    registry.shutdown().await.unwrap();
    drop(cluster);
    drop(dir);
}
