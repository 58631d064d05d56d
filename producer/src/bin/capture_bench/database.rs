//! The bench databases: opened as in production (WAL, synchronous=NORMAL),
//! one template file per setup (table, preload, capture), and a fresh copy of
//! it for every measurement, all in a scratch directory removed on drop.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use barista_producer::capture::Capture;
use rusqlite::{params, Connection};

use crate::setups::{Install, Setup};
use crate::workload::{upserts, TABLE_SQL, UPSERT_SQL};
use crate::Args;

/// Opens a bench connection with the production setting: WAL, and
/// synchronous=NORMAL (commits do not fsync; checkpoints do).
pub(crate) fn open(path: &Path, page_size: u32) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.pragma_update(None, "page_size", page_size)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if mode != "wal" {
        bail!("journal_mode is {mode}, not wal");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// Removes a database file and its WAL and shared-memory files.
fn remove_db(path: &Path) -> anyhow::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let f = PathBuf::from(format!("{}{suffix}", path.display()));
        if f.exists() {
            std::fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
        }
    }
    Ok(())
}

/// Builds the template database of `setup` at `path`: table, preloaded rows,
/// capture, an empty log, compacted, the WAL checkpointed away. Every setup
/// thus starts from the same table (barista's snapshot rows are removed).
pub(crate) fn build_template(setup: &Setup, path: &Path, args: &Args) -> anyhow::Result<()> {
    remove_db(path)?;
    let mut conn = open(path, args.page_size)?;
    conn.execute_batch(TABLE_SQL)?;
    {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare(UPSERT_SQL)?;
            for u in upserts(args.customers, 0, 0x5eed) {
                stmt.execute(params![u.id, u.name, u.coffee, u.updated_at])?;
            }
        }
        tx.commit()?;
    }
    match setup.install {
        Install::None => {}
        Install::Sql(sql) => conn
            .execute_batch(sql)
            .with_context(|| format!("installing {}", setup.name))?,
        Install::SqlFn(sql) => conn
            .execute_batch(&sql())
            .with_context(|| format!("installing {}", setup.name))?,
        Install::Barista | Install::BaristaWith(..) => {
            let mut tables = vec!["customers".to_owned()];
            if let Install::BaristaWith(sql, table) = setup.install {
                conn.execute_batch(sql)?;
                tables.push(table.to_owned());
            }
            // The triggers live in the file; the Capture (and its connection)
            // is not needed for the writes.
            let capture = Capture::install(conn, &tables, false).context("Capture::install")?;
            drop(capture);
            conn = open(path, args.page_size)?;
        }
    }
    if let Some(log) = setup.log {
        conn.execute_batch(&format!("DELETE FROM {log}"))?;
    }
    conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")?;
    drop(conn);
    // Closing the last connection checkpoints and deletes the WAL; the
    // template is the main file alone.
    Ok(())
}

/// A fresh database for one measurement: a copy of the setup's template.
pub(crate) fn fresh_copy(
    template: &Path,
    path: &Path,
    page_size: u32,
) -> anyhow::Result<Connection> {
    remove_db(path)?;
    std::fs::copy(template, path).with_context(|| format!("copying {}", template.display()))?;
    open(path, page_size)
}

/// A temporary directory removed on drop (the bench keeps its dependencies
/// to the library's).
pub(crate) struct ScratchDir(pub(crate) PathBuf);

impl ScratchDir {
    pub(crate) fn new(parent: Option<PathBuf>) -> anyhow::Result<Self> {
        let parent = parent.unwrap_or_else(std::env::temp_dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let dir = parent.join(format!(
            "capture-bench-{}-{}",
            std::process::id(),
            nanos.as_nanos()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
