//! Exit codes, the same for every barista binary.

use std::process::ExitCode;

/// A runtime failure (the error is logged and printed).
pub const FAILURE: u8 = 1;
/// Bad configuration: the process did not start.
pub const BAD_CONFIGURATION: u8 = 2;

/// Says what is wrong with the configuration; exit code 2.
pub fn bad_configuration(binary: &str, why: impl std::fmt::Display) -> ExitCode {
    eprintln!("{binary}: bad configuration: {why}");
    ExitCode::from(BAD_CONFIGURATION)
}

/// Logs and prints a runtime failure with its whole cause chain; exit code 1.
pub fn failure(binary: &str, e: &anyhow::Error) -> ExitCode {
    tracing::error!(error = %format!("{e:#}"), "{binary} failed");
    eprintln!("{binary}: {e:#}");
    ExitCode::from(FAILURE)
}
