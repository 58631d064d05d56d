//! The follower's status, and what the table checksums say (a child module
//! of the loop): which leader checksums this follower compares (tables it
//! follows and no operator skipped a change of), and the stop when one
//! differs: the replica keeps serving reads at its position, `/status` shows
//! `diverged`, `/ready` fails and `barista_follower_diverged` is 1.

use std::collections::HashSet;
use std::future::Future;

use anyhow::Context;
use barista_runtime::Poisoned;
use barista_schemas::contract::table_topic;

use super::Follower;
use crate::checksums::{Divergence, LeaderSum};
use crate::config::FollowerConfig;
use crate::groups::Chains;
use crate::kafka;
use crate::lag::{PartitionLabels, PartitionStatus, Status};
use crate::replica::Replica;
use crate::state::Shared;

/// The loop's error when the replica diverged: [`super::run`] then stops
/// applying but keeps serving.
#[derive(Debug, thiserror::Error)]
#[error("replica diverged from the leader in table {} at position {}", .0.table, .0.position)]
pub(super) struct Diverged(pub Divergence);

/// The topics an operator skipped changes of, and (in the shared verdict)
/// the replica tables they belong to: never compared with the leader's.
pub(super) fn unverified_at_start(
    shared: &Shared,
    config: &FollowerConfig,
    replica: &Replica,
) -> anyhow::Result<HashSet<String>> {
    let topics: HashSet<String> = replica
        .skipped()
        .context("reading _barista_skipped")?
        .into_iter()
        .map(|((t, _), _)| t)
        .collect();
    let tables =
        crate::verify::user_tables(replica.connection()).context("listing replica tables")?;
    let mut v = shared.verdict()?;
    for t in tables {
        if topics.contains(&table_topic(&config.topic_prefix, &t)) {
            v.unverified.insert(t);
        }
    }
    Ok(topics)
}

/// Logs the divergence once, then serves (status, reads) without applying
/// until `shutdown`.
pub(super) async fn stand_diverged(
    shared: &Shared,
    config: &FollowerConfig,
    chains: &Chains,
    d: Divergence,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tracing::error!(
        table = %d.table, position = %d.position, leader = d.leader, replica = d.replica,
        replica_file = %config.replica.display(),
        "replica differs from the leader: the table's checksum at this commit record is not the leader's. \
         Applying stopped; reads are still served at this position. Repair: re-seed the replica from a healthy \
         peer (stop this follower, then `consumer --reseed --seed-from http://PEER`), or re-snapshot the table; \
         `consumer verify --replica FILE --against http://PEER` names the differing rows"
    );
    shared.verdict()?.diverged = Some(d);
    publish_status(shared, config, chains, None)?;
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tick.tick() => publish_status(shared, config, chains, None)?,
        }
    }
}

impl Follower {
    /// The leader checksums this follower compares: tables it follows, and
    /// of those not the ones an operator skipped a change of (shown as
    /// `unverified` instead).
    pub(super) fn leader_sums(&self, sums: Vec<LeaderSum>) -> Result<Vec<LeaderSum>, Poisoned> {
        let mut out = Vec::with_capacity(sums.len());
        for l in sums {
            let topic = table_topic(&self.config.topic_prefix, &l.table);
            if !self.groups.follows(&topic) {
                continue;
            }
            if self.skipped_topics.contains(&topic) {
                self.shared.verdict()?.unverified.insert(l.table);
                continue;
            }
            out.push(l);
        }
        Ok(out)
    }

    /// An operator skipped a change of `topic`: its table is no longer
    /// compared.
    pub(super) fn skipped_topic(&mut self, topic: &str) -> anyhow::Result<()> {
        self.skipped_topics.insert(topic.to_owned());
        let Some(replica) = self.replica.as_ref() else {
            return Ok(());
        };
        let tables = crate::verify::user_tables(replica.connection())?;
        let mut v = self.shared.verdict()?;
        for t in tables {
            if table_topic(&self.config.topic_prefix, &t) == topic {
                v.unverified.insert(t);
            }
        }
        Ok(())
    }

    /// The replica diverged: pause every partition (nothing more is applied)
    /// and end the loop with [`Diverged`].
    pub(super) fn diverged(&self, d: Divergence) -> anyhow::Error {
        let parts: Vec<_> = self.chains.keys().cloned().collect();
        kafka::set_paused(&self.consumer, &parts, true);
        Diverged(d).into()
    }
}

/// Rebuilds the status and the lag metrics from the published state and the
/// partitions held.
pub(super) fn publish_status(
    shared: &Shared,
    config: &FollowerConfig,
    chains: &Chains,
    group: Option<crate::groups::GroupProgress>,
) -> Result<(), Poisoned> {
    let st = shared.state();
    let verdict = shared.verdict()?.clone();
    let seconds = st.seconds_lag(config.heartbeat_grace);
    let m = &shared.metrics;
    m.diverged.set(i64::from(verdict.diverged.is_some()));
    let mut partitions = std::collections::BTreeMap::new();
    let mut total = 0;
    for ((t, p), chain) in chains {
        let lag = chain.offset_lag();
        total += lag;
        m.offset_lag
            .get_or_create(&PartitionLabels {
                topic: t.clone(),
                partition: p.to_string(),
            })
            .set(lag);
        partitions.insert(
            format!("{t}/{p}"),
            PartitionStatus {
                next_offset: chain.next_offset(),
                high_watermark: chain.high_watermark,
                offset_lag: lag,
                applied_position: chain.applied(),
                blocked: chain.blocked().map(|b| b.reason.clone()),
            },
        );
    }
    m.position_lag.set(st.position_lag());
    m.set_seconds_lag(seconds);
    m.applied_position.set(st.position.0);
    m.leader_position.set(st.leader_position.0);
    let status = Status {
        follower: config.follower_id.clone(),
        applied_position: st.position,
        leader_position: st.leader_position,
        position_lag: st.position_lag(),
        seconds_lag: seconds,
        offset_lag: total,
        partitions,
        group,
        changes_applied: m.changes_applied.get(),
        duplicates: m.duplicates.get(),
        dead_letters: m.dead_letters.get(),
        paused: *shared.paused.borrow(),
        halted: None,
        held_by: crate::held::held_by(shared, chains)?,
        diverged: verdict.diverged.clone(),
        unverified: verdict.unverified.iter().cloned().collect(),
        snapshots: shared
            .snapshots
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default(),
        epoch: st.fence.epoch,
        takeover_position: (st.fence.epoch > 0).then_some(st.fence.takeover),
        fenced: m.fenced.get(),
    };
    *shared.status()? = status;
    Ok(())
}
