//! Kafka plumbing shared by the services: connection settings and topic names, producers
//! and consumers tuned for low latency, topic administration, offsets and headers.
//!
//! At least once (the default), consumers never auto-store offsets; a service stores an
//! offset only once everything it led to is acknowledged by the broker (see
//! `parm_core::offsets`), and librdkafka commits the stored offsets in the background and
//! on shutdown or revocation. Exactly once, offsets go only into the service's Kafka
//! transactions (see `crate::delivery`). Every consumer reads `read_committed`.

use anyhow::{anyhow, bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use crate::delivery::Delivery;
pub use crate::rebalance::{ParmContext, Positions, RebalanceCounter};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashSet;
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
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE (for example linger.ms=1)"))
}

/// The topic names of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub queries: String,
    pub model_queries: String,
    pub parity_queries: String,
    pub groups: String,
    pub predictions: String,
    pub parity_predictions: String,
    pub results: String,
    pub dead_letters: String,
    /// Workers' health reports (`--report-health`), read by an encoder that routes by them.
    pub health: String,
}

impl Topics {
    pub fn with_prefix(prefix: &str) -> Self {
        let t = |name: &str| format!("{prefix}.{name}");
        Self {
            queries: t("queries"),
            model_queries: t("model-queries"),
            parity_queries: t("parity-queries"),
            groups: t("groups"),
            predictions: t("predictions"),
            parity_predictions: t("parity-predictions"),
            results: t("results"),
            dead_letters: t("dead-letters"),
            health: t("health"),
        }
    }
}

/// Partition counts of a deployment's topics.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct TopicLayout {
    /// Partitions of the queries topic (how many encoders can share the input).
    #[arg(long, env = "PARM_QUERY_PARTITIONS", default_value_t = 2)]
    pub query_partitions: i32,
    /// Partitions of model-queries: one per model worker, so that the k members of a group
    /// land on k different workers.
    #[arg(long, env = "PARM_MODEL_PARTITIONS", default_value_t = 4)]
    pub model_partitions: i32,
    /// Partitions of parity-queries: one per parity worker.
    #[arg(long, env = "PARM_PARITY_PARTITIONS", default_value_t = 2)]
    pub parity_partitions: i32,
    /// Partitions of the decoder's inputs (groups, predictions, parity-predictions, all
    /// the same count so that one decoder sees a whole group) and of results.
    #[arg(long, env = "PARM_DECODER_PARTITIONS", default_value_t = 2)]
    pub decoder_partitions: i32,
}

impl KafkaArgs {
    pub fn topics(&self) -> Topics {
        Topics::with_prefix(&self.topic_prefix)
    }

