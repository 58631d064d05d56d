//! The read-path fixture: a leader (optionally behind the coffee shop's
//! leader service), the mock cluster, the registry, the producer and
//! followers serving HTTP on ports bound up front.

use std::path::{Path, PathBuf};

use barista_registry::RunningRegistry;
use rdkafka::mocking::MockCluster;
use rusqlite::Connection;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::*;

/// A leader, the mock cluster, the registry, the producer, followers serving
/// HTTP, and optionally the shop.
pub struct Shop {
    pub dir: tempfile::TempDir,
    pub leader: PathBuf,
    pub cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    pub registry: RunningRegistry,
    pub producer: RunningProducer,
    pub followers: Vec<(RunningFollower, String)>,
    pub shop_url: Option<String>,
    pub shop_stop: CancellationToken,
    pub http: reqwest::Client,
    /// The topic prefix.
    pub prefix: String,
}

impl Shop {
    /// `schema` runs on the leader before capture; `with_shop` starts the
    /// coffee shop's leader service on it.
    pub async fn start(schema: impl FnOnce(&Path), followers: usize, with_shop: bool) -> Shop {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let leader = dir.path().join("leader.db");
        schema(&leader);
        let cluster = MockCluster::new(1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let registry = start_registry(dir.path()).await;
        let prefix = unique("reads");
        let tables: Vec<String> = Connection::open(&leader)
            .unwrap()
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let t: Vec<&str> = tables.iter().map(String::as_str).collect();
        create_topics(&cluster, &prefix, &t);
        let producer =
            RunningProducer::start(producer_config(&leader, &brokers, registry.url(), &prefix));
        let followers = (1..=followers)
            .map(|i| {
                let c = follower_config(
                    &dir.path().join(format!("r{i}.db")),
                    &unique("f"),
                    &brokers,
                    registry.url(),
                    &prefix,
                );
                let (f, addr) = RunningFollower::serving(c);
                (f, format!("http://{addr}"))
            })
            .collect();
        wait_for_capture(&leader).await;
        let shop_stop = CancellationToken::new();
        let shop_url = if with_shop {
            let (addr, _) = barista_shop::spawn(
                leader.clone(),
                "127.0.0.1:0".parse().unwrap(),
                shop_stop.clone().cancelled_owned(),
            )
            .await
            .unwrap();
            Some(format!("http://{addr}"))
        } else {
            None
        };
        let s = Shop {
            dir,
            leader,
            cluster,
            registry,
            producer,
            followers,
            shop_url,
            shop_stop,
            http: reqwest::Client::new(),
            prefix,
        };
        s.caught_up().await;
        s
    }

    /// Every follower holds exactly the leader's rows.
    pub async fn caught_up(&self) {
        for (f, _) in &self.followers {
            let r = f.replica.clone();
            wait_until(Duration::from_secs(60), || same_rows(&self.leader, &r)).await;
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.followers.iter().map(|f| f.1.clone()).collect()
    }

    pub async fn admin(&self, follower: usize, what: &str) {
        let r = self
            .http
            .post(format!("{}/admin/{what}", self.followers[follower].1))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{what}: {}", r.status());
    }

    pub async fn stop(self) {
        self.shop_stop.cancel();
        for (f, _) in self.followers {
            f.stop().await.unwrap();
        }
        self.producer.stop().await.unwrap();
        self.registry.shutdown().await.unwrap();
        drop(self.cluster);
        drop(self.dir);
    }
}
