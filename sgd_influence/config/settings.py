"""Settings: the options shared by the drivers, validate_influence.py and the benchmark,
their validators, the nnabla context, the comparison of saved settings, and the data of a
settings dict.

A run's result settings are saved in OUT/run.json; a folder's results are resumed or merged
only under the same values (`differences`). Options added after a run was made count at the
value they had before they existed (`PREDATING_VALUES`).
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import subprocess
import sys
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import nnabla as nn
import nnabla.functions as F
from nnabla.ext_utils import get_extension_context

from datasets import DATASETS, load_dataset
from ..base import layout
from ..base.argtypes import fraction, nonneg_int, positive_float, positive_int
from ..base.environment import ROOT
from ..core import network, optimizer
from ..core.published import BUNDLE_SIZE
from ..base.errors import UserError
from ..base.methods import DRIVER_METHODS, METHODS
from .noise import with_label_noise

RETRACE_CHOICES = ("fd", "exact")  # = graphs.RETRACE_GRAPHS (tests/test_retrace.py checks)
BN_COUPLING_CHOICES = ("on", "off")
DEFAULT_REMOVE = [0, 1, 10, 40, 100, 200, 600, 1000, 3000, 5000, 10000, 30000]
# Replay's default memory budget for its copies of theta[t]: this fraction of the memory available
# when its unit starts (each unit, so with --workers N up to N times this while they run together).
REPLAY_MEMORY_FRACTION = 0.25


# ----------------------------------------------------------------------------- options
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the ones that mean 'not set'."""

    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def device(text: str) -> str:
    """-di: a GPU id (0, 1, ...) or `cpu`."""
    if text.lower() == "cpu" or text.isdigit():
        return text.lower()
    raise argparse.ArgumentTypeError(f"must be a GPU id (0, 1, ...) or cpu, got {text}")


def build_parser(description: str, default_out: str, default_methods: Sequence[str]) -> argparse.ArgumentParser:
    """The options of both drivers; they differ only in the default output folder and methods."""
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    p.add_argument("-o", "--output_dir", default=default_out, help="output folder (created; resumed if it exists)")
    p.add_argument("-e", "--n_epochs", type=positive_int, default=20, help="training epochs")
    p.add_argument("-nt", "--n_trials", type=positive_int, default=6, help="trials, seeded 0..nt-1")
    p.add_argument("-r", "--remove_n_list", type=nonneg_int, nargs="+", default=DEFAULT_REMOVE,
                   help="numbers of most negative instances to remove (sizes >= the training set are skipped)")
    p.add_argument("-di", "--device-id", type=device, default="0",
                   help="GPU id when nnabla-ext-cuda is installed, or cpu (CPU always without the extension)")
    p.add_argument("-ra", "--retrain_all", action="store_true",
                   help="retrain every epoch from the initial parameters instead of only the last epoch")
    p.add_argument("-bs", "--batch-size", type=positive_int, default=64, help="SGD mini-batch size")
    p.add_argument("--lr", type=positive_float, default=0.05, help="SGD learning rate")
    add_data_arguments(p)
    p.add_argument("--methods", nargs="+", choices=list(DRIVER_METHODS), default=list(default_methods),
                   metavar="METHOD", help=f"methods to run, any of {' '.join(DRIVER_METHODS)} "
                                          f"(one training serves them all)")
    p.add_argument("--random-orders", type=positive_int, default=1, metavar="R",
                   help="Random: R seeded removal orders per trial, each with its own retraining at every n; "
                        "analyze compares each method with their mean (a larger R later adds only the new orders)")
    p.add_argument("--no-augment", action="store_true",
                   help="train without random crop and flip (the published code augments)")
    p.add_argument("--retrace", choices=RETRACE_CHOICES, default="fd",
                   help="how Hara, Ours, Replay, Replay_all and TracIn_last take each step's Hessian-vector product and per-sample "
                        "products: central differences on the network pinned to its ReLU/max-pool branches "
                        "(about 2.7 training steps; Spearman 0.9999 against exact) or exact double backward (about 5; "
                        "with --optimizer adam exact is recommended, see docs/method.md)")
    p.add_argument("--bn-coupling", choices=BN_COUPLING_CHOICES, default="on",
                   help="Hara, Ours, Replay, Replay_all, TracIn_last with batch norm: the per-sample derivative includes the "
                        "change of the batch statistics that removing the sample causes (on: the retrace's batch norm "
                        "weights its statistics by the per-sample weights) or holds them fixed (off: the convention "
                        "before)")
    add_published_bundle_size(p)
    add_replay_memory(p)
    network.add_arguments(p)
    optimizer.add_arguments(p)
    p.add_argument("--workers", type=positive_int, default=1, help="parallel processes for independent units")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the units on the workers of a running Dask scheduler, e.g. tcp://host:8786, "
                        "instead of --workers (docs/cluster.md)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete this tool's results in the output folder and start afresh")
    add_if_arguments(p)
    return p


