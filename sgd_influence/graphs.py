"""Computation graphs, built once per batch size and fed through `.d`.

Every phase uses the same loss: the mini-batch loss is sum_i w_i * l_i with
l_i the per-sample cross entropy and w_i = 1/|S_t| fed as data. Removing an
instance is done by dropping it from the batch (batch norm must not see it),
while w keeps the recorded |S_t| as the divisor.
"""
from __future__ import annotations

from typing import Callable, Dict, List

import numpy as np
import nnabla as nn
import nnabla.functions as F

from models import cnn


def trainable_params() -> Dict[str, nn.Variable]:
    """Parameters that SGD updates (theta in the papers)."""
    return nn.get_parameters(grad_only=True)


def zero_grads(params) -> None:
    for p in params:
        p.grad.zero()


class LossGraph:
    """x, y, w -> per-sample losses l (B,), loss = sum_i w_i l_i, and logits."""

    def __init__(self, batch_size: int, image_shape: tuple, n_classes: int, test: bool,
                 w_need_grad: bool = False, net: Callable = cnn):
        self.x = nn.Variable((batch_size,) + tuple(image_shape))
        self.y = nn.Variable((batch_size, 1))
        self.w = nn.Variable((batch_size,), need_grad=w_need_grad)
        self.logits = net(self.x, n_classes, test=test)
        self.per_sample = F.reshape(F.softmax_cross_entropy(self.logits, self.y), (batch_size,))
        self.loss = F.sum(self.per_sample * self.w)

    def feed(self, x: np.ndarray, y: np.ndarray, w: float) -> None:
        self.x.d = x
        self.y.d = y.reshape(-1, 1)
        self.w.d = w


class GraphCache:
    """One `LossGraph` per batch size (retraining drops instances from batches)."""

    def __init__(self, image_shape: tuple, n_classes: int, test: bool, net: Callable = cnn):
        self.image_shape, self.n_classes, self.test, self.net = image_shape, n_classes, test, net
        self._graphs: Dict[int, LossGraph] = {}

    def get(self, batch_size: int) -> LossGraph:
        if batch_size not in self._graphs:
            self._graphs[batch_size] = LossGraph(batch_size, self.image_shape, self.n_classes, self.test,
                                                 net=self.net)
        return self._graphs[batch_size]


class RetraceGraph:
    """One double-backward pass giving both quantities of a retrace step.

    With G = grad_theta sum_i w_i l_i(theta) and Q = <u, G>, one backward of
    Q at w_i = 1/|S| leaves
      - in the parameters' grads: H u, H the Hessian of the mini-batch mean loss;
      - in w's grad: dQ/dw_i = <u, grad_theta l_i(theta)> for every i at once.
    Batch norm runs in training mode, as in the step being retraced, unless
    `test` (influence functions use the model as deployed: running statistics).
    """

    def __init__(self, batch_size: int, image_shape: tuple, n_classes: int,
                 params: List[nn.Variable], net: Callable = cnn, test: bool = False):
        self.graph = LossGraph(batch_size, image_shape, n_classes, test=test, w_need_grad=True, net=net)
        self.params = params
        grads = nn.grad([self.graph.loss], params)
        self.u = [nn.Variable(p.shape) for p in params]
        self.q = F.sum(F.stack(*[F.sum(u * g) for u, g in zip(self.u, grads)]))

    def run(self, x: np.ndarray, y: np.ndarray, u: List[np.ndarray]):
        """Return (H u as a list of arrays, <u, g_i> for each sample)."""
        self.graph.feed(x, y, 1.0 / len(y))
        for var, val in zip(self.u, u):
            var.d = val
        zero_grads(self.params)
        self.graph.w.grad.zero()
        self.q.forward(clear_no_need_grad=True)
        self.q.backward(clear_buffer=True)
        return [p.g.copy() for p in self.params], self.graph.w.g.copy()


def evaluate(cache: GraphCache, x_norm_fn, split, batch_size: int = 500):
    """Mean loss and accuracy of a split in test mode; `x_norm_fn` maps uint8 -> input."""
    n = len(split)
    total_loss, correct = 0.0, 0
    for a in range(0, n, batch_size):
        b = min(a + batch_size, n)
        g = cache.get(b - a)
        g.feed(x_norm_fn(split.x[a:b]), split.y[a:b], 1.0)
        g.loss.forward()  # keeps the logits, an intermediate of the loss
        total_loss += float(g.loss.d)
        correct += int((g.logits.d.argmax(axis=1) == split.y[a:b]).sum())
    return total_loss / n, correct / n
