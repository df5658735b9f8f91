"""LDS (validate_influence.py --lds): paired replays, the noise ceiling, and the score on a
problem where the first-order scores are nearly exact."""
import json
import os

import numpy as np
import pytest

from conftest import TINY, TINY_BN, lds_args, tiny_data
from sgd_influence.base import layout
from sgd_influence.base.metrics import spearman
from sgd_influence.checks import lds
from sgd_influence.base.errors import UserError
from sgd_influence.core.params import StepParamsReader
from sgd_influence.core.train import train
from sgd_influence.checks.validate import main, run_lds


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
    # The small fractions at the demo's 2,000 training images: 20 and 40 instances, files apart.
    for p, size in ((0.01, 20), (0.02, 40), (0.05, 100)):
        s = lds.subset(2000, p, 0, seed=0)
        assert len(s) == len(set(s)) == lds.subset_size(2000, p) == size
    assert not np.array_equal(lds.subset(2000, 0.01, 0, seed=0), lds.subset(2000, 0.02, 0, seed=0)[:20])
    assert {os.path.basename(lds.truths_path("c", p)) for p in (0.01, 0.02, 0.05)} == \
        {"truths_p0.01.csv", "truths_p0.02.csv", "truths_p0.05.csv"}


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


def tiny_load(seed):
    """The tiny data of a trial seed (the split differs by seed, as a real dataset's does)."""
    return tiny_data(seed=seed)


def blocks_of(summary, training="seed_0"):
    return next(t["blocks"] for t in summary["trainings"] if t["training"] == training)


def cache_files(out):
    root = os.path.join(out, "validation", "lds_cache")
    return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs}


def test_lds_end_to_end_on_a_tiny_net(tmp_path):
    """Tiny net without batch norm at lr 0.01: the retrace's scores are first-order exact, so their
    sums rank the group removals (LDS near 1); Random does not."""
    out = str(tmp_path / "v")
    args = lds_args(out, "--lds-fraction", "0.1", "0.25", "--lds-subsets", "12", "--noise-replays", "2",
                    "--methods", "Hara", "Ours", "Random")
    summary = run_lds(args, tiny_load, net=TINY, progress=False)
    vdir = os.path.join(out, "validation")
    for f in ("lds.json", "lds.csv", "lds_Hara.png", "lds_Ours.png", "lds_Random.png", "lds_trainings.png"):
        assert os.path.exists(os.path.join(vdir, f)), f
    with open(os.path.join(vdir, "lds.json")) as f:
        saved = json.load(f)
    blocks = blocks_of(saved)
    assert [b["fraction"] for b in blocks] == [0.1, 0.25] and blocks[0]["subsets"] == 12
    assert blocks[0]["replays"] == 2 and set(blocks[0]["methods"]) == {"Hara", "Ours", "Random"}
    for b in blocks:
        assert b["methods"]["Hara"]["lds"] > 0.9, b
        assert abs(b["methods"]["Random"]["lds"]) < 0.6, b
    assert blocks_of(summary) == blocks and saved["twin"] is None
    one = saved["across_trainings"][0]
    assert one["methods"]["Hara"]["mean"] == blocks[0]["methods"]["Hara"]["lds"]
    assert one["methods"]["Hara"]["ci95"] == [None, None]  # one training: no interval
    with open(os.path.join(vdir, "lds.csv")) as f:
        assert f.readline().startswith("training,seed,fraction,subset")

    # Resume: nothing recomputed; more subsets compute only the new ones.
    mtimes = cache_files(out)
    again = run_lds(lds_args(out, "--lds-fraction", "0.1", "0.25", "--lds-subsets", "12",
                             "--methods", "Hara", "Ours", "Random"), tiny_load, net=TINY, progress=False)
    assert cache_files(out) == mtimes
    assert blocks_of(again) == blocks and "train" not in again["seconds_this_run"]
    cache = lds.cache_dir(out, lds.Training(0))
    before = lds.read_truths(lds.truths_path(cache, 0.1))
    run_lds(lds_args(out, "--lds-fraction", "0.1", "--lds-subsets", "14", "--methods", "Random"), tiny_load,
            net=TINY, progress=False)
    after = lds.read_truths(lds.truths_path(cache, 0.1))
    assert len(after) == 28 and all(after[k] == v for k, v in before.items())
    # The truths' settings are fixed once made.
    with pytest.raises(UserError, match="n_val"):
        run_lds(lds_args(out, "--n-val", "20"), tiny_load, net=TINY, progress=False)


