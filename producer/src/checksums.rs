//! Table checksums, kept beside the tail: per captured table, the wrapping sum of its rows'
//! hashes ([`barista_schemas::checksum`]) as of the last position the tail read, kept from
//! each change's before and after images (c and r add h(after), u subtracts h(before) and
//! adds h(after), d subtracts h(before)). A commit record carries the sums of the tables its
//! group changed, at the group's last position; followers compare them with their own.
//!
//! The values are kept per group until Kafka acknowledged it: a rewind goes back to the sums
//! as of the acknowledged position, and each prune stores them with it in
//! `_barista_checksums`, where a restarted producer takes them up again. Where no kept value
//! can be trusted (nothing stored, a gap, a shape change) the sum is recomputed from the
//! leader ([`recompute::sum_at`]), so hashes of two shapes never mix.
//!
//! Reads: [`ChangeRow`]s and [`Mark`]s from capture. Writes: the sums handed to the tail
//! (commit records, prune).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use barista_schemas::checksum::{apply, to_wire, RowHasher, TableChecksum};
use barista_schemas::envelope::RowShape;
use barista_schemas::{Op, Position, TableSchemas};

use crate::capture::{Capture, CaptureError, ChangeRow, Mark};
use recompute::SumAt;

pub mod recompute;
#[cfg(test)]
mod tests;
pub mod verify;

/// One table's running checksum.
#[derive(Debug, Clone)]
struct TableSum {
    /// The leader table's name (the key in `_barista_checksums` and commit records).
    name: Arc<str>,
    /// The shape the sum is taken in.
    schemas: Arc<TableSchemas>,
    /// Hashes rows of that shape.
    hasher: Arc<RowHasher>,
    /// `None` while it cannot be known (see [`SumAt::Unknown`]), or while a snapshot of the
    /// table runs (followers hold part of it); such a table is left out of commit records and
    /// is not stored.
    sum: Option<u64>,
}

/// The hasher of rows in `schemas`' shape, as followers derive it: from the value schema.
fn hasher(schemas: &TableSchemas) -> Result<Arc<RowHasher>, CaptureError> {
    Ok(Arc::new(RowHasher::new(&RowShape::from_value_schema(
        &schemas.value_json,
    )?)))
}

impl TableSum {
    fn new(schemas: Arc<TableSchemas>, sum: Option<u64>) -> Result<Self, CaptureError> {
        Ok(TableSum {
            name: schemas.shape.name.as_str().into(),
            hasher: hasher(&schemas)?,
            schemas,
            sum,
        })
    }
}

/// A group read: its last position, and the tables it touched as they were at its end
/// (`None`: dropped).
type GroupSums = (Position, Vec<(i64, Option<TableSum>)>);

/// The running checksums of one producer run (see the module docs).
#[derive(Debug)]
pub(crate) struct Checksums {
    /// As of the last position the tail read, by `_barista_tables.id`.
    live: HashMap<i64, TableSum>,
    /// As of `base_at`: the acknowledged position (or where the run started).
    base: HashMap<i64, TableSum>,
    base_at: Position,
    /// Groups read after `base_at`, oldest first.
    groups: VecDeque<GroupSums>,
    /// Tables the group being read touched: (id, whether a change came after its markers).
    touched: Vec<(i64, bool)>,
}

impl Checksums {
    /// The sums of every captured table as of `acked`: stored with that position, else
    /// recomputed from the leader.
    pub fn load(capture: &Capture, acked: Position) -> Result<Self, CaptureError> {
        let stored = capture.stored_sums(acked)?;
        let mut live = HashMap::new();
        let mut ids: Vec<i64> = capture.tables().keys().copied().collect();
        ids.sort();
        for id in ids {
            let Some(schemas) = capture.schemas_after(id, acked) else {
                continue;
            };
            let mut t = TableSum::new(schemas, None)?;
            t.sum = match stored.get(&*t.name) {
                // Mid-snapshot, followers hold part of the table: no sum to compare yet.
                _ if crate::snapshot::unsettled_after(capture.conn(), id, acked.0)? => None,
                Some(sum) => Some(*sum),
                None => {
                    let sum = recomputed(capture, id, acked, &t)?;
                    tracing::info!(table = %t.name, at = %acked, known = sum.is_some(), "no stored checksum: recomputed from the leader");
                    sum
                }
            };
            live.insert(id, t);
        }
        Ok(Checksums {
            base: live.clone(),
            live,
            base_at: acked,
            groups: VecDeque::new(),
            touched: Vec::new(),
        })
    }

    /// Takes in one chunk of a group: its changes and the markers among them, in position
    /// order.
    pub fn apply(
        &mut self,
        capture: &Capture,
        rows: &[ChangeRow],
        marks: &[Mark],
    ) -> Result<(), CaptureError> {
        let mut marks = marks.iter().peekable();
        for row in rows {
            while let Some(m) = marks.next_if(|m| mark_position(m) < row.position) {
                self.mark(capture, *m)?;
            }
            self.change(capture, row)?;
        }
        for m in marks {
            self.mark(capture, *m)?;
        }
        Ok(())
    }

    /// Closes the group ending at `last`: the sums of the tables it changed, for its commit
    /// record, in table order.
    pub fn end_group(&mut self, last: Position) -> Vec<TableChecksum> {
        let touched = std::mem::take(&mut self.touched);
        let mut sums: Vec<TableChecksum> = touched
            .iter()
            .filter(|(_, changed)| *changed)
            .filter_map(|(id, _)| self.live.get(id))
            .filter_map(|t| {
                t.sum.map(|sum| TableChecksum {
                    table: t.name.to_string(),
                    sum: to_wire(sum),
                })
            })
            .collect();
        sums.sort_by(|a, b| a.table.cmp(&b.table));
        let states = touched
            .into_iter()
            .map(|(id, _)| (id, self.live.get(&id).cloned()))
            .collect();
        self.groups.push_back((last, states));
        sums
    }

