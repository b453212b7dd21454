//! Scenario files of the latency benchmark (`benchmarks/scenarios/*.toml`) and their
//! expansion into runs: every combination of mode, k, arrival rate, contention level and
//! Kafka settings, each run a fresh deployment on topics of its own.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One scenario file. Lists are sweeps; everything has a default so a file says only what
/// it is about.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Names the results folder (default: the file's stem).
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Queries per run (MNIST test images, cycled).
    #[serde(default = "default_queries")]
    pub queries: usize,
    /// Seconds of load per run instead of a number of queries: each run sends rate x
    /// duration queries (the throughput benchmark's steps).
    #[serde(default)]
    pub duration_s: Option<f64>,
    /// The rate over a run, in steps relative to the run's rate (an overload run); each run
    /// then sends the queries its steps add up to.
    #[serde(default)]
    pub steps: Vec<RateStep>,
    /// The first queries of a run whose latency is not counted (connections, caches).
    #[serde(default = "default_warmup")]
    pub warmup: usize,
    /// N: model workers of `none` and `parm` (`equal` and `hedge` get N + N/k).
    #[serde(default = "default_workers")]
    pub model_workers: usize,
    #[serde(default = "default_modes")]
    pub modes: Vec<Mode>,
    #[serde(default = "default_ks")]
    pub ks: Vec<usize>,
    /// Arrival rates (queries per second, Poisson).
    pub rates: Vec<f64>,
    /// Seed of the arrival times and of the workers' slowdown episodes.
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub service: Service,
    /// Contention levels; none given: one level without contention.
    #[serde(default)]
    pub contention: Vec<Contention>,
    /// Sets of librdkafka settings for every client (services and load generator); none
    /// given: the services' defaults.
    #[serde(default)]
    pub kafka: Vec<KafkaVariant>,
}

/// A step of a run's rate: `factor` times the run's rate for `seconds`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateStep {
    pub factor: f64,
    pub seconds: f64,
}

/// A deployment's way of answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// N model workers, no redundancy.
    None,
    /// The paper's Equal-Resources: N + N/k model workers, no redundancy.
    Equal,
    /// N + N/k model workers; a query unanswered after the hedge delay is sent again
    /// (client side), copies capped at 1/k of the queries.
    Hedge,
    /// N model workers + N/k parity workers, decoder policy `deadline`.
    Parm,
    /// The same with the paper's policy: reconstruct as soon as possible.
    ParmEager,
    /// `none`'s deployment with inference replaced by a copy of the input (the workers'
    /// `--pass-through`): the same records and Kafka hops, the plumbing's own limit.
    Floor,
    /// The paper's approximate-backup baseline at parm's worker budget: N model workers +
    /// N/k backup workers that run a cheaper model on *every* query (so each must be k
    /// times cheaper to keep up: its synthetic service time is F's divided by k), and the
    /// decoder answers with the backup's output when F's is not in by the deadline. Served
    /// by parm's own path: groups of one, whose "parity model" is the backup model
    /// (`Service::backup_model`, a k = 1 manifest), decoded as Fp(X) − nothing.
    Backup,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Equal => "equal",
            Mode::Hedge => "hedge",
            Mode::Parm => "parm",
            Mode::ParmEager => "parm-eager",
            Mode::Floor => "floor",
            Mode::Backup => "backup",
        }
    }

    /// Whether the mode's deployment depends on k (`none` and `floor` do not: they are
    /// run once, at a scenario's first k).
    pub fn uses_k(self) -> bool {
        !matches!(self, Mode::None | Mode::Floor)
    }

    /// Whether the mode sends parity queries (parm's modes, and the backup's copies).
    pub fn has_parity(self) -> bool {
        matches!(self, Mode::Parm | Mode::ParmEager | Mode::Backup)
    }
}

/// Service time and deadlines, the same for every mode.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Service {
    /// Deployed model F (real inference on every query).
    pub model: String,
    /// The parity model for k: this name with `{k}` replaced (a name in `models/`).
    pub parity_model: String,
    /// The approximate backup of mode `backup`: a k = 1 "parity" manifest of a cheaper
    /// model (a name in `models/`).
    pub backup_model: String,
    /// Synthetic service time per batch (ms), slept after the real inference, so that 12+
    /// workers fit on two cores: a sleep holds the worker, not the CPU.
    pub synthetic_ms: f64,
    /// Mean of an exponential synthetic part per batch (ms).
    pub synthetic_exp_ms: f64,
    pub max_batch: usize,
    pub max_wait_ms: u64,
    /// Budget after which the decoder may reconstruct (`parm`), ms from the encoder's receipt.
    pub deadline_ms: u64,
    /// After this the decoder answers UNAVAILABLE.
    pub hard_deadline_ms: u64,
    pub linger_ms: u64,
    /// Hedge delay: a fixed number of ms, or absent for the observed p95.
    pub hedge_after_ms: Option<f64>,
    /// Quantile of the observed latencies used as the hedge delay when no fixed delay is set.
    pub hedge_quantile: f64,
    /// Workers skip queued work already answered (`--skip-answered`: a reconstructed
    /// member, a parity whose members are all back), as the paper's system cancels it.
    /// Only parm's modes have such work.
    pub skip_answered: bool,
    /// parm's encoder routes coding groups by the workers' health reports
    /// (`--route-by-health`; the workers run with `--report-health`). Member queries go
    /// where they would go without it. Only parm's modes use it.
    pub route_by_health: bool,
    /// A batch slower than this makes a worker report itself slow (ms); absent: twice the
    /// mean synthetic service time, at least 20 ms.
    pub slow_after_ms: Option<u64>,
}

