//! The open-loop load generator: queries sent on a schedule fixed in advance (Poisson or
//! even gaps), hedged copies where asked, and results collected meanwhile, with latency
//! measured from each query's scheduled send time.

use super::{now_us, Client, Received};
use crate::report::latency_histogram;
use anyhow::Context as _;
use hdrhistogram::Histogram;
use parm_common::kafka;
use parm_core::Tensor;
use rdkafka::producer::DeliveryFuture;
use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::Duration;
use tokio::task::JoinHandle;

/// How an open-loop run sends its queries.
#[derive(Debug, Clone)]
pub struct Load {
    /// Queries per second.
    pub rate: f64,
    /// Steps of the rate over time, in order: (multiple of `rate`, seconds). The last
    /// multiple holds after the last step; none: `rate` throughout (an overload run: 1 for
    /// 20 s, 1.5 for 60 s, then 1).
    pub steps: Vec<(f64, f64)>,
    /// Exponential gaps (a Poisson process); else evenly spaced.
    pub poisson: bool,
    /// Seed of the gaps.
    pub seed: u64,
    /// Each query's own latency budget, if any (else the encoder's default).
    pub deadline_ms: Option<i64>,
    /// How long to wait for results after the last send.
    pub result_timeout: Duration,
    pub hedge: Option<Hedge>,
}

impl Load {
    pub fn poisson(rate: f64) -> Self {
        Self { rate, steps: Vec::new(), poisson: true, seed: 42, deadline_ms: None, result_timeout: Duration::from_secs(5), hedge: None }
    }

    /// The rate `t` seconds into the run.
    pub fn rate_at(&self, t: f64) -> f64 {
        let mut end = 0.0;
        for (factor, seconds) in &self.steps {
            end += seconds;
            if t < end {
                return self.rate * factor;
            }
        }
        self.steps.last().map_or(self.rate, |(factor, _)| self.rate * factor)
    }
}

/// Hedged requests ("The Tail at Scale"): a query without a result `after` its send is
/// sent once more as a copy with id `ID~h`, and the first answer of the two is the
/// query's. The copy is a query of its own for the pipeline, so it lands on the next
/// model partition in turn; copies are capped at `budget` times the queries sent so far.
#[derive(Debug, Clone)]
pub struct Hedge {
    pub after: HedgeDelay,
    /// The most hedged copies per query sent (e.g. 1/k: the extra load of parity).
    pub budget: f64,
}

/// When to send a hedged copy.
#[derive(Debug, Clone, Copy)]
pub enum HedgeDelay {
    /// A fixed delay after the scheduled send.
    Fixed(Duration),
    /// This quantile of the latencies observed so far in the run (e.g. 0.95), and
    /// `initial` until 100 results are in.
    Quantile { q: f64, initial: Duration },
}

/// The suffix of a hedged copy's query id.
pub const HEDGE_SUFFIX: &str = "~h";

/// What an open-loop run produced.
#[derive(Debug, Default)]
pub struct Run {
    /// Scheduled send time of each query (µs since the epoch).
    pub scheduled_us: HashMap<String, u64>,
    /// Every result read, in arrival order; results of hedged copies carry their
    /// original's id and `hedge: true`.
    pub received: Vec<Received>,
    /// Hedged copies sent.
    pub hedges: usize,
    /// The latest a send left after its scheduled time (µs): the load generator's own lag.
    pub max_send_lag_us: u64,
}

/// Sends `queries` on an open-loop schedule (query i at `start + offset_i`, Poisson gaps
/// when `load.poisson`), while collecting results. Latency is then measured from each
/// query's scheduled time, so a slow pipeline cannot hide its queueing (no coordinated
/// omission). `progress` gets (queries sent, queries answered, total).
pub async fn run_schedule(
    client: &Client,
    queries: &[(String, Tensor)],
    load: &Load,
    progress: impl FnMut(usize, usize, usize),
) -> anyhow::Result<Run> {
    let schedule = Schedule::new(queries.len(), load)?;
    let scheduled: HashMap<String, u64> = queries.iter().enumerate().map(|(i, (id, _))| (id.clone(), schedule.due_us(i))).collect();
    let index = queries.iter().enumerate().map(|(i, (id, _))| (id.as_str(), i)).collect();
    let run = OpenLoop { client, queries, load, schedule, index, shared: Shared::new() };
    // The sender and the collector run on one task.
    let (sent, received) = tokio::join!(run.send_all(), run.collect(progress));
    sent?;
    Ok(Run { scheduled_us: scheduled, received: received?, hedges: run.shared.hedges.get(), max_send_lag_us: run.shared.max_lag_us.get() })
}

