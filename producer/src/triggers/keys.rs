//! Which rows an insert or an update can make SQLite delete through `REPLACE` conflict
//! resolution (`INSERT OR REPLACE`, `REPLACE INTO`, `UPDATE OR REPLACE`, a column declared
//! `ON CONFLICT REPLACE`): the rows holding its primary key, its rowid, or its values of any
//! UNIQUE constraint. SQLite deletes them without firing delete triggers (unless the writing
//! connection turned `recursive_triggers` on), so the triggers find them themselves:
//!
//! - a BEFORE trigger, only when some row holds a key or unique value the write is about to
//!   take, copies those rows into `_barista_replaced`, marked with the kind of write (1 insert,
//!   2 update);
//! - the AFTER trigger of that kind logs as a delete each copy whose row is gone, or whose key
//!   the new row now holds (an update never replaces its own row), empties the table's copies,
//!   then logs the change itself;
//! - the delete trigger takes the row it logs out of `_barista_replaced`, so a connection with
//!   `recursive_triggers` on (where SQLite fires it for replaced rows) logs each delete once.
//!
//! A conflict that deletes nothing (`OR IGNORE`, an upsert's `DO UPDATE`, a failed insert)
//! leaves copies of rows that are still there, under their own keys: no later AFTER trigger
//! logs them (a write that took such a key would conflict and copy afresh; a row that leaves
//! its key takes its copy with it), and the next AFTER trigger on the table empties them.
//! Unique indexes on expressions are not looked at: a row deleted through one is not captured
//! (README, "What triggers cannot see").
//!
//! Reads: `pragma_table_list`, `pragma_table_info`, `pragma_index_list`, `pragma_index_xinfo`.

use rusqlite::{Connection, OptionalExtension};

use super::quote;

/// The key and unique constraints of a captured table, as indexes into the column list its
/// triggers are made for.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Keys {
    /// The primary-key columns, in key order: how a logged row is found again.
    pub pk: Vec<usize>,
    /// Each set of columns whose values are unique together, with the collation its index
    /// compares them by (the primary key's own index among them).
    pub unique: Vec<Vec<(usize, Option<String>)>>,
    /// A rowid table whose key is not the rowid: a name of the rowid that no column shadows
    /// (a write may give the rowid explicitly and replace the row that has it).
    pub rowid: Option<&'static str>,
}

