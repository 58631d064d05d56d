//! `consumer dead-letters list|show|replay|skip`: an operator's client for a
//! running follower's dead-letter API (see [`crate::held`]). It prints what
//! the follower answers; the follower does the work.

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::held::{DeadLetter, DeadLetterDetail, Done, Listing, MessageId, SkipRequest};

const HELD_HELP: &str = "\
A message the follower cannot decode or apply goes to the dead-letter topic
(<prefix>.__dead_letters). If it is a change of the leader's chain (it carries
a position), it is HELD: every later change of its partition waits behind it,
and since commit groups span partitions, every later commit group of this
follower, for every table, waits too. The replica keeps serving reads at its
position; /status says `held_by`, and /ready fails as the lag grows.

What to do:
  1. consumer dead-letters list            which messages hold, and why
  2. consumer dead-letters show T P O      one in full (headers, key, payload)
  3. fix the cause (for example restore the schema in the registry), then
     consumer dead-letters replay T P O    decode it again and apply it
  or, if it can never be applied and you accept that the replica misses it,
     consumer dead-letters skip T P O --reason \"...\"";

/// The dead-letter subcommands.
#[derive(Debug, Subcommand)]
#[command(after_long_help = HELD_HELP)]
pub enum DeadLettersCommand {
    /// List the messages this follower dead-lettered since it started; the
    /// ones that hold later changes back first.
    #[command(
        after_long_help = "Columns: HELD (yes: later commit groups wait for it), \
TOPIC, PARTITION, OFFSET (where it is in Kafka), POSITION (the leader position it claims, \
- for none), SCHEMA (the writer schema id of its frame), SINCE (how long ago it was \
dead-lettered), then the error or what became of it.\n\nExample:\n  consumer dead-letters list --follower http://127.0.0.1:8090"
    )]
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Show one dead letter in full: headers, key, error, payload size and
    /// its first bytes in hex.
    #[command(after_long_help = "Example:\n  consumer dead-letters show barista.customers 1 42")]
    Show {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        message: Message,
    },
    /// Decode a held message again, after its cause was fixed, and apply it:
    /// the changes it held back follow. If it still fails it says why, and
    /// the message stays held.
    #[command(
        after_long_help = "The follower decodes the copy it holds in memory with a \
fresh lookup of the writer schema in its registry. On success the change enters its \
partition's chain like any other and the held commit groups are applied, each once.\n\n\
Examples (after restoring the schema in the registry):\n  consumer dead-letters replay barista.customers 1 42\n  consumer dead-letters replay --all    # every held one, in the leader's order"
    )]
    Replay {
        #[command(flatten)]
        target: Target,
        /// The topic it was read from (e.g. barista.customers).
        #[arg(required_unless_present = "all")]
        topic: Option<String>,
        /// Its partition.
        #[arg(required_unless_present = "all")]
        partition: Option<i32>,
        /// Its offset.
        #[arg(required_unless_present = "all")]
        offset: Option<i64>,
        /// Replay every held message, in the leader's order, stopping at the
        /// first that still fails (a lost schema usually poisons many).
        #[arg(long, conflicts_with_all = ["topic", "partition", "offset"])]
        all: bool,
    },
    /// Give up on a held message on purpose: record it as skipped in the
    /// replica, with your reason, and release what it held back.
    #[command(
        after_long_help = "The skip is written to the replica's _barista_skipped \
table (topic, partition, offset, position, schema id, key, error, reason, replica \
position, time) before anything is released, and it survives restarts. The change \
itself is NOT applied: for its row the replica may differ from the leader until a later \
change to that row overwrites it. The replica's position still moves past it.\n\n\
Example:\n  consumer dead-letters skip barista.customers 1 42 \\\n    --reason \"schema 17 lost for good; row 7 re-written on the leader, ticket OPS-12\""
    )]
    Skip {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        message: Message,
        /// Why you skip it; stored in the replica with the skip.
        #[arg(long)]
        reason: String,
    },
}

/// Which follower to ask.
#[derive(Debug, Args)]
pub struct Target {
    /// The follower's HTTP address (its --http-listen).
    #[arg(
        long,
        env = "BARISTA_FOLLOWER_URL",
        default_value = "http://127.0.0.1:8090"
    )]
    follower: String,
}

/// Where a message is, as `list` prints it.
#[derive(Debug, Args)]
pub struct Message {
    /// The topic it was read from (e.g. barista.customers).
    topic: String,
    /// Its partition.
    partition: i32,
    /// Its offset.
    offset: i64,
}

impl From<Message> for MessageId {
    fn from(m: Message) -> Self {
        MessageId {
            topic: m.topic,
            partition: m.partition,
            offset: m.offset,
        }
    }
}

