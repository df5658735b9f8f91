"""Does batch norm break the retrace? Hara vs exact leave-one-out on the tests' tiny problem.

Usage: python tools/probe_batch_norm.py

64 tiny training images (tests/conftest.py), the tiny net with and without
batch norm, 2 epochs of batch 8 at two learning rates; every instance's true
<u, theta_{-j}[T] - theta[T]> by replaying the last epoch without it. Prints
Spearman(Hara, truth) and the median of Hara / truth, over all 64 and over the
8 instances of the final step (median relative error there too), with the
batch-norm coupling of the retrace on and off (`infl.retrace(bn_coupling=...)`;
without batch norm the two are the same computation). With batch norm it also
scores, on the final step, the exact removal on the network pinned to its
ReLU/max-pool branches (tools/probe_final_step.py): what the coupled derivative
approximates; its distance to the truth is the branch switching that removing j
causes through the batch statistics. Takes about a minute.
"""
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "tools")]

from conftest import TINY, TINY_BN, tiny_data  # noqa: E402  (sets the CPU context)
from probe_final_step import pinned_removals  # noqa: E402
from sgd_influence.core.graphs import trainable_params  # noqa: E402
from sgd_influence.core.infl import retrace  # noqa: E402
from sgd_influence.base.metrics import spearman  # noqa: E402
from sgd_influence.core.train import train  # noqa: E402
from sgd_influence.checks.validate import Counterfactuals  # noqa: E402

data = tiny_data(n_train=64)
for net, name in ((TINY, "without batch norm"), (TINY_BN, "with batch norm")):
    for lr in (0.1, 0.01):
        run = tempfile.mkdtemp()
        train(data, run, seed=0, epochs=2, batch_size=8, lr=lr, keep_step_params=True, progress=False, net=net)
        cf = Counterfactuals(data, run, 8, net)
        truth = np.array([cf.truth(j)[0] for j in range(len(data.train))])
        final = cf.row == len(cf.steps) - 1
        for coupling in ((False,) if net is TINY else (False, True)):
            hara = retrace(data, run, "Hara", 8, progress=False, net=net, bn_coupling=coupling)
            rel = np.abs(hara[final] - truth[final]) / np.abs(truth[final])
            print(f"{name:<19} lr {lr:<5} coupling {'on ' if coupling else 'off'}  "
                  f"Spearman(Hara, truth) {spearman(hara, truth):.3f}  median Hara/truth {np.median(hara / truth):.2f}"
                  f"  | final step: Spearman {spearman(hara[final], truth[final]):.3f}, "
                  f"median relative error {np.median(rel):.2f}")
        if net is TINY_BN:  # the switch-free removal of the final step's instances
            t = cf.steps[-1]
            idx, seeds = cf.record.batch(t)
            cf.stored.load(len(cf.steps) - 1)
            x, y = data.train_batch(idx, seeds)
            params = list(trainable_params().values())
            pinned = pinned_removals(data, params, x, y, cf.u, float(cf.record.lr[t]), net=net)
            rel = np.abs(pinned - truth[idx]) / np.abs(truth[idx])
            print(f"{'':<19} lr {lr:<5} final step, exact removal on the pinned network: "
                  f"Spearman {spearman(pinned, truth[idx]):.3f}, median relative error {np.median(rel):.2f}")