def folder_files(out):
    """{path: (mtime, bytes)} of every file under OUT (trainings and LDS caches)."""
    found = {}
    for d, _, fs in os.walk(out):
        for f in fs:
            path = os.path.join(d, f)
            with open(path, "rb") as fh:
                found[path] = (os.path.getmtime(path), fh.read())
    return found


def test_adding_fractions_and_methods_reuses_trainings_scores_and_truths(tmp_path):
    """An LDS folder grown by two smaller fractions and a method (as `make lds-small` grows a folder
    that holds 5%): the training, the scores, the baseline replays and the truths already there are
    reused untouched; only the new fractions' truths and the new method's scores are computed, and
    the old fraction's block is the same for the old methods."""
    out = str(tmp_path / "v")
    load = lambda seed: tiny_data(n_train=100, seed=seed)  # noqa: E731  (1%, 2%, 5%: 1, 2 and 5 instances)
    first = run_lds(lds_args(out, "--lds-fraction", "0.05", "--lds-subsets", "6", "--methods", "Hara", "Random"),
                    load, net=TINY, progress=False)
    old = folder_files(out)
    os.remove(os.path.join(out, "validation", "lds.json"))  # the summary is rewritten; all else must stay
    grown = run_lds(lds_args(out, "--lds-fraction", "0.01", "0.02", "0.05", "--lds-subsets", "6",
                             "--methods", "Hara", "Ours", "Random"), load, net=TINY, progress=False)
    now = folder_files(out)
    vdir = os.path.join(out, "validation")
    kept = {f: v for f, v in old.items() if os.path.dirname(f) != vdir}  # lds.csv and the figures are redrawn
    assert all(now[f] == v for f, v in kept.items()), [f for f, v in kept.items() if now[f] != v]
    cache = lds.cache_dir(out, lds.Training(0))
    new = {os.path.relpath(f, cache) for f in set(now) - set(old) if f.startswith(cache)}
    assert {"truths_p0.01.csv", "truths_p0.02.csv", layout.estimate_path("", "Ours")} <= new
    assert not any(f.startswith("replay_") for f in new)  # the baseline replays were reused
    assert not any(f.startswith(os.path.join(out, "train")) for f in set(now) - set(old))
    assert "train" not in grown["seconds_this_run"]
    blocks = blocks_of(grown)
    assert [b["fraction"] for b in blocks] == [0.01, 0.02, 0.05]
    assert [b["subset_size"] for b in blocks] == [1, 2, 5]
    assert all(len(lds.read_truths(lds.truths_path(cache, p))) == 12 for p in (0.01, 0.02, 0.05))
    before, after = blocks_of(first)[0], blocks[2]
    for m in ("Hara", "Random"):
        assert after["methods"][m] == before["methods"][m]
    assert after["noise_ceiling"] == before["noise_ceiling"] and "Ours" in after["methods"]
    # The fraction figure is drawn by the run and redrawn from lds.json alone with the same rows.
    assert os.path.exists(os.path.join(vdir, "lds_fractions.png"))
    with open(os.path.join(vdir, "lds.json")) as f:
        rows = lds.merge_fractions([("lds.json", json.load(f))])
    assert [{k: v for k, v in r.items() if k != "source"} for r in rows] == \
        json.loads(json.dumps(grown["across_trainings"]))


def fake_summary(window, values, ceilings, methods=("Hara", "Random")):
    """An lds.json summary with given per-training LDS values: {training: {fraction: {method: lds}}}."""
    trainings = []
    for name, per in values.items():
        blocks = [{"window": window, "fraction": p, "subset_size": int(p * 2000), "subsets": 50, "replays": 2,
                   "noise_ceiling": ceilings[name][p],
                   "max_lds_all_replays": float(np.sqrt(2 * ceilings[name][p] / (1 + ceilings[name][p]))),
                   "methods": {m: {"lds": v[m], "lds_single_replay": v[m] - 0.01} for m in methods}}
                  for p, v in sorted(per.items())]
        trainings.append({"training": name, "theta0_perturbed": name.endswith("ulp"), "blocks": blocks})
    return {"trainings": trainings, "settings": {"methods": list(methods), "n_train": 2000}}


