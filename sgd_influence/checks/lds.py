"""LDS: the linear datamodeling score of every estimator, with its noise ceiling.

(Park et al., "TRAK", ICML 2023; as in dattri and kronfluence.) The single-
instance check of validate.py is mostly float32 chaos at the paper's learning
rate (docs/accuracy.md); group removals averaged over
paired noise replays are the field's yardstick:

    S_1..S_M        seeded random subsets of round(P n) training instances
    truth           f(S) = 1/K sum_r [ L(theta^r_{-S}[T]) - L(theta^r[T]) ]
    prediction      g(S) = sum_{j in S} score_j        (scores: predicted change of L if j is removed)
    LDS             Spearman(g(S_s), f(S_s)) over s = 1..M

L is the mean validation loss (batch norm in test mode), the quantity every
method estimates. theta^r_{-S}[T] is the last epoch replayed as recorded
(eval.retrain: recorded batches, augmentation seeds and learning rates, the
members of S skipped in their batches, the gradient still divided by |S_t|)
from theta^r[K-1], and theta^r[T] the same replay with nothing removed.

Replay r starts from theta[K-1] with each trainable parameter moved, with
probability 1/2, to its float32 neighbour above or below (seeded by (seed, r);
r = 0: unperturbed): half an ulp on average, the size of one float32 rounding. Baseline and counterfactuals of one r share that start
(paired), so a truth is a difference of two replays that saw the same noise;
nothing removed gives exactly 0. The spread over r is the float32 chaos of
the last epoch (a half-ulp at its start grows x2e5 by its end, docs/accuracy.md).

Noise ceiling: Spearman over the subsets between the truths averaged over the
even-numbered replays and over the odd-numbered ones (two disjoint halves).
With K = 2 it is the agreement of two single replays. The truth averaged over
all K replays is more reliable than either half; by Spearman-Brown its
reliability is about 2c / (1 + c), and sqrt of that bounds the LDS a perfect
estimator could reach against it (both reported, as approximations).

Window (`--lds-window`, default "last"): with "all" the truth is retraining every epoch from
theta[0] without S (recorded batches, seeds and learning rates; the gradient still divided by
|S_t|: the drivers' -ra), the counterfactual Replay_all estimates; replay r then perturbs
theta[0], so the noise ceiling is the one of that window (the float32 chaos of the whole
training). Each block of lds.json (lds_all.json for "all": lds.result_path) names its window, and reports the Spearman against the
unperturbed replay r = 0 alone (`lds_single_replay`, in either window: the truth of one
deterministic retraining, what a user who retrains once sees). The caches of the two windows are separate
files (`replay_all_<r>.*`, `truths_all_p<fraction>.csv` for "all").

Beyond plain SGD (optimizer.py) the replays start from the optimizer state of the window's
start too (the perturbation moves theta only), and the stores keep it beside theta^r[t].

Cost sharing: each baseline replay r runs once and stores its theta^r[t] of
every step (as Hara's per-step store, on disk: the units of other processes read
it; train.replay_steps is the replay of training that Replay and retraining also
run); the counterfactual of S then starts at the stored theta^r[t] of the step of
S's first member instead of at the start of the epoch. Truths are cached per (fraction, subset, replay), so a re-run
recomputes nothing and a larger M or K computes only what is new.
"""
from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from datasets import Data
from models import cnn
from ..base import figures, layout
from ..base.errors import UserError
from ..core import network
from ..pipeline.runner import run_units
from ..core.graphs import GraphCache, evaluate, trainable_params
from ..base.metrics import pearson, spearman, t_interval
from ..core.params import StepParamsReader, StepParamsWriter, load_checkpoint
from ..base.layout import checkpoint_path, step_record_path
from ..core.replay import WINDOWS, window_start, window_steps
from ..core.step_record import StepRecord
from ..core.train import SGD, init_model, load_state_at, perturb_half_ulp, replay_steps
from ..config.settings import args_from_settings, data_for

