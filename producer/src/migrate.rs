//! Migrate, the leader side of schema evolution: applies DDL to a captured leader in ONE SQLite
//! transaction that also re-creates the capture triggers and records a schema-change marker,
//! once the registry has judged the new Avro schemas compatible, so a change either happens
//! whole (schema, triggers, marker) or not at all.
//!
//! Reads: the DDL file, the leader's tables, the registry's verdicts. Writes: the leader (DDL,
//! `_barista_*`), then the new schema versions in the registry.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use barista_runtime::Backoff;
use barista_schemas::avro_schema::avro_default;
use barista_schemas::contract::{key_subject, table_topic, value_subject};
use barista_schemas::{TableSchemas, TableShape};
use rusqlite::TransactionBehavior;

use crate::capture::open_leader;
use crate::registry::Registry;
use crate::triggers;

/// How long a registry request may take.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(10);

/// What to migrate.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The leader database file (capture must be installed: the producer ran once).
    pub leader: PathBuf,
    /// The DDL, one or more statements, without BEGIN/COMMIT.
    pub ddl: String,
    /// Schema registry URL (Confluent API).
    pub registry_url: String,
    /// Topics are `<prefix>.<table>`; subjects `<topic>-key` / `<topic>-value`.
    pub topic_prefix: String,
}

/// One subject whose schema the migration changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVersion {
    /// The subject.
    pub subject: String,
    /// The id the registry gave the new schema.
    pub id: u64,
}

/// How a migration ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed; these subjects have new versions.
    Applied(Vec<NewVersion>),
    /// Committed; no captured table's schema changed (e.g. an index or a new table).
    NoSchemaChange,
    /// Rolled back: the leader is untouched.
    Refused {
        /// Each incompatibility, naming the subject, the field and the rule.
        problems: Vec<String>,
        /// What to do instead.
        advice: Vec<String>,
    },
}

/// A captured table before the DDL.
struct Before {
    id: i64,
    name: String,
    shape: TableShape,
}

/// Applies `m.ddl` if every changed schema passes the registry's compatibility check.
///
/// The registry is asked before the leader is locked: a dry run applies the DDL in a
/// transaction that is rolled back, to learn the new table shapes; the registry judges
/// those; then the DDL is applied for real (`BEGIN IMMEDIATE`), and the migration is
/// abandoned, changing nothing, if the shapes it produces are not the ones the registry
/// judged (another writer changed a table meanwhile). Writers wait only for local work,
/// never for a slow or unreachable registry.
pub async fn migrate(m: &Migration) -> anyhow::Result<Outcome> {
    let mut conn = open_leader(&m.leader)
        .with_context(|| format!("opening leader database {}", m.leader.display()))?;
    let registry = Registry::new(&m.registry_url, REGISTRY_TIMEOUT)?;
    anyhow::ensure!(
        triggers::capture_installed(&conn)?,
        "capture is not installed in {}: start the producer on it once, then migrate",
        m.leader.display()
    );

    let (before, changed) = {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let planned = apply_ddl(&tx, &m.ddl)?;
        tx.rollback()?;
        planned
    };
    let changed: Vec<(&Before, TableShape)> = changed
        .into_iter()
        .map(|(i, shape)| (&before[i], shape))
        .collect();

    let Verdict {
        problems,
        advice,
        to_register,
    } = judge(
        &registry,
        &m.topic_prefix,
        changed
            .iter()
            .map(|(b, new)| (b.name.as_str(), &b.shape, new)),
    )
    .await?;
    if !problems.is_empty() {
        return Ok(Outcome::Refused { problems, advice });
    }

    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (now_before, now_changed) = apply_ddl(&tx, &m.ddl)?;
    let same = now_before.len() == before.len()
        && now_before
            .iter()
            .zip(&before)
            .all(|(a, b)| a.id == b.id && a.shape == b.shape)
        && now_changed.len() == changed.len()
        && now_changed
            .iter()
            .zip(&changed)
            .all(|((i, shape), (b, checked))| now_before[*i].id == b.id && shape == checked);
    if !same {
        tx.rollback()?;
        anyhow::bail!(
            "a captured table changed while the registry checked this migration; nothing was \
             changed. Run the migration again"
        );
    }

    for b in &before {
        let shape = changed
            .iter()
            .find(|(c, _)| c.id == b.id)
            .map_or(&b.shape, |(_, s)| s);
        let columns = shape.column_names();
        triggers::widen_changelog(&tx, columns.len())?;
        triggers::replace(&tx, b.id, &b.name, &columns)?;
        triggers::record_columns(&tx, b.id, &columns)?;
    }
    for (b, new_shape) in &changed {
        let at = triggers::record_schema_change(&tx, b.id, &b.shape, new_shape)?;
        tracing::info!(table = %b.name, position = at, "schema change recorded");
    }
    tx.commit().context("committing the migration")?;

    if to_register.is_empty() {
        return Ok(Outcome::NoSchemaChange);
    }
    let mut registered = Vec::new();
    for (subject, schema) in to_register {
        // The producer would register it with its first event anyway; doing it now makes the
        // new version visible to consumers and tools at once.
        let id = registry
            .register(&subject, &schema)
            .await
            .with_context(|| {
                format!(
                    "the migration is committed, but registering {subject} failed; the producer \
                     registers it with the table's next change"
                )
            })?;
        registered.push(NewVersion {
            subject,
            id: u64::from(id),
        });
    }
    Ok(Outcome::Applied(registered))
}

