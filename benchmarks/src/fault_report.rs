//! The fault benchmark's verdict on a run: a row per fault window (valid queries sent,
//! answered, missing, duplicates, UNAVAILABLE, p99 in the 10 s after recovery), the hostile
//! records and their dead letters, and whether each service's RSS stayed flat. Written as
//! `summary.md`, `results.json` and CSVs for the plot.

use crate::fault_run::{FaultRun, Window};
use crate::fault_scenario::FaultScenario;
use parm::report::Report;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

/// The latency of the queries sent this long after a recovery is the row's "p99 after".
pub const AFTER_US: u64 = 10_000_000;

/// One window's numbers.
#[derive(Debug, Serialize)]
pub struct Row {
    pub window: Window,
    pub report: Report,
    /// The queries sent in the 10 s after the recovery.
    pub after: Report,
}

/// One service's memory over the run (MB).
#[derive(Debug, Serialize)]
pub struct Memory {
    pub service: String,
    /// Median over the second tenth of the run (after start-up).
    pub early_mb: f64,
    /// Median over the last tenth.
    pub late_mb: f64,
    pub max_mb: f64,
    /// late ≤ early × 1.2 + 4 MB.
    pub flat: bool,
}

/// The whole verdict.
#[derive(Debug, Serialize)]
pub struct Verdict {
    pub rows: Vec<Row>,
    pub total: Report,
    pub hostile_sent: usize,
    pub hostile_dead_lettered: usize,
    /// Hostile records without a dead letter whose reason says why (key: what it said).
    pub hostile_wrong: Vec<(String, String)>,
    pub memory: Vec<Memory>,
    pub exited: Option<String>,
    pub delivery_failures: usize,
    /// Whether flat memory is part of the verdict: in a soak, yes; under faults RSS grows
    /// while queues fill during an outage, and is only reported.
    pub memory_judged: bool,
    /// The most duplicate answers the verdict allows: none exactly once, 2% of the valid
    /// queries at least once (issue 14's bar).
    pub max_duplicates: usize,
}

impl Verdict {
    pub fn new(run: &FaultRun, memory_judged: bool, exactly_once: bool) -> Self {
        let labels = HashMap::new();
        let scheduled = |from: u64, to: u64| -> HashMap<String, u64> {
            run.sent.iter().filter(|s| s.scheduled_us >= from && s.scheduled_us < to).map(|s| (s.id.clone(), s.scheduled_us)).collect()
        };
        let rows = run
            .windows
            .iter()
            .map(|w| Row {
                window: w.clone(),
                report: Report::new(&scheduled(w.started_us, w.ended_us), &run.received, &labels),
                after: Report::new(&scheduled(w.recovered_us, (w.recovered_us + AFTER_US).min(w.ended_us)), &run.received, &labels),
            })
            .collect();
        let total = Report::new(&scheduled(0, u64::MAX), &run.received, &labels);
        let mut hostile_wrong = Vec::new();
        for h in &run.hostile {
            match run.letters.get(&h.key) {
                Some(d) if d.reason.contains(h.reason) => {}
                Some(d) => hostile_wrong.push((h.key.clone(), d.reason.clone())),
                None => hostile_wrong.push((h.key.clone(), "no dead letter".into())),
            }
        }
        Self {
            rows,
            total,
            hostile_sent: run.hostile.len(),
            hostile_dead_lettered: run.hostile.len() - hostile_wrong.len(),
            hostile_wrong,
            memory: memory(&run.rss),
            exited: run.exited.clone(),
            delivery_failures: run.delivery_failures,
            memory_judged,
            max_duplicates: if exactly_once { 0 } else { run.sent.len() / 50 },
        }
    }

    /// Every valid query answered, duplicates within the bar, every hostile record
    /// dead-lettered, no service dead, and (where judged) memory flat.
    pub fn passed(&self) -> bool {
        self.total.missing == 0
            && self.total.duplicates <= self.max_duplicates
            && self.hostile_wrong.is_empty() && self.exited.is_none() && (!self.memory_judged || self.memory.iter().all(|m| m.flat))
    }

