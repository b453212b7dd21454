//! The degraded-mode accuracy report: what the `accuracy` binary measured (one row per
//! parity model, the base models' own top-1, codes with r parities, and the training-free
//! rows of [`crate::accuracy_free`]) and how it is written, as `accuracy.md` beside the
//! paper's figures and as `accuracy.json`.

use anyhow::Context as _;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// A deployed model's accuracy on its test set, for the report.
#[derive(Serialize)]
pub struct BaseResult {
    pub name: String,
    pub dataset: String,
    pub test_examples: usize,
    pub top1: f64,
    pub seconds: f64,
}

/// A parity model, as the report names it (its reconstruction accuracy is in the rows).
#[derive(Serialize)]
pub struct ParityResult {
    pub name: String,
    pub base: String,
    pub dataset: String,
    pub encoder: String,
    pub k: usize,
    pub groups: usize,
    pub reconstructions: usize,
    pub base_top1: f64,
    pub reconstruction_top1: f64,
    /// Reconstruction top-1 of each grouping alone (how much the pairing moves it).
    pub reconstruction_top1_per_grouping: Vec<f64>,
    pub agreement_with_base: f64,
    /// Agreement with F in partial groups (the first m < k members of each group, zeros in
    /// the other slots, as the encoder sends a group its linger closed early); None for k = 1.
    pub partial_agreement_with_base: Option<f64>,
    /// base_top1 - reconstruction_top1, in percentage points.
    pub gap_points: f64,
    pub paper: Option<Paper>,
    /// Largest difference between parm-core's parity inputs and training's on the
    /// manifest's reference groups (None: the manifest records no groups).
    pub encoder_max_difference: Option<f32>,
    pub seconds: f64,
}

/// The paper's figure for one dataset and k: deployed and reconstructed top-1 (%).
#[derive(Serialize, Clone, Copy)]
pub struct Paper {
    pub deployed: f64,
    pub reconstructed: f64,
}

/// Everything `accuracy` measured, written as JSON beside the Markdown table.
#[derive(Serialize)]
pub struct Report {
    pub what: &'static str,
    pub seed: u64,
    pub groupings: u64,
    pub limit: Option<usize>,
    pub data: BTreeMap<String, String>,
    pub base: Vec<BaseResult>,
    pub parity: Vec<ParityResult>,
    /// Codes with several parities per group: every erasure pattern.
    pub codes: Vec<CodeResult>,
    /// Degraded mode without a trained parity model: Berrut coding, F as its own parity
    /// model, an approximate backup.
    pub training_free: crate::accuracy_free::TrainingFree,
}

/// A code of r parity models over one F: every erasure pattern of up to r members.
#[derive(Serialize)]
pub struct CodeResult {
    pub base: String,
    pub dataset: String,
    pub k: usize,
    pub r: usize,
    /// The parity models, parity 0 first.
    pub parity_models: Vec<String>,
    pub groups: usize,
    pub base_top1: f64,
    pub patterns: Vec<crate::accuracy_code::PatternResult>,
    pub seconds: f64,
}

/// The paper's k = 2 degraded-mode figures (Figure 5, read to ±0.5; the table in docs/design.md).
pub fn paper_figure(dataset: &str, k: usize) -> Option<Paper> {
    match (dataset, k) {
        ("mnist", 2) => Some(Paper { deployed: 99.2, reconstructed: 99.2 }),
        ("fashion-mnist", 2) => Some(Paper { deployed: 92.9, reconstructed: 91.1 }),
        _ => None,
    }
}

pub fn pct(x: f64) -> String {
    format!("{:.2}", 100.0 * x)
}

/// "lo–hi" of per-grouping fractions, in percent.
pub fn spread(xs: &[f64]) -> String {
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{}–{}", pct(lo), pct(hi))
}

