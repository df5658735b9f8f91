"""validate_influence: exact counterfactuals, the estimators on them, and the metrics."""
import csv
import json
import os

import numpy as np
import nnabla as nn
import pytest

from conftest import TINY, TINY_BN
from sgd_influence.base.errors import UserError
from sgd_influence.core.eval import retrain
from sgd_influence.base.metrics import jaccard_lowest, kendall_tau_b, pearson, sign_agreement, spearman
from sgd_influence.core.train import train
from sgd_influence.checks.validate import Counterfactuals, build_parser, check_args, pick_instances, run_validation


def test_metrics_match_hand_computed_values():
    a, b = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    # 10 pairs, 2 discordant ((1,2), (3,4)): tau = (8 - 2) / 10; Spearman 1 - 6 * 4 / (5 * 24).
    assert kendall_tau_b(a, b) == pytest.approx(0.6)
    assert spearman(a, b) == pytest.approx(0.8)
    assert pearson(a, b) == pytest.approx(0.8)
    import warnings
    with warnings.catch_warnings():  # a constant input (a degenerate bootstrap resample): nan, quietly
        warnings.simplefilter("error")
        assert np.isnan(pearson([1, 1, 1], [1, 2, 3])) and np.isnan(spearman([2, 2, 2], [1, 2, 3]))
    # tau-b with one tie in each: 4 concordant, 0 discordant, 6 pairs -> 4 / sqrt(5 * 5).
    assert kendall_tau_b([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(0.8)
    assert kendall_tau_b([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    # 20% of 10 = the 2 most negative: {0, 1} vs {1, 2} -> 1 / 3.
    x = np.array([-5, -4, 0, 1, 2, 3, 4, 5, 6, 7])
    y = np.array([0, -4, -5, 1, 2, 3, 4, 5, 6, 7])
    assert jaccard_lowest(x, y, 0.2) == pytest.approx(1 / 3)
    assert jaccard_lowest(x, y, 0.1) == 0.0  # {0} vs {2}
    assert sign_agreement([1, -1, 0, 2], [1, 1, 0, -2]) == 0.5


def test_pick_instances_covers_both_tails_and_is_seeded():
    ours = np.random.default_rng(0).standard_normal(100)
    idx, picks = pick_instances(ours, 10, seed=3)
    assert len(set(idx.tolist())) == 10
    order = np.argsort(ours)
    assert set(idx[:3]) == set(order[:3]) and set(idx[3:5]) == set(order[-2:])
    assert picks == ["ours_low"] * 3 + ["ours_high"] * 2 + ["random"] * 5
    assert np.array_equal(pick_instances(ours, 10, seed=3)[0], idx)
    assert not np.array_equal(pick_instances(ours, 10, seed=4)[0][5:], idx[5:])


def test_counterfactual_from_stored_step_equals_full_replay(data, tmp_path):
    """Starting at j's step from the stored theta[t_j] is bit-identical to eval.retrain without j."""
    run = str(tmp_path)
    train(data, run, seed=0, epochs=2, batch_size=8, lr=0.1, keep_step_params=True, progress=False, net=TINY_BN)
    cf = Counterfactuals(data, run, 8, TINY_BN)
    for j in (int(cf.record.batch(cf.steps[1])[0][3]), int(cf.record.batch(cf.steps[-1])[0][0])):
        retrain(data, run, np.array([j]), False, 8, net=TINY_BN)
        full = {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}
        cf = Counterfactuals(data, run, 8, TINY_BN)
        cf.replay_without(j)
        for k, v in nn.get_parameters(grad_only=False).items():
            assert np.array_equal(v.d, full[k]), (j, k)


def tiny_args(out, **kw):
    args = build_parser().parse_args(["-o", out, "--n-train", "32", "--n-val", "24", "-e", "2", "-bs", "8",
                                      "--lr", "0.1", "--n-check", "10", "--if-epochs", "1"])
    args.dataset = "tiny"
    check_args(args)
    vars(args).update(kw)
    return args


def test_quick_validation(data, tmp_path):
    """Tiny net without batch norm, M = 10: the final-step instances are estimated exactly
    (by the exact retrace; the fd retrace's agreement with it is tests/test_retrace.py's)."""
    out = str(tmp_path / "v")
    summary = run_validation(tiny_args(out, retrace="exact"), data, net=TINY, progress=False)
    vdir = os.path.join(out, "validation")
    for f in ("validation.csv", "validation.json", "scatter_Hara.png", "scatter_Ours.png",
              "scatter_Influence_functions.png", "scatter_Ours_hu_over_batch.png", "scatter_Ours_sample_alone.png"):
        assert os.path.exists(os.path.join(vdir, f)), f
    with open(os.path.join(vdir, "validation.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10 and summary["n_checked"] == 10
    col = lambda name: np.array([float(r[name]) for r in rows])  # noqa: E731
    steps = col("step_in_last_epoch")
    final = steps == steps.max()
    assert final.any() and (~final).any()
    truth, hara = col("true_linear"), col("Hara")
    # Hara's estimate of an instance of the final step is the exact change (float32 parameters).
    assert np.allclose(hara[final], truth[final], rtol=1e-4, atol=1e-6 * np.abs(truth).max())
    # At the final step u is not yet updated and there is no batch norm: every Ours variant agrees with Ours...
    ours = col("Ours")
    for m in ("Ours_hu_over_batch", "Ours_sample_alone"):
        assert np.allclose(col(m)[final], ours[final], rtol=1e-5)
    # ... without batch norm the per-sample variant agrees everywhere; the u-scaling one does not.
    assert np.allclose(col("Ours_sample_alone"), ours, rtol=1e-4, atol=1e-7)
    assert not np.allclose(col("Ours_hu_over_batch")[~final], ours[~final], rtol=1e-3)
    assert np.all(np.isfinite(col("Influence_functions")))
    with open(os.path.join(vdir, "validation.json")) as f:
        saved = json.load(f)
    m = saved["metrics"]["true_linear"]["Hara"]["all"]
    assert set(m) == {"pearson", "spearman", "kendall", "jaccard_top10_negative", "sign_agreement"}
    assert m["spearman"] > 0.8  # lr 0.1 on a tiny net over 4 steps: the retrace ranks well
    assert saved["settings"]["n_check"] == 10
    first = saved["by_steps_remaining"][0]  # the final step: Hara exact
    assert first["steps_remaining"] == "1" and first["n"] == int(final.sum())
    assert first["Hara"]["median_relative_error"] < 1e-4
    assert saved["final_step"] == {k: v for k, v in first.items() if k != "steps_remaining"}

    # Resume: nothing is recomputed (the cache holds every estimate and counterfactual).
    cache = os.path.join(vdir, "cache")
    mtimes = {f: os.path.getmtime(os.path.join(cache, f)) for f in os.listdir(cache)}
    again = run_validation(tiny_args(out, retrace="exact"), data, net=TINY, progress=False)
    assert again["metrics"] == summary["metrics"]
    assert {f: os.path.getmtime(os.path.join(cache, f)) for f in os.listdir(cache)} == mtimes
    assert set(again["seconds_this_run"]) == {"Hara", "Ours", "Influence_functions", "Ours_hu_over_batch",
                                              "Ours_sample_alone", "counterfactuals"}  # no training
    # Other settings are refused, naming the difference.
    with pytest.raises(UserError, match="lr"):
        run_validation(tiny_args(out, lr=0.2, retrace="exact"), data, net=TINY, progress=False)
    with pytest.raises(UserError, match="n_check"):
        run_validation(tiny_args(out, n_check=5, retrace="exact"), data, net=TINY, progress=False)