    fn base_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        // The pid tells the members of a consumer group apart (see `parm::launch`).
        c.set("client.id", format!("parm-{}", std::process::id()));
        // Connections to a local broker: fail fast enough to say so, not hang for minutes.
        c.set("socket.connection.setup.timeout.ms", "10000");
        c
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
            // commit is answered CONCURRENT_TRANSACTIONS; librdkafka retries AddOffsetsToTxn
            // after retry.backoff.ms (100 by default), which made short commit intervals
            // stall (benchmarks/README.md, exactly-once).
            .set("retry.backoff.ms", "10");
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
    fn consumer_sharing(&self, group: &str, counter: RebalanceCounter, positions: Positions, delivery: Delivery) -> anyhow::Result<StreamConsumer<ParmContext>> {
        let mut c = self.base_config();
        let auto_commit = delivery == Delivery::AtLeastOnce;
        c.set("group.id", group)
            .set("enable.auto.commit", auto_commit.to_string())
            .set("auto.commit.interval.ms", "200")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            // The broker answers a fetch as soon as fetch.min.bytes are there, so this only
            // bounds how often an idle consumer polls: at 5 ms each sends 200 fetches/s, and a
            // benchmark deployment's 20-40 consumers then compete with the work for the CPU
            // of a small machine (benchmarks/README.md, pipeline overhead).
            .set("fetch.wait.max.ms", "100")
            .set("fetch.min.bytes", "1")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // Range keeps the decoder's three input topics co-partitioned per instance.
            .set("partition.assignment.strategy", "range")
            .set("statistics.interval.ms", "2000");
        if let Some(id) = &self.instance_id {
            c.set("group.instance.id", id);
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

/// Creates the deployment's topics with the given layout; existing topics are kept if their
/// partition counts match, and reported otherwise.
pub async fn create_topics(args: &KafkaArgs, layout: &TopicLayout) -> anyhow::Result<()> {
    let t = args.topics();
    let wanted = [
        (&t.queries, layout.query_partitions),
        (&t.model_queries, layout.model_partitions),
        (&t.parity_queries, layout.parity_partitions),
        (&t.groups, layout.decoder_partitions),
        (&t.predictions, layout.decoder_partitions),
        (&t.parity_predictions, layout.decoder_partitions),
        (&t.results, layout.decoder_partitions),
        (&t.dead_letters, 1),
        (&t.health, 1),
    ];
    let admin = args.admin()?;
    let new: Vec<NewTopic> = wanted
        .iter()
        // -1: the brokers' default replication factor (1 on a single node, 3 on the
        // three-broker compose cluster).
        .map(|(name, p)| NewTopic::new(name.as_str(), *p, TopicReplication::Fixed(-1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .with_context(|| format!("creating topics on {} (is the broker running? try scripts/kafka-local start)", args.brokers))?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                let want = wanted.iter().find(|(n, _)| **n == name).map(|(_, p)| *p).unwrap_or(0);
                let have = partition_count(args, &name).await?;
                if have != want {
                    bail!("topic {name} exists with {have} partitions but the layout asks for {want}; delete it or use another --topic-prefix");
                }
            }
            Err((name, e)) => bail!("creating topic {name}: {e}"),
        }
    }
    for (name, want) in wanted {
        wait_for_topic(args, name, want).await?;
    }
    Ok(())
}

/// Waits until the broker's metadata shows `topic` with `want` partitions. A topic the
/// controller has just created can be missing from a broker's metadata for a moment
/// (seconds on a broker that has only just started), and a service started in that window
/// would refuse to run.
async fn wait_for_topic(args: &KafkaArgs, topic: &str, want: i32) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match partition_count(args, topic).await {
            Ok(have) if have == want => return Ok(()),
            result if tokio::time::Instant::now() >= deadline => {
                let seen = result.map(|p| format!("{p} partitions")).unwrap_or_else(|e| format!("{e:#}"));
                bail!("topic {topic} was created but its metadata still shows {seen} after 30 s, not {want} partitions");
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The number of partitions of a topic (fails if it does not exist, or if the broker
/// does not answer within 10 s).
pub async fn partition_count(args: &KafkaArgs, topic: &str) -> anyhow::Result<i32> {
    partition_count_within(args, topic, Duration::ZERO).await
}

/// How long a starting service waits for a broker that does not answer (one restarted
/// while the broker is down, or started before it).
pub const START_PATIENCE: Duration = Duration::from_secs(300);

/// [`partition_count`], for a starting service: a broker that does not answer is waited
/// for up to [`START_PATIENCE`]; a topic that does not exist still fails at once.
pub async fn service_partition_count(args: &KafkaArgs, topic: &str) -> anyhow::Result<i32> {
    partition_count_within(args, topic, START_PATIENCE).await
}

async fn partition_count_within(args: &KafkaArgs, topic: &str, patience: Duration) -> anyhow::Result<i32> {
    let started = tokio::time::Instant::now();
    let mut attempts = 0u32;
    loop {
        let (a, t) = (args.clone(), topic.to_string());
        match tokio::task::spawn_blocking(move || fetch_partition_count(&a, &t)).await? {
            Ok(n) => return Ok(n),
            Err(Fetch::Missing(e)) => return Err(e),
            Err(Fetch::Unreachable(e)) if started.elapsed() >= patience => return Err(e),
            Err(Fetch::Unreachable(e)) => {
                if attempts.is_multiple_of(6) {
                    tracing::warn!(error = %format!("{e:#}"), "the broker does not answer yet; waiting for it (up to {patience:?})");
                }
                attempts = attempts.saturating_add(1);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Why a topic's partition count could not be read.
enum Fetch {
    /// No answer from the broker: may heal.
    Unreachable(anyhow::Error),
    /// The broker says the topic does not exist.
    Missing(anyhow::Error),
}

fn fetch_partition_count(args: &KafkaArgs, topic: &str) -> Result<i32, Fetch> {
    let consumer: BaseConsumer = args.base_config().create().map_err(|e| Fetch::Missing(e.into()))?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading metadata of {topic} from {}", args.brokers))
        .map_err(Fetch::Unreachable)?;
    let t = md.topics().first().ok_or_else(|| Fetch::Unreachable(anyhow!("no metadata for {topic}")))?;
    if t.error().is_some() || t.partitions().is_empty() {
        return Err(Fetch::Missing(anyhow!("topic {topic} does not exist: create the topics first with `parm topics create`")));
    }
    Ok(t.partitions().len() as i32)
}

/// A reader of `topic` from its current end, outside any consumer group's offsets: it only
/// sees what is written from now on (the results a worker can skip, the health reports an
/// encoder routes by). Its partitions are assigned by hand at their high watermarks, read
/// before it returns, so nothing written after that can be missed (a consumer group joining
/// "from the latest offset" settles its position only after the join, and a service stalled
/// meanwhile would miss what was written during the stall). `purpose` names its group.
pub async fn tail_reader(args: &KafkaArgs, topic: &str, purpose: &str) -> anyhow::Result<StreamConsumer<ParmContext>> {
    let partitions = partition_count(args, topic).await?;
    let mut kafka = args.clone();
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

/// Rejoins a consumer group after the broker fenced this static member.
///
/// With `--instance-id`, a broker restart or a coordinator moving to another broker can
/// leave the group coordinator holding an old member id for this instance; librdkafka then
/// reports `FENCED_INSTANCE_ID`, a fatal consumer error, although no other process has the
/// id. A fresh consumer with the same instance id takes the membership back, as a
/// restarted process would. It shares the old one's rebalance counter and positions, so the
/// service sees a rebalance, resumes every partition it gets back where it left off and
/// keeps its state: no replay, no duplicate. While a coordinator settles, the fresh one can
/// be fenced again; each rejoin waits a little longer (up to 5 s). More than
/// [`Rejoin::MAX_FENCINGS`] within [`Rejoin::WINDOW`] means another process really has
/// the id (two such processes fence each other at every join), and ends the service.
#[derive(Debug)]
pub struct Rejoin {
    group: String,
    topics: Vec<String>,
    fenced_at: std::collections::VecDeque<std::time::Instant>,
    /// A fencing was noticed and the consumer not yet replaced.
    pending: bool,
}

impl Rejoin {
    pub const MAX_FENCINGS: usize = 5;
    pub const WINDOW: Duration = Duration::from_secs(600);

    pub fn new(group: &str, topics: &[&str]) -> Self {
        Self { group: group.to_string(), topics: topics.iter().map(|t| t.to_string()).collect(), fenced_at: Default::default(), pending: false }
    }

    /// Whether a consumer error is this member's fencing; if so, [`Rejoin::pending`] holds
    /// until [`Rejoin::rejoin`]. A service loop notices it where it reads, and rejoins
    /// where no message borrows the consumer.
    pub fn noticed(&mut self, consumer: &StreamConsumer<ParmContext>, e: &KafkaError) -> bool {
        let fenced = fenced(consumer, e);
        self.pending |= fenced;
        fenced
    }

    pub fn pending(&self) -> bool {
        self.pending
    }

    /// Replaces a fenced consumer with a fresh member of the same group and topics.
    pub fn rejoin(&mut self, kafka: &KafkaArgs, old: StreamConsumer<ParmContext>, service: &str) -> anyhow::Result<StreamConsumer<ParmContext>> {
        self.pending = false;
        let now = std::time::Instant::now();
        while self.fenced_at.front().is_some_and(|t| now.duration_since(*t) > Self::WINDOW) {
            self.fenced_at.pop_front();
        }
        self.fenced_at.push_back(now);
        let times = self.fenced_at.len();
        if times > Self::MAX_FENCINGS {
            bail!(
                "{service}: fenced {times} times within {:?}: another process joined group {} with the same --instance-id; give every instance its own id",
                Self::WINDOW,
                self.group
            );
        }
        tracing::warn!(%service, group = %self.group, times, "the broker fenced this static member (a stale member id after a broker restart or a coordinator move); rejoining with a fresh consumer");
        let (counter, positions, delivery) = (old.context().rebalances.clone(), old.context().positions.clone(), old.context().delivery);
        let backoff = Duration::from_millis(500 * times as u64).min(Duration::from_secs(5));
        // Closing a fenced consumer talks to no coordinator; and a fenced member has no
        // input to serve while it waits: both off the async threads.
        tokio::task::block_in_place(|| {
            drop(old);
            std::thread::sleep(backoff);
        });
        let fresh = kafka.consumer_sharing(&self.group, counter, positions, delivery)?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        fresh.subscribe(&topics).with_context(|| format!("subscribing again to {topics:?}"))?;
        Ok(fresh)
    }
}

/// Whether a consumer error means the broker fenced this static member (the error itself
/// says so, or it is the generic fatal error and the client's fatal error is the fencing).
fn fenced(consumer: &StreamConsumer<ParmContext>, e: &KafkaError) -> bool {
    crate::trouble::is_fenced_instance(e)
        || (matches!(e, KafkaError::MessageConsumptionFatal(_))
            && consumer.client().fatal_error().is_some_and(|(code, _)| code == RDKafkaErrorCode::FencedInstanceId))
}

/// What a rebalance changed for a service, once it sees the new assignment.
#[derive(Debug, Default)]
pub struct Reassignment {
    /// Partitions assigned now (the ones this instance held before resume where it was).
    pub assigned: HashSet<(String, i32)>,
    /// Partitions assigned now that this instance held state for: they resume where it
    /// left off. The others start from the committed offset.
    pub resumed: HashSet<(String, i32)>,
    /// Partitions this instance held state for and no longer owns: drop that state.
    pub dropped: Vec<(String, i32)>,
}

/// Reads the consumer's assignment after a rebalance and forgets the positions of the
/// partitions it lost (see `rebalance`).
pub fn reassigned(consumer: &StreamConsumer<ParmContext>) -> Reassignment {
    let assigned: HashSet<(String, i32)> = consumer
        .assignment()
        .map(|tpl| tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect())
        .unwrap_or_default();
    let positions = consumer.context().positions();
    let resumed = assigned.iter().filter(|(t, p)| positions.holds(t, *p)).cloned().collect();
    let dropped = positions.retain(&assigned);
    if !dropped.is_empty() {
        tracing::info!(?dropped, "partitions moved to another instance: their state is dropped");
    }
    Reassignment { assigned, resumed, dropped }
}

/// Records that a message was read, so that a rebalance that gives its partition back
/// resumes after it.
pub fn consumed(consumer: &StreamConsumer<ParmContext>, msg: &rdkafka::message::BorrowedMessage<'_>) {
    use rdkafka::Message;
    consumer.context().positions().consumed(msg.topic(), msg.partition(), msg.offset());
}
