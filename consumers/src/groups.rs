//! Commit groups, pure (no Kafka, SQLite or tokio): the records of the
//! commits topic, queued until every partition they name holds their
//! changes, then turned into the plan of ONE replica transaction.
//!
//! A group is **complete** when it follows the replica's position and every
//! partition it names reaches (without a hole) the group's last position
//! there. A partition of a topic this follower follows but does not hold (a
//! table or partition that appeared after it started) is NOT complete: the
//! group waits rather than be applied without those rows. Partitions of
//! topics left out on purpose (`--tables`) are not waited for.
//!
//! A **begin record** announces a group too large for one chunk: once enough
//! of its changes are in chain order, they are streamed into an open replica
//! transaction that the group's commit record closes.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use barista_schemas::envelope::DecodedChange;
use barista_schemas::{Commit, Position};

use crate::chain::{PartitionChain, TopicPartition};
use crate::checksums::LeaderSum;

/// The data partitions a follower holds.
pub type Chains = HashMap<TopicPartition, PartitionChain>;

/// Which data topics the follower follows.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// `None`: every table topic; otherwise only these topics.
    only: Option<HashSet<String>>,
}

impl Scope {
    /// Every table topic of the prefix.
    pub fn all() -> Self {
        Scope { only: None }
    }

    /// Only these topics (`--tables`).
    pub fn only(topics: impl IntoIterator<Item = String>) -> Self {
        Scope {
            only: Some(topics.into_iter().collect()),
        }
    }

    /// True when this follower applies `topic`'s changes.
    pub fn follows(&self, topic: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(topic))
    }
}

/// What one replica transaction applies: whole commit groups up to
/// `position`, and where every partition resumes after it.
#[derive(Debug)]
pub struct ApplyPlan {
    /// The replica's position once applied.
    pub position: Position,
    /// The leader time the new position is known fresh as of.
    pub leader_ts_ms: i64,
    /// In leader position order.
    pub changes: Vec<DecodedChange>,
    /// Per partition (the commits topic's included): the next offset to
    /// read after a restart, and the last position applied from it.
    pub offsets: Vec<(TopicPartition, (i64, Position))>,
    /// Tables dropped on the leader in these groups: (position, name), in
    /// position order. The replica drops them between the changes before
    /// and after.
    pub drops: Vec<(Position, String)>,
    /// The leader's checksums of the tables these groups changed: per
    /// table, the last group's (a table dropped after it has none).
    pub checksums: Vec<LeaderSum>,
    /// Table snapshots started or ended in these groups, in position order.
    pub snapshots: Vec<barista_schemas::TableSnapshot>,
}

/// What to do next.
#[derive(Debug)]
pub enum Plan {
    /// Apply whole groups in one transaction.
    Apply(ApplyPlan),
    /// Write these changes of a large group (position order) into the open
    /// transaction; its commit record closes it later.
    Stream(Vec<DecodedChange>),
    /// Nothing to apply yet.
    Wait,
}

/// A plan, and what the commits read meanwhile say about freshness.
#[derive(Debug)]
pub struct Planned {
    /// The plan.
    pub plan: Plan,
    /// With no `Apply`: heartbeats and commit records at or below the
    /// replica's position say it was current at this leader time.
    pub fresh_ts_ms: Option<i64>,
}

/// A large group while it streams: the span its begin record announced,
/// and how many of its changes are in the open replica transaction
/// (`/status` `group`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct GroupProgress {
    /// The group's first position.
    pub first: Position,
    /// The group's last position: the replica jumps here when it commits.
    pub last: Position,
    /// Changes of the group written into the open replica transaction so
    /// far (invisible to readers until the group's commit record closes it;
    /// a restart writes them again).
    pub applied: u64,
}

/// A begin record: its offset, the group's last position, and the position
/// of the group's first drop.
type Begun = (i64, Position, Option<Position>);

/// The commits topic's records not yet applied.
#[derive(Debug)]
pub struct CommitGroups {
    topic: String,
    scope: Scope,
    /// The offset after the last commits-topic message consumed.
    consumed: i64,
    queue: VecDeque<(i64, Commit)>,
    /// Begin records of large groups: first position → (offset, last
    /// position, position of the group's first drop).
    begun: BTreeMap<Position, Begun>,
    /// Changes streamed into the open replica transaction since the last
    /// commit (which closes it).
    streamed: u64,
    /// The highest position streamed into the open replica transaction
    /// (`ZERO`: none). Only a group that ends at or past it may close it.
    streamed_through: Position,
}

