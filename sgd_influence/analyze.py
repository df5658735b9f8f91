"""Phase 4: the paper's table and figures, and a look at what gets removed.

Usage: python -m sgd_influence.analyze OUT [OUT2 ...] [--out DIR] [--no-images]

Reads the score, influence and cache-size files of one or more output folders
(e.g. an eval_sgd_influence.py folder and an eval_influence_functions.py
folder of the same data and settings) and writes, under DIR (default: the
first OUT):

  summary/summary.csv        batch_size,method,n_removed,test_accuracy mean/std (ddof=1, 0 for one trial),n_trials
  summary/paired_vs_random.csv  per method and n: accuracy minus Random's of the same trial, mean, std and
                             95% t-interval over trials, and whether it excludes 0
  summary/table1_cache.csv   the paper's Table 1: cache of all epochs' parameters (theta x T x K),
  summary/table1_cache.md      Hara (theta x T) and Ours (theta), measured here and projected to paper scale
  summary/agreement.csv      per trial and pair of scoring methods: Spearman, Kendall tau-b, overlap of
                             the n most negative for every removal size n
  summary/inputs.json        the folders analysed (only when merging or given --out)
  fig/result.png             Fig. 2: mean test accuracy vs number removed, No Removal line
  fig/result_errorbars.png   Fig. 4: the same with +-1 sample standard deviation over trials
  fig/batch_size.png         Fig. 5: one panel per batch size (only given folders of several -bs)
  fig/agreement_seed<k>.png  influence of one method against another, one panel per pair
  fig/harmful_<method>_seed<k>.png  the 32 most negative instances (image, label, influence)
  fig/helpful_<method>_seed<k>.png  the 32 most positive

Folders are merged only if every result-changing setting their run.json
files share is equal, except the batch size (Fig. 5 compares batch sizes).
Everything but summary.csv and batch_size.png describes the first folder's
batch size. A (method, n, trial) result present in several folders is taken
from the first (a warning names any that differ).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from datasets import CLASS_NAMES

from . import figures, layout
from .export import export_clean
from .figures import pyplot
from .errors import UserError, run_command
from .methods import CONTROL, N_RANKED, is_control, sort_key
from .metrics import kendall_tau_b, spearman
from .settings import RESULT_SETTINGS, args_from_settings, data_for, differences

GRID = 32  # instances per harmful/helpful grid

# The paper's Table 1 (Suzuki et al., arXiv 2103.11807): batch 32, 20 epochs.
PAPER_BATCH, PAPER_EPOCHS = 32, 20
PAPER_TABLE1 = {  # dataset: (training images, input channels, {cache: bytes as printed in the paper})
    "mnist": (50000, 1, {"all": 38.64e9, "hara": 1.932e9, "ours": 1.236e6}),
    "cifar10": (40000, 3, {"all": 30.90e9, "hara": 1.545e9, "ours": 1.236e6}),
}
CACHES = (("all", "all parameters (θ×T×K)"), ("hara", "Hara (θ×T)"), ("ours", "Ours (θ)"))

class Row(NamedTuple):
    """One line of summary.csv."""
    batch_size: Optional[int]
    method: str
    n_removed: int
    mean: float
    std: float  # sample standard deviation over trials (ddof=1), 0 for one trial
    n_trials: int


Scores = Dict[str, Dict[int, Dict[int, float]]]  # method -> n removed -> seed -> final test accuracy
Influence = Dict[str, Dict[int, str]]  # method -> seed -> influence CSV path


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------- reading
@dataclass
class Folder:
    """One output folder and the settings its run.json recorded ({} without one)."""
    path: str
    settings: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> Optional[int]:
        return self.settings.get("batch_size")


def read_folder(path: str) -> Folder:
    if not os.path.isdir(path):
        raise UserError(f"{path} is not a folder; pass output folders of eval_sgd_influence.py "
                        f"or eval_influence_functions.py")
    return Folder(path, layout.read_settings(path))


def check_mergeable(folders: Sequence[Folder]) -> None:
    """Refuse folders whose result-changing settings differ (the batch size may)."""
    if len(folders) < 2:
        return
    first = folders[0]
    for f in folders:
        if not f.settings:
            raise UserError(f"cannot merge {f.path}: it has no run.json, so its settings are unknown; "
                            f"analyze it on its own")
    for f in folders[1:]:
        keys = [k for k in RESULT_SETTINGS if k != "batch_size" and k in first.settings and k in f.settings]
        diff = differences(first.settings, f.settings, keys, sep="vs")
        if diff:
            raise UserError(f"cannot merge {first.path} and {f.path}: their run.json settings differ "
                            f"({'; '.join(diff)}); only the batch size may differ")


def final_test_accuracy(path: str) -> float:
    """test_accuracy of the last epoch row of a score CSV."""
    return float(layout.read_score_csv(path)[-1, layout.SCORE_COLUMNS.index("test_accuracy")])


def collect(out: str) -> Scores:
    """{method: {n_removed: {seed: final test accuracy}}} of one folder."""
    scores: Scores = {}
    for method, n, seed, path in layout.score_files(out):
        scores.setdefault(method, {}).setdefault(n, {})[seed] = final_test_accuracy(path)
    return scores


def merge_scores(parts: Sequence[Tuple[str, Scores]]) -> Scores:
    """Union over folders; the first folder's value wins, differing duplicates are named."""
    merged: Scores = {}
    for path, scores in parts:
        for method, by_n in scores.items():
            differ = 0
            for n, by_seed in by_n.items():
                dst = merged.setdefault(method, {}).setdefault(n, {})
                for seed, acc in by_seed.items():
                    if seed in dst:
                        differ += dst[seed] != acc
                    else:
                        dst[seed] = acc
            if differ:
                warn(f"{method}: {differ} score(s) in {path} differ from an earlier folder's; using the earlier")
    return merged