# --------------------------------------------------------------- trainings
@dataclass(frozen=True)
class Training:
    """One training the LDS is measured on: a trial seed (split, initialisation, batches,
    augmentation), or its twin -- the same seed with theta[0] moved by a seeded half-ulp, so the
    two differ by rounding alone."""
    seed: int
    twin: bool = False

    @property
    def name(self) -> str:
        return os.path.basename(layout.train_dir("", self.seed, self.twin))

    @property
    def init_key(self) -> Optional[tuple]:
        """The perturb_half_ulp key of theta[0] (None: the seed's own initialisation)."""
        return (self.seed, 11, 1) if self.twin else None


def trainings_of(first_seed: int, trials: int, twin: bool) -> List[Training]:
    """Seeds first_seed..first_seed+trials-1, then (twin) the first seed's twin."""
    out = [Training(first_seed + k) for k in range(trials)]
    return out + [Training(first_seed, True)] if twin else out


# ----------------------------------------------------------------- subsets
def subset_size(n: int, fraction: float) -> int:
    return max(1, int(round(fraction * n)))


def subset(n: int, fraction: float, s: int, seed: int) -> np.ndarray:
    """The s-th subset of a fraction, sorted; seeded by (seed, fraction, s) alone, so the
    first M subsets are the same whatever the total number asked for."""
    rng = np.random.default_rng([seed, 8, int(round(fraction * 1e6)), s])
    return np.sort(rng.choice(n, subset_size(n, fraction), replace=False))


def predictions(scores: np.ndarray, subsets: List[np.ndarray]) -> np.ndarray:
    """g(S) = sum of the scores over each subset."""
    return np.array([scores[s].sum() for s in subsets], np.float64)


# --------------------------------------------------------------- replays
def _tag(window: str) -> str:
    assert window in WINDOWS, window
    return "" if window == "last" else f"{window}_"


def store_path(cache: str, r: int, window: str = "last") -> str:
    """theta^r[t] of every step of baseline replay r of the window (a per-step store, params.StepParamsWriter)."""
    return os.path.join(cache, f"replay_{_tag(window)}{r}.f32")


def baseline_path(cache: str, r: int, window: str = "last") -> str:
    """L(theta^r[T]) of baseline replay r of the window; written last, so it marks the replay done."""
    return os.path.join(cache, f"replay_{_tag(window)}{r}.json")


def perturb(seed: int, r: int) -> None:
    """Move each trainable parameter, with probability 1/2, one float32 ulp up or down
    (seeded by (seed, r)): half an ulp on average. r = 0: no change."""
    if r != 0:
        perturb_half_ulp((seed, 9, r))


