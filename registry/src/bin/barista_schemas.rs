//! `barista-schemas`: the checked-in Avro contracts as a CI gate. `check` verifies each subject's
//! version chain under its compatibility level and, given a leader database, that the live
//! schemas equal the latest versions; `export` records a leader's schemas as new versions.
//!
//! Exit codes: 0 when everything passes, 1 when a check fails, 2 on bad usage (unknown flag,
//! missing folder or leader file).

use std::path::PathBuf;
use std::process::ExitCode;

use barista_registry::contracts::{self, Exported};
use barista_runtime::exit;
use clap::{Parser, Subcommand};

/// The name errors are printed under.
const BINARY: &str = "barista-schemas";

/// Versioned Avro contracts per subject, checked with Confluent Schema Registry's rules.
#[derive(Debug, Parser)]
#[command(
    name = "barista-schemas",
    version,
    after_help = "Layout:\n  <dir>/<subject>/v1.avsc, v2.avsc, …   one file per version\n  \
        <dir>/<subject>/compatibility          BACKWARD (default), BACKWARD_TRANSITIVE, FORWARD,\n  \
        \x20                                      FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE or NONE\n\n\
        Examples:\n  \
        barista-schemas check --dir schemas/contracts\n  \
        barista-schemas check --dir schemas/contracts --leader shop.db --prefix coffee\n  \
        barista-schemas export --leader shop.db --prefix coffee --dir schemas/contracts"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check every subject's version chain, and the live leader schema when --leader is given.
    Check {
        /// Folder of contracts, one sub-folder per subject.
        #[arg(
            long,
            env = "BARISTA_CONTRACTS_DIR",
            default_value = "schemas/contracts"
        )]
        dir: PathBuf,
        /// Leader database whose derived schemas must equal the latest versions.
        #[arg(long, env = "BARISTA_LEADER")]
        leader: Option<PathBuf>,
        /// Topic prefix the producer uses with this leader (subjects are <prefix>.<table>-key/-value).
        #[arg(long, env = "BARISTA_TOPIC_PREFIX", default_value = "barista")]
        prefix: String,
    },
    /// Write the schemas a leader derives as the next version of each subject that changed.
    Export {
        /// Leader database to derive the schemas from.
        #[arg(long, env = "BARISTA_LEADER")]
        leader: PathBuf,
        /// Topic prefix the producer uses with this leader.
        #[arg(long, env = "BARISTA_TOPIC_PREFIX", default_value = "barista")]
        prefix: String,
        /// Folder of contracts, one sub-folder per subject.
        #[arg(
            long,
            env = "BARISTA_CONTRACTS_DIR",
            default_value = "schemas/contracts"
        )]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    // clap prints usage errors and exits with 2 itself.
    let args = Args::parse();
    match args.command {
        Command::Check {
            dir,
            leader,
            prefix,
        } => check(&dir, leader.as_deref(), &prefix),
        Command::Export {
            leader,
            prefix,
            dir,
        } => export(&leader, &prefix, &dir),
    }
}

fn check(dir: &std::path::Path, leader: Option<&std::path::Path>, prefix: &str) -> ExitCode {
    let (subjects, mut failures) = match contracts::load(dir) {
        Ok(loaded) => loaded,
        Err(e) => return exit::bad_configuration(BINARY, e),
    };
    failures.extend(contracts::check_chains(&subjects));
    if let Some(leader) = leader {
        match contracts::derive_from_leader(leader, prefix) {
            Ok((live, _skipped)) => failures.extend(contracts::check_live(&subjects, &live)),
            Err(e) => return exit::bad_configuration(BINARY, e),
        }
    }
    if failures.is_empty() {
        let versions: usize = subjects.iter().map(|s| s.versions.len()).sum();
        println!(
            "ok: {} subjects, {versions} versions compatible{}",
            subjects.len(),
            if leader.is_some() {
                "; the live leader matches the latest versions"
            } else {
                ""
            }
        );
        return ExitCode::SUCCESS;
    }
    for failure in &failures {
        eprintln!("{failure}");
    }
    eprintln!(
        "{BINARY}: {} problem(s) in {}",
        failures.len(),
        dir.display()
    );
    ExitCode::from(exit::FAILURE)
}

fn export(leader: &std::path::Path, prefix: &str, dir: &std::path::Path) -> ExitCode {
    let (live, skipped) = match contracts::derive_from_leader(leader, prefix) {
        Ok(live) => live,
        Err(e) => return exit::bad_configuration(BINARY, e),
    };
    for table in skipped {
        println!("skipped table {table}: no primary key, the producer does not capture it");
    }
    match contracts::export(dir, &live) {
        Ok(done) => {
            for (subject, outcome) in done {
                match outcome {
                    Exported::Unchanged(n) => println!("{subject}: unchanged (v{n})"),
                    Exported::Written(n, file) => {
                        println!("{subject}: wrote v{n} ({})", file.display())
                    }
                }
            }
            ExitCode::SUCCESS
        }
        // Printed by hand rather than through `exit::failure`: the error's message already
        // includes its I/O cause, which `{:#}` would print a second time.
        Err(e) => {
            eprintln!("{BINARY}: {e}");
            ExitCode::from(exit::FAILURE)
        }
    }
}
