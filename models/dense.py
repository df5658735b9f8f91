"""The built-in network for vectors (`--net mlp`): a multilayer perceptron.

Two hidden layers of 64 units, each affine + ReLU, the first with batch norm between (as the
first block of the six-conv network, models/cnn.py), then one affine layer to the classes:

    h1 = relu(bn(x W1 + b1)),  h2 = relu(h1 W2 + b2),  logits = h2 W3 + b3

Any input shape is flattened by the first affine layer (PF.affine, base_axis 1). Its ReLUs and
batch norm go through `Ops`, so the fd retrace pins it and the batch-norm coupling weights it
like the six-conv network. On 30 inputs and 2 classes: 6,530 parameters (6,402 trainable plus
128 batch-norm running statistics).
"""
from __future__ import annotations

import nnabla as nn
import nnabla.parametric_functions as PF

from .cnn import Ops

WIDTHS = (64, 64)


def dense(x: nn.Variable, n_classes: int, test: bool = False, widths=WIDTHS, batch_norm: bool = True,
          ops: Ops = Ops()) -> nn.Variable:
    """Logits of shape (B, n_classes); `test` as in models.cnn (batch statistics or running ones).
    `widths` and `batch_norm` exist for the tests' tiny networks."""
    h = x
    for i, width in enumerate(widths):
        with nn.parameter_scope(f"layer{i + 1}"):
            h = PF.affine(h, width, name="fc")
            if batch_norm and i == 0:
                h = ops.batch_norm(h, test, "bn")
            h = ops.relu(h)
    return PF.affine(h, n_classes, name="fc")
