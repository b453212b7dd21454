//! The local cluster's dashboard asks only for metrics that the services export.
//!
//! `deploy/grafana/dashboards/parm.json` is provisioned into Grafana by docker-compose.yml;
//! a query naming a metric that no service exports shows an empty panel and no error, so
//! this test holds every PromQL expression of the dashboard against
//! `parm_common::metrics::ALL`. The compose file's command lines are checked by
//! `scripts/check-compose`, the queries themselves against a real Prometheus by
//! `scripts/check-metrics`.

use parm_common::metrics::ALL;
use std::collections::BTreeSet;
use std::path::Path;

fn dashboard() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/dashboards/parm.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every `expr` string anywhere in the dashboard (panels, rows, templating).
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The `parm_…` metric names an expression refers to.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("parm_") {
        let start = i + pos;
        let before_ok = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b':') {
            end += 1;
        }
        if before_ok {
            names.push(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

/// The exported metric a series name belongs to: histograms are queried through their
/// `_bucket`, `_sum` and `_count` series.
fn exported(series: &str) -> Option<&'static str> {
    if let Some(m) = ALL.iter().find(|m| **m == series) {
        return Some(m);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| series.strip_suffix(suffix))
        .find_map(|base| ALL.iter().find(|m| **m == base).copied())
}

#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let mut all = Vec::new();
    exprs(&dashboard(), &mut all);
    assert!(all.len() >= 10, "the dashboard should have its queries, found {}", all.len());
    let mut unknown = BTreeSet::new();
    let mut used = BTreeSet::new();
    for e in &all {
        let names = metric_names(e);
        assert!(!names.is_empty(), "dashboard query names no parm metric: {e}");
        for n in names {
            match exported(&n) {
                Some(m) => {
                    used.insert(m);
                }
                None => {
                    unknown.insert(n);
                }
            }
        }
    }
    assert!(unknown.is_empty(), "the dashboard queries metrics that parm does not export: {unknown:?} (exported: {ALL:?})");
    // The panels the local cluster promises (docs/local-cluster.md).
    for must in [
        "parm_decoder_results_total",
        "parm_decoder_latency_seconds",
        "parm_worker_inference_seconds",
        "parm_worker_batch_size",
        "parm_consumer_lag",
        "parm_decoder_reconstruction_agreement_ratio",
    ] {
        assert!(used.contains(must), "the dashboard has no panel on {must}");
    }
}

#[test]
fn histogram_quantiles_use_bucket_series_of_histograms() {
    let mut all = Vec::new();
    exprs(&dashboard(), &mut all);
    for e in all.iter().filter(|e| e.contains("histogram_quantile")) {
        assert!(
            metric_names(e).iter().all(|n| n.ends_with("_bucket")) && e.contains("le"),
            "histogram_quantile needs `_bucket` series aggregated by `le`: {e}"
        );
    }
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names("sum by (le) (rate(parm_decoder_latency_seconds_bucket[1m])) / x_parm_y + parm_a:b"),
        vec!["parm_decoder_latency_seconds_bucket", "parm_a:b"]
    );
    assert_eq!(exported("parm_worker_batch_size_count"), Some("parm_worker_batch_size"));
    assert_eq!(exported("parm_worker_batch_size_total"), None);
}

#[test]
fn dashboard_panels_are_laid_out_and_use_provisioned_data_sources() {
    let d = dashboard();
    assert_eq!(d["uid"], "parm", "docs and links name the dashboard by uid");
    let panels = d["panels"].as_array().expect("panels");
    // Data sources the provisioning file declares, by uid.
    let ds_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/provisioning/datasources/datasources.yml");
    let ds = std::fs::read_to_string(&ds_path).unwrap_or_else(|e| panic!("reading {}: {e}", ds_path.display()));
    let uids: BTreeSet<&str> = ds.lines().filter_map(|l| l.trim().strip_prefix("uid:")).map(str::trim).collect();
    assert!(uids.contains("prometheus"), "datasources.yml provisions Prometheus with uid prometheus: {uids:?}");
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(ids.insert(p["id"].as_i64().expect("panel id")), "duplicate panel id in '{title}'");
        let uid = p["datasource"]["uid"].as_str().unwrap_or_else(|| panic!("panel '{title}' names no data source uid"));
        assert!(uids.contains(uid), "panel '{title}' uses data source {uid}, not provisioned ({uids:?})");
        for t in p["targets"].as_array().into_iter().flatten() {
            assert!(t["refId"].is_string(), "a query of '{title}' has no refId");
        }
        let g = &p["gridPos"];
        let (x, y, w, h) = (g["x"].as_u64().unwrap(), g["y"].as_u64().unwrap(), g["w"].as_u64().unwrap(), g["h"].as_u64().unwrap());
        assert!(w > 0 && h > 0 && x + w <= 24, "panel '{title}' does not fit Grafana's 24 columns: {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "panel '{title}' overlaps another at column {cx}, row {cy}");
            }
        }
    }
}
