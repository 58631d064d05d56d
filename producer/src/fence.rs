//! Fencing: the leader epochs as the commits topic tells them. Every commit record carries the
//! epoch of the leader that wrote it; `producer --promote` starts a new epoch with an
//! epoch-change record. A producer reads the commits topic's tail before it publishes, and
//! watches it while it runs: a record of a higher epoch than its own means another leader took
//! over, and it stops publishing ([`barista_runtime::exit::Fenced`], exit code 3).
//!
//! Reads: the commits topic (partition 0), the registry (writer schemas by id). Writes: nothing.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use apache_avro::Schema;
use barista_runtime::exit::Fenced;
use barista_schemas::contract::{GROUP_BEGIN, HEADER_GROUP};
use barista_schemas::{Commit, Position};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::registry::Registry;

/// How long reading the commits topic up to its end may take.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Records read back from the end of the commits topic before publishing: the newest leader's
/// records are among them (it heartbeats every second while idle).
pub const TAIL_RECORDS: i64 = 2_000;

/// What a stretch of the commits topic says about leader epochs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EpochView {
    /// The highest epoch read (0 when none, or only records from before epochs).
    pub epoch: i64,
    /// Epoch → where it took over (its epoch-change record), for the epoch-change records read.
    pub takeovers: BTreeMap<i64, Position>,
    /// The last position of the newest commit group of the highest epoch (no begin records,
    /// no heartbeats): what Kafka holds of that leader's history, whole.
    pub committed: Position,
    /// Records read.
    pub records: u64,
    /// The commit records (no begin records, no heartbeats) of the highest epoch read.
    pub groups: Vec<Commit>,
}

impl EpochView {
    /// Takes one commit record into account.
    pub fn see(&mut self, c: &Commit, begin: bool) {
        self.records += 1;
        if c.epoch > self.epoch {
            self.epoch = c.epoch;
            self.committed = Position::ZERO;
            self.groups.clear();
        }
        if let Some(at) = c.takeover() {
            self.takeovers.entry(c.epoch).or_insert(at);
        }
        if c.epoch == self.epoch && !begin && !c.is_heartbeat() {
            self.committed = self.committed.max(c.last_position);
            self.groups.push(c.clone());
        }
    }

    /// The first takeover after epoch `own`: (epoch, position), if one was read.
    pub fn takeover_after(&self, own: i64) -> Option<(i64, Position)> {
        self.takeovers
            .range(own + 1..)
            .next()
            .map(|(e, p)| (*e, *p))
    }

    /// The error a producer of epoch `own` stops with when this view holds a higher epoch.
    pub fn fenced(&self, own: i64) -> Option<Fenced> {
        (self.epoch > own).then(|| fenced_message(own, self.epoch, self.takeover_after(own)))
    }
}

fn fenced_message(own: i64, epoch: i64, takeover: Option<(i64, Position)>) -> Fenced {
    let at = match takeover {
        Some((e, p)) => format!("epoch {e} took over at position {p}"),
        None => "its takeover position is further back than was read".to_owned(),
    };
    Fenced(format!(
        "this leader (epoch {own}) was replaced: the commits topic holds epoch {epoch} ({at}). \
         Nothing more is published from here. Writes this leader committed that were never \
         published are listed by `producer --leader <this file> --fenced-report`; point the \
         application's writes at the new leader"
    ))
}

/// Decodes commit records read back from Kafka (Confluent framing, writer schema by id).
pub struct CommitReader {
    registry: Registry,
    schemas: HashMap<u32, Schema>,
}

impl CommitReader {
    /// A reader asking `registry` for writer schemas.
    pub fn new(registry: Registry) -> Self {
        CommitReader {
            registry,
            schemas: HashMap::new(),
        }
    }

    /// The commit record in `payload`.
    // apache-avro 0.22 deprecates the datum helpers (see barista_schemas::commit).
    #[allow(deprecated)]
    pub async fn decode(&mut self, payload: &[u8]) -> anyhow::Result<Commit> {
        anyhow::ensure!(
            payload.len() >= 5 && payload[0] == 0,
            "not a Confluent-framed record"
        );
        let id = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
        if !self.schemas.contains_key(&id) {
            let text = self
                .registry
                .schema_by_id(id)
                .await
                .with_context(|| format!("looking up schema id {id}"))?;
            self.schemas.insert(id, Schema::parse_str(&text)?);
        }
        let schema = &self.schemas[&id];
        let v = apache_avro::from_avro_datum(schema, &mut &payload[5..], None)?;
        Ok(Commit::from_avro(v)?)
    }
}

fn consumer(brokers: &str, options: &[(String, String)]) -> anyhow::Result<StreamConsumer> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        // Assigned, never subscribed: the group id is never joined or committed to.
        .set("group.id", format!("barista-fence-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    for (k, v) in options {
        // Producer-only options would make the consumer refuse to start.
        if !k.starts_with("message.") && !k.starts_with("queue.buffering") {
            c.set(k, v);
        }
    }
    c.create().context("creating the commits-topic reader")
}

