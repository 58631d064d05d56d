//! Exit codes, the same for every barista binary.

use std::process::ExitCode;

/// A runtime failure (the error is reported once, see [`failure`]).
pub const FAILURE: u8 = 1;
/// Bad configuration: the process did not start.
pub const BAD_CONFIGURATION: u8 = 2;
/// Fenced: a newer leader took over (a higher epoch is in the commits topic); this process
/// refused to publish. Not a crash to restart in a loop: the operator decides.
pub const FENCED: u8 = 3;

/// The error a fenced process ends with: anywhere in an error's cause chain, it makes
/// [`failure`] exit with [`FENCED`] instead of [`FAILURE`].
#[derive(Debug, thiserror::Error)]
#[error("fenced: {0}")]
pub struct Fenced(pub String);

/// Says what is wrong with the configuration; exit code 2.
pub fn bad_configuration(binary: &str, why: impl std::fmt::Display) -> ExitCode {
    eprintln!("{binary}: bad configuration: {why}");
    ExitCode::from(BAD_CONFIGURATION)
}

/// Reports a runtime failure once, with its whole cause chain: as an error
/// log line when error logs are on (they go to stderr), else as a plain line
/// on stderr (logs filtered off by `RUST_LOG`, or no subscriber yet); exit
/// code 1.
pub fn failure(binary: &str, e: &anyhow::Error) -> ExitCode {
    let code = if e.chain().any(|c| c.is::<Fenced>()) {
        FENCED
    } else {
        FAILURE
    };
    if tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!(error = %format!("{e:#}"), "{binary} failed");
    } else {
        eprintln!("{binary}: {e:#}");
    }
    ExitCode::from(code)
}
