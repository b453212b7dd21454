"""Encoders (k queries -> one parity query) and the subtraction decoder.

Every encoder here is paired with the same decoder: Fp is trained so that
Fp(E(X1..Xk)) ~ F(X1) + ... + F(Xk), and a missing F(Xj) is recovered as
Fp(P) - sum_{i != j} F(Xi). Encoders differ only in how P is built, and so in the range
and normalization of the parity model's input. The Rust encoder must build P exactly as
`encode` does here; models/README.md states it in words.

r parities per group (parm_core::multi_parity::LinearCode): parity j of members X_1..X_k
is E_j = sum_i w_ji X_i with the Vandermonde weights w_ji = x_i^j on the nodes
x_i = 1 + i / (k - 1) (`code_weights`). Row 0 is all ones: the addition code above. A
weighted addition encoder (`for_parity`) builds E_j, its Fp_j is trained towards
sum_i w_ji F(X_i) (`target`), and a lone missing member m is decoded from parity j alone
as (Fp_j(E_j) - sum_{i != m} w_ji F(X_i)) / w_jm (`decode`). Recovering several missing
members from several parities is code.py's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch
import torch.nn.functional as nnf


def code_weights(k: int, r: int) -> list[list[float]]:
    """The r x k weight matrix of the code with k members and r parities: w_ji = x_i^j on
    x_i = 1 + i / (k - 1) (x = 1 when k = 1), as parm_core's LinearCode::new builds it."""
    if k < 1 or r < 1:
        raise ValueError(f"a code needs k >= 1 and r >= 1, got k = {k}, r = {r}")
    nodes = [1.0 if k == 1 else 1.0 + i / (k - 1) for i in range(k)]
    return [[x**j for x in nodes] for j in range(r)]


class Encoder(ABC):
    """Builds parity queries from groups of k queries."""

    name: str  # as in the CLI and the manifest ("addition")
    short: str  # as in file names ("add")
    # Parity j's row of the code's weights (None: all ones, the plain encoder).
    weights: tuple[float, ...] | None = None

    @abstractmethod
    def check_k(self, k: int) -> None:
        """Raises ValueError when this encoder does not support k."""

    @abstractmethod
    def encode(self, group: torch.Tensor) -> torch.Tensor:
        """[n, k, C, H, W] raw queries -> [n, C, H, W] parity queries."""

    @abstractmethod
    def input_range(self, k: int) -> tuple[float, float]:
        """The range of parity-query values when each query is in [0, 1]."""

    @abstractmethod
    def normalization(self, mean: float, std: float, k: int) -> tuple[float, float]:
        """In-graph normalization of Fp, given the data set's per-image mean and std."""

    def target(self, member_outs: torch.Tensor) -> torch.Tensor:
        """What Fp is trained to output: [n, k, C] member outputs F(Xi) -> [n, C], their
        (weighted) sum."""
        if self.weights is None:
            return member_outs.sum(dim=1)
        return (member_outs * self._row(member_outs)[None, :, None]).sum(dim=1)

    def decode(self, parity_out: torch.Tensor, member_outs: torch.Tensor) -> torch.Tensor:
        """Every member in turn decoded from this parity alone: [n, m, C] (see `decode`); the
        members may be a partial group's first m <= k (the others' slots were zero)."""
        if self.weights is None:
            return decode(parity_out, member_outs)
        m = member_outs.shape[1]
        w = self._row(member_outs) if m == len(self.weights) else None
        return decode(parity_out, member_outs, self.weights[:m], w)

    def _row(self, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weights as a tensor on `like`'s device, made once per device and dtype (a
        copy to a GPU at every step would make each step wait for the GPU)."""
        assert self.weights is not None
        if like.shape[1] != len(self.weights):
            raise ValueError(f"{len(self.weights)} weights for groups of {like.shape[1]}")
        key = (like.device, dtype or like.dtype)
        cache = self.__dict__.setdefault("_rows", {})
        if key not in cache:
            cache[key] = torch.tensor(self.weights, dtype=key[1], device=like.device)
        return cache[key]


class Addition(Encoder):
    """P = X1 + ... + Xk, element-wise (any k >= 2); with `weights` (parity j > 0 of a code
    with r parities), P = w_1 X1 + ... + w_k Xk, summed in float64 and rounded to float32
    once, as parm_core's LinearCode::encode does."""

    name = "addition"
    short = "add"

    def __init__(self, weights: Sequence[float] | None = None) -> None:
        self.weights = None if weights is None else tuple(float(w) for w in weights)
        if self.weights is not None and (not self.weights or min(self.weights) <= 0):
            raise ValueError(f"weights must be positive, got {self.weights}")

    def check_k(self, k: int) -> None:
        if k < 2:
            raise ValueError(f"addition needs k >= 2, got {k}")
        if self.weights is not None and len(self.weights) != k:
            raise ValueError(f"{len(self.weights)} weights for k = {k}")

    def encode(self, group: torch.Tensor) -> torch.Tensor:
        if self.weights is None:
            return group.sum(dim=1)
        w = self._row(group, torch.float64)
        return (group.to(torch.float64) * w[None, :, None, None, None]).sum(dim=1).to(group.dtype)

    def _sum(self, k: int) -> float:
        return float(k) if self.weights is None else float(sum(self.weights))

    def input_range(self, k: int) -> tuple[float, float]:
        return (0.0, self._sum(k))

    def normalization(self, mean: float, std: float, k: int) -> tuple[float, float]:
        # (sum xi - k*mean) / std == sum of the normalized inputs, as in the reference code;
        # weighted: (sum wi xi - (sum wi) mean) / std == sum wi (xi - mean) / std.
        return (self._sum(k) * mean, std)