class PairedReplays:
    """Baseline and counterfactual replays of the window (the last epoch from theta[K-1], or all
    epochs from theta[0]) from perturbed starts."""

    def __init__(self, data: Data, run_dir: str, store_dir: str, batch_size: int, seed: int,
                 net: Callable = cnn, window: str = "last"):
        self.data, self.run_dir, self.store_dir, self.seed, self.window = data, run_dir, store_dir, seed, window
        self.record = StepRecord.load(step_record_path(run_dir))
        self.steps = window_steps(self.record, window)
        self.start = window_start(self.record, window)
        self.row = np.full(len(data.train), -1, np.int64)  # each instance's first step position in the window
        for k, t in reversed(list(enumerate(self.steps))):
            self.row[self.record.batch(t)[0]] = k
        self.sgd = SGD(init_model(data, 0, batch_size, net), data, self.record.recipe)
        self.test_graphs = GraphCache(data.image_shape, data.n_classes, test=True, net=net)

    def store_path(self, r: int) -> str:
        return store_path(self.store_dir, r, self.window)

    def baseline_path(self, r: int) -> str:
        return baseline_path(self.store_dir, r, self.window)

    def val_loss(self) -> float:
        return evaluate(self.test_graphs, self.data.normalize, self.data.val)[0]

    def baseline(self, r: int) -> float:
        """Replay r with nothing removed, storing theta^r[t] of every step; L(theta^r[T]).
        Cached: the JSON (written last) marks it done."""
        path = self.baseline_path(r)
        if os.path.exists(path):
            return float(layout.read_json(path)["val_loss"])
        started, storing = time.perf_counter(), [0.0]

        def store(i: int) -> None:  # keeps theta^r[t]; timed apart (a counterfactual replay stores nothing)
            t0 = time.perf_counter()
            writer.append()
            storing[0] += time.perf_counter() - t0
        load_checkpoint(checkpoint_path(self.run_dir, self.start))
        load_state_at(self.sgd, self.run_dir, self.record, self.start)  # the optimizer's state there (if any)
        perturb(self.seed, r)
        writer = StepParamsWriter(self.store_path(r), self.sgd.state if self.record.recipe.stateful else None)
        replay_steps(self.sgd, self.record, self.steps, before=store)
        writer.close()
        loss = self.val_loss()
        epochs = len(set(self.record.epoch[self.steps].tolist()))
        seconds = time.perf_counter() - started - storing[0]  # the replay and the loss: cost_line's measure
        layout.write_json(path, {"replay": r, "val_loss": loss, "epochs": epochs, "seconds": round(seconds, 3)})
        return loss

    def truth(self, removed: np.ndarray, r: int) -> float:
        """L(theta^r_{-S}[T]) - L(theta^r[T]) for S = `removed` (baseline r must exist)."""
        base = float(layout.read_json(self.baseline_path(r))["val_loss"])
        first = int(self.row[removed].min()) if len(removed) else 0
        state = StepParamsReader(self.store_path(r)).load(first)  # theta^r[t] of S's first step: all before is equal
        self.sgd.set_state(state, int(self.steps[first]))  # and the optimizer state there (none for plain SGD)
        keep = np.ones(len(self.data.train), bool)
        keep[removed] = False
        replay_steps(self.sgd, self.record, self.steps[first:], keep)
        return self.val_loss() - base


# ------------------------------------------------------------ truth cache
def result_path(vdir: str, name: str, window: str = "last") -> str:
    """The results of one window in the validation folder: lds.json, lds.csv, lds_<Method>.png,
    lds_trainings.png for the last epoch; lds_all.json, lds_all.csv, ... for the whole training,
    so measuring one window never overwrites the other's. `name` is the file name for "last"."""
    assert name.startswith("lds"), name
    return os.path.join(vdir, name if window == "last" else "lds_" + _tag(window)[:-1] + name[3:])


def truths_path(cache: str, fraction: float, window: str = "last") -> str:
    return os.path.join(cache, f"truths_{_tag(window)}p{fraction:g}.csv")


def linearity_path(cache: str, fraction: float, window: str = "last") -> str:
    """The eps probe's cache (tools/probe_linearity.py): the validation loss of each weighted replay."""
    return os.path.join(cache, f"linearity_{_tag(window)}p{fraction:g}.csv")


def read_truths(path: str) -> Dict[tuple, float]:
    """{(subset, replay): truth} of a truths file (missing file: empty)."""
    if not os.path.exists(path):
        return {}
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out[(int(row["subset"]), int(row["replay"]))] = float(row["truth"])
    return out


def write_truths(path: str, truths: Dict[tuple, float]) -> None:
    lines = ["subset,replay,truth"] + [f"{s},{r},{v!r}" for (s, r), v in sorted(truths.items())]
    layout.write_text(path, "\n".join(lines) + "\n")


# ------------------------------------------------------------ the units
_REPLAYS: Dict[tuple, PairedReplays] = {}
Loader = Callable[[int], Data]  # the data of a trial seed


def load_data(args, seed: int) -> Data:
    """The data of trial `seed` as the command loads it (a worker process builds its own)."""
    return data_for(args, seed)


def run_arguments(settings: dict, data_dir: Optional[str]):
    """An LDS run's arguments from its run.json settings (for the tools that reopen a folder): options it
    predates (the data options of later versions, --net, the recipe) at their values then, no test split
    (validate loads none)."""
    return args_from_settings({**settings, "data_dir": data_dir, "n_test": 0})