def add_if_arguments(p: argparse.ArgumentParser) -> None:
    """The influence-functions solver's options (the drivers and validate_influence.py)."""
    g = p.add_argument_group("influence functions (method Influence_functions): v = (H + alpha I)^-1 u "
                             "by SGD with momentum")
    # The published code uses alpha 10 on CIFAR-10 and 0.1 elsewhere; 0.1 and 1 diverged on the
    # Fashion-MNIST demo model (docs/influence_functions.md), so 10 everywhere.
    g.add_argument("--if-alpha", type=positive_float, default=10.0,
                   help="damping alpha (published: 10 on cifar10, 0.1 otherwise; 0.1 diverges, see docs/influence_functions.md)")
    g.add_argument("--if-lr", type=positive_float, default=0.005, help="solver learning rate")
    g.add_argument("--if-momentum", type=fraction, default=0.9, help="solver heavy-ball momentum, in [0, 1)")
    g.add_argument("--if-epochs", type=positive_int, default=2, help="solver epochs over the training set")
    g.add_argument("--if-last-iterate", action="store_true",
                   help="use the solver's last iterate (as published) instead of the mean over its second half")


def add_published_bundle_size(p: argparse.ArgumentParser) -> None:
    """--published-bundle-size N (the drivers, validate_influence.py)."""
    p.add_argument("--published-bundle-size", type=positive_int, default=BUNDLE_SIZE, metavar="N",
                   help="Hara_published: steps per bundle of the published per-step cache, whose files all hold the "
                        "parameters of their bundle's last step (published: 200; 1: every step its own)")


def add_data_arguments(p: argparse.ArgumentParser, dataset: str = "cifar10", n_train: Optional[int] = None,
                       n_val: Optional[int] = None, driver: bool = True) -> None:
    """The data options, one definition for the drivers and (`driver=False`) validate_influence.py:
    -ds, --n-train/--n-val/--n-test, --data-dir, the CSVs of -ds csv and --label-noise. `n_train` and
    `n_val`: validate's subset of a built-in dataset, named in the help (its default stays None: the
    command sets it, `-ds csv` keeps all); validate has no --n-test (it tests nothing)."""
    def first(what: str, default: Optional[int]) -> str:
        return f"first N {what}" + (" (default: all)" if default is None else
                                    f" (default: {default} of a built-in dataset, all of -ds csv)")

    p.add_argument("-ds", "--dataset", choices=DATASETS, default=dataset, help="dataset")
    p.add_argument("--n-train", type=positive_int, default=None, help=first("training instances after the split", n_train))
    p.add_argument("--n-val", type=positive_int, default=None, help=first("validation instances", n_val))
    if driver:
        p.add_argument("--n-test", type=positive_int, default=None, help=first("test instances", None))
    else:
        p.set_defaults(n_test=0)  # no test split (-ds csv then needs no --test-csv)
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $SGD_INFLUENCE_DATA or <repo>/data)")
    # Users' own data: Neural Network Console dataset CSVs (absolute here; run.json stores them relative to
    # the output folder and layout.read_settings resolves them).
    p.add_argument("--train-csv", type=os.path.abspath, default=None,
                   help="-ds csv: training CSV, a Neural Network Console dataset CSV: header x:image,y:label (image "
                        "paths relative to the CSV's folder) or x__0,...,x__N,y (numbers); README, 'Your own data'")
    p.add_argument("--val-csv", type=os.path.abspath, default=None,
                   help="-ds csv: validation CSV (default: 10%% of --train-csv, drawn with the trial seed)")
    p.add_argument("--test-csv", type=os.path.abspath, default=None,
                   help="-ds csv: test CSV" + ("" if driver else " (optional here: only its class indices count)"))
    p.add_argument("--label-noise", type=fraction, default=None, metavar="P",
                   help="flip the labels of round(P * n_train) training instances to another random class "
                        "(seeded by the trial; validation and test untouched)"
                        + ("; list in OUT/noise/flipped_<seed>.csv" if driver else ""))