def merge_influence(parts: Sequence[Tuple[str, Influence]]) -> Influence:
    merged: Influence = {}
    for path, found in parts:
        for method, by_seed in found.items():
            dst = merged.setdefault(method, {})
            for seed, p in by_seed.items():
                if seed not in dst:
                    dst[seed] = p
                elif open(dst[seed], "rb").read() != open(p, "rb").read():
                    warn(f"{method} seed {seed}: {p} differs from {dst[seed]}; using the earlier")
    return merged


# ----------------------------------------------------------------------- summary
def summarize(scores: Scores, batch_size: Optional[int] = None) -> List[Row]:
    """Mean and sample standard deviation over trials per method and n, methods in plot order (methods.sort_key)."""
    rows = []
    for method in sorted(scores, key=sort_key):
        for n in sorted(scores[method]):
            acc = np.array([scores[method][n][s] for s in sorted(scores[method][n])])
            std = float(acc.std(ddof=1)) if len(acc) > 1 else 0.0
            rows.append(Row(batch_size, method, n, float(acc.mean()), std, len(acc)))
    return rows


def no_removal(scores: Scores) -> Optional[Tuple[float, float, int]]:
    """(mean, sample std, trials) of the n = 0 accuracy: per trial averaged over methods (identical
    within a folder, as n = 0 is one shared retraining), then over trials."""
    per_seed: Dict[int, List[float]] = {}
    for by_n in scores.values():
        for seed, acc in by_n.get(0, {}).items():
            per_seed.setdefault(seed, []).append(acc)
    if not per_seed:
        return None
    acc = np.array([np.mean(per_seed[s]) for s in sorted(per_seed)])
    return float(acc.mean()), float(acc.std(ddof=1)) if len(acc) > 1 else 0.0, len(acc)


def write_summary(path: str, rows: Sequence[Row]) -> None:
    lines = ["batch_size,method,n_removed,test_accuracy_mean,test_accuracy_std,n_trials"]
    lines += [f"{'' if b is None else b},{m},{n},{mean:.6f},{std:.6f},{k}" for b, m, n, mean, std, k in rows]
    layout.write_text(path, "\n".join(lines) + "\n")


# Two-sided 97.5% quantiles of Student's t by degrees of freedom (a 95% interval), 1..30; normal beyond.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def paired_differences(scores: Scores, control: str = CONTROL) -> List[dict]:
    """Per method and n > 0: the test accuracy minus the control's of the same trial, its mean,
    sample standard deviation and 95% t-interval over trials (none with one trial); `distinguishable`
    when the interval excludes 0."""
    rows = []
    for method in sorted(scores, key=sort_key):
        if method == control or control not in scores:
            continue
        for n in sorted(scores[method]):
            seeds = sorted(set(scores[method][n]) & set(scores[control].get(n, {})))
            if n == 0 or not seeds:
                continue
            d = np.array([scores[method][n][s] - scores[control][n][s] for s in seeds])
            row = {"method": method, "control": control, "n_removed": n, "n_trials": len(d),
                   "difference_mean": float(d.mean()), "difference_std": None, "ci95_low": None,
                   "ci95_high": None, "distinguishable": None}
            if len(d) > 1:
                sd = float(d.std(ddof=1))
                half = (T975[len(d) - 2] if len(d) - 1 <= len(T975) else 1.96) * sd / math.sqrt(len(d))
                row.update(difference_std=sd, ci95_low=float(d.mean() - half), ci95_high=float(d.mean() + half),
                           distinguishable=bool(d.mean() - half > 0 or d.mean() + half < 0))
            rows.append(row)
    return rows


