#!/usr/bin/env python3
"""Plots of the latency benchmark from a scenario's results.json (see benchmarks/README.md).

For each results folder given:
- cdf-<setting>.png: the latency distribution of every mode on one chart, one chart per
  setting (k, rate, contention, Kafka settings); the x axis is the percentile on a
  "nines" scale (50%, 90%, 99%, 99.9%), so the tail gets the room, and latency is log-scaled;
- p999-vs-<dimension>.png: p99.9 of every mode against each swept dimension (rate, k,
  contention level, Kafka settings).
"""
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter  # noqa: E402

MODE_ORDER = ["floor", "none", "equal", "hedge", "backup", "parm", "parm-eager"]
STYLE = {
    "floor": dict(color="#9467bd", ls=(0, (1, 3))),
    "none": dict(color="#7f7f7f", ls=":"),
    "equal": dict(color="#1f77b4", ls="--"),
    "hedge": dict(color="#ff7f0e", ls="-."),
    "parm": dict(color="#2ca02c", ls="-"),
    "parm-eager": dict(color="#d62728", ls="-"),
    "backup": dict(color="#8c564b", ls=(0, (5, 1))),
}
DIMS = {
    "rate": lambda r: r["rate"],
    "k": lambda r: r["k"],
    "contention": lambda r: r["contention"]["name"],
    "kafka": lambda r: r["kafka"]["name"],
}


def nines(q):
    return -math.log10(max(1.0 - q, 1e-6))


def setting(r, varying):
    return ", ".join(f"{d}={DIMS[d](r)}" for d in DIMS if d not in varying)


def plot_cdfs(runs, out, title):
    groups = defaultdict(list)
    for r in runs:
        key = (r["k"], r["rate"], r["contention"]["name"], r["kafka"]["name"])
        groups[key].append(r)
    written = []
    for (k, rate, cont, kafka), rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in sorted(rs, key=lambda r: MODE_ORDER.index(r["mode"])):
            pts = [(ms, q) for ms, q in r["cdf"] if q < 1.0]
            if not pts:
                continue
            rep = r["report"]
            label = f'{r["mode"]}: p50 {rep["p50_ms"]:.0f}, p99.9 {rep["p999_ms"]:.0f} ms'
            ax.plot([nines(q) for _, q in pts], [ms for ms, _ in pts], label=label, lw=1.6, **STYLE.get(r["mode"], {}))
        ticks = [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999]
        ax.xaxis.set_major_locator(FixedLocator([nines(q) for q in ticks]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{(1 - 10 ** -x) * 100:g}%"))
        ax.set_xlim(0, nines(0.9999))
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:g}" if f"{y:g}"[0] in "2357" else ""))
        ax.set_xlabel("percentile")
        ax.set_ylabel("client-observed latency (ms, log)")
        ax.set_title(f"{title}: k={k}, {rate:g} qps, contention {cont}, kafka {kafka}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
        name = out / f"cdf-k{k}-{rate:g}qps-{cont}-{kafka}.png".replace("+", "_")
        fig.tight_layout()
        fig.savefig(name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def plot_sweeps(runs, out, title):
    written = []
    for dim, get in DIMS.items():
        values = sorted({get(r) for r in runs}, key=lambda v: (isinstance(v, str), v))
        if len(values) < 2:
            continue
        if dim in ("contention", "kafka"):  # keep the scenario's order
            values = list(dict.fromkeys(get(r) for r in runs))
        others = [d for d in DIMS if d != dim]
        by_setting = defaultdict(lambda: defaultdict(dict))
        for r in runs:
            by_setting[tuple(DIMS[d](r) for d in others)][r["mode"]][get(r)] = r["report"]["p999_ms"]
        for rest, modes in by_setting.items():
            fig, ax = plt.subplots(figsize=(7, 4.5))
            numeric = all(isinstance(v, (int, float)) for v in values)
            xs = values if numeric else list(range(len(values)))
            for mode in sorted(modes, key=MODE_ORDER.index):
                pts = [(x, modes[mode][v]) for x, v in zip(xs, values) if v in modes[mode]]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=mode, **STYLE.get(mode, {}))
            ax.set_xticks(xs)
            ax.set_xticklabels([f"{v:g}" if numeric else v for v in values])
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:g}" if f"{y:g}"[0] in "2357" else ""))
            ax.set_xlabel({"rate": "arrival rate (queries/s, Poisson)"}.get(dim, dim))
            ax.set_ylabel("p99.9 latency (ms, log)")
            ax.set_title(f"{title}: p99.9 vs {dim} ({', '.join(f'{d}={v}' for d, v in zip(others, rest))})", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            name = out / f"p999-vs-{dim}.png" if len(by_setting) == 1 else out / f"p999-vs-{dim}-{'-'.join(map(str, rest))}.png"
            fig.savefig(name, dpi=110)
            plt.close(fig)
            written.append(name)
    return written


def main(dirs):
    if not dirs:
        sys.exit("usage: plot_latency.py RESULTS_DIR... (folders with a results.json)")
    for d in map(Path, dirs):
        data = json.loads((d / "results.json").read_text())
        runs = data["runs"]
        if not runs:
            print(f"{d}: no runs", file=sys.stderr)
            continue
        for f in plot_cdfs(runs, d, data["scenario"]) + plot_sweeps(runs, d, data["scenario"]):
            print(f)


if __name__ == "__main__":
    main(sys.argv[1:])
