"""The small models of Hara et al. (NeurIPS 2019) Sec. 7.1: one logit for a two-class task.

- `logreg`: logistic regression, one affine layer.
- `mlp`: the paper's "DNN", ReLU hidden layers of 8 and 8 units, no batch norm.

Both are `net(x, n_out, hidden)`: affine layers named layer0, layer1, ... in the
current parameter scope, weights W of shape (d_in, d_out) and biases b (d_out,).
With `replicas=R` every parameter gets a leading axis of R and x is (R, B, d), or
(B, d) when every copy sees the same input: R independent copies of the model
evaluated in one graph (the leave-one-out counterfactuals of `sgd_influence.checks.hara71`
train side by side this way; a shared input makes the first layer one matrix product).

Initialisation as PyTorch's nn.Linear (the published code): W and b uniform in
+-1/sqrt(d_in); `init_values` draws them from a seeded RandomState.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import nnabla as nn
import nnabla.functions as F
from nnabla.initializer import UniformInitializer

HIDDEN = (8, 8)


def layer_sizes(d_in: int, n_out: int, hidden: Sequence[int]) -> List[tuple]:
    """(d_in, d_out) of every affine layer."""
    dims = [d_in] + list(hidden) + [n_out]
    return list(zip(dims[:-1], dims[1:]))


def param_shapes(d_in: int, n_out: int, hidden: Sequence[int]) -> List[tuple]:
    """Shapes of the parameters in graph order: W0, b0, W1, b1, ..."""
    return [s for a, b in layer_sizes(d_in, n_out, hidden) for s in ((a, b), (b,))]


def init_values(d_in: int, n_out: int, hidden: Sequence[int], seed: int) -> List[np.ndarray]:
    """PyTorch nn.Linear's default initialisation, from RandomState(seed), float32."""
    rng = np.random.RandomState(seed)
    out = []
    for a, b in layer_sizes(d_in, n_out, hidden):
        lim = 1.0 / np.sqrt(a)
        out.append(rng.uniform(-lim, lim, (a, b)).astype(np.float32))
        out.append(rng.uniform(-lim, lim, (b,)).astype(np.float32))
    return out


def net(x: nn.Variable, n_out: int = 1, hidden: Sequence[int] = HIDDEN, replicas: int | None = None) -> nn.Variable:
    """Logits: (B, n_out), or (R, B, n_out) with `replicas=R` and x of shape (R, B, d) or (B, d)."""
    h = x
    sizes = layer_sizes(x.shape[-1], n_out, hidden)
    for k, (a, b) in enumerate(sizes):
        lim = 1.0 / np.sqrt(a)
        init = UniformInitializer((-lim, lim))
        lead = () if replicas is None else (replicas,)
        w = nn.parameter.get_parameter_or_create(f"layer{k}/W", lead + (a, b), init, True)
        if replicas is None:
            bias = nn.parameter.get_parameter_or_create(f"layer{k}/b", (b,), init, True)
            h = F.affine(h, w, bias)
        else:
            bias = nn.parameter.get_parameter_or_create(f"layer{k}/b", (replicas, 1, b), init, True)
            if h.ndim == 2:  # input shared by the copies: (B, a) @ (a, R b) -> (R, B, b)
                wide = F.reshape(F.transpose(w, (1, 0, 2)), (a, replicas * b))
                h = F.transpose(F.reshape(F.affine(h, wide), (h.shape[0], replicas, b)), (1, 0, 2))
            else:
                h = F.batch_matmul(h, w)
            h = h + bias
        if k < len(sizes) - 1:
            h = F.relu(h)
    return h


def logreg(x: nn.Variable, n_out: int = 1, replicas: int | None = None) -> nn.Variable:
    """Logistic regression: logits = x W + b."""
    return net(x, n_out, (), replicas)


def mlp(x: nn.Variable, n_out: int = 1, hidden: Sequence[int] = HIDDEN, replicas: int | None = None) -> nn.Variable:
    """ReLU layers of `hidden` units (the paper: 8 and 8), no batch norm, then the logits."""
    return net(x, n_out, hidden, replicas)
