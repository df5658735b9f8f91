"""Is a removal in the scores' linear range? The eps probe (docs/accuracy.md: "The last epoch's linear range",
"The whole training").

On an LDS folder (`validate_influence.py --lds`, either window): for the first M subsets S of one fraction,
replay the window as recorded -- the last epoch from theta[K-1] (`--window last`, the truth of Hara and
Replay) or every epoch from theta[0] (`--window all`, the truth of Replay_all) -- with the loss weight of
S's members, and their share of the batch statistics (as the retrace with --bn-coupling on), lowered from
1 to 1 - eps in every step (`SGD.replay(..., weights=w)`), and compare

    f_eps(S) / eps = [L(theta_{w = 1 - eps on S}[T]) - L(theta_{w = 1}[T])] / eps

(L: the mean validation loss, batch norm's running statistics held at the training's, as in the
derivative) with the scores' first-order prediction g(S) = sum of the scores over S, the eps -> 0 limit
of f_eps / eps (a score is -dL/dw_j: the predicted change of L if j is removed). eps = 1 is the removal
(the LDS's truth, up to the running statistics that its replay re-estimates).

Paired replays (`--replays K`): replay r starts from the window's start moved by the LDS's seeded
half-ulp (r = 0: unperturbed), its w = 1 baseline as well. The Spearman over the subsets between the
f_eps / eps of replays 0 and 1 is the probe's own noise floor at that eps: where the replays disagree,
float32 rounding grown through the window decides f_eps, not the derivative.

Reading it: Spearman(f_eps / eps, g) near 1 at small eps, falling towards eps = 1: the removal leaves
the linear range (nonlinearity). Low already at small eps although the replays agree there: the
derivative does not predict the training's response to small weight changes (non-smoothness: ReLU /
max-pool branches switch). Low with replays that also disagree: rounding chaos hides the response.

Beside it, the branch check (`branch_check`): at the window's start, on its first batch, how far the
parameter gradient moves when the same loss is computed by the weighted batch norm at w = 1 (the retrace's
graph), against how far a half-ulp move of theta moves it, and how many max-pool windows tie exactly at a
positive maximum: where the gradient depends on how the loss is rounded, the network is not differentiable
there.

Every weighted replay's validation loss is cached in the training's LDS cache
(`linearity_p<fraction>.csv`, `linearity_all_p<fraction>.csv`): a re-run resumes, and more subsets,
eps or replays compute only what is new.

    .venv/bin/python tools/probe_linearity.py OUT [--window last|all] [--seed 0 1 2] [--fraction 0.05] \\
        [--subsets 8] [--eps 0.05 0.25 1] [--replays 2] [--json probe.json]
"""
import argparse
import csv
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from models import Ops  # noqa: E402
from sgd_influence.base import layout  # noqa: E402
from sgd_influence.base.errors import UserError, run_command  # noqa: E402
from sgd_influence.base.layout import checkpoint_path, step_record_path  # noqa: E402
from sgd_influence.base.metrics import pearson, spearman  # noqa: E402
from sgd_influence.base.progress import bar  # noqa: E402
from sgd_influence.checks import lds  # noqa: E402
from sgd_influence.config.settings import set_context  # noqa: E402
from sgd_influence.core import network  # noqa: E402
from sgd_influence.core.graphs import GraphCache, LossGraph, evaluate, trainable_params  # noqa: E402
from sgd_influence.core.params import load_checkpoint  # noqa: E402
from sgd_influence.core.replay import WINDOWS, window_start, window_steps  # noqa: E402
from sgd_influence.core.step_record import StepRecord  # noqa: E402
from sgd_influence.core.train import SGD, init_model, replay_steps  # noqa: E402

EPS = (0.05, 0.25, 1.0)
# The scores whose sums the probe differentiates, per window (the first whose scores the cache holds);
# Hara and Replay give the same scores (tested).
METHODS = {"last": ("Replay", "Hara"), "all": ("Replay_all",)}


