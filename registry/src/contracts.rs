//! The checked-in contracts: `schemas/contracts/<subject>/v1.avsc, v2.avsc, …` plus an
//! optional `compatibility` file naming the subject's level (BACKWARD when absent, as in
//! Confluent Schema Registry). Reads them, checks each subject's version chain under its level
//! with the registry's own rules ([`crate::compat`]), compares the schemas a live leader database
//! derives with the latest versions, and writes new versions (`export`).
//!
//! Needs no Kafka and no registry: it is the CI gate that stops an incompatible change before it
//! reaches a running system.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use apache_avro::Schema;
use barista_schemas::avro_schema::COMMIT_AVSC;
use barista_schemas::contract::{commits_topic, key_subject, table_topic, value_subject};
use barista_schemas::{TableSchemas, TableShape};
use serde_json::Value;

use crate::compat::{self, CompatibilityLevel, Direction, Incompatibility, Reason, Rule};

/// The file in a subject's folder that names its level.
pub const LEVEL_FILE: &str = "compatibility";

/// Why the contracts could not even be read (bad usage rather than a failed check).
#[derive(Debug, thiserror::Error)]
pub enum ContractsError {
    /// The folder, a file in it, or the leader database could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The leader database could not be opened or described.
    #[error("leader database {path}: {why}")]
    Leader {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
}

/// One subject's checked-in versions.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The subject, which is also its folder's name (`coffee.customers-value`).
    pub name: String,
    /// Its level (from the `compatibility` file, else BACKWARD).
    pub level: CompatibilityLevel,
    /// `v<n>.avsc` files, oldest first: (n, file, JSON).
    pub versions: Vec<(u32, PathBuf, Value)>,
}

impl Subject {
    /// The newest version's number and JSON.
    pub fn latest(&self) -> Option<(u32, &Value)> {
        self.versions.last().map(|(n, _, v)| (*n, v))
    }
}

/// A failed check: the subject and a message naming the versions, the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The subject concerned.
    pub subject: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.message)
    }
}

