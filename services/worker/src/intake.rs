//! What a worker accepts from its input topic: one pure, total check of a member query (model
//! role) or parity query (parity role), fuzzed in `tests/intake_fuzz.rs`. A refused record
//! becomes a dead letter with the reason; nothing here can panic on any bytes.

use crate::config::Role;
use parm_common::avro;
use parm_common::model::Model;
use parm_common::records::{MemberQuery, ParityQuery};
use parm_core::{ParityEncoder, Tensor};

/// What every record must agree with: the worker's model and its output topic.
#[derive(Debug, Clone)]
pub struct Expect {
    pub role: Role,
    /// The model's name, for messages.
    pub model: String,
    /// The model's input shape (one query).
    pub input_shape: Vec<usize>,
    /// Parity role: the parity model's k and encoder, which every parity query must match.
    pub k: Option<i32>,
    pub encoder: ParityEncoder,
    /// Parity role: the identity (`NAME@CRC32`) of each parity model this worker serves,
    /// parity j's at j; a parity query that names one must match its parity's.
    pub identities: Vec<String>,
    /// The output topic and its partition count: a record naming another decoder
    /// partition is refused.
    pub output_topic: String,
    pub output_partitions: i32,
}

impl Expect {
    /// What a worker of `role` serving `models` (one base model, or the parity models of a
    /// code in parity order, as `parm_common::parity_code::ParityCode` checked them) and
    /// writing `output_topic` expects. A parity model's k and encoder are its manifest's
    /// (addition when unstated, as the encoder reads it).
    pub fn for_models(role: Role, models: &[std::sync::Arc<Model>], output_topic: &str, output_partitions: i32) -> anyhow::Result<Self> {
        let model = models.first().ok_or_else(|| anyhow::anyhow!("no model to serve"))?;
        let m = &model.manifest;
        Ok(Self {
            role,
            model: m.name.clone(),
            input_shape: m.input_shape.clone(),
            k: m.k.and_then(|k| i32::try_from(k).ok()),
            encoder: m.encoder.as_deref().and_then(|e| e.parse().ok()).unwrap_or(ParityEncoder::Addition),
            identities: models.iter().map(|m| m.identity()).collect::<anyhow::Result<_>>()?,
            output_topic: output_topic.to_string(),
            output_partitions,
        })
    }
}

/// A record that passed, with what the worker needs to run and answer it.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// Query id (model role) or group id (parity role): the record key.
    pub key: String,
    pub group_id: String,
    /// Member index (model role) or number of members encoded (parity role).
    pub index: i32,
    /// Parity role: which parity of the code, so which of the worker's models runs it
    /// (always 0 in the model role).
    pub parity_index: usize,
    /// Timing of the query (model role), passed on so the decoder can answer at once.
    pub sent_at_ms: i64,
    pub received_at_ms: i64,
    pub deadline_at_ms: i64,
    pub tensor: Tensor,
    pub decoder_partition: i32,
    pub hard_deadline_at: i64,
}

/// Why a record was refused: the query id if known, and the reason.
pub type Refusal = (Option<String>, String);

