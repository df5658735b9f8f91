"""The six-convolution network of the papers' experiments.

Three blocks of (3x3 conv + batch norm + ReLU, 3x3 conv + ReLU, 2x2 max-pool)
with widths 32/64/128, then one affine layer to the classes. On one input
channel at 32x32 it has 307,818 parameters (307,370 trainable plus 448 batch
norm running statistics); on three channels 308,394.
"""
from __future__ import annotations

import nnabla as nn
import nnabla.functions as F
import nnabla.parametric_functions as PF

WIDTHS = (32, 64, 128)


class Ops:
    """The network's non-affine pieces. The finite-difference retrace overrides
    them to record and replay which branch every ReLU and max-pool takes
    (`sgd_influence.core.graphs.BranchRecorder`)."""

    def relu(self, h: nn.Variable) -> nn.Variable:
        return F.relu(h)

    def max_pool(self, h: nn.Variable, kernel: tuple) -> nn.Variable:
        return F.max_pooling(h, kernel)

    def batch_norm(self, h: nn.Variable, test: bool, name: str) -> nn.Variable:
        return PF.batch_normalization(h, batch_stat=not test, name=name)


def cnn(x: nn.Variable, n_classes: int, test: bool = False, widths=WIDTHS,
        batch_norm: bool = True, ops: Ops = Ops()) -> nn.Variable:
    """Logits of shape (B, n_classes).

    `test=False` normalises with the batch's own statistics (and updates the
    running statistics), as in training; `test=True` uses the running ones.
    `widths` and `batch_norm` exist for the tests' tiny networks.
    """
    h = x
    for i, width in enumerate(widths):
        with nn.parameter_scope(f"block{i + 1}"):
            h = PF.convolution(h, width, (3, 3), pad=(1, 1), name="conv1")
            if batch_norm:
                h = ops.batch_norm(h, test, "bn1")
            h = ops.relu(h)
            h = ops.relu(PF.convolution(h, width, (3, 3), pad=(1, 1), name="conv2"))
            h = ops.max_pool(h, (2, 2))
    return PF.affine(h, n_classes, name="fc")
