"""The `parity` command: trains a parity model Fp for an exported F (or takes one trained
elsewhere from its checkpoint), exports it to ONNX, evaluates it in degraded mode on the
test set and writes its manifest. A base given as a bare ONNX file is adopted first."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from parm_training import checkpoint, data, encoders, export, models, train
from parm_training.cli_common import REFERENCE_COUNT, budget_seconds, command_line, required_epochs, split, training_info

TEST_GROUP_SEED = 1234


def cmd_parity(args: argparse.Namespace, argv: list[str]) -> int:
    """Trains Fp as the arguments say (or reads it from --from-checkpoint), then exports and
    evaluates it; with --checkpoint-only, writes the checkpoint instead of exporting."""
    base_path, base = _base_manifest(args)
    try:
        encoder = encoders.for_parity(args.encoder, args.k, args.parity_index, args.parities)
        encoder.check_k(args.k)
    except ValueError as e:
        raise SystemExit(f"parity: {e}") from None
    arch = args.arch or base["training"].get("arch", "mlp")
    name = args.name or default_name(base["name"], encoder, args.k, args.parity_index, args.parities)
    ds = data.load(base["dataset"])
    # F is frozen: its logits are computed from the exported ONNX model, which is exactly
    # what the serving side subtracts when it decodes.
    f = export.OnnxModel(base_path.parent / base["file"], threads=torch.get_num_threads())

    if args.from_checkpoint and args.checkpoint_only:
        raise SystemExit("give either --checkpoint-only (train) or --from-checkpoint (finish), not both")
    if args.from_checkpoint:
        model, info = _load_checkpoint(Path(args.from_checkpoint), base, encoder, args.k, arch, ds, args)
        info["finished"] = command_line(argv)
    else:
        model, info = _train_parity(args, argv, base_path, base, encoder, arch, ds, f)
        if args.checkpoint_only:
            path = Path(args.checkpoint_only)
            checkpoint.save(path, model, info, _identity(base, encoder, args.k, arch, args))
            train.log(f"Fp {name}: trained; weights and training record in {path} (finish with parity --from-checkpoint {path})")
            return 0
    _export_and_evaluate(args, name, model, info, base, encoder, ds, f)
    return 0


def default_name(base: str, encoder: encoders.Encoder, k: int, parity_index: int = 0, parities: int = 1) -> str:
    """{base}-parity-{encoder}-k{k}; parity j > 0 of a code with r parities adds -r{r}-p{j}
    (parity 0 of any code is the plain model: the same name)."""
    name = f"{base}-parity-{encoder.short}-k{k}"
    return f"{name}-r{parities}-p{parity_index}" if parity_index > 0 else name


def _code_fields(args: argparse.Namespace, encoder: encoders.Encoder, k: int) -> dict:
    """A parity of a code with r > 1 (or parity j > 0): its index, r and its row of weights.
    Empty for the plain r = 1 model, whose manifest and checkpoint stay as they were."""
    if args.parity_index == 0 and args.parities == 1:
        return {}
    weights = list(encoder.weights) if encoder.weights is not None else [1.0] * k
    return {"parity_index": args.parity_index, "parities": args.parities, "weights": weights}


def _identity(base: dict, encoder: encoders.Encoder, k: int, arch: str, args: argparse.Namespace) -> dict:
    """The checkpoint identity: the plain one, plus the code fields for a weighted parity."""
    what = checkpoint.identity(base, encoder.name, k, arch)
    if args.parity_index > 0:
        what.update(_code_fields(args, encoder, k))
    return what


def _base_manifest(args: argparse.Namespace) -> tuple[Path, dict]:
    """F's manifest path and contents from --base: a manifest, the ONNX file beside one, or
    a bare ONNX classifier (adopted into --out first)."""
    base_path = Path(args.base)
    if base_path.suffix == ".onnx" and not base_path.with_suffix(".json").is_file():
        # A classifier without a manifest: only its ONNX file and a data set are needed.
        if not args.dataset or not args.arch:
            raise SystemExit(f"{base_path} has no manifest beside it: give --dataset and Fp's --arch to train a parity model for it")
        base_path = adopt_onnx(base_path, args.dataset, Path(args.out), args.base_name)
    if base_path.suffix != ".json":
        base_path = base_path.with_suffix(".json")
    base = export.read_manifest(base_path)
    if base.get("role") != "base":
        raise SystemExit(f"{base_path}: role is '{base.get('role')}', expected a base model")
    return base_path, base


def _export_and_evaluate(args: argparse.Namespace, name: str, model: torch.nn.Module, info: dict, base: dict,
                         encoder: encoders.Encoder, ds: data.Dataset, f: export.OnnxModel) -> None:
    """Exports Fp to --out (checked against PyTorch), measures its degraded-mode accuracy on
    seeded groups of test images, and writes and checks its manifest."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / f"{name}.onnx"
    test_x = ds.test.floats()
    test_logits = f(test_x)
    groups = train.make_groups(len(test_x), args.k, TEST_GROUP_SEED)
    parity_x = train.encode_groups(encoder, test_x, groups)
    export.export_onnx(model, onnx_path, ds.input_shape)
    worst = export.verify_onnx(onnx_path, model, parity_x[:64])
    fp = export.OnnxModel(onnx_path)
    d = train.degraded(encoder, args.k, fp, test_x, test_logits, ds.test.labels, groups)
    info["evaluation"] = {
        "split": "test",
        "groups": d.groups,
        "reconstructions": d.reconstructions,
        "group_seed": TEST_GROUP_SEED,
        "how": "seeded random groups of k test examples; each member erased in turn and decoded "
        "as Fp(P) - sum of the other members' F outputs (F = the base ONNX model)",
    }
    accuracy = {
        "reconstruction_top1": round(d.reconstruction_top1, 6),
        "agreement_with_base": round(d.agreement_with_base, 6),
        "base_top1": round(d.base_top1, 6),
        "partial_agreement_with_base": round(train.degraded_partial(encoder, args.k, fp, test_x, test_logits, groups), 6),
    }
    # groups: the test-set indices of the members of each reference input, so another
    # implementation of the encoder can check that it builds the same parity inputs.
    reference = {**export.reference_io(fp, parity_x[:REFERENCE_COUNT]), "groups": groups[:REFERENCE_COUNT].tolist()}
    manifest = _parity_manifest(name, onnx_path.name, base, encoder, args.k, ds, accuracy, reference, info,
                                _code_fields(args, encoder, args.k))
    export.write_manifest(out / f"{name}.json", manifest)
    export.check_manifest(out / f"{name}.json")
    train.log(
        f"Fp {name}: degraded top-1 {d.reconstruction_top1:.4f} (F {d.base_top1:.4f}), agreement with F "
        f"{d.agreement_with_base:.4f} over {d.reconstructions} reconstructions; best epoch "
        f"{info['best_epoch']}/{info['epochs']}, {info['seconds']:.0f}s; ONNX matches PyTorch to {worst:.2g}"
    )


