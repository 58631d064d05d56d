//! The follower's lag page (`GET /`) in a real browser: headless Chromium
//! loads it from a live follower, lets it poll `/status`, and the numbers it
//! rendered are read back from the DOM and compared with `/status`. A second
//! test serves the page against a made-up `/status` to pin the states a live
//! follower rarely shows on demand: seconds lag unknown, halted, held
//! messages, a blocked partition.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use barista_tests::browser::{self, Capture, Field};
use barista_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

async fn status(addr: SocketAddr) -> Value {
    reqwest::get(format!("http://{addr}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The high watermark of each `topic/partition` key, asked of the broker.
fn broker_watermarks(brokers: &str, keys: &[String]) -> BTreeMap<String, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    keys.iter()
        .map(|k| {
            let (topic, p) = k.rsplit_once('/').unwrap();
            let (_, high) = c
                .fetch_watermarks(topic, p.parse().unwrap(), Duration::from_secs(5))
                .unwrap();
            (k.clone(), high)
        })
        .collect()
}

/// `/status` with every number that can change while a follower is paused
/// (seconds lag, on the leader's clock) left out.
fn stable(st: &Value) -> Value {
    let mut s = st.clone();
    s.as_object_mut().unwrap().remove("seconds_lag");
    s
}

/// Runs Chromium on `url` (or skips on purpose, see [`browser::SKIP_ENV`]),
/// printing the DOM when `check` panics.
async fn dom_of(url: String) -> Option<String> {
    let chromium = browser::chromium()?;
    let dom =
        tokio::task::spawn_blocking(move || browser::run(&chromium, &url, 5_000, Capture::Dom))
            .await
            .unwrap();
    Some(dom)
}

/// A field the page rendered, or a panic naming it with the DOM's fields.
#[track_caller]
fn field<'a>(f: &'a BTreeMap<(String, String), Field>, row: &str, name: &str) -> &'a Field {
    f.get(&(row.to_owned(), name.to_owned()))
        .unwrap_or_else(|| panic!("the page shows no {name:?} (row {row:?}); it shows {f:#?}"))
}

/// An integer field shows `/status`'s value: the same raw value, and a text
/// that is that number (thousands separators aside).
#[track_caller]
fn assert_int(f: &BTreeMap<(String, String), Field>, row: &str, name: &str, want: &Value) {
    let got = field(f, row, name);
    let n = want
        .as_i64()
        .unwrap_or_else(|| panic!("/status {name}: {want}"));
    assert_eq!(
        got.value.as_deref(),
        Some(n.to_string().as_str()),
        "{row} {name}"
    );
    assert_eq!(
        got.text.replace(',', ""),
        n.to_string(),
        "{row} {name} as shown"
    );
}

