//! What a run deploys: the worker counts of its mode, its parity models, and every
//! service process with its flags (the scenario's service, the run's contention, the
//! mode's policy, the Kafka settings).

use super::Env;
use crate::scenario::{Contention, Mode, RunSpec, Scenario, Service};
use parm::launch::DeploymentSpec;
use parm_common::model::resolve;

/// The worker counts of a mode.
pub fn topology(mode: Mode, n: usize, k: usize) -> (usize, usize) {
    let extra = (n / k).max(1);
    match mode {
        Mode::None | Mode::Floor => (n, 0),
        Mode::Equal | Mode::Hedge => (n + extra, 0),
        Mode::Parm | Mode::ParmEager | Mode::Backup => (n, extra),
    }
}

/// What a run deploys: its mode's worker counts and the parity models involved.
pub(super) struct Plan {
    pub(super) model_workers: usize,
    pub(super) parity_workers: usize,
    /// The parity model of the run's k (the backup model for `backup`).
    pub(super) parity_model: String,
    /// The parity manifest the encoder takes its k from.
    pub(super) encoder_plan: String,
}

impl Plan {
    /// The plan of `spec`; fails where the mode needs a parity model that `models/` lacks.
    pub(super) fn new(scn: &Scenario, spec: &RunSpec) -> anyhow::Result<Self> {
        let (model_workers, parity_workers) = topology(spec.mode, scn.model_workers, spec.k);
        let parity_model = scn.parity_model_for(spec.mode, spec.k);
        // Without parity, groups only keep the decoder's bookkeeping: any parity manifest
        // gives the encoder a k; the worker counts above carry the k of the comparison.
        let encoder_plan = if spec.mode.has_parity() || resolve(&parity_model).exists() { parity_model.clone() } else { scn.parity_model(2) };
        if spec.mode.has_parity() && !resolve(&parity_model).exists() {
            anyhow::bail!("no parity model {parity_model} in models/: k = {} needs a trained parity model (training/README.md)", spec.k);
        }
        Ok(Self { model_workers, parity_workers, parity_model, encoder_plan })
    }
}

/// Every service process of the run with its flags and environment: the scenario's
/// service, the run's contention, its mode's policy and its Kafka settings.
pub(super) fn deployment_spec(scn: &Scenario, spec: &RunSpec, env: &Env<'_>, plan: &Plan, prefix: &str) -> DeploymentSpec {
    let svc = &scn.service;
    let mut d = DeploymentSpec::new(env.brokers, prefix, plan.model_workers, plan.parity_workers);
    d.log_dir = env.log_dir.join(spec.label());
    if let Some(delivery) = &spec.kafka.delivery {
        d.service_env.push(("PARM_DELIVERY".into(), delivery.clone()));
    }
    if spec.kafka.worker_transactions {
        d.service_env.push(("PARM_WORKER_TRANSACTIONS".into(), "true".into()));
    }
    if let Some(ms) = spec.kafka.commit_interval_ms {
        d.service_env.push(("PARM_COMMIT_INTERVAL_MS".into(), ms.to_string()));
    }
    let kafka_flags: Vec<String> = spec.kafka.set.iter().flat_map(|kv| ["--kafka-set".to_string(), kv.clone()]).collect();
    let with_kafka = |mut args: Vec<String>| {
        args.extend(kafka_flags.iter().cloned());
        args
    };
    d.encoder_args = with_kafka(encoder_args(svc, spec.mode, &plan.encoder_plan));
    d.model_worker_args = with_kafka(worker_args(svc, spec.mode, &svc.model));
    let parity_scale = parity_cost(spec.mode, spec.k);
    let parity_svc = Service { synthetic_ms: svc.synthetic_ms * parity_scale, synthetic_exp_ms: svc.synthetic_exp_ms * parity_scale, ..svc.clone() };
    d.parity_worker_args = with_kafka(worker_args(&parity_svc, spec.mode, &plan.parity_model));
    d.decoder_args = with_kafka(decoder_args(spec.mode));
    // Each worker its own episode sequence; the same worker number gets the same one in
    // every mode, so the modes meet the same slowdowns.
    let c = &spec.contention;
    d.per_model_worker_args = (0..plan.model_workers).map(|i| (i, episode_args(c, scn.seed * 1000 + i as u64))).collect();
    let parity_c = Contention { episode_extra_ms: c.episode_extra_ms * parity_scale, ..c.clone() };
    d.per_parity_worker_args = (0..plan.parity_workers).map(|i| (i, episode_args(&parity_c, scn.seed * 1000 + 500 + i as u64))).collect();
    d
}

