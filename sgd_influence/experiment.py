"""The four phases, shared by both drivers: train, influence, retrain, analyze.

Work is cut into independent units (one training per trial, one influence
file per method and trial, one retraining per method, n and trial). A unit
whose output file exists is finished and skipped, so an interrupted run
resumes where it stopped. With --workers N units run in N processes
(nnabla's CPU context uses one thread), with --scheduler on a Dask cluster
(cluster.py); results do not depend on either.
"""
from __future__ import annotations

import argparse
import functools
import glob
import json
import os
import platform
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
import multiprocessing as mp
from typing import Callable, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from datasets import DATASETS, load_dataset
from . import io
from .errors import UserError, run_command

DEFAULT_REMOVE = [0, 1, 10, 40, 100, 200, 600, 1000, 3000, 5000, 10000, 30000]


# ----------------------------------------------------------------------------- CLI
def positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def nonneg_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return v


def positive_float(text: str) -> float:
    v = float(text)
    if not v > 0 or not np.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def fraction(text: str) -> float:
    v = float(text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), got {text}")
    return v


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the ones that mean 'not set'."""

    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def build_parser(description: str, default_out: str, default_methods: Sequence[str]) -> argparse.ArgumentParser:
    """The options of both drivers; they differ only in the default output folder and methods."""
    p = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    p.add_argument("-o", "--output_dir", default=default_out, help="output folder (created; resumed if it exists)")
    p.add_argument("-e", "--n_epochs", type=positive_int, default=20, help="training epochs")
    p.add_argument("-nt", "--n_trials", type=positive_int, default=6, help="trials, seeded 0..nt-1")
    p.add_argument("-r", "--remove_n_list", type=nonneg_int, nargs="+", default=DEFAULT_REMOVE,
                   help="numbers of most negative instances to remove (sizes >= the training set are skipped)")
    p.add_argument("-ds", "--dataset", choices=DATASETS, default="cifar10", help="dataset")
    p.add_argument("-di", "--device-id", type=device, default="0",
                   help="GPU id when nnabla-ext-cuda is installed, or cpu (CPU always without the extension)")
    p.add_argument("-ra", "--retrain_all", action="store_true",
                   help="retrain every epoch from the initial parameters instead of only the last epoch")
    p.add_argument("-bs", "--batch-size", type=positive_int, default=64, help="SGD mini-batch size")
    p.add_argument("--lr", type=positive_float, default=0.05, help="SGD learning rate")
    p.add_argument("--n-train", type=positive_int, default=None, help="first N training instances after the split (default: all)")
    p.add_argument("--n-val", type=positive_int, default=None, help="first N validation instances (default: all)")
    p.add_argument("--n-test", type=positive_int, default=None, help="first N test instances (default: all)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $SGD_INFLUENCE_DATA or <repo>/data)")
    # Users' own data: Neural Network Console dataset CSVs (stored as absolute paths in run.json).
    p.add_argument("--train-csv", type=os.path.abspath, default=None,
                   help="-ds csv: training CSV (header x:image,y:label; image paths relative to the CSV's folder)")
    p.add_argument("--val-csv", type=os.path.abspath, default=None,
                   help="-ds csv: validation CSV (default: 10%% of --train-csv, drawn with the trial seed)")
    p.add_argument("--test-csv", type=os.path.abspath, default=None, help="-ds csv: test CSV")
    p.add_argument("--methods", nargs="+", choices=list(METHOD_UNITS), default=list(default_methods),
                   metavar="METHOD", help=f"methods to run, any of {' '.join(METHOD_UNITS)} "
                                          f"(one training serves them all)")
    p.add_argument("--no-augment", action="store_true",
                   help="train without random crop and flip (the published code augments)")
    p.add_argument("--label-noise", type=fraction, default=None, metavar="P",
                   help="flip the labels of round(P * n_train) training instances to another random class "
                        "(seeded by the trial; validation and test untouched); list in OUT/noise/flipped_<seed>.csv")
    p.add_argument("--retrace", choices=("fd", "exact"), default="fd",  # = infl.RETRACE_MODES
                   help="how Hara, Ours and TracIn_last take each step's Hessian-vector product and per-sample "
                        "products: central differences on the network pinned to its ReLU/max-pool branches "
                        "(about 2.7 training steps; Spearman 0.9999 against exact) or exact double backward (about 5)")
    p.add_argument("--bn-coupling", choices=("on", "off"), default="on",
                   help="Hara, Ours, TracIn_last with batch norm: the per-sample derivative includes the change of "
                        "the batch statistics that removing the sample causes (on: the retrace's batch norm weights "
                        "its statistics by the per-sample weights) or holds them fixed (off: the convention before)")
    p.add_argument("--workers", type=positive_int, default=1, help="parallel processes for independent units")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the units on the workers of a running Dask scheduler, e.g. tcp://host:8786, "
                        "instead of --workers (docs/cluster.md)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete this tool's results in the output folder and start afresh")
    g = p.add_argument_group("influence functions (method Influence_functions): v = (H + alpha I)^-1 u "
                             "by SGD with momentum")
    # The published code uses alpha 10 on CIFAR-10 and 0.1 elsewhere; 0.1 and 1 diverged on the
    # Fashion-MNIST demo model (README "The influence-functions driver"), so 10 everywhere.
    g.add_argument("--if-alpha", type=positive_float, default=10.0,
                   help="damping alpha (published: 10 on cifar10, 0.1 otherwise; 0.1 diverges, see README)")
    g.add_argument("--if-lr", type=positive_float, default=0.005, help="solver learning rate")
    g.add_argument("--if-momentum", type=float, default=0.9, help="solver heavy-ball momentum")
    g.add_argument("--if-epochs", type=positive_int, default=2, help="solver epochs over the training set")
    g.add_argument("--if-last-iterate", action="store_true",
                   help="use the solver's last iterate (as published) instead of the mean over its second half")
    return p


# ------------------------------------------------------------------ process setup
def device(text: str) -> str:
    """-di: a GPU id (0, 1, ...) or `cpu`."""
    if text.lower() == "cpu" or text.isdigit():
        return text.lower()
    raise argparse.ArgumentTypeError(f"must be a GPU id (0, 1, ...) or cpu, got {text}")


def cuda_installed() -> bool:
    import importlib.util
    return importlib.util.find_spec("nnabla_ext.cuda") is not None


# Set before the CUDA context exists (both are read once, when it is created):
# deterministic cuDNN algorithms, and no TF32 -- on Ampere/Hopper cuDNN may round float32
# convolution operands to TF32 (about 4.9e-4 relative), coarser than the fd retrace's step
# (3e-4 of |theta|), which would make its central differences noise.
GPU_ENVIRONMENT = {"NNABLA_CUDNN_DETERMINISTIC": "1", "NVIDIA_TF32_OVERRIDE": "0"}


def set_context(device_id: str) -> str:
    """cudnn on GPU `device_id` when nnabla-ext-cuda is installed and `device_id` is not
    "cpu"; else the CPU (as the published code). A GPU that cannot be used is one clear error."""
    import nnabla as nn
    from nnabla.ext_utils import get_extension_context
    device_id = str(device_id)
    if device_id == "cpu" or not cuda_installed():
        nn.set_default_context(get_extension_context("cpu"))
        return "cpu"
    for k, v in GPU_ENVIRONMENT.items():
        os.environ.setdefault(k, v)
    try:
        nn.set_default_context(get_extension_context("cudnn", device_id=device_id))
        probe = nn.Variable.from_numpy_array(np.ones(2, np.float32))
        import nnabla.functions as F
        out = F.add_scalar(probe, 1.0)
        out.forward()
        float(out.d[0])
    except Exception as e:  # the extension's errors have no common type
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"GPU {device_id} cannot be used ({why}); run on the CPU with -di cpu, "
                        f"or give a GPU id that exists (nvidia-smi -L lists them)") from None
    return "cudnn"


@functools.lru_cache(maxsize=2)
def get_data(dataset, seed, data_dir, n_train, n_val, n_test, train_csv, val_csv, test_csv, label_noise=None):
    """The trial's data; with `label_noise` its training labels flipped (every phase sees the same)."""
    from .noise import with_label_noise
    data = load_dataset(dataset, seed, data_dir, n_train, n_val, n_test, train_csv, val_csv, test_csv)
    return with_label_noise(data, label_noise, seed) if label_noise else data