def _parity_manifest(name: str, file: str, base: dict, encoder: encoders.Encoder, k: int, ds: data.Dataset,
                     accuracy: dict, reference: dict, training: dict, code: dict | None = None) -> dict:
    """The parity model's manifest (models/README.md describes its fields); `code`: the
    parity_index, parities and weights of a parity of a code with r > 1."""
    p_mean, p_std = encoder.normalization(ds.mean, ds.std, k)
    return {
        "name": name,
        "file": file,
        "dataset": ds.name,
        "role": "parity",
        "base": base["name"],
        "k": k,
        "encoder": encoder.name,
        **(code or {}),
        "input_shape": list(ds.input_shape),
        "input_range": list(encoder.input_range(k)),
        "normalization": {"mean": round(p_mean, 6), "std": p_std, "in_graph": True},
        "output_size": ds.num_classes,
        "accuracy": accuracy,
        "reference": reference,
        "training": training,
    }


def _train_parity(args: argparse.Namespace, argv: list[str], base_path: Path, base: dict, encoder: encoders.Encoder,
                  arch: str, ds: data.Dataset, f: export.OnnxModel) -> tuple[torch.nn.Module, dict]:
    """Trains Fp as the arguments say; returns it (on the CPU) and its training record."""
    fit, val = split(ds)
    if args.limit:
        fit = fit.take(slice(0, args.limit))
    fit_x, val_x = fit.floats(), val.floats()
    t0 = time.monotonic()
    fit_logits, val_logits = f(fit_x), f(val_x)
    train.log(f"F logits for {len(fit_x) + len(val_x)} examples in {time.monotonic() - t0:.1f}s")

    batch = args.batch_size or train.default_parity_batch(args.k)
    hyper = train.Hyper(lr=args.lr, weight_decay=args.weight_decay, batch_size=batch, seed=args.seed, schedule=args.schedule)
    base_onnx = base_path.parent / base["file"]
    init, init_description, previous = _starting_point(args, base_onnx)
    trained = train.train_parity(
        arch, encoder, args.k, fit_x, fit_logits, val_x, val_logits,
        ds.mean, ds.std, required_epochs(args), hyper, budget_seconds(args.max_minutes), ce_weight=args.ce_weight,
        init=init,
        augment_shift=args.augment_shift,
        partial_fraction=args.partial_groups,
        validation_groupings=args.validation_groupings,
        base=_base_module(base, base_onnx, ds) if args.augment_shift else None,
        device=args.device,
    )
    info = training_info(args, trained, hyper, argv, arch)
    info["train_examples"] = len(fit)
    target = "sum F(Xi)" if encoder.weights is None else "sum w_i F(Xi)"
    info["loss"] = (
        f"mse(Fp(P), {target})" if args.ce_weight == 0
        else f"mse(Fp(P), {target}) + {args.ce_weight:g} * cross_entropy(decoded, F top-1)"
    )
    info["init"] = init_description
    if args.partial_groups:
        info["partial_groups"] = args.partial_groups
    if args.validation_groupings > 1:
        info["validation"]["groupings"] = args.validation_groupings
    if args.augment_shift:
        info["augmentation"] = f"each member moved by up to {args.augment_shift} px; F's logits on the moved images"
    if previous is not None:
        # A continued run: keep the earlier run's record, so the manifest tells the whole story.
        info["continued_from"] = previous
    return trained.model, info


