"""The LDS's truth split in two: what the removal moves through the parameters, and what it moves through
batch norm's running statistics (docs/accuracy.md, "Under momentum, weight decay and a cosine rate").

The LDS's truth f(S) = L(theta_{-S}[T]) - L(theta[T]) (checks/lds.py; L: the mean validation loss in
test mode, i.e. with batch norm's running mean and variance) moves through two things the counterfactual
replay changes: the trainable parameters, and the running statistics, which every training-mode forward
re-estimates from the batch it sees (an exponential average; removing instances changes the batches). The
scores differentiate L through the parameters only (Hara, Ours, TracIn_last: the running statistics are
held), so the second part is outside what any of them predicts. For the first M subsets S of one
fraction, replay 0 (unperturbed), this tool replays the window with nothing removed (theta[T], running
statistics R[T]) and with S removed (theta_{-S}[T], R_{-S}[T]), and evaluates

    f(S)            = L(theta_{-S}[T], R_{-S}[T]) - L(theta[T], R[T])    the truth (equals the LDS cache's)
    f_params(S)     = L(theta_{-S}[T], R[T])      - L(theta[T], R[T])    the parameters' part
    f_running(S)    = L(theta[T], R_{-S}[T])      - L(theta[T], R[T])    the running statistics' part

(f is not exactly their sum: L is not linear in the two). It prints the Spearman of the scores' sums
g(S) with each (the LDS against each truth) and their root-mean-square sizes. Without batch norm
f_running = 0 and f_params = f.

    .venv/bin/python tools/split_truth.py OUT [--seed 0 1 2] [--fraction 0.05] [--subsets 12] [--method Hara] \\
        [--json split.json]
"""
import argparse
import os
import sys
from typing import Dict, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import nnabla as nn  # noqa: E402

from sgd_influence.base import layout  # noqa: E402
from sgd_influence.base.errors import UserError, run_command  # noqa: E402
from sgd_influence.base.layout import checkpoint_path, step_record_path  # noqa: E402
from sgd_influence.base.metrics import spearman  # noqa: E402
from sgd_influence.base.progress import bar  # noqa: E402
from sgd_influence.checks import lds  # noqa: E402
from sgd_influence.config.settings import set_context  # noqa: E402
from sgd_influence.core import network  # noqa: E402
from sgd_influence.core.params import load_checkpoint  # noqa: E402
from sgd_influence.core.train import load_state_at, replay_steps  # noqa: E402


def _running(name: str) -> bool:
    """Batch norm's running statistics (nnabla's PF.batch_normalization names them mean and var)."""
    return name.endswith("/mean") or name.endswith("/var")


def _snapshot() -> Dict[str, np.ndarray]:
    return {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}


def _restore(values: Dict[str, np.ndarray], running: bool) -> None:
    """Set the running statistics (running=True) or every other parameter back to `values`."""
    for k, v in nn.get_parameters(grad_only=False).items():
        if _running(k) == running:
            v.d = values[k]


def split(data, net, out: str, seed: int, fraction: float, m: int, batch_size: int, method: str = "Hara",
          progress: bool = False) -> dict:
    """{'g', 'truth', 'params', 'running'} over the first m subsets of `fraction` (replay 0 of the last
    epoch of LDS folder `out`, training `seed`), and the baseline's validation loss."""
    cache = lds.cache_dir(out, lds.Training(seed, False))
    path = layout.estimate_path(cache, method)
    if not os.path.exists(path):
        raise UserError(f"{cache} holds no {method} scores; run validate_influence.py --lds --methods {method} "
                        f"on {out} first")
    scores = np.load(path)
    rep = lds.PairedReplays(data, layout.train_dir(out, seed, False), cache, batch_size, seed, net, "last")
    load_checkpoint(checkpoint_path(rep.run_dir, rep.start))
    load_state_at(rep.sgd, rep.run_dir, rep.record, rep.start)
    replay_steps(rep.sgd, rep.record, rep.steps)  # replay 0 with nothing removed: theta[T], R[T]
    base, kept = rep.val_loss(), _snapshot()
    if not os.path.exists(rep.baseline_path(0)):  # truth() reads the baseline replay's loss and store
        rep.baseline(0)
    recorded = float(layout.read_json(rep.baseline_path(0))["val_loss"])
    rows = []
    for s in bar(range(m), desc=f"seed {seed}: removals", unit="replay", disable=not progress):
        removed = lds.subset(len(data.train), fraction, s, seed)
        truth = rep.truth(removed, 0) + recorded - base  # L(theta_{-S}, R_{-S}) - L(theta, R)
        without = _snapshot()
        _restore(kept, running=True)
        params = rep.val_loss() - base
        _restore(without, running=True)
        _restore(kept, running=False)
        running = rep.val_loss() - base
        rows.append((float(scores[removed].sum()), truth, params, running))
    g, truth, params, running = (np.array(c, np.float64) for c in zip(*rows))
    return {"seed": seed, "method": method, "baseline": base, "g": g, "truth": truth, "params": params,
            "running": running}