# Options whose default changed the results when they were added: a run that predates one
# was made with this value, not with the current default.
PREDATING_VALUES = {"bn_coupling": "off"}


def args_from_settings(settings: dict) -> argparse.Namespace:
    """The arguments a run was made with, from its run.json settings; options the run
    predates take their current defaults (or their `PREDATING_VALUES`)."""
    args = build_parser("", "", ()).parse_args([])
    vars(args).update(PREDATING_VALUES)
    vars(args).update(settings)
    return args


def data_for(args, seed: int):
    return get_data(args.dataset, seed, args.data_dir, args.n_train, args.n_val, args.n_test,
                    args.train_csv, args.val_csv, args.test_csv, args.label_noise)


def run_units(units: List[tuple], args, desc: str, on_result: Optional[Callable] = None, progress: bool = True,
              **inline) -> None:
    """Run fn(args, *rest) for every unit (fn, *rest), in-process or in a process pool of
    args.workers; on_result(unit, value), if given, in this process as each unit finishes.
    `inline` keyword arguments go to in-process calls only (workers build theirs from args)."""
    if not units:
        return
    if getattr(args, "scheduler", None):
        from .cluster import run_units as run_on_cluster
        run_on_cluster(units, args, desc, on_result, progress)
        return
    if args.workers == 1 or len(units) == 1:
        for u in tqdm(units, desc=desc, unit="unit", disable=not progress or len(units) == 1):
            value = u[0](args, *u[1:], progress=progress, **inline)
            if on_result:
                on_result(u, value)
        return
    ctx = mp.get_context("spawn")
    pool = ProcessPoolExecutor(min(args.workers, len(units)), mp_context=ctx,
                               initializer=set_context, initargs=(args.device_id,))
    try:
        futures = {pool.submit(u[0], args, *u[1:], progress=False): u for u in units}
        for f in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="unit", disable=not progress):
            value = f.result()
            if on_result:
                on_result(futures[f], value)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # drop queued units; running ones finish cleanly
        raise
    pool.shutdown()


