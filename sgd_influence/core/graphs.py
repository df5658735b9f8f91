"""Computation graphs, built once per batch size and fed through `.d`.

Every phase uses the same loss: the mini-batch loss is sum_i w_i * l_i with
l_i the per-sample cross entropy and w_i = 1/|S_t| fed as data. Removing an
instance is done by dropping it from the batch (batch norm must not see it),
while w keeps the recorded |S_t| as the divisor.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import nnabla as nn
import nnabla.functions as F

from models import Ops, cnn
from .batch_norm import WeightedBatchNormOps


def trainable_params() -> Dict[str, nn.Variable]:
    """Parameters that SGD updates (theta in the papers)."""
    return nn.get_parameters(grad_only=True)


def zero_grads(params) -> None:
    for p in params:
        p.grad.zero()


class LossGraph:
    """x, y, w -> per-sample losses l (B,), loss = sum_i w_i l_i, and logits.

    `ops`: the network's `models.Ops` (default: the net's own). `bn_coupling`: training-mode
    batch norm weights its statistics by w too (`batch_norm.WeightedBatchNormOps`), so that
    w_j = 0 is the removal of j from the batch and dloss/dw_j includes the change of the
    statistics; for the retrace graphs only (training keeps nnabla's fused batch norm).
    `double_backward`: the weighted batch norm must support differentiating twice.
    """

    def __init__(self, batch_size: int, image_shape: tuple, n_classes: int, test: bool,
                 w_need_grad: bool = False, net: Callable = cnn, ops: Optional[Ops] = None,
                 bn_coupling: bool = False, double_backward: bool = False):
        self.x = nn.Variable((batch_size,) + tuple(image_shape))
        self.y = nn.Variable((batch_size, 1))
        self.w = nn.Variable((batch_size,), need_grad=w_need_grad)
        if bn_coupling and not test:
            ops = WeightedBatchNormOps(self.w, ops, double_backward)
        self.logits = net(self.x, n_classes, test=test, **({} if ops is None else {"ops": ops}))
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
      - in w's grad: dQ/dw_i, which is <u, grad_theta l_i(theta)> for every i at once
        when the batch-norm statistics do not depend on w (`bn_coupling=False`), and
        <u, grad_theta l_i> plus the change of the other samples' gradients through the
        statistics when they do (`bn_coupling=True`: w_i = 0 is then the removal of i,
        see batch_norm.py); either way the retrace adds eta/|S| * dQ/dw_i.
    Batch norm runs in training mode, as in the step being retraced, unless
    `test` (influence functions use the model as deployed: running statistics).
    """

    def __init__(self, batch_size: int, image_shape: tuple, n_classes: int,
                 params: List[nn.Variable], net: Callable = cnn, test: bool = False,
                 bn_coupling: bool = False):
        self.graph = LossGraph(batch_size, image_shape, n_classes, test=test, w_need_grad=True, net=net,
                               bn_coupling=bn_coupling, double_backward=True)
        self.params = params
        grads = nn.grad([self.graph.loss], params)
        self.u = [nn.Variable(p.shape) for p in params]
        self.q = F.sum(F.stack(*[F.sum(u * g) for u, g in zip(self.u, grads)]))

    def run(self, x: np.ndarray, y: np.ndarray, u: List[np.ndarray]):
        """Return (H u as a list of arrays, <u, g_i> for each sample)."""
        self.graph.feed(x, y, 1.0 / len(y))
        resident = isinstance(u[0], nn.NdArray)  # u on the device: H u stays there (infl.retrace)
        for var, val in zip(self.u, u):
            if resident:
                var.data.copy_from(val)
            else:
                var.d = val
        zero_grads(self.params)
        self.graph.w.grad.zero()
        self.q.forward(clear_no_need_grad=True)
        self.q.backward(clear_buffer=True)
        hu = [F.identity(p.grad) for p in self.params] if resident else [p.g.copy() for p in self.params]
        return hu, self.graph.w.g.copy()


class BranchRecorder(Ops):
    """The network's ReLUs and max-pools as usual, keeping their inputs (and the pooled
    maxima) so that `BranchReplayer.pin_to` can pin another graph to these branches."""

    def __init__(self):
        self.kept: List[Tuple[nn.Variable, Optional[nn.Variable]]] = []

    def relu(self, h):
        h.persistent = True
        self.kept.append((h, None))
        return F.relu(h)

    def max_pool(self, h, kernel):
        out = F.max_pooling(h, kernel)
        h.persistent = out.persistent = True
        self.kept.append((h, out))
        return out


class BranchReplayer(Ops):
    """ReLUs and max-pools pinned to the branches a `BranchRecorder` graph took.

    With h_r the recorded input and k the RMS of h_r over the layer:
        ReLU:     relu(h + c) + e,   c = +k, e = -k where h_r > 0;  c = -k, e = 0 elsewhere
        max-pool: maxpool(h + c) - k, c = +k on each window's recorded maxima, 0 elsewhere
    While |h - h_r| < k this equals h * [h_r > 0] and the pick of the recorded maximum:
    the network restricted to the recorded branch, a smooth function of theta whose
    Hessian is the one double backward computes at the recorded point. (nnabla's
    same-shape add is several times faster than its broadcasting multiply; adding and
    removing k costs about one float32 rounding of k per unit.)
    """

    def __init__(self):
        self.offsets: List[Tuple[nn.Variable, nn.Variable]] = []

    def relu(self, h):
        c, e = nn.Variable(h.shape), nn.Variable(h.shape)
        self.offsets.append((c, e))
        return F.add2(F.relu(F.add2(h, c)), e)

    def max_pool(self, h, kernel):
        c = nn.Variable(h.shape)
        out = F.max_pooling(F.add2(h, c), kernel)
        e = nn.Variable(out.shape)
        self.offsets.append((c, e))
        return F.add2(out, e)

    def pin_to(self, recorder: BranchRecorder) -> None:
        """Set the offsets from the recorder's last forward pass."""
        assert len(recorder.kept) == len(self.offsets)
        for (h, pooled), (c, e) in zip(recorder.kept, self.offsets):
            z = h.d
            k = np.float32(np.linalg.norm(z.ravel()) / np.sqrt(z.size)) or np.float32(1)
            if pooled is None:
                on = z > 0
                c.d = np.where(on, k, -k)
                e.d = np.where(on, -k, np.float32(0))
            else:
                # Windows of kernel = stride (the net's 2x2 pools); an odd edge row or
                # column is outside every window (ignore_border) and gets no offset.
                b, ch, _, _ = z.shape
                ph, pw = pooled.shape[2:]
                kh, kw = z.shape[2] // ph, z.shape[3] // pw
                inside = z[:, :, :ph * kh, :pw * kw]
                top = inside.reshape(b, ch, ph, kh, pw, kw) == pooled.d[:, :, :, None, :, None]
                offset = np.zeros_like(z)
                offset[:, :, :ph * kh, :pw * kw] = top.reshape(inside.shape) * k
                c.d = offset
                e.data.fill(-k)


class DevicePins:
    """`BranchReplayer.pin_to` as a small nnabla graph: the replayer's offsets computed from the
    recorder's kept inputs where they live (on the GPU under cudnn), with no copy to the host.

    The offsets' variables share their arrays with this graph's outputs, so `forward()` after
    the recording forward pins the replayer. Same offsets as `pin_to` except for rounding of
    k (the layer's RMS, summed here by nnabla instead of numpy): the branch masks are equal.
    """

    def __init__(self, recorder: BranchRecorder, replayer: BranchReplayer):
        assert len(recorder.kept) == len(replayer.offsets)
        outs = []
        for (h, pooled), (c, e) in zip(recorder.kept, replayer.offsets):
            z = h.get_unlinked_variable(need_grad=False)  # the recorded input, its graph cut
            k = F.pow_scalar(F.mean(F.pow_scalar(z, 2.0)), 0.5)
            k = F.reshape(F.add2(k, F.equal_scalar(k, 0.0)), (1,) * len(h.shape))  # an all-zero layer: k = 1
            if pooled is None:
                on = F.greater_scalar(z, 0.0)  # 1 where the recorded ReLU passes, else 0
                c_new = F.mul2(F.add_scalar(F.mul_scalar(on, 2.0), -1.0), k)  # +k / -k
                e_new = F.mul2(F.mul_scalar(on, -1.0), k)  # -k / 0
            else:  # kernel = stride windows; an odd edge row or column gets no offset (as pin_to)
                b, ch, hh, ww = h.shape
                ph, pw = pooled.shape[2:]
                kh, kw = hh // ph, ww // pw
                inside = z if (ph * kh, pw * kw) == (hh, ww) else \
                    F.slice(z, start=(0, 0, 0, 0), stop=(b, ch, ph * kh, pw * kw))
                picked = pooled.get_unlinked_variable(need_grad=False)
                top = F.equal(inside, F.unpooling(picked, (kh, kw)))
                c_new = F.mul2(top, k)
                if (ph * kh, pw * kw) != (hh, ww):
                    c_new = F.pad(c_new, (0, hh - ph * kh, 0, ww - pw * kw))
                e_new = F.broadcast(F.mul_scalar(k, -1.0), pooled.shape)
            for out, var in ((c_new, c), (e_new, e)):
                out.persistent = True
                outs.append(out)
                var.data = out.data  # the replayer reads what this graph writes
        self.sink = F.sink(*outs)

    def forward(self) -> None:
        self.sink.forward(clear_no_need_grad=True)


class FDRetraceGraph:
    """Both quantities of a retrace step from central differences along u.

    A forward pass at theta records which branch every ReLU and max-pool takes;
    with the network pinned to those branches (`BranchReplayer`), two ordinary
    forward+backward passes at theta +- eps u (batch norm in training mode, as in
    the step) give
        H u      = (G(theta + eps u) - G(theta - eps u)) / (2 eps)   + O(eps^2)
        <u, g_i> = (l_i(theta + eps u) - l_i(theta - eps u)) / (2 eps) + O(eps^2)
    with G the gradient of the batch mean loss and l_i the per-sample losses of the
    same passes: one forward and two training steps' worth of work, against about
    five for `RetraceGraph`. With `bn_coupling` the pinned graph's batch norm weights
    its statistics by w (batch_norm.py) and the backward also runs to w, whose gradient
    dL/dw_i = l_i + (the change of the others' losses through the statistics) replaces
    l_i above: its central difference is dQ/dw_i, `RetraceGraph`'s coupled quantity.
    Pinning is what makes this work: a unit that switches branch between the two
    points adds an O(1/eps) jump to the quotient, and a fraction O(eps) of units do,
    so the error does not shrink with eps (unpinned, H u was off by 65-1500% on the
    six-conv net).

    eps = rel_step * |theta| / |u|: the step moves theta by rel_step of its norm.
    On the six-conv net 3e-4 sits between float32 rounding (smaller steps) and
    truncation (larger ones); docs/performance.md has the sweep. The pinning holds
    while every pinned input moves by less than its layer's RMS (it moves by about
    rel_step of it).
    """

    REL_STEP = 3e-4

    def __init__(self, batch_size: int, image_shape: tuple, n_classes: int,
                 params: List[nn.Variable], net: Callable = cnn, rel_step: float = REL_STEP,
                 bn_coupling: bool = False):
        self.params, self.rel_step, self.bn_coupling = params, rel_step, bn_coupling
        self.recorder, self.replayer = BranchRecorder(), BranchReplayer()
        args = (batch_size, image_shape, n_classes, False)
        # The recording forward keeps the fused batch norm: at w_i = 1/|S| the weighted one
        # computes the same statistics up to rounding, far inside the pins' margin.
        self.at_theta = LossGraph(*args, net=net, ops=self.recorder)
        self.pinned = LossGraph(*args, net=net, ops=self.replayer, w_need_grad=bn_coupling,
                                bn_coupling=bn_coupling)
        self.pinned.per_sample.persistent = True
        self.device_pins = None  # built on first use by a resident run (u given as NdArrays)

    def _pass(self, theta: List[np.ndarray], u: List[np.ndarray], step: float):
        """Parameter gradients and dL/dw_i (= l_i without coupling) at theta + step * u."""
        for p, t, v in zip(self.params, theta, u):
            p.d = t + step * v
        return self._gradients(resident=False)

    def _gradients(self, resident: bool):
        """Forward and backward of the pinned graph at the parameters' current values: the
        parameter gradients (device arrays if `resident`, else numpy copies) and dL/dw_i."""
        zero_grads(self.params)
        if self.bn_coupling:
            self.pinned.w.grad.zero()
        self.pinned.loss.forward(clear_no_need_grad=True)
        self.pinned.loss.backward(clear_buffer=True)
        dw = self.pinned.w.g if self.bn_coupling else self.pinned.per_sample.d
        grads = [F.identity(p.grad) for p in self.params] if resident else [p.g.copy() for p in self.params]
        return grads, dw.copy()

    def run(self, x: np.ndarray, y: np.ndarray, u: List[np.ndarray]):
        """Return (H u as a list of arrays, dQ/dw_i for each sample), like `RetraceGraph.run`.
        With u as nnabla NdArrays the step stays on the device (`_run_resident`)."""
        if isinstance(u[0], nn.NdArray):
            return self._run_resident(x, y, u)
        theta = [p.d.copy() for p in self.params]
        n_u = flat_norm(u)
        if n_u == 0:
            return [np.zeros_like(a) for a in u], np.zeros(len(y))
        eps = self.rel_step * flat_norm(theta) / n_u
        for g in (self.at_theta, self.pinned):
            g.feed(x, y, 1.0 / len(y))
        self.at_theta.loss.forward(clear_buffer=True)
        self.replayer.pin_to(self.recorder)
        g_plus, l_plus = self._pass(theta, u, eps)
        g_minus, l_minus = self._pass(theta, u, -eps)
        for p, t in zip(self.params, theta):
            p.d = t
        hu = [(a - b) / np.float32(2 * eps) for a, b in zip(g_plus, g_minus)]
        return hu, (l_plus.astype(np.float64) - l_minus) / (2 * eps)

    def _run_resident(self, x: np.ndarray, y: np.ndarray, u: List[nn.NdArray]):
        """`run` with theta, u, the branch pins, both passes' gradients and H u kept as device
        arrays (`DevicePins`); only the batch goes in and the per-sample dQ/dw_i and two norms
        come out. Equal to `run` up to float32 rounding (k of the pins, the norms, H u's scaling)."""
        if self.device_pins is None:
            self.device_pins = DevicePins(self.recorder, self.replayer)
        n_u = device_norm(u)
        if n_u == 0:
            return [F.mul_scalar(a, 0.0) for a in u], np.zeros(len(y))
        theta = [F.identity(p.data) for p in self.params]
        eps = self.rel_step * device_norm(theta) / n_u
        for g in (self.at_theta, self.pinned):
            g.feed(x, y, 1.0 / len(y))
        self.at_theta.loss.forward(clear_buffer=True)
        self.device_pins.forward()
        out = []
        for step in (eps, -eps):
            for p, t, v in zip(self.params, theta, u):
                p.data.copy_from(F.add2(t, F.mul_scalar(v, step)))
            out.append(self._gradients(resident=True))
        (g_plus, l_plus), (g_minus, l_minus) = out
        for p, t in zip(self.params, theta):
            p.data.copy_from(t)
        hu = [F.mul_scalar(F.sub2(a, b), 1.0 / (2 * eps)) for a, b in zip(g_plus, g_minus)]
        return hu, (l_plus.astype(np.float64) - l_minus) / (2 * eps)


RETRACE_GRAPHS = {"exact": RetraceGraph, "fd": FDRetraceGraph}


# Vectors in parameter space: one array per trainable parameter, in trainable_params() order.
def dot(a: List[np.ndarray], b: List[np.ndarray]) -> float:
    """<a, b>, accumulated in float64 (as NdArrays: each parameter's sum taken on the device)."""
    if isinstance(a[0], nn.NdArray):
        return float(sum(float(F.sum(F.mul2(x, y)).data) for x, y in zip(a, b)))
    return float(sum(np.vdot(x.astype(np.float64), y) for x, y in zip(a, b)))


def flat_norm(arrays: List[np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.dot(a.ravel(), a.ravel())) for a in arrays)))