def write_paired(path: str, rows: Sequence[dict]) -> None:
    cols = ["method", "control", "n_removed", "n_trials", "difference_mean", "difference_std", "ci95_low",
            "ci95_high", "distinguishable"]
    fmt = lambda v: "" if v is None else (f"{v:.6f}" if isinstance(v, float) else str(v))  # noqa: E731
    layout.write_text(path, "\n".join([",".join(cols)] + [",".join(fmt(r[c]) for c in cols) for r in rows]) + "\n")


# --------------------------------------------------------------------- agreement
def overlap(order_a: np.ndarray, order_b: np.ndarray, n: int) -> int:
    """Instances among the n most negative of both removal orders."""
    return len(np.intersect1d(order_a[:n], order_b[:n]))


def agreement_rows(influence: Influence, sizes: Sequence[int]) -> List[dict]:
    """Per trial and pair of scoring methods: rank correlations over all instances and the overlap of
    the n most negative (the instances each would remove) for each removal size 0 < n < N."""
    methods = sorted((m for m in influence if not is_control(m)), key=sort_key)
    rows = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            for seed in sorted(set(influence[a]) & set(influence[b])):
                fa, fb = layout.read_influence_csv(influence[a][seed]), layout.read_influence_csv(influence[b][seed])
                n_inst = len(fa["index"])
                if len(fb["index"]) != n_inst or not np.array_equal(np.sort(fa["index"]), np.sort(fb["index"])):
                    warn(f"{a} and {b} seed {seed} score different instances; agreement skipped")
                    continue
                va, vb = np.empty(n_inst), np.empty(n_inst)
                va[fa["index"]], vb[fb["index"]] = fa["influence"], fb["influence"]
                base = {"seed": seed, "method_a": a, "method_b": b, "n_instances": n_inst,
                        "spearman": spearman(va, vb), "kendall_tau_b": kendall_tau_b(va, vb),
                        "a": va, "b": vb}
                ns = [n for n in sorted(set(sizes)) if 0 < n < n_inst]
                for n in ns or [None]:
                    k = overlap(fa["index"], fb["index"], n) if n else None
                    rows.append(dict(base, n_removed=n, overlap=k, overlap_fraction=k / n if n else None,
                                     chance_overlap=n * n / n_inst if n else None))
    return rows


AGREEMENT_COLUMNS = ("seed", "method_a", "method_b", "n_instances", "spearman", "kendall_tau_b", "n_removed",
                     "overlap", "overlap_fraction", "chance_overlap")


def write_agreement(path: str, rows: Sequence[dict]) -> None:
    def fmt(v):
        return "" if v is None else f"{v:.6f}" if isinstance(v, float) else str(v)
    lines = [",".join(AGREEMENT_COLUMNS)] + [",".join(fmt(r[c]) for c in AGREEMENT_COLUMNS) for r in rows]
    layout.write_text(path, "\n".join(lines) + "\n")


# ------------------------------------------------------------------------ Table 1
def model_param_bytes(channels: int, n_classes: int = 10) -> Tuple[int, int]:
    """(parameter count, size of the nnabla .h5 checkpoint) of the paper's network at 32x32."""
    import nnabla as nn
    from models import cnn
    with nn.parameter_scope(f"_table1_{channels}"):
        nn.clear_parameters()
        cnn(nn.Variable((1, channels, 32, 32)), n_classes)
        params = nn.get_parameters(grad_only=False)
        count = int(sum(v.size for v in params.values()))
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "params.h5")
            nn.save_parameters(path, params=params, extension=".h5")
            h5 = os.path.getsize(path)
        nn.clear_parameters()
    return count, h5


def cache_bytes(param_bytes: int, steps_per_epoch: int, epochs: int) -> Dict[str, int]:
    """float32 bytes each method keeps: all epochs' per-step parameters, the last epoch's, the final."""
    return {"all": param_bytes * steps_per_epoch * epochs, "hara": param_bytes * steps_per_epoch,
            "ours": param_bytes}


