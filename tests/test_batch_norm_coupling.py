"""Batch norm with statistics weighted by the retrace's per-sample weights (sgd_influence/core/batch_norm.py).

w = 1/|S| must be batch norm as trained, w_j = 0 the batch without j, and dQ/dw_j (both
retraces) the derivative of that removal, coupling through the statistics included.
"""
import numpy as np
import nnabla as nn
import nnabla.functions as F
import pytest

from conftest import TINY_BN
from sgd_influence.core.batch_norm import EPS, weighted_batch_norm
from sgd_influence.core.graphs import (BranchRecorder, BranchReplayer, FDRetraceGraph, LossGraph, RetraceGraph,
                                  trainable_params, zero_grads)
from sgd_influence.core.train import init_model


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def test_weighted_layer_matches_nnabla_batch_norm_and_a_numpy_reference():
    """Equal weights: nnabla's training-mode batch norm (forward, grads of x, beta, gamma);
    unequal weights: the formula of batch_norm.py in float64 numpy."""
    rng = np.random.default_rng(0)
    shape = (5, 3, 4, 6)
    x = nn.Variable.from_numpy_array(rng.normal(1.5, 2.0, shape).astype(np.float32), need_grad=True)
    beta = nn.Variable.from_numpy_array(rng.normal(size=(1, 3, 1, 1)).astype(np.float32), need_grad=True)
    gamma = nn.Variable.from_numpy_array(rng.uniform(0.5, 2, (1, 3, 1, 1)).astype(np.float32), need_grad=True)
    w = nn.Variable.from_numpy_array(np.full(5, 0.2, np.float32))
    dy = rng.normal(size=shape).astype(np.float32)

    def run(y):
        for v in (x, beta, gamma):
            v.grad.zero()
        y.forward()
        y.backward(dy)
        return [y.d.copy(), x.g.copy(), beta.g.copy(), gamma.g.copy()]

    ours = run(weighted_batch_norm(x, w, beta, gamma))
    reference = run(F.batch_normalization(x, beta, gamma, nn.Variable((1, 3, 1, 1)), nn.Variable((1, 3, 1, 1)),
                                          eps=EPS, batch_stat=True))
    for a, b in zip(ours, reference):
        assert rel(a, b) < 1e-5

    wv = rng.uniform(0, 3, 5)
    w.d = wv
    y = weighted_batch_norm(x, w, beta, gamma)
    y.forward()
    xd, a = x.d.astype(np.float64), wv / wv.sum()
    mu = np.einsum("b,bchw->c", a, xd) / (4 * 6)
    var = np.einsum("b,bchw->c", a, (xd - mu[:, None, None]) ** 2) / (4 * 6)
    expected = gamma.d * (xd - mu[:, None, None]) / np.sqrt(var[:, None, None] + EPS) + beta.d
    assert rel(y.d, expected) < 1e-5


def losses_and_grads(graph, params, x, y, w):
    graph.feed(x, y, w)
    zero_grads(params)
    graph.loss.forward()
    graph.loss.backward()
    return graph.per_sample.d.copy(), np.concatenate([p.g.ravel() for p in params]).astype(np.float64)


def batch(data, seed=0):
    init_model(data, seed, 8, TINY_BN)
    rng = np.random.default_rng(seed)
    for p in trainable_params().values():  # away from the initial beta = 0, gamma = 1
        p.d = p.d + 0.3 * rng.standard_normal(p.shape).astype(np.float32)
    return list(trainable_params().values()), *data.train_batch(np.arange(8), np.arange(8))


def test_equal_weights_are_batch_norm_as_trained(data):
    params, x, y = batch(data)
    names = set(nn.get_parameters(grad_only=False))
    plain = LossGraph(8, data.image_shape, data.n_classes, False, net=TINY_BN)
    weighted = LossGraph(8, data.image_shape, data.n_classes, False, net=TINY_BN, bn_coupling=True)
    assert set(nn.get_parameters(grad_only=False)) == names  # the trained beta and gamma, nothing new
    l0, g0 = losses_and_grads(plain, params, x, y, 1 / 8)
    l1, g1 = losses_and_grads(weighted, params, x, y, 1 / 8)
    assert np.allclose(l1, l0, rtol=1e-5, atol=1e-6)
    assert rel(g1, g0) < 1e-5


