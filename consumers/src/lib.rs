//! barista's consumers: the follower side of the pipeline.
//!
//! Kafka ─► decode (writer schema from the registry) ─► buffer until a commit
//! group is whole ─► apply (one replica transaction with offsets and
//! position) ─► replica.db; lag, status and reads over HTTP.

/// Confluent-framed Avro → changes and commit records.
pub mod decode;
/// The consume → apply loop.
pub mod follower;
/// Metrics, status, readiness and admin endpoints.
pub mod http;
/// Lag in offsets, positions and seconds; metrics.
pub mod lag;
/// Rows over HTTP with the position they were read at; consistency options.
pub mod reads;
/// The replica file and the apply transaction.
pub mod replica;

use std::future::Future;
use std::sync::Arc;

pub use follower::{FollowerConfig, Shared};

/// Runs a follower with its HTTP endpoints until `shutdown` resolves.
pub async fn run(
    config: FollowerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shared = Shared::new(&config);
    run_with(config, shared, shutdown).await
}

/// Like [`run`], with shared state the caller keeps (tests, the demo).
pub async fn run_with(
    config: FollowerConfig,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = tokio_util::sync::CancellationToken::new();
    let server = match config.http_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
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
    let r = follower::run(config, shared, shutdown).await;
    token.cancel();
    if let Some(s) = server {
        let _ = s.await;
    }
    r
}