def window_of(args) -> str:
    """--lds-window (default "last")."""
    return getattr(args, "lds_window", None) or "last"


def _replays(args, seed: int, twin: bool, load: Optional[Loader], net: Optional[Callable]) -> PairedReplays:
    """One PairedReplays per process, for the training last asked for (units come training-major)."""
    t = Training(seed, twin)
    key = (args.output_dir, t, window_of(args))
    if key not in _REPLAYS:
        data = load(seed) if load is not None else load_data(args, seed)
        _REPLAYS.clear()
        _REPLAYS[key] = PairedReplays(data, layout.train_dir(args.output_dir, seed, twin),
                                      cache_dir(args.output_dir, t), args.batch_size, seed,
                                      net or network.from_args(args), window_of(args))
    return _REPLAYS[key]


def baseline_unit(args, seed: int, twin: bool, r: int, load: Optional[Loader] = None, net: Optional[Callable] = None,
                  progress: bool = False) -> float:
    return _replays(args, seed, twin, load, net).baseline(r)


def truth_unit(args, seed: int, twin: bool, fraction: float, s: int, r: int, load: Optional[Loader] = None,
               net: Optional[Callable] = None, progress: bool = False) -> float:
    rep = _replays(args, seed, twin, load, net)
    return rep.truth(subset(len(rep.data.train), fraction, s, seed), r)


def cache_dir(out: str, training: Training) -> str:
    """A training's LDS cache: its scores, baseline replays and truths."""
    return os.path.join(out, "validation", "lds_cache", training.name)


def compute_truths(args, trainings: Sequence[Training], load: Optional[Loader], net: Callable,
                   fractions: List[float], m: int, k: int,
                   progress: bool = True) -> Dict[Training, Dict[float, np.ndarray]]:
    """{training: {fraction: (M, K) array of truths}}, computing only what the caches lack; the
    units of all trainings run together (training-major, so a worker keeps one training loaded)."""
    w = window_of(args)
    base_units = [(baseline_unit, t.seed, t.twin, r) for t in trainings for r in range(k)
                  if not os.path.exists(baseline_path(cache_dir(args.output_dir, t), r, w))]
    run_units(base_units, args, "LDS baseline replays", progress=progress, load=load, net=net)
    done = {(t, p): read_truths(truths_path(cache_dir(args.output_dir, t), p, w)) for t in trainings for p in fractions}
    # Subset-major within a training: an interrupted run leaves about as many subsets done at every fraction.
    units = [(truth_unit, t.seed, t.twin, p, s, r) for t in trainings for s in range(m) for p in fractions
             for r in range(k) if (s, r) not in done[(t, p)]]

    def keep(unit, value):
        _, seed, twin, p, s, r = unit
        t = Training(seed, twin)
        done[(t, p)][(s, r)] = value
        write_truths(truths_path(cache_dir(args.output_dir, t), p, w), done[(t, p)])

    if units:
        cached = sum(s < m and r < k for d in done.values() for s, r in d)
        print(cost_line(args, trainings, len(units), cached), flush=True)
    run_units(units, args, "LDS counterfactual replays", keep, progress, load=load, net=net)
    return {t: {p: np.array([[done[(t, p)][(s, r)] for r in range(k)] for s in range(m)]) for p in fractions}
            for t in trainings}


