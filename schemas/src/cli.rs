//! What every barista binary shares (feature `cli`): logs to stderr through
//! `tracing` (`RUST_LOG`), `-X key=value` librdkafka options, shutdown on
//! SIGINT/SIGTERM, and the exit codes: 0 clean stop, 1 runtime failure, 2 bad
//! configuration.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;

/// Logs to stderr; `RUST_LOG` overrides the default filter.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Parses `key=value` (clap value parser for `-X`).
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

/// Says what is wrong with the configuration; exit code 2.
pub fn bad_configuration(binary: &str, why: impl std::fmt::Display) -> ExitCode {
    eprintln!("{binary}: bad configuration: {why}");
    ExitCode::from(2)
}

/// Resolves on the first SIGINT or SIGTERM.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `run` on a multi-threaded runtime until it returns; it gets a
/// future that resolves on SIGINT/SIGTERM, whose handlers are installed
/// before `run` starts (a signal that arrived before a lazily installed
/// handler would kill the process without draining). Exit code 0 when `run`
/// returns Ok, 1 (with the error logged and printed) otherwise.
pub fn run_until_signal<F, Fut>(binary: &str, run: F) -> ExitCode
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{binary}: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt())
            .map_err(|e| anyhow::anyhow!("installing the SIGINT handler: {e}"))?;
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| anyhow::anyhow!("installing the SIGTERM handler: {e}"))?;
        let shutdown: Shutdown = Box::pin(async move {
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            tracing::info!("shutdown requested; draining");
        });
        run(shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "{binary} failed");
            eprintln!("{binary}: {e:#}");
            ExitCode::from(1)
        }
    }
}
