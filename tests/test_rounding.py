"""checks/rounding.py: one trial's retrainings replayed from a half-ulp-moved theta[K-1]."""
import os
import shutil

import nnabla as nn
import numpy as np
import pytest

from sgd_influence.base import layout
from sgd_influence.checks import rounding
from sgd_influence.config.settings import args_from_settings, data_for
from sgd_influence.core import network
from sgd_influence.core.eval import retrain


def test_replays_paired_resumable_and_summarised(finished_tiny_run, tmp_path, capsys):
    out = str(tmp_path / "o")
    shutil.copytree(finished_tiny_run, out)
    assert rounding.main([out, "-r", "4", "--replays", "2"]) == 0
    files = {m: [layout.rounding_score_path(out, m, 4, 0, 0, r) for r in (1, 2)] for m in ("Hara", "Ours", "Random")}
    assert all(os.path.exists(p) for ps in files.values() for p in ps)
    # replay r: the driver's retraining with theta[K-1] moved by perturb_half_ulp((0, 9, r)) -- an independent call
    args = args_from_settings(layout.read_settings(out))
    removed = layout.read_removal_order(layout.influence_path(out, "Hara", 0))[:4]
    rows = retrain(data_for(args, 0), layout.train_dir(out, 0), removed, False, args.batch_size,
                   network.from_args(args), start_key=(0, 9, 2))
    np.testing.assert_allclose(layout.read_score_csv(files["Hara"][1]), np.array(rows), rtol=1e-8)
    # the retraining did start from a moved theta[K-1]: its final parameters differ from the unmoved one's
    final = []
    for key in (None, (0, 9, 2)):
        retrain(data_for(args, 0), layout.train_dir(out, 0), removed, False, args.batch_size, network.from_args(args),
                start_key=key)
        final.append({k: v.d.copy() for k, v in nn.get_parameters().items()})
    assert any(not np.array_equal(final[0][k], final[1][k]) for k in final[0])
    # the summary: d_r = Hara - Random per replay r = 0, 1, 2 and their sample sd
    got = {(r["metric"], r["method"]): r for r in rounding.summarize(out, 0, [4], ["Hara", "Ours", "Random"],
                                                                    {"Hara": [0], "Ours": [0], "Random": [0]}, 2)}
    acc = lambda p: layout.read_score_csv(p)[-1, 3]  # noqa: E731
    d = [acc(layout.score_path(out, "Hara", 4, 0)) - acc(layout.score_path(out, "Random", 4, 0))]
    d += [acc(files["Hara"][i]) - acc(files["Random"][i]) for i in (0, 1)]
    r = got[("test_accuracy", "Hara")]
    assert r["replays"] == 3 and r["sd_rounding"] == pytest.approx(np.std(d, ddof=1))
    assert r["sd_trials"] is None and r["share"] is None  # one trial: no spread over trials
    assert os.path.exists(os.path.join(out, "rounding", "rounding.csv"))
    # resumed: nothing recomputed
    stamp = {p: os.path.getmtime(p) for ps in files.values() for p in ps}
    capsys.readouterr()
    assert rounding.main([out, "-r", "4", "--replays", "2"]) == 0
    assert "0 retrainings to do" in capsys.readouterr().out
    assert all(os.path.getmtime(p) == t for p, t in stamp.items())


def test_refuses_a_folder_without_random_at_n(finished_tiny_run, tmp_path, capsys):
    assert rounding.main([finished_tiny_run, "-r", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no Random retraining of trial 0 at n = 7" in err[0]
    assert rounding.main([str(tmp_path)]) == 2


def test_the_replays_run_on_the_runs_device(finished_tiny_run, tmp_path, monkeypatch):
    """In-process (--workers 1) the replays set the nnabla context of the run's -di (or of their own -di),
    as the driver did for the r = 0 retrainings they are paired with (workers set theirs in runner.py)."""
    out = str(tmp_path / "o")
    shutil.copytree(finished_tiny_run, out)
    calls = []
    monkeypatch.setattr(rounding, "set_context", lambda device_id: calls.append(device_id) or "cpu")
    assert rounding.main([out, "-r", "4", "--replays", "1"]) == 0
    assert calls == [args_from_settings(layout.read_settings(out)).device_id]
    assert rounding.main([out, "-r", "4", "--replays", "1", "-di", "cpu"]) == 0
    assert calls[1:] == ["cpu"]
