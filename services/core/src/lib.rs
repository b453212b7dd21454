//! # parm-core: the coding logic of parm, with no I/O and no clock
//!
//! Everything here is pure and deterministic: time is an argument (milliseconds since the
//! Unix epoch), nothing talks to Kafka, and every decision can be replayed in a test.
//! The services in the workspace are thin loops that feed this crate messages and write
//! out what it returns.
//!
//! ## Layout
//!
//! - [`tensor`]: a dense `f32` tensor with its shape, validated on construction.
//! - [`encode`]: parity encoders (element-wise addition; image concatenation for k = 2, 4).
//! - [`decode`]: the subtraction decoder, `F(Xj) ≈ Fp(P) − Σ_{i≠j} F(Xi)`.
//! - [`multi_parity`]: r parities per group (a Vandermonde code), recovering up to r missing
//!   members.
//! - [`grouping`]: the encoder's coding-group builder (k queries or a linger, partitions).
//! - [`join`]: the decoder's per-group state machine: policies, deadlines, lag awareness,
//!   exactly one result per query, late-arrival agreement, bounded memory.
//! - [`answers`]: the answers the decoder gave, so a replay is never answered twice.
//! - [`answered`]: what a worker has seen answered, so it can skip work nobody waits for.
//! - [`health`]: the encoder's view of its workers' health, and the parity it may resend.
//! - [`links`]: the decoder's span contexts per group, for a result's trace links.
//! - [`recent`]: a map that forgets by age (what `answers` and `answered` remember).
//! - [`offsets`]: which input offsets are safe to commit while groups are still open.
//! - [`clock`]: the skew between the encoder's clock and this host's, from record stamps.

pub mod answered;
pub mod answers;
pub mod clock;
pub mod decode;
pub mod encode;
pub mod grouping;
pub mod multi_parity;
pub mod health;
pub mod join;
pub mod links;
pub mod offsets;
pub mod recent;
pub mod tensor;

pub use decode::reconstruct;
pub use encode::ParityEncoder;
pub use join::{Emission, Join, JoinConfig, Policy, Source};
pub use tensor::{Tensor, TensorError};

/// Index of the largest value (first one on ties); `None` for an empty slice.
///
/// NaN never wins: it compares below every number.
pub fn top1(values: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in values.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if b >= v => {}
            _ => best = Some((i, v)),
        }
    }
    best.map(|(i, _)| i).or(if values.is_empty() { None } else { Some(0) })
}

#[cfg(test)]
mod tests {
    use super::top1;

    #[test]
    fn top1_picks_first_maximum_and_ignores_nan() {
        assert_eq!(top1(&[0.1, 0.9, 0.9]), Some(1));
        assert_eq!(top1(&[f32::NAN, -1.0, -2.0]), Some(1));
        assert_eq!(top1(&[]), None);
    }
}
