"""Every estimator against actual counterfactual retraining (validate_influence.py).

For M checked training instances j, the counterfactual of the last-epoch
setting is computed exactly: the last epoch replayed as recorded (batches,
augmentation seeds, learning rates) with j skipped in its batch, the gradient
still divided by the recorded |S_t| (the same replay as eval.retrain). Two
true values per instance:

    true_linear           = <u, theta_{-j}[T] - theta[T]>   (what SGD-influence estimates)
    true_val_loss_change  = L_val(theta_{-j}[T]) - L_val(theta[T])   (mean loss, batch norm in test mode)

Shortcut: j enters the last epoch at one step t_j; the steps before it do not
involve j and replay bit for bit to the stored theta[t_j] (Hara's per-step
store), so each counterfactual starts there and replays only steps t_j..T-1.

Estimates of the same instances: Hara, Ours, Influence_functions, and two
ablations of the Ours retrace with one departure of the published code each
(`infl.retrace` options): `Ours_hu_over_batch` (u update with an extra
1/|S_t|) and `Ours_sample_alone` (per-sample gradients at batch size 1, batch
norm in training mode); any other method of the table on request, the published
computation itself included (`Hara_published`, `Ours_published`: core/published.py).

Resumable: each method's scores and the counterfactuals done so far are kept
in OUT/validation/cache/ (written atomically), and a re-run skips them.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import time
from io import StringIO
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from datasets import Data
from influence_functions.infl import influence_functions
from models import cnn
from ..base import figures, layout
from ..base.argtypes import nonneg_int, open_fraction, positive_float, positive_int
from . import lds
from ..core import network, optimizer
from ..core.controls import negated_training_loss, random_key
from ..base.errors import UserError, run_command
from ..core.graphs import GraphCache, evaluate, flat, flat_trainable
from ..core.infl import load_final_model, retrace, val_gradient
from ..pipeline.runner import run_units
from ..base.methods import DRIVER_METHODS, METHODS, retrains_all
from ..base.metrics import jaccard_lowest, kendall_tau_b, pearson, sign_agreement, spearman
from ..base.layout import step_params_path, step_record_path
from ..core.params import StepParamsReader
from ..config.settings import (BN_COUPLING_CHOICES, PREDATING_VALUES, RETRACE_CHOICES, HelpFormatter,
                               add_data_arguments, add_if_arguments, add_published_bundle_size, add_replay_memory,
                               build_parser as driver_parser, check_settings, code_version, data_for, device,
                               differences, fit_to_data, replay_budget, set_context)
from ..core.step_record import StepRecord
from ..core.train import load_state_at, replay_steps, train, trainer_at

# The estimators: every method of the table (methods.METHODS), the published variants of Ours included.
ESTIMATORS = tuple(METHODS)
# The single-instance check's default estimators (the published code's two variants included).
SINGLE_DEFAULT = ("Hara", "Ours", "Influence_functions", "Ours_hu_over_batch", "Ours_sample_alone")
# LDS: every scoring method the drivers know, and Random (its LDS must come out near 0); not those that
# compute another's scores (Replay: Hara's, byte for byte on the CPU), which --methods still accepts.
# Nor Replay_all, whose counterfactual (retraining every epoch) is not the last-epoch truth measured here,
# nor the published computations (Hara_published, Ours_published: opt-in).
LDS_DEFAULT = tuple(n for n in DRIVER_METHODS if METHODS[n].scores_of is None and METHODS[n].window == "last"
                    and not METHODS[n].as_published)
# The settings an estimator's scores depend on beyond the training's: its own options, and the
# seed where it draws random numbers.
ESTIMATOR_SETTINGS = {n: m.settings + (("seed",) if m.seeded else ()) for n, m in METHODS.items()}
TRUTHS = ("true_linear", "true_val_loss_change")
METRICS = {"pearson": pearson, "spearman": spearman, "kendall": kendall_tau_b,
           "jaccard_top10_negative": jaccard_lowest, "sign_agreement": sign_agreement}
# Settings that determine the training; a training in -o is reused only when they match.
# The CSVs count (the test CSV's class indices size the network), and so does --label-noise.
TRAIN_SETTINGS = ("dataset", "n_epochs", "batch_size", "lr", "n_train", "no_augment", "train_csv", "val_csv",
                  "test_csv", "label_noise", *network.SETTING_DEFAULTS, *optimizer.SETTING_DEFAULTS)
# Settings of the validation itself (its cache is reused only when they match).
VALIDATION_SETTINGS = TRAIN_SETTINGS + ("n_val", "n_check", "seed", "retrace", "bn_coupling", "if_alpha", "if_lr", "if_momentum", "if_epochs",
                                         "if_last_iterate")


def validation_dir(out: str) -> str:
    return os.path.join(out, "validation")


def cache_dir(out: str) -> str:
    return os.path.join(validation_dir(out), "cache")


# ------------------------------------------------------------------- estimates
def estimate(name: str, data: Data, run_dir: str, args, net: Callable, progress: bool,
             replay_check: Optional[str] = None) -> np.ndarray:
    """Scores of every training instance by estimator `name` (influence convention of infl.py);
    Replay's report (infl.retrace's on_replay) goes to `replay_check` if given."""
    spec = METHODS[name].retrace
    if spec is not None:
        budget, source = replay_budget(args.replay_memory)
        report = (lambda r: layout.write_json(replay_check, dict(r, memory_budget=source))) if replay_check else None
        return retrace(data, run_dir, batch_size=args.batch_size, progress=progress, net=net, mode=args.retrace,
                       bn_coupling=args.bn_coupling == "on", replay_memory=budget, on_replay=report,
                       bundle_size=args.published_bundle_size, **spec)
    if name == "Random":
        return random_key(len(data.train), args.seed)
    load_final_model(data, run_dir, args.n_epochs, args.batch_size, net)
    if name == "Loss":
        return negated_training_loss(data, net=net)
    scores, _, _ = influence_functions(data, val_gradient(data, net=net), alpha=args.if_alpha, lr=args.if_lr,
                                       momentum=args.if_momentum, epochs=args.if_epochs,
                                       batch_size=args.batch_size, seed=args.seed,
                                       average=not args.if_last_iterate, progress=progress, net=net)
    return scores


def cached_estimate(name: str, data: Data, run_dir: str, args, net: Callable, progress: bool,
                    folder: str | None = None) -> np.ndarray:
    """Scores from `folder` (default: the single-instance cache) or computed and saved there.

    Beside each `estimate_<name>.npy` a JSON keeps the settings it depends on
    (ESTIMATOR_SETTINGS); scores made under other settings are recomputed.
    """
    folder = folder or cache_dir(args.output_dir)
    path = layout.estimate_path(folder, name)
    used = {k: getattr(args, k) for k in ESTIMATOR_SETTINGS.get(name, ())}
    meta = os.path.join(folder, f"estimate_{name}.json")
    if os.path.exists(path) and (not os.path.exists(meta) or layout.read_json(meta) == used):
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as e:
            raise UserError(f"{path} is corrupt ({e}); delete it and re-run") from None
    scores = estimate(name, data, run_dir, args, net, progress,
                      replay_check=os.path.join(folder, f"estimate_{name}_replay_check.json"))
    with layout.atomic_path(path) as tmp:
        np.save(tmp, scores)
    layout.write_json(meta, used)
    return scores


# ------------------------------------------------------------ instance choice
def pick_instances(ours: np.ndarray, m: int, seed: int) -> Tuple[np.ndarray, List[str]]:
    """M instances: the M/4 most negative and M/4 most positive by Ours, the rest uniformly at random."""
    n = len(ours)
    m = min(m, n)
    n_tails = m // 2
    n_low, n_high = (n_tails + 1) // 2, n_tails // 2
    order = np.lexsort((np.arange(n), ours))
    low, high = order[:n_low], order[n - n_high:] if n_high else order[:0]
    rest = np.setdiff1d(np.arange(n), np.concatenate([low, high]))
    rand = np.sort(np.random.default_rng([seed, 5]).choice(rest, m - n_tails, replace=False))
    idx = np.concatenate([low, high, rand]).astype(np.int64)
    return idx, ["ours_low"] * len(low) + ["ours_high"] * len(high) + ["random"] * len(rand)


# ------------------------------------------------------------- counterfactuals
class Counterfactuals:
    """theta_{-j}[T] for single instances j, replayed from j's step of the last epoch."""

    def __init__(self, data: Data, run_dir: str, batch_size: int, net: Callable = cnn):
        self.data = data
        self.record = StepRecord.load(step_record_path(run_dir))
        last = self.record.n_epochs - 1
        self.steps = self.record.steps_of_epoch(last)
        self.row = np.full(len(data.train), -1, np.int64)  # position of j's step in the last epoch
        for r, t in enumerate(self.steps):
            self.row[self.record.batch(t)[0]] = r
        self.run_dir = run_dir
        self.stored = StepParamsReader(step_params_path(run_dir, last))
        self.sgd = trainer_at(data, run_dir, self.record, self.record.n_epochs, batch_size, net)
        self.test_graphs = GraphCache(data.image_shape, data.n_classes, test=True, net=net)
        self.u = flat(val_gradient(data, net=net))
        # Paired truths: the baseline is the same replay with nothing removed. On CPU it is
        # theta[T] bit for bit; where replays are not bit-exact (GPU) it carries the same
        # nondeterminism as every counterfactual, which a stored theta[T] would not.
        self.replay_without(None)
        self.theta = flat_trainable()
        self.val_loss = self.val_loss_now()

    def val_loss_now(self) -> float:
        return evaluate(self.test_graphs, self.data.normalize, self.data.val)[0]

    def load_step(self, r: int) -> None:
        """The model and optimizer as before step r of the last epoch: stored theta[t_r] and, for a recipe
        with state, the state stored beside it (or, where Hara's rows keep none, the epoch's start state:
        then only r = 0 is exact)."""
        state = self.stored.load(r)
        if self.record.recipe.stateful:
            if state:
                self.sgd.set_state(state, int(self.steps[r]))
            else:
                load_state_at(self.sgd, self.run_dir, self.record, self.record.n_epochs - 1)

    def replay_without(self, j: int | None) -> None:
        """Leave theta_{-j}[T] in the model: stored theta[t_j], then steps t_j..T-1 without j
        (j None: the whole epoch with nothing removed). Where the optimizer has state that Hara's rows
        do not keep (momentum's v), from the epoch's start and its stored state instead."""
        r = 0 if j is None else int(self.row[j])
        if self.record.recipe.stateful and not self.stored.has_state:
            r = 0
        self.load_step(r)
        keep = np.ones(len(self.data.train), bool)
        if j is not None:
            keep[j] = False
        replay_steps(self.sgd, self.record, self.steps[r:], keep)

    def truth(self, j: int) -> Tuple[float, float]:
        """(true_linear, true_val_loss_change) of removing j."""
        self.replay_without(j)
        return float(self.u @ (flat_trainable() - self.theta)), self.val_loss_now() - self.val_loss


