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
ablations of the Ours retrace reproducing the published code's variants
(`infl.retrace` options): `Ours_hu_over_batch` (u update with an extra
1/|S_t|) and `Ours_sample_alone` (per-sample gradients at batch size 1, batch
norm in training mode).

Resumable: each method's scores and the counterfactuals done so far are kept
in OUT/validation/cache/ (written atomically), and a re-run skips them.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from io import StringIO
from typing import Callable, Dict, List, Tuple

import numpy as np
from tqdm import tqdm

from datasets import DATASETS, Data
from models import cnn
from . import io
from .errors import UserError
from .graphs import GraphCache, evaluate, trainable_params
from .infl import load_final_model, retrace, val_gradient
from .metrics import jaccard_lowest, kendall_tau_b, pearson, sign_agreement, spearman
from .params import StepParamsReader, checkpoint_path, load_checkpoint, step_params_path
from .step_record import StepRecord, step_record_path
from .train import SGD, init_model, train

# name -> keyword arguments of infl.retrace (None: influence functions)
ESTIMATORS: Dict[str, dict | None] = {
    "Hara": dict(method="Hara"),
    "Ours": dict(method="Ours"),
    "Influence_functions": None,
    "Ours_hu_over_batch": dict(method="Ours", hu_over_batch=True),
    "Ours_sample_alone": dict(method="Ours", sample_grads_alone=True),
}
TRUTHS = ("true_linear", "true_val_loss_change")
METRICS = {"pearson": pearson, "spearman": spearman, "kendall": kendall_tau_b,
           "jaccard_top10_negative": jaccard_lowest, "sign_agreement": sign_agreement}
# Settings that determine the training; a training in -o is reused only when they match.
TRAIN_SETTINGS = ("dataset", "n_epochs", "batch_size", "lr", "n_train", "no_augment")
# Settings of the validation itself (its cache is reused only when they match).
VALIDATION_SETTINGS = TRAIN_SETTINGS + ("n_val", "n_check", "seed", "retrace", "bn_coupling", "if_alpha", "if_lr", "if_momentum", "if_epochs",
                                         "if_last_iterate")


def validation_dir(out: str) -> str:
    return os.path.join(out, "validation")


def cache_dir(out: str) -> str:
    return os.path.join(validation_dir(out), "cache")


# ------------------------------------------------------------------- estimates
def estimate(name: str, data: Data, run_dir: str, args, net: Callable, progress: bool) -> np.ndarray:
    """Scores of every training instance by estimator `name` (influence convention of infl.py)."""
    spec = ESTIMATORS[name]
    if spec is not None:
        return retrace(data, run_dir, batch_size=args.batch_size, progress=progress, net=net, mode=args.retrace,
                       bn_coupling=args.bn_coupling == "on", **spec)
    from influence_functions.infl import influence_functions
    load_final_model(data, run_dir, args.n_epochs, args.batch_size, net)
    scores, _, _ = influence_functions(data, val_gradient(data, net=net), alpha=args.if_alpha, lr=args.if_lr,
                                       momentum=args.if_momentum, epochs=args.if_epochs,
                                       batch_size=args.batch_size, seed=args.seed,
                                       average=not args.if_last_iterate, progress=progress, net=net)
    return scores


def cached_estimate(name: str, data: Data, run_dir: str, args, net: Callable, progress: bool) -> np.ndarray:
    path = os.path.join(cache_dir(args.output_dir), f"estimate_{name}.npy")
    if os.path.exists(path):
        return np.load(path, allow_pickle=False)
    scores = estimate(name, data, run_dir, args, net, progress)
    with io.atomic_path(path) as tmp:
        np.save(tmp, scores)
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
def flat_trainable() -> np.ndarray:
    return np.concatenate([p.d.ravel() for p in trainable_params().values()]).astype(np.float64)


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
        self.stored = StepParamsReader(step_params_path(run_dir, last))
        self.sgd = SGD(init_model(data, 0, batch_size, net), data)
        self.test_graphs = GraphCache(data.image_shape, data.n_classes, test=True, net=net)
        load_checkpoint(checkpoint_path(run_dir, self.record.n_epochs))
        self.theta = flat_trainable()
        self.u = np.concatenate([g.ravel() for g in val_gradient(data, net=net)]).astype(np.float64)
        self.val_loss = self.val_loss_now()

    def val_loss_now(self) -> float:
        return evaluate(self.test_graphs, self.data.normalize, self.data.val)[0]

    def replay_without(self, j: int) -> None:
        """Leave theta_{-j}[T] in the model: stored theta[t_j], then steps t_j..T-1 without j."""
        r = int(self.row[j])
        self.stored.load(r)
        keep = np.ones(len(self.data.train), bool)
        keep[j] = False
        for t in self.steps[r:]:
            self.sgd.replay(self.record, t, keep)

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
    io.write_text(path, "\n".join(lines) + "\n")


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
    """{truth: {method: {subset: {metric: value}}}}, subsets: all checked, and the random half only."""
    subsets = {"all": np.ones(len(picks), bool), "random": picks == "random"}
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
    io.write_text(path, buf.getvalue())