/// When each query of a run is due: `start_us + offsets_us[i]` (µs since the epoch).
struct Schedule {
    start_us: u64,
    offsets_us: Vec<u64>,
}

impl Schedule {
    /// Send times of `count` queries, from 50 ms from now on: exponential gaps (seeded by
    /// `load.seed`) when `load.poisson`, else evenly spaced, at the rate of the moment
    /// ([`Load::rate_at`]).
    fn new(count: usize, load: &Load) -> anyhow::Result<Self> {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Exp};
        let mut rng = rand::rngs::StdRng::seed_from_u64(load.seed);
        let mut offsets_us = Vec::with_capacity(count);
        let mut t = 0.0f64;
        for _ in 0..count {
            offsets_us.push((t * 1e6) as u64);
            let rate = load.rate_at(t).max(1e-9);
            t += if load.poisson { Exp::new(rate).context("rate must be positive")?.sample(&mut rng) } else { 1.0 / rate };
        }
        Ok(Self { start_us: now_us() + 50_000, offsets_us })
    }

    /// The scheduled send time of query `i`.
    fn due_us(&self, i: usize) -> u64 {
        self.start_us + self.offsets_us[i]
    }

    /// The scheduled time of the last send (the start when there is none).
    fn last_us(&self) -> u64 {
        self.start_us + self.offsets_us.last().copied().unwrap_or(0)
    }
}

/// What the sender and the collector share. They run on one task (`tokio::join!`) and
/// never hold a borrow across an await.
struct Shared {
    /// Indices of the queries answered so far (by the original or its hedged copy).
    answered: RefCell<HashSet<usize>>,
    /// Latencies of the first answers so far (µs), for a hedge delay by quantile.
    latencies: RefCell<Histogram<u64>>,
    sending_done: Cell<bool>,
    /// Queries sent so far (not counting hedged copies).
    sent: Cell<usize>,
    /// Hedged copies sent so far.
    hedges: Cell<usize>,
    max_lag_us: Cell<u64>,
}

impl Shared {
    /// Nothing sent, nothing answered.
    fn new() -> Self {
        Self {
            answered: RefCell::new(HashSet::new()),
            latencies: RefCell::new(latency_histogram()),
            sending_done: Cell::new(false),
            sent: Cell::new(0),
            hedges: Cell::new(0),
            max_lag_us: Cell::new(0),
        }
    }
}

/// One open-loop run in progress: the client, the queries, their schedule and the
/// state its sender and collector share.
struct OpenLoop<'a> {
    client: &'a Client,
    queries: &'a [(String, Tensor)],
    load: &'a Load,
    schedule: Schedule,
    /// Each query id's index in `queries`.
    index: HashMap<&'a str, usize>,
    shared: Shared,
}

/// A spawned wait for one send's acknowledgement (partition, offset).
type Acknowledgement = JoinHandle<anyhow::Result<(i32, i64)>>;

