//! Degraded-mode accuracy of every base/parity pair in `models/`, measured with tract and
//! parm-core's encoder and decoder: the same code path as serving, not PyTorch.
//!
//! For each base model F: its top-1 over the whole test set. For each parity model Fp whose
//! manifest names F as `base`: the test set is split into seeded random coding groups of k,
//! each group is encoded with `ParityEncoder::encode`, Fp runs on the parity input, and every
//! member is erased in turn and decoded with `parm_core::reconstruct` (Fp(P) minus the other
//! members' F outputs). Reconstructions are scored against the true labels (the paper's
//! "degraded mode accuracy") and against F's own top-1 (agreement). This is repeated for
//! `--groupings` independent groupings (seeds seed, seed+1, ...) and the counts summed, and
//! the range over groupings is reported: the luck of one pairing moves an accuracy by as
//! much as the differences between the parity models being compared.
//!
//! Writes `accuracy.md` (a table beside the paper's figures) and `accuracy.json`.
//!
//! ```text
//! cargo run --release -p parm-benchmarks --bin accuracy -- [--models DIR] [--out DIR] [--seed N] [--groupings N] [--limit N]
//! cargo run --release -p parm-benchmarks --bin accuracy -- --help
//! ```
//!
//! One tool end to end (load, measure, check the encoder against training, report), a
//! little over 400 lines: each step is its own function, in the order they run.

use anyhow::{bail, Context as _};
use parm_common::model::{manifest_paths, models_dir, Model, ModelManifest};
use parm_core::{reconstruct, top1, ParityEncoder, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use std::collections::BTreeMap;
use clap::Parser;
use parm::mnist::Mnist;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

const BATCH: usize = 100;

/// Flags of `accuracy`.
#[derive(Parser, Debug)]
#[command(about = "Degraded-mode accuracy of every base/parity pair in the models folder")]
struct Args {
    /// The models folder (default: parm's models/).
    #[arg(long)]
    models: Option<PathBuf>,
    /// Where accuracy.md and accuracy.json go (default: benchmarks/results).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed of the first grouping into random coding groups.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Independent groupings of the test set, seeds seed..seed+N-1.
    #[arg(long, default_value_t = 5, value_parser = at_least_one)]
    groupings: u64,
    /// Use only the first N test examples (a quick look; the report says so).
    #[arg(long)]
    limit: Option<usize>,
}

fn at_least_one(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("--groupings must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("--groupings must be a positive integer, not '{s}'")),
    }
}

/// A test set (images as raw pixels p / 255, shape [1, 28, 28] each, and labels), and
/// where it came from.
struct TestSet {
    data: Mnist,
    source: String,
}

/// Reads a gzipped file.
fn gunzip(path: &Path) -> anyhow::Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).with_context(|| format!("gunzipping {}", path.display()))?;
    Ok(out)
}

fn load_test_set(models: &Path, dataset: &str, limit: Option<usize>) -> anyhow::Result<TestSet> {
    let data = models.join("data");
    let images_path = data.join(format!("{dataset}-t10k-images.idx3-ubyte.gz"));
    let labels_path = data.join(format!("{dataset}-t10k-labels.idx1-ubyte.gz"));
    if !images_path.exists() || !labels_path.exists() {
        bail!(
            "the {dataset} test set is missing: expected {} and {}; write them with \
             `training/.venv/bin/python -m parm_training export-data --dataset {dataset} --full --out models/data`",
            images_path.display(),
            labels_path.display()
        );
    }
    let mut set = Mnist::from_idx(&gunzip(&images_path)?, &gunzip(&labels_path)?).with_context(|| format!("the {dataset} test set"))?;
    let all = set.len();
    set.truncate(limit.unwrap_or(all));
    let source = format!("{} ({} of {all} examples)", images_path.file_name().unwrap_or_default().to_string_lossy(), set.len());
    Ok(TestSet { data: set, source })
}

/// Runs a model over inputs in batches of BATCH; one logits vector per input.
fn run(model: &Model, inputs: &[Tensor]) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(BATCH) {
        let refs: Vec<&Tensor> = chunk.iter().collect();
        out.extend(model.infer(&refs).with_context(|| format!("running {}", model.manifest.name))?);
    }
    Ok(out)
}

/// A deployed model's accuracy on its test set, for the report.
#[derive(Serialize)]
struct BaseResult {
    name: String,
    dataset: String,
    test_examples: usize,
    top1: f64,
    seconds: f64,
}

