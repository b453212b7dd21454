//! Traces reach a real tracing backend: the services run as `parm` processes exporting
//! OTLP/HTTP to a Jaeger v2 on loopback, and the trace structure is read back through
//! Jaeger's HTTP query API (`/api/traces/{id}`), as a person would find it in the UI.
//!
//! Ignored by default: `scripts/check-tracing` builds and starts Jaeger, then runs
//! `cargo test -p parm --test jaeger -- --ignored` with `PARM_JAEGER_OTLP` (the OTLP/HTTP
//! traces endpoint) and `PARM_JAEGER_QUERY` (the query service's base URL) set.
//! `tests/traces.rs` checks the same structure in-process with an in-memory exporter.

mod support;

use parm_common::records::ResultSource;
use parm_common::telemetry::{self, TelemetryArgs};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// GET `url` and parse the JSON body; `None` on a 404.
fn get_json(url: &str) -> anyhow::Result<Option<Value>> {
    match support::http_get(url, &[])? {
        (200, body) => Ok(Some(serde_json::from_str(&body)?)),
        (404, _) => Ok(None),
        (status, body) => anyhow::bail!("GET {url}: HTTP {status}: {body}"),
    }
}

/// One span as Jaeger's query API shows it.
#[derive(Debug, Clone)]
struct JSpan {
    trace_id: String,
    span_id: String,
    name: String,
    service: String,
    tags: HashMap<String, String>,
    /// `(trace id, span id)` of every reference: the parent (CHILD_OF) and links (FOLLOWS_FROM).
    references: Vec<(String, String, String)>,
}

