//! The report: what is measured and how (printed before the rounds), then
//! the table of rows/s and bytes per row, and the cost ratios between setups
//! (medians of per-round paired ratios), with the goals they are held to.

use std::path::Path;
use std::time::Duration;

use crate::measure::Sample;
use crate::setups::Setup;
use crate::Args;

/// A goal for a cost ratio: its text and its test.
type Goal = (&'static str, fn(f64) -> bool);

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// 1234567.8 → "1,234,568".
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Prints what the run measures and on what, before the rounds start.
pub(crate) fn print_header(args: &Args, scratch: &Path) {
    println!("capture-bench: upserts into customers(id INTEGER PRIMARY KEY, name, coffee, visits, updated_at)");
    println!(
        "  50% new keys, 50% random existing keys; {} customers before each measurement",
        args.customers
    );
    println!(
        "  SQLite {} (rusqlite, bundled), real file under {}",
        rusqlite::version(),
        scratch.parent().unwrap_or(scratch).display()
    );
    println!(
        "  journal_mode=WAL, synchronous=NORMAL (the common production setting: commits do not fsync, \
         checkpoints do), page_size={}",
        args.page_size
    );
    println!(
        "  batched: {} upserts in transactions of {}; single-row: {} upserts, one per commit (autocommit)",
        args.rows, args.batch, args.single_rows
    );
    println!(
        "  {} rounds, setups interleaved, fresh database per measurement\n",
        args.rounds
    );
}

/// Prints the rows/s table and the cost ratios. `samples[setup][workload][round]`,
/// workload 0 batched (transactions of `batch` rows), 1 single-row.
pub(crate) fn print_results(batch: usize, setups: &[Setup], samples: &[[Vec<Sample>; 2]]) {
    let rates = |s: usize, w: usize| samples[s][w].iter().map(Sample::rate).collect::<Vec<_>>();
    let cell = |s: usize, w: usize| {
        let r = rates(s, w);
        let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = r.iter().copied().fold(0.0, f64::max);
        let bytes: Option<Vec<f64>> = samples[s][w]
            .iter()
            .map(|x| x.written.map(|b| b as f64 / x.rows as f64))
            .collect();
        let bytes = bytes.map_or_else(|| "n/a".to_owned(), |b| format!("{:.0}", median(&b)));
        format!(
            "{:>10} {:>18} {:>7}",
            thousands(median(&r)),
            format!("{}..{}", thousands(lo), thousands(hi)),
            bytes
        )
    };
    let batched = format!("batched, {} rows/txn", batch);
    println!("rows/s: median and min..max over rounds; B/row: bytes written (WAL + checkpoints) per upsert");
    println!("{:<16} {:^37}   {:^37}", "", batched, "single-row txns");
    println!(
        "{:<16} {:>10} {:>18} {:>7}   {:>10} {:>18} {:>7}",
        "setup", "rows/s", "min..max", "B/row", "rows/s", "min..max", "B/row"
    );
    println!("{}", "-".repeat(16 + 2 * 40));
    for (s, setup) in setups.iter().enumerate() {
        println!("{:<16} {}   {}", setup.name, cell(s, 0), cell(s, 1));
    }

    // cost(x) = time per row. cost(a)/cost(b) is taken per round, from
    // measurements of the same work run next to each other, and the median
    // of those paired ratios is shown: steadier than a ratio of medians when
    // other processes share the machine.
    let paired =
        |a: usize, b: usize, w: usize, clock: fn(&Sample) -> Option<Duration>| -> Option<f64> {
            let v: Option<Vec<f64>> = samples[a][w]
                .iter()
                .zip(&samples[b][w])
                .map(|(x, y)| Some(clock(x)?.as_secs_f64() / clock(y)?.as_secs_f64().max(1e-12)))
                .collect();
            v.map(|v| median(&v))
        };
    let wall_clock: fn(&Sample) -> Option<Duration> = |x| Some(x.wall);
    let cpu_clock: fn(&Sample) -> Option<Duration> = |x| x.cpu;
    let fmt = |r: Option<f64>| r.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}x"));
    let idx = |name: &str| setups.iter().position(|s| s.name == name);
    println!("\ncost per row, median of per-round paired ratios (wall clock, and on-CPU time in brackets)");
    println!("{:<46} {:>17}   {:>17}", "", "batched", "single-row");
    let line = |label: &str, a: Option<usize>, b: Option<usize>, goal: Option<Goal>| {
        let (Some(a), Some(b)) = (a, b) else { return };
        let (bw, bc) = (paired(a, b, 0, wall_clock), paired(a, b, 0, cpu_clock));
        let (sw, sc) = (paired(a, b, 1, wall_clock), paired(a, b, 1, cpu_clock));
        let tail = match (goal, bw, sw) {
            (Some((text, pass)), Some(bw), Some(sw)) => {
                let v = |ok: bool| if ok { "ok" } else { "MISSED" };
                format!("   {text}: {} / {}", v(pass(bw)), v(pass(sw)))
            }
            _ => String::new(),
        };
        println!(
            "{label:<46} {:>7} [{:>7}]   {:>7} [{:>7}]{tail}",
            fmt(bw),
            fmt(bc),
            fmt(sw),
            fmt(sc)
        );
    };
    let (none, key, barista, json) = (idx("none"), idx("key-only"), idx("barista"), idx("json"));
    line(
        "barista cost vs key-only floor:",
        barista,
        key,
        Some(("goal <= 1.10x", |r| r <= 1.10)),
    );
    line(
        "json cost vs barista:",
        json,
        barista,
        Some(("goal >= 1.5x", |r| r >= 1.5)),
    );
    line("barista cost vs no capture:", barista, none, None);
    line("key-only cost vs no capture:", key, none, None);
    line("json cost vs no capture:", json, none, None);
    if setups.iter().any(|s| s.name.starts_with("x-")) {
        println!("\nexperiments (x-*: trigger variants in this bench, not barista's), cost vs key-only floor:");
        line("barista (for comparison)", barista, key, None);
        for (s, setup) in setups
            .iter()
            .enumerate()
            .filter(|(_, s)| s.name.starts_with("x-"))
        {
            line(setup.name, Some(s), key, None);
        }
    }
}