def read_counterfactuals(path: str) -> Dict[int, Tuple[float, float]]:
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        return {int(r["index"]): (float(r["true_linear"]), float(r["true_val_loss_change"]))
                for r in csv.DictReader(f)}


def write_counterfactuals(path: str, done: Dict[int, Tuple[float, float]]) -> None:
    lines = ["index,true_linear,true_val_loss_change"] + [f"{j},{a!r},{b!r}" for j, (a, b) in sorted(done.items())]
    layout.write_text(path, "\n".join(lines) + "\n")


def counterfactuals(data: Data, run_dir: str, idx: np.ndarray, args, net: Callable,
                    progress: bool) -> Tuple[Dict[int, Tuple[float, float]], np.ndarray, int]:
    """True values of every checked instance (resumed from the cache), each one's step position
    in the last epoch (0-based) and the number of steps of that epoch."""
    path = os.path.join(cache_dir(args.output_dir), "counterfactuals.csv")
    done = read_counterfactuals(path)
    cf = Counterfactuals(data, run_dir, args.batch_size, net)
    todo = [int(j) for j in idx if int(j) not in done]
    for j in tqdm(todo, desc="counterfactual retraining", disable=not progress, unit="instance"):
        done[j] = cf.truth(j)
        write_counterfactuals(path, done)
    return done, cf.row[idx], len(cf.steps)


