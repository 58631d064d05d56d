//! Shutdown on SIGINT/SIGTERM: the signal resolves a future that the
//! process's `run(config, shutdown)` drains on.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;

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
            return ExitCode::from(crate::exit::FAILURE);
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
        Err(e) => crate::exit::failure(binary, &e),
    }
}
