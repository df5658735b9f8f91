"""Float32 rounding's share of the cleansing comparison's spread over trials (docs/verdict.md).

    python -m sgd_influence.rounding OUT [--seed 0] [--replays 4] [-r N ...] [--workers 2]

In each trial the drivers compare d = acc(method, n) - acc(Random, n) (Random: the mean of its removal
orders, --random-orders). Over trials d varies with sample sd sd_trials (analyze's paired_vs_random.csv).
Part of that is float32 rounding: the last epoch amplifies a half-ulp difference of theta[K-1] into a
different final model (docs/accuracy.md). To measure that part, every retraining of one trial at the
chosen removal sizes (each method's n most negative; each of Random's orders) is repeated from theta[K-1]
moved by a seeded half-ulp: replay r = 1..R with key (seed, 9, r), as the LDS's paired replays; r = 0 is
the driver's own, unmoved retraining. Every retraining of replay r starts from the same moved theta[K-1],
so d_r is paired within the replay, as d is within a trial. Then

    sd_rounding = sample sd of d_r over r = 0..R          (one trial: rounding alone)
    share       = sd_rounding^2 / sd_trials^2              (if d = training effect + rounding noise)

Only the last-epoch retraining (the drivers' default) is replayed; a run made with -ra is refused.

Writes, resumably (one file per retraining, written atomically):
  OUT/rounding/score/<Method>/score_delete_worst_<n>_seed_<s>[_order<k>]_ulp<r>.csv
  OUT/rounding/rounding.csv, rounding.json   per metric, method and n: d_r, sd_rounding, sd_trials, share
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..analysis.analyze import collect, paired_differences, primary_n, write_rows
from ..base import layout
from ..base.argtypes import nonneg_int, positive_int
from ..base.errors import UserError, run_command
from ..base.methods import CONTROL, is_control, sort_key
from ..config.settings import HelpFormatter, args_from_settings, data_for, device, set_context
from ..core import network
from ..core.eval import retrain
from ..pipeline.runner import run_units

KEY = 9  # the LDS's paired replays perturb theta[K-1] with (seed, 9, r) too (checks/lds.py: perturb)
METRICS = ("test_accuracy", "test_loss")


def rounding_unit(args, method: str, order: int, n: int, replay: int, seed: int, progress: bool = True) -> None:
    """Retrain trial `seed` without the n first instances of `method`'s removal order `order`, from
    theta[K-1] moved by the half-ulp of replay `replay`."""
    data = data_for(args, seed)
    removed = layout.read_removal_order(layout.influence_path(args.output_dir, method, seed, order))[:n] if n else []
    rows = retrain(data, layout.train_dir(args.output_dir, seed), removed, False, args.batch_size,
                   network.from_args(args), start_key=(seed, KEY, replay))
    layout.write_score_csv(layout.rounding_score_path(args.output_dir, method, n, seed, order, replay), rows)


def final(path: str, metric: str) -> float:
    return float(layout.read_score_csv(path)[-1, layout.SCORE_COLUMNS.index(metric)])


def replay_values(out: str, method: str, n: int, seed: int, orders: Sequence[int], replays: int,
                  metric: str) -> List[Optional[float]]:
    """The metric of replay r = 0..replays (r = 0: the driver's file), the mean over `orders`; None where a
    file is missing."""
    values = []
    for r in range(replays + 1):
        paths = [layout.score_path(out, method, n, seed, k) if r == 0 else
                 layout.rounding_score_path(out, method, n, seed, k, r) for k in orders]
        values.append(float(np.mean([final(p, metric) for p in paths])) if all(map(os.path.exists, paths)) else None)
    return values


def summarize(out: str, seed: int, sizes: Sequence[int], methods: Sequence[str], orders: Dict[str, List[int]],
              replays: int) -> List[dict]:
    """Per metric, method (against the control) and n: the paired differences d_r of the replays, their sd
    (rounding), the sd of d over the run's trials and the share; for the control itself its own values."""
    rows = []
    for metric in METRICS:
        trials = {(r["method"], r["n_removed"]): r for r in
                  paired_differences(collect(out, metric), metric=metric)}
        control = {n: replay_values(out, CONTROL, n, seed, orders[CONTROL], replays, metric) for n in sizes}
        for method in methods:
            for n in sizes:
                own = replay_values(out, method, n, seed, orders[method], replays, metric)
                if method == CONTROL:
                    d = own
                else:
                    d = [a - b if a is not None and b is not None else None for a, b in zip(own, control[n])]
                got = [v for v in d if v is not None]
                sd_round = float(np.std(got, ddof=1)) if len(got) > 1 else None
                sd_trials = trials.get((method, n), {}).get("difference_std")
                rows.append({"metric": metric, "method": method, "n_removed": n, "seed": seed,
                             "compared_with": "" if method == CONTROL else CONTROL, "replays": len(got),
                             "values": " ".join(f"{v:.6f}" for v in got), "mean": float(np.mean(got)) if got else None,
                             "sd_rounding": sd_round, "sd_trials": sd_trials,
                             "trials": trials.get((method, n), {}).get("n_trials"),
                             "share": (sd_round / sd_trials) ** 2 if sd_round is not None and sd_trials else None})
    return rows


COLUMNS = ("metric", "method", "compared_with", "n_removed", "seed", "replays", "mean", "sd_rounding", "sd_trials",
           "trials", "share", "values")


def run(args: argparse.Namespace) -> List[dict]:
    out = args.output_dir
    settings = layout.read_settings(out)
    if not settings:
        raise UserError(f"{out} has no run.json; pass an output folder of eval_sgd_influence.py")
    run_args = args_from_settings(settings)
    if run_args.retrain_all:
        raise UserError(f"{out} was retrained with -ra; the rounding replays redo the last epoch only")
    run_args.output_dir, run_args.workers, run_args.scheduler = out, args.workers, None
    run_args.device_id = args.device_id or run_args.device_id
    set_context(run_args.device_id)  # the in-process units' (workers set theirs): the run's device, as r = 0 used
    files = [f for f in layout.score_files(out) if f[2] == args.seed]
    n_train = len(data_for(run_args, args.seed).train)
    sizes = args.remove_n_list or [primary_n(n_train)]
    methods = sorted({m for m, n, _, _, _ in files if n in sizes}, key=sort_key)
    if CONTROL not in methods:
        raise UserError(f"{out} holds no {CONTROL} retraining of trial {args.seed} at n = {' '.join(map(str, sizes))}; "
                        f"run the driver with those -r and --methods ... {CONTROL} first")
    orders = {m: sorted({k for mm, n, _, k, _ in files if mm == m and n in sizes}) for m in methods}
    units = [(rounding_unit, m, k, n, r, args.seed) for r in range(1, args.replays + 1) for m in methods
             for k in orders[m] for n in sizes
             if os.path.exists(layout.score_path(out, m, n, args.seed, k))
             and not os.path.exists(layout.rounding_score_path(out, m, n, args.seed, k, r))]
    print(f"rounding: trial {args.seed} of {out}, n = {' '.join(map(str, sizes))}, methods {' '.join(methods)} "
          f"({CONTROL}: {len(orders[CONTROL])} orders), {args.replays} replays: {len(units)} retrainings to do")
    run_units(units, run_args, "rounding replays")
    rows = summarize(out, args.seed, sizes, methods, orders, args.replays)
    folder = layout.rounding_dir(out)
    write_rows(os.path.join(folder, "rounding.csv"), COLUMNS, rows)
    layout.write_json(os.path.join(folder, "rounding.json"), {"seed": args.seed, "replays": args.replays,
                                                               "key": [args.seed, KEY, "r"], "rows": rows})
    for r in rows:
        if r["metric"] == "test_accuracy" and not is_control(r["method"]):
            share = "" if r["share"] is None else f", share of the variance over trials {r['share']:.2f}"
            sd = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
            print(f"  {r['method']} - {CONTROL}, n = {r['n_removed']}: sd over {r['replays']} replays of one trial "
                  f"{sd(r['sd_rounding'])}, sd over {r['trials'] or 0} trials {sd(r['sd_trials'])}{share}")
    print(f"wrote {os.path.join(folder, 'rounding.csv')}")
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Repeat one trial's cleansing retrainings from theta[K-1] moved by "
                                            "seeded half-ulps: how much of the spread of method - Random over "
                                            "trials is float32 rounding", formatter_class=HelpFormatter)
    p.add_argument("output_dir", metavar="OUT", help="a finished output folder of eval_sgd_influence.py")
    p.add_argument("--seed", type=nonneg_int, default=0, help="the trial whose retrainings are repeated")
    p.add_argument("--replays", type=positive_int, default=4, help="perturbed replays (r = 1..R; r = 0 is the run's own)")
    p.add_argument("-r", "--remove_n_list", type=positive_int, nargs="+", default=None,
                   help="removal sizes (default: the primary comparison's, 5%% of the training set)")
    p.add_argument("--workers", type=positive_int, default=1, help="parallel processes")
    p.add_argument("-di", "--device-id", type=device, default=None, help="GPU id or cpu (default: the run's)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: run(args) and None, args.output_dir)


if __name__ == "__main__":
    sys.exit(main())
