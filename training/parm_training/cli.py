"""Command line: python -m parm_training {base,parity,export-data,check} ...

    base         train the deployed model F, export it, write its manifest
    parity       train a parity model Fp against an exported F, export, write its manifest
    export-data  write the first N test images and labels as IDX files for the Rust side
    check        run manifests' models on their reference inputs (what the Rust test does)
    compare      score candidate parity models for one F on many validation groupings
    evaluate-code  degraded mode of a code with r parities: every pattern of up to r missing members

scripts/train-models runs the whole sequence that produced models/ on a CPU;
scripts/train-parity-gpu trains the parity models on a CUDA GPU instead (training there,
export and evaluation here: `parity --checkpoint-only`, then `parity --from-checkpoint`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from parm_training import checkpoint, code, data, encoders, export, train
from parm_training.cli_common import REFERENCE_COUNT, budget_seconds, required_epochs, split, training_info
from parm_training.idx import write_idx
from parm_training.parity_command import TEST_GROUP_SEED, cmd_parity

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
    kinds = {(m.get("role"), m.get("base"), m.get("encoder"), m.get("k"), tuple(m.get("weights") or ()))
             for _, m in candidates}
    if len(kinds) != 1 or next(iter(kinds))[:2] != ("parity", base["name"]):
        raise SystemExit(f"compare: the candidates must all be parity models of {base['name']} with one encoder, "
                         f"k and weights; got (role, base, encoder, k, weights) = {sorted(kinds, key=str)}")
    _, _, encoder_name, k, _ = next(iter(kinds))
    encoder = encoders.for_manifest(candidates[0][1])
    ds = data.load(base["dataset"])
    _, val = split(ds)
    x = val.floats()
    logits = export.OnnxModel(base_path.parent / base["file"], threads=torch.get_num_threads())(x)
    seeds = range(COMPARE_FIRST_SEED, COMPARE_FIRST_SEED + args.groupings)
    print(f"validation agreement with {base['name']} over {args.groupings} groupings of {len(x)} held-out images "
          f"(seeds {seeds.start}-{seeds.stop - 1}), {encoder_name} k = {k}:")
    scores = []
    for path, m in candidates:
        fp = export.OnnxModel(path.parent / m["file"], threads=torch.get_num_threads())
        agreement = train.validation_agreement(encoder, k, fp, x, logits, seeds)
        scores.append((float(np.mean(agreement)), str(path)))
        print(f"  {100 * np.mean(agreement):.2f}  (range {100 * min(agreement):.2f}-{100 * max(agreement):.2f}, "
              f"{m['training'].get('arch', '?')})  {path}")
    if args.pick:
        # The rule that chooses between candidates: the best mean agreement (first on a tie).
        print(f"best: {max(scores, key=lambda s: s[0])[1]}")
    return 0


def cmd_evaluate_code(args: argparse.Namespace, argv: list[str]) -> int:
    """Degraded mode of the code whose parity models are given (parity 0 .. r-1 of one F and
    k, addition): every erasure pattern of up to r members (code.evaluate), on the test set
    in the seeded groups of `parity`'s evaluation; with --record, written into the manifests
    of the parities j > 0 as accuracy.code (parity 0's is the plain model's, left as it is)."""
    base_path = Path(args.base)
    base = export.read_manifest(base_path)
    given = [(Path(p), export.read_manifest(p)) for p in args.parities]
    kinds = {(m.get("role"), m.get("base"), m.get("encoder"), m.get("k")) for _, m in given}
    if len(kinds) != 1 or next(iter(kinds))[:3] != ("parity", base["name"], "addition"):
        raise SystemExit(f"evaluate-code: give addition parity models of {base['name']} with one k; got "
                         f"(role, base, encoder, k) = {sorted(kinds, key=str)}")
    k = next(iter(kinds))[3]
    given.sort(key=lambda pm: pm[1].get("parity_index", 0))
    r = len(given)
    indices = [m.get("parity_index", 0) for _, m in given]
    if indices != list(range(r)):
        raise SystemExit(f"evaluate-code: give parities 0..{r - 1} once each; got parity indices {indices}")
    weights = encoders.code_weights(k, r)
    for (path, m), row in zip(given, weights):
        if m.get("parities", r) != r or not np.allclose(m.get("weights", [1.0] * k), row):
            raise SystemExit(f"evaluate-code: {path} is parity {m.get('parity_index', 0)} of a code with "
                             f"{m.get('parities')} parities, weights {m.get('weights')}; this code (r = {r}) has {row}")
    ds = data.load(base["dataset"])
    x, labels = ds.test.floats(), ds.test.labels
    logits = export.OnnxModel(base_path.parent / base["file"], threads=torch.get_num_threads())(x)
    groups = train.make_groups(len(x), k, TEST_GROUP_SEED)
    predicts = [export.OnnxModel(path.parent / m["file"], threads=torch.get_num_threads()) for path, m in given]
    rows = code.evaluate(np.asarray(weights), predicts, x, logits, labels, groups)
    result = {
        "parity_models": [m["name"] for _, m in given],
        "weights": weights,
        "split": "test",
        "groups": len(groups),
        "group_seed": TEST_GROUP_SEED,
        "how": "seeded random groups of k test examples; for every set M of up to r members of a group "
        "and every set P of at least |M| parities, M erased and solved from W[P, M] Y = Fp_j(E_j) - sum over "
        "the other members of w_ji F(Xi), j in P (exact when |P| = |M|, least squares otherwise)",
        "patterns": rows,
    }
    print(f"{base['name']}, addition k = {k}, r = {r} ({', '.join(result['parity_models'])}), "
          f"{len(groups)} test groups (seed {TEST_GROUP_SEED}):")
    print("  missing  parities  solve          reconstructions  top-1    agreement  F top-1")
    for row in rows:
        print(f"  {row['missing']:7d}  {','.join(map(str, row['parities'])):8s}  {row['solve']:13s}  "
              f"{row['reconstructions']:15d}  {100 * row['reconstruction_top1']:6.2f}   "
              f"{100 * row['agreement_with_base']:6.2f}     {100 * row['base_top1']:6.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.record:
        for path, m in given:
            if m.get("parity_index", 0) > 0:
                m["accuracy"]["code"] = result
                export.write_manifest(path, m)
                export.check_manifest(path)
                print(f"recorded as accuracy.code in {path}")
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
    q.add_argument("--parity-index", type=int, default=0, metavar="J",
                   help="train parity J of a code with --parities R (addition only): its input is "
                   "sum_i w_Ji X_i and its target sum_i w_Ji F(X_i), w_Ji = x_i^J on x_i = 1 + i/(k-1) "
                   "(default 0: all weights 1, the plain addition model)")
    q.add_argument("--parities", type=int, default=1, metavar="R",
                   help="the code's number of parities per group, R > J (default 1)")
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
    v.add_argument("--pick", action="store_true", help="end with 'best: PATH', the candidate with the best mean")
    v.add_argument("candidates", nargs="+", help="parity manifests, each beside its ONNX file")
    v.set_defaults(run=cmd_compare)

    ec = sub.add_parser("evaluate-code", help="degraded mode of a code with r parities per group: every "
                        "pattern of up to r missing members, on the test set")
    ec.add_argument("--base", required=True, help="F's manifest (models/mnist-lenet.json)")
    ec.add_argument("--record", action="store_true",
                    help="write the result into the manifests of parities j > 0 as accuracy.code")
    ec.add_argument("--out", help="also write the result to this JSON file")
    ec.add_argument("parities", nargs="+", help="the code's parity manifests, parity 0 to r - 1 (any order)")
    ec.set_defaults(run=cmd_evaluate_code)
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