def find_cache_size(folders: Sequence[Folder]) -> Optional[Tuple[Folder, dict]]:
    """The first cache_size.json that measured Hara's store, else the first at all (trials are alike)."""
    found = []
    for f in folders:
        for path in sorted(glob.glob(os.path.join(f.path, "train", "seed_*", "cache_size.json"))):
            with open(path) as fh:
                found.append((f, json.load(fh)))
    return next((x for x in found if "hara_bytes" in x[1]), found[0] if found else None)


def table1_rows(groups: Dict[Optional[int], List[Folder]], n_train: Dict[Optional[int], Optional[int]]) -> List[dict]:
    """This run's measured cache sizes (per batch size), then the paper-scale projection.

    Measured: Ours = the final .h5 checkpoint, Hara = the per-step float32 store of the last epoch;
    'all' = that store times the epochs (projected: only the last epoch is kept). Paper scale:
    float32 parameter count x 4 x T (x K), T = ceil(N / 32), K = 20; Ours also as the .h5 size.
    """
    rows = []
    for bs, folders in groups.items():
        found = find_cache_size(folders)
        if not found:
            continue
        folder, c = found
        epochs = folder.settings.get("n_epochs")
        n = n_train.get(bs)
        t = c.get("hara_steps") or (math.ceil(n / bs) if n and bs else None)
        pb = int(c["param_bytes_float32"])
        f32 = cache_bytes(pb, t, epochs) if t and epochs else {"ours": pb}
        hara = c.get("hara_bytes")  # absent when the run did not keep Hara's store
        saved = {"ours": c["ours_bytes"], "hara": hara, "all": hara * epochs if hara and epochs else None}
        for cache, _ in CACHES:
            rows.append({"scope": "this run", "dataset": folder.settings.get("dataset", ""), "n_train": n,
                         "batch_size": bs, "epochs": epochs, "steps_per_epoch": t, "param_count": c["param_count"],
                         "cache": cache, "float32_bytes": f32.get(cache), "saved_bytes": saved[cache],
                         "paper_bytes": None})
    for dataset, (n, channels, paper) in PAPER_TABLE1.items():
        count, h5 = model_param_bytes(channels)
        t = math.ceil(n / PAPER_BATCH)
        f32 = cache_bytes(4 * count, t, PAPER_EPOCHS)
        saved = dict(f32, ours=h5)  # Hara's store here is raw float32: exactly |theta| x T x 4 bytes
        for cache, _ in CACHES:
            rows.append({"scope": "paper scale", "dataset": dataset, "n_train": n, "batch_size": PAPER_BATCH,
                         "epochs": PAPER_EPOCHS, "steps_per_epoch": t, "param_count": count, "cache": cache,
                         "float32_bytes": f32[cache], "saved_bytes": saved[cache], "paper_bytes": paper[cache]})
    for r in rows:
        r["float32_vs_paper"] = r["float32_bytes"] / r["paper_bytes"] - 1 if r["paper_bytes"] else None
    return rows


TABLE1_COLUMNS = ("scope", "dataset", "n_train", "batch_size", "epochs", "steps_per_epoch", "param_count", "cache",
                  "float32_bytes", "saved_bytes", "paper_bytes", "float32_vs_paper")


def human(b: Optional[float]) -> str:
    """Decimal units, as the paper prints them."""
    if b is None:
        return "–"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:#.4g}".rstrip(".") + f" {unit}"  # 4 significant digits, trailing zeros kept
    return f"{b:.0f} B"