fn spans_of(trace: &Value) -> Vec<JSpan> {
    let processes = &trace["processes"];
    trace["spans"]
        .as_array()
        .map(|spans| {
            spans
                .iter()
                .map(|s| {
                    let pid = s["processID"].as_str().unwrap_or_default();
                    JSpan {
                        trace_id: s["traceID"].as_str().unwrap_or_default().to_string(),
                        span_id: s["spanID"].as_str().unwrap_or_default().to_string(),
                        name: s["operationName"].as_str().unwrap_or_default().to_string(),
                        service: processes[pid]["serviceName"].as_str().unwrap_or_default().to_string(),
                        tags: s["tags"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|t| {
                                let v = match &t["value"] {
                                    Value::String(s) => s.clone(),
                                    v => v.to_string(),
                                };
                                (t["key"].as_str().unwrap_or_default().to_string(), v)
                            })
                            .collect(),
                        references: s["references"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|r| {
                                (
                                    r["refType"].as_str().unwrap_or_default().to_string(),
                                    r["traceID"].as_str().unwrap_or_default().to_string(),
                                    r["spanID"].as_str().unwrap_or_default().to_string(),
                                )
                            })
                            .collect(),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Jaeger's ids drop nothing but may be shorter than 32 hex digits: compare as numbers.
fn same_id(a: &str, b: &str) -> bool {
    a.trim_start_matches('0') == b.trim_start_matches('0')
}

fn trace_of(tp: &str) -> String {
    tp.split('-').nth(1).expect("traceparent has a trace id").to_string()
}

/// The spans of `trace_id`, once `done` holds for them (spans arrive in batches from
/// several processes), or whatever is there at the timeout.
fn fetch_trace(query: &str, trace_id: &str, timeout: Duration, done: impl Fn(&[JSpan]) -> bool) -> Vec<JSpan> {
    let until = Instant::now() + timeout;
    loop {
        let spans = match get_json(&format!("{query}/api/traces/{trace_id}")) {
            Ok(Some(v)) => v["data"].as_array().into_iter().flatten().flat_map(spans_of).collect(),
            Ok(None) => Vec::new(),
            Err(e) => panic!("Jaeger query API at {query}: {e}"),
        };
        if done(&spans) || Instant::now() >= until {
            return spans;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn names(spans: &[JSpan]) -> HashSet<String> {
    spans.iter().map(|s| s.name.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Jaeger: run scripts/check-tracing"]
async fn traces_reach_jaeger_with_the_whole_path_and_parity_links() {
    let otlp = std::env::var("PARM_JAEGER_OTLP").expect("PARM_JAEGER_OTLP: Jaeger's OTLP/HTTP traces endpoint (scripts/check-tracing sets it)");
    let query = std::env::var("PARM_JAEGER_QUERY").expect("PARM_JAEGER_QUERY: Jaeger's query base URL (scripts/check-tracing sets it)");
    let query = query.trim_end_matches('/').to_string();

    // The client's spans are exported from this process, under service name parm-client.
    let client_tracing = telemetry::init_tracing("client", &TelemetryArgs { otlp_endpoint: Some(otlp.clone()) }).expect("OTLP exporter");

    // Two model workers, the second far slower than the deadline; a long linger puts both
    // queries in one coding group, so one is answered by the model and one reconstructed.
    let mut p = support::Pipeline::start("jaeger", 2, 1, |s| {
        s.otlp_endpoint = Some(otlp.clone());
        s.encoder_args = ["--linger-ms", "300", "--deadline-ms", "300"].map(String::from).to_vec();
        s.per_model_worker_args = vec![(1, ["--delay-fixed-ms", "5000"].map(String::from).to_vec())];
    })
    .await;
    let data = support::mnist();
    let tp_a = p.client.send("jaeger-a", &data.images[0], None).await.unwrap().expect("client span");
    let tp_b = p.client.send("jaeger-b", &data.images[1], None).await.unwrap().expect("client span");
    let expected: HashSet<String> = ["jaeger-a".to_string(), "jaeger-b".to_string()].into();
    let results = p.client.collect(&expected, Duration::from_secs(30)).await.unwrap();
    // Flush: the client's provider now, the services' on SIGTERM (their batch exporters).
    drop(client_tracing);
    tokio::task::block_in_place(|| p.deployment.stop());

    let by_id = |id: &str| results.iter().find(|r| r.result.query_id == id).unwrap_or_else(|| panic!("no result for {id}"));
    let (model_tp, recon_tp) = if by_id("jaeger-a").result.source == ResultSource::Model { (&tp_a, &tp_b) } else { (&tp_b, &tp_a) };
    let other = |tp: &String| if tp == &tp_a { "jaeger-b" } else { "jaeger-a" };
    assert_eq!(by_id(other(recon_tp)).result.source, ResultSource::Model, "one query answered by the model");
    assert_eq!(by_id(other(model_tp)).result.source, ResultSource::Reconstructed, "and one reconstructed");
    let t = p.kafka.topics();

    // The MODEL result's trace: client → encoder → model worker → decoder, in Jaeger.
    let path = [
        (format!("send {}", t.queries), "parm-client"),
        (format!("process {}", t.queries), "parm-encoder"),
        (format!("send {}", t.model_queries), "parm-encoder"),
        (format!("process {}", t.model_queries), "parm-model-worker"),
        (format!("send {}", t.predictions), "parm-model-worker"),
        (format!("process {}", t.predictions), "parm-decoder"),
        (format!("send {}", t.results), "parm-decoder"),
    ];
    let want: HashSet<String> = path.iter().map(|(n, _)| n.clone()).collect();
    let spans = fetch_trace(&query, &trace_of(model_tp), Duration::from_secs(30), |s| want.is_subset(&names(s)));
    for (name, service) in &path {
        assert!(
            spans.iter().any(|s| &s.name == name && s.service == *service),
            "Jaeger's trace of the MODEL result lacks '{name}' from {service}: {:?}",
            spans.iter().map(|s| (&s.name, &s.service)).collect::<Vec<_>>()
        );
    }
    let services: HashSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    for s in ["parm-client", "parm-encoder", "parm-model-worker", "parm-decoder"] {
        assert!(services.contains(s), "no {s} span in the trace: {services:?}");
    }
    // Messaging semantic conventions on what Jaeger stored (kind, system, destination, …).
    let process = spans.iter().find(|s| s.name == format!("process {}", t.model_queries)).unwrap();
    for (k, v) in [
        ("span.kind", Some("consumer")),
        ("messaging.system", Some("kafka")),
        ("messaging.operation.type", Some("process")),
        ("messaging.destination.name", Some(t.model_queries.as_str())),
        ("messaging.consumer.group.name", None),
        ("messaging.destination.partition.id", None),
        ("messaging.kafka.offset", None),
    ] {
        let got = process.tags.get(k).unwrap_or_else(|| panic!("span '{}' lacks {k}: {:?}", process.name, process.tags));
        if let Some(v) = v {
            assert_eq!(got, v, "{k} of '{}'", process.name);
        }
    }
    let send = spans.iter().find(|s| s.name == format!("send {}", t.queries)).unwrap();
    assert_eq!(send.tags.get("span.kind").map(String::as_str), Some("producer"), "client send span kind");

    // The RECONSTRUCTED result: its send span in the query's trace links the decoder's span
    // of the parity prediction, which sits in the parity query's own trace together with
    // the parity worker's spans.
    let results_name = format!("send {}", t.results);
    let spans = fetch_trace(&query, &trace_of(recon_tp), Duration::from_secs(30), |s| s.iter().any(|s| s.name == results_name));
    let result_span = spans
        .iter()
        .find(|s| s.name == results_name)
        .unwrap_or_else(|| panic!("no '{results_name}' in the reconstructed query's trace: {:?}", names(&spans)));
    assert_eq!(result_span.tags.get("parm.source").map(String::as_str), Some("RECONSTRUCTED"));
    let links: Vec<&(String, String, String)> = result_span.references.iter().filter(|(kind, _, _)| kind == "FOLLOWS_FROM").collect();
    assert!(!links.is_empty(), "the reconstructed result has no links: {:?}", result_span.references);
    let parity_process = format!("process {}", t.parity_predictions);
    let parity_worker = format!("process {}", t.parity_queries);
    let mut found = false;
    for (_, trace, span) in links {
        let linked = fetch_trace(&query, trace, Duration::from_secs(10), |s| {
            s.iter().any(|x| x.name == parity_process) && s.iter().any(|x| x.name == parity_worker)
        });
        if linked.iter().any(|s| same_id(&s.span_id, span) && s.name == parity_process && s.service == "parm-decoder") {
            assert!(
                linked.iter().any(|s| s.name == parity_worker && s.service == "parm-parity-worker"),
                "the parity trace holds the parity worker's span: {:?}",
                linked.iter().map(|s| (&s.name, &s.service)).collect::<Vec<_>>()
            );
            assert!(linked.iter().all(|s| same_id(&s.trace_id, trace)));
            found = true;
        }
    }
    assert!(found, "no link of the reconstructed result points at the decoder's '{parity_process}' span");
}