def default_method(cache: str, window: str) -> str:
    have = [m for m in METHODS[window] if os.path.exists(layout.estimate_path(cache, m))]
    if not have:
        raise UserError(f"{cache} holds no scores of {' or '.join(METHODS[window])}; run validate_influence.py --lds "
                        f"{'--lds-window all ' if window == 'all' else ''}--methods {METHODS[window][-1]} on this "
                        f"folder first")
    return have[0]


def read_losses(path: str) -> Dict[tuple, float]:
    """{(eps, subset, replay): validation loss} of a probe cache (eps 0, subset -1: the w = 1 baseline)."""
    if not os.path.exists(path):
        return {}
    with layout.reading(path), open(path, newline="") as f:
        return {(float(r["eps"]), int(r["subset"]), int(r["replay"])): float(r["val_loss"]) for r in csv.DictReader(f)}


def write_losses(path: str, losses: Dict[tuple, float]) -> None:
    lines = ["eps,subset,replay,val_loss"] + [f"{e!r},{s},{r},{v!r}" for (e, s, r), v in sorted(losses.items())]
    layout.write_text(path, "\n".join(lines) + "\n")


def linearity(data, net, out: str, seed: int, fraction: float, m: int, eps: Sequence[float], batch_size: int,
              window: str = "last", method: Optional[str] = None, replays: int = 1, progress: bool = False) -> dict:
    """For the first m subsets of `fraction` in the LDS folder `out` (training `seed`): g (the summed scores
    of `method`, default the window's: METHODS), the training's own final validation loss, and per replay r
    the w = 1 baseline and, per eps, f_eps(S)/eps of the weighted replays of the window (`f_over_eps`: the
    mean over the replays, shape (m,); `f_over_eps_replays`: (m, replays))."""
    assert window in WINDOWS, window
    run_dir = layout.train_dir(out, seed)
    cache = lds.cache_dir(out, lds.Training(seed))
    method = method or default_method(cache, window)
    scores = np.load(layout.estimate_path(cache, method), allow_pickle=False)
    record = StepRecord.load(step_record_path(run_dir))
    steps, start = window_steps(record, window), window_start(record, window)
    sgd = SGD(init_model(data, 0, batch_size, net), data)
    test_graphs = GraphCache(data.image_shape, data.n_classes, test=True, net=net)
    n = len(data.train)
    path = lds.linearity_path(cache, fraction, window)
    done = read_losses(path)

    def loss_with(w: np.ndarray, r: int) -> float:
        """Validation loss after the weighted replay r of the window; batch norm's running statistics those
        of the training (theta[T]'s): the weighted step leaves them, and the derivative holds them fixed."""
        load_checkpoint(checkpoint_path(run_dir, start))
        lds.perturb(seed, r)
        replay_steps(sgd, record, steps, weights=w)
        trained = {k: v.d.copy() for k, v in trainable_params().items()}
        load_checkpoint(checkpoint_path(run_dir, record.n_epochs))
        for k, v in trainable_params().items():
            v.d = trained[k]
        return evaluate(test_graphs, data.normalize, data.val)[0]

    subsets = [lds.subset(n, fraction, s, seed) for s in range(m)]
    units = [(0.0, -1, r) for r in range(replays)] + [(float(e), s, r) for s in range(m) for e in eps
                                                       for r in range(replays)]
    todo = [u for u in units if u not in done]
    for e, s, r in bar(todo, desc=f"seed {seed}: weighted replays ({window} window)", unit="replay",
                       disable=not progress):
        w = np.ones(n)
        if s >= 0:
            w[subsets[s]] = 1.0 - e
        done[(e, s, r)] = loss_with(w, r)
        write_losses(path, done)  # after each: an interruption loses one replay at most
    load_checkpoint(checkpoint_path(run_dir, record.n_epochs))
    trained_loss = evaluate(test_graphs, data.normalize, data.val)[0]
    base = [done[(0.0, -1, r)] for r in range(replays)]
    f = {float(e): np.array([[(done[(float(e), s, r)] - base[r]) / e for r in range(replays)] for s in range(m)])
         for e in eps}
    return {"seed": seed, "window": window, "method": method, "fraction": fraction, "subset_size": len(subsets[0]),
            "training_loss": trained_loss, "baseline": base, "g": lds.predictions(scores, subsets),
            "f_over_eps": {e: v.mean(axis=1) for e, v in f.items()}, "f_over_eps_replays": f,
            "truths": lds.read_truths(lds.truths_path(cache, fraction, window))}


