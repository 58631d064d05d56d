//! `barista-registry`: runs the embedded schema registry standalone until SIGINT or SIGTERM.
//!
//! Exit codes: 0 after a clean shutdown, 1 on a runtime failure, 2 on bad configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use barista_registry::{CompatibilityLevel, RegistryConfig};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Confluent-compatible schema registry for barista, persisted in SQLite.
#[derive(Debug, Parser)]
#[command(
    name = "barista-registry",
    version,
    after_help = "Example:\n  \
        barista-registry --listen 127.0.0.1:8081 --db /tmp/registry.db --compatibility FULL\n  \
        curl -s -X POST -H 'Content-Type: application/vnd.schemaregistry.v1+json' \\\n    \
        --data '{\"schema\": \"\\\"string\\\"\"}' http://127.0.0.1:8081/subjects/demo-value/versions"
)]
struct Args {
    /// Address to listen on.
    #[arg(
        long,
        env = "BARISTA_REGISTRY_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    listen: SocketAddr,

    /// SQLite database file; created if missing.
    #[arg(
        long,
        env = "BARISTA_REGISTRY_DB",
        default_value = "barista-registry.db"
    )]
    db: PathBuf,

    /// Global compatibility level until one is set through PUT /config (BACKWARD, FORWARD,
    /// FULL, their _TRANSITIVE forms, or NONE).
    #[arg(
        long,
        env = "BARISTA_REGISTRY_COMPATIBILITY",
        default_value = "BACKWARD"
    )]
    compatibility: CompatibilityLevel,
}

#[tokio::main]
async fn main() -> ExitCode {
    // clap exits with code 2 on bad flags or environment.
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("barista-registry: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = RegistryConfig {
        db_path: args.db.clone(),
        default_level: args.compatibility,
    };
    let registry = barista_registry::spawn(config, args.listen).await?;
    tracing::info!(
        url = registry.url(),
        db = %args.db.display(),
        compatibility = %args.compatibility,
        "registry listening"
    );
    shutdown_signal().await?;
    tracing::info!("shutting down");
    registry.shutdown().await?;
    tracing::info!("registry stopped");
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => interrupted.context("waiting for SIGINT"),
            _ = terminate.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
    }
}
