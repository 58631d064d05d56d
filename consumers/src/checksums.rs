//! Apply's table checksums (see [`barista_schemas::checksum`]): inside the
//! replica's apply transaction, every change takes the hash of the replica's
//! current row for its key out of its table's sum and puts the hash of the
//! row it writes in. The sum is stored in `_barista_checksums` with the
//! writer shape it was taken under, and compared with the leader's at every
//! commit record.
//!
//! The hash of the replica's current row comes from the memo of the rows
//! this connection wrote or scanned (`checksum_memo.rs`), or else from an
//! indexed read of the row. Reads the replica's rows (a full scan when a
//! table's shape changes, it has no stored sum yet or another connection
//! wrote the file; an indexed read per change the memo cannot answer);
//! writes `_barista_checksums` and, on a mismatch, `_barista_diverged`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use barista_schemas::checksum::{self, RowHasher};
use barista_schemas::envelope::RowShape;
use barista_schemas::{Position, SqlValue};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

#[path = "checksum_memo.rs"]
mod memo;
use memo::{Memo, MEMO_ROWS};
#[path = "checksum_shape.rs"]
mod shape;
pub use shape::{shape_from_json, shape_json, stored_or_own_shape};

/// A replica table that differs from the leader's at a commit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergence {
    /// The table.
    pub table: String,
    /// The replica's position when the sums were compared.
    pub position: Position,
    /// The leader's checksum (i64 bits).
    pub leader: i64,
    /// The replica's checksum (i64 bits).
    pub replica: i64,
}

/// What the checksums say about a follower's replica, for `/status`.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// A table differed from the leader's at a commit record.
    pub diverged: Option<Divergence>,
    /// Tables an operator skipped a change of: knowingly different from
    /// the leader, so not compared.
    pub unverified: std::collections::BTreeSet<String>,
}

/// The leader's checksum of a table, as a batch carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderSum {
    /// The table.
    pub table: String,
    /// The leader's sum (i64 bits) at the end of the group that carried it.
    pub sum: i64,
    /// The first position of that group. The replica's sum is comparable only
    /// if the replica's last change to the table in this transaction is in
    /// that group: its shape is then the one the leader summed under (a group
    /// that named the table without changing a row of it, a migration's for
    /// example, may carry a sum under a shape the replica has not seen yet).
    pub since: Position,
}

/// How rows of one writer shape are read and hashed.
struct ShapePlan {
    /// Kept so the address the plan is cached under stays unique.
    shape: Arc<RowShape>,
    hasher: RowHasher,
    /// `SELECT <shape columns, in the hasher's order> FROM t WHERE <key> IS ?…`.
    select_one: String,
    /// The key columns' places in the hasher's order, in key order.
    key_sorted: Vec<usize>,
    /// The shape as stored with the sum.
    json: String,
}

/// The replica-row reads of one apply call, prepared once per shape: no
/// SQL text hashed per change (as `prepare_cached` would).
#[derive(Default)]
pub struct Reads<'c> {
    statements: Vec<(Arc<ShapePlan>, rusqlite::Statement<'c>)>,
}

impl<'c> Reads<'c> {
    fn statement(
        &mut self,
        conn: &'c Connection,
        plan: &Arc<ShapePlan>,
    ) -> rusqlite::Result<&mut rusqlite::Statement<'c>> {
        let i = match self
            .statements
            .iter()
            .position(|(p, _)| Arc::ptr_eq(p, plan))
        {
            Some(i) => i,
            None => {
                let stmt = conn.prepare(&plan.select_one)?;
                self.statements.push((plan.clone(), stmt));
                self.statements.len() - 1
            }
        };
        Ok(&mut self.statements[i].1)
    }
}

/// A table's sum inside the open transaction.
struct TableSum {
    table: String,
    plan: Arc<ShapePlan>,
    sum: u64,
    /// The table's row hashes, under `plan`'s shape.
    memo: Memo,
    /// Position of the last change to the table in this transaction.
    last: Position,
    /// The plan of that change: its shape is the one the leader's sum is
    /// taken under (see [`Sums::settle`]).
    last_plan: Arc<ShapePlan>,
}

/// The checksum side of a replica: plans per writer shape, and the sums of
/// the tables the open transaction changed.
pub struct Sums {
    enabled: bool,
    plans: HashMap<usize, Arc<ShapePlan>>,
    open: Vec<TableSum>,
    /// Tables whose stored sum this process recomputed or kept since it last
    /// saw another connection write the file. A stored sum follows only the
    /// changes the follower applied, so a hand edit of a row it does not
    /// touch again would go unseen; a sum recomputed from the rows sees it.
    /// Empty at start (the file may have been edited while stopped).
    trusted: HashSet<String>,
    /// `PRAGMA data_version` after this connection's last transaction: it
    /// changes when another connection commits to the file.
    data_version: Option<i64>,
    /// The memos of the tables not open in a transaction.
    memos: HashMap<String, Memo>,
    /// Row hashes held by all memos, open or not (at most `memo_cap`).
    memo_rows: usize,
    /// [`MEMO_ROWS`], or less in tests.
    memo_cap: usize,
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

impl Sums {
    /// Checksums kept when `enabled`.
    pub fn new(enabled: bool) -> Self {
        Sums {
            enabled,
            plans: HashMap::new(),
            open: Vec::new(),
            trusted: HashSet::new(),
            data_version: None,
            memos: HashMap::new(),
            memo_rows: 0,
            memo_cap: MEMO_ROWS,
        }
    }