# -------------------------------------------------------------------- metrics
def metrics_of(estimate: np.ndarray, truth: np.ndarray) -> Dict[str, float | None]:
    if not np.all(np.isfinite(estimate)):
        return {k: None for k in METRICS}
    return {k: float(f(estimate, truth)) for k, f in METRICS.items()}


def all_metrics(table: Dict[str, np.ndarray], picks: np.ndarray, methods: List[str]) -> dict:
    """{truth: {method: {subset: {metric: value}}}}, subsets: the uniformly drawn half ("random",
    the headline: an unbiased sample of the training set), Ours' tails ("tails": chosen by one
    estimator, so they flatter it) and all checked instances."""
    subsets = {"random": picks == "random", "tails": picks != "random", "all": np.ones(len(picks), bool)}
    return {truth: {m: {s: metrics_of(table[m][mask], table[truth][mask]) for s, mask in subsets.items()}
                    for m in methods}
            for truth in TRUTHS}


def error_by_steps_remaining(table: Dict[str, np.ndarray], steps: np.ndarray, n_steps: int,
                             methods: List[str]) -> List[dict]:
    """Error against true_linear by the number of steps replayed after j's batch (1, 2-4, 5-8, 9-16, ...).

    An estimate of an instance of the final step involves no propagation, so its error there
    is the batch-norm coupling and float32 noise alone; further back the retrace's
    linearisation (and, for Ours, theta[T] standing in for theta[t]) add theirs.
    """
    remaining = n_steps - steps
    truth = table["true_linear"]
    out, lo = [], 1
    while lo <= max(int(remaining.max()), 1):
        hi = 1 if lo == 1 else 2 * (lo - 1)
        sel = (remaining >= lo) & (remaining <= hi)
        if sel.any():
            row = {"steps_remaining": f"{lo}-{hi}" if hi > lo else str(lo), "n": int(sel.sum())}
            for m in methods:
                rel = np.abs(table[m][sel] - truth[sel]) / np.abs(truth[sel])
                row[m] = {"median_relative_error": float(np.median(rel)) if np.all(np.isfinite(rel)) else None,
                          "spearman": float(spearman(table[m][sel], truth[sel]))
                          if sel.sum() >= 3 and np.all(np.isfinite(table[m][sel])) else None}
            out.append(row)
        lo = hi + 1
    return out


def write_table(path: str, data: Data, idx: np.ndarray, picks: List[str], steps: np.ndarray,
                table: Dict[str, np.ndarray], methods: List[str]) -> None:
    buf = StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["datasource_index", "x:image", "y:label", "pick", "step_in_last_epoch"] + list(TRUTHS) + methods)
    for k, j in enumerate(idx):
        w.writerow([int(j), data.train.ids[j], int(data.train.y[j]), picks[k], int(steps[k])]
                   + [f"{table[c][k]:.9e}" for c in list(TRUTHS) + methods])
    layout.write_text(path, buf.getvalue())


