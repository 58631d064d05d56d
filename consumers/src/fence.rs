//! Leader epochs on a follower. Every change and commit record carries the epoch of the
//! leader that wrote it; `producer --promote` starts a new epoch with an epoch-change record
//! (a record with no changes whose `first_position` is the takeover position). From then on,
//! changes and records of an older epoch at or past the takeover position come from a replaced
//! leader: they are ignored and counted (`fenced` in `/status`), never applied. Changes before
//! the takeover position are the shared history, whoever sent them.
//!
//! The fence is kept in the replica (`_barista_fence`), so a restarted follower that reads the
//! old leader's messages again still ignores them.
//!
//! Reads and writes: `_barista_fence`.

use barista_schemas::{Commit, Position};
use rusqlite::{Connection, OptionalExtension};

const SQL: &str = "CREATE TABLE IF NOT EXISTS _barista_fence (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    epoch    INTEGER NOT NULL,   -- the newest leader epoch known
    takeover INTEGER NOT NULL    -- its first position
);";

/// The newest leader epoch known, and where it took over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fence {
    /// The epoch (0: no takeover yet).
    pub epoch: i64,
    /// Its first position: older epochs' changes from here on are a replaced leader's.
    pub takeover: Position,
}

impl Fence {
    /// False for a change (or commit record ending) at `position` written by a replaced leader.
    pub fn admits(&self, epoch: i64, position: Position) -> bool {
        epoch >= self.epoch || position < self.takeover
    }

    /// The fence after commit record `c`, when it starts a newer epoch.
    pub fn advanced_by(&self, c: &Commit) -> Option<Fence> {
        (c.epoch > self.epoch).then(|| Fence {
            epoch: c.epoch,
            takeover: c.takeover().unwrap_or(c.first_position),
        })
    }

    /// The fence stored in the replica (none: epoch 0).
    pub fn load(conn: &Connection) -> rusqlite::Result<Fence> {
        conn.execute_batch(SQL)?;
        Ok(conn
            .query_row(
                "SELECT epoch, takeover FROM _barista_fence WHERE id = 1",
                [],
                |r| {
                    Ok(Fence {
                        epoch: r.get(0)?,
                        takeover: Position(r.get(1)?),
                    })
                },
            )
            .optional()?
            .unwrap_or_default())
    }

    /// Stores the fence in the replica.
    pub fn store(&self, conn: &Connection) -> rusqlite::Result<()> {
        conn.execute_batch(SQL)?;
        conn.execute(
            "INSERT INTO _barista_fence(id, epoch, takeover) VALUES (1, ?1, ?2) \
             ON CONFLICT(id) DO UPDATE SET epoch = excluded.epoch, takeover = excluded.takeover",
            [self.epoch, self.takeover.0],
        )?;
        Ok(())
    }
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
    fn a_replaced_leaders_changes_past_the_takeover_are_not_admitted() {
        let none = Fence::default();
        assert!(none.admits(0, Position(100)));
        let f = none.advanced_by(&record(1, 51, 50)).unwrap();
        assert_eq!(
            f,
            Fence {
                epoch: 1,
                takeover: Position(51)
            }
        );
        assert!(f.admits(0, Position(50)), "shared history");
        assert!(
            !f.admits(0, Position(51)),
            "the old leader's write after the takeover"
        );
        assert!(f.admits(1, Position(51)));
        assert_eq!(f.advanced_by(&record(1, 52, 60)), None);
        assert_eq!(f.advanced_by(&record(0, 52, 60)), None);
    }

    #[test]
    fn the_fence_survives_in_the_replica() {
        let conn = Connection::open_in_memory().unwrap();
        assert_eq!(Fence::load(&conn).unwrap(), Fence::default());
        let f = Fence {
            epoch: 2,
            takeover: Position(9),
        };
        f.store(&conn).unwrap();
        assert_eq!(Fence::load(&conn).unwrap(), f);
    }
}
