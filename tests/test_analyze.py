"""Analysis from synthetic score, influence and cache-size files with known values."""
import csv
import json
import math
import os

import numpy as np
import pytest

from datasets import load_dataset
from sgd_influence.analysis import analyze as A
from sgd_influence.analysis import grids
from sgd_influence.base import layout
from sgd_influence.base.metrics import kendall_tau_b, spearman

N_TRAIN, BS, EPOCHS = 40, 16, 2
# Final test accuracy per (method, n removed): one value per seed 0, 1, 2.
ACC = {("Hara", 0): (0.80, 0.81, 0.79), ("Hara", 10): (0.80, 0.82, 0.87), ("Hara", 30): (0.90, 0.90, 0.90),
       ("Ours", 0): (0.80, 0.81, 0.79), ("Ours", 10): (0.81, 0.83, 0.85), ("Ours", 30): (0.70, 0.90, 0.80),
       ("Random", 0): (0.80, 0.81, 0.79), ("Random", 10): (0.78, 0.80, 0.79), ("Random", 30): (0.75, 0.77, 0.76)}


def settings(idx_dir, **kw):
    s = {"dataset": "fashion_mnist", "data_dir": idx_dir, "n_train": N_TRAIN, "n_val": 8, "n_test": 8,
         "n_epochs": EPOCHS, "batch_size": BS, "lr": 0.02, "retrain_all": False, "no_augment": True,
         "remove_n_list": [0, 10, 30], "n_trials": 3}
    s.update(kw)
    return s


def influence_values(method):
    """Hara: instance i scores i (instance 0 most negative). Ours: Hara with instances 0 and 39 swapped.
    Influence_functions: -Hara. Random: a fixed permutation."""
    a = np.arange(N_TRAIN, dtype=np.float64) - 20
    if method == "Ours":
        a[[0, N_TRAIN - 1]] = a[[N_TRAIN - 1, 0]]
    if method == "Influence_functions":
        a = -a
    if method == "Random":
        a = np.random.default_rng(0).permutation(N_TRAIN) / N_TRAIN
    if method == "Loss":  # a method added later: found by its folder name
        a = a % 7
    return a


def write_folder(out, idx_dir, methods=("Hara", "Ours", "Random"), seeds=(0, 1, 2), acc_shift=0.0, **kw):
    s = settings(idx_dir, **kw)
    layout.write_json(os.path.join(out, "run.json"), {"settings": s})
    for seed in seeds:
        train = load_dataset("fashion_mnist", seed, idx_dir, N_TRAIN, 8, 8).train
        for m in methods:
            path = os.path.join(out, "influence", m, f"influence_{m.lower()}_{seed}.csv")
            layout.write_influence_csv(path, train.ids, train.y, influence_values(m))
            for (mm, n), accs in ACC.items():
                if mm == (m if m in ("Hara", "Ours", "Random") else "Hara"):
                    layout.write_score_csv(layout.score_path(out, m, n, seed),
                                       [(1.0, 1.0, 0.5, 0.1), (0.5, 0.5, 0.7, accs[seed] + acc_shift)])
        steps = math.ceil(N_TRAIN / s["batch_size"])
        layout.write_json(os.path.join(layout.train_dir(out, seed), "cache_size.json"),
                      {"param_count": 307818, "param_bytes_float32": 1231272, "ours_bytes": 1266184,
                       "hara_bytes": 1231272 * steps, "hara_steps": steps})
    return out


def read_csv(path):
    with open(path) as f:
        header = f.readline().strip().split(",")
        return [dict(zip(header, line.rstrip("\n").split(","))) for line in f if line.strip()]


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 2000


# ------------------------------------------------------------------- rank metrics
def brute_tau_b(a, b):
    n = len(a)
    s = n1 = n2 = 0
    for i in range(n):
        for j in range(i + 1, n):
            da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            s, n1, n2 = s + da * db, n1 + (da == 0), n2 + (db == 0)
    n0 = n * (n - 1) // 2
    return s / math.sqrt((n0 - n1) * (n0 - n2))


