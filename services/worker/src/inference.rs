//! Inference that one query cannot break: a failed or panicking batch is rerun one query
//! at a time, and every output must be finite numbers.

use parm_common::model::Model;
use parm_core::Tensor;

/// Runs a batch; if the batch fails (or panics), each query alone, so that one bad query
/// costs only itself. Every output is checked to be finite numbers.
pub fn run_guarded(model: &Model, tensors: &[Tensor]) -> Vec<Result<Vec<f32>, String>> {
    let run = |batch: &[&Tensor]| -> Result<Vec<Vec<f32>>, String> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.infer(batch))) {
            Ok(Ok(out)) if out.len() == batch.len() => Ok(out),
            Ok(Ok(out)) => Err(format!("the model gave {} outputs for {} inputs", out.len(), batch.len())),
            Ok(Err(e)) => Err(format!("the model could not run this query: {e:#}")),
            Err(_) => Err("the model panicked on this query".into()),
        }
    };
    let check = |out: Vec<f32>| match out.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(format!("model output value {i} is not a finite number; the input drives the model out of range")),
        None => Ok(out),
    };
    let all: Vec<&Tensor> = tensors.iter().collect();
    match run(&all) {
        Ok(outs) => outs.into_iter().map(check).collect(),
        Err(_) if tensors.len() > 1 => tensors.iter().map(|t| run(&[t]).and_then(|mut o| o.pop().ok_or_else(|| "no output".to_string())).and_then(check)).collect(),
        Err(reason) => vec![Err(reason)],
    }
}
