//! A client of the pipeline: sends queries to `PREFIX.queries` and reads their results
//! from `PREFIX.results`, as any client in any language would (Avro, keyed by query id).

use anyhow::Context as _;
use opentelemetry::Context;
use parm_common::avro;
use parm_common::kafka::{self, KafkaArgs, ParmContext, Topics};
use parm_common::records::{Query, QueryResult, WireTensor};
use parm_common::telemetry;
use parm_common::now_ms;
use parm_core::Tensor;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// A result as the client saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub result: QueryResult,
    /// When the client read it (ms since the epoch).
    pub arrived_at_ms: u64,
    /// The result's trace context, as its headers carry it.
    pub traceparent: Option<String>,
}

/// Producer and result consumer of one client.
pub struct Client {
    pub topics: Topics,
    producer: FutureProducer,
    results: StreamConsumer<ParmContext>,
}

impl Client {
    /// Connects and subscribes to the results topic (reading it from the beginning, under
    /// a consumer group of its own).
    pub fn connect(kafka: &KafkaArgs) -> anyhow::Result<Self> {
        let topics = kafka.topics();
        let group = format!("{}-client-{}-{}", kafka.topic_prefix, std::process::id(), now_ms());
        let (results, _) = kafka.consumer(&group)?;
        results.subscribe(&[&topics.results]).context("subscribing to the results topic")?;
        Ok(Self { topics, producer: kafka.producer()?, results })
    }

    /// Sends one query and waits for the broker's acknowledgement. The send span's trace
    /// context goes with it; returns the query's traceparent.
    pub async fn send(&self, id: &str, tensor: &Tensor, deadline_ms: Option<i64>) -> anyhow::Result<Option<String>> {
        let q = Query { id: id.to_string(), tensor: WireTensor::from_tensor(tensor), deadline_ms, sent_at_ms: now_ms() as i64 };
        let cx = telemetry::send_span("client", &self.topics.queries, None, id, &Context::new(), vec![]);
        let f = kafka::send(&self.producer, &self.topics.queries, None, id, &avro::encode(&q)?, telemetry::inject(&cx)).await?;
        kafka::delivered(f, &self.topics.queries).await?;
        Ok(telemetry::traceparent(&cx))
    }

    /// Sends arbitrary bytes as a query (for bad-input tests and tools).
    pub async fn send_raw(&self, key: &str, payload: &[u8]) -> anyhow::Result<()> {
        let f = kafka::send(&self.producer, &self.topics.queries, None, key, payload, OwnedHeaders::new()).await?;
        kafka::delivered(f, &self.topics.queries).await?;
        Ok(())
    }

    /// The next result, or `None` if none comes within `timeout`.
    pub async fn next_result(&self, timeout: Duration) -> anyhow::Result<Option<Received>> {
        let Ok(msg) = tokio::time::timeout(timeout, self.results.recv()).await else { return Ok(None) };
        let msg = msg?;
        let result: QueryResult = avro::decode(msg.payload().unwrap_or_default())?;
        let traceparent = kafka::header_str(msg.headers(), "traceparent").map(str::to_string);
        Ok(Some(Received { result, arrived_at_ms: now_ms(), traceparent }))
    }

    /// Reads results until every id in `expected` has one or `timeout` passes. Every result
    /// read is returned, duplicates and unexpected ones included.
    pub async fn collect(&self, expected: &HashSet<String>, timeout: Duration) -> anyhow::Result<Vec<Received>> {
        let until = Instant::now() + timeout;
        let mut seen: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        while !expected.iter().all(|id| seen.contains(id)) {
            let left = until.saturating_duration_since(Instant::now());
            let Some(r) = self.next_result(left).await? else { break };
            seen.insert(r.result.query_id.clone());
            out.push(r);
        }
        Ok(out)
    }
}

/// Sends `queries` on an open-loop schedule (query i at `start + i / rate`, Poisson gaps
/// when `poisson`), while collecting results. Latency is then measured from each query's
/// scheduled time, so a slow pipeline cannot hide its queueing (no coordinated omission).
/// Returns the scheduled send times by id and everything received.
pub async fn run_schedule(
    client: &Client,
    queries: &[(String, Tensor)],
    rate: f64,
    poisson: bool,
    deadline_ms: Option<i64>,
    result_timeout: Duration,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<(HashMap<String, u64>, Vec<Received>)> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, Exp};
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let exp = Exp::new(rate.max(1e-9)).context("rate must be positive")?;
    let mut offsets_s = Vec::with_capacity(queries.len());
    let mut t = 0.0f64;
    for _ in queries {
        offsets_s.push(t);
        t += if poisson { exp.sample(&mut rng) } else { 1.0 / rate };
    }
    let start_ms = now_ms() + 50;
    let expected: HashSet<String> = queries.iter().map(|(id, _)| id.clone()).collect();
    let scheduled: HashMap<String, u64> =
        queries.iter().zip(&offsets_s).map(|((id, _), o)| (id.clone(), start_ms + (o * 1000.0) as u64)).collect();
    let sender = async {
        for (i, ((id, tensor), o)) in queries.iter().zip(&offsets_s).enumerate() {
            let at = start_ms + (o * 1000.0) as u64;
            let now = now_ms();
            if at > now {
                tokio::time::sleep(Duration::from_millis(at - now)).await;
            }
            client.send(id, tensor, deadline_ms).await?;
            progress(i + 1, queries.len());
        }
        anyhow::Ok(())
    };
    let send_time = Duration::from_secs_f64(t) + result_timeout + Duration::from_secs(1);
    let (sent, received) = tokio::join!(sender, client.collect(&expected, send_time));
    sent?;
    Ok((scheduled, received?))
}
