//! The topics of captured tables: each table's output (topic, partition
//! count, schemas, subjects), one table per topic (two names that sanitise
//! to the same topic are refused, not merged), and the topics of tables
//! captured while the producer runs, created before any of their changes
//! is sent.
//!
//! Reads: captured tables. Writes: topics (through [`crate::kafka`]).

use std::collections::HashMap;
use std::sync::Arc;

use barista_schemas::contract::{key_subject, table_topic, value_subject};
use barista_schemas::TableSchemas;

use crate::capture::CapturedTable;
use crate::ops::Ops;
use crate::publish::Publisher;

/// A captured table's topic, partition count, schemas and subjects.
pub(crate) struct TableOut {
    /// `<prefix>.<table>`.
    pub topic: String,
    /// The topic's partition count, as the broker reports it.
    pub partitions: i32,
    /// The schemas of the last change sent (they change at schema-change markers).
    pub schemas: Arc<TableSchemas>,
    /// `<topic>-key`.
    pub key_subject: String,
    /// `<topic>-value`.
    pub value_subject: String,
}

impl TableOut {
    /// The output of `topic` with `partitions` partitions.
    pub fn new(topic: String, partitions: i32, schemas: Arc<TableSchemas>) -> TableOut {
        TableOut {
            key_subject: key_subject(&topic),
            value_subject: value_subject(&topic),
            topic,
            partitions,
            schemas,
        }
    }
}

/// How the topics of tables captured while running are named and created.
pub(crate) struct NewTopics {
    /// `<prefix>.<table>`.
    pub prefix: String,
    /// Partitions of a topic barista creates.
    pub partitions: i32,
    /// Its replication factor.
    pub replication_factor: i32,
}

/// Adds `table`'s output on `topic` unless a table of another name already
/// has that topic (two names that sanitise alike, such as `"odd names"` and
/// `odd_names`): then it is refused, loudly, and nothing of it is published,
/// while every other table keeps flowing. Either way `ops` is told.
pub(crate) fn claim_topic(
    outs: &mut HashMap<i64, TableOut>,
    table: &CapturedTable,
    topic: String,
    partitions: i32,
    ops: &Ops,
) {
    let name = &table.schemas.shape.name;
    // The same name again is a table dropped and created anew: both outputs share the topic
    // (the old one for its changes before the drop).
    let clash = |o: &&TableOut| o.topic == topic && o.schemas.shape.name != *name;
    if let Some(other) = outs.values().find(clash) {
        tracing::error!(table = %name, other = %other.schemas.shape.name, %topic,
            "two tables map to the same topic; this one is not published (rename one of them)");
        let why = format!(
            "topic name clash: {topic} is already the topic of table {:?} (rename one of them)",
            other.schemas.shape.name
        );
        ops.table_refused(name, why);
        return;
    }
    ops.table_published(name, &topic, partitions);
    outs.insert(
        table.id,
        TableOut::new(topic, partitions, table.schemas.clone()),
    );
}

/// Uses partitions added to a table's topic since it was last looked at (Kafka never takes
/// partitions away, so a count only grows). Keys hash to new partitions from then on; each
/// key's order still holds, because followers apply groups, and the changes inside one, in
/// position order whatever partitions they come from. Returns what grew: (topic, was, now).
pub(crate) fn grow_partitions(
    outs: &mut HashMap<i64, TableOut>,
    counts: &HashMap<String, i32>,
) -> Vec<(String, i32, i32)> {
    let mut grown = Vec::new();
    for out in outs.values_mut() {
        if let Some(&now) = counts.get(&out.topic).filter(|&&n| n > out.partitions) {
            grown.push((out.topic.clone(), out.partitions, now));
            out.partitions = now;
        }
    }
    grown
}

