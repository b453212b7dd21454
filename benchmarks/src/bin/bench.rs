//! `bench`: the tail-latency benchmark of parm against its baselines.
//!
//! Runs every configuration of a scenario file (`benchmarks/scenarios/*.toml`) end to end
//! on the real broker: fresh topics, every service its own `parm` process, an open-loop
//! Poisson load with latency measured from each query's scheduled send time, and writes
//! one JSON per run, `results.json` and `summary.md` under `--out/SCENARIO/`. Everything
//! it starts (services, CPU hogs, a broker it had to start) is stopped at the end, on
//! failure and on Ctrl-C or SIGTERM.
//!
//! ```sh
//! cargo build --release -p parm -p parm-benchmarks
//! target/release/bench benchmarks/scenarios/main.toml
//! ```

use anyhow::{bail, Context};
use clap::Parser;
use parm_benchmarks::latency::{self, Env, RunResult};
use parm_benchmarks::scenario::{Mode, Scenario};
use parm_benchmarks::throughput_report;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Flags of `bench`: the scenarios to run and where the results go.
#[derive(Parser, Debug)]
#[command(about = "Tail-latency benchmark: parm against none, equal resources and hedged requests")]
struct Args {
    /// Scenario files.
    #[arg(required = true)]
    scenarios: Vec<PathBuf>,
    /// Kafka bootstrap servers; default: the local broker (scripts/kafka-local), started if needed.
    #[arg(long, env = "PARM_BROKERS")]
    brokers: Option<String>,
    /// Where results go (a folder per scenario).
    #[arg(long, default_value = "benchmarks/results/latency")]
    out: PathBuf,
    /// The parm binary (default: `parm` next to this binary).
    #[arg(long, env = "PARM_BIN")]
    parm_bin: Option<PathBuf>,
    /// Override the scenario's queries per run, and its duration_s (e.g. a short smoke run).
    #[arg(long)]
    queries: Option<usize>,
    /// Override the scenario's rates.
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<f64>>,
    /// Only these modes (comma-separated: none,equal,hedge,parm,parm-eager,backup,floor).
    #[arg(long, value_delimiter = ',')]
    modes: Option<Vec<String>>,
    /// Leave a broker this run started running at the end.
    #[arg(long)]
    keep_broker: bool,
    /// Where the services' logs go.
    #[arg(long, default_value = "/tmp/parm-bench-logs")]
    log_dir: PathBuf,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut started_broker = false;
    let brokers = match &args.brokers {
        Some(b) => b.clone(),
        None => {
            let script = parm::broker::kafka_local_script();
            let running = std::process::Command::new("bash").arg(&script).arg("status").output().is_ok_and(|o| o.status.success());
            if !running {
                eprintln!("starting a local Kafka broker (scripts/kafka-local start)...");
                started_broker = true;
            }
            parm::broker::start_local()?
        }
    };
    let outcome = tokio::select! {
        r = run_all(&args, &brokers) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted: stopping everything this run started")),
        _ = sigterm() => Err(anyhow::anyhow!("terminated: stopping everything this run started")),
    };
    // Dropping run_all's future above stopped its deployment and hogs.
    if started_broker && !args.keep_broker {
        eprintln!("stopping the broker this run started");
        let _ = std::process::Command::new("bash").arg(parm::broker::kafka_local_script()).arg("stop").status();
    }
    outcome
}

async fn sigterm() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

fn parm_exe(args: &Args) -> anyhow::Result<PathBuf> {
    let exe = match &args.parm_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("parm"),
    };
    if !exe.exists() {
        bail!("no parm binary at {}: build it with `cargo build --release -p parm` (or pass --parm-bin)", exe.display());
    }
    Ok(exe)
}

async fn run_all(args: &Args, brokers: &str) -> anyhow::Result<()> {
    let exe = parm_exe(args)?;
    let data = parm::mnist::Mnist::load_test_subset()?;
    for path in &args.scenarios {
        let mut scn = Scenario::load(path)?;
        if let Some(q) = args.queries {
            scn.queries = q;
            scn.duration_s = None;
            scn.warmup = scn.warmup.min(q / 10);
        }
        if let Some(r) = &args.rates {
            scn.rates = r.clone();
        }
        if let Some(m) = &args.modes {
            let wanted: Vec<Mode> = m.iter().map(|s| toml::Value::String(s.clone()).try_into()).collect::<Result<_, _>>().context("--modes")?;
            scn.modes.retain(|x| wanted.contains(x));
        }
        let broker_pid = if args.brokers.is_none() { latency::local_broker_pid() } else { None };
        let env = Env { parm_exe: &exe, brokers, log_dir: args.log_dir.join(&scn.name), data: &data, broker_pid };
        run_scenario(&scn, &env, &args.out.join(&scn.name)).await?;
    }
    Ok(())
}