    pub fn markdown(&self, scn: &FaultScenario) -> String {
        let mut md = format!("# Faults: scenario `{}`\n\n{}\n\n", scn.name, scn.description.trim());
        let _ = writeln!(
            md,
            "{} Kafka node(s); {} model workers + {} parity workers (k = {}, {}), batch ≤ {}, synthetic {} ms per batch; {} valid queries/s, evenly spaced; deadline {} ms, hard deadline {} ms{}{}.\n",
            scn.brokers, scn.model_workers, scn.parity_workers(), scn.k, scn.parity_model(), scn.max_batch, scn.synthetic_ms, scn.rate,
            scn.deadline_ms, scn.hard_deadline_ms,
            if scn.salt_every > 0 { format!("; a hostile record after every {} valid queries", scn.salt_every) } else { String::new() },
            if scn.absurd_deadline_every > 0 { format!("; every {}th query asks for a deadline of 10^15 ms", scn.absurd_deadline_every) } else { String::new() },
        );
        md += "| fault | for s | valid sent | answered | missing | duplicates | model | reconstructed | UNAVAILABLE | p99 ms | p99 ms in the 10 s after recovery | max ms after |\n";
        md += "|---|---|---|---|---|---|---|---|---|---|---|---|\n";
        for r in &self.rows {
            let for_s = scn.faults.iter().find(|f| f.name == r.window.name).map(|f| f.for_s);
            // The baseline has no recovery to measure after.
            let after = (r.window.recovered_us > r.window.started_us).then_some(&r.after);
            md += &row_line(&r.window.name, for_s, &r.report, after);
        }
        md += &row_line("**all**", None, &self.total, None);
        let _ = writeln!(md, "\nHostile records: {} sent, {} dead-lettered with their reason.", self.hostile_sent, self.hostile_dead_lettered);
        for (key, why) in &self.hostile_wrong {
            let _ = writeln!(md, "- `{key}`: {why}");
        }
        let _ = writeln!(md, "Deliveries that failed: {}. Services that exited unasked: {}.\n", self.delivery_failures, self.exited.as_deref().unwrap_or("none"));
        let _ = writeln!(md, "Delivery: {}. Duplicates: {} of {} valid queries (at most {} allowed).\n", scn.delivery, self.total.duplicates, self.total.queries, self.max_duplicates);
        if !self.memory_judged {
            md += "Memory is reported, not judged, under faults (queues fill during an outage); the soak judges it.\n\n";
        }
        md += "| service | RSS early MB | RSS late MB | max MB | flat (late ≤ 1.2 × early + 4 MB) |\n|---|---|---|---|---|\n";
        for m in &self.memory {
            let _ = writeln!(md, "| {} | {:.1} | {:.1} | {:.1} | {} |", m.service, m.early_mb, m.late_mb, m.max_mb, if m.flat { "yes" } else { "**no**" });
        }
        let _ = writeln!(md, "\nVerdict: {}.", if self.passed() { "passed" } else { "**failed**" });
        md
    }
}

/// One line of the table; `after`: the queries of the 10 s after the recovery.
fn row_line(name: &str, for_s: Option<f64>, p: &Report, after: Option<&Report>) -> String {
    let after = after.filter(|a| a.queries > 0);
    format!(
        "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} |\n",
        for_s.map_or("-".into(), |s| s.to_string()),
        p.queries, p.results, p.missing, p.duplicates, p.model, p.reconstructed, p.unavailable, p.p99_ms,
        after.map_or("-".into(), |a| format!("{:.1} ({} queries)", a.p99_ms, a.queries)),
        after.map_or("-".into(), |a| format!("{:.0}", a.max_ms)),
    )
}

/// Each service's memory: early and late medians and the peak.
fn memory(rss: &[(f64, String, u64)]) -> Vec<Memory> {
    let end = rss.iter().map(|(t, _, _)| *t).fold(0.0, f64::max);
    let mut by_service: HashMap<&str, Vec<(f64, f64)>> = HashMap::new();
    for (t, s, kb) in rss {
        by_service.entry(s).or_default().push((*t, *kb as f64 / 1024.0));
    }
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let mut out: Vec<Memory> = by_service
        .into_iter()
        .map(|(service, samples)| {
            let within = |from: f64, to: f64| samples.iter().filter(|(t, _)| *t >= from * end && *t <= to * end).map(|(_, mb)| *mb).collect::<Vec<_>>();
            let early = median(within(0.1, 0.2));
            let late = median(within(0.9, 1.0));
            Memory { service: service.to_string(), early_mb: early, late_mb: late, max_mb: samples.iter().map(|(_, mb)| *mb).fold(0.0, f64::max), flat: late <= early * 1.2 + 4.0 }
        })
        .collect();
    out.sort_by(|a, b| a.service.cmp(&b.service));
    out
}

/// Writes the verdict and the CSVs the plot reads into `out`.
pub fn write(out: &Path, scn: &FaultScenario, run: &FaultRun, verdict: &Verdict) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("summary.md"), verdict.markdown(scn))?;
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&serde_json::json!({ "scenario": scn, "verdict": verdict }))?)?;
    let t = |us: u64| us.saturating_sub(run.started_us) as f64 / 1e6;
    let mut windows = String::from("name,start_s,recovered_s,end_s\n");
    for w in &run.windows {
        let _ = writeln!(windows, "\"{}\",{:.3},{:.3},{:.3}", w.name, t(w.started_us), t(w.recovered_us), t(w.ended_us));
    }
    std::fs::write(out.join("windows.csv"), windows)?;
    let mut first: HashMap<&str, &parm::client::Received> = HashMap::new();
    for r in &run.received {
        first.entry(r.result.query_id.as_str()).or_insert(r);
    }
    let mut queries = String::from("sent_s,latency_ms,source,absurd_deadline\n");
    for s in &run.sent {
        let (latency, source) = first.get(s.id.as_str()).map_or((String::new(), "MISSING".to_string()), |r| {
            (format!("{:.3}", r.arrived_at_us.saturating_sub(s.scheduled_us) as f64 / 1000.0), format!("{:?}", r.result.source).to_uppercase())
        });
        let _ = writeln!(queries, "{:.4},{latency},{source},{}", t(s.scheduled_us), s.absurd_deadline);
    }
    std::fs::write(out.join("queries.csv"), queries)?;
    let mut rss = String::from("t_s,service,rss_mb\n");
    for (ts, s, kb) in &run.rss {
        let _ = writeln!(rss, "{ts:.2},{s},{:.2}", *kb as f64 / 1024.0);
    }
    std::fs::write(out.join("rss.csv"), rss)?;
    Ok(())
}
