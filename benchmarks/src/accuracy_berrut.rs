//! Berrut-coded inference: the training-free coded computation of ApproxIFER (Soleymani,
//! Jahani-Nezhad, Mahdavifar, AAAI 2022; public repository `Mahdi-Soleymani/Approxifer`).
//! K queries become N = K + S coded queries, the base model F answers each, and from any
//! N − S answers all K outputs are approximated. Nothing is trained, and every output is an
//! approximation, even when no worker straggles.
//!
//! - Encoder: Berrut's rational interpolant through the K interpolation points α_j,
//!   u(z) = Σ_j w_j(z) X_j with w_j(z) = [(-1)^j / (z − α_j)] / Σ_l [(-1)^l / (z − α_l)];
//!   coded query i is u(β_i).
//! - Decoder: Berrut's interpolant of the returned answers F(u(β_r)) through their β points
//!   (the returned workers in index order, sign (-1)^t by position t in that order),
//!   evaluated at each α_j as the approximate F(X_j).
//!
//! Points and signs, checked against the repository (commit b8bd8b1): α_j =
//! cos((2j+1)π/(2K)) (Chebyshev points of the first kind) in every script; signs by
//! position in the node list in both encoder and decoder, as above. The evaluation points
//! differ between its scripts: `WorkStation-MNIST.py`, the accuracy experiment behind the
//! published chart, uses β_i = cos(iπ/N), i = 0..N−1 ([`EvalPoints::Repository`], which
//! never reaches −1); its AWS latency scripts use the Chebyshev points of the second kind
//! β_i = cos(iπ/(N−1)) ([`EvalPoints::SecondKind`], both ends ±1), the choice the paper
//! is described with. The benchmark measures both. All points decrease with their index,
//! so index order is node order, which Berrut's interpolant needs to have no poles.
//!
//! A point where z equals a node exactly takes that node's value (the limit of the
//! formula), so an evaluation point that is also an interpolation point is exact.

use anyhow::{bail, ensure, Context as _};
use parm_core::Tensor;
use std::f64::consts::PI;

/// Where the N coded queries are evaluated (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalPoints {
    /// β_i = cos(iπ/N): ApproxIFER's accuracy script (`WorkStation-MNIST.py`).
    Repository,
    /// β_i = cos(iπ/(N−1)): Chebyshev points of the second kind.
    SecondKind,
}

impl EvalPoints {
    pub const ALL: [EvalPoints; 2] = [EvalPoints::Repository, EvalPoints::SecondKind];

    /// The formula, as the report prints it.
    pub fn name(self) -> &'static str {
        match self {
            EvalPoints::Repository => "cos(iπ/N)",
            EvalPoints::SecondKind => "cos(iπ/(N−1))",
        }
    }

    /// The N evaluation points, decreasing.
    pub fn points(self, n: usize) -> anyhow::Result<Vec<f64>> {
        let d = match self {
            EvalPoints::Repository => n,
            EvalPoints::SecondKind => n.checked_sub(1).filter(|&d| d > 0).context("Chebyshev points of the second kind need N ≥ 2")?,
        };
        Ok((0..n).map(|i| (i as f64 * PI / d as f64).cos()).collect())
    }
}

/// The K Chebyshev points of the first kind, cos((2j+1)π/(2K)), decreasing.
pub fn first_kind(k: usize) -> Vec<f64> {
    (0..k).map(|j| ((2 * j + 1) as f64 * PI / (2 * k) as f64).cos()).collect()
}

/// Berrut's barycentric weights of `nodes` at `z`: the interpolant at z is
/// Σ_t weights[t] · value_t. They sum to 1; at a node they are that node's indicator.
pub fn berrut_weights(nodes: &[f64], z: f64) -> Vec<f64> {
    if let Some(at) = nodes.iter().position(|&x| x == z) {
        return (0..nodes.len()).map(|t| f64::from(u8::from(t == at))).collect();
    }
    let terms: Vec<f64> = nodes.iter().enumerate().map(|(t, &x)| if t % 2 == 0 { 1.0 } else { -1.0 } / (z - x)).collect();
    let sum: f64 = terms.iter().sum();
    terms.iter().map(|v| v / sum).collect()
}

