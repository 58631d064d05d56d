//! The `consumer` binary as a user meets it: help with an example, exit code
//! 2 for bad configuration, 1 for a runtime failure.

use std::process::Command;

fn consumer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_consumer"))
}

#[test]
fn help_names_every_flag_with_its_env_var_and_an_example() {
    let out = consumer().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("Example:"), "{help}");
    for (flag, env) in [
        ("--replica", "BARISTA_REPLICA"),
        ("--follower-id", "BARISTA_FOLLOWER_ID"),
        ("--brokers", "BARISTA_BROKERS"),
        ("--registry", "BARISTA_REGISTRY_URL"),
        ("--http-listen", "BARISTA_HTTP_LISTEN"),
        ("--max-lag-seconds", "BARISTA_MAX_LAG_SECONDS"),
    ] {
        assert!(
            help.contains(flag) && help.contains(env),
            "{flag} / {env} missing:\n{help}"
        );
    }
}

#[test]
fn bad_configuration_exits_2_and_says_what_is_wrong() {
    let out = consumer().args(["--follower-id", " "]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--follower-id"), "{err}");

    let out = consumer()
        .args(["--http-listen", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap rejects a malformed address"
    );
}

#[test]
fn a_replica_that_cannot_be_opened_exits_1_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let replica = dir.path().join("no-such-dir").join("replica.db");
    let out = consumer()
        .arg("--replica")
        .arg(&replica)
        .args([
            "--brokers",
            "127.0.0.1:1",
            "--registry",
            "http://127.0.0.1:1",
        ])
        .args(["--http-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("replica.db"), "{err}");
}
