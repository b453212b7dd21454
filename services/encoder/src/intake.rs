//! What the encoder accepts from a client: one pure function from the record's bytes to a
//! query it can serve, or the reason it cannot. No Kafka, no clock: fuzzed in
//! `tests/intake_fuzz.rs` over arbitrary bytes and arbitrary schema-valid queries.

use crate::config::CodingPlan;
use parm_common::avro;
use parm_common::records::Query;
use parm_core::Tensor;

/// Bounds on what one client record may ask for, so that memory and every sum stay
/// bounded by configuration, not by what clients send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest query id, in bytes.
    pub max_id_bytes: usize,
    /// Largest latency budget and hard deadline (ms) a query can have; a client's
    /// `deadline_ms` above it is clamped to it.
    pub max_deadline_ms: u64,
    /// The values an input may hold, from the base model's manifest (`input_range`).
    /// Without one, any value whose sum over a group stays finite.
    pub input_range: Option<[f32; 2]>,
}

/// A query the encoder will serve, with its clamped latency budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    pub query: Query,
    pub tensor: Tensor,
    /// Latency budget (ms from receipt), clamped to [`Limits::max_deadline_ms`].
    pub budget_ms: u64,
}

/// Why a record was refused: the query id if it could be read, and a reason.
pub type Refusal = (Option<String>, String);

/// Decodes and checks a client record. Total: every input gives `Ok` or `Err`.
pub fn admit(plan: &CodingPlan, limits: &Limits, default_deadline_ms: u64, payload: &[u8]) -> Result<Admitted, Refusal> {
    let query: Query = avro::decode(payload).map_err(|e| (None, format!("undecodable query: {e:#}")))?;
    if query.id.is_empty() {
        return Err((None, "query id is empty; give every query a unique id".into()));
    }
    if query.id.len() > limits.max_id_bytes {
        return Err((None, format!("query id has {} bytes; ids are limited to {} bytes", query.id.len(), limits.max_id_bytes)));
    }
    let id = Some(query.id.clone());
    let budget_ms = match query.deadline_ms {
        Some(d) if d < 0 => return Err((id, format!("deadline_ms is {d}; it must be at least 0"))),
        Some(d) => u64::try_from(d).unwrap_or(u64::MAX).min(limits.max_deadline_ms),
        None => default_deadline_ms.min(limits.max_deadline_ms),
    };
    let tensor = query.tensor.to_tensor().map_err(|e| (id.clone(), format!("bad tensor: {e}")))?;
    tensor
        .expect_shape(&plan.input_shape)
        .map_err(|e| (id.clone(), format!("wrong tensor shape for this deployment: {e}")))?;
    // Without a stated range: small enough that k of them sum to a finite value.
    let bound = f32::MAX / (plan.k.max(1) as f32) / 2.0;
    let [lo, hi] = limits.input_range.unwrap_or([-bound, bound]);
    if let Some((i, v)) = tensor.data().iter().enumerate().find(|(_, v)| !(lo..=hi).contains(*v)) {
        return Err((id, format!("tensor value at index {i} is {v}, outside the model's input range [{lo}, {hi}]")));
    }
    Ok(Admitted { query, tensor, budget_ms })
}

#[cfg(test)]
mod tests {
    use super::*;
    use parm_common::records::WireTensor;
    use parm_core::ParityEncoder;

    fn plan() -> CodingPlan {
        CodingPlan { k: 2, encoder: ParityEncoder::Addition, input_shape: vec![1, 2, 2], code: None }
    }

    fn limits() -> Limits {
        Limits { max_id_bytes: 16, max_deadline_ms: 1000, input_range: Some([0.0, 1.0]) }
    }

    fn record(id: &str, values: &[f32], deadline_ms: Option<i64>) -> Vec<u8> {
        let tensor = WireTensor { shape: vec![1, 2, 2], data: values.iter().flat_map(|v| v.to_le_bytes()).collect() };
        avro::encode(&Query { id: id.into(), tensor, deadline_ms, sent_at_ms: 0 }).unwrap()
    }

    #[test]
    fn a_good_query_is_admitted_with_its_deadline_clamped() {
        let a = admit(&plan(), &limits(), 50, &record("q", &[0.0, 0.5, 1.0, 0.25], Some(1_000_000_000_000_000))).unwrap();
        assert_eq!(a.budget_ms, 1000);
        assert_eq!(admit(&plan(), &limits(), 50, &record("q", &[0.0; 4], None)).unwrap().budget_ms, 50);
    }

    #[test]
    fn hostile_values_ids_and_deadlines_are_refused_with_a_reason() {
        let refuse = |payload: Vec<u8>, limits: &Limits| admit(&plan(), limits, 50, &payload).unwrap_err().1;
        assert!(refuse(record("q", &[3.0e38; 4], None), &limits()).contains("input range"));
        // Without a stated range, 3e38 is refused too: two of them sum to infinity.
        let open = Limits { input_range: None, ..limits() };
        assert!(refuse(record("q", &[3.0e38; 4], None), &open).contains("input range"));
        assert!(admit(&plan(), &open, 50, &record("q", &[1.0e30; 4], None)).is_ok());
        assert!(refuse(record(&"x".repeat(17), &[0.0; 4], None), &limits()).contains("limited to 16 bytes"));
        assert!(refuse(record("q", &[0.0; 4], Some(-1)), &limits()).contains("at least 0"));
        assert!(refuse(record("", &[0.0; 4], None), &limits()).contains("empty"));
        assert!(refuse(vec![0xff; 9], &limits()).contains("undecodable"));
    }
}