def test_kendall_tau_b_hand_values():
    # 7 concordant, 3 discordant pairs of 10: (7 - 3) / 10.
    assert kendall_tau_b([1, 2, 3, 4, 5], [3, 1, 2, 5, 4]) == pytest.approx(0.4, abs=1e-15)
    # Ties: pair (1,2) tied in x, pair (2,3) tied in y, the other 4 concordant: 4 / sqrt(5 * 5).
    assert kendall_tau_b([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(0.8, abs=1e-15)
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == -1.0
    assert math.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3]))
    # Spearman: rank differences (-2, 1, 1, -1, 1), 1 - 6 * 8 / (5 * 24).
    assert spearman(np.array([1, 2, 3, 4, 5]), np.array([3, 1, 2, 5, 4])) == pytest.approx(0.6, abs=1e-15)


def test_kendall_tau_b_matches_pairwise_count():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 33, 150):
        a = rng.integers(0, 5, n).astype(float)  # many ties
        b = rng.integers(0, 4, n) + 0.5 * a
        if len(set(a)) > 1 and len(set(b)) > 1:
            assert kendall_tau_b(a, b) == pytest.approx(brute_tau_b(a, b), abs=1e-12)
        a, b = rng.normal(size=n), rng.normal(size=n)
        assert kendall_tau_b(a, b) == pytest.approx(brute_tau_b(a, b), abs=1e-12)


# ------------------------------------------------------------ one folder, all files
@pytest.fixture(scope="module")
def single(idx_dir, tmp_path_factory):
    out = write_folder(str(tmp_path_factory.mktemp("single") / "out"), idx_dir,
                       methods=("Hara", "Ours", "Influence_functions", "Random"))
    A.analyze(out)
    return out


def test_summary_means_and_sample_std(single):
    rows = read_csv(os.path.join(single, "summary", "summary.csv"))
    assert [r["method"] for r in rows[::3]] == ["Hara", "Ours", "Influence_functions", "Random"]
    got = {(r["method"], int(r["n_removed"])): r for r in rows}
    for (m, n), accs in ACC.items():
        r = got[(m, n)]
        assert r["batch_size"] == str(BS) and r["n_trials"] == "3"
        assert float(r["test_accuracy_mean"]) == pytest.approx(sum(accs) / 3, abs=1e-6)
    # (0.80, 0.82, 0.87): mean 0.83, deviations -0.03, -0.01, 0.04 -> sqrt(0.0026 / 2)
    assert float(got[("Hara", 10)]["test_accuracy_std"]) == pytest.approx(math.sqrt(0.0013), abs=1e-6)
    assert float(got[("Ours", 30)]["test_accuracy_std"]) == pytest.approx(0.1, abs=1e-6)
    assert float(got[("Hara", 30)]["test_accuracy_std"]) == 0.0
    assert A.no_removal(A.collect(single)) == pytest.approx((0.80, 0.01, 3))


def test_agreement_metrics(single):
    rows = read_csv(os.path.join(single, "summary", "agreement.csv"))
    pairs = {(r["method_a"], r["method_b"]) for r in rows}
    assert pairs == {("Hara", "Ours"), ("Hara", "Influence_functions"), ("Ours", "Influence_functions")}
    assert {int(r["seed"]) for r in rows} == {0, 1, 2} and {r["n_removed"] for r in rows} == {"10", "30"}
    ho = {int(r["n_removed"]): r for r in rows if (r["method_a"], r["method_b"]) == ("Hara", "Ours")
          and r["seed"] == "0"}
    # Ours = Hara with the extreme instances 0 and 39 swapped. Spearman: rank differences +-39,
    # 1 - 6 * 2 * 39^2 / (40 * (40^2 - 1)). Kendall: 38 + 38 + 1 discordant of 780 pairs.
    assert float(ho[10]["spearman"]) == pytest.approx(1 - 6 * 2 * 39 ** 2 / (40 * 1599), abs=1e-6)
    assert float(ho[10]["kendall_tau_b"]) == pytest.approx((780 - 2 * 77) / 780, abs=1e-6)
    # The 10 most negative: Hara {0..9}, Ours {39, 1..9}: 9 shared; of 30: 29.
    assert (ho[10]["overlap"], ho[30]["overlap"]) == ("9", "29")
    assert float(ho[10]["overlap_fraction"]) == pytest.approx(0.9) and float(ho[30]["chance_overlap"]) == 22.5
    hi = [r for r in rows if (r["method_a"], r["method_b"]) == ("Hara", "Influence_functions")]
    assert all(float(r["spearman"]) == -1 and float(r["kendall_tau_b"]) == -1 for r in hi)
    assert {r["overlap"] for r in hi if r["n_removed"] == "10"} == {"0"}
    assert {r["overlap"] for r in hi if r["n_removed"] == "30"} == {"20"}  # {0..29} & {10..39}