def stats(r: dict) -> dict:
    rms = lambda a: float(np.sqrt(np.mean(a ** 2)))  # noqa: E731
    return {"lds_truth": spearman(r["g"], r["truth"]), "lds_params": spearman(r["g"], r["params"]),
            "lds_running": spearman(r["g"], r["running"]), "rms_g": rms(r["g"]), "rms_truth": rms(r["truth"]),
            "rms_params": rms(r["params"]), "rms_running": rms(r["running"])}


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="an LDS folder (validate_influence.py --lds, the last epoch) holding the scores")
    p.add_argument("--seed", type=int, nargs="+", default=[0], help="its trainings (trial seeds)")
    p.add_argument("--fraction", type=float, default=0.05, help="the LDS fraction whose subsets to use")
    p.add_argument("--subsets", type=int, default=12, help="the first M subsets")
    p.add_argument("--method", default="Hara", help="whose scores (default: Hara)")
    p.add_argument("--json", default=None, help="also write every number to this JSON file")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $SGD_INFLUENCE_DATA or <repo>/data)")
    args = p.parse_args(argv)

    def body() -> None:
        if args.subsets < 2 or not 0 < args.fraction < 1:
            raise UserError("--subsets must be at least 2 and --fraction lie in (0, 1)")
        settings = layout.read_settings(args.out)
        if not settings:
            raise UserError(f"{args.out} is not a validate_influence.py --lds folder (no run.json)")
        set_context("cpu")
        run_args = lds.run_arguments(settings, args.data_dir)
        net = network.from_args(run_args)
        results = []
        for seed in args.seed:
            if not os.path.exists(step_record_path(layout.train_dir(args.out, seed))):
                raise UserError(f"{args.out} has no training of seed {seed}; run validate_influence.py --lds "
                                f"--trials on it first")
            r = split(lds.load_data(run_args, seed), net, args.out, seed, args.fraction, args.subsets,
                      settings["batch_size"], args.method, progress=True)
            st = stats(r)
            print(f"seed {seed}, {args.fraction:g} removed, {args.subsets} subsets, {args.method}'s scores: LDS against "
                  f"the truth {st['lds_truth']:.3f}, its parameters' part {st['lds_params']:.3f}, its running "
                  f"statistics' part {st['lds_running']:.3f}; rms: scores' sums {st['rms_g']:.2e}, truth "
                  f"{st['rms_truth']:.2e}, parameters' part {st['rms_params']:.2e}, running statistics' part "
                  f"{st['rms_running']:.2e}", flush=True)
            results.append({**{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()}, **st})
        if len(results) > 1:
            print(f"mean over the {len(results)} trainings: " + ", ".join(
                f"{k} {np.mean([res[k] for res in results]):.3g}" for k in stats(r)))
        if args.json:
            layout.write_json(args.json, {"folder": os.path.basename(os.path.abspath(args.out)),  # no machine path
                                          "fraction": args.fraction, "subsets": args.subsets, "trainings": results})
            print(f"wrote {args.json}")
    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
