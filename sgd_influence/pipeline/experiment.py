"""The four phases, shared by both drivers: train, influence, retrain, analyze.

Work is cut into independent units (one training per trial, one influence
file per method and trial, one retraining per method, n and trial). A unit
whose output file exists is finished and skipped, so an interrupted run
resumes where it stopped. With --workers N units run in N processes
(nnabla's CPU context uses one thread), with --scheduler on a Dask cluster
(cluster.py); results do not depend on either.
"""
from __future__ import annotations

import os
import platform
import shutil
import sys
from typing import Sequence

import nnabla
import numpy as np

from influence_functions.infl import influence_functions
from influence_functions.report import write_solver_summary, write_solver_trace
from ..base import layout
from ..core import network, optimizer
from ..analysis.analyze import analyze
from ..core.controls import negated_training_loss, random_key
from ..base.errors import UserError, run_command
from .cluster import run_phases
from ..core.eval import retrain
from ..core.infl import load_final_model, retrace, val_gradient
from ..base.methods import METHODS, is_control, needs_step_params, retrains_all
from ..base.layout import noise_path, step_params_path, step_record_path
from ..config.noise import write_flipped_csv
from .runner import run_units
from ..config.settings import (GPU_ENVIRONMENT, METHOD_SETTINGS, RESULT_SETTINGS, args_from_settings, build_parser,
                               code_version, data_for, differences, fit_to_data, replay_budget, set_context)
from ..core.train import train


# ------------------------------------------------------------------------ units
def train_done(args, seed: int) -> bool:
    d = layout.train_dir(args.output_dir, seed)
    done = os.path.exists(step_record_path(d))
    if needs_step_params(args.methods):
        done = done and os.path.exists(step_params_path(d, args.n_epochs - 1))
    return done


def train_unit(args, seed: int, progress: bool = True) -> None:
    train(data_for(args, seed), layout.train_dir(args.output_dir, seed), seed, args.n_epochs,
          args.batch_size, args.lr, keep_step_params=needs_step_params(args.methods), progress=progress,
          net=network.from_args(args), augment=not args.no_augment, recipe=optimizer.from_args(args),
          lr_schedule=args.lr_schedule)


def retrace_unit(args, method: str, seed: int, progress: bool = True) -> None:
    """Hara, Ours, Replay, Replay_all, TracIn_last, Hara_published, Ours_published: the retrace. Replay's and Replay_all's report (self-check,
    copies held, steps replayed, budget) goes to influence/<Method>/replay_check_<seed>.json, before the influence CSV
    that marks the unit done."""
    data = data_for(args, seed)
    budget, source = replay_budget(args.replay_memory)
    check = layout.replay_check_path(args.output_dir, method, seed)
    influence = retrace(data, layout.train_dir(args.output_dir, seed), batch_size=args.batch_size, progress=progress,
                        net=network.from_args(args), mode=args.retrace, bn_coupling=args.bn_coupling == "on",
                        replay_memory=budget, bundle_size=args.published_bundle_size,
                        on_replay=lambda report: layout.write_json(check, dict(report, memory_budget=source)),
                        **METHODS[method].retrace)
    layout.write_influence_csv(layout.influence_path(args.output_dir, method, seed),  # last: marks the unit done
                               data.train.ids, data.train.y, influence)


def random_unit(args, method: str, seed: int, progress: bool = True) -> None:
    """Control: --random-orders seeded random removal orders (the 'influence' column is the random key);
    order 0 last, the file whose presence the resumption of runs before that option checks."""
    data = data_for(args, seed)
    for r in reversed(orders(args, method)):
        path = layout.influence_path(args.output_dir, method, seed, r)
        if not os.path.exists(path):
            layout.write_influence_csv(path, data.train.ids, data.train.y, random_key(len(data.train), seed, r))


def loss_unit(args, method: str, seed: int, progress: bool = True) -> None:
    """Control: the negated training loss at theta[T] (highest loss removed first), see controls.py."""
    data, net = data_for(args, seed), network.from_args(args)
    load_final_model(data, layout.train_dir(args.output_dir, seed), args.n_epochs, args.batch_size, net)
    layout.write_influence_csv(layout.influence_path(args.output_dir, method, seed),
                               data.train.ids, data.train.y, negated_training_loss(data, net=net))