/// What the registry says of the new schemas of changed tables.
struct Verdict {
    /// `subject (compatibility LEVEL): reason`, one per broken rule.
    problems: Vec<String>,
    /// The safe way to make each change.
    advice: Vec<String>,
    /// Subjects whose new schema passed: (subject, schema).
    to_register: Vec<(String, String)>,
}

/// Asks the registry about every subject whose schema a table change alters.
async fn judge<'a>(
    registry: &Registry,
    topic_prefix: &str,
    changes: impl Iterator<Item = (&'a str, &'a TableShape, &'a TableShape)>,
) -> anyhow::Result<Verdict> {
    let mut v = Verdict {
        problems: Vec::new(),
        advice: Vec::new(),
        to_register: Vec::new(),
    };
    for (table, old_shape, new_shape) in changes {
        let old = TableSchemas::derive(old_shape.clone())?;
        let new = TableSchemas::derive(new_shape.clone())?;
        let topic = table_topic(topic_prefix, table);
        for (subject, old_json, new_json) in [
            (key_subject(&topic), &old.key_json, &new.key_json),
            (value_subject(&topic), &old.value_json, &new.value_json),
        ] {
            if old_json == new_json {
                continue;
            }
            let messages = registry
                .compatibility(&subject, new_json)
                .await
                .with_context(|| {
                    format!(
                        "asking the schema registry at {} about {subject} (nothing was changed)",
                        registry.url()
                    )
                })?;
            if messages.is_empty() {
                v.to_register.push((subject, new_json.clone()));
                continue;
            }
            let level = registry
                .level(&subject)
                .await
                .unwrap_or_else(|_| "unknown level".to_owned());
            v.problems.extend(
                messages
                    .iter()
                    .map(|msg| format!("{subject} (compatibility {level}): {msg}")),
            );
            for line in advise(&old, &new, &messages) {
                if !v.advice.contains(&line) {
                    v.advice.push(line);
                }
            }
        }
    }
    Ok(v)
}

/// Before `--repair-triggers` re-creates the triggers of tables changed behind barista's back
/// (and re-publishes them), the registry judges their new schemas as `migrate` would. A repair
/// whose events the registry would refuse stops here, before it changes anything, naming the
/// field, the rule and the safe alternative; otherwise the producer would repair the leader and
/// then fail on its first event with a 409, with changes in the changelog it can never publish.
pub async fn check_repair(
    leader: &std::path::Path,
    registry_url: &str,
    topic_prefix: &str,
) -> anyhow::Result<()> {
    let drifted: Vec<(String, TableShape, TableShape)> = {
        let conn = open_leader(leader)
            .with_context(|| format!("opening leader database {}", leader.display()))?;
        if !triggers::capture_installed(&conn)? {
            return Ok(());
        }
        let captured: Vec<(String, String)> = conn
            .prepare("SELECT name, columns FROM _barista_tables ORDER BY id")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        captured
            .into_iter()
            .filter_map(|(name, was)| {
                let shape = TableShape::read(&conn, &name).ok()?;
                let was: Vec<String> = serde_json::from_str(&was).unwrap_or_default();
                // Columns can only have been added behind our back (SQLite refuses to drop
                // one a trigger names), so the old shape is the new one restricted to them.
                (was != shape.column_names()).then(|| (name, shape.restricted_to(&was), shape))
            })
            .collect()
    };
    if drifted.is_empty() {
        return Ok(());
    }
    let registry = Registry::new(registry_url, REGISTRY_TIMEOUT)?;
    // The registry may still be starting (compose): retry for about a minute.
    let mut backoff = Backoff::between(Duration::from_millis(500), Duration::from_secs(32));
    let verdict = loop {
        let judged = judge(
            &registry,
            topic_prefix,
            drifted.iter().map(|(n, old, new)| (n.as_str(), old, new)),
        )
        .await;
        match judged {
            Ok(v) => break v,
            Err(e) if backoff.peek() < Duration::from_secs(30) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff.peek(), "--repair-triggers: schema registry unavailable; retrying");
                backoff.wait().await;
            }
            Err(e) => {
                return Err(
                    e.context("checking the repaired tables' schemas before --repair-triggers")
                )
            }
        }
    };
    if verdict.problems.is_empty() {
        return Ok(());
    }
    let mut text = String::from(
        "--repair-triggers stopped before changing anything: the table changed behind barista's \
         back has a schema the registry refuses",
    );
    for p in &verdict.problems {
        text.push_str(&format!("\n  {p}"));
    }
    for a in &verdict.advice {
        text.push_str(&format!("\n  instead: {a}"));
    }
    anyhow::bail!(text)
}