/// A parity model, as the report names it (its reconstruction accuracy is in the rows).
#[derive(Serialize)]
struct ParityResult {
    name: String,
    base: String,
    dataset: String,
    encoder: String,
    k: usize,
    groups: usize,
    reconstructions: usize,
    base_top1: f64,
    reconstruction_top1: f64,
    /// Reconstruction top-1 of each grouping alone (how much the pairing moves it).
    reconstruction_top1_per_grouping: Vec<f64>,
    agreement_with_base: f64,
    /// Agreement with F in partial groups (the first m < k members of each group, zeros in
    /// the other slots, as the encoder sends a group its linger closed early); None for k = 1.
    partial_agreement_with_base: Option<f64>,
    /// base_top1 - reconstruction_top1, in percentage points.
    gap_points: f64,
    paper: Option<Paper>,
    /// Largest difference between parm-core's parity inputs and training's on the
    /// manifest's reference groups (None: the manifest records no groups).
    encoder_max_difference: Option<f32>,
    seconds: f64,
}

/// The paper's figure for one dataset and k: deployed and reconstructed top-1 (%).
#[derive(Serialize, Clone, Copy)]
struct Paper {
    deployed: f64,
    reconstructed: f64,
}

/// Everything `accuracy` measured, written as JSON beside the Markdown table.
#[derive(Serialize)]
struct Report {
    what: &'static str,
    seed: u64,
    groupings: u64,
    limit: Option<usize>,
    data: BTreeMap<String, String>,
    base: Vec<BaseResult>,
    parity: Vec<ParityResult>,
}

/// The paper's k = 2 degraded-mode figures (Figure 5, read to ±0.5; the table in docs/design.md).
fn paper_figure(dataset: &str, k: usize) -> Option<Paper> {
    match (dataset, k) {
        ("mnist", 2) => Some(Paper { deployed: 99.2, reconstructed: 99.2 }),
        ("fashion-mnist", 2) => Some(Paper { deployed: 92.9, reconstructed: 91.1 }),
        _ => None,
    }
}

/// Checks that `ParityEncoder::encode` builds the parity inputs that training built: the
/// manifest's `reference.groups` (test-set indices) were encoded in Python into
/// `reference.inputs`. Returns the largest difference, or None when the manifest has no
/// groups (or they fall outside a `--limit`ed test set).
fn encoder_difference(path: &Path, encoder: ParityEncoder, k: usize, set: &TestSet) -> anyhow::Result<Option<f32>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let (Some(groups), Some(inputs)) = (v["reference"]["groups"].as_array(), v["reference"]["inputs"].as_array()) else {
        return Ok(None);
    };
    let mut worst = 0.0f32;
    for (g, input) in groups.iter().zip(inputs) {
        let idx: Vec<usize> = g.as_array().context("reference.groups holds lists")?.iter().filter_map(|i| i.as_u64().map(|i| i as usize)).collect();
        if idx.len() != k || idx.iter().any(|&i| i >= set.data.images.len()) {
            return Ok(None);
        }
        let members: Vec<&Tensor> = idx.iter().map(|&i| &set.data.images[i]).collect();
        let p = encoder.encode(k, &members)?;
        let want: Vec<f32> = input.as_array().context("reference.inputs holds lists")?.iter().filter_map(|x| x.as_f64().map(|x| x as f32)).collect();
        if want.len() != p.data().len() {
            bail!("{}: reference input has {} values, the encoder made {}", path.display(), want.len(), p.data().len());
        }
        for (a, b) in p.data().iter().zip(&want) {
            worst = worst.max((a - b).abs());
        }
    }
    Ok(Some(worst))
}

/// Counts over every reconstruction of a set of groups.
#[derive(Default)]
struct Counts {
    groups: usize,
    total: usize,
    /// Decoded top-1 equal to the true label.
    correct: usize,
    /// Decoded top-1 equal to F's top-1.
    agree: usize,
    /// F's top-1 equal to the true label, on the same examples.
    base_correct: usize,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, c: Counts) {
        self.groups += c.groups;
        self.total += c.total;
        self.correct += c.correct;
        self.agree += c.agree;
        self.base_correct += c.base_correct;
    }
}

