//! The live leader: the subjects and schemas a leader database makes the producer register,
//! compared with the latest checked-in versions.

use std::collections::BTreeMap;
use std::path::Path;

use barista_schemas::avro_schema::COMMIT_AVSC;
use barista_schemas::contract::{commits_topic, key_subject, table_topic, value_subject};
use barista_schemas::{TableSchemas, TableShape};
use serde_json::Value;

use super::schema_json::{find_field, type_text};
use super::{ContractsError, Failure, Subject};

/// The subjects a leader database makes the producer register, and their schemas:
/// `<prefix>.<table>-key`, `<prefix>.<table>-value` for every table with a primary key, and
/// `<prefix>.__commits-value`. Tables without a primary key are skipped (the producer refuses
/// them) and listed in the second part of the answer.
pub fn derive_from_leader(
    leader: &Path,
    prefix: &str,
) -> Result<(BTreeMap<String, Value>, Vec<String>), ContractsError> {
    let bad = |why: String| ContractsError::Leader {
        path: leader.to_owned(),
        why,
    };
    if !leader.exists() {
        return Err(bad("no such file".into()));
    }
    let conn = rusqlite::Connection::open_with_flags(
        leader,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| bad(e.to_string()))?;
    let tables = TableShape::list_tables(&conn).map_err(|e| bad(e.to_string()))?;
    let mut subjects = BTreeMap::new();
    let mut skipped = Vec::new();
    for table in tables {
        let shape = match TableShape::read(&conn, &table) {
            Ok(shape) => shape,
            Err(barista_schemas::ContractError::NotCapturable { .. }) => {
                skipped.push(table);
                continue;
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        let schemas = TableSchemas::derive(shape).map_err(|e| bad(e.to_string()))?;
        let topic = table_topic(prefix, &table);
        let parse = |s: &str| serde_json::from_str::<Value>(s).map_err(|e| bad(e.to_string()));
        subjects.insert(key_subject(&topic), parse(&schemas.key_json)?);
        subjects.insert(value_subject(&topic), parse(&schemas.value_json)?);
    }
    let commits: Value = serde_json::from_str(COMMIT_AVSC).map_err(|e| bad(e.to_string()))?;
    subjects.insert(value_subject(&commits_topic(prefix)), commits);
    Ok((subjects, skipped))
}

/// Compares what a leader derives now with the latest checked-in version of each subject.
/// Schemas are compared as JSON values (key order and whitespace ignored; defaults, docs and
/// barista's `sqlite.*` attributes included, because followers rely on them).
pub fn check_live(subjects: &[Subject], live: &BTreeMap<String, Value>) -> Vec<Failure> {
    let mut failures = Vec::new();
    for (name, schema) in live {
        let latest = subjects
            .iter()
            .find(|s| &s.name == name)
            .and_then(|s| s.latest());
        let message = match latest {
            None => "the leader produces this subject but it has no contract; run \
                     `barista-schemas export --leader <db>` and commit the new files"
                .to_owned(),
            Some((_, checked_in)) if checked_in == schema => continue,
            Some((n, checked_in)) => format!(
                "the live leader schema drifted from the latest contract v{n}: {}; record the \
                 change with `barista-schemas export --leader <db>` (it becomes v{}) and check \
                 again",
                differences(checked_in, schema).join(", "),
                n + 1
            ),
        };
        failures.push(Failure {
            subject: name.clone(),
            message,
        });
    }
    failures
}

/// Field-level differences between two schemas of the same record (the row record of an
/// envelope, or a key record).
fn differences(old: &Value, new: &Value) -> Vec<String> {
    let fields = |schema: &Value| -> Vec<Value> {
        let row = find_field(schema, "before")
            .and_then(|b| b["type"].as_array())
            .and_then(|u| u.iter().find(|b| b.is_object()).cloned());
        row.as_ref()
            .unwrap_or(schema)
            .get("fields")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (old_fields, new_fields) = (fields(old), fields(new));
    let mut out = Vec::new();
    for f in &new_fields {
        match old_fields.iter().find(|o| o["name"] == f["name"]) {
            None => out.push(format!("field {} added", f["name"])),
            Some(o) if o["type"] != f["type"] => out.push(format!(
                "field {} changed type {} → {}",
                f["name"],
                type_text(&o["type"]),
                type_text(&f["type"])
            )),
            Some(o) if o != f => out.push(format!("field {} changed ({o} → {f})", f["name"])),
            Some(_) => {}
        }
    }
    for o in &old_fields {
        if !new_fields.iter().any(|f| f["name"] == o["name"]) {
            out.push(format!("field {} removed", o["name"]));
        }
    }
    if out.is_empty() {
        out.push("the record's name, namespace or attributes changed".into());
    }
    out
}