def test_table1_projection_exact(single):
    rows = read_csv(os.path.join(single, "summary", "table1_cache.csv"))
    got = {(r["scope"], r["dataset"], r["cache"]): r for r in rows}
    # This run: 40 images at batch 16 -> T = 3; K = 2 epochs.
    run = {c: got[("this run", "fashion_mnist", c)] for c in ("all", "hara", "ours")}
    assert run["ours"]["float32_bytes"] == "1231272" and run["ours"]["saved_bytes"] == "1266184"
    assert run["hara"]["float32_bytes"] == str(1231272 * 3) == run["hara"]["saved_bytes"]
    assert run["all"]["float32_bytes"] == str(1231272 * 3 * 2) and run["all"]["steps_per_epoch"] == "3"
    # Paper scale from the network itself: 307,818 parameters on one channel, 308,394 on three.
    # MNIST: T = ceil(50000 / 32) = 1563; CIFAR-10: T = 40000 / 32 = 1250; K = 20.
    expect = {("mnist", "ours"): 307818 * 4, ("mnist", "hara"): 1924478136, ("mnist", "all"): 38489562720,
              ("cifar10", "ours"): 308394 * 4, ("cifar10", "hara"): 1541970000, ("cifar10", "all"): 30839400000}
    paper = {("mnist", "ours"): 1.236e6, ("mnist", "hara"): 1.932e9, ("mnist", "all"): 38.64e9,
             ("cifar10", "ours"): 1.236e6, ("cifar10", "hara"): 1.545e9, ("cifar10", "all"): 30.90e9}
    for (ds, c), v in expect.items():
        r = got[("paper scale", ds, c)]
        assert int(r["float32_bytes"]) == v, (ds, c)
        assert abs(v / paper[(ds, c)] - 1) < 0.01 and float(r["float32_vs_paper"]) == pytest.approx(
            v / paper[(ds, c)] - 1, abs=1e-6)
    assert int(got[("paper scale", "mnist", "ours")]["saved_bytes"]) > 307818 * 4  # the .h5 file
    # Replay_all: theta[0] + theta[T] + the record of all K epochs: each step's indices and augmentation
    # seeds as int64 (50,000 x 20 x 2 x 8 bytes = 16 MB) and a few numbers per step.
    full = got[("paper scale", "mnist", "replay_all")]
    assert 16e6 <= int(full["record_bytes"]) <= 16e6 + 1563 * 20 * 64
    assert int(full["float32_bytes"]) == 2 * 307818 * 4 + int(full["record_bytes"])
    # this folder's cache_size.json predates the Replays: no measured rows for them
    assert not {("this run", "fashion_mnist", c) for c in ("replay", "replay_all")} & set(got)
    md = open(os.path.join(single, "summary", "table1_cache.md")).read()
    assert "Replay_all (θ[0] + θ[T]" in md
    assert "38.49 GB" in md and "38.64 GB" in md and "1.542 GB" in md and "1.545 GB" in md


def test_every_figure_written(single):
    fig = os.path.join(single, "fig")
    expected = ["result.png", "result_errorbars.png"]
    for seed in (0, 1, 2):
        expected.append(f"agreement_seed{seed}.png")
        for m in ("Hara", "Ours", "Influence_functions"):
            expected += [f"harmful_{m}_seed{seed}.png", f"helpful_{m}_seed{seed}.png"]
    assert sorted(os.listdir(fig)) == sorted(expected)  # no Random grids, no batch_size.png
    assert all(is_png(os.path.join(fig, f)) for f in expected)


