//! Delivery modes: at-least-once (the default) and exactly-once through Kafka transactions.
//!
//! **At-least-once.** A service stores an input offset once everything it led to is
//! acknowledged (see [`crate::outbox`]); librdkafka commits stored offsets in the
//! background. A crash replays what was in flight, and the decoder's answered set
//! (restored from the results topic, see `parm_decoder::restore`) keeps a replayed query
//! from being answered twice.
//!
//! **Exactly-once** (`--delivery exactly-once`, Kafka Streams' `exactly_once_v2`). The
//! encoder and the decoder (and the workers with `--worker-transactions`) write their
//! outputs and their input offsets in one Kafka transaction
//! ([`Transactions::commit`], every `--commit-interval-ms`): a transactional producer,
//! `send_offsets_to_transaction` with the consumer's group metadata (KIP-447: a zombie
//! whose group generation is stale cannot commit), and `read_committed` consumers
//! everywhere. The transactional id is stable per instance (`GROUP.INSTANCE-ID`), so a
//! restarted instance fences its predecessor and aborts whatever it left open at once.
//!
//! By default the workers do not: a worker reads only committed queries and writes its
//! predictions at least once. A prediction is a pure function of its committed query (same
//! group, index and output on a replay), the decoder's join ignores a second prediction for
//! a member, and the decoder never answers a query twice (its answered set, restored from
//! the results topic), so a worker's replay after a crash reaches no client; and an answer
//! then waits for two commits on its path instead of three.
//!
//! What can go wrong, and what a service does about it:
//! - A rebalance: the open transaction is aborted and the service's state is dropped; every
//!   partition restarts at its committed offset ([`crate::rebalance`] does not resume own
//!   positions in this mode).
//! - A transaction error (abortable, or the broker aborted a transaction that outlived
//!   `--transaction-timeout-ms` during an outage, which fences the producer): the session
//!   ends and [`supervise`] (in [`crate::supervise`]) starts a fresh one (consumer, producer, state), as a restart
//!   would, without losing the process. More than [`MAX_RESTARTS`] in [`RESTART_WINDOW`]
//!   ends the service: then something is really wrong (another process with the same
//!   instance id fences this one at every start).

use crate::kafka::KafkaArgs;
use crate::outbox::Outbox;
pub use crate::supervise::{supervise, MAX_RESTARTS, RESTART_WINDOW};
use anyhow::{anyhow, bail, Context as _};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// How results are delivered (`--delivery`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// Offsets committed after outputs are acknowledged; a crash may replay what was in
    /// flight (the decoder suppresses answers it already gave).
    #[default]
    AtLeastOnce,
    /// Outputs and input offsets committed in one Kafka transaction; readers use
    /// `read_committed`.
    ExactlyOnce,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::AtLeastOnce => "at-least-once",
            Delivery::ExactlyOnce => "exactly-once",
        }
    }
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The delivery flags every service shares.
#[derive(clap::Args, Debug, Clone)]
pub struct DeliveryArgs {
    /// at-least-once (default) or exactly-once (Kafka transactions; the same on every
    /// service of a deployment, and clients then read with isolation.level=read_committed).
    #[arg(long, env = "PARM_DELIVERY", value_enum, default_value_t = Delivery::AtLeastOnce)]
    pub delivery: Delivery,
    /// Exactly-once: how often a service commits its transaction. Each hop's outputs become
    /// visible at its commit, so this adds up to one interval per hop to latency; shorter
    /// costs more commits (benchmarks/README.md, exactly-once).
    #[arg(long, env = "PARM_COMMIT_INTERVAL_MS", default_value_t = 10)]
    pub commit_interval_ms: u64,
    /// Exactly-once: how long the broker lets a transaction stay open before aborting it
    /// (`transaction.timeout.ms`). Bounds how long a crashed instance that is not restarted
    /// under the same --instance-id holds back readers of its outputs.
    #[arg(long, env = "PARM_TRANSACTION_TIMEOUT_MS", default_value_t = 10_000)]
    pub transaction_timeout_ms: u64,
}

