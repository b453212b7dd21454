//! Whether a run keeps up: the client's backlog (queries sent and not yet answered: every
//! consumer lag along the pipeline plus the work in progress) sampled while the load is
//! sent, and how much it grew over the run.
//!
//! A pipeline that keeps up holds a steady backlog (rate x latency, Little's law). One that
//! falls behind piles up queries at the rate it misses by, so the backlog grows through
//! the whole run; its p99 then depends on how long the run was, and is no property of the
//! rate.

use serde::Serialize;
use std::time::{Duration, Instant};

/// Backlog samples of one run.
#[derive(Debug)]
pub struct Backlog {
    started: Instant,
    every: Duration,
    last: Option<Instant>,
    /// (seconds since the start, queries sent but not answered).
    samples: Vec<(f64, f64)>,
}

/// How the backlog went over a run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BacklogTrend {
    /// Mean backlog over the samples (queries).
    pub mean: f64,
    /// Growth over the sampled span, from a least-squares line (queries).
    pub growth: f64,
    /// The growth as arrival time at the run's rate (ms): how much later the last query
    /// was answered than the first, from the backlog alone.
    pub growth_ms: f64,
}

impl Backlog {
    /// Samples at most once per `every`.
    pub fn new(every: Duration) -> Self {
        Self { started: Instant::now(), every, last: None, samples: Vec::new() }
    }

    /// Notes the backlog while queries are still being sent (`sent < total`).
    pub fn note(&mut self, sent: usize, answered: usize, total: usize) {
        let now = Instant::now();
        if sent == 0 || sent >= total || self.last.is_some_and(|l| now.duration_since(l) < self.every) {
            return;
        }
        self.last = Some(now);
        self.samples.push((now.duration_since(self.started).as_secs_f64(), sent.saturating_sub(answered) as f64));
    }

    /// The trend at arrival rate `rate`, leaving out the first `skip` of the samples (the
    /// pipeline's warm-up); `None` with fewer than 3 samples left.
    pub fn trend(&self, rate: f64, skip: f64) -> Option<BacklogTrend> {
        let from = ((self.samples.len() as f64) * skip.clamp(0.0, 0.9)) as usize;
        let pts = self.samples.get(from..)?;
        if pts.len() < 3 {
            return None;
        }
        let n = pts.len() as f64;
        let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
        let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        let span = pts.last().map_or(0.0, |l| l.0) - pts.first().map_or(0.0, |f| f.0);
        let growth = slope * span;
        Some(BacklogTrend { mean: my, growth, growth_ms: growth / rate.max(1e-9) * 1000.0 })
    }

    /// The samples, for the run's JSON.
    pub fn samples(&self) -> &[(f64, f64)] {
        &self.samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_samples(samples: Vec<(f64, f64)>) -> Backlog {
        Backlog { started: Instant::now(), every: Duration::from_secs(1), last: None, samples }
    }

    #[test]
    fn a_steady_backlog_does_not_grow_and_a_piling_one_does() {
        let steady = with_samples((0..30).map(|t| (t as f64, 40.0 + if t % 2 == 0 { 5.0 } else { -5.0 })).collect());
        let t = steady.trend(1000.0, 0.0).unwrap();
        assert!(t.growth.abs() < 5.0 && (t.mean - 40.0).abs() < 1.0, "{t:?}");
        // Missing 100 q/s of 1000: the backlog gains 100 queries a second.
        let piling = with_samples((0..30).map(|t| (t as f64, 100.0 * t as f64)).collect());
        let t = piling.trend(1000.0, 0.0).unwrap();
        assert!((t.growth - 2900.0).abs() < 1e-6 && (t.growth_ms - 2900.0).abs() < 1e-6, "{t:?}");
    }

    #[test]
    fn the_warm_up_is_left_out_and_too_few_samples_give_no_trend() {
        // A burst at the start, then steady.
        let b = with_samples((0..20).map(|t| (t as f64, if t < 4 { 500.0 - 100.0 * t as f64 } else { 50.0 })).collect());
        assert!(b.trend(1000.0, 0.2).unwrap().growth.abs() < 1e-9);
        assert!(with_samples(vec![(0.0, 1.0), (1.0, 2.0)]).trend(1000.0, 0.0).is_none());
    }

    #[test]
    fn samples_are_taken_only_while_sending_and_at_most_once_per_period() {
        let mut b = Backlog::new(Duration::from_secs(3600));
        b.note(0, 0, 10);
        b.note(5, 2, 10);
        b.note(6, 2, 10);
        b.note(10, 9, 10);
        assert_eq!(b.samples().len(), 1);
        assert_eq!(b.samples()[0].1, 3.0);
    }
}
