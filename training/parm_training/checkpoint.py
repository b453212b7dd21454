"""Checkpoints of `parity --checkpoint-only`: a trained Fp's weights and training record in
one `.npz`, so that training can run on one machine (a borrowed GPU) and the export, checks
and evaluation on another (`parity --from-checkpoint`, or `--init-from` to train on).

The file holds every parameter by name, plus under RECORD_KEY a JSON string:
{"for": what the weights are (base, data set, encoder, k, architecture), "training": the
manifest's training record}. numpy only, so any torch version reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

RECORD_KEY = "__parm_training__"


class CheckpointError(ValueError):
    """Not a checkpoint, or not the one the arguments describe; the message says which."""


def identity(base: dict, encoder: str, k: int, arch: str) -> dict:
    """What a checkpoint's weights are for, as checked when it is read back."""
    return {"base": base["name"], "dataset": base["dataset"], "encoder": encoder, "k": k, "arch": arch}


def save(path: Path, model: torch.nn.Module, training: dict, what: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {name: t.detach().cpu().numpy() for name, t in model.state_dict().items()}
    record = {"for": what, "training": training}
    with open(path, "wb") as out:
        np.savez(out, **weights, **{RECORD_KEY: np.array(json.dumps(record))})


def read(path: Path, expected: dict | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """The weights and the training record; with `expected`, only if the checkpoint is for
    that (an `identity`)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint (write one with parity --checkpoint-only)")
    not_one = f"{path}: not a checkpoint of parity --checkpoint-only"
    try:
        with np.load(path, allow_pickle=False) as z:
            text = str(z[RECORD_KEY]) if RECORD_KEY in z.files else None
            weights = {name: z[name] for name in z.files if name != RECORD_KEY}
    except (ValueError, OSError, TypeError) as e:
        # Not an .npz at all (numpy's own message would talk about pickles).
        raise CheckpointError(f"{not_one} ({type(e).__name__})") from None
    if text is None:
        raise CheckpointError(f"{not_one} (no training record)")
    record = json.loads(text)
    if expected is not None and record["for"] != expected:
        raise CheckpointError(f"{path}: it holds Fp for {record['for']}, but the arguments describe {expected}")
    return weights, record["training"]