pub fn markdown(report: &Report) -> String {
    let mut s = String::new();
    s.push_str("# Degraded-mode accuracy\n\n");
    s.push_str(
        "Written by `cargo run --release -p parm-benchmarks --bin accuracy` (see `benchmarks/README.md`): \
         tract runs the ONNX models in `models/`, parm-core encodes the parity inputs and decodes \
         (the serving code path). The test set is split into seeded random coding groups of k, several \
         times over (groupings, counts summed); every member of every group is erased in turn and reconstructed as Fp(P) − Σ_{i≠j} F(Xi). \
         *Reconstruction* is the decoded top-1 against the true labels (the paper's degraded-mode \
         accuracy), *agreement* the decoded top-1 against F's own top-1. *Partial groups*: the first \
         m < k members of each group with zeros in the other slots (how the encoder sends a group \
         that its linger closed early; common at low rates), each member erased in turn. Percent.\n\n",
    );
    s.push_str(&format!(
        "{} groupings (seeds {}–{}), so each test example is reconstructed {} times per parity model; data: ",
        report.groupings,
        report.seed,
        report.seed + report.groupings - 1,
        report.groupings
    ));
    s.push_str(&report.data.iter().map(|(d, src)| format!("{d}: {src}")).collect::<Vec<_>>().join("; "));
    s.push_str(".\n\n");
    if report.limit.is_some() {
        s.push_str("**Partial run (`--limit`): not the whole test set.**\n\n");
    }
    s.push_str("| data set | F | F top-1 | Fp | encoder | k | reconstruction top-1 | range over groupings | gap (points) | agreement with F | agreement, partial groups | paper (k=2): deployed → reconstructed |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for p in &report.parity {
        let paper = p.paper.map_or("—".to_string(), |q| format!("{:.1} → {:.1}", q.deployed, q.reconstructed));
        s.push_str(&format!(
            "| {} | `{}` | {} | `{}` | {} | {} | {} | {} | {:.2} | {} | {} | {} |\n",
            p.dataset,
            p.base,
            pct(p.base_top1),
            p.name,
            p.encoder,
            p.k,
            pct(p.reconstruction_top1),
            spread(&p.reconstruction_top1_per_grouping),
            p.gap_points,
            pct(p.agreement_with_base),
            p.partial_agreement_with_base.map_or("—".to_string(), pct),
            paper
        ));
    }
    if !report.codes.is_empty() {
        s.push_str("\n## Codes with r parities per group\n\nEvery set of `missing` members of every group erased and recovered from the parities listed (exactly when as many parities as missing members, by least squares when more), `parm_core::multi_parity::LinearCode`; parity j's input is Σ_i w_ji X_i (Vandermonde on nodes in [1, 2]). Percent.\n\n");
        s.push_str("| F | k | r | parity models | missing | from parities | reconstructions | top-1 | agreement with F | F top-1 |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for c in &report.codes {
            for p in &c.patterns {
                let from: Vec<String> = p.parities.iter().map(|j| j.to_string()).collect();
                s.push_str(&format!(
                    "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    c.base,
                    c.k,
                    c.r,
                    c.parity_models.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", "),
                    p.missing,
                    from.join(", "),
                    p.reconstructions,
                    pct(p.top1()),
                    pct(p.agreement()),
                    pct(c.base_top1)
                ));
            }
        }
    }
    let without: Vec<&BaseResult> = report.base.iter().filter(|b| !report.parity.iter().any(|p| p.base == b.name)).collect();
    if !without.is_empty() {
        s.push_str("\nBase models without a parity model: ");
        s.push_str(&without.iter().map(|b| format!("`{}` {} top-1 {}", b.name, b.dataset, pct(b.top1))).collect::<Vec<_>>().join(", "));
        s.push_str(".\n");
    }
    let checked: Vec<String> = report
        .parity
        .iter()
        .filter_map(|p| p.encoder_max_difference.map(|d| format!("`{}` {d:.1e}", p.name)))
        .collect();
    if !checked.is_empty() {
        s.push_str(&format!(
            "\nparm-core's encoder rebuilds training's reference parity inputs (largest difference): {}.\n",
            checked.join(", ")
        ));
    }
    s.push_str(
        "\nPaper figures: Kosaian et al., SOSP 2019, Figure 5 (k = 2, read to ±0.5); the paper's MNIST and \
         Fashion-MNIST F differ from ours, so compare gaps rather than absolute numbers.\n",
    );
    s.push_str(&crate::accuracy_free_report::markdown(&report.training_free, &report.parity));
    s
}

/// Writes `accuracy.md` and `accuracy.json` into `out`.
pub fn write_report(report: &Report, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let md = out.join("accuracy.md");
    let json = out.join("accuracy.json");
    std::fs::write(&md, markdown(report)).with_context(|| format!("writing {}", md.display()))?;
    std::fs::write(&json, serde_json::to_string_pretty(report)? + "\n").with_context(|| format!("writing {}", json.display()))?;
    eprintln!("accuracy: wrote {} and {}", md.display(), json.display());
    Ok(())
}