def cost_line(args, trainings: Sequence[Training], todo: int, cached: int) -> str:
    """What the counterfactual replays will cost: their number times the seconds per epoch measured by
    the baseline replays (each counterfactual replays the window from its subset's first step: at
    most the window). Baselines made before they were timed leave the time unknown."""
    w = window_of(args)
    per_epoch = []
    for t in trainings:
        for r in range(args.noise_replays):
            info = layout.read_json(baseline_path(cache_dir(args.output_dir, t), r, w))
            if info.get("seconds") and info.get("epochs"):
                per_epoch.append(info["seconds"] / info["epochs"])
    epochs = 1 if w == "last" else args.n_epochs
    text = (f"LDS: {todo} counterfactual retrainings to run ({len(trainings)} training(s) x "
            f"{len(args.lds_fraction)} fraction(s) x {args.lds_subsets} subsets x {args.noise_replays} replays"
            + (f"; {cached} done before" if cached else "") + f"), each replaying at most {epochs} epoch(s)")
    if not per_epoch:
        return text + " (seconds per epoch not measured: the baseline replays predate timing)"
    secs = float(np.median(per_epoch))
    workers = 1 if getattr(args, "scheduler", None) else max(1, min(args.workers, todo))
    total = todo * epochs * secs / workers
    where = "on the cluster's workers: less" if getattr(args, "scheduler", None) else f"with {workers} worker(s)"
    return (f"{text} x {secs:.2f} s per epoch (measured by the baseline replays) = at most "
            f"{_duration(total)} {where}")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# -------------------------------------------------------------- metrics
def noise_ceiling(truths: np.ndarray) -> float:
    """Spearman between the means over the even- and the odd-numbered replays, truths (M, K >= 2)."""
    return spearman(truths[:, 0::2].mean(axis=1), truths[:, 1::2].mean(axis=1))


def bootstrap_ci(fn: Callable[[np.ndarray], float], m: int, seed: int, n_boot: int = 1000) -> List[float]:
    """95% percentile interval of fn(indices) over resamples of the M subsets."""
    rng = np.random.default_rng([seed, 10])
    vals = [fn(rng.integers(0, m, m)) for _ in range(n_boot)]
    vals = np.array([v for v in vals if np.isfinite(v)])
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if len(vals) else [None, None]


def lds_block(truths: np.ndarray, preds: Dict[str, np.ndarray], fraction: float, n: int, seed: int,
              window: str = "last") -> dict:
    """The lds.json block of one fraction and window: LDS per method with a bootstrap interval, and the
    ceiling; `lds_single_replay` is the Spearman against the unperturbed replay r = 0 alone (the
    deterministic truth)."""
    m, k = truths.shape
    mean = truths.mean(axis=1)
    c = noise_ceiling(truths)
    rel = 2 * c / (1 + c) if c > 0 else 0.0
    block = {"window": window, "fraction": fraction, "subset_size": subset_size(n, fraction), "subsets": m, "replays": k,
             "noise_ceiling": c,
             "noise_ceiling_ci95": bootstrap_ci(lambda i: noise_ceiling(truths[i]), m, seed),
             "noise_ceiling_how": "Spearman over the subsets between the truth averaged over the even-numbered "
                                  "replays and over the odd-numbered ones",
             "reliability_all_replays": rel, "max_lds_all_replays": float(np.sqrt(rel)),
             "truth_mean": float(mean.mean()), "truth_sd": float(mean.std()),
             "replay_sd": float(truths.std(axis=1, ddof=1).mean()),
             "methods": {}}
    for name, g in preds.items():
        if not np.all(np.isfinite(g)):
            block["methods"][name] = {"lds": None}
            continue
        block["methods"][name] = {
            "lds": spearman(g, mean),
            "lds_ci95": bootstrap_ci(lambda i: spearman(g[i], mean[i]), m, seed),
            "lds_single_replay": spearman(g, truths[:, 0]),  # replay 0, unperturbed: the deterministic truth
            "pearson": pearson(g, mean),
            "prediction_sd": float(g.std()),
        }
    return block


def stats(values: Sequence[float]) -> dict:
    """Mean, sample sd and 95% t-interval over trainings, with the values themselves."""
    mean, sd, lo, hi = t_interval(values)
    return {"mean": mean, "std": sd, "ci95": [lo, hi], "values": [float(v) for v in values]}


def _pairs(lds: Dict[str, List[Optional[float]]], methods: Sequence[str]) -> List[dict]:
    """Every pair's per-training difference (a - b) on the same truths: mean, sd, 95% t-interval and
    `excludes_zero` (the interval on one side of 0); trainings where either has no scores left out."""
    out = []
    for ai, a in enumerate(methods):
        for b in methods[ai + 1:]:
            d = [x - y for x, y in zip(lds[a], lds[b]) if x is not None and y is not None]
            if not d:
                continue
            st = stats(d)
            lo, hi = st["ci95"]
            out.append({"a": a, "b": b, "difference": st, "excludes_zero": None if lo is None else bool(lo > 0 or hi < 0)})
    return out