class Concatenation(Encoder):
    """Each query down-sampled and tiled into one image of the original size (k = 2, 4, 8).

    k = 2: each image averaged over horizontal pixel pairs to H x W/2; X1 left, X2 right.
    k = 4: each image averaged over 2x2 blocks to H/2 x W/2; X1 X2 on top, X3 X4 below.
    k = 8: each image averaged over 4x2 blocks (4 rows, 2 columns) to H/4 x W/2 (7 x 14 for
    MNIST), tiled in four rows of two: X1 X2 / X3 X4 / X5 X6 / X7 X8. (parm_core's
    ParityEncoder builds the same three.)
    (Averaging pairs is what bilinear resizing by exactly 1/2 does, and is easy to match.)
    """

    name = "concatenation"
    short = "concat"

    def check_k(self, k: int) -> None:
        if k not in (2, 4, 8):
            raise ValueError(f"concatenation supports k = 2, 4 or 8, got {k}")

    def encode(self, group: torch.Tensor) -> torch.Tensor:
        n, k, c, h, w = group.shape
        self.check_k(k)
        flat = group.reshape(n * k, c, h, w)
        if k == 2:
            small = nnf.avg_pool2d(flat, kernel_size=(1, 2)).reshape(n, k, c, h, w // 2)
            return torch.cat([small[:, 0], small[:, 1]], dim=3)
        if k == 4:
            small = nnf.avg_pool2d(flat, kernel_size=2).reshape(n, k, c, h // 2, w // 2)
            top = torch.cat([small[:, 0], small[:, 1]], dim=3)
            bottom = torch.cat([small[:, 2], small[:, 3]], dim=3)
            return torch.cat([top, bottom], dim=2)
        small = nnf.avg_pool2d(flat, kernel_size=(4, 2)).reshape(n, k, c, h // 4, w // 2)
        rows = [torch.cat([small[:, 2 * r], small[:, 2 * r + 1]], dim=3) for r in range(4)]
        return torch.cat(rows, dim=2)

    def input_range(self, k: int) -> tuple[float, float]:
        return (0.0, 1.0)

    def normalization(self, mean: float, std: float, k: int) -> tuple[float, float]:
        return (mean, std)


ENCODERS: dict[str, Encoder] = {e.name: e for e in (Addition(), Concatenation())}


def get(name: str) -> Encoder:
    try:
        return ENCODERS[name]
    except KeyError:
        raise ValueError(f"unknown encoder '{name}' (known: {', '.join(ENCODERS)})") from None


def for_parity(name: str, k: int, parity_index: int = 0, parities: int = 1) -> Encoder:
    """The encoder of parity `parity_index` of a code with `parities` parities over groups of
    k: the plain encoder for parity 0 (all weights 1), a weighted addition for the others."""
    if not 0 <= parity_index < parities:
        raise ValueError(f"parity index {parity_index} needs 0 <= index < parities ({parities})")
    encoder = get(name)
    if parity_index == 0:
        return encoder
    if encoder.name != "addition":
        raise ValueError(f"parity {parity_index} > 0 needs the addition encoder (weighted), not {name}")
    return Addition(code_weights(k, parities)[parity_index])


def for_manifest(manifest: dict) -> Encoder:
    """The encoder a parity manifest's model was trained with (its `weights`, if any)."""
    encoder = get(manifest["encoder"])
    weights = manifest.get("weights")
    if weights is None or all(w == 1 for w in weights):
        return encoder
    return Addition(weights)


def decode(parity_out: torch.Tensor, member_outs: torch.Tensor, weights: Sequence[float] | None = None,
           weights_tensor: torch.Tensor | None = None) -> torch.Tensor:
    """Reconstructs every member in turn.

    parity_out: [n, C] = Fp(P); member_outs: [n, k, C] = F(Xi).
    Returns [n, k, C] where [:, j] = Fp(P) - sum_{i != j} F(Xi); with a parity's weights w,
    [:, j] = (Fp(P) - sum_{i != j} w_i F(Xi)) / w_j.
    """
    if weights is None:
        others = member_outs.sum(dim=1, keepdim=True) - member_outs
        return parity_out[:, None, :] - others
    if weights_tensor is None:
        weights_tensor = torch.tensor(weights, dtype=member_outs.dtype, device=member_outs.device)
    w = weights_tensor[None, :, None]
    weighted = member_outs * w
    others = weighted.sum(dim=1, keepdim=True) - weighted
    return (parity_out[:, None, :] - others) / w
