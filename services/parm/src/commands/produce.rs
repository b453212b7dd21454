//! `parm produce`: send MNIST test images as queries.

use crate::client::Client;
use crate::mnist::Mnist;
use parm_common::kafka::KafkaArgs;
use parm_common::now_ms;
use std::time::Duration;

/// Flags of `parm produce`: how many MNIST test images to send as queries, and how fast.
#[derive(clap::Args, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// How many queries to send.
    #[arg(long, env = "PARM_PRODUCE_COUNT", default_value_t = 10)]
    pub count: usize,
    /// Queries per second.
    #[arg(long, env = "PARM_PRODUCE_RATE", default_value_t = 50.0)]
    pub rate: f64,
    /// Index of the first MNIST test image to send (wraps around).
    #[arg(long, env = "PARM_PRODUCE_START", default_value_t = 0)]
    pub start: usize,
    /// Prefix of the query ids. Ids are PREFIX-RUN-INDEX, where RUN tells this run from
    /// every other (the start time, in base 36 milliseconds), so that runs never share ids.
    #[arg(long, env = "PARM_PRODUCE_ID_PREFIX", default_value = "q")]
    pub id_prefix: String,
    /// Latency budget (ms) to put in each query; default: the deployment's.
    #[arg(long, env = "PARM_PRODUCE_DEADLINE_MS")]
    pub deadline_ms: Option<i64>,
}

pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    if args.rate <= 0.0 {
        anyhow::bail!("--rate must be above 0 (queries per second)");
    }
    let data = Mnist::load_test_subset()?;
    let client = Client::connect(&args.kafka)?;
    let gap = Duration::from_secs_f64(1.0 / args.rate);
    let run = base36(now_ms());
    for i in 0..args.count {
        let idx = args.start.wrapping_add(i) % data.len();
        let id = format!("{}-{run}-{i}", args.id_prefix);
        client.send(&id, &data.images[idx], args.deadline_ms).await?;
        println!("{id}\tlabel {}", data.labels[idx]);
        tokio::time::sleep(gap).await;
    }
    eprintln!("sent {} queries to {}", args.count, client.topics.queries);
    Ok(())
}

/// `n` in base 36 (digits, then lower-case letters): a short run tag.
fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn base36_writes_digits_then_letters() {
        assert_eq!(super::base36(0), "0");
        assert_eq!(super::base36(35), "z");
        assert_eq!(super::base36(36), "10");
        assert_eq!(super::base36(1_796_317_414_973), "mx7t0c3h");
    }
}
