//! Reading back the answers already given, when a decoder gets partitions.
//!
//! The results topic is the changelog of answers. A decoder that takes over partitions (at
//! start, after a rebalance, or after a failed transaction) replays its inputs from the
//! committed offsets, and the join would answer again the queries of every group it meets.
//! So it first reads the answers written since `from_ms` into its [`Answers`], and never
//! writes a second answer for a query in there.
//!
//! What bounds the restore: the decoder commits, with its offsets, the time at which the
//! join first heard of the oldest group it held (`Join::oldest_since`, minus the late
//! linger and clock skew allowed). Every answer that a replay from those offsets could
//! repeat was given after that time, so the restore reads only the results written since:
//! about (hard deadline + late linger) × result rate, plus what was written while the
//! partitions were away. Reading stops at each partition's end (its last stable offset:
//! only committed answers count), or after [`MAX_RESTORE`].

use parm_common::kafka::KafkaArgs;
use parm_common::records::QueryResult;
use parm_common::{avro, now_ms};
use parm_core::answers::Answers;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// How long a restore may take before the decoder goes on with what it read.
pub const MAX_RESTORE: Duration = Duration::from_secs(20);

/// What a restore read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub answers: usize,
    pub took: Duration,
    /// Every partition was read to its end (false: [`MAX_RESTORE`] ran out).
    pub complete: bool,
}

/// Reads every answer written to `results` at or after `from_ms` into `answers`.
pub async fn restore(kafka: &KafkaArgs, results: &str, from_ms: i64, answers: &mut Answers) -> anyhow::Result<Restored> {
    let started = Instant::now();
    let partitions = parm_common::kafka::service_partition_count(kafka, results).await?;
    let mut reader_args = kafka.clone();
    reader_args.kafka_set.push(("enable.auto.commit".into(), "false".into()));
    reader_args.kafka_set.push(("enable.partition.eof".into(), "true".into()));
    reader_args.instance_id = None; // assigned by hand: not a group member
    let (reader, _) = reader_args.consumer(&format!("{}-restore-{}", kafka.topic_prefix, std::process::id()))?;
    let mut wanted = TopicPartitionList::new();
    for p in 0..partitions {
        wanted.add_partition_offset(results, p, Offset::Offset(from_ms.max(0)))?;
    }
    // offsets_for_times blocks on the broker: off the async threads.
    let start = tokio::task::block_in_place(|| reader.offsets_for_times(wanted, Duration::from_secs(10)))?;
    let mut assignment = TopicPartitionList::new();
    for e in start.elements() {
        // No record at or after the time: start at the end.
        let offset = match e.offset() {
            Offset::Offset(o) if o >= 0 => Offset::Offset(o),
            _ => Offset::End,
        };
        assignment.add_partition_offset(results, e.partition(), offset)?;
    }
    reader.assign(&assignment)?;
    let mut open: HashSet<i32> = (0..partitions).collect();
    let mut read = 0usize;
    let give_up = tokio::time::Instant::now() + MAX_RESTORE;
    while !open.is_empty() {
        let msg = tokio::select! {
            m = reader.recv() => m,
            _ = tokio::time::sleep_until(give_up) => break,
        };
        match msg {
            Ok(m) => {
                // An unreadable result was not written by a decoder: nothing to remember.
                if let Ok(r) = avro::decode::<QueryResult>(m.payload().unwrap_or_default()) {
                    answers.record(&r.query_id, r.sent_at_ms, now_ms());
                    read += 1;
                }
            }
            Err(KafkaError::PartitionEOF(p)) => {
                open.remove(&p);
            }
            Err(e) => parm_common::trouble::ride_out(e, "decoder", "restoring answers")?,
        }
    }
    let restored = Restored { answers: read, took: started.elapsed(), complete: open.is_empty() };
    metrics::histogram!(parm_common::metrics::names::DECODER_RESTORE_SECONDS).record(restored.took.as_secs_f64());
    if restored.complete {
        tracing::info!(answers = read, took_ms = restored.took.as_millis() as u64, from_ms, "restored the answers already given");
    } else {
        tracing::warn!(answers = read, unfinished = ?open, "restoring answers took longer than {MAX_RESTORE:?}; going on with what was read");
    }
    Ok(restored)
}
