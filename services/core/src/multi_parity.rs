//! r parities per coding group: a systematic linear code over the reals that recovers any
//! r or fewer missing members of a group of k.
//!
//! Parity j of members X_1..X_k is `E_j = Σ_i w_ji · X_i` ([`LinearCode::encode`]), and its
//! parity model is trained so that `Fp_j(E_j) ≈ Σ_i w_ji · F(X_i)`. The decoder
//! ([`LinearCode::recover`]) subtracts the outputs it has from each parity output that is
//! in, which leaves `W[P, M] · Y = B` for the missing members M and the parities P that
//! came, and solves it; with more parities than missing members it takes the
//! least-squares solution, which averages the parity models' errors instead of picking
//! some of them.
//!
//! **The weights** are a Vandermonde matrix, `w_ji = x_i^j`, on nodes spaced evenly in
//! [1, 2] (`x_i = 1 + i / (k − 1)`):
//! - row 0 is all ones, so r = 1 is the addition code served today, unchanged;
//! - with distinct positive nodes the matrix is totally positive (every minor is > 0,
//!   Gantmacher–Krein), so *every* square submatrix is invertible: any e ≤ r missing
//!   members are recovered from any e parities that arrive, whichever they are (a plain
//!   Vandermonde on nodes of both signs loses this: rows {0, 2} are singular on ±x);
//! - nodes in [1, 2] keep every parity's weights between 1 and 2^(r−1), on the scale of the
//!   addition code's inputs that the parity models are trained on, while spacing the nodes
//!   as far apart as that range allows (the spacing bounds how much two members' errors
//!   are amplified when both are missing). A Cauchy matrix is MDS too but has no all-ones
//!   row, and its weights fall off as 1 / (y_j − x_i), shrinking later parities' inputs.
//!
//! Pure: no I/O, no clock; everything is computed in f64 and returned as f32.

use crate::tensor::{Tensor, TensorError};

/// The largest r served: the decoder's systems are at most this big.
pub const MAX_PARITIES: usize = 4;
/// The largest k served.
pub const MAX_MEMBERS: usize = 16;

/// Why a code could not be built, or a group not encoded or recovered.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CodeError {
    #[error("k = {k} and r = {r}: k must be 1..={MAX_MEMBERS} and r 1..={MAX_PARITIES}")]
    Unsupported { k: usize, r: usize },
    #[error("expected {expected} {what}, got {got}")]
    Count { what: &'static str, expected: usize, got: usize },
    #[error("no parity {0}: the code has parities 0..r")]
    NoSuchParity(usize),
    #[error("outputs of different lengths: {0} and {1}")]
    MixedLengths(usize, usize),
    #[error("members have different shapes: {0:?} and {1:?}")]
    MixedShapes(Vec<usize>, Vec<usize>),
    #[error("{missing} members missing but only {parities} parity outputs in")]
    TooFewParities { missing: usize, parities: usize },
    #[error("the system for the missing members is singular")]
    Singular,
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

/// A code with k members and r parities: its weight matrix, r rows of k.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearCode {
    k: usize,
    r: usize,
    /// Row j holds parity j's weight for each member.
    weights: Vec<Vec<f64>>,
}

