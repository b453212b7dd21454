//! The records on parm's topics, mirroring `schemas/*.avsc` field for field.

use crate::avro::AvroRecord;
use parm_core::{Tensor, TensorError};
use serde::{Deserialize, Serialize};

/// The wire form of a tensor (`parm.v1.Tensor`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename = "Tensor")]
pub struct WireTensor {
    pub shape: Vec<i64>,
    #[serde(with = "apache_avro::serde::bytes")]
    pub data: Vec<u8>,
}

impl WireTensor {
    pub fn from_tensor(t: &Tensor) -> Self {
        let (shape, data) = t.to_wire();
        Self { shape, data }
    }

    /// Decodes and validates (shape agrees with data, all values finite).
    pub fn to_tensor(&self) -> Result<Tensor, TensorError> {
        Tensor::from_wire(&self.shape, &self.data)
    }
}

/// `schemas/query.avsc`: what clients produce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Query {
    pub id: String,
    pub tensor: WireTensor,
    pub deadline_ms: Option<i64>,
    pub sent_at_ms: i64,
}

/// `schemas/member-query.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberQuery {
    pub query_id: String,
    pub group_id: String,
    pub index: i32,
    pub tensor: WireTensor,
    pub decoder_partition: i32,
    pub sent_at_ms: i64,
    pub received_at_ms: i64,
    pub deadline_at_ms: i64,
    pub hard_deadline_at_ms: i64,
}

/// `schemas/parity-query.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParityQuery {
    pub group_id: String,
    pub members: i32,
    pub k: i32,
    pub encoder: String,
    pub tensor: WireTensor,
    pub decoder_partition: i32,
    pub hard_deadline_at_ms: i64,
    /// `NAME@CRC32` of the encoder's parity model (`parm_common::model::identity`).
    #[serde(default)]
    pub parity_model: String,
    /// Which parity of the group's code (0 for the one parity of an r = 1 code).
    #[serde(default)]
    pub parity_index: i32,
}

/// One member of `schemas/group-manifest.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupMember {
    pub query_id: String,
    pub index: i32,
    pub model_partition: i32,
    pub sent_at_ms: i64,
    pub received_at_ms: i64,
    pub deadline_at_ms: i64,
    pub hard_deadline_at_ms: i64,
    pub traceparent: Option<String>,
}

/// `schemas/group-manifest.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupManifest {
    pub group_id: String,
    pub k: i32,
    pub encoder: String,
    pub created_at_ms: i64,
    pub members: Vec<GroupMember>,
    pub has_parity: bool,
    /// How many parity queries were sent (r), when `has_parity`.
    #[serde(default = "one")]
    pub parities: i32,
}

fn one() -> i32 {
    1
}

/// `schemas/prediction.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub query_id: String,
    pub group_id: String,
    pub index: i32,
    pub model_partition: i32,
    pub sent_at_ms: i64,
    pub received_at_ms: i64,
    pub deadline_at_ms: i64,
    pub output: Vec<f32>,
    pub worker: String,
    pub batch_size: i32,
    pub inference_us: i64,
    pub finished_at_ms: i64,
    pub hard_deadline_at_ms: i64,
}

/// `schemas/parity-prediction.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParityPrediction {
    pub group_id: String,
    pub members: i32,
    pub output: Vec<f32>,
    pub worker: String,
    pub batch_size: i32,
    pub inference_us: i64,
    pub finished_at_ms: i64,
    pub hard_deadline_at_ms: i64,
    /// Which parity of the group's code, copied from the parity query.
    #[serde(default)]
    pub parity_index: i32,
}

/// The `Source` enum of `schemas/result.avsc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename = "Source", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResultSource {
    Model,
    Reconstructed,
    Unavailable,
}

impl From<parm_core::Source> for ResultSource {
    fn from(s: parm_core::Source) -> Self {
        match s {
            parm_core::Source::Model => ResultSource::Model,
            parm_core::Source::Reconstructed => ResultSource::Reconstructed,
            parm_core::Source::Unavailable => ResultSource::Unavailable,
        }
    }
}

/// `schemas/result.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename = "Result")]
pub struct QueryResult {
    pub query_id: String,
    pub group_id: String,
    pub source: ResultSource,
    pub output: Vec<f32>,
    pub top1: Option<i32>,
    pub sent_at_ms: i64,
    pub received_at_ms: i64,
    pub emitted_at_ms: i64,
    pub deadline_at_ms: i64,
}

