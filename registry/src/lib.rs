//! barista-registry: an embedded schema registry that speaks the part of Confluent Schema
//! Registry's REST API the Confluent clients use, persists in SQLite and applies the same
//! compatibility rules. Tests and the embedded demo run it in process ([`spawn`]); the
//! `barista-registry` binary runs it standalone ([`serve`]).
//!
//! In the order a registration meets them, then the CI gate that reuses the rules:

/// HTTP routes in Confluent's shapes over the store.
mod api;

/// SQLite state: schemas by id, subject versions, levels; enforces the rules on register.
mod store;

/// Compatibility rules, also used by the schema check and migration commands.
pub mod compat;

/// Checked-in contracts per subject: version chains, live drift, export.
pub mod contracts;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use compat::CompatibilityLevel;

/// How long [`RunningRegistry::shutdown`] lets in-flight requests finish before aborting.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What a registry needs to start.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// The SQLite database file; created if missing.
    pub db_path: PathBuf,
    /// The global level until one is set through `PUT /config` (a stored one then wins).
    pub default_level: CompatibilityLevel,
}

/// Serve on an already-bound listener until `shutdown` resolves, then let in-flight requests
/// finish.
pub async fn serve(
    config: RegistryConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    serve_store(store, listener, shutdown).await
}

/// Bind `addr` (`127.0.0.1:0` for any free port), spawn [`serve`] in the background and return
/// its handle. The database is opened before this returns, so a bad path fails here.
pub async fn spawn(config: RegistryConfig, addr: SocketAddr) -> anyhow::Result<RunningRegistry> {
    let store = open_store(config).await?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the registry to {addr}"))?;
    let local_addr = listener
        .local_addr()
        .context("reading the registry's bound address")?;
    let token = CancellationToken::new();
    let task = tokio::spawn(serve_store(
        store,
        listener,
        token.clone().cancelled_owned(),
    ));
    Ok(RunningRegistry {
        url: format!("http://{}", reachable(local_addr)),
        local_addr,
        token,
        task: Some(task),
    })
}

/// A registry serving in the background. Dropping it stops the server without waiting;
/// [`RunningRegistry::shutdown`] waits.
#[derive(Debug)]
pub struct RunningRegistry {
    /// Base URL for clients, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    local_addr: SocketAddr,
    token: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl RunningRegistry {
    /// Base URL for clients, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop accepting, let in-flight requests finish within a grace period, then abort.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.token.cancel();
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(joined) => joined.context("registry server task panicked")?,
            Err(_) => {
                task.abort();
                tracing::warn!(
                    grace = ?SHUTDOWN_GRACE,
                    "registry requests still running after the grace period, aborted"
                );
                Ok(())
            }
        }
    }
}

impl Drop for RunningRegistry {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn open_store(config: RegistryConfig) -> anyhow::Result<store::Store> {
    // Opening runs SQLite I/O and schema creation: keep it off the runtime workers.
    tokio::task::spawn_blocking(move || store::Store::open(&config.db_path, config.default_level))
        .await
        .context("opening the registry database")?
}

async fn serve_store(
    store: store::Store,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = api::router(api::Registry::new(store));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving the registry API")
}

/// The address a local client should dial: a wildcard bind is reached through loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}
