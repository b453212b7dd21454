"""Training F, training Fp against a frozen F, and measuring degraded-mode accuracy.

The parity recipe follows the reference code (Thesys-lab/parity-models, train/):
targets are F's logits on un-augmented inputs, computed once; Fp has F's architecture and
a random init; loss MSE(Fp(P), sum_i F(Xi)); Adam lr 1e-3, weight decay 1e-5; 64 groups
per minibatch for k = 2 (32 for k >= 3); every single-erasure pattern is decoded on the
validation groups and the epoch with the best reconstruction top-1 (agreement with F) wins.

One module a little over 400 lines: F's training, Fp's training and the agreement they
are judged by share the groupings, targets and validation code, kept side by side.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as nnf

from parm_training import encoders as enc
from parm_training import models

Predict = Callable[[np.ndarray], np.ndarray]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Hyper:
    """Optimizer settings; the defaults are the reference's."""

    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 64  # examples for F, coding groups for Fp
    seed: int = 0
    # "constant" (the reference); "cosine": lr decays to 0 over `epochs` (per step), which
    # gets more out of a short run; "cosine-time": decays to 0 over the time budget
    # (--max-minutes) instead, for a machine whose speed is not known in advance.
    schedule: str = "constant"


@dataclass
class Trained:
    """A model at its best epoch, and how it got there."""

    model: nn.Module
    best_epoch: int  # 1-based
    best_validation: float
    epochs_run: int
    seconds: float
    history: list[dict] = field(default_factory=list)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def predict_torch(model: nn.Module, x: np.ndarray | torch.Tensor, batch: int = 4096) -> np.ndarray:
    """The model's outputs as a numpy array, on whatever device the model is."""
    model.eval()
    device = model_device(model)
    x = torch.as_tensor(x)
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch].to(device)).cpu() for i in range(0, len(x), batch)]).numpy()


