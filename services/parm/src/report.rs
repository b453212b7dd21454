//! What a run produced: counts by source, accuracy against labels, and client-observed
//! latency percentiles from an HDR histogram.

use crate::client::Received;
use hdrhistogram::Histogram;
use parm_common::records::ResultSource;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// An empty histogram of client-observed latencies: µs, from 1 µs to 10 minutes, three
/// significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// The summary of one run; `--json` prints it as one line.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub queries: usize,
    /// Distinct queries that got a result.
    pub results: usize,
    pub missing: usize,
    pub duplicates: usize,
    pub model: usize,
    pub reconstructed: usize,
    pub unavailable: usize,
    /// Top-1 accuracy over answered queries (UNAVAILABLE counts as wrong).
    pub accuracy: f64,
    /// Top-1 accuracy of the reconstructed answers alone (null when there were none).
    pub reconstructed_accuracy: Option<f64>,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// Hedged copies sent, and how many of them answered first.
    pub hedges: usize,
    pub hedge_wins: usize,
}

impl Report {
    /// Builds the report from scheduled send times (µs since the epoch), results in
    /// arrival order and labels by query id.
    pub fn new(scheduled_us: &HashMap<String, u64>, received: &[Received], labels: &HashMap<String, u8>) -> Self {
        Self::with_histogram(scheduled_us, received, labels).0
    }

    /// The report and its latency histogram (µs), e.g. to draw a CDF. The first answer of
    /// a query is its answer; a second answer to the same copy (original or hedge) counts
    /// as a duplicate.
    pub fn with_histogram(scheduled: &HashMap<String, u64>, received: &[Received], labels: &HashMap<String, u8>) -> (Self, Histogram<u64>) {
        let mut hist = latency_histogram();
        let mut first: HashMap<&str, &Received> = HashMap::new();
        let mut copies: HashSet<(&str, bool)> = HashSet::new();
        let mut duplicates = 0;
        for r in received {
            if !scheduled.contains_key(&r.result.query_id) {
                continue;
            }
            if !copies.insert((&r.result.query_id, r.hedge)) {
                duplicates += 1;
            }
            first.entry(&r.result.query_id).or_insert(r);
        }
        let (mut model, mut reconstructed, mut unavailable, mut correct, mut recon_correct) = (0, 0, 0, 0, 0);
        for (id, r) in &first {
            match r.result.source {
                ResultSource::Model => model += 1,
                ResultSource::Reconstructed => reconstructed += 1,
                ResultSource::Unavailable => unavailable += 1,
            }
            let right = labels.get(*id).is_some_and(|l| r.result.top1 == Some(*l as i32));
            correct += usize::from(right);
            if r.result.source == ResultSource::Reconstructed {
                recon_correct += usize::from(right);
            }
            let us = r.arrived_at_us.saturating_sub(scheduled[*id]);
            let _ = hist.record(us.max(1));
        }
        let hedge_wins = first.values().filter(|r| r.hedge).count();
        let answered: HashSet<&str> = first.keys().copied().collect();
        let ms = |q: f64| if hist.is_empty() { 0.0 } else { hist.value_at_quantile(q) as f64 / 1000.0 };
        let report = Self {
            queries: scheduled.len(),
            results: answered.len(),
            missing: scheduled.len() - answered.len(),
            duplicates,
            model,
            reconstructed,
            unavailable,
            accuracy: if first.is_empty() { 0.0 } else { correct as f64 / first.len() as f64 },
            reconstructed_accuracy: (reconstructed > 0).then(|| recon_correct as f64 / reconstructed as f64),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: if hist.is_empty() { 0.0 } else { hist.max() as f64 / 1000.0 },
            mean_ms: if hist.is_empty() { 0.0 } else { hist.mean() / 1000.0 },
            hedges: 0,
            hedge_wins,
        };
        (report, hist)
    }

    /// A few readable lines.
    pub fn human(&self) -> String {
        let recon = self.reconstructed_accuracy.map_or("-".to_string(), |a| format!("{:.1}%", a * 100.0));
        format!(
            "queries        {}\nresults        {} ({} missing, {} duplicates)\n  MODEL          {}\n  RECONSTRUCTED  {} (accuracy {recon})\n  UNAVAILABLE    {}\naccuracy       {:.2}%\nlatency (ms)   p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            self.queries, self.results, self.missing, self.duplicates, self.model, self.reconstructed, self.unavailable,
            self.accuracy * 100.0, self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms
        )
    }
}