# ------------------------------------------------------------------------ units
def train_done(args, seed: int) -> bool:
    from .params import step_params_path
    from .step_record import step_record_path
    d = io.train_dir(args.output_dir, seed)
    done = os.path.exists(step_record_path(d))
    if "Hara" in args.methods:
        done = done and os.path.exists(step_params_path(d, args.n_epochs - 1))
    return done


def train_unit(args, seed: int, progress: bool = True) -> None:
    from .train import train
    train(data_for(args, seed), io.train_dir(args.output_dir, seed), seed, args.n_epochs,
          args.batch_size, args.lr, keep_step_params="Hara" in args.methods, progress=progress,
          augment=not args.no_augment)


# Retrace-based methods: (parameters the retrace uses, whether u is retraced).
RETRACES = {"Hara": ("Hara", True), "Ours": ("Ours", True), "TracIn_last": ("Ours", False)}


def retrace_unit(args, method: str, seed: int, progress: bool = True) -> None:
    from .infl import retrace
    data = data_for(args, seed)
    params, retrace_u = RETRACES[method]
    influence = retrace(data, io.train_dir(args.output_dir, seed), params, args.batch_size, progress,
                        retrace_u=retrace_u, mode=args.retrace, bn_coupling=args.bn_coupling == "on")
    io.write_influence_csv(io.influence_path(args.output_dir, method, seed),
                           data.train.ids, data.train.y, influence)


def random_unit(args, method: str, seed: int, progress: bool = True) -> None:
    """Control: a seeded random removal order (the 'influence' column is the random key)."""
    from .controls import random_key
    data = data_for(args, seed)
    io.write_influence_csv(io.influence_path(args.output_dir, method, seed),
                           data.train.ids, data.train.y, random_key(len(data.train), seed))