impl DeliveryArgs {
    pub fn exactly_once(&self) -> bool {
        self.delivery == Delivery::ExactlyOnce
    }
}

/// How long one blocking transaction call may take before it is retried.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long input offsets with no new output wait to be committed. Each transaction
/// costs the broker several log writes, and a commit for offsets alone is frequent (the
/// decoder reads k + 1 predictions per group of k answers): committing those at once
/// doubled the decoder's transactions and queued the next answer behind them.
pub const OFFSETS_ONLY_INTERVAL: Duration = Duration::from_millis(200);
/// How much longer than the transaction timeout a flush waits for its records.
const FLUSH_MARGIN: Duration = Duration::from_secs(2);

/// One `(topic, partition, next offset, metadata)` to commit.
pub type CommitOffset = (String, i32, i64, String);

/// A transactional producer with one transaction always open, committed with the input
/// offsets on [`Transactions::commit`].
pub struct Transactions {
    producer: FutureProducer,
    id: String,
    interval: Duration,
    last_commit: Instant,
    /// When a due commit last found nothing to commit.
    last_idle_check: Instant,
    /// How long the last [`Transactions::flush`] waited (logged with the commit).
    flush_took: Duration,
    /// The coordinator aborts a transaction open longer than this (`transaction.timeout.ms`).
    timeout: Duration,
    /// What the last commit stored, to skip commits that would change nothing.
    committed: Vec<CommitOffset>,
    /// The outbox sequence at the last commit: anything sent since makes a commit due.
    sent_seq: u64,
}