/// A Berrut code: K interpolation points α and N evaluation points β, and the encoding
/// weights (row i: coded query i as a combination of the K queries).
#[derive(Debug, Clone)]
pub struct BerrutCode {
    alphas: Vec<f64>,
    betas: Vec<f64>,
    encoding: Vec<Vec<f64>>,
}

impl BerrutCode {
    /// ApproxIFER's code for K queries and S stragglers: α of the first kind, β as `points`.
    pub fn new(k: usize, s: usize, points: EvalPoints) -> anyhow::Result<Self> {
        ensure!(k >= 1, "a Berrut code needs K ≥ 1");
        Self::from_points(first_kind(k), points.points(k + s)?)
    }

    /// A code on any points: distinct, finite, and each list monotone (so the interpolants
    /// have no poles).
    pub fn from_points(alphas: Vec<f64>, betas: Vec<f64>) -> anyhow::Result<Self> {
        for (what, xs) in [("interpolation", &alphas), ("evaluation", &betas)] {
            ensure!(!xs.is_empty(), "no {what} points");
            ensure!(xs.iter().all(|x| x.is_finite()), "{what} points must be finite: {xs:?}");
            let up = xs.windows(2).all(|w| w[0] < w[1]);
            let down = xs.windows(2).all(|w| w[0] > w[1]);
            ensure!(up || down, "{what} points must be distinct and in order: {xs:?}");
        }
        let encoding = betas.iter().map(|&b| berrut_weights(&alphas, b)).collect();
        Ok(Self { alphas, betas, encoding })
    }

    /// How many queries a group holds.
    pub fn k(&self) -> usize {
        self.alphas.len()
    }

    /// How many coded queries a group sends.
    pub fn n(&self) -> usize {
        self.betas.len()
    }

    /// Coded query i's weights on the K queries.
    pub fn encoding_weights(&self, i: usize) -> Option<&[f64]> {
        self.encoding.get(i).map(Vec::as_slice)
    }

    /// The N coded queries u(β_0)..u(β_{N−1}) of exactly K queries of one shape.
    pub fn encode(&self, members: &[&Tensor]) -> anyhow::Result<Vec<Tensor>> {
        ensure!(members.len() == self.k(), "a Berrut code for K = {} got {} queries", self.k(), members.len());
        let first = members.first().context("no queries")?;
        if let Some(other) = members.iter().find(|m| m.shape() != first.shape()) {
            bail!("queries of different shapes: {:?} and {:?}", first.shape(), other.shape());
        }
        self.encoding
            .iter()
            .map(|w| {
                let mut coded = vec![0.0f64; first.len()];
                for (m, &wj) in members.iter().zip(w) {
                    for (c, &x) in coded.iter_mut().zip(m.data()) {
                        *c += wj * f64::from(x);
                    }
                }
                Ok(Tensor::new(first.shape().to_vec(), coded.into_iter().map(|v| v as f32).collect())?)
            })
            .collect()
    }

    /// The decoder from the answers of the workers `returned` (indices into β, increasing).
    pub fn decoder(&self, returned: &[usize]) -> anyhow::Result<Decoder> {
        ensure!(!returned.is_empty(), "no worker returned");
        ensure!(returned.windows(2).all(|w| w[0] < w[1]), "returned workers must be increasing: {returned:?}");
        if let Some(&bad) = returned.iter().find(|&&i| i >= self.n()) {
            bail!("worker {bad} is not one of the N = {}", self.n());
        }
        let nodes: Vec<f64> = returned.iter().map(|&i| self.betas[i]).collect();
        Ok(Decoder { weights: self.alphas.iter().map(|&a| berrut_weights(&nodes, a)).collect() })
    }
}

/// Decodes a group from one set of returned workers: row j holds the weights of their
/// answers in the approximate F(X_j).
#[derive(Debug, Clone)]
pub struct Decoder {
    weights: Vec<Vec<f64>>,
}

