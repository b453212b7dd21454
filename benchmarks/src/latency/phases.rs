//! An overload run, phase by phase: a run whose rate steps up and back down
//! (`steps` in a scenario) is cut into its steps by scheduled send time, each step gets
//! its latency and how many of its queries were answered in time, and the recovery after
//! the overload is the time until every 1 s window is back at the first step's p99.

use parm::client::Run;
use parm_common::records::ResultSource;
use serde::Serialize;
use std::collections::HashMap;

/// One step of an overload run.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// The step's rate as a multiple of the run's rate.
    pub factor: f64,
    /// Its span, in seconds from the first scheduled send.
    pub from_s: f64,
    pub to_s: f64,
    /// Queries scheduled in it.
    pub queries: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Answered UNAVAILABLE (an answer: the pipeline gave up at the hard deadline).
    pub unavailable: usize,
    /// Not answered within the hard deadline plus `LATE_SLACK_MS` (or not at all).
    pub late_or_missing: usize,
    /// Answered more than once.
    pub duplicates: usize,
}

/// The phases of an overload run and its recovery.
#[derive(Debug, Clone, Serialize)]
pub struct OverloadReport {
    pub phases: Vec<PhaseReport>,
    /// Seconds from the end of the last step above the run's rate until the p99 of every
    /// later 1 s window (by scheduled send) is at most `RECOVERED_FACTOR` times the first
    /// step's p99; `None` if it never got back within the run.
    pub recovery_s: Option<f64>,
}

/// How far past the hard deadline an answer may reach the client and still count as in
/// time: the deadline runs from the encoder's receipt, the client's clock from its send.
pub const LATE_SLACK_MS: f64 = 250.0;
/// The p99 of a window after the overload counts as normal again up to this multiple of
/// the first step's p99.
pub const RECOVERED_FACTOR: f64 = 1.5;

/// The phases of `run` under `steps` ((factor, seconds), as the load was sent), counting
/// the `measured` queries (scheduled send µs by id: those past the warm-up); `None`
/// without steps. Steps are timed from the run's first send, warm-up included.
pub fn overload_report(run: &Run, measured: &HashMap<String, u64>, steps: &[(f64, f64)], hard_deadline_ms: f64) -> Option<OverloadReport> {
    if steps.is_empty() {
        return None;
    }
    let start = *run.scheduled_us.values().min()?;
    // Each query's first answer (arrival, source) and how many answers it got.
    let mut answers: HashMap<&str, (u64, ResultSource, usize)> = HashMap::new();
    for r in &run.received {
        let e = answers.entry(r.result.query_id.as_str()).or_insert((r.arrived_at_us, r.result.source, 0));
        e.2 += 1;
    }
    // (seconds after the start, latency ms if answered, answered UNAVAILABLE, answers)
    let mut queries: Vec<(f64, Option<f64>, bool, usize)> = measured
        .iter()
        .map(|(id, &due)| {
            let at = due.saturating_sub(start) as f64 / 1e6;
            match answers.get(id.as_str()) {
                Some(&(arrived, source, n)) => (at, Some(arrived.saturating_sub(due) as f64 / 1000.0), source == ResultSource::Unavailable, n),
                None => (at, None, false, 0),
            }
        })
        .collect();
    queries.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut phases = Vec::new();
    let mut from = 0.0;
    for (i, &(factor, seconds)) in steps.iter().enumerate() {
        // The last step holds to the end of the run.
        let to = if i + 1 == steps.len() { f64::INFINITY } else { from + seconds };
        let in_phase: Vec<_> = queries.iter().filter(|q| q.0 >= from && q.0 < to).collect();
        let mut lat: Vec<f64> = in_phase.iter().filter_map(|q| q.1).collect();
        lat.sort_by(f64::total_cmp);
        phases.push(PhaseReport {
            factor,
            from_s: from,
            to_s: if to.is_finite() { to } else { queries.last().map_or(from, |q| q.0) },
            queries: in_phase.len(),
            p50_ms: quantile(&lat, 0.5),
            p99_ms: quantile(&lat, 0.99),
            unavailable: in_phase.iter().filter(|q| q.2).count(),
            late_or_missing: in_phase.iter().filter(|q| !matches!(q.1, Some(l) if l <= hard_deadline_ms + LATE_SLACK_MS)).count(),
            duplicates: in_phase.iter().filter(|q| q.3 > 1).count(),
        });
        from = to;
    }
    let recovery_s = recovery(&queries, &phases);
    Some(OverloadReport { phases, recovery_s })
}

/// Seconds after the last overloaded step until every later 1 s window's p99 is back
/// within `RECOVERED_FACTOR` of the first step's.
fn recovery(queries: &[(f64, Option<f64>, bool, usize)], phases: &[PhaseReport]) -> Option<f64> {
    let normal = phases.first()?.p99_ms;
    let first = phases.first()?.factor;
    let drop_at = phases.iter().rposition(|p| p.factor > first).and_then(|i| phases.get(i)).map(|p| p.to_s)?;
    let end = queries.last()?.0;
    let windows = ((end - drop_at).max(0.0)).floor() as usize;
    let p99_of = |w: usize| {
        let (a, b) = (drop_at + w as f64, drop_at + w as f64 + 1.0);
        // A query never answered counts as infinitely late.
        let mut lat: Vec<f64> = queries.iter().filter(|q| q.0 >= a && q.0 < b).map(|q| q.1.unwrap_or(f64::INFINITY)).collect();
        lat.sort_by(f64::total_cmp);
        quantile(&lat, 0.99)
    };
    let bad: Vec<usize> = (0..windows).filter(|&w| p99_of(w) > RECOVERED_FACTOR * normal).collect();
    match bad.last() {
        None => Some(0.0),
        Some(&w) if w + 1 < windows => Some(w as f64 + 1.0),
        Some(_) => None,
    }
}

/// The `q` quantile of sorted values (nearest rank; 0 when empty).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(factor: f64, from_s: f64, to_s: f64, p99_ms: f64) -> PhaseReport {
        PhaseReport { factor, from_s, to_s, queries: 0, p50_ms: 0.0, p99_ms, unavailable: 0, late_or_missing: 0, duplicates: 0 }
    }

    #[test]
    fn recovery_is_the_end_of_the_last_slow_window_after_the_overload() {
        let phases = [phase(1.0, 0.0, 10.0, 20.0), phase(1.5, 10.0, 20.0, 400.0), phase(1.0, 20.0, 30.0, 0.0)];
        // 100 queries a second; slow (300 ms) until 23.5 s, then 15 ms.
        let queries: Vec<_> = (0..3000).map(|i| i as f64 / 100.0).map(|t| (t, Some(if t < 23.5 { 300.0 } else { 15.0 }), false, 1)).collect();
        assert_eq!(recovery(&queries, &phases), Some(4.0));
        // Slow to the end: never recovered.
        let slow: Vec<_> = queries.iter().map(|q| (q.0, Some(300.0), false, 1)).collect();
        assert_eq!(recovery(&slow, &phases), None);
    }

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!((quantile(&v, 0.5), quantile(&v, 0.99), quantile(&[], 0.5)), (50.0, 99.0, 0.0));
    }
}
