//! Registry state in SQLite: reads and writes schemas by global id, subject versions and
//! compatibility levels, and enforces the compatibility level when a version is registered.
//!
//! The connection is synchronous; [`crate::api`] owns the one `Store` behind a mutex and calls
//! it only from blocking tasks.

use std::path::Path;

use anyhow::Context as _;
use apache_avro::Schema;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::compat::{self, CompatibilityLevel, Incompatibility};

mod candidate;
mod error;
mod levels;

pub(crate) use candidate::Candidate;
pub(crate) use error::{confluent_messages, RegistryError};
use levels::effective_level;

/// The only schema type this registry stores.
pub(crate) const AVRO: &str = "AVRO";

/// A subject's version or `latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VersionRef {
    Latest,
    Number(u32),
}

/// One version of a subject.
#[derive(Debug, Clone)]
pub(crate) struct SubjectVersion {
    pub subject: String,
    pub version: u32,
    pub id: i64,
    pub schema: String,
    pub schema_type: String,
}

/// A schema by id.
#[derive(Debug, Clone)]
pub(crate) struct StoredSchema {
    pub schema: String,
    pub schema_type: String,
}

/// The registry's SQLite database.
pub(crate) struct Store {
    conn: Connection,
    default_level: CompatibilityLevel,
}

impl Store {
    /// Opens or creates the database at `path` and its tables.
    pub(crate) fn open(path: &Path, default_level: CompatibilityLevel) -> anyhow::Result<Self> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening registry database {}", path.display()))?;
        // WAL: readers (a second process inspecting the file) never block the writer;
        // synchronous=NORMAL is durable across process crashes, which is what a registry
        // restart needs.
        conn.pragma_update(None, "journal_mode", "WAL")
            .context("enabling WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .context("setting synchronous")?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .context("enabling foreign keys")?;
        conn.execute_batch(include_str!("store.sql"))
            .with_context(|| format!("creating registry tables in {}", path.display()))?;
        Ok(Self {
            conn,
            default_level,
        })
    }

