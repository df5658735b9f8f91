"""The step record: what happened at every SGD step, in a plain `.npz`.

For step t (0-based over the whole run) it holds the epoch, the learning
rate, the training indices of the batch and one augmentation seed per
sample. Batches are stored flat with offsets (the last batch of an epoch
may be smaller). Retrace and retraining replay training from it exactly.
Beyond plain SGD it also keeps the recipe every step applied (optimizer.Recipe:
momentum, weight decay, Adam), as JSON text; a plain-SGD record has no such
entry, so its file is the same as before the option.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from ..base.layout import atomic_path, reading
from .optimizer import PLAIN, Recipe


@dataclass
class StepRecord:
    epoch: np.ndarray       # (T,) int64
    lr: np.ndarray          # (T,) float64
    offsets: np.ndarray     # (T + 1,) int64, batch t is indices[offsets[t]:offsets[t+1]]
    indices: np.ndarray     # (sum |S_t|,) int64, positions in the training split
    aug_seeds: np.ndarray   # (sum |S_t|,) int64
    recipe: Recipe = PLAIN  # how each step updates theta with its rate lr[t]

    @property
    def n_steps(self) -> int:
        return len(self.epoch)

    @property
    def n_epochs(self) -> int:
        return int(self.epoch.max()) + 1 if self.n_steps else 0

    def batch(self, t: int) -> Tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[t], self.offsets[t + 1]
        return self.indices[a:b], self.aug_seeds[a:b]

    def steps_of_epoch(self, e: int) -> np.ndarray:
        return np.flatnonzero(self.epoch == e)

    @classmethod
    def from_batches(cls, epochs: List[int], lrs: List[float], batches: List[np.ndarray],
                     seeds: List[np.ndarray], recipe: Recipe = PLAIN) -> "StepRecord":
        sizes = [len(b) for b in batches]
        return cls(np.asarray(epochs, np.int64), np.asarray(lrs, np.float64),
                   np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
                   np.concatenate(batches).astype(np.int64),
                   np.concatenate(seeds).astype(np.int64), recipe)

    def epoch_record(self, e: int) -> "StepRecord":
        """The record of epoch e alone (what a last-epoch retrace or replay reads)."""
        steps = self.steps_of_epoch(e)
        a, b = self.offsets[steps[0]], self.offsets[steps[-1] + 1]
        return StepRecord(self.epoch[steps], self.lr[steps], self.offsets[steps[0]:steps[-1] + 2] - a,
                          self.indices[a:b], self.aug_seeds[a:b], self.recipe)

    def first_step(self, e: int) -> int:
        """The 0-based index of epoch e's first step: the number of updates before it (Adam's counter;
        e = n_epochs: all steps)."""
        return int(np.searchsorted(self.epoch, e))

    def to_bytes(self) -> bytes:
        """The `.npz` file's bytes (`save` writes exactly these)."""
        buf = io.BytesIO()
        extra = {} if self.recipe.plain else {"recipe": np.array(self.recipe.to_json())}
        np.savez(buf, epoch=self.epoch, lr=self.lr, offsets=self.offsets, indices=self.indices,
                 aug_seeds=self.aug_seeds, **extra)
        return buf.getvalue()

    def save(self, path: str) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(self.to_bytes())

    @classmethod
    def load(cls, path: str) -> "StepRecord":
        """The record at `path`; a damaged or inconsistent file is one error line (layout.corrupt)."""
        with reading(path):
            with np.load(path, allow_pickle=False) as z:
                recipe = Recipe.from_json(str(z["recipe"])) if "recipe" in z.files else PLAIN
                r = cls(z["epoch"], z["lr"], z["offsets"], z["indices"], z["aug_seeds"], recipe)
            if not (len(r.lr) == r.n_steps and len(r.offsets) == r.n_steps + 1 and r.offsets[-1] == len(r.indices)
                    and len(r.aug_seeds) == len(r.indices) and np.all(np.diff(r.offsets) >= 0)):
                raise ValueError("its arrays do not fit together")
        return r


def record_bytes(n: int, batch_size: int, epochs: int = 1) -> int:
    """Bytes of the `.npz` record of `epochs` epochs of n instances in batches of `batch_size`
    (T = ceil(n / batch_size) steps each): Table 1's projection of what a replay reads (Replay:
    the last epoch; Replay_all: every epoch)."""
    sizes = [min(batch_size, n - a) for a in range(0, n, batch_size)] * epochs
    return len(StepRecord.from_batches([0] * len(sizes), [0.0] * len(sizes),
                                       [np.zeros(k, np.int64) for k in sizes],
                                       [np.zeros(k, np.int64) for k in sizes]).to_bytes())


def epoch_batches(rng: np.random.Generator, n: int, batch_size: int, augment: bool = True):
    """A fresh permutation cut into batches of `batch_size` (last one smaller),
    and one augmentation seed per sample (-1: no augmentation)."""
    perm = rng.permutation(n)
    seeds = rng.integers(0, 2 ** 31 - 1, size=n)
    if not augment:
        seeds[:] = -1
    cuts = range(0, n, batch_size)
    return [perm[a:a + batch_size] for a in cuts], [seeds[a:a + batch_size] for a in cuts]
