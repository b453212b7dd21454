//! The latency benchmark's driver end to end on the real broker: the `bench` binary runs
//! the smoke scenario (every mode, a few hundred queries each) with the workspace's `parm`
//! binary, and what it writes is checked against what the scenario configured and against
//! itself:
//! - one run per mode, each with its mode's worker counts, and a log per service process;
//! - every query sent (the warm-up included) got a result, none got two, and the report
//!   counts exactly the queries past the warm-up, each once as MODEL, RECONSTRUCTED or
//!   UNAVAILABLE;
//! - the report agrees with the per-query log (`queries.csv`): counts by source, hedge wins,
//!   the maximum latency; every latency is positive and shorter than the run itself;
//! - the answers are right (top-1 against the MNIST labels), so queries went out with the
//!   images their labels belong to;
//! - the parity modes reconstruct some answers (the scenario's slowdown episodes make
//!   stragglers), the baselines none; only `hedge` sends hedged copies, within its budget;
//! - the per-run JSON files, `results.json` and the summary table agree.
//!
//! Latencies themselves are not asserted (the machine is shared); `benchmarks/README.md`
//! reports them.

use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `parm` next to this test's own build output (built by `cargo test --workspace`).
fn parm_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
    let parm = dir.join("parm");
    assert!(parm.is_file(), "{} is missing: build it first (cargo build -p parm, or run cargo test --workspace)", parm.display());
    parm
}

/// What the smoke scenario configures, as far as the checks need it.
struct Smoke {
    queries: usize,
    warmup: usize,
    model_workers: usize,
}

impl Smoke {
    /// Reads `benchmarks/scenarios/smoke.toml`.
    fn load(root: &Path) -> Self {
        let text = std::fs::read_to_string(root.join("benchmarks/scenarios/smoke.toml")).unwrap();
        let scenario: toml::Value = toml::from_str(&text).unwrap();
        let int = |key: &str| scenario[key].as_integer().unwrap_or_else(|| panic!("smoke.toml: {key}")) as usize;
        Self { queries: int("queries"), warmup: int("warmup"), model_workers: int("model_workers") }
    }
}

/// One row of a run's `queries.csv`: a result as the client received it.
struct Row {
    query: usize,
    source: String,
    latency_ms: f64,
    hedge: bool,
}

/// The rows of a run's per-query log, in arrival order.
fn query_log(path: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("query_id,group_id,source,latency_ms,decided_after_deadline_ms,hedge"), "{}", path.display());
    lines
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 6, "{}: {line}", path.display());
            let query = f[0].strip_prefix('q').and_then(|i| i.parse().ok()).unwrap_or_else(|| panic!("{}: query id {}", path.display(), f[0]));
            Row { query, source: f[2].to_string(), latency_ms: f[3].parse().unwrap(), hedge: f[5].parse().unwrap() }
        })
        .collect()
}

/// `run[key]` as a count.
fn count(run: &Value, key: &str) -> usize {
    run[key].as_u64().unwrap_or_else(|| panic!("{}: no count {key}", run["label"])) as usize
}

/// The run's processes: its mode's worker counts in the JSON, and a log for each service
/// process and nothing else.
fn check_topology(run: &Value, smoke: &Smoke, logs: &Path) {
    let label = run["label"].as_str().unwrap();
    let n = smoke.model_workers;
    let extra = n / count(run, "k");
    let (model, parity) = match run["mode"].as_str().unwrap() {
        "none" => (n, 0),
        "equal" | "hedge" => (n + extra, 0),
        _ => (n, extra),
    };
    assert_eq!((count(run, "model_workers"), count(run, "parity_workers")), (model, parity), "{label}: workers of its mode");
    let mut expected: BTreeSet<String> = ["encoder.log", "decoder-0.log", "queries.csv"].map(String::from).into();
    expected.extend((0..model).map(|i| format!("model-worker-{i}.log")));
    expected.extend((0..parity).map(|i| format!("parity-worker-{i}.log")));
    let found: BTreeSet<String> = std::fs::read_dir(logs).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(found, expected, "{label}: a log per service process");
}

