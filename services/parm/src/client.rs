//! A client of the pipeline: sends queries to `PREFIX.queries` and reads their results
//! from `PREFIX.results`, as any client in any language would (Avro, keyed by query id).

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
        let (results, _) = kafka.consumer(&group)?;
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
        let (results, _) = kafka.consumer(&group)?;
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

/// How an open-loop run sends its queries.
#[derive(Debug, Clone)]
pub struct Load {
    /// Queries per second.
    pub rate: f64,
    /// Exponential gaps (a Poisson process); else evenly spaced.
    pub poisson: bool,
    /// Seed of the gaps.
    pub seed: u64,
    /// Each query's own latency budget, if any (else the encoder's default).
    pub deadline_ms: Option<i64>,
    /// How long to wait for results after the last send.
    pub result_timeout: Duration,
    pub hedge: Option<Hedge>,
}

impl Load {
    pub fn poisson(rate: f64) -> Self {
        Self { rate, poisson: true, seed: 42, deadline_ms: None, result_timeout: Duration::from_secs(5), hedge: None }
    }
}

/// Hedged requests ("The Tail at Scale"): a query without a result `after` its send is
/// sent once more as a copy with id `ID~h`, and the first answer of the two is the
/// query's. The copy is a query of its own for the pipeline, so it lands on the next
/// model partition in turn; copies are capped at `budget` times the queries sent so far.
#[derive(Debug, Clone)]
pub struct Hedge {
    pub after: HedgeDelay,
    /// The most hedged copies per query sent (e.g. 1/k: the extra load of parity).
    pub budget: f64,
}

/// When to send a hedged copy.
#[derive(Debug, Clone, Copy)]
pub enum HedgeDelay {
    /// A fixed delay after the scheduled send.
    Fixed(Duration),
    /// This quantile of the latencies observed so far in the run (e.g. 0.95), and
    /// `initial` until 100 results are in.
    Quantile { q: f64, initial: Duration },
}

/// The suffix of a hedged copy's query id.
pub const HEDGE_SUFFIX: &str = "~h";

/// What an open-loop run produced.
#[derive(Debug, Default)]
pub struct Run {
    /// Scheduled send time of each query (µs since the epoch).
    pub scheduled_us: HashMap<String, u64>,
    /// Every result read, in arrival order; results of hedged copies carry their
    /// original's id and `hedge: true`.
    pub received: Vec<Received>,
    /// Hedged copies sent.
    pub hedges: usize,
    /// The latest a send left after its scheduled time (µs): the load generator's own lag.
    pub max_send_lag_us: u64,
}

