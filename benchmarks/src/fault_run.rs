//! One run of the fault benchmark: a fresh Kafka cluster of its own, the deployment as
//! separate `parm` processes, a steady stream of valid queries salted with hostile records,
//! the scenario's faults applied one after another while the stream runs, and the services'
//! RSS sampled throughout. What came back is judged in [`crate::fault_report`].

use crate::fault_scenario::{Action, Fault, FaultScenario};
use anyhow::Context;
use parm::broker::Cluster;
use parm::client::{now_us, Client, Received};
use parm::hostile::{self, Hostile};
use parm::launch::{Deployment, DeploymentSpec, Signal};
use parm::mnist::Mnist;
use parm_common::kafka::{create_topics, KafkaArgs, TopicLayout};
use parm_common::records::DeadLetter;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The port of node 1 of the benchmark's own cluster (nodes 10 apart, controllers one
/// above); apart from the shared broker (9092) and the fault test's (19192).
const CLUSTER_BASE_PORT: u16 = 19292;

/// The deadline an absurd query asks for (ms): about 31,000 years.
pub const ABSURD_DEADLINE_MS: i64 = 1_000_000_000_000_000;

/// Where and with what the run happens.
pub struct Env<'a> {
    pub parm_exe: &'a Path,
    pub log_dir: PathBuf,
    pub data: &'a Mnist,
}

/// A stretch of the stream: the baseline before any fault, or one fault from its start to
/// the next fault's start (µs since the epoch).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Window {
    pub name: String,
    pub started_us: u64,
    /// When the fault was undone (the restart, SIGCONT or broker start returned).
    pub recovered_us: u64,
    pub ended_us: u64,
}

/// A valid query of the stream.
#[derive(Debug, Clone)]
pub struct Sent {
    pub id: String,
    pub scheduled_us: u64,
    pub absurd_deadline: bool,
}

/// What a run produced.
pub struct FaultRun {
    pub sent: Vec<Sent>,
    pub hostile: Vec<Hostile>,
    pub received: Vec<Received>,
    pub windows: Vec<Window>,
    /// (s since the stream's start, service, RSS in kB).
    pub rss: Vec<(f64, String, u64)>,
    pub letters: HashMap<String, DeadLetter>,
    /// Services that exited without being told to, with their log's tail.
    pub exited: Option<String>,
    /// Sends the producer could not deliver.
    pub delivery_failures: usize,
    pub started_us: u64,
}

/// Runs a scenario end to end. `progress` gets a line now and then.
pub async fn run(scn: &FaultScenario, env: &Env<'_>, progress: impl Fn(&str) + Send + Sync + 'static) -> anyhow::Result<FaultRun> {
    let progress = Arc::new(progress);
    progress(&format!("starting {} Kafka node(s) of this run's own (fresh data)", scn.brokers));
    let cluster = Arc::new(tokio::task::block_in_place(|| Cluster::start(CLUSTER_BASE_PORT, scn.brokers))?);
    let prefix = format!("faults-{}-{}", scn.name, parm_common::now_ms());
    let kafka = KafkaArgs { brokers: cluster.bootstrap.clone(), topic_prefix: prefix.clone(), kafka_set: vec![], instance_id: None, consumer_defaults: vec![] };
    let parity_workers = scn.parity_workers();
    let layout = TopicLayout { query_partitions: 1, model_partitions: scn.model_workers as i32, parity_partitions: parity_workers as i32, decoder_partitions: 1 };
    create_topics(&kafka, &layout).await?;

    let deployment = Arc::new(Mutex::new(Deployment::start(env.parm_exe, deployment_spec(scn, &cluster.bootstrap, &prefix, &env.log_dir))?));
    tokio::task::block_in_place(|| lock(&deployment).wait_until_ready(Duration::from_secs(120)))?;
    let client = Client::connect(&kafka)?;

    // The injector ends the stream; the sampler runs until everything is collected.
    let stream_over = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent_count = AtomicUsize::new(0);
    let started_us = now_us() + 100_000;
    let injector = {
        let (scn, deployment, cluster, over, kafka, progress) = (scn.clone(), deployment.clone(), cluster.clone(), stream_over.clone(), kafka.clone(), progress.clone());
        tokio::task::spawn_blocking(move || {
            let r = inject(&scn, &deployment, &cluster, &kafka, started_us, progress.as_ref());
            over.store(true, Ordering::SeqCst);
            r
        })
    };
    let sampler = {
        let (deployment, finished) = (deployment.clone(), finished.clone());
        let every = Duration::from_secs_f64(scn.rss_every_s.max(0.1));
        tokio::task::spawn_blocking(move || sample_rss(&deployment, &finished, every, started_us))
    };
    let kinds = hostile::every_kind("bad");
    let drain = Duration::from_secs_f64(scn.drain_s);
    let shared = Shared { stream_over: &stream_over, failures: &failures, sent_count: &sent_count, started_us };
    let (stream, received) = tokio::join!(send_stream(scn, &client, env.data, &kinds, &shared), collect(&client, &shared, drain, progress.as_ref()));
    // The injector runs its schedule to the end whatever failed here, so that no fault is
    // left applied.
    let windows = injector.await.context("the fault injector panicked")??;
    let (sent, hostile) = stream?;
    let received = received?;
    progress(&format!("{} valid queries and {} hostile records sent, {} results read; reading dead letters", sent.len(), hostile.len(), received.len()));
    let letters = parm::client::dead_letters(&kafka, hostile.len(), Duration::from_secs(30)).await?;
    let exited = tokio::task::block_in_place(|| lock(&deployment).check_alive().err().map(|e| format!("{e:#}")));
    finished.store(true, Ordering::SeqCst);
    let rss = sampler.await.context("the RSS sampler panicked")?;
    tokio::task::block_in_place(|| lock(&deployment).stop());
    Ok(FaultRun { sent, hostile, received, windows, rss, letters, exited, delivery_failures: failures.load(Ordering::SeqCst), started_us })
}

