//! barista's consumers: the follower side of the pipeline.
//!
//! Kafka ─► decode (writer schema from the registry) ─► chain per partition ─►
//! commit groups, applied whole ─► replica.db (one transaction with offsets
//! and position); lag, status and reads over HTTP.
//!
//! Modules in dataflow order:

/// Validated configuration.
pub mod config;
/// The consumer, topics, assignment from stored offsets, watermarks.
pub mod kafka;
/// Confluent-framed Avro → changes and commit records; registry retries.
pub mod decode;
/// Per partition, pure: duplicate, gap, blocked; the restart offset.
pub mod chain;
/// Leader epochs: a replaced leader's changes past the takeover are ignored.
pub mod fence;
/// Commit groups, pure: completeness → the plan of one replica transaction.
pub mod groups;
/// The replica file and the apply transaction.
pub mod replica;
/// Table checksums kept in the apply transaction and compared at commit.
pub mod checksums;
/// Verification on demand: every table recomputed, or compared with a peer.
pub mod verify;
/// Poison messages → the dead-letter topic.
pub mod dead_letter;
/// Dead letters for operators: which hold the chain back; replay and skip.
pub mod held;
/// The loop that feeds the cores and carries out their plans.
pub mod follower;
/// The applied position and its freshness, published to everything else.
pub mod state;
/// Lag in offsets, positions and seconds; status; metrics.
pub mod lag;
/// Metrics, status, readiness and admin endpoints.
pub mod http;
/// The read API served from the replica.
pub mod serve;
/// `consumer dead-letters …`: the operator's client of the admin API.
pub mod dead_letters_cli;
/// `GET /snapshot`: a consistent, hashed copy of the replica for new followers.
pub mod snapshot;
/// Incremental snapshots of leader tables, as a follower applies them.
pub mod table_snapshots;
/// `--seed-from`: a new (or re-seeded) replica downloaded from a snapshot.
pub mod seed;
mod seed_install;
/// One follower per replica file: a lock the kernel releases however the holder exits.
pub mod replica_lock;
/// `consumer verify`: a replica's checksums recomputed, or compared with a peer.
pub mod verify_cli;

use std::future::Future;
use std::sync::Arc;

pub use config::FollowerConfig;
pub use state::{FollowerState, Shared};

/// Runs a follower with its HTTP endpoints until `shutdown` resolves.
pub async fn run(
    config: FollowerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shared = Shared::new(&config);
    run_with(config, shared, shutdown).await
}

/// Like [`run`], with shared state the caller keeps (tests, the demo); binds
/// `config.http_listen` when set.
pub async fn run_with(
    config: FollowerConfig,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = match config.http_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?,
        ),
        None => None,
    };
    run_on(listener, config, shared, shutdown).await
}

/// Like [`run_with`], serving HTTP on a listener the caller already bound
/// (tests bind port 0 and read the address back: no port race), or none.
pub async fn run_on(
    listener: Option<tokio::net::TcpListener>,
    config: FollowerConfig,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Seeded before anything serves or reads the replica: until then the
    // file is absent (or the old one) and nothing is ready.
    let mut shutdown = std::pin::pin!(shutdown);
    // Held until this returns: no second consumer writes, or re-seeds, this replica meanwhile.
    let _lock = replica_lock::acquire(&config.replica, replica_lock::LOCK_WAIT).await?;
    if !seed::seed_if_asked(&config, &mut shutdown).await? {
        return Ok(());
    }
    // Before HTTP: `/status` answers with the replica's own position from
    // its first request.
    let replica = follower::open(&config, &shared).await?;
    let token = tokio_util::sync::CancellationToken::new();
    let server = match listener {
        Some(listener) => {
            tracing::info!(addr = %listener.local_addr()?, "follower HTTP listening");
            let app = http::router(shared.clone());
            let t = token.clone();
            Some(tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { t.cancelled().await })
                    .await
            }))
        }
        None => None,
    };
    let r = follower::run(config, shared, replica, shutdown).await;
    token.cancel();
    if let Some(s) = server {
        let _ = s.await;
    }
    r
}
