"""Label noise (`--label-noise P`) and how well each method finds the flipped labels.

Flipping: k = round(P * n_train) training instances (Python's round: half to
even), drawn without replacement, get the label (y + s) mod C with a shift s
drawn uniformly from 1..C-1, so a flipped label is never the original and is
uniform over the other C-1 classes. Both draws come from
`np.random.default_rng([seed, 3])` and depend only on (n_train, C, P, seed),
so every phase of a trial (training, influence, retraining) sees the same
noisy labels. Validation and test labels are never touched.

Detection: a method's removal order (its influence CSV, most negative first)
is read as a ranking of suspects. Among the first n removed,
    precision(n) = flipped found / n,   recall(n) = flipped found / k.
The detection curve is recall against the fraction n / n_train of the training
set checked; its area (trapezoids through (0, 0) and every n = 1..n_train) is
0.5 in expectation for a random order and 1 - k / (2 n_train) for a perfect one.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from io import StringIO
from typing import Dict, List, Sequence, Tuple

import numpy as np

from datasets import Data
from ..base.errors import UserError
from ..base.figures import pyplot, save
from ..base.layout import noise_path, read_removal_order, write_text

FLIPPED_COLUMNS = ("datasource_index", "x:image", "original_label", "noisy_label")


# ------------------------------------------------------------------- flipping
def flip_plan(n: int, n_classes: int, fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(indices to flip, ascending; their label shifts in 1..n_classes-1)."""
    if not 0 <= fraction < 1:
        raise UserError(f"--label-noise must be a fraction in [0, 1), got {fraction}")
    if n_classes < 2:
        raise UserError(f"--label-noise needs at least two classes, the data has {n_classes}")
    k = int(round(fraction * n))
    rng = np.random.default_rng([seed, 3])
    idx = np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)
    return idx, rng.integers(1, n_classes, size=k).astype(np.int64)


def flip_labels(y: np.ndarray, n_classes: int, fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(noisy copy of y, flipped indices): `flip_plan` applied as y[i] <- (y[i] + shift) mod C."""
    idx, shift = flip_plan(len(y), n_classes, fraction, seed)
    noisy = np.array(y, dtype=np.int64, copy=True)
    noisy[idx] = (noisy[idx] + shift) % n_classes
    return noisy, idx


def with_label_noise(data: Data, fraction: float, seed: int) -> Data:
    """`data` with the training labels flipped (validation and test untouched)."""
    noisy, _ = flip_labels(data.train.y, data.n_classes, fraction, seed)
    return dataclasses.replace(data, train=dataclasses.replace(data.train, y=noisy))




def write_flipped_csv(path: str, noisy: Data, fraction: float, seed: int) -> None:
    """`datasource_index,x:image,original_label,noisy_label` of every flipped instance,
    from the noisy data (the original label is the plan's shift undone)."""
    idx, shift = flip_plan(len(noisy.train), noisy.n_classes, fraction, seed)
    original = (noisy.train.y[idx] - shift) % noisy.n_classes
    buf = StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(FLIPPED_COLUMNS)
    w.writerows([i, noisy.train.ids[i], o, noisy.train.y[i]] for i, o in zip(idx, original))
    write_text(path, buf.getvalue())


def read_flipped(path: str) -> np.ndarray:
    """The datasource_index column of a flipped_<seed>.csv."""
    with open(path, newline="") as f:
        return np.array([int(r["datasource_index"]) for r in csv.DictReader(f)], np.int64)


# ------------------------------------------------------------------ detection
def detection(order: np.ndarray, flipped: np.ndarray, sizes: Sequence[int]) -> Tuple[List[tuple], float]:
    """Rows (n, found, precision, recall) for each n in `sizes`, and the detection AUC.

    `order`: every training index, first removed first; `flipped`: the flipped indices.
    """
    found = found_curve(order, flipped)
    recall = found / max(len(flipped), 1)  # all zero when nothing was flipped
    rows = [(n, int(found[n]), found[n] / n, float(recall[n])) for n in sizes if 0 < n <= len(order)]
    return rows, curve_area(recall)


def curve_area(recall: np.ndarray) -> float:
    """Trapezoid area under recall(n), n = 0..N, against n / N."""
    return float((recall[:-1] + recall[1:]).sum() / (2 * (len(recall) - 1)))


def found_curve(order: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """Number of flipped instances among the first n removed, for n = 0..n_train."""
    return np.concatenate([[0], np.cumsum(np.isin(order, flipped))]).astype(np.int64)


def write_noise_detection(out: str, influence: Dict[str, Dict[int, str]], run_dir: str,
                          sizes: Sequence[int]) -> List[str]:
    """OUT/summary/noise_detection.csv and OUT/fig/noise_detection.png; returns the paths written
    (relative to `out`).

    `influence`: method -> trial seed -> influence CSV; `run_dir`: the output folder whose
    noise/flipped_<seed>.csv list the flipped instances (trials without one are left out).
    CSV rows `method,seed,n_removed,n_flipped,flipped_removed,precision,recall,auc`: one per
    method, trial and removal size n > 0 (auc: that trial's area, repeated on its rows),
    then per method and n a row with seed `mean`: each column averaged over the trials.
    """
    rows, curves = [], {}
    for m, by_seed in influence.items():
        per_seed = []
        for s, path in sorted(by_seed.items()):
            if not os.path.exists(noise_path(run_dir, s)):
                continue
            order, flipped = read_removal_order(path), read_flipped(noise_path(run_dir, s))
            det, auc = detection(order, flipped, sizes)
            per_seed += [(s, n, len(flipped), f, p, r, auc) for n, f, p, r in det]
            curves.setdefault(m, []).append(found_curve(order, flipped) / max(len(flipped), 1))
        rows += [(m,) + r for r in per_seed]
        for n in sorted({r[1] for r in per_seed}):
            at = np.array([r[2:] for r in per_seed if r[1] == n], np.float64)
            rows.append((m, "mean", n) + tuple(at.mean(axis=0)))
    lines = ["method,seed,n_removed,n_flipped,flipped_removed,precision,recall,auc"]
    lines += [f"{m},{s},{n},{k:g},{f:g},{p:.6f},{r:.6f},{a:.6f}" for m, s, n, k, f, p, r, a in rows]
    write_text(os.path.join(out, "summary", "noise_detection.csv"), "\n".join(lines) + "\n")
    written = ["summary/noise_detection.csv"]
    if curves:
        plot_detection(curves, os.path.join(out, "fig", "noise_detection.png"))
        written.append("fig/noise_detection.png")
    print("noise detection (mean over trials): method, n removed, precision, recall | AUC")
    for m, s, n, k, f, p, r, a in rows:
        if s == "mean":
            print(f"  {m:<20} {n:>6}  {p:.3f}  {r:.3f}  | {a:.3f}")
    return written


def plot_detection(curves: Dict[str, List[np.ndarray]], path: str) -> None:
    """Recall of flipped labels vs fraction of the training set checked (mean over trials)."""
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for m, cs in curves.items():
        r = np.mean(cs, axis=0)
        ax.plot(np.linspace(0, 1, len(r)), r, label=f"{m} (AUC {curve_area(r):.3f})")
    ax.plot([0, 1], [0, 1], color="gray", ls=":", label="random order (AUC 0.5)")
    ax.set_xlabel("fraction of the training set checked (in each method's removal order)")
    ax.set_ylabel("recall of flipped labels")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path, dpi=120)