async fn run_scenario(scn: &Scenario, env: &Env<'_>, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let runs = scn.runs();
    let size = match scn.duration_s {
        Some(d) => format!("{d} s each"),
        None => format!("{} queries", scn.queries),
    };
    eprintln!("scenario {}: {} runs of {size}; results in {}, logs in {}", scn.name, runs.len(), out.display(), env.log_dir.display());
    let mut results: Vec<RunResult> = Vec::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    for (i, spec) in runs.iter().enumerate() {
        let tag = format!("[{}/{}] {}", i + 1, runs.len(), spec.label());
        if spec.mode.has_parity() && !parm_common::model::resolve(&scn.parity_model_for(spec.mode, spec.k)).exists() {
            let why = format!("no parity model {} in models/ (k = {} needs a trained one)", scn.parity_model_for(spec.mode, spec.k), spec.k);
            eprintln!("{tag}: skipped: {why}");
            skipped.push((spec.label(), why));
            continue;
        }
        let t0 = Instant::now();
        let mut last = Instant::now() - std::time::Duration::from_secs(1);
        let r = latency::run_one(scn, spec, env, |sent, answered, total| {
            if last.elapsed().as_millis() >= 250 || answered == total {
                last = Instant::now();
                eprint!("\r{tag}: sent {sent}/{total}, answered {answered}, {:.0} s   ", t0.elapsed().as_secs_f64());
                let _ = std::io::stderr().flush();
            }
        })
        .await
        .with_context(|| format!("run {}", spec.label()))?;
        let rep = &r.report;
        eprintln!(
            "\r{tag}: p50 {:.1} p99 {:.1} p99.9 {:.1} ms; model {} recon {} unavail {} missing {}; hedges {}; backlog growth {}; CPU {:.0} us/query; load {:.1}   ",
            rep.p50_ms, rep.p99_ms, rep.p999_ms, rep.model, rep.reconstructed, rep.unavailable, rep.missing, rep.hedges,
            r.backlog.map_or("-".into(), |b| format!("{:.0} ms", b.growth_ms)),
            r.cpu.iter().map(|c| c.per_query_us).sum::<f64>(),
            r.load_after
        );
        std::fs::write(out.join(format!("{}.json", r.label)), serde_json::to_string_pretty(&r)?)?;
        results.push(r);
        // Written after every run, so an interrupted sweep keeps what it measured.
        write_summary(scn, &results, &skipped, out)?;
    }
    eprintln!("wrote {}/results.json and summary.md", out.display());
    Ok(())
}

fn write_summary(scn: &Scenario, results: &[RunResult], skipped: &[(String, String)], out: &Path) -> anyhow::Result<()> {
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&serde_json::json!({
        "scenario": scn.name,
        "description": scn.description,
        "runs": results,
        "skipped": skipped,
        "sustained": throughput_report::sustained(results),
    }))?)?;
    let mut md = format!("# Latency: scenario `{}`\n\n{}\n\n", scn.name, scn.description.trim());
    let svc = &scn.service;
    md += &format!(
        "N = {} model workers, {} per run ({} warm-up queries not counted), batch {}; service time = real inference ({}) + synthetic {} ms fixed + Exp({} ms) per batch (slept: the synthetic part). Deadline {} ms, hard deadline {} ms, linger {} ms. Hedge: {} after send, at most 1/k extra. Workers skip work already answered: {}. parm routes by health: {}.\n\n",
        scn.model_workers, scn.duration_s.map_or(format!("{} queries", scn.queries), |d| format!("{d} s of load")), scn.warmup, svc.max_batch, svc.model, svc.synthetic_ms, svc.synthetic_exp_ms, svc.deadline_ms, svc.hard_deadline_ms, svc.linger_ms,
        svc.hedge_after_ms.map_or(format!("observed p{}", svc.hedge_quantile * 100.0), |ms| format!("{ms} ms")),
        if svc.skip_answered { "yes" } else { "no" },
        if svc.route_by_health { format!("yes (slow after {} ms)", svc.slow_after_ms()) } else { "no".into() },
    );
    md += "| mode | k | rate | contention | kafka | workers (model+parity) | p50 ms | p90 | p99 | p99.9 | mean | p99.9 − p50 | model | recon | unavail | missing | hedges (won) | degraded acc | load avg |\n";
    md += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for r in results {
        let p = &r.report;
        md += &format!(
            "| {} | {} | {} | {} | {} | {}+{} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} ({}) | {} | {:.1} |\n",
            r.mode.as_str(), r.k, r.rate, r.contention.name, r.kafka.name, r.model_workers, r.parity_workers,
            p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.mean_ms, p.p999_ms - p.p50_ms,
            p.model, p.reconstructed, p.unavailable, p.missing, p.hedges, p.hedge_wins,
            r.degraded_accuracy.map_or("-".into(), |a| format!("{:.1}%", a * 100.0)),
            r.load_after,
        );
    }
    for (label, why) in skipped {
        md += &format!("\nskipped {label}: {why}\n");
    }
    if scn.rates.len() > 1 {
        md += &format!("\n{}", throughput_report::sustained_markdown(&throughput_report::sustained(results)));
    }
    md += &format!("\n{}", throughput_report::cpu_markdown(results));
    md += &format!("\n{}", throughput_report::overload_markdown(results));
    std::fs::write(out.join("summary.md"), md)?;
    Ok(())
}
