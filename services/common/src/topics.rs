//! A deployment's topics: their names, their partition layout, creating them, and reading
//! how many partitions one has (waiting for a broker that is not up yet, for a starting
//! service).

use crate::kafka::KafkaArgs;
use anyhow::{anyhow, bail, Context as _};
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::time::Duration;

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
