//! The consumer context: rebalances that keep a service's state, and consumer lag.
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

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
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