def plot_scatter(path: str, method: str, table: Dict[str, np.ndarray], picks: np.ndarray, metrics: dict) -> None:
    plt = figures.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, truth in zip(axes, TRUTHS):
        x, y = table[truth], table[method]
        for pick, color in (("random", "tab:blue"), ("ours_low", "tab:red"), ("ours_high", "tab:green")):
            sel = picks == pick
            ax.scatter(x[sel], y[sel], s=12, c=color, label=pick, alpha=0.8)
        finite = np.isfinite(y)
        if finite.any():
            lo, hi = min(x.min(), y[finite].min()), max(x.max(), y[finite].max())
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
        s = metrics[truth][method]["random"]
        title = ("diverged" if s["spearman"] is None else
                 f"random picks: Spearman {s['spearman']:.3f}, Pearson {s['pearson']:.3f}")
        ax.set(xlabel=truth.replace("_", " "), ylabel=f"{method} estimate", title=title)
        figures.zero_lines(ax, vertical=True)
        ax.legend(fontsize=7)
    fig.suptitle(f"{method} vs actual counterfactual retraining")
    fig.tight_layout()
    figures.save(fig, path)


# --------------------------------------------------------------------- driver
# Settings of the LDS truths (the subsets and replays add to its cache, so they are not here).
LDS_SETTINGS = TRAIN_SETTINGS + ("n_val", "seed")


def settings_of(args) -> dict:
    return {k: getattr(args, k) for k in VALIDATION_SETTINGS}


def prepare_output(args, trainings: Sequence[lds.Training] = ()) -> None:
    """Reuse a training in -o only under the same settings; the same for the validation caches
    (with --lds, each training's LDS cache)."""
    out = args.output_dir
    layout.make_output_folder(out)
    layout.remove_stale_temporaries(out)
    vdir = validation_dir(out)
    run_json = os.path.join(out, "run.json")
    if os.path.exists(run_json):
        old = layout.read_settings(out)
        diff = differences({**PREDATING_VALUES, **old}, vars(args), TRAIN_SETTINGS)  # a run predating --net: cnn
        if diff:
            raise UserError(f"{out} holds a training of other settings ({'; '.join(diff)}); use another -o")
    else:
        layout.write_json(run_json, {"command": layout.portable_command(out, sys.argv), "tool": "validate_influence",
                                     "settings": layout.portable_settings(out, settings_of(args)),
                                     "code_version": code_version()})
    if args.lds:
        for t in trainings:
            folder = lds.cache_dir(out, t)
            if args.overwrite:
                shutil.rmtree(folder, ignore_errors=True)
            check_settings(folder, {**{k: getattr(args, k) for k in LDS_SETTINGS}, "seed": t.seed}, vdir,
                           "an LDS", "redo it")
        return
    if args.overwrite:
        shutil.rmtree(cache_dir(out), ignore_errors=True)
    check_settings(cache_dir(out), settings_of(args), vdir, "a validation", "redo it")


def ensure_training(args, data: Data, net: Callable, progress: bool, seconds: dict,
                    training: lds.Training | None = None) -> str:
    """The run folder of the trial (or of `training`), trained (with Hara's per-step store) unless it exists."""
    t = training or lds.Training(args.seed)
    run_dir = layout.train_dir(args.output_dir, t.seed, t.twin)
    if not (os.path.exists(step_record_path(run_dir)) and os.path.exists(step_params_path(run_dir, args.n_epochs - 1))):
        t0 = time.time()
        train(data, run_dir, t.seed, args.n_epochs, args.batch_size, args.lr, keep_step_params=True,
              progress=progress, net=net, augment=not args.no_augment, perturb_init=t.init_key,
              recipe=optimizer.from_args(args), lr_schedule=args.lr_schedule)
        seconds["train"] = seconds.get("train", 0.0) + time.time() - t0
    return run_dir


