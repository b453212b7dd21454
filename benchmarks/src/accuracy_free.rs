//! The training-free rows of the accuracy benchmark (issue 16, item 4): degraded mode with
//! no parity model trained, on the same test set and the same seeded groupings as the
//! learned parity models, scored the same way (top-1 against the labels, and agreement
//! with F's own top-1).
//!
//! - Berrut-coded inference ([`crate::accuracy_berrut`], ApproxIFER): K queries, N = K + S
//!   coded ones answered by F. Every group is decoded from all N answers ("no straggler";
//!   approximate too) and from every set of N − S answers (all C(N, S) choices of the S
//!   missing workers, each counted once): all K outputs are scored each time.
//! - F as its own parity model: the parity query is the addition (or concatenation)
//!   encoding of the group, F answers it, and each member is decoded in turn as
//!   F(P) − Σ_{i≠j} F(X_i) (`parm_core::reconstruct`).
//! - An approximate backup: a cheaper model answers for F (its top-1 and its agreement with
//!   F's top-1); it answers each query alone, so it depends on no k and no grouping.
//!
//! The caller runs the models (a [`Runner`]) and supplies the groupings; this module
//! encodes, decodes and counts.

use crate::accuracy_berrut::{BerrutCode, EvalPoints};
use crate::accuracy_code::{subsets, Coding};
use anyhow::{ensure, Context as _};
use parm_core::{top1, ParityEncoder, Tensor};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// The base models the Berrut and F-as-parity rows are measured for.
pub const BASES: [&str; 2] = ["mnist-lenet", "fashion-mnist-lenet"];
/// (K, S) of the Berrut rows: S = 1 at K = 2, 4, 8, and more stragglers at K = 8 (the
/// published chart's extra-straggler bars).
pub const BERRUT_CODES: [(usize, usize); 5] = [(2, 1), (4, 1), (8, 1), (8, 2), (8, 3)];
/// k of the F-as-parity rows, for each encoder.
pub const SELF_PARITY: [(ParityEncoder, usize); 6] = [
    (ParityEncoder::Addition, 2),
    (ParityEncoder::Addition, 4),
    (ParityEncoder::Addition, 8),
    (ParityEncoder::Concatenation, 2),
    (ParityEncoder::Concatenation, 4),
    (ParityEncoder::Concatenation, 8),
];
/// (backup, F): the cheaper model that answers when F is late.
pub const BACKUPS: [(&str, &str); 1] = [("mnist-mlp", "mnist-lenet")];

/// A published figure of ApproxIFER's for one data set, K and S (percent).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Published {
    /// Berrut-coded (ApproxIFER).
    pub approxifer: f64,
    /// ParM's bar in the same chart (learned addition parity model), where there is one.
    pub parm: Option<f64>,
}

/// ApproxIFER's published accuracies (their `Bar_plots.py`; their F is a ResNet-18, base
/// 99 on MNIST and 97 on Fashion-MNIST in that chart). `parM_comparison`: N = K + 1,
/// S = 1 at K = 8 (also K = 10: MNIST 87.2 / ParM 59.2, Fashion 73.0 / 59.0; K = 12:
/// 86.8 / 50.3, 72.0 / 55.2). `extra_straggler`, labelled K = 8: S = 2 and 3 (its S = 1
/// bars are the K = 12 ones above, so its K is not certain).
pub fn approxifer_figure(dataset: &str, k: usize, s: usize) -> Option<Published> {
    let (approxifer, parm) = match (dataset, k, s) {
        ("mnist", 8, 1) => (87.2, Some(68.33)),
        ("fashion-mnist", 8, 1) => (74.0, Some(67.11)),
        ("mnist", 8, 2) => (82.56, None),
        ("fashion-mnist", 8, 2) => (65.54, None),
        ("mnist", 8, 3) => (77.47, None),
        ("fashion-mnist", 8, 3) => (64.0, None),
        _ => return None,
    };
    Some(Published { approxifer, parm })
}

/// Runs F over inputs; one output per input.
pub type Runner<'a> = dyn Fn(&[Tensor]) -> anyhow::Result<Vec<Vec<f32>>> + 'a;

