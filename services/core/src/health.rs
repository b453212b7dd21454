//! What the encoder knows of its workers' health (`--route-by-health`), and the recent
//! parity queries it may send again. Pure state, time as an argument; `parm_encoder` feeds
//! it the reports it reads.
//!
//! Workers started with `--report-health` say on `PREFIX.health` whether they are slow (see
//! `parm_worker::health`). The encoder uses it three ways, none of which changes where a
//! member query goes (that stays the plain round robin the baselines use):
//! - a query bound for a slow model worker gets a coding group of its own, closed at once,
//!   so its reconstruction waits for no partner that could be slow too;
//! - a parity query goes to a healthy parity worker;
//! - when a parity worker turns slow, the parity queries sent to it in the last
//!   `resend_window_ms` go again to healthy ones (the decoder keeps whichever output comes
//!   first, and a parity worker skips a group whose members are all answered).
//!
//! A worker silent for [`STALE_MS`] is forgotten (it died, or its partitions moved).
//!
//! When more than half of the workers of a role say they are slow, the slowness is the
//! machine's or the whole deployment's (a CPU hog, an overloaded broker), not a straggler's:
//! routing around them cannot help, and groups of one and parity copies would only add work
//! where there is no capacity to spare. Routing then stands down for that role until most
//! of its workers are well again.

use std::collections::{HashMap, VecDeque};

/// How long a report stands without a newer one (workers repeat theirs every second).
pub const STALE_MS: u64 = 3000;

/// A worker's report of itself, as the encoder uses it (the wire record is
/// `parm_common::records::WorkerHealth`).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    /// The reporting worker's name (its consumer's member id).
    pub worker: String,
    /// "model" or "parity".
    pub role: String,
    /// The input partitions it owns.
    pub partitions: Vec<i32>,
    pub slow: bool,
}

/// The latest report of one worker, and when it was received.
#[derive(Debug, Clone)]
struct Report {
    role: String,
    partitions: Vec<i32>,
    slow: bool,
    at: u64,
}

/// The latest report of every worker heard from.
#[derive(Debug, Default)]
pub struct HealthView {
    workers: HashMap<String, Report>,
}

impl HealthView {
    /// Takes a report received at `now`; returns the partitions of a parity worker that has
    /// just turned slow (their recent parity queries should go again), else nothing.
    pub fn record(&mut self, h: HealthReport, now: u64) -> Vec<i32> {
        self.workers.retain(|_, r| now < r.at.saturating_add(STALE_MS));
        let was_slow = self.workers.get(&h.worker).is_some_and(|r| r.slow);
        let turned_slow = h.slow && !was_slow && h.role == "parity";
        let partitions = h.partitions.clone();
        self.workers.insert(h.worker, Report { role: h.role, partitions: h.partitions, slow: h.slow, at: now });
        if turned_slow && !self.widespread("parity", now) {
            partitions
        } else {
            Vec::new()
        }
    }

    /// Whether a worker of `role` ("model" or "parity") that owns `partition` said last,
    /// within [`STALE_MS`] of `now`, that it is slow, while most of that role's workers
    /// are not.
    pub fn is_slow(&self, role: &str, partition: i32, now: u64) -> bool {
        !self.widespread(role, now) && self.owner_slow(role, partition, now)
    }

    /// Whether a worker of `role` owning `partition` said lately that it is slow.
    fn owner_slow(&self, role: &str, partition: i32, now: u64) -> bool {
        self.fresh(role, now).any(|r| r.slow && r.partitions.contains(&partition))
    }

    /// Whether more than half of the workers of `role` heard from lately say they are slow.
    pub fn widespread(&self, role: &str, now: u64) -> bool {
        let (slow, all) = self.fresh(role, now).fold((0, 0), |(s, a), r| (s + usize::from(r.slow), a + 1));
        2 * slow > all
    }

