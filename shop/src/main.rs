//! `barista-shop`: the coffee shop's leader service. Thin: parse flags, start
//! tracing, serve until SIGINT/SIGTERM, map errors to exit codes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use barista_runtime::{exit, logs, run_until_signal};
use clap::Parser;

/// Take coffee orders over HTTP, write them to the leader database, and answer
/// with the position of each commit as a read-your-writes token.
#[derive(Debug, Parser)]
#[command(
    name = "barista-shop",
    version,
    after_help = "Example:\n  barista-shop --leader leader.db --listen 127.0.0.1:8080\n\n\
Then:\n  curl -s localhost:8080/orders -H 'content-type: application/json' -d '{\"customer_id\": 7, \"coffee\": \"cortado\"}'\n  \
→ {\"order_id\":1,\"customer_id\":7,\"favourite\":\"cortado\",\"visits\":1,\"token\":4711}\n  \
curl -s 'localhost:8091/tables/customers/row?id=7&min_position=4711'   # a follower, read-your-writes\n  \
curl -s 'localhost:8080/tables/customers/row?id=7'                     # the leader itself\n\n\
Run the producer on the same leader file so the orders reach the followers."
)]
struct Args {
    /// The leader SQLite file (the shop's tables are created if missing).
    #[arg(long, env = "BARISTA_LEADER", default_value = "leader.db")]
    leader: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "BARISTA_SHOP_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

fn main() -> ExitCode {
    let a = Args::parse();
    logs::init_tracing_with("info");
    if let Err(e) = barista_shop::create_schema(&a.leader) {
        return exit::bad_configuration("barista-shop", format!("{e:#}"));
    }
    run_until_signal("barista-shop", |shutdown| async move {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .map_err(|e| anyhow::anyhow!("binding {}: {e}", a.listen))?;
        barista_shop::serve(listener, a.leader, shutdown).await
    })
}