    /// A write transaction began: if another connection wrote the file since
    /// this one's last transaction, no stored sum is trusted any more; each
    /// table's is recomputed from its rows at its next change.
    pub fn begin(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let v: i64 = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        if self.data_version.is_some_and(|d| d != v) {
            tracing::warn!(
                "another connection wrote the replica file; table checksums are recomputed from the rows at their next change"
            );
            self.trusted.clear();
            self.memos.clear();
            self.memo_rows = 0;
        }
        self.data_version = Some(v);
        Ok(())
    }

    /// Keeps at most `rows` row hashes (tests: memos dropped and rows read).
    #[cfg(test)]
    pub(crate) fn set_memo_cap(&mut self, rows: usize) {
        self.memo_cap = rows;
    }

    /// True when checksums are kept.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn plan(&mut self, shape: &Arc<RowShape>) -> Arc<ShapePlan> {
        let key = Arc::as_ptr(shape) as usize;
        self.plans
            .entry(key)
            .or_insert_with(|| {
                let hasher = RowHasher::new(shape);
                let order: Vec<usize> = hasher.sorted_indexes().collect();
                let cols: Vec<String> = order
                    .iter()
                    .map(|&i| quote(&shape.columns[i].name))
                    .collect();
                let pk = shape.pk_indexes();
                let key: Vec<String> = pk
                    .iter()
                    .enumerate()
                    .map(|(n, &i)| format!("{} IS ?{}", quote(&shape.columns[i].name), n + 1))
                    .collect();
                let key_sorted = pk
                    .iter()
                    .map(|i| order.iter().position(|o| o == i).unwrap_or_default())
                    .collect();
                Arc::new(ShapePlan {
                    shape: shape.clone(),
                    hasher,
                    select_one: format!(
                        "SELECT {} FROM {} WHERE {}",
                        cols.join(", "),
                        quote(&shape.table),
                        key.join(" AND ")
                    ),
                    key_sorted,
                    json: shape_json(shape),
                })
            })
            .clone()
    }

