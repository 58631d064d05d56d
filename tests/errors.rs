//! A fatal error reaches the operator once: one line on stderr with its
//! whole cause chain, not a log line and then the same text again.

use std::process::Command;

use barista_tests::process::binary;

/// Runs `name` with `args` to its exit; returns (exit code, stderr).
fn run_to_exit(name: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(binary(name))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn lines_with<'a>(stderr: &'a str, needle: &str) -> Vec<&'a str> {
    stderr.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn a_fatal_follower_error_is_printed_once_with_its_whole_chain() {
    let dir = tempfile::tempdir().unwrap();
    let replica = dir.path().join("no-such-dir/replica.db");
    let (code, stderr) = run_to_exit(
        "consumer",
        &[
            "--replica",
            replica.to_str().unwrap(),
            "--http-listen",
            "127.0.0.1:0",
            "--brokers",
            "127.0.0.1:1",
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");
    // The replica's lock file is the first thing a follower creates beside the replica.
    let said = lines_with(&stderr, "No such file or directory");
    assert_eq!(said.len(), 1, "printed once:\n{stderr}");
    assert!(
        said[0].contains("opening replica") && said[0].contains("no-such-dir"),
        "the whole chain, naming the file: {}",
        said[0]
    );
}

#[test]
fn a_fatal_producer_error_is_printed_once_with_its_whole_chain() {
    let dir = tempfile::tempdir().unwrap();
    let leader = dir.path().join("leader.db");
    std::fs::write(
        &leader,
        "this is a text file, not a SQLite database\n".repeat(100),
    )
    .unwrap();
    let (code, stderr) = run_to_exit(
        "producer",
        &[
            "--leader",
            leader.to_str().unwrap(),
            "--brokers",
            "127.0.0.1:1",
            "--registry",
            "http://127.0.0.1:1",
            "--http-listen",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");
    let said = lines_with(&stderr, "not a database");
    assert_eq!(said.len(), 1, "printed once:\n{stderr}");
    assert!(said[0].contains("leader.db"), "names the file: {}", said[0]);
}
