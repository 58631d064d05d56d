//! Each subject's version chain checked under its level, one message per broken field in the
//! words of someone editing a table.

use apache_avro::Schema;
use serde_json::Value;

use super::schema_json::{find_field, type_text};
use super::{Failure, Subject};
use crate::compat::{self, Direction, Incompatibility, Reason, Rule};

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
