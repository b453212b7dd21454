//! The degraded-mode accuracy benchmark end to end on the shipped models, on the first few
//! hundred test examples: every parity model in `models/` is measured, over every grouping
//! asked for, and the decoded outputs are real reconstructions (the concatenation k = 2 model
//! agrees with F far above chance). The full-test-set numbers are in `benchmarks/results/`.

use parm_common::model::{manifest_paths, ModelManifest};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn parity_manifests(models: &Path) -> Vec<ModelManifest> {
    manifest_paths(models)
        .expect("models/")
        .iter()
        .map(|p| ModelManifest::load(p).expect("a readable manifest").0)
        .filter(|m| m.role == "parity")
        .collect()
}

#[test]
fn every_parity_model_is_measured_over_every_grouping() {
    let out = std::env::temp_dir().join(format!("parm-accuracy-smoke-{}", std::process::id()));
    let (limit, groupings) = (400, 2);
    let run = Command::new(env!("CARGO_BIN_EXE_accuracy"))
        .current_dir(root())
        .args(["--limit", &limit.to_string(), "--groupings", &groupings.to_string(), "--out"])
        .arg(&out)
        .output()
        .expect("running accuracy");
    assert!(run.status.success(), "accuracy failed:\n{}", String::from_utf8_lossy(&run.stderr));

    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("accuracy.json")).unwrap()).unwrap();
    assert_eq!(report["groupings"], groupings);
    let measured = report["parity"].as_array().unwrap();
    let shipped = parity_manifests(&root().join("models"));
    assert_eq!(measured.len(), shipped.len(), "one row per parity model in models/");
    for r in measured {
        let k = r["k"].as_u64().unwrap();
        let per_grouping = limit / k * k;
        assert_eq!(r["reconstructions"], groupings * per_grouping, "{}", r["name"]);
        assert_eq!(r["groups"], groupings * (limit / k), "{}", r["name"]);
        for key in ["reconstruction_top1", "agreement_with_base", "base_top1"] {
            let x = r[key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&x), "{} {key} = {x}", r["name"]);
        }
    }
    let concat = measured.iter().find(|r| r["name"] == "mnist-lenet-parity-concat-k2").expect("the deployed parity model");
    assert!(concat["agreement_with_base"].as_f64().unwrap() > 0.9, "{concat}");

    // The training-free rows: Berrut codes (every output of every group, from all N answers
    // and from every set of S missing), F as its own parity model, the backup.
    let free = &report["training_free"];
    let berrut = free["berrut"].as_array().unwrap();
    let k8 = berrut.iter().find(|r| r["base"] == "mnist-lenet" && r["k"] == 8 && r["s"] == 1).expect("Berrut K = 8, S = 1 on MNIST");
    let groups = groupings * (limit / 8);
    assert_eq!(k8["groups"], groups);
    assert_eq!(k8["no_straggler"]["total"], groups * 8);
    assert_eq!(k8["stragglers"]["total"], groups * 8 * 9, "every output, for each of the 9 missing workers");
    for r in berrut {
        for key in ["no_straggler", "stragglers"] {
            let t = &r[key];
            assert!(t["correct"].as_u64().unwrap() <= t["total"].as_u64().unwrap(), "{r}");
        }
    }
    assert!(k8["no_straggler"]["agree"].as_f64().unwrap() / k8["no_straggler"]["total"].as_f64().unwrap() > 0.5, "{k8}");
    let own = free["self_parity"].as_array().unwrap();
    assert!(own.iter().any(|r| r["base"] == "mnist-lenet" && r["encoder"] == "addition" && r["k"] == 2 && r["decoded"]["total"] == groupings * limit), "{own:?}");
    let backup = &free["backup"][0];
    assert_eq!((backup["backup"].as_str(), backup["test_examples"].as_u64()), (Some("mnist-mlp"), Some(limit)));
    assert!(backup["agreement_with_base"].as_f64().unwrap() > 0.9, "{backup}");

    let md = std::fs::read_to_string(out.join("accuracy.md")).unwrap();
    assert!(md.contains("2 groupings (seeds 1234–1235)"), "{md}");
    assert!(md.contains("### Berrut-coded inference (ApproxIFER)") && md.contains("### Approximate backup"), "{md}");
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn zero_groupings_is_refused_with_a_reason() {
    let run = Command::new(env!("CARGO_BIN_EXE_accuracy")).current_dir(root()).args(["--groupings", "0"]).output().expect("running accuracy");
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("--groupings must be at least 1"));
}