fn lock(d: &Mutex<Deployment>) -> std::sync::MutexGuard<'_, Deployment> {
    d.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The services of the scenario: one encoder, the model and parity workers, one decoder.
fn deployment_spec(scn: &FaultScenario, brokers: &str, prefix: &str, log_dir: &Path) -> DeploymentSpec {
    let mut d = DeploymentSpec::new(brokers, prefix, scn.model_workers, scn.parity_workers());
    d.log_dir = log_dir.to_path_buf();
    let s = |v: &dyn ToString| v.to_string();
    d.encoder_args = vec!["--parity-model".into(), scn.parity_model(), "--deadline-ms".into(), s(&scn.deadline_ms), "--hard-deadline-ms".into(), s(&scn.hard_deadline_ms)];
    let worker = |model: String| vec!["--model".into(), model, "--max-batch".into(), s(&scn.max_batch), "--delay-fixed-ms".into(), s(&scn.synthetic_ms)];
    d.model_worker_args = worker(scn.model.clone());
    d.parity_worker_args = worker(scn.parity_model());
    d.decoder_args = vec!["--policy".into(), "deadline".into()];
    d.service_env.push(("PARM_DELIVERY".into(), scn.delivery.clone()));
    if let Some(ms) = scn.commit_interval_ms {
        d.service_env.push(("PARM_COMMIT_INTERVAL_MS".into(), ms.to_string()));
    }
    d
}

/// What the sender and the collector share: the injector's end of the stream, failed
/// deliveries, queries sent so far, and the stream's start (µs since the epoch).
#[derive(Clone, Copy)]
struct Shared<'a> {
    stream_over: &'a AtomicBool,
    failures: &'a Arc<AtomicUsize>,
    sent_count: &'a AtomicUsize,
    started_us: u64,
}