impl Publisher<'_> {
    /// Creates the topics of tables captured while running, before any of
    /// their changes is sent (retrying while Kafka is unavailable).
    pub(crate) async fn add_tables(&mut self, tables: Vec<CapturedTable>) -> anyhow::Result<()> {
        let wanted: Vec<(String, i32)> = tables
            .iter()
            .map(|t| {
                let topic = table_topic(&self.topics.prefix, &t.schemas.shape.name);
                (topic, self.topics.partitions)
            })
            .collect();
        let counts = loop {
            match self
                .kafka
                .ensure_topics(&wanted, self.topics.replication_factor)
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    let e = format!("{e:#}");
                    tracing::warn!(error = %e, retry_in = ?self.backoff.peek(), "creating a new table's topic failed; retrying");
                    self.ops.broker_error(e);
                    self.backoff.wait().await;
                }
            }
        };
        self.backoff.reset();
        for (t, (topic, partitions)) in tables.iter().zip(wanted) {
            let partitions = counts.get(&topic).copied().unwrap_or(partitions);
            tracing::info!(table = %t.schemas.shape.name, %topic, partitions, "publishing a table captured while running");
            claim_topic(&mut self.outs, t, topic, partitions, &self.ops);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use barista_schemas::TableShape;
    use rusqlite::Connection;

    use super::*;

    fn ops() -> Ops {
        Ops::new(&crate::ProducerConfig::new("l.db", "b", "r"))
    }

    fn captured(conn: &Connection, id: i64, name: &str) -> CapturedTable {
        CapturedTable {
            id,
            schemas: Arc::new(TableSchemas::derive(TableShape::read(conn, name).unwrap()).unwrap()),
        }
    }

    #[test]
    fn two_tables_whose_names_make_one_topic_are_not_merged() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            r#"CREATE TABLE "odd names"(id INTEGER PRIMARY KEY);
               CREATE TABLE odd_names(id INTEGER PRIMARY KEY);
               CREATE TABLE plain(id INTEGER PRIMARY KEY);"#,
        )
        .unwrap();
        let mut outs = HashMap::new();
        let ops = ops();
        for (id, name) in [(1, "odd names"), (2, "odd_names"), (3, "plain")] {
            let t = captured(&conn, id, name);
            claim_topic(&mut outs, &t, table_topic("p", name), 3, &ops);
        }
        let skipped = ops.status().unwrap().skipped;
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].table, "odd_names");
        assert!(
            skipped[0].reason.contains("topic name clash")
                && skipped[0].reason.contains("odd names"),
            "{skipped:?}"
        );
        let mut topics: Vec<(i64, &str)> =
            outs.iter().map(|(id, o)| (*id, o.topic.as_str())).collect();
        topics.sort();
        assert_eq!(topics, [(1, "p.odd_names"), (3, "p.plain")]);
        assert_eq!(outs[&1].value_subject, "p.odd_names-value");
        // `plain` dropped and created again: a new id on the same topic.
        let again = captured(&conn, 4, "plain");
        claim_topic(&mut outs, &again, table_topic("p", "plain"), 3, &ops);
        assert_eq!(outs[&4].topic, "p.plain");
        assert_eq!(outs[&3].topic, "p.plain");
    }

    #[test]
    fn partitions_added_to_a_topic_are_used_and_a_count_never_shrinks() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE a(id INTEGER PRIMARY KEY); CREATE TABLE b(id INTEGER PRIMARY KEY);",
        )
        .unwrap();
        let mut outs = HashMap::new();
        let ops = ops();
        claim_topic(&mut outs, &captured(&conn, 1, "a"), "p.a".into(), 3, &ops);
        claim_topic(&mut outs, &captured(&conn, 2, "b"), "p.b".into(), 3, &ops);
        let counts = HashMap::from([("p.a".to_owned(), 6), ("p.b".to_owned(), 2)]);
        assert_eq!(
            grow_partitions(&mut outs, &counts),
            [("p.a".to_owned(), 3, 6)]
        );
        assert_eq!((outs[&1].partitions, outs[&2].partitions), (6, 3));
        assert!(grow_partitions(&mut outs, &counts).is_empty(), "once");
        assert!(
            grow_partitions(&mut outs, &HashMap::new()).is_empty(),
            "unknown: unchanged"
        );
    }
}
