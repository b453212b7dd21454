"""Command line: python -m parm_training {base,parity,export-data,check} ...

    base         train the deployed model F, export it, write its manifest
    parity       train a parity model Fp against an exported F, export, write its manifest
    export-data  write the first N test images and labels as IDX files for the Rust side
    check        run manifests' models on their reference inputs (what the Rust test does)
    compare      score candidate parity models for one F on many validation groupings

scripts/train-models runs the whole sequence that produced models/ on a CPU;
scripts/train-parity-gpu trains the parity models on a CUDA GPU instead (training there,
export and evaluation here: `parity --checkpoint-only`, then `parity --from-checkpoint`).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from parm_training import checkpoint, data, encoders, export, models, train
from parm_training.idx import write_idx

VALIDATION_SIZE = 5000
SPLIT_SEED = 0
TEST_GROUP_SEED = 1234
REFERENCE_COUNT = 3
# `compare` pairs the validation images with these seeds: not the ones training picks its
# best epoch on (its seed + 2, + 3, ...), so a candidate's lucky grouping is not reused.
COMPARE_FIRST_SEED = 100


def _command(argv: list[str]) -> str:
    return "python -m parm_training " + shlex.join(argv)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _budget(minutes: float | None) -> float | None:
    return None if minutes is None else minutes * 60.0


def _split(ds: data.Dataset) -> tuple[data.Split, data.Split]:
    return data.train_validation_split(ds.train, VALIDATION_SIZE, SPLIT_SEED)


def _device(name: str) -> torch.device:
    """--device, checked: a clear error instead of a CUDA stack trace when there is no GPU."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu")
    return device


def _device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def _training_info(args: argparse.Namespace, trained: train.Trained, hyper: train.Hyper, argv: list[str], arch: str) -> dict:
    return {
        "epochs": trained.epochs_run,
        "seconds": round(trained.seconds, 1),
        "command": _command(argv),
        "best_epoch": trained.best_epoch,
        "epochs_requested": args.epochs,
        "arch": arch,
        "optimizer": {"name": "adam", "lr": hyper.lr, "weight_decay": hyper.weight_decay, "batch_size": hyper.batch_size, "schedule": hyper.schedule},
        "seed": hyper.seed,
        "validation": {"size": VALIDATION_SIZE, "seed": SPLIT_SEED, "best": round(trained.best_validation, 6)},
        "threads": torch.get_num_threads(),
        "device": _device_description(args.device),
        "torch": torch.__version__,
    }


def cmd_base(args: argparse.Namespace, argv: list[str]) -> int:
    ds = data.load(args.dataset)
    fit, val = _split(ds)
    hyper = train.Hyper(lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size or 64, seed=args.seed, schedule=args.schedule)
    if args.limit:
        fit = fit.take(slice(0, args.limit))
    trained = train.train_base(
        args.arch, fit.floats(), fit.labels, val.floats(), val.labels,
        ds.mean, ds.std, ds.num_classes, _epochs(args), hyper, _budget(args.max_minutes), device=args.device,
    )
    name = args.name or f"{ds.name}-{args.arch}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / f"{name}.onnx"
    test_x = ds.test.floats()
    export.export_onnx(trained.model, onnx_path, ds.input_shape)
    worst = export.verify_onnx(onnx_path, trained.model, test_x[:64])
    f = export.OnnxModel(onnx_path)
    test_top1 = float((f(test_x).argmax(1) == ds.test.labels).mean())
    manifest = {
        "name": name,
        "file": onnx_path.name,
        "dataset": ds.name,
        "role": "base",
        "input_shape": list(ds.input_shape),
        "input_range": [0.0, 1.0],
        "normalization": {"mean": ds.mean, "std": ds.std, "in_graph": True},
        "output_size": ds.num_classes,
        "accuracy": {"test_top1": round(test_top1, 6)},
        "reference": export.reference_io(f, test_x[:REFERENCE_COUNT]),
        "training": {**_training_info(args, trained, hyper, argv, args.arch), "train_examples": len(fit)},
    }
    export.write_manifest(out / f"{name}.json", manifest)
    export.check_manifest(out / f"{name}.json")
    train.log(
        f"F {name}: test top-1 {test_top1:.4f}, best epoch {trained.best_epoch}/{trained.epochs_run}, "
        f"{trained.seconds:.0f}s; ONNX matches PyTorch to {worst:.2g}; wrote {onnx_path} and {name}.json"
    )
    return 0


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


