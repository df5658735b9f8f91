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
Ours at theta = theta[T] (final parameters only). Both quantities of a step come
from the same passes: `mode="fd"` (default) central differences along u on the
network pinned to its ReLU/max-pool branches at theta (`FDRetraceGraph`, about
2.5 training steps), `mode="exact"` one double-backward pass (`RetraceGraph`,
about 5); README, Performance, has the measured agreement.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import numpy as np
from tqdm import tqdm

from datasets import Data
from models import cnn
from .graphs import RETRACE_GRAPHS, GraphCache, trainable_params, zero_grads
from .params import StepParamsReader, checkpoint_path, load_checkpoint, step_params_path
from .step_record import StepRecord, step_record_path
from .train import init_model

RETRACE_METHODS = ("Hara", "Ours")
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


def retrace(data: Data, run_dir: str, method: str, batch_size: int, progress: bool = True,
            net: Callable = cnn, mode: str = "fd", on_step: Optional[Callable] = None) -> np.ndarray:
    """Influence of every training instance (last-epoch setting), shape (n_train,).

    `on_step(hu, ug, u)`, if given, is called after every step with its H u, its
    <u, g_j> and the updated u (benchmarks and accuracy checks use it).
    """
    assert method in RETRACE_METHODS and mode in RETRACE_MODES, (method, mode)
    record = StepRecord.load(step_record_path(run_dir))
    last = record.n_epochs - 1
    init_model(data, seed=0, batch_size=batch_size, net=net)  # creates the variables; values loaded next
    load_checkpoint(checkpoint_path(run_dir, record.n_epochs))
    u = val_gradient(data, net=net)
    params = list(trainable_params().values())
    stored = StepParamsReader(step_params_path(run_dir, last)) if method == "Hara" else None

    graphs = {}
    influence = np.zeros(len(data.train), np.float64)
    steps = record.steps_of_epoch(last)
    for k, t in enumerate(tqdm(steps[::-1], desc=f"retrace {method}", disable=not progress, unit="step")):
        if stored is not None:
            stored.load(len(steps) - 1 - k)  # theta[t]
        # Ours keeps theta[T]: training-mode forwards only move the batch-norm
        # running statistics, which training-mode outputs never read.
        idx, seeds = record.batch(t)
        if len(idx) not in graphs:
            graphs[len(idx)] = RETRACE_GRAPHS[mode](len(idx), data.image_shape, data.n_classes, params, net)
        x, y = data.train_batch(idx, seeds)
        hu, ug = graphs[len(idx)].run(x, y, u)
        lr = float(record.lr[t])
        influence[idx] += lr / len(idx) * ug
        u = [ui - lr * h for ui, h in zip(u, hu)]
        if on_step is not None:
            on_step(hu, ug, u)
    return influence
