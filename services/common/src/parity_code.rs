//! The parity models of a deployment's code, as the encoder and the parity workers take
//! them: `--parity-model` (encoder) and `--model` (parity worker) name one parity model for
//! the paper's r = 1 code, or the r parity models of a code with r parities per group as a
//! comma-separated list (`mnist-lenet-parity-add-k2,mnist-lenet-parity-add-k2-r2-p1`).
//!
//! [`ParityCode::load`] checks, at start, that the list is one whole code, so that a
//! deployment given the wrong files stops with a message instead of dead-lettering parity
//! queries or decoding with the wrong weights:
//! - every model is a parity model of the same base, k, encoder, input shape and output size;
//! - each parity index 0..r appears once (a model without `parity_index` is parity 0);
//! - r > 1 needs the addition encoder (parity j's input is Σ_i w_ji X_i), and each model's
//!   recorded `parities` and `weights` must be those of `parm_core::multi_parity::LinearCode`
//!   for this k and r, the code the encoder encodes with and the decoder solves.

use crate::model::{resolve, ModelManifest};
use anyhow::{bail, Context as _};
use parm_core::multi_parity::{LinearCode, MAX_PARITIES};
use parm_core::ParityEncoder;
use std::path::PathBuf;

/// One parity model of a code: its manifest, where the manifest is, and its ONNX file
/// (which several manifests may share: a backup model is a base model's file).
#[derive(Debug, Clone)]
pub struct ParityModel {
    pub manifest: ModelManifest,
    /// The manifest's own path (what `Model::load` takes).
    pub path: PathBuf,
    pub onnx: PathBuf,
}

/// One whole code: its parity models in parity order (index j holds parity j).
#[derive(Debug, Clone)]
pub struct ParityCode {
    pub k: usize,
    pub encoder: ParityEncoder,
    pub parities: Vec<ParityModel>,
}

impl ParityCode {
    /// Loads and checks the parity models named in `list` (comma-separated names in
    /// models/ or manifest paths, in any order).
    pub fn load(list: &str) -> anyhow::Result<Self> {
        let mut models = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let path = resolve(name);
            let (manifest, onnx) = ModelManifest::load(&path).with_context(|| format!("loading parity model {name}"))?;
            models.push(ParityModel { manifest, path, onnx });
        }
        Self::from_models(models)
    }

    /// Checks that `models` are one whole code (see the module docs) and orders them.
    pub fn from_models(models: Vec<ParityModel>) -> anyhow::Result<Self> {
        let Some(first) = models.first().map(|p| &p.manifest) else { bail!("no parity model given: name one, or the r parity models of a code separated by commas") };
        let r = models.len();
        if r > MAX_PARITIES {
            bail!("{r} parity models given; parm serves at most {MAX_PARITIES} parities per group");
        }
        for m in models.iter().map(|p| &p.manifest) {
            if m.role != "parity" {
                bail!("{} is a {} model; a parity model is needed (role \"parity\" in its manifest)", m.name, m.role);
            }
            let same = m.k == first.k && m.base == first.base && m.encoder == first.encoder && m.input_shape == first.input_shape && m.output_size == first.output_size;
            if !same {
                bail!("{} and {} are not parity models of one code: their base, k, encoder, input shape or output size differ", first.name, m.name);
            }
        }
        let k = first.k.ok_or_else(|| anyhow::anyhow!("parity model {} has no k in its manifest", first.name))?;
        let encoder: ParityEncoder = first.encoder.as_deref().unwrap_or("addition").parse().map_err(anyhow::Error::msg)?;
        encoder.validate(k, &first.input_shape)?;
        if r == 1 {
            let p = models.into_iter().next().ok_or_else(|| anyhow::anyhow!("no parity model"))?;
            let m = &p.manifest;
            if m.parity_index() > 0 || m.parities.is_some_and(|p| p > 1) {
                bail!(
                    "{} is parity {} of a code with {} parities per group: name all of them, separated by commas{}",
                    m.name,
                    m.parity_index(),
                    m.parities.unwrap_or(0),
                    code_hint(m)
                );
            }
            return Ok(Self { k, encoder, parities: vec![p] });
        }
        if encoder != ParityEncoder::Addition {
            bail!("a code with {r} parities per group encodes parity j as a weighted sum of the members: its parity models need the addition encoder, not {encoder}");
        }
        let code = LinearCode::new(k, r)?;
        let mut slots: Vec<Option<ParityModel>> = vec![None; r];
        for p in models {
            let m = &p.manifest;
            let j = m.parity_index();
            if m.parities.is_some_and(|p| p != r) {
                bail!("{} is a parity of a code with {} parities per group, but {r} parity models were given{}", m.name, m.parities.unwrap_or(0), code_hint(m));
            }
            let want = code.weights(j).map_err(|_| anyhow::anyhow!("{} is parity {j}, but {r} parity models make parities 0..{r}{}", m.name, code_hint(m)))?;
            let weights = m.weights.clone().unwrap_or_else(|| vec![1.0; k]);
            if weights.len() != k || weights.iter().zip(want).any(|(a, b)| (a - b).abs() > 1e-9) {
                bail!("{} was trained with weights {weights:?}, but parity {j} of parm's code for k = {k}, r = {r} has {want:?}; retrain it with training/ for this code", m.name);
            }
            let slot = slots.get_mut(j).ok_or_else(|| anyhow::anyhow!("parity index {j} out of range"))?;
            if let Some(other) = slot {
                bail!("{} and {} are both parity {j}: name each parity of the code once", other.manifest.name, m.name);
            }
            *slot = Some(p);
        }
        let parities = slots.into_iter().enumerate().map(|(j, s)| s.ok_or_else(|| anyhow::anyhow!("parity {j} of the code is missing from the list"))).collect::<anyhow::Result<_>>()?;
        Ok(Self { k, encoder, parities })
    }

    /// r: how many parity queries each group gets.
    pub fn r(&self) -> usize {
        self.parities.len()
    }
}