impl Decoder {
    /// The K approximate outputs from the returned workers' answers, in their order.
    pub fn decode(&self, answers: &[&[f32]]) -> anyhow::Result<Vec<Vec<f32>>> {
        let width = self.weights.first().map_or(0, Vec::len);
        ensure!(answers.len() == width, "the decoder expects {width} answers, got {}", answers.len());
        let size = answers.first().map_or(0, |a| a.len());
        ensure!(answers.iter().all(|a| a.len() == size), "answers of different sizes");
        Ok(self
            .weights
            .iter()
            .map(|w| {
                let mut y = vec![0.0f64; size];
                for (a, &wt) in answers.iter().zip(w) {
                    for (v, &x) in y.iter_mut().zip(a.iter()) {
                        *v += wt * f64::from(x);
                    }
                }
                y.into_iter().map(|v| v as f32).collect()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interpolate(nodes: &[f64], values: &[f64], z: f64) -> f64 {
        berrut_weights(nodes, z).iter().zip(values).map(|(w, v)| w * v).sum()
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// K = 2, N = 3 with the repository's points: α = ±cos(π/4), β = 1, 1/2, −1/2. At
    /// β_0 = 1: 1/(1 − 0.7071) = 3.414 and −1/(1 + 0.7071) = −0.586 (the sign alternates
    /// with j), over their sum 2.828: weights 1/2 ± 1/√2 = 1.2071 and −0.2071.
    #[test]
    fn weights_match_a_hand_computation() {
        let code = BerrutCode::new(2, 1, EvalPoints::Repository).unwrap();
        assert_eq!(code.n(), 3);
        let w = code.encoding_weights(0).unwrap();
        assert!(close(w[0], 0.5 + 0.5_f64.sqrt(), 1e-12) && close(w[1], 0.5 - 0.5_f64.sqrt(), 1e-12), "{w:?}");
        let betas = EvalPoints::Repository.points(3).unwrap();
        assert!(close(betas[1], 0.5, 1e-12) && close(betas[2], -0.5, 1e-12), "{betas:?}");
        let second = EvalPoints::SecondKind.points(3).unwrap();
        assert!(close(second[0], 1.0, 1e-12) && close(second[1], 0.0, 1e-12) && close(second[2], -1.0, 1e-12), "{second:?}");
    }

    /// The weights sum to 1, so a constant is reproduced exactly, wherever z is.
    #[test]
    fn constants_are_reproduced_exactly() {
        let nodes = EvalPoints::SecondKind.points(9).unwrap();
        for z in [-0.99, -0.3, 0.0, 0.123, 0.7, 1.5] {
            assert!(close(interpolate(&nodes, &[4.25; 9], z), 4.25, 1e-12), "z = {z}");
        }
    }

    /// Berrut's interpolant has no polynomial precision beyond constants: a linear function
    /// comes back approximately at the interpolation points, better as the nodes get denser;
    /// exactly when the nodes are symmetric and even in number (the errors cancel).
    #[test]
    fn linear_functions_come_back_approximately() {
        let f = |z: f64| 2.0 * z + 1.0;
        let worst = |n: usize| {
            let nodes = EvalPoints::SecondKind.points(n).unwrap();
            let values: Vec<f64> = nodes.iter().map(|&x| f(x)).collect();
            first_kind(8).iter().map(|&a| (interpolate(&nodes, &values, a) - f(a)).abs()).fold(0.0, f64::max)
        };
        let (n9, n33) = (worst(9), worst(33));
        assert!(n9 > 1e-3 && n9 < 0.3, "N = 9: {n9}");
        assert!(n33 < n9 / 2.0, "N = 33: {n33}, N = 9: {n9}");
        assert!(worst(10) < 1e-12, "N = 10: {}", worst(10));
    }

    /// At a node the interpolant is that node's value exactly.
    #[test]
    fn nodes_are_reproduced_exactly() {
        let nodes = EvalPoints::Repository.points(5).unwrap();
        let values = [3.0, -1.0, 0.5, 7.0, 2.0];
        for (x, v) in nodes.iter().zip(values) {
            assert_eq!(interpolate(&nodes, &values, *x), v);
        }
    }

    fn queries() -> Vec<Tensor> {
        (0..4).map(|j| Tensor::new(vec![3], vec![j as f32, 1.0 - j as f32 * 0.5, (j * j) as f32]).unwrap()).collect()
    }

    /// Decoding with F = identity. When the evaluation points include the interpolation
    /// points, coded query α_j is X_j itself, and the decoder evaluates at a returned node:
    /// exact, with or without a straggler among the other points.
    #[test]
    fn evaluation_points_on_the_nodes_decode_exactly() {
        let alphas = first_kind(4);
        let mut betas = alphas.clone();
        betas.extend([0.99, 0.0, -0.99]);
        betas.sort_by(|a, b| b.total_cmp(a));
        let code = BerrutCode::from_points(alphas.clone(), betas.clone()).unwrap();
        let xs = queries();
        let refs: Vec<&Tensor> = xs.iter().collect();
        let coded = code.encode(&refs).unwrap();
        let answers: Vec<&[f32]> = coded.iter().map(Tensor::data).collect();
        let extra = betas.iter().position(|&b| b == 0.0).unwrap();
        let without: Vec<usize> = (0..code.n()).filter(|&i| i != extra).collect();
        for returned in [(0..code.n()).collect::<Vec<_>>(), without] {
            let picked: Vec<&[f32]> = returned.iter().map(|&i| answers[i]).collect();
            let got = code.decoder(&returned).unwrap().decode(&picked).unwrap();
            for (y, x) in got.iter().zip(&xs) {
                assert_eq!(y.as_slice(), x.data(), "returned {returned:?}");
            }
        }
    }

    /// A group of equal queries: every coded query is that query, and any N − S answers
    /// decode it exactly (up to f32 rounding), for every straggler.
    #[test]
    fn a_constant_group_decodes_exactly_from_any_answers() {
        for points in EvalPoints::ALL {
            let code = BerrutCode::new(4, 2, points).unwrap();
            let x = Tensor::new(vec![2], vec![0.75, -2.0]).unwrap();
            let coded = code.encode(&[&x, &x, &x, &x]).unwrap();
            let answers: Vec<&[f32]> = coded.iter().map(Tensor::data).collect();
            for c in &coded {
                assert!(c.data().iter().zip(x.data()).all(|(a, b)| (a - b).abs() < 1e-6), "{c:?}");
            }
            for missing in crate::accuracy_code::subsets(code.n(), 2) {
                let returned: Vec<usize> = (0..code.n()).filter(|i| !missing.contains(i)).collect();
                let picked: Vec<&[f32]> = returned.iter().map(|&i| answers[i]).collect();
                for y in code.decoder(&returned).unwrap().decode(&picked).unwrap() {
                    assert!(y.iter().zip(x.data()).all(|(a, b)| (a - b).abs() < 1e-5), "{points:?} {missing:?}: {y:?}");
                }
            }
        }
    }

    /// With N answers and F = identity, each decoded output is near its query but not it:
    /// the "no straggler" answers of a Berrut code are approximations too.
    #[test]
    fn no_straggler_is_approximate_not_exact() {
        let code = BerrutCode::new(4, 1, EvalPoints::SecondKind).unwrap();
        let xs = queries();
        let refs: Vec<&Tensor> = xs.iter().collect();
        let coded = code.encode(&refs).unwrap();
        let answers: Vec<&[f32]> = coded.iter().map(Tensor::data).collect();
        let all: Vec<usize> = (0..code.n()).collect();
        let got = code.decoder(&all).unwrap().decode(&answers).unwrap();
        let err = got.iter().zip(&xs).flat_map(|(y, x)| y.iter().zip(x.data()).map(|(a, b)| (a - b).abs())).fold(0.0f32, f32::max);
        assert!(err > 1e-3 && err < 10.0, "{err}");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let code = BerrutCode::new(2, 1, EvalPoints::Repository).unwrap();
        let x = Tensor::new(vec![2], vec![1.0, 2.0]).unwrap();
        let y = Tensor::new(vec![1], vec![1.0]).unwrap();
        assert!(code.encode(&[&x]).is_err());
        assert!(code.encode(&[&x, &y]).is_err());
        assert!(code.decoder(&[]).is_err());
        assert!(code.decoder(&[1, 0]).is_err());
        assert!(code.decoder(&[0, 3]).is_err());
        let d = code.decoder(&[0, 2]).unwrap();
        assert!(d.decode(&[&[1.0]]).is_err());
        assert!(d.decode(&[&[1.0], &[1.0, 2.0]]).is_err());
        assert!(BerrutCode::from_points(vec![0.0, 0.0], vec![1.0]).is_err());
        assert!(BerrutCode::new(0, 1, EvalPoints::Repository).is_err());
        assert!(BerrutCode::new(1, 0, EvalPoints::SecondKind).is_err());
    }
}
