//! Every model in `models/` loads in tract and reproduces the reference outputs that the
//! exporting framework recorded in its manifest, to 1e-4 (see `models/README.md`).
//!
//! This is the contract between `training/` and the services: a model that fails here
//! would serve different predictions than the ones its accuracy was measured on.

use parm_common::model::{manifest_paths, models_dir, Model, ModelManifest};
use parm_core::Tensor;
use std::path::PathBuf;

const TOLERANCE: f32 = 1e-4;

fn manifests() -> Vec<PathBuf> {
    manifest_paths(&models_dir()).expect("the models folder")
}

#[test]
fn the_default_pipeline_models_are_present() {
    let names: Vec<String> =
        manifests().iter().filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned())).collect();
    for needed in ["mnist-mlp", "mnist-mlp-parity-add-k2", "mnist-lenet", "mnist-lenet-parity-concat-k2"] {
        assert!(names.iter().any(|n| n == needed), "models/{needed}.json is missing (found {names:?})");
    }
}

#[test]
fn every_model_reproduces_its_reference_outputs_in_tract() {
    let paths = manifests();
    assert!(!paths.is_empty(), "no manifests in {}", models_dir().display());
    let mut failures = Vec::new();
    for path in &paths {
        let model = Model::load(path).unwrap_or_else(|e| panic!("{}: does not load in tract: {e:#}", path.display()));
        let m = &model.manifest;
        let reference = m.reference.as_ref().unwrap_or_else(|| panic!("{}: no reference in the manifest", path.display()));
        assert_eq!(reference.inputs.len(), reference.outputs.len(), "{}: reference inputs and outputs differ in count", path.display());
        assert!(!reference.inputs.is_empty(), "{}: empty reference", path.display());
        let inputs: Vec<Tensor> = reference
            .inputs
            .iter()
            .map(|x| Tensor::new(m.input_shape.clone(), x.clone()).unwrap_or_else(|e| panic!("{}: reference input: {e}", path.display())))
            .collect();
        // One example at a time and all together: plans are pinned per batch size.
        let outputs: Vec<Vec<Vec<f32>>> = vec![
            inputs.iter().map(|x| model.infer(&[x]).expect("batch-1 inference").remove(0)).collect(),
            model.infer(&inputs.iter().collect::<Vec<_>>()).expect("batched inference"),
        ];
        let mut worst = 0.0f32;
        for got in &outputs {
            for (g, want) in got.iter().zip(&reference.outputs) {
                assert_eq!(g.len(), m.output_size, "{}: output size", path.display());
                assert_eq!(want.len(), m.output_size, "{}: reference output size", path.display());
                for (a, b) in g.iter().zip(want) {
                    worst = worst.max((a - b).abs());
                }
            }
        }
        if worst.is_nan() || worst > TOLERANCE {
            failures.push(format!("{}: tract differs from the reference by {worst:e}", path.display()));
        }
        check_fields(path, m);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A parity model names a base model of the same data set and shapes.
fn check_fields(path: &std::path::Path, m: &ModelManifest) {
    match m.role.as_str() {
        "base" => {}
        "parity" => {
            let base = m.base.as_deref().unwrap_or_else(|| panic!("{}: parity manifest without 'base'", path.display()));
            let k = m.k.unwrap_or_else(|| panic!("{}: parity manifest without 'k'", path.display()));
            let encoder = m.encoder.as_deref().unwrap_or_else(|| panic!("{}: parity manifest without 'encoder'", path.display()));
            let encoder: parm_core::ParityEncoder = encoder.parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            encoder.validate(k, &m.input_shape).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let (b, _) = ModelManifest::load(&path.with_file_name(format!("{base}.json")))
                .unwrap_or_else(|e| panic!("{}: its base '{base}': {e:#}", path.display()));
            assert_eq!(b.role, "base", "{}: base '{base}' is not a base model", path.display());
            assert_eq!(b.dataset, m.dataset, "{}: data set differs from its base", path.display());
            assert_eq!(b.input_shape, m.input_shape, "{}: input shape differs from its base", path.display());
            assert_eq!(b.output_size, m.output_size, "{}: output size differs from its base", path.display());
        }
        other => panic!("{}: unknown role '{other}'", path.display()),
    }
}