impl LinearCode {
    pub fn new(k: usize, r: usize) -> Result<Self, CodeError> {
        if !(1..=MAX_MEMBERS).contains(&k) || !(1..=MAX_PARITIES).contains(&r) {
            return Err(CodeError::Unsupported { k, r });
        }
        let node = |i: usize| if k == 1 { 1.0 } else { 1.0 + i as f64 / (k - 1) as f64 };
        let weights = (0..r).map(|j| (0..k).map(|i| node(i).powi(j as i32)).collect()).collect();
        Ok(Self { k, r, weights })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn r(&self) -> usize {
        self.r
    }

    /// Parity `j`'s weight for each member (what its parity model is trained with).
    pub fn weights(&self, j: usize) -> Result<&[f64], CodeError> {
        self.weights.get(j).map(Vec::as_slice).ok_or(CodeError::NoSuchParity(j))
    }

    /// Parity `j`'s input: `Σ_i w_ji · X_i` over up to k members in member order (a
    /// partial group is encoded as if the missing members were zero, like addition).
    pub fn encode(&self, j: usize, members: &[&Tensor]) -> Result<Tensor, CodeError> {
        let w = self.weights(j)?;
        let first = members.first().ok_or(CodeError::Count { what: "members", expected: self.k, got: 0 })?;
        if members.len() > self.k {
            return Err(CodeError::Count { what: "members at most", expected: self.k, got: members.len() });
        }
        if let Some(other) = members.iter().find(|m| m.shape() != first.shape()) {
            return Err(CodeError::MixedShapes(first.shape().to_vec(), other.shape().to_vec()));
        }
        let mut sum = vec![0.0f64; first.len()];
        for (m, wi) in members.iter().zip(w) {
            for (s, v) in sum.iter_mut().zip(m.data()) {
                *s += wi * f64::from(*v);
            }
        }
        Ok(Tensor::new(first.shape().to_vec(), sum.into_iter().map(|v| v as f32).collect())?)
    }

    /// What the parity models are trained to output for parity `j`: `Σ_i w_ji · outputs_i`.
    pub fn combine(&self, j: usize, outputs: &[&[f32]]) -> Result<Vec<f32>, CodeError> {
        let w = self.weights(j)?;
        let len = outputs.first().map_or(0, |o| o.len());
        let mut sum = vec![0.0f64; len];
        for (o, wi) in outputs.iter().zip(w) {
            if o.len() != len {
                return Err(CodeError::MixedLengths(len, o.len()));
            }
            for (s, v) in sum.iter_mut().zip(*o) {
                *s += wi * f64::from(*v);
            }
        }
        Ok(sum.into_iter().map(|v| v as f32).collect())
    }

    /// Recovers the outputs of the missing members (`None` in `members`, which has k
    /// entries) from the parity outputs that are in (`parities`, r entries). Returns
    /// `(member index, output)` for each missing member, in member order; nothing when
    /// none is missing.
    pub fn recover(&self, members: &[Option<&[f32]>], parities: &[Option<&[f32]>]) -> Result<Vec<(usize, Vec<f32>)>, CodeError> {
        if members.len() != self.k {
            return Err(CodeError::Count { what: "members", expected: self.k, got: members.len() });
        }
        if parities.len() != self.r {
            return Err(CodeError::Count { what: "parities", expected: self.r, got: parities.len() });
        }
        let missing: Vec<usize> = (0..self.k).filter(|&i| members[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        let came: Vec<(usize, &[f32])> = parities.iter().enumerate().filter_map(|(j, p)| p.map(|p| (j, p))).collect();
        if came.len() < missing.len() {
            return Err(CodeError::TooFewParities { missing: missing.len(), parities: came.len() });
        }
        let len = came.first().map_or(0, |(_, p)| p.len());
        for o in members.iter().flatten().copied().chain(came.iter().map(|(_, p)| *p)) {
            if o.len() != len {
                return Err(CodeError::MixedLengths(len, o.len()));
            }
        }
        // B: each parity output less what the members that are in contribute to it.
        let b: Vec<Vec<f64>> = came
            .iter()
            .map(|(j, p)| {
                let w = &self.weights[*j];
                let mut row: Vec<f64> = p.iter().map(|v| f64::from(*v)).collect();
                for (i, m) in members.iter().enumerate() {
                    if let Some(m) = m {
                        for (r, v) in row.iter_mut().zip(*m) {
                            *r -= w[i] * f64::from(*v);
                        }
                    }
                }
                row
            })
            .collect();
        let a: Vec<Vec<f64>> = came.iter().map(|(j, _)| missing.iter().map(|&m| self.weights[*j][m]).collect()).collect();
        let y = least_squares(&a, &b)?;
        Ok(missing.into_iter().zip(y).map(|(i, row)| (i, row.into_iter().map(|v| v as f32).collect())).collect())
    }
}

/// Solves `a · y = b` in the least-squares sense (`a` is p × e with p ≥ e, `b` is p × c):
/// the normal equations `aᵀa · y = aᵀb`, by Gaussian elimination with partial pivoting.
fn least_squares(a: &[Vec<f64>], b: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, CodeError> {
    let e = a.first().map_or(0, Vec::len);
    let c = b.first().map_or(0, Vec::len);
    let mut n = vec![vec![0.0f64; e]; e];
    let mut rhs = vec![vec![0.0f64; c]; e];
    for (arow, brow) in a.iter().zip(b) {
        for i in 0..e {
            for j in 0..e {
                n[i][j] += arow[i] * arow[j];
            }
            for (r, v) in rhs[i].iter_mut().zip(brow) {
                *r += arow[i] * v;
            }
        }
    }
    for col in 0..e {
        let pivot = (col..e).max_by(|&x, &y| n[x][col].abs().total_cmp(&n[y][col].abs())).ok_or(CodeError::Singular)?;
        if n[pivot][col].abs() < 1e-12 {
            return Err(CodeError::Singular);
        }
        n.swap(col, pivot);
        rhs.swap(col, pivot);
        for row in 0..e {
            if row == col {
                continue;
            }
            let f = n[row][col] / n[col][col];
            if f == 0.0 {
                continue;
            }
            subtract_scaled(&mut n, row, col, f);
            subtract_scaled(&mut rhs, row, col, f);
        }
    }
    Ok(rhs.into_iter().zip(n).enumerate().map(|(i, (row, nrow))| row.into_iter().map(|v| v / nrow[i]).collect()).collect())
}

/// `rows[dst] -= f · rows[src]` (`dst` ≠ `src`).
fn subtract_scaled(rows: &mut [Vec<f64>], dst: usize, src: usize, f: f64) {
    let (d, s) = if dst < src {
        let (lo, hi) = rows.split_at_mut(src);
        (&mut lo[dst], &hi[0])
    } else {
        let (lo, hi) = rows.split_at_mut(dst);
        (&mut hi[0], &lo[src])
    };
    for (x, y) in d.iter_mut().zip(s.iter()) {
        *x -= f * y;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_parity_is_the_addition_code() {
        for k in 1..=8 {
            let code = LinearCode::new(k, 1).unwrap();
            assert!(code.weights(0).unwrap().iter().all(|&w| w == 1.0), "k = {k}");
        }
        let code = LinearCode::new(2, 1).unwrap();
        let got = code.recover(&[Some(&[1.0, 2.0][..]), None], &[Some(&[4.0, 6.0][..])]).unwrap();
        assert_eq!(got, vec![(1, vec![3.0, 4.0])], "Fp(P) − F(X0), as crate::reconstruct");
    }

    #[test]
    fn the_weights_are_vandermonde_on_nodes_from_1_to_2() {
        let code = LinearCode::new(3, 3).unwrap();
        assert_eq!(code.weights(1).unwrap(), [1.0, 1.5, 2.0]);
        assert_eq!(code.weights(2).unwrap(), [1.0, 2.25, 4.0]);
        assert_eq!(code.weights(3), Err(CodeError::NoSuchParity(3)));
    }

    #[test]
    fn bad_shapes_and_counts_are_errors_not_panics() {
        assert!(LinearCode::new(0, 1).is_err() && LinearCode::new(2, 0).is_err() && LinearCode::new(2, MAX_PARITIES + 1).is_err());
        let code = LinearCode::new(2, 2).unwrap();
        let (one, two) = (&[1.0f32][..], &[1.0f32, 2.0][..]);
        assert!(matches!(code.recover(&[None], &[Some(one), Some(one)]), Err(CodeError::Count { .. })));
        assert!(matches!(code.recover(&[None, None], &[Some(one), None]), Err(CodeError::TooFewParities { missing: 2, parities: 1 })));
        assert!(matches!(code.recover(&[Some(two), None], &[Some(one), None]), Err(CodeError::MixedLengths(1, 2))));
        assert_eq!(code.recover(&[Some(one), Some(one)], &[None, None]), Ok(vec![]), "nothing missing");
        let (a, b) = (Tensor::zeros(vec![2]), Tensor::zeros(vec![3]));
        assert!(matches!(code.encode(0, &[&a, &b]), Err(CodeError::MixedShapes(..))));
        assert!(matches!(code.encode(0, &[&a, &a, &a]), Err(CodeError::Count { .. })));
        assert!(code.combine(1, &[one, two]).is_err());
    }

    /// Every way to lose up to `r` members of `k` and keep at least as many parities as
    /// members lost: (missing members, parities that came).
    fn erasures(k: usize, r: usize) -> Vec<(Vec<usize>, Vec<usize>)> {
        let subsets = |n: usize| (0u32..1 << n).map(move |mask| (0..n).filter(|i| mask & (1 << i) != 0).collect::<Vec<usize>>());
        let mut out = Vec::new();
        for missing in subsets(k).filter(|m| m.len() <= r) {
            for came in subsets(r).filter(|c| c.len() >= missing.len()) {
                out.push((missing.clone(), came));
            }
        }
        out
    }

    proptest! {
        /// With a linear F (a random matrix), the parity models are exact, and every
        /// erasure pattern of up to r members is recovered from any as many parities, for
        /// k in 1..=8 and r in 1..=3, through encode, F, combine and recover.
        #[test]
        fn a_linear_model_is_recovered_exactly_from_any_r_erasures(
            k in 1usize..=8,
            r in 1usize..=3,
            inputs in proptest::collection::vec(-1.0f32..1.0, 8 * 5),
            f in proptest::collection::vec(-1.0f32..1.0, 5 * 3),
        ) {
            let code = LinearCode::new(k, r).unwrap();
            // F: R^5 -> R^3, linear; so Fp_j = F is the exact parity model of every parity.
            let apply = |x: &[f32]| -> Vec<f32> { (0..3).map(|o| (0..5).map(|i| f[o * 5 + i] * x[i]).sum()).collect() };
            let xs: Vec<Tensor> = (0..k).map(|i| Tensor::new(vec![5], inputs[i * 5..i * 5 + 5].to_vec()).unwrap()).collect();
            let refs: Vec<&Tensor> = xs.iter().collect();
            let outputs: Vec<Vec<f32>> = xs.iter().map(|x| apply(x.data())).collect();
            let parity_outputs: Vec<Vec<f32>> = (0..r).map(|j| apply(code.encode(j, &refs).unwrap().data())).collect();
            for (missing, came) in erasures(k, r) {
                let members: Vec<Option<&[f32]>> = (0..k).map(|i| (!missing.contains(&i)).then(|| outputs[i].as_slice())).collect();
                let parities: Vec<Option<&[f32]>> = (0..r).map(|j| came.contains(&j).then(|| parity_outputs[j].as_slice())).collect();
                let got = code.recover(&members, &parities).unwrap();
                prop_assert_eq!(got.len(), missing.len());
                for ((i, out), want) in got.iter().zip(&missing) {
                    prop_assert_eq!(i, want);
                    for (g, w) in out.iter().zip(&outputs[*i]) {
                        prop_assert!((g - w).abs() < 1e-3, "k {} r {} missing {:?} came {:?}: {} vs {}", k, r, missing, came, g, w);
                    }
                }
            }
        }

        /// Whatever arrives (any lengths, any values, any pattern of what is missing,
        /// counts that do not fit the code), recover answers or refuses; it never panics,
        /// and what it answers is finite for finite inputs.
        #[test]
        fn recover_is_total(
            k in 1usize..=8,
            r in 1usize..=3,
            members in proptest::collection::vec(proptest::option::of(proptest::collection::vec(-1e6f32..1e6, 0..4)), 0..10),
            parities in proptest::collection::vec(proptest::option::of(proptest::collection::vec(-1e6f32..1e6, 0..4)), 0..5),
        ) {
            let code = LinearCode::new(k, r).unwrap();
            let m: Vec<Option<&[f32]>> = members.iter().map(|o| o.as_deref()).collect();
            let p: Vec<Option<&[f32]>> = parities.iter().map(|o| o.as_deref()).collect();
            if let Ok(got) = code.recover(&m, &p) {
                prop_assert!(got.iter().all(|(i, out)| *i < k && out.iter().all(|v| v.is_finite())));
            }
        }

        /// What the parity models are trained on agrees with encoding then applying a
        /// linear F: combine(j, F(X)) = F(encode(j, X)).
        #[test]
        fn combine_matches_a_linear_model_of_the_encoding(k in 1usize..=8, r in 1usize..=3, xs in proptest::collection::vec(-1.0f32..1.0, 8 * 4)) {
            let code = LinearCode::new(k, r).unwrap();
            let members: Vec<Tensor> = (0..k).map(|i| Tensor::new(vec![4], xs[i * 4..i * 4 + 4].to_vec()).unwrap()).collect();
            let refs: Vec<&Tensor> = members.iter().collect();
            let doubled: Vec<Vec<f32>> = members.iter().map(|m| m.data().iter().map(|v| 2.0 * v).collect()).collect();
            let outs: Vec<&[f32]> = doubled.iter().map(Vec::as_slice).collect();
            for j in 0..r {
                let via_encode: Vec<f32> = code.encode(j, &refs).unwrap().data().iter().map(|v| 2.0 * v).collect();
                for (a, b) in code.combine(j, &outs).unwrap().iter().zip(&via_encode) {
                    prop_assert!((a - b).abs() < 1e-4);
                }
            }
        }
    }
}
