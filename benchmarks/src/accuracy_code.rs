//! Degraded-mode accuracy of a code with r parities per group (issue 16): every erasure
//! pattern of up to r members, decoded by `parm_core::multi_parity::LinearCode` from the
//! parity models' outputs (one parity model per parity, `parity_index` 0..r in their
//! manifests) and the present members' F outputs.
//!
//! For a grouping of the test set into random groups of k, every parity input
//! `Σ_i w_ji X_i` is encoded and its model run once; then for every number m of missing
//! members (1..=r), every set P of at least m parities, and every set M of m members of every
//! group, M is recovered from P (exactly when |P| = m, by least squares otherwise) and each
//! recovered member's top-1 is scored against the label (degraded accuracy) and F's top-1
//! (agreement). The caller runs the models; this module only encodes, decodes and counts.
//! [`Coding`] is how one parity model of any code is encoded and decoded on its own.

use anyhow::{bail, Context as _};
use parm_common::model::ModelManifest;
use parm_core::multi_parity::LinearCode;
use parm_core::{reconstruct, top1, ParityEncoder, Tensor};
use serde::Serialize;

/// How a parity model's inputs are built and its outputs decoded: the served codes
/// (addition, concatenation), or parity j > 0 of an r-parity linear code
/// (`parm_core::multi_parity`), whose input is `Σ_i w_ji X_i`.
pub enum Coding {
    Plain(ParityEncoder),
    Weighted { code: LinearCode, j: usize },
}

impl Coding {
    /// The coding of the parity model `m`: a weighted one when its manifest names a parity
    /// index above 0, whose weights must be the code's.
    pub fn of(m: &ModelManifest, k: usize) -> anyhow::Result<Self> {
        let encoder: ParityEncoder = m.encoder.as_deref().unwrap_or_default().parse().map_err(|e: String| anyhow::anyhow!("{}: {e}", m.name))?;
        let j = m.parity_index();
        if j == 0 {
            return Ok(Coding::Plain(encoder));
        }
        if encoder != ParityEncoder::Addition {
            bail!("{}: parity {j} of a code must use the addition encoder", m.name);
        }
        let r = m.parities.with_context(|| format!("{}: parity_index without parities", m.name))?;
        let code = LinearCode::new(k, r).map_err(|e| anyhow::anyhow!("{}: {e}", m.name))?;
        let want = code.weights(j).map_err(|e| anyhow::anyhow!("{}: {e}", m.name))?;
        let got = m.weights.as_deref().with_context(|| format!("{}: parity_index without weights", m.name))?;
        if got.len() != want.len() || got.iter().zip(want).any(|(a, b)| (a - b).abs() > 1e-9) {
            bail!("{}: weights {got:?} are not row {j} of parm-core's code for k = {k}, r = {r} ({want:?})", m.name);
        }
        Ok(Coding::Weighted { code, j })
    }

    /// The parity input of up to k members (a shorter group as if the rest were zero).
    pub fn encode(&self, k: usize, members: &[&Tensor]) -> anyhow::Result<Tensor> {
        Ok(match self {
            Coding::Plain(e) => e.encode(k, members)?,
            Coding::Weighted { code, j } => code.encode(*j, members)?,
        })
    }

    /// Member `erased` of a group decoded from the parity output and the other members'
    /// F outputs (`outputs`, one per member of the group, possibly fewer than k).
    pub fn decode(&self, k: usize, parity: &[f32], outputs: &[&[f32]], erased: usize) -> anyhow::Result<Vec<f32>> {
        match self {
            Coding::Plain(_) => {
                let others = outputs.iter().enumerate().filter(|&(i, _)| i != erased).map(|(_, o)| *o);
                reconstruct(parity, others).context("parity and base outputs differ in size")
            }
            Coding::Weighted { code, j } => {
                let zeros = vec![0.0f32; parity.len()];
                let members: Vec<Option<&[f32]>> =
                    (0..k).map(|i| if i == erased { None } else { Some(outputs.get(i).copied().unwrap_or(&zeros)) }).collect();
                let parities: Vec<Option<&[f32]>> = (0..code.r()).map(|p| (p == *j).then_some(parity)).collect();
                let mut got = code.recover(&members, &parities)?;
                got.pop().map(|(_, y)| y).context("the code recovered no member")
            }
        }
    }
}

/// One erasure pattern's counts over every group of every grouping.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PatternResult {
    /// How many members of each group are missing.
    pub missing: usize,
    /// The parities decoded from.
    pub parities: Vec<usize>,
    pub reconstructions: usize,
    pub correct: usize,
    pub agree: usize,
}

impl PatternResult {
    pub fn top1(&self) -> f64 {
        self.correct as f64 / self.reconstructions.max(1) as f64
    }
    pub fn agreement(&self) -> f64 {
        self.agree as f64 / self.reconstructions.max(1) as f64
    }
}