def influence_functions_unit(args, method: str, seed: int, progress: bool = True) -> None:
    data, net = data_for(args, seed), network.from_args(args)
    load_final_model(data, layout.train_dir(args.output_dir, seed), args.n_epochs, args.batch_size, net)
    settings = dict(alpha=args.if_alpha, lr=args.if_lr, momentum=args.if_momentum, epochs=args.if_epochs,
                    batch_size=args.batch_size, seed=seed, average=not args.if_last_iterate)
    influence, trace, check = influence_functions(data, val_gradient(data, net=net), progress=progress, net=net,
                                                  **settings)
    write_solver_trace(args.output_dir, seed, trace)
    write_solver_summary(args.output_dir, seed, settings, check)
    layout.write_influence_csv(layout.influence_path(args.output_dir, method, seed),  # last: marks the unit done
                           data.train.ids, data.train.y, influence)


# Every method a driver can run (methods.DRIVER_METHODS): its unit writes its influence CSV.
METHOD_UNITS = {"Hara": retrace_unit, "Ours": retrace_unit, "Replay": retrace_unit, "Replay_all": retrace_unit,
                "Influence_functions": influence_functions_unit, "TracIn_last": retrace_unit, "Loss": loss_unit,
                "Random": random_unit, "Hara_published": retrace_unit, "Ours_published": retrace_unit}


def orders(args, method: str) -> range:
    """The removal orders of `method` in a trial: --random-orders for a control, one otherwise."""
    return range(args.random_orders if is_control(method) else 1)


def influence_done(args, method: str, seed: int) -> bool:
    return all(os.path.exists(layout.influence_path(args.output_dir, method, seed, r)) for r in orders(args, method))


def eval_unit(args, methods: tuple, n: int, seed: int, progress: bool = True) -> None:
    """Retrain without the n first instances of the method's order; n = 0 is shared."""
    data = data_for(args, seed)
    removed = layout.read_removal_order(layout.influence_path(args.output_dir, methods[0], seed))[:n] if n else []
    rows = retrain(data, layout.train_dir(args.output_dir, seed), removed, args.retrain_all, args.batch_size,
                   network.from_args(args))
    for m in methods:
        layout.write_score_csv(layout.score_path(args.output_dir, m, n, seed), rows)


def eval_order_unit(args, method: str, order: int, n: int, seed: int, progress: bool = True) -> None:
    """Retrain without the n first instances of a control's removal order `order` > 0 (--random-orders)."""
    data = data_for(args, seed)
    removed = layout.read_removal_order(layout.influence_path(args.output_dir, method, seed, order))[:n]
    rows = retrain(data, layout.train_dir(args.output_dir, seed), removed, args.retrain_all, args.batch_size,
                   network.from_args(args))
    layout.write_score_csv(layout.score_path(args.output_dir, method, n, seed, order), rows)


def unit_needs(unit: tuple, earlier: tuple) -> bool:
    """Whether `unit` reads what `earlier`, a unit of an earlier phase, writes: units of one
    trial (the last element of each unit) read its training; a retraining that removes
    instances (n > 0) reads the influence files of its methods (a control's unit writes all its orders)."""
    if unit[-1] != earlier[-1]:
        return False
    if earlier[0] is train_unit:
        return True
    if unit[0] is eval_order_unit:
        return earlier[1] == unit[1]
    return unit[0] is eval_unit and unit[2] > 0 and earlier[1] in unit[1]


def write_flipped(args, seeds: Sequence[int]) -> None:
    """OUT/noise/flipped_<seed>.csv for every trial that lacks it."""
    for s in seeds:
        path = noise_path(args.output_dir, s)
        if not os.path.exists(path):
            write_flipped_csv(path, data_for(args, s), args.label_noise, s)


# ------------------------------------------------------------------------ driver
RESULT_PATHS = ("run.json", "train", "noise", "influence", "score", "summary", "fig")


