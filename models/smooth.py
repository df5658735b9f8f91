"""A smooth variant of the six-convolution network: softplus for every ReLU, 2x2 average
pooling for every max-pool, the same blocks, widths and parameters (models/cnn.py).

Training it is a twice-differentiable function of the weights and of each instance's loss
weight, the condition under which MAGIC (Ilyas & Engstrom 2025) finds first-order estimates of
removals from the whole training (here: Replay_all) to be near exact. It tests that condition
on the paper's architecture: `--net models.smooth:cnn_smooth` (10 classes; with --retrace fd
nothing needs pinning, network.SMOOTH).
"""
from __future__ import annotations

import nnabla as nn
import nnabla.functions as F

from .cnn import Ops, cnn


class SmoothOps(Ops):
    """softplus(h) = log(1 + e^h) for ReLU; average for max pooling."""

    def relu(self, h: nn.Variable) -> nn.Variable:
        return F.softplus(h)

    def max_pool(self, h: nn.Variable, kernel: tuple) -> nn.Variable:
        return F.average_pooling(h, kernel)


def cnn_smooth(x: nn.Variable, test: bool = False, n_classes: int = 10) -> nn.Variable:
    """Logits (B, n_classes) of the smooth six-conv network (a --net function: f(x, test))."""
    return cnn(x, n_classes, test, ops=SmoothOps())
