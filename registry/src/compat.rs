//! Compatibility rules: decides whether a new Avro schema may follow the earlier versions of a
//! subject, with Confluent Schema Registry's levels and rule names.
//!
//! A level says which earlier versions to check and in which direction (this file); whether one
//! schema can read data written with another, and where not, is [`can_read`]'s part
//! (`compat/resolution.rs`).

use std::fmt;
use std::str::FromStr;

use apache_avro::Schema;

mod resolution;

pub use resolution::{can_read, Reason, Rule, Unreadable};

/// A subject's compatibility level, named as in Confluent Schema Registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CompatibilityLevel {
    /// The new schema can read data written with the latest version.
    #[default]
    Backward,
    /// The new schema can read data written with every earlier version.
    BackwardTransitive,
    /// The latest version can read data written with the new schema.
    Forward,
    /// Every earlier version can read data written with the new schema.
    ForwardTransitive,
    /// Both `Backward` and `Forward`.
    Full,
    /// Both `BackwardTransitive` and `ForwardTransitive`.
    FullTransitive,
    /// No check.
    None,
}

impl CompatibilityLevel {
    /// Every level, in Confluent's documentation order.
    pub const ALL: [CompatibilityLevel; 7] = [
        Self::Backward,
        Self::BackwardTransitive,
        Self::Forward,
        Self::ForwardTransitive,
        Self::Full,
        Self::FullTransitive,
        Self::None,
    ];

    /// The Confluent name, e.g. `BACKWARD_TRANSITIVE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
            Self::None => "NONE",
        }
    }

    /// Whether the new schema is checked against every earlier version, not only the latest.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }

    /// The directions this level checks, backward first.
    pub fn directions(self) -> &'static [Direction] {
        match self {
            Self::Backward | Self::BackwardTransitive => &[Direction::Backward],
            Self::Forward | Self::ForwardTransitive => &[Direction::Forward],
            Self::Full | Self::FullTransitive => &[Direction::Backward, Direction::Forward],
            Self::None => &[],
        }
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CompatibilityLevel {
    type Err = UnknownLevel;

    /// Parses a Confluent name, ignoring ASCII case (`full_transitive` is accepted).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownLevel(s.to_owned()))
    }
}

/// A string that names no compatibility level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown compatibility level '{0}', expected one of BACKWARD, BACKWARD_TRANSITIVE, \
     FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE, NONE"
)]
pub struct UnknownLevel(pub String);

/// Which side of a check reads and which writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The new schema is the reader; the earlier version wrote the data.
    Backward,
    /// The earlier version is the reader; the new schema wrote the data.
    Forward,
}

/// The new schema breaks the level against one earlier version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Incompatibility {
    /// The level checked.
    pub level: CompatibilityLevel,
    /// The earlier version it broke against (1-based, as the registry numbers versions).
    pub version: u32,
    /// Which schema was the reader.
    pub direction: Direction,
    /// Every place the reader cannot read the writer; never empty.
    pub reasons: Vec<Reason>,
    /// apache-avro's own verdict, when it was an error rather than a partial match.
    pub avro_error: Option<String>,
}

impl Incompatibility {
    /// "a reader using the new schema cannot read data written with version 2", or the reverse.
    pub fn direction_phrase(&self) -> String {
        match self.direction {
            Direction::Backward => format!(
                "a reader using the new schema cannot read data written with version {}",
                self.version
            ),
            Direction::Forward => format!(
                "a reader using version {} cannot read data written with the new schema",
                self.version
            ),
        }
    }
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "new schema is not {} compatible with version {}: {}: ",
            self.level,
            self.version,
            self.direction_phrase()
        )?;
        for (i, reason) in self.reasons.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{reason}")?;
        }
        Ok(())
    }
}

/// Checks `new` against `previous_versions_oldest_first`, numbered 1, 2, … in that order.
///
/// Returns the first incompatibility found, checking the latest version first.
pub fn check(
    level: CompatibilityLevel,
    new: &Schema,
    previous_versions_oldest_first: &[Schema],
) -> Result<(), Incompatibility> {
    let numbered = previous_versions_oldest_first
        .iter()
        .zip(1u32..)
        .map(|(schema, version)| (version, schema));
    check_versions(level, new, numbered)
}

/// Like [`check`], with explicit version numbers (a subject's versions need not be 1..n).
pub fn check_versions<'a>(
    level: CompatibilityLevel,
    new: &Schema,
    previous_oldest_first: impl IntoIterator<Item = (u32, &'a Schema)>,
) -> Result<(), Incompatibility> {
    match incompatibilities(level, new, previous_oldest_first)
        .into_iter()
        .next()
    {
        Some(incompatibility) => Err(incompatibility),
        None => Ok(()),
    }
}

/// Every incompatibility of `new` with the versions the level covers, latest version first.
pub fn incompatibilities<'a>(
    level: CompatibilityLevel,
    new: &Schema,
    previous_oldest_first: impl IntoIterator<Item = (u32, &'a Schema)>,
) -> Vec<Incompatibility> {
    let mut previous: Vec<(u32, &Schema)> = previous_oldest_first.into_iter().collect();
    previous.reverse();
    if !level.is_transitive() {
        previous.truncate(1);
    }
    let mut found = Vec::new();
    for (version, old) in previous {
        for &direction in level.directions() {
            let (writer, reader) = match direction {
                Direction::Backward => (old, new),
                Direction::Forward => (new, old),
            };
            if let Err(broken) = can_read(writer, reader) {
                found.push(Incompatibility {
                    level,
                    version,
                    direction,
                    reasons: broken.reasons,
                    avro_error: broken.avro_error,
                });
            }
        }
    }
    found
}

#[cfg(test)]
mod tests;
