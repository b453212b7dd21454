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
