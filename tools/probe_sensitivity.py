"""How much does the last epoch amplify a small change of the parameters?

Usage: python tools/probe_sensitivity.py OUT [--seed K]   (OUT: a validate_influence.py output folder)

Evidence for docs/accuracy.md, "Single instances". From the stored theta[t] at the
start of the last epoch, the epoch is replayed with nothing removed after
1) rounding-level noise: every trainable parameter times (1 + 6e-8 N(0, 1)),
   i.e. about half a float32 ulp;
2) the change removing instance j makes at its own step (j = the first
   instance of the first batch), i.e. the true counterfactual.
For each it prints |delta| after the perturbed step, |delta| at T, their
ratio (the amplification) and <u, delta_T> (the linear influence it causes).
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sgd_influence.base import layout  # noqa: E402
from sgd_influence.config.settings import args_from_settings, data_for, set_context  # noqa: E402
from sgd_influence.core import network  # noqa: E402
from sgd_influence.core.graphs import trainable_params  # noqa: E402
from sgd_influence.checks.validate import Counterfactuals, flat_trainable  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    with open(os.path.join(a.out, "validation", "cache", "settings.json")) as f:
        s = json.load(f)
    set_context("0")
    run = args_from_settings({**s, "n_test": 0})  # the cache's data, net and recipe (older: their values then)
    data = data_for(run, a.seed)
    cf = Counterfactuals(data, layout.train_dir(a.out, a.seed), s["batch_size"], network.from_args(run))
    keep = np.ones(len(data.train), bool)

    # 1) half-ulp noise at the start of the last epoch.
    cf.load_step(0)
    rng = np.random.default_rng(0)
    before = flat_trainable()
    for v in trainable_params().values():
        v.d = v.d * (1 + 6e-8 * rng.standard_normal(v.shape)).astype(np.float32)
    d0 = np.linalg.norm(flat_trainable() - before)
    for t in cf.steps:
        cf.sgd.replay(cf.record, t, keep)
    delta = flat_trainable() - cf.theta
    print(f"lr {s['lr']}: half-ulp noise at step 1 of {len(cf.steps)}: |delta_0| {d0:.3e} -> |delta_T| "
          f"{np.linalg.norm(delta):.3e} (x{np.linalg.norm(delta) / d0:.3g}), <u, delta_T> {cf.u @ delta:.3e}")

    # 2) removing the first instance of the first batch: the change after its step, then at T.
    j = int(cf.record.batch(cf.steps[0])[0][0])
    cf.load_step(0)
    keep[j] = False
    cf.sgd.replay(cf.record, cf.steps[0], keep)
    after = flat_trainable()
    cf.load_step(1)  # (its theta; the state is not read here)
    d1 = np.linalg.norm(after - flat_trainable())
    cf.replay_without(j)
    delta = flat_trainable() - cf.theta
    print(f"lr {s['lr']}: removing instance {j} at step 1: |delta_1| {d1:.3e} -> |delta_T| "
          f"{np.linalg.norm(delta):.3e} (x{np.linalg.norm(delta) / d1:.3g}), <u, delta_T> {cf.u @ delta:.3e}")


if __name__ == "__main__":
    main()