/// Runs one subcommand against the follower and prints its answer.
pub async fn run(cmd: DeadLettersCommand) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    match cmd {
        DeadLettersCommand::List { target } => {
            let l: Listing = call(http.get(format!("{}/dead-letters", base(&target)))).await?;
            print!("{}", render_list(&l.dead_letters, crate::held::now_ms()));
        }
        DeadLettersCommand::Show { target, message } => {
            let m = MessageId::from(message);
            let url = format!(
                "{}/dead-letters/{}/{}/{}",
                base(&target),
                m.topic,
                m.partition,
                m.offset
            );
            let d: DeadLetterDetail = call(http.get(url)).await?;
            print!("{}", render_detail(&d, crate::held::now_ms()));
        }
        DeadLettersCommand::Replay {
            target,
            topic,
            partition,
            offset,
            all,
        } => {
            let ids = match (topic, partition, offset) {
                (Some(topic), Some(partition), Some(offset)) if !all => vec![MessageId {
                    topic,
                    partition,
                    offset,
                }],
                _ => {
                    let l: Listing =
                        call(http.get(format!("{}/dead-letters", base(&target)))).await?;
                    let mut held: Vec<DeadLetter> = l
                        .dead_letters
                        .into_iter()
                        .filter(|d| d.holds_back)
                        .collect();
                    held.sort_by_key(|d| d.position);
                    held.into_iter().map(|d| d.id).collect()
                }
            };
            if ids.is_empty() {
                println!("nothing is held: nothing to replay");
            }
            let url = format!("{}/admin/dead-letters/replay", base(&target));
            for (n, id) in ids.iter().enumerate() {
                let r = call::<Done>(http.post(&url).json(id)).await;
                let done = if all {
                    r.with_context(|| format!("replayed {n} of {}; {id}", ids.len()))?
                } else {
                    r?
                };
                print!("{}", render_done(&done));
            }
        }
        DeadLettersCommand::Skip {
            target,
            message,
            reason,
        } => {
            let url = format!("{}/admin/dead-letters/skip", base(&target));
            let body = SkipRequest {
                id: message.into(),
                reason,
            };
            let done: Done = call(http.post(url).json(&body)).await?;
            print!("{}", render_done(&done));
        }
    }
    Ok(())
}

fn base(t: &Target) -> &str {
    t.follower.trim_end_matches('/')
}

/// Sends `req`; the follower's `{"error": …}` becomes the error.
async fn call<T: serde::de::DeserializeOwned>(req: reqwest::RequestBuilder) -> anyhow::Result<T> {
    let r = req
        .send()
        .await
        .context("reaching the follower (is --follower its --http-listen address?)")?;
    let status = r.status();
    let body = r.text().await.context("reading the follower's answer")?;
    if !status.is_success() {
        let why = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(body);
        anyhow::bail!("the follower answered {status}: {why}");
    }
    serde_json::from_str(&body)
        .with_context(|| format!("the follower's answer is not what this version expects: {body}"))
}

fn ago(since_ms: i64, now_ms: i64) -> String {
    let s = (now_ms - since_ms).max(0) / 1000;
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// The `list` table.
pub fn render_list(v: &[DeadLetter], now_ms: i64) -> String {
    if v.is_empty() {
        return "no dead letters since this follower started\n".into();
    }
    let mut out = format!(
        "{:<5} {:<30} {:>9} {:>10} {:>10} {:>7} {:>9}  ERROR / OUTCOME\n",
        "HELD", "TOPIC", "PARTITION", "OFFSET", "POSITION", "SCHEMA", "SINCE"
    );
    for d in v {
        out += &format!(
            "{:<5} {:<30} {:>9} {:>10} {:>10} {:>7} {:>9}  {}\n",
            if d.holds_back { "yes" } else { "no" },
            d.id.topic,
            d.id.partition,
            d.id.offset,
            or_dash(d.position),
            or_dash(d.schema_id),
            ago(d.since, now_ms),
            d.outcome.as_deref().unwrap_or(&d.error)
        );
    }
    let held = v.iter().filter(|d| d.holds_back).count();
    if held > 0 {
        out += &format!(
            "\n{held} held: later commit groups wait. Fix the cause and `consumer dead-letters replay TOPIC PARTITION OFFSET`,\n\
             or `consumer dead-letters skip TOPIC PARTITION OFFSET --reason \"...\"` (see --help).\n"
        );
    }
    out
}

/// The `show` text.
pub fn render_detail(d: &DeadLetterDetail, now_ms: i64) -> String {
    let s = &d.summary;
    let mut out = format!(
        "message:   {}\nposition:  {}\nschema id: {}\nheld:      {}\nsince:     {} ({} ms since the epoch)\nerror:     {}\n",
        s.id,
        or_dash(s.position),
        or_dash(s.schema_id),
        if s.holds_back { "yes: later commit groups wait for it" } else { "no" },
        ago(s.since, now_ms),
        s.since,
        s.error
    );
    if let Some(o) = &s.outcome {
        out += &format!("outcome:   {o}\n");
    }
    out += &format!("key (hex): {}\n", d.key_hex.as_deref().unwrap_or("-"));
    out += "headers:\n";
    for (k, v) in &d.headers {
        out += &format!("  {k}: {v}\n");
    }
    out += &format!(
        "payload:   {} bytes; first {}: {}\n",
        d.payload_bytes,
        d.payload_hex_prefix.len() / 2,
        d.payload_hex_prefix
    );
    out
}

/// What `replay` and `skip` print.
pub fn render_done(d: &Done) -> String {
    let mut out = format!("{}\nreplica position now {}\n", d.outcome, d.position);
    if d.still_held.is_empty() {
        out += "nothing holds this follower back now\n";
    } else {
        for h in &d.still_held {
            out += &format!(
                "still held by {}/{} offset {} (position {}): {}\n",
                h.topic, h.partition, h.offset, h.position, h.error
            );
        }
    }
    out
}
