//! Sends whose acknowledgement gates offset commits.
//!
//! A service hands the outbox every batch of records it produced for some inputs. The
//! outbox numbers batches, waits for their acknowledgements, and releases the inputs'
//! holds in its [`OffsetTracker`] only once the broker has them, so a commit never passes
//! an input whose outputs could still be lost. [`Outbox::acked_before`] tells which batches
//! are all acknowledged, for services (the decoder) that snapshot offsets themselves.

use crate::kafka::delivered;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use parm_core::offsets::{OffsetTracker, Origin};
use rdkafka::producer::DeliveryFuture;
use std::collections::BTreeSet;

/// A batch of sends that finished: its sequence number, the inputs it held, and whether every send was acknowledged.
type Done = (u64, Vec<Origin>, anyhow::Result<()>);

/// In-flight produce batches and the input offsets they hold.
#[derive(Default)]
pub struct Outbox {
    next_seq: u64,
    pending: BTreeSet<u64>,
    inflight: FuturesUnordered<BoxFuture<'static, Done>>,
    pub tracker: OffsetTracker,
}

impl Outbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tracks a batch of sends made for `origins`, which the caller held in
    /// [`Outbox::tracker`] when it read them; they are released once every send is
    /// acknowledged. Returns the batch's sequence number.
    pub fn push(&mut self, origins: Vec<Origin>, sends: Vec<(DeliveryFuture, String)>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.insert(seq);
        self.inflight.push(Box::pin(async move {
            for (f, topic) in sends {
                if let Err(e) = delivered(f, &topic).await {
                    return (seq, origins, Err(e));
                }
            }
            (seq, origins, Ok(()))
        }));
        seq
    }

    /// Waits for the next batch to be acknowledged (pending forever when none is in flight,
    /// so it can sit in a `select!`). An error means records may be lost: the caller should
    /// stop without committing past them, so that a restart replays them.
    pub async fn next_done(&mut self) -> anyhow::Result<()> {
        match self.inflight.next().await {
            Some((seq, origins, result)) => {
                self.pending.remove(&seq);
                if result.is_ok() {
                    for o in origins {
                        self.tracker.release(o);
                    }
                }
                result
            }
            None => std::future::pending().await,
        }
    }

    /// Every batch numbered below this is acknowledged.
    pub fn acked_before(&self) -> u64 {
        self.pending.first().copied().unwrap_or(self.next_seq)
    }

    /// The sequence number the next batch will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Waits for every batch in flight; returns the first error.
    pub async fn drain(&mut self) -> anyhow::Result<()> {
        let mut first_err = None;
        while !self.pending.is_empty() {
            if let Err(e) = self.next_done().await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