/// Sends the stream until `stop`: valid query i at `started_us + i / rate`, and after
/// every `salt_every` of them one hostile record, each kind in turn.
async fn send_stream(scn: &FaultScenario, client: &Client, data: &Mnist, kinds: &[Hostile], shared: &Shared<'_>) -> anyhow::Result<(Vec<Sent>, Vec<Hostile>)> {
    let Shared { stream_over: stop, failures, sent_count, started_us } = *shared;
    let mut sent = Vec::new();
    let mut hostile = Vec::new();
    let gap_us = 1e6 / scn.rate;
    let watch = |f: rdkafka::producer::DeliveryFuture| {
        let failures = failures.clone();
        tokio::spawn(async move {
            if parm_common::kafka::delivered(f, "queries").await.is_err() {
                failures.fetch_add(1, Ordering::SeqCst);
            }
        });
    };
    for i in 0usize.. {
        let due = started_us + (i as f64 * gap_us) as u64;
        let now = now_us();
        if due > now {
            tokio::time::sleep(Duration::from_micros(due - now)).await;
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let absurd = scn.absurd_deadline_every > 0 && i % scn.absurd_deadline_every == scn.absurd_deadline_every - 1;
        let id = format!("q{i}");
        let image = data.images.get(i % data.len().max(1)).context("no MNIST images")?;
        let (f, _) = client.enqueue(&id, image, absurd.then_some(ABSURD_DEADLINE_MS)).await?;
        watch(f);
        sent.push(Sent { id, scheduled_us: due, absurd_deadline: absurd });
        sent_count.store(sent.len(), Ordering::SeqCst);
        if scn.salt_every > 0 && (i + 1) % scn.salt_every == 0 && !kinds.is_empty() {
            let n = hostile.len();
            let kind = &kinds[n % kinds.len()];
            let h = Hostile { key: format!("{}-{n}", kind.key), ..kind.clone() };
            watch(client.enqueue_raw(&h.key, &h.payload).await?);
            hostile.push(h);
        }
    }
    Ok((sent, hostile))
}

/// Reads results while the stream runs, and after it until every query sent has one or
/// `drain` has passed.
async fn collect(client: &Client, shared: &Shared<'_>, drain: Duration, progress: &dyn Fn(&str)) -> anyhow::Result<Vec<Received>> {
    let Shared { stream_over, sent_count, .. } = *shared;
    let mut out = Vec::new();
    let mut answered = std::collections::HashSet::new();
    let mut over_at: Option<std::time::Instant> = None;
    let mut last_note = std::time::Instant::now();
    loop {
        if stream_over.load(Ordering::SeqCst) {
            let at = *over_at.get_or_insert_with(std::time::Instant::now);
            if answered.len() >= sent_count.load(Ordering::SeqCst) || at.elapsed() > drain {
                return Ok(out);
            }
        }
        if last_note.elapsed() > Duration::from_secs(10) {
            last_note = std::time::Instant::now();
            progress(&format!("sent {}, answered {}", sent_count.load(Ordering::SeqCst), answered.len()));
        }
        if let Some(r) = client.next_result(Duration::from_millis(200)).await? {
            answered.insert(r.result.query_id.clone());
            out.push(r);
        }
    }
}

/// Applies the schedule: the baseline, then each fault, its recovery and the settling
/// time after it. Returns the windows.
fn inject(scn: &FaultScenario, deployment: &Mutex<Deployment>, cluster: &Cluster, kafka: &KafkaArgs, started_us: u64, progress: &dyn Fn(&str)) -> anyhow::Result<Vec<Window>> {
    let wait_until = |t_us: u64| std::thread::sleep(Duration::from_micros(t_us.saturating_sub(now_us())));
    let secs = |s: f64| (s * 1e6) as u64;
    let mut windows = vec![Window { name: "baseline (no fault)".into(), started_us, recovered_us: started_us, ended_us: 0 }];
    let mut t = started_us + secs(scn.warmup_s);
    if scn.faults.is_empty() {
        t += secs(scn.duration_s);
    }
    for f in &scn.faults {
        wait_until(t);
        let began = now_us();
        if let Some(last) = windows.last_mut() {
            last.ended_us = began;
        }
        progress(&format!("fault: {}", f.name));
        let killed = apply(f, deployment, cluster, kafka).with_context(|| format!("applying fault '{}'", f.name))?;
        std::thread::sleep(Duration::from_secs_f64(f.for_s));
        recover(f, deployment, cluster, killed).with_context(|| format!("recovering from fault '{}'", f.name))?;
        let recovered = now_us();
        windows.push(Window { name: f.name.clone(), started_us: began, recovered_us: recovered, ended_us: 0 });
        t = recovered + secs(scn.settle_s);
    }
    wait_until(t);
    if let Some(last) = windows.last_mut() {
        last.ended_us = now_us();
    }
    Ok(windows)
}

/// Applies a fault; returns the Kafka node it killed, if any.
fn apply(f: &Fault, deployment: &Mutex<Deployment>, cluster: &Cluster, kafka: &KafkaArgs) -> anyhow::Result<Option<i32>> {
    let target = f.target.as_deref().unwrap_or_default();
    match f.action {
        Action::Kill => lock(deployment).kill(target).map(|_| None),
        Action::Pause => lock(deployment).signal(target, Signal::Stop).map(|_| None),
        Action::BrokerStop => cluster.stop_all().map(|_| None),
        Action::LeaderKill => {
            let topics = kafka.topics();
            let topic = if f.topic.as_deref() == Some("results") { topics.results } else { topics.predictions };
            let leader = leader_of(&kafka.brokers, &topic)?;
            cluster.kill_node(leader)?;
            Ok(Some(leader))
        }
    }
}

/// Undoes a fault (`killed`: what `apply` returned).
fn recover(f: &Fault, deployment: &Mutex<Deployment>, cluster: &Cluster, killed: Option<i32>) -> anyhow::Result<()> {
    let target = f.target.as_deref().unwrap_or_default();
    match (f.action, killed) {
        (Action::Kill, _) => lock(deployment).restart(target),
        (Action::Pause, _) => lock(deployment).signal(target, Signal::Cont),
        (Action::BrokerStop, _) => cluster.start_all(),
        (Action::LeaderKill, Some(node)) => cluster.start_node(node),
        (Action::LeaderKill, None) => anyhow::bail!("no node was killed"),
    }
}

/// The broker that leads partition 0 of `topic` now.
fn leader_of(brokers: &str, topic: &str) -> anyhow::Result<i32> {
    let client: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let md = client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let t = md.topics().first().with_context(|| format!("no metadata for {topic}"))?;
    let p = t.partitions().iter().find(|p| p.id() == 0).with_context(|| format!("{topic} has no partition 0"))?;
    Ok(p.leader())
}

/// Samples every running service's RSS until `finished` is set.
fn sample_rss(deployment: &Mutex<Deployment>, finished: &AtomicBool, every: Duration, started_us: u64) -> Vec<(f64, String, u64)> {
    let mut out = Vec::new();
    loop {
        if finished.load(Ordering::SeqCst) {
            return out;
        }
        let t = now_us().saturating_sub(started_us) as f64 / 1e6;
        for (name, pid) in lock(deployment).pids() {
            if let Some(kb) = rss_kb(pid) {
                out.push((t, name, kb));
            }
        }
        std::thread::sleep(every);
    }
}

/// A process's resident set (kB), from /proc.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok())
}
