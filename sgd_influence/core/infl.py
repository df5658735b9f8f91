"""Phase 2: the backward retrace of SGD-influence over the last epoch.

Sign convention (all methods): influence[j] is the predicted change of the
validation loss if instance j is removed from training,
    L_{-j} = <u, theta_{-j}[T] - theta[T]>,  u = grad of the mean validation loss at theta[T].
Negative = removing j helps; data cleansing removes the most negative first.

Removing j from step t's batch changes theta[t+1] by +eta_t/|S_t| g(z_j; theta[t]);
that change reaches theta[T] through Z_s = I - eta_s H_s for s > t. Hence,
walking back from the last step with u_T = u:

    for t = T-1 down to the first step of the last epoch:
        L_{-j} += eta_t/|S_t| <u, g(z_j; theta)>   for j in S_t
        u      <- u - eta_t H_t u                    (H_t: Hessian of the batch mean loss)

Hara evaluates g and H at theta = theta[t] (parameters stored at every step);
Ours at theta = theta[T] (final parameters only). Where theta[t] comes from is a
`params.StepParams` (`step_parameters`): Hara's per-step store read from disk
(`trajectory="stored"`), or, for the method Replay (`trajectory="replay"`), the last
epoch replayed from params_epoch_<K-1>.h5 and the step record, in memory or from
checkpoints within a memory budget (replay.py); the walk back below is the same code.

Replay_all (`window="all"`, replayed trajectory only) runs the same loop over every step of
every epoch, t = KT-1 down to 0, theta[t] replayed from params_epoch_0.h5. Instance j then
collects a term at each of its K appearances (its recorded augmentation seed at each):

    L_{-j} = sum_{t: j in S_t} eta_t/|S_t| <u_{t+1}, g(z_j; theta[t])>,
    u_{t+1} = (I - eta_{t+1} H_{t+1}) ... (I - eta_{KT-1} H_{KT-1}) u,

which is -dL(theta[T])/dw_j with w_j the weight of j's loss (and, with `bn_coupling`, of its
share of the batch statistics) in every step, at w = 1: the first-order change of the
validation loss when j is removed from the whole training (w_j: 1 -> 0), the counterfactual of
retraining from theta[0] without j (the drivers' -ra). Same sign convention as Hara's: with
one epoch the two windows coincide and so do the scores.

Beyond plain SGD (the record's recipe: momentum, weight decay, Adam; optimizer.py) the loop is
the same with u replaced by the adjoint of the step's state: each step feeds the graphs a vector
p (momentum: p = a_theta - a_v; Adam: built from m, s and G along the trajectory), adds
scale/|S_t| dQ/dw_j along p to L_{-j} (scale: eta_t, or 1 for Adam, whose rate is inside p) and
maps the adjoints back with H p (`optimizer.SgdAdjoint`, `optimizer.AdamAdjoint`; the recursions
are derived there). Still one H p per step. Hara and Replay take the state at each step
(Replay replays it from the window's start; Hara's rows keep it where the adjoint reads it,
Adam's m and s), Ours the final state throughout. Influence functions do not change: they use
the final parameters only.

Both quantities of a step come from the same passes: `mode="fd"` (default) central
differences along u on the network pinned to its ReLU/max-pool branches at theta
(`FDRetraceGraph`, about 2.7 training steps), `mode="exact"` one double-backward pass (`RetraceGraph`,
about 5); docs/performance.md has the measured agreement. With `retrace_u=False` u stays
the validation gradient: Ours without the Hessian terms, the control method
TracIn_last, sum over the last epoch's steps of eta_t/|S_t| <u, g(z_j; theta[T])>.

Batch norm (`bn_coupling`, default on): with batch norm in training mode, removing j
from S_t also changes the statistics every other sample of S_t is normalised with. With
`bn_coupling=True` the retrace graphs weight the batch statistics by the same per-sample
weights w as the loss (batch_norm.py), so that w_j = 0 is the removal of j and
<u, g(z_j; theta)> above becomes dQ/dw_j, Q = <u, grad_theta sum_i w_i l_i>, at
w_i = 1/|S_t|: the first-order change of <u, theta[t+1]> per unit of w_j, coupling
included (the same quantity without batch norm). `bn_coupling=False` is the per-sample
derivative with the statistics held fixed (the convention before this option).

Two keyword options of `retrace` reproduce departures of the published code
from this algorithm, for ablation only (validate_influence.py measures them;
both are off by default):
- `hu_over_batch`: u <- u - eta_t/|S_t| H_t u, a second division by |S_t|
  although H_t is already the Hessian of the batch MEAN loss;
- `sample_grads_alone`: <u, g(z_j)> from a forward of z_j alone in training
  mode, so batch norm normalises each sample by its own statistics instead
  of the batch's.
`as_published=True` (the methods Hara_published and Ours_published, published.py) turns both on,
with the exact double backward and nnabla's own batch norm, and for Hara reads theta[t] as the
published per-step cache leaves it (bundles of `bundle_size` steps holding their last step's theta).
"""
from __future__ import annotations

