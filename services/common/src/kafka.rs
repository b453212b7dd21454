//! Kafka plumbing shared by the services: connection settings, producers and consumers
//! tuned for low latency, offsets and headers. A deployment's topics are in
//! `crate::topics`, group membership changes in `crate::rebalance` (both re-exported here).
//!
//! At least once (the default), consumers never auto-store offsets; a service stores an
//! offset only once everything it led to is acknowledged by the broker (see
//! `parm_core::offsets`), and librdkafka commits the stored offsets in the background and
//! on shutdown or revocation. Exactly once, offsets go only into the service's Kafka
//! transactions (see `crate::delivery`). Every consumer reads `read_committed`.

use anyhow::{anyhow, bail, Context as _};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use crate::delivery::Delivery;
pub use crate::topics::{create_topics, partition_count, service_partition_count, TopicLayout, Topics, START_PATIENCE};
pub use crate::rebalance::{consumed, reassigned, ParmContext, Positions, Reassignment, RebalanceCounter, Rejoin};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

/// How to reach Kafka and name the topics; flattened into every subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, env = "PARM_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Prefix of every topic name: PREFIX.queries, PREFIX.results, ... (lets several
    /// deployments or tests share one cluster).
    #[arg(long, env = "PARM_TOPIC_PREFIX", default_value = "parm")]
    pub topic_prefix: String,
    /// Extra librdkafka setting for every client, KEY=VALUE; repeatable
    /// (e.g. --kafka-set linger.ms=2 --kafka-set fetch.wait.max.ms=10). In the variable,
    /// settings are separated by ';' (PARM_KAFKA_SET="linger.ms=2;fetch.wait.max.ms=10").
    #[arg(long = "kafka-set", env = "PARM_KAFKA_SET", value_name = "KEY=VALUE", value_parser = parse_key_value, value_delimiter = ';')]
    pub kafka_set: Vec<(String, String)>,
    /// Static membership (KIP-345): this process's stable id in its consumer group
    /// (`group.instance.id`). A restarted instance with the same id takes its partitions
    /// back without a rebalance, within the session timeout. Unique per instance. Off by
    /// default: with librdkafka 2.12 a broker restart can leave a static member fenced
    /// (FENCED_INSTANCE_ID, fatal: the service then exits and must be restarted), seen
    /// in parm's broker-restart test.
    #[arg(long, env = "PARM_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Settings a service gives its consumers only, before `--kafka-set` (which overrides
    /// them): see [`KafkaArgs::with_consumer_default`].
    #[arg(skip)]
    pub consumer_defaults: Vec<(String, String)>,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE (for example linger.ms=1)"))
}

impl KafkaArgs {
    pub fn topics(&self) -> Topics {
        Topics::with_prefix(&self.topic_prefix)
    }

