//! The worker's settings.

use parm_common::service_args::ServiceArgs;
use crate::delay::DelayArgs;

/// Which model a worker serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The deployed model F, on member queries.
    Model,
    /// The parity model Fp, on parity queries.
    Parity,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Model => "model",
            Role::Parity => "parity",
        }
    }
}

/// `parm model-worker` / `parm parity-worker`: flags and `PARM_*` variables.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub common: ServiceArgs,
    /// The model to serve (name in models/ or path to its manifest). Default: mnist-lenet
    /// for a model worker, mnist-lenet-parity-concat-k2 for a parity worker. A parity
    /// worker of a code with r parities per group serves all r parity models, named
    /// separated by commas as for the encoder's --parity-model, and runs each parity query
    /// on its parity's model.
    #[arg(long, env = "PARM_MODEL")]
    pub model: Option<String>,
    /// Largest micro-batch.
    #[arg(long, env = "PARM_MAX_BATCH", default_value_t = 8)]
    pub max_batch: usize,
    /// Longest (ms) the first query of a batch waits for more.
    #[arg(long, env = "PARM_MAX_WAIT_MS", default_value_t = 1)]
    pub max_wait_ms: u64,
    /// Also run queries whose hard deadline has passed (by default they are skipped).
    #[arg(long, env = "PARM_KEEP_EXPIRED")]
    pub keep_expired: bool,
    /// The clock skew (ms) between the encoder's host and this one that is allowed for:
    /// a query counts as past its hard deadline (stamped on the encoder's clock) only this
    /// long after it, so a clock ahead by up to this much never skips work still awaited.
    #[arg(long, env = "PARM_MAX_CLOCK_SKEW_MS", default_value_t = 1500)]
    pub max_clock_skew_ms: u64,
    /// Skip work nobody waits for: a member query already answered (e.g. reconstructed)
    /// and a parity query whose members are all answered, as read from PREFIX.results
    /// (the paper's cancellation of queued work).
    #[arg(long, env = "PARM_SKIP_ANSWERED")]
    pub skip_answered: bool,
    /// Report whether this worker is slow to PREFIX.health (on change and once a second),
    /// for an encoder started with --route-by-health.
    #[arg(long, env = "PARM_REPORT_HEALTH")]
    pub report_health: bool,
    /// A batch running longer than this (ms) makes the worker slow (with --report-health);
    /// set it to a few times the model's usual batch time.
    #[arg(long, env = "PARM_SLOW_AFTER_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub slow_after_ms: u64,
    /// Benchmarks only: answer each query with a copy of the first values of its input
    /// instead of running the model (the pass-through floor of `benchmarks/figure
    /// throughput`: the same records and Kafka hops, no inference). The answers are wrong.
    #[arg(long, env = "PARM_PASS_THROUGH")]
    pub pass_through: bool,
    /// Exactly once: run this worker's steps in Kafka transactions too. By default a worker
    /// of an exactly-once deployment writes its predictions outside transactions, as at
    /// least once, reading only committed queries: a prediction is a pure function of its
    /// committed query, and the decoder ignores a second prediction for a member and never
    /// answers a query twice, so a replay after a crash reaches no client, and each answer
    /// waits for two commits (encoder, decoder) instead of three.
    #[arg(long, env = "PARM_WORKER_TRANSACTIONS")]
    pub worker_transactions: bool,
    /// Name of this worker in predictions and logs (default: role-pid).
    #[arg(long, env = "PARM_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Consumer group (default: PREFIX-model-workers or PREFIX-parity-workers).
    #[arg(long, env = "PARM_WORKER_GROUP")]
    pub group: Option<String>,
    #[command(flatten)]
    pub delay: DelayArgs,
}

impl WorkerArgs {
    pub fn model_name(&self, role: Role) -> String {
        self.model.clone().unwrap_or_else(|| match role {
            Role::Model => "mnist-lenet".into(),
            Role::Parity => "mnist-lenet-parity-concat-k2".into(),
        })
    }

    pub fn group_name(&self, role: Role) -> String {
        self.group.clone().unwrap_or_else(|| format!("{}-{}-workers", self.common.kafka.topic_prefix, role.as_str()))
    }

    pub fn worker_name(&self, role: Role) -> String {
        self.worker_id.clone().unwrap_or_else(|| format!("{}-{}", role.as_str(), std::process::id()))
    }
}
