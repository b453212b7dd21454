//! `parm produce`: send MNIST test images as queries.

use crate::client::Client;
use crate::mnist::Mnist;
use parm_common::kafka::KafkaArgs;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// How many queries to send.
    #[arg(long, default_value_t = 10)]
    pub count: usize,
    /// Queries per second.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Index of the first MNIST test image to send (wraps around).
    #[arg(long, default_value_t = 0)]
    pub start: usize,
    /// Prefix of the query ids (ids are PREFIX-INDEX).
    #[arg(long, default_value = "q")]
    pub id_prefix: String,
    /// Latency budget (ms) to put in each query; default: the deployment's.
    #[arg(long)]
    pub deadline_ms: Option<i64>,
}

pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    if args.rate <= 0.0 {
        anyhow::bail!("--rate must be above 0 (queries per second)");
    }
    let data = Mnist::load_test_subset()?;
    let client = Client::connect(&args.kafka)?;
    let gap = Duration::from_secs_f64(1.0 / args.rate);
    for i in 0..args.count {
        let idx = (args.start + i) % data.len();
        let id = format!("{}-{idx}", args.id_prefix);
        client.send(&id, &data.images[idx], args.deadline_ms).await?;
        println!("{id}\tlabel {}", data.labels[idx]);
        tokio::time::sleep(gap).await;
    }
    eprintln!("sent {} queries to {}", args.count, client.topics.queries);
    Ok(())
}