/// Full groups: every test example in one seeded random group of k, for each of
/// `groupings` groupings (seeds seed, seed+1, ...), counts summed. Partial groups: the
/// first m members of each of those groups, for every m in 1..k-1, the rest of the slots
/// zero, as the encoder sends a group that its linger closed early.
/// Also returns each grouping's reconstruction top-1 on full groups.
fn evaluate_parity(fp: &Model, set: &TestSet, base_logits: &[Vec<f32>], seed: u64, groupings: u64) -> anyhow::Result<(Counts, Counts, Vec<f64>)> {
    let m = &fp.manifest;
    let k = m.k.with_context(|| format!("{}: parity manifest without k", m.name))?;
    let encoder: ParityEncoder = m
        .encoder
        .as_deref()
        .with_context(|| format!("{}: parity manifest without encoder", m.name))?
        .parse()
        .map_err(|e: String| anyhow::anyhow!("{}: {e}", m.name))?;
    let (mut full, mut partial, mut per_grouping) = (Counts::default(), Counts::default(), Vec::new());
    for s in seed..seed + groupings {
        let mut order: Vec<usize> = (0..set.data.images.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(s));
        let groups: Vec<&[usize]> = order.chunks_exact(k).collect();
        let one = decode_groups(fp, encoder, k, &groups, set, base_logits)?;
        per_grouping.push(one.correct as f64 / one.total as f64);
        full += one;
        for size in 1..k {
            let cut: Vec<&[usize]> = groups.iter().map(|g| &g[..size]).collect();
            partial += decode_groups(fp, encoder, k, &cut, set, base_logits)?;
        }
    }
    Ok((full, partial, per_grouping))
}

