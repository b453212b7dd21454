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
import sys
from pathlib import Path

import numpy as np
import torch

from parm_training import checkpoint, data, encoders, export, train
from parm_training.cli_common import REFERENCE_COUNT, budget_seconds, required_epochs, split, training_info
from parm_training.idx import write_idx
from parm_training.parity_command import cmd_parity

# `compare` pairs the validation images with these seeds: not the ones training picks its
# best epoch on (its seed + 2, + 3, ...), so a candidate's lucky grouping is not reused.
COMPARE_FIRST_SEED = 100


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _device(name: str) -> torch.device:
    """--device, checked: a clear error instead of a CUDA stack trace when there is no GPU."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu")
    return device


def cmd_base(args: argparse.Namespace, argv: list[str]) -> int:
    ds = data.load(args.dataset)
    fit, val = split(ds)
    hyper = train.Hyper(lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size or 64, seed=args.seed, schedule=args.schedule)
    if args.limit:
        fit = fit.take(slice(0, args.limit))
    trained = train.train_base(
        args.arch, fit.floats(), fit.labels, val.floats(), val.labels,
        ds.mean, ds.std, ds.num_classes, required_epochs(args), hyper, budget_seconds(args.max_minutes), device=args.device,
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
        "training": {**training_info(args, trained, hyper, argv, args.arch), "train_examples": len(fit)},
    }
    export.write_manifest(out / f"{name}.json", manifest)
    export.check_manifest(out / f"{name}.json")
    train.log(
        f"F {name}: test top-1 {test_top1:.4f}, best epoch {trained.best_epoch}/{trained.epochs_run}, "
        f"{trained.seconds:.0f}s; ONNX matches PyTorch to {worst:.2g}; wrote {onnx_path} and {name}.json"
    )
    return 0


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
    _, val = split(ds)
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
