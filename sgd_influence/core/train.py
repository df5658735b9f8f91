"""Phase 1: SGD training that records every step so it can be replayed.

theta[t+1] = theta[t] - eta_t / |S_t| * sum_{i in S_t} grad l(z_i; theta[t])

by default (plain SGD, the published code's); with momentum, weight decay or Adam each step is
nnabla's solver of that recipe (optimizer.py), and a schedule sets eta_t (recorded per step).

Writes to the run folder `OUT/train/seed_<k>/`:
  step_record.npz            the step record (see step_record.py)
  params_epoch_<e>.h5        parameters after epoch e: 0 (for --retrain_all), K-1, K
  optimizer_state_epoch_<e>.npz  a recipe with state (momentum, Adam): its state after epochs K-1, K
  step_params_epoch_<K-1>.f32  Hara only: theta[t] of every step of the last epoch (Adam: and m, s)
  cache_size.json            measured bytes of what each method keeps for its retrace
  train_log.csv              mean training loss per epoch
"""
from __future__ import annotations

import json
import os
from typing import Callable, Optional, Sequence

import numpy as np
import nnabla as nn

from datasets import Data
from models import cnn
from ..base.errors import UserError
from .graphs import GraphCache, LossGraph, trainable_params
from ..base.layout import (checkpoint_path, optimizer_state_path, step_params_path, step_record_path, write_json,
                           write_text)
from .optimizer import PLAIN, Recipe, learning_rates, set_solver_state, solver_state, state_floats
from .params import (StepParamsWriter, load_checkpoint, load_optimizer_state, save_checkpoint,
                     save_optimizer_state)
from ..base.progress import bar as step_bar
from .step_record import StepRecord, epoch_batches


def init_model(data: Data, seed: int, batch_size: int, net: Callable = cnn) -> GraphCache:
    """Fresh, seeded parameters and a cache of training-mode graphs."""
    nn.clear_parameters()
    nn.random.prng = np.random.RandomState(seed)
    cache = GraphCache(data.image_shape, data.n_classes, test=False, net=net)
    cache.get(batch_size)  # creates the parameters
    return cache


def perturb_half_ulp(key: Sequence[int]) -> None:
    """Move each trainable parameter, with probability 1/2, to its float32 neighbour above or below
    (seeded by `key`): half an ulp on average, the size of one float32 rounding."""
    rng = np.random.default_rng(list(key))
    for v in trainable_params().values():
        d = np.asarray(v.d, np.float32)
        move = rng.random(d.shape) < 0.5
        toward = np.where(rng.random(d.shape) < 0.5, np.float32(-np.inf), np.float32(np.inf))
        v.d = np.where(move, np.nextafter(d, toward), d)


def load_model(data: Data, run_dir: str, epoch: int, batch_size: int, net: Callable = cnn) -> GraphCache:
    """The model's variables (as `init_model`), then the values of the run's checkpoint after
    `epoch` epochs; the training-mode graphs."""
    cache = init_model(data, seed=0, batch_size=batch_size, net=net)  # creates the variables
    load_checkpoint(checkpoint_path(run_dir, epoch))
    return cache


