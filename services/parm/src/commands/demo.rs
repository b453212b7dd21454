//! `parm demo`: the whole pipeline on one machine, each service its own process.
//!
//! Starts a local broker unless `--brokers` is given, creates a fresh set of topics,
//! launches the services, waits until every consumer group is stable, sends MNIST test
//! queries on an open-loop schedule, and prints what came back.

use anyhow::Context;
use crate::broker;
use crate::client::{run_schedule, Client, Load};
use crate::launch::{Deployment, DeploymentSpec};
use crate::mnist::Mnist;
use crate::report::Report;
use parm_common::kafka::{create_topics, KafkaArgs, TopicLayout};
use parm_common::model::{resolve, ModelManifest};
use parm_common::now_ms;
use parm_core::Policy;
use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

/// Flags of `parm demo`: the deployment it starts and the load it sends.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Kafka bootstrap servers; default: start a local broker with scripts/kafka-local.
    #[arg(long, env = "PARM_BROKERS")]
    pub brokers: Option<String>,
    /// How many queries to send.
    #[arg(long, env = "PARM_DEMO_QUERIES", default_value_t = 1000)]
    pub queries: usize,
    /// Queries per second (Poisson arrivals).
    #[arg(long, env = "PARM_DEMO_RATE", default_value_t = 100.0)]
    pub rate: f64,
    /// Model workers (parity workers: model workers / k, at least 1).
    #[arg(long, env = "PARM_DEMO_MODEL_WORKERS", default_value_t = 4)]
    pub model_workers: usize,
    /// The parity model; its manifest gives k and the encoder.
    #[arg(long, env = "PARM_PARITY_MODEL", default_value = "mnist-lenet-parity-concat-k2")]
    pub parity_model: String,
    /// Make model worker 0 a straggler: this many ms of extra service time per batch.
    #[arg(long, env = "PARM_DEMO_STRAGGLER_MS", default_value_t = 0.0)]
    pub straggler_ms: f64,
    /// Decoder policy: `deadline` (wait for the real prediction until the deadline) or
    /// `eager` (reconstruct as soon as parity and the other members are in).
    #[arg(long, env = "PARM_POLICY", default_value = "deadline")]
    pub policy: Policy,
    /// Latency budget (ms) after which the decoder may reconstruct.
    #[arg(long, env = "PARM_DEADLINE_MS", default_value_t = 50)]
    pub deadline_ms: u64,
    /// Delivery of every service: at-least-once or exactly-once (Kafka transactions).
    #[arg(long, env = "PARM_DELIVERY", value_enum, default_value_t = parm_common::delivery::Delivery::AtLeastOnce)]
    pub delivery: parm_common::delivery::Delivery,
    /// Print one JSON object on the last line as well.
    #[arg(long, env = "PARM_DEMO_JSON")]
    pub json: bool,
    /// Export every service's spans over OTLP/HTTP to this endpoint (e.g. a local Jaeger:
    /// http://127.0.0.1:4318/v1/traces).
    #[arg(long, env = "PARM_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Where the services' logs go (default: a temporary folder, printed).
    #[arg(long, env = "PARM_DEMO_LOG_DIR")]
    pub log_dir: Option<std::path::PathBuf>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.rate <= 0.0 || args.queries == 0 || args.model_workers == 0 {
        anyhow::bail!("--rate, --queries and --model-workers must be above 0");
    }
    let (parity, _) = ModelManifest::load(&resolve(&args.parity_model))?;
    let k = parity.k.unwrap_or(2);
    let brokers = match &args.brokers {
        Some(b) => b.clone(),
        None => {
            eprintln!("starting a local Kafka broker (scripts/kafka-local start)...");
            broker::start_local()?
        }
    };
    let prefix = format!("parm-demo-{}", now_ms());
    let kafka = KafkaArgs { brokers: brokers.clone(), topic_prefix: prefix.clone(), kafka_set: vec![], instance_id: None, consumer_defaults: vec![] };
    let parity_workers = (args.model_workers / k).max(1);
    let layout = TopicLayout {
        query_partitions: 1,
        model_partitions: args.model_workers as i32,
        parity_partitions: parity_workers as i32,
        decoder_partitions: 2,
    };
    create_topics(&kafka, &layout).await?;

    let mut spec = DeploymentSpec::new(&brokers, &prefix, args.model_workers, parity_workers);
    spec.encoder_args = vec!["--parity-model".into(), args.parity_model.clone(), "--deadline-ms".into(), args.deadline_ms.to_string()];
    spec.parity_worker_args = vec!["--model".into(), args.parity_model.clone()];
    // The model workers serve the base model the parity model was trained for.
    let base = parity.base.clone().context("the parity model's manifest names no base model")?;
    spec.model_worker_args = vec!["--model".into(), base];
    spec.decoder_args = vec!["--policy".into(), args.policy.to_string()];
    if args.straggler_ms > 0.0 {
        spec.per_model_worker_args.push((0, vec!["--delay-fixed-ms".into(), args.straggler_ms.to_string()]));
    }
    spec.otlp_endpoint = args.otlp_endpoint.clone();
    spec.service_env.push(("PARM_DELIVERY".into(), args.delivery.to_string()));
    if let Some(dir) = &args.log_dir {
        spec.log_dir = dir.clone();
    }
    eprintln!(
        "deployment {prefix}: 1 encoder, {} model workers{}, {parity_workers} parity workers (k = {k}), 1 decoder ({} policy); logs in {}",
        args.model_workers,
        if args.straggler_ms > 0.0 { format!(" (worker 0 a straggler, +{} ms)", args.straggler_ms) } else { String::new() },
        args.policy,
        spec.log_dir.display()
    );
    let exe = std::env::current_exe()?;
    let mut deployment = Deployment::start(&exe, spec)?;
    tokio::task::block_in_place(|| deployment.wait_until_ready(Duration::from_secs(90)))?;

    let data = Mnist::load_test_subset()?;
    let queries: Vec<(String, parm_core::Tensor)> =
        (0..args.queries).map(|i| (format!("demo-{i}"), data.images[i % data.len()].clone())).collect();
    let labels: HashMap<String, u8> = (0..args.queries).map(|i| (format!("demo-{i}"), data.labels[i % data.len()])).collect();
    let client = Client::connect(&kafka)?;
    eprintln!("sending {} queries at {} per second...", args.queries, args.rate);
    let run = run_schedule(&client, &queries, &Load::poisson(args.rate), |sent, answered, all| {
        eprint!("\r  sent {sent}/{all}, answered {answered}");
        let _ = std::io::stderr().flush();
    })
    .await?;
    eprintln!();
    deployment.check_alive()?;
    deployment.stop();
    let report = Report::new(&run.scheduled_us, &run.received, &labels);
    println!("{}", report.human());
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
