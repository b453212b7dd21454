//! The subtraction decoder of the parity-models paper.
//!
//! With P = E(X1..Xk) and a parity model trained so that Fp(P) ≈ Σ F(Xi), a single
//! missing output is recovered as `F(Xj) ≈ Fp(P) − Σ_{i≠j} F(Xi)`.

/// Reconstructs the missing output from the parity output and the other members' outputs.
///
/// Returns `None` when an output's length differs from the parity output's.
pub fn reconstruct<'a>(parity_output: &[f32], others: impl IntoIterator<Item = &'a [f32]>) -> Option<Vec<f32>> {
    let mut out = parity_output.to_vec();
    for other in others {
        if other.len() != out.len() {
            return None;
        }
        for (o, v) in out.iter_mut().zip(other) {
            *o -= v;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::reconstruct;

    #[test]
    fn subtracts_the_others() {
        let got = reconstruct(&[10.0, 1.0], [&[3.0f32, 0.5][..], &[4.0, 0.25][..]]).unwrap();
        assert_eq!(got, vec![3.0, 0.25]);
        assert!(reconstruct(&[1.0], [&[1.0f32, 2.0][..]]).is_none());
    }
}