/// ", e.g. A,B" from the code's parity models as the manifest's accuracy record lists them.
fn code_hint(m: &ModelManifest) -> String {
    let names: Option<Vec<&str>> = m.accuracy.get("code").and_then(|c| c.get("parity_models")).and_then(|p| p.as_array()).map(|a| a.iter().filter_map(|v| v.as_str()).collect());
    match names {
        Some(n) if !n.is_empty() => format!(", e.g. {}", n.join(",")),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(list: &str) -> String {
        format!("{:#}", ParityCode::load(list).unwrap_err())
    }

    #[test]
    fn one_plain_parity_model_is_the_r1_code() {
        let c = ParityCode::load("mnist-lenet-parity-concat-k2").unwrap();
        assert_eq!((c.k, c.encoder, c.r()), (2, ParityEncoder::Concatenation, 1));
    }

    #[test]
    fn the_parity_models_of_an_r2_code_are_ordered_by_parity_index() {
        let c = ParityCode::load("mnist-lenet-parity-add-k2-r2-p1, mnist-lenet-parity-add-k2").unwrap();
        assert_eq!((c.k, c.r()), (2, 2));
        assert_eq!(c.parities[0].manifest.name, "mnist-lenet-parity-add-k2");
        assert_eq!(c.parities[1].manifest.name, "mnist-lenet-parity-add-k2-r2-p1");
    }

    /// A backup model shares a base model's ONNX file: the code keeps the manifest's own
    /// path, so the worker loads the backup's manifest, not the base model's.
    #[test]
    fn a_backup_model_keeps_its_own_manifest_path() {
        let c = ParityCode::load("mnist-lenet-backup-mlp").unwrap();
        assert_eq!((c.k, c.r()), (1, 1));
        assert!(c.parities[0].path.ends_with("mnist-lenet-backup-mlp.json") && c.parities[0].onnx.ends_with("mnist-mlp.onnx"), "{:?}", c.parities[0]);
    }

    #[test]
    fn a_second_parity_alone_is_refused_with_the_list_to_give() {
        let msg = err("mnist-lenet-parity-add-k2-r2-p1");
        assert!(msg.contains("parity 1 of a code with 2 parities") && msg.contains("e.g. mnist-lenet-parity-add-k2,mnist-lenet-parity-add-k2-r2-p1"), "{msg}");
    }

    #[test]
    fn models_of_different_codes_are_refused() {
        assert!(err("mnist-lenet-parity-add-k4,mnist-lenet-parity-add-k2-r2-p1").contains("not parity models of one code"));
        assert!(err("mnist-lenet-parity-add-k2,mnist-lenet-parity-add-k2").contains("both parity 0"));
        assert!(err("mnist-lenet-parity-concat-k2,mnist-lenet-parity-concat-k2").contains("addition encoder"));
        assert!(err("mnist-lenet").contains("a parity model is needed"));
        assert!(err("").contains("no parity model given"));
    }
}
