//! Models as parm serves them: a manifest (`models/NAME.json`) beside an ONNX file, and
//! tract plans with the batch size pinned per plan.
//!
//! The manifest says what the model is (data set, role, k, encoder, input shape, output
//! size, measured accuracies, reference outputs), so services read facts from it instead
//! of repeating them in flags. tract runs a plan with a fixed batch size up to 2x faster
//! than one with a symbolic batch, so a plan is built lazily for each batch size used.

use anyhow::{bail, Context as _};
use parm_core::Tensor;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tract_onnx::prelude::*;

/// `models/NAME.json`; see `models/README.md` for each field.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelManifest {
    pub name: String,
    pub file: String,
    pub dataset: String,
    /// `base` (the deployed model F) or `parity` (Fp).
    pub role: String,
    /// For a parity model: the base model it protects.
    #[serde(default)]
    pub base: Option<String>,
    #[serde(default)]
    pub k: Option<usize>,
    #[serde(default)]
    pub encoder: Option<String>,
    /// For a parity model of a code with several parities per group (r > 1): which parity
    /// it is (0: the plain addition code's), of how many, and its row of the code's
    /// weights (`parm_core::multi_parity::LinearCode`). Absent for r = 1.
    #[serde(default)]
    pub parity_index: Option<usize>,
    #[serde(default)]
    pub parities: Option<usize>,
    #[serde(default)]
    pub weights: Option<Vec<f64>>,
    /// Shape of one input, without the batch dimension.
    pub input_shape: Vec<usize>,
    /// The smallest and largest value an input may hold (MNIST pixels: `[0, 1]`); a query
    /// outside it is refused as a dead letter.
    #[serde(default)]
    pub input_range: Option<[f32; 2]>,
    pub output_size: usize,
    #[serde(default)]
    pub reference: Option<Reference>,
    #[serde(default)]
    pub accuracy: serde_json::Value,
}

impl ModelManifest {
    /// Which parity of its code this parity model is (0 when the manifest names none).
    pub fn parity_index(&self) -> usize {
        self.parity_index.unwrap_or(0)
    }
}

/// Inputs and the outputs the exporting framework computed for them.
#[derive(Debug, Clone, Deserialize)]
pub struct Reference {
    pub inputs: Vec<Vec<f32>>,
    pub outputs: Vec<Vec<f32>>,
}

impl ModelManifest {
    /// Reads a manifest; `path` may name the `.json` or the `.onnx` beside it.
    pub fn load(path: &Path) -> anyhow::Result<(Self, PathBuf)> {
        let json = if path.extension().is_some_and(|e| e == "onnx") { path.with_extension("json") } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&json)
            .with_context(|| format!("reading model manifest {} (models live in models/NAME.json beside NAME.onnx)", json.display()))?;
        let manifest: ModelManifest =
            serde_json::from_str(&text).with_context(|| format!("model manifest {} is malformed", json.display()))?;
        let onnx = json.parent().unwrap_or(Path::new(".")).join(&manifest.file);
        if !onnx.exists() {
            bail!("model manifest {} names {}, which does not exist", json.display(), onnx.display());
        }
        Ok((manifest, onnx))
    }
}

/// A model's identity: its name and a CRC-32 of its ONNX file (`NAME@1a2b3c4d`). A parity
/// query carries the encoder's parity model's, and a parity worker serves only its own: the
/// same name with other weights (another host's file, another training) is refused too.
pub fn identity(manifest: &ModelManifest, onnx: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(onnx).with_context(|| format!("reading {}", onnx.display()))?;
    Ok(format!("{}@{:08x}", manifest.name, crc32fast::hash(&bytes)))
}

/// A tract plan optimised for one batch size, shared by the threads that run it.
type Plan = Arc<TypedRunnableModel>;

/// A loaded model: its manifest, and one optimized plan per batch size used so far.
pub struct Model {
    pub manifest: ModelManifest,
    onnx: PathBuf,
    plans: Mutex<HashMap<usize, Plan>>,
}

impl Model {
    /// This model's [`identity`].
    pub fn identity(&self) -> anyhow::Result<String> {
        identity(&self.manifest, &self.onnx)
    }

    /// Loads a model from its manifest and builds the batch-1 plan (so a broken model
    /// fails at start, not at the first query).
    pub fn load(path: &Path) -> anyhow::Result<Arc<Self>> {
        let (manifest, onnx) = ModelManifest::load(path)?;
        let model = Arc::new(Self { manifest, onnx, plans: Mutex::new(HashMap::new()) });
        model.plan(1)?;
        Ok(model)
    }

    fn plan(&self, batch: usize) -> anyhow::Result<Plan> {
        if let Some(p) = self.plans.lock().expect("plan cache").get(&batch) {
            return Ok(p.clone());
        }
        let mut shape = vec![batch];
        shape.extend_from_slice(&self.manifest.input_shape);
        let plan = tract_onnx::onnx()
            .with_ignore_output_shapes(true)
            .with_ignore_value_info(true)
            .model_for_path(&self.onnx)
            .and_then(|m| m.with_input_fact(0, f32::fact(&shape).into()))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .with_context(|| format!("building a tract plan for {} at batch {batch}", self.onnx.display()))?;
        self.plans.lock().expect("plan cache").insert(batch, plan.clone());
        Ok(plan)
    }

    /// Runs a batch of inputs (each of the manifest's input shape); one output per input.
    /// Blocking: call it off the async threads.
    pub fn infer(&self, inputs: &[&Tensor]) -> anyhow::Result<Vec<Vec<f32>>> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let per = self.manifest.input_shape.iter().product::<usize>();
        let mut data = Vec::with_capacity(per * inputs.len());
        for t in inputs {
            t.expect_shape(&self.manifest.input_shape)?;
            data.extend_from_slice(t.data());
        }
        let mut shape = vec![inputs.len()];
        shape.extend_from_slice(&self.manifest.input_shape);
        let input = tract_ndarray::ArrayD::from_shape_vec(shape, data)?.into_tensor();
        let out = self.plan(inputs.len())?.run(tvec!(input.into()))?;
        let view = out[0].to_plain_array_view::<f32>()?;
        let flat: Vec<f32> = view.iter().copied().collect();
        if flat.len() != inputs.len() * self.manifest.output_size {
            bail!("model produced {} values for {} inputs; expected {} each", flat.len(), inputs.len(), self.manifest.output_size);
        }
        Ok(flat.chunks(self.manifest.output_size).map(<[f32]>::to_vec).collect())
    }
}

/// The `models/` folder: `PARM_MODELS_DIR`, else `models/` under the current directory or
/// any parent, else the one in the source tree this binary was built from.
pub fn models_dir() -> PathBuf {
    if let Ok(d) = std::env::var("PARM_MODELS_DIR") {
        return PathBuf::from(d);
    }
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            let candidate = dir.join("models");
            if candidate.join("README.md").exists() {
                return candidate;
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

/// Every manifest (`*.json`) in a models folder, sorted by path.
pub fn manifest_paths(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the models folder {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    Ok(paths)
}

/// Resolves a model given by name (`mnist-mlp`) or path.
pub fn resolve(name_or_path: &str) -> PathBuf {
    let p = Path::new(name_or_path);
    if p.exists() {
        return p.to_path_buf();
    }
    models_dir().join(format!("{name_or_path}.json"))
}
