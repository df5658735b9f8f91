"""Influence functions (Koh & Liang, ICML 2017) at the final parameters.

Sign convention (the same as the SGD-influence scores): influence[j] is the
predicted change of the validation loss if training instance j is removed;
negative = removing j helps; data cleansing removes the most negative first.

theta minimises the empirical risk R(theta) = 1/n sum_i l(z_i; theta).
Removing z_j is up-weighting it by eps = -1/n, which moves the minimiser by
d theta ~= (1/n) H^-1 g_j (H: Hessian of R, g_j = grad l(z_j; theta)), so

    influence[j] = <u, d theta> = <g_j, v> / n,   v = H^-1 u,

u = grad of the mean validation loss at theta. A network's H is singular or
indefinite, so v is the damped solution v = (H + alpha I)^-1 u, found as the
minimiser of

    f(v) = 1/2 v^T H v + 1/2 alpha |v|^2 - u^T v,   grad f = H v + alpha v - u,

by SGD with heavy-ball momentum over training mini-batches, H replaced by
the Hessian of a mini-batch's mean loss (an unbiased estimate of H). Each
step is one Hessian-vector product by double backward (`RetraceGraph`).

H, g_j and u are taken with batch norm in test mode (running statistics) and
without augmentation: the risk of the model as it is deployed, on the
training images as they are.

Divergence: for H >= 0 the solution obeys |v| <= |u| / alpha. A solve whose
|v| exceeds `DIVERGENCE_FACTOR` times that bound, or whose objective is not
finite, is following negative curvature (alpha below -lambda_min(H)) or too
large a step; it is stopped with an error rather than producing scores.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from datasets import Data
from models import cnn
from sgd_influence.base.errors import UserError
from sgd_influence.core.graphs import RetraceGraph, dot, on_device, to_device, to_host, trainable_params
from sgd_influence.base.progress import bar as step_bar
from sgd_influence.core.step_record import epoch_batches

DIVERGENCE_FACTOR = 100.0
FOLD = 64  # resident solve: steps of the tail average summed in float32 on the device between folds
TRACE_COLUMNS = ("epoch", "step", "objective", "v_norm", "curvature", "residual")
Vector = List[np.ndarray]  # one array per parameter, in trainable_params() order


class Hessian:
    """Products with the Hessian of a training batch's mean loss, batch norm in test mode."""

    def __init__(self, data: Data, net: Callable = cnn):
        self.data, self.net = data, net
        self.params = list(trainable_params().values())
        self._graphs = {}

    def _graph(self, batch_size: int) -> RetraceGraph:
        if batch_size not in self._graphs:
            self._graphs[batch_size] = RetraceGraph(batch_size, self.data.image_shape, self.data.n_classes,
                                                    self.params, self.net, test=True)
        return self._graphs[batch_size]

    def products(self, idx: np.ndarray, v: Vector) -> Tuple[Vector, np.ndarray]:
        """(H_B v, <g_i, v> for every i in the batch B = idx)."""
        x = self.data.normalize(self.data.train.x[idx])
        return self._graph(len(idx)).run(x, self.data.train.y[idx], v)


class SolverDiverged(UserError):
    pass


def objective_gradient(hessian: Hessian, idx: np.ndarray, v: Vector, u: Vector,
                       alpha: float) -> Tuple[Vector, float, float, float]:
    """On the batch B = idx: grad f(v) = H_B v + alpha v - u, f(v), |v|^2 and v^T H_B v."""
    hv, _ = hessian.products(idx, v)
    vv, vhv = dot(v, v), dot(v, hv)
    grad = [h + alpha * a - b for h, a, b in zip(hv, v, u)]
    return grad, 0.5 * vhv + 0.5 * alpha * vv - dot(u, v), vv, vhv


def heavy_ball_update(v: Vector, m: Vector, grad: Vector, lr: float, momentum: float) -> None:
    """In place: m <- momentum * m + grad; v <- v - lr * m."""
    for a in range(len(v)):
        m[a] = momentum * m[a] + grad[a]
        v[a] = v[a] - lr * m[a]