def write_table1(csv_path: str, md_path: str, rows: Sequence[dict]) -> None:
    def fmt(key, v):
        if v is None:
            return ""
        return f"{v:.6f}" if key == "float32_vs_paper" else f"{v:.0f}" if isinstance(v, float) else str(v)
    lines = [",".join(TABLE1_COLUMNS)] + [",".join(fmt(c, r[c]) for c in TABLE1_COLUMNS) for r in rows]
    layout.write_text(csv_path, "\n".join(lines) + "\n")

    cols = {}  # column title -> {cache: cell}
    for r in rows:
        if r["scope"] == "this run":
            title = (f"this run ({r['dataset']}, N={r['n_train'] or '?'}, B={r['batch_size']}, "
                     f"K={r['epochs']}, T={r['steps_per_epoch']}), measured")
            cell = human(r["saved_bytes"]) if r["saved_bytes"] is not None else human(r["float32_bytes"])
            if r["cache"] == "ours":
                cell = f"{human(r['float32_bytes'])} float32; .h5 {human(r['saved_bytes'])}"
            elif r["cache"] == "all" and r["saved_bytes"] is not None:
                cell += " (projected ×K)"
            cols.setdefault(title, {})[r["cache"]] = cell
        else:
            name = {"mnist": "MNIST", "cifar10": "CIFAR-10"}[r["dataset"]]
            title = f"{name} (N={r['n_train']:,}, B={r['batch_size']}, K={r['epochs']}, T={r['steps_per_epoch']:,})"
            cell = f"{human(r['float32_bytes'])} ({r['float32_vs_paper']:+.2%})"
            if r["cache"] == "ours":
                cell += f"; .h5 {human(r['saved_bytes'])}"
            cols.setdefault(title + ", projected", {})[r["cache"]] = cell
            cols.setdefault(f"{name}, paper", {})[r["cache"]] = human(r["paper_bytes"])
    md = ["| cache | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    md += [f"| {label} | " + " | ".join(c.get(cache, "–") for c in cols.values()) + " |" for cache, label in CACHES]
    md += ["", "θ: parameters as float32 (count × 4 bytes); T: steps per epoch = ⌈N/B⌉; K: epochs. "
           "Percentages: projection vs the paper's Table 1. MB/GB are 10^6/10^9 bytes."]
    layout.write_text(md_path, "\n".join(md) + "\n")


# ------------------------------------------------------------------------ figures
def color(method: str):
    import matplotlib
    rank, _ = sort_key(method)
    k = rank if rank < N_RANKED else N_RANKED + sum(map(ord, method)) % 6  # the others: a stable colour each
    return matplotlib.colormaps["tab10"](k % 10)


def save(fig, path: str) -> None:
    figures.save(fig, path, dpi=100)


def accuracy_panel(ax, rows: Sequence[Row], base, errorbars: bool, title: str) -> None:
    """Test accuracy vs number removed (log x) per method, the No Removal accuracy as a line."""
    if base:
        mean, std, _ = base
        ax.axhline(mean, color="gray", ls="--", label="No Removal")
        if errorbars and std > 0:
            ax.axhspan(mean - std, mean + std, color="gray", alpha=0.15)
    for method in dict.fromkeys(r.method for r in rows):
        rs = [r for r in rows if r.method == method and r.n_removed > 0]
        if rs:
            ax.errorbar([r.n_removed for r in rs], [r.mean for r in rs],
                        yerr=[r.std for r in rs] if errorbars else None, marker="o", ms=4, capsize=3,
                        color=color(method), label=method)
    ns = sorted({r.n_removed for r in rows if r.n_removed > 0})
    if ns:  # log x with the removal sizes themselves as ticks
        import matplotlib.ticker as mticker
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(mticker.NullLocator())
        ax.set_xticks(ns)
        ax.set_xticklabels([str(n) for n in ns], rotation=45 if len(ns) > 6 else 0, fontsize=8)
    ax.set_xlabel("number of instances removed")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def trials_text(rows: Sequence[Row]) -> str:
    k = sorted({r.n_trials for r in rows})
    return f"{k[0]} trial{'s' if k[0] > 1 else ''}" if len(k) == 1 else f"{k[0]}-{k[-1]} trials"


def plot_result(rows: Sequence[Row], base, path: str, errorbars: bool, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    accuracy_panel(ax, rows, base, errorbars, title + (", ±1 std over trials" if errorbars else ", mean over trials"))
    fig.tight_layout()
    save(fig, path)


def plot_batch_sizes(by_bs: Dict[int, Tuple[List[Row], tuple]], path: str, dataset: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(by_bs), figsize=(4.2 * len(by_bs), 3.8), sharey=True, squeeze=False)
    for ax, bs in zip(axes[0], sorted(by_bs)):
        rows, base = by_bs[bs]
        accuracy_panel(ax, rows, base, True, f"{dataset} batch size {bs} ({trials_text(rows)})")
    fig.tight_layout()
    save(fig, path)


def plot_agreement(rows: Sequence[dict], path: str, seed: int) -> None:
    pairs = list(dict.fromkeys((r["method_a"], r["method_b"]) for r in rows))
    plt = pyplot()
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 4), squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs):
        r = next(r for r in rows if (r["method_a"], r["method_b"]) == (a, b))
        ax.scatter(r["a"], r["b"], s=4, alpha=0.4, color=color(b), rasterized=True)
        ax.axhline(0, color="gray", lw=0.5)
        ax.axvline(0, color="gray", lw=0.5)
        ax.set_xlabel(f"{a} influence")
        ax.set_ylabel(f"{b} influence")
        ax.set_title(f"{a} vs {b}, seed {seed} ({r['n_instances']} instances)\n"
                     f"Spearman {r['spearman']:.3f}, Kendall tau-b {r['kendall_tau_b']:.3f}", fontsize=9)
        ax.ticklabel_format(style="sci", scilimits=(-2, 3))
    fig.tight_layout()
    save(fig, path)