impl CommitGroups {
    /// Groups read from `topic` (the commits topic) from `next_offset`.
    pub fn new(topic: String, next_offset: i64, scope: Scope) -> Self {
        CommitGroups {
            topic,
            scope,
            consumed: next_offset,
            queue: VecDeque::new(),
            begun: BTreeMap::new(),
            streamed: 0,
            streamed_through: Position::ZERO,
        }
    }

    /// True when this follower applies `topic`'s changes.
    pub fn follows(&self, topic: &str) -> bool {
        self.scope.follows(topic)
    }

    /// The commits topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Records that the commits-topic message at `offset` was consumed
    /// (decodable or not).
    pub fn consumed(&mut self, offset: i64) {
        self.consumed = offset + 1;
    }

    /// Queues a commit record (or heartbeat), or notes a begin record.
    pub fn record(&mut self, offset: i64, commit: Commit, begin: bool) {
        if begin {
            let first_drop = commit.dropped.iter().map(|d| d.position).min();
            let begun = (offset, commit.last_position, first_drop);
            self.begun.insert(commit.first_position, begun);
        } else {
            self.queue.push_back((offset, commit));
        }
    }

    /// A newer leader epoch took over: drops the queued records and begin records of a
    /// replaced leader at or past the takeover position. Returns how many were dropped.
    pub fn fence(&mut self, fence: crate::fence::Fence) -> usize {
        let before = self.queue.len() + self.begun.len();
        self.queue
            .retain(|(_, c)| fence.admits(c.epoch, c.last_position));
        // Begin records of the new epoch come after its epoch-change record: every one
        // known now is older.
        self.begun.retain(|_, (_, last, _)| *last < fence.takeover);
        before - self.queue.len() - self.begun.len()
    }

    /// The partitions `c` names that this follower follows but does not
    /// hold: the group cannot complete until it holds them.
    pub fn unheld(&self, c: &Commit, chains: &Chains) -> Vec<TopicPartition> {
        c.partitions
            .iter()
            .filter(|t| self.scope.follows(&t.topic))
            .map(|t| (t.topic.clone(), t.partition))
            .filter(|tp| !chains.contains_key(tp))
            .collect()
    }

    /// True when `c` follows `current` and every partition it names that
    /// this follower follows holds its changes up to the group's tail there.
    fn complete(&self, c: &Commit, current: Position, chains: &Chains) -> bool {
        c.first_position <= current.next()
            && c.partitions
                .iter()
                .filter(|t| self.scope.follows(&t.topic))
                .all(|t| {
                    chains
                        .get(&(t.topic.clone(), t.partition))
                        .is_some_and(|p| p.contiguous() >= t.last_position)
                })
    }

    /// The next group after `current`, complete or not (heartbeats skipped).
    pub fn next_group(&self, current: Position) -> Option<&Commit> {
        self.queue.iter().map(|(_, c)| c).find(|c| {
            !c.is_heartbeat() && c.first_position <= current.next() && c.last_position > current
        })
    }

