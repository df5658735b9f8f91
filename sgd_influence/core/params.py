"""Parameter files: checkpoints (nnabla .h5) and Hara's per-step store; rows of theta[t] in memory.

The per-step store keeps, for every step of the retraced epoch, a real copy
of every parameter array as it was when that step's gradient was taken
(theta[t]). It is one raw float32 file per epoch, one row per step, so its
size is exactly |theta| x T x 4 bytes, plus a small JSON layout file; the
retrace reads one row per step. `ParamRows` keeps the same rows in memory
(Replay, core/replay.py). Either is a `StepParams`: `load(i)` puts row i into the model.

Beyond plain SGD a row may also hold the optimizer's state before the step (arrays named by
optimizer.state_name, after the parameters): `load(i)` returns those arrays (an empty dict
when the row has none). The optimizer state of an epoch's checkpoint is its own `.npz`
(`save_optimizer_state`; layout.optimizer_state_path).
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Protocol

import numpy as np
import nnabla as nn

from ..base.errors import UserError
from ..base.layout import atomic_path, read_json, reading, write_json
from .optimizer import is_state_name


def save_checkpoint(path: str) -> None:
    with atomic_path(path) as tmp:
        nn.save_parameters(tmp, params=nn.get_parameters(grad_only=False), extension=".h5")


def load_checkpoint(path: str) -> None:
    """Copy the values of a checkpoint into the existing parameter variables (a damaged file is one
    error line naming it)."""
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    with reading(path):
        nn.load_parameters(path)


def save_optimizer_state(path: str, arrays: Dict[str, np.ndarray]) -> None:
    """The optimizer's state arrays (optimizer.solver_state) as a plain `.npz`, written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v, np.float32) for k, v in arrays.items()})


def load_optimizer_state(path: str) -> Dict[str, np.ndarray]:
    """The arrays `save_optimizer_state` wrote (a damaged file is one error line naming it)."""
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    with reading(path):
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


class StepParams(Protocol):
    """theta[t] of the retraced window's steps, by position i = 0..T-1 in the window."""

    def load(self, i: int) -> Dict[str, np.ndarray]:
        """Put theta[first step + i] (every parameter, batch-norm statistics included) into the model;
        return the optimizer state the row keeps ({} if none)."""


def row_bytes() -> int:
    """Bytes of one row (one copy of every parameter as float32) of the current model."""
    return 4 * sum(int(v.size) for v in nn.get_parameters(grad_only=False).values())


class ParamRows:
    """Rows of theta[t] in memory, by position: the rows of StepParamsWriter/Reader (every parameter,
    batch-norm statistics included, float32, and the optimizer state given to `keep`), each a copy
    of the arrays. `peak` counts the most rows held at once."""

    def __init__(self):
        self.params = nn.get_parameters(grad_only=False)
        self.rows: Dict[int, Dict[str, np.ndarray]] = {}
        self.states: Dict[int, Dict[str, np.ndarray]] = {}
        self.peak = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, i: int) -> bool:
        return i in self.rows

    def keep(self, i: int, state: Optional[Dict[str, np.ndarray]] = None) -> None:
        """Copy the model's current parameters into row i, with the optimizer `state` (copies, or none)."""
        self.rows[i] = {k: np.array(v.d, np.float32, copy=True) for k, v in self.params.items()}
        self.states[i] = dict(state or {})
        self.peak = max(self.peak, len(self.rows))

    def load(self, i: int) -> Dict[str, np.ndarray]:
        for k, arr in self.rows[i].items():
            self.params[k].d = arr
        return self.states[i]

    def drop_after(self, i: int) -> None:
        """Free the rows after position i."""
        for k in [k for k in self.rows if k > i]:
            del self.rows[k], self.states[k]


class StepParamsWriter:
    """Append theta[t] (all parameters, batch-norm statistics included) per step, and after them the
    optimizer state arrays `state()` gives (optimizer.solver_state; None: parameters only)."""

    def __init__(self, path: str, state=None):
        self.path, self.tmp = path, f"{path}.tmp{os.getpid()}"  # matches layout.TEMP_RE
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.params = nn.get_parameters(grad_only=False)
        self.state = state
        self.file = open(self.tmp, "wb")
        layout = [[k, list(v.shape)] for k, v in self.params.items()]
        layout += [[k, list(v.shape)] for k, v in (state() if state else {}).items()]
        write_json(path + ".layout.json", layout)

    def append(self) -> None:
        for v in self.params.values():
            self.file.write(np.ascontiguousarray(v.d, dtype=np.float32).tobytes())
        for v in (self.state() if self.state else {}).values():
            self.file.write(np.ascontiguousarray(v, dtype=np.float32).tobytes())

    def close(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.path)


class StepParamsReader:
    """Rows of a per-step store; `load(i)` sets row i into the model.

    Each row is read with one positioned read into a fresh array: resident memory
    stays at one row, where a memory map would keep every row read so far
    resident (it grew by |theta| x 4 bytes per retrace step).
    """

    def __init__(self, path: str):
        meta = path + ".layout.json"
        with reading(meta):
            self.layout = [(k, tuple(s)) for k, s in read_json(meta)]
        self.path = path
        self.row_size = sum(int(np.prod(s)) for _, s in self.layout)
        self.n_rows, rest = divmod(os.path.getsize(path), 4 * self.row_size)
        if rest:
            raise UserError(f"{path} is truncated (not a whole number of parameter rows); "
                            f"delete it and re-run the same command to retrain that trial")

    def __len__(self) -> int:
        return self.n_rows

    def arrays(self, i: int) -> Dict[str, np.ndarray]:
        row = np.fromfile(self.path, np.float32, count=self.row_size, offset=4 * self.row_size * i)
        out, a = {}, 0
        for k, s in self.layout:
            n = int(np.prod(s))
            out[k] = row[a:a + n].reshape(s)
            a += n
        return out

    @property
    def has_state(self) -> bool:
        """Whether the rows keep optimizer state beside theta[t]."""
        return any(is_state_name(k) for k, _ in self.layout)

    def load(self, i: int) -> Dict[str, np.ndarray]:
        params = nn.get_parameters(grad_only=False)
        state = {}
        for k, arr in self.arrays(i).items():
            if is_state_name(k):
                state[k] = arr
            else:
                params[k].d = arr
        return state
