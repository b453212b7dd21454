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

mod backlog;
mod cpu;
mod deployment;
mod memory;
mod phases;

pub use backlog::BacklogTrend;
pub use cpu::{local_broker_pid, ProcessCpu};
pub use deployment::topology;
pub use memory::ProcessMemory;
pub use phases::{OverloadReport, PhaseReport, RECOVERED_FACTOR};

use crate::scenario::{Contention, KafkaVariant, Mode, RunSpec, Scenario, Service};
use anyhow::Context;
use backlog::Backlog;
use cpu::CpuMeter;
use memory::MemorySampler;
use deployment::{deployment_spec, Plan};
use hdrhistogram::Histogram;
use parm::client::{run_schedule, Client, Hedge, HedgeDelay, Load};
use parm::launch::Deployment;
use parm::mnist::Mnist;
use parm::report::Report;
use parm_common::kafka::{create_topics, KafkaArgs, TopicLayout};
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
    /// The local broker's process, whose CPU is measured with the services'.
    pub broker_pid: Option<u32>,
}

/// The p99 (ms) at or under which a rate counts as sustained.
pub const SUSTAINED_P99_MS: f64 = 100.0;
/// The most the backlog may grow over a run, as arrival time (ms), for its rate to count
/// as sustained: a pipeline that keeps up holds its backlog steady ([`BacklogTrend`]).
pub const SUSTAINED_GROWTH_MS: f64 = 50.0;

/// The outcome of one run, as written to its JSON file.
#[derive(Debug, Serialize)]
pub struct RunResult {
    pub scenario: String,
    pub label: String,
    pub mode: Mode,
    pub k: usize,
    pub rate: f64,
    pub contention: Contention,
    pub kafka: KafkaVariant,
    pub model_workers: usize,
    pub parity_workers: usize,
    pub parity_model: Option<String>,
    pub service: Service,
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
    /// CPU per process (broker, services, client) while the load ran.
    pub cpu: Vec<ProcessCpu>,
    /// The client's backlog over the run, leaving out its first fifth (warm-up).
    pub backlog: Option<BacklogTrend>,
    /// (s, queries sent and not answered) while sending.
    pub backlog_samples: Vec<(f64, f64)>,
    /// Resident memory per process over the run (sampled once a second).
    pub memory: Vec<ProcessMemory>,
    /// A run with rate steps (`steps`): each step, and the recovery after the overload.
    pub overload: Option<OverloadReport>,
    /// Every query answered by the pipeline's model or parity path (no UNAVAILABLE, none
    /// missing), p99 at most [`SUSTAINED_P99_MS`] and the backlog steady
    /// ([`SUSTAINED_GROWTH_MS`]).
    pub sustained: bool,
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
    let plan = Plan::new(scn, spec)?;
    let workload = Workload::new(scn.queries_at(spec.rate), env.data);
    let (run, cpu, backlog, memory) = run_deployed(scn, spec, env, &plan, &workload.queries, progress).await?;