/// `schemas/dead-letter.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub service: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub query_id: Option<String>,
    pub reason: String,
    #[serde(with = "apache_avro::serde::bytes")]
    pub payload: Vec<u8>,
    pub at_ms: i64,
}

/// `schemas/worker-health.avsc`: a worker's report of whether it is slow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerHealth {
    pub worker: String,
    pub role: String,
    pub partitions: Vec<i32>,
    pub slow: bool,
    pub busy_since_ms: Option<i64>,
    pub at_ms: i64,
}

macro_rules! avro_record {
    ($($t:ty => $file:literal),* $(,)?) => {
        $(impl AvroRecord for $t { const SCHEMA_FILE: &'static str = $file; })*
    };
}
avro_record!(
    Query => "query.avsc",
    MemberQuery => "member-query.avsc",
    ParityQuery => "parity-query.avsc",
    GroupManifest => "group-manifest.avsc",
    Prediction => "prediction.avsc",
    ParityPrediction => "parity-prediction.avsc",
    QueryResult => "result.avsc",
    DeadLetter => "dead-letter.avsc",
    WorkerHealth => "worker-health.avsc",
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::{decode, encode};

    #[test]
    fn every_record_round_trips_through_its_schema() {
        let t = WireTensor::from_tensor(&Tensor::new(vec![1, 2], vec![0.5, -1.0]).unwrap());
        let q = Query { id: "q1".into(), tensor: t.clone(), deadline_ms: Some(20), sent_at_ms: 7 };
        assert_eq!(decode::<Query>(&encode(&q).unwrap()).unwrap(), q);
        let q2 = Query { deadline_ms: None, ..q.clone() };
        assert_eq!(decode::<Query>(&encode(&q2).unwrap()).unwrap(), q2);
        let r = QueryResult {
            query_id: "q1".into(),
            group_id: "p0-o1".into(),
            source: ResultSource::Reconstructed,
            output: vec![1.0, 2.0],
            top1: Some(1),
            sent_at_ms: 1,
            received_at_ms: 2,
            emitted_at_ms: 3,
            deadline_at_ms: 4,
        };
        assert_eq!(decode::<QueryResult>(&encode(&r).unwrap()).unwrap(), r);
        let m = GroupManifest {
            group_id: "g".into(),
            k: 2,
            encoder: "addition".into(),
            created_at_ms: 1,
            members: vec![GroupMember {
                query_id: "a".into(),
                index: 0,
                model_partition: 1,
                sent_at_ms: 1,
                received_at_ms: 2,
                deadline_at_ms: 3,
                hard_deadline_at_ms: 4,
                traceparent: Some("00-abc-def-01".into()),
            }],
            has_parity: false,
            parities: 2,
        };
        assert_eq!(decode::<GroupManifest>(&encode(&m).unwrap()).unwrap(), m);
        let d = DeadLetter {
            service: "encoder".into(),
            topic: "t".into(),
            partition: 0,
            offset: 1,
            key: None,
            query_id: None,
            reason: "bad".into(),
            payload: vec![1, 2, 3],
            at_ms: 5,
        };
        assert_eq!(decode::<DeadLetter>(&encode(&d).unwrap()).unwrap(), d);
        for busy_since_ms in [Some(9), None] {
            let h = WorkerHealth { worker: "model-1".into(), role: "model".into(), partitions: vec![3, 4], slow: true, busy_since_ms, at_ms: 10 };
            assert_eq!(decode::<WorkerHealth>(&encode(&h).unwrap()).unwrap(), h);
        }
    }

    #[test]
    fn garbage_and_wrong_schemas_are_rejected_with_a_reason() {
        assert!(decode::<Query>(&[0xff, 0xff, 0xff]).is_err());
        let d = DeadLetter {
            service: "s".into(),
            topic: "t".into(),
            partition: 0,
            offset: 1,
            key: None,
            query_id: None,
            reason: "r".into(),
            payload: vec![],
            at_ms: 5,
        };
        let err = decode::<Query>(&encode(&d).unwrap()).unwrap_err().to_string();
        assert!(err.contains("query.avsc"), "{err}");
    }
}
