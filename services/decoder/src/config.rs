//! The decoder's settings.

use parm_common::service_args::ServiceArgs;
use parm_core::{JoinConfig, Policy};

/// `parm decoder`: flags and `PARM_*` variables.
#[derive(clap::Args, Debug, Clone)]
pub struct DecoderArgs {
    #[command(flatten)]
    pub common: ServiceArgs,
    /// When to answer with a reconstruction: `deadline` (wait for the real prediction until
    /// the query's deadline) or `eager` (as soon as parity and the other members are in).
    #[arg(long, env = "PARM_POLICY", default_value = "deadline")]
    pub policy: Policy,
    /// Do not treat a model partition that missed a deadline as lagging.
    #[arg(long, env = "PARM_NO_LAG_AWARENESS")]
    pub no_lag_awareness: bool,
    /// How long (ms) after a group's last hard deadline late predictions are still compared
    /// with their reconstructions.
    #[arg(long, env = "PARM_LATE_LINGER_MS", default_value_t = 2000)]
    pub late_linger_ms: u64,
    /// Longest time (ms) a (re)started decoder replays its backlog before deadlines act.
    #[arg(long, env = "PARM_CATCH_UP_MS", default_value_t = 5000)]
    pub catch_up_ms: u64,
    /// Latest a deadline in a record may lie ahead of now (ms); later ones are clamped, so
    /// no record keeps a group in memory longer (match the encoder's --max-deadline-ms).
    #[arg(long, env = "PARM_MAX_DEADLINE_MS", default_value_t = 60_000)]
    pub max_deadline_ms: u64,
    /// The largest clock skew between the encoder's host and this one that the decoder
    /// corrects for (ms). Deadlines are stamped on the encoder's clock; the decoder learns
    /// the skew from the manifests' stamps (the least `now − created_at` over a minute) and
    /// compares deadlines on its own clock without it.
    #[arg(long, env = "PARM_MAX_CLOCK_SKEW_MS", default_value_t = 1500)]
    pub max_clock_skew_ms: u64,
    /// The most coding groups the join holds at once; past it, the group due first is
    /// settled early (unanswered members reconstructed if possible, else UNAVAILABLE) and
    /// counted in parm_decoder_evicted_groups_total. About 1 KiB per group (k = 2, MNIST).
    #[arg(long, env = "PARM_MAX_GROUPS", default_value_t = 1_000_000)]
    pub max_groups: usize,
    /// Consumer group of the decoders (default: PREFIX-decoder).
    #[arg(long, env = "PARM_DECODER_GROUP")]
    pub group: Option<String>,
}

impl DecoderArgs {
    pub fn group_name(&self) -> String {
        self.group.clone().unwrap_or_else(|| format!("{}-decoder", self.common.kafka.topic_prefix))
    }

    /// How long the decoder remembers an answer it gave: the longest a replayed input can
    /// trail its answer (a deadline is clamped to --max-deadline-ms; a group is kept the
    /// late linger after it; clocks may differ by the skew allowed).
    pub fn answers_keep_ms(&self) -> u64 {
        self.max_deadline_ms.saturating_add(self.late_linger_ms).saturating_add(self.max_clock_skew_ms)
    }

    pub fn join_config(&self) -> JoinConfig {
        JoinConfig { policy: self.policy, lag_awareness: !self.no_lag_awareness, late_linger_ms: self.late_linger_ms, max_groups: self.max_groups }
    }
}
