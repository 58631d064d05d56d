//! Why a registry operation failed, and the details of a 409 in the shape Confluent prints
//! them; [`crate::api`] maps each variant to Confluent's error code.

use crate::compat::Incompatibility;

/// Why a registry operation failed; [`crate::api`] maps each variant to Confluent's error code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegistryError {
    /// The subject has no versions (40401).
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// The subject exists but not that version (40402).
    #[error("Version {version} not found.")]
    VersionNotFound { version: u32 },
    /// No schema with that id, or the schema is not under the subject (40403).
    #[error("{0}")]
    SchemaNotFound(String),
    /// The subject has no level of its own (40408).
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectLevelNotFound(String),
    /// The schema does not parse, or uses what this registry does not support (42201).
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    /// The new schema breaks the subject's level (409).
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", \
         details: [{}]",
        confluent_details(incompatibility)
    )]
    Incompatible {
        subject: String,
        incompatibility: Box<Incompatibility>,
    },
    /// SQLite failed (50001).
    #[error("Error in the backend data store: {0}")]
    Storage(#[from] rusqlite::Error),
    /// Stored data no longer parses (50001).
    #[error("Error in the backend data store: {0}")]
    Corrupt(String),
}

/// The details list of a 409, in the shape Confluent prints it.
pub(crate) fn confluent_details(incompatibility: &Incompatibility) -> String {
    let mut details: Vec<String> = confluent_messages(incompatibility);
    details.push(format!("{{oldSchemaVersion: {}}}", incompatibility.version));
    details.push(format!("{{compatibility: '{}'}}", incompatibility.level));
    details.join(", ")
}

/// One `{errorType:…, description:…, additionalInfo:…}` entry per reason.
pub(crate) fn confluent_messages(incompatibility: &Incompatibility) -> Vec<String> {
    incompatibility
        .reasons
        .iter()
        .map(|reason| {
            format!(
                "{{errorType:'{}', description:'{}: {}', additionalInfo:'{}'}}",
                reason.rule,
                incompatibility.direction_phrase(),
                reason,
                reason.field.as_deref().unwrap_or(&reason.path)
            )
        })
        .collect()
}