/// The report's counts: the queries past the warm-up, each answered once.
fn check_counts(run: &Value, smoke: &Smoke) {
    let label = run["label"].as_str().unwrap();
    let r = &run["report"];
    let measured = count(run, "measured");
    assert_eq!(measured, smoke.queries - smoke.warmup, "{label}: the warm-up queries are not measured");
    assert_eq!((count(r, "queries"), count(r, "results")), (measured, measured), "{label}: every measured query has a result");
    assert_eq!(count(r, "missing"), 0, "{label}: a query got no result");
    assert_eq!(count(r, "duplicates"), 0, "{label}: a query got two results");
    let answered: usize = ["model", "reconstructed", "unavailable"].iter().map(|k| count(r, k)).sum();
    assert_eq!(answered, measured, "{label}: every measured query has one answer");
    let p: Vec<f64> = ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"].iter().map(|k| r[*k].as_f64().unwrap()).collect();
    assert!(p[0] > 0.0 && p.windows(2).all(|w| w[0] <= w[1]), "{label}: percentiles out of order: {p:?}");
    let predictions = count(r, "model") + count(r, "reconstructed");
    let correct = r["accuracy"].as_f64().unwrap() * measured as f64;
    // mnist-mlp: 98% top-1, its reconstructions 94%; queries paired with the wrong labels: 10%.
    assert!(predictions == 0 || correct / predictions as f64 > 0.9, "{label}: {correct} of {predictions} answers right");
}

/// What only some modes do: reconstruct (the parity modes, and only they: the slowdown
/// episodes make stragglers) and hedge (`hedge` alone, within 1/k of the queries).
fn check_mode(run: &Value, smoke: &Smoke) {
    let label = run["label"].as_str().unwrap();
    let r = &run["report"];
    let mode = run["mode"].as_str().unwrap();
    let reconstructed = count(r, "reconstructed");
    if mode == "parm" || mode == "parm-eager" {
        assert!(reconstructed > 0, "{label}: stragglers, yet nothing reconstructed");
        assert!(run["parity_model"].is_string(), "{label}: its parity model");
        let degraded = run["degraded_accuracy"].as_f64().unwrap_or_else(|| panic!("{label}: no degraded accuracy"));
        assert!((0.0..=1.0).contains(&degraded), "{label}: degraded accuracy {degraded}");
    } else {
        assert_eq!(reconstructed, 0, "{label}: no parity, so nothing is reconstructed");
        assert!(run["parity_model"].is_null() && run["degraded_accuracy"].is_null(), "{label}: no parity model, no degraded accuracy");
    }
    let (hedges, wins) = (count(r, "hedges"), count(r, "hedge_wins"));
    if mode == "hedge" {
        // The first hedge delay is the deadline, which the slowdown episodes exceed.
        assert!(hedges > 0, "{label}: no hedged copy sent");
        assert!(hedges * count(run, "k") <= smoke.queries, "{label}: {hedges} hedges over the budget of 1/k");
        assert!(wins <= hedges, "{label}: {wins} hedge wins of {hedges} hedges");
    } else {
        assert_eq!((hedges, wins), (0, 0), "{label}: hedges outside the hedge mode");
    }
}

/// The per-query log: every query sent got exactly one result per copy (original or
/// hedge), latencies are positive and shorter than the run, and the report's counts and
/// maximum are those of the first answers of the measured queries.
fn check_query_log(run: &Value, smoke: &Smoke, rows: &[Row]) {
    let label = run["label"].as_str().unwrap();
    let r = &run["report"];
    let mut copies: HashSet<(usize, bool)> = HashSet::new();
    let mut first: HashMap<usize, &Row> = HashMap::new();
    for row in rows {
        assert!(row.query < smoke.queries, "{label}: a result for q{}, which was never sent", row.query);
        assert!(copies.insert((row.query, row.hedge)), "{label}: q{} (hedge: {}) answered twice", row.query, row.hedge);
        let wall_ms = run["wall_s"].as_f64().unwrap() * 1000.0;
        assert!(row.latency_ms > 0.0 && row.latency_ms < wall_ms, "{label}: q{} took {} ms in a run of {wall_ms} ms", row.query, row.latency_ms);
        first.entry(row.query).or_insert(row);
    }
    assert_eq!(first.len(), smoke.queries, "{label}: every query sent, the warm-up included, got a result");
    let hedged_rows = rows.iter().filter(|row| row.hedge).count();
    assert!(hedged_rows <= count(r, "hedges"), "{label}: {hedged_rows} answers to {} hedged copies", count(r, "hedges"));

    let measured: Vec<&Row> = first.values().filter(|row| row.query >= smoke.warmup).copied().collect();
    let by_source = |source: &str| measured.iter().filter(|row| row.source == source).count();
    let logged = [by_source("Model"), by_source("Reconstructed"), by_source("Unavailable")];
    let reported = [count(r, "model"), count(r, "reconstructed"), count(r, "unavailable")];
    assert_eq!(logged, reported, "{label}: answers by source, in queries.csv and in the report");
    assert_eq!(measured.iter().filter(|row| row.hedge).count(), count(r, "hedge_wins"), "{label}: hedge wins");
    let logged_max = measured.iter().map(|row| row.latency_ms).fold(0.0, f64::max);
    let reported_max = r["max_ms"].as_f64().unwrap();
    // The report's histogram keeps three significant digits.
    assert!((reported_max - logged_max).abs() <= logged_max * 2e-3 + 0.01, "{label}: max latency {reported_max} ms, logged {logged_max} ms");
}