/// One base model's test set, its outputs on it, and the groupings to measure over.
pub struct Data<'a> {
    pub base: &'a str,
    pub dataset: &'a str,
    pub images: &'a [Tensor],
    pub labels: &'a [u8],
    /// F's outputs on `images`.
    pub logits: &'a [Vec<f32>],
    /// Each grouping's order of the test set: cut into chunks of k, its groups.
    pub orders: &'a [Vec<usize>],
}

/// Counts over decoded outputs.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq)]
pub struct Tally {
    pub total: usize,
    /// Decoded top-1 equal to the label.
    pub correct: usize,
    /// Decoded top-1 equal to F's top-1.
    pub agree: usize,
    /// F's top-1 equal to the label, on the same examples.
    pub base_correct: usize,
}

impl Tally {
    /// Scores `decoded` as the output for test example `x`.
    fn add(&mut self, decoded: &[f32], x: usize, data: &Data) -> anyhow::Result<()> {
        let label = usize::from(*data.labels.get(x).context("an example without a label")?);
        let f_top = top1(data.logits.get(x).context("an example without F's output")?);
        let got = top1(decoded);
        self.total += 1;
        self.correct += usize::from(got == Some(label));
        self.agree += usize::from(got == f_top);
        self.base_correct += usize::from(f_top == Some(label));
        Ok(())
    }

    fn merge(&mut self, o: Tally) {
        self.total += o.total;
        self.correct += o.correct;
        self.agree += o.agree;
        self.base_correct += o.base_correct;
    }

    pub fn top1(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }

    pub fn agreement(&self) -> f64 {
        self.agree as f64 / self.total.max(1) as f64
    }

    pub fn base_top1(&self) -> f64 {
        self.base_correct as f64 / self.total.max(1) as f64
    }
}

/// A Berrut code's accuracy over every grouping.
#[derive(Debug, Serialize)]
pub struct BerrutResult {
    pub base: String,
    pub dataset: String,
    pub k: usize,
    pub s: usize,
    pub n: usize,
    /// The evaluation points' formula.
    pub points: &'static str,
    /// Whether F normalizes its input in the graph (coded inputs are combinations of raw
    /// pixels, which is right only then); None when the manifest does not say.
    pub normalization_in_graph: Option<bool>,
    pub groups: usize,
    /// Sets of S missing workers decoded from per group: every one, C(N, S).
    pub straggler_sets: usize,
    /// All N answers.
    pub no_straggler: Tally,
    /// N − S answers, over every set of S missing workers.
    pub stragglers: Tally,
    pub no_straggler_top1_per_grouping: Vec<f64>,
    pub stragglers_top1_per_grouping: Vec<f64>,
    /// ApproxIFER's figure for this data set, K and S (with S workers missing).
    pub published: Option<Published>,
    pub seconds: f64,
}

/// F answering its own parity queries.
#[derive(Debug, Serialize)]
pub struct SelfParityResult {
    pub base: String,
    pub dataset: String,
    pub encoder: String,
    pub k: usize,
    pub groups: usize,
    pub decoded: Tally,
    pub top1_per_grouping: Vec<f64>,
    pub seconds: f64,
}

/// A cheaper model answering for F.
#[derive(Debug, Serialize)]
pub struct BackupResult {
    pub backup: String,
    pub base: String,
    pub dataset: String,
    pub test_examples: usize,
    pub backup_top1: f64,
    pub base_top1: f64,
    /// The backup's top-1 equal to F's.
    pub agreement_with_base: f64,
}

/// Everything training-free the benchmark measured.
#[derive(Debug, Default, Serialize)]
pub struct TrainingFree {
    pub berrut: Vec<BerrutResult>,
    pub self_parity: Vec<SelfParityResult>,
    pub backup: Vec<BackupResult>,
}

/// `normalization.in_graph` of the manifest at `path` (None when it has none).
pub fn normalization_in_graph(path: &Path) -> anyhow::Result<Option<bool>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(v["normalization"]["in_graph"].as_bool())
}

