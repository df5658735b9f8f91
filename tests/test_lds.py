"""LDS (validate_influence.py --lds): paired replays, the noise ceiling, and the score on a
problem where the first-order scores are nearly exact."""
import json
import os

import numpy as np
import pytest

from conftest import TINY
from sgd_influence.checks import lds
from sgd_influence.base.errors import UserError
from sgd_influence.core.params import StepParamsReader
from sgd_influence.core.train import train
from sgd_influence.checks.validate import build_parser, check_args, main, run_lds


def lds_args(out, *extra):
    args = build_parser().parse_args(["-o", out, "--n-train", "32", "--n-val", "24", "-e", "2", "-bs", "8",
                                      "--lr", "0.01", "--lds", "--retrace", "exact", *extra])
    args.dataset = "tiny"
    check_args(args)
    return args


def test_paired_replays_with_nothing_removed_give_zero(data, tmp_path):
    run = str(tmp_path / "run")
    train(data, run, seed=0, epochs=2, batch_size=8, lr=0.1, keep_step_params=True, progress=False, net=TINY)
    rep = lds.PairedReplays(data, run, str(tmp_path / "cache"), 8, seed=0, net=TINY)
    losses = [rep.baseline(r) for r in range(3)]
    starts = [StepParamsReader(rep.store_path(r)).arrays(0) for r in range(3)]
    for k, v in starts[0].items():  # the starts differ by at most one float32 ulp per parameter...
        for other in starts[1:]:
            assert np.all((other[k] == v) | (np.nextafter(v, np.inf) == other[k])
                          | (np.nextafter(v, -np.inf) == other[k])), k
    moved = [np.mean([np.mean(s[k] != starts[0][k]) for k in starts[0] if "conv" in k or "fc" in k])
             for s in starts[1:]]
    assert all(0.4 < m < 0.6 for m in moved), moved  # ... for about half of them
    assert abs(losses[1] - losses[0]) < 1e-3 * losses[0]
    for r in range(3):
        assert rep.truth(np.array([], np.int64), r) == 0.0  # exactly: the same replay
    # A removal from the last batch only starts at that step, from the stored theta^r[t].
    j = rep.record.batch(rep.steps[-1])[0][:2]
    assert rep.truth(j, 1) != 0.0


def test_subsets_are_seeded_and_prefix_stable():
    a = [lds.subset(100, 0.05, s, seed=0) for s in range(5)]
    assert all(len(x) == 5 and len(set(x)) == 5 for x in a)
    assert all(np.array_equal(x, lds.subset(100, 0.05, s, seed=0)) for s, x in enumerate(a))
    assert not np.array_equal(a[0], lds.subset(100, 0.05, 0, seed=1))
    assert not np.array_equal(a[0], a[1])
    assert lds.subset_size(100, 0.001) == 1


def test_noise_ceiling_and_block_on_constructed_truths():
    rng = np.random.default_rng(0)
    signal = rng.standard_normal(40)
    same = np.stack([signal, signal], axis=1)
    assert lds.noise_ceiling(same) == pytest.approx(1.0)
    noisy = signal[:, None] + 0.1 * rng.standard_normal((40, 4))
    block = lds.lds_block(noisy, {"exact": signal, "Random": rng.standard_normal(40)}, 0.1, 400, seed=0)
    assert block["noise_ceiling"] > 0.95 and block["subset_size"] == 40
    assert block["methods"]["exact"]["lds"] > 0.95
    lo, hi = block["methods"]["Random"]["lds_ci95"]
    assert lo < 0 < hi  # a random predictor's interval covers 0
    assert block["methods"]["exact"]["lds_ci95"][0] > 0.9


def test_lds_end_to_end_on_a_tiny_net(data, tmp_path):
    """Tiny net without batch norm at lr 0.01: the retrace's scores are first-order exact, so their
    sums rank the group removals (LDS near 1); Random does not."""
    out = str(tmp_path / "v")
    args = lds_args(out, "--lds-fraction", "0.1", "0.25", "--lds-subsets", "12", "--noise-replays", "2",
                    "--methods", "Hara", "Ours", "Random")
    summary = run_lds(args, data, net=TINY, progress=False)
    vdir = os.path.join(out, "validation")
    for f in ("lds.json", "lds.csv", "lds_Hara.png", "lds_Ours.png", "lds_Random.png"):
        assert os.path.exists(os.path.join(vdir, f)), f
    with open(os.path.join(vdir, "lds.json")) as f:
        saved = json.load(f)
    assert saved["fraction"] == 0.1 and saved["subsets"] == 12 and saved["replays"] == 2
    assert [b["fraction"] for b in saved["blocks"]] == [0.1, 0.25]
    assert set(saved["methods"]) == {"Hara", "Ours", "Random"}
    for b in saved["blocks"]:
        assert b["methods"]["Hara"]["lds"] > 0.9, b
        assert abs(b["methods"]["Random"]["lds"]) < 0.6, b
    assert summary["noise_ceiling"] == saved["noise_ceiling"]

    # Resume: nothing recomputed; more subsets compute only the new ones.
    cache = lds.cache_dir(out)
    mtimes = {f: os.path.getmtime(os.path.join(cache, f)) for f in os.listdir(cache)}
    again = run_lds(lds_args(out, "--lds-fraction", "0.1", "0.25", "--lds-subsets", "12",
                             "--methods", "Hara", "Ours", "Random"), data, net=TINY, progress=False)
    assert {f: os.path.getmtime(os.path.join(cache, f)) for f in os.listdir(cache)} == mtimes
    assert again["blocks"] == summary["blocks"] and "train" not in again["seconds_this_run"]
    before = lds.read_truths(lds.truths_path(cache, 0.1))
    run_lds(lds_args(out, "--lds-fraction", "0.1", "--lds-subsets", "14", "--methods", "Random"), data,
            net=TINY, progress=False)
    after = lds.read_truths(lds.truths_path(cache, 0.1))
    assert len(after) == 28 and all(after[k] == v for k, v in before.items())
    # The truths' settings are fixed once made.
    with pytest.raises(UserError, match="n_val"):
        run_lds(lds_args(out, "--n-val", "20"), data, net=TINY, progress=False)


@pytest.mark.parametrize("argv, message", [
    (["--lds-subsets", "10"], "only apply with --lds"),
    (["--lds", "--noise-replays", "1"], "at least 2"),
    (["--lds", "--lds-subsets", "3"], "at least 5"),
])
def test_bad_lds_options_are_one_line(tmp_path, capsys, argv, message):
    assert main(["-o", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
