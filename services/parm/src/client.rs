//! A client of the pipeline: sends queries to `PREFIX.queries` and reads their results
//! from `PREFIX.results`, as any client in any language would (Avro, keyed by query id).
//! The open-loop load generator ([`run_schedule`]: sends on a schedule fixed in advance,
//! hedged copies, results collected meanwhile) is its `open_loop` part.

use anyhow::Context as _;
use opentelemetry::Context;
use parm_common::avro;
use parm_common::kafka::{self, KafkaArgs, ParmContext, Topics};
use parm_common::records::{DeadLetter, Query, QueryResult, WireTensor};
use parm_common::telemetry;
use parm_common::now_ms;
use parm_core::Tensor;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

mod open_loop;

pub use open_loop::{run_schedule, Hedge, HedgeDelay, Load, Run, HEDGE_SUFFIX};

/// Where reading `topic` from time `since_ms` starts on each of its `partitions`: the
/// first offset stamped at or after it, or else the end as it was before that lookup
/// (read first, so a record written between the two calls is not skipped).
fn start_offsets(consumer: &StreamConsumer<ParmContext>, topic: &str, partitions: i32, since_ms: i64) -> anyhow::Result<TopicPartitionList> {
    let timeout = Duration::from_secs(30);
    let mut ends = HashMap::new();
    let mut by_time = TopicPartitionList::new();
    for p in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, timeout).with_context(|| format!("reading the end of {topic}[{p}]"))?;
        ends.insert(p, high);
        by_time.add_partition_offset(topic, p, Offset::Offset(since_ms))?;
    }
    let found = consumer.offsets_for_times(by_time, timeout).with_context(|| format!("looking up {topic} by time"))?;
    let mut start = TopicPartitionList::new();
    for e in found.elements() {
        let end = ends.get(&e.partition()).copied().unwrap_or(0);
        let at = match e.offset() {
            Offset::Offset(o) if o >= 0 => o.min(end),
            _ => end, // nothing stamped since then
        };
        start.add_partition_offset(topic, e.partition(), Offset::Offset(at))?;
    }
    Ok(start)
}