def flat(arrays: List[np.ndarray]) -> np.ndarray:
    """One float64 vector of the arrays, concatenated."""
    return np.concatenate([a.ravel() for a in arrays]).astype(np.float64)


def on_device() -> bool:
    """Whether the current nnabla context computes on a GPU (cudnn/cuda), where a host copy costs."""
    return nn.get_current_context().backend[0].split(":")[0] in ("cudnn", "cuda")


def to_device(arrays: List[np.ndarray]) -> List[nn.NdArray]:
    return [nn.NdArray.from_numpy_array(np.ascontiguousarray(a)) for a in arrays]


def to_host(arrays) -> List[np.ndarray]:
    """numpy copies of a vector held as numpy arrays or as nnabla NdArrays."""
    return [a.data.copy() if isinstance(a, nn.NdArray) else a for a in arrays]


def device_norm(arrays: List[nn.NdArray]) -> float:
    """|v| of a vector of NdArrays, summed on the device (one scalar comes back)."""
    return float(np.sqrt(float(F.add_n(*[F.sum(F.pow_scalar(a, 2.0)) for a in arrays]).data)))


def flat_trainable() -> np.ndarray:
    """theta, the trainable parameters' current values, as one float64 vector."""
    return flat([p.d for p in trainable_params().values()])


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