impl Service {
    /// The `--slow-after-ms` the workers get.
    pub fn slow_after_ms(&self) -> u64 {
        self.slow_after_ms.unwrap_or_else(|| (2.0 * (self.synthetic_ms + self.synthetic_exp_ms)).round().max(20.0) as u64)
    }
}

impl Default for Service {
    fn default() -> Self {
        Self {
            model: "mnist-mlp".into(),
            parity_model: "mnist-mlp-parity-add-k{k}".into(),
            backup_model: "mnist-lenet-backup-mlp".into(),
            synthetic_ms: 0.0,
            synthetic_exp_ms: 0.0,
            max_batch: 1,
            max_wait_ms: 0,
            deadline_ms: 50,
            hard_deadline_ms: 2000,
            linger_ms: 5,
            hedge_after_ms: None,
            hedge_quantile: 0.95,
            skip_answered: true,
            route_by_health: true,
            slow_after_ms: None,
        }
    }
}

/// How much the machine and the workers are disturbed.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Contention {
    pub name: String,
    /// Slowdown episodes per second per worker (Poisson, seeded per worker), imitating the
    /// paper's background shuffles; model and parity workers alike.
    pub episode_rate: f64,
    /// Length of an episode (ms).
    pub episode_ms: f64,
    /// Extra service time per batch during an episode (ms).
    pub episode_extra_ms: f64,
    /// Busy-loop processes on the machine for the whole run (real CPU contention).
    pub cpu_hogs: usize,
    /// Their niceness (0: they compete with the services as equals).
    pub cpu_hog_nice: i32,
}

impl Contention {
    pub fn none() -> Self {
        Self { name: "none".into(), ..Default::default() }
    }

    /// Expected number of workers in an episode at any moment, out of `workers`.
    pub fn expected_concurrent(&self, workers: usize) -> f64 {
        let busy = self.episode_rate * self.episode_ms / 1000.0;
        workers as f64 * busy / (1.0 + busy)
    }
}

/// A named set of librdkafka settings, with the services' delivery mode.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaVariant {
    pub name: String,
    #[serde(default)]
    pub set: Vec<String>,
    /// `--delivery` of every service (default: at-least-once).
    #[serde(default)]
    pub delivery: Option<String>,
    /// `--commit-interval-ms` of every service (exactly once).
    #[serde(default)]
    pub commit_interval_ms: Option<u64>,
    /// `--worker-transactions` on every worker (exactly once: the workers commit in
    /// transactions too, instead of writing their predictions outside them).
    #[serde(default)]
    pub worker_transactions: bool,
}

/// One run of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct RunSpec {
    pub mode: Mode,
    pub k: usize,
    pub rate: f64,
    pub contention: Contention,
    pub kafka: KafkaVariant,
}

impl RunSpec {
    /// A file-name-safe label.
    pub fn label(&self) -> String {
        format!("{}-k{}-{}qps-{}-{}", self.mode.as_str(), self.k, self.rate, self.contention.name, self.kafka.name)
    }
}

fn default_queries() -> usize {
    2000
}
fn default_warmup() -> usize {
    100
}
fn default_workers() -> usize {
    12
}
fn default_modes() -> Vec<Mode> {
    vec![Mode::None, Mode::Equal, Mode::Hedge, Mode::Parm, Mode::ParmEager]
}
fn default_ks() -> Vec<usize> {
    vec![2]
}
fn default_seed() -> u64 {
    1
}

