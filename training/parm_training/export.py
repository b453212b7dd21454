"""ONNX export, the check that ONNX matches PyTorch, and the manifests in models/.

The exported graph: one input `input` [batch, C, H, W] float32, one output `logits`
[batch, classes], the batch dimension dynamic. The legacy TorchScript exporter is used
(dynamo=False, opset 17): it needs no onnxscript and its output loads in tract.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17
TOLERANCE = 1e-4
SIGNIFICANT_DIGITS = 7


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...]) -> None:
    model.eval()
    example = torch.rand(2, *input_shape)
    # The legacy exporter is deprecated in torch >= 2.9 but chosen on purpose (no
    # onnxscript, a graph tract loads as is); its deprecation warnings are not news.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    import onnx

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


class OnnxModel:
    """Runs an exported model: onnxruntime when installed, else onnx's reference evaluator."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such model")
        try:
            import onnxruntime as ort
        except ImportError:
            ort = None
        if ort is not None:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
            self.backend = "onnxruntime"
        else:
            from onnx.reference import ReferenceEvaluator

            self._session = ReferenceEvaluator(str(self.path))
            self.backend = "onnx.reference"

    def __call__(self, x: np.ndarray, batch: int = 4096) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        outs = [self._session.run(None, {INPUT_NAME: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
        return np.concatenate(outs).astype(np.float32)


def onnx_weights(path: str | Path) -> dict[str, np.ndarray]:
    """The initializers of an exported model, by name (the PyTorch parameter names)."""
    import onnx
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def verify_onnx(path: str | Path, model: nn.Module, samples: np.ndarray, atol: float = TOLERANCE) -> float:
    """Checks that the ONNX file reproduces PyTorch on the samples, at several batch sizes.

    Returns the largest absolute difference; raises AssertionError above atol.
    """
    model.eval()
    with torch.no_grad():
        expected = model(torch.as_tensor(samples)).numpy()
    onnx_model = OnnxModel(path)
    worst = 0.0
    # Batch sizes other than the export example's (2) prove the batch dimension is dynamic.
    for b in sorted({1, 3, len(samples)}):
        got = onnx_model(samples[:b])
        if got.shape != expected[:b].shape:
            raise AssertionError(f"{path}: ONNX output shape {got.shape} != PyTorch {expected[:b].shape} at batch {b}")
        worst = max(worst, float(np.abs(got - expected[:b]).max()))
    if worst > atol:
        raise AssertionError(f"{path}: ONNX ({onnx_model.backend}) differs from PyTorch by {worst:.3g} > {atol}")
    return worst


def round_sig(x: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    return float(f"{x:.{digits}g}")


def reference_io(predict, inputs: np.ndarray) -> dict[str, list[list[float]]]:
    """Reference inputs (flattened) and the model's outputs on them, rounded.

    Outputs are computed from the *rounded* inputs, so a reader that parses the JSON and
    runs the model sees exactly the inputs the outputs belong to.
    """
    flat = [[round_sig(v) for v in row] for row in inputs.reshape(len(inputs), -1).tolist()]
    parsed = np.asarray(flat, dtype=np.float32).reshape(inputs.shape)
    outputs = predict(parsed)
    return {"inputs": flat, "outputs": [[round_sig(v) for v in row] for row in outputs.tolist()]}


def _dumps(value: Any, indent: int = 0) -> str:
    """JSON with objects indented and lists of numbers kept on one line."""
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(k)}: {_dumps(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return "[" + ", ".join(_number(v) for v in value) + "]"
        return "[\n" + ",\n".join(inner + _dumps(v, indent + 1) for v in value) + "\n" + pad + "]"
    if isinstance(value, float):
        return _number(value)
    return json.dumps(value)


def _number(v: float | int) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"manifest value {v} is not valid JSON")
    return json.dumps(v)


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> None:
    text = _dumps(manifest) + "\n"
    json.loads(text)  # what we write must parse
    Path(path).write_text(text)


def read_manifest(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def check_manifest(path: str | Path, atol: float = TOLERANCE) -> float:
    """Runs the manifest's model on its reference inputs; returns the worst difference."""
    path = Path(path)
    m = read_manifest(path)
    for key in ("name", "file", "dataset", "role", "input_shape", "input_range", "normalization", "output_size", "accuracy", "reference", "training"):
        if key not in m:
            raise AssertionError(f"{path}: missing field '{key}'")
    if m["role"] == "parity":
        for key in ("base", "k", "encoder"):
            if key not in m:
                raise AssertionError(f"{path}: parity manifest missing field '{key}'")
    model = OnnxModel(path.parent / m["file"])
    inputs = np.asarray(m["reference"]["inputs"], dtype=np.float32)
    expected = np.asarray(m["reference"]["outputs"], dtype=np.float32)
    shape = tuple(m["input_shape"])
    if inputs.shape[1] != int(np.prod(shape)) or expected.shape[1] != m["output_size"]:
        raise AssertionError(f"{path}: reference shapes {inputs.shape} -> {expected.shape} disagree with the manifest")
    lo, hi = m["input_range"]
    if inputs.min() < lo or inputs.max() > hi:
        raise AssertionError(f"{path}: reference inputs outside input_range {m['input_range']}")
    got = model(inputs.reshape(len(inputs), *shape))
    worst = float(np.abs(got - expected).max())
    if worst > atol:
        raise AssertionError(f"{path}: model output differs from the reference by {worst:.3g} > {atol}")
    return worst