/// Encodes each group (zero-padded to k when shorter), runs Fp, and decodes every member
/// of every group in turn from the parity output and the other members' F outputs.
fn decode_groups(fp: &Model, encoder: ParityEncoder, k: usize, groups: &[&[usize]], set: &TestSet, base_logits: &[Vec<f32>]) -> anyhow::Result<Counts> {
    let parity_inputs = groups
        .iter()
        .map(|g| {
            let members: Vec<&Tensor> = g.iter().map(|&i| &set.data.images[i]).collect();
            encoder.encode(k, &members).with_context(|| format!("encoding a group for {}", fp.manifest.name))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let parity_out = run(fp, &parity_inputs)?;
    let mut c = Counts { groups: groups.len(), ..Counts::default() };
    for (g, p) in groups.iter().zip(&parity_out) {
        for (j, &erased) in g.iter().enumerate() {
            let others = g.iter().enumerate().filter(|&(i, _)| i != j).map(|(_, &o)| base_logits[o].as_slice());
            let decoded = reconstruct(p, others).context("parity and base outputs differ in size")?;
            let got = top1(&decoded);
            let f_top = top1(&base_logits[erased]);
            c.correct += usize::from(got == Some(usize::from(set.data.labels[erased])));
            c.agree += usize::from(got == f_top);
            c.base_correct += usize::from(f_top == Some(usize::from(set.data.labels[erased])));
            c.total += 1;
        }
    }
    Ok(c)
}

fn pct(x: f64) -> String {
    format!("{:.2}", 100.0 * x)
}

/// "lo–hi" of per-grouping fractions, in percent.
fn spread(xs: &[f64]) -> String {
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{}–{}", pct(lo), pct(hi))
}

fn markdown(report: &Report) -> String {
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
    s
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let models = args.models.clone().unwrap_or_else(models_dir);
    let out = args.out.clone().unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("results"));
    let (bases, parities) = manifests_by_role(&models)?;
    let mut report =
        Report { what: "degraded-mode accuracy", seed: args.seed, groupings: args.groupings, limit: args.limit, data: BTreeMap::new(), base: Vec::new(), parity: Vec::new() };
    let mut sets: BTreeMap<String, TestSet> = BTreeMap::new();
    for base_path in &bases {
        let f = Model::load(base_path)?;
        let dataset = f.manifest.dataset.clone();
        if !sets.contains_key(&dataset) {
            let set = load_test_set(&models, &dataset, args.limit)?;
            report.data.insert(dataset.clone(), set.source.clone());
            sets.insert(dataset.clone(), set);
        }
        let set = sets.get(&dataset).context("the test set just loaded")?;
        let (base, logits) = measure_base(&f, set)?;
        report.base.push(base);
        for (path, pm) in parities.iter().filter(|(_, pm)| pm.base.as_deref() == Some(f.manifest.name.as_str())) {
            report.parity.push(measure_parity(path, pm, &f, set, &logits, &args)?);
        }
    }
    for (path, pm) in &parities {
        if !report.parity.iter().any(|r| r.name == pm.name) {
            eprintln!("accuracy: skipping {}: its base '{}' is not in {}", path.display(), pm.base.as_deref().unwrap_or("?"), models.display());
        }
    }
    write_report(&report, &out)
}

/// A parity model's manifest, and where it is.
type ParityManifest = (PathBuf, ModelManifest);

/// The manifests in `models`: the base models' paths, and the parity models' with their
/// manifests.
fn manifests_by_role(models: &Path) -> anyhow::Result<(Vec<PathBuf>, Vec<ParityManifest>)> {
    let mut bases = Vec::new();
    let mut parities = Vec::new();
    for path in manifest_paths(models)? {
        let (m, _) = ModelManifest::load(&path)?;
        match m.role.as_str() {
            "base" => bases.push(path),
            "parity" => parities.push((path, m)),
            other => eprintln!("accuracy: skipping {}: unknown role '{other}'", path.display()),
        }
    }
    Ok((bases, parities))
}

/// F's top-1 over the test set, and its logits (which the decoder subtracts).
fn measure_base(f: &Model, set: &TestSet) -> anyhow::Result<(BaseResult, Vec<Vec<f32>>)> {
    let t0 = Instant::now();
    let logits = run(f, &set.data.images)?;
    let correct = logits.iter().zip(&set.data.labels).filter(|(l, &y)| top1(l) == Some(usize::from(y))).count();
    let top = correct as f64 / set.data.len().max(1) as f64;
    let dataset = &f.manifest.dataset;
    eprintln!("accuracy: F {} on {dataset}: top-1 {} ({:.1}s)", f.manifest.name, pct(top), t0.elapsed().as_secs_f64());
    let base = BaseResult { name: f.manifest.name.clone(), dataset: dataset.clone(), test_examples: set.data.len(), top1: top, seconds: t0.elapsed().as_secs_f64() };
    Ok((base, logits))
}

/// Degraded-mode accuracy of the parity model at `path` over `args.groupings` groupings,
/// after checking that parm-core's encoder builds the parity inputs training did.
fn measure_parity(path: &Path, pm: &ModelManifest, f: &Model, set: &TestSet, logits: &[Vec<f32>], args: &Args) -> anyhow::Result<ParityResult> {
    let dataset = &f.manifest.dataset;
    if &pm.dataset != dataset {
        bail!("{}: data set {} differs from its base's ({dataset})", path.display(), pm.dataset);
    }
    let t0 = Instant::now();
    let fp = Model::load(path)?;
    let (full, partial, per_grouping) = evaluate_parity(&fp, set, logits, args.seed, args.groupings)?;
    let (groups, total, correct, agree, base_correct) = (full.groups, full.total, full.correct, full.agree, full.base_correct);
    let encoder: ParityEncoder = pm.encoder.as_deref().unwrap_or_default().parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let encoder_max_difference = encoder_difference(path, encoder, pm.k.unwrap_or_default(), set)?;
    // Reference inputs are rounded to 7 significant digits: values up to 4 differ by < 1e-6.
    if let Some(d) = encoder_max_difference {
        if d > 1e-5 {
            bail!(
                "{}: parm-core's {encoder} encoder builds different parity inputs than training did \
                 (largest difference {d:e} on the manifest's reference groups); the decoded accuracy would be meaningless",
                path.display()
            );
        }
    }
    let share = |n: usize| n as f64 / total.max(1) as f64;
    let r = ParityResult {
        name: pm.name.clone(),
        base: f.manifest.name.clone(),
        dataset: dataset.clone(),
        encoder: pm.encoder.clone().unwrap_or_default(),
        k: pm.k.unwrap_or_default(),
        groups,
        reconstructions: total,
        base_top1: share(base_correct),
        reconstruction_top1: share(correct),
        reconstruction_top1_per_grouping: per_grouping,
        agreement_with_base: share(agree),
        partial_agreement_with_base: (partial.total > 0).then(|| partial.agree as f64 / partial.total as f64),
        gap_points: 100.0 * (base_correct as f64 - correct as f64) / total.max(1) as f64,
        paper: paper_figure(dataset, pm.k.unwrap_or_default()),
        encoder_max_difference,
        seconds: t0.elapsed().as_secs_f64(),
    };
    eprintln!(
        "accuracy: Fp {} ({} k={}): reconstruction {} (F {} on the same examples), agreement {} ({:.1}s)",
        r.name,
        r.encoder,
        r.k,
        pct(r.reconstruction_top1),
        pct(r.base_top1),
        pct(r.agreement_with_base),
        r.seconds
    );
    Ok(r)
}

/// Writes `accuracy.md` and `accuracy.json` into `out`.
fn write_report(report: &Report, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let md = out.join("accuracy.md");
    let json = out.join("accuracy.json");
    std::fs::write(&md, markdown(report)).with_context(|| format!("writing {}", md.display()))?;
    std::fs::write(&json, serde_json::to_string_pretty(report)? + "\n").with_context(|| format!("writing {}", json.display()))?;
    eprintln!("accuracy: wrote {} and {}", md.display(), json.display());
    Ok(())
}