/// Decodes and checks one input record. Total: every input gives `Ok` or `Err`.
pub fn admit(expect: &Expect, payload: &[u8]) -> Result<Admitted, Refusal> {
    let item = match expect.role {
        Role::Model => {
            let q: MemberQuery = avro::decode(payload).map_err(|e| (None, format!("undecodable member query: {e:#}")))?;
            let tensor = q.tensor.to_tensor().map_err(|e| (Some(q.query_id.clone()), format!("bad tensor: {e}")))?;
            Admitted {
                key: q.query_id,
                group_id: q.group_id,
                index: q.index,
                parity_index: 0,
                sent_at_ms: q.sent_at_ms,
                received_at_ms: q.received_at_ms,
                deadline_at_ms: q.deadline_at_ms,
                tensor,
                decoder_partition: q.decoder_partition,
                hard_deadline_at: q.hard_deadline_at_ms,
            }
        }
        Role::Parity => {
            let q: ParityQuery = avro::decode(payload).map_err(|e| (None, format!("undecodable parity query: {e:#}")))?;
            // A parity model decodes only parity queries of its own code: refuse, never
            // serve, a query from an encoder configured for another one.
            let encoder_matches = q.encoder.parse::<ParityEncoder>().is_ok_and(|e| e == expect.encoder);
            if expect.k != Some(q.k) || !encoder_matches {
                return Err((None, format!(
                    "parity query of group {} was encoded with k = {} and encoder '{}', but this parity worker serves {} (k = {:?}, encoder {}); start the encoder and the parity workers with the same parity model",
                    q.group_id, q.k, q.encoder, expect.model, expect.k, expect.encoder
                )));
            }
            let served = usize::try_from(q.parity_index).ok().and_then(|j| expect.identities.get(j).map(|id| (j, id)));
            let Some((parity_index, identity)) = served else {
                return Err((None, format!(
                    "parity query of group {} is parity {}, but this parity worker serves parities 0..{} ({}); start the encoder and the parity workers with the same parity models",
                    q.group_id, q.parity_index, expect.identities.len(), expect.identities.join(", ")
                )));
            };
            if !q.parity_model.is_empty() && q.parity_model != *identity {
                return Err((None, format!(
                    "parity query of group {} was encoded for parity model {}, but this parity worker serves {} as parity {parity_index}; start the encoder and the parity workers with the same parity models (the same files)",
                    q.group_id, q.parity_model, identity
                )));
            }
            if !(1..=q.k).contains(&q.members) {
                return Err((None, format!("parity query of group {} encodes {} members, not 1..={}", q.group_id, q.members, q.k)));
            }
            let tensor = q.tensor.to_tensor().map_err(|e| (None, format!("bad parity tensor of group {}: {e}", q.group_id)))?;
            Admitted {
                key: q.group_id.clone(),
                group_id: q.group_id,
                index: q.members,
                parity_index,
                sent_at_ms: 0,
                received_at_ms: 0,
                deadline_at_ms: 0,
                tensor,
                decoder_partition: q.decoder_partition,
                hard_deadline_at: q.hard_deadline_at_ms,
            }
        }
    };
    if !(0..expect.output_partitions).contains(&item.decoder_partition) {
        return Err((
            Some(item.key.clone()),
            format!("decoder_partition {} is not a partition of {} (0..{})", item.decoder_partition, expect.output_topic, expect.output_partitions),
        ));
    }
    item.tensor
        .expect_shape(&expect.input_shape)
        .map_err(|e| (Some(item.key.clone()), format!("wrong tensor shape for model {}: {e}", expect.model)))?;
    Ok(item)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parm_common::model::resolve;
    use parm_common::records::WireTensor;

    fn expect_for(names: &[&str]) -> anyhow::Result<Expect> {
        let models = names.iter().map(|n| Model::load(&resolve(n))).collect::<anyhow::Result<Vec<_>>>()?;
        Expect::for_models(Role::Parity, &models, "t.parity-predictions", 1)
    }

    fn parity_query(e: &Expect, parity_index: i32, parity_model: &str) -> Vec<u8> {
        let q = ParityQuery {
            group_id: "g".into(),
            members: 2,
            k: e.k.unwrap_or(0),
            encoder: e.encoder.to_string(),
            tensor: WireTensor::from_tensor(&Tensor::zeros(e.input_shape.clone())),
            decoder_partition: 0,
            hard_deadline_at_ms: 1,
            parity_model: parity_model.into(),
            parity_index,
        };
        avro::encode(&q).unwrap()
    }

    #[test]
    fn a_parity_worker_takes_its_code_from_the_manifest() {
        let e = expect_for(&["mnist-lenet-parity-concat-k8"]).unwrap();
        assert_eq!((e.k, e.encoder), (Some(8), ParityEncoder::Concatenation));
    }

    /// A worker serving both parities of an r = 2 code runs each parity query on its own
    /// parity's model, and refuses one that names the other parity's model or a parity it
    /// does not serve.
    #[test]
    fn each_parity_query_is_matched_to_its_parity_model() {
        let e = expect_for(&["mnist-lenet-parity-add-k2", "mnist-lenet-parity-add-k2-r2-p1"]).unwrap();
        let (p0, p1) = (e.identities[0].clone(), e.identities[1].clone());
        assert_eq!(admit(&e, &parity_query(&e, 1, &p1)).unwrap().parity_index, 1);
        assert_eq!(admit(&e, &parity_query(&e, 0, &p0)).unwrap().parity_index, 0);
        assert!(admit(&e, &parity_query(&e, 1, &p0)).unwrap_err().1.contains("as parity 1"));
        assert!(admit(&e, &parity_query(&e, 2, "")).unwrap_err().1.contains("serves parities 0..2"));
        assert!(admit(&e, &parity_query(&e, -1, "")).is_err());
    }
}