def plot_scatter(path: str, method: str, table: Dict[str, np.ndarray], picks: np.ndarray, metrics: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
        s = metrics[truth][method]["all"]
        title = "diverged" if s["spearman"] is None else f"Spearman {s['spearman']:.3f}, Pearson {s['pearson']:.3f}"
        ax.set(xlabel=truth.replace("_", " "), ylabel=f"{method} estimate", title=title)
        ax.axhline(0, c="0.7", lw=0.5)
        ax.axvline(0, c="0.7", lw=0.5)
        ax.legend(fontsize=7)
    fig.suptitle(f"{method} vs actual counterfactual retraining")
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------- driver
def settings_of(args) -> dict:
    return {k: getattr(args, k) for k in VALIDATION_SETTINGS}


def prepare_output(args) -> None:
    """Reuse a training in -o only under the same settings; the same for the validation cache."""
    out = args.output_dir
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {out}: {e.strerror}") from None
    io.remove_stale_temporaries(out)
    run_json = os.path.join(out, "run.json")
    if os.path.exists(run_json):
        with open(run_json) as f:
            old = json.load(f).get("settings", {})
        diff = [f"{k} {old.get(k)!r} -> {getattr(args, k)!r}" for k in TRAIN_SETTINGS if old.get(k) != getattr(args, k)]
        if diff:
            raise UserError(f"{out} holds a training of other settings ({'; '.join(diff)}); use another -o")
    else:
        from .experiment import code_version
        io.write_json(run_json, {"command": " ".join(sys.argv), "tool": "validate_influence",
                                 "settings": settings_of(args), "code_version": code_version()})
    vdir = validation_dir(out)
    if args.overwrite and os.path.isdir(vdir):
        shutil.rmtree(vdir)
    settings_path = os.path.join(cache_dir(out), "settings.json")
    if os.path.exists(settings_path):
        with open(settings_path) as f:
            old = json.load(f)
        diff = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in settings_of(args).items() if old.get(k) != v]
        if diff:
            raise UserError(f"{vdir} holds a validation of other settings ({'; '.join(diff)}); "
                            f"use another -o, or --overwrite to redo the validation")
    else:
        io.write_json(settings_path, settings_of(args))


def run_validation(args, data: Data, net: Callable = cnn, progress: bool = True) -> dict:
    """Train (or reuse), estimate, retrain per checked instance, and write the outputs; returns the summary."""
    prepare_output(args)
    run_dir = io.train_dir(args.output_dir, args.seed)
    seconds = {}
    t0 = time.time()
    if not (os.path.exists(step_record_path(run_dir)) and os.path.exists(step_params_path(run_dir, args.n_epochs - 1))):
        train(data, run_dir, args.seed, args.n_epochs, args.batch_size, args.lr, keep_step_params=True,
              progress=progress, net=net, augment=not args.no_augment)
        seconds["train"] = time.time() - t0
    methods = ["Ours"] + [m for m in ESTIMATORS if m in args.methods and m != "Ours"]  # Ours picks the tails
    scores, errors = {}, {}
    for name in methods:
        t = time.time()
        try:
            scores[name] = cached_estimate(name, data, run_dir, args, net, progress)
        except UserError as e:  # a diverged influence-functions solve: reported, not fatal
            print(f"warning: {name}: {e}", file=sys.stderr)
            errors[name] = str(e)
            scores[name] = np.full(len(data.train), np.nan)
        seconds[name] = time.time() - t
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
               "steps_in_last_epoch": n_steps, "metrics": metrics, "by_steps_remaining": by_steps,
               "final_step": {k: v for k, v in final.items() if k != "steps_remaining"}, "errors": errors,
               "seconds_this_run": {k: round(v, 1) for k, v in seconds.items()}}
    io.write_json(os.path.join(vdir, "validation.json"), summary)
    for m in methods:
        plot_scatter(os.path.join(vdir, f"scatter_{m}.png"), m, table, picks, metrics)
    return summary


