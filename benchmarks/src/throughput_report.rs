//! The throughput side of a latency scenario's summary: the highest rate each series
//! (mode, k, contention, Kafka settings) sustains over a rate sweep, the ratios the
//! throughput targets are stated in, and the CPU per query of every process.

use crate::latency::RunResult;
use crate::scenario::Mode;
use serde::Serialize;
use std::collections::BTreeMap;

/// The highest sustained rate of one series.
#[derive(Debug, Clone, Serialize)]
pub struct Sustained {
    pub mode: Mode,
    pub k: usize,
    pub contention: String,
    pub kafka: String,
    /// The highest rate sustained with every lower rate of the series sustained too; `None`
    /// where the lowest rate already was not.
    pub rate: Option<f64>,
    /// The lowest rate tried that was not sustained, if any.
    pub failed_at: Option<f64>,
}

/// The sustained rate of every series in `runs`, in the order the series first appear.
pub fn sustained(runs: &[RunResult]) -> Vec<Sustained> {
    let mut series: Vec<(Sustained, Vec<(f64, bool)>)> = Vec::new();
    for r in runs {
        let same = |s: &Sustained| s.mode == r.mode && s.k == r.k && s.contention == r.contention.name && s.kafka == r.kafka.name;
        match series.iter_mut().find(|(s, _)| same(s)) {
            Some((_, points)) => points.push((r.rate, r.sustained)),
            None => series.push((
                Sustained { mode: r.mode, k: r.k, contention: r.contention.name.clone(), kafka: r.kafka.name.clone(), rate: None, failed_at: None },
                vec![(r.rate, r.sustained)],
            )),
        }
    }
    series
        .into_iter()
        .map(|(mut s, mut points)| {
            (s.rate, s.failed_at) = highest_sustained(&mut points);
            s
        })
        .collect()
}

/// Of (rate, sustained) points: the highest rate below the first one not sustained, and
/// that first one.
fn highest_sustained(points: &mut [(f64, bool)]) -> (Option<f64>, Option<f64>) {
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let failed_at = points.iter().find(|p| !p.1).map(|p| p.0);
    (points.iter().take_while(|p| p.1).last().map(|p| p.0), failed_at)
}

/// Markdown: the sustained rate per series, then the target ratios where the series for
/// them are there (parm over none and over the floor, same k, contention and settings).
pub fn sustained_markdown(all: &[Sustained]) -> String {
    let mut md = String::from("## Sustained rate\n\nThe highest offered rate with every query answered by a model or parity path, p99 <= 100 ms and a steady backlog, every lower rate too.\n\n");
    md += "| mode | k | contention | kafka | sustained (q/s) | first rate not sustained |\n|---|---|---|---|---|---|\n";
    let show = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.0}"));
    for s in all {
        md += &format!("| {} | {} | {} | {} | {} | {} |\n", s.mode.as_str(), s.k, s.contention, s.kafka, show(s.rate), show(s.failed_at));
    }
    let find = |mode: Mode, like: &Sustained| all.iter().find(|s| s.mode == mode && s.contention == like.contention && s.kafka == like.kafka);
    let mut ratios = String::new();
    for p in all.iter().filter(|s| s.mode == Mode::Parm) {
        let Some(parm) = p.rate else { continue };
        for (base, target) in [(Mode::None, 0.85), (Mode::Floor, 0.6)] {
            let Some(b) = find(base, p) else { continue };
            let Some(rate) = b.rate.filter(|r| *r > 0.0) else { continue };
            // A base that held every rate tried has a limit above them: the ratio is at most this.
            let bound = if b.failed_at.is_none() { "at most " } else { "" };
            ratios += &format!("| parm k={} / {} | {} | {} | {bound}{:.2} | >= {target} |\n", p.k, base.as_str(), p.contention, p.kafka, parm / rate);
        }
    }
    if !ratios.is_empty() {
        md += "\n| ratio of sustained rates | contention | kafka | measured | target |\n|---|---|---|---|---|\n";
        md += &ratios;
    }
    md
}