def all_estimates(methods: List[str], data: Data, run_dir: str, args, net: Callable, progress: bool,
                  seconds: dict, folder: str | None = None) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Scores of every method (cached); a diverged influence-functions solve gives NaNs and an error."""
    scores, errors = {}, {}
    for name in methods:
        t = time.time()
        try:
            scores[name] = cached_estimate(name, data, run_dir, args, net, progress, folder)
        except UserError as e:  # a diverged influence-functions solve: reported, not fatal
            if name != "Influence_functions":
                raise
            print(f"warning: {name}: {e}", file=sys.stderr)
            errors[name] = str(e)
            scores[name] = np.full(len(data.train), np.nan)
        seconds[name] = seconds.get(name, 0.0) + time.time() - t
    return scores, errors


def run_validation(args, data: Data, net: Callable = cnn, progress: bool = True) -> dict:
    """Train (or reuse), estimate, retrain per checked instance, and write the outputs; returns the summary."""
    prepare_output(args)
    seconds = {}
    run_dir = ensure_training(args, data, net, progress, seconds)
    methods = ["Ours"] + [m for m in ESTIMATORS if m in args.methods and m != "Ours"]  # Ours picks the tails
    scores, errors = all_estimates(methods, data, run_dir, args, net, progress, seconds)
    idx, picks = pick_instances(scores["Ours"], args.n_check, args.seed)
    t = time.time()
    truths, steps, n_steps = counterfactuals(data, run_dir, idx, args, net, progress)
    seconds["counterfactuals"] = time.time() - t

    table = {m: scores[m][idx] for m in methods}
    table["true_linear"] = np.array([truths[int(j)][0] for j in idx])
    table["true_val_loss_change"] = np.array([truths[int(j)][1] for j in idx])
    picks = np.array(picks)
    metrics = all_metrics(table, picks, methods)
    vdir = validation_dir(args.output_dir)
    write_table(os.path.join(vdir, "validation.csv"), data, idx, list(picks), steps, table, methods)
    by_steps = error_by_steps_remaining(table, steps, n_steps, methods)
    final = next((r for r in by_steps if r["steps_remaining"] == "1"), {"n": 0})  # j's batch is the last step
    summary = {"settings": settings_of(args), "n_checked": int(len(idx)),
               "picks": {p: int((picks == p).sum()) for p in ("ours_low", "ours_high", "random")},
               "headline": "random", "steps_in_last_epoch": n_steps, "metrics": metrics,
               "by_steps_remaining": by_steps,
               "final_step": {k: v for k, v in final.items() if k != "steps_remaining"}, "errors": errors,
               "seconds_this_run": {k: round(v, 1) for k, v in seconds.items()}}
    layout.write_json(os.path.join(vdir, "validation.json"), summary)
    for m in methods:
        plot_scatter(os.path.join(vdir, f"scatter_{m}.png"), m, table, picks, metrics)
    return summary


# ------------------------------------------------------------------ LDS units
def lds_training_unit(args, seed: int, twin: bool, load: lds.Loader | None = None, net: Callable | None = None,
                      progress: bool = False) -> dict:
    """Train one of the LDS's trainings unless it exists; {"train": seconds} of this unit."""
    data = load(seed) if load is not None else lds.load_data(args, seed)
    seconds: dict = {}
    ensure_training(args, data, net or network.checked(args, data.image_shape, data.n_classes), progress, seconds,
                    lds.Training(seed, twin))
    return seconds


def lds_score_unit(args, seed: int, twin: bool, method: str, load: lds.Loader | None = None,
                   net: Callable | None = None, progress: bool = False) -> Tuple[Dict[str, float], Dict[str, str]]:
    """One method's scores on one training, cached in that training's LDS cache; (seconds, errors)."""
    data = load(seed) if load is not None else lds.load_data(args, seed)
    t = lds.Training(seed, twin)
    targs = argparse.Namespace(**{**vars(args), "seed": seed})  # a seeded method (Random) draws with the trial
    seconds: dict = {}
    _, errors = all_estimates([method], data, layout.train_dir(args.output_dir, seed, twin), targs,
                              net or network.checked(args, data.image_shape, data.n_classes), progress, seconds,
                              lds.cache_dir(args.output_dir, t))
    return seconds, errors


