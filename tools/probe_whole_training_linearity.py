"""Is a whole-training removal in Replay_all's linear range? (docs/accuracy.md, "The whole training")

On an LDS folder of the whole-training window (`validate_influence.py --lds --lds-window all`):
for the first M subsets S of one fraction, retrain every epoch from theta[0] (recorded batches,
seeds, learning rates; no perturbation: the deterministic truth) with the loss weight of S's
members -- and their share of the batch statistics, as the retrace with --bn-coupling on --
lowered from 1 to 1 - eps in every step (`SGD.replay(..., weights=w)`), and compare

    f_eps(S) / eps = [L(theta_{w = 1 - eps on S}[T]) - L(theta_{w = 1}[T])] / eps

(batch norm's running statistics held at the training's, as in Replay_all's derivative)
with Replay_all's first-order prediction g(S) = sum of its scores over S (the eps -> 0 limit of
f_eps / eps: its scores are -dL/dw_j). eps = 1 is the removal, the LDS's truth. If the Spearman
of f_eps / eps and g over the subsets is high at small eps and falls towards eps = 1, the
removal leaves the linear range (nonlinearity); if it is low already at small eps, the derivative
itself does not predict the training's response (non-smoothness: ReLU / max-pool branches that
switch, float32 chaos).

    .venv/bin/python tools/probe_whole_training_linearity.py OUT [--seed 0] [--fraction 0.05] [--subsets 8]
"""
import argparse
import os
import sys
from typing import Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sgd_influence.base import layout  # noqa: E402
from sgd_influence.base.layout import checkpoint_path, step_record_path  # noqa: E402
from sgd_influence.base.metrics import pearson, spearman  # noqa: E402
from sgd_influence.checks import lds  # noqa: E402
from sgd_influence.config.settings import set_context  # noqa: E402
from sgd_influence.core import network  # noqa: E402
from sgd_influence.core.graphs import GraphCache, evaluate, trainable_params  # noqa: E402
from sgd_influence.core.params import load_checkpoint  # noqa: E402
from sgd_influence.core.replay import window_start, window_steps  # noqa: E402
from sgd_influence.core.step_record import StepRecord  # noqa: E402
from sgd_influence.core.train import SGD, init_model, replay_steps  # noqa: E402

EPS = (0.05, 0.2, 0.5, 1.0)


def linearity(data, net, out: str, seed: int, fraction: float, m: int, eps: Sequence[float],
              batch_size: int) -> dict:
    """For the first m subsets of `fraction` in the LDS folder `out` (training `seed`): g (Replay_all's
    summed scores), the baseline loss and, per eps, f_eps(S)/eps of the weighted retrainings."""
    run_dir = layout.train_dir(out, seed)
    cache = lds.cache_dir(out, lds.Training(seed))
    scores = np.load(layout.estimate_path(cache, "Replay_all"), allow_pickle=False)
    record = StepRecord.load(step_record_path(run_dir))
    steps, start = window_steps(record, "all"), window_start(record, "all")
    sgd = SGD(init_model(data, 0, batch_size, net), data)
    test_graphs = GraphCache(data.image_shape, data.n_classes, test=True, net=net)
    n = len(data.train)

    def loss_with(w: np.ndarray) -> float:
        """Validation loss after the weighted retraining; batch norm's running statistics those of
        the training (theta[T]'s), since the weighted step leaves them and the retrace's derivative
        holds them fixed (as tests/test_replay_all.py's oracle)."""
        load_checkpoint(checkpoint_path(run_dir, start))
        replay_steps(sgd, record, steps, weights=w)
        trained = {k: v.d.copy() for k, v in trainable_params().items()}
        load_checkpoint(checkpoint_path(run_dir, record.n_epochs))
        for k, v in trainable_params().items():
            v.d = trained[k]
        return evaluate(test_graphs, data.normalize, data.val)[0]

    base = loss_with(np.ones(n))
    subsets = [lds.subset(n, fraction, s, seed) for s in range(m)]
    out_rows = {"subset_size": len(subsets[0]), "baseline": base, "g": lds.predictions(scores, subsets), "f_over_eps": {}}
    for e in eps:
        f = []
        for S in subsets:
            w = np.ones(n)
            w[S] = 1.0 - e
            f.append((loss_with(w) - base) / e)
        out_rows["f_over_eps"][e] = np.array(f)
    return out_rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="an LDS folder of the whole-training window (validate_influence.py --lds-window all)")
    p.add_argument("--seed", type=int, default=0, help="its training (trial seed)")
    p.add_argument("--fraction", type=float, default=0.05, help="the LDS fraction whose subsets to use")
    p.add_argument("--subsets", type=int, default=8, help="the first M subsets")
    p.add_argument("--eps", type=float, nargs="+", default=list(EPS), help="weight reductions (1 = removal)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $SGD_INFLUENCE_DATA or <repo>/data)")
    args = p.parse_args()
    settings = layout.read_settings(args.out)
    set_context("cpu")
    run_args = argparse.Namespace(**{**settings, "data_dir": args.data_dir})
    data = lds.load_data(run_args, args.seed)
    net = network.from_args(run_args)  # the run's network (a .nnp file checked against its recorded hash)
    r = linearity(data, net, args.out, args.seed, args.fraction, args.subsets, args.eps, settings["batch_size"])
    g = r["g"]
    print(f"{args.out}, training seed {args.seed}, {args.fraction:g} removed ({r['subset_size']} instances), "
          f"{len(g)} subsets; baseline loss {r['baseline']:.5f}")
    print(f"{'eps':>6} {'Spearman(f/eps, g)':>19} {'Pearson':>8} {'mean f/eps':>11} {'mean g':>8}")
    for e, f in r["f_over_eps"].items():
        print(f"{e:6g} {spearman(f, g):19.3f} {pearson(f, g):8.3f} {f.mean():11.5f} {g.mean():8.5f}", flush=True)
    truths = lds.read_truths(lds.truths_path(lds.cache_dir(args.out, lds.Training(args.seed)), args.fraction, "all"))
    if 1.0 in r["f_over_eps"] and truths:
        removal = np.array([truths.get((s, 0), np.nan) for s in range(len(g))])
        f = r["f_over_eps"][1.0]
        print(f"eps = 1 by weights vs the LDS's removal (replay 0): Spearman {spearman(f, removal):.3f}, "
              f"largest difference {np.nanmax(np.abs(f - removal)):.2e}")


if __name__ == "__main__":
    main()
