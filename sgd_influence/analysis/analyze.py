"""Phase 4: the paper's table and figures, and a look at what gets removed.

Usage: python -m sgd_influence.analyze OUT [OUT2 ...] [--out DIR] [--no-images]
       python -m sgd_influence.analyze OUT --export-clean METHOD N [--seed K]

Reads the score, influence and cache-size files of one or more output folders
(e.g. an eval_sgd_influence.py folder and an eval_influence_functions.py
folder of the same data and settings) and writes, under DIR (default: the
first OUT):

  summary/summary.csv        batch_size,method,n_removed,test_accuracy and test_loss mean/std (ddof=1, 0 for
                             one trial),n_trials
  summary/paired_vs_random.csv  per metric (test accuracy, test loss), method and n: the value minus Random's
                             of the same trial, mean, std and 95% t-interval over trials, its half-width,
                             the trials a half-width of 0.005 (half a point of accuracy) would need at
                             that std, whether it excludes 0, and the verdict (up, down, undecided);
                             n = 5% of the training set is the primary comparison (analyze prints it)
  summary/verdict.md         the same as one Markdown table per n, and the verdict lines analyze prints
  summary/control_orders.csv with --random-orders R > 1: the spread of method - Random over trials against
                             one order and against the mean of the R, and the spread between orders
  summary/table1_cache.csv   the paper's Table 1: cache of all epochs' parameters (theta x T x K),
  summary/table1_cache.md      Hara (theta x T), Ours (theta) and Replay (2 theta + the last epoch's record,
                             with its compute vs Hara's), measured here and projected to paper scale
  summary/agreement.csv      per trial and pair of scoring methods: Spearman, Kendall tau-b, overlap of
                             the n most negative for every removal size n
  summary/inputs.json        the folders analysed (only when merging or given --out)
  fig/result.png             Fig. 2: mean test accuracy vs number removed, No Removal line
  fig/result_errorbars.png   Fig. 4: the same with +-1 sample standard deviation over trials
  fig/batch_size.png         Fig. 5: one panel per batch size (only given folders of several -bs)
  fig/agreement_seed<k>.png  influence of one method against another, one panel per pair
  fig/harmful_<method>_seed<k>.png  the 32 most negative instances (image, label, influence)
  fig/helpful_<method>_seed<k>.png  the 32 most positive
  summary/harmful_<method>_seed<k>.csv, helpful_...  instead of the grids for inputs that are not
                             images (vectors): their rows of the user's CSV, with influence and rank

Random with several removal orders per trial (--random-orders): its value in a trial is the mean
over its orders. Folders are merged only if every result-changing setting of their run.json
files is equal (one a run predates at its value then), except the batch size (Fig. 5 compares
batch sizes).
Everything but summary.csv and batch_size.png describes the first folder's
batch size. A (method, n, trial) result present in several folders is taken
from the first (a warning names any that differ).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..base import layout
from ..base.errors import UserError, run_command, warn
from .export import export_clean
from ..base.figures import plot_agreement, plot_batch_sizes, plot_result, trials_text
from .grids import write_grids
from ..base.layout import Folder, read_folder
from ..base.methods import CONTROL, METHODS, is_control, sort_key
from ..base.metrics import holm, kendall_tau_b, paired_t_p, spearman, t975, t_interval
from ..config.noise import write_noise_detection
from ..config.settings import RESULT_SETTINGS, args_from_settings, differences
from .table1 import table1_rows, write_table1


class Row(NamedTuple):
    """One line of summary.csv: test accuracy (mean, std) and test loss (loss_mean, loss_std) over trials."""
    batch_size: Optional[int]
    method: str
    n_removed: int
    mean: float
    std: float  # sample standard deviation over trials (ddof=1), 0 for one trial
    n_trials: int
    loss_mean: float = float("nan")
    loss_std: float = float("nan")


Scores = Dict[str, Dict[int, Dict[int, float]]]  # method -> n removed -> seed -> final test accuracy (or loss)
# The metrics of the paired comparison: a score CSV column, and the half-width whose trials are estimated
# (half a point of accuracy; None: not estimated).
METRICS = {"test_accuracy": 0.005, "test_loss": None}
PRIMARY_FRACTION = 0.05  # the primary comparison: n = 5% of the training set, named before the runs (issue 33)
Influence = Dict[str, Dict[int, str]]  # method -> seed -> influence CSV path


# ----------------------------------------------------------------------- reading
def check_mergeable(folders: Sequence[Folder]) -> None:
    """Refuse folders whose result-changing settings differ (the batch size may); an option a folder's
    run.json predates counts at the value it had then (settings.args_from_settings), as when a run resumes."""
    if len(folders) < 2:
        return
    first = folders[0]
    for f in folders:
        if not f.settings:
            raise UserError(f"cannot merge {f.path}: it has no run.json, so its settings are unknown; "
                            f"analyze it on its own")
    keys = [k for k in RESULT_SETTINGS if k != "batch_size"]
    base = vars(args_from_settings(first.settings))  # settings a run predates count at their values then
    for f in folders[1:]:
        diff = differences(base, vars(args_from_settings(f.settings)), keys, sep="vs")
        if diff:
            raise UserError(f"cannot merge {first.path} and {f.path}: their run.json settings differ "
                            f"({'; '.join(diff)}); only the batch size may differ")


def final_score(path: str, column: str = "test_accuracy") -> float:
    """`column` of the last epoch row of a score CSV."""
    return float(layout.read_score_csv(path)[-1, layout.SCORE_COLUMNS.index(column)])


def collect(out: str, column: str = "test_accuracy", order: Optional[int] = None) -> Scores:
    """{method: {n_removed: {seed: the last epoch's `column`}}} of one folder. A control with several
    removal orders in a trial (--random-orders): the mean over its orders, or with `order` that order alone."""
    per: Dict[str, Dict[int, Dict[int, List[float]]]] = {}
    for method, n, seed, r, path in layout.score_files(out):
        if order is None or r == order:
            per.setdefault(method, {}).setdefault(n, {}).setdefault(seed, []).append(final_score(path, column))
    return {m: {n: {s: float(np.mean(v)) for s, v in by_s.items()} for n, by_s in by_n.items()}
            for m, by_n in per.items()}


def order_counts(out: str) -> Dict[str, Dict[int, Dict[int, int]]]:
    """{method: {n_removed: {seed: how many removal orders were retrained}}} of one folder."""
    counts: Dict[str, Dict[int, Dict[int, int]]] = {}
    for method, n, seed, _, _ in layout.score_files(out):
        by_s = counts.setdefault(method, {}).setdefault(n, {})
        by_s[seed] = by_s.get(seed, 0) + 1
    return counts


def merge_scores(parts: Sequence[Tuple[str, Scores]], quiet: bool = False) -> Scores:
    """Union over folders; the first folder's value wins, differing duplicates are named (unless `quiet`:
    the test accuracies' merge names them)."""
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
            if differ and not quiet:
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
def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value)."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summarize(scores: Scores, batch_size: Optional[int] = None, loss: Optional[Scores] = None) -> List[Row]:
    """Mean and sample standard deviation over trials per method and n of the test accuracy (and of the
    test loss, given `loss`), methods in plot order (methods.sort_key)."""
    rows = []
    for method in sorted(scores, key=sort_key):
        for n in sorted(scores[method]):
            seeds = sorted(scores[method][n])
            mean, std = mean_std([scores[method][n][s] for s in seeds])
            lm, ls = (mean_std([loss[method][n][s] for s in seeds]) if loss and method in loss and n in loss[method]
                      else (float("nan"), float("nan")))
            rows.append(Row(batch_size, method, n, mean, std, len(seeds), lm, ls))
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
    lines = ["batch_size,method,n_removed,test_accuracy_mean,test_accuracy_std,n_trials,test_loss_mean,test_loss_std"]
    lines += [f"{'' if r.batch_size is None else r.batch_size},{r.method},{r.n_removed},{r.mean:.6f},{r.std:.6f},"
              f"{r.n_trials},{r.loss_mean:.6f},{r.loss_std:.6f}" for r in rows]
    layout.write_text(path, "\n".join(lines) + "\n")


def trials_needed(sd: float, half_width: float) -> int:
    """The fewest trials N >= 2 whose 95% t-interval of a mean has half-width t_{.975, N-1} sd / sqrt(N)
    <= `half_width`, at the sample standard deviation `sd` (a planning figure: sd is itself estimated)."""
    n = 2
    while t975(n - 1) * sd / math.sqrt(n) > half_width:
        n += 1
    return n


def primary_n(n_train: Optional[int]) -> Optional[int]:
    """The primary comparison's removal size: PRIMARY_FRACTION of the training set."""
    return int(round(PRIMARY_FRACTION * n_train)) if n_train else None


# The fewest trials a verdict rests on (a claim that one method beats another rests on three or more).
MIN_VERDICT_TRIALS = 3


def paired_differences(scores: Scores, control: str = CONTROL, metric: str = "test_accuracy",
                       control_orders: Optional[Dict[int, Dict[int, int]]] = None,
                       primary: Optional[int] = None) -> List[dict]:
    """Per method and n > 0: the metric minus the control's of the same trial, its mean, sample standard
    deviation and 95% t-interval over trials (none with one trial), the interval's half-width, the trials
    a half-width of METRICS[metric] would take at that sd (at least MIN_VERDICT_TRIALS), `distinguishable` when
    the interval excludes 0, and the verdict: "up" (above the control), "down", or "undecided" (always with fewer
    than MIN_VERDICT_TRIALS trials); `p_value`, the paired t-test's two-sided p, and `p_holm` (with_holm).
    `control_orders` ({n: {seed: count}}): the control's removal orders per trial, reported as their mean;
    `primary`: the primary comparison's n. The family of Holm's adjustment: these rows."""
    return with_holm(_paired_rows(scores, control, metric, control_orders, primary))


def _paired_rows(scores: Scores, control: str, metric: str, control_orders: Optional[Dict[int, Dict[int, int]]],
                 primary: Optional[int]) -> List[dict]:
    """paired_differences' rows before Holm's adjustment (`p_holm` None)."""
    rows = []
    target = METRICS.get(metric)
    for method in sorted(scores, key=sort_key):
        if method == control or control not in scores:
            continue
        for n in sorted(scores[method]):
            seeds = sorted(set(scores[method][n]) & set(scores[control].get(n, {})))
            if n == 0 or not seeds:
                continue
            d = np.array([scores[method][n][s] - scores[control][n][s] for s in seeds])
            counts = (control_orders or {}).get(n, {})
            row = {"metric": metric, "method": method, "control": control, "n_removed": n, "primary": n == primary,
                   "n_trials": len(d), "control_orders": float(np.mean([counts.get(s, 1) for s in seeds])),
                   "difference_mean": float(d.mean()), "difference_std": None, "ci95_low": None, "ci95_high": None,
                   "ci95_half_width": None, "trials_needed": None, "distinguishable": None, "verdict": "undecided",
                   "p_value": paired_t_p(d), "p_holm": None}
            if len(d) > 1:
                _, sd, lo, hi = t_interval(d)
                row.update(difference_std=sd, ci95_low=lo, ci95_high=hi, ci95_half_width=(hi - lo) / 2,
                           distinguishable=bool(lo > 0 or hi < 0))
                if len(d) >= MIN_VERDICT_TRIALS:  # two equal differences give a zero-width interval, not a verdict
                    row["verdict"] = "up" if lo > 0 else "down" if hi < 0 else "undecided"
                if target is not None:
                    row["trials_needed"] = max(trials_needed(sd, target), MIN_VERDICT_TRIALS)
            rows.append(row)
    return rows


def with_holm(rows: List[dict]) -> List[dict]:
    """Sets each row's `p_holm`: Holm's adjustment of `p_value` over the secondary comparisons of its metric
    (every row but the primary; a family of m rows of which some exclude 0 by chance), and the primary's own
    p (named before the runs, a family of one). Returns `rows`."""
    for metric in {r["metric"] for r in rows}:
        family = [r for r in rows if r["metric"] == metric and not r["primary"]]
        for r, adjusted in zip(family, holm([r["p_value"] for r in family])):
            r["p_holm"] = adjusted
    for r in rows:
        if r["primary"]:
            r["p_holm"] = r["p_value"]
    return rows


def published_vs_corrected(scores: Scores, metric: str, primary: Optional[int]) -> List[dict]:
    """Each published method minus its corrected twin (Hara_published - Hara, ...) of the same trial and n, as
    paired_differences does it against the control (the twin in the `control` column); Holm's family: all
    of these rows of a metric."""
    rows = []
    for method in sorted(scores, key=sort_key):
        twin = METHODS[method].twin if method in METHODS else None
        if twin in scores:
            rows += _paired_rows({method: scores[method], twin: scores[twin]}, twin, metric, None, primary)
    return with_holm(rows)


PAIRED_COLUMNS = ("metric", "method", "control", "n_removed", "primary", "n_trials", "control_orders",
                  "difference_mean", "difference_std", "ci95_low", "ci95_high", "ci95_half_width", "trials_needed",
                  "distinguishable", "verdict", "p_value", "p_holm")


def write_rows(path: str, columns: Sequence[str], rows: Sequence[dict]) -> None:
    """A CSV of `rows` (dicts) with `columns`: floats to 6 decimals, None empty."""
    fmt = lambda v: "" if v is None else (f"{v:.6f}" if isinstance(v, float) else str(v))  # noqa: E731
    layout.write_text(path, "\n".join([",".join(columns)] + [",".join(fmt(r[c]) for c in columns) for r in rows])
                      + "\n")


def write_paired(path: str, rows: Sequence[dict]) -> None:
    write_rows(path, PAIRED_COLUMNS, rows)


def verdict_lines(rows: Sequence[dict], primary: Optional[int]) -> List[str]:
    """The test-accuracy verdict per method and n, the primary comparison first with its paired t-test's p;
    then the secondary ones with Holm's adjusted p over them, and how many of their intervals would exclude 0
    by chance alone. A verdict is the interval's; a secondary one whose Holm p is 0.05 or more says so."""
    acc = [r for r in rows if r["metric"] == "test_accuracy"]
    if not acc:
        return []

    def line(r):
        text = f"  {r['method']} - {r['control']}, n = {r['n_removed']}{' (primary)' if r['primary'] else ''}: "
        if r["ci95_low"] is None:
            return text + f"{r['difference_mean']:+.4f}, one trial: no interval"
        body = (f"{r['difference_mean']:+.4f} [{r['ci95_low']:+.4f}, {r['ci95_high']:+.4f}] over "
                f"{r['n_trials']} trials")
        p = r["p_holm"] if not r["primary"] else r["p_value"]
        p_text = "" if p is None else f"; {'p' if r['primary'] else 'Holm p'} = {p:.2g}"
        if r["verdict"] != "undecided":
            caveat = " (not after Holm)" if not r["primary"] and p is not None and p >= 0.05 else ""
            return text + f"decided {r['verdict']}{caveat}: {body}{p_text}"
        return (text + f"undecided: {body}{p_text}; about {r['trials_needed']} trials for "
                       f"+-{METRICS['test_accuracy']:g}")
    first = [r for r in acc if r["primary"]]
    out = [f"verdict (test accuracy minus {acc[0]['control']} of the same trial, 95% t-interval; primary: "
           + (f"n = {primary} = {PRIMARY_FRACTION:.0%} of the training set)" if first
              else f"n = {primary} = {PRIMARY_FRACTION:.0%} of the training set, not among the removal sizes)")]
    out += [line(r) for r in first]
    rest = [r for r in acc if not r["primary"]]
    if rest:
        out.append(f"  secondary ({len(rest)} intervals; at 95% about {0.05 * len(rest):.1f} of them exclude 0 by "
                   f"chance alone; Holm's adjusted p over the {len(rest)} keeps that chance at 5% for all together):")
        out += ["  " + line(r) for r in rest]
    return out


def verdict_markdown(rows: Sequence[Row], paired: Sequence[dict], verdict: Sequence[str]) -> str:
    """summary/verdict.md: per n, each method's test accuracy and loss (mean ± sd over trials) and its paired
    difference from the control with the 95% interval and the trials a half-width of 0.005 would need; then
    the verdict lines."""
    diff = {(r["metric"], r["method"], r["n_removed"]): r for r in paired}

    def interval(r):
        if r is None:
            return ""
        if r["ci95_low"] is None:
            return f"{r['difference_mean']:+.4f}"
        return f"{r['difference_mean']:+.4f} [{r['ci95_low']:+.4f}, {r['ci95_high']:+.4f}]"
    lines = ["| n removed | method | trials | test accuracy | test loss | accuracy − control [95%] | "
             "loss − control [95%] | trials for ±0.005 |", "|---:|---|---:|---:|---:|---|---|---:|"]
    for n in sorted({r.n_removed for r in rows}):
        for r in (r for r in rows if r.n_removed == n):
            acc, loss = diff.get(("test_accuracy", r.method, n)), diff.get(("test_loss", r.method, n))
            needed = "" if acc is None or acc["trials_needed"] is None else str(acc["trials_needed"])
            star = " (primary)" if acc is not None and acc["primary"] else ""
            lines.append(f"| {n}{star} | {r.method} | {r.n_trials} | {r.mean:.4f} ± {r.std:.4f} | "
                         f"{r.loss_mean:.4f} ± {r.loss_std:.4f} | {interval(acc)} | {interval(loss)} | {needed} |")
    return "\n".join(lines) + "\n\n```\n" + "\n".join(verdict) + "\n```\n"


def control_order_rows(first: Scores, mean: Scores, counts: Dict[str, Dict[int, Dict[int, int]]],
                       control: str = CONTROL) -> List[dict]:
    """--random-orders: per method and n, the sample sd over trials of method - control against the
    control's first order alone and against the mean of its orders; for the control itself, the sd over
    trials of its accuracy both ways and the mean within-trial sd between its orders."""
    rows = []
    if control not in mean or not any(c > 1 for by_s in counts.get(control, {}).values() for c in by_s.values()):
        return rows
    for method in sorted(mean, key=sort_key):
        for n in sorted(mean[method]):
            seeds = sorted(set(mean[method][n]) & set(mean[control].get(n, {})) & set(first[control].get(n, {})))
            if n == 0 or len(seeds) < 2:
                continue
            k = [counts[control][n][s] for s in seeds]
            if method == control:
                one = [first[control][n][s] for s in seeds]
                avg = [mean[control][n][s] for s in seeds]
            else:
                one = [mean[method][n][s] - first[control][n][s] for s in seeds]
                avg = [mean[method][n][s] - mean[control][n][s] for s in seeds]
            sd_one, sd_avg = float(np.std(one, ddof=1)), float(np.std(avg, ddof=1))
            rows.append({"method": method, "n_removed": n, "n_trials": len(seeds), "control_orders": float(np.mean(k)),
                         "sd_one_order": sd_one, "sd_mean_of_orders": sd_avg,
                         "ratio": sd_avg / sd_one if sd_one > 0 else None})
    return rows


CONTROL_ORDER_COLUMNS = ("method", "n_removed", "n_trials", "control_orders", "sd_one_order", "sd_mean_of_orders",
                         "ratio")


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


# ------------------------------------------------------------------------ driver
@dataclass
class Inputs:
    """The folders to analyse, grouped by batch size, with their results merged per group."""
    runs: List[Folder]
    groups: Dict[Optional[int], List[Folder]]  # batch size -> folders
    scores: Dict[Optional[int], Scores]  # batch size -> merged test accuracies (a control: mean over its orders)
    loss: Dict[Optional[int], Scores]  # batch size -> merged test losses
    first_order: Scores  # the first folder's batch size: test accuracies, a control's first removal order alone
    orders: Dict[str, Dict[int, Dict[int, int]]]  # the first folder's batch size: removal orders per trial
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
    loss = {bs: merge_scores([(f.path, collect(f.path, "test_loss")) for f in fs], quiet=True)
            for bs, fs in groups.items()}
    found = {bs: [(f, layout.influence_files(f.path)) for f in fs] for bs, fs in groups.items()}
    primary = runs[0].batch_size
    first_order = merge_scores([(f.path, collect(f.path, order=0)) for f in groups[primary]], quiet=True)
    orders: Dict[str, Dict[int, Dict[int, int]]] = {}
    for f in groups[primary]:  # as merge_scores: the first folder holding a (method, n, trial) counts
        for m, by_n in order_counts(f.path).items():
            for n, by_s in by_n.items():
                for seed, k in by_s.items():
                    orders.setdefault(m, {}).setdefault(n, {}).setdefault(seed, k)
    source: Dict[str, Folder] = {}
    for f, inf in found[primary]:
        for m in inf:
            source.setdefault(m, f)
    n_train = {}  # the length of an influence file, else the --n-train setting
    for bs, pairs in found.items():
        files = [p for _, inf in pairs for by_seed in inf.values() for p in by_seed.values()]
        n_train[bs] = len(layout.read_removal_order(files[0])) if files else groups[bs][0].settings.get("n_train")
    inputs = Inputs(runs, groups, scores, loss, first_order, orders,
                    merge_influence([(f.path, inf) for f, inf in found[primary]]), source, n_train)
    if not any(scores.values()) and not inputs.influence:
        raise UserError(f"no score or influence files under {', '.join(paths)}; run a driver first")
    return inputs


def accuracy_outputs(inp: Inputs, out: str) -> Tuple[List[Row], List[str], List[str]]:
    """summary.csv for every batch size; Figs. 2 and 4, the paired differences and their verdict lines for
    the first folder's; Fig. 5 across batch sizes."""
    order = sorted(inp.scores, key=lambda b: (b != inp.primary, b or 0))
    rows = [row for bs in order for row in summarize(inp.scores[bs], bs, inp.loss[bs])]
    if not rows:
        return rows, [], []
    write_summary(os.path.join(out, "summary", "summary.csv"), rows)
    dataset = inp.runs[0].settings.get("dataset", "")
    prow, base = [r for r in rows if r.batch_size == inp.primary], no_removal(inp.scores[inp.primary])
    title = f"{dataset} batch size {inp.primary} ({trials_text(prow)})" if inp.primary else os.path.basename(out)
    plot_result(prow, base, os.path.join(out, "fig", "result.png"), False, title)
    plot_result(prow, base, os.path.join(out, "fig", "result_errorbars.png"), True, title)
    written = ["summary/summary.csv", "fig/result.png", "fig/result_errorbars.png"]
    primary = primary_n(inp.n_train.get(inp.primary))
    counts = inp.orders.get(CONTROL)
    paired = [row for metric, values in (("test_accuracy", inp.scores), ("test_loss", inp.loss))
              for row in paired_differences(values[inp.primary], metric=metric, control_orders=counts,
                                            primary=primary)]
    if paired:
        write_paired(os.path.join(out, "summary", "paired_vs_random.csv"), paired)
        written.append("summary/paired_vs_random.csv")
    twins = [row for metric, values in (("test_accuracy", inp.scores), ("test_loss", inp.loss))
             for row in published_vs_corrected(values[inp.primary], metric, primary)]
    if twins:
        write_paired(os.path.join(out, "summary", "paired_published_vs_corrected.csv"), twins)
        written.append("summary/paired_published_vs_corrected.csv")
    spread = control_order_rows(inp.first_order, inp.scores[inp.primary], inp.orders)
    if spread:
        write_rows(os.path.join(out, "summary", "control_orders.csv"), CONTROL_ORDER_COLUMNS, spread)
        written.append("summary/control_orders.csv")
    sizes = [bs for bs in order if bs is not None and inp.scores[bs]]
    if len(sizes) > 1:
        panels = {bs: ([r for r in rows if r.batch_size == bs], no_removal(inp.scores[bs])) for bs in sizes}
        plot_batch_sizes(panels, os.path.join(out, "fig", "batch_size.png"), dataset)
        written.append("fig/batch_size.png")
    verdict = verdict_lines(paired, primary)
    if verdict:
        layout.write_text(os.path.join(out, "summary", "verdict.md"), verdict_markdown(prow, paired, verdict))
        written.append("summary/verdict.md")
    return rows, written, verdict


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
    rows, written, verdict = accuracy_outputs(inp, out)
    if skipped:
        layout.write_text(os.path.join(out, "summary", "skipped.txt"),
                      "removal sizes skipped (>= training set size): " + " ".join(map(str, skipped)) + "\n")
    agree, files = agreement_outputs(inp, out)
    written += files
    write_table1(os.path.join(out, "summary", "table1_cache.csv"), os.path.join(out, "summary", "table1_cache.md"),
                 table1_rows(inp.groups, inp.n_train))
    written += ["summary/table1_cache.csv", "summary/table1_cache.md"]
    if os.path.isdir(os.path.join(paths[0], "noise")):  # --label-noise: how well each order finds flipped labels
        written += write_noise_detection(out, {m: inp.influence[m] for m in sorted(inp.influence, key=sort_key)},
                                         paths[0], [n for n in removal_sizes(inp) if n > 0])
    if images:
        written += [os.path.relpath(p, out) for p in write_grids(inp.influence, inp.source, os.path.join(out, "fig"))]
    if len(paths) > 1 or os.path.abspath(out) != os.path.abspath(paths[0]):  # a merge: record its inputs
        layout.write_json(os.path.join(out, "summary", "inputs.json"),
                      {"folders": [layout.relative_to(out, p) for p in paths],  # relative to `out`
                       "batch_sizes": {layout.relative_to(out, f.path): f.batch_size for f in inp.runs}})
        written.append("summary/inputs.json")
    report(rows, agree, out, written, verdict)
    return rows


def report(rows: Sequence[Row], agree: Sequence[dict], out: str, written: Sequence[str],
           verdict: Sequence[str] = ()) -> None:
    if rows:
        print("batch  method               n_removed  test_accuracy (mean ± std, trials)  test_loss (mean ± std)")
        for r in rows:
            print(f"{'' if r.batch_size is None else r.batch_size:>5}  {r.method:<20} {r.n_removed:>9}  "
                  f"{r.mean:.4f} ± {r.std:.4f} ({r.n_trials})  {r.loss_mean:.4f} ± {r.loss_std:.4f}")
    for line in verdict:
        print(line)
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
                   help="skip the harmful/helpful image grids, or tables for vectors (they load the dataset)")
    p.add_argument("--export-clean", nargs=2, metavar=("METHOD", "N"), default=None,
                   help="instead: write OUT/export/METHOD_without_N_seedK/train.csv, an NNC dataset CSV of the "
                        "training split without the N most harmful instances by METHOD, and removed.csv "
                        "(docs/own_network.md)")
    p.add_argument("--seed", type=int, default=0, help="the trial --export-clean exports")
    args = p.parse_args(argv)
    if args.export_clean:
        return run_command(lambda: export_clean_main(args))
    return run_command(lambda: analyze(args.folders, out=args.out, images=not args.no_images) and None,
                       args.out or args.folders[0])


def export_clean_main(args: argparse.Namespace) -> None:
    """--export-clean: one run folder; prints where the CSVs went."""
    if len(args.folders) != 1 or args.out:
        raise UserError("--export-clean takes one output folder and no --out")
    print(f"wrote {export_clean(args.folders[0], args.export_clean[0], args.export_clean[1], args.seed)}"
          f"/train.csv and removed.csv")


if __name__ == "__main__":
    sys.exit(main())
