//! `barista-registry`: runs the embedded schema registry standalone until SIGINT or SIGTERM.
//!
//! Exit codes: 0 after a clean shutdown, 1 on a runtime failure, 2 on bad configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use barista_registry::{CompatibilityLevel, RegistryConfig};
use barista_runtime::Shutdown;
use clap::Parser;

/// The name errors are printed under.
const BINARY: &str = "barista-registry";

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

fn main() -> ExitCode {
    // clap exits with code 2 on bad flags or environment.
    let args = Args::parse();
    barista_runtime::logs::init_tracing_with("info");
    barista_runtime::run_until_signal(BINARY, |shutdown| run(args, shutdown))
}

async fn run(args: Args, shutdown: Shutdown) -> anyhow::Result<()> {
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
    shutdown.await;
    registry.shutdown().await?;
    tracing::info!("registry stopped");
    Ok(())
}