    pub(crate) fn base_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        // The pid tells the members of a consumer group apart (see `parm::launch`).
        c.set("client.id", format!("parm-{}", std::process::id()));
        // Connections to a local broker: fail fast enough to say so, not hang for minutes.
        c.set("socket.connection.setup.timeout.ms", "10000");
        c
    }

    /// These settings with `key=value` for the service's consumers (a default it needs,
    /// which `--kafka-set` still overrides; producers never see it, so librdkafka does not
    /// warn of a consumer property on a producer).
    pub fn with_consumer_default(&self, key: &str, value: &str) -> Self {
        let mut k = self.clone();
        k.consumer_defaults.push((key.to_string(), value.to_string()));
        k
    }

    fn apply_overrides(&self, c: &mut ClientConfig) {
        for (k, v) in &self.kafka_set {
            c.set(k, v);
        }
    }

    /// A service's producer: low latency, idempotent (no duplicates from retries), and no
    /// local delivery timeout, so that a record waits out a broker outage of any length in
    /// librdkafka's queue instead of failing (and a failed delivery then means something
    /// that will not heal, such as a fatal idempotence error).
    pub fn producer(&self) -> anyhow::Result<FutureProducer> {
        self.producer_with_timeout(0)
    }

    /// A client's producer (`parm produce`, the benchmark's load): like a service's, but a
    /// record not delivered within `timeout_ms` fails, so that a client does not wait
    /// forever for a broker that is not there.
    pub fn client_producer(&self, timeout_ms: u64) -> anyhow::Result<FutureProducer> {
        self.producer_with_timeout(timeout_ms.max(1))
    }

    /// A service's producer in exactly-once mode: like [`KafkaArgs::producer`], with
    /// transactional id `id` (see `crate::delivery`).
    pub fn transactional_producer(&self, id: &str, transaction_timeout_ms: u64) -> anyhow::Result<FutureProducer> {
        let mut c = self.producer_config(0);
        c.set("transactional.id", id)
            .set("transaction.timeout.ms", transaction_timeout_ms.to_string())
            // A transaction's next request while the coordinator still completes the last
            // commit (writes its markers, a millisecond or two) is answered
            // CONCURRENT_TRANSACTIONS, and librdkafka retries it after retry.backoff.ms (100
            // by default; AddPartitionsToTxn after a fixed 20 ms, which parm's patched
            // librdkafka caps at retry.backoff.ms: third_party/rdkafka-sys/PARM-PATCH.md).
            // Every transaction that followed a commit closely waited that long: at 600
            // queries/s, p50 140 ms at 20 ms, 48 ms at 10 and 41 ms at 2
            // (benchmarks/README.md, exactly-once). Other retries back off exponentially
            // from here, up to retry.backoff.max.ms.
            .set("retry.backoff.ms", "2");
        self.apply_overrides(&mut c);
        c.create().with_context(|| format!("creating a transactional Kafka producer for {}", self.brokers))
    }

    fn producer_with_timeout(&self, message_timeout_ms: u64) -> anyhow::Result<FutureProducer> {
        let mut c = self.producer_config(message_timeout_ms);
        self.apply_overrides(&mut c);
        c.create().with_context(|| format!("creating a Kafka producer for {}", self.brokers))
    }

    fn producer_config(&self, message_timeout_ms: u64) -> ClientConfig {
        let mut c = self.base_config();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("batch.num.messages", "1000")
            .set("compression.type", "none")
            .set("message.timeout.ms", message_timeout_ms.to_string());
        c
    }

    /// A consumer in `group` that stores offsets only when told to, and commits them in the
    /// background. It reports rebalances through [`RebalanceCounter`], and resumes the
    /// partitions a rebalance gives back where [`Positions`] (`consumer.context()`) says.
    pub fn consumer(&self, group: &str) -> anyhow::Result<(StreamConsumer<ParmContext>, RebalanceCounter)> {
        self.service_consumer(group, Delivery::AtLeastOnce)
    }

    /// A consumer like [`KafkaArgs::consumer`] for reading the results topic of a
    /// deployment in either delivery mode: it waits at most [`READ_COMMITTED_FETCH_WAIT_MS`]
    /// per fetch, as results written in transactions are not handed to a waiting fetch when
    /// their transaction commits.
    pub fn results_consumer(&self, group: &str) -> anyhow::Result<(StreamConsumer<ParmContext>, RebalanceCounter)> {
        let counter = RebalanceCounter::default();
        let consumer = self.build_consumer(group, counter.clone(), Positions::default(), Delivery::AtLeastOnce, READ_COMMITTED_FETCH_WAIT_MS)?;
        Ok((consumer, counter))
    }

    /// A service's consumer in `group`. At least once, as [`KafkaArgs::consumer`]. Exactly
    /// once, offsets are committed only inside transactions (never in the background), and
    /// every assignment starts at the committed offsets: the service drops its state at
    /// each rebalance (see `crate::delivery`).
    pub fn service_consumer(&self, group: &str, delivery: Delivery) -> anyhow::Result<(StreamConsumer<ParmContext>, RebalanceCounter)> {
        let counter = RebalanceCounter::default();
        let consumer = self.consumer_sharing(group, counter.clone(), Positions::default(), delivery)?;
        Ok((consumer, counter))
    }

    /// A consumer like [`KafkaArgs::service_consumer`] that reports to `counter` and resumes
    /// at `positions` (those of the consumer it replaces, see [`Rejoin`]).
    pub(crate) fn consumer_sharing(&self, group: &str, counter: RebalanceCounter, positions: Positions, delivery: Delivery) -> anyhow::Result<StreamConsumer<ParmContext>> {
        self.build_consumer(group, counter, positions, delivery, fetch_wait_ms(delivery))
    }

    fn build_consumer(&self, group: &str, counter: RebalanceCounter, positions: Positions, delivery: Delivery, fetch_wait_ms: u32) -> anyhow::Result<StreamConsumer<ParmContext>> {
        let mut c = self.base_config();
        let auto_commit = delivery == Delivery::AtLeastOnce;
        c.set("group.id", group)
            .set("enable.auto.commit", auto_commit.to_string())
            .set("auto.commit.interval.ms", "200")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
            .set("fetch.min.bytes", "1")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // Range keeps the decoder's three input topics co-partitioned per instance.
            .set("partition.assignment.strategy", "range")
            .set("statistics.interval.ms", "2000");
        if let Some(id) = &self.instance_id {
            c.set("group.instance.id", id);
        }
        for (k, v) in &self.consumer_defaults {
            c.set(k, v);
        }
        self.apply_overrides(&mut c);
        c.create_with_context(ParmContext { rebalances: counter, positions, group: group.to_string(), delivery })
            .with_context(|| format!("creating a Kafka consumer in group {group} for {}", self.brokers))
    }

    /// The transactional id of this instance in `group` (exactly once): stable across
    /// restarts with `--instance-id`, so a restarted instance fences its predecessor and
    /// aborts what it left open at once; without one, unique per process, and an instance
    /// that dies holds back readers of its outputs until --transaction-timeout-ms.
    pub fn transactional_id(&self, group: &str) -> String {
        match &self.instance_id {
            Some(id) => format!("{group}.{id}"),
            None => {
                let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
                format!("{group}.parm-{}-{nanos:08x}", std::process::id())
            }
        }
    }

    pub fn admin(&self) -> anyhow::Result<AdminClient<DefaultClientContext>> {
        let mut c = self.base_config();
        self.apply_overrides(&mut c);
        c.create().context("creating a Kafka admin client")
    }
}