def test_fraction_rows_join_lds_files_over_the_same_trainings(tmp_path):
    """merge_fractions: each fraction from the first summary that has it, its mean and 95% t-interval
    recomputed over the trainings asked for (numpy oracle); the twin left out by default; a missing
    training or another window is a UserError; the figure and the command's errors."""
    rng = np.random.default_rng(1)
    names = ["seed_0", "seed_1", "seed_2"]
    small = {n: {p: {"Hara": rng.uniform(0, 1), "Random": rng.uniform(-0.3, 0.3)} for p in (0.01, 0.05)}
             for n in names + ["seed_0_theta0_ulp"]}
    ceil_small = {n: {0.01: 0.6 + 0.1 * k, 0.05: 0.8} for k, n in enumerate(small)}
    big = {n: {p: {"Hara": rng.uniform(0, 1), "Random": 0.0} for p in (0.05, 0.5)} for n in names + ["seed_3"]}
    ceil_big = {n: {0.05: 0.1, 0.5: 0.95} for n in big}
    a, b = fake_summary("last", small, ceil_small), fake_summary("last", big, ceil_big)
    rows = lds.merge_fractions([("A", a), ("B", b)])
    assert [(r["fraction"], r["source"]) for r in rows] == [(0.01, "A"), (0.05, "A"), (0.5, "B")]
    for r, (src, ceil) in zip(rows, ((small, ceil_small), (small, ceil_small), (big, ceil_big))):
        assert r["trainings"] == names  # the twin left out; seed_3 of B not asked for
        v = [src[n][r["fraction"]]["Hara"] for n in names]
        half = 4.303 * np.std(v, ddof=1) / np.sqrt(3)
        assert r["methods"]["Hara"]["mean"] == pytest.approx(np.mean(v))
        assert r["methods"]["Hara"]["ci95"] == pytest.approx([np.mean(v) - half, np.mean(v) + half])
        assert r["noise_ceiling"]["mean"] == pytest.approx(np.mean([ceil[n][r["fraction"]] for n in names]))
        c = np.array([ceil[n][r["fraction"]] for n in names])
        assert r["max_lds_all_replays"]["mean"] == pytest.approx(np.mean(np.sqrt(2 * c / (1 + c))))
        pair = r["pairs"][0]
        assert (pair["a"], pair["b"]) == ("Hara", "Random")
        assert pair["difference"]["values"] == pytest.approx(
            [src[n][r["fraction"]]["Hara"] - src[n][r["fraction"]]["Random"] for n in names])
    two = lds.merge_fractions([("B", b), ("A", a)], ["seed_1", "seed_2"])  # B first: its 5%
    assert [r["source"] for r in two] == ["A", "B", "B"] and two[1]["noise_ceiling"]["mean"] == pytest.approx(0.1)
    with pytest.raises(UserError, match="B has no 0.5 block for seed_0_theta0_ulp"):
        lds.merge_fractions([("A", a), ("B", b)], ["seed_0", "seed_0_theta0_ulp"])
    with pytest.raises(UserError, match="window"):
        lds.merge_fractions([("A", a), ("C", fake_summary("all", big, ceil_big))])
    lds.plot_fractions(str(tmp_path / "f.png"), rows, "test")
    assert (tmp_path / "f.png").stat().st_size > 10000

    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name, summary in (("a.json", a), ("b.json", b), ("c.json", {**b, "settings": {"n_train": 1000}})):
        (tmp_path / name).write_text(json.dumps(summary))
    tool = [sys.executable, os.path.join(root, "tools", "plot_lds_fractions.py")]
    ok = subprocess.run(tool + [str(tmp_path / "a.json"), str(tmp_path / "b.json"), "-o", str(tmp_path / "g.png")],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and (tmp_path / "g.png").exists(), ok.stderr
    assert "0.5 (1000 instances" in ok.stdout and "Hara - Random" in ok.stdout
    # A file from before the recipes and the data options (docs/lds/over_trainings/lds.json) joins one that
    # records their defaults, not one of another recipe.
    recorded = {"optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0, "lr_schedule": "constant", "net": "cnn",
                "label_noise": None, "train_csv": None, "bn_coupling": "off"}
    for name, extra in (("d.json", recorded), ("e.json", {**recorded, "momentum": 0.9})):
        (tmp_path / name).write_text(json.dumps({**a, "settings": {**a["settings"], **extra}}))
    ok = subprocess.run(tool + [str(tmp_path / "d.json"), str(tmp_path / "b.json"), "-o", str(tmp_path / "g.png")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    for argv, message in (([str(tmp_path / "a.json"), str(tmp_path / "c.json")], "n_train 1000 vs 2000"),
                          ([str(tmp_path / "e.json"), str(tmp_path / "b.json")], "momentum 0.0 vs 0.9"),
                          ([str(tmp_path / "none.json")], "no file")):
        bad = subprocess.run(tool + argv + ["-o", str(tmp_path / "h.png")], capture_output=True, text=True)
        err = bad.stderr.strip().splitlines()
        assert bad.returncode == 2 and len(err) == 1 and message in err[0], bad.stderr


def test_lds_over_trainings_grows_without_recomputing(tmp_path):
    """--trials 2 then 3 (+ the twin): the third training alone is computed; per-training values
    equal a one-training run of that seed; the across-trainings mean, interval and paired
    differences are those of the per-training values."""
    out = str(tmp_path / "v")
    opts = ["--lds-fraction", "0.25", "--lds-subsets", "8", "--methods", "Hara", "Ours", "Random"]
    two = run_lds(lds_args(out, "--trials", "2", *opts), tiny_load, net=TINY, progress=False)
    assert [t["training"] for t in two["trainings"]] == ["seed_0", "seed_1"]
    mtimes = cache_files(out)
    train1 = os.path.getmtime(os.path.join(out, "train", "seed_1", "step_record.npz"))
    three = run_lds(lds_args(out, "--trials", "3", "--lds-twin", *opts), tiny_load, net=TINY, progress=False)
    assert all(cache_files(out)[f] == t for f, t in mtimes.items())  # nothing of seeds 0, 1 rewritten
    assert os.path.getmtime(os.path.join(out, "train", "seed_1", "step_record.npz")) == train1
    new = {os.path.relpath(f, os.path.join(out, "validation", "lds_cache")).split(os.sep)[0]
           for f in set(cache_files(out)) - set(mtimes)}
    assert new == {"seed_2", "seed_0_theta0_ulp"}
    assert [t["training"] for t in three["trainings"]] == ["seed_0", "seed_1", "seed_2", "seed_0_theta0_ulp"]
    for name in ("seed_0", "seed_1"):
        assert blocks_of(three, name) == blocks_of(two, name)

    # The same seed alone, in another folder: the same values (a training's LDS is its own).
    alone = run_lds(lds_args(str(tmp_path / "alone"), "--seed", "2", *opts), tiny_load, net=TINY, progress=False)
    assert blocks_of(alone, "seed_2") == blocks_of(three, "seed_2")

    row = three["across_trainings"][0]
    values = {m: [blocks_of(three, f"seed_{s}")[0]["methods"][m]["lds"] for s in range(3)]
              for m in ("Hara", "Ours", "Random")}
    for m, v in values.items():
        st = row["methods"][m]
        assert st["values"] == v and st["mean"] == pytest.approx(np.mean(v))
        half = 4.303 * np.std(v, ddof=1) / np.sqrt(3)  # t(0.975, 2 df)
        assert st["ci95"] == pytest.approx([np.mean(v) - half, np.mean(v) + half])
    pair = next(p for p in row["pairs"] if (p["a"], p["b"]) == ("Hara", "Random"))
    d = np.subtract(values["Hara"], values["Random"])
    assert pair["difference"]["values"] == pytest.approx(list(d))
    lo, hi = pair["difference"]["ci95"]
    assert pair["excludes_zero"] == (lo > 0 or hi < 0)
    assert {(p["a"], p["b"]) for p in row["pairs"]} == {("Hara", "Ours"), ("Hara", "Random"), ("Ours", "Random")}
    # the same against the deterministic truth (replay 0 alone)
    single = {m: [blocks_of(three, f"seed_{s}")[0]["methods"][m]["lds_single_replay"] for s in range(3)]
              for m in ("Hara", "Random")}
    assert row["methods_single_replay"]["Hara"]["values"] == single["Hara"]
    pair = next(p for p in row["pairs_single_replay"] if (p["a"], p["b"]) == ("Hara", "Random"))
    assert pair["difference"]["values"] == pytest.approx(list(np.subtract(single["Hara"], single["Random"])))

    # The twin: same seed and subsets, theta[0] moved by a half-ulp -- a different training.
    twin = three["twin"][0]["methods"]["Hara"]
    assert twin["lds"] == values["Hara"][0] and twin["sd_over_seeds"] == pytest.approx(np.std(values["Hara"], ddof=1))
    from sgd_influence.core.params import load_checkpoint
    from sgd_influence.core.graphs import trainable_params
    from sgd_influence.core.train import init_model
    from sgd_influence.base.layout import checkpoint_path
    init_model(tiny_load(0), 0, 8, TINY)
    starts = []
    for d in ("seed_0", "seed_0_theta0_ulp"):
        load_checkpoint(checkpoint_path(os.path.join(out, "train", d), 0))
        starts.append({k: v.d.copy() for k, v in trainable_params().items()})
    moved = [k for k in starts[0] if not np.array_equal(starts[0][k], starts[1][k])]
    assert moved and all(np.all(np.abs(starts[0][k] - starts[1][k])
                                <= np.abs(np.spacing(starts[0][k])) * 1.0000001) for k in moved)


@pytest.mark.parametrize("argv, message", [
    (["--lds-subsets", "10"], "only apply with --lds"),
    (["--trials", "3"], "only apply with --lds"),
    (["--lds", "--noise-replays", "1"], "at least 2"),
    (["--lds", "--lds-subsets", "3"], "at least 5"),
])
def test_bad_lds_options_are_one_line(tmp_path, capsys, argv, message):
    assert main(["-o", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]


def test_last_epoch_linearity_probe_at_small_eps_is_haras_prediction(tmp_path, capsys):
    """tools/probe_linearity.py --window last: on a smooth tiny net with batch norm, lowering a subset's
    weight by eps = 0.01 in every step of the last epoch changes the validation loss by eps times Hara's
    summed scores (its derivative, with the batch-norm coupling), for the unperturbed and the
    half-ulp-moved replay alike; eps = 1 moves it; the losses are cached (a re-run computes nothing,
    a fifth subset only its own); a folder without an LDS is one error line."""
    from test_replay_all import SMOOTH_BN, probe_module
    probe = probe_module()
    out = str(tmp_path / "v")
    args = lds_args(out, "--lr", "0.05", "--lds-fraction", "0.25", "--lds-subsets", "5", "--methods", "Hara")
    run_lds(args, tiny_load, net=SMOOTH_BN, progress=False)
    r = probe.linearity(tiny_data(seed=0), SMOOTH_BN, out, 0, 0.25, 4, (0.01, 1.0), 8, window="last", replays=2)
    assert r["method"] == "Hara" and r["window"] == "last" and r["subset_size"] == 8
    g, small = r["g"], r["f_over_eps_replays"][0.01]
    assert small.shape == (4, 2) and np.abs(g).min() > 1e-4
    for q in range(2):
        np.testing.assert_allclose(small[:, q], g, rtol=0.05, atol=0.02 * np.abs(g).max())
    assert not np.allclose(r["f_over_eps"][1.0], 0.0)
    stats = probe.eps_stats(r)
    assert stats[0]["spearman"] == pytest.approx(spearman(small.mean(axis=1), g)) and "replays_agree" in stats[0]
    assert stats[0]["rms_change_over_predicted"] == pytest.approx(1.0, abs=0.06)  # in the linear range: 1
    rem = probe.removal_stats(r)  # the LDS truths of the same subsets exist (replay 0)
    assert rem is not None and np.isfinite(rem["spearman_weights_vs_removal"])

    path = lds.linearity_path(lds.cache_dir(out, lds.Training(0)), 0.25)
    assert len(probe.read_losses(path)) == 2 + 4 * 2 * 2
    mtime = os.path.getmtime(path)
    again = probe.linearity(tiny_data(seed=0), SMOOTH_BN, out, 0, 0.25, 4, (0.01, 1.0), 8, window="last", replays=2)
    assert os.path.getmtime(path) == mtime and np.array_equal(again["f_over_eps"][0.01], r["f_over_eps"][0.01])
    more = probe.linearity(tiny_data(seed=0), SMOOTH_BN, out, 0, 0.25, 5, (0.01, 1.0), 8, window="last", replays=2)
    assert len(probe.read_losses(path)) == 2 + 5 * 2 * 2
    assert np.array_equal(more["f_over_eps_replays"][1.0][:4], r["f_over_eps_replays"][1.0])

    # The branch check: on the smooth net both graphs give one gradient (float32 apart), and there is no max-pool;
    # the same parameters in the ReLU / max-pool net (TINY_BN, the same parameter names) count their ties.
    smooth = probe.branch_check(tiny_data(seed=0), SMOOTH_BN, out, 0, "last", 8)
    assert smooth["weighted_vs_training_loss"] < 1e-5 and smooth["weighted_vs_training_gradient"] < 1e-4
    assert smooth["half_ulp_gradient"] < 1e-4 and smooth["max_pool_ties"] == []
    relu = probe.branch_check(tiny_data(seed=0), TINY_BN, out, 0, "last", 8)
    assert len(relu["max_pool_ties"]) == 2 and all(0 <= v <= 1 for v in relu["max_pool_ties"])
    # The command's data: an LDS folder's run.json names only the settings of its day (here, from before the data
    # options and the recipe): the rest at their values then, and no test split.
    old = {"dataset": "fashion_mnist", "n_train": 2000, "n_val": 1000, "n_epochs": 10, "batch_size": 16, "lr": 0.02,
           "no_augment": True, "seed": 0, "retrace": "fd", "bn_coupling": "on"}
    run_args = lds.run_arguments(old, "/data")
    assert (run_args.n_test, run_args.train_csv, run_args.label_noise, run_args.net) == (0, None, None, "cnn")
    assert (run_args.data_dir, run_args.n_train, run_args.bn_coupling, run_args.momentum) == ("/data", 2000, "on", 0.0)
    assert probe.main([str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a validate_influence.py --lds folder" in err[0]
    with pytest.raises(UserError, match="--methods Replay_all"):
        probe.default_method(lds.cache_dir(out, lds.Training(0)), "all")


def split_module():
    """tools/split_truth.py as a module."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "split_truth", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools",
                                    "split_truth.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("net", [TINY_BN, TINY], ids=["batch_norm", "no_batch_norm"])
def test_split_truth_recomputes_the_lds_truth_and_splits_it(tmp_path, net):
    """tools/split_truth.py: its truth is the LDS cache's replay-0 truth bit for bit (the same replay, on
    the CPU); with batch norm the running statistics' part is not zero, and putting both parts back gives
    the truth to first order; without batch norm the running statistics' part is exactly 0 and the
    parameters' part is the truth."""
    split = split_module()
    out = str(tmp_path / "v")
    run_lds(lds_args(out, "--lr", "0.05", "--lds-fraction", "0.25", "--lds-subsets", "5", "--methods", "Hara"),
            tiny_load, net=net, progress=False)
    r = split.split(tiny_data(seed=0), net, out, 0, 0.25, 4, 8)
    cached = lds.read_truths(lds.truths_path(lds.cache_dir(out, lds.Training(0)), 0.25))
    assert np.array_equal(r["truth"], [cached[(s, 0)] for s in range(4)])
    assert np.array_equal(r["g"], lds.predictions(np.load(layout.estimate_path(
        lds.cache_dir(out, lds.Training(0)), "Hara")), [lds.subset(32, 0.25, s, 0) for s in range(4)]))
    if net is TINY:
        assert np.array_equal(r["running"], np.zeros(4)) and np.array_equal(r["params"], r["truth"])
    else:
        assert np.abs(r["running"]).max() > 0 and np.abs(r["params"]).max() > 0
        np.testing.assert_allclose(r["params"] + r["running"], r["truth"], atol=0.2 * np.abs(r["truth"]).max())
    st = split.stats(r)
    assert st["lds_truth"] == pytest.approx(spearman(r["g"], r["truth"]))
    assert split.main([str(tmp_path / "none")]) == 2


def test_bound_of_a_perfect_estimator_is_its_lds_against_the_mean_of_two_replays(monkeypatch):
    """lds_block's max_lds_all_replays, sqrt(2c / (1 + c)) from the two replays' agreement c, against an
    oracle: truths = a noise-free change + independent replay noise, the estimator = the noise-free change.
    Its LDS (against the two replays' mean) meets the bound, above the ceiling c, on many subsets; at a
    low ceiling the gap is wide (what makes "LDS / ceiling" read above 1 at 1% removed)."""
    monkeypatch.setattr(lds, "bootstrap_ci", lambda *a, **k: [None, None])  # the intervals are not under test
    rng = np.random.default_rng(3)
    m = 20000
    clean = rng.normal(size=m)
    for noise_sd in (0.5, 1.0, 2.5):
        truths = clean[:, None] + noise_sd * rng.normal(size=(m, 2))
        block = lds.lds_block(truths, {"perfect": clean}, 0.01, 2000, 0)
        c, perfect = block["noise_ceiling"], block["methods"]["perfect"]["lds"]
        assert perfect == pytest.approx(block["max_lds_all_replays"], abs=0.02)
        assert perfect > c + 0.02
    assert c < 0.2 and perfect > 2 * c  # noise_sd 2.5: ceiling ~0.13, a perfect estimator's LDS ~0.49
