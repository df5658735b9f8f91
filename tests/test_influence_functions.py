"""Influence functions against closed forms (softmax regression) and actual retraining."""
import os
import subprocess
import sys

import numpy as np
import nnabla.parametric_functions as PF
import pytest

from conftest import tiny_data
from influence_functions.infl import Hessian, SolverDiverged, influence_functions, solve
from sgd_influence.core.eval import retrain
from sgd_influence.core.graphs import trainable_params
from sgd_influence.core.infl import load_final_model, val_gradient
from sgd_influence.core.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def softmax_regression(x, n_classes, test=False):
    """logits = x W + b: a convex loss whose Hessian has a closed form."""
    return PF.affine(x, n_classes, name="fc")


def closed_form(data, split):
    """Per-sample gradients (n, P) and the Hessian of the mean loss (P, P), float64,
    parameters ordered as nnabla's: W (D, C) row-major, then b (C,)."""
    W, b = [p.d.astype(np.float64) for p in trainable_params().values()]
    x = data.normalize(split.x).reshape(len(split), -1).astype(np.float64)
    logits = x @ W + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    r = p - np.eye(data.n_classes)[split.y]
    grads = np.concatenate([np.einsum("nd,nc->ndc", x, r).reshape(len(x), -1), r], axis=1)
    H = 0
    for xi, pi in zip(x, p):
        J = np.concatenate([np.kron(xi[:, None], np.eye(len(pi))), np.eye(len(pi))])  # d logits / d theta, (P, C)
        H = H + J @ (np.diag(pi) - np.outer(pi, pi)) @ J.T
    return grads, H / len(x)


def flat(v):
    return np.concatenate([a.ravel() for a in v]).astype(np.float64)


def unflat(x, like):
    out, a = [], 0
    for t in like:
        out.append(x[a:a + t.size].reshape(t.shape).astype(np.float32))
        a += t.size
    return out


@pytest.fixture
def fitted(tmp_path):
    """Softmax regression trained by the project's SGD on the tiny data."""
    data = tiny_data(n_train=32, n_val=24)
    train(data, str(tmp_path), seed=0, epochs=20, batch_size=8, lr=0.05, keep_step_params=False,
          progress=False, net=softmax_regression, augment=False)
    load_final_model(data, str(tmp_path), 20, 8, softmax_regression)
    return data, str(tmp_path)


def test_products_match_closed_form(fitted):
    data, _ = fitted
    hessian = Hessian(data, softmax_regression)
    grads, H = closed_form(data, data.train)
    params = list(trainable_params().values())
    v = unflat(np.random.default_rng(0).normal(size=H.shape[0]), [p.d for p in params])
    hv, dots = hessian.products(np.arange(len(data.train)), v)
    np.testing.assert_allclose(flat(hv), H @ flat(v), rtol=1e-4, atol=1e-5 * np.abs(H @ flat(v)).max())
    np.testing.assert_allclose(dots, grads @ flat(v), rtol=1e-4, atol=1e-6)
    u_closed = closed_form(data, data.val)[0].mean(0)
    np.testing.assert_allclose(flat(val_gradient(data, net=softmax_regression)), u_closed, rtol=1e-4, atol=1e-7)


def test_solver_and_scores_match_direct_solve(fitted):
    data, _ = fitted
    grads, H = closed_form(data, data.train)
    u = val_gradient(data, net=softmax_regression)
    alpha = 0.5
    lam = np.linalg.eigvalsh(H)
    lr = 1.0 / (lam[-1] + alpha)  # a stable step for the full-batch quadratic
    scores, trace, check = influence_functions(data, u, alpha=alpha, lr=lr, momentum=0.9, epochs=400,
                                        batch_size=len(data.train), seed=0, progress=False,
                                        net=softmax_regression)
    v_direct = np.linalg.solve(H + alpha * np.eye(len(H)), flat(u))
    v_solved, _ = solve(Hessian(data, softmax_regression), u, alpha=alpha, lr=lr, momentum=0.9, epochs=400,
                        batch_size=len(data.train), seed=0, progress=False)
    assert np.linalg.norm(flat(v_solved) - v_direct) < 1e-2 * np.linalg.norm(v_direct)
    closed_scores = grads @ v_direct / len(data.train)
    assert np.linalg.norm(scores - closed_scores) < 1e-2 * np.linalg.norm(closed_scores)
    # The trace: the objective falls to its minimum -1/2 u^T v*.
    assert trace.shape == (400, 6) and trace[-1, 5] < 1e-3
    np.testing.assert_allclose(trace[-1, 2], -0.5 * flat(u) @ v_direct, rtol=1e-3)
    # The whole-training-set check of the final v agrees with the closed form.
    v = flat(v_solved)
    np.testing.assert_allclose(check["curvature"], v @ H @ v / (v @ v), rtol=1e-4)
    assert check["residual"] < 1e-3