/// Sends one record without waiting for its acknowledgement; retries while the local
/// queue is full. Await the returned future to know it was written.
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    key: &str,
    payload: &[u8],
    headers: OwnedHeaders,
) -> anyhow::Result<DeliveryFuture> {
    let mut record = FutureRecord::to(topic).key(key).payload(payload).headers(headers);
    if let Some(p) = partition {
        record = record.partition(p);
    }
    loop {
        match producer.send_result(record) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(5));
                tokio::task::yield_now().await;
            }
            Err((e, _)) => bail!("sending to {topic}: {e}"),
        }
    }
}

/// Waits for a record's acknowledgement.
pub async fn delivered(f: DeliveryFuture, topic: &str) -> anyhow::Result<(i32, i64)> {
    match f.await {
        Ok(Ok(d)) => Ok((d.partition, d.offset)),
        Ok(Err((e, _))) => Err(anyhow!("writing to {topic} failed: {e}")),
        Err(_) => Err(anyhow!("writing to {topic}: the producer was dropped")),
    }
}

/// Stores `(topic, partition, next offset, metadata)` entries for the next background
/// commit; the metadata is committed with the offset (see `crate::delivery`).
pub fn store_offsets_with_metadata<C: ConsumerContext>(consumer: &StreamConsumer<C>, offsets: &[(String, i32, i64, String)]) {
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, next, metadata) in offsets {
        let mut e = tpl.add_partition(topic, *partition);
        if e.set_offset(Offset::Offset(*next)).is_err() {
            continue;
        }
        e.set_metadata(metadata);
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        tracing::debug!(error = %e, "storing offsets (partition probably revoked)");
    }
}