#[test]
fn the_smoke_scenario_runs_every_mode_and_writes_its_results() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let scratch = std::env::temp_dir().join(format!("parm-bench-smoke-{}", std::process::id()));
    let bench = Command::new(env!("CARGO_BIN_EXE_bench"))
        .current_dir(&root)
        .arg("benchmarks/scenarios/smoke.toml")
        .args(["--brokers", &parm::broker::for_tests().expect("starting the local Kafka broker with scripts/kafka-local")])
        .arg("--parm-bin")
        .arg(parm_binary())
        .arg("--out")
        .arg(scratch.join("results"))
        .arg("--log-dir")
        .arg(scratch.join("logs"))
        .output()
        .expect("running bench");
    // Its progress bar stays out of the test output unless it failed.
    assert!(
        bench.status.success(),
        "bench failed (logs in {}):\n{}",
        scratch.join("logs").display(),
        String::from_utf8_lossy(&bench.stderr).replace('\r', "\n")
    );

    let smoke = Smoke::load(&root);
    let out = scratch.join("results").join("smoke");
    let all: Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let runs = all["runs"].as_array().expect("runs");
    let modes: BTreeSet<&str> = runs.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, BTreeSet::from(["equal", "hedge", "none", "parm", "parm-eager"]));
    assert_eq!(runs.len(), modes.len(), "one run per mode");
    for run in runs {
        let label = run["label"].as_str().unwrap();
        let logs = scratch.join("logs").join("smoke").join(label);
        check_topology(run, &smoke, &logs);
        check_counts(run, &smoke);
        check_mode(run, &smoke);
        check_query_log(run, &smoke, &query_log(&logs.join("queries.csv")));
        let own: Value = serde_json::from_str(&std::fs::read_to_string(out.join(format!("{label}.json"))).unwrap()).unwrap();
        assert_eq!(&own, run, "{label}: its own JSON file and results.json");
    }
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    // The latency table comes first, before any section; the CPU per query table has a
    // row per run too.
    let latency = summary.split("\n## ").next().unwrap_or_default();
    let (_, cpu) = summary.split_once("## CPU per query").unwrap_or_else(|| panic!("no CPU section:\n{summary}"));
    let table_rows = |text: &str, header: &str| -> Vec<String> {
        text.lines().filter(|l| l.starts_with("| ") && !l.starts_with(header)).map(str::to_string).collect()
    };
    let rows = table_rows(latency, "| mode");
    assert_eq!(rows.len(), runs.len(), "{summary}");
    let cpu_rows = table_rows(cpu, "| run");
    assert_eq!(cpu_rows.len(), runs.len(), "{summary}");
    for run in runs {
        let mode = run["mode"].as_str().unwrap();
        assert!(rows.iter().any(|l| l.starts_with(&format!("| {mode} |"))), "{mode}: no row in the summary:\n{summary}");
        let label = run["label"].as_str().unwrap();
        assert!(cpu_rows.iter().any(|l| l.starts_with(&format!("| {label} |"))), "{label}: no CPU row:\n{summary}");
        let roles: Vec<&str> = run["cpu"].as_array().expect("cpu").iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert!(roles.contains(&"client") && roles.contains(&"encoder"), "{label}: CPU of {roles:?}");
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