def test_grids_show_the_run_images_in_removal_order(single, idx_dir, monkeypatch):
    shown = []
    monkeypatch.setattr(grids, "plot_grid", lambda images, labels, values, path, title, names: shown.append(
        (os.path.basename(path), images, labels, values, names)))
    grids.write_grids({"Hara": {1: layout.influence_path(single, "Hara", 1)}}, {"Hara": layout.read_folder(single)}, "unused")
    train = load_dataset("fashion_mnist", 1, idx_dir, N_TRAIN, 8, 8).train
    (name_h, img_h, y_h, v_h, names), (name_p, img_p, y_p, v_p, _) = shown
    assert names[0] == "T-shirt" and names[9] == "Boot"  # Fashion-MNIST's classes by label
    assert name_h == "harmful_Hara_seed1.png" and name_p == "helpful_Hara_seed1.png"
    # Hara scores instance i as i - 20: the 32 most negative are 0..31, the most positive 39 down to 8.
    np.testing.assert_array_equal(img_h, train.x[:32])
    np.testing.assert_array_equal(v_h, np.arange(32) - 20.0)
    np.testing.assert_array_equal(img_p, train.x[39:7:-1])
    np.testing.assert_array_equal(y_p, train.y[39:7:-1])


def test_grids_refuse_files_of_other_data(single, tmp_path, capsys):
    path = str(tmp_path / "influence_hara_0.csv")
    ids = np.array([f"other/train/{i:05d}" for i in range(N_TRAIN)])
    layout.write_influence_csv(path, ids, np.zeros(N_TRAIN, np.int64), influence_values("Hara"))
    assert grids.write_grids({"Hara": {0: path}}, {"Hara": layout.read_folder(single)}, str(tmp_path / "fig")) == []
    assert "does not match the data" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "fig")


# ------------------------------------------------------------------------ merging
def test_merge_sgd_and_influence_function_folders(idx_dir, tmp_path, capsys):
    sgd = write_folder(str(tmp_path / "sgd"), idx_dir)
    inf = write_folder(str(tmp_path / "if"), idx_dir, methods=("Loss", "Influence_functions", "Random"))
    merged = str(tmp_path / "merged")
    assert A.main([sgd, inf, "--out", merged, "--no-images"]) == 0
    assert "warning" not in capsys.readouterr().err  # Random is in both, identical
    rows = read_csv(os.path.join(merged, "summary", "summary.csv"))
    assert list(dict.fromkeys(r["method"] for r in rows)) == ["Hara", "Ours", "Influence_functions", "Random", "Loss"]
    agree = read_csv(os.path.join(merged, "summary", "agreement.csv"))
    assert list(dict.fromkeys((r["method_a"], r["method_b"]) for r in agree)) == [
        ("Hara", "Ours"), ("Hara", "Influence_functions"), ("Hara", "Loss"), ("Ours", "Influence_functions"),
        ("Ours", "Loss"), ("Influence_functions", "Loss")]
    hl = next(r for r in agree if (r["method_a"], r["method_b"]) == ("Hara", "Loss"))
    h, l = influence_values("Hara"), influence_values("Loss")  # Loss has ties
    assert float(hl["kendall_tau_b"]) == pytest.approx(brute_tau_b(h, l), abs=1e-6)
    assert not os.path.exists(os.path.join(sgd, "summary")) and not os.path.exists(os.path.join(inf, "fig"))
    assert json.load(open(os.path.join(merged, "summary", "inputs.json")))["folders"] == [  # relative to --out
        os.path.relpath(sgd, merged), os.path.relpath(inf, merged)]


def test_merge_refuses_different_settings(idx_dir, tmp_path, capsys):
    a = write_folder(str(tmp_path / "a"), idx_dir, seeds=(0,))
    b = write_folder(str(tmp_path / "b"), idx_dir, seeds=(0,), lr=0.05)
    assert A.main([a, b]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: cannot merge {a} and {b}: their run.json settings differ (lr 0.02 vs 0.05); "
                   f"only the batch size may differ"]
    assert not os.path.exists(os.path.join(a, "summary")) and not os.path.exists(os.path.join(a, "fig"))


