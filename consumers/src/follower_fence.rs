//! The follower loop's side of takeovers ([`crate::fence`]): a commit record of a newer
//! epoch moves the fence (stored in the replica first), and drops what a replaced leader
//! sent past the takeover position from the buffers; messages of a replaced leader are
//! counted and ignored.

use std::time::Instant;

use anyhow::Context as _;
use barista_schemas::envelope::DecodedChange;
use barista_schemas::Commit;

use super::Follower;

impl Follower {
    /// Whether commit record `c` is to be followed; moves the fence at a takeover.
    pub(super) async fn admit_commit(&mut self, c: &Commit) -> anyhow::Result<bool> {
        let fence = self.shared.state().fence;
        if !fence.admits(c.epoch, c.last_position) {
            self.shared.metrics.fenced.inc();
            return Ok(false);
        }
        let Some(new) = fence.advanced_by(c) else {
            return Ok(true);
        };
        let at = self.shared.state().position;
        anyhow::ensure!(
            at < new.takeover,
            "epoch {} took over at position {}, but this replica already applied changes of the replaced leader up to position {at} \
             (a group it finished before it was fenced): the replica differs from the new leader's history; re-seed it from the new leader or a follower",
            new.epoch,
            new.takeover
        );
        let streaming = self.replica.as_ref().is_some_and(|r| r.is_open())
            && self
                .groups
                .progress(self.shared.state().position)
                .is_some_and(|g| g.last >= new.takeover);
        if streaming {
            // The group streamed into the open replica transaction is the replaced leader's,
            // past the takeover: rolled back, and the fence stored, so the restart this asks
            // for ignores it.
            self.on_replica(move |r| {
                r.abandon_partial();
                new.store(r.connection())
            })
            .await?
            .context("storing the new leader epoch in the replica")?;
            anyhow::bail!(
                "epoch {} took over at position {} while this follower streamed a larger group of the replaced leader past it: \
                 that group was rolled back; restart the follower (it then ignores the group)",
                new.epoch,
                new.takeover
            );
        }
        // Stored before anything else changes: a restart that reads the replaced leader's
        // messages again still ignores them.
        self.on_replica(move |r| new.store(r.connection()))
            .await?
            .context("storing the new leader epoch in the replica")?;
        let now = Instant::now();
        let mut dropped = self.groups.fence(new);
        for chain in self.chains.values_mut() {
            dropped += chain.fence(new, now);
        }
        self.shared.metrics.fenced.inc_by(dropped as u64);
        self.shared.state.send_modify(|s| {
            s.fence = new;
            // The replaced leader's heads past the takeover were never this history's.
            s.leader_position = s
                .position
                .max(barista_schemas::Position(new.takeover.0 - 1));
        });
        tracing::warn!(epoch = new.epoch, takeover = %new.takeover, dropped, "a new leader took over: following its epoch; the replaced leader's messages from the takeover position on are ignored");
        Ok(true)
    }

    /// False (and counted) for a change a replaced leader wrote past the takeover.
    pub(super) fn admit_change(&self, change: &DecodedChange) -> bool {
        let admitted = self
            .shared
            .state()
            .fence
            .admits(change.source.epoch, change.source.position);
        if !admitted {
            self.shared.metrics.fenced.inc();
        }
        admitted
    }
}