/// The Berrut and F-as-parity rows of one base model.
pub fn measure(f: &Runner, data: &Data, in_graph: Option<bool>, out: &mut TrainingFree) -> anyhow::Result<()> {
    for (k, s) in BERRUT_CODES {
        for points in EvalPoints::ALL {
            let r = measure_berrut(f, data, k, s, points, in_graph)?;
            eprintln!(
                "accuracy: Berrut {} K={k} S={s} β={}: no straggler {:.2}, {s} missing {:.2} (F {:.2}) ({:.1}s)",
                r.base,
                r.points,
                100.0 * r.no_straggler.top1(),
                100.0 * r.stragglers.top1(),
                100.0 * r.stragglers.base_top1(),
                r.seconds
            );
            out.berrut.push(r);
        }
    }
    for (encoder, k) in SELF_PARITY {
        let r = measure_self_parity(f, data, encoder, k)?;
        eprintln!("accuracy: F as its own parity {} {encoder} k={k}: {:.2}, agreement {:.2} ({:.1}s)", r.base, 100.0 * r.decoded.top1(), 100.0 * r.decoded.agreement(), r.seconds);
        out.self_parity.push(r);
    }
    Ok(())
}

/// The test images of a group.
fn members<'a>(data: &'a Data, g: &[usize]) -> anyhow::Result<Vec<&'a Tensor>> {
    g.iter().map(|&i| data.images.get(i).with_context(|| format!("example {i} is not in the test set"))).collect()
}

/// The groups of k of every grouping.
fn groupings<'a>(data: &'a Data, k: usize) -> impl Iterator<Item = Vec<&'a [usize]>> + 'a {
    data.orders.iter().map(move |o| o.chunks_exact(k).collect())
}