def test_merge_counts_options_a_folder_predates_at_their_values_then(idx_dir, tmp_path, capsys):
    """A folder whose run.json predates --momentum (and --net) trained with plain SGD (and the six-conv
    network): merging it with a momentum run is refused, naming the option; with an explicit plain-SGD
    recipe and the cnn it merges."""
    old = write_folder(str(tmp_path / "old"), idx_dir, seeds=(0,))  # no momentum, optimizer, net keys
    mom = write_folder(str(tmp_path / "mom"), idx_dir, seeds=(0,), momentum=0.9, optimizer="sgd", net="cnn")
    assert A.main([old, mom, "--no-images"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: cannot merge {old} and {mom}: their run.json settings differ (momentum 0.0 vs 0.9); "
                   f"only the batch size may differ"]
    plain = write_folder(str(tmp_path / "plain"), idx_dir, seeds=(0,), momentum=0.0, optimizer="sgd", net="cnn")
    assert A.main([old, plain, "--no-images", "--out", str(tmp_path / "merged")]) == 0


def test_merge_batch_sizes_gives_fig5(idx_dir, tmp_path):
    a = write_folder(str(tmp_path / "bs16"), idx_dir, seeds=(0, 1))
    b = write_folder(str(tmp_path / "bs8"), idx_dir, seeds=(0, 1), batch_size=8, acc_shift=0.05)
    assert A.main([a, b, "--no-images"]) == 0
    rows = read_csv(os.path.join(a, "summary", "summary.csv"))
    assert [r["batch_size"] for r in rows] == ["16"] * 9 + ["8"] * 9  # the first folder's batch size first
    r8 = next(r for r in rows if (r["batch_size"], r["method"], r["n_removed"]) == ("8", "Hara", "10"))
    assert float(r8["test_accuracy_mean"]) == pytest.approx(0.81 + 0.05, abs=1e-6)
    assert is_png(os.path.join(a, "fig", "batch_size.png"))
    table = read_csv(os.path.join(a, "summary", "table1_cache.csv"))
    assert {(r["batch_size"], r["steps_per_epoch"]) for r in table if r["scope"] == "this run"} == {("16", "3"),
                                                                                                  ("8", "5")}


def test_conflicting_duplicates_are_named(idx_dir, tmp_path, capsys):
    a = write_folder(str(tmp_path / "a"), idx_dir, seeds=(0,))
    b = write_folder(str(tmp_path / "b"), idx_dir, seeds=(0,), acc_shift=0.01)
    assert A.main([a, b, "--no-images"]) == 0
    assert "Hara: 3 score(s) in " + b in capsys.readouterr().err
    got = {(r["method"], r["n_removed"]): r for r in read_csv(os.path.join(a, "summary", "summary.csv"))}
    assert float(got[("Hara", "10")]["test_accuracy_mean"]) == pytest.approx(0.80, abs=1e-6)  # the first folder's


def test_empty_folder_is_one_line_error(tmp_path, capsys):
    assert A.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no score or influence files")
    assert A.main([str(tmp_path / "missing")]) == 2


def test_paired_differences_against_hand_computed_interval():
    from sgd_influence.analysis.analyze import paired_differences
    scores = {"Hara": {0: {0: .8, 1: .8, 2: .8}, 10: {0: .83, 1: .84, 2: .85}, 30: {0: .80, 1: .82}},
              "Random": {0: {0: .8, 1: .8, 2: .8}, 10: {0: .80, 1: .80, 2: .80}, 30: {0: .81, 1: .80}}}
    rows = {r["n_removed"]: r for r in paired_differences(scores)}
    assert set(rows) == {10, 30}  # n = 0 is the shared baseline
    r = rows[10]  # differences .03 .04 .05: mean .04, sd .01, half-width t(2) .01 / sqrt 3
    assert r["n_trials"] == 3 and r["difference_mean"] == pytest.approx(0.04)
    assert r["difference_std"] == pytest.approx(0.01)
    assert r["ci95_low"] == pytest.approx(0.04 - 4.303 * 0.01 / np.sqrt(3))
    assert r["distinguishable"] is True
    r = rows[30]  # differences -.01 and .02: t(1) = 12.706 makes the interval cover 0
    assert r["difference_mean"] == pytest.approx(0.005) and r["distinguishable"] is False
    one = paired_differences({"Ours": {10: {0: .9}}, "Random": {10: {0: .8}}})
    assert one[0]["ci95_low"] is None and one[0]["distinguishable"] is None
    assert rows[10]["verdict"] == "up" and rows[30]["verdict"] == "undecided"
    # Two trials with the same difference: an interval of width 0 that excludes 0, yet no verdict (fewer than 3)
    two = paired_differences({"Ours": {10: {0: .81, 1: .79}}, "Random": {10: {0: .80, 1: .78}}})[0]
    assert two["distinguishable"] is True and two["ci95_half_width"] == pytest.approx(0.0)
    assert two["verdict"] == "undecided" and two["trials_needed"] == A.MIN_VERDICT_TRIALS == 3


def test_trials_needed_is_the_fewest_with_the_half_width():
    """t_{.975, N-1} sd / sqrt(N) <= target at N = trials_needed, not at N - 1 (hand-checked values)."""
    from sgd_influence.base.metrics import t975
    assert A.trials_needed(0.0, 0.005) == 2
    # sd 0.009: N = 15 gives 2.145 * .009 / sqrt 15 = 0.00498; N = 14 gives 2.160 * .009 / sqrt 14 = 0.00520
    assert A.trials_needed(0.009, 0.005) == 15
    for sd in (0.004, 0.009, 0.017, 0.03):
        n = A.trials_needed(sd, 0.005)
        assert t975(n - 1) * sd / np.sqrt(n) <= 0.005 < (t975(n - 2) * sd / np.sqrt(n - 1) if n > 2 else 1)
    d = [0.02, 0.01, 0.0, 0.03]  # the paired table carries it at the observed sd
    row = A.paired_differences({"Hara": {8: dict(enumerate(d))}, "Random": {8: dict.fromkeys(range(4), 0.0)}},
                               primary=8)[0]
    assert row["trials_needed"] == A.trials_needed(np.std(d, ddof=1), 0.005) and row["primary"] is True
    assert row["ci95_half_width"] == pytest.approx((row["ci95_high"] - row["ci95_low"]) / 2)


def test_t_test_p_values_against_the_t_table_and_closed_forms():
    """The two-sided p at each tabulated 97.5% quantile is 0.05 (the table is an independent source; it
    has 3 decimals, hence 2e-4); df 1 is the Cauchy (p(1) = 1/2, p(t) = 1 - 2 atan(t) / pi) and df 2 has
    p(t) = 1 - t / sqrt(2 + t^2); the paired test is that p at t = mean / (sd / sqrt n)."""
    from sgd_influence.base.metrics import T975, paired_t_p, t_two_sided_p
    for df, q in enumerate(T975, start=1):
        assert t_two_sided_p(q, df) == pytest.approx(0.05, abs=2e-4), df
    for t in (0.0, 0.4, 1.0, 3.0, 50.0):
        assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 * np.arctan(t) / np.pi, abs=1e-14)
        assert t_two_sided_p(-t, 2) == pytest.approx(1 - t / np.sqrt(2 + t * t), abs=1e-14)
    assert t_two_sided_p(1.0, 1) == pytest.approx(0.5, abs=1e-15)
    assert t_two_sided_p(1e3, 200) < 1e-12 and t_two_sided_p(float("inf"), 5) == 0.0
    d = [0.03, 0.04, 0.05]  # t = 0.04 / (0.01 / sqrt 3) on 2 df
    assert paired_t_p(d) == pytest.approx(1 - 4 * np.sqrt(3) / np.sqrt(2 + 48), rel=1e-12)
    assert paired_t_p([0.1]) is None and paired_t_p([0.0, 0.0]) == 1.0 and paired_t_p([0.2, 0.2]) == 0.0