impl OpenLoop<'_> {
    /// Sends every query at its scheduled time and, between them, the hedged copies that
    /// fall due; then waits for every acknowledgement (awaited off the send loop).
    async fn send_all(&self) -> anyhow::Result<()> {
        let mut acks = Vec::with_capacity(self.queries.len());
        // (due µs, query index) of hedge checks.
        let mut checks: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
        let mut next = 0usize;
        loop {
            let next_send = (next < self.queries.len()).then(|| self.schedule.due_us(next));
            let next_check = checks.peek().map(|Reverse((t, _))| *t);
            let Some(due) = [next_send, next_check].into_iter().flatten().min() else { break };
            let now = now_us();
            if due > now {
                tokio::time::sleep(Duration::from_micros(due - now)).await;
            }
            if next_send == Some(due) {
                acks.push(self.send_query(next, due).await?);
                if let Some(h) = &self.load.hedge {
                    checks.push(Reverse((due + self.hedge_delay(h).as_micros() as u64, next)));
                }
                next += 1;
                self.shared.sent.set(next);
            } else if let Some(Reverse((_, i))) = checks.pop() {
                acks.extend(self.hedge_if_unanswered(i).await?);
            }
        }
        self.shared.sending_done.set(true);
        for ack in acks {
            ack.await.context("a delivery task failed")??;
        }
        Ok(())
    }

    /// Hands query `i`, due at `due_us`, to the producer and notes how late it left.
    async fn send_query(&self, i: usize, due_us: u64) -> anyhow::Result<Acknowledgement> {
        let (id, tensor) = &self.queries[i];
        let (f, _) = self.client.enqueue(id, tensor, self.load.deadline_ms).await?;
        self.shared.max_lag_us.set(self.shared.max_lag_us.get().max(now_us().saturating_sub(due_us)));
        Ok(watch_acknowledgement(f))
    }

    /// How long after its scheduled send a query gets a hedged copy: the fixed delay, or
    /// the quantile of the latencies so far once 100 are in.
    fn hedge_delay(&self, h: &Hedge) -> Duration {
        match h.after {
            HedgeDelay::Fixed(d) => d,
            HedgeDelay::Quantile { q, initial } => {
                let l = self.shared.latencies.borrow();
                if l.len() < 100 {
                    initial
                } else {
                    Duration::from_micros(l.value_at_quantile(q))
                }
            }
        }
    }

    /// Sends a hedged copy of query `i` if it is still unanswered and the budget (a share
    /// of the queries sent so far) allows one more.
    async fn hedge_if_unanswered(&self, i: usize) -> anyhow::Result<Option<Acknowledgement>> {
        let budget = self.load.hedge.as_ref().map_or(0.0, |h| h.budget);
        let within_budget = ((self.shared.hedges.get() + 1) as f64) <= budget * self.shared.sent.get() as f64;
        if self.shared.answered.borrow().contains(&i) || !within_budget {
            return Ok(None);
        }
        let (id, tensor) = &self.queries[i];
        let (f, _) = self.client.enqueue(&format!("{id}{HEDGE_SUFFIX}"), tensor, self.load.deadline_ms).await?;
        self.shared.hedges.set(self.shared.hedges.get() + 1);
        Ok(Some(watch_acknowledgement(f)))
    }

    /// Reads results until every query has one, or until the sending is done and the
    /// result timeout has passed since the last scheduled send; returns every result read.
    async fn collect(&self, mut progress: impl FnMut(usize, usize, usize)) -> anyhow::Result<Vec<Received>> {
        let mut out = Vec::new();
        let give_up_at = self.schedule.last_us() + self.load.result_timeout.as_micros() as u64;
        loop {
            let all_in = self.shared.answered.borrow().len() == self.queries.len();
            if all_in || (self.shared.sending_done.get() && now_us() >= give_up_at) {
                break;
            }
            // Wake up now and then even without results, to notice the end of the run.
            progress(self.shared.sent.get(), self.shared.answered.borrow().len(), self.queries.len());
            let Some(mut r) = self.client.next_result(Duration::from_millis(200)).await? else { continue };
            if let Some(original) = r.result.query_id.strip_suffix(HEDGE_SUFFIX) {
                r.result.query_id = original.to_string();
                r.hedge = true;
            }
            self.note_answer(&r);
            out.push(r);
        }
        Ok(out)
    }

    /// Marks the query of `r` answered and records its latency, if it is one of the run's
    /// and this is its first answer.
    fn note_answer(&self, r: &Received) {
        let Some(&i) = self.index.get(r.result.query_id.as_str()) else { return };
        if self.shared.answered.borrow_mut().insert(i) {
            let lat = r.arrived_at_us.saturating_sub(self.schedule.due_us(i)).max(1);
            let _ = self.shared.latencies.borrow_mut().record(lat);
        }
    }
}

/// Waits for a send's acknowledgement on a task of its own, off the send loop.
fn watch_acknowledgement(f: DeliveryFuture) -> Acknowledgement {
    tokio::spawn(async move { kafka::delivered(f, "the queries topic").await })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_follows_its_steps_and_the_last_one_holds() {
        let mut load = Load::poisson(1000.0);
        assert_eq!(load.rate_at(12.0), 1000.0);
        load.steps = vec![(1.0, 20.0), (1.5, 60.0), (0.5, 30.0)];
        assert_eq!([load.rate_at(0.0), load.rate_at(19.9), load.rate_at(20.0), load.rate_at(79.9), load.rate_at(80.0), load.rate_at(500.0)], [1000.0, 1000.0, 1500.0, 1500.0, 500.0, 500.0]);
    }

    #[test]
    fn a_stepped_schedule_sends_each_step_at_its_rate() {
        let mut load = Load::poisson(1000.0);
        load.poisson = false;
        load.steps = vec![(1.0, 2.0), (2.0, 2.0)];
        let s = Schedule::new(6000, &load).unwrap();
        let in_window = |from: f64, to: f64| s.offsets_us.iter().filter(|&&o| o as f64 >= from * 1e6 && (o as f64) < to * 1e6).count();
        // Even gaps summed in floating point can put a send a hair either side of a step.
        let (first, second) = (in_window(0.0, 2.0), in_window(2.0, 4.0));
        assert!(first.abs_diff(2000) <= 2 && second.abs_diff(4000) <= 2, "{first} and {second} sends in the two steps");
    }
}