    fn fresh<'a>(&'a self, role: &'a str, now: u64) -> impl Iterator<Item = &'a Report> + 'a {
        self.workers.values().filter(move |r| r.role == role && now < r.at.saturating_add(STALE_MS))
    }

    /// The first partition from `preferred` on (wrapping around `partitions`) whose parity
    /// worker is not slow; `preferred` itself when all are.
    pub fn healthy_parity_partition(&self, preferred: i32, partitions: i32, now: u64) -> i32 {
        self.healthy_parity_partition_apart(preferred, partitions, &[], now)
    }

    /// Like [`HealthView::healthy_parity_partition`], but the first healthy partition not in
    /// `taken` where there is one: a group's r parity queries start on r different
    /// partitions, and moving one off a slow worker must not put it beside another of the
    /// same group (one slow worker would then hold back both).
    pub fn healthy_parity_partition_apart(&self, preferred: i32, partitions: i32, taken: &[i32], now: u64) -> i32 {
        if self.widespread("parity", now) {
            return preferred;
        }
        let healthy = |p: &i32| !self.owner_slow("parity", *p, now);
        let from_preferred = || (0..partitions).map(|i| preferred.saturating_add(i) % partitions);
        from_preferred()
            .find(|p| healthy(p) && !taken.contains(p))
            .or_else(|| from_preferred().find(healthy))
            .unwrap_or(preferred)
    }
}

/// A parity query as sent, kept for a possible second send; `H` is whatever the sender
/// needs to send it again (the encoder keeps the record's Kafka headers).
#[derive(Debug, Clone)]
pub struct SentParity<H> {
    /// When it was sent (ms).
    pub at: u64,
    pub group_id: String,
    /// The encoded record, as sent.
    pub payload: Vec<u8>,
    pub headers: H,
    /// The partitions of the group's parity queries (this one's among them), which a
    /// second send avoids where it can ([`HealthView::healthy_parity_partition_apart`]).
    pub beside: Vec<i32>,
}

/// The parity queries sent to each partition within the resend window.
#[derive(Debug)]
pub struct ParityLog<H> {
    window_ms: u64,
    by_partition: HashMap<i32, VecDeque<SentParity<H>>>,
}

impl<H> ParityLog<H> {
    pub fn new(window_ms: u64) -> Self {
        Self { window_ms, by_partition: HashMap::new() }
    }

    /// False with a window of 0 (no copies): then nothing needs keeping.
    pub fn is_enabled(&self) -> bool {
        self.window_ms > 0
    }

    pub fn push(&mut self, partition: i32, sent: SentParity<H>) {
        let now = sent.at;
        let log = self.by_partition.entry(partition).or_default();
        log.push_back(sent);
        while log.front().is_some_and(|s| s.at.saturating_add(self.window_ms) < now) {
            log.pop_front();
        }
    }