/// A parity worker's service time as a share of a model worker's. A backup worker runs
/// every query, k times as many as a parity worker: it stands for a model k times cheaper,
/// so its synthetic service time (and a slowdown's extra time) is F's divided by k. A
/// parity model costs what F costs (the paper's parity models have F's architecture).
pub fn parity_cost(mode: Mode, k: usize) -> f64 {
    if mode == Mode::Backup {
        1.0 / k.max(1) as f64
    } else {
        1.0
    }
}

/// The encoder's flags: the parity plan, deadlines and linger, no parity for the
/// baselines, and routing by health where parm's modes ask for it.
fn encoder_args(svc: &Service, mode: Mode, encoder_plan: &str) -> Vec<String> {
    let mut args = flags([
        ("--parity-model", encoder_plan.to_string()),
        ("--deadline-ms", svc.deadline_ms.to_string()),
        ("--hard-deadline-ms", svc.hard_deadline_ms.to_string()),
        ("--linger-ms", svc.linger_ms.to_string()),
    ]);
    if !mode.has_parity() {
        args.push("--no-parity".into());
    }
    if mode.has_parity() && svc.route_by_health {
        args.push("--route-by-health".into());
    }
    args
}

/// A model or parity worker's flags for `model`: batching, the synthetic service time,
/// skipping answered work, health reports where the encoder routes by them, and copying
/// instead of inference for the floor.
fn worker_args(svc: &Service, mode: Mode, model: &str) -> Vec<String> {
    let mut args = flags([
        ("--model", model.to_string()),
        ("--max-batch", svc.max_batch.to_string()),
        ("--max-wait-ms", svc.max_wait_ms.to_string()),
        ("--delay-fixed-ms", svc.synthetic_ms.to_string()),
        ("--delay-exp-ms", svc.synthetic_exp_ms.to_string()),
    ]);
    if svc.skip_answered {
        args.push("--skip-answered".into());
    }
    if mode == Mode::Floor {
        args.push("--pass-through".into());
    }
    if mode.has_parity() && svc.route_by_health {
        args.extend(["--report-health".to_string(), "--slow-after-ms".to_string(), svc.slow_after_ms().to_string()]);
    }
    args
}

/// The decoder's flags: `eager` for parm-eager, else `deadline`.
fn decoder_args(mode: Mode) -> Vec<String> {
    vec!["--policy".into(), if mode == Mode::ParmEager { "eager".into() } else { "deadline".into() }]
}

/// One worker's slowdown-episode flags under contention `c`, its sequence seeded by `seed`
/// (none without episodes).
fn episode_args(c: &Contention, seed: u64) -> Vec<String> {
    if c.episode_rate <= 0.0 {
        return vec![];
    }
    flags([
        ("--slow-episode-rate", c.episode_rate.to_string()),
        ("--slow-episode-ms", c.episode_ms.to_string()),
        ("--slow-extra-ms", c.episode_extra_ms.to_string()),
        ("--delay-seed", seed.to_string()),
    ])
}

/// Command-line flags from (flag, value) pairs.
fn flags<const N: usize>(pairs: [(&str, String); N]) -> Vec<String> {
    pairs.into_iter().flat_map(|(flag, value)| [flag.to_string(), value]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backup baseline has parm's worker budget, and its backup workers, which run
    /// every query, are k times cheaper than F.
    #[test]
    fn the_backup_mode_has_parms_budget_at_a_kth_of_the_cost() {
        assert_eq!(topology(Mode::Backup, 12, 2), topology(Mode::Parm, 12, 2));
        assert_eq!(topology(Mode::Backup, 12, 4), (12, 3));
        assert_eq!((parity_cost(Mode::Backup, 2), parity_cost(Mode::Backup, 4), parity_cost(Mode::Parm, 2)), (0.5, 0.25, 1.0));
        let s: Scenario = toml::from_str("rates = [100]").unwrap();
        assert_eq!((s.parity_model_for(Mode::Backup, 2), s.parity_model_for(Mode::Parm, 2)), ("mnist-lenet-backup-mlp".to_string(), "mnist-mlp-parity-add-k2".to_string()));
        assert!(resolve(&s.parity_model_for(Mode::Backup, 2)).exists(), "the backup model is in models/");
    }
}