def solve(hessian: Hessian, u: Vector, *, alpha: float, lr: float, momentum: float, epochs: int,
          batch_size: int, seed: int, average: bool = True, progress: bool = True,
          resident: bool = False) -> Tuple[Vector, np.ndarray]:
    """v ~= (H + alpha I)^-1 u by heavy-ball SGD on f(v), and the trace of the solve.

    Update: m <- momentum * m + grad f(v); v <- v - lr * m. With `average` the
    result is the mean of the iterates over the second half of the steps
    (Polyak-Ruppert tail averaging: with a constant step, mini-batch noise keeps
    the last iterate wandering around the solution; the average converges to
    it on a quadratic), else the last iterate (the published code). The trace has one
    row per step, all at the v the step starts from and on the step's batch B:
    epoch, step, f(v), |v|, the curvature v^T H_B v / |v|^2 (negative: H is
    indefinite along v) and the relative residual |H_B v + alpha v - u| / |u|.

    `resident`: v, m, the gradient and H_B v are device arrays (a GPU's): only the step's batch
    goes in and the trace's scalars come out; the tail average is summed on the device and
    folded into float64 here every FOLD steps. v comes back as numpy arrays either way.
    """
    n = len(hessian.data.train)
    v = [np.zeros_like(a) for a in u]
    m = [np.zeros_like(a) for a in u]
    if resident:
        u, v, m = to_device(u), to_device(v), to_device(m)
    u_norm = np.sqrt(dot(u, u))
    bound = DIVERGENCE_FACTOR * u_norm / alpha
    rng = np.random.default_rng([seed, 3])
    batches = [b for _ in range(epochs) for b in epoch_batches(rng, n, batch_size, augment=False)[0]]
    steps_per_epoch = len(batches) // epochs
    trace = np.zeros((len(batches), len(TRACE_COLUMNS)))
    tail = len(batches) // 2
    v_sum = [np.zeros(a.shape, np.float64) for a in u]
    partial = None  # resident: the tail's sum since the last fold, on the device
    bar = step_bar(batches, desc="inverse HVP", disable=not progress, unit="step")
    for k, idx in enumerate(bar):
        grad, objective, vv, vhv = objective_gradient(hessian, idx, v, u, alpha)
        trace[k] = (k // steps_per_epoch, k, objective, np.sqrt(vv), vhv / vv if vv > 0 else np.nan,
                    np.sqrt(dot(grad, grad)) / u_norm)
        if not np.isfinite(objective) or np.sqrt(vv) > bound:
            raise SolverDiverged(
                f"the influence-functions solve diverged at step {k + 1} of {len(batches)} "
                f"(objective {objective:.3g}, |v| {np.sqrt(vv):.3g} > {DIVERGENCE_FACTOR:g}|u|/alpha = {bound:.3g}): "
                f"raise --if-alpha (damping below the most negative curvature) or lower --if-lr")
        heavy_ball_update(v, m, grad, lr, momentum)
        if k >= tail and resident:
            partial = list(v) if partial is None else [p + a for p, a in zip(partial, v)]
            if (k - tail + 1) % FOLD == 0 or k == len(batches) - 1:
                for acc, a in zip(v_sum, to_host(partial)):
                    acc += a
                partial = None
        elif k >= tail:
            for acc, a in zip(v_sum, v):
                acc += a
        if k % 10 == 0:
            bar.set_postfix(objective=f"{objective:.4g}")
    if average:
        return [(acc / (len(batches) - tail)).astype(np.float32) for acc in v_sum], trace
    return to_host(v), trace


def sample_dots(hessian: Hessian, v: Vector, batch_size: int, progress: bool = True,
                resident: bool = False) -> Tuple[np.ndarray, Vector]:
    """<g_j, v> for every training instance j (shape (n_train,)), and H v over the whole
    training set, which the same passes give for free: H = sum_B |B|/n H_B. `resident`: v and
    the H v sum stay on the device (float32 there), the scores come back per batch."""
    n = len(hessian.data.train)
    out = np.zeros(n, np.float64)
    v = to_device(v) if resident else v
    hv_full = to_device([np.zeros(a.shape, np.float32) for a in v]) if resident else \
        [np.zeros(a.shape, np.float64) for a in v]
    for a in step_bar(range(0, n, batch_size), desc="scores", disable=not progress, unit="batch"):
        idx = np.arange(a, min(a + batch_size, n))
        hv, out[idx] = hessian.products(idx, v)
        if resident:
            hv_full = [acc + h * (len(idx) / n) for acc, h in zip(hv_full, hv)]
        else:
            for acc, h in zip(hv_full, hv):
                acc += h * (len(idx) / n)
    return out, [a.astype(np.float64) for a in to_host(hv_full)] if resident else hv_full


def full_data_check(u: Vector, v: Vector, hv: Vector, alpha: float) -> Dict[str, float]:
    """How well v solves (H + alpha I) v = u on the whole training set (not one batch)."""
    vv, vhv = dot(v, v), dot(v, hv)
    residual = [h + alpha * a - b for h, a, b in zip(hv, v, u)]
    return {"objective": 0.5 * vhv + 0.5 * alpha * vv - dot(u, v),
            "residual": np.sqrt(dot(residual, residual) / dot(u, u)),
            "curvature": vhv / vv if vv > 0 else float("nan"), "v_norm": np.sqrt(vv), "u_norm": np.sqrt(dot(u, u)),
            "bound_u_norm_over_alpha": np.sqrt(dot(u, u)) / alpha}


def influence_functions(data: Data, u: Vector, *, alpha: float, lr: float, momentum: float, epochs: int,
                        batch_size: int, seed: int, average: bool = True, progress: bool = True,
                        net: Callable = cnn, resident: Optional[bool] = None
                        ) -> Tuple[np.ndarray, np.ndarray, Dict[str, float]]:
    """Scores <g_j, v>/n of every training instance at the current (final) parameters, the
    solver trace, and `full_data_check` of the final v. `resident` (default: on a GPU context):
    the solve's and the scoring's vectors stay on the device."""
    resident = on_device() if resident is None else resident
    hessian = Hessian(data, net)
    v, trace = solve(hessian, u, alpha=alpha, lr=lr, momentum=momentum, epochs=epochs,
                     batch_size=batch_size, seed=seed, average=average, progress=progress, resident=resident)
    dots, hv = sample_dots(hessian, v, batch_size, progress, resident=resident)
    return dots / len(data.train), trace, full_data_check(u, v, hv, alpha)
