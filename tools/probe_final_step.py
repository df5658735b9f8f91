"""Final-step instances: the retrace's one-step estimate against the exact removal, with and without
the batch-norm coupling, and how much of the gap is ReLU/max-pool switching.

Usage: python tools/probe_final_step.py -o OUT [validate_influence.py's training options]

Trains as validate_influence.py does (or reuses its training in OUT; same options), then for every
instance j of the last step T-1 of the last epoch compares, at theta[T-1] and u = the validation
gradient at theta[T]:
    truth            <u, theta_{-j}[T] - theta[T]> from replaying step T-1 without j (exact)
    estimate         eta/|S| dQ/dw_j, Q = <u, grad_theta sum_i w_i l_i>, by `--retrace` exact and fd,
                     with the coupling off (statistics fixed) and on (statistics weighted by w)
    pinned removal   -eta <u, G(w with w_j = 0) - G(w)> on the network pinned to the ReLU/max-pool
                     branches it takes at w (coupling on): the removal without branch switching.
The estimate with the coupling is the derivative of "pinned removal" at w; the difference between
"pinned removal" and "truth" is what the branches that switch when j's removal moves the batch
statistics contribute, which no derivative at w sees. Prints Spearman and the median relative error.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sgd_influence.config.settings import data_for, fit_to_data, set_context  # noqa: E402
from sgd_influence.core import network  # noqa: E402
from sgd_influence.core.graphs import (BranchRecorder, BranchReplayer, FDRetraceGraph, LossGraph,  # noqa: E402
                                  RetraceGraph, trainable_params, zero_grads)
from sgd_influence.base.metrics import spearman  # noqa: E402
from sgd_influence.checks.validate import (Counterfactuals, build_parser, check_args, ensure_training,  # noqa: E402
                                          prepare_output)


def pinned_removals(data, params, x, y, u_flat, lr, net):
    """-eta <u, G(w_j = 0) - G(w)> for every j on the network pinned at w = 1/|S| (coupling on)."""
    b = len(y)
    recorder, replayer = BranchRecorder(), BranchReplayer()
    at = LossGraph(b, data.image_shape, data.n_classes, False, net=net, ops=recorder)
    pinned = LossGraph(b, data.image_shape, data.n_classes, False, net=net, ops=replayer, bn_coupling=True)
    at.feed(x, y, 1.0 / b)
    at.loss.forward(clear_buffer=True)
    replayer.pin_to(recorder)

    def q(w):
        pinned.feed(x, y, w)
        zero_grads(params)
        pinned.loss.forward(clear_no_need_grad=True)
        pinned.loss.backward(clear_buffer=True)
        return float(u_flat @ np.concatenate([p.g.ravel() for p in params]).astype(np.float64))

    full = np.full(b, 1.0 / b, np.float32)
    base = q(full)
    out = np.zeros(b)
    for j in range(b):
        w = full.copy()
        w[j] = 0
        out[j] = -lr * (q(w) - base)
    return out


def main(argv) -> None:
    args = build_parser().parse_args(argv)
    check_args(args)  # validate's defaults (the subset of a built-in dataset)
    set_context(args.device_id)
    data = data_for(args, args.seed)
    fit_to_data(args, data)
    args.methods = ["Hara"]  # what is probed: the retrace's per-sample step (validate's default list is not run)
    net = network.checked(args, data.image_shape, data.n_classes)
    prepare_output(args)
    run_dir = ensure_training(args, data, net, True, {})  # validate's training: its network, recipe, augmentation
    cf = Counterfactuals(data, run_dir, args.batch_size, net)
    params = list(trainable_params().values())
    t = cf.steps[-1]
    idx, seeds = cf.record.batch(t)
    lr, b = float(cf.record.lr[t]), len(idx)
    sizes = np.cumsum([p.size for p in params])[:-1]
    u = [a.reshape(p.shape).astype(np.float32) for a, p in zip(np.split(cf.u, sizes), params)]
    cf.stored.load(len(cf.steps) - 1)  # theta[T-1]
    x, y = data.train_batch(idx, seeds)
    est = {}
    for mode, graph in (("exact", RetraceGraph), ("fd", FDRetraceGraph)):
        for coupling in (False, True):
            _, ug = graph(b, data.image_shape, data.n_classes, params, net, bn_coupling=coupling).run(x, y, u)
            est[f"{mode}, coupling {'on' if coupling else 'off'}"] = lr / b * np.asarray(ug, np.float64)
    est["pinned removal (coupling on)"] = pinned_removals(data, params, x, y, cf.u, lr, net)
    truth = np.array([cf.truth(int(j))[0] for j in idx])
    print(f"{b} instances of the final step (lr {lr}); median |truth| {np.median(np.abs(truth)):.3e}")
    for name, e in est.items():
        rel = np.abs(e - truth) / np.abs(truth)
        print(f"  {name:<28} Spearman {spearman(e, truth):.3f}  median relative error {np.median(rel):.3f}  "
              f"Pearson-like slope {float(e @ truth / (truth @ truth)):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
