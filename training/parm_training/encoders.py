"""Encoders (k queries -> one parity query) and the subtraction decoder.

Every encoder here is paired with the same decoder: Fp is trained so that
Fp(E(X1..Xk)) ~ F(X1) + ... + F(Xk), and a missing F(Xj) is recovered as
Fp(P) - sum_{i != j} F(Xi). Encoders differ only in how P is built, and so in the range
and normalization of the parity model's input. The Rust encoder must build P exactly as
`encode` does here; models/README.md states it in words.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as nnf


class Encoder(ABC):
    """Builds parity queries from groups of k queries."""

    name: str  # as in the CLI and the manifest ("addition")
    short: str  # as in file names ("add")

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


class Addition(Encoder):
    """P = X1 + ... + Xk, element-wise (any k >= 2)."""

    name = "addition"
    short = "add"

    def check_k(self, k: int) -> None:
        if k < 2:
            raise ValueError(f"addition needs k >= 2, got {k}")

    def encode(self, group: torch.Tensor) -> torch.Tensor:
        return group.sum(dim=1)

    def input_range(self, k: int) -> tuple[float, float]:
        return (0.0, float(k))

    def normalization(self, mean: float, std: float, k: int) -> tuple[float, float]:
        # (sum xi - k*mean) / std == sum of the normalized inputs, as in the reference code.
        return (k * mean, std)


class Concatenation(Encoder):
    """Each query down-sampled and tiled into one image of the original size (k = 2 or 4).

    k = 2: each image averaged over horizontal pixel pairs to H x W/2; X1 left, X2 right.
    k = 4: each image averaged over 2x2 blocks to H/2 x W/2; X1 X2 on top, X3 X4 below.
    (Averaging pairs is what bilinear resizing by exactly 1/2 does, and is easy to match.)
    """

    name = "concatenation"
    short = "concat"

    def check_k(self, k: int) -> None:
        if k not in (2, 4):
            raise ValueError(f"concatenation supports k = 2 or 4, got {k}")

    def encode(self, group: torch.Tensor) -> torch.Tensor:
        n, k, c, h, w = group.shape
        self.check_k(k)
        flat = group.reshape(n * k, c, h, w)
        if k == 2:
            small = nnf.avg_pool2d(flat, kernel_size=(1, 2)).reshape(n, k, c, h, w // 2)
            return torch.cat([small[:, 0], small[:, 1]], dim=3)
        small = nnf.avg_pool2d(flat, kernel_size=2).reshape(n, k, c, h // 2, w // 2)
        top = torch.cat([small[:, 0], small[:, 1]], dim=3)
        bottom = torch.cat([small[:, 2], small[:, 3]], dim=3)
        return torch.cat([top, bottom], dim=2)

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


def decode(parity_out: torch.Tensor, member_outs: torch.Tensor) -> torch.Tensor:
    """Reconstructs every member in turn.

    parity_out: [n, C] = Fp(P); member_outs: [n, k, C] = F(Xi).
    Returns [n, k, C] where [:, j] = Fp(P) - sum_{i != j} F(Xi).
    """
    others = member_outs.sum(dim=1, keepdim=True) - member_outs
    return parity_out[:, None, :] - others