class SGD:
    """The recorded training's optimizer on the recorded batches; one step = one recorded batch.
    Plain SGD by default; `recipe` (optimizer.Recipe, the record's): momentum, weight decay, Adam.

    `step` takes the batch's kept indices and the recorded batch size: a
    retraining that removes instances still divides by the full |S_t|.
    `replay(..., weights=w)` instead weights each instance's loss by a real w_i (the
    derivative checks of tests/test_replay_all.py).
    """

    def __init__(self, cache: GraphCache, data: Data, recipe: Recipe = PLAIN):
        self.cache, self.data, self.recipe = cache, data, recipe
        self.solver = recipe.solver()
        self.solver.set_parameters(trainable_params())
        self._weighted: dict = {}  # batch size -> LossGraph with batch-norm statistics weighted by w

    def state(self) -> dict:
        """Copies of the optimizer state ({} for plain SGD)."""
        return solver_state(self.solver, self.recipe)

    def set_state(self, arrays: Optional[dict], step: int) -> None:
        """The optimizer state before recorded step `step` (None: the fresh one, zeros)."""
        set_solver_state(self.solver, self.recipe, arrays, step)

    def state_bytes(self) -> int:
        """float32 bytes of the optimizer state (0 for plain SGD)."""
        return 4 * state_floats(self.solver, self.recipe)

    def _update(self, lr: float) -> None:
        """theta (and the state) from the gradients: weight decay added to them first (nnabla's
        solver.weight_decay), then the solver's step at rate lr."""
        if self.recipe.weight_decay:
            self.solver.weight_decay(self.recipe.weight_decay)
        self.solver.set_learning_rate(lr)
        self.solver.update()

    def weighted_step(self, indices: np.ndarray, seeds: np.ndarray, lr: float, batch_size: int,
                      w: np.ndarray) -> float:
        """One step on the loss sum_i w_i l_i / batch_size, the training-mode batch norm's statistics
        weighted by the same w (batch_norm.py: w_j = 0 is the removal of j, as in the retrace with
        bn_coupling); the running statistics are not updated."""
        n = len(indices)
        if n not in self._weighted:
            self._weighted[n] = LossGraph(n, self.data.image_shape, self.data.n_classes, test=False,
                                          net=self.cache.net, bn_coupling=True)
        g = self._weighted[n]
        x, y = self.data.train_batch(indices, seeds)
        g.feed(x, y, 1.0)
        g.w.d = np.asarray(w, np.float64) / batch_size
        g.loss.forward(clear_no_need_grad=True)
        return self._descend(g, lr)

    def step(self, indices: np.ndarray, seeds: np.ndarray, lr: float, batch_size: int) -> float:
        """One SGD step on the instances `indices`, the gradient divided by `batch_size`. A batch of one
        instance leaves batch norm's running statistics as they were: nnabla updates the running variance
        with the unbiased batch variance, n/(n-1) times the biased one, NaN at n = 1, which would make
        every later test-mode output NaN (a retraining that removes all but one instance of a batch,
        or a training set of k * batch_size + 1)."""
        if len(indices) == 0:  # every instance of the batch was removed
            if not self.recipe.plain:  # the state still moves and the decay still applies: g = 0
                self.solver.zero_grad()
                self._update(lr)
            return 0.0
        params = nn.get_parameters(grad_only=False) if len(indices) == 1 else {}
        running = {k: v.d.copy() for k, v in params.items() if not v.need_grad}
        g = self.cache.get(len(indices))
        x, y = self.data.train_batch(indices, seeds)
        g.feed(x, y, 1.0 / batch_size)
        g.loss.forward(clear_no_need_grad=True)
        for k, v in running.items():  # training-mode forwards update them
            params[k].d = v
        return self._descend(g, lr) * batch_size / len(indices)

    def _descend(self, g, lr: float) -> float:
        """After g's forward: its loss (FloatingPointError when not finite), its backward and one update."""
        loss = float(g.loss.d)
        if not np.isfinite(loss):
            raise FloatingPointError
        self.solver.zero_grad()
        g.loss.backward(clear_buffer=True)
        self._update(lr)
        return loss

    def replay(self, record: StepRecord, t: int, keep: np.ndarray | None = None,
               weights: np.ndarray | None = None) -> float:
        """Redo recorded step t, skipping instances where `keep` is False; with `weights` (one real
        per training instance, instead of `keep`) every instance of the batch stays, its loss and its
        share of the batch statistics weighted by weights[i] (`weighted_step`)."""
        idx, seeds = record.batch(t)
        full_size = len(idx)
        if keep is not None:
            mask = keep[idx]
            idx, seeds = idx[mask], seeds[mask]
        try:
            if weights is not None:
                assert keep is None
                return self.weighted_step(idx, seeds, float(record.lr[t]), full_size, weights[idx])
            return self.step(idx, seeds, float(record.lr[t]), full_size)
        except FloatingPointError:
            e = int(record.epoch[t])
            raise UserError(f"non-finite training loss at epoch {e + 1}, step {t - record.steps_of_epoch(e)[0] + 1}; "
                            f"lower the learning rate (--lr)") from None


