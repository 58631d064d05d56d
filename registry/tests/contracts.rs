//! `barista-schemas` as CI runs it: the real binary on the checked-in contracts, on fixtures that
//! must fail with a message naming the subject, versions, field and rule, and on a live leader.

use std::path::PathBuf;
use std::process::{Command, Output};

fn repo() -> PathBuf {
    manifest_dir().join("..")
}

fn schemas_cmd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_barista-schemas"))
        .args(args)
        .env_remove("BARISTA_LEADER")
        .env_remove("BARISTA_CONTRACTS_DIR")
        .env_remove("BARISTA_TOPIC_PREFIX")
        .output()
        .unwrap()
}

fn check_fixture(case: &str) -> (Option<i32>, String) {
    let dir = repo().join("schemas/fixtures/failing").join(case);
    let out = schemas_cmd(&["check", "--dir", dir.to_str().unwrap()]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_checked_in_contracts_pass() {
    let dir = repo().join("schemas/contracts");
    let out = schemas_cmd(&["check", "--dir", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("ok: 5 subjects, 12 versions"),
        "{stdout}"
    );
}

#[test]
fn a_type_change_fails_naming_field_types_and_rule() {
    let (code, err) = check_fixture("type-change");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(
            "customers-value: v1 → v2: field \"visits\" changed type int → string (add a new \
             field instead and stop writing the old one): BACKWARD requires the new schema (v2) \
             to read data written with the old (v1) [TYPE_MISMATCH at /fields/3/type]"
        ),
        "{err}"
    );
}

#[test]
fn a_field_added_without_default_fails_under_backward() {
    let (code, err) = check_fixture("added-without-default");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(
            "customers-value: v1 → v2: field \"email\" was added without a default (give it one: \
             for a column, add it nullable or NOT NULL with a literal DEFAULT): BACKWARD requires \
             the new schema (v2) to read data written with the old (v1) \
             [READER_FIELD_MISSING_DEFAULT_VALUE at /fields/4]"
        ),
        "{err}"
    );
}

#[test]
fn a_field_removed_without_default_fails_under_forward() {
    let (code, err) = check_fixture("removed-without-default");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(
            "customers-value: v1 → v2: field \"favourite\" was removed but the old schema has no \
             default for it (keep the field, or give it a default in an intermediate version \
             first): FORWARD requires the old schema (v1) to read data written with the new (v2) \
             [READER_FIELD_MISSING_DEFAULT_VALUE at /fields/2]"
        ),
        "{err}"
    );
}

#[test]
fn transitive_levels_check_against_every_earlier_version() {
    let dir = tempfile::tempdir().unwrap();
    let subject = dir.path().join("s-value");
    std::fs::create_dir(&subject).unwrap();
    let record = |fields: &str| format!(r#"{{"type":"record","name":"R","fields":[{fields}]}}"#);
    std::fs::write(
        subject.join("v1.avsc"),
        record(r#"{"name":"a","type":"long"}"#),
    )
    .unwrap();
    std::fs::write(
        subject.join("v2.avsc"),
        record(r#"{"name":"a","type":"long"},{"name":"b","type":"long","default":0}"#),
    )
    .unwrap();
    std::fs::write(
        subject.join("v3.avsc"),
        record(r#"{"name":"a","type":"long"},{"name":"b","type":"long"}"#),
    )
    .unwrap();
    let d = dir.path().to_str().unwrap();
    std::fs::write(subject.join("compatibility"), "BACKWARD\n").unwrap();
    assert_eq!(schemas_cmd(&["check", "--dir", d]).status.code(), Some(0));
    std::fs::write(subject.join("compatibility"), "BACKWARD_TRANSITIVE\n").unwrap();
    let out = schemas_cmd(&["check", "--dir", d]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("s-value: v1 → v3: field \"b\" was added without a default"),
        "{err}"
    );
}

#[test]
fn export_records_a_leader_and_check_catches_drift() {
    let dir = tempfile::tempdir().unwrap();
    let leader = dir.path().join("shop.db");
    let contracts = dir.path().join("contracts");
    let conn = rusqlite::Connection::open(&leader).unwrap();
    conn.execute_batch("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        .unwrap();
    let (l, c) = (leader.to_str().unwrap(), contracts.to_str().unwrap());
    let out = schemas_cmd(&["export", "--leader", l, "--prefix", "shop", "--dir", c]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("shop.customers-value: wrote v1"),
        "{stdout}"
    );
    let check = || schemas_cmd(&["check", "--dir", c, "--leader", l, "--prefix", "shop"]);
    assert_eq!(check().status.code(), Some(0));

    conn.execute_batch("ALTER TABLE customers ADD COLUMN coffee TEXT")
        .unwrap();
    let out = check();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "shop.customers-value: the live leader schema drifted from the latest contract v1: \
             field \"coffee\" added"
        ),
        "{err}"
    );

    let out = schemas_cmd(&["export", "--leader", l, "--prefix", "shop", "--dir", c]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("shop.customers-value: wrote v2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("shop.customers-key: unchanged (v1)"),
        "{stdout}"
    );
    assert_eq!(
        check().status.code(),
        Some(0),
        "a nullable column is compatible"
    );
}

#[test]
fn help_has_examples_and_env_vars_and_bad_usage_exits_2() {
    let out = schemas_cmd(&["check", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "BARISTA_CONTRACTS_DIR",
        "BARISTA_LEADER",
        "BARISTA_TOPIC_PREFIX",
    ] {
        assert!(help.contains(needle), "{needle} missing:\n{help}");
    }
    let out = schemas_cmd(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Examples:") && help.contains("barista-schemas check --dir"),
        "{help}"
    );
    assert_eq!(schemas_cmd(&["check", "--bogus"]).status.code(), Some(2));
    assert_eq!(
        schemas_cmd(&["check", "--dir", "/no/such/dir"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        schemas_cmd(&["export", "--leader", "/no/such.db", "--dir", "/tmp"])
            .status
            .code(),
        Some(2)
    );
}

/// This crate's directory as cargo names it when it runs the test, not as it was when the
/// test was compiled: a target dir shared by checkouts at other paths (CI's cache) keeps a
/// test binary whose `env!("CARGO_MANIFEST_DIR")` names another checkout.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
