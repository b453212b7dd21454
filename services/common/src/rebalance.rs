//! The consumer context: rebalances that keep a service's state, and consumer lag; and
//! what a service does when its group membership changes under it ([`reassigned`],
//! [`Rejoin`] after a fencing).
//!
//! A rebalance does not have to throw a service's state away. When the group hands an
//! instance back partitions it held before (a broker restart, a session that timed out
//! during an outage, a static member rejoining), the instance resumes each one where it
//! left off, recorded in [`Positions`], instead of at the group's committed offset, which
//! trails on purpose (an offset is committed only once everything it led to is written).
//! The state built from those partitions (open groups, the decoder's join) stays valid,
//! so nothing already answered is replayed as new. Partitions that went to another
//! instance are forgotten, and their new owner replays them from the committed offsets.
//!
//! Exactly once (`crate::delivery`), an assignment never resumes at own positions: the
//! service aborts its open transaction, drops its state and restarts every partition at
//! its committed offset, which the transactions keep in step with what was written.

use crate::kafka::KafkaArgs;
use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::BorrowedMessage;
use std::time::Duration;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counts rebalances, so a service loop can notice that its assignment changed.
#[derive(Debug, Clone, Default)]
pub struct RebalanceCounter(Arc<AtomicU64>);

impl RebalanceCounter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    /// Whether a rebalance happened since `seen`, which it then moves to now.
    pub fn moved(&self, seen: &mut u64) -> bool {
        let now = self.get();
        std::mem::replace(seen, now) != now
    }
}

/// The next offset to read of every partition this instance holds state for: where it
/// resumes if a rebalance gives the partition back.
#[derive(Debug, Clone, Default)]
pub struct Positions(Arc<Mutex<HashMap<String, HashMap<i32, i64>>>>);

impl Positions {
    /// Records that `offset` of a partition was read (and will be handled).
    /// Called for every message, so it allocates only the first time a topic is seen.
    pub fn consumed(&self, topic: &str, partition: i32, offset: i64) {
        let Ok(mut map) = self.0.lock() else { return };
        let next = offset.saturating_add(1);
        match map.get_mut(topic) {
            Some(parts) => {
                let at = parts.entry(partition).or_insert(next);
                *at = (*at).max(next);
            }
            None => {
                map.insert(topic.to_string(), HashMap::from([(partition, next)]));
            }
        }
    }

    /// Forgets every partition not in `kept` (the service dropped its state for them);
    /// returns the `(topic, partition)`s forgotten.
    pub fn retain(&self, kept: &HashSet<(String, i32)>) -> Vec<(String, i32)> {
        let Ok(mut map) = self.0.lock() else { return Vec::new() };
        let mut gone = Vec::new();
        for (topic, parts) in map.iter_mut() {
            parts.retain(|p, _| {
                let keep = kept.contains(&(topic.clone(), *p));
                if !keep {
                    gone.push((topic.clone(), *p));
                }
                keep
            });
        }
        gone.sort();
        gone
    }

    /// Whether this instance holds state for a partition.
    pub fn holds(&self, topic: &str, partition: i32) -> bool {
        self.get(topic, partition).is_some()
    }

    fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0.lock().ok()?.get(topic)?.get(&partition).copied()
    }
}

/// The consumer context of every parm consumer.
pub struct ParmContext {
    pub(crate) rebalances: RebalanceCounter,
    pub(crate) positions: Positions,
    pub(crate) group: String,
    /// Exactly once, an assignment never resumes at own positions: the service drops its
    /// state at every rebalance and restarts from the committed offsets.
    pub(crate) delivery: crate::delivery::Delivery,
}

impl ParmContext {
    /// Where this instance resumes each partition it keeps state for.
    pub fn positions(&self) -> &Positions {
        &self.positions
    }
}

impl ClientContext for ParmContext {
    /// rust-rdkafka's own handler, except for the end of a partition: a reader that asks
    /// for it (`enable.partition.eof`, the decoder's restore) gets it as a message error
    /// too, and it is no error.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let eof = matches!(error, rdkafka::error::KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if !eof {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }

    /// librdkafka's statistics (every `statistics.interval.ms`) carry the consumer lag of
    /// each assigned partition; they arrive on its own thread, off the service loop.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 || p.consumer_lag < 0 {
                    continue; // the internal UA partition, or not consumed yet
                }
                metrics::gauge!(crate::metrics::names::CONSUMER_LAG,
                    "group" => self.group.clone(), "topic" => topic.clone(), "partition" => partition.to_string())
                .set(p.consumer_lag as f64);
            }
        }
    }
}

impl ConsumerContext for ParmContext {
    /// rust-rdkafka's own handler, except that an assignment starts each partition this
    /// instance still holds state for at its own position (see the module docs). The
    /// counter moves *before* the assignment changes, so no message of a new assignment can
    /// be seen under the old count.
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        self.rebalances.0.fetch_add(1, Ordering::SeqCst);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut resumed = Vec::new();
                let resume = self.delivery == crate::delivery::Delivery::AtLeastOnce;
                for e in tpl.elements().into_iter().filter(|_| resume) {
                    if let Some(next) = self.positions.get(e.topic(), e.partition()) {
                        resumed.push((e.topic().to_string(), e.partition(), next));
                    }
                }
                for (topic, partition, next) in &resumed {
                    if let Err(e) = tpl.set_partition_offset(topic, *partition, Offset::Offset(*next)) {
                        tracing::warn!(%topic, partition, error = %e, "could not resume at this instance's own position");
                    }
                }
                tracing::info!(partitions = ?describe(tpl), resumed = resumed.len(), "assigned");
                if let Err(e) = consumer.assign(tpl) {
                    tracing::error!(error = %e, "applying the assignment failed; librdkafka will retry the rebalance");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                tracing::info!(partitions = ?describe(tpl), lost, "revoked");
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "dropping the assignment failed");
                }
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::warn!(error = %code, "rebalance error; librdkafka rejoins the group by itself");
                let _ = consumer.unassign();
            }
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> Vec<String> {
    tpl.elements().iter().map(|e| format!("{}[{}]", e.topic(), e.partition())).collect()
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

    /// What a read gives a service loop: the message, or `None` after an error that is
    /// ridden out: a transient one (logged by `trouble::ride_out`), or this member's
    /// fencing (then [`Rejoin::pending`] holds). An error that is fatal ends the service.
    pub fn readable<'a>(
        &mut self,
        read: KafkaResult<BorrowedMessage<'a>>,
        consumer: &StreamConsumer<ParmContext>,
        service: &str,
        doing: &str,
    ) -> anyhow::Result<Option<BorrowedMessage<'a>>> {
        match read {
            Ok(m) => Ok(Some(m)),
            Err(e) if self.noticed(consumer, &e) => Ok(None),
            Err(e) => crate::trouble::ride_out(e, service, doing).map(|()| None),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_keep_the_next_offset_and_forget_what_is_not_kept() {
        let p = Positions::default();
        p.consumed("a", 0, 5);
        p.consumed("a", 0, 3);
        p.consumed("a", 1, 9);
        assert_eq!(p.get("a", 0), Some(6));
        let gone = p.retain(&HashSet::from([("a".to_string(), 0)]));
        assert_eq!(gone, vec![("a".to_string(), 1)]);
        assert_eq!(p.get("a", 1), None);
        assert_eq!(p.get("a", 0), Some(6));
    }
}
