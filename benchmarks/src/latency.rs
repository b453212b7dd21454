//! One run of the latency benchmark: the topology of its mode as separate `parm`
//! processes on fresh topics, contention, an open-loop Poisson load, and what came back.
//!
//! Every mode has the same total of worker processes for a given N and k:
//! - `none`: N model workers (N/k fewer processes: the baseline without redundancy);
//! - `equal`, `hedge`: N + N/k model workers, the encoder sends no parity;
//! - `parm`, `parm-eager`: N model workers + N/k parity workers.
//!
//! Service time is real inference plus a synthetic part slept by the worker after it
//! (`--delay-fixed-ms`, `--delay-exp-ms`), and the slowdown episodes are the worker's
//! seeded delay model (`--slow-episode-*`); see `services/worker/src/delay.rs`.

use crate::scenario::{Mode, RunSpec, Scenario};
use anyhow::Context;
use hdrhistogram::Histogram;
use parm::client::{run_schedule, Client, Hedge, HedgeDelay, Load};
use parm::launch::{Deployment, DeploymentSpec};
use parm::mnist::Mnist;
use parm::report::Report;
use parm_common::kafka::{create_topics, KafkaArgs, TopicLayout};
use parm_common::model::resolve;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where and with what a run happens.
pub struct Env<'a> {
    pub parm_exe: &'a Path,
    pub brokers: &'a str,
    pub log_dir: PathBuf,
    pub data: &'a Mnist,
}

/// The outcome of one run, as written to its JSON file.
#[derive(Debug, Serialize)]
pub struct RunResult {
    pub scenario: String,
    pub label: String,
    pub mode: Mode,
    pub k: usize,
    pub rate: f64,
    pub contention: crate::scenario::Contention,
    pub kafka: crate::scenario::KafkaVariant,
    pub model_workers: usize,
    pub parity_workers: usize,
    pub parity_model: Option<String>,
    pub service: crate::scenario::Service,
    /// Queries counted (after the warm-up).
    pub measured: usize,
    pub report: Report,
    /// Reconstructed answers' top-1 accuracy against the MNIST labels.
    pub degraded_accuracy: Option<f64>,
    /// How far the load generator's sends lagged their schedule at worst (ms).
    pub max_send_lag_ms: f64,
    /// The machine's 1-minute load average before and after the run, and its cores: a
    /// loaded machine shows here.
    pub load_before: f64,
    pub load_after: f64,
    pub cores: usize,
    pub wall_s: f64,
    /// (latency ms, quantile) points of the latency distribution.
    pub cdf: Vec<(f64, f64)>,
}

/// The worker counts of a mode.
pub fn topology(mode: Mode, n: usize, k: usize) -> (usize, usize) {
    let extra = (n / k).max(1);
    match mode {
        Mode::None => (n, 0),
        Mode::Equal | Mode::Hedge => (n + extra, 0),
        Mode::Parm | Mode::ParmEager => (n, extra),
    }
}

/// Busy-loop processes that compete for the CPU for as long as this lives.
pub struct CpuHogs(Vec<Child>);