/// In `tx`: drops the captured tables' triggers (SQLite refuses `DROP COLUMN` on a
/// column a trigger names; they come back, made for the new columns, in the same
/// transaction) and applies `ddl`. Returns the captured tables as they were and, by
/// index into them, the new shapes of those the DDL changed.
#[allow(clippy::type_complexity)]
fn apply_ddl(
    tx: &rusqlite::Transaction<'_>,
    ddl: &str,
) -> anyhow::Result<(Vec<Before>, Vec<(usize, TableShape)>)> {
    let captured: Vec<(i64, String)> = tx
        .prepare("SELECT id, name FROM _barista_tables ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut before = Vec::new();
    for (id, name) in captured {
        // A table captured once but gone since is not ours to migrate.
        let Ok(shape) = TableShape::read(tx, &name) else {
            continue;
        };
        tx.execute_batch(&triggers::drop_sql(id))?;
        before.push(Before { id, name, shape });
    }
    if let Err(e) = tx.execute_batch(ddl) {
        anyhow::bail!("applying the DDL: {e} (rolled back; the leader is unchanged)");
    }
    let mut changed = Vec::new();
    for (i, b) in before.iter().enumerate() {
        let shape = TableShape::read(tx, &b.name).map_err(|e| {
            anyhow::anyhow!(
                "the DDL dropped, renamed or broke captured table {:?} ({e}); migrate changes \
                 columns only. Rolled back; the leader is unchanged",
                b.name
            )
        })?;
        if shape != b.shape {
            changed.push((i, shape));
        }
    }
    Ok((before, changed))
}

/// Whether a column's Avro field has a default (nullable, or NOT NULL with a literal DEFAULT).
fn has_default(schemas: &TableSchemas, column: &str) -> bool {
    schemas
        .shape
        .columns
        .iter()
        .zip(&schemas.codecs)
        .find(|(c, _)| c.name == column)
        .is_some_and(|(c, codec)| {
            codec.nullable
                || c.default
                    .as_deref()
                    .and_then(|d| avro_default(codec, d))
                    .is_some()
        })
}

/// The safe way to make the change, for the rules the registry says it breaks.
fn advise(old: &TableSchemas, new: &TableSchemas, messages: &[String]) -> Vec<String> {
    let table = &new.shape.name;
    let old_names = old.shape.column_names();
    let new_names = new.shape.column_names();
    let mentions = |rule: &str| messages.iter().any(|m| m.contains(rule));
    let mut advice = Vec::new();
    if mentions("READER_FIELD_MISSING_DEFAULT_VALUE") {
        for c in new
            .shape
            .columns
            .iter()
            .filter(|c| !old_names.contains(&c.name))
        {
            if !has_default(new, &c.name) {
                advice.push(format!(
                    "column {table}.{name} is added NOT NULL without a literal DEFAULT, so a reader \
                     of the new schema has no value for events written before it: add the column \
                     with a DEFAULT (e.g. `ALTER TABLE {table} ADD COLUMN {name} {ty} NOT NULL \
                     DEFAULT 0`), or nullable",
                    name = c.name,
                    ty = if c.decl_type.is_empty() { "ANY" } else { &c.decl_type },
                ));
            }
        }
        for c in old
            .shape
            .columns
            .iter()
            .filter(|c| !new_names.contains(&c.name))
        {
            if !has_default(old, &c.name) {
                advice.push(format!(
                    "column {table}.{} is dropped but readers of the old schema need a value for \
                     it (the subject's level includes FORWARD): keep the column and stop writing \
                     it, or agree with every consumer to lower the subject's level first",
                    c.name
                ));
            }
        }
    }
    if mentions("TYPE_MISMATCH") || mentions("MISSING_UNION_BRANCH") {
        advice.push(format!(
            "a column of {table} changed type: add a new column with the new type instead, \
             write both for a while, then stop using the old one"
        ));
    }
    if advice.is_empty() {
        advice.push(format!(
            "change {table} in smaller compatible steps (add columns nullable or with a literal \
             DEFAULT; never change a column's type)"
        ));
    }
    advice
}