def test_holm_adjustment_by_hand():
    """p = .005 .01 .03 .04 of m = 4: 4 x .005 = .02, 3 x .01 = .03, 2 x .03 = .06, 1 x .04 -> .06 (monotone);
    None stays None and is not counted."""
    from sgd_influence.base.metrics import holm
    assert holm([0.01, 0.04, 0.03, 0.005, None]) == pytest.approx([0.03, 0.06, 0.06, 0.02, None])
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == []


def test_paired_table_holm_over_the_secondary_comparisons():
    """The primary keeps its own p; each secondary row of a metric gets Holm's p over that metric's secondary
    rows; a secondary interval that excludes 0 while its Holm p does not fall below 0.05 is marked so."""
    from sgd_influence.base.metrics import holm, paired_t_p
    base = {n: dict.fromkeys(range(3), 0.8) for n in (10, 30, 100)}
    hara = {10: {0: .83, 1: .84, 2: .85}, 30: {0: .81, 1: .80, 2: .82}, 100: {0: .86, 1: .85, 2: .84}}
    rows = A.paired_differences({"Hara": hara, "Random": base}, primary=100)
    by_n = {r["n_removed"]: r for r in rows}
    d = {n: [hara[n][s] - 0.8 for s in range(3)] for n in hara}
    assert by_n[100]["p_value"] == pytest.approx(paired_t_p(d[100])) and by_n[100]["p_holm"] == by_n[100]["p_value"]
    expect = holm([paired_t_p(d[10]), paired_t_p(d[30])])
    assert [by_n[10]["p_holm"], by_n[30]["p_holm"]] == pytest.approx(expect)
    lines = A.verdict_lines(rows, 100)
    assert f"p = {by_n[100]['p_value']:.2g}" in lines[1] and "Holm's adjusted p over the 2" in lines[2]
    ten = next(x for x in lines if "n = 10:" in x)
    assert by_n[10]["verdict"] == "up" and by_n[10]["p_holm"] < 0.05 and "not after Holm" not in ten
    # the same differences among more secondary comparisons: a decided interval that Holm does not keep
    many = {"Hara": dict(hara), "Random": dict(base)}
    for k in range(8):
        many["Hara"][200 + k], many["Random"][200 + k] = {0: .8, 1: .81, 2: .79}, dict.fromkeys(range(3), 0.8)
    rows = A.paired_differences(many, primary=100)
    ten = next(r for r in rows if r["n_removed"] == 10)
    assert ten["verdict"] == "up" and ten["p_holm"] >= 0.05
    assert "decided up (not after Holm)" in next(x for x in A.verdict_lines(rows, 100) if "n = 10:" in x)


