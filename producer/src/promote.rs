//! `producer --promote` and `producer --fenced-report`: the Kafka and registry side of a
//! takeover ([`crate::takeover`] is the file side, [`crate::fence`] the commits topic).
//!
//! Reads: the commits topic, the registry's latest value schemas, the database file.
//! Writes: the database file (promotion only).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use barista_schemas::contract::{commits_topic, table_topic, value_subject};
use barista_schemas::envelope::RowShape;
use barista_schemas::{Position, TableShape};

use crate::capture::open_leader;
use crate::config::ProducerConfig;
use crate::fence::{self, CommitReader, TAIL_RECORDS};
use crate::registry::Registry;
use crate::takeover::{self, Promotion};

const REGISTRY_TIMEOUT: Duration = Duration::from_secs(10);

/// Turns the stopped follower's replica at `config.leader` into the leader of the next epoch
/// (see [`takeover::promote_file`]). Refused when Kafka holds commit groups past the
/// replica's position: promoting it would lose changes every other follower may have applied.
/// A file promoted earlier whose epoch-change record is not published yet is left as it is
/// (the run publishes the record first).
pub async fn promote(config: &ProducerConfig) -> anyhow::Result<Option<Promotion>> {
    let file = config.leader.display().to_string();
    let conn = open_leader(&config.leader).with_context(|| format!("opening {file}"))?;
    if takeover::replica_position(&conn)?.is_none() && takeover::epoch(&conn)? > 0 {
        tracing::info!(leader = %file, "already promoted; publishing as its epoch's leader");
        return Ok(None);
    }
    let Some(position) = takeover::replica_position(&conn)? else {
        anyhow::bail!(takeover::PromoteError::NotAReplica(file));
    };
    let own = takeover::replica_epoch(&conn)?;
    let registry = Registry::new(&config.registry_url, REGISTRY_TIMEOUT)?;
    let commits = commits_topic(&config.topic_prefix);
    let mut reader = CommitReader::new(registry.clone());
    let (view, _) = fence::read(
        &config.brokers,
        &config.kafka_options,
        &commits,
        &mut reader,
        Some(TAIL_RECORDS),
    )
    .await
    .with_context(|| format!("reading {commits} before promoting"))?;
    if position < view.committed {
        // Commit records past the replica. A group is whole in Kafka only if every partition
        // it names holds its tail there (a producer killed mid-send may leave a commit record
        // whose events never arrived: no follower applies such a group). A whole group means
        // Kafka acknowledged changes this replica lacks: refused.
        let later: Vec<&barista_schemas::Commit> = view
            .groups
            .iter()
            .filter(|c| c.last_position > position)
            .collect();
        let stored: HashMap<(String, i32), i64> = conn
            .prepare("SELECT topic, partition, next_offset FROM _barista_offsets")?
            .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        let from: HashMap<(String, i32), Option<i64>> = later
            .iter()
            .flat_map(|c| c.partitions.iter())
            .map(|t| {
                let tp = (t.topic.clone(), t.partition);
                let at = stored.get(&tp).copied();
                (tp, at)
            })
            .collect();
        let held = fence::positions_in(&config.brokers, &config.kafka_options, &from)
            .await
            .context("reading the data partitions past the replica")?;
        // Followers apply groups in position order: only the whole ones in a row from the
        // replica's position could have been applied anywhere.
        let mut ordered = later.clone();
        ordered.sort_by_key(|c| c.first_position);
        let mut reach = position;
        for c in ordered {
            if c.first_position > reach.next() || c.last_position <= reach {
                continue;
            }
            let whole = c
                .partitions
                .iter()
                .all(|t| held.contains(&(t.topic.clone(), t.partition, t.last_position.0)));
            if !whole {
                break;
            }
            reach = c.last_position;
        }
        let whole = (reach > position).then_some(reach);
        if let Some(whole) = whole {
            anyhow::bail!(
                "refusing to promote {file}: its position is {position}, but Kafka holds whole commit groups of epoch {} up to position {whole}. \
                 Start its consumer again until it has applied them (its /status shows position_lag 0), \
                 or promote the follower that is furthest ahead",
                view.epoch
            );
        }
        tracing::warn!(position = %position, commit_records_up_to = %view.committed,
            "Kafka holds commit records past this replica whose groups are not whole (their producer stopped mid-send): no follower applied them; they are left behind");
    }
    let mut shapes = HashMap::new();
    for table in TableShape::list_tables(&conn)? {
        let subject = value_subject(&table_topic(&config.topic_prefix, &table));
        if let Some(schema) = registry
            .latest(&subject)
            .await
            .with_context(|| format!("reading the latest schema of {subject}"))?
        {
            shapes.insert(table, RowShape::from_value_schema(&schema)?);
        }
    }
    let epoch = view.epoch.max(own) + 1;
    let mut conn = conn;
    let p = takeover::promote_file(&mut conn, &file, epoch, &shapes, &commits)?;
    tracing::info!(leader = %file, epoch = p.epoch, takeover = %p.takeover, tables = shapes.len(), "promoted: this file is now the leader");
    Ok(Some(p))
}

/// What `--fenced-report` prints about this (replaced) leader.
pub async fn fenced_report(config: &ProducerConfig) -> anyhow::Result<String> {
    let file = config.leader.display().to_string();
    let conn = open_leader(&config.leader).with_context(|| format!("opening {file}"))?;
    let own = takeover::epoch(&conn)?;
    let registry = Registry::new(&config.registry_url, REGISTRY_TIMEOUT)?;
    let commits = commits_topic(&config.topic_prefix);
    let mut reader = CommitReader::new(registry);
    // All of it: the takeover record may be far back by now.
    let (view, _) = fence::read(
        &config.brokers,
        &config.kafka_options,
        &commits,
        &mut reader,
        None,
    )
    .await
    .with_context(|| format!("reading {commits}"))?;
    let Some((epoch, at)) = view.takeover_after(own) else {
        return Ok(format!(
            "{file} (epoch {own}) was not replaced: {commits} holds no takeover after epoch {own} (highest epoch {})",
            view.epoch
        ));
    };
    let w = takeover::fenced_writes(&conn, at)?;
    let range = match w.range {
        Some((a, b)) => format!("positions {a}..={b}"),
        None => "none".to_owned(),
    };
    Ok(format!(
        "{file} (epoch {own}) was replaced by epoch {epoch} at position {at}.\n\
         fenced writes: {} change(s) this leader committed at or after position {at} were never published as part of the new leader's history: {range}\n\
         of them sent to Kafka but never applied by followers (no whole commit group): {}\n\
         this leader's acknowledged position: {}\n\
         They were not merged anywhere. Read them from _barista_changelog (position >= {at}) in this file, \
         and re-apply on the new leader whatever must survive.",
        w.changes,
        w.sent_unapplied,
        w.acked,
    ))
}

/// The first position of a takeover not yet announced, for the run.
pub fn pending(config: &ProducerConfig) -> anyhow::Result<Option<(i64, Position)>> {
    let conn = open_leader(&config.leader)?;
    Ok(takeover::pending_takeover(&conn)?.map(|p| (takeover::epoch(&conn).unwrap_or(0), p)))
}