/// Stores `(topic, partition, next offset)` entries for the next background commit.
/// Partitions no longer assigned are skipped (their new owner replays them).
pub fn store_offsets<C: ConsumerContext>(consumer: &StreamConsumer<C>, offsets: &[(String, i32, i64)]) {
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, next) in offsets {
        if tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)).is_err() {
            continue;
        }
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        tracing::debug!(error = %e, "storing offsets (partition probably revoked)");
    }
}

/// Reads a header as UTF-8; a missing, null or non-UTF-8 value is treated as absent.
pub fn header_str<'a, H: Headers>(headers: Option<&'a H>, key: &str) -> Option<&'a str> {
    let headers = headers?;
    headers.iter().find(|h| h.key == key).and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok())
}

/// Adds a UTF-8 header.
pub fn with_header(headers: OwnedHeaders, key: &str, value: &str) -> OwnedHeaders {
    headers.insert(Header { key, value: Some(value) })
}

/// A reader of `topic` from its current end, outside any consumer group's offsets: it only
/// sees what is written from now on (the results a worker can skip, the health reports an
/// encoder routes by). Its partitions are assigned by hand at their high watermarks, read
/// before it returns, so nothing written after that can be missed (a consumer group joining
/// "from the latest offset" settles its position only after the join, and a service stalled
/// meanwhile would miss what was written during the stall). `purpose` names its group.
///
/// With `gather_ms`, the broker holds each fetch up to that long to gather up to 64 KiB:
/// for a reader that may lag a little, one fetch per `gather_ms` instead of one per record
/// or two (a worker's reader of every result cost the broker more than the worker's own
/// input at 2,000 queries/s; benchmarks/README.md, throughput). `--kafka-set` still wins.
pub async fn tail_reader(args: &KafkaArgs, topic: &str, purpose: &str, gather_ms: Option<u32>) -> anyhow::Result<StreamConsumer<ParmContext>> {
    let partitions = partition_count(args, topic).await?;
    let mut kafka = args.clone();
    if let Some(ms) = gather_ms {
        let gather = [("fetch.wait.max.ms".to_string(), ms.to_string()), ("fetch.min.bytes".to_string(), "65536".to_string())];
        kafka.kafka_set.splice(0..0, gather);
    }
    kafka.kafka_set.push(("enable.auto.commit".into(), "false".into()));
    kafka.instance_id = None; // assigned by hand: not a group member
    let group = format!("{}-{purpose}-{}", kafka.topic_prefix, std::process::id());
    let (reader, _) = kafka.consumer(&group)?;
    // fetch_watermarks blocks on the broker: keep it off the runtime's async threads.
    let from_end = tokio::task::block_in_place(|| -> anyhow::Result<TopicPartitionList> {
        let mut from_end = TopicPartitionList::new();
        for p in 0..partitions {
            let (_, high) = reader
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .with_context(|| format!("reading the end of {topic}[{p}]"))?;
            from_end.add_partition_offset(topic, p, Offset::Offset(high))?;
        }
        Ok(from_end)
    })?;
    reader.assign(&from_end)?;
    Ok(reader)
}

/// How long the broker may hold a fetch that finds nothing new (`fetch.wait.max.ms`).
///
/// The broker answers a fetch as soon as `fetch.min.bytes` are there, so at least once this
/// only bounds how often an idle consumer polls: at 5 ms each sends 200 fetches/s, and a
/// benchmark deployment's 20-40 consumers then compete with the work for the CPU of a small
/// machine (benchmarks/README.md, pipeline overhead). Exactly once, records become readable
/// only when their transaction commits (the last stable offset moves), and a waiting
/// `read_committed` fetch was measured to be answered only at its timeout or at the next
/// append: with 100 ms, p50 at 20 queries/s was 33.5 ms against 25.5 ms with 5
/// (benchmarks/README.md, exactly-once).
pub fn fetch_wait_ms(delivery: Delivery) -> u32 {
    match delivery {
        Delivery::AtLeastOnce => 100,
        Delivery::ExactlyOnce => READ_COMMITTED_FETCH_WAIT_MS,
    }
}

/// The fetch wait of consumers that read transactional outputs ([`fetch_wait_ms`]).
pub const READ_COMMITTED_FETCH_WAIT_MS: u32 = 5;
