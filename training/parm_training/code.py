"""Degraded mode of a code with r parities per group (parm_core::multi_parity::LinearCode):
any e <= r missing members of a group of k recovered from the parities that came.

Parity j's model Fp_j outputs ~ sum_i w_ji F(X_i) (encoders.code_weights). With the members
M missing and the parities P in, B_j = Fp_j(E_j) - sum_{i not in M} w_ji F(X_i) for j in P
leaves W[P, M] Y = B; Y is its solution (least squares when |P| > |M|), as parm-core's
decoder computes it. `evaluate` scores every such pattern on seeded groups of test images.
"""

from __future__ import annotations

from itertools import combinations
from typing import Callable, Sequence

import numpy as np
import torch

from parm_training import encoders

Predict = Callable[[np.ndarray], np.ndarray]


def recover(weights: np.ndarray, parity_outs: np.ndarray, member_outs: np.ndarray, missing: Sequence[int],
            parities: Sequence[int]) -> np.ndarray:
    """The missing members' outputs [n, |M|, C] from the parity outputs [r, n, C] (only rows
    `parities` are read), the members' outputs [n, k, C] (only the known ones are read) and
    the code's weights [r, k]. Exact when |P| = |M|, least squares when |P| > |M|."""
    weights = np.asarray(weights, dtype=np.float64)
    missing, parities = list(missing), list(parities)
    if len(parities) < len(missing):
        raise ValueError(f"{len(missing)} members missing but only {len(parities)} parities")
    known = [i for i in range(weights.shape[1]) if i not in missing]
    outs = np.asarray(member_outs, dtype=np.float64)
    b = np.asarray(parity_outs, dtype=np.float64)[parities]  # [p, n, C]
    if known:
        b = b - np.einsum("pi,nic->pnc", weights[np.ix_(parities, known)], outs[:, known])
    solve = np.linalg.pinv(weights[np.ix_(parities, missing)])  # [e, p]: the inverse when square
    return np.einsum("ep,pnc->nec", solve, b)


def parity_outputs(weights: np.ndarray, predicts: Sequence[Predict], x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """[r, n, C]: parity j's model on E_j = sum_i w_ji X_i of every group."""
    outs = []
    for j, predict in enumerate(predicts):
        row = weights[j]
        encoder = encoders.get("addition") if np.all(row == 1) else encoders.Addition(row)
        with torch.no_grad():
            e = encoder.encode(torch.as_tensor(x[groups])).numpy()
        outs.append(predict(e))
    return np.stack(outs)


def patterns(k: int, r: int) -> list[tuple[int, tuple[int, ...]]]:
    """Every (number of missing members e, parities P) with 1 <= e <= min(r, k), |P| >= e."""
    return [(e, p) for e in range(1, min(r, k) + 1) for size in range(e, r + 1) for p in combinations(range(r), size)]


def evaluate(weights: np.ndarray, predicts: Sequence[Predict], x: np.ndarray, base_logits: np.ndarray,
             labels: np.ndarray, groups: np.ndarray) -> list[dict]:
    """Every erasure pattern over the groups: for each (e, P) of `patterns`, every set M of
    e members of every group missing in turn, recovered from the parities P; the recovered
    top-1 against the true labels and against F's own top-1."""
    weights = np.asarray(weights, dtype=np.float64)
    r, k = weights.shape
    parity_outs = parity_outputs(weights, predicts, x, groups)
    member_outs = base_logits[groups]  # [n, k, C]
    f_top, truth = member_outs.argmax(-1), labels[groups]
    rows = []
    for e, p in patterns(k, r):
        correct = agree = base_correct = total = 0
        for m in combinations(range(k), e):
            top = recover(weights, parity_outs, member_outs, m, p).argmax(-1)  # [n, e]
            cols = list(m)
            correct += int((top == truth[:, cols]).sum())
            agree += int((top == f_top[:, cols]).sum())
            base_correct += int((f_top[:, cols] == truth[:, cols]).sum())
            total += top.size
        how = "exact" if len(p) == e else "least squares"
        rows.append({
            "missing": e,
            "parities": list(p),
            "solve": how,
            "reconstructions": total,
            "reconstruction_top1": round(correct / total, 6),
            "agreement_with_base": round(agree / total, 6),
            "base_top1": round(base_correct / total, 6),
        })
    return rows
