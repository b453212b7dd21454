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
//! Training-free rows (`parm_benchmarks::accuracy_free`), for the base models it names and
//! over the same groupings: Berrut-coded inference (ApproxIFER), F as its own parity model,
//! and a cheaper model as an approximate backup for F.
//!
//! Writes `accuracy.md` (a table beside the paper's figures) and `accuracy.json`.
//!
//! ```text
//! cargo run --release -p parm-benchmarks --bin accuracy -- [--models DIR] [--out DIR] [--seed N] [--groupings N] [--limit N]
//! cargo run --release -p parm-benchmarks --bin accuracy -- --help
//! ```
//!
//! One tool end to end (load, measure, check the encoder against training, report), about
//! 500 lines: each step is its own function, in the order they run.

use anyhow::{bail, Context as _};
use parm_common::model::{manifest_paths, models_dir, Model, ModelManifest};
use parm_core::multi_parity::LinearCode;
use parm_core::{top1, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::BTreeMap;
use clap::Parser;
use parm_benchmarks::accuracy_code::{encode_groups, score_patterns, Coding};
use parm_benchmarks::accuracy_free::{self, TrainingFree};
use parm_benchmarks::accuracy_report::{paper_figure, pct, write_report, BaseResult, CodeResult, ParityResult, Report};
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

/// Checks that `ParityEncoder::encode` builds the parity inputs that training built: the
/// manifest's `reference.groups` (test-set indices) were encoded in Python into
/// `reference.inputs`. Returns the largest difference, or None when the manifest has no
/// groups (or they fall outside a `--limit`ed test set).
fn encoder_difference(path: &Path, coding: &Coding, k: usize, set: &TestSet) -> anyhow::Result<Option<f32>> {
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
        let p = coding.encode(k, &members)?;
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
    if m.encoder.is_none() {
        bail!("{}: parity manifest without encoder", m.name);
    }
    let coding = Coding::of(m, k)?;
    let (mut full, mut partial, mut per_grouping) = (Counts::default(), Counts::default(), Vec::new());
    for s in seed..seed + groupings {
        let order = grouping_order(set.data.images.len(), s);
        let groups: Vec<&[usize]> = order.chunks_exact(k).collect();
        let one = decode_groups(fp, &coding, k, &groups, set, base_logits)?;
        per_grouping.push(one.correct as f64 / one.total as f64);
        full += one;
        for size in 1..k {
            let cut: Vec<&[usize]> = groups.iter().map(|g| &g[..size]).collect();
            partial += decode_groups(fp, &coding, k, &cut, set, base_logits)?;
        }
    }
    Ok((full, partial, per_grouping))
}

/// The test set's examples in the order of grouping `seed`: cut into chunks of k, they
/// are that grouping's coding groups. One function, so the per-model rows and the code
/// rows decode the very same groups.
fn grouping_order(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    order
}

/// Encodes each group (zero-padded to k when shorter), runs Fp, and decodes every member
/// of every group in turn from the parity output and the other members' F outputs.
fn decode_groups(fp: &Model, coding: &Coding, k: usize, groups: &[&[usize]], set: &TestSet, base_logits: &[Vec<f32>]) -> anyhow::Result<Counts> {
    let parity_inputs = groups
        .iter()
        .map(|g| {
            let members: Vec<&Tensor> = g.iter().map(|&i| &set.data.images[i]).collect();
            coding.encode(k, &members).with_context(|| format!("encoding a group for {}", fp.manifest.name))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let parity_out = run(fp, &parity_inputs)?;
    let mut c = Counts { groups: groups.len(), ..Counts::default() };
    for (g, p) in groups.iter().zip(&parity_out) {
        let outputs: Vec<&[f32]> = g.iter().map(|&o| base_logits[o].as_slice()).collect();
        for (j, &erased) in g.iter().enumerate() {
            let decoded = coding.decode(k, p, &outputs, j)?;
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let models = args.models.clone().unwrap_or_else(models_dir);
    let out = args.out.clone().unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("results"));
    let (bases, parities) = manifests_by_role(&models)?;
    let mut report = Report {
        what: "degraded-mode accuracy",
        seed: args.seed,
        groupings: args.groupings,
        limit: args.limit,
        data: BTreeMap::new(),
        base: Vec::new(),
        parity: Vec::new(),
        codes: Vec::new(),
        training_free: TrainingFree::default(),
    };
    let mut sets: BTreeMap<String, TestSet> = BTreeMap::new();
    let mut base_logits: BTreeMap<String, Vec<Vec<f32>>> = BTreeMap::new();
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
        for code in codes_of(&f.manifest.name, &parities)? {
            report.codes.push(measure_code(&code, &f, set, &logits, &args)?);
        }
        if accuracy_free::BASES.contains(&f.manifest.name.as_str()) {
            measure_training_free(base_path, &f, set, &logits, &args, &mut report.training_free)?;
        }
        base_logits.insert(f.manifest.name.clone(), logits);
    }
    measure_backups(&report.base, &base_logits, &sets, &mut report.training_free)?;
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
    let k = pm.k.unwrap_or_default();
    let coding = Coding::of(pm, k)?;
    let encoder_max_difference = encoder_difference(path, &coding, k, set)?;
    // Reference inputs are rounded to 7 significant digits: values up to 4 differ by < 1e-6.
    if let Some(d) = encoder_max_difference {
        if d > 1e-5 {
            bail!(
                "{}: parm-core's {} encoder builds different parity inputs than training did \
                 (largest difference {d:e} on the manifest's reference groups); the decoded accuracy would be meaningless",
                path.display(),
                pm.encoder.as_deref().unwrap_or_default()
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

/// The codes with r > 1 parities over base `base` in `parities`: for each k, r that a
/// parity model with `parity_index` above 0 names, the parity models of indices 0..r
/// (parity 0 is the plain addition model of that k, or the one the manifests' recorded code
/// names when there are several).
fn codes_of<'a>(base: &str, parities: &'a [ParityManifest]) -> anyhow::Result<Vec<Vec<&'a ParityManifest>>> {
    let of_base: Vec<&ParityManifest> = parities.iter().filter(|(_, m)| m.base.as_deref() == Some(base)).collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut codes = Vec::new();
    for (_, m) in of_base.iter().filter(|(_, m)| m.parity_index() > 0) {
        let (Some(k), Some(r)) = (m.k, m.parities) else { continue };
        if !seen.insert((k, r)) {
            continue;
        }
        let named: Vec<String> = m.accuracy["code"]["parity_models"].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default();
        let mut members = Vec::new();
        for j in 0..r {
            let candidates: Vec<&&ParityManifest> = of_base
                .iter()
                .filter(|(_, c)| c.k == Some(k) && c.encoder.as_deref() == Some("addition") && c.parity_index() == j && (j == 0 || c.parities == Some(r)))
                .collect();
            let pick = candidates.iter().find(|(_, c)| named.contains(&c.name)).or_else(|| candidates.first());
            match pick {
                Some(p) => members.push(**p),
                None => {
                    eprintln!("accuracy: no parity {j} of the k = {k}, r = {r} code over {base}; its erasure patterns are not measured");
                    break;
                }
            }
        }
        if members.len() == r {
            codes.push(members);
        }
    }
    Ok(codes)
}

/// Every erasure pattern of the code made of `members` (parity 0 first), over
/// `args.groupings` groupings of the test set.
fn measure_code(members: &[&ParityManifest], f: &Model, set: &TestSet, logits: &[Vec<f32>], args: &Args) -> anyhow::Result<CodeResult> {
    let t0 = Instant::now();
    let first = &members.first().context("a code without parity models")?.1;
    let (k, r) = (first.k.unwrap_or_default(), members.len());
    let code = LinearCode::new(k, r).map_err(|e| anyhow::anyhow!("k = {k}, r = {r}: {e}"))?;
    for (j, (_, m)) in members.iter().enumerate() {
        if j > 0 {
            Coding::of(m, k)?; // its weights are the code's row j
        }
    }
    let models: Vec<_> = members.iter().map(|(path, _)| Model::load(path)).collect::<anyhow::Result<_>>()?;
    let mut patterns: Vec<parm_benchmarks::accuracy_code::PatternResult> = Vec::new();
    let mut groups_total = 0;
    for s in args.seed..args.seed + args.groupings {
        let order = grouping_order(set.data.images.len(), s);
        let groups: Vec<&[usize]> = order.chunks_exact(k).collect();
        groups_total += groups.len();
        let inputs = encode_groups(&code, &groups, &set.data.images)?;
        let mut outs: Vec<Vec<Vec<f32>>> = vec![Vec::with_capacity(r); groups.len()];
        for (j, fp) in models.iter().enumerate() {
            let xs: Vec<Tensor> = inputs.iter().map(|ps| ps[j].clone()).collect();
            for (o, y) in outs.iter_mut().zip(run(fp, &xs)?) {
                o.push(y);
            }
        }
        let rows = score_patterns(&code, &groups, &outs, logits, &set.data.labels)?;
        if patterns.is_empty() {
            patterns = rows;
        } else {
            for (acc, row) in patterns.iter_mut().zip(rows) {
                acc.reconstructions += row.reconstructions;
                acc.correct += row.correct;
                acc.agree += row.agree;
            }
        }
    }
    let base_correct = logits.iter().zip(&set.data.labels).filter(|(l, &y)| top1(l) == Some(usize::from(y))).count();
    let c = CodeResult {
        base: f.manifest.name.clone(),
        dataset: f.manifest.dataset.clone(),
        k,
        r,
        parity_models: members.iter().map(|(_, m)| m.name.clone()).collect(),
        groups: groups_total,
        base_top1: base_correct as f64 / set.data.len().max(1) as f64,
        patterns,
        seconds: t0.elapsed().as_secs_f64(),
    };
    for p in &c.patterns {
        eprintln!("accuracy: code k={k} r={r} over {}: {} missing from parities {:?}: {} ({} reconstructions)", c.base, p.missing, p.parities, pct(p.top1()), p.reconstructions);
    }
    Ok(c)
}

/// The Berrut and F-as-parity rows of F (`accuracy_free`), over the same groupings as the
/// parity models.
fn measure_training_free(path: &Path, f: &Model, set: &TestSet, logits: &[Vec<f32>], args: &Args, out: &mut TrainingFree) -> anyhow::Result<()> {
    let orders: Vec<Vec<usize>> = (args.seed..args.seed + args.groupings).map(|s| grouping_order(set.data.images.len(), s)).collect();
    let data = accuracy_free::Data {
        base: &f.manifest.name,
        dataset: &f.manifest.dataset,
        images: &set.data.images,
        labels: &set.data.labels,
        logits,
        orders: &orders,
    };
    let in_graph = accuracy_free::normalization_in_graph(path)?;
    accuracy_free::measure(&|xs: &[Tensor]| run(f, xs), &data, in_graph, out)
}

/// Each backup of `accuracy_free::BACKUPS` whose models were both measured on one data set.
fn measure_backups(bases: &[BaseResult], logits: &BTreeMap<String, Vec<Vec<f32>>>, sets: &BTreeMap<String, TestSet>, out: &mut TrainingFree) -> anyhow::Result<()> {
    for (backup, base) in accuracy_free::BACKUPS {
        let dataset = |name: &str| bases.iter().find(|b| b.name == name).map(|b| b.dataset.clone());
        let (Some(d), Some(bl), Some(fl)) = (dataset(base), logits.get(backup), logits.get(base)) else {
            eprintln!("accuracy: skipping the backup {backup} for {base}: not both in the models folder");
            continue;
        };
        if dataset(backup).as_deref() != Some(d.as_str()) {
            bail!("the backup {backup} and {base} are models of different data sets");
        }
        let set = sets.get(&d).with_context(|| format!("the {d} test set"))?;
        let r = accuracy_free::measure_backup(backup, base, &d, bl, fl, &set.data.labels)?;
        eprintln!("accuracy: backup {backup} for {base}: top-1 {}, agreement with F {}", pct(r.backup_top1), pct(r.agreement_with_base));
        out.backup.push(r);
    }
    Ok(())
}
