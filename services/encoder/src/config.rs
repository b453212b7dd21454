//! The encoder's settings.

use anyhow::Context as _;
use parm_common::service_args::ServiceArgs;
use crate::intake::Limits;
use parm_common::model::{identity, resolve, ModelManifest};
use parm_common::parity_code::ParityCode;
use parm_core::multi_parity::LinearCode;
use parm_core::ParityEncoder;

/// `parm encoder`: flags and `PARM_*` variables.
#[derive(clap::Args, Debug, Clone)]
pub struct EncoderArgs {
    #[command(flatten)]
    pub common: ServiceArgs,
    /// The parity model (name in models/ or path to its manifest): k, the encoder and the
    /// input shape are read from it. For r parities per group, the r parity models of the
    /// code separated by commas (e.g. mnist-lenet-parity-add-k2,mnist-lenet-parity-add-k2-r2-p1):
    /// each group then gets r parity queries, and any r of its members can be decoded.
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
    /// r > 1: the code whose rows j > 0 encode parities 1..r (row 0 is `encoder`'s sum).
    pub code: Option<LinearCode>,
}

impl CodingPlan {
    /// How many parity queries each group gets.
    pub fn parities(&self) -> usize {
        self.code.as_ref().map_or(1, LinearCode::r)
    }
}

impl EncoderArgs {
    pub fn group_name(&self) -> String {
        self.group.clone().unwrap_or_else(|| format!("{}-encoder", self.common.kafka.topic_prefix))
    }

    fn parity_code(&self) -> anyhow::Result<ParityCode> {
        ParityCode::load(&self.parity_model).context("--parity-model")
    }

    pub fn coding_plan(&self) -> anyhow::Result<CodingPlan> {
        let c = self.parity_code()?;
        let first = c.parities.first().map(|p| &p.manifest).ok_or_else(|| anyhow::anyhow!("no parity model"))?;
        if !(1..=8).contains(&c.k) {
            anyhow::bail!("parity model {} has k = {}; parm supports k from 1 to 8", first.name, c.k);
        }
        let code = if c.r() > 1 { Some(LinearCode::new(c.k, c.r())?) } else { None };
        Ok(CodingPlan { k: c.k, encoder: c.encoder, input_shape: first.input_shape.clone(), code })
    }

    /// Each parity model's identity (`NAME@CRC32` of its file), parity j's on parity j's
    /// queries, so that a parity worker serving another one refuses them.
    pub fn parity_identities(&self) -> anyhow::Result<Vec<String>> {
        self.parity_code()?.parities.iter().map(|p| identity(&p.manifest, &p.onnx)).collect()
    }

    /// The limits on client records: the flags, and the input range of the base model the
    /// parity model protects (its manifest's `input_range`, else the parity model's).
    pub fn limits(&self) -> anyhow::Result<Limits> {
        if self.hard_deadline_ms > self.max_deadline_ms {
            anyhow::bail!("--hard-deadline-ms {} is above --max-deadline-ms {}; raise the maximum or lower the hard deadline", self.hard_deadline_ms, self.max_deadline_ms);
        }
        let c = self.parity_code()?;
        let m = &c.parities.first().ok_or_else(|| anyhow::anyhow!("no parity model"))?.manifest;
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
    fn a_second_parity_alone_is_refused_with_the_list_to_give() {
        let e = plan("mnist-lenet-parity-add-k2-r2-p1").unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("parity 1 of a code with 2 parities") && msg.contains("separated by commas"), "{msg}");
    }

    #[test]
    fn the_parity_models_of_a_two_parity_code_give_r_2() {
        let p = plan("mnist-lenet-parity-add-k2,mnist-lenet-parity-add-k2-r2-p1").unwrap();
        assert_eq!((p.k, p.encoder, p.parities()), (2, ParityEncoder::Addition, 2));
    }
}