    /// Plans the next replica transaction from the replica's `position`
    /// (known fresh as of `position_ts_ms`): every complete group in a row,
    /// up to about `batch_max` changes, or else part of a large group.
    pub fn plan(
        &mut self,
        chains: &mut Chains,
        position: Position,
        position_ts_ms: i64,
        batch_max: usize,
    ) -> Planned {
        let mut target: Option<(Position, i64)> = None;
        let mut count = 0usize;
        let mut drops = Vec::new();
        let mut checksums: Vec<LeaderSum> = Vec::new();
        let mut snapshots = Vec::new();
        loop {
            let current = target.map_or(position, |t| t.0);
            let Some(c) = self.next_group(current) else {
                break;
            };
            if !self.complete(c, current, chains) {
                break;
            }
            let last = c.last_position;
            // Changes up to this group's end, earlier groups' included.
            let pending: usize = chains.values().map(|p| p.pending_through(last)).sum();
            if count > 0 && pending > batch_max && current >= self.streamed_through {
                break;
            }
            count = pending;
            target = Some((last, c.ts_ms));
            drops.extend(c.dropped.iter().map(|d| (d.position, d.table.clone())));
            snapshots.extend(c.snapshots.iter().cloned());
            // Last wins: a later group's sum, or its drop, replaces an earlier one.
            checksums.retain(|l| {
                !c.dropped.iter().any(|d| d.table == l.table)
                    && !c.checksums.iter().any(|t| t.table == l.table)
            });
            checksums.extend(c.checksums.iter().map(|t| LeaderSum {
                table: t.table.clone(),
                sum: t.sum,
                since: c.first_position,
            }));
        }
        // A producer killed after a begin record may close the same changes in shorter
        // groups when it restarts (it stored no progress inside the group). The open
        // transaction holds what was streamed of the announced group: committing it at a
        // position before its end would show readers a state the leader never had, so it
        // commits only with a group that covers it (adjacent groups merge, as above).
        if target.is_some_and(|(t, _)| t < self.streamed_through) {
            target = None;
        }
        // Heartbeats only move the clock; drop the ones already covered, but
        // first let them tell how fresh the new position is: the newest leader
        // time at which the leader was at or below it.
        let covered = target.map_or(position, |t| t.0);
        let fresh = self
            .queue
            .iter()
            .filter(|(_, c)| c.last_position <= covered)
            .map(|(_, c)| c.ts_ms)
            .max();
        self.queue
            .retain(|(_, c)| !(c.is_heartbeat() || c.last_position <= covered));
        let Some((target, ts)) = target else {
            return Planned {
                plan: self.stream(chains, position, batch_max),
                fresh_ts_ms: fresh,
            };
        };
        // What was fresh for the old position is fresh for a newer one.
        let leader_ts_ms = fresh.map_or(ts, |f| f.max(ts)).max(position_ts_ms);
        let mut changes = Vec::with_capacity(count);
        let mut offsets = Vec::with_capacity(chains.len() + 1);
        for (tp, chain) in chains.iter_mut() {
            changes.extend(chain.take_through(target));
            offsets.push((tp.clone(), (chain.next_offset(), chain.applied())));
        }
        changes.sort_by_key(|c| c.source.position);
        self.begun.retain(|_, (_, last, _)| *last > target);
        // This transaction completes the open one, if any.
        self.streamed = 0;
        self.streamed_through = Position::ZERO;
        offsets.push(((self.topic.clone(), 0), (self.next_offset(), target)));
        Planned {
            plan: Plan::Apply(ApplyPlan {
                position: target,
                leader_ts_ms,
                changes,
                offsets,
                drops,
                checksums,
                snapshots,
            }),
            fresh_ts_ms: None,
        }
    }

    /// The commits-topic offset a restart must read from: the oldest record
    /// not yet applied (queued or a begin record), else the next one.
    pub fn next_offset(&self) -> i64 {
        let queued = self.queue.iter().map(|(o, _)| *o);
        let begun = self.begun.values().map(|(o, _, _)| *o);
        queued.chain(begun).min().unwrap_or(self.consumed)
    }

    /// The current group is incomplete but its begin record said where it
    /// ends: once `batch_max` of its changes are in chain order on their
    /// partitions, they go into the open transaction. Memory stays bounded;
    /// readers still see the group all at once.
    fn stream(&mut self, chains: &mut Chains, current: Position, batch_max: usize) -> Plan {
        let Some((last, first_drop)) = self
            .begun_after(current)
            .map(|(_, (_, last, drop))| (*last, *drop))
        else {
            return Plan::Wait;
        };
        // Nothing past a drop before the drop: a table dropped and created
        // again in the group would otherwise get its new rows in the old copy,
        // which the drop (applied with the commit record) then removes.
        let last = first_drop.map_or(last, |d| last.min(Position(d.0 - 1)));
        let ready: usize = chains.values().map(|p| p.ready_through(last)).sum();
        if ready < batch_max.max(1) {
            return Plan::Wait;
        }
        let mut changes = Vec::with_capacity(ready);
        for chain in chains.values_mut() {
            let upto = last.min(chain.contiguous());
            changes.extend(chain.take_through(upto));
        }
        changes.sort_by_key(|c| c.source.position);
        self.streamed += changes.len() as u64;
        if let Some(c) = changes.last() {
            self.streamed_through = self.streamed_through.max(c.source.position);
        }
        Plan::Stream(changes)
    }

    /// The begin record of the large group that follows `current`.
    fn begun_after(&self, current: Position) -> Option<(&Position, &Begun)> {
        self.begun
            .iter()
            .find(|(first, (_, last, _))| **first <= current.next() && *last > current)
    }

    /// The large group after `current` (the replica's position), once its
    /// begin record was read: its span and how much of it is applied.
    pub fn progress(&self, current: Position) -> Option<GroupProgress> {
        self.begun_after(current)
            .map(|(first, (_, last, _))| GroupProgress {
                first: *first,
                last: *last,
                applied: self.streamed,
            })
    }
}

#[cfg(test)]
#[path = "groups_tests.rs"]
mod tests;
