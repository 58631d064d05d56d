//! Seeding, before the follower starts: with `--seed-from URL`, a replica
//! that does not exist yet (or, with `--reseed`, one to replace) is
//! downloaded from a peer's or the producer's `/snapshot` instead of being
//! rebuilt from all of Kafka's history. The follower then resumes from the
//! offsets stored in the file, under its own consumer group.
//!
//! Crash safety: the download goes to `<replica>.seed-partial` next to the
//! replica (same file system, so the final rename is atomic), checked
//! against the length the server announced, the hash in the body's trailer
//! and the position, and only then renamed over the replica. An interrupted
//! seed leaves at most the partial file, which the next attempt truncates;
//! the replica itself is either absent, the old one, or the whole new one.
//!
//! The follower does not wait for the disk: the installed file is fsynced on
//! a thread of its own while the follower already follows and serves (a
//! gigabyte takes seconds to reach a slow disk). Until then the marker
//! `<replica>.seed-unsynced` (fsynced before the rename, holding the
//! kernel's boot id) says the replica's bytes may be only in the page cache.
//! A start that finds the marker from the same boot fsyncs the file then (the
//! page cache survived a killed process); from an earlier boot (the machine
//! went down) the replica may be torn, so it is re-seeded (with
//! `--seed-from`) or the follower stops with the re-seed command.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::body::Bytes;
use barista_schemas::snapshot::{
    FileHash, HEADER_SNAPSHOT_BYTES, HEADER_SNAPSHOT_HASH, HEADER_SNAPSHOT_POSITION, SNAPSHOT_HASH,
    TRAILER_LEN,
};

use crate::config::FollowerConfig;

/// Shown in the re-seed command when no `--seed-from` URL is known.
pub const PEER_PLACEHOLDER: &str = "http://<healthy-peer-or-producer>/snapshot";

/// A download that receives nothing for this long fails (the peer hung, or
/// its host is gone without closing the connection).
const STALL: Duration = Duration::from_secs(60);

/// How often download progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Where a download is written before it is complete and checked.
pub fn partial_path(replica: &Path) -> PathBuf {
    with_suffix(replica, ".seed-partial")
}

fn with_suffix(file: &Path, suffix: &str) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Seeds the replica if the configuration asks for it. `Ok(false)` when
/// `shutdown` resolved first (nothing installed, the partial file removed).
pub async fn seed_if_asked(
    config: &FollowerConfig,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> anyhow::Result<bool> {
    let replica = &config.replica;
    let r = replica.clone();
    let torn = tokio::task::spawn_blocking(move || settle_unsynced(&r))
        .await?
        .with_context(|| format!("finishing an earlier seed of {}", replica.display()))?;
    let Some(url) = &config.seed_from else {
        if config.reseed {
            bail!("--reseed needs --seed-from URL (a healthy peer's or the producer's /snapshot)");
        }
        if let Some(why) = torn {
            bail!(
                "{} cannot be trusted: {why}. Re-seed it: `{}`",
                replica.display(),
                reseed_command(config)
            );
        }
        return Ok(true);
    };
    match &torn {
        Some(why) => {
            tracing::warn!(replica = %replica.display(), %url, "{why}: re-seeding it")
        }
        None if replica.exists() && !config.reseed => {
            tracing::info!(replica = %replica.display(), %url,
                "the replica exists: following it; --seed-from is only used for a missing replica (pass --reseed to replace it)");
            return Ok(true);
        }
        None => {}
    }
    let partial = partial_path(replica);
    let r = tokio::select! {
        r = download(url, &partial) => r.map(Some),
        _ = &mut *shutdown => Ok(None),
    };
    let seeded = match r {
        Ok(Some(s)) => s,
        Ok(None) => {
            let _ = std::fs::remove_file(&partial);
            tracing::info!("seeding interrupted by shutdown; nothing installed");
            return Ok(false);
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.context(format!(
                "seeding {} from {url} (nothing was installed; run the same command again)",
                replica.display()
            )));
        }
    };
    let (p, r) = (partial.clone(), replica.clone());
    tokio::task::spawn_blocking(move || install(&p, &r))
        .await?
        .with_context(|| format!("installing the snapshot as {}", replica.display()))?;
    tracing::info!(replica = %replica.display(), %url, position = seeded.position, bytes = seeded.bytes,
        hash = %seeded.hash, seconds = seeded.seconds, received_s = seeded.received_s,
        "replica seeded; following from its stored offsets (its bytes reach the disk meanwhile)");
    let r = replica.clone();
    std::thread::Builder::new()
        .name("seed-fsync".into())
        .spawn(move || make_durable(&r))?;
    Ok(true)
}