    write_query_log(&env.log_dir.join(spec.label()).join("queries.csv"), &run)?;
    let measured = measured_schedule(&run, scn.warmup);
    let overload = phases::overload_report(&run, &measured, &scn.rate_steps(), scn.service.hard_deadline_ms as f64);
    let (mut report, hist) = Report::with_histogram(&measured, &run.received, &workload.labels);
    report.hedges = run.hedges;
    let trend = backlog.trend(spec.rate, 0.2);
    let sustained = report.missing == 0
        && report.unavailable == 0
        && report.p99_ms <= SUSTAINED_P99_MS
        && trend.is_some_and(|t| t.growth_ms <= SUSTAINED_GROWTH_MS);
    Ok(RunResult {
        scenario: scn.name.clone(),
        label: spec.label(),
        mode: spec.mode,
        k: spec.k,
        rate: spec.rate,
        contention: spec.contention.clone(),
        kafka: spec.kafka.clone(),
        model_workers: plan.model_workers,
        parity_workers: plan.parity_workers,
        parity_model: spec.mode.has_parity().then_some(plan.parity_model),
        service: scn.service.clone(),
        measured: measured.len(),
        degraded_accuracy: report.reconstructed_accuracy,
        report,
        max_send_lag_ms: run.max_send_lag_us as f64 / 1000.0,
        load_before,
        load_after: load_average(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        wall_s: started.elapsed().as_secs_f64(),
        cdf: cdf_points(&hist),
        cpu,
        backlog: trend,
        backlog_samples: backlog.samples().to_vec(),
        memory,
        overload,
        sustained,
    })
}

/// The queries of a run, `q0`, `q1`, ..., with MNIST test images (cycled) and their labels.
struct Workload {
    queries: Vec<(String, parm_core::Tensor)>,
    labels: HashMap<String, u8>,
}

impl Workload {
    /// `count` queries drawn in order from `data`, starting over at its end.
    fn new(count: usize, data: &Mnist) -> Self {
        let ids: Vec<String> = (0..count).map(|i| format!("q{i}")).collect();
        let queries = ids.iter().enumerate().map(|(i, id)| (id.clone(), data.images[i % data.len()].clone())).collect();
        let labels = ids.iter().enumerate().map(|(i, id)| (id.clone(), data.labels[i % data.len()])).collect();
        Self { queries, labels }
    }
}

/// Deploys the plan on fresh topics, waits until it is ready, sends the load under the
/// run's contention, and takes everything down again; returns what the client saw, the
/// CPU each process used meanwhile, the client's backlog and the processes' memory.
async fn run_deployed(
    scn: &Scenario,
    spec: &RunSpec,
    env: &Env<'_>,
    plan: &Plan,
    queries: &[(String, parm_core::Tensor)],
    mut progress: impl FnMut(usize, usize, usize),
) -> anyhow::Result<(parm::client::Run, Vec<ProcessCpu>, Backlog, Vec<ProcessMemory>)> {
    let topics = create_run_topics(scn, spec, env, plan).await?;
    let d = deployment_spec(scn, spec, env, plan, &topics.kafka.topic_prefix);
    let mut deployment = Deployment::start(env.parm_exe, d)?;
    tokio::task::block_in_place(|| deployment.wait_until_ready(Duration::from_secs(120)))?;
    let hogs = CpuHogs::start(spec.contention.cpu_hogs, spec.contention.cpu_hog_nice)?;
    let client = Client::connect(&topics.kafka)?;
    let mut processes = deployment.pids();
    processes.extend(env.broker_pid.map(|pid| ("broker".to_string(), pid)));
    processes.push(("client".into(), std::process::id()));
    let meter = CpuMeter::start(processes.clone());
    let mut memory = MemorySampler::new(processes, Duration::from_secs(1));
    let mut backlog = Backlog::new(Duration::from_millis(500));
    let run = run_schedule(&client, queries, &load(scn, spec), |sent, answered, total| {
        backlog.note(sent, answered, total);
        memory.sample();
        progress(sent, answered, total)
    })
    .await?;
    let cpu = meter.stop(queries.len());
    deployment.check_alive()?;
    drop(hogs);
    tokio::task::block_in_place(|| deployment.stop());
    drop(topics);
    Ok((run, cpu, backlog, memory.report()))
}

/// Creates the run's topics under a fresh prefix, a model (parity) partition per model
/// (parity) worker; they are deleted when the returned guard is dropped.
async fn create_run_topics(scn: &Scenario, spec: &RunSpec, env: &Env<'_>, plan: &Plan) -> anyhow::Result<TopicsGuard> {
    let prefix = format!("bench-{}-{}", scn.name, parm_common::now_ms());
    let kafka = KafkaArgs { brokers: env.brokers.to_string(), topic_prefix: prefix, kafka_set: kafka_settings(&spec.kafka)?, instance_id: None, consumer_defaults: vec![] };
    let layout = TopicLayout {
        query_partitions: 1,
        model_partitions: plan.model_workers as i32,
        parity_partitions: plan.parity_workers.max(1) as i32,
        decoder_partitions: 1,
    };
    create_topics(&kafka, &layout).await?;
    Ok(TopicsGuard { kafka })
}

/// The variant's `KEY=VALUE` librdkafka settings as pairs.
fn kafka_settings(kafka: &KafkaVariant) -> anyhow::Result<Vec<(String, String)>> {
    kafka
        .set
        .iter()
        .map(|kv| kv.split_once('=').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).with_context(|| format!("kafka setting '{kv}' is not KEY=VALUE")))
        .collect()
}

/// The load generator's settings: Poisson arrivals at the run's rate seeded by the
/// scenario, results awaited 3 s past the hard deadline, and hedged copies in `hedge` mode.
fn load(scn: &Scenario, spec: &RunSpec) -> Load {
    let svc = &scn.service;
    let mut load = Load::poisson(spec.rate);
    load.steps = scn.rate_steps();
    load.seed = scn.seed;
    load.result_timeout = Duration::from_millis(svc.hard_deadline_ms + 3000);
    if spec.mode == Mode::Hedge {
        let after = match svc.hedge_after_ms {
            Some(ms) => HedgeDelay::Fixed(Duration::from_secs_f64(ms / 1000.0)),
            None => HedgeDelay::Quantile { q: svc.hedge_quantile, initial: Duration::from_secs_f64((svc.deadline_ms as f64).max(1.0) / 1000.0) },
        };
        load.hedge = Some(Hedge { after, budget: 1.0 / spec.k as f64 });
    }
    load
}

/// The scheduled send times of the measured queries: those past the warm-up (`q{i}`,
/// i >= `warmup`).
fn measured_schedule(run: &parm::client::Run, warmup: usize) -> HashMap<String, u64> {
    run.scheduled_us.iter().filter(|(id, _)| id[1..].parse::<usize>().is_ok_and(|i| i >= warmup)).map(|(k, v)| (k.clone(), *v)).collect()
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

/// Runs `f` to completion on the current Tokio runtime (from inside `block_in_place`).
fn futures_executor<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(f)
}