    /// The open transaction's sum of `shape`'s table, taken under `shape`:
    /// the stored one if it was stored under the same shape, else (a
    /// migration, or a replica from before checksums) recomputed from all
    /// the table's rows, inside the transaction. Its index in `open` (a few
    /// tables per transaction: a pointer comparison beats hashing names).
    fn table(&mut self, conn: &Connection, shape: &Arc<RowShape>) -> rusqlite::Result<usize> {
        // The common case, first: the table is open under this very shape.
        if let Some(i) = self
            .open
            .iter()
            .position(|t| Arc::ptr_eq(&t.plan.shape, shape))
        {
            return Ok(i);
        }
        let plan = self.plan(shape);
        let at = self.open.iter().position(|t| t.table == shape.table);
        if let Some(i) = at.filter(|&i| self.open[i].plan.json == plan.json) {
            // Another copy of the same shape (decoded under another id).
            self.open[i].plan = plan;
            return Ok(i);
        }
        let stored: Option<(i64, String)> = conn
            .prepare_cached("SELECT sum, shape FROM _barista_checksums WHERE tbl = ?1")?
            .query_row([&shape.table], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        // The table's memo (open under another shape, or kept since its last
        // transaction) is used only under the shape it was taken in.
        let memo = match at {
            Some(i) => std::mem::take(&mut self.open[i].memo),
            None => self.memos.remove(&shape.table).unwrap_or_default(),
        };
        let (sum, memo) = match stored {
            Some((sum, json))
                if at.is_none() && json == plan.json && self.trusted.contains(&shape.table) =>
            {
                let memo = if memo.shape == plan.json {
                    memo
                } else {
                    self.memo_rows -= memo.rows.len();
                    Memo::default()
                };
                (checksum::from_wire(sum), memo)
            }
            _ => {
                self.memo_rows -= memo.rows.len();
                let (sum, memo) = self.recompute(conn, &plan)?;
                tracing::debug!(table = %shape.table, rows = memo.rows.len(), complete = memo.complete,
                    "table checksum recomputed from the rows");
                self.trusted.insert(shape.table.clone());
                (sum, memo)
            }
        };
        let (last, last_plan) = match at {
            Some(i) => (self.open[i].last, self.open[i].last_plan.clone()),
            None => (Position::ZERO, plan.clone()),
        };
        let t = TableSum {
            table: shape.table.clone(),
            plan,
            sum,
            memo,
            last,
            last_plan,
        };
        Ok(match at {
            Some(i) => {
                self.open[i] = t;
                i
            }
            None => {
                self.open.push(t);
                self.open.len() - 1
            }
        })
    }

    /// The table was dropped inside the transaction: its sum and memo go
    /// with it.
    pub fn dropped(&mut self, conn: &Connection, table: &str) -> rusqlite::Result<()> {
        for t in self.open.iter().filter(|t| t.table == table) {
            self.memo_rows -= t.memo.rows.len();
        }
        self.open.retain(|t| t.table != table);
        if let Some(m) = self.memos.remove(table) {
            self.memo_rows -= m.rows.len();
        }
        conn.prepare_cached("DELETE FROM _barista_checksums WHERE tbl = ?1")?
            .execute([table])?;
        Ok(())
    }

    /// Before COMMIT: stores the sums the transaction changed and compares
    /// the leader's; the first mismatch is recorded in `_barista_diverged`
    /// and returned (the transaction still commits: its rows were applied
    /// as sent).
    ///
    /// A table's sum is first brought under the shape of its change with the
    /// highest position, the one the leader's sum is taken under: a streamed
    /// group applies each partition's changes as far as its chain goes, so
    /// a change from before a migration may be applied after one from after
    /// it, and leave the sum under the old shape.
    pub fn settle(
        &mut self,
        conn: &Connection,
        leader: &[LeaderSum],
        position: Position,
    ) -> rusqlite::Result<Option<Divergence>> {
        let behind: Vec<Arc<RowShape>> = self
            .open
            .iter()
            .filter(|t| t.plan.json != t.last_plan.json)
            .map(|t| t.last_plan.shape.clone())
            .collect();
        for shape in &behind {
            self.table(conn, shape)?;
        }
        let mut store = conn.prepare_cached(
            "INSERT INTO _barista_checksums(tbl, sum, shape) VALUES (?1, ?2, ?3) \
             ON CONFLICT(tbl) DO UPDATE SET sum = excluded.sum, shape = excluded.shape",
        )?;
        for t in &self.open {
            store.execute(params![t.table, checksum::to_wire(t.sum), t.plan.json])?;
        }
        for l in leader {
            let Some(t) = self.open.iter().find(|t| t.table == l.table) else {
                continue;
            };
            if t.last < l.since {
                continue;
            }
            let replica = checksum::to_wire(t.sum);
            if replica != l.sum {
                let d = Divergence {
                    table: l.table.clone(),
                    position,
                    leader: l.sum,
                    replica,
                };
                conn.execute(
                    "INSERT OR REPLACE INTO _barista_diverged(id, tbl, position, leader, replica, found_at) \
                     VALUES (1, ?1, ?2, ?3, ?4, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                    params![d.table, d.position, d.leader, d.replica],
                )?;
                return Ok(Some(d));
            }
        }
        Ok(None)
    }

    /// The transaction ended: committed (the memos are kept for the next),
    /// or rolled back (then what was recomputed in it is recomputed again,
    /// and no memo is trusted).
    pub fn end(&mut self, committed: bool) {
        if committed {
            for t in self.open.drain(..) {
                self.memos.insert(t.table, t.memo);
            }
        } else {
            self.open.clear();
            self.trusted.clear();
            self.memos.clear();
            self.memo_rows = 0;
        }
    }
}

/// Rows of `table` under `shape`, one callback per row (the shape's columns,
/// in its order): a full scan, in key order.
pub fn scan(
    conn: &Connection,
    shape: &RowShape,
    mut each: impl FnMut(&[SqlValue]),
) -> rusqlite::Result<()> {
    let cols: Vec<String> = shape.columns.iter().map(|c| quote(&c.name)).collect();
    let order: Vec<String> = shape
        .pk_indexes()
        .iter()
        .map(|&i| cols[i].clone())
        .collect();
    let order = if order.is_empty() {
        String::new()
    } else {
        format!(" ORDER BY {}", order.join(", "))
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM {}{order}",
        cols.join(", "),
        quote(&shape.table)
    ))?;
    let mut rows = stmt.query([])?;
    let mut row = Vec::with_capacity(cols.len());
    while let Some(r) = rows.next()? {
        row.clear();
        for i in 0..cols.len() {
            row.push(SqlValue::from(r.get_ref(i)?));
        }
        each(&row);
    }
    Ok(())
}

/// A table's checksum recomputed from all its rows: (sum, rows).
pub fn recompute(
    conn: &Connection,
    shape: &RowShape,
    hasher: &RowHasher,
) -> rusqlite::Result<(u64, u64)> {
    memo::scan_hashes(conn, shape, hasher, |_, _| ())
}

/// The divergence recorded in the replica, if any.
pub fn recorded_divergence(conn: &Connection) -> rusqlite::Result<Option<Divergence>> {
    conn.query_row(
        "SELECT tbl, position, leader, replica FROM _barista_diverged WHERE id = 1",
        [],
        |r| {
            Ok(Divergence {
                table: r.get(0)?,
                position: r.get(1)?,
                leader: r.get(2)?,
                replica: r.get(3)?,
            })
        },
    )
    .optional()
}

#[cfg(test)]
#[path = "checksums_tests.rs"]
mod tests;