    /// Registers `candidate` under `subject` and returns its global id.
    ///
    /// Idempotent: a schema already under the subject returns its id without a new version.
    /// The check and the insert share one immediate transaction, so two registrations of
    /// different schemas cannot both pass the check against the same latest version.
    pub(crate) fn register(
        &mut self,
        subject: &str,
        candidate: &Candidate,
    ) -> Result<(i64, Option<u32>), RegistryError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing: Option<i64> = tx
            .query_row(
                "SELECT s.id FROM subject_versions v JOIN schemas s ON s.id = v.schema_id
                 WHERE v.subject = ?1 AND s.normalized = ?2",
                params![subject, candidate.normalized],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(id) = existing {
            return Ok((id, None));
        }

        let level = effective_level(&tx, subject, self.default_level)?;
        let previous = load_versions(&tx, subject)?;
        let numbered = previous.iter().map(|(version, schema)| (*version, schema));
        if let Err(incompatibility) = compat::check_versions(level, &candidate.schema, numbered) {
            return Err(RegistryError::Incompatible {
                subject: subject.to_owned(),
                incompatibility: Box::new(incompatibility),
            });
        }

        let id: i64 = match tx
            .query_row(
                "SELECT id FROM schemas WHERE normalized = ?1",
                params![candidate.normalized],
                |row| row.get(0),
            )
            .optional()?
        {
            Some(id) => id,
            None => {
                tx.execute(
                    "INSERT INTO schemas (schema_type, normalized, schema) VALUES (?1, ?2, ?3)",
                    params![AVRO, candidate.normalized, candidate.text],
                )?;
                tx.last_insert_rowid()
            }
        };
        let version: u32 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM subject_versions WHERE subject = ?1",
            params![subject],
            |row| row.get(0),
        )?;
        tx.execute(
            "INSERT INTO subject_versions (subject, version, schema_id) VALUES (?1, ?2, ?3)",
            params![subject, version, id],
        )?;
        tx.commit()?;
        Ok((id, Some(version)))
    }

    /// The version of `subject` holding `candidate`.
    pub(crate) fn lookup(
        &self,
        subject: &str,
        candidate: &Candidate,
    ) -> Result<SubjectVersion, RegistryError> {
        let found = self
            .conn
            .query_row(
                "SELECT v.version, s.id, s.schema, s.schema_type
                 FROM subject_versions v JOIN schemas s ON s.id = v.schema_id
                 WHERE v.subject = ?1 AND s.normalized = ?2",
                params![subject, candidate.normalized],
                |row| {
                    Ok(SubjectVersion {
                        subject: subject.to_owned(),
                        version: row.get(0)?,
                        id: row.get(1)?,
                        schema: row.get(2)?,
                        schema_type: row.get(3)?,
                    })
                },
            )
            .optional()?;
        match found {
            Some(found) => Ok(found),
            None => {
                self.versions(subject)?;
                Err(RegistryError::SchemaNotFound("Schema not found".into()))
            }
        }
    }

    /// The schema with global id `id`.
    pub(crate) fn schema_by_id(&self, id: i64) -> Result<StoredSchema, RegistryError> {
        self.conn
            .query_row(
                "SELECT schema, schema_type FROM schemas WHERE id = ?1",
                params![id],
                |row| {
                    Ok(StoredSchema {
                        schema: row.get(0)?,
                        schema_type: row.get(1)?,
                    })
                },
            )
            .optional()?
            .ok_or_else(|| RegistryError::SchemaNotFound(format!("Schema {id} not found")))
    }

    /// The subject versions that hold schema `id`.
    pub(crate) fn versions_of_id(&self, id: i64) -> Result<Vec<(String, u32)>, RegistryError> {
        self.schema_by_id(id)?;
        let mut stmt = self.conn.prepare(
            "SELECT subject, version FROM subject_versions WHERE schema_id = ?1
             ORDER BY subject, version",
        )?;
        let rows = stmt.query_map(params![id], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every subject with at least one version, sorted.
    pub(crate) fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT subject FROM subject_versions ORDER BY subject")?;
        let rows = stmt.query_map([], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The subject's version numbers, ascending; 40401 if it has none.
    pub(crate) fn versions(&self, subject: &str) -> Result<Vec<u32>, RegistryError> {
        let versions = versions_in(&self.conn, subject)?;
        if versions.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_owned()));
        }
        Ok(versions)
    }

    /// One version of a subject.
    pub(crate) fn version(
        &self,
        subject: &str,
        version: VersionRef,
    ) -> Result<SubjectVersion, RegistryError> {
        let versions = self.versions(subject)?;
        let number = resolve(&versions, version)?;
        let (id, schema, schema_type) = self.conn.query_row(
            "SELECT s.id, s.schema, s.schema_type
             FROM subject_versions v JOIN schemas s ON s.id = v.schema_id
             WHERE v.subject = ?1 AND v.version = ?2",
            params![subject, number],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
        Ok(SubjectVersion {
            subject: subject.to_owned(),
            version: number,
            id,
            schema,
            schema_type,
        })
    }

    /// Every incompatibility of `candidate` with the subject under its level: against `against`
    /// alone when given, else against the versions the level covers. A subject without
    /// versions accepts anything.
    pub(crate) fn test_compatibility(
        &self,
        subject: &str,
        against: Option<VersionRef>,
        candidate: &Candidate,
    ) -> Result<Vec<Incompatibility>, RegistryError> {
        let level = effective_level(&self.conn, subject, self.default_level)?;
        let mut previous = load_versions(&self.conn, subject)?;
        if previous.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(against) = against {
            let numbers: Vec<u32> = previous.iter().map(|(v, _)| *v).collect();
            let number = resolve(&numbers, against)?;
            previous.retain(|(v, _)| *v == number);
        }
        let numbered = previous.iter().map(|(version, schema)| (*version, schema));
        Ok(compat::incompatibilities(
            level,
            &candidate.schema,
            numbered,
        ))
    }

    /// Deletes every version of the subject and returns their numbers. Schemas keep their ids
    /// (consumers may still hold data written with them).
    pub(crate) fn delete_subject(&mut self, subject: &str) -> Result<Vec<u32>, RegistryError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let versions = versions_in(&tx, subject)?;
        if versions.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_owned()));
        }
        tx.execute(
            "DELETE FROM subject_versions WHERE subject = ?1",
            params![subject],
        )?;
        tx.commit()?;
        Ok(versions)
    }

    /// Deletes one version of the subject and returns its number.
    pub(crate) fn delete_version(
        &mut self,
        subject: &str,
        version: VersionRef,
    ) -> Result<u32, RegistryError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let versions = versions_in(&tx, subject)?;
        if versions.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_owned()));
        }
        let number = resolve(&versions, version)?;
        tx.execute(
            "DELETE FROM subject_versions WHERE subject = ?1 AND version = ?2",
            params![subject, number],
        )?;
        tx.commit()?;
        Ok(number)
    }
}