/// A live follower, paused behind the leader so its numbers hold still:
/// every number of `/status` appears on the page, in the right place, for
/// every partition. Seconds lag keeps growing on the leader's clock while
/// paused, so the page's value must lie between `/status` read before and
/// after the browser ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lag_page_shows_what_status_says_in_a_real_browser() {
    let Some(_) = browser::chromium() else { return };
    let mut s = Setup::new_with(1, "page").await;
    let producer = RunningProducer::start(s.producer_config());
    let (follower, addr) = RunningFollower::serving(s.follower_config("r.db"));
    wait_for_capture(&s.leader).await;
    s.write(91, 20).await;
    s.caught_up(&follower).await;

    let page = reqwest::get(format!("http://{addr}/")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "{:?}",
        page.headers()
    );

    let r = reqwest::Client::new()
        .post(format!("http://{addr}/admin/pause"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    wait_until(Duration::from_secs(10), || {
        follower
            .status()
            .paused
            .then_some(())
            .ok_or("not paused yet".into())
    })
    .await;
    let at_pause = replica_position(&follower.replica);
    s.write(92, 30).await;
    let head = leader_position(&s.leader);
    // Still: the leader's head is known, and every partition's high
    // watermark is the broker's.
    let brokers = s.brokers.clone();
    wait_until_async(Duration::from_secs(30), || {
        let brokers = brokers.clone();
        async move {
            let st = status(addr).await;
            let keys: Vec<String> = st["partitions"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            let highs = broker_watermarks(&brokers, &keys);
            let shown: BTreeMap<String, i64> = keys
                .iter()
                .map(|k| {
                    (
                        k.clone(),
                        st["partitions"][k]["high_watermark"].as_i64().unwrap(),
                    )
                })
                .collect();
            (st["leader_position"] == head
                && st["position_lag"] == head - at_pause
                && st["offset_lag"].as_i64() > Some(0)
                && !keys.is_empty()
                && shown == highs)
                .then_some(())
                .ok_or(format!("leader at {head}, broker {highs:?}: {st}"))
        }
    })
    .await;

    let before = status(addr).await;
    let dom = dom_of(format!("http://{addr}/")).await.unwrap();
    let after = status(addr).await;
    assert_eq!(stable(&before), stable(&after), "the paused follower moved");
    let f = browser::fields(&dom);

    for name in [
        "applied_position",
        "leader_position",
        "position_lag",
        "offset_lag",
        "changes_applied",
        "duplicates",
        "dead_letters",
    ] {
        assert_int(&f, "", name, &before[name]);
    }
    assert_eq!(before["applied_position"], at_pause);
    assert_eq!(
        field(&f, "", "follower").text,
        before["follower"].as_str().unwrap()
    );
    assert_eq!(field(&f, "", "state").text, "paused");

    // Seconds: a number (the follower has heard the leader), shown as one,
    // between the two reads of /status.
    let secs = field(&f, "", "seconds_lag");
    let shown: f64 = secs
        .value
        .as_deref()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("seconds_lag {secs:?} after hearing the leader: {e}"));
    let (lo, hi) = (
        before["seconds_lag"].as_f64().unwrap(),
        after["seconds_lag"].as_f64().unwrap(),
    );
    assert!(
        lo > 0.0 && (lo..=hi).contains(&shown),
        "{lo} <= {shown} <= {hi}"
    );
    assert!(secs.text.ends_with(" s") && secs.text != "0 s", "{secs:?}");

    // Every partition, every column; no partition that /status lacks.
    let parts = before["partitions"].as_object().unwrap();
    let rows: std::collections::BTreeSet<&str> = f
        .keys()
        .filter(|(row, name)| !row.is_empty() && name == "next_offset")
        .map(|(row, _)| row.as_str())
        .collect();
    assert_eq!(
        rows,
        parts.keys().map(String::as_str).collect(),
        "partition rows"
    );
    for (key, p) in parts {
        for name in [
            "next_offset",
            "high_watermark",
            "offset_lag",
            "applied_position",
        ] {
            assert_int(&f, key, name, &p[name]);
        }
        assert_eq!(field(&f, key, "blocked").value.as_deref(), Some("null"));
    }
    let lagging: i64 = parts
        .values()
        .map(|p| p["offset_lag"].as_i64().unwrap())
        .sum();
    assert_eq!(before["offset_lag"], lagging);

    // A picture of the same page, for people (and a second load that must
    // not fail): BARISTA_PAGE_SCREENSHOT=/tmp/lag-page.png keeps it.
    if let Some(png) = std::env::var_os("BARISTA_PAGE_SCREENSHOT") {
        let chromium = browser::chromium().unwrap();
        let url = format!("http://{addr}/");
        let path = std::path::PathBuf::from(png);
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            browser::run(&chromium, &url, 5_000, Capture::Screenshot(&p))
        })
        .await
        .unwrap();
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "{} is {size} bytes", path.display());
    }

    let r = reqwest::Client::new()
        .post(format!("http://{addr}/admin/resume"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    s.caught_up(&follower).await;
    follower.stop().await.unwrap();
    producer.stop().await.unwrap();
}

/// The page against a `/status` a follower shows only in trouble: seconds
/// lag unknown (null: nothing heard from the leader yet) reads "unknown",
/// never 0; a halted follower says so and why; a partition held behind a
/// poison message shows its reason; `held_by` (when a follower reports it)
/// is listed message by message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_page_shows_unknown_lag_halts_and_held_messages() {
    let Some(_) = browser::chromium() else { return };
    let st = json!({
        "follower": "follower-7",
        "applied_position": 1234567,
        "leader_position": 1234600,
        "position_lag": 33,
        "seconds_lag": null,
        "offset_lag": 12,
        "partitions": {
            "shop.customers/0": {"next_offset": 40, "high_watermark": 52, "offset_lag": 12,
                                 "applied_position": 1234567,
                                 "blocked": "poison at offset 40 <claims position 1234568>"},
            "shop.customers/1": {"next_offset": 9, "high_watermark": 9, "offset_lag": 0,
                                 "applied_position": 1234500}
        },
        "changes_applied": 5000,
        "duplicates": 2,
        "dead_letters": 3,
        "paused": true,
        "halted": "gap in shop.customers/0 after position 1234567",
        "diverged": {"table": "customers", "position": 1234560,
                     "leader": -42, "replica": 7},
        "held_by": [{"topic": "shop.customers", "partition": 0, "offset": 40,
                     "position": 1234568, "error": "unknown schema id 77",
                     "since": 1764600000000i64}]
    });
    let body = st.clone();
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(|| async { axum::response::Html(barista_consumer::http::LAG_PAGE) }),
        )
        .route(
            "/status",
            axum::routing::get(move || async move { axum::Json(body) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let dom = dom_of(format!("http://{addr}/")).await.unwrap();
    server.abort();
    let f = browser::fields(&dom);

    let secs = field(&f, "", "seconds_lag");
    assert_eq!(secs.value.as_deref(), Some("null"));
    assert_eq!(
        secs.text, "unknown",
        "null seconds lag is unknown, not zero"
    );
    assert_int(&f, "", "applied_position", &st["applied_position"]);
    assert_eq!(field(&f, "", "applied_position").text, "1,234,567");
    assert_int(&f, "", "position_lag", &st["position_lag"]);
    assert_int(&f, "", "dead_letters", &st["dead_letters"]);
    assert_eq!(
        field(&f, "", "state").text,
        "halted",
        "halted wins over paused"
    );
    assert_eq!(
        field(&f, "", "halted").text,
        format!("halted: {}", st["halted"].as_str().unwrap())
    );

    let diverged = &field(&f, "", "diverged").text;
    assert!(
        diverged
            .starts_with("diverged: table customers differs from the leader at position 1,234,560")
            && diverged.contains("--reseed"),
        "{diverged}"
    );

    let blocked = field(&f, "shop.customers/0", "blocked");
    assert_eq!(
        blocked.text,
        st["partitions"]["shop.customers/0"]["blocked"]
            .as_str()
            .unwrap()
    );
    assert_eq!(
        field(&f, "shop.customers/1", "blocked").value.as_deref(),
        Some("null")
    );
    assert_int(&f, "shop.customers/0", "offset_lag", &json!(12));

    assert_eq!(
        field(&f, "held/0", "held_partition").text,
        "shop.customers/0"
    );
    assert_int(&f, "held/0", "held_offset", &json!(40));
    assert_int(&f, "held/0", "held_position", &json!(1234568));
    assert_eq!(
        field(&f, "held/0", "held_error").text,
        "unknown schema id 77"
    );
    assert_eq!(
        field(&f, "held/0", "held_since").text,
        "2025-12-01 14:40:00Z"
    );
    assert!(
        !f.keys().any(|(row, _)| row == "held/1"),
        "one held message, one row"
    );
}
