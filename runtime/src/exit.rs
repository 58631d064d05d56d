//! Exit codes, the same for every barista binary.

use std::process::ExitCode;

/// A runtime failure (the error is reported once, see [`failure`]).
pub const FAILURE: u8 = 1;
/// Bad configuration: the process did not start.
pub const BAD_CONFIGURATION: u8 = 2;

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
    if tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!(error = %format!("{e:#}"), "{binary} failed");
    } else {
        eprintln!("{binary}: {e:#}");
    }
    ExitCode::from(FAILURE)
}