def cmd_parity(args: argparse.Namespace, argv: list[str]) -> int:
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
    encoder = encoders.get(args.encoder)
    encoder.check_k(args.k)
    arch = args.arch or base["training"].get("arch", "mlp")
    name = args.name or f"{base['name']}-parity-{encoder.short}-k{args.k}"
    ds = data.load(base["dataset"])
    test_x = ds.test.floats()
    # F is frozen: its logits are computed from the exported ONNX model, which is exactly
    # what the serving side subtracts when it decodes.
    f = export.OnnxModel(base_path.parent / base["file"], threads=torch.get_num_threads())

    if args.from_checkpoint and args.checkpoint_only:
        raise SystemExit("give either --checkpoint-only (train) or --from-checkpoint (finish), not both")
    if args.from_checkpoint:
        model, info = _load_checkpoint(Path(args.from_checkpoint), base, encoder, args.k, arch, ds)
        info["finished"] = _command(argv)
    else:
        model, info = _train_parity(args, argv, base_path, base, encoder, arch, ds, f)
        if args.checkpoint_only:
            path = Path(args.checkpoint_only)
            checkpoint.save(path, model, info, checkpoint.identity(base, encoder.name, args.k, arch))
            train.log(f"Fp {name}: trained; weights and training record in {path} (finish with parity --from-checkpoint {path})")
            return 0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / f"{name}.onnx"
    test_logits = f(test_x)
    groups = train.make_groups(len(test_x), args.k, TEST_GROUP_SEED)
    parity_x = train.encode_groups(encoder, test_x, groups)
    export.export_onnx(model, onnx_path, ds.input_shape)
    worst = export.verify_onnx(onnx_path, model, parity_x[:64])
    fp = export.OnnxModel(onnx_path)
    d = train.degraded(encoder, args.k, fp, test_x, test_logits, ds.test.labels, groups)
    p_mean, p_std = encoder.normalization(ds.mean, ds.std, args.k)
    info["evaluation"] = {
        "split": "test",
        "groups": d.groups,
        "reconstructions": d.reconstructions,
        "group_seed": TEST_GROUP_SEED,
        "how": "seeded random groups of k test examples; each member erased in turn and decoded "
        "as Fp(P) - sum of the other members' F outputs (F = the base ONNX model)",
    }
    manifest = {
        "name": name,
        "file": onnx_path.name,
        "dataset": ds.name,
        "role": "parity",
        "base": base["name"],
        "k": args.k,
        "encoder": encoder.name,
        "input_shape": list(ds.input_shape),
        "input_range": list(encoder.input_range(args.k)),
        "normalization": {"mean": round(p_mean, 6), "std": p_std, "in_graph": True},
        "output_size": ds.num_classes,
        "accuracy": {
            "reconstruction_top1": round(d.reconstruction_top1, 6),
            "agreement_with_base": round(d.agreement_with_base, 6),
            "base_top1": round(d.base_top1, 6),
            "partial_agreement_with_base": round(train.degraded_partial(encoder, args.k, fp, test_x, test_logits, groups), 6),
        },
        # groups: the test-set indices of the members of each reference input, so another
        # implementation of the encoder can check that it builds the same parity inputs.
        "reference": {**export.reference_io(fp, parity_x[:REFERENCE_COUNT]), "groups": groups[:REFERENCE_COUNT].tolist()},
        "training": info,
    }
    export.write_manifest(out / f"{name}.json", manifest)
    export.check_manifest(out / f"{name}.json")
    train.log(
        f"Fp {name}: degraded top-1 {d.reconstruction_top1:.4f} (F {d.base_top1:.4f}), agreement with F "
        f"{d.agreement_with_base:.4f} over {d.reconstructions} reconstructions; best epoch "
        f"{info['best_epoch']}/{info['epochs']}, {info['seconds']:.0f}s; ONNX matches PyTorch to {worst:.2g}"
    )
    return 0


