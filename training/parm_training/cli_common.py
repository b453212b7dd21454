"""What the commands of cli.py and parity_command.py share: the validation split, the time
budget and --epochs of a training run, and the training record a manifest carries."""

from __future__ import annotations

import argparse
import shlex

import torch

from parm_training import data, train

VALIDATION_SIZE = 5000
SPLIT_SEED = 0
REFERENCE_COUNT = 3


def command_line(argv: list[str]) -> str:
    """The command as a manifest records it (and as a shell would run it again)."""
    return "python -m parm_training " + shlex.join(argv)


def budget_seconds(minutes: float | None) -> float | None:
    """--max-minutes in seconds (None: no time budget)."""
    return None if minutes is None else minutes * 60.0


def split(ds: data.Dataset) -> tuple[data.Split, data.Split]:
    """The data set's training examples as (fit, validation): the same fixed split for every command."""
    return data.train_validation_split(ds.train, VALIDATION_SIZE, SPLIT_SEED)


def required_epochs(args: argparse.Namespace) -> int:
    """--epochs, which a command that trains cannot do without."""
    if args.epochs is None:
        raise SystemExit(f"{args.command}: --epochs is required to train (it is the maximum; --max-minutes may stop sooner)")
    return args.epochs


def device_description(device: torch.device) -> str:
    """Where training ran, for the manifest: cpu, or cuda with the GPU's name."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def training_info(args: argparse.Namespace, trained: train.Trained, hyper: train.Hyper, argv: list[str], arch: str) -> dict:
    """The manifest's "training" record of a model trained by these arguments."""
    return {
        "epochs": trained.epochs_run,
        "seconds": round(trained.seconds, 1),
        "command": command_line(argv),
        "best_epoch": trained.best_epoch,
        "epochs_requested": args.epochs,
        "arch": arch,
        "optimizer": {"name": "adam", "lr": hyper.lr, "weight_decay": hyper.weight_decay, "batch_size": hyper.batch_size, "schedule": hyper.schedule},
        "seed": hyper.seed,
        "validation": {"size": VALIDATION_SIZE, "seed": SPLIT_SEED, "best": round(trained.best_validation, 6)},
        "threads": torch.get_num_threads(),
        "device": device_description(args.device),
        "torch": torch.__version__,
    }