def write_orders_folder(out, idx_dir):
    """Hara and Random (three orders) over 4 trials at n = 2 (the primary: 5% of 40) and 10; known accuracies
    and losses. Random's orders: order r of trial s scores 0.70 + 0.01 * s + 0.02 * r (loss: 1 - that)."""
    layout.write_json(os.path.join(out, "run.json"), {"settings": settings(idx_dir, remove_n_list=[0, 2, 10])})
    row = lambda acc: [(0.5, 1.0 - acc, 0.5, acc)]  # noqa: E731 val_loss, test_loss, val_accuracy, test_accuracy
    for s in range(4):
        for n in (2, 10):
            layout.write_score_csv(layout.score_path(out, "Hara", n, s), row(0.75 + 0.01 * s + (0.005 if s % 2 else 0)))
            for r in range(3):
                layout.write_score_csv(layout.score_path(out, "Random", n, s, r), row(0.70 + 0.01 * s + 0.02 * r))
        for m in ("Hara", "Random"):
            layout.write_score_csv(layout.score_path(out, m, 0, s), row(0.72))


def test_random_orders_averaged_loss_paired_and_verdict(idx_dir, tmp_path, capsys):
    out = str(tmp_path / "o")
    write_orders_folder(out, idx_dir)
    A.analyze(out, images=False)
    summary = {(r["method"], r["n_removed"]): r for r in read_csv(os.path.join(out, "summary", "summary.csv"))}
    # Random's trial value is the mean of its three orders: 0.72 + 0.01 s; over s = 0..3: 0.735
    assert float(summary[("Random", "2")]["test_accuracy_mean"]) == pytest.approx(0.735, abs=1e-6)
    assert float(summary[("Random", "2")]["test_loss_mean"]) == pytest.approx(0.265, abs=1e-6)
    paired = [r for r in read_csv(os.path.join(out, "summary", "paired_vs_random.csv"))]
    acc = {r["n_removed"]: r for r in paired if r["metric"] == "test_accuracy" and r["method"] == "Hara"}
    loss = {r["n_removed"]: r for r in paired if r["metric"] == "test_loss" and r["method"] == "Hara"}
    d = [0.03, 0.035, 0.03, 0.035]  # Hara - mean of Random's orders, trial by trial
    assert float(acc["2"]["difference_mean"]) == pytest.approx(np.mean(d), abs=1e-6)
    assert float(loss["2"]["difference_mean"]) == pytest.approx(-np.mean(d), abs=1e-6)  # loss = 1 - accuracy
    assert acc["2"]["primary"] == "True" and acc["10"]["primary"] == "False" and acc["2"]["verdict"] == "up"
    assert float(acc["2"]["control_orders"]) == 3 and loss["2"]["trials_needed"] == ""
    # the spread against one order (Random's order 0 alone) vs against the mean of three
    spread = {(r["method"], r["n_removed"]): r for r in read_csv(os.path.join(out, "summary", "control_orders.csv"))}
    one = [0.05, 0.055, 0.05, 0.055]  # Hara - order 0: the same spread here, the orders shift by a constant
    assert float(spread[("Hara", "2")]["sd_one_order"]) == pytest.approx(np.std(one, ddof=1), abs=1e-6)
    assert float(spread[("Hara", "2")]["sd_mean_of_orders"]) == pytest.approx(np.std(d, ddof=1), abs=1e-6)
    with open(os.path.join(out, "summary", "verdict.md")) as f:
        md = f.read()
    assert "| 2 (primary) | Hara | 4 | 0.7675 ± 0.0144 | 0.2325 ± 0.0144 | +0.0325 [" in md  # by hand
    assert "decided up" in md
    printed = capsys.readouterr().out
    assert "primary: n = 2 = 5% of the training set" in printed
    assert "Hara - Random, n = 2 (primary): decided up: +0.0325" in printed
    assert "secondary (1 intervals; at 95% about 0.1 of them exclude 0 by chance alone; Holm" in printed


