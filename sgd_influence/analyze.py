"""Phase 4: summary table and figure from the score files of an output folder.

Usage: python -m sgd_influence.analyze OUT

Writes OUT/summary/summary.csv (method, n removed, mean and standard
deviation over trials of the final test accuracy, trial count) and
OUT/fig/result.png (test accuracy vs number removed, log x, error bars with
two or more trials, the no-removal accuracy as a reference line).
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import sys
from typing import Dict, List, Sequence

import numpy as np

from .io import atomic_path, write_text

SCORE_RE = re.compile(r"score_delete_worst_(\d+)_seed_(\d+)\.csv$")
METHOD_ORDER = ["Hara", "Ours", "Influence_functions", "Random"]


def final_test_accuracy(path: str) -> float:
    """test_accuracy of the last epoch row of a score CSV."""
    with open(path) as f:
        header = f.readline().strip().split(",")
        rows = [line.strip().split(",") for line in f if line.strip()]
    return float(rows[-1][header.index("test_accuracy")])


def collect(out: str) -> Dict[str, Dict[int, Dict[int, float]]]:
    """{method: {n_removed: {seed: final test accuracy}}}."""
    scores: Dict[str, Dict[int, Dict[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(out, "score", "*", "score_delete_worst_*_seed_*.csv"))):
        m = SCORE_RE.search(path)
        method = os.path.basename(os.path.dirname(path))
        scores.setdefault(method, {}).setdefault(int(m.group(1)), {})[int(m.group(2))] = final_test_accuracy(path)
    return scores


def summarize(scores) -> List[tuple]:
    """Rows (method, n_removed, mean, std, n_trials); std is the sample std (ddof=1), 0 for one trial."""
    rows = []
    for method in sorted(scores, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else 99, m)):
        for n in sorted(scores[method]):
            acc = np.array([scores[method][n][s] for s in sorted(scores[method][n])])
            std = float(acc.std(ddof=1)) if len(acc) > 1 else 0.0
            rows.append((method, n, float(acc.mean()), std, len(acc)))
    return rows


def plot(rows: Sequence[tuple], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    base = [r for r in rows if r[1] == 0]
    if base:
        ax.axhline(np.mean([r[2] for r in base]), color="gray", ls="--", label="No Removal")
    for method in dict.fromkeys(r[0] for r in rows):
        rs = [r for r in rows if r[0] == method and r[1] > 0]
        if not rs:
            continue
        n, mean, std = (np.array([r[i] for r in rs]) for i in (1, 2, 3))
        many = any(r[4] > 1 for r in rs)
        ax.errorbar(n, mean, yerr=std if many else None, marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("number of instances removed")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def analyze(out: str, skipped: Sequence[int] = ()) -> List[tuple]:
    rows = summarize(collect(out))
    if not rows:
        raise SystemExit(f"error: no score files under {os.path.join(out, 'score')}; run a driver first")
    lines = ["method,n_removed,test_accuracy_mean,test_accuracy_std,n_trials"]
    lines += [f"{m},{n},{mean:.6f},{std:.6f},{k}" for m, n, mean, std, k in rows]
    write_text(os.path.join(out, "summary", "summary.csv"), "\n".join(lines) + "\n")
    if skipped:
        write_text(os.path.join(out, "summary", "skipped.txt"),
                   "removal sizes skipped (>= training set size): " + " ".join(map(str, skipped)) + "\n")
    plot(rows, os.path.join(out, "fig", "result.png"))
    print("method        n_removed  test_accuracy (mean ± std, trials)")
    for m, n, mean, std, k in rows:
        print(f"{m:<13} {n:>9}  {mean:.4f} ± {std:.4f} ({k})")
    print(f"summary: {os.path.join(out, 'summary', 'summary.csv')}\nfigure:  {os.path.join(out, 'fig', 'result.png')}")
    if os.path.isdir(os.path.join(out, "noise")):  # --label-noise: how well each order finds flipped labels
        from .noise import write_noise_detection
        write_noise_detection(out, list(dict.fromkeys(r[0] for r in rows)), sorted({r[1] for r in rows if r[1]}))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Summarise score files of an output folder into a table and a figure.")
    p.add_argument("output_dir", help="output folder of eval_sgd_influence.py / eval_influence_functions.py")
    args = p.parse_args(argv)
    analyze(args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