/// A Berrut code of K queries and S stragglers on evaluation points `points`, over every
/// grouping: each group decoded from all N answers and from every N − S of them.
pub fn measure_berrut(f: &Runner, data: &Data, k: usize, s: usize, points: EvalPoints, in_graph: Option<bool>) -> anyhow::Result<BerrutResult> {
    let t0 = Instant::now();
    let code = BerrutCode::new(k, s, points)?;
    let n = code.n();
    let all: Vec<usize> = (0..n).collect();
    let full = code.decoder(&all)?;
    let partial = subsets(n, s)
        .into_iter()
        .map(|missing| {
            let returned: Vec<usize> = all.iter().copied().filter(|i| !missing.contains(i)).collect();
            let d = code.decoder(&returned)?;
            Ok((returned, d))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (mut no, mut st, mut groups) = (Tally::default(), Tally::default(), 0);
    let (mut no_per, mut st_per) = (Vec::new(), Vec::new());
    for gs in groupings(data, k) {
        let mut coded = Vec::with_capacity(gs.len() * n);
        for g in &gs {
            coded.extend(code.encode(&members(data, g)?)?);
        }
        let answers = f(&coded)?;
        ensure!(answers.len() == coded.len(), "F answered {} of {} coded queries", answers.len(), coded.len());
        let (mut one_no, mut one_st) = (Tally::default(), Tally::default());
        for (g, out) in gs.iter().zip(answers.chunks_exact(n)) {
            let refs: Vec<&[f32]> = out.iter().map(Vec::as_slice).collect();
            for (y, &x) in full.decode(&refs)?.iter().zip(g.iter()) {
                one_no.add(y, x, data)?;
            }
            for (returned, d) in &partial {
                let picked: Vec<&[f32]> = returned.iter().map(|&i| refs[i]).collect();
                for (y, &x) in d.decode(&picked)?.iter().zip(g.iter()) {
                    one_st.add(y, x, data)?;
                }
            }
        }
        groups += gs.len();
        no_per.push(one_no.top1());
        st_per.push(one_st.top1());
        no.merge(one_no);
        st.merge(one_st);
    }
    Ok(BerrutResult {
        base: data.base.to_string(),
        dataset: data.dataset.to_string(),
        k,
        s,
        n,
        points: points.name(),
        normalization_in_graph: in_graph,
        groups,
        straggler_sets: partial.len(),
        no_straggler: no,
        stragglers: st,
        no_straggler_top1_per_grouping: no_per,
        stragglers_top1_per_grouping: st_per,
        published: approxifer_figure(data.dataset, k, s),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// F as the parity model of its own groups of k: F(E(X_1..X_k)) − Σ_{i≠j} F(X_i), every
/// member of every group erased in turn.
pub fn measure_self_parity(f: &Runner, data: &Data, encoder: ParityEncoder, k: usize) -> anyhow::Result<SelfParityResult> {
    let t0 = Instant::now();
    let coding = Coding::Plain(encoder);
    let (mut all, mut groups, mut per) = (Tally::default(), 0, Vec::new());
    for gs in groupings(data, k) {
        let parity_inputs = gs
            .iter()
            .map(|g| coding.encode(k, &members(data, g)?))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let parity_out = f(&parity_inputs)?;
        ensure!(parity_out.len() == gs.len(), "F answered {} of {} parity queries", parity_out.len(), gs.len());
        let mut one = Tally::default();
        for (g, p) in gs.iter().zip(&parity_out) {
            let outputs = g.iter().map(|&i| data.logits.get(i).map(Vec::as_slice).context("an example without F's output")).collect::<anyhow::Result<Vec<_>>>()?;
            for (j, &x) in g.iter().enumerate() {
                one.add(&coding.decode(k, p, &outputs, j)?, x, data)?;
            }
        }
        groups += gs.len();
        per.push(one.top1());
        all.merge(one);
    }
    Ok(SelfParityResult {
        base: data.base.to_string(),
        dataset: data.dataset.to_string(),
        encoder: encoder.name().to_string(),
        k,
        groups,
        decoded: all,
        top1_per_grouping: per,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// `backup` answering for `base` on one test set: both models' outputs on every example.
pub fn measure_backup(backup: &str, base: &str, dataset: &str, backup_logits: &[Vec<f32>], base_logits: &[Vec<f32>], labels: &[u8]) -> anyhow::Result<BackupResult> {
    ensure!(
        backup_logits.len() == labels.len() && base_logits.len() == labels.len(),
        "{backup} and {base}: {} and {} outputs for {} examples",
        backup_logits.len(),
        base_logits.len(),
        labels.len()
    );
    let n = labels.len().max(1) as f64;
    let (mut b_ok, mut f_ok, mut agree) = (0usize, 0usize, 0usize);
    for ((b, f), &y) in backup_logits.iter().zip(base_logits).zip(labels) {
        let (bt, ft) = (top1(b), top1(f));
        b_ok += usize::from(bt == Some(usize::from(y)));
        f_ok += usize::from(ft == Some(usize::from(y)));
        agree += usize::from(bt == ft);
    }
    Ok(BackupResult {
        backup: backup.to_string(),
        base: base.to_string(),
        dataset: dataset.to_string(),
        test_examples: labels.len(),
        backup_top1: b_ok as f64 / n,
        base_top1: f_ok as f64 / n,
        agreement_with_base: agree as f64 / n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A linear F (logits = the input itself, 3 classes): F as its own addition parity
    /// decodes exactly, and a Berrut code scores every output of every group once per
    /// decoding, over every set of missing workers.
    #[test]
    fn counts_follow_the_groupings() {
        let images: Vec<Tensor> = (0..8).map(|i| Tensor::new(vec![3], vec![(i % 3) as f32 + 1.0, 0.5, (i % 2) as f32]).unwrap()).collect();
        let logits: Vec<Vec<f32>> = images.iter().map(|t| t.data().to_vec()).collect();
        let labels: Vec<u8> = logits.iter().map(|l| top1(l).unwrap() as u8).collect();
        let orders = vec![(0..8).collect::<Vec<_>>(), (0..8).rev().collect()];
        let data = Data { base: "f", dataset: "d", images: &images, labels: &labels, logits: &logits, orders: &orders };
        let identity = |xs: &[Tensor]| Ok(xs.iter().map(|t| t.data().to_vec()).collect());

        let r = measure_self_parity(&identity, &data, ParityEncoder::Addition, 2).unwrap();
        assert_eq!((r.groups, r.decoded.total), (8, 16));
        assert_eq!(r.decoded.agree, 16, "{r:?}");

        let b = measure_berrut(&identity, &data, 4, 1, EvalPoints::Repository, Some(true)).unwrap();
        assert_eq!((b.n, b.groups, b.straggler_sets), (5, 4, 5));
        assert_eq!(b.no_straggler.total, 16);
        assert_eq!(b.stragglers.total, 16 * 5);
        assert_eq!(b.no_straggler.base_correct, 16);

        let backup = measure_backup("g", "f", "d", &logits, &logits, &labels).unwrap();
        assert_eq!((backup.backup_top1, backup.agreement_with_base), (1.0, 1.0));
        assert!(measure_backup("g", "f", "d", &logits[..3], &logits, &labels).is_err());
    }
}