class PoolRecorder(Ops):
    """The network's own non-affine pieces, keeping every max-pool input (to count ties)."""

    def __init__(self):
        self.pooled: List[tuple] = []

    def max_pool(self, h, kernel):
        self.pooled.append((h, tuple(kernel)))
        return super().max_pool(h, kernel)


def branch_check(data, net, out: str, seed: int, window: str, batch_size: int) -> dict:
    """At the window's start, on its first recorded batch: how far the parameter gradient of the training's
    graph moves (|g' - g| / |g|, all trainable parameters) when (a) the same loss is computed by the weighted
    batch norm at w = 1 (the retrace's and the probe's graph: mathematically the same function), and (b) theta
    is moved by the LDS's half-ulp (replay 1); the losses' relative difference under (a); and the share of the
    max-pool windows whose maximum is tied exactly, at a positive value. A gradient that moves far more under
    (a) than under (b) is taken where the network is not differentiable: which branch a ReLU / max-pool takes
    is decided by float32 rounding, so the derivative depends on how the loss is computed."""
    run_dir = layout.train_dir(out, seed)
    record = StepRecord.load(step_record_path(run_dir))
    start, t = window_start(record, window), int(window_steps(record, window)[0])
    init_model(data, 0, batch_size, net)
    idx, aug = record.batch(t)
    x, y = data.train_batch(idx, aug)
    params = trainable_params()

    def gradient(coupling: bool, r: int, ops: Optional[Ops] = None) -> tuple:
        load_checkpoint(checkpoint_path(run_dir, start))
        lds.perturb(seed, r)
        g = LossGraph(len(idx), data.image_shape, data.n_classes, test=False, net=net, ops=ops, bn_coupling=coupling)
        g.feed(x, y, 1.0 / len(idx))
        g.loss.forward(clear_no_need_grad=ops is None)
        for v in params.values():
            v.grad.zero()
        g.loss.backward()
        return float(g.loss.d), np.concatenate([v.g.ravel() for v in params.values()]).astype(np.float64)

    pools = PoolRecorder()
    loss, g = gradient(False, 0, pools)
    tied = []
    for h, (kh, kw) in pools.pooled:
        v = h.d
        b, c, hh, ww = v.shape
        if hh % kh or ww % kw:
            continue
        win = v.reshape(b, c, hh // kh, kh, ww // kw, kw).transpose(0, 1, 2, 4, 3, 5).reshape(b, c, hh // kh, ww // kw, -1)
        top = win.max(axis=-1)
        tied.append(float((((win == top[..., None]).sum(axis=-1) > 1) & (top > 0)).mean()))
    w_loss, w_g = gradient(True, 0)
    _, u_g = gradient(False, 1)
    norm = np.linalg.norm(g)
    return {"step": t, "weighted_vs_training_gradient": float(np.linalg.norm(w_g - g) / norm),
            "half_ulp_gradient": float(np.linalg.norm(u_g - g) / norm),
            "weighted_vs_training_loss": abs(w_loss - loss) / abs(loss), "max_pool_ties": tied}


def eps_stats(r: dict) -> List[dict]:
    """Per eps: Spearman and Pearson of f_eps/eps (mean over the replays) with g, the same for replay 0
    alone, the replays' agreement (Spearman of replays 0 and 1) and their noise (sd over subsets of
    their difference / sqrt 2) against the spread of f_eps/eps over the subsets."""
    g, rows = r["g"], []
    for e, f in r["f_over_eps_replays"].items():
        mean = f.mean(axis=1)
        row = {"eps": e, "spearman": spearman(mean, g), "pearson": pearson(mean, g),
               "spearman_replay0": spearman(f[:, 0], g), "mean_f_over_eps": float(mean.mean()),
               "sd_f_over_eps": float(mean.std()), "mean_g": float(g.mean()), "sd_g": float(g.std()),
               # the change itself against the first-order one: far above 1 at small eps is a response that
               # does not shrink with eps (branches switched), not a derivative
               "rms_change_over_predicted": float(np.sqrt(np.mean((e * mean) ** 2)) / np.sqrt(np.mean((e * g) ** 2)))}
        if f.shape[1] >= 2:
            row["replays_agree"] = spearman(f[:, 0], f[:, 1])
            row["replay_noise_sd"] = float(np.std(f[:, 0] - f[:, 1]) / np.sqrt(2))
        rows.append(row)
    return rows


def removal_stats(r: dict) -> Optional[dict]:
    """eps = 1 by weights (replay 0) against the LDS's removal truth of replay 0 on the same subsets, and
    the LDS of g over these subsets (None without eps = 1 or without those truths)."""
    m = len(r["g"])
    if 1.0 not in r["f_over_eps_replays"] or not all((s, 0) in r["truths"] for s in range(m)):
        return None
    removal = np.array([r["truths"][(s, 0)] for s in range(m)])
    replays = sorted({q for (s, q) in r["truths"] if s == 0})
    mean = np.array([np.mean([r["truths"][(s, q)] for q in replays if (s, q) in r["truths"]]) for s in range(m)])
    f1 = r["f_over_eps_replays"][1.0][:, 0]
    return {"spearman_weights_vs_removal": spearman(f1, removal), "largest_difference": float(np.abs(f1 - removal).max()),
            "mean_removal_truth": float(removal.mean()), "lds_on_these_subsets": spearman(r["g"], mean)}


def print_report(r: dict, stats: List[dict], rem: Optional[dict]) -> None:
    k = r["f_over_eps_replays"][next(iter(r["f_over_eps_replays"]))].shape[1]
    print(f"training seed {r['seed']}, {r['window']} window, {r['method']}'s scores, {r['fraction']:g} removed "
          f"({r['subset_size']} instances), {len(r['g'])} subsets, {k} paired replay(s); validation loss: "
          f"training {r['training_loss']:.5f}, weighted replay w = 1 " + " / ".join(f"{b:.5f}" for b in r["baseline"]))
    head = f"{'eps':>6} {'Spearman(f/eps, g)':>19} {'replay 0':>9} {'Pearson':>8} {'mean f/eps':>11} {'mean g':>9} " \
           f"{'sd f/eps':>9} {'sd g':>8} {'rms f / rms eps g':>18}"
    print(head + (f" {'replays agree':>14} {'replay noise':>13}" if k >= 2 else ""))
    for s in stats:
        line = (f"{s['eps']:6g} {s['spearman']:19.3f} {s['spearman_replay0']:9.3f} {s['pearson']:8.3f} "
                f"{s['mean_f_over_eps']:11.5f} {s['mean_g']:9.5f} {s['sd_f_over_eps']:9.5f} {s['sd_g']:8.5f} "
                f"{s['rms_change_over_predicted']:18.2f}")
        print(line + (f" {s['replays_agree']:14.3f} {s['replay_noise_sd']:13.5f}" if k >= 2 else ""), flush=True)
    if rem:
        print(f"eps = 1 by weights vs the LDS's removal (replay 0): Spearman {rem['spearman_weights_vs_removal']:.3f}, "
              f"largest difference {rem['largest_difference']:.2e} (mean removal truth {rem['mean_removal_truth']:.5f}); "
              f"LDS of the scores on these subsets {rem['lds_on_these_subsets']:.3f}")


def print_branches(b: dict) -> None:
    ties = ", ".join(f"{v:.1%}" for v in b["max_pool_ties"]) or "none"
    print(f"branches at the window's start (its first batch, step {b['step']}): the weighted batch norm at w = 1 "
          f"computes the training's loss to {b['weighted_vs_training_loss']:.1e} but moves its parameter gradient by "
          f"{b['weighted_vs_training_gradient']:.2e} (relative norm), a half-ulp move of theta by "
          f"{b['half_ulp_gradient']:.2e}; max-pool windows tied exactly at a positive maximum: {ties}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="an LDS folder (validate_influence.py --lds) holding the window's scores")
    p.add_argument("--window", choices=WINDOWS, default="last",
                   help="last: the last epoch, Replay/Hara's scores; all: the whole training, Replay_all's")
    p.add_argument("--seed", type=int, nargs="+", default=[0], help="its trainings (trial seeds)")
    p.add_argument("--fraction", type=float, default=0.05, help="the LDS fraction whose subsets to use")
    p.add_argument("--subsets", type=int, default=8, help="the first M subsets")
    p.add_argument("--eps", type=float, nargs="+", default=list(EPS), help="weight reductions (1 = removal)")
    p.add_argument("--replays", type=int, default=1,
                   help="paired replays from half-ulp-moved starts (r = 0: none); 2 or more give the noise floor")
    p.add_argument("--method", default=None, help=f"whose scores (default: {METHODS})")
    p.add_argument("--json", default=None, help="also write every number to this JSON file")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $SGD_INFLUENCE_DATA or <repo>/data)")
    args = p.parse_args(argv)

    def body() -> None:
        if not all(0 < e <= 1 for e in args.eps) or args.subsets < 2 or args.replays < 1:
            raise UserError("--eps must lie in (0, 1], --subsets be at least 2 and --replays at least 1")
        settings = layout.read_settings(args.out)
        if not settings:
            raise UserError(f"{args.out} is not a validate_influence.py --lds folder (no run.json)")
        set_context("cpu")
        run_args = lds.run_arguments(settings, args.data_dir)
        net = network.from_args(run_args)  # the run's network (a .nnp file checked against its recorded hash)
        results = []
        for seed in args.seed:
            if not os.path.exists(step_record_path(layout.train_dir(args.out, seed))):
                raise UserError(f"{args.out} has no training of seed {seed}; run validate_influence.py --lds "
                                f"--trials on it first")
            data = lds.load_data(run_args, seed)
            r = linearity(data, net, args.out, seed, args.fraction, args.subsets, args.eps, settings["batch_size"],
                          args.window, args.method, args.replays, progress=True)
            stats, rem = eps_stats(r), removal_stats(r)
            print_report(r, stats, rem)
            branches = branch_check(data, net, args.out, seed, args.window, settings["batch_size"])
            print_branches(branches)
            results.append({"seed": seed, "method": r["method"], "subset_size": r["subset_size"],
                            "training_loss": r["training_loss"], "baseline": r["baseline"], "g": r["g"].tolist(),
                            "f_over_eps_replays": {f"{e:g}": v.tolist() for e, v in r["f_over_eps_replays"].items()},
                            "by_eps": stats, "removal": rem, "branches": branches})
        if len(results) > 1:
            print(f"mean over the {len(results)} trainings:")
            for i, e in enumerate(args.eps):
                rows = [res["by_eps"][i] for res in results]
                keys = [k for k in ("spearman", "spearman_replay0", "pearson", "replays_agree",
                                    "rms_change_over_predicted") if k in rows[0]]
                print(f"  eps {e:g}: " + ", ".join(f"{k} {np.mean([row[k] for row in rows]):.3f}" for k in keys)
                      + f"; mean f/eps / mean g {np.mean([row['mean_f_over_eps'] / row['mean_g'] for row in rows]):.3f}")
        if args.json:
            layout.write_json(args.json, {"folder": os.path.basename(os.path.abspath(args.out)),  # no machine path
                                          "window": args.window, "fraction": args.fraction,
                                          "subsets": args.subsets, "eps": args.eps, "replays": args.replays,
                                          "trainings": results})
            print(f"wrote {args.json}")
    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