def print_summary(summary: dict) -> None:
    print(f"{summary['n_checked']} instances; Spearman / Kendall / Jaccard@10% / sign agreement vs true linear influence "
          f"(and Spearman vs true val-loss change):")
    for m, s in summary["metrics"]["true_linear"].items():
        a = s["all"]
        if a["spearman"] is None:
            print(f"  {m:<20} (no scores: {summary['errors'].get(m, 'not finite')})")
            continue
        v = summary["metrics"]["true_val_loss_change"][m]["all"]["spearman"]
        print(f"  {m:<20} {a['spearman']:6.3f} {a['kendall']:6.3f} {a['jaccard_top10_negative']:6.3f} "
              f"{a['sign_agreement']:6.3f}   ({v:6.3f})")


def driver_choices(parser: argparse.ArgumentParser, dest: str) -> list:
    return next(a.choices for a in parser._actions if a.dest == dest)


def build_parser() -> argparse.ArgumentParser:
    from .experiment import _HelpFormatter, build_parser as driver_parser, nonneg_int, positive_float, positive_int
    driver = driver_parser("", "", ())  # the influence-functions defaults have one home: the drivers' parser
    p = argparse.ArgumentParser(description="Score each estimator (Hara, Ours, Influence_functions and the "
                                            "published code's two variants) against actual counterfactual "
                                            "retraining of the last epoch.", formatter_class=_HelpFormatter)
    p.add_argument("-o", "--output_dir", default="output_validation",
                   help="output folder; a training there with the same settings is reused; results in OUT/validation")
    p.add_argument("-ds", "--dataset", choices=[d for d in DATASETS if d != "csv"], default="fashion_mnist",
                   help="dataset")
    p.add_argument("--n-train", type=positive_int, default=1000, help="first N training instances after the split")
    p.add_argument("--n-val", type=positive_int, default=500, help="first N validation instances")
    p.add_argument("-e", "--n_epochs", type=positive_int, default=3, help="training epochs")
    p.add_argument("-bs", "--batch-size", type=positive_int, default=64, help="SGD mini-batch size")
    p.add_argument("--lr", type=positive_float, default=0.05, help="SGD learning rate")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $SGD_INFLUENCE_DATA or <repo>/data)")
    p.add_argument("--no-augment", action="store_true", help="train without random crop and flip")
    p.add_argument("--n-check", type=positive_int, default=100,
                   help="instances retrained without (a quarter from each tail of Ours, half at random)")
    p.add_argument("--methods", nargs="+", choices=list(ESTIMATORS), default=list(ESTIMATORS), metavar="METHOD",
                   help=f"estimators to score, any of {' '.join(ESTIMATORS)} (Ours always: it picks the tails)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="trial seed: split, training (train/seed_<seed>) and the random choice of instances (default: 0)")
    p.add_argument("--retrace", choices=driver_choices(driver, "retrace"), default=driver.get_default("retrace"),
                   help="Hara/Ours retrace: central differences on the pinned network (fd) or double backward (exact)")
    p.add_argument("--bn-coupling", choices=driver_choices(driver, "bn_coupling"),
                   default=driver.get_default("bn_coupling"),
                   help="Hara/Ours retrace: include the batch-statistics change of a removal (as in the drivers)")
    p.add_argument("-di", "--device-id", default="0", help="GPU id when nnabla-ext-cuda is installed")
    p.add_argument("--overwrite", action="store_true", help="redo the validation (the training is kept)")
    g = p.add_argument_group("influence functions (defaults: the drivers')")
    g.add_argument("--if-alpha", type=positive_float, default=driver.get_default("if_alpha"),
                   help="damping alpha")
    g.add_argument("--if-lr", type=positive_float, default=driver.get_default("if_lr"), help="solver learning rate")
    g.add_argument("--if-momentum", type=float, default=driver.get_default("if_momentum"), help="solver momentum")
    g.add_argument("--if-epochs", type=positive_int, default=driver.get_default("if_epochs"), help="solver epochs")
    g.add_argument("--if-last-iterate", action="store_true", help="the solver's last iterate instead of its tail average")
    return p


def main(argv) -> int:
    from datasets import load_dataset
    from .experiment import set_context
    args = build_parser().parse_args(argv)
    try:
        set_context(args.device_id)
        data = load_dataset(args.dataset, args.seed, args.data_dir, args.n_train, args.n_val, 1)
        if args.batch_size > len(data.train):
            raise UserError(f"batch size {args.batch_size} is larger than the training set ({len(data.train)}); lower -bs")
        summary = run_validation(args, data)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130
    print_summary(summary)
    print(f"wrote {validation_dir(args.output_dir)}/validation.csv, validation.json, scatter_*.png")
    return 0