impl Keys {
    /// Reads `table`'s keys; `columns` is the list its triggers log, in order.
    pub fn read(conn: &Connection, table: &str, columns: &[String]) -> rusqlite::Result<Keys> {
        let at = |name: &str| columns.iter().position(|c| c == name);
        let pk: Vec<(String, String)> = conn
            .prepare("SELECT name, type FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")?
            .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let without_rowid: bool = conn
            .query_row(
                "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(false);
        let mut unique = Vec::new();
        let pk_at: Vec<usize> = pk.iter().filter_map(|(name, _)| at(name)).collect();
        if !pk_at.is_empty() {
            unique.push(pk_at.iter().map(|&i| (i, None)).collect());
        }
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM pragma_index_list(?1) WHERE \"unique\" = 1")?
            .query_map([table], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for index in indexes {
            let parts: Vec<(Option<String>, Option<String>)> = conn
                .prepare(
                    "SELECT name, coll FROM pragma_index_xinfo(?1) WHERE key = 1 ORDER BY seqno",
                )?
                .query_map([&index], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            // An expression (no name) or a column the triggers do not log: not looked at.
            let set: Option<Vec<(usize, Option<String>)>> = parts
                .into_iter()
                .map(|(name, coll)| Some((at(name.as_deref()?)?, coll)))
                .collect();
            if let Some(set) = set.filter(|s| !s.is_empty()) {
                unique.push(set);
            }
        }
        let rowid_is_key = pk.len() == 1 && pk[0].1.eq_ignore_ascii_case("INTEGER");
        let rowid = if without_rowid || rowid_is_key {
            None
        } else {
            ["rowid", "_rowid_", "oid"]
                .into_iter()
                .find(|alias| !columns.iter().any(|c| c.eq_ignore_ascii_case(alias)))
        };
        Ok(Keys {
            pk: pk_at,
            unique,
            rowid,
        })
    }

    /// A condition on the rows of `table` (named `t` in the statement): they hold a key or a
    /// unique value the row `NEW` is about to hold.
    pub fn conflict(&self, t: &str, columns: &[String]) -> String {
        let mut any: Vec<String> = self
            .unique
            .iter()
            .map(|set| {
                let all: Vec<String> = set
                    .iter()
                    .map(|(i, coll)| {
                        let c = quote(&columns[*i]);
                        match coll {
                            Some(coll) => format!("{t}.{c} = NEW.{c} COLLATE {}", quote(coll)),
                            None => format!("{t}.{c} = NEW.{c}"),
                        }
                    })
                    .collect();
                format!("({})", all.join(" AND "))
            })
            .collect();
        if let Some(rowid) = self.rowid {
            any.push(format!("{t}.{rowid} = NEW.{rowid}"));
        }
        joined(any, " OR ")
    }

    /// The row being updated changes a column of a key or unique constraint (or its rowid):
    /// only then can its update replace another row.
    pub fn changed(&self, columns: &[String]) -> String {
        let mut at: Vec<usize> = self.unique.iter().flatten().map(|(i, _)| *i).collect();
        at.sort_unstable();
        at.dedup();
        let mut any: Vec<String> = at
            .into_iter()
            .map(|i| {
                let c = quote(&columns[i]);
                format!("NEW.{c} IS NOT OLD.{c}")
            })
            .collect();
        if let Some(rowid) = self.rowid {
            any.push(format!("NEW.{rowid} IS NOT OLD.{rowid}"));
        }
        joined(any, " OR ")
    }

    /// `a` and `b` hold the same key: `a` and `b` are row references (`t`, `NEW`, `OLD`),
    /// or a copy in `_barista_replaced` (`r`, or the table's own name), whose key columns are
    /// `b<i>`.
    pub fn same(&self, a: &str, b: &str, columns: &[String]) -> String {
        let col = |row: &str, i: usize| match row {
            "r" | "_barista_replaced" => format!("{row}.b{i}"),
            _ => format!("{row}.{}", quote(&columns[i])),
        };
        let all: Vec<String> = self
            .pk
            .iter()
            .map(|&i| format!("{} IS {}", col(a, i), col(b, i)))
            .collect();
        joined(all, " AND ")
    }
}

/// `terms` joined by `op`; false (`0`) when there are none.
fn joined(terms: Vec<String>, op: &str) -> String {
    if terms.is_empty() {
        "0".into()
    } else {
        terms.join(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_from_the_primary_key_and_every_unique_index_on_columns() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE a(id INTEGER PRIMARY KEY, u UNIQUE, v, w, UNIQUE (v COLLATE NOCASE, w));
             CREATE UNIQUE INDEX a_expr ON a(lower(u));
             CREATE TABLE b(k TEXT PRIMARY KEY, oid, rowid);
             CREATE TABLE c(x, y, PRIMARY KEY (y, x)) WITHOUT ROWID;",
        )
        .unwrap();
        let cols = |t: &str| -> Vec<String> {
            conn.prepare(&format!("SELECT name FROM pragma_table_info('{t}')"))
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let a = Keys::read(&conn, "a", &cols("a")).unwrap();
        assert_eq!(a.pk, [0]);
        assert_eq!(a.rowid, None);
        let mut unique = a.unique.clone();
        unique.sort();
        assert_eq!(
            unique,
            [
                vec![(0, None)],
                vec![(1, Some("BINARY".into()))],
                vec![(2, Some("NOCASE".into())), (3, Some("BINARY".into()))],
            ]
        );
        let b = Keys::read(&conn, "b", &cols("b")).unwrap();
        assert_eq!(
            (b.pk.as_slice(), b.rowid),
            ([0].as_slice(), Some("_rowid_"))
        );
        let c = Keys::read(&conn, "c", &cols("c")).unwrap();
        assert_eq!((c.pk.as_slice(), c.rowid), ([1, 0].as_slice(), None));
        assert_eq!(
            c.same("r", "NEW", &cols("c")),
            "r.b1 IS NEW.\"y\" AND r.b0 IS NEW.\"x\""
        );
    }
}
