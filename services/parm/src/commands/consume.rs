//! `parm consume`: print results as JSON lines.

use crate::client::Client;
use parm_common::kafka::KafkaArgs;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Stop after this many results.
    #[arg(long, default_value_t = 10)]
    pub count: usize,
    /// Stop after this many seconds without reaching --count.
    #[arg(long, default_value_t = 30)]
    pub timeout_s: u64,
}

pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let client = Client::connect(&args.kafka)?;
    let until = std::time::Instant::now() + Duration::from_secs(args.timeout_s);
    let mut printed = 0;
    while printed < args.count {
        let left = until.saturating_duration_since(std::time::Instant::now());
        let Some(r) = client.next_result(left).await? else { break };
        let r = r.result;
        println!(
            "{}",
            serde_json::json!({
                "query_id": r.query_id, "source": r.source, "top1": r.top1,
                "output": r.output, "latency_ms": r.emitted_at_ms - r.received_at_ms,
            })
        );
        printed += 1;
    }
    if printed < args.count {
        anyhow::bail!("read {printed} of {} results in {} s", args.count, args.timeout_s);
    }
    Ok(())
}
