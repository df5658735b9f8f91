"""Replay, Replay_all: theta[t] of the last epoch (or of all epochs) recomputed, not stored (beyond both papers).

Hara's retrace needs theta[t] at every step t of the last epoch; Hara stores them
(|theta| x T). Training here is a deterministic function of theta[K-1]
(params_epoch_<K-1>.h5) and the step record (batches, learning rates, augmentation
seeds), so the retrace can recompute them instead -- on the CPU bit for bit, so its
scores are Hara's byte for byte -- keeping only theta[K-1], theta[T] and the record on
disk (Ours keeps theta[T] and the record).

`ReplayedTrajectory` is a `params.StepParams`, like Hara's reader of the per-step store:
`infl.retrace` asks it for theta[t] with `load(i)`, i = T-1 down to 0 (i: the step's
position in the epoch). Nothing per step is written to disk; rows of theta[t] (every
parameter, batch-norm statistics included, as float32: `params.ParamRows`) are held in
memory, at most M of them, M = the memory budget // the bytes of one row:

- In memory (M >= T): one forward replay theta[K-1] -> theta[T] keeps all T rows; the walk
  back reads them. Copies held T; training steps replayed T.
- Checkpointed (M < T): the first replay keeps the rows of the last L steps (the tail) and
  c checkpoints at the starts of c segments covering the H = T - L steps before them
  (lengths ceil(H/c) or floor(H/c)); the walk back reads the tail, then re-replays each
  segment from its checkpoint into rows (freeing the rows it has passed). With X = T - M,
  c = the c >= 1 minimising c + ceil(X/c) and L = M - c:
      copies held       = max(c + L, c + ceil(H/c) - 1) = M                 (c + ceil(X/c) <= M)
      steps replayed    = T + (H - c) = 2T - M
  So in both cases: copies held = min(T, M), steps replayed = 2T - min(T, M), i.e. T - M
  recomputed beyond the first pass. That is the least possible: theta[T] (for u) needs the
  T steps of the first pass, after which at most M of the T states are held and each of
  the other T - M must be recomputed by at least one step. The scheme needs
  c + ceil((T - M)/c) <= M for some c, i.e. M >= `minimum_copies(T)`, about 2 sqrt(T)
  (sqrt(T) checkpoints of sqrt(T)-step segments: the classic sqrt(T) scheme is the case
  M = its minimum). Binomial checkpointing (Griewank & Walther's revolve) would extend the
  range below that minimum, at more than 2T steps; at the paper's scale (MNIST, T = 1,563)
  the minimum is 78 copies, 96 MB of this network: not worth a tree here. A budget below
  the minimum is a UserError naming the --replay-memory to give.

Window "all" (the method Replay_all): the same scheme over the whole training, its K*T steps
read as one window (T above := K*T), replayed from theta[0] (params_epoch_0.h5, which training
already keeps). Kept on disk: params_epoch_0.h5, params_epoch_<K>.h5 (the self-check) and the
step record of every epoch; recomputed: theta[t] of every step, within the same budget M, so
copies held = min(KT, M) and steps replayed = 2KT - min(KT, M) (M >= minimum_copies(KT),
about 2 sqrt(KT)). Nothing per step is written to disk.

Beyond plain SGD (optimizer.py) the replay starts from the optimizer state too (momentum's v,
Adam's m and s, at K-1: optimizer_state_epoch_<K-1>.npz; at 0: zero), and every row holds the
state beside theta[t] (a checkpoint restarts a segment from it; Adam's adjoint reads it): a row
is |theta| plus the state's floats, and the budget counts rows of that size. The self-check then
compares the replayed final state with optimizer_state_epoch_<K>.npz as well.

Self-check: after the first replay the model holds the recomputed theta[T], which is
compared with the stored params_epoch_<K>.h5. On the CPU they are equal; where they are
not (a GPU without deterministic kernels), one warning gives the largest relative
difference, `report()` records it, and the retrace still uses the replayed trajectory
throughout: u is taken at the replayed theta[T], so the scores are those of one
consistent trajectory.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
import nnabla as nn

from datasets import Data
from models import cnn
from ..base.errors import UserError, warn
from ..base.layout import checkpoint_path, optimizer_state_path
from ..base.progress import bar as step_bar
from .params import ParamRows, load_checkpoint, load_optimizer_state, row_bytes
from .step_record import StepRecord
from .train import replay_steps, trainer_at


# ------------------------------------------------------------------- the plan
def _best_segments(x: int) -> Tuple[int, int]:
    """(c, c + ceil(x / c)) for the c >= 1 minimising c + ceil(x / c) (the smallest such c); x >= 1."""
    r = math.isqrt(x)
    return min(((c, c + -(-x // c)) for c in range(max(1, r - 1), r + 3)), key=lambda p: (p[1], p[0]))


def minimum_copies(steps: int) -> int:
    """The fewest rows M with which the scheme replays `steps` steps: M = T, or c + ceil((T-M)/c) <= M."""
    lo, hi = 1, steps  # M - min_c(c + ceil((T - M)/c)) increases with M: bisect
    while lo < hi:
        m = (lo + hi) // 2
        if _best_segments(steps - m)[1] <= m:
            hi = m
        else:
            lo = m + 1
    return lo


@dataclass(frozen=True)
class ReplayPlan:
    """Which rows the first replay keeps: checkpoints at the segment starts, and the tail."""
    steps: int                     # T
    copies: int                    # M, the rows the budget allows
    checkpoints: Tuple[int, ...]   # positions 0 = s_0 < s_1 < ... < H: the segments' first steps
    tail: int                      # L: positions T-L..T-1 are kept from the first replay

    @property
    def in_memory(self) -> bool:
        return self.tail == self.steps

    @property
    def held(self) -> int:
        """The most rows held at once: max(c + L, c + longest segment - 1) (= min(T, M))."""
        head = self.steps - self.tail
        bounds = list(self.checkpoints) + [head]
        longest = max((b - a for a, b in zip(bounds, bounds[1:])), default=1)
        return max(len(self.checkpoints) + self.tail, len(self.checkpoints) + longest - 1)

    @property
    def steps_replayed(self) -> int:
        """Training steps replayed in all: T + (H - c) (= 2T - min(T, M))."""
        return self.steps + (self.steps - self.tail - len(self.checkpoints))


def plan(steps: int, copies: int, bytes_per_copy: int = 0, what: str = "of the last epoch") -> ReplayPlan:
    """The plan for T = `steps` steps with at most M = `copies` rows (module docstring); a budget
    below `minimum_copies` is a UserError (`bytes_per_copy` sizes its message)."""
    if copies >= steps:
        return ReplayPlan(steps, copies, (), steps)
    need = minimum_copies(steps)
    if copies < need:
        mb = lambda k: f"{k * bytes_per_copy / 1e6:.4g} MB"  # noqa: E731
        raise UserError(f"the Replay memory budget holds {copies} copies of the parameters ({mb(1)} each), "
                        f"fewer than the {need} needed to replay the {steps} steps {what}; "
                        f"give --replay-memory {math.ceil(need * bytes_per_copy / 1e6)} or more (MB)")
    c, _ = _best_segments(steps - copies)
    tail = copies - c
    head = steps - tail
    return ReplayPlan(steps, copies, tuple(head * k // c for k in range(c)), tail)


# ------------------------------------------------------------ the trajectory
WINDOWS = ("last", "all")  # the steps a retrace walks back through: the last epoch, or the whole training


def window_start(record: StepRecord, window: str) -> int:
    """The epoch whose starting checkpoint params_epoch_<e>.h5 opens the window: K-1 ("last") or 0 ("all")."""
    assert window in WINDOWS, window
    return record.n_epochs - 1 if window == "last" else 0


def window_steps(record: StepRecord, window: str) -> np.ndarray:
    """The window's steps in training order: the last epoch's ("last") or all K*T ("all")."""
    return record.steps_of_epoch(record.n_epochs - 1) if window == "last" else np.arange(record.n_steps)


class ReplayedTrajectory:
    """theta[t] of a window of steps by replay from the window's starting checkpoint and the step
    record (a `params.StepParams`; module docstring): the last epoch from params_epoch_<K-1>.h5
    (`window="last"`, the method Replay), or the whole training, all K epochs as one window of
    K*T steps, from params_epoch_0.h5 (`window="all"`, the method Replay_all; the same scheme with
    T read as K*T: copies held min(K*T, M), steps replayed 2KT - min(K*T, M)). `replay_window()`
    first, then `load(i)` for i = (steps in the window) - 1 down to 0. Counts the rows held
    (`rows.peak`) and the steps replayed."""

    def __init__(self, data: Data, run_dir: str, record: StepRecord, batch_size: int, net: Callable = cnn,
                 memory_bytes: Optional[int] = None, progress: bool = True, window: str = "last"):
        """Create the model's variables with theta at the window's start in them. `memory_bytes`:
        the budget for rows (None: no limit, all in memory)."""
        self.run_dir, self.record, self.progress, self.window = run_dir, record, progress, window
        self.last = record.n_epochs - 1
        self.steps = window_steps(record, window)
        self.sgd = trainer_at(data, run_dir, record, window_start(record, window), batch_size, net)
        self.row_bytes = row_bytes() + self.sgd.state_bytes()  # theta[t] and the optimizer state before step t
        self.memory_bytes = memory_bytes
        copies = len(self.steps) if memory_bytes is None else int(memory_bytes // self.row_bytes)
        self.plan = plan(len(self.steps), copies, self.row_bytes,
                         "of the last epoch" if window == "last" else f"of all {record.n_epochs} epochs")
        self.rows = ParamRows()
        self.steps_replayed, self.replay_seconds = 0, 0.0
        self.final_check: dict = {}
        self.final_state: dict = {}  # the optimizer state after the window's last step (replayed)

    def _replay(self, first: int, stop: int, keep: Callable[[int], bool], progress: bool = False) -> None:
        """Replay positions first..stop-1 from the model's theta[first], keeping row i (theta before
        position i's step) where keep(i)."""
        start = time.perf_counter()

        def before(k: int) -> None:
            if keep(first + k):
                self.rows.keep(first + k, self.sgd.state())
        steps = self.steps[first:stop]
        if progress:
            steps = step_bar(steps, desc="replay last epoch" if self.window == "last" else "replay all epochs",
                             unit="step")
        replay_steps(self.sgd, self.record, steps, before=before)
        self.steps_replayed += stop - first
        self.replay_seconds += time.perf_counter() - start

    def replay_window(self) -> dict:
        """The first replay, theta[K-1] (window "all": theta[0]) -> theta[T] (left in the model), keeping the plan's rows
        (checkpoints and tail); then the self-check against params_epoch_<K>.h5 (returned, and
        kept in `final_check`)."""
        p = self.plan
        checkpoints = set(p.checkpoints)
        self._replay(0, p.steps, lambda i: i in checkpoints or i >= p.steps - p.tail, self.progress)
        self.final_state = self.sgd.state()
        self.final_check = self.check_final()
        return self.final_check

    def load(self, i: int) -> dict:
        """Put theta[first step + i] into the model, freeing the rows after i (the walk back is past
        them); a missing row is recomputed with the rest of its segment from the segment's checkpoint.
        Returns the optimizer state before that step ({} for plain SGD)."""
        self.rows.drop_after(i)
        if i not in self.rows:
            a = max(s for s in self.plan.checkpoints if s <= i)
            self.sgd.set_state(self.rows.load(a), int(self.steps[a]))
            self._replay(a, i, lambda k: k > a)
            self.rows.keep(i, self.sgd.state())
        return self.rows.load(i)

    def check_final(self) -> dict:
        """Compare the model's (replayed) theta[T] with the stored params_epoch_<K>.h5, every
        parameter, and the replayed optimizer state with optimizer_state_epoch_<K>.npz (a recipe
        with state); the model keeps the replayed values. A difference is one warning."""
        path = checkpoint_path(self.run_dir, self.last + 1)
        params = nn.get_parameters(grad_only=False)
        replayed = {k: np.array(v.d, copy=True) for k, v in params.items()}
        load_checkpoint(path)
        stored = {k: np.array(v.d, copy=True) for k, v in params.items()}
        if self.record.recipe.stateful:
            path += " and " + optimizer_state_path(self.run_dir, self.last + 1)
            stored.update(load_optimizer_state(optimizer_state_path(self.run_dir, self.last + 1)))
            replayed.update(self.final_state)
        differing, worst, where, largest_abs = 0, 0.0, None, 0.0
        for k in replayed:
            a, b = replayed[k].astype(np.float64), np.asarray(stored[k], np.float64)
            diff = np.abs(a - b)
            differing += int(np.count_nonzero(diff))
            if diff.any():
                rel = float((diff / np.maximum(np.abs(a), np.abs(b))).max())
                largest_abs = max(largest_abs, float(diff.max()))
                if rel > worst:
                    worst, where = rel, k
        for k, v in params.items():
            v.d = replayed[k]
        total = int(sum(a.size for a in replayed.values()))
        check = {"stored": path, "equal": differing == 0, "values": total, "values_differing": differing,
                 "largest_relative_difference": worst, "largest_relative_difference_in": where,
                 "largest_absolute_difference": largest_abs}
        if differing:
            warn(f"the replayed final parameters differ from {path} in {differing} of {total} values "
                 f"(largest relative difference {worst:.3g}, in {where}): the replay is not bit-exact here "
                 f"(on a GPU: nondeterministic kernels); the scores use the replayed trajectory throughout")
        return check

    def report(self) -> dict:
        """What the replay held and did, with the scheme's formulas beside the counts, and the self-check."""
        p = self.plan
        m = min(p.steps, p.copies)
        return {"window": self.window, "scheme": "in memory" if p.in_memory else "checkpointed", "steps": p.steps,
                "row_bytes": self.row_bytes, "memory_budget_bytes": self.memory_bytes, "copies_budget": p.copies,
                "checkpoints": len(p.checkpoints), "tail_rows": p.tail,
                "copies_held": self.rows.peak, "copies_held_formula_min_T_M": m,
                "steps_replayed": self.steps_replayed, "steps_replayed_formula_2T_minus_min_T_M": 2 * p.steps - m,
                "replay_wall_s": round(self.replay_seconds, 3), "final_check": self.final_check}