def trainer_at(data: Data, run_dir: str, record: StepRecord, epoch: int, batch_size: int,
               net: Callable = cnn) -> SGD:
    """The model and the record's optimizer as they were after `epoch` epochs: the checkpoint's
    parameters and, for a recipe with state, its optimizer state (zero after epoch 0) with the
    update counter at the epoch's first step."""
    sgd = SGD(load_model(data, run_dir, epoch, batch_size, net), data, record.recipe)
    load_state_at(sgd, run_dir, record, epoch)
    return sgd


def load_state_at(sgd: SGD, run_dir: str, record: StepRecord, epoch: int) -> None:
    """The optimizer state after `epoch` epochs into `sgd` (nothing for plain SGD)."""
    if record.recipe.stateful:
        arrays = None if epoch == 0 else load_optimizer_state(optimizer_state_path(run_dir, epoch))
        sgd.set_state(arrays, record.first_step(epoch))


def replay_steps(sgd: SGD, record: StepRecord, steps: Sequence[int], keep: Optional[np.ndarray] = None,
                 before: Optional[Callable[[int], None]] = None, weights: Optional[np.ndarray] = None) -> None:
    """Redo the recorded steps `steps` in order (`SGD.replay`; with nothing removed training
    itself, bit for bit on the CPU). `before(i)`, if given, is called with the model at theta
    before steps[i] (a store keeps theta[t] there). `weights`: real per-instance loss weights
    (`SGD.replay`) instead of `keep`."""
    for i, t in enumerate(steps):
        if before is not None:
            before(i)
        sgd.replay(record, t, keep, weights)


def train(data: Data, run_dir: str, seed: int, epochs: int, batch_size: int, lr: float,
          keep_step_params: bool, progress: bool = True, net: Callable = cnn,
          augment: bool = True, perturb_init: Optional[Sequence[int]] = None, recipe: Recipe = PLAIN,
          lr_schedule: str = "constant") -> None:
    """Train from a seeded initialisation and write the run folder: plain SGD at rate `lr` by default,
    else `recipe` (momentum, weight decay, Adam: optimizer.py) at the rates of `lr_schedule`
    (optimizer.learning_rates; recorded per step). `perturb_init`: a key for `perturb_half_ulp`
    applied to theta[0] (a twin of the seed's training that differs from it by rounding only;
    batches and augmentation are the seed's)."""
    if batch_size > len(data.train):
        raise UserError(f"batch size {batch_size} is larger than the training set ({len(data.train)}); lower -bs")
    cache = init_model(data, seed, batch_size, net)
    if perturb_init is not None:
        perturb_half_ulp(perturb_init)
    sgd = SGD(cache, data, recipe)
    save_checkpoint(checkpoint_path(run_dir, 0))
    rng = np.random.default_rng([seed, 1])
    ep, batches, seeds = [], [], []
    for e in range(epochs):
        b, s = epoch_batches(rng, len(data.train), batch_size, augment)
        ep += [e] * len(b)
        batches += b
        seeds += s
    record = StepRecord.from_batches(ep, learning_rates(lr, lr_schedule, ep, epochs), batches, seeds, recipe)

    log = ["epoch,train_loss"]
    bar = step_bar(total=record.n_steps, desc=f"train seed {seed}", disable=not progress, unit="step")
    for e in range(epochs):
        last = e == epochs - 1
        # Hara's rows: theta[t], and the state where its adjoint reads it (Adam's m, s)
        writer = StepParamsWriter(step_params_path(run_dir, e), sgd.state if recipe.retrace_reads_state else None) \
            if keep_step_params and last else None
        losses = []
        for t in record.steps_of_epoch(e):
            if writer:
                writer.append()  # theta[t]: the parameters this step's gradient is taken at
            losses.append(sgd.replay(record, t))
            bar.update()
        if writer:
            writer.close()
        log.append(f"{e + 1},{np.mean(losses):.6f}")
        bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        if e + 1 >= epochs - 1:
            save_checkpoint(checkpoint_path(run_dir, e + 1))
            if recipe.stateful:
                save_optimizer_state(optimizer_state_path(run_dir, e + 1), sgd.state())
    bar.close()
    write_text(os.path.join(run_dir, "train_log.csv"), "\n".join(log) + "\n")
    write_cache_size(run_dir, epochs, keep_step_params, record, sgd.state_bytes())
    record.save(step_record_path(run_dir))  # last: marks the run as complete