def mosaic(images: np.ndarray, cols: int, gap_x: int, gap_y: int) -> np.ndarray:
    """uint8 NCHW images -> one HWC uint8 picture, `cols` per row, white gaps (gap_y below each row)."""
    n, c, h, w = images.shape
    rows = max(1, math.ceil(n / cols))
    out = np.full((rows * (h + gap_y), cols * (w + gap_x) - gap_x, c), 255, np.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        out[r * (h + gap_y):r * (h + gap_y) + h, q * (w + gap_x):q * (w + gap_x) + w] = images[k].transpose(1, 2, 0)
    return out


def plot_grid(images: np.ndarray, labels: np.ndarray, values: np.ndarray, path: str, title: str,
              class_names: Sequence[str] = ()) -> None:
    """Up to 32 images (uint8 NCHW) in rows of 8, each captioned with label (its class
    name when known) and influence.

    One picture in one axes (32 small axes take seconds to lay out)."""
    plt = pyplot()
    cols, (h, w) = 8, images.shape[2:]
    gx, gy = max(2, w // 8), int(h * 0.6)
    m = mosaic(images, cols, gx, gy)
    rows = m.shape[0] // (h + gy)
    fig = plt.figure(figsize=(cols * 1.0, rows * 1.3 + 0.35))
    ax = fig.add_axes((0.005, 0.005, 0.99, 1 - 0.4 / (rows * 1.3 + 0.35)))
    ax.imshow(m[..., 0] if m.shape[2] == 1 else m, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    for k in range(len(images)):
        r, q = divmod(k, cols)
        y = int(labels[k])
        name = class_names[y] if y < len(class_names) else f"y={y}"
        ax.text(q * (w + gx) + w / 2, r * (h + gy) + h + 1, f"{name}  {values[k]:.2e}",
                ha="center", va="top", fontsize=6.5)
    ax.axis("off")
    fig.suptitle(title, fontsize=9, y=0.995, va="top")
    save(fig, path)


def load_train_images(folder: Folder, seed: int):
    """The run's training split for `seed`, loaded exactly as the drivers load it."""
    return data_for(args_from_settings(folder.settings), seed).train


def write_grids(influence: Influence, source: Dict[str, Folder], fig_dir: str) -> List[str]:
    """harmful_/helpful_<method>_seed<k>.png for every scoring method and trial."""
    written = []
    for method in sorted((m for m in influence if not is_control(m)), key=sort_key):
        for seed, path in sorted(influence[method].items()):
            try:
                train = load_train_images(source[method], seed)
            except (UserError, OSError, AttributeError, TypeError) as e:
                warn(f"image grids skipped: cannot load the training data of {source[method].path} ({e})")
                return written
            f = layout.read_influence_csv(path)
            if len(f["index"]) and (f["index"].max() >= len(train)
                                    or not np.array_equal(train.ids[f["index"]], f["ids"])
                                    or not np.array_equal(train.y[f["index"]], f["labels"])):
                warn(f"image grids skipped: {path} does not match the data its run.json settings load "
                     f"(ids or labels differ)")
                return written
            k = min(GRID, len(f["index"]))
            for kind, pick in (("harmful", np.arange(k)), ("helpful", np.arange(len(f["index"]))[::-1][:k])):
                out = os.path.join(fig_dir, f"{kind}_{method}_seed{seed}.png")
                idx = f["index"][pick]
                which = "most negative: removal lowers the validation loss" if kind == "harmful" \
                    else "most positive: removal raises the validation loss"
                plot_grid(train.x[idx], f["labels"][pick], f["influence"][pick], out,
                          f"{method}, seed {seed}: the {k} {which}",
                          CLASS_NAMES.get(source[method].settings.get("dataset"), ()))
                written.append(out)
    return written


# ------------------------------------------------------------------------ driver
@dataclass
class Inputs:
    """The folders to analyse, grouped by batch size, with their results merged per group."""
    runs: List[Folder]
    groups: Dict[Optional[int], List[Folder]]  # batch size -> folders
    scores: Dict[Optional[int], Scores]  # batch size -> merged scores
    influence: Influence  # the first folder's batch size, merged
    source: Dict[str, Folder]  # method -> the first folder holding its influence files
    n_train: Dict[Optional[int], Optional[int]]  # batch size -> training-set size

    @property
    def primary(self) -> Optional[int]:
        return self.runs[0].batch_size


def gather(paths: Sequence[str]) -> Inputs:
    runs = [read_folder(p) for p in paths]
    check_mergeable(runs)
    groups: Dict[Optional[int], List[Folder]] = {}
    for r in runs:
        groups.setdefault(r.batch_size, []).append(r)
    scores = {bs: merge_scores([(f.path, collect(f.path)) for f in fs]) for bs, fs in groups.items()}
    found = {bs: [(f, layout.influence_files(f.path)) for f in fs] for bs, fs in groups.items()}
    primary = runs[0].batch_size
    source: Dict[str, Folder] = {}
    for f, inf in found[primary]:
        for m in inf:
            source.setdefault(m, f)
    n_train = {}  # the length of an influence file, else the --n-train setting
    for bs, pairs in found.items():
        files = [p for _, inf in pairs for by_seed in inf.values() for p in by_seed.values()]
        n_train[bs] = len(layout.read_removal_order(files[0])) if files else groups[bs][0].settings.get("n_train")
    inputs = Inputs(runs, groups, scores, merge_influence([(f.path, inf) for f, inf in found[primary]]), source,
                    n_train)
    if not any(scores.values()) and not inputs.influence:
        raise UserError(f"no score or influence files under {', '.join(paths)}; run a driver first")
    return inputs


def accuracy_outputs(inp: Inputs, out: str) -> Tuple[List[Row], List[str]]:
    """summary.csv for every batch size; Figs. 2 and 4 for the first folder's; Fig. 5 across batch sizes."""
    order = sorted(inp.scores, key=lambda b: (b != inp.primary, b or 0))
    rows = [row for bs in order for row in summarize(inp.scores[bs], bs)]
    if not rows:
        return rows, []
    write_summary(os.path.join(out, "summary", "summary.csv"), rows)
    dataset = inp.runs[0].settings.get("dataset", "")
    prow, base = [r for r in rows if r.batch_size == inp.primary], no_removal(inp.scores[inp.primary])
    title = f"{dataset} batch size {inp.primary} ({trials_text(prow)})" if inp.primary else os.path.basename(out)
    plot_result(prow, base, os.path.join(out, "fig", "result.png"), False, title)
    plot_result(prow, base, os.path.join(out, "fig", "result_errorbars.png"), True, title)
    written = ["summary/summary.csv", "fig/result.png", "fig/result_errorbars.png"]
    paired = paired_differences(inp.scores[inp.primary])
    if paired:
        write_paired(os.path.join(out, "summary", "paired_vs_random.csv"), paired)
        written.append("summary/paired_vs_random.csv")
    sizes = [bs for bs in order if bs is not None and inp.scores[bs]]
    if len(sizes) > 1:
        panels = {bs: ([r for r in rows if r.batch_size == bs], no_removal(inp.scores[bs])) for bs in sizes}
        plot_batch_sizes(panels, os.path.join(out, "fig", "batch_size.png"), dataset)
        written.append("fig/batch_size.png")
    return rows, written


def removal_sizes(inp: Inputs) -> List[int]:
    """The removal sizes of the first folder's batch size: scored ones and the run(s)' -r."""
    sizes = {n for by_n in inp.scores[inp.primary].values() for n in by_n}
    for f in inp.groups[inp.primary]:
        sizes |= set(f.settings.get("remove_n_list", []))
    return sorted(sizes)


def agreement_outputs(inp: Inputs, out: str) -> Tuple[List[dict], List[str]]:
    """agreement.csv and one scatter figure per trial, for the removal sizes of the run(s)."""
    agree = agreement_rows(inp.influence, removal_sizes(inp))
    if not agree:
        return agree, []
    write_agreement(os.path.join(out, "summary", "agreement.csv"), agree)
    written = ["summary/agreement.csv"]
    for seed in sorted({r["seed"] for r in agree}):
        plot_agreement([r for r in agree if r["seed"] == seed], os.path.join(out, "fig", f"agreement_seed{seed}.png"),
                       seed)
        written.append(f"fig/agreement_seed{seed}.png")
    return agree, written


def analyze(folders: Sequence[str] | str, out: Optional[str] = None, skipped: Sequence[int] = (),
            images: bool = True) -> List[Row]:
    """Write the summary, Table 1, agreement and figures of `folders` under `out` (default: folders[0])."""
    paths = [folders] if isinstance(folders, str) else list(folders)
    inp = gather(paths)
    out = out or paths[0]
    rows, written = accuracy_outputs(inp, out)
    if skipped:
        layout.write_text(os.path.join(out, "summary", "skipped.txt"),
                      "removal sizes skipped (>= training set size): " + " ".join(map(str, skipped)) + "\n")
    agree, files = agreement_outputs(inp, out)
    written += files
    write_table1(os.path.join(out, "summary", "table1_cache.csv"), os.path.join(out, "summary", "table1_cache.md"),
                 table1_rows(inp.groups, inp.n_train))
    written += ["summary/table1_cache.csv", "summary/table1_cache.md"]
    if os.path.isdir(os.path.join(paths[0], "noise")):  # --label-noise: how well each order finds flipped labels
        from .noise import write_noise_detection
        written += write_noise_detection(out, {m: inp.influence[m] for m in sorted(inp.influence, key=sort_key)},
                                         paths[0], [n for n in removal_sizes(inp) if n > 0])
    if images:
        written += [os.path.relpath(p, out) for p in write_grids(inp.influence, inp.source, os.path.join(out, "fig"))]
    if len(paths) > 1 or os.path.abspath(out) != os.path.abspath(paths[0]):  # a merge: record its inputs
        layout.write_json(os.path.join(out, "summary", "inputs.json"),
                      {"folders": [os.path.abspath(p) for p in paths],
                       "batch_sizes": {os.path.abspath(f.path): f.batch_size for f in inp.runs}})
        written.append("summary/inputs.json")
    report(rows, agree, out, written)
    return rows


def report(rows: Sequence[Row], agree: Sequence[dict], out: str, written: Sequence[str]) -> None:
    if rows:
        print("batch  method               n_removed  test_accuracy (mean ± std, trials)")
        for r in rows:
            print(f"{'' if r.batch_size is None else r.batch_size:>5}  {r.method:<20} {r.n_removed:>9}  "
                  f"{r.mean:.4f} ± {r.std:.4f} ({r.n_trials})")
    if agree:
        print("agreement (mean over trials): pair, Spearman, Kendall tau-b")
        for a, b in dict.fromkeys((r["method_a"], r["method_b"]) for r in agree):
            rs = {r["seed"]: r for r in agree if (r["method_a"], r["method_b"]) == (a, b)}.values()
            print(f"  {a} vs {b}: {np.mean([r['spearman'] for r in rs]):.3f}, "
                  f"{np.mean([r['kendall_tau_b'] for r in rs]):.3f}")
    print(f"wrote {len(written)} files under {out}: " + ", ".join(written[:6]) + (" ..." if len(written) > 6 else ""))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Summary, the paper's Table 1 and figures, method agreement and the most harmful/helpful "
                    "instances, from one or more output folders (merged when their settings match).")
    p.add_argument("folders", nargs="+", metavar="OUT",
                   help="output folders of eval_sgd_influence.py / eval_influence_functions.py")
    p.add_argument("--out", default=None, help="where summary/ and fig/ are written (default: the first OUT)")
    p.add_argument("--no-images", action="store_true",
                   help="skip the harmful/helpful image grids (they load the dataset)")
    p.add_argument("--export-clean", nargs=2, metavar=("METHOD", "N"), default=None,
                   help="instead: write OUT/export/METHOD_without_N_seedK/train.csv, an NNC dataset CSV of the "
                        "training split without the N most harmful instances by METHOD, and removed.csv "
                        "(docs/own_network.md)")
    p.add_argument("--seed", type=int, default=0, help="the trial --export-clean exports")
    args = p.parse_args(argv)
    if args.export_clean:
        return run_command(lambda: export_clean_main(args))
    try:
        analyze(args.folders, out=args.out, images=not args.no_images)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def export_clean_main(args: argparse.Namespace) -> None:
    """--export-clean: one run folder; prints where the CSVs went."""
    if len(args.folders) != 1 or args.out:
        raise UserError("--export-clean takes one output folder and no --out")
    print(f"wrote {export_clean(args.folders[0], args.export_clean[0], args.export_clean[1], args.seed)}"
          f"/train.csv and removed.csv")


if __name__ == "__main__":
    sys.exit(main())