def across_trainings(blocks: Dict[str, List[dict]], methods: Sequence[str]) -> List[dict]:
    """Per fraction, over the trainings in `blocks` ({training name: its blocks, one per fraction}):
    each method's LDS, the noise ceiling and the LDS bound of a perfect estimator (`max_lds_all_replays`,
    sqrt(2c / (1 + c)) per training; mean, sd, 95% t-interval), and for every pair of
    methods the per-training difference of their LDS on the same truths (its mean and interval;
    `excludes_zero` when the interval lies on one side of 0). The same against the deterministic
    truth (replay 0 alone, `lds_single_replay`): `methods_single_replay`, `pairs_single_replay`.
    A training where a method has no scores is left out of that method's figures."""
    names = list(blocks)
    out = []
    for i, p in enumerate(b["fraction"] for b in blocks[names[0]]):
        per = [blocks[n][i] for n in names]
        row = {"fraction": p, "trainings": names, "subset_size": per[0]["subset_size"],
               "subsets": per[0]["subsets"], "replays": per[0]["replays"],
               "noise_ceiling": stats([b["noise_ceiling"] for b in per])}
        if all("max_lds_all_replays" in b for b in per):  # absent from blocks written before lds_block reported it
            row["max_lds_all_replays"] = stats([b["max_lds_all_replays"] for b in per])
        for suffix, key in (("", "lds"), ("_single_replay", "lds_single_replay")):
            lds = {m: [b["methods"][m].get(key) for b in per] for m in methods}
            row["methods" + suffix] = {m: stats([v for v in lds[m] if v is not None])
                                       if any(v is not None for v in lds[m]) else None for m in methods}
            row["pairs" + suffix] = _pairs(lds, methods)
        out.append(row)
    return out


def twin_comparison(blocks: List[dict], twin_blocks: List[dict], across: List[dict]) -> List[dict]:
    """Per fraction: each method's LDS on a training and on its twin (theta[0] moved by a half-ulp,
    same seed, same subsets), their difference, and the sd of that method's LDS over seeds."""
    out = []
    for b, tb, ac in zip(blocks, twin_blocks, across):
        row = {"fraction": b["fraction"], "noise_ceiling": [b["noise_ceiling"], tb["noise_ceiling"]], "methods": {}}
        for m, r in b["methods"].items():
            v, w = r["lds"], tb["methods"][m]["lds"]
            seeds = ac["methods"].get(m)
            row["methods"][m] = {"lds": v, "lds_twin": w, "difference": None if v is None or w is None else w - v,
                                 "sd_over_seeds": seeds["std"] if seeds else None}
        out.append(row)
    return out


def plot_lds(path: str, method: str, blocks: Dict[str, List[dict]], truths: Dict[str, Dict[float, np.ndarray]],
             preds: Dict[str, Dict[float, np.ndarray]]) -> None:
    """Prediction vs truth per fraction for one method, one colour per training."""
    plt = figures.pyplot()
    names = list(blocks)
    first = blocks[names[0]]
    fig, axes = plt.subplots(1, len(first), figsize=(4.2 * len(first), 4), squeeze=False)
    for i, ax in enumerate(axes[0]):
        p = first[i]["fraction"]
        labels = []
        for n in names:
            r = blocks[n][i]["methods"][method]
            lds = "n/a" if r["lds"] is None else f"{r['lds']:.2f}"
            ax.scatter(truths[n][p].mean(axis=1), preds[n][p], s=12, alpha=0.7, label=f"{n}: LDS {lds}")
            labels.append(lds)
        ceil = ", ".join(f"{blocks[n][i]['noise_ceiling']:.2f}" for n in names)
        ax.set(xlabel=f"actual change of val loss ({first[i]['replays']} replays)", ylabel=f"sum of {method} scores",
               title=f"{p:g} removed; ceiling {ceil}")
        figures.zero_lines(ax, vertical=True)
        ax.legend(fontsize=7)
    fig.suptitle(f"{method}: group removals, {first[0]['subsets']} subsets per fraction, {len(names)} training(s)")
    fig.tight_layout()
    figures.save(fig, path)