def _train_parity(args: argparse.Namespace, argv: list[str], base_path: Path, base: dict, encoder: encoders.Encoder,
                  arch: str, ds: data.Dataset, f: export.OnnxModel) -> tuple[torch.nn.Module, dict]:
    """Trains Fp as the arguments say; returns it (on the CPU) and its training record."""
    fit, val = _split(ds)
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
        ds.mean, ds.std, _epochs(args), hyper, _budget(args.max_minutes), ce_weight=args.ce_weight,
        init=init,
        augment_shift=args.augment_shift,
        partial_fraction=args.partial_groups,
        validation_groupings=args.validation_groupings,
        base=_base_module(base, base_onnx, ds) if args.augment_shift else None,
        device=args.device,
    )
    info = _training_info(args, trained, hyper, argv, arch)
    info["train_examples"] = len(fit)
    info["loss"] = (
        "mse(Fp(P), sum F(Xi))" if args.ce_weight == 0
        else f"mse(Fp(P), sum F(Xi)) + {args.ce_weight:g} * cross_entropy(decoded, F top-1)"
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
                     ds: data.Dataset) -> tuple[torch.nn.Module, dict]:
    """Fp from a `--checkpoint-only` file, checked to be the parity model these arguments describe."""
    weights, training = checkpoint.read(path, expected=checkpoint.identity(base, encoder.name, k, arch))
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


def _epochs(args: argparse.Namespace) -> int:
    if args.epochs is None:
        raise SystemExit(f"{args.command}: --epochs is required to train (it is the maximum; --max-minutes may stop sooner)")
    return args.epochs


