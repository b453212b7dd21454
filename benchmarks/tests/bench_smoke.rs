//! The latency benchmark's driver end to end on the real broker: the `bench` binary runs
//! the smoke scenario (every mode, a few hundred queries each) with the workspace's `parm`
//! binary, and what it writes is checked: one run per mode, every measured query answered
//! exactly once, ordered percentiles, the summary table. Latencies themselves are not
//! asserted (the machine is shared); `benchmarks/README.md` reports them.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

/// `parm` next to this test's own build output (built by `cargo test --workspace`).
fn parm_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
    let parm = dir.join("parm");
    assert!(parm.is_file(), "{} is missing: build it first (cargo build -p parm, or run cargo test --workspace)", parm.display());
    parm
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

    let scenario: toml::Value = toml::from_str(&std::fs::read_to_string(root.join("benchmarks/scenarios/smoke.toml")).unwrap()).unwrap();
    let (queries, warmup) = (scenario["queries"].as_integer().unwrap() as u64, scenario["warmup"].as_integer().unwrap() as u64);
    let out = scratch.join("results").join("smoke");
    let all: Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let runs = all["runs"].as_array().expect("runs");
    let modes: BTreeSet<&str> = runs.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, BTreeSet::from(["equal", "hedge", "none", "parm", "parm-eager"]));
    for run in runs {
        let label = run["label"].as_str().unwrap();
        let r = &run["report"];
        let measured = run["measured"].as_u64().unwrap();
        assert_eq!(measured, queries - warmup, "{label}: the warm-up queries are not measured");
        assert_eq!(r["missing"], 0, "{label}: a query got no result");
        assert_eq!(r["duplicates"], 0, "{label}: a query got two results");
        let answered = ["model", "reconstructed", "unavailable"].iter().map(|k| r[*k].as_u64().unwrap()).sum::<u64>();
        assert_eq!(answered, measured, "{label}: every measured query has one answer");
        let p: Vec<f64> = ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"].iter().map(|k| r[*k].as_f64().unwrap()).collect();
        assert!(p[0] > 0.0 && p.windows(2).all(|w| w[0] <= w[1]), "{label}: percentiles out of order: {p:?}");
        if run["mode"] == "none" || run["mode"] == "equal" {
            assert_eq!(r["reconstructed"], 0, "{label}: no parity, so nothing is reconstructed");
        }
        assert!(out.join(format!("{label}.json")).is_file(), "{label}: its own JSON file");
        assert!(scratch.join("logs").join("smoke").join(label).join("queries.csv").is_file(), "{label}: its per-query log");
    }
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert_eq!(summary.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| mode")).count(), runs.len(), "{summary}");
    let _ = std::fs::remove_dir_all(&scratch);
}