def run_lds(args, load: lds.Loader, net: Callable = cnn, progress: bool = True) -> dict:
    """The LDS over `--trials` trainings (seeds seed..seed+trials-1, and with --lds-twin the first
    seed's twin): train each (or reuse), score every method on each, replay the subsets' removals
    of each; write lds.json, lds.csv, lds_<Method>.png, lds_trainings.png and lds_fractions.png (lds_all.* for the
    whole-training window: lds.result_path); returns the summary.
    `load(seed)` gives the data of a trial (in-process units; workers load it from args)."""
    trainings = lds.trainings_of(args.seed, args.trials, args.lds_twin)
    prepare_output(args, trainings)
    seconds: Dict[str, float] = {}
    errors: Dict[str, Dict[str, str]] = {t.name: {} for t in trainings}

    def add_seconds(unit, value):
        got = value[0] if isinstance(value, tuple) else value
        for key, v in got.items():
            seconds[key] = seconds.get(key, 0.0) + v
        if isinstance(value, tuple):
            errors[lds.Training(unit[1], unit[2]).name].update(value[1])

    t0 = time.time()
    run_units([(lds_training_unit, t.seed, t.twin) for t in trainings
               if not os.path.exists(step_record_path(layout.train_dir(args.output_dir, t.seed, t.twin)))],
              args, "LDS trainings", add_seconds, progress, load=load, net=net)
    run_units([(lds_score_unit, t.seed, t.twin, m) for t in trainings for m in args.methods], args,
              "LDS scores", add_seconds, progress, load=load, net=net)
    seconds["trainings_and_scores_wall"] = time.time() - t0
    t0 = time.time()
    fractions, m, k = args.lds_fraction, args.lds_subsets, args.noise_replays
    truths = lds.compute_truths(args, trainings, load, net, fractions, m, k, progress)
    seconds["replays_wall"] = time.time() - t0

    blocks, preds, rows = {}, {}, []
    rows.append("training,seed,fraction,subset,subset_size,truth_mean,"
                + ",".join(f"truth_replay_{r}" for r in range(k)) + "," + ",".join(f"sum_{n}" for n in args.methods))
    for t in trainings:
        folder = lds.cache_dir(args.output_dir, t)
        files = {name: layout.estimate_path(folder, name) for name in args.methods}
        scores = {name: np.load(f, allow_pickle=False) for name, f in files.items() if os.path.exists(f)}
        n = len(next(iter(scores.values()))) if scores else 0
        for name in args.methods:  # a diverged influence-functions solve saved nothing: no scores
            scores.setdefault(name, np.full(n, np.nan))
        blocks[t.name], preds[t.name] = [], {}
        for p in fractions:
            subsets = [lds.subset(n, p, s, t.seed) for s in range(m)]
            g = {name: lds.predictions(scores[name], subsets) for name in args.methods}
            preds[t.name][p] = g
            blocks[t.name].append(lds.lds_block(truths[t][p], g, p, n, t.seed, args.lds_window))
            for s in range(m):
                rows.append(",".join([t.name, str(t.seed), f"{p:g}", str(s), str(len(subsets[s])),
                                      repr(float(truths[t][p][s].mean()))]
                                     + [repr(float(v)) for v in truths[t][p][s]]
                                     + [repr(float(g[name][s])) for name in args.methods]))
    seeds = [t for t in trainings if not t.twin]
    across = lds.across_trainings({t.name: blocks[t.name] for t in seeds}, list(args.methods))
    twin = [t for t in trainings if t.twin]
    twin_rows = lds.twin_comparison(blocks[seeds[0].name], blocks[twin[0].name], across) if twin else None
    vdir = validation_dir(args.output_dir)
    summary = {"trainings": [{"training": t.name, "seed": t.seed, "theta0_perturbed": t.twin,
                              "blocks": blocks[t.name], "errors": errors[t.name]} for t in trainings],
               "across_trainings": across, "twin": twin_rows,
               "settings": {**settings_of(args), "lds_fraction": fractions, "lds_subsets": m, "noise_replays": k,
                            "trials": args.trials, "lds_twin": args.lds_twin, "methods": list(args.methods),
                            **({"published_bundle_size": args.published_bundle_size}
                               if "Hara_published" in args.methods else {}),
                            "lds_window": args.lds_window},
               "seconds_this_run": {key: round(v, 1) for key, v in seconds.items()}}
    w = lds.window_of(args)
    layout.write_text(lds.result_path(vdir, "lds.csv", w), "\n".join(rows) + "\n")
    layout.write_json(lds.result_path(vdir, "lds.json", w), summary)
    for name in args.methods:
        lds.plot_lds(lds.result_path(vdir, f"lds_{name}.png", w), name, blocks,
                     {t.name: truths[t] for t in trainings},
                     {t.name: {p: preds[t.name][p][name] for p in fractions} for t in trainings})
    lds.plot_trainings(lds.result_path(vdir, "lds_trainings.png", w), across, twin_rows)
    lds.plot_fractions(lds.result_path(vdir, "lds_fractions.png", w), across,
                       f"{w} window, {len(seeds)} training(s), {m} subsets, {k} paired replays per fraction")
    return summary


def fmt_interval(st: dict) -> str:
    lo, hi = st["ci95"]
    return f"{st['mean']:6.3f}" + ("" if lo is None else f" [{lo:6.3f}, {hi:6.3f}]")


def print_lds(summary: dict) -> None:
    for t in summary["trainings"]:
        for b in t["blocks"]:
            lo, hi = b["noise_ceiling_ci95"]
            print(f"{t['training']}, {b.get('window', 'last')} window: {b['fraction']:g} removed "
                  f"({b['subset_size']} instances), {b['subsets']} subsets, "
                  f"{b['replays']} paired replays: noise ceiling {b['noise_ceiling']:.3f} [{lo:.3f}, {hi:.3f}]")
            for name, r in b["methods"].items():
                if r["lds"] is None:
                    print(f"  {name:<20} (no scores)")
                else:
                    print(f"  {name:<20} LDS {r['lds']:6.3f} [{r['lds_ci95'][0]:6.3f}, {r['lds_ci95'][1]:6.3f}]"
                          f"   deterministic truth (replay 0 alone) {r['lds_single_replay']:6.3f}")
    for row in summary["across_trainings"]:
        k = len(row["trainings"])
        bound = row.get("max_lds_all_replays")
        print(f"over {k} training(s), {row['fraction']:g} removed: mean [95% t-interval]; "
              f"noise ceiling {fmt_interval(row['noise_ceiling'])}"
              + (f"; bound of a perfect estimator {fmt_interval(bound)}" if bound else ""))
        for name, st in row["methods"].items():
            single = row.get("methods_single_replay", {}).get(name)
            print(f"  {name:<20} LDS {fmt_interval(st) if st else '(no scores)'}"
                  + (f"   deterministic truth {fmt_interval(single)}" if single else ""))
        for pr in row["pairs"]:
            mark = "" if pr["excludes_zero"] is None else ("  interval excludes 0" if pr["excludes_zero"] else "")
            print(f"  {pr['a'] + ' - ' + pr['b']:<26} {fmt_interval(pr['difference'])}{mark}")
    for row in summary["twin"] or []:
        print(f"twin (theta[0] + half-ulp, same seed), {row['fraction']:g} removed: LDS seed / twin (sd over seeds)")
        for name, r in row["methods"].items():
            if r["lds"] is not None and r["lds_twin"] is not None:
                sd = "" if r["sd_over_seeds"] is None else f" ({r['sd_over_seeds']:.3f})"
                print(f"  {name:<20} {r['lds']:6.3f} / {r['lds_twin']:6.3f}{sd}")