def test_tail_average_beats_last_iterate_with_minibatch_noise(fitted):
    """Constant-step SGD on mini-batch Hessians: the last iterate keeps wandering, the average converges."""
    data, _ = fitted
    _, H = closed_form(data, data.train)
    u = val_gradient(data, net=softmax_regression)
    alpha = 0.5
    v_direct = np.linalg.solve(H + alpha * np.eye(len(H)), flat(u))
    lr = 1.0 / (np.linalg.eigvalsh(H)[-1] + alpha)
    err = {}
    for average in (False, True):
        v, _ = solve(Hessian(data, softmax_regression), u, alpha=alpha, lr=lr, momentum=0.9, epochs=60,
                     batch_size=4, seed=0, average=average, progress=False)
        err[average] = np.linalg.norm(flat(v) - v_direct) / np.linalg.norm(v_direct)
    assert err[True] < 0.25 * err[False] and err[True] < 0.1, err


def test_divergence_is_detected(fitted):
    data, _ = fitted
    u = val_gradient(data, net=softmax_regression)
    with pytest.raises(SolverDiverged, match="diverged.*--if-alpha"):
        solve(Hessian(data, softmax_regression), u, alpha=0.1, lr=100.0, momentum=0.9, epochs=5,
              batch_size=8, seed=0, progress=False)


def test_most_negative_is_the_mislabelled_point_and_removing_it_helps(tmp_path):
    data = tiny_data(n_train=32, n_val=48)
    j = 5
    data.train.y[j] = (data.train.y[j] + 1) % data.n_classes  # deliberately mislabelled
    train(data, str(tmp_path), seed=0, epochs=20, batch_size=8, lr=0.05, keep_step_params=False,
          progress=False, net=softmax_regression, augment=False)
    load_final_model(data, str(tmp_path), 20, 8, softmax_regression)
    _, H = closed_form(data, data.train)
    alpha = 0.01
    u = val_gradient(data, net=softmax_regression)
    scores, _, _ = influence_functions(data, u, alpha=alpha, lr=1.0 / (np.linalg.eigvalsh(H)[-1] + alpha),
                                    momentum=0.9, epochs=300, batch_size=32, seed=0, progress=False,
                                    net=softmax_regression)
    assert scores.argmin() == j
    val_loss = {name: retrain(data, str(tmp_path), removed, True, 8, softmax_regression)[-1][0]
                for name, removed in (("none", []), ("worst", [j]), ("best", [int(scores.argmax())]))}
    assert val_loss["worst"] < val_loss["none"] < val_loss["best"]


def test_driver_end_to_end(idx_dir, tmp_path):
    out = str(tmp_path / "o")
    cmd = [sys.executable, os.path.join(ROOT, "eval_influence_functions.py"), "-ds", "fashion_mnist",
           "--data-dir", idx_dir, "-o", out, "--n-train", "48", "--n-val", "16", "--n-test", "16", "-e", "2",
           "-bs", "16", "-nt", "1", "-r", "0", "4", "--if-epochs", "1"]

    def run(*extra):
        return subprocess.run(cmd + list(extra), capture_output=True, text=True, cwd=str(tmp_path))

    # A diverging solve stops with one line, keeping the training and writing no influence file.
    r = run("--if-lr", "1e4")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "diverged" in r.stderr, r.stderr
    record = os.path.join(out, "train", "seed_0", "step_record.npz")
    stamp = os.path.getmtime(record)
    assert not os.path.exists(os.path.join(out, "influence", "Influence_functions"))

    # Other solver settings into that folder are accepted (no IF results yet); training is reused.
    r = run()
    assert r.returncode == 0, r.stderr
    assert os.path.getmtime(record) == stamp
    files = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)
    for f in ("influence/Influence_functions/influence_influence_functions_0.csv",
              "influence/Influence_functions/solver_trace_0.csv", "influence/Random/influence_random_0.csv",
              "score/Influence_functions/score_delete_worst_4_seed_0.csv",
              "score/Random/score_delete_worst_0_seed_0.csv", "fig/if_solver_seed0.png", "influence/Influence_functions/solver_0.json", "fig/result.png",
              "summary/summary.csv", "run.json"):
        assert f in files, f
    with open(os.path.join(out, "influence", "Influence_functions", "solver_trace_0.csv")) as f:
        assert f.readline().strip() == "epoch,step,objective,v_norm,curvature,residual" and len(f.readlines()) == 3

    # Once IF results exist, changing a solver setting is refused.
    r = run("--if-alpha", "3")
    assert r.returncode == 2 and "if_alpha 10.0 -> 3.0" in r.stderr, r.stderr


@pytest.mark.parametrize("average", [True, False])
def test_resident_solve_matches_the_host_solve(fitted, average):
    """influence_functions(resident=True) keeps v, m, the gradient and H v on the device (the GPU
    default), with the tail average folded into float64 every FOLD steps; on the CPU it gives the
    host path's scores and trace to float32 rounding, over more steps than one fold."""
    data, _ = fitted
    u = val_gradient(data, net=softmax_regression)
    kw = dict(alpha=0.5, lr=0.05, momentum=0.9, epochs=40, batch_size=8, seed=0, progress=False,
              net=softmax_regression, average=average)  # 160 steps: the tail spans two folds
    host, trace_host, check_host = influence_functions(data, u, resident=False, **kw)
    dev, trace_dev, check_dev = influence_functions(data, u, resident=True, **kw)
    assert np.linalg.norm(dev - host) <= 1e-5 * np.linalg.norm(host)
    np.testing.assert_allclose(trace_dev[1:], trace_host[1:], rtol=1e-4, atol=1e-9)
    assert abs(check_dev["residual"] - check_host["residual"]) <= 1e-4 * check_host["residual"]
