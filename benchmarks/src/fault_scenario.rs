//! Scenario files of the fault benchmark (`benchmarks/scenarios/faults*.toml`, `soak.toml`):
//! one deployment, one steady stream of valid queries (salted with hostile records if asked),
//! and a schedule of faults applied one after another while it runs.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One scenario file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultScenario {
    /// Names the results folder (default: the file's stem).
    pub name: String,
    pub description: String,
    /// Kafka nodes: 1, or 3 for a replicated cluster (replication factor 3,
    /// `min.insync.replicas` 2). Either way a cluster of the benchmark's own, started fresh
    /// from the jars of `scripts/kafka-local` on ports of its own.
    pub brokers: usize,
    /// Valid queries per second, evenly spaced.
    pub rate: f64,
    pub model_workers: usize,
    pub k: usize,
    /// Deployed model F.
    pub model: String,
    /// The parity model; `{k}` is replaced by k.
    pub parity_model: String,
    pub max_batch: usize,
    /// Synthetic service time per batch (ms), slept by each worker after inference.
    pub synthetic_ms: f64,
    pub deadline_ms: u64,
    pub hard_deadline_ms: u64,
    /// One hostile record (each kind of `parm::hostile` in turn) after every this many
    /// valid queries; 0: none.
    pub salt_every: usize,
    /// Every this-many-th valid query asks for a deadline of 10^15 ms (which the encoder
    /// clamps to its `--max-deadline-ms`); 0: none.
    pub absurd_deadline_every: usize,
    /// Stream time before the first fault (s): the baseline window.
    pub warmup_s: f64,
    /// Stream time after each fault's recovery, before the next fault (s).
    pub settle_s: f64,
    /// Stream time after the warm-up when there are no faults (a soak), s.
    pub duration_s: f64,
    /// How long to wait for the last results once the stream ends (s).
    pub drain_s: f64,
    /// Interval of the services' RSS samples (s).
    pub rss_every_s: f64,
    /// `at-least-once` or `exactly-once` (`--delivery` of every service).
    pub delivery: String,
    /// Exactly once: `--commit-interval-ms` of every service (default: the services').
    pub commit_interval_ms: Option<u64>,
    #[serde(rename = "fault")]
    pub faults: Vec<Fault>,
}

impl Default for FaultScenario {
    fn default() -> Self {
        Self {
            name: String::new(),
            description: String::new(),
            brokers: 1,
            rate: 50.0,
            model_workers: 4,
            k: 2,
            model: "mnist-mlp".into(),
            parity_model: "mnist-mlp-parity-add-k{k}".into(),
            max_batch: 8,
            synthetic_ms: 2.0,
            deadline_ms: 100,
            hard_deadline_ms: 10_000,
            salt_every: 0,
            absurd_deadline_every: 0,
            warmup_s: 10.0,
            settle_s: 20.0,
            duration_s: 0.0,
            drain_s: 60.0,
            rss_every_s: 1.0,
            delivery: "at-least-once".into(),
            commit_interval_ms: None,
            faults: vec![],
        }
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// The row's name in the table (default: action and target).
    #[serde(default)]
    pub name: String,
    pub action: Action,
    /// The service (`encoder`, `model-worker-I`, `parity-worker-I`, `decoder-0`) of `kill`
    /// and `pause`.
    #[serde(default)]
    pub target: Option<String>,
    /// `results` or `predictions`: whose partition-0 leader `leader-kill` kills.
    #[serde(default)]
    pub topic: Option<String>,
    /// How long the fault lasts before its recovery (s).
    pub for_s: f64,
}

/// What a fault does, and how it is undone after `for_s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// SIGKILL a service, then start it again with the same flags.
    Kill,
    /// SIGSTOP a service, then SIGCONT.
    Pause,
    /// Stop every broker (a controlled shutdown), then start them again.
    BrokerStop,
    /// SIGKILL the broker leading partition 0 of `topic`, then start it again.
    LeaderKill,
}

/// Whether a scenario file is the fault benchmark's (`faults*.toml`, `soak*.toml`) rather
/// than the latency benchmark's: `benchmarks/figure` picks the driver by the same rule.
pub fn is_fault_scenario(path: &Path) -> bool {
    path.file_stem().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("faults") || n.starts_with("soak"))
}