def print_summary(summary: dict) -> None:
    print(f"{summary['picks']['random']} uniformly drawn instances (of {summary['n_checked']} checked); "
          f"Spearman / Kendall / Jaccard@10% / sign agreement vs true linear influence "
          f"(and Spearman vs true val-loss change):")
    for m, s in summary["metrics"]["true_linear"].items():
        a = s["random"]
        if a["spearman"] is None:
            print(f"  {m:<20} (no scores: {summary['errors'].get(m, 'not finite')})")
            continue
        v = summary["metrics"]["true_val_loss_change"][m]["random"]["spearman"]
        print(f"  {m:<20} {a['spearman']:6.3f} {a['kendall']:6.3f} {a['jaccard_top10_negative']:6.3f} "
              f"{a['sign_agreement']:6.3f}   ({v:6.3f})")


# LDS defaults (docs/accuracy.md, Group removals: the cheapest fraction and number of
# replays whose noise ceiling reached 0.8 on the make demo settings).
LDS_FRACTIONS = (0.5,)
# The default subset of a built-in dataset (-ds csv: all of the user's CSVs).
SUBSET = {"n_train": 1000, "n_val": 500}
LDS_SUBSETS = 50
LDS_REPLAYS = 2


def check_args(args) -> None:
    """Resolve the mode's defaults; a combination that makes no sense is one clear error."""
    optimizer.checked(args)
    for key, n in SUBSET.items():  # a subset of a built-in dataset; all of the user's CSVs
        if getattr(args, key) is None and args.dataset != "csv":
            setattr(args, key, n)
    lds_opts = {"--lds-fraction": args.lds_fraction, "--lds-subsets": args.lds_subsets,
                "--lds-window": args.lds_window,
                "--noise-replays": args.noise_replays, "--trials": args.trials, "--lds-twin": args.lds_twin}
    if args.methods and retrains_all(args.methods) and not (args.lds and args.lds_window == "all"):
        print("warning: Replay_all estimates retraining every epoch from theta[0]; the truths here retrain "
              "the last epoch only", file=sys.stderr)
    if not args.lds:
        given = [k for k, v in lds_opts.items() if v is not None]
        if given:
            raise UserError(f"{', '.join(given)} only apply with --lds; add --lds")
        args.methods = list(args.methods or SINGLE_DEFAULT)
        return
    args.lds_window = args.lds_window or "last"
    args.methods = list(dict.fromkeys(args.methods or (LDS_DEFAULT + (("Replay_all",) if args.lds_window == "all"
                                                                       else ()))))
    args.lds_fraction = sorted(set(args.lds_fraction or LDS_FRACTIONS))
    args.lds_subsets = args.lds_subsets or LDS_SUBSETS
    args.noise_replays = args.noise_replays or LDS_REPLAYS
    args.trials = args.trials or 1
    args.lds_twin = bool(args.lds_twin)
    if args.noise_replays < 2:
        raise UserError("--noise-replays must be at least 2: the noise ceiling compares two halves of the replays")
    if args.lds_subsets < 5:
        raise UserError("--lds-subsets must be at least 5 for a rank correlation over the subsets to mean anything")


def fit_default_methods(args, data: Data) -> None:
    """The default estimators less those that forward each sample alone (Ours_sample_alone) where the
    network has a batch norm that sees one sample as itself (network.Network.lone_batch_norms: the MLP on
    vectors), with a note; asked for by --methods they are one error line (network.checked)."""
    alone = [m for m in args.methods if METHODS[m].samples_alone]
    if alone and network.from_args(args).lone_batch_norms(data.image_shape, data.n_classes):
        print(f"note: --net {args.net} has batch norm on vectors, which a sample forwarded alone (batch size 1) "
              f"leaves blind to its input: {', '.join(alone)} left out", file=sys.stderr)
        args.methods = [m for m in args.methods if m not in alone]