/// Every subset of `0..n` of size `m`, in lexicographic order.
pub fn subsets(n: usize, m: usize) -> Vec<Vec<usize>> {
    fn go(start: usize, n: usize, m: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if cur.len() == m {
            out.push(cur.clone());
            return;
        }
        for i in start..n {
            cur.push(i);
            go(i + 1, n, m, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    go(0, n, m, &mut Vec::new(), &mut out);
    out
}

/// The parity inputs of `groups` (indices into `images`): for each group, one per parity.
pub fn encode_groups(code: &LinearCode, groups: &[&[usize]], images: &[Tensor]) -> anyhow::Result<Vec<Vec<Tensor>>> {
    groups
        .iter()
        .map(|g| {
            let members: Vec<&Tensor> = g.iter().map(|&i| &images[i]).collect();
            (0..code.r()).map(|j| Ok(code.encode(j, &members)?)).collect()
        })
        .collect()
}

/// Scores every erasure pattern of `groups`, given each group's parity outputs
/// (`parity_out[group][j]`), F's outputs and the labels.
pub fn score_patterns(code: &LinearCode, groups: &[&[usize]], parity_out: &[Vec<Vec<f32>>], base_logits: &[Vec<f32>], labels: &[u8]) -> anyhow::Result<Vec<PatternResult>> {
    let (k, r) = (code.k(), code.r());
    let mut rows = Vec::new();
    for m in 1..=r.min(k) {
        for size in m..=r {
            for p in subsets(r, size) {
                let mut row = PatternResult { missing: m, parities: p.clone(), reconstructions: 0, correct: 0, agree: 0 };
                for (g, outs) in groups.iter().zip(parity_out) {
                    let parities: Vec<Option<&[f32]>> = (0..r).map(|j| if p.contains(&j) { outs.get(j).map(Vec::as_slice) } else { None }).collect();
                    for gone in subsets(k, m) {
                        let members: Vec<Option<&[f32]>> = g.iter().enumerate().map(|(i, &x)| (!gone.contains(&i)).then(|| base_logits[x].as_slice())).collect();
                        for (i, y) in code.recover(&members, &parities)? {
                            let x = g[i];
                            let got = top1(&y);
                            row.reconstructions += 1;
                            row.correct += usize::from(got == Some(usize::from(labels[x])));
                            row.agree += usize::from(got == top1(&base_logits[x]));
                        }
                    }
                }
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_are_every_combination_once() {
        assert_eq!(subsets(3, 2), vec![vec![0, 1], vec![0, 2], vec![1, 2]]);
        assert_eq!(subsets(4, 0), vec![Vec::<usize>::new()]);
        assert_eq!(subsets(8, 2).len(), 28);
        assert!(subsets(2, 3).is_empty());
    }

    /// With a linear F and exact parity models (Fp_j = F on the weighted input), every
    /// pattern decodes every member exactly, so agreement is total; the counts follow the
    /// combinatorics (k = 3, r = 2: 3 single erasures × 3 parity sets, 3 pairs × 1).
    #[test]
    fn exact_parity_models_decode_every_pattern() {
        let (k, r) = (3, 2);
        let code = LinearCode::new(k, r).unwrap();
        let images: Vec<Tensor> = (0..6).map(|i| Tensor::new(vec![3], vec![i as f32, 1.0 - i as f32 * 0.3, (i * i) as f32 * 0.1]).unwrap()).collect();
        // Linear F: logits = A x, with a clear winner per example.
        let f = |x: &[f32]| vec![x[0] * 2.0 - x[1], x[1] + x[2], -x[0] + 3.0 * x[2]];
        let logits: Vec<Vec<f32>> = images.iter().map(|t| f(t.data())).collect();
        let labels: Vec<u8> = logits.iter().map(|l| top1(l).unwrap() as u8).collect();
        let groups: Vec<&[usize]> = vec![&[0, 1, 2], &[3, 4, 5]];
        let inputs = encode_groups(&code, &groups, &images).unwrap();
        let outs: Vec<Vec<Vec<f32>>> = inputs.iter().map(|ps| ps.iter().map(|p| f(p.data())).collect()).collect();
        let rows = score_patterns(&code, &groups, &outs, &logits, &labels).unwrap();
        let shape: Vec<(usize, Vec<usize>, usize)> = rows.iter().map(|r| (r.missing, r.parities.clone(), r.reconstructions)).collect();
        assert_eq!(shape, vec![(1, vec![0], 6), (1, vec![1], 6), (1, vec![0, 1], 6), (2, vec![0, 1], 12)]);
        for row in &rows {
            assert_eq!(row.agree, row.reconstructions, "{row:?}");
            assert_eq!(row.correct, row.reconstructions, "{row:?}");
        }
        // A wrong parity output is noticed: the decoded members stop agreeing.
        let mut bad = outs.clone();
        bad[0][1] = vec![100.0, -100.0, 0.0];
        let rows = score_patterns(&code, &groups, &bad, &logits, &labels).unwrap();
        assert!(rows.iter().any(|r| r.agree < r.reconstructions));
    }
}