@pytest.mark.parametrize("j", [0, 5])
def test_zero_weight_is_the_batch_without_that_sample(data, j):
    """w_j = 0, the others 1/|S|: the loss and parameter gradient of the batch without j,
    still divided by |S| (as a retraining removes j)."""
    params, x, y = batch(data, seed=1)
    weighted = LossGraph(8, data.image_shape, data.n_classes, False, net=TINY_BN, bn_coupling=True)
    seven = LossGraph(7, data.image_shape, data.n_classes, False, net=TINY_BN)
    w = np.full(8, 1 / 8, np.float32)
    w[j] = 0
    keep = np.arange(8) != j
    l1, g1 = losses_and_grads(weighted, params, x, y, w)
    l7, g7 = losses_and_grads(seven, params, x[keep], y[keep], 1 / 8)
    assert np.allclose(l1[keep], l7, rtol=5e-5, atol=1e-6)
    assert rel(g1, g7) < 1e-5
    _, g8 = losses_and_grads(weighted, params, x, y, 1 / 8)
    assert rel(g8, g7) > 1e-2  # the removal does change the gradient


def pinned_q(data, params, x, y, u):
    """w -> <u, grad_theta loss(w)> on the network pinned to its ReLU/max-pool branches at w = 1/8,
    batch statistics weighted by w: removal (or part of it) without branch switching."""
    recorder, replayer = BranchRecorder(), BranchReplayer()
    at = LossGraph(8, data.image_shape, data.n_classes, False, net=TINY_BN, ops=recorder)
    pinned = LossGraph(8, data.image_shape, data.n_classes, False, net=TINY_BN, ops=replayer, bn_coupling=True)
    at.feed(x, y, 1 / 8)
    at.loss.forward()
    replayer.pin_to(recorder)
    u_flat = np.concatenate([a.ravel() for a in u]).astype(np.float64)
    return lambda w: float(u_flat @ losses_and_grads(pinned, params, x, y, w)[1])


@pytest.mark.parametrize("graph", [RetraceGraph, FDRetraceGraph])
def test_coupled_products_are_the_removal_derivative(data, graph):
    """dQ/dw_j of both retraces (coupling on) against removing a small part s of j,
    (Q(w) - Q(w_j = (1 - s)/|S|)) / (s/|S|), on the pinned network (float64 differences of
    float32 gradients). The coupling is not small: without it the products differ."""
    params, x, y = batch(data, seed=2)
    u = [np.random.default_rng(7).standard_normal(p.shape).astype(np.float32) for p in params]
    theta = [p.d.copy() for p in params]
    _, ug = graph(8, data.image_shape, data.n_classes, params, TINY_BN, bn_coupling=True).run(x, y, u)
    _, ug_off = graph(8, data.image_shape, data.n_classes, params, TINY_BN, bn_coupling=False).run(x, y, u)
    assert all(np.array_equal(p.d, t) for p, t in zip(params, theta))
    q = pinned_q(data, params, x, y, u)
    full = np.full(8, 1 / 8, np.float32)
    s = 0.05
    removal = np.zeros(8)
    for j in range(8):
        w = full.copy()
        w[j] = (1 - s) / 8
        removal[j] = (q(full) - q(w)) / (s / 8)
    assert rel(ug, removal) < 2e-2
    assert rel(ug_off, removal) > 5 * rel(ug, removal)


def test_coupling_is_the_first_order_term_of_the_whole_removal(data):
    """The same with the whole of j removed (w_j = 0, as a retraining does): agreement to first
    order, the remainder shrinking like s as the removed part s goes to 0."""
    params, x, y = batch(data, seed=2)
    u = [np.random.default_rng(7).standard_normal(p.shape).astype(np.float32) for p in params]
    _, ug = RetraceGraph(8, data.image_shape, data.n_classes, params, TINY_BN, bn_coupling=True).run(x, y, u)
    q = pinned_q(data, params, x, y, u)
    full = np.full(8, 1 / 8, np.float32)
    errors = []
    for s in (1.0, 0.25):
        removal = np.zeros(8)
        for j in range(8):
            w = full.copy()
            w[j] = (1 - s) / 8
            removal[j] = (q(full) - q(w)) / (s / 8)
        errors.append(rel(ug, removal))
    assert errors[0] < 0.3  # a whole sample of 8: second-order terms of ~1/8
    assert errors[1] < 0.4 * errors[0]
