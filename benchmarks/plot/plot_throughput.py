#!/usr/bin/env python3
"""Plot of the throughput benchmark (benchmarks/figure throughput): client-observed p50
and p99 against the offered rate, one line per series (mode and k), one panel per set of
Kafka settings, from the results.json of every folder given; the target p99 of 100 ms is
drawn across, and a series' highest sustained rate is ringed. Writes throughput.png into
the first folder.
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

COLORS = {"floor": "#9467bd", "none": "#7f7f7f", "parm": "#2ca02c", "parm-eager": "#d62728", "equal": "#1f77b4", "hedge": "#ff7f0e", "backup": "#8c564b"}
QUANTILES = [("p50_ms", "p50", ":"), ("p99_ms", "p99", "-")]


def series(dirs):
    """{kafka settings: {series name: runs}}"""
    out = {}
    for d in dirs:
        data = json.loads((Path(d) / "results.json").read_text())
        for r in data["runs"]:
            key = f'{r["mode"]} k={r["k"]}' if r["mode"] not in ("none", "floor") else f'{r["mode"]} (N={r["model_workers"]})'
            out.setdefault(r["kafka"]["name"], {}).setdefault(key, []).append(r)
    return out


def main(dirs):
    if not dirs:
        sys.exit("usage: plot_throughput.py RESULTS_DIR... (folders with a results.json)")
    panels = series(dirs)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), sharey=True, squeeze=False)
    for ax, (kafka, by_name) in zip(axes[0], panels.items()):
        plot_panel(ax, kafka, by_name)
    fig.tight_layout()
    name = Path(dirs[0]) / "throughput.png"
    fig.savefig(name, dpi=110)
    print(name)


def plot_panel(ax, kafka, by_name):
    for i, (name, runs) in enumerate(sorted(by_name.items())):
        runs.sort(key=lambda r: r["rate"])
        mode = runs[0]["mode"]
        color = COLORS.get(mode, f"C{i}")
        if mode == "parm" and runs[0]["k"] != 2:
            color = "#17becf"
        for field, label, ls in QUANTILES:
            ax.plot([r["rate"] for r in runs], [r["report"][field] for r in runs], ls=ls, marker="o", ms=3, color=color,
                    label=f"{name} {label}")
        held = [r for r in runs if r.get("sustained")]
        last = None
        for r in runs:
            if not r.get("sustained"):
                break
            last = r
        if last is not None and held:
            ax.plot([last["rate"]], [last["report"]["p99_ms"]], "o", ms=12, mfc="none", mec=color, mew=1.5)
    ax.axhline(100, color="black", lw=0.8, alpha=0.6)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.set_xlabel("offered rate (queries/s, Poisson, 30 s per step)")
    ax.set_ylabel("client-observed latency (ms, log)")
    ax.set_title(f"kafka settings: {kafka} (ringed: highest sustained rate)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


if __name__ == "__main__":
    main(sys.argv[1:])