def cmd_export_data(args: argparse.Namespace, argv: list[str]) -> int:
    ds = data.load(args.dataset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.full:
        # The whole test set, gzipped (the accuracy benchmark's input).
        n = len(ds.test)
        images = out / f"{ds.name}-t10k-images.idx3-ubyte.gz"
        labels = out / f"{ds.name}-t10k-labels.idx1-ubyte.gz"
    else:
        n = min(args.count, len(ds.test))
        images = out / f"{ds.name}-test-images.idx3-ubyte"
        labels = out / f"{ds.name}-test-labels.idx1-ubyte"
    write_idx(images, ds.test.images[:n])
    write_idx(labels, ds.test.labels[:n].astype(np.uint8))
    train.log(f"wrote the first {n} {ds.name} test examples to {images} and {labels}")
    return 0


def cmd_check(args: argparse.Namespace, argv: list[str]) -> int:
    failed = 0
    for path in args.manifests:
        try:
            worst = export.check_manifest(path)
            print(f"ok   {path}: reference reproduced to {worst:.2g}")
        except (AssertionError, FileNotFoundError, KeyError, ValueError) as e:
            print(f"FAIL {path}: {e}")
            failed += 1
    return 1 if failed else 0


def cmd_compare(args: argparse.Namespace, argv: list[str]) -> int:
    """Mean validation agreement of each candidate over --groupings pairings: the rule that
    chose between parity models for one slot (training/README.md, "A bigger Fp")."""
    base_path = Path(args.base)
    base = export.read_manifest(base_path)
    candidates = [(Path(c), export.read_manifest(c)) for c in args.candidates]
    kinds = {(m.get("role"), m.get("base"), m.get("encoder"), m.get("k")) for _, m in candidates}
    if len(kinds) != 1 or next(iter(kinds))[:2] != ("parity", base["name"]):
        raise SystemExit(f"compare: the candidates must all be parity models of {base['name']} with one encoder "
                         f"and k; got (role, base, encoder, k) = {sorted(kinds, key=str)}")
    _, _, encoder_name, k = next(iter(kinds))
    encoder = encoders.get(encoder_name)
    ds = data.load(base["dataset"])
    _, val = _split(ds)
    x = val.floats()
    logits = export.OnnxModel(base_path.parent / base["file"], threads=torch.get_num_threads())(x)
    seeds = range(COMPARE_FIRST_SEED, COMPARE_FIRST_SEED + args.groupings)
    print(f"validation agreement with {base['name']} over {args.groupings} groupings of {len(x)} held-out images "
          f"(seeds {seeds.start}-{seeds.stop - 1}), {encoder_name} k = {k}:")
    for path, m in candidates:
        fp = export.OnnxModel(path.parent / m["file"], threads=torch.get_num_threads())
        agreement = train.validation_agreement(encoder, k, fp, x, logits, seeds)
        print(f"  {100 * np.mean(agreement):.2f}  (range {100 * min(agreement):.2f}-{100 * max(agreement):.2f}, "
              f"{m['training'].get('arch', '?')})  {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m parm_training", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: leave the other core free)")
    p.add_argument("--device", default="cpu", help="where to train: cpu (default) or cuda / cuda:N")
    sub = p.add_subparsers(dest="command", required=True)

    def training_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("--epochs", type=int, help="maximum number of epochs (required to train)")
        s.add_argument("--max-minutes", type=float, help="stop early once this much training time is spent")
        s.add_argument("--lr", type=float, default=1e-3)
        s.add_argument("--weight-decay", type=float, default=1e-5)
        s.add_argument("--batch-size", type=int, help="examples (F) or coding groups (Fp) per step")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--schedule", choices=("constant", "cosine", "cosine-time"), default="constant",
                       help="learning rate: constant (the reference), cosine decay to 0 over --epochs, "
                       "or cosine-time: decay to 0 over --max-minutes")
        s.add_argument("--limit", type=int, help="train on only the first N training examples (for tests)")
        s.add_argument("--out", default="models", help="output folder (default: models)")
        s.add_argument("--name", help="model name (default: derived)")

    b = sub.add_parser("base", help="train and export the deployed model F")
    b.add_argument("--dataset", choices=data.DATASETS, default="mnist")
    b.add_argument("--arch", default="mlp")
    training_args(b)
    b.set_defaults(run=cmd_base)

    q = sub.add_parser("parity", help="train and export a parity model Fp for an exported F")
    q.add_argument("--base", required=True,
                   help="the base model's manifest (models/mnist-mlp.json), or any classifier's ONNX file "
                   "(with --dataset and --arch: F's PyTorch code is never needed)")
    q.add_argument("--dataset", choices=data.DATASETS, help="the data set, when --base is a bare ONNX file")
    q.add_argument("--base-name", help="name for the manifest of a bare ONNX base (default: its file stem)")
    q.add_argument("--k", type=int, default=2)
    q.add_argument("--encoder", choices=sorted(encoders.ENCODERS), default="addition")
    q.add_argument("--arch", help="Fp's architecture (default: F's)")
    q.add_argument("--init-from-base", action="store_true",
                   help="start Fp from F's weights (read from F's ONNX file) instead of a random init")
    q.add_argument("--init-from", metavar="ONNX",
                   help="start Fp from the weights of this ONNX file (or --checkpoint-only .npz) of Fp's "
                   "architecture, e.g. an earlier parity model, to continue its training")
    q.add_argument("--partial-groups", type=float, default=0.0, metavar="FRACTION",
                   help="make this fraction of the training groups partial (first m < k members, zeros "
                   "elsewhere, target the present members' sum), as the encoder's linger closes them (default 0)")
    q.add_argument("--validation-groupings", type=_positive_int, default=1, metavar="N",
                   help="pair the validation images N ways and keep the epoch with the best mean "
                   "agreement (default 1, the reference; one grouping flatters the epoch it picks)")
    q.add_argument("--augment-shift", type=int, default=0, metavar="PIXELS",
                   help="move each training image by up to this many pixels before encoding, with F's "
                   "logits computed on the moved images (needs F's architecture in its manifest; default 0)")
    q.add_argument("--ce-weight", type=float, default=0.0,
                   help="add this weight times the cross-entropy of each decoded output against F's top-1 "
                   "(default 0: the reference recipe, MSE on the sum only)")
    q.add_argument("--checkpoint-only", metavar="NPZ",
                   help="train, then write Fp's weights and training record to this file instead of exporting "
                   "(for a GPU machine; finish elsewhere with --from-checkpoint)")
    q.add_argument("--from-checkpoint", metavar="NPZ",
                   help="do not train: export, evaluate and write the manifest of the Fp in this "
                   "--checkpoint-only file (give the same --base, --k, --encoder, --arch)")
    training_args(q)
    q.set_defaults(run=cmd_parity)

    e = sub.add_parser("export-data", help="write test images and labels as IDX files")
    e.add_argument("--dataset", choices=data.DATASETS, default="mnist")
    e.add_argument("--count", type=int, default=2000)
    e.add_argument("--full", action="store_true",
                   help="write the whole test set gzipped, as {dataset}-t10k-{images,labels}.idx?-ubyte.gz")
    e.add_argument("--out", default="models/data")
    e.set_defaults(run=cmd_export_data)

    c = sub.add_parser("check", help="check manifests' reference outputs against their ONNX models")
    c.add_argument("manifests", nargs="+")
    c.set_defaults(run=cmd_check)

    v = sub.add_parser("compare", help="score candidate parity models for one F on many validation groupings")
    v.add_argument("--base", required=True, help="F's manifest (models/mnist-lenet.json)")
    v.add_argument("--groupings", type=_positive_int, default=10,
                   help="pairings of the validation images to average over (default 10)")
    v.add_argument("candidates", nargs="+", help="parity manifests, each beside its ONNX file")
    v.set_defaults(run=cmd_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    args.device = _device(args.device)
    try:
        return args.run(args, argv)
    except (data.DataMissing, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
