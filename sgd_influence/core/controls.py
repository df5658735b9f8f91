"""Control method `Loss`: rank training instances by their loss under the final model.

The score keeps the influence CSV's convention (most negative removed first)
by storing the NEGATED loss: influence[j] = -l(z_j; theta[T]), so the highest
training loss is removed first. It is not a predicted change of the validation
loss. The loss is the model as deployed sees it: batch norm in test mode
(running statistics), no augmentation (the centred image), the label as
trained on (the noisy one under --label-noise).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from datasets import Data
from models import cnn
from .graphs import GraphCache


def negated_training_loss(data: Data, batch_size: int = 500, net: Callable = cnn) -> np.ndarray:
    """-l(z_j; theta) for every training instance at the current parameters, shape (n_train,)."""
    cache = GraphCache(data.image_shape, data.n_classes, test=True, net=net)
    n = len(data.train)
    out = np.empty(n, np.float64)
    for a in range(0, n, batch_size):
        b = min(a + batch_size, n)
        g = cache.get(b - a)
        g.feed(data.normalize(data.train.x[a:b]), data.train.y[a:b], 1.0)
        g.per_sample.forward(clear_buffer=True)
        out[a:b] = -g.per_sample.d
    return out


def random_key(n: int, seed: int, order: int = 0) -> np.ndarray:
    """Control `Random`: a seeded random sort key of the n training instances (not a predicted
    change of the validation loss; removal in its ascending order is a random order). `order` r picks
    one of the trial's independent orders (--random-orders): r = 0 is the one runs before that
    option used, r > 0 draws from the key [seed, 2, r]."""
    return np.random.default_rng([seed, 2] + ([order] if order else [])).random(n)