impl Transactions {
    /// Creates the producer with transactional id `id`, fences any older producer with the
    /// same id (aborting what it left open), and opens the first transaction.
    pub fn start(kafka: &KafkaArgs, args: &DeliveryArgs, id: String) -> anyhow::Result<Self> {
        let producer = kafka.transactional_producer(&id, args.transaction_timeout_ms)?;
        tokio::task::block_in_place(|| -> anyhow::Result<()> {
            retry(|| producer.init_transactions(CALL_TIMEOUT), "initialising transactions")?;
            producer.begin_transaction().context("beginning a transaction")?;
            Ok(())
        })
        .with_context(|| format!("transactional id {id}"))?;
        tracing::info!(transactional_id = %id, interval_ms = args.commit_interval_ms, "exactly-once: transactions initialised");
        Ok(Self { producer, id, interval: Duration::from_millis(args.commit_interval_ms), last_commit: Instant::now(), last_idle_check: Instant::now(), flush_took: Duration::ZERO, timeout: Duration::from_millis(args.transaction_timeout_ms), committed: Vec::new(), sent_seq: 0 })
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// When the next commit is due: one commit interval after the last while records
    /// sent since wait to become visible; otherwise [`OFFSETS_ONLY_INTERVAL`] after it, as
    /// offsets alone (an input that made no output) change nothing a reader sees and
    /// only shorten a replay after a crash.
    pub fn due_at(&self, outbox: &Outbox) -> Instant {
        if self.has_sends(outbox) {
            self.last_commit + self.interval
        } else {
            self.last_commit.max(self.last_idle_check) + OFFSETS_ONLY_INTERVAL
        }
    }

    /// Whether anything was sent since the last commit.
    pub fn has_sends(&self, outbox: &Outbox) -> bool {
        outbox.next_seq() != self.sent_seq
    }

    /// Waits until every record of the open transaction is acknowledged, so that the outbox
    /// has released the inputs they came from and the offsets to commit are final. (Sending
    /// the offsets while records are still being added to the transaction makes the
    /// coordinator answer CONCURRENT_TRANSACTIONS, and librdkafka retries only after its
    /// backoff: measured, p90 went from 36 to 186 ms.)
    ///
    /// It waits on the records' own delivery futures and then until librdkafka counts
    /// nothing in flight, not on `Producer::flush`: with a `FutureProducer`, rust-rdkafka's
    /// flush (also the one inside `commit_transaction`) polls the event queue that the
    /// producer's own thread is already serving, and so waits a whole 100 ms poll whenever
    /// a record is in flight (measured: every commit took 100 ms more).
    ///
    /// A broker outage longer than the transaction timeout makes the coordinator abort the
    /// open transaction, and librdkafka then holds its records until the application aborts:
    /// waiting on them would hang the service. Past the timeout (and a margin) the session
    /// fails instead, and a fresh one starts from the committed offsets.
    pub async fn flush(&mut self, outbox: &mut Outbox) -> anyhow::Result<()> {
        let t = Instant::now();
        let patience = self.timeout.saturating_add(FLUSH_MARGIN);
        match tokio::time::timeout(patience, outbox.drain()).await {
            Ok(drained) => drained.context("a record of the open transaction was not written")?,
            Err(_) => bail!(
                "the records of the open transaction were not acknowledged within {patience:?}, past the transaction timeout: the coordinator has aborted it (a broker outage?); starting afresh from the committed offsets"
            ),
        }
        // A delivery future resolves just before librdkafka counts its record as done.
        while self.producer.in_flight_count() > 0 && t.elapsed() < Duration::from_millis(50) {
            tokio::task::yield_now().await;
        }
        self.flush_took = t.elapsed();
        Ok(())
    }

    /// Commits the open transaction with `offsets` (call [`Transactions::flush`] first) and
    /// opens the next. A commit that would change nothing is skipped. `consumer` gives the
    /// group metadata that fences a zombie (KIP-447).
    pub fn commit<C: ConsumerContext>(&mut self, consumer: &StreamConsumer<C>, outbox: &Outbox, offsets: Vec<CommitOffset>) -> anyhow::Result<()> {
        let sent = self.has_sends(outbox);
        if !sent && same_positions(&offsets, &self.committed) {
            // Nothing to commit; a record sent next is committed at once.
            self.last_idle_check = Instant::now();
            return Ok(());
        }
        let started = Instant::now();
        self.last_commit = started;
        let mut took = [Duration::ZERO; 3];
        tokio::task::block_in_place(|| -> anyhow::Result<()> {
            if !offsets.is_empty() {
                let mut tpl = TopicPartitionList::new();
                for (topic, partition, next, metadata) in &offsets {
                    let mut e = tpl.add_partition(topic, *partition);
                    e.set_offset(Offset::Offset(*next))?;
                    e.set_metadata(metadata.as_str());
                }
                let group = consumer.group_metadata().ok_or_else(|| anyhow!("the consumer has no group metadata"))?;
                retry(|| self.producer.send_offsets_to_transaction(&tpl, &group, CALL_TIMEOUT), "sending offsets to the transaction")?;
            }
            took[0] = started.elapsed();
            retry(|| self.producer.commit_transaction(CALL_TIMEOUT), "committing the transaction")?;
            took[1] = started.elapsed();
            self.producer.begin_transaction().context("beginning the next transaction")
        })
        .with_context(|| format!("transactional id {}", self.id))?;
        tracing::debug!(flush_us = self.flush_took.as_micros() as u64, offsets_us = took[0].as_micros() as u64, commit_us = took[1].as_micros() as u64, "committed a transaction");
        self.sent_seq = outbox.next_seq();
        self.committed = offsets;
        metrics::counter!(crate::metrics::names::TRANSACTIONS_COMMITTED).increment(1);
        metrics::histogram!(crate::metrics::names::TRANSACTION_COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Aborts the open transaction (its records are never seen by `read_committed`
    /// readers) and opens the next; for a rebalance, after which the service starts again
    /// from the committed offsets.
    pub fn abort(&mut self, outbox: &Outbox) -> anyhow::Result<()> {
        tokio::task::block_in_place(|| -> anyhow::Result<()> {
            retry(|| self.producer.abort_transaction(CALL_TIMEOUT), "aborting the transaction")?;
            self.producer.begin_transaction().context("beginning a transaction")
        })?;
        self.sent_seq = outbox.next_seq();
        self.committed.clear();
        metrics::counter!(crate::metrics::names::TRANSACTIONS_ABORTED).increment(1);
        Ok(())
    }

}

/// Whether two commits store the same positions: the metadata alone (the decoder's restore
/// bound moves with the clock) is not worth a transaction, as the older one still holds.
fn same_positions(a: &[CommitOffset], b: &[CommitOffset]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0 && x.1 == y.1 && x.2 == y.2)
}

/// A service's producer for `group`: exactly once, a transactional one with its open
/// transaction ([`Transactions::start`]); at least once, the idempotent one.
pub fn service_producer(kafka: &KafkaArgs, args: &DeliveryArgs, group: &str) -> anyhow::Result<(FutureProducer, Option<Transactions>)> {
    if args.exactly_once() {
        let txn = Transactions::start(kafka, args, kafka.transactional_id(group))?;
        Ok((txn.producer().clone(), Some(txn)))
    } else {
        Ok((kafka.producer()?, None))
    }
}

/// Runs a blocking transaction call again while librdkafka says it is retriable (a broker
/// outage makes every call time out until the broker is back). Any other error ends the
/// session: abortable ones after an abort is attempted by the session's end.
fn retry(mut call: impl FnMut() -> Result<(), KafkaError>, doing: &str) -> anyhow::Result<()> {
    let mut attempts = 0u32;
    loop {
        match call() {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(e)) if e.is_retriable() && !e.is_fatal() => {
                attempts = attempts.saturating_add(1);
                if attempts == 1 || attempts.is_multiple_of(6) {
                    tracing::warn!(attempts, error = %e, "{doing}: retrying (is the broker reachable?)");
                }
            }
            Err(KafkaError::Flush(rdkafka::error::RDKafkaErrorCode::OperationTimedOut)) => {
                attempts = attempts.saturating_add(1);
                if attempts == 1 || attempts.is_multiple_of(6) {
                    tracing::warn!(attempts, "{doing}: still waiting for acknowledgements (is the broker reachable?)");
                }
            }
            Err(e) => return Err(anyhow!("{doing}: {e}")),
        }
    }
}

/// `(topic, partition, committed offset if any, metadata)` of one assigned partition.
pub type Committed = (String, i32, Option<i64>, String);

/// The committed offsets and metadata of the partitions assigned to `consumer` now.
pub fn committed_metadata<C: ConsumerContext>(consumer: &StreamConsumer<C>) -> anyhow::Result<Vec<Committed>> {
    let assignment = consumer.assignment()?;
    let committed = tokio::task::block_in_place(|| consumer.committed_offsets(assignment, Duration::from_secs(10)))
        .context("reading the committed offsets")?;
    Ok(committed
        .elements()
        .iter()
        // rust-rdkafka panics on metadata that is not UTF-8 (parm writes only ASCII; another
        // writer of this group's offsets might not): such metadata counts as absent.
        .map(|e| {
            let metadata = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| e.metadata().to_string())).unwrap_or_default();
            (e.topic().to_string(), e.partition(), e.offset().to_raw().filter(|o| *o >= 0), metadata)
        })
        .collect())
}

/// A `key=value` field of commit metadata (`a=1;b=2`).
pub fn metadata_field(metadata: &str, key: &str) -> Option<i64> {
    metadata.split(';').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).and_then(|(_, v)| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_fields_are_found_by_key_and_garbage_is_absent() {
        assert_eq!(metadata_field("sent=42;x=1", "sent"), Some(42));
        assert_eq!(metadata_field("x=1;restore_from=-3", "restore_from"), Some(-3));
        assert_eq!(metadata_field("", "sent"), None);
        assert_eq!(metadata_field("sent=abc", "sent"), None);
        assert_eq!(metadata_field("sent", "sent"), None);
    }
}