impl CpuHogs {
    pub fn start(count: usize, nice: i32) -> anyhow::Result<Self> {
        let mut hogs = Self(Vec::new());
        for _ in 0..count {
            // `nice` execs the shell, so the child's pid is the busy loop's.
            let child = Command::new("nice")
                .args(["-n", &nice.to_string(), "sh", "-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting a CPU hog (nice sh -c 'while :; do :; done')")?;
            hogs.0.push(child);
        }
        Ok(hogs)
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The 1-minute load average (0 where /proc is missing).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// Runs one configuration end to end. `progress` gets (sent, answered, total).
pub async fn run_one(
    scn: &Scenario,
    spec: &RunSpec,
    env: &Env<'_>,
    progress: impl FnMut(usize, usize, usize),
) -> anyhow::Result<RunResult> {
    let started = Instant::now();
    let load_before = load_average();
    let n = scn.model_workers;
    let (model_workers, parity_workers) = topology(spec.mode, n, spec.k);
    let parity_model = scn.parity_model(spec.k);
    // Without parity, groups only keep the decoder's bookkeeping: any parity manifest
    // gives the encoder a k; the worker counts above carry the k of the comparison.
    let encoder_plan = if spec.mode.has_parity() || resolve(&parity_model).exists() { parity_model.clone() } else { scn.parity_model(2) };
    if spec.mode.has_parity() && !resolve(&parity_model).exists() {
        anyhow::bail!("no parity model {parity_model} in models/: k = {} needs a trained parity model (training/README.md)", spec.k);
    }

    let prefix = format!("bench-{}-{}", scn.name, parm_common::now_ms());
    let kafka_set: Vec<(String, String)> = spec
        .kafka
        .set
        .iter()
        .map(|kv| kv.split_once('=').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).with_context(|| format!("kafka setting '{kv}' is not KEY=VALUE")))
        .collect::<anyhow::Result<_>>()?;
    let kafka = KafkaArgs { brokers: env.brokers.to_string(), topic_prefix: prefix.clone(), kafka_set: kafka_set.clone(), instance_id: None };
    let layout = TopicLayout {
        query_partitions: 1,
        model_partitions: model_workers as i32,
        parity_partitions: parity_workers.max(1) as i32,
        decoder_partitions: 1,
    };
    create_topics(&kafka, &layout).await?;
    let topics = TopicsGuard { kafka: kafka.clone() };

    let svc = &scn.service;
    let kafka_flags: Vec<String> = spec.kafka.set.iter().flat_map(|kv| ["--kafka-set".to_string(), kv.clone()]).collect();
    let mut d = DeploymentSpec::new(env.brokers, &prefix, model_workers, parity_workers);
    d.log_dir = env.log_dir.join(spec.label());
    if let Some(delivery) = &spec.kafka.delivery {
        d.service_env.push(("PARM_DELIVERY".into(), delivery.clone()));
    }
    if let Some(ms) = spec.kafka.commit_interval_ms {
        d.service_env.push(("PARM_COMMIT_INTERVAL_MS".into(), ms.to_string()));
    }
    d.encoder_args = flags([
        ("--parity-model", encoder_plan),
        ("--deadline-ms", svc.deadline_ms.to_string()),
        ("--hard-deadline-ms", svc.hard_deadline_ms.to_string()),
        ("--linger-ms", svc.linger_ms.to_string()),
    ]);
    if !spec.mode.has_parity() {
        d.encoder_args.push("--no-parity".into());
    }
    let worker = |model: &str| -> Vec<String> {
        flags([
            ("--model", model.to_string()),
            ("--max-batch", svc.max_batch.to_string()),
            ("--max-wait-ms", svc.max_wait_ms.to_string()),
            ("--delay-fixed-ms", svc.synthetic_ms.to_string()),
            ("--delay-exp-ms", svc.synthetic_exp_ms.to_string()),
        ])
    };
    d.model_worker_args = worker(&svc.model);
    d.parity_worker_args = worker(&parity_model);
    if svc.skip_answered {
        d.model_worker_args.push("--skip-answered".into());
        d.parity_worker_args.push("--skip-answered".into());
    }
    if spec.mode.has_parity() && svc.route_by_health {
        d.encoder_args.push("--route-by-health".into());
        for args in [&mut d.model_worker_args, &mut d.parity_worker_args] {
            args.extend(["--report-health".to_string(), "--slow-after-ms".to_string(), svc.slow_after_ms().to_string()]);
        }
    }
    let c = &spec.contention;
    // Each worker its own episode sequence; the same worker number gets the same one in
    // every mode, so the modes meet the same slowdowns.
    let episodes = |seed: u64| -> Vec<String> {
        if c.episode_rate <= 0.0 {
            return vec![];
        }
        flags([
            ("--slow-episode-rate", c.episode_rate.to_string()),
            ("--slow-episode-ms", c.episode_ms.to_string()),
            ("--slow-extra-ms", c.episode_extra_ms.to_string()),
            ("--delay-seed", seed.to_string()),
        ])
    };
    d.per_model_worker_args = (0..model_workers).map(|i| (i, episodes(scn.seed * 1000 + i as u64))).collect();
    d.per_parity_worker_args = (0..parity_workers).map(|i| (i, episodes(scn.seed * 1000 + 500 + i as u64))).collect();
    d.decoder_args = vec!["--policy".into(), if spec.mode == Mode::ParmEager { "eager".into() } else { "deadline".into() }];
    for args in [&mut d.encoder_args, &mut d.model_worker_args, &mut d.parity_worker_args, &mut d.decoder_args] {
        args.extend(kafka_flags.iter().cloned());
    }

    let mut deployment = Deployment::start(env.parm_exe, d)?;
    tokio::task::block_in_place(|| deployment.wait_until_ready(Duration::from_secs(120)))?;
    let _hogs = CpuHogs::start(c.cpu_hogs, c.cpu_hog_nice)?;

    let ids: Vec<String> = (0..scn.queries).map(|i| format!("q{i}")).collect();
    let queries: Vec<(String, parm_core::Tensor)> =
        ids.iter().enumerate().map(|(i, id)| (id.clone(), env.data.images[i % env.data.len()].clone())).collect();
    let labels: HashMap<String, u8> = ids.iter().enumerate().map(|(i, id)| (id.clone(), env.data.labels[i % env.data.len()])).collect();
    let client = Client::connect(&kafka)?;
    let mut load = Load::poisson(spec.rate);
    load.seed = scn.seed;
    load.result_timeout = Duration::from_millis(svc.hard_deadline_ms + 3000);
    if spec.mode == Mode::Hedge {
        let after = match svc.hedge_after_ms {
            Some(ms) => HedgeDelay::Fixed(Duration::from_secs_f64(ms / 1000.0)),
            None => HedgeDelay::Quantile { q: svc.hedge_quantile, initial: Duration::from_secs_f64((svc.deadline_ms as f64).max(1.0) / 1000.0) },
        };
        load.hedge = Some(Hedge { after, budget: 1.0 / spec.k as f64 });
    }
    let run = run_schedule(&client, &queries, &load, progress).await?;
    deployment.check_alive()?;
    drop(_hogs);
    tokio::task::block_in_place(|| deployment.stop());
    drop(topics);

    write_query_log(&env.log_dir.join(spec.label()).join("queries.csv"), &run)?;
    let measured: HashMap<String, u64> =
        run.scheduled_us.iter().filter(|(id, _)| id[1..].parse::<usize>().is_ok_and(|i| i >= scn.warmup)).map(|(k, v)| (k.clone(), *v)).collect();
    let (mut report, hist) = Report::with_histogram(&measured, &run.received, &labels);
    report.hedges = run.hedges;
    Ok(RunResult {
        scenario: scn.name.clone(),
        label: spec.label(),
        mode: spec.mode,
        k: spec.k,
        rate: spec.rate,
        contention: spec.contention.clone(),
        kafka: spec.kafka.clone(),
        model_workers,
        parity_workers,
        parity_model: spec.mode.has_parity().then_some(parity_model),
        service: svc.clone(),
        measured: measured.len(),
        degraded_accuracy: report.reconstructed_accuracy,
        report,
        max_send_lag_ms: run.max_send_lag_us as f64 / 1000.0,
        load_before,
        load_after: load_average(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        wall_s: started.elapsed().as_secs_f64(),
        cdf: cdf_points(&hist),
    })
}

/// Command-line flags from (flag, value) pairs.
fn flags<const N: usize>(pairs: [(&str, String); N]) -> Vec<String> {
    pairs.into_iter().flat_map(|(flag, value)| [flag.to_string(), value]).collect()
}

/// Every result the client received, one row each, beside the services' logs: for looking
/// into a tail (which queries were slow, how they were answered, which group they were in).
fn write_query_log(path: &std::path::Path, run: &parm::client::Run) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let mut csv = String::from("query_id,group_id,source,latency_ms,decided_after_deadline_ms,hedge\n");
    for r in &run.received {
        let Some(scheduled) = run.scheduled_us.get(&r.result.query_id) else { continue };
        let latency_ms = r.arrived_at_us.saturating_sub(*scheduled) as f64 / 1000.0;
        let q = &r.result;
        let _ = writeln!(csv, "{},{},{:?},{latency_ms:.3},{},{}", q.query_id, q.group_id, q.source, q.emitted_at_ms - q.deadline_at_ms, r.hedge);
    }
    std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))
}

/// (ms, quantile) points, denser towards the tail.
fn cdf_points(hist: &Histogram<u64>) -> Vec<(f64, f64)> {
    if hist.is_empty() {
        return vec![];
    }
    hist.iter_quantiles(4).map(|v| (v.value_iterated_to() as f64 / 1000.0, v.quantile_iterated_to())).collect()
}

/// Deletes a run's topics when dropped, so repeated runs do not pile up partitions.
struct TopicsGuard {
    kafka: KafkaArgs,
}

impl Drop for TopicsGuard {
    fn drop(&mut self) {
        use rdkafka::admin::AdminOptions;
        let t = self.kafka.topics();
        let names = [t.queries, t.model_queries, t.parity_queries, t.groups, t.predictions, t.parity_predictions, t.results, t.dead_letters];
        let Ok(admin) = self.kafka.admin() else { return };
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let fut = admin.delete_topics(&refs, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))));
        let _ = tokio::task::block_in_place(|| futures_executor(fut));
    }
}

fn futures_executor<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(f)
}
