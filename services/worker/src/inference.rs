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

/// The pass-through "inference" of `--pass-through`: each query's answer is the first
/// `output_size` values of its input (zeros past its end), a copy and nothing more.
pub fn pass_through(output_size: usize, tensors: &[Tensor]) -> Vec<Result<Vec<f32>, String>> {
    tensors
        .iter()
        .map(|t| {
            let mut out: Vec<f32> = t.data().iter().take(output_size).copied().collect();
            out.resize(output_size, 0.0);
            Ok(out)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_through_copies_the_first_values_and_pads_short_inputs() {
        let long = Tensor::new(vec![4], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let short = Tensor::new(vec![1], vec![7.0]).unwrap();
        let out = pass_through(3, &[long, short]);
        assert_eq!(out, vec![Ok(vec![1.0, 2.0, 3.0]), Ok(vec![7.0, 0.0, 0.0])]);
    }
}
