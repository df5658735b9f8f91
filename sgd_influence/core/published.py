"""The published code's own computation of Hara and Ours: the methods Hara_published and Ours_published.

The paper's figures come from the published scripts (sony/nnabla-examples,
`responsible_ai/data_cleansing`, function `infl_sgd` of `sgd_influence/infl.py`, with the
per-step cache of `save_all_params` in `sgd_influence/train.py`). `infl.retrace` computes what
the papers describe; with `as_published=True` it computes what those scripts compute, on this
project's training (its step record, its augmentation seeds, its checkpoints). The walk back is
the same loop (infl.py); each departure of the published code is kept:

1. **u update.** `u[key].d -= lr * param.g / idx.size` (the end of infl_sgd's step loop): the
   Hessian-vector product of the batch MEAN loss is divided by |S_t| a second time,
       u <- u - eta_t / |S_t| * H_t u          (the papers: u <- u - eta_t H_t u)
   so the Hessian term is |S_t| times too small (`hu_over_batch`).
2. **Per-sample gradients** at batch size 1 (`adjust_batch_size(infl_model, solver, 1, ...)`, the
   inner loop over `zip(idx, seeds)`), batch norm in training mode: each image is normalised by its
   own statistics over its spatial positions, not by its batch's (`sample_grads_alone`); the image
   is the one the step saw (the step's recorded augmentation seed). The score adds
       L_{-j} += eta_t / |S_t| * <u, grad l(z_j; theta)>     (`infl += lr * (u * g).sum() / idx.size`).
3. **H_t u by double backward** of the batch's mean loss in training mode (`nn.grad` of the loss, then
   the backward of sum <u, grad>): the `exact` retrace graph with nnabla's own batch norm, whose
   statistics are those of the whole batch (so the `--retrace` and `--bn-coupling` options do not
   apply: `mode="exact"`, `bn_coupling=False`).
4. **u** is the gradient of the mean validation loss at theta[T] with batch norm in test mode
   (`compute_gradient` with `test=True`, the loss summed and divided by n): `infl.val_gradient`.
5. **Hara's theta[t]** (`select_modelfile_for_infl` reads `model_step%04d.h5` of the step): the files
   `save_all_params` writes. It keeps `nn.get_parameters(grad_only=False).copy()` per step, a copy of
   the dictionary of parameter variables, not of their arrays, and writes the files of a bundle of
   `bundle_size` steps (200 in `train`) when the bundle is full or the epoch ends. By then every
   variable holds the parameters of that moment, before the bundle's last step: every file of the
   bundle of step i holds theta[b(i)] with
       b(i) = min((i // bundle_size + 1) * bundle_size - 1, T - 1)     (i, T: positions in the epoch).
   Published "Hara" is piecewise-constant theta: with T <= bundle_size (the demo's T = 125) every step
   uses theta[T-1], one step from Ours' theta[T]; at the paper's T = 1,563 (MNIST, batch 32) eight
   values. `bundle_size=1` is the cache without the quirk (every step its own theta[t]).
   Ours uses theta[T] (`final_model.h5`) at every step, as published.

The sign convention is this project's and the published one: L_{-j} is the predicted change of the
validation loss if j is removed; the most negative are removed first (the published CSV is sorted
ascending and its driver removes from the top). `tools/published_oracle.py` runs the published
`infl_sgd` itself on a tiny training of this project and `tests/test_published.py` checks that these
methods reproduce its output.
"""
from __future__ import annotations

from .params import StepParams

# save_all_params' default bundle in the published train(): 200 steps per bundle of files.
BUNDLE_SIZE = 200
# infl.retrace's options that make its loop the published one (points 1-3 above).
AS_PUBLISHED = dict(mode="exact", bn_coupling=False, hu_over_batch=True, sample_grads_alone=True)


def bundle_end(i: int, n_steps: int, bundle_size: int) -> int:
    """Position (in the epoch) of the step whose parameters the published cache holds for step i:
    the last step of i's bundle of `bundle_size` steps, or the epoch's last step (point 5 above)."""
    if bundle_size < 1:
        raise ValueError(f"bundle_size must be positive, got {bundle_size}")
    return min((i // bundle_size + 1) * bundle_size - 1, n_steps - 1)


class BundledStepParams:
    """theta[t] as the published per-step cache leaves it: `load(i)` puts theta[bundle_end(i)] of the
    wrapped store (Hara's per-step store, whose rows are the real theta[t]) into the model."""

    def __init__(self, steps: StepParams, n_steps: int, bundle_size: int = BUNDLE_SIZE):
        bundle_end(0, n_steps, bundle_size)  # validates bundle_size
        self.steps, self.n_steps, self.bundle_size = steps, n_steps, bundle_size

    def load(self, i: int) -> None:
        self.steps.load(bundle_end(i, self.n_steps, self.bundle_size))