    /// Kafka acknowledged everything up to `acked`: the sums as of there, to store with it.
    pub fn acknowledged(&mut self, acked: Position) -> Vec<(String, u64)> {
        self.advance_base(acked);
        let mut sums: Vec<(String, u64)> = self
            .base
            .values()
            .filter_map(|t| t.sum.map(|s| (t.name.to_string(), s)))
            .collect();
        sums.sort();
        sums
    }

    /// Capture starts again after `from` (the acknowledged position): back to the sums as of
    /// there.
    pub fn rewind(&mut self, from: Position) {
        self.advance_base(from);
        self.groups.clear();
        self.touched.clear();
        self.live = self.base.clone();
    }

    /// The sums of every table now, as of the last position read (for tests and status).
    #[cfg(test)]
    pub fn live(&self) -> HashMap<String, Option<u64>> {
        self.live
            .values()
            .map(|t| (t.name.to_string(), t.sum))
            .collect()
    }

    fn advance_base(&mut self, to: Position) {
        while self.groups.front().is_some_and(|(last, _)| *last <= to) {
            let Some((_, states)) = self.groups.pop_front() else {
                break;
            };
            for (id, state) in states {
                match state {
                    Some(t) => self.base.insert(id, t),
                    None => self.base.remove(&id),
                };
            }
        }
        self.base_at = self.base_at.max(to);
    }

    /// Table `id` changed (`changed`), or a marker of it was read (not `changed`). A marker
    /// after the table's last change in the group leaves it out of the group's record: its
    /// sum is then in a shape no change event of the group was written with, which a
    /// follower cannot know yet. The next group that changes it carries it.
    fn touch(&mut self, id: i64, changed: bool) {
        match self.touched.iter_mut().find(|(t, _)| *t == id) {
            Some((_, c)) => *c = changed,
            None => self.touched.push((id, changed)),
        }
    }

    fn mark(&mut self, capture: &Capture, mark: Mark) -> Result<(), CaptureError> {
        match mark {
            Mark::Drop(at, id) => {
                if let Some(t) = self.live.remove(&id) {
                    tracing::debug!(table = %t.name, position = %at, "table dropped: its checksum is forgotten");
                    self.touch(id, false);
                }
            }
            Mark::Shape(at, id) | Mark::SnapshotEnd(at, id) => {
                let Some(schemas) = capture.schemas_after(id, at) else {
                    return Ok(());
                };
                self.reshape(capture, id, at, schemas)?;
            }
            Mark::SnapshotStart(at, id) => {
                let Some(schemas) = capture.schemas_after(id, at) else {
                    return Ok(());
                };
                tracing::debug!(table = %schemas.shape.name, position = %at, "snapshot started: checksum unknown until it ends");
                self.live.insert(id, TableSum::new(schemas, None)?);
                self.touch(id, false);
            }
        }
        Ok(())
    }

    /// Table `id` is shaped `schemas` after `at`: its sum is recomputed in that shape.
    fn reshape(
        &mut self,
        capture: &Capture,
        id: i64,
        at: Position,
        schemas: Arc<TableSchemas>,
    ) -> Result<(), CaptureError> {
        let mut t = TableSum::new(schemas, None)?;
        t.sum = recomputed(capture, id, at, &t)?;
        tracing::info!(table = %t.name, position = %at, known = t.sum.is_some(), "table shape changed: checksum recomputed in the new shape");
        self.live.insert(id, t);
        self.touch(id, false);
        Ok(())
    }

    fn change(&mut self, capture: &Capture, row: &ChangeRow) -> Result<(), CaptureError> {
        let id = row.table_id;
        let fits = match self.live.get_mut(&id) {
            // Same shape, perhaps another copy of it (after a rewind, or a restart).
            Some(t) if Arc::ptr_eq(&t.schemas, &row.schemas) => true,
            Some(t) if t.schemas.value_json == row.schemas.value_json => {
                t.schemas = row.schemas.clone();
                true
            }
            Some(_) => false,
            // Not known here (its snapshot's start marker comes first, so this is unusual):
            // taken from the leader.
            None => false,
        };
        if !fits {
            // Another shape without a marker read before it: never mix two shapes' hashes.
            let at = Position(row.position.0 - 1);
            self.reshape(capture, id, at, row.schemas.clone())?;
        }
        self.touch(id, true);
        let Some(t) = self.live.get_mut(&id) else {
            return Ok(());
        };
        let h = |image: &Option<Vec<_>>| image.as_deref().map(|r| t.hasher.hash(r));
        if row.op == Op::Read {
            // A snapshot read copies a row the table has: the table did not change.
            return Ok(());
        }
        let (before, after) = (h(&row.before), h(&row.after));
        t.sum = t.sum.map(|s| apply(s, before, after));
        Ok(())
    }
}

/// A marker's position.
fn mark_position(m: &Mark) -> Position {
    match m {
        Mark::Shape(p, _)
        | Mark::Drop(p, _)
        | Mark::SnapshotStart(p, _)
        | Mark::SnapshotEnd(p, _) => *p,
    }
}

/// `t`'s sum recomputed from the leader as of `at`; `None` (logged) when not computable.
fn recomputed(
    capture: &Capture,
    id: i64,
    at: Position,
    t: &TableSum,
) -> Result<Option<u64>, CaptureError> {
    Ok(match capture.sum_at(id, at, &t.schemas, &t.hasher)? {
        SumAt::Known(sum) => Some(sum),
        SumAt::Unknown(why) => {
            tracing::info!(table = %t.name, position = %at, %why, "checksum not known for now: left out of commit records");
            None
        }
    })
}