def loss_unit(args, method: str, seed: int, progress: bool = True) -> None:
    """Control: the negated training loss at theta[T] (highest loss removed first), see controls.py."""
    from .controls import negated_training_loss
    from .infl import load_final_model
    data = data_for(args, seed)
    load_final_model(data, io.train_dir(args.output_dir, seed), args.n_epochs, args.batch_size)
    io.write_influence_csv(io.influence_path(args.output_dir, method, seed),
                           data.train.ids, data.train.y, negated_training_loss(data))


def influence_functions_unit(args, method: str, seed: int, progress: bool = True) -> None:
    from influence_functions.infl import influence_functions
    from influence_functions.report import write_solver_summary, write_solver_trace
    from .infl import load_final_model, val_gradient
    data = data_for(args, seed)
    load_final_model(data, io.train_dir(args.output_dir, seed), args.n_epochs, args.batch_size)
    settings = dict(alpha=args.if_alpha, lr=args.if_lr, momentum=args.if_momentum, epochs=args.if_epochs,
                    batch_size=args.batch_size, seed=seed, average=not args.if_last_iterate)
    influence, trace, check = influence_functions(data, val_gradient(data), progress=progress, **settings)
    write_solver_trace(args.output_dir, seed, trace)
    write_solver_summary(args.output_dir, seed, settings, check)
    io.write_influence_csv(io.influence_path(args.output_dir, method, seed),  # last: marks the unit done
                           data.train.ids, data.train.y, influence)


# Every method a driver can run: its unit writes OUT/influence/<Method>/influence_<method>_<seed>.csv.
METHOD_UNITS = {"Hara": retrace_unit, "Ours": retrace_unit, "Influence_functions": influence_functions_unit,
                "TracIn_last": retrace_unit, "Loss": loss_unit, "Random": random_unit}


def eval_unit(args, methods: tuple, n: int, seed: int, progress: bool = True) -> None:
    """Retrain without the n first instances of the method's order; n = 0 is shared."""
    from .eval import retrain
    data = data_for(args, seed)
    removed = io.read_removal_order(io.influence_path(args.output_dir, methods[0], seed))[:n] if n else []
    rows = retrain(data, io.train_dir(args.output_dir, seed), removed, args.retrain_all, args.batch_size)
    for m in methods:
        io.write_score_csv(io.score_path(args.output_dir, m, n, seed), rows)


def unit_needs(unit: tuple, earlier: tuple) -> bool:
    """Whether `unit` reads what `earlier`, a unit of an earlier phase, writes: units of one
    trial (the last element of each unit) read its training; a retraining that removes
    instances (n > 0) reads the influence files of its methods."""
    if unit[-1] != earlier[-1]:
        return False
    return earlier[0] is train_unit or (unit[0] is eval_unit and unit[2] > 0 and earlier[1] in unit[1])


def write_flipped(args, seeds: Sequence[int]) -> None:
    """OUT/noise/flipped_<seed>.csv for every trial that lacks it."""
    from .noise import noise_path, write_flipped_csv
    for s in seeds:
        path = noise_path(args.output_dir, s)
        if not os.path.exists(path):
            write_flipped_csv(path, data_for(args, s), args.label_noise, s)


# ------------------------------------------------------------------------ driver
# Settings that change results: a folder's results are only resumed under the same values.
RESULT_SETTINGS = ("dataset", "n_epochs", "batch_size", "lr", "n_train", "n_val", "n_test", "retrain_all",
                   "no_augment", "train_csv", "val_csv", "test_csv", "label_noise")
# Settings that change one method's results only: changing them is refused only once that
# method has results in the folder (so a diverged solve can be re-run without retraining).
METHOD_SETTINGS = {"Influence_functions": ("if_alpha", "if_lr", "if_momentum", "if_epochs", "if_last_iterate"),
                   **{m: ("retrace", "bn_coupling") for m in RETRACES}}
RESULT_PATHS = ("run.json", "train", "noise", "influence", "score", "summary", "fig")