impl Scenario {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading scenario {}", path.display()))?;
        let mut s: Scenario = toml::from_str(&text).with_context(|| format!("parsing scenario {}", path.display()))?;
        if s.name.is_empty() {
            s.name = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "scenario".into());
        }
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.rates.is_empty() || self.rates.iter().any(|r| *r <= 0.0) {
            bail!("scenario {}: rates must be a non-empty list of positive numbers", self.name);
        }
        if let Some(d) = self.duration_s.filter(|d| !(d.is_finite() && *d > 0.0)) {
            bail!("scenario {}: duration_s must be a positive number of seconds (got {d})", self.name);
        }
        if self.steps.iter().any(|s| !(s.factor.is_finite() && s.factor > 0.0 && s.seconds.is_finite() && s.seconds > 0.0)) {
            bail!("scenario {}: every step needs a positive factor and positive seconds", self.name);
        }
        if let Some(r) = self.rates.iter().copied().find(|r| self.queries_at(*r) <= self.warmup) {
            bail!("scenario {}: {} queries at {r} q/s do not exceed warmup ({})", self.name, self.queries_at(r), self.warmup);
        }
        if let Some(k) = self.ks.iter().find(|k| **k < 1 || **k > self.model_workers) {
            bail!("scenario {}: k = {k} needs 1 <= k <= model_workers ({})", self.name, self.model_workers);
        }
        if self.modes.is_empty() {
            bail!("scenario {}: no modes", self.name);
        }
        if let Some(v) = self.kafka.iter().find(|v| v.delivery.as_deref().is_some_and(|d| !matches!(d, "at-least-once" | "exactly-once"))) {
            bail!("scenario {}: kafka variant {}: delivery must be at-least-once or exactly-once", self.name, v.name);
        }
        Ok(())
    }

    /// Every run, in the order they are run: the modes side by side innermost, so that
    /// slow drifts of a shared machine affect them alike.
    pub fn runs(&self) -> Vec<RunSpec> {
        let levels = if self.contention.is_empty() { vec![Contention::none()] } else { self.contention.clone() };
        let variants =
            if self.kafka.is_empty() { vec![KafkaVariant { name: "default".into(), ..Default::default() }] } else { self.kafka.clone() };
        let mut out = Vec::new();
        for kafka in &variants {
            for contention in &levels {
                for (ki, &k) in self.ks.iter().enumerate() {
                    for &rate in &self.rates {
                        for &mode in self.modes.iter().filter(|m| ki == 0 || m.uses_k()) {
                            out.push(RunSpec { mode, k, rate, contention: contention.clone(), kafka: kafka.clone() });
                        }
                    }
                }
            }
        }
        out
    }

    /// Queries in a run at `rate`: what its steps add up to, else rate x `duration_s`
    /// where that is set, else `queries`.
    pub fn queries_at(&self, rate: f64) -> usize {
        if !self.steps.is_empty() {
            return self.steps.iter().map(|s| rate * s.factor * s.seconds).sum::<f64>().round() as usize;
        }
        match self.duration_s {
            Some(d) => (rate * d).round() as usize,
            None => self.queries,
        }
    }

    /// The rate steps as the load generator takes them: (factor, seconds).
    pub fn rate_steps(&self) -> Vec<(f64, f64)> {
        self.steps.iter().map(|s| (s.factor, s.seconds)).collect()
    }

    /// The parity model's name for `k`.
    pub fn parity_model(&self, k: usize) -> String {
        self.service.parity_model.replace("{k}", &k.to_string())
    }

    /// What a run of `mode` at `k` sends its parity queries to: the backup model for
    /// `backup`, else the parity model of k.
    pub fn parity_model_for(&self, mode: Mode, k: usize) -> String {
        if mode == Mode::Backup {
            self.service.backup_model.clone()
        } else {
            self.parity_model(k)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_checked_in_scenario_parses_and_expands() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "toml") && !crate::fault_scenario::is_fault_scenario(&path) {
                let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                assert!(!s.runs().is_empty(), "{}", path.display());
                n += 1;
            }
        }
        assert!(n >= 5, "expected the five scenarios, found {n}");
    }

    #[test]
    fn a_duration_sets_the_queries_per_rate() {
        let s: Scenario = toml::from_str("rates = [100, 2500]\nduration_s = 30\nwarmup = 500").unwrap();
        assert_eq!((s.queries_at(100.0), s.queries_at(2500.0)), (3000, 75000));
        s.check().unwrap();
        let stepped: Scenario = toml::from_str("rates = [1000]\nsteps = [{ factor = 1, seconds = 20 }, { factor = 1.5, seconds = 60 }]").unwrap();
        assert_eq!(stepped.queries_at(1000.0), 20_000 + 90_000);
        let short: Scenario = toml::from_str("rates = [10]\nduration_s = 30\nwarmup = 500").unwrap();
        assert!(short.check().is_err(), "300 queries cannot cover a warm-up of 500");
    }

    #[test]
    fn runs_are_the_product_of_the_sweeps() {
        let s: Scenario = toml::from_str(
            r#"
            rates = [100, 200]
            ks = [2, 3]
            modes = ["none", "parm"]
            [[contention]]
            name = "a"
            [[contention]]
            name = "b"
            episode_rate = 0.2
            episode_ms = 1000
        "#,
        )
        .unwrap();
        // `none` runs at the first k only: its deployment does not depend on k.
        assert_eq!(s.runs().len(), 2 * 2 * (2 + 1));
        assert!((s.contention[1].expected_concurrent(18) - 3.0).abs() < 1e-9);
        assert_eq!(s.parity_model(3), "mnist-mlp-parity-add-k3");
    }
}
