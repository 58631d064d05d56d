//! The compose dashboards (compose/grafana): the Grafana dashboard is a
//! dashboard Grafana can load, every panel queries the datasource compose
//! provisions, and every follower metric it queries is one a real follower
//! serves on `/metrics` (scraped here over HTTP), so a renamed metric turns
//! into a failing test rather than an empty panel.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use barista_tests::*;
use serde_json::Value;

fn compose_file(rel: &str) -> (PathBuf, String) {
    let path = manifest_dir().join("../compose").join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    (path, text)
}

/// Producer metrics the dashboard may query. The producer's `/metrics`
/// (served on producer:8089 in compose) is being built in parallel, so these
/// are checked against this list rather than a scrape; once it lands, scrape
/// a running producer here the way the follower is scraped below.
const PRODUCER_METRICS: &[&str] = &[
    "barista_producer_backlog_rows",
    "barista_producer_backlog_bytes",
    "barista_producer_oldest_unacked_seconds",
];

/// The datasource uids compose provisions (`uid:` lines of the datasource
/// file; a YAML parser for one key is not worth a dependency).
fn provisioned_uids() -> BTreeSet<String> {
    let (path, text) = compose_file("grafana/provisioning/datasources/prometheus.yml");
    let uids: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("uid:"))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .collect();
    assert!(!uids.is_empty(), "{} provisions no uid", path.display());
    uids
}

/// Every `barista_*` metric name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("barista_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// Checks the dashboard's shape; returns every metric it queries.
fn check_dashboard(d: &Value, uids: &BTreeSet<String>) -> BTreeSet<String> {
    for key in ["uid", "title"] {
        assert!(
            d[key].as_str().is_some_and(|s| !s.is_empty()),
            "dashboard {key}"
        );
    }
    assert!(d["schemaVersion"].as_u64().is_some(), "schemaVersion");
    let panels = d["panels"].as_array().expect("panels is an array");
    assert!(!panels.is_empty(), "no panels");
    let ds_ok = |ds: &Value, what: &str| {
        let uid = ds["uid"].as_str().unwrap_or_default();
        assert!(
            uids.contains(uid) && ds["type"] == "prometheus",
            "{what}: datasource {ds} is not the provisioned Prometheus {uids:?}"
        );
    };
    let mut ids = BTreeSet::new();
    let mut metrics = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{title}: duplicate panel id"
        );
        let g = &p["gridPos"];
        let (x, w, h) = (g["x"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
        assert!(
            matches!((x, w, h, g["y"].as_u64()), (Some(x), Some(w), Some(h), Some(_)) if w > 0 && h > 0 && x + w <= 24),
            "{title}: gridPos {g}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert!(p["type"].as_str().is_some(), "{title}: type");
        ds_ok(&p["datasource"], title);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(
                refs.insert(t["refId"].as_str().expect("refId")),
                "{title}: duplicate refId"
            );
            if !t["datasource"].is_null() {
                ds_ok(&t["datasource"], title);
            }
            let expr = t["expr"].as_str().expect("a PromQL expr");
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "{title}: {expr} queries no barista metric"
            );
            metrics.extend(names);
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        ds_ok(&v["datasource"], "template variable");
        metrics.extend(metric_names(v["definition"].as_str().unwrap_or_default()));
    }
    metrics
}

/// Names of every sample a follower's `/metrics` serves now.
async fn served_metrics(addr: SocketAddr) -> BTreeSet<String> {
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    scrape.samples.into_iter().map(|s| s.metric).collect()
}

/// The Grafana dashboard compose provisions is well formed, uses the
/// provisioned datasource, and queries only metrics that exist: follower
/// metrics as a live follower (with partitions, so per-partition families
/// have samples) serves them, producer metrics from [`PRODUCER_METRICS`].
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_grafana_dashboard_queries_metrics_that_exist() {
    let (path, text) = compose_file("grafana/dashboards/barista.json");
    let d: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let queried = check_dashboard(&d, &provisioned_uids());
    for wanted in [
        "barista_follower_seconds_lag",
        "barista_follower_position_lag",
        "barista_follower_offset_lag",
        "barista_follower_changes_applied_total",
        "barista_follower_dead_letters_total",
    ] {
        assert!(queried.contains(wanted), "no panel shows {wanted}");
    }

    let mut s = Setup::new_with(1, "dash").await;
    let producer = RunningProducer::start(s.producer_config());
    let (follower, addr) = RunningFollower::serving(s.follower_config("r.db"));
    wait_for_capture(&s.leader).await;
    s.write(101, 10).await;
    s.caught_up(&follower).await;
    let served = served_metrics(addr).await;
    follower.stop().await.unwrap();
    producer.stop().await.unwrap();

    for m in &queried {
        if m.starts_with("barista_follower_") {
            assert!(
                served.contains(m),
                "the dashboard queries {m}, which a follower does not serve; it serves {served:?}"
            );
        } else {
            assert!(
                PRODUCER_METRICS.contains(&m.as_str()),
                "the dashboard queries {m}, which is not a known producer metric {PRODUCER_METRICS:?}"
            );
        }
    }
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names(
            r#"sum by (follower) (rate(barista_follower_changes_applied_total{follower=~"$follower"}[1m])) / barista_producer_backlog_rows"#
        ),
        [
            "barista_follower_changes_applied_total",
            "barista_producer_backlog_rows"
        ]
    );
}

/// This crate's directory as cargo names it when it runs the test, not as it was when the
/// test was compiled: a target dir shared by checkouts at other paths (CI's cache) keeps a
/// test binary whose `env!("CARGO_MANIFEST_DIR")` names another checkout.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
