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


def cnn(x: nn.Variable, n_classes: int, test: bool = False, widths=WIDTHS,
        batch_norm: bool = True) -> nn.Variable:
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
                h = PF.batch_normalization(h, batch_stat=not test, name="bn1")
            h = F.relu(h)
            h = F.relu(PF.convolution(h, width, (3, 3), pad=(1, 1), name="conv2"))
            h = F.max_pooling(h, (2, 2))
    return PF.affine(h, n_classes, name="fc")