def build_parser() -> argparse.ArgumentParser:
    driver = driver_parser("", "", ())  # the retrace defaults have one home: the drivers' parser
    p = argparse.ArgumentParser(description="Score each estimator against actual retraining of the last epoch: "
                                            "single-instance leave-one-out (default) or group removals (--lds). "
                                            "Hara et al.'s Sec. 7.1 check on small models: --protocol hara71 "
                                            "(see validate_influence.py --protocol hara71 --help).",
                                formatter_class=HelpFormatter)
    p.add_argument("-o", "--output_dir", default="output_validation",
                   help="output folder; a training there with the same settings is reused; results in OUT/validation")
    add_data_arguments(p, dataset="fashion_mnist", n_train=SUBSET["n_train"], n_val=SUBSET["n_val"], driver=False)
    p.add_argument("-e", "--n_epochs", type=positive_int, default=3, help="training epochs")
    p.add_argument("-bs", "--batch-size", type=positive_int, default=64, help="SGD mini-batch size")
    p.add_argument("--lr", type=positive_float, default=0.05, help="SGD learning rate")
    p.add_argument("--no-augment", action="store_true", help="train without random crop and flip")
    p.add_argument("--n-check", type=positive_int, default=100,
                   help="instances retrained without (a quarter from each tail of Ours, half at random)")
    p.add_argument("--methods", nargs="+", choices=list(ESTIMATORS), default=None, metavar="METHOD",
                   help=f"estimators to score, any of {' '.join(ESTIMATORS)} (default: {' '.join(SINGLE_DEFAULT)}; "
                        f"with --lds {' '.join(LDS_DEFAULT)}; Ours always in the single-instance check: "
                        f"it picks the tails)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="trial seed: split, training (train/seed_<seed>) and the random choice of instances (default: 0)")
    p.add_argument("--retrace", choices=RETRACE_CHOICES, default=driver.get_default("retrace"),
                   help="Hara/Ours retrace: central differences on the pinned network (fd) or double backward (exact; "
                        "recommended with --optimizer adam)")
    p.add_argument("--bn-coupling", choices=BN_COUPLING_CHOICES,
                   default=driver.get_default("bn_coupling"),
                   help="Hara/Ours retrace: include the batch-statistics change of a removal (as in the drivers)")
    add_published_bundle_size(p)
    add_replay_memory(p)
    p.add_argument("-di", "--device-id", type=device, default="0",
                   help="GPU id when nnabla-ext-cuda is installed, or cpu")
    p.add_argument("--overwrite", action="store_true",
                   help="redo the validation, or with --lds the LDS (the training is kept)")
    g = p.add_argument_group("LDS: group removals against the sum of the scores, with a noise ceiling "
                             "(docs/accuracy.md)")
    g.add_argument("--lds", action="store_true",
                   help="measure the linear datamodeling score of every method instead of the single-instance check")
    g.add_argument("--lds-fraction", type=open_fraction, nargs="+", default=None, metavar="P",
                   help=f"fractions of the training set removed per subset, one LDS each "
                        f"(default: {' '.join(f'{x:g}' for x in LDS_FRACTIONS)})")
    g.add_argument("--lds-subsets", type=positive_int, default=None, metavar="M",
                   help=f"random subsets per fraction (default: {LDS_SUBSETS})")
    g.add_argument("--noise-replays", type=positive_int, default=None, metavar="K",
                   help=f"paired replays per subset, each from theta[K-1] perturbed by a seeded half-ulp "
                        f"(replay 0: none); at least 2, for the noise ceiling (default: {LDS_REPLAYS})")
    g.add_argument("--lds-window", choices=lds.WINDOWS, default=None,
                   help="the truth: retraining the last epoch from theta[K-1] (last, default) or every epoch from "
                        "theta[0] (all: the drivers' -ra, Replay_all's counterfactual; the replays then perturb "
                        "theta[0]); cached apart, each lds.json block names its window")
    g.add_argument("--trials", type=positive_int, default=None, metavar="K",
                   help="trainings to measure the LDS on: seeds --seed..--seed+K-1, each with its own scores, "
                        "subsets and replays; over them each method's mean LDS and every pair's paired "
                        "difference with 95%% t-intervals (default: 1)")
    g.add_argument("--lds-twin", action="store_true", default=None,
                   help="also the first seed's twin: the same training with theta[0] moved by a seeded half-ulp "
                        "(how far apart rounding alone puts two LDS values, against the spread over seeds)")
    g.add_argument("--workers", type=positive_int, default=1,
                   help="processes for the LDS units (trainings, scores, replays)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the LDS replays on the workers of a running Dask scheduler (tcp://host:8786, "
                        "docs/cluster.md) instead of --workers")
    network.add_arguments(p)
    optimizer.add_arguments(p)
    add_if_arguments(p)
    return p


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    defaults = args.methods is None

    def body() -> None:
        check_args(args)
        set_context(args.device_id)
        data = data_for(args, args.seed)
        fit_to_data(args, data)
        if defaults:
            fit_default_methods(args, data)
        if args.batch_size > len(data.train):
            raise UserError(f"batch size {args.batch_size} is larger than the training set ({len(data.train)}); lower -bs")
        net = network.checked(args, data.image_shape, data.n_classes)
        if args.lds:
            print_lds(run_lds(args, lambda seed: data if seed == args.seed else lds.load_data(args, seed), net))
            w = lds.window_of(args)
            print(f"wrote {lds.result_path(validation_dir(args.output_dir), 'lds.json', w)}, "
                  f"{os.path.basename(lds.result_path('', 'lds.csv', w))}, "
                  f"{os.path.basename(lds.result_path('', 'lds_*.png', w))}")
        else:
            print_summary(run_validation(args, data, net))
            print(f"wrote {validation_dir(args.output_dir)}/validation.csv, validation.json, scatter_*.png")
    return run_command(body, args.output_dir)
