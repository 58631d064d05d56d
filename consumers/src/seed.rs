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
//! gigabyte takes seconds to reach a slow disk); `seed_install`
//! keeps that safe. A replica it does not trust (the machine went down
//! before the seed's bytes were on disk) is re-seeded (with `--seed-from`),
//! or the follower stops with the re-seed command.

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
pub use crate::seed_install::unsynced_path;
use crate::seed_install::{as_wal_file, install, make_durable_beside, settle_unsynced};

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

pub(crate) fn with_suffix(file: &Path, suffix: &str) -> PathBuf {
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
    make_durable_beside(replica.clone())?;
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
/// Not fsynced: see `seed_install`.
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
/// `seed_install`).
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