/// The role of a service process by its name (`model-worker-3` -> `model workers`).
fn role(name: &str) -> &'static str {
    match name {
        "broker" => "broker",
        "client" => "client",
        "encoder" => "encoder",
        n if n.starts_with("model-worker") => "model workers",
        n if n.starts_with("parity-worker") => "parity workers",
        n if n.starts_with("decoder") => "decoder",
        _ => "other",
    }
}

const ROLES: [&str; 7] = ["broker", "encoder", "model workers", "parity workers", "decoder", "client", "other"];

/// Markdown: CPU microseconds per query sent, by role (the processes of a role summed),
/// one row per run.
pub fn cpu_markdown(runs: &[RunResult]) -> String {
    let mut md = String::from("## CPU per query\n\nCPU time (user + system, from /proc) of each role's processes while the load ran, divided by the queries sent: microseconds per query. `client` is the load generator. On 2 cores, 1,000,000 / total is the rate at which the machine is full.\n\n");
    md += "| run | broker | encoder | model workers | parity workers | decoder | client | other | total |\n|---|---|---|---|---|---|---|---|---|\n";
    for r in runs {
        let mut by_role: BTreeMap<&str, f64> = BTreeMap::new();
        for c in &r.cpu {
            *by_role.entry(role(&c.name)).or_default() += c.per_query_us;
        }
        let cells: Vec<String> = ROLES.iter().map(|k| by_role.get(k).map_or("-".into(), |v| format!("{v:.0}"))).collect();
        md += &format!("| {} | {} | {:.0} |\n", r.label, cells.join(" | "), r.cpu.iter().map(|c| c.per_query_us).sum::<f64>());
    }
    md
}

/// Markdown: each overload run phase by phase (steps of the rate), its recovery, and the
/// resident memory of its processes by role (first, largest and last sample, MiB).
pub fn overload_markdown(runs: &[RunResult]) -> String {
    let mut md = String::new();
    for r in runs {
        let Some(o) = &r.overload else { continue };
        md += &format!("## Overload: {}\n\n| step | rate (q/s) | from s | to s | queries | p50 ms | p99 ms | UNAVAILABLE | late or missing | answered twice |\n|---|---|---|---|---|---|---|---|---|---|\n", r.label);
        for (i, p) in o.phases.iter().enumerate() {
            md += &format!(
                "| {} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {:.1} | {} | {} | {} |\n",
                i + 1, r.rate * p.factor, p.from_s, p.to_s, p.queries, p.p50_ms, p.p99_ms, p.unavailable, p.late_or_missing, p.duplicates
            );
        }
        md += &format!(
            "\nRecovery after the overload (every later 1 s window's p99 within {}x the first step's): {}.\n",
            crate::latency::RECOVERED_FACTOR,
            o.recovery_s.map_or("not within the run".into(), |s| format!("{s:.0} s"))
        );
        let mut by_role: BTreeMap<&str, (f64, f64, f64)> = BTreeMap::new();
        for m in &r.memory {
            let e = by_role.entry(role(&m.name)).or_default();
            (e.0, e.1, e.2) = (e.0 + m.first_mib, e.1 + m.max_mib, e.2 + m.last_mib);
        }
        md += "\n| role | resident MiB: first | largest | last |\n|---|---|---|---|\n";
        for (role, (first, max, last)) in by_role {
            md += &format!("| {role} | {first:.0} | {max:.0} | {last:.0} |\n");
        }
        md += "\n";
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sustained_rate_stops_at_the_first_rate_not_sustained() {
        assert_eq!(highest_sustained(&mut [(3000.0, false), (1000.0, true), (2000.0, true), (4000.0, true)]), (Some(2000.0), Some(3000.0)));
        assert_eq!(highest_sustained(&mut [(1000.0, false), (2000.0, true)]), (None, Some(1000.0)));
        assert_eq!(highest_sustained(&mut [(1000.0, true)]), (Some(1000.0), None));
    }

    #[test]
    fn roles_group_the_processes_of_a_deployment() {
        assert_eq!(role("model-worker-11"), "model workers");
        assert_eq!(role("parity-worker-0"), "parity workers");
        assert_eq!(role("decoder-0"), "decoder");
        assert_eq!(role("encoder"), "encoder");
        assert_eq!(role("broker"), "broker");
        assert_eq!(role("hog"), "other");
    }
}
