//! Compatibility levels in SQLite: the global one (as last set, else the configured default),
//! a subject's own, and the one that governs a subject.

use rusqlite::{params, Connection, OptionalExtension};

use super::{RegistryError, Store};
use crate::compat::CompatibilityLevel;

impl Store {
    /// The global level: as last set, else the configured default.
    pub(crate) fn global_level(&self) -> Result<CompatibilityLevel, RegistryError> {
        global_level(&self.conn, self.default_level)
    }

    /// Sets the global level.
    pub(crate) fn set_global_level(&self, level: CompatibilityLevel) -> Result<(), RegistryError> {
        self.conn.execute(
            "INSERT INTO global_config (singleton, compatibility) VALUES (1, ?1)
             ON CONFLICT (singleton) DO UPDATE SET compatibility = excluded.compatibility",
            params![level.as_str()],
        )?;
        Ok(())
    }

    /// The subject's own level, if it has one.
    pub(crate) fn subject_level(
        &self,
        subject: &str,
    ) -> Result<Option<CompatibilityLevel>, RegistryError> {
        subject_level(&self.conn, subject)
    }

    /// Sets the subject's own level.
    pub(crate) fn set_subject_level(
        &self,
        subject: &str,
        level: CompatibilityLevel,
    ) -> Result<(), RegistryError> {
        self.conn.execute(
            "INSERT INTO subject_config (subject, compatibility) VALUES (?1, ?2)
             ON CONFLICT (subject) DO UPDATE SET compatibility = excluded.compatibility",
            params![subject, level.as_str()],
        )?;
        Ok(())
    }

    /// Removes the subject's own level and returns it; 40408 if it had none.
    pub(crate) fn delete_subject_level(
        &self,
        subject: &str,
    ) -> Result<CompatibilityLevel, RegistryError> {
        let level = self
            .subject_level(subject)?
            .ok_or_else(|| RegistryError::SubjectLevelNotFound(subject.to_owned()))?;
        self.conn.execute(
            "DELETE FROM subject_config WHERE subject = ?1",
            params![subject],
        )?;
        Ok(level)
    }
}

fn parse_level(stored: &str) -> Result<CompatibilityLevel, RegistryError> {
    stored
        .parse()
        .map_err(|e| RegistryError::Corrupt(format!("stored compatibility level: {e}")))
}

fn global_level(
    conn: &Connection,
    default_level: CompatibilityLevel,
) -> Result<CompatibilityLevel, RegistryError> {
    let stored: Option<String> = conn
        .query_row(
            "SELECT compatibility FROM global_config WHERE singleton = 1",
            [],
            |row| row.get(0),
        )
        .optional()?;
    stored.map_or(Ok(default_level), |s| parse_level(&s))
}

fn subject_level(
    conn: &Connection,
    subject: &str,
) -> Result<Option<CompatibilityLevel>, RegistryError> {
    let stored: Option<String> = conn
        .query_row(
            "SELECT compatibility FROM subject_config WHERE subject = ?1",
            params![subject],
            |row| row.get(0),
        )
        .optional()?;
    stored.map(|s| parse_level(&s)).transpose()
}

/// The level that governs `subject`: its own, else the global one.
pub(super) fn effective_level(
    conn: &Connection,
    subject: &str,
    default_level: CompatibilityLevel,
) -> Result<CompatibilityLevel, RegistryError> {
    match subject_level(conn, subject)? {
        Some(level) => Ok(level),
        None => global_level(conn, default_level),
    }
}
