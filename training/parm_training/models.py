"""Architectures. Each takes raw inputs and normalizes inside the graph.

A model's input is what the serving side sends: raw pixels in [0, 1] for F, the encoded
parity query for Fp (for addition, the sum of k raw images, in [0, k]). The first op of
the graph is (x - mean) / std, with the constants chosen per role (see encoders).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std with constant scalars, exported as two ONNX ops."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.mean = float(mean)
        self.std = float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


class MLP(nn.Module):
    """The paper's MNIST / Fashion-MNIST MLP: 784-200-100-10 with ReLU, logits out."""

    def __init__(
        self,
        mean: float,
        std: float,
        input_shape: tuple[int, ...] = (1, 28, 28),
        hidden: tuple[int, ...] = (200, 100),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        width = 1
        for d in input_shape:
            width *= d
        layers: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


class LeNet(nn.Module):
    """A LeNet-5-like CNN for 1x28x28 inputs: conv5x5(c1)-pool-conv5x5(c2)-pool-fc(fc)-fc(classes).

    `width` scales every layer (1 = 20/50/500, Caffe's LeNet; a parity model can be wider).
    About 430k parameters (1.7 MB of ONNX) at width 1; ~9 s per MNIST epoch on 2 cores.
    """

    def __init__(self, mean: float, std: float, input_shape: tuple[int, ...] = (1, 28, 28),
                 num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        c, h, w = input_shape
        c1, c2, fc = int(20 * width), int(50 * width), int(500 * width)
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * fh * fw, fc), nn.ReLU(), nn.Linear(fc, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))


class ConvNet(nn.Module):
    """A VGG-style CNN with batch norm: [conv3x3-BN-ReLU]x2 at 32 and 64 channels, each
    pair followed by a 2x2 max pool, then conv3x3(128)-BN-ReLU, fc(256), fc(classes).

    About 10x LeNet's multiply-adds (~23M per image) for 1.75M parameters. It is meant for
    parity models: separating k superposed images needs more than LeNet's two 5x5 layers.
    Batch norm is folded into the convolutions when exported.
    """

    def __init__(self, mean: float, std: float, input_shape: tuple[int, ...] = (1, 28, 28),
                 num_classes: int = 10) -> None:
        super().__init__()
        c, h, w = input_shape

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            *block(c, 32), *block(32, 32), nn.MaxPool2d(2),
            *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
            *block(64, 128),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * (h // 4) * (w // 4), 256), nn.ReLU(), nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))


# name -> builder(mean, std, input_shape, num_classes).
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda mean, std, input_shape, num_classes: MLP(mean, std, input_shape, num_classes=num_classes),
    "lenet": lambda mean, std, input_shape, num_classes: LeNet(mean, std, input_shape, num_classes),
    # A parity model with twice the channels and units of LeNet (F's capacity may not be
    # enough to learn the sum of k predictions).
    "lenet2x": lambda mean, std, input_shape, num_classes: LeNet(mean, std, input_shape, num_classes, width=2.0),
    "convnet": lambda mean, std, input_shape, num_classes: ConvNet(mean, std, input_shape, num_classes),
}


def build(arch: str, mean: float, std: float, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    try:
        builder = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture '{arch}' (known: {', '.join(ARCHITECTURES)})") from None
    return builder(mean, std, tuple(input_shape), num_classes)


def load_weights(model: nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Loads weights by parameter name (e.g. an exported model's ONNX initializers) into a
    model of the same architecture; fails if the model has a parameter they do not name."""
    state = model.state_dict()
    missing = [k for k in state if k not in weights]
    if missing:
        raise ValueError(f"the given weights have no {missing} (is their architecture this model's?)")
    model.load_state_dict({k: torch.tensor(np.array(weights[k])).reshape(state[k].shape) for k in state})
