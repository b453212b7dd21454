//! A worker's health reports: whether it is slow right now, for an encoder that keeps
//! coding groups away from slow workers (`parm encoder --route-by-health`).
//!
//! A worker knows it is slow only by timing its own batches: it is slow while the batch in
//! service has run past `slow_after_ms`, and after a slow batch until it finishes a fast
//! one or sits idle for `slow_after_ms` (an idle worker takes new work at once, whatever its
//! last batch took). Batches whose queries were all skipped did no work and say nothing.
//! So a slowdown is noticed `slow_after_ms` into its first batch, whatever its cause (the
//! benchmark's injected episodes, a CPU hog, a sick machine), without asking the cause.
//!
//! The reporter sends a [`WorkerHealth`] record to `PREFIX.health` when the state changes
//! and once a second (so an encoder that starts late learns it), from a task of its own:
//! a batch stuck in a long inference is reported while it runs. The task wakes only when
//! the state can change (a batch starts or ends, a batch reaches `slow_after_ms`, an idle
//! spell does) or a repeat is due: on a machine short of CPU, a worker that polled its own
//! state every few milliseconds would take CPU from the broker and the other services.

use parm_common::avro;
use parm_common::now_ms;
use parm_common::records::WorkerHealth;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often an unchanged state is repeated.
const REPEAT_MS: u64 = 1000;

/// The timing of a worker's batches, and the rule that makes it slow (pure, for tests).
#[derive(Debug, Clone)]
pub struct Timing {
    slow_after_ms: u64,
    busy_since: Option<u64>,
    last_slow: bool,
    idle_since: u64,
}

impl Timing {
    pub fn new(slow_after_ms: u64) -> Self {
        Self { slow_after_ms, busy_since: None, last_slow: false, idle_since: 0 }
    }

    /// A batch starts at `now`.
    pub fn begin(&mut self, now: u64) {
        self.busy_since = Some(now);
    }

    /// The batch ended at `now`; `worked` is false when all its queries were skipped.
    pub fn end(&mut self, now: u64, worked: bool) {
        if let (Some(since), true) = (self.busy_since, worked) {
            self.last_slow = now.saturating_sub(since) >= self.slow_after_ms;
        }
        self.busy_since = None;
        self.idle_since = now;
    }

    pub fn busy_since(&self) -> Option<u64> {
        self.busy_since
    }

    /// When, after `now`, [`Self::is_slow`] would change by the passing of time alone, if
    /// it would.
    pub fn next_change(&self, now: u64) -> Option<u64> {
        let at = match self.busy_since {
            Some(since) if !self.last_slow => since + self.slow_after_ms,
            None if self.last_slow => self.idle_since + self.slow_after_ms,
            _ => return None,
        };
        (at > now).then_some(at)
    }

    pub fn is_slow(&self, now: u64) -> bool {
        match self.busy_since {
            Some(since) => self.last_slow || now.saturating_sub(since) >= self.slow_after_ms,
            None => self.last_slow && now.saturating_sub(self.idle_since) < self.slow_after_ms,
        }
    }
}

/// What the reporter task shares with the worker loop.
#[derive(Debug)]
struct Shared {
    timing: Timing,
    partitions: Vec<i32>,
}

/// Sends this worker's health reports until dropped.
pub struct HealthReporter {
    shared: Arc<Mutex<Shared>>,
    /// Wakes the reporter when a batch starts or ends.
    wake: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl HealthReporter {
    pub fn spawn(producer: FutureProducer, topic: String, worker: String, role: &'static str, slow_after_ms: u64) -> Self {
        let shared = Arc::new(Mutex::new(Shared { timing: Timing::new(slow_after_ms), partitions: Vec::new() }));
        let state = shared.clone();
        let wake = Arc::new(tokio::sync::Notify::new());
        let woken = wake.clone();
        let task = tokio::spawn(async move {
            let mut last: Option<(bool, u64)> = None;
            loop {
                let now = now_ms();
                let (report, next_change) = {
                    let s = state.lock().expect("health state");
                    let slow = s.timing.is_slow(now);
                    let due = !last.is_some_and(|(was, at)| was == slow && now < at + REPEAT_MS);
                    let report = due.then(|| WorkerHealth {
                        worker: worker.clone(),
                        role: role.to_string(),
                        partitions: s.partitions.clone(),
                        slow,
                        busy_since_ms: s.timing.busy_since().map(|t| t as i64),
                        at_ms: now as i64,
                    });
                    (report, s.timing.next_change(now))
                };
                if let Some(report) = report {
                    last = Some((report.slow, now));
                    send(&producer, &topic, &report);
                }
                let repeat_at = last.map_or(now, |(_, at)| at + REPEAT_MS);
                let wake_at = next_change.map_or(repeat_at, |t| t.min(repeat_at)).max(now + 1);
                tokio::select! {
                    _ = woken.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(wake_at - now)) => {}
                }
            }
        });
        Self { shared, wake, task }
    }

    pub fn begin(&self, now: u64) {
        self.shared.lock().expect("health state").timing.begin(now);
        self.wake.notify_one();
    }

    pub fn end(&self, now: u64, worked: bool) {
        self.shared.lock().expect("health state").timing.end(now, worked);
        self.wake.notify_one();
    }

    /// The partitions this worker owns now.
    pub fn set_partitions(&self, partitions: Vec<i32>) {
        self.shared.lock().expect("health state").partitions = partitions;
    }

    /// Whether every one of `partitions` is among those it reports.
    pub fn owns(&self, mut partitions: impl Iterator<Item = i32>) -> bool {
        let s = self.shared.lock().expect("health state");
        partitions.all(|p| s.partitions.contains(&p))
    }
}

impl Drop for HealthReporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Queues a report without waiting for it: a lost report costs routing quality, never data.
fn send(producer: &FutureProducer, topic: &str, report: &WorkerHealth) {
    let payload = match avro::encode(report) {
        Ok(p) => p,
        Err(e) => return tracing::warn!("cannot encode a health report: {e:#}"),
    };
    if let Err((e, _)) = producer.send_result(FutureRecord::to(topic).key(&report.worker).payload(&payload)) {
        tracing::warn!(topic, "health report not sent: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_while_a_batch_overruns_and_until_a_fast_batch_or_an_idle_spell() {
        let mut t = Timing::new(80);
        assert!(!t.is_slow(0), "a fresh worker is healthy");
        t.begin(100);
        assert_eq!(t.next_change(100), Some(180), "wake when the batch reaches 80 ms");
        assert_eq!(t.next_change(180), None, "past it: slow until the batch ends");
        assert!(!t.is_slow(179));
        assert!(t.is_slow(180), "the batch in service has run 80 ms");
        t.end(250, true);
        assert!(t.is_slow(260), "just finished a slow batch");
        t.begin(260);
        assert!(t.is_slow(270), "still slow until a batch is fast");
        t.end(300, true);
        assert!(!t.is_slow(300), "a 40 ms batch: healthy again");
        assert_eq!(t.next_change(300), None, "idle and healthy: time alone changes nothing");

        t.begin(400);
        t.end(500, true);
        assert_eq!(t.next_change(500), Some(580), "wake when the idle spell clears it");
        assert!(t.is_slow(579));
        assert!(!t.is_slow(580), "idle for 80 ms after a slow batch: healthy");

        // A batch whose queries were all skipped says nothing about speed.
        t.begin(600);
        t.end(700, true);
        t.begin(701);
        t.end(702, false);
        t.begin(703);
        assert!(t.is_slow(704), "the skip-only batch did not clear the slow state");
    }
}