def check_or_reset_output(args) -> None:
    """Refuse to mix results of different settings in one folder (or wipe with --overwrite)."""
    import shutil
    path = os.path.join(args.output_dir, "run.json")
    if args.overwrite:
        for name in RESULT_PATHS:
            p = os.path.join(args.output_dir, name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
        return
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f).get("settings", {})
    new = vars(args)
    keys = list(RESULT_SETTINGS)
    for method, settings in METHOD_SETTINGS.items():
        if any(glob.glob(os.path.join(args.output_dir, part, method, "*")) for part in ("influence", "score")):
            keys += settings
    old = vars(args_from_settings(old))  # settings a run predates count at their defaults
    diff = [f"{k} {old[k]!r} -> {new[k]!r}" for k in keys if old[k] != new[k]]
    if diff:
        raise UserError(f"{args.output_dir} holds results of other settings ({'; '.join(diff)}); "
                        f"use another -o, or --overwrite to start afresh")


def code_version() -> str:
    """The git commit of this checkout (with '+dirty' for local changes), or 'unknown'."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) or "unknown"


def write_run_json(args, context: str) -> None:
    import nnabla
    settings = {k: v for k, v in vars(args).items() if k != "overwrite"}
    info = {"command": " ".join(sys.argv), "settings": settings, "context": context,
            **({"gpu_environment": {k: os.environ.get(k) for k in GPU_ENVIRONMENT}} if context == "cudnn" else {}),
            "code_version": code_version(), "python": platform.python_version(),
            "nnabla": nnabla.__version__, "numpy": np.__version__}
    io.write_json(os.path.join(args.output_dir, "run.json"), info)


def run_experiment(args) -> None:
    """Train, compute influence per method, retrain per removal size, analyze."""
    from .analyze import analyze
    context = set_context(args.device_id)
    seeds = list(range(args.n_trials))
    data = data_for(args, 0)  # fail early on missing data or bad sizes
    n_train = len(data.train)
    if args.batch_size > n_train:
        raise UserError(f"batch size {args.batch_size} is larger than the training set ({n_train}); lower -bs")
    sizes = sorted(set(args.remove_n_list))
    skipped = [n for n in sizes if n >= n_train]
    if skipped:
        print(f"warning: skipping removal sizes >= the training set ({n_train}): {skipped}", file=sys.stderr)
    sizes = [n for n in sizes if n < n_train]
    try:
        os.makedirs(args.output_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {args.output_dir}: {e.strerror}") from None
    check_or_reset_output(args)
    io.remove_stale_temporaries(args.output_dir)
    write_run_json(args, context)
    print(f"{args.dataset}: {n_train} train / {len(data.val)} val / {len(data.test)} test, "
          f"image {data.image_shape}, context {context}, output {os.path.abspath(args.output_dir)}")

    if args.label_noise:
        write_flipped(args, seeds)
    units = []
    for s in seeds:
        if 0 in sizes and not all(os.path.exists(io.score_path(args.output_dir, m, 0, s)) for m in args.methods):
            units.append((eval_unit, tuple(args.methods), 0, s))
        units += [(eval_unit, (m,), n, s) for m in args.methods for n in sizes
                  if n > 0 and not os.path.exists(io.score_path(args.output_dir, m, n, s))]
    phases = [("train", [(train_unit, s) for s in seeds if not train_done(args, s)]),
              ("influence", [(METHOD_UNITS[m], m, s) for s in seeds for m in args.methods
                             if not os.path.exists(io.influence_path(args.output_dir, m, s))]),
              ("retrain", units)]
    if args.scheduler:  # all phases at once, each unit after the units it needs
        from .cluster import run_phases
        run_phases(args, phases, unit_needs)
    else:
        for desc, phase_units in phases:
            run_units(phase_units, args, desc)
    analyze(args.output_dir, skipped=skipped)


def main(argv, description: str, default_out: str, default_methods: Sequence[str]) -> int:
    """A driver: parse `argv`, run the experiment, turn user errors into one line and exit code 2."""
    args = build_parser(description, default_out, default_methods).parse_args(argv)
    return run_command(lambda: run_experiment(args), args.output_dir)