/// The version number `version` names among `versions` (ascending, non-empty).
fn resolve(versions: &[u32], version: VersionRef) -> Result<u32, RegistryError> {
    match version {
        VersionRef::Latest => versions
            .last()
            .copied()
            .ok_or(RegistryError::VersionNotFound { version: 0 }),
        VersionRef::Number(n) if versions.contains(&n) => Ok(n),
        VersionRef::Number(n) => Err(RegistryError::VersionNotFound { version: n }),
    }
}

fn versions_in(conn: &Connection, subject: &str) -> Result<Vec<u32>, RegistryError> {
    let mut stmt =
        conn.prepare("SELECT version FROM subject_versions WHERE subject = ?1 ORDER BY version")?;
    let versions = stmt
        .query_map(params![subject], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(versions)
}

/// The subject's versions, oldest first, parsed.
fn load_versions(conn: &Connection, subject: &str) -> Result<Vec<(u32, Schema)>, RegistryError> {
    let mut stmt = conn.prepare(
        "SELECT v.version, s.schema FROM subject_versions v JOIN schemas s ON s.id = v.schema_id
         WHERE v.subject = ?1 ORDER BY v.version",
    )?;
    let rows = stmt.query_map(params![subject], |row| {
        Ok((row.get::<_, u32>(0)?, row.get::<_, String>(1)?))
    })?;
    let mut versions = Vec::new();
    for row in rows {
        let (version, text) = row?;
        let schema = Schema::parse_str(&text).map_err(|e| {
            RegistryError::Corrupt(format!(
                "stored version {version} of subject '{subject}' no longer parses: {e}"
            ))
        })?;
        versions.push((version, schema));
    }
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(text: &str) -> Candidate {
        Candidate::parse(text, None, false).unwrap()
    }

    #[test]
    fn versions_and_ids() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("r.db"), CompatibilityLevel::None).unwrap();
        let v1 = candidate(r#""string""#);
        let v2 = candidate(r#""long""#);
        assert_eq!(store.register("a", &v1).unwrap(), (1, Some(1)));
        assert_eq!(store.register("a", &v1).unwrap(), (1, None));
        assert_eq!(store.register("a", &v2).unwrap(), (2, Some(2)));
        assert_eq!(store.register("b", &v2).unwrap(), (2, Some(1)));
        assert_eq!(store.versions("a").unwrap(), vec![1, 2]);
        assert_eq!(store.version("a", VersionRef::Latest).unwrap().id, 2);
        assert_eq!(
            store.versions_of_id(2).unwrap(),
            vec![("a".to_owned(), 2), ("b".to_owned(), 1)]
        );
        assert!(matches!(
            store.version("a", VersionRef::Number(3)),
            Err(RegistryError::VersionNotFound { version: 3 })
        ));
        assert_eq!(store.delete_version("a", VersionRef::Latest).unwrap(), 2);
        assert_eq!(store.delete_subject("a").unwrap(), vec![1]);
        assert!(matches!(
            store.versions("a"),
            Err(RegistryError::SubjectNotFound(_))
        ));
        // Ids survive their subjects.
        assert_eq!(store.schema_by_id(1).unwrap().schema, r#""string""#);
    }
}