/// Sends `queries` on an open-loop schedule (query i at `start + offset_i`, Poisson gaps
/// when `load.poisson`), while collecting results. Latency is then measured from each
/// query's scheduled time, so a slow pipeline cannot hide its queueing (no coordinated
/// omission). `progress` gets (queries sent, queries answered, total).
pub async fn run_schedule(
    client: &Client,
    queries: &[(String, Tensor)],
    load: &Load,
    mut progress: impl FnMut(usize, usize, usize),
) -> anyhow::Result<Run> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, Exp};
    use std::cell::RefCell;
    use std::collections::BinaryHeap;
    use std::cmp::Reverse;

    let mut rng = rand::rngs::StdRng::seed_from_u64(load.seed);
    let exp = Exp::new(load.rate.max(1e-9)).context("rate must be positive")?;
    let mut offsets_us = Vec::with_capacity(queries.len());
    let mut t = 0.0f64;
    for _ in queries {
        offsets_us.push((t * 1e6) as u64);
        t += if load.poisson { exp.sample(&mut rng) } else { 1.0 / load.rate };
    }
    let start_us = now_us() + 50_000;
    let scheduled: HashMap<String, u64> =
        queries.iter().zip(&offsets_us).map(|((id, _), o)| (id.clone(), start_us + o)).collect();
    let index: HashMap<&str, usize> = queries.iter().enumerate().map(|(i, (id, _))| (id.as_str(), i)).collect();

    // Shared by the sender and the collector, which run on one task (tokio::join!), and
    // never borrowed across an await.
    let answered: RefCell<HashSet<usize>> = RefCell::new(HashSet::new());
    let latencies = RefCell::new(crate::report::latency_histogram());
    let sending_done = std::cell::Cell::new(false);
    let sent_count = std::cell::Cell::new(0usize);
    let hedges = std::cell::Cell::new(0usize);
    let max_lag = std::cell::Cell::new(0u64);

    let sender = async {
        let mut deliveries = Vec::with_capacity(queries.len());
        // Acknowledgements are awaited off the send loop, all at the end.
        let watch = |f| tokio::spawn(async move { kafka::delivered(f, "the queries topic").await });
        // (due µs, query index) of hedge checks.
        let mut checks: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
        let mut next = 0usize;
        loop {
            let next_send = (next < queries.len()).then(|| start_us + offsets_us[next]);
            let next_check = checks.peek().map(|Reverse((t, _))| *t);
            let Some(due) = [next_send, next_check].into_iter().flatten().min() else { break };
            let now = now_us();
            if due > now {
                tokio::time::sleep(Duration::from_micros(due - now)).await;
            }
            if next_send == Some(due) {
                let (id, tensor) = &queries[next];
                let (f, _) = client.enqueue(id, tensor, load.deadline_ms).await?;
                max_lag.set(max_lag.get().max(now_us().saturating_sub(due)));
                deliveries.push(watch(f));
                if let Some(h) = &load.hedge {
                    let delay = match h.after {
                        HedgeDelay::Fixed(d) => d,
                        HedgeDelay::Quantile { q, initial } => {
                            let l = latencies.borrow();
                            if l.len() < 100 { initial } else { Duration::from_micros(l.value_at_quantile(q)) }
                        }
                    };
                    checks.push(Reverse((due + delay.as_micros() as u64, next)));
                }
                next += 1;
                sent_count.set(next);
            } else if let Some(Reverse((_, i))) = checks.pop() {
                let budget = load.hedge.as_ref().map_or(0.0, |h| h.budget);
                let within_budget = ((hedges.get() + 1) as f64) <= budget * next as f64;
                if !answered.borrow().contains(&i) && within_budget {
                    let (id, tensor) = &queries[i];
                    let (f, _) = client.enqueue(&format!("{id}{HEDGE_SUFFIX}"), tensor, load.deadline_ms).await?;
                    deliveries.push(watch(f));
                    hedges.set(hedges.get() + 1);
                }
            }
        }
        sending_done.set(true);
        for d in deliveries {
            d.await.context("a delivery task failed")??;
        }
        anyhow::Ok(())
    };
    let collector = async {
        let mut out = Vec::new();
        let last_send = start_us + offsets_us.last().copied().unwrap_or(0);
        loop {
            let all_in = answered.borrow().len() == queries.len();
            let now = now_us();
            let give_up_at = last_send + load.result_timeout.as_micros() as u64;
            if all_in || (sending_done.get() && now >= give_up_at) {
                break;
            }
            // Wake up now and then even without results, to notice the end of the run.
            progress(sent_count.get(), answered.borrow().len(), queries.len());
            let Some(mut r) = client.next_result(Duration::from_millis(200)).await? else { continue };
            if let Some(original) = r.result.query_id.strip_suffix(HEDGE_SUFFIX) {
                r.result.query_id = original.to_string();
                r.hedge = true;
            }
            if let Some(&i) = index.get(r.result.query_id.as_str()) {
                if answered.borrow_mut().insert(i) {
                    let lat = r.arrived_at_us.saturating_sub(start_us + offsets_us[i]).max(1);
                    let _ = latencies.borrow_mut().record(lat);
                }
            }
            out.push(r);
        }
        anyhow::Ok(out)
    };
    let (sent, received) = tokio::join!(sender, collector);
    sent?;
    Ok(Run { scheduled_us: scheduled, received: received?, hedges: hedges.get(), max_send_lag_us: max_lag.get() })
}