def fit_to_data(args, data) -> None:
    """The settings that follow the data, before they are recorded: --net's default (`cnn` for
    images, `mlp` for any other input) and, for inputs that are not images, no augmentation
    (random crop and flip of images do not apply: one line says so, as if --no-augment)."""
    if args.net is None:
        args.net = network.default_for(data.images)
    if not data.images and not args.no_augment:
        print(f"note: the inputs are not images (shape {tuple(data.image_shape)}), so random crop and flip do "
              f"not apply: training without them (as --no-augment)", file=sys.stderr)
        args.no_augment = True


def add_replay_memory(p: argparse.ArgumentParser) -> None:
    """--replay-memory MB (the drivers, validate_influence.py, the benchmark)."""
    p.add_argument("--replay-memory", type=positive_float, default=None, metavar="MB",
                   help=f"Replay (Replay_all): memory for its copies of the last epoch's (every epoch's) parameters "
                        f"theta[t], in MB (10^6 bytes); all in memory when they fit, else checkpoints and re-replayed segments "
                        f"(default: {REPLAY_MEMORY_FRACTION * 100:.0f}%% of the memory available when its unit starts)")


def available_memory() -> Optional[int]:
    """Bytes of memory available now (Linux MemAvailable; else free pages), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def replay_budget(mb: Optional[float]) -> Tuple[Optional[int], str]:
    """Replay's memory budget in bytes and where it came from: --replay-memory MB, else
    REPLAY_MEMORY_FRACTION of the available memory (None, no limit, where that is unknown)."""
    if mb is not None:
        return int(mb * 1e6), f"--replay-memory {mb:g}"
    free = available_memory()
    if free is None:
        return None, "no limit (available memory unknown)"
    return int(REPLAY_MEMORY_FRACTION * free), f"{REPLAY_MEMORY_FRACTION:.0%} of {free / 1e6:.0f} MB available"


# ----------------------------------------------------------------------------- context
def cuda_installed() -> bool:
    return importlib.util.find_spec("nnabla_ext.cuda") is not None


# Set before the CUDA context exists (both are read once, when it is created):
# deterministic cuDNN algorithms, and no TF32 -- on Ampere/Hopper cuDNN may round float32
# convolution operands to TF32 (about 4.9e-4 relative), coarser than the fd retrace's step
# (3e-4 of |theta|), which would make its central differences noise.
GPU_ENVIRONMENT = {"NNABLA_CUDNN_DETERMINISTIC": "1", "NVIDIA_TF32_OVERRIDE": "0"}


def set_context(device_id: str) -> str:
    """cudnn on GPU `device_id` when nnabla-ext-cuda is installed and `device_id` is not
    "cpu"; else the CPU (as the published code). A GPU that cannot be used is one clear error."""
    device_id = str(device_id)
    if device_id == "cpu" or not cuda_installed():
        nn.set_default_context(get_extension_context("cpu"))
        return "cpu"
    for k, v in GPU_ENVIRONMENT.items():
        os.environ.setdefault(k, v)
    try:
        nn.set_default_context(get_extension_context("cudnn", device_id=device_id))
        probe = nn.Variable.from_numpy_array(np.ones(2, np.float32))
        out = F.add_scalar(probe, 1.0)
        out.forward()
        float(out.d[0])
    except Exception as e:  # the extension's errors have no common type
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"GPU {device_id} cannot be used ({why}); run on the CPU with -di cpu, "
                        f"or give a GPU id that exists (nvidia-smi -L lists them)") from None
    return "cudnn"


# ----------------------------------------------------------------------------- saved settings
# Settings that change results: a folder's results are only resumed under the same values.
RESULT_SETTINGS = ("dataset", "n_epochs", "batch_size", "lr", "n_train", "n_val", "n_test", "retrain_all",
                   "no_augment", "train_csv", "val_csv", "test_csv", "label_noise", *network.SETTING_DEFAULTS,
                   *optimizer.SETTING_DEFAULTS)
# Settings that change one method's results only: changing them is refused only once that
# method has results in the folder (so a diverged solve can be re-run without retraining).
METHOD_SETTINGS = {n: m.settings for n, m in METHODS.items() if m.driver and m.settings}
# Options whose default changed the results when they were added: a run that predates one
# was made with this value, not with the current default.
PREDATING_VALUES = {"bn_coupling": "off", **network.SETTING_DEFAULTS, **optimizer.SETTING_DEFAULTS}


def args_from_settings(settings: dict) -> argparse.Namespace:
    """The arguments a run was made with, from its run.json settings; options the run
    predates take their current defaults (or their `PREDATING_VALUES`)."""
    args = build_parser("", "", ()).parse_args([])
    vars(args).update(PREDATING_VALUES)
    vars(args).update(settings)
    return args


def differences(old: dict, new: dict, keys: Iterable[str], sep: str = "->") -> List[str]:
    """`key old -> new` for every key whose values differ: the one comparison of saved settings
    (resuming a run, reusing a validation cache or a training, merging folders)."""
    return [f"{k} {old.get(k)!r} {sep} {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def check_settings(folder: str, settings: dict, holder: str, what: str, fix: str,
                   predating: dict | None = None) -> None:
    """Reuse the results in `folder` only under the settings they were made with: compare with its
    settings.json (one error line naming each difference), or record `settings` there. Keys that
    the saved settings lack count at their `PREDATING_VALUES` or `predating` value."""
    path = os.path.join(folder, "settings.json")
    if not os.path.exists(path):
        layout.write_json(path, settings)
        return
    diff = differences({**PREDATING_VALUES, **(predating or {}), **layout.read_json(path)}, settings, settings)
    if diff:
        raise UserError(f"{holder} holds {what} of other settings ({'; '.join(diff)}); "
                        f"use another -o, or --overwrite to {fix}")


def code_version() -> str:
    """The git commit of this checkout (with '+dirty' for local changes), or 'unknown'."""
    root = ROOT
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) or "unknown"


# ----------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=2)
def get_data(dataset, seed, data_dir, n_train, n_val, n_test, train_csv, val_csv, test_csv, label_noise=None):
    """The trial's data; with `label_noise` its training labels flipped (every phase sees the same)."""
    data = load_dataset(dataset, seed, data_dir, n_train, n_val, n_test, train_csv, val_csv, test_csv)
    return with_label_noise(data, label_noise, seed) if label_noise else data


def data_for(args, seed: int):
    return get_data(args.dataset, seed, args.data_dir, args.n_train, args.n_val, args.n_test,
                    args.train_csv, args.val_csv, args.test_csv, args.label_noise)