impl FaultScenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut s: Self = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if s.name.is_empty() {
            s.name = path.file_stem().and_then(|n| n.to_str()).unwrap_or("faults").to_string();
        }
        s.check().with_context(|| format!("in {}", path.display()))?;
        Ok(s)
    }

    /// The parity model's name for this k.
    pub fn parity_model(&self) -> String {
        self.parity_model.replace("{k}", &self.k.to_string())
    }

    /// Parity workers: one per k model workers.
    pub fn parity_workers(&self) -> usize {
        (self.model_workers / self.k.max(1)).max(1)
    }

    fn check(&mut self) -> anyhow::Result<()> {
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            bail!("rate must be a positive number of queries per second");
        }
        if ![1, 3].contains(&self.brokers) {
            bail!("brokers must be 1 or 3");
        }
        if !matches!(self.delivery.as_str(), "at-least-once" | "exactly-once") {
            bail!("delivery must be \"at-least-once\" or \"exactly-once\", not {:?}", self.delivery);
        }
        if self.k == 0 || self.model_workers < self.k {
            bail!("k must be at least 1 and at most model_workers");
        }
        for f in &mut self.faults {
            let needs_target = matches!(f.action, Action::Kill | Action::Pause);
            if needs_target != f.target.is_some() {
                bail!("fault '{}': kill and pause name a target service, the others none", f.name);
            }
            match (f.action, f.topic.as_deref()) {
                (Action::LeaderKill, Some("results" | "predictions")) if self.brokers > 1 => {}
                (Action::LeaderKill, Some("results" | "predictions")) => bail!("fault '{}': a leader can be lost without data loss only with brokers = 3", f.name),
                (Action::LeaderKill, _) => bail!("fault '{}': leader-kill needs topic = \"results\" or \"predictions\"", f.name),
                (_, Some(_)) => bail!("fault '{}': only leader-kill names a topic", f.name),
                (_, None) => {}
            }
            if !(f.for_s >= 0.0 && f.for_s.is_finite()) {
                bail!("fault '{}': for_s must be a number of seconds", f.name);
            }
            if f.name.is_empty() {
                let what = f.target.clone().or_else(|| f.topic.clone()).unwrap_or_default();
                f.name = format!("{:?} {what} {} s", f.action, f.for_s).to_lowercase();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<FaultScenario> {
        let mut s: FaultScenario = toml::from_str(text)?;
        s.check()?;
        Ok(s)
    }

    #[test]
    fn every_checked_in_fault_scenario_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let loaded: Vec<FaultScenario> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| is_fault_scenario(p))
            .map(|p| FaultScenario::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display())))
            .collect();
        assert!(loaded.len() >= 3, "faults, faults-cluster and soak");
        let soak = loaded.iter().find(|s| s.name == "soak").expect("soak.toml");
        let queries = soak.rate * (soak.warmup_s + soak.duration_s);
        assert!(queries >= 200_000.0, "the soak sends {queries} queries; it must send 200,000");
    }

    #[test]
    fn a_schedule_parses_and_unnamed_faults_get_names() {
        let s = parse("rate = 20\n[[fault]]\naction = \"kill\"\ntarget = \"decoder-0\"\nfor_s = 2\n").unwrap();
        assert_eq!(s.faults[0].name, "kill decoder-0 2 s");
        assert_eq!(s.parity_workers(), 2);
    }

    #[test]
    fn faults_that_cannot_be_applied_are_refused() {
        assert!(parse("rate = 20\n[[fault]]\naction = \"kill\"\nfor_s = 2\n").is_err(), "kill without a target");
        assert!(parse("rate = 20\n[[fault]]\naction = \"leader-kill\"\ntopic = \"results\"\nfor_s = 2\n").is_err(), "a leader of one broker");
        assert!(parse("brokers = 3\nrate = 20\n[[fault]]\naction = \"leader-kill\"\ntopic = \"queries\"\nfor_s = 2\n").is_err());
        assert!(parse("rate = 0").is_err());
        assert!(parse("rate = 20\nbrokers = 2").is_err());
    }
}