def plot_trainings(path: str, across: List[dict], twin: Optional[List[dict]] = None) -> None:
    """Each method's LDS per training (dots; the twin as a cross), their mean with its 95%
    t-interval, and the mean noise ceiling (dashed), one panel per fraction."""
    plt = figures.pyplot()
    fig, axes = plt.subplots(1, len(across), figsize=(1.2 + 1.1 * len(across[0]["methods"]) * len(across), 4),
                             squeeze=False)
    for i, (ax, row) in enumerate(zip(axes[0], across)):
        methods = [m for m, st in row["methods"].items() if st]
        for x, m in enumerate(methods):
            st = row["methods"][m]
            c = figures.color(m)
            ax.scatter([x] * len(st["values"]), st["values"], s=16, color=c, alpha=0.6)
            lo, hi = st["ci95"]
            err = None if lo is None else [[st["mean"] - lo], [hi - st["mean"]]]
            ax.errorbar([x + 0.2], [st["mean"]], yerr=err, fmt="o", color=c, capsize=4)
            if twin and twin[i]["methods"].get(m, {}).get("lds_twin") is not None:
                ax.scatter([x], [twin[i]["methods"][m]["lds_twin"]], marker="x", s=40, color=c)
        ax.axhline(row["noise_ceiling"]["mean"], ls="--", c="0.4", lw=1)
        figures.zero_lines(ax)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=30, ha="right")
        ax.set(ylabel="LDS", title=f"{row['fraction']:g} removed: {len(row['trainings'])} trainings\n"
                                   f"(dots: each; bar: mean, 95% t; dashed: ceiling{'; x: twin' if twin else ''})")
    fig.tight_layout()
    figures.save(fig, path)


def merge_fractions(summaries: Sequence[Tuple[str, dict]], trainings: Optional[Sequence[str]] = None) -> List[dict]:
    """The `across_trainings` rows of one or more lds.json summaries ((label, summary) pairs), one per
    fraction, each fraction from the first summary that has it, recomputed over `trainings` (names
    such as seed_0; default: the first summary's trainings that are not twins) from the per-training
    blocks, so every fraction is over the same trainings. Each row gains `source` (its summary's
    label). Summaries of different windows, or a summary that lacks one of the trainings at a
    fraction it gives, are a UserError."""
    label0, first = summaries[0]
    names = list(trainings or [t["training"] for t in first["trainings"] if not t["theta0_perturbed"]])
    window = {b.get("window", "last") for t in first["trainings"] for b in t["blocks"]}
    rows: Dict[float, dict] = {}
    for label, summary in summaries:
        per = {t["training"]: {b["fraction"]: b for b in t["blocks"]} for t in summary["trainings"]}
        windows = {b.get("window", "last") for t in summary["trainings"] for b in t["blocks"]}
        if windows != window:
            raise UserError(f"{label} holds the {'/'.join(sorted(windows))} window, {label0} the "
                            f"{'/'.join(sorted(window))} one; give summaries of one window")
        fractions = sorted({p for blocks in per.values() for p in blocks} - set(rows))
        for p in fractions:
            missing = [n for n in names if p not in per.get(n, {})]
            if missing:
                raise UserError(f"{label} has no {p:g} block for {', '.join(missing)}; "
                                f"pick trainings it has with --trainings")
            blocks = {n: [per[n][p]] for n in names}
            order = summary.get("settings", {}).get("methods") or list(per[names[0]][p]["methods"])  # the run's order
            methods = [m for m in order if all(m in blocks[n][0]["methods"] for n in names)]
            rows[p] = {**across_trainings(blocks, methods)[0], "source": label}
    return [rows[p] for p in sorted(rows)]