fn is_begin(m: &impl Message) -> bool {
    m.headers().is_some_and(|h| {
        h.iter()
            .any(|h| h.key == HEADER_GROUP && h.value == Some(GROUP_BEGIN.as_bytes()))
    })
}

/// Reads the commits topic from `tail` records before its end (all of it when `None`) up to
/// the end as of now, and returns what it says about epochs and the end offset.
pub async fn read(
    brokers: &str,
    options: &[(String, String)],
    topic: &str,
    reader: &mut CommitReader,
    tail: Option<i64>,
) -> anyhow::Result<(EpochView, i64)> {
    let consumer = consumer(brokers, options)?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .with_context(|| format!("reading the offsets of {topic}"))?;
    let mut view = EpochView::default();
    let from = tail.map_or(low, |n| (high - n).max(low));
    if from >= high {
        return Ok((view, high));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(from))?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + READ_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, consumer.recv())
            .await
            .with_context(|| format!("reading {topic} up to offset {high} took over a minute"))?
            .with_context(|| format!("reading {topic}"))?;
        if let Some(payload) = m.payload() {
            match reader.decode(payload).await {
                Ok(c) => view.see(&c, is_begin(&m)),
                Err(e) => {
                    tracing::warn!(offset = m.offset(), error = %format!("{e:#}"), "unreadable commit record skipped")
                }
            }
        }
        if m.offset() + 1 >= high {
            return Ok((view, high));
        }
    }
}

/// The leader positions (header `barista.position`) of the messages in each partition of
/// `from`, read from the offset given there (the low watermark when `None`) up to the
/// partition's end as of now.
pub async fn positions_in(
    brokers: &str,
    options: &[(String, String)],
    from: &HashMap<(String, i32), Option<i64>>,
) -> anyhow::Result<std::collections::HashSet<(String, i32, i64)>> {
    let consumer = consumer(brokers, options)?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for ((topic, partition), offset) in from {
        let (low, high) = consumer
            .fetch_watermarks(topic, *partition, Duration::from_secs(10))
            .with_context(|| format!("reading the offsets of {topic}/{partition}"))?;
        let start = offset.unwrap_or(low).max(low);
        if start < high {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(start))?;
            ends.insert((topic.clone(), *partition), high);
        }
    }
    let mut seen = std::collections::HashSet::new();
    if ends.is_empty() {
        return Ok(seen);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + READ_TIMEOUT;
    while !ends.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, consumer.recv())
            .await
            .context("reading the data partitions took over a minute")??;
        let tp = (m.topic().to_owned(), m.partition());
        let position = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == barista_schemas::contract::HEADER_POSITION)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<i64>().ok())
        });
        if let Some(p) = position {
            seen.insert((tp.0.clone(), tp.1, p));
        }
        if ends.get(&tp).is_some_and(|end| m.offset() + 1 >= *end) {
            ends.remove(&tp);
        }
    }
    Ok(seen)
}

/// Watches the commits topic from `from` on, in a task: the first record of an epoch above
/// `own` is sent on the returned channel as the reason to stop. Ends with the channel.
pub fn watch(
    brokers: &str,
    options: &[(String, String)],
    topic: &str,
    mut reader: CommitReader,
    own: i64,
    from: i64,
) -> anyhow::Result<(mpsc::Receiver<Fenced>, tokio::task::JoinHandle<()>)> {
    let consumer = consumer(brokers, options)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(from))?;
    consumer.assign(&tpl)?;
    let (tx, rx) = mpsc::channel(1);
    let task = tokio::spawn(async move {
        let mut view = EpochView::default();
        loop {
            let m = match consumer.recv().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "commits-topic watch: Kafka error (retrying)");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let Some(payload) = m.payload() else { continue };
            let c = match reader.decode(payload).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(offset = m.offset(), error = %format!("{e:#}"), "commits-topic watch: unreadable record skipped");
                    continue;
                }
            };
            view.see(&c, is_begin(&m));
            if let Some(f) = view.fenced(own) {
                let _ = tx.send(f).await;
                return;
            }
        }
    });
    Ok((rx, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: i64, first: i64, last: i64) -> Commit {
        Commit {
            db: "d".into(),
            first_position: Position(first),
            last_position: Position(last),
            epoch,
            ..Commit::default()
        }
    }

    #[test]
    fn a_higher_epoch_fences_and_names_the_takeover() {
        let mut v = EpochView::default();
        v.see(&record(0, 1, 10), false);
        v.see(&record(0, 11, 10), false); // heartbeat of epoch 0: not a takeover
        assert_eq!((v.epoch, v.committed), (0, Position(10)));
        assert!(v.fenced(0).is_none());
        v.see(&record(1, 11, 10), false); // promote's epoch-change record
        v.see(&record(1, 11, 12), false);
        v.see(&record(0, 11, 15), false); // the old leader, still publishing
        assert_eq!((v.epoch, v.committed), (1, Position(12)));
        assert_eq!(v.takeover_after(0), Some((1, Position(11))));
        let f = v.fenced(0).unwrap().to_string();
        assert!(f.contains("epoch 1 took over at position 11"), "{f}");
        assert!(v.fenced(1).is_none());
    }
}