    /// Takes out what went to `partition` within the window before `now`: each parity query
    /// is sent again at most once.
    pub fn take_recent(&mut self, partition: i32, now: u64) -> Vec<SentParity<H>> {
        let window = self.window_ms;
        self.by_partition
            .remove(&partition)
            .map(|log| log.into_iter().filter(|s| s.at.saturating_add(window) >= now).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(worker: &str, role: &str, partitions: Vec<i32>, slow: bool) -> HealthReport {
        HealthReport { worker: worker.into(), role: role.into(), partitions, slow }
    }

    #[test]
    fn slow_workers_are_known_by_role_and_partition_until_they_recover_or_go_silent() {
        let mut v = HealthView::default();
        // Healthy peers, repeating their reports (a slow worker is judged among its role's).
        let peers = |v: &mut HealthView, now: u64| {
            v.record(report("m9", "model", vec![9], false), now);
            v.record(report("p9", "parity", vec![2], false), now);
        };
        peers(&mut v, 100);
        assert!(v.record(report("m1", "model", vec![0, 1], true), 100).is_empty(), "a model worker: nothing to resend");
        assert!(v.is_slow("model", 1, 100));
        assert!(!v.is_slow("parity", 1, 100), "roles have partitions of their own");
        assert!(!v.is_slow("model", 2, 100));
        v.record(report("m1", "model", vec![0, 1], false), 200);
        assert!(!v.is_slow("model", 0, 200), "recovered");

        assert_eq!(v.record(report("p1", "parity", vec![3], true), 300), vec![3], "turned slow: resend");
        assert!(v.record(report("p1", "parity", vec![3], true), 400).is_empty(), "still slow: no second resend");
        assert!(v.is_slow("parity", 3, 400));
        assert_eq!(v.healthy_parity_partition(3, 4, 400), 0, "skips the slow one, wrapping around");
        assert_eq!(v.healthy_parity_partition(2, 4, 400), 2);
        peers(&mut v, 400 + STALE_MS - 1);
        assert!(!v.is_slow("parity", 3, 400 + STALE_MS), "a silent worker is forgotten");
    }

    #[test]
    fn routing_stands_down_when_most_workers_of_a_role_are_slow() {
        let mut v = HealthView::default();
        for p in 0..4 {
            v.record(report(&format!("m{p}"), "model", vec![p], p < 2), 0);
        }
        assert!(v.is_slow("model", 0, 0), "two of four: stragglers");
        v.record(report("m2", "model", vec![2], true), 1);
        assert!(v.widespread("model", 1));
        assert!(!v.is_slow("model", 0, 1), "three of four: the machine, not a worker");
        for p in 0..3 {
            v.record(report(&format!("p{p}"), "parity", vec![p], false), 2);
        }
        assert_eq!(v.record(report("p0", "parity", vec![0], true), 3), vec![0], "one of three parity workers: resend");
        assert!(v.record(report("p1", "parity", vec![1], true), 4).is_empty(), "two of three: no resend");
        assert!(!v.is_slow("parity", 0, 4));
        assert_eq!(v.healthy_parity_partition(0, 3, 4), 0, "standing down: the preferred one");
    }

    #[test]
    fn a_groups_parities_moved_off_a_slow_worker_stay_apart() {
        let mut v = HealthView::default();
        for p in 0..3 {
            v.record(report(&format!("p{p}"), "parity", vec![p], p == 0), 0);
        }
        // r = 2 from partition 0: parity 0 moves off the slow 0 to 1, so parity 1 (which
        // starts on 1) goes on to 2, not beside it.
        assert_eq!(v.healthy_parity_partition_apart(0, 3, &[], 1), 1);
        assert_eq!(v.healthy_parity_partition_apart(1, 3, &[1], 1), 2);
        // With no healthy partition left apart, a healthy one is still better than the slow.
        assert_eq!(v.healthy_parity_partition_apart(1, 3, &[1, 2], 1), 1);
        assert_eq!(v.healthy_parity_partition_apart(2, 3, &[], 1), 2, "nothing taken: as before");
    }

    #[test]
    fn the_log_gives_each_recent_parity_once() {
        let mut log = ParityLog::new(500);
        for (at, g) in [(0, "a"), (400, "b"), (600, "c")] {
            log.push(1, SentParity { at, group_id: g.into(), payload: vec![], headers: (), beside: vec![] });
        }
        log.push(2, SentParity { at: 600, group_id: "d".into(), payload: vec![], headers: (), beside: vec![] });
        let ids: Vec<String> = log.take_recent(1, 700).into_iter().map(|s| s.group_id).collect();
        assert_eq!(ids, ["b", "c"], "'a' is older than the window");
        assert!(log.take_recent(1, 700).is_empty(), "taken once");
        assert_eq!(log.take_recent(2, 700).len(), 1);
        assert!(log.is_enabled() && !ParityLog::<()>::new(0).is_enabled(), "a window of 0 keeps nothing");
    }
}