def write_cache_size(run_dir: str, epochs: int, hara: bool, record: StepRecord, state_bytes: int = 0) -> None:
    """Bytes each method must keep for its retrace, measured on disk (the record: its `.npz` bytes).

    Ours: theta[T] (params_epoch_<K>.h5). Hara: the per-step store theta[t] of the last epoch.
    Replay: theta[K-1] and theta[T] (params_epoch_<K-1>.h5, params_epoch_<K>.h5) and the last
    epoch's step record, from which it recomputes theta[t] (core/replay.py); the run's record
    file holds every epoch (`step_record_file_bytes`). Replay_all: theta[0], theta[T] and that
    whole record (`replay_all_bytes`).
    A recipe with state (`state_bytes` > 0: momentum's v, Adam's m and s) adds: to Replay the state
    at K-1 (its replay starts there) and at K (its self-check), to Replay_all the state at K (at 0
    it is zero), to Ours (Adam only) the final state, to Hara's rows (Adam only) the state of every
    step; `optimizer` and `optimizer_state_bytes_float32` (one copy of the state) record it. A
    plain-SGD run's file is the same as before the option."""
    n_params = sum(v.size for v in nn.get_parameters(grad_only=False).values())
    start, final = (os.path.getsize(checkpoint_path(run_dir, e)) for e in (epochs - 1, epochs))
    states = {e: os.path.getsize(optimizer_state_path(run_dir, e)) if state_bytes and e > 0 else 0  # zero at 0
              for e in (epochs - 1, epochs)}
    last_record = len(record.epoch_record(epochs - 1).to_bytes())
    ours_state = states[epochs] if record.recipe.retrace_reads_state else 0
    info = {"param_count": int(n_params), "param_bytes_float32": int(n_params) * 4, "ours_bytes": final + ours_state,
            "replay_bytes": start + final + last_record + states[epochs - 1] + states[epochs],
            "replay_parts": {"checkpoint_start": start, "checkpoint_final": final,
                             "step_record_last_epoch": last_record},
            "step_record_file_bytes": len(record.to_bytes()),
            "replay_all_bytes": os.path.getsize(checkpoint_path(run_dir, 0)) + final + len(record.to_bytes())
            + states[epochs],
            "steps_per_epoch": len(record.steps_of_epoch(epochs - 1))}
    if state_bytes:
        info["replay_parts"].update(optimizer_state_start=states[epochs - 1], optimizer_state_final=states[epochs])
        info.update(optimizer=json.loads(record.recipe.to_json()), optimizer_state_bytes_float32=int(state_bytes))
    if hara:
        size = os.path.getsize(step_params_path(run_dir, epochs - 1))
        row = 4 * int(n_params) + (int(state_bytes) if record.recipe.retrace_reads_state else 0)
        info.update(hara_bytes=size, hara_steps=size // row)
    write_json(os.path.join(run_dir, "cache_size.json"), info)