def test_published_methods_against_their_corrected_twins(idx_dir, tmp_path):
    """summary/paired_published_vs_corrected.csv: Hara_published - Hara and Ours_published - Ours of the same
    trial and n (known accuracies), the twin in the control column; no row for a method without its twin."""
    out = str(tmp_path / "out")
    layout.write_json(os.path.join(out, "run.json"), {"settings": settings(idx_dir, remove_n_list=[0, 10])})
    row = lambda acc: [(0.5, 1.0 - acc, 0.5, acc)]  # noqa: E731 val_loss, test_loss, val_accuracy, test_accuracy
    acc = {"Hara": [0.80, 0.81, 0.82], "Hara_published": [0.79, 0.81, 0.80], "Ours_published": [0.7, 0.7, 0.7],
           "Random": [0.75, 0.75, 0.75]}
    for m, values in acc.items():
        for s, a in enumerate(values):
            layout.write_score_csv(layout.score_path(out, m, 10, s), row(a))
            layout.write_score_csv(layout.score_path(out, m, 0, s), row(0.7))
    A.main([out])
    with open(os.path.join(out, "summary", "paired_published_vs_corrected.csv"), newline="") as f:
        rows = [r for r in csv.DictReader(f)]
    accuracy = [r for r in rows if r["metric"] == "test_accuracy"]
    assert [(r["method"], r["control"], r["n_removed"]) for r in accuracy] == [("Hara_published", "Hara", "10")]
    d = np.array(acc["Hara_published"]) - np.array(acc["Hara"])
    assert float(accuracy[0]["difference_mean"]) == pytest.approx(d.mean(), abs=1e-6)
    assert float(accuracy[0]["difference_std"]) == pytest.approx(d.std(ddof=1), abs=1e-6)
    loss = [r for r in rows if r["metric"] == "test_loss"]
    assert float(loss[0]["difference_mean"]) == pytest.approx(-d.mean(), abs=1e-6)
