"""Batch norm with per-sample weights in its statistics: w_j = 0 *is* the removal of j.

In training mode batch norm normalises every sample of a batch S with the batch's
statistics, so removing instance j changes the output of every other sample too. The
retrace's per-sample loss weights w (loss = sum_i w_i l_i, `graphs.LossGraph`) do not
see that unless the statistics depend on w. Here they do (sums over the batch b and the
spatial positions p of each channel; P positions per sample):

    a_b     = w_b / sum_i w_i                                  (normalised weights)
    mu_w    = sum_b a_b * mean_p x[b, :, p]
    var_w   = sum_b a_b * mean_p (x[b, :, p] - mu_w)^2         (biased, as nnabla's batch norm)
            = sum_b a_b * mean_p x[b, :, p]^2 - mu_w^2
    y       = gamma * (x - mu_w) / sqrt(var_w + eps) + beta

With all w_b equal (the retrace feeds w_b = 1/|S|) this is batch norm in training mode
exactly as trained, up to float32 rounding; with w_j = 0 and the others equal it is batch
norm over S without j, which is how a retraining removes j. Because the loss weights and
the statistics weights are the same variable, d/dw_j of the batch loss at w_b = 1/|S| is
the first-order derivative of removing j *including* the change of the statistics every
other sample sees (the "coupling"): removal moves w_j by -1/|S|, so the retrace's
eta/|S| * dQ/dw_j (Q = <u, grad_theta loss>) is the first-order estimate of
<u, theta_{-j}[t+1] - theta[t+1]> with the same sign convention as without batch norm.

The running statistics are neither read nor updated (the retrace tracks the trainable
parameters only). Training and retraining keep nnabla's fused batch norm.
"""
from __future__ import annotations

from typing import Optional

import nnabla as nn
import nnabla.functions as F
from nnabla.initializer import ConstantInitializer
from nnabla.parameter import get_parameter_or_create

from models import Ops

EPS = 1e-5  # PF.batch_normalization's default, which models/cnn.py uses


def weighted_batch_norm(x: nn.Variable, w: nn.Variable, beta: nn.Variable, gamma: nn.Variable,
                        eps: float = EPS, double_backward: bool = True) -> nn.Variable:
    """Batch norm of x (B, C, ...) over axes 0 and 2.. with statistics weighted by w (B,).

    beta and gamma have shape (1, C, 1, ...) as PF.batch_normalization creates them. The
    weights need not sum to one (they are normalised); the output is differentiable in x,
    w, beta and gamma.
    Computed as var_w = sum_b a_b mean_p x^2 - mu_w^2 and y = x * s + (beta - mu_w * s),
    s = gamma / sqrt(var_w + eps). With `double_backward=False` the per-channel affine map
    is a 1x1 depthwise convolution on 2-D maps, which nnabla cannot differentiate twice but
    which is much faster on its CPU backend than a broadcasting multiply (as pow_scalar is
    than x * x): the layer's forward+backward then costs about 1.1x nnabla's fused batch
    norm, against about 3x for the broadcasting form that double backward needs.
    """
    b, c = x.shape[:2]
    spatial = tuple(range(2, len(x.shape)))
    a = F.reshape(w / F.sum(w, keepdims=True), (b, 1))
    x2 = F.pow_scalar(x, 2)
    m1, m2 = (F.mean(v, axis=spatial) for v in (x, x2)) if spatial else (x, x2)  # (B, C)
    mu = F.sum(m1 * a, axis=0)  # (C,)
    var = F.sum(m2 * a, axis=0) - F.pow_scalar(mu, 2)
    scale = F.reshape(gamma, (c,)) * F.pow_scalar(var + eps, -0.5)
    shift = F.reshape(beta, (c,)) - mu * scale
    if len(spatial) == 2 and not double_backward:
        return F.depthwise_convolution(x, F.reshape(scale, (c, 1, 1)), shift)
    stat_shape = (1, c) + (1,) * len(spatial)
    return x * F.reshape(scale, stat_shape) + F.reshape(shift, stat_shape)


class WeightedBatchNormOps(Ops):
    """`models.Ops` whose training-mode batch norm weights its statistics by `w`.

    ReLU and max-pool are delegated to `base` (plain, or the fd retrace's branch
    recorder/replayer), and so is batch norm in test mode. `double_backward=False` selects
    the faster form that supports one backward only (`weighted_batch_norm`). The layer
    uses the trained beta and gamma of PF.batch_normalization(name=`name`), i.e.
    `<name>/bn/beta` and `<name>/bn/gamma` (created as PF would if absent).
    """

    def __init__(self, w: nn.Variable, base: Optional[Ops] = None, double_backward: bool = True):
        self.w, self.base, self.double_backward = w, base if base is not None else Ops(), double_backward

    def relu(self, h):
        return self.base.relu(h)

    def max_pool(self, h, kernel):
        return self.base.max_pool(h, kernel)

    def batch_norm(self, h, test, name):
        if test:
            return self.base.batch_norm(h, test, name)
        shape = (1, h.shape[1]) + (1,) * (len(h.shape) - 2)
        with nn.parameter_scope(name), nn.parameter_scope("bn"):  # PF.batch_normalization's own scope
            beta = get_parameter_or_create("beta", shape, ConstantInitializer(0), True)
            gamma = get_parameter_or_create("gamma", shape, ConstantInitializer(1), True)
            get_parameter_or_create("mean", shape, ConstantInitializer(0), False)
            get_parameter_or_create("var", shape, ConstantInitializer(1), False)
        return weighted_batch_norm(h, self.w, beta, gamma, double_backward=self.double_backward)