/// The subjects under `dir`, in name order. Files that are not `v<n>.avsc` or the level file are
/// ignored; problems inside the files (bad JSON, gaps in the numbering, an unknown level) are
/// reported by [`check`], not here.
pub fn load(dir: &Path) -> Result<(Vec<Subject>, Vec<Failure>), ContractsError> {
    let io = |what: String| move |source| ContractsError::Io { what, source };
    let mut subjects = Vec::new();
    let mut failures = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(format!("reading contracts folder {}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    entries.sort();
    for folder in entries {
        let name = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let fail = |message: String| Failure {
            subject: name.clone(),
            message,
        };
        let level = match std::fs::read_to_string(folder.join(LEVEL_FILE)) {
            Ok(text) => match text.trim().parse::<CompatibilityLevel>() {
                Ok(level) => level,
                Err(e) => {
                    failures.push(fail(format!("{LEVEL_FILE} file: {e}")));
                    continue;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CompatibilityLevel::Backward,
            Err(e) => return Err(io(format!("reading {}", folder.join(LEVEL_FILE).display()))(e)),
        };
        let mut versions = Vec::new();
        for file in std::fs::read_dir(&folder)
            .map_err(io(format!("reading {}", folder.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
        {
            let Some(n) = file
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.strip_prefix('v'))
                .and_then(|f| f.strip_suffix(".avsc"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let text = std::fs::read_to_string(&file)
                .map_err(io(format!("reading {}", file.display())))?;
            match serde_json::from_str::<Value>(&text) {
                Ok(json) => versions.push((n, file, json)),
                Err(e) => failures.push(fail(format!("v{n}.avsc is not JSON: {e}"))),
            }
        }
        versions.sort_by_key(|(n, _, _)| *n);
        for (i, (n, _, _)) in versions.iter().enumerate() {
            if *n != i as u32 + 1 {
                failures.push(fail(format!(
                    "versions must be numbered v1, v2, … without gaps; found v{n} where v{} was expected",
                    i + 1
                )));
                break;
            }
        }
        subjects.push(Subject {
            name,
            level,
            versions,
        });
    }
    Ok((subjects, failures))
}

/// Checks every subject's chain: each version against the version before it, or against every
/// earlier version when the level is transitive.
pub fn check_chains(subjects: &[Subject]) -> Vec<Failure> {
    let mut failures = Vec::new();
    for subject in subjects {
        let mut parsed: Vec<(u32, &Value, Schema)> = Vec::new();
        for (n, _, json) in &subject.versions {
            match Schema::parse(json) {
                Ok(schema) => parsed.push((*n, json, schema)),
                Err(e) => failures.push(Failure {
                    subject: subject.name.clone(),
                    message: format!("v{n}.avsc is not a valid Avro schema: {e}"),
                }),
            }
        }
        for (i, (n, new_json, new)) in parsed.iter().enumerate() {
            let earlier = parsed[..i].iter().map(|(v, _, s)| (*v, s));
            for incompatibility in compat::incompatibilities(subject.level, new, earlier) {
                let old_json = parsed
                    .iter()
                    .find(|(v, _, _)| *v == incompatibility.version)
                    .map(|(_, j, _)| *j)
                    .unwrap_or(&Value::Null);
                for message in describe(&incompatibility, *n, old_json, new_json) {
                    failures.push(Failure {
                        subject: subject.name.clone(),
                        message,
                    });
                }
            }
        }
    }
    failures
}

/// One line per broken field: `v2 → v3: field "visits" changed type int → string: BACKWARD
/// requires the new schema (v3) to read data written with the old (v2) [TYPE_MISMATCH at …]`.
///
/// A value schema holds the row record twice (`before` and `after`); a field broken in both is
/// reported once, by its column name.
pub fn describe(
    incompatibility: &Incompatibility,
    new_version: u32,
    old: &Value,
    new: &Value,
) -> Vec<String> {
    let old_version = incompatibility.version;
    let level = incompatibility.level;
    let requirement = match incompatibility.direction {
        Direction::Backward => format!(
            "{level} requires the new schema (v{new_version}) to read data written with the old (v{old_version})"
        ),
        Direction::Forward => format!(
            "{level} requires the old schema (v{old_version}) to read data written with the new (v{new_version})"
        ),
    };
    let mut seen = Vec::new();
    let mut lines = Vec::new();
    for reason in &incompatibility.reasons {
        let field = reason.field.as_deref().map(column_of);
        if seen.contains(&(reason.rule, field.clone())) {
            continue;
        }
        seen.push((reason.rule, field.clone()));
        let what = what_changed(
            reason,
            incompatibility.direction,
            field.as_deref(),
            old,
            new,
        );
        lines.push(format!(
            "v{old_version} → v{new_version}: {what}: {requirement} [{} at {}]",
            reason.rule, reason.path
        ));
    }
    lines
}

/// The column a dotted field path ends in: `before.visits` → `visits`.
fn column_of(dotted: &str) -> String {
    dotted.rsplit('.').next().unwrap_or(dotted).to_owned()
}

/// The change a reason stands for, in the words of someone editing a table.
fn what_changed(
    reason: &Reason,
    direction: Direction,
    field: Option<&str>,
    old: &Value,
    new: &Value,
) -> String {
    let Some(field) = field else {
        return reason.to_string();
    };
    match (reason.rule, direction) {
        (Rule::ReaderFieldMissingDefaultValue, Direction::Backward) => format!(
            "field \"{field}\" was added without a default (give it one: for a column, add it \
             nullable or NOT NULL with a literal DEFAULT)"
        ),
        (Rule::ReaderFieldMissingDefaultValue, Direction::Forward) => format!(
            "field \"{field}\" was removed but the old schema has no default for it (keep the \
             field, or give it a default in an intermediate version first)"
        ),
        (Rule::TypeMismatch, _) => {
            let old_type = find_field(old, field).map(|f| type_text(&f["type"]));
            let new_type = find_field(new, field).map(|f| type_text(&f["type"]));
            match (old_type, new_type) {
                (Some(o), Some(n)) => format!(
                    "field \"{field}\" changed type {o} → {n} (add a new field instead and \
                     stop writing the old one)"
                ),
                _ => format!("field \"{field}\": {}", reason.detail),
            }
        }
        _ => format!("field \"{field}\": {}", reason.detail),
    }
}

/// The first record field named `name`, searching the whole schema depth-first.
fn find_field<'a>(schema: &'a Value, name: &str) -> Option<&'a Value> {
    match schema {
        Value::Object(map) => {
            if let Some(fields) = map.get("fields").and_then(Value::as_array) {
                if let Some(f) = fields.iter().find(|f| f["name"] == name) {
                    return Some(f);
                }
                for f in fields {
                    if let Some(found) = find_field(&f["type"], name) {
                        return Some(found);
                    }
                }
            }
            map.get("items")
                .or_else(|| map.get("values"))
                .and_then(|inner| find_field(inner, name))
        }
        Value::Array(branches) => branches.iter().find_map(|b| find_field(b, name)),
        _ => None,
    }
}

/// A type as one short word or union: `int`, `[null, long, string]`, `record Address`.
fn type_text(t: &Value) -> String {
    match t {
        Value::String(s) => s.clone(),
        Value::Array(branches) => {
            let inner: Vec<String> = branches.iter().map(type_text).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => match map.get("type").and_then(Value::as_str) {
            Some(kind @ ("record" | "enum" | "fixed")) => {
                format!(
                    "{kind} {}",
                    map.get("name").and_then(Value::as_str).unwrap_or("?")
                )
            }
            Some(kind) => kind.to_owned(),
            None => t.to_string(),
        },
        other => other.to_string(),
    }
}

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

/// What [`export`] did for one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exported {
    /// The latest version already equals the live schema.
    Unchanged(u32),
    /// Written as this version.
    Written(u32, PathBuf),
}

/// Writes each live schema as the next version of its subject when it differs from the latest
/// (a new subject starts at v1 with a `compatibility` file saying BACKWARD).
pub fn export(
    dir: &Path,
    live: &BTreeMap<String, Value>,
) -> Result<Vec<(String, Exported)>, ContractsError> {
    let io = |what: String| move |source| ContractsError::Io { what, source };
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let (subjects, _) = load(dir)?;
    let mut done = Vec::new();
    for (name, schema) in live {
        let existing = subjects.iter().find(|s| &s.name == name);
        let latest = existing.and_then(Subject::latest);
        if let Some((n, checked_in)) = latest {
            if checked_in == schema {
                done.push((name.clone(), Exported::Unchanged(n)));
                continue;
            }
        }
        let folder = dir.join(name);
        std::fs::create_dir_all(&folder).map_err(io(format!("creating {}", folder.display())))?;
        if existing.is_none() {
            std::fs::write(
                folder.join(LEVEL_FILE),
                format!("{}\n", CompatibilityLevel::Backward),
            )
            .map_err(io(format!("writing {}", folder.join(LEVEL_FILE).display())))?;
        }
        let n = latest.map_or(1, |(n, _)| n + 1);
        let file = folder.join(format!("v{n}.avsc"));
        let mut text = serde_json::to_string_pretty(schema).unwrap_or_else(|_| schema.to_string());
        text.push('\n');
        std::fs::write(&file, text).map_err(io(format!("writing {}", file.display())))?;
        done.push((name.clone(), Exported::Written(n, file)));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, subject: &str, files: &[(&str, &str)]) {
        let folder = dir.join(subject);
        std::fs::create_dir_all(&folder).unwrap();
        for (name, text) in files {
            std::fs::write(folder.join(name), text).unwrap();
        }
    }

    const V1: &str = r#"{"type":"record","name":"C","fields":[{"name":"id","type":"long"},{"name":"visits","type":"int"}]}"#;

    #[test]
    fn type_change_names_subject_versions_field_types_and_rule() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = V1.replace(r#""visits","type":"int""#, r#""visits","type":"string""#);
        write(
            dir.path(),
            "customers-value",
            &[("v1.avsc", V1), ("v2.avsc", &v2)],
        );
        let (subjects, failures) = load(dir.path()).unwrap();
        assert!(failures.is_empty());
        let failures = check_chains(&subjects);
        assert_eq!(
            failures.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "customers-value: v1 → v2: field \"visits\" changed type int → string (add a new \
              field instead and stop writing the old one): BACKWARD requires the new schema (v2) \
              to read data written with the old (v1) [TYPE_MISMATCH at /fields/1/type]"
            ]
        );
    }

    #[test]
    fn gaps_bad_levels_and_bad_json_are_failures() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a", &[("v1.avsc", V1), ("v3.avsc", V1)]);
        write(
            dir.path(),
            "b",
            &[("v1.avsc", "{"), (LEVEL_FILE, "SIDEWAYS")],
        );
        write(
            dir.path(),
            "c",
            &[("v1.avsc", "{"), ("notes.txt", "ignored")],
        );
        let (_, failures) = load(dir.path()).unwrap();
        let text: Vec<String> = failures.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(
            text[0].starts_with("a: versions must be numbered"),
            "{text:?}"
        );
        assert!(
            text[1].contains("unknown compatibility level 'SIDEWAYS'"),
            "{text:?}"
        );
        assert!(text[2].starts_with("c: v1.avsc is not JSON"), "{text:?}");
    }
}
