"""How linear is leave-one-out in Hara et al.'s Sec. 7.1 setting? (docs/accuracy.md, "Hara et al. Sec. 7.1")

For a few trials of the published setting: SGD-influence (Hara, all epochs) against the actual
change of the validation loss when instance j's loss weight is lowered by eps in every batch
(float64 numpy copies), divided by eps. eps -> 0 is the derivative Hara computes exactly;
eps = 1 is leave-one-out, the protocol's truth. Also the sharpness eta * lambda_max of the full
training loss (L2 term included) at theta[T] (power iteration): above 2, plain SGD is unstable
along that direction and small changes of the trajectory grow.

    .venv/bin/python tools/probe_hara71_linearity.py --model mlp --trials 3
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from datasets import default_data_dir  # noqa: E402
from models.small import init_values  # noqa: E402
from sgd_influence.checks import hara71 as h  # noqa: E402
from sgd_influence.config.settings import set_context  # noqa: E402
from sgd_influence.base.metrics import kendall_tau_b  # noqa: E402

EPS = (1e-6, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=tuple(h.PUBLISHED), default="mlp")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--task", default=h.DEFAULT_FASHION_TASK, choices=tuple(h.TASKS))
    p.add_argument("--lr", type=float, default=None)
    args = p.parse_args()
    set_context("0")
    pub = h.PUBLISHED[args.model]
    lr = args.lr or pub["lr"]
    pool = h.load_pool(args.task, default_data_dir())
    rows = []
    for seed in range(args.trials):
        d = h.split_trial(*pool, seed, 200, 200, 200)
        x, y, n = d["x_tr"], d["y_tr"], 200
        alpha = pub["weight_decay"] or 1 / (h.choose_C(x, y) * n)
        batches, etas = h.schedule(n, pub["batch_size"], pub["epochs"], lr, pub["lr_decay"])
        init = init_values(x.shape[1], 1, pub["hidden"], seed)
        traj, _ = h.ReplicaTrainer(x.shape[1], pub["hidden"], 1, alpha).train(
            init, x, y, batches, etas, lambda t, idx: np.ones((1, len(idx)), np.float32))
        model = h.SingleModel(x.shape[1], pub["hidden"])
        model.set(traj[-1])
        u = model.loss_gradient(d["x_val"], d["y_val"])[1]
        hara = h.retrace(model, x, y, batches, etas, u, alpha, trajectory=traj)
        g = model.second_order(n, alpha)  # power iteration for lambda_max of the full loss
        v = h._flat([np.random.RandomState(0).randn(*a.shape) for a in u])
        for _ in range(100):
            hv = h._flat(g.run(x, y, h._unflat(v / np.linalg.norm(v), u))[0])
            lam, v = float(hv @ v / np.linalg.norm(v)), hv
        row = [seed, etas[-1] * lam]
        for eps in EPS:
            def weights(t, idx, eps=eps):
                w = np.ones((n + 1, len(idx)))
                w[idx + 1, np.arange(len(idx))] = 1 - eps
                return w
            P = h.train_replicas_np(init, x, y, batches, etas, alpha, weights, n + 1)
            vl = h.mean_bce_np(h.logits_np(P, d["x_val"]), d["y_val"])
            row.append(kendall_tau_b(hara, vl[1:] - vl[0]))
        rows.append(row)
        print(f"seed {seed}: eta*lambda_max at theta[T] {row[1]:.2f}; Kendall(Hara, actual change at eps) "
              + " ".join(f"{e:g}: {k:.3f}" for e, k in zip(EPS, row[2:])), flush=True)
    m = np.mean(rows, axis=0)
    print(f"mean over {len(rows)} trials ({args.model}, {args.task}, lr {lr}): eta*lambda_max {m[1]:.2f}; "
          + " ".join(f"{e:g}: {k:.3f}" for e, k in zip(EPS, m[2:])))


if __name__ == "__main__":
    main()
