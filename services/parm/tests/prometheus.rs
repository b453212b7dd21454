//! Metrics reach a real Prometheus, and the Python client example works: the services run
//! as `parm` processes with `--metrics-addr`, a Prometheus on loopback scrapes them, queries
//! come from the Rust client and from `examples/python_client.py`, and PromQL through
//! Prometheus's HTTP API returns the counts the clients saw. Every query of the Grafana
//! dashboard is evaluated too (it must parse, and the main panels must have data).
//!
//! Ignored by default: `scripts/check-metrics` installs Prometheus (Debian) and the
//! client's venv, then runs `cargo test -p parm --test prometheus -- --ignored` with
//! `PARM_CLIENT_PYTHON` (the venv's python) set. `PARM_PROMETHEUS` names the binary
//! (default `prometheus`).

mod support;

use parm_common::records::ResultSource;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{free_port, http_get};

/// A Prometheus process scraping the given targets; killed on drop.
struct Prometheus {
    child: Child,
    host: String,
    log: std::path::PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, targets: &[(&str, String)]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        // The same `service` label as the compose file's DNS discovery gives.
        let mut cfg = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: parm\n    static_configs:\n");
        for (service, addr) in targets {
            cfg.push_str(&format!("      - targets: ['{addr}']\n        labels: {{service: '{service}'}}\n"));
        }
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, cfg).unwrap();
        let host = format!("127.0.0.1:{}", free_port());
        let log = dir.join("prometheus.log");
        let bin = std::env::var("PARM_PROMETHEUS").unwrap_or_else(|_| "prometheus".to_string());
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={host}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin} (apt-get install prometheus, or scripts/setup-checks): {e}"));
        let mut p = Self { child, host, log };
        let until = Instant::now() + Duration::from_secs(60);
        while !matches!(http_get(&format!("http://{}/-/ready", p.host), &[]), Ok((200, _))) {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited with {status}: {}", std::fs::read_to_string(&p.log).unwrap_or_default());
            }
            assert!(Instant::now() < until, "prometheus not ready at {} (log {})", p.host, p.log.display());
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// An instant query; the `data` of a successful answer, or the error Prometheus gave.
    fn query(&self, promql: &str) -> Result<Value, String> {
        let (status, body) = http_get(&format!("http://{}/api/v1/query", self.host), &[("query", promql)]).map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("HTTP {status}: {e}: {body}"))?;
        if v["status"] == "success" {
            Ok(v["data"].clone())
        } else {
            Err(format!("{}: {}", v["errorType"], v["error"]))
        }
    }

    /// `sum by (label) (...)` as label value → number.
    fn by_label(&self, promql: &str, label: &str) -> BTreeMap<String, f64> {
        let data = self.query(promql).unwrap_or_else(|e| panic!("{promql}: {e}"));
        data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let k = r["metric"][label].as_str().unwrap_or("").to_string();
                let v = r["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
                (k, v)
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dashboard_exprs() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/dashboards/parm.json");
    let d: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((p["title"].as_str().unwrap_or("").to_string(), e.to_string()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Prometheus and the Python client's venv: run scripts/check-metrics"]
async fn prometheus_counts_what_the_clients_saw_and_the_python_client_gets_results() {
    let python = std::env::var("PARM_CLIENT_PYTHON").expect("PARM_CLIENT_PYTHON: python of the venv with examples/requirements.txt (scripts/check-metrics sets it)");
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let (enc, m0, m1, par, dec) = (free_port(), free_port(), free_port(), free_port(), free_port());
    // Model worker 1 is slower than the 50 ms deadline: reconstructions, late predictions
    // and the agreement gauge all get values.
    let p = support::Pipeline::start("prom", 2, 1, |s| {
        s.encoder_args = vec!["--metrics-addr".into(), addr(enc)];
        s.per_model_worker_args = vec![
            (0, vec!["--metrics-addr".into(), addr(m0)]),
            (1, vec!["--metrics-addr".into(), addr(m1), "--delay-fixed-ms".into(), "150".into()]),
        ];
        s.parity_worker_args = vec!["--metrics-addr".into(), addr(par)];
        s.decoder_args = vec!["--metrics-addr".into(), addr(dec)];
    })
    .await;
    let prom_dir = p.deployment.spec.log_dir.join("prometheus");
    let prom = tokio::task::block_in_place(|| {
        Prometheus::start(
            &prom_dir,
            &[
                ("encoder", addr(enc)),
                ("model-worker", addr(m0)),
                ("model-worker", addr(m1)),
                ("parity-worker", addr(par)),
                ("decoder", addr(dec)),
            ],
        )
    });

    // Prometheus applies its targets a few seconds after it starts: wait for the first
    // scrape of all five, so that the run has samples from before the traffic.
    let until = Instant::now() + Duration::from_secs(30);
    while prom.by_label("sum(up)", "").get("") != Some(&5.0) {
        assert!(Instant::now() < until, "Prometheus did not scrape all 5 services: {:?} (log {})", prom.query("up"), prom.log.display());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // 30 queries from the Rust client, then 10 from the Python example.
    let sent = p.send("prom", 0..30, 50.0, None).await;
    let (rust_results, duplicates) = p.results_for(&sent, Duration::from_secs(60)).await;
    assert_eq!(duplicates, 0);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tokio::task::block_in_place(|| {
        Command::new(&python)
            .arg(repo.join("examples/python_client.py"))
            .args(["--brokers", &p.kafka.brokers, "--topic-prefix", &p.kafka.topic_prefix, "--count", "10", "--timeout-s", "60"])
            .output()
            .expect("running examples/python_client.py")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python client failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let py: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))).collect();
    assert_eq!(py.len(), 10, "the python client printed one line per query: {stdout}");
    let correct = py.iter().filter(|r| r["source"] != "UNAVAILABLE" && r["top1"] == r["label"]).count();
    assert!(correct >= 8, "the python client's results should mostly match the labels: {stdout}");
    println!("python client: {correct}/10 correct\n{stdout}");

    // What the clients saw, by source.
    let mut seen: BTreeMap<String, f64> = BTreeMap::new();
    for r in rust_results.values() {
        let s = match r.result.source {
            ResultSource::Model => "MODEL",
            ResultSource::Reconstructed => "RECONSTRUCTED",
            ResultSource::Unavailable => "UNAVAILABLE",
        };
        *seen.entry(s.to_string()).or_default() += 1.0;
    }
    for r in &py {
        *seen.entry(r["source"].as_str().unwrap().to_string()).or_default() += 1.0;
    }
    println!("clients saw {seen:?}");

    // Prometheus, once it has scraped the last of it.
    // Prometheus, once it has scraped the last of it from every service, twice (so that
    // rate() has two samples of every series).
    let until = Instant::now() + Duration::from_secs(30);
    let by_source = loop {
        let got = prom.by_label("sum by (source) (parm_decoder_results_total)", "source");
        let samples = prom.by_label("min(count_over_time(parm_worker_queries_total[1m]))", "");
        let settled = got == seen
            && samples.get("").is_some_and(|n| *n >= 2.0)
            && prom.by_label("sum(parm_encoder_queries_total)", "").get("") == Some(&40.0);
        if settled || Instant::now() >= until {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await; // two more scrape intervals for rate()
    assert_eq!(by_source, seen, "sum by (source) (parm_decoder_results_total) against what the clients received");
    assert_eq!(prom.by_label("sum(parm_encoder_queries_total)", "").get(""), Some(&40.0), "queries the encoder read");
    assert!(seen.get("RECONSTRUCTED").copied().unwrap_or(0.0) >= 1.0, "the slow worker caused reconstructions: {seen:?}");
    let latency_count = prom.by_label("sum(parm_decoder_latency_seconds_count)", "");
    assert_eq!(latency_count.get(""), Some(&40.0), "one latency observation per result");
    let workers = prom.by_label("count by (service) (parm_worker_queries_total)", "service");
    assert_eq!(workers.get("model-worker"), Some(&2.0), "both model workers scraped: {workers:?}");
    assert_eq!(workers.get("parity-worker"), Some(&1.0), "the parity worker scraped: {workers:?}");

    // Every dashboard query parses; the main panels have data; which ones are empty is shown.
    let mut empty = Vec::new();
    let mut failed = Vec::new();
    for (title, expr) in dashboard_exprs() {
        let e = expr.replace("$__rate_interval", "1m").replace("$__range", "5m");
        match prom.query(&e) {
            Ok(d) if d["result"].as_array().is_some_and(|r| !r.is_empty()) => {}
            Ok(_) => empty.push(format!("{title}: {expr}")),
            Err(err) => failed.push(format!("{title}: {expr}: {err}")),
        }
    }
    assert!(failed.is_empty(), "dashboard queries Prometheus rejects:\n{}", failed.join("\n"));
    println!("dashboard queries without data in this run ({}):\n  {}", empty.len(), empty.join("\n  "));
    // Only series that need an event this run does not cause may be missing.
    let may_be_empty = [
        "parm_worker_skipped_total", // a query past its hard deadline, or already answered
        "parm_dead_letters_total",   // bad input
    ];
    let unexpected: Vec<&String> = empty.iter().filter(|e| !may_be_empty.iter().any(|m| e.contains(m))).collect();
    assert!(unexpected.is_empty(), "dashboard queries without data:\n{unexpected:#?}");
}