import time
from typing import Callable, List, Optional

import numpy as np

from datasets import Data
from models import cnn
from .graphs import (RETRACE_GRAPHS, GraphCache, LossGraph, on_device, to_device, to_host, trainable_params,
                     zero_grads)
from ..base.layout import optimizer_state_path, step_params_path, step_record_path
from . import optimizer
from .params import StepParams, StepParamsReader, load_optimizer_state
from .published import AS_PUBLISHED, BUNDLE_SIZE, BundledStepParams
from ..base.progress import bar as step_bar
from .replay import WINDOWS, ReplayedTrajectory, window_steps
from .step_record import StepRecord
from .train import load_model

RETRACE_METHODS = ("Hara", "Ours")
TRAJECTORIES = ("stored", "replay")  # where Hara's theta[t] comes from: its per-step store, or a replay
RETRACE_MODES = tuple(RETRACE_GRAPHS)  # ("exact", "fd")


def val_gradient(data: Data, batch_size: int = 500, net: Callable = cnn) -> List[np.ndarray]:
    """u = grad_theta of the mean validation loss, batch norm in test mode."""
    params = list(trainable_params().values())
    cache = GraphCache(data.image_shape, data.n_classes, test=True, net=net)
    n = len(data.val)
    zero_grads(params)
    for a in range(0, n, batch_size):
        b = min(a + batch_size, n)
        g = cache.get(b - a)
        g.feed(data.normalize(data.val.x[a:b]), data.val.y[a:b], 1.0 / n)
        g.loss.forward(clear_no_need_grad=True)
        g.loss.backward(clear_buffer=True)  # grads accumulate over chunks
    return [p.g.copy() for p in params]


def load_final_model(data: Data, run_dir: str, n_epochs: int, batch_size: int, net: Callable = cnn) -> None:
    """Create the model's variables and load theta[T], the parameters after the last epoch."""
    load_model(data, run_dir, n_epochs, batch_size, net)


def dots_one_at_a_time(graph: LossGraph, params: List, x: np.ndarray, y: np.ndarray,
                       u: List[np.ndarray]) -> np.ndarray:
    """<u, grad l(z_i)> with each sample forwarded alone through a batch-of-one graph."""
    out = np.zeros(len(y), np.float64)
    for i in range(len(y)):
        graph.feed(x[i:i + 1], y[i:i + 1], 1.0)
        graph.loss.forward(clear_no_need_grad=True)
        zero_grads(params)
        graph.loss.backward(clear_buffer=True)
        out[i] = sum(np.vdot(p.g.astype(np.float64), v) for p, v in zip(params, u))
    return out


def step_parameters(data: Data, run_dir: str, record: StepRecord, method: str, trajectory: str, batch_size: int,
                    net: Callable = cnn, replay_memory: Optional[int] = None,
                    progress: bool = True, window: str = "last") -> Optional[StepParams]:
    """Create the model's variables with theta[T] in them, and return what gives theta[t] of the last
    epoch: Hara's per-step store (`trajectory="stored"`), a `ReplayedTrajectory` that has replayed
    the epoch (`"replay"`: theta[T] is then the replayed one, checked against the stored), or None
    for Ours (theta[T] throughout). `window="all"` (replay only): theta[t] of every step of every epoch."""
    if method == "Hara" and trajectory == "replay":
        replayed = ReplayedTrajectory(data, run_dir, record, batch_size, net, replay_memory, progress, window)
        replayed.replay_window()
        return replayed
    load_final_model(data, run_dir, record.n_epochs, batch_size, net)
    return StepParamsReader(step_params_path(run_dir, record.n_epochs - 1)) if method == "Hara" else None


def final_state(run_dir: str, record: StepRecord, at_step: Optional[StepParams]) -> dict:
    """The optimizer state after the last step: the replay's own (Replay, Replay_all), else the stored
    optimizer_state_epoch_<K>.npz (Hara, Ours)."""
    if isinstance(at_step, ReplayedTrajectory):
        return at_step.final_state
    return load_optimizer_state(optimizer_state_path(run_dir, record.n_epochs))


