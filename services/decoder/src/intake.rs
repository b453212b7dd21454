//! What the decoder accepts from its three input topics: one pure, total check per record
//! kind (group manifest, prediction, parity prediction) that turns it into the join's
//! input, with every deadline moved onto this host's clock (the encoder stamped it on its
//! own: [`ClockSkew`], learned from the manifests' `created_at_ms`) and clamped to at most
//! `max_deadline_ms` from now. Fuzzed, with
//! the join behind it, in `tests/intake_fuzz.rs`; nothing here can panic on any bytes.

use parm_common::avro;
use parm_common::records::{GroupManifest, ParityPrediction, Prediction};
use parm_core::clock::ClockSkew;
use parm_core::join::{Arrival, GroupSpec, MemberSpec};
use parm_core::multi_parity::MAX_PARITIES;

/// The largest k parm serves.
pub const MAX_K: i32 = 8;

/// Why a record was refused: the query id if known, and the reason.
pub type Refusal = (Option<String>, String);

/// What the decoder keeps about each query for its result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryMeta {
    pub sent_at_ms: i64,
    pub received_at_ms: i64,
    pub deadline_at_ms: i64,
    pub traceparent: Option<String>,
}

/// A parity prediction, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ParityIn {
    pub group_id: String,
    /// Which parity of the group's code.
    pub parity_index: u32,
    pub members: u32,
    pub output: Vec<f32>,
    pub hard_deadline_at: u64,
}

/// A deadline from a record as the join takes it: on this clock, negative ones long past,
/// and none more than `max_deadline_ms` after `now`.
pub fn clamp_deadline(at_ms: i64, skew: &ClockSkew, now: u64, max_deadline_ms: u64) -> u64 {
    u64::try_from(skew.to_local(at_ms)).unwrap_or(0).min(now.saturating_add(max_deadline_ms))
}

/// A group manifest: at least one member, k in 1..=MAX_K and at least the member count,
/// member indexes unique and below k, parities in 1..=MAX_PARITIES.
/// Its `created_at_ms` (the encoder's clock when it closed the group) teaches `skew`.
pub fn manifest(payload: &[u8], now: u64, max_deadline_ms: u64, skew: &mut ClockSkew) -> Result<GroupSpec<QueryMeta>, Refusal> {
    let m: GroupManifest = avro::decode(payload).map_err(|e| (None, format!("undecodable group manifest: {e:#}")))?;
    check_manifest(&m)?;
    skew.observe(m.created_at_ms, now);
    let skew = &*skew;
    let clamp = |at: i64| clamp_deadline(at, skew, now, max_deadline_ms);
    Ok(GroupSpec {
        group_id: m.group_id,
        members: m
            .members
            .into_iter()
            .map(|g| MemberSpec {
                query_id: g.query_id,
                index: g.index.max(0) as u32,
                model_partition: g.model_partition,
                deadline_at: clamp(g.deadline_at_ms),
                hard_deadline_at: clamp(g.hard_deadline_at_ms),
                meta: QueryMeta { sent_at_ms: g.sent_at_ms, received_at_ms: g.received_at_ms, deadline_at_ms: g.deadline_at_ms, traceparent: g.traceparent },
            })
            .collect(),
        has_parity: m.has_parity,
        k: m.k.max(0) as u32,
        parities: m.parities.max(0) as u32,
    })
}

/// A real prediction: a member index below MAX_K and a non-empty, finite output. Returns its
/// group id and the join's arrival (its meta has no traceparent yet: the service adds its
/// own span's).
pub fn prediction(payload: &[u8], now: u64, max_deadline_ms: u64, skew: &ClockSkew) -> Result<(String, Arrival<QueryMeta>), Refusal> {
    let p: Prediction = avro::decode(payload).map_err(|e| (None, format!("undecodable prediction: {e:#}")))?;
    check_output(&p.output).map_err(|r| (Some(p.query_id.clone()), r))?;
    if !(0..MAX_K).contains(&p.index) {
        return Err((None, format!("prediction of group {} has member index {}, not 0..{MAX_K}", p.group_id, p.index)));
    }
    let arrival = Arrival {
        query_id: p.query_id,
        index: p.index.max(0) as u32,
        model_partition: p.model_partition,
        output: p.output,
        deadline_at: clamp_deadline(p.deadline_at_ms, skew, now, max_deadline_ms),
        hard_deadline_at: clamp_deadline(p.hard_deadline_at_ms, skew, now, max_deadline_ms),
        meta: QueryMeta { sent_at_ms: p.sent_at_ms, received_at_ms: p.received_at_ms, deadline_at_ms: p.deadline_at_ms, traceparent: None },
    };
    Ok((p.group_id, arrival))
}

/// A parity prediction: 1..=MAX_K members, a parity index below MAX_PARITIES and a
/// non-empty, finite output.
pub fn parity(payload: &[u8], now: u64, max_deadline_ms: u64, skew: &ClockSkew) -> Result<ParityIn, Refusal> {
    let p: ParityPrediction = avro::decode(payload).map_err(|e| (None, format!("undecodable parity prediction: {e:#}")))?;
    check_output(&p.output).map_err(|r| (None, format!("parity prediction of group {}: {r}", p.group_id)))?;
    if !(1..=MAX_K).contains(&p.members) {
        return Err((None, format!("parity prediction of group {} encodes {} members, not 1..={MAX_K}", p.group_id, p.members)));
    }
    if !(0..MAX_PARITIES as i32).contains(&p.parity_index) {
        return Err((None, format!("parity prediction of group {} is parity {}, not 0..{MAX_PARITIES}", p.group_id, p.parity_index)));
    }
    Ok(ParityIn {
        group_id: p.group_id,
        parity_index: p.parity_index.max(0) as u32,
        members: p.members.max(0) as u32,
        output: p.output,
        hard_deadline_at: clamp_deadline(p.hard_deadline_at_ms, skew, now, max_deadline_ms),
    })
}

fn check_manifest(m: &GroupManifest) -> Result<(), Refusal> {
    let refuse = |why: String| Err((None, format!("group manifest {}: {why}", m.group_id)));
    if m.members.is_empty() {
        return refuse("it has no members".into());
    }
    if !(1..=MAX_K).contains(&m.k) || m.members.len() > m.k as usize {
        return refuse(format!("{} members with k = {}; k must be 1..={MAX_K} and at least the member count", m.members.len(), m.k));
    }
    if !(1..=MAX_PARITIES as i32).contains(&m.parities) {
        return refuse(format!("it has {} parities; parm serves 1..={MAX_PARITIES}", m.parities));
    }
    let mut seen = std::collections::HashSet::new();
    for g in &m.members {
        if !(0..m.k).contains(&g.index) || !seen.insert(g.index) {
            return refuse(format!("member index {} is out of range 0..{} or repeated", g.index, m.k));
        }
    }
    Ok(())
}

fn check_output(output: &[f32]) -> Result<(), String> {
    if output.is_empty() {
        return Err("prediction output is empty".into());
    }
    if let Some((i, v)) = output.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(format!("prediction output value {i} is {v}; only finite numbers are accepted"));
    }
    Ok(())
}