def _load_checkpoint(path: Path, base: dict, encoder: encoders.Encoder, k: int, arch: str,
                     ds: data.Dataset, args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    """Fp from a `--checkpoint-only` file, checked to be the parity model these arguments describe."""
    weights, training = checkpoint.read(path, expected=_identity(base, encoder, k, arch, args))
    p_mean, p_std = encoder.normalization(ds.mean, ds.std, k)
    model = models.build(arch, p_mean, p_std, ds.input_shape, ds.num_classes)
    models.load_weights(model, weights)
    return model.eval(), training


def _starting_point(args: argparse.Namespace, base_onnx: Path) -> tuple[dict | None, str, dict | None]:
    """Fp's starting weights (None: a random init), how the manifest names them, and the
    training record of the model they come from when training continues one."""
    if args.init_from_base and args.init_from:
        raise SystemExit("give either --init-from-base or --init-from, not both")
    if args.init_from_base:
        return export.onnx_weights(base_onnx), "F's weights", None
    if not args.init_from:
        return None, "random", None
    path = Path(args.init_from)
    description = f"weights of {path.name}"
    if path.suffix == ".npz":
        weights, previous = checkpoint.read(path)
        return weights, description, previous
    if not path.is_file():
        raise SystemExit(f"--init-from {path}: no such file (give an ONNX file or a --checkpoint-only .npz of Fp's architecture, e.g. an earlier parity model)")
    manifest = path.with_suffix(".json")
    previous = export.read_manifest(manifest).get("training") if manifest.is_file() else None
    return export.onnx_weights(path), description, previous


def _base_module(base: dict, onnx_path: Path, ds: data.Dataset) -> torch.nn.Module:
    """F as a PyTorch module with the weights of its ONNX file (for targets computed live)."""
    arch = base.get("training", {}).get("arch")
    if not arch:
        raise SystemExit(f"--augment-shift needs F in PyTorch, but {base['name']}'s manifest names no architecture (a bring-your-own ONNX base)")
    norm = base["normalization"]
    f = models.build(arch, norm["mean"], norm["std"], ds.input_shape, ds.num_classes)
    models.load_weights(f, export.onnx_weights(onnx_path))
    # The PyTorch copy must be the served model: compare them on a few test images.
    sample = ds.test.floats()[:64]
    worst = float(np.abs(train.predict_torch(f, sample) - export.OnnxModel(onnx_path)(sample)).max())
    if worst > export.TOLERANCE:
        raise SystemExit(f"F rebuilt in PyTorch differs from {onnx_path.name} by {worst:.3g}: cannot compute targets live")
    return f


def adopt_onnx(onnx_path: Path, dataset: str, out: Path, name: str | None) -> Path:
    """Bring your own model: writes a base manifest (and a copy of the ONNX file) into `out`
    for a classifier given only as an ONNX file, by running it with onnxruntime on the data
    set's test images. Returns the manifest's path."""
    ds = data.load(dataset)
    name = name or onnx_path.stem
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}.onnx"
    if target.resolve() != onnx_path.resolve():
        shutil.copyfile(onnx_path, target)
    f = export.OnnxModel(target, threads=torch.get_num_threads())
    test_x = ds.test.floats()
    logits = f(test_x)
    if logits.ndim != 2:
        raise SystemExit(f"{onnx_path}: expected logits [batch, classes], got shape {logits.shape}")
    manifest = {
        "name": name,
        "file": target.name,
        "dataset": ds.name,
        "role": "base",
        "input_shape": list(ds.input_shape),
        "input_range": [0.0, 1.0],
        "normalization": {"in_graph": True, "note": "brought as ONNX; assumed to take raw pixels in [0, 1]"},
        "output_size": int(logits.shape[1]),
        "accuracy": {"test_top1": round(float((logits.argmax(1) == ds.test.labels).mean()), 6)},
        "reference": export.reference_io(f, test_x[:REFERENCE_COUNT]),
        "training": {"brought": str(onnx_path)},
    }
    path = out / f"{name}.json"
    export.write_manifest(path, manifest)
    export.check_manifest(path)
    train.log(f"F {name}: adopted {onnx_path}: test top-1 {manifest['accuracy']['test_top1']:.4f}; wrote {path}")
    return path