def plot_fractions(path: str, across: List[dict], title: str = "") -> None:
    """Against the removed fraction (log x): each method's mean LDS over the trainings with its 95%
    t-interval (offset sideways a little per method), the mean noise ceiling with its interval (black,
    dashed) and the mean bound of a perfect estimator (grey, dotted; rows that carry it); right: each
    method's mean LDS divided by the mean bound (by the mean ceiling at every fraction if any row lacks
    the bound), with 0.9 marked. The ceiling is two single replays' agreement; the LDS is taken against their mean,
    which a perfect estimator tracks better than either replay tracks the other: at a low ceiling only
    the bound says how far an estimator is from the best possible (docs/accuracy.md)."""
    plt = figures.pyplot()
    import matplotlib.ticker as mticker
    fractions = [row["fraction"] for row in across]
    methods = list(dict.fromkeys(m for row in across for m, st in row["methods"].items() if st))
    fig, (ax, rx) = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [3, 2]})
    ceil = [row["noise_ceiling"] for row in across]
    lo = [c["ci95"][0] if c["ci95"][0] is not None else c["mean"] for c in ceil]
    hi = [c["ci95"][1] if c["ci95"][1] is not None else c["mean"] for c in ceil]
    ax.fill_between(fractions, lo, hi, color="0.5", alpha=0.15, lw=0)
    ax.plot(fractions, [c["mean"] for c in ceil], "k--", marker="s", ms=4, label="noise ceiling")
    bound = all("max_lds_all_replays" in row for row in across)
    if bound:
        ax.plot(fractions, [row["max_lds_all_replays"]["mean"] for row in across], ls=":", c="0.45", marker="^",
                ms=4, label="bound, perfect estimator")
    norm = "max_lds_all_replays" if bound else "noise_ceiling"
    for i, m in enumerate(methods):
        shift = 1.07 ** (i - (len(methods) - 1) / 2)
        pts = [(row["fraction"], row["methods"][m], row[norm]["mean"]) for row in across
               if row["methods"].get(m)]
        x = [p * shift for p, _, _ in pts]
        y = [st["mean"] for _, st, _ in pts]
        err = [[st["mean"] - (st["ci95"][0] if st["ci95"][0] is not None else st["mean"]) for _, st, _ in pts],
               [(st["ci95"][1] if st["ci95"][1] is not None else st["mean"]) - st["mean"] for _, st, _ in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, color=figures.color(m), label=m)
        rx.plot([p for p, _, _ in pts], [st["mean"] / c if c > 0 else np.nan for _, st, c in pts], marker="o",
                ms=4, color=figures.color(m), label=m)
    figures.zero_lines(ax)
    for a, top in ((ax, 1.05), (rx, 1.5)):  # an LDS lies in [-1, 1]; a t-interval of few trainings may not
        lo_, hi_ = a.get_ylim()
        a.set_ylim(max(lo_, -1.05), min(hi_, top))
    rx.axhline(0.9, c="k", ls=":", lw=1)
    rx.set_ylim(top=max(rx.get_ylim()[1], 1.0))  # the 0.9 mark in view
    figures.zero_lines(rx)
    ticks = [f"{p * 100:g}%\n({row['subset_size']}; {len(row['trainings'])} tr.)" for p, row in zip(fractions, across)]
    for a in (ax, rx):
        a.set_xscale("log")
        a.xaxis.set_minor_locator(mticker.NullLocator())
        a.set_xticks(fractions)
        a.set_xticklabels(ticks, fontsize=8)
        a.set_xlabel("removed per subset (instances; trainings)")
        a.grid(alpha=0.3)
    ax.set(ylabel="LDS (mean over trainings, 95% t)", title="LDS and noise ceiling against the removal's size")
    rx.set(ylabel="mean LDS / mean " + ("bound" if bound else "ceiling"),
           title=("share of the perfect estimator's bound" if bound else "share of the ceiling") + " (dotted: 0.9)")
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    figures.save(fig, path)