/// What a finished download holds.
struct Seeded {
    position: i64,
    bytes: u64,
    hash: String,
    seconds: f64,
    /// Until the last byte arrived.
    received_s: f64,
}

/// Downloads `url` into `partial`: the body streams into the file on a
/// writer thread while it is hashed here; logs progress; checks the length,
/// the hash trailer and that the file is a replica at the announced position.
/// Not fsynced: see [`make_durable`].
async fn download(url: &str, partial: &Path) -> anyhow::Result<Seeded> {
    // No read timeout on the client: the producer copies and reshapes the
    // leader before it answers (minutes for a large one). A stall once the
    // body flows is caught per chunk below.
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let asked = Instant::now();
    let request = client.get(url).send();
    tokio::pin!(request);
    let mut waiting = tokio::time::interval(Duration::from_secs(5));
    waiting.tick().await;
    let resp = loop {
        tokio::select! {
            r = &mut request => break r.with_context(|| format!("requesting {url}"))?,
            _ = waiting.tick() => tracing::info!(%url, waited_s = asked.elapsed().as_secs(),
                "seeding: waiting for the server to prepare its snapshot"),
        }
    };
    if !resp.status().is_success() {
        let code = resp.status();
        let body = resp.text().await.unwrap_or_default();
        bail!("{url} answered {code}: {body}");
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let hash_name = header(HEADER_SNAPSHOT_HASH).with_context(|| {
        format!("{url} sent no {HEADER_SNAPSHOT_HASH} header: not a barista snapshot (or one from an older version: upgrade the server)")
    })?;
    if hash_name != SNAPSHOT_HASH {
        bail!("{url} sent a snapshot hashed with {hash_name:?}; this consumer checks {SNAPSHOT_HASH:?} only");
    }
    let want_position: i64 = header(HEADER_SNAPSHOT_POSITION)
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("{url} sent no {HEADER_SNAPSHOT_POSITION} header"))?;
    let total: u64 = header(HEADER_SNAPSHOT_BYTES)
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("{url} sent no {HEADER_SNAPSHOT_BYTES} header"))?;
    if let Some(len) = resp.content_length() {
        if len != total + TRAILER_LEN as u64 {
            bail!("{url} announced {total} bytes of database and a body of {len}: not a barista snapshot");
        }
    }
    tracing::info!(%url, bytes = total, position = want_position, "seeding: download started");
    // Truncates what an interrupted attempt left.
    let file = std::fs::File::create(partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let (tx, rx) = tokio::sync::mpsc::channel(IN_FLIGHT);
    let writer = tokio::task::spawn_blocking(move || write_out(file, rx));
    let started = Instant::now();
    let mut hash = FileHash::new();
    let received = receive(resp, total, &mut hash, tx, started).await;
    let received_s = started.elapsed().as_secs_f64();
    // The writer ends once `tx` is gone (dropped by `receive`), also on an
    // error: it never writes after this returns.
    let written = writer.await?;
    let trailer = received?;
    written.with_context(|| format!("writing {}", partial.display()))?;
    let want_trailer = hash.trailer();
    if trailer != want_trailer.as_bytes() {
        if trailer.len() < TRAILER_LEN {
            bail!("the snapshot ended after the database, before its hash trailer");
        }
        bail!(
            "hash mismatch: the download's is {:?}, the server's trailer says {:?}",
            want_trailer.trim_end(),
            String::from_utf8_lossy(&trailer).trim_end()
        );
    }
    let p = partial.to_owned();
    let position = tokio::task::spawn_blocking(move || stored_position(&p))
        .await?
        .context("the snapshot is not a barista replica")?;
    if position != want_position {
        bail!("the snapshot is at position {position}, the server announced {want_position}");
    }
    let p = partial.to_owned();
    tokio::task::spawn_blocking(move || as_wal_file(&p))
        .await?
        .with_context(|| format!("marking {} as a WAL-mode database", partial.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    log_progress(total, Some(total), started.elapsed());
    Ok(Seeded {
        position,
        bytes: total,
        hash: want_trailer.trim_end().to_owned(),
        seconds,
        received_s,
    })
}

/// Chunks in flight to the writer thread.
const IN_FLIGHT: usize = 16;

/// Reads the body: its first `total` bytes are hashed and handed to the
/// writer, the rest is the trailer, returned.
async fn receive(
    mut resp: reqwest::Response,
    total: u64,
    hash: &mut FileHash,
    tx: tokio::sync::mpsc::Sender<Bytes>,
    started: Instant,
) -> anyhow::Result<Vec<u8>> {
    let (mut got, mut chunks) = (0u64, 0u64);
    let mut trailer = Vec::with_capacity(TRAILER_LEN);
    let mut last_log = started;
    while let Some(chunk) = tokio::time::timeout(STALL, resp.chunk())
        .await
        .map_err(|_| anyhow::anyhow!("the server sent nothing for {STALL:?}"))?
        .with_context(|| format!("reading the snapshot (after {got} of {total} bytes)"))?
    {
        chunks += 1;
        let file_part = chunk.len().min((total - got) as usize);
        let (file, rest) = (chunk.slice(..file_part), &chunk[file_part..]);
        if trailer.len() + rest.len() > TRAILER_LEN {
            bail!("the snapshot is longer than the {total} bytes and trailer announced");
        }
        trailer.extend_from_slice(rest);
        if !file.is_empty() {
            hash.update(&file);
            got += file.len() as u64;
            if tx.send(file).await.is_err() {
                // The writer failed; its error is what to report.
                return Ok(trailer);
            }
        }
        if last_log.elapsed() >= PROGRESS_EVERY {
            last_log = Instant::now();
            log_progress(got, Some(total), started.elapsed());
        }
    }
    if got != total {
        bail!("the snapshot ended after {got} of {total} bytes");
    }
    tracing::debug!(chunks, "seeding: body received");
    Ok(trailer)
}

/// Writes what arrives on `rx` to `file`: into the page cache only. Starting
/// the disk writing during the download (an fsync every few tens of MB, as
/// an earlier version did) paces the download at the disk's speed; the
/// follower would wait for that, and it does not need to (see
/// [`make_durable`]).
fn write_out(
    mut file: std::fs::File,
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> std::io::Result<()> {
    use std::io::Write as _;
    while let Some(chunk) = rx.blocking_recv() {
        file.write_all(&chunk)?;
    }
    Ok(())
}

fn log_progress(got: u64, total: Option<u64>, elapsed: Duration) {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = got as f64 / secs;
    let percent = total.map(|t| (got as f64 * 100.0 / t.max(1) as f64).round());
    let eta_s = total.map(|t| (t.saturating_sub(got) as f64 / rate.max(1.0)).ceil());
    tracing::info!(
        bytes = got,
        total,
        percent,
        mb_per_s = (rate / 1e6 * 10.0).round() / 10.0,
        eta_s,
        "seeding"
    );
}

/// The position a replica file stores (0 when it has none yet).
fn stored_position(file: &Path) -> rusqlite::Result<i64> {
    let c =
        rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    c.query_row(
        "SELECT coalesce(max(position), 0) FROM _barista_position",
        [],
        |r| r.get(0),
    )
}

/// Marks a checked download as a WAL-mode database (file header bytes 18
/// and 19, the write and read format versions: 2 is WAL), as the follower
/// opens it: otherwise its first `PRAGMA journal_mode = WAL` would rewrite
/// page 1 and fsync the whole file before it applies anything. A WAL-mode
/// file with no `-wal` beside it is what SQLite leaves after a clean close.
fn as_wal_file(file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)?;
    let mut versions = [0u8; 2];
    f.read_exact_at(&mut versions, 18)?;
    if versions == [1, 1] {
        f.write_all_at(&[2, 2], 18)?;
    }
    Ok(())
}

/// Beside a seeded replica until its bytes are known to be on disk: the boot
/// id of the kernel whose page cache holds them. See [`settle_unsynced`].
pub fn unsynced_path(replica: &Path) -> PathBuf {
    with_suffix(replica, ".seed-unsynced")
}

/// The running kernel's boot id (Linux), or `None` where there is none to
/// read: then a marker is never taken to be from this boot.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Renames the checked download over the replica, without waiting for the
/// disk: first the [`unsynced_path`] marker is written and fsynced (with the
/// directory), so that a machine that goes down before [`make_durable`]
/// finishes leaves a replica known to be suspect. The old replica's WAL and
/// shared-memory files go before the rename: SQLite would replay an old WAL
/// into the new file.
fn install(partial: &Path, replica: &Path) -> std::io::Result<()> {
    write_marker(replica, &boot_id().unwrap_or_default())?;
    for suffix in ["-wal", "-shm", "-journal"] {
        match std::fs::remove_file(with_suffix(replica, suffix)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::rename(partial, replica)
}

/// What the marker holds once a seed was found stopped inside its install:
/// no boot id, so that no later start trusts that replica.
const TORN_IN_INSTALL: &str = "stopped-inside-install";

/// Writes the [`unsynced_path`] marker holding `content`, and puts it on disk.
fn write_marker(replica: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut m = std::fs::File::create(unsynced_path(replica))?;
    m.write_all(content.as_bytes())?;
    m.sync_all()?;
    sync_dir(replica)
}

/// Puts a seeded replica's bytes and its name on disk, then removes the
/// [`unsynced_path`] marker. Runs on a thread of its own beside the
/// follower; a failure leaves the marker for the next start.
fn make_durable(replica: &Path) {
    let t = Instant::now();
    let synced = (|| -> std::io::Result<()> {
        std::fs::File::open(replica)?.sync_all()?;
        sync_dir(replica)?;
        std::fs::remove_file(unsynced_path(replica))?;
        sync_dir(replica)
    })();
    match synced {
        Ok(()) => tracing::info!(replica = %replica.display(), fsync_s = t.elapsed().as_secs_f64(),
            "seeded replica is on disk"),
        Err(e) => tracing::warn!(replica = %replica.display(), error = %e,
            "could not fsync the seeded replica; the next start tries again"),
    }
}

/// Finishes what an earlier seed left: `Ok(None)` when the replica can be
/// trusted (there was no marker, or it was from this boot and the file is
/// now fsynced), `Some(why)` when it cannot (the machine went down before
/// the seed's bytes were on disk, or the seed stopped between removing the
/// old replica's WAL and the rename).
fn settle_unsynced(replica: &Path) -> std::io::Result<Option<String>> {
    let marker = unsynced_path(replica);
    let recorded = match std::fs::read_to_string(&marker) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let partial = partial_path(replica);
    if !replica.exists() {
        // Nothing to distrust; a partial file is truncated by the next seed.
        std::fs::remove_file(&marker)?;
        return Ok(None);
    }
    if partial.exists() || recorded.trim() == TORN_IN_INSTALL {
        // Stopped inside `install`: the old replica may have lost its WAL.
        // Said in the marker, since the partial file goes now.
        write_marker(replica, TORN_IN_INSTALL)?;
        if partial.exists() {
            std::fs::remove_file(&partial)?;
        }
        return Ok(Some(
            "a seed stopped while it installed the snapshot over it".into(),
        ));
    }
    match boot_id() {
        Some(now) if now == recorded.trim() => {
            let t = Instant::now();
            make_durable(replica);
            if marker.exists() {
                return Err(std::io::Error::other(
                    "the seeded replica could not be fsynced",
                ));
            }
            tracing::info!(replica = %replica.display(), fsync_s = t.elapsed().as_secs_f64(),
                "an earlier seed's replica was not yet on disk; it is now");
            Ok(None)
        }
        _ => Ok(Some(
            "it was seeded, and the machine went down before its bytes were on disk, so it may be torn"
                .into(),
        )),
    }
}

fn sync_dir(file: &Path) -> std::io::Result<()> {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// The command that re-seeds this follower: the flags it was started with,
/// `--reseed` and `--seed-from` (its own URL if it had one, else a
/// placeholder for a healthy peer's or the producer's `/snapshot`).
pub fn reseed_command(config: &FollowerConfig) -> String {
    let mut args: Vec<String> = if config.command_line.is_empty() {
        let mut a: Vec<String> = [
            "consumer",
            "--replica",
            &config.replica.display().to_string(),
            "--follower-id",
            &config.follower_id,
            "--brokers",
            &config.brokers,
            "--registry",
            &config.registry_url,
            "--topic-prefix",
            &config.topic_prefix,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !config.tables.is_empty() {
            a.extend(["--tables".to_owned(), config.tables.join(",")]);
        }
        a
    } else {
        let mut a = Vec::new();
        let mut it = config.command_line.iter();
        while let Some(arg) = it.next() {
            if arg == "--seed-from" {
                it.next();
            } else if !(arg == "--reseed" || arg.starts_with("--seed-from=")) {
                a.push(arg.clone());
            }
        }
        a
    };
    let url = config.seed_from.as_deref().unwrap_or(PEER_PLACEHOLDER);
    args.extend([
        "--reseed".to_owned(),
        "--seed-from".to_owned(),
        url.to_owned(),
    ]);
    args.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `a` as one shell word.
fn shell_quote(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if plain {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

/// The halt message when a stored offset is gone from Kafka.
pub fn history_deleted(config: &FollowerConfig) -> String {
    format!(
        "a stored offset of this replica is no longer in Kafka: retention deleted changes it never applied, \
         so it cannot be brought up to date from Kafka. Re-seed it from a healthy peer's (or the producer's) \
         /snapshot; it then follows from the snapshot's offsets: `{}`",
        reseed_command(config)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica with a seed marker recording `boot`, and `partial` if given.
    fn left_by_a_seed(boot: &str, partial: bool) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let replica = dir.path().join("r.db");
        std::fs::write(&replica, b"the seeded rows").unwrap();
        std::fs::write(unsynced_path(&replica), boot).unwrap();
        if partial {
            std::fs::write(partial_path(&replica), b"half").unwrap();
        }
        (dir, replica)
    }

    #[test]
    fn a_seed_whose_process_died_before_its_fsync_is_fsynced_on_the_next_start() {
        let (_dir, replica) = left_by_a_seed(&boot_id().expect("a Linux boot id"), false);
        assert_eq!(settle_unsynced(&replica).unwrap(), None);
        assert!(!unsynced_path(&replica).exists());
        assert_eq!(std::fs::read(&replica).unwrap(), b"the seeded rows");
        // Nothing left to settle.
        assert_eq!(settle_unsynced(&replica).unwrap(), None);
    }

    #[test]
    fn a_seed_the_machine_lost_before_its_fsync_is_not_trusted() {
        let (_dir, replica) = left_by_a_seed("an-earlier-boot", false);
        let why = settle_unsynced(&replica).unwrap().expect("not trusted");
        assert!(why.contains("went down"), "{why}");
        // Still not trusted until it is re-seeded.
        assert!(unsynced_path(&replica).exists());
        assert!(settle_unsynced(&replica).unwrap().is_some());
    }

    #[test]
    fn a_seed_stopped_inside_its_install_is_not_trusted_and_its_partial_file_goes() {
        let (_dir, replica) = left_by_a_seed(&boot_id().unwrap(), true);
        let why = settle_unsynced(&replica).unwrap().expect("not trusted");
        assert!(why.contains("installed"), "{why}");
        assert!(!partial_path(&replica).exists());
        // Nor on any later start of the same boot, until it is re-seeded.
        let why = settle_unsynced(&replica)
            .unwrap()
            .expect("still not trusted");
        assert!(why.contains("installed"), "{why}");
    }

    #[test]
    fn a_marker_without_a_replica_is_dropped() {
        let (_dir, replica) = left_by_a_seed("an-earlier-boot", false);
        std::fs::remove_file(&replica).unwrap();
        assert_eq!(settle_unsynced(&replica).unwrap(), None);
        assert!(!unsynced_path(&replica).exists());
    }

    #[test]
    fn a_downloaded_file_is_marked_wal_mode_and_opens_without_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.db");
        let c = rusqlite::Connection::open(&file).unwrap();
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(c);
        as_wal_file(&file).unwrap();
        let bytes = std::fs::read(&file).unwrap();
        // What the follower does on open: no change of mode, so no rewrite.
        let c = rusqlite::Connection::open(&file).unwrap();
        let mode: String = c
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let n: i64 = c.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
        drop(c);
        assert!(
            std::fs::read(&file).unwrap() == bytes,
            "the file was rewritten"
        );
    }

    #[test]
    fn the_reseed_command_keeps_the_flags_and_replaces_any_seed_flags() {
        let mut c = FollowerConfig::new("/r/replica.db", "f1", "b:9092", "http://reg:8081");
        c.command_line = [
            "/bin/consumer",
            "--replica",
            "/r/replica.db",
            "--seed-from",
            "http://old/snapshot",
            "--reseed",
            "--seed-from=http://x",
            "--tables",
            "a b",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            reseed_command(&c),
            "/bin/consumer --replica /r/replica.db --tables 'a b' --reseed --seed-from \
             'http://<healthy-peer-or-producer>/snapshot'"
        );
        c.seed_from = Some("http://peer:8091/snapshot".into());
        assert!(reseed_command(&c).ends_with("--reseed --seed-from http://peer:8091/snapshot"));
        c.command_line.clear();
        assert_eq!(
            reseed_command(&c),
            "consumer --replica /r/replica.db --follower-id f1 --brokers b:9092 --registry http://reg:8081 \
             --topic-prefix barista --reseed --seed-from http://peer:8091/snapshot"
        );
    }
}