def _fit(
    model: nn.Module,
    hyper: Hyper,
    epochs: int,
    max_seconds: float | None,
    n_items: int,
    step: Callable[[torch.Tensor], torch.Tensor],
    validate: Callable[[nn.Module], dict],
    metric: str,
    what: str,
    begin_epoch: Callable[[], None] | None = None,
) -> Trained:
    """The loop shared by F and Fp: shuffle, minibatch, Adam, keep the best validated epoch.

    The model may be on a GPU; `step` then gets the minibatch's indices there. Nothing in
    an epoch waits for the GPU (no .item() per step) until validation, so a small model's
    steps are not bounded by a round trip each. The returned model is on the CPU."""
    device = model_device(model)
    # One fused kernel per step for all parameters on a GPU (a LeNet step is launch-bound).
    fused = True if device.type == "cuda" else None
    opt = torch.optim.Adam(model.parameters(), lr=hyper.lr, weight_decay=hyper.weight_decay, fused=fused)
    steps_per_epoch = -(-n_items // hyper.batch_size)
    if hyper.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    elif hyper.schedule == "cosine-time":
        if max_seconds is None:
            raise ValueError("schedule cosine-time needs a time budget (--max-minutes)")
        sched = None
    elif hyper.schedule == "constant":
        sched = None
    else:
        raise ValueError(f"unknown schedule '{hyper.schedule}' (known: constant, cosine)")
    gen = torch.Generator().manual_seed(hyper.seed)
    best, best_epoch, best_state = -1.0, 0, None
    history: list[dict] = []
    start = time.monotonic()
    epoch = 0
    for epoch in range(1, epochs + 1):
        t0 = time.monotonic()
        if begin_epoch is not None:
            begin_epoch()
        model.train()
        order = torch.randperm(n_items, generator=gen).to(device)
        total, count = torch.zeros((), device=device), 0
        for i in range(0, n_items, hyper.batch_size):
            loss = step(order[i : i + hyper.batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            elif hyper.schedule == "cosine-time":
                done = min(1.0, (time.monotonic() - start) / max_seconds)
                for g in opt.param_groups:
                    g["lr"] = hyper.lr * 0.5 * (1.0 + math.cos(math.pi * done))
            total += loss.detach()
            count += 1
        row = {"epoch": epoch, "loss": total.item() / max(count, 1), **validate(model)}
        row["seconds"] = time.monotonic() - t0
        history.append(row)
        marker = ""
        if row[metric] > best:
            best, best_epoch, best_state = row[metric], epoch, copy.deepcopy(model.state_dict())
            marker = " *"
        log(f"{what} epoch {epoch}/{epochs}: loss {row['loss']:.5f} {metric} {row[metric]:.4f} ({row['seconds']:.1f}s){marker}")
        elapsed = time.monotonic() - start
        # cosine-time runs until the budget is spent (the lr is ~0 by then).
        slack = 0.0 if hyper.schedule == "cosine-time" else row["seconds"]
        if max_seconds is not None and elapsed + slack > max_seconds and epoch < epochs:
            log(f"{what}: stopping after epoch {epoch}: time budget of {max_seconds:.0f}s reached")
            break
    assert best_state is not None, "no epoch ran"
    model.load_state_dict(best_state)
    model.cpu().eval()
    return Trained(model, best_epoch, best, epoch, time.monotonic() - start, history)


def train_base(
    arch: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    mean: float,
    std: float,
    num_classes: int,
    epochs: int,
    hyper: Hyper = Hyper(),
    max_seconds: float | None = None,
    device: str | torch.device = "cpu",
) -> Trained:
    """Trains the deployed model F with cross-entropy; best epoch by validation top-1."""
    torch.manual_seed(hyper.seed)
    model = models.build(arch, mean, std, train_x.shape[1:], num_classes).to(device)
    x, y = torch.as_tensor(train_x).to(device), torch.as_tensor(train_y).to(device)
    loss_fn = nn.CrossEntropyLoss()

    def step(idx: torch.Tensor) -> torch.Tensor:
        return loss_fn(model(x[idx]), y[idx])

    def validate(m: nn.Module) -> dict:
        return {"val_top1": float((predict_torch(m, val_x).argmax(1) == val_y).mean())}

    return _fit(model, hyper, epochs, max_seconds, len(x), step, validate, "val_top1", "F")


def make_groups(n: int, k: int, seed: int) -> np.ndarray:
    """A seeded random partition of range(n) into n // k groups of k (the rest left out)."""
    order = np.random.default_rng(seed).permutation(n)
    return order[: (n // k) * k].reshape(-1, k)


def encode_groups(encoder: enc.Encoder, x: np.ndarray, groups: np.ndarray, present: int | None = None) -> np.ndarray:
    """Parity queries [len(groups), C, H, W] for the given groups of indices into x. With
    `present`, only each group's first `present` members are in and the other slots are
    zero, as the encoder sends a group that its linger closed early."""
    images = x[groups]
    if present is not None:
        images = images.copy()
        images[:, present:] = 0.0
    with torch.no_grad():
        return encoder.encode(torch.as_tensor(images)).numpy()


def decode_groups(encoder: enc.Encoder, parity_predict: Predict, x: np.ndarray, base_logits: np.ndarray,
                  groups: np.ndarray, present: int | None = None) -> np.ndarray:
    """Top-1 [n, m] of every (present) member of every group, each erased in turn and
    decoded as Fp(P) - sum of the other members' F outputs."""
    members = groups if present is None else groups[:, :present]
    parity_out = torch.as_tensor(parity_predict(encode_groups(encoder, x, groups, present)))
    return encoder.decode(parity_out, torch.as_tensor(base_logits[members])).argmax(-1).numpy()


@dataclass
class Degraded:
    """Degraded-mode quality over groups, each member erased in turn."""

    reconstruction_top1: float  # decoded top-1 against the true labels
    agreement_with_base: float  # decoded top-1 against F's top-1
    base_top1: float  # F's top-1 against the true labels, same examples
    groups: int
    reconstructions: int


def degraded(
    encoder: enc.Encoder,
    k: int,
    parity_predict: Predict,
    x: np.ndarray,
    base_logits: np.ndarray,
    labels: np.ndarray | None,
    groups: np.ndarray,
) -> Degraded:
    decoded = decode_groups(encoder, parity_predict, x, base_logits, groups)  # [n, k]
    base_top = base_logits.argmax(-1)[groups]
    agreement = float((decoded == base_top).mean())
    if labels is None:
        return Degraded(float("nan"), agreement, float("nan"), len(groups), decoded.size)
    truth = labels[groups]
    return Degraded(float((decoded == truth).mean()), agreement, float((base_top == truth).mean()), len(groups), decoded.size)


def validation_agreement(encoder: enc.Encoder, k: int, parity_predict: Predict, x: np.ndarray,
                         base_logits: np.ndarray, seeds: range) -> list[float]:
    """Agreement with F's top-1 of full-group reconstructions, once per grouping of x (one
    seed each). One grouping's luck moves it by up to ~0.3 points near 98.5%, so epochs
    (training) and candidate models (`compare`) are judged on the mean of several."""
    return [degraded(encoder, k, parity_predict, x, base_logits, None, make_groups(len(x), k, s)).agreement_with_base
            for s in seeds]


def partial_mask(n: int, k: int, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """[n, k] booleans: which members of each group are present. About `fraction` of the
    groups keep only their first m members, m uniform in 1..k-1; the rest are full."""
    device = gen.device
    partial = torch.rand(n, generator=gen, device=device) < fraction
    m = torch.randint(1, max(k, 2), (n,), generator=gen, device=device)
    sizes = torch.where(partial, m, torch.full_like(m, k))
    return torch.arange(k, device=device)[None, :] < sizes[:, None]


def degraded_partial(encoder: enc.Encoder, k: int, parity_predict: Predict, x: np.ndarray,
                     base_logits: np.ndarray, groups: np.ndarray) -> float:
    """Agreement with F's top-1 of reconstructions in partial groups: for each m in 1..k-1,
    the first m members of every group with zeros in the other slots (as the encoder pads a
    group closed by its linger), each present member erased in turn."""
    agree, total = 0, 0
    for m in range(1, k):
        decoded = decode_groups(encoder, parity_predict, x, base_logits, groups, present=m)
        agree += int((decoded == base_logits.argmax(-1)[groups[:, :m]]).sum())
        total += decoded.size
    return agree / total if total else float("nan")


def shift_images(images: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """[n, C, H, W] images, each moved by its own random (dy, dx) in [-max_shift, max_shift]
    whole pixels; what moves in from outside is 0 (background)."""
    n, _, h, w = images.shape
    m = max_shift
    device = images.device  # gen must be a generator of the same device
    padded = nnf.pad(images, (m, m, m, m))
    dy = torch.randint(0, 2 * m + 1, (n,), generator=gen, device=device)
    dx = torch.randint(0, 2 * m + 1, (n,), generator=gen, device=device)
    rows = (dy[:, None] + torch.arange(h, device=device)[None, :])[:, None, :, None]  # [n, 1, H, 1]
    cols = (dx[:, None] + torch.arange(w, device=device)[None, :])[:, None, None, :]  # [n, 1, 1, W]
    batch = torch.arange(n, device=device)[:, None, None, None]
    chans = torch.arange(images.shape[1], device=device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def default_parity_batch(k: int) -> int:
    """The reference's minibatch of coding groups: 64 for k = 2, 32 for k >= 3."""
    return 64 if k <= 2 else 32


class _EpochGroupings:
    """The training examples partitioned into random groups of k, redrawn for each epoch
    so that Fp sees many different sums (`redraw` is _fit's begin_epoch)."""

    def __init__(self, n: int, k: int, seed: int, device: torch.device) -> None:
        self.n, self.k, self.device = n, k, device
        self.count = n // k
        self.gen = torch.Generator().manual_seed(seed)  # drawn on the CPU, also for a GPU run
        self.current = torch.empty(0, k, dtype=torch.long)

    def redraw(self) -> None:
        """A fresh random grouping of the training examples (the n % k left over sit out)."""
        order = torch.randperm(self.n, generator=self.gen)
        self.current = order[: self.count * self.k].reshape(self.count, self.k).to(self.device)


def _new_parity_model(arch: str, encoder: enc.Encoder, k: int, input_shape: tuple[int, ...], num_classes: int,
                      mean: float, std: float, seed: int, init: dict[str, np.ndarray] | None) -> nn.Module:
    """Fp with the in-graph normalization of the encoder's parity queries: a seeded random
    init, or the weights `init` gives."""
    torch.manual_seed(seed)
    p_mean, p_std = encoder.normalization(mean, std, k)
    model = models.build(arch, p_mean, p_std, input_shape, num_classes)
    if init is not None:
        # Start from given weights (F's, or an earlier Fp's to continue training) instead of
        # a random init (the reference starts at random).
        models.load_weights(model, init)
    return model


def _frozen_teacher(base: nn.Module | None, device: torch.device) -> nn.Module:
    """F on `device`, in eval mode and without gradients, to compute targets on moved images."""
    if base is None:
        raise ValueError("augment_shift needs F as a PyTorch module (base) to compute targets on the moved images")
    base.to(device).eval()
    for p in base.parameters():
        p.requires_grad_(False)
    return base


def _shifted_targets(images: torch.Tensor, base: nn.Module, max_shift: int,
                     gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The member images [n, k, C, H, W] each moved at random, F's logits on the moved
    images [n, k, classes] and F's top-1 of them [n, k]."""
    n, k = images.shape[:2]
    moved = shift_images(images.reshape(n * k, *images.shape[2:]), max_shift, gen)
    with torch.no_grad():
        flat = base(moved)
    members = flat.reshape(n, k, -1)
    return moved.reshape(images.shape), members, members.argmax(dim=-1)


def _parity_loss(encoder: enc.Encoder, out: torch.Tensor, members: torch.Tensor, top1: torch.Tensor,
                 present: torch.Tensor, ce_weight: float) -> torch.Tensor:
    """MSE of Fp(P) against the (for parity j > 0 of a code: weighted) sum of the members' F
    outputs, plus ce_weight times the mean over present members of the cross-entropy of
    their decoded outputs against F's top-1."""
    loss = nnf.mse_loss(out, encoder.target(members))
    if ce_weight > 0:
        decoded = encoder.decode(out, members)  # [n, k, C]
        # The mean over present members, as a masked mean: indexing by the mask would
        # make every step wait for the GPU to count it.
        ce = nnf.cross_entropy(decoded.flatten(0, 1), top1.flatten(), reduction="none")
        weights = present.flatten().to(ce.dtype)
        loss = loss + ce_weight * (ce * weights).sum() / weights.sum()
    return loss


def _parity_step(model: nn.Module, encoder: enc.Encoder, k: int, x: torch.Tensor, logits: torch.Tensor,
                 groupings: _EpochGroupings, seed: int, ce_weight: float, augment_shift: int,
                 base: nn.Module | None, partial_fraction: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The loss of one minibatch (indices into the epoch's groups), as train_parity describes;
    x and logits are the training images and F's cached logits, on the training device."""
    device = x.device
    f_top1 = logits.argmax(dim=1)
    shift_gen = torch.Generator(device=device).manual_seed(seed + 3)
    partial_gen = torch.Generator(device=device).manual_seed(seed + 4)

    def step(idx: torch.Tensor) -> torch.Tensor:
        groups = groupings.current[idx]
        if augment_shift > 0:
            images, members, top1 = _shifted_targets(x[groups], base, augment_shift, shift_gen)
        else:
            images, members, top1 = x[groups], logits[groups], f_top1[groups]  # [n, k, ...]
        present = torch.ones(top1.shape, dtype=torch.bool, device=device)  # [n, k]
        if partial_fraction > 0:
            present = partial_mask(len(groups), k, partial_fraction, partial_gen)
            images = images * present[:, :, None, None, None]
            members = members * present[:, :, None]
        return _parity_loss(encoder, model(encoder.encode(images)), members, top1, present, ce_weight)

    return step


def _parity_validation(encoder: enc.Encoder, k: int, val_x: np.ndarray, val_logits: np.ndarray,
                       seeds: range) -> Callable[[nn.Module], dict]:
    """Scores an epoch's Fp by its mean agreement with F over the validation groupings of `seeds`."""

    def validate(m: nn.Module) -> dict:
        agreement = validation_agreement(encoder, k, lambda p: predict_torch(m, p), val_x, val_logits, seeds)
        return {"val_reconstruction": float(np.mean(agreement))}

    return validate


def train_parity(
    arch: str,
    encoder: enc.Encoder,
    k: int,
    train_x: np.ndarray,
    train_logits: np.ndarray,
    val_x: np.ndarray,
    val_logits: np.ndarray,
    mean: float,
    std: float,
    epochs: int,
    hyper: Hyper = Hyper(),
    max_seconds: float | None = None,
    ce_weight: float = 0.0,
    init: dict[str, np.ndarray] | None = None,
    augment_shift: int = 0,
    base: nn.Module | None = None,
    partial_fraction: float = 0.0,
    device: str | torch.device = "cpu",
    validation_groupings: int = 1,
) -> Trained:
    """Trains Fp for (encoder, k) against F's cached logits; F itself is never touched.

    ce_weight = 0 is the reference recipe: MSE(Fp(P), sum_i F(Xi)). ce_weight > 0 adds a
    loss on what the decoder actually outputs: every member j of the group is decoded as
    Fp(P) - sum_{i != j} F(Xi), and its cross-entropy against F's own top-1 for Xj is
    added with that weight (no labels needed: F is the teacher, as for the MSE).

    Groups are redrawn every epoch (a fresh permutation of the training examples), so Fp
    sees many different sums; validation groups are fixed so epochs compare fairly.

    augment_shift > 0 moves every member image of a training group by a random whole
    number of pixels, up to that many in each direction, before it is encoded; the targets
    are then F's logits on the moved images, so F (`base`, frozen, in PyTorch) runs on each
    minibatch instead of from the cache. Fp then never sees the same sum twice, against
    the overfitting of long runs (its training loss falls while validation stalls).

    partial_fraction > 0 makes that fraction of the training groups partial, as the encoder
    closes a group early after its linger: only the first m members (m uniform in 1..k-1)
    are present, the other slots are zero images, and the target is the sum of F over the
    present members only, which is what the decoder subtracts from. Without it, Fp has
    never seen a zero slot and its output for a partial group carries a spurious term.

    The reference uses 64 groups per minibatch for k = 2 and 32 for k >= 3: the caller
    sets hyper.batch_size (see default_parity_batch).

    On a GPU (`device`), the training images, F's logits, F itself and the random draws
    all live there; the groups of each epoch are drawn on the CPU, as on a CPU run.
    """
    encoder.check_k(k)
    device = torch.device(device)
    model = _new_parity_model(arch, encoder, k, train_x.shape[1:], train_logits.shape[1], mean, std, hyper.seed, init)
    model.to(device)
    x, t = torch.as_tensor(train_x).to(device), torch.as_tensor(train_logits).to(device)
    groupings = _EpochGroupings(len(x), k, hyper.seed + 1, device)
    if augment_shift > 0:
        base = _frozen_teacher(base, device)
    step = _parity_step(model, encoder, k, x, t, groupings, hyper.seed, ce_weight, augment_shift, base, partial_fraction)
    # The validation images are paired `validation_groupings` ways and the agreement averaged:
    # with one grouping the best epoch is partly the one whose pairing was lucky (measured on
    # MNIST: the chosen epoch scored up to 0.35 points lower on ten fresh groupings).
    val_seeds = range(hyper.seed + 2, hyper.seed + 2 + validation_groupings)
    validate = _parity_validation(encoder, k, val_x, val_logits, val_seeds)
    what = f"Fp[{encoder.name},k={k}]"
    return _fit(model, hyper, epochs, max_seconds, groupings.count, step, validate, "val_reconstruction", what,
                groupings.redraw)