def check_or_reset_output(args) -> None:
    """Refuse to mix results of different settings in one folder (or wipe with --overwrite)."""
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
    old = layout.read_settings(args.output_dir)
    new = vars(args)
    keys = list(RESULT_SETTINGS)
    for method, settings in METHOD_SETTINGS.items():
        if layout.has_results(args.output_dir, method):
            keys += settings
    diff = differences(vars(args_from_settings(old)), new, keys)  # settings a run predates count at their defaults
    if diff:
        raise UserError(f"{args.output_dir} holds results of other settings ({'; '.join(diff)}); "
                        f"use another -o, or --overwrite to start afresh")


def write_run_json(args, context: str) -> None:
    settings = layout.portable_settings(args.output_dir, {k: v for k, v in vars(args).items() if k != "overwrite"})
    info = {"command": layout.portable_command(args.output_dir, sys.argv), "settings": settings, "context": context,
            **({"gpu_environment": {k: os.environ.get(k) for k in GPU_ENVIRONMENT}} if context == "cudnn" else {}),
            "code_version": code_version(), "python": platform.python_version(),
            "nnabla": nnabla.__version__, "numpy": np.__version__}
    layout.write_json(os.path.join(args.output_dir, "run.json"), info)


def run_experiment(args) -> None:
    """Train, compute influence per method, retrain per removal size, analyze."""
    optimizer.checked(args)
    context = set_context(args.device_id)
    seeds = list(range(args.n_trials))
    data = data_for(args, 0)  # fail early on missing data or bad sizes
    fit_to_data(args, data)
    n_train = len(data.train)
    if args.batch_size > n_train:
        raise UserError(f"batch size {args.batch_size} is larger than the training set ({n_train}); lower -bs")
    sizes = sorted(set(args.remove_n_list))
    skipped = [n for n in sizes if n >= n_train]
    if skipped:
        print(f"warning: skipping removal sizes >= the training set ({n_train}): {skipped}", file=sys.stderr)
    sizes = [n for n in sizes if n < n_train]
    if retrains_all(args.methods) and not args.retrain_all:
        print("warning: Replay_all estimates retraining every epoch from theta[0] without the removed instances, "
              "but without -ra the retraining redoes only the last epoch", file=sys.stderr)
    network.checked(args, data.image_shape, data.n_classes)
    layout.make_output_folder(args.output_dir)
    check_or_reset_output(args)
    layout.remove_stale_temporaries(args.output_dir)
    write_run_json(args, context)
    print(f"{args.dataset}: {n_train} train / {len(data.val)} val / {len(data.test)} test, "
          f"{'image' if data.images else 'input'} {data.image_shape}, net {args.net}, context {context}, "
          f"output {os.path.abspath(args.output_dir)}")

    if args.label_noise:
        write_flipped(args, seeds)
    units = []
    for s in seeds:
        if 0 in sizes and not all(os.path.exists(layout.score_path(args.output_dir, m, 0, s)) for m in args.methods):
            units.append((eval_unit, tuple(args.methods), 0, s))
        units += [(eval_unit, (m,), n, s) for m in args.methods for n in sizes
                  if n > 0 and not os.path.exists(layout.score_path(args.output_dir, m, n, s))]
        units += [(eval_order_unit, m, r, n, s) for m in args.methods for r in orders(args, m)[1:] for n in sizes
                  if n > 0 and not os.path.exists(layout.score_path(args.output_dir, m, n, s, r))]
    phases = [("train", [(train_unit, s) for s in seeds if not train_done(args, s)]),
              ("influence", [(METHOD_UNITS[m], m, s) for s in seeds for m in args.methods
                             if not influence_done(args, m, s)]),
              ("retrain", units)]
    if args.scheduler:  # all phases at once, each unit after the units it needs
        run_phases(args, phases, unit_needs)
    else:
        for desc, phase_units in phases:
            run_units(phase_units, args, desc)
    analyze(args.output_dir, skipped=skipped)


def main(argv, description: str, default_out: str, default_methods: Sequence[str]) -> int:
    """A driver: parse `argv`, run the experiment, turn user errors into one line and exit code 2."""
    args = build_parser(description, default_out, default_methods).parse_args(argv)
    return run_command(lambda: run_experiment(args), args.output_dir)
