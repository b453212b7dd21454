"""Draws a fault run (benchmarks/results/faults/NAME/) as timeline.png: each valid query's
latency against its send time, fault windows shaded, missing queries marked; below it
every service's RSS over the run.

    python benchmarks/plot/plot_faults.py benchmarks/results/faults/faults
"""
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"MODEL": "tab:blue", "RECONSTRUCTED": "tab:orange", "UNAVAILABLE": "tab:red"}


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main(folder):
    queries = rows(os.path.join(folder, "queries.csv"))
    windows = rows(os.path.join(folder, "windows.csv"))
    rss = rows(os.path.join(folder, "rss.csv"))
    fig, (lat, mem) = plt.subplots(2, 1, figsize=(12, 8), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    for source, color in COLORS.items():
        pts = [(float(q["sent_s"]), float(q["latency_ms"])) for q in queries if q["source"] == source]
        if pts:
            lat.scatter(*zip(*pts), s=2, color=color, label=f"{source} ({len(pts)})", rasterized=True)
    missing = [float(q["sent_s"]) for q in queries if q["source"] == "MISSING"]
    if missing:
        lat.scatter(missing, [1] * len(missing), marker="x", color="black", label=f"missing ({len(missing)})")
    for i, w in enumerate(windows[1:]):
        start, rec = float(w["start_s"]), float(w["recovered_s"])
        for ax in (lat, mem):
            ax.axvspan(start, max(rec, start + 0.2), color="grey", alpha=0.25)
        lat.text(start, 1.02, w["name"], rotation=60, fontsize=7, transform=lat.get_xaxis_transform(), va="bottom")
    lat.set_yscale("log")
    lat.set_ylabel("latency (ms, from scheduled send)")
    lat.legend(loc="upper right", fontsize=8, markerscale=4)
    services = sorted({r["service"] for r in rss})
    for s in services:
        pts = [(float(r["t_s"]), float(r["rss_mb"])) for r in rss if r["service"] == s]
        mem.plot(*zip(*pts), label=s, linewidth=1)
    mem.set_ylabel("RSS (MB)")
    mem.set_xlabel("time since the stream started (s); shaded: a fault until its recovery")
    mem.legend(loc="upper left", fontsize=7, ncol=4)
    mem.set_ylim(bottom=0)
    fig.tight_layout()
    out = os.path.join(folder, "timeline.png")
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1])