/// A result as the client saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub result: QueryResult,
    /// When the client read it (µs since the epoch).
    pub arrived_at_us: u64,
    /// The answer came to a hedged copy of the query (see [`Hedge`]); its id is then the
    /// original query's.
    pub hedge: bool,
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
        let (results, _) = kafka.results_consumer(&group)?;
        results.subscribe(&[&topics.results]).context("subscribing to the results topic")?;
        // A client rides out a broker outage of a few minutes, then says so.
        Ok(Self { topics, producer: kafka.client_producer(300_000)?, results })
    }

    /// Connects and reads the results topic from the first result stamped at or after
    /// `since_ms` (ms since the epoch), on every partition, without joining a group (so
    /// nothing written after the call is missed, and no old result is read).
    pub async fn connect_since(kafka: &KafkaArgs, since_ms: u64) -> anyhow::Result<Self> {
        let topics = kafka.topics();
        let partitions = kafka::partition_count(kafka, &topics.results).await?;
        let group = format!("{}-client-{}-{}", kafka.topic_prefix, std::process::id(), now_ms());
        let (results, _) = kafka.results_consumer(&group)?;
        let since = i64::try_from(since_ms).unwrap_or(i64::MAX);
        let start = tokio::task::block_in_place(|| start_offsets(&results, &topics.results, partitions, since))?;
        results.assign(&start).context("assigning the results partitions")?;
        Ok(Self { topics, producer: kafka.client_producer(300_000)?, results })
    }

    /// Sends one query and waits for the broker's acknowledgement. The send span's trace
    /// context goes with it; returns the query's traceparent.
    pub async fn send(&self, id: &str, tensor: &Tensor, deadline_ms: Option<i64>) -> anyhow::Result<Option<String>> {
        let (f, traceparent) = self.enqueue(id, tensor, deadline_ms).await?;
        kafka::delivered(f, &self.topics.queries).await?;
        Ok(traceparent)
    }

    /// Hands one query to the producer without waiting for its acknowledgement (an
    /// open-loop sender must not wait a broker round trip between sends; a client riding
    /// out a broker outage keeps sending into librdkafka's queue).
    pub async fn enqueue(&self, id: &str, tensor: &Tensor, deadline_ms: Option<i64>) -> anyhow::Result<(DeliveryFuture, Option<String>)> {
        let q = Query { id: id.to_string(), tensor: WireTensor::from_tensor(tensor), deadline_ms, sent_at_ms: now_ms() as i64 };
        let cx = telemetry::send_span("client", &self.topics.queries, None, id, &Context::new(), vec![]);
        let f = kafka::send(&self.producer, &self.topics.queries, None, id, &avro::encode(&q)?, telemetry::inject(&cx)).await?;
        Ok((f, telemetry::traceparent(&cx)))
    }

    /// Sends arbitrary bytes as a query (for bad-input tests and tools).
    pub async fn send_raw(&self, key: &str, payload: &[u8]) -> anyhow::Result<()> {
        let f = self.enqueue_raw(key, payload).await?;
        kafka::delivered(f, &self.topics.queries).await?;
        Ok(())
    }

    /// Hands arbitrary bytes to the producer as a query, without waiting for the broker.
    pub async fn enqueue_raw(&self, key: &str, payload: &[u8]) -> anyhow::Result<DeliveryFuture> {
        kafka::send(&self.producer, &self.topics.queries, None, key, payload, OwnedHeaders::new()).await
    }

    /// The next result, or `None` if none comes within `timeout`.
    pub async fn next_result(&self, timeout: Duration) -> anyhow::Result<Option<Received>> {
        let until = Instant::now() + timeout;
        let msg = loop {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(msg) = tokio::time::timeout(left, self.results.recv()).await else { return Ok(None) };
            match msg {
                Ok(m) => {
                    // A rebalance after an outage (the client's session expired) resumes
                    // here, not from the start of the topic.
                    kafka::consumed(&self.results, &m);
                    break m;
                }
                // A broker outage: librdkafka reconnects by itself.
                Err(e) => parm_common::trouble::ride_out(e, "client", "reading results")?,
            }
        };
        let result: QueryResult = avro::decode(msg.payload().unwrap_or_default())?;
        let traceparent = kafka::header_str(msg.headers(), "traceparent").map(str::to_string);
        Ok(Some(Received { result, arrived_at_us: now_us(), traceparent, hedge: false }))
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

/// The dead letters of a deployment, read from the topic's start under a group of their
/// own until `want` are in or `timeout` passes, keyed by the bad record's Kafka key (the
/// last letter of a key wins).
pub async fn dead_letters(kafka: &KafkaArgs, want: usize, timeout: Duration) -> anyhow::Result<HashMap<String, DeadLetter>> {
    let (consumer, _) = kafka.consumer(&format!("{}-dead-letter-reader-{}", kafka.topic_prefix, now_ms()))?;
    consumer.subscribe(&[&kafka.topics().dead_letters]).context("subscribing to the dead-letter topic")?;
    let mut letters = HashMap::new();
    let until = Instant::now() + timeout;
    while letters.len() < want && Instant::now() < until {
        match tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            Ok(Ok(m)) => {
                kafka::consumed(&consumer, &m);
                let d: DeadLetter = avro::decode(m.payload().unwrap_or_default()).context("a record on the dead-letter topic is no dead letter")?;
                letters.insert(d.key.clone().unwrap_or_default(), d);
            }
            Ok(Err(e)) => parm_common::trouble::ride_out(e, "client", "reading dead letters")?,
            Err(_) => {}
        }
    }
    Ok(letters)
}

/// Microseconds since the epoch: the clock of the client's latency measurements.
pub fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}
