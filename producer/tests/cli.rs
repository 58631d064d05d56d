//! The `producer` binary as a user meets it: help with an example, exit code
//! 2 for bad configuration, 1 for a runtime failure.

use std::process::Command;

fn producer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_producer"))
}

#[test]
fn help_names_every_flag_with_its_env_var_and_an_example() {
    let out = producer().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("Example:"), "{help}");
    for endpoint in ["/metrics", "/status", "/ready"] {
        assert!(help.contains(endpoint), "{endpoint} missing:\n{help}");
    }
    for (flag, env) in [
        ("--leader", "BARISTA_LEADER"),
        ("--brokers", "BARISTA_BROKERS"),
        ("--registry", "BARISTA_REGISTRY_URL"),
        ("--topic-prefix", "BARISTA_TOPIC_PREFIX"),
        ("--kafka-option", "BARISTA_KAFKA_OPTIONS"),
        ("--create", "BARISTA_CREATE_LEADER"),
        ("--http-listen", "BARISTA_HTTP_LISTEN"),
        ("--ready-grace-ms", "BARISTA_READY_GRACE_MS"),
    ] {
        assert!(
            help.contains(flag) && help.contains(env),
            "{flag} / {env} missing:\n{help}"
        );
    }
}

#[test]
fn bad_configuration_exits_2_and_says_what_is_wrong() {
    let out = producer().args(["--partitions", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--partitions must be at least 1"), "{err}");

    let out = producer().args(["-X", "no-equals-sign"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap rejects a malformed -X");
}

#[test]
fn a_missing_leader_exits_2_saying_no_such_file_and_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let leader = dir.path().join("typo.db");
    let out = producer()
        .arg("--leader")
        .arg(&leader)
        .args([
            "--brokers",
            "127.0.0.1:1",
            "--registry",
            "http://127.0.0.1:1",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .env_remove("BARISTA_CREATE_LEADER")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such file"), "{err}");
    assert!(err.contains(&leader.display().to_string()), "{err}");
    assert!(err.contains("--create"), "says how to create it: {err}");
    assert!(
        !leader.exists(),
        "a missing leader must never be created silently"
    );
}

#[test]
fn a_leader_that_cannot_be_created_exits_1_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let leader = dir.path().join("no-such-dir").join("leader.db");
    let out = producer()
        .arg("--leader")
        .arg(&leader)
        .args([
            "--create",
            "--brokers",
            "127.0.0.1:1",
            "--registry",
            "http://127.0.0.1:1",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("leader.db"), "{err}");
}

#[test]
fn migrate_has_help_and_exits_2_on_bad_usage() {
    let out = producer().args(["migrate", "--help"]).output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    for needle in [
        "Example:",
        "--ddl",
        "BARISTA_MIGRATE_DDL",
        "--registry",
        "roll back",
    ] {
        assert!(help.contains(needle), "{needle} missing:\n{help}");
    }
    let out = producer()
        .args(["migrate", "--ddl", "/no/such/file.sql"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/file.sql"));
    let out = producer()
        .args(["migrate"])
        .env_remove("BARISTA_MIGRATE_DDL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--ddl is required");
}
