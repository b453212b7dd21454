//! `parm consume`: print results as JSON lines.

use crate::client::Client;
use parm_common::kafka::KafkaArgs;
use parm_common::now_ms;
use std::time::Duration;

/// Flags of `parm consume`: which results to print, and when to stop.
#[derive(clap::Args, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Stop after this many results.
    #[arg(long, env = "PARM_CONSUME_COUNT", default_value_t = 10)]
    pub count: usize,
    /// Stop after this many seconds without reaching --count.
    #[arg(long, env = "PARM_CONSUME_TIMEOUT_S", default_value_t = 30)]
    pub timeout_s: u64,
    /// Which results to read: `now` (those written from now on), `beginning` (all the
    /// topic holds), or a time ago such as `30s`, `5m`, `2h`, `500ms` (those written since).
    #[arg(long, env = "PARM_CONSUME_FROM", default_value = "now", value_parser = parse_from)]
    pub from: From,
}

/// Where `parm consume` starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// Every result the topic holds.
    Beginning,
    /// Results written within this many milliseconds before the start (0: from now on).
    Ago(u64),
}

fn parse_from(s: &str) -> Result<From, String> {
    let s = s.trim();
    if s == "beginning" {
        return Ok(From::Beginning);
    }
    if s == "now" {
        return Ok(From::Ago(0));
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => 0,
    };
    match number.parse::<u64>() {
        Ok(n) if scale > 0 => n.checked_mul(scale).map(From::Ago).ok_or_else(|| format!("'{s}' is too long ago")),
        _ => Err(format!("'{s}' is not now, beginning or a time ago such as 30s, 5m, 2h")),
    }
}

pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let client = match args.from {
        From::Beginning => Client::connect(&args.kafka)?,
        From::Ago(ms) => Client::connect_since(&args.kafka, now_ms().saturating_sub(ms)).await?,
    };
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

#[cfg(test)]
mod tests {
    use super::{parse_from, From};

    #[test]
    fn from_reads_now_beginning_and_times_ago() {
        assert_eq!(parse_from("now"), Ok(From::Ago(0)));
        assert_eq!(parse_from("beginning"), Ok(From::Beginning));
        assert_eq!(parse_from("30s"), Ok(From::Ago(30_000)));
        assert_eq!(parse_from("5m"), Ok(From::Ago(300_000)));
        assert_eq!(parse_from("2h"), Ok(From::Ago(7_200_000)));
        assert_eq!(parse_from("250ms"), Ok(From::Ago(250)));
        for bad in ["", "5", "m", "5d", "-5s", "5 s", "99999999999999999999h"] {
            assert!(parse_from(bad).is_err(), "{bad:?} accepted");
        }
    }
}
