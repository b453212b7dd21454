//! The encoder's settings.

use parm_common::service_args::ServiceArgs;
use crate::intake::Limits;
use parm_common::model::{resolve, ModelManifest};
use parm_core::ParityEncoder;

/// `parm encoder`: flags and `PARM_*` variables.
#[derive(clap::Args, Debug, Clone)]
pub struct EncoderArgs {
    #[command(flatten)]
    pub common: ServiceArgs,
    /// The parity model (name in models/ or path to its manifest): k, the encoder and the
    /// input shape are read from it.
    #[arg(long, env = "PARM_PARITY_MODEL", default_value = "mnist-lenet-parity-concat-k2")]
    pub parity_model: String,
    /// Longest time (ms) a query waits for the rest of its group before a partial group is sent.
    #[arg(long, env = "PARM_LINGER_MS", default_value_t = 5)]
    pub linger_ms: u64,
    /// Default latency budget (ms from receipt) after which the decoder may reconstruct,
    /// for queries that do not carry their own.
    #[arg(long, env = "PARM_DEADLINE_MS", default_value_t = 50)]
    pub deadline_ms: u64,
    /// Time (ms from receipt) after which a query with no answer is answered UNAVAILABLE.
    #[arg(long, env = "PARM_HARD_DEADLINE_MS", default_value_t = 2000)]
    pub hard_deadline_ms: u64,
    /// Send no parity queries: members and manifests only, so the decoder answers every
    /// query from its real prediction or UNAVAILABLE (a deployment without redundancy, the
    /// baseline of the latency benchmark). Groups still form, to keep the bookkeeping.
    #[arg(long, env = "PARM_NO_PARITY")]
    pub no_parity: bool,
    /// Read the workers' health reports (PREFIX.health; start them with --report-health):
    /// a query bound for a slow model worker is grouped alone, parity queries go to healthy
    /// parity workers, and a parity worker that turns slow has its recent parity queries
    /// sent again to others. Member queries go where they would go without it.
    #[arg(long, env = "PARM_ROUTE_BY_HEALTH")]
    pub route_by_health: bool,
    /// With --route-by-health: how far back (ms) parity queries are sent again when their
    /// parity worker turns slow (0: never send copies; they cost parity work, which a
    /// machine short of CPU pays for everywhere).
    #[arg(long, env = "PARM_RESEND_WINDOW_MS", default_value_t = 500)]
    pub resend_window_ms: u64,
    /// Longest latency budget or hard deadline (ms) a query can have: a client's
    /// `deadline_ms` above it is clamped to it, so no query keeps decoder state longer.
    #[arg(long, env = "PARM_MAX_DEADLINE_MS", default_value_t = 60_000)]
    pub max_deadline_ms: u64,
    /// Longest query id (bytes); a longer one is a dead letter.
    #[arg(long, env = "PARM_MAX_ID_BYTES", default_value_t = 256)]
    pub max_id_bytes: usize,
    /// Consumer group of the encoders (default: PREFIX-encoder).
    #[arg(long, env = "PARM_ENCODER_GROUP")]
    pub group: Option<String>,
}

/// What the encoder needs to know about the deployment, resolved once at start.
#[derive(Debug, Clone)]
pub struct CodingPlan {
    pub k: usize,
    pub encoder: ParityEncoder,
    pub input_shape: Vec<usize>,
}

impl EncoderArgs {
    pub fn group_name(&self) -> String {
        self.group.clone().unwrap_or_else(|| format!("{}-encoder", self.common.kafka.topic_prefix))
    }

    pub fn coding_plan(&self) -> anyhow::Result<CodingPlan> {
        let (m, _) = ModelManifest::load(&resolve(&self.parity_model))?;
        if m.role != "parity" {
            anyhow::bail!("{} is a {} model; --parity-model needs a parity model (role \"parity\" in its manifest)", m.name, m.role);
        }
        m.check_served()?;
        let k = m.k.ok_or_else(|| anyhow::anyhow!("parity model {} has no k in its manifest", m.name))?;
        if !(1..=8).contains(&k) {
            anyhow::bail!("parity model {} has k = {k}; parm supports k from 1 to 8", m.name);
        }
        let encoder: ParityEncoder = m.encoder.as_deref().unwrap_or("addition").parse().map_err(anyhow::Error::msg)?;
        encoder.validate(k, &m.input_shape)?;
        Ok(CodingPlan { k, encoder, input_shape: m.input_shape })
    }

    /// The parity model's identity (`NAME@CRC32` of its file), put on every parity query
    /// so that a parity worker serving another one refuses it.
    pub fn parity_identity(&self) -> anyhow::Result<String> {
        let (m, onnx) = ModelManifest::load(&resolve(&self.parity_model))?;
        parm_common::model::identity(&m, &onnx)
    }

    /// The limits on client records: the flags, and the input range of the base model the
    /// parity model protects (its manifest's `input_range`, else the parity model's).
    pub fn limits(&self) -> anyhow::Result<Limits> {
        if self.hard_deadline_ms > self.max_deadline_ms {
            anyhow::bail!("--hard-deadline-ms {} is above --max-deadline-ms {}; raise the maximum or lower the hard deadline", self.hard_deadline_ms, self.max_deadline_ms);
        }
        let (m, _) = ModelManifest::load(&resolve(&self.parity_model))?;
        let base_range = m.base.as_deref().and_then(|b| ModelManifest::load(&resolve(b)).ok()).and_then(|(b, _)| b.input_range);
        Ok(Limits { max_id_bytes: self.max_id_bytes, max_deadline_ms: self.max_deadline_ms, input_range: base_range.or(m.input_range) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The encoder's flags, parsed the way `parm encoder` parses them.
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        a: EncoderArgs,
    }

    fn plan(parity_model: &str) -> anyhow::Result<CodingPlan> {
        Flags::try_parse_from(["encoder", "--parity-model", parity_model])?.a.coding_plan()
    }

    #[test]
    fn a_served_parity_model_gives_its_code() {
        let p = plan("mnist-lenet-parity-add-k2").unwrap();
        assert_eq!((p.k, p.encoder), (2, ParityEncoder::Addition));
    }

    #[test]
    fn a_second_parity_of_a_multi_parity_code_is_refused_with_a_reason() {
        let e = plan("mnist-lenet-parity-add-k2-r2-p1").unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("parity 1 of a code with 2 parities") && msg.contains("does not serve"), "{msg}");
    }
}
