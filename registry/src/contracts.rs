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

use serde_json::Value;

use crate::compat::CompatibilityLevel;

mod chains;
mod live;
mod schema_json;

pub use chains::{check_chains, describe};
pub use live::{check_live, derive_from_leader};

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