def retrace(data: Data, run_dir: str, method: str, batch_size: int, progress: bool = True,
            net: Callable = cnn, *, mode: str = "fd", bn_coupling: bool = True, retrace_u: bool = True,
            hu_over_batch: bool = False, sample_grads_alone: bool = False,
            on_step: Optional[Callable] = None, resident: Optional[bool] = None, trajectory: str = "stored",
            replay_memory: Optional[int] = None, on_replay: Optional[Callable[[dict], None]] = None,
            window: str = "last", as_published: bool = False, bundle_size: int = BUNDLE_SIZE) -> np.ndarray:
    """Influence of every training instance, shape (n_train,): last-epoch setting (`window="last"`),
    or, with `trajectory="replay"`, all epochs (`window="all"`, the method Replay_all).

    `mode`: "fd" or "exact" (module docstring).
    `bn_coupling`: the per-sample derivative includes the change of the batch-norm
    statistics that removing the sample causes (module docstring).
    `retrace_u=False` skips the update u <- u - eta_t H_t u (TracIn_last with method Ours).
    `hu_over_batch` and `sample_grads_alone`: the published code's variants (module docstring); ablations only.
    `on_step(hu, ug, u)`, if given, is called after every step with its H u, its
    <u, g_j> and the updated u (benchmarks and accuracy checks use it).
    `resident`: keep u, H u and (fd) theta and the branch pins on the device across steps, only the
    batch going in and the per-sample products coming out; default: when the context is a GPU's.
    On the CPU the default host path is bit-for-bit today's; the resident one agrees with it up
    to float32 rounding (tests/test_retrace.py).
    `trajectory` (method Hara): theta[t] from the per-step store ("stored") or replayed ("replay",
    the method Replay; on the CPU the same scores bit for bit), within `replay_memory` bytes of
    parameter copies (None: no limit); `on_replay(report)`, if given, receives the replay's
    report at the end (replay.ReplayedTrajectory.report, with the retrace's wall seconds).
    `window`: the steps walked back through, "last" (the last epoch) or "all" (every step of every
    epoch, theta[T] back to theta[0]; only with `trajectory="replay"`): the same loop either way.
    `as_published`: the published code's computation (published.py; `mode`, `bn_coupling`, `hu_over_batch` and
    `sample_grads_alone` are then its), for Hara with theta[t] from bundles of `bundle_size` steps.
    """
    if as_published:
        assert trajectory == "stored", trajectory
        mode, bn_coupling, hu_over_batch, sample_grads_alone = (AS_PUBLISHED[k] for k in (
            "mode", "bn_coupling", "hu_over_batch", "sample_grads_alone"))
    assert method in RETRACE_METHODS and mode in RETRACE_MODES and trajectory in TRAJECTORIES, \
        (method, mode, trajectory)
    assert trajectory == "stored" or method == "Hara", (method, trajectory)
    assert window in WINDOWS and (window == "last" or trajectory == "replay"), (window, trajectory)
    started = time.perf_counter()
    record = StepRecord.load(step_record_path(run_dir))
    assert not as_published or record.recipe.plain, "the published computation is plain SGD's (optimizer.checked)"
    at_step = step_parameters(data, run_dir, record, method, trajectory, batch_size, net, replay_memory, progress,
                              window)
    steps = window_steps(record, window)
    if as_published and at_step is not None:
        at_step = BundledStepParams(at_step, len(steps), bundle_size)
    u = val_gradient(data, net=net)
    if (on_device() if resident is None else resident) and not record.recipe.retrace_reads_state:
        u = to_device(u)  # (Adam's adjoint runs on the host)
    params = list(trainable_params().values())

    graphs = {}
    alone = LossGraph(1, data.image_shape, data.n_classes, test=False, net=net) if sample_grads_alone else None
    influence = np.zeros(len(data.train), np.float64)
    names = list(trainable_params())
    adj = optimizer.adjoint(record.recipe, u, names, hessian=retrace_u, hu_over_batch=hu_over_batch)
    # Adam's adjoint reads the state before and after each step (Ours: the final state for both)
    after = final_state(run_dir, record, at_step) if adj.reads_state else {}
    desc = f"retrace {method}" + ("_published" if as_published else "")
    for k, t in enumerate(step_bar(steps[::-1], desc=desc, disable=not progress, unit="step")):
        before = after
        if at_step is not None:
            before = at_step.load(len(steps) - 1 - k)  # theta[t]: read from the store, or replayed
        # Ours keeps theta[T]: training-mode forwards only move the batch-norm
        # running statistics, which training-mode outputs never read.
        idx, seeds = record.batch(t)
        if len(idx) not in graphs:
            graphs[len(idx)] = RETRACE_GRAPHS[mode](len(idx), data.image_shape, data.n_classes, params, net,
                                                    bn_coupling=bn_coupling)
        x, y = data.train_batch(idx, seeds)
        lr = float(record.lr[t])
        p, scale = adj.direction(int(t), lr, before, after)
        hu, ug = graphs[len(idx)].run(x, y, p)
        if alone is not None:
            ug = dots_one_at_a_time(alone, params, x, y, to_host(p))
        influence[idx] += scale / len(idx) * ug
        adj.back(to_host(hu) if adj.reads_state else hu, len(idx))
        after = before
        if on_step is not None:
            on_step(to_host(hu), ug, to_host(adj.u))
    if on_replay is not None and isinstance(at_step, ReplayedTrajectory):
        on_replay(dict(at_step.report(), retrace_wall_s=round(time.perf_counter() - started, 3)))
    return influence
