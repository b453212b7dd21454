//! `faults`: the fault benchmark of parm, and its memory soak.
//!
//! Runs a scenario file (`benchmarks/scenarios/faults*.toml`, `soak.toml`): a Kafka cluster
//! of its own (1 or 3 nodes, fresh), every service its own `parm` process, a steady stream
//! of valid queries salted with hostile records, and the scenario's faults one after
//! another (SIGKILL and restart, SIGSTOP/SIGCONT, broker stops, the loss of a partition
//! leader). Writes `summary.md` (a row per fault: valid queries sent, answered, missing,
//! duplicates, UNAVAILABLE, p99 in the 10 s after recovery; dead letters; each service's
//! RSS), `results.json` and CSVs for the plot into `--out/SCENARIO/`. Exits with 1 when a
//! valid query got no result, a hostile record no dead letter, a service died or memory
//! grew.
//!
//! ```sh
//! benchmarks/figure faults        # builds, runs, plots
//! target/release/faults benchmarks/scenarios/faults.toml
//! ```

use anyhow::{bail, Context};
use clap::Parser;
use parm_benchmarks::fault_report::{self, Verdict};
use parm_benchmarks::fault_run::{self, Env};
use parm_benchmarks::fault_scenario::FaultScenario;
use std::path::PathBuf;
use std::time::Instant;

/// Flags of `faults`: the fault scenario to run and where the results go.
#[derive(Parser, Debug)]
#[command(about = "Fault benchmark: a fault schedule against a live, salted stream; every valid query must get its result")]
struct Args {
    /// The scenario file.
    scenario: PathBuf,
    /// Where results go (a folder per scenario).
    #[arg(long, default_value = "benchmarks/results/faults")]
    out: PathBuf,
    /// The parm binary (default: `parm` next to this binary).
    #[arg(long, env = "PARM_BIN")]
    parm_bin: Option<PathBuf>,
    /// Override the scenario's rate (valid queries per second).
    #[arg(long)]
    rate: Option<f64>,
    /// Override the soak's duration (s after the warm-up; scenarios without faults).
    #[arg(long)]
    duration_s: Option<f64>,
    /// Where the services' logs go.
    #[arg(long, default_value = "/tmp/parm-fault-logs")]
    log_dir: PathBuf,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut scn = FaultScenario::load(&args.scenario)?;
    if let Some(r) = args.rate {
        scn.rate = r;
    }
    if let Some(d) = args.duration_s {
        scn.duration_s = d;
    }
    let exe = match &args.parm_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("parm"),
    };
    if !exe.exists() {
        bail!("no parm binary at {}: build it with `cargo build --release -p parm` (or pass --parm-bin)", exe.display());
    }
    let data = parm::mnist::Mnist::load_test_subset()?;
    let logs = args.log_dir.join(&scn.name);
    let _ = std::fs::remove_dir_all(&logs);
    let env = Env { parm_exe: &exe, log_dir: logs.clone(), data: &data };
    let t0 = Instant::now();
    eprintln!("scenario {}: logs in {}", scn.name, logs.display());
    let run = fault_run::run(&scn, &env, move |line| eprintln!("[{:>5.0} s] {line}", t0.elapsed().as_secs_f64())).await.context("the fault run")?;
    let verdict = Verdict::new(&run, scn.faults.is_empty(), scn.delivery == "exactly-once");
    let out = args.out.join(&scn.name);
    fault_report::write(&out, &scn, &run, &verdict)?;
    println!("{}", verdict.markdown(&scn));
    eprintln!("wrote {}/summary.md, results.json and CSVs", out.display());
    if !verdict.passed() {
        std::process::exit(1);
    }
    Ok(())
}
