"""Output files: every file is written under a temporary name and renamed into
place, so a file that exists is complete. Paths of the output layout live here."""
from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import json
import os
import re
import zipfile
from io import StringIO
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from .errors import UserError
from .methods import stem



@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path next to `path`; rename it onto `path` on success."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}{ext}"  # keeps the extension: nnabla picks the format by it
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


TEMP_RE = re.compile(r"\.tmp\d+(\.\w+)?$")


def make_output_folder(out: str) -> None:
    """Create a command's output folder (and its parents) if missing; one error line if it cannot be."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {out}: {e.strerror}") from None


def remove_stale_temporaries(out: str) -> None:
    """Delete half-written files left by a killed run (complete files never carry .tmp)."""
    for d, _, files in os.walk(out):
        for f in files:
            if TEMP_RE.search(f):
                os.remove(os.path.join(d, f))


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# What reading a damaged file raises: bad text or numbers, missing columns or keys, a broken
# zip/HDF5 container, a short read, or nnabla's loader's own error.
READ_ERRORS = (ValueError, TypeError, IndexError, KeyError, EOFError, OSError, RuntimeError, zipfile.BadZipFile)


def file_digest(path: str, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes (read in 1 MiB blocks): the checksums of datasets and the
    hash of a user's network file."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def corrupt(path: str, why: object) -> UserError:
    """The one error line for a damaged file in an output folder: which file, and the fix."""
    why = (str(why).strip().splitlines() or [""])[0] or type(why).__name__
    return UserError(f"{path} is corrupt or unreadable ({why}); delete it (or use --overwrite) and re-run")


@contextlib.contextmanager
def reading(path: str):
    """Turn any error of reading `path` (not its absence) into `corrupt(path, ...)`."""
    try:
        yield
    except FileNotFoundError:
        raise
    except READ_ERRORS as e:
        raise corrupt(path, e) from None


def read_json(path: str):
    """A JSON file this tool wrote; a corrupt one stops with a line naming it and the fix."""
    with reading(path):
        with open(path) as f:
            return json.load(f)


@dataclass
class Folder:
    """One output folder and the settings its run.json recorded ({} without one)."""
    path: str
    settings: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> Optional[int]:
        return self.settings.get("batch_size")


def read_folder(path: str) -> Folder:
    """An output folder of a driver, with its run.json settings."""
    if not os.path.isdir(path):
        raise UserError(f"{path} is not a folder; pass output folders of eval_sgd_influence.py "
                        f"or eval_influence_functions.py")
    return Folder(path, read_settings(path))


# Settings that hold paths, and the command-line flags that set them: run.json stores them relative to the
# output folder (so a folder copied elsewhere, e.g. into docs/, names no path of the machine that made it);
# read_settings resolves them again.
PATH_SETTINGS = ("output_dir", "data_dir", "train_csv", "val_csv", "test_csv")
PATH_FLAGS = ("-o", "--output_dir", "--output-dir", "--data-dir", "--train-csv", "--val-csv", "--test-csv")


def relative_to(out: str, path: Optional[str]) -> Optional[str]:
    return None if path is None else os.path.relpath(os.path.abspath(path), os.path.abspath(out))


def portable_settings(out: str, settings: dict) -> dict:
    """`settings` with its PATH_SETTINGS relative to the output folder `out`."""
    return {k: relative_to(out, v) if k in PATH_SETTINGS and isinstance(v, str) else v for k, v in settings.items()}


def portable_command(out: str, argv: List[str]) -> str:
    """The command line `argv` with the script as its file name and every path flag's value relative to `out`."""
    words = [os.path.basename(argv[0])] if argv else []
    for i, w in enumerate(argv[1:], 1):
        flag, eq, value = w.partition("=")
        if eq and flag in PATH_FLAGS:
            w = f"{flag}={relative_to(out, value)}"
        elif argv[i - 1] in PATH_FLAGS:
            w = relative_to(out, w)
        words.append(w)
    return " ".join(words)


def read_settings(out: str) -> dict:
    """The `settings` of OUT/run.json ({} without one), its relative paths resolved against `out`; a damaged
    run.json is one error line."""
    path = os.path.join(out, "run.json")
    if not os.path.exists(path):
        return {}
    info = read_json(path)
    if not isinstance(info, dict) or not isinstance(info.get("settings", {}), dict):
        raise corrupt(path, "not a run.json written by this tool")
    return {k: os.path.normpath(os.path.join(os.path.abspath(out), v))
            if k in PATH_SETTINGS and isinstance(v, str) else v for k, v in info.get("settings", {}).items()}


def train_dir(out: str, seed: int, twin: bool = False) -> str:
    """A trial's training; `twin`: the LDS's twin of it, theta[0] moved by a seeded half-ulp."""
    return os.path.join(out, "train", f"seed_{seed}" + ("_theta0_ulp" if twin else ""))


def order_suffix(order: int) -> str:
    """A control's removal order r > 0 (--random-orders): `_order<r>` before the extension; order 0 has none
    (the files of runs before the option)."""
    return f"_order{order}" if order else ""


def influence_path(out: str, method: str, seed: int, order: int = 0) -> str:
    return os.path.join(out, "influence", method, f"influence_{stem(method)}_{seed}{order_suffix(order)}.csv")


def replay_check_path(out: str, method: str, seed: Union[int, str]) -> str:
    """Replay's self-check and cost, next to its influence file (core/replay.py: ReplayedTrajectory.report);
    seed "*": the glob pattern of every trial's."""
    return os.path.join(out, "influence", method, f"replay_check_{seed}.json")


def score_path(out: str, method: str, n: int, seed: int, order: int = 0) -> str:
    return os.path.join(out, "score", method, f"score_delete_worst_{n}_seed_{seed}{order_suffix(order)}.csv")


def rounding_dir(out: str) -> str:
    """checks/rounding.py's replays of one trial's retrainings from a half-ulp-moved theta[K-1]."""
    return os.path.join(out, "rounding")


def rounding_score_path(out: str, method: str, n: int, seed: int, order: int, replay: int) -> str:
    return os.path.join(rounding_dir(out), "score", method,
                        f"score_delete_worst_{n}_seed_{seed}{order_suffix(order)}_ulp{replay}.csv")


def checkpoint_path(run_dir: str, epoch: int) -> str:
    """Parameters after `epoch` epochs (0 = initial)."""
    return os.path.join(run_dir, f"params_epoch_{epoch}.h5")


def optimizer_state_path(run_dir: str, epoch: int) -> str:
    """The optimizer's state (momentum's v; Adam's m, s) after `epoch` epochs, beside that epoch's
    checkpoint; written only for a recipe that has state (core/optimizer.py). After epoch 0 it is
    zero and not written."""
    return os.path.join(run_dir, f"optimizer_state_epoch_{epoch}.npz")


def step_params_path(run_dir: str, epoch: int) -> str:
    return os.path.join(run_dir, f"step_params_epoch_{epoch}.f32")


def step_record_path(run_dir: str) -> str:
    """Where a run folder keeps its step record (written last: it marks training complete)."""
    return os.path.join(run_dir, "step_record.npz")


def estimate_path(folder: str, method: str) -> str:
    """A method's scores in a validation cache (validate_influence.py's, or an LDS training's)."""
    return os.path.join(folder, f"estimate_{method}.npy")


def noise_path(out: str, seed: int) -> str:
    return os.path.join(out, "noise", f"flipped_{seed}.csv")


def solver_trace_path(out: str, seed: int) -> str:
    return os.path.join(out, "influence", "Influence_functions", f"solver_trace_{seed}.csv")


def solver_figure_path(out: str, seed: int) -> str:
    return os.path.join(out, "fig", f"if_solver_seed{seed}.png")


SCORE_RE = re.compile(r"score_delete_worst_(\d+)_seed_(\d+)(?:_order(\d+))?\.csv$")
INFLUENCE_RE = re.compile(r"influence_.+_(\d+)\.csv$")  # order 0 only: a control's other orders end in _order<r>


def score_files(out: str) -> List[Tuple[str, int, int, int, str]]:
    """(method, n removed, seed, order, path) of every score CSV in `out`, sorted by path (order: a
    control's removal order, 0 for every other method)."""
    found = []
    for path in sorted(glob.glob(os.path.join(out, "score", "*", "score_delete_worst_*_seed_*.csv"))):
        m = SCORE_RE.search(path)
        if m:
            found.append((os.path.basename(os.path.dirname(path)), int(m.group(1)), int(m.group(2)),
                          int(m.group(3) or 0), path))
    return found


def influence_files(out: str) -> Dict[str, Dict[int, str]]:
    """{method: {seed: influence CSV path}} of `out`."""
    found: Dict[str, Dict[int, str]] = {}
    for path in sorted(glob.glob(os.path.join(out, "influence", "*", "influence_*_*.csv"))):
        m = INFLUENCE_RE.search(os.path.basename(path))
        if m:
            found.setdefault(os.path.basename(os.path.dirname(path)), {})[int(m.group(1))] = path
    return found


def has_results(out: str, method: str) -> bool:
    """Whether `out` holds any influence or score file of `method`."""
    return any(glob.glob(os.path.join(out, part, method, "*")) for part in ("influence", "score"))


def write_influence_csv(path: str, ids: np.ndarray, labels: np.ndarray, influence: np.ndarray) -> None:
    """`x:image,y:label,influence,datasource_index`, most negative first.

    Ties are broken by datasource_index so the file is a pure function of the scores.
    `x:image` is quoted by CSV rules only when needed (an image path holding a comma or quote).
    """
    order = np.lexsort((np.arange(len(influence)), influence))
    buf = StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["x:image", "y:label", "influence", "datasource_index"])
    w.writerows([ids[i], labels[i], f"{influence[i]:.9e}", i] for i in order)
    write_text(path, buf.getvalue())


def read_influence_csv(path: str) -> dict:
    """Columns of an influence CSV in file order (most negative first):
    ids (str), labels, influence, index (datasource_index: position in the run's training split).

    Read by CSV rules, so an image path may hold commas (written quoted).
    """
    with reading(path):
        with open(path, newline="") as f:
            rows = csv.reader(f)
            header = next(rows, [])
            if header != ["x:image", "y:label", "influence", "datasource_index"]:
                raise ValueError(f"not an influence file (header {','.join(header)!r})")
            rows = [r for r in rows if r]
        if any(len(r) != 4 for r in rows):
            raise ValueError("a row without its four columns")
        cols = {"ids": np.array([r[0] for r in rows]),
                "labels": np.array([int(r[1]) for r in rows], np.int64),
                "influence": np.array([float(r[2]) for r in rows], np.float64),
                "index": np.array([int(r[3]) for r in rows], np.int64)}
        if not np.array_equal(np.sort(cols["index"]), np.arange(len(rows))):  # every instance once: not cut short
            raise ValueError("its datasource_index column is not 0..n-1 once each (truncated?)")
    return cols


def read_removal_order(path: str) -> np.ndarray:
    """The datasource_index column of an influence CSV, in file order."""
    return read_influence_csv(path)["index"]


SCORE_COLUMNS = ("val_loss", "test_loss", "val_accuracy", "test_accuracy")


def read_score_csv(path: str) -> np.ndarray:
    """The rows of a score CSV (one per epoch retrained; columns SCORE_COLUMNS), shape (rows, 4)."""
    with reading(path):
        with open(path) as f:
            header = f.readline().strip().split(",")
            rows = [line.strip().split(",") for line in f if line.strip()]
        if header != list(SCORE_COLUMNS):
            raise ValueError(f"not a score file (header {','.join(header)!r})")
        table = np.array([[float(v) for v in r] for r in rows], np.float64)
        if not rows or table.ndim != 2 or table.shape[1] != len(SCORE_COLUMNS):
            raise ValueError("no complete rows")
    return table


def write_score_csv(path: str, rows) -> None:
    lines = [",".join(SCORE_COLUMNS)] + [",".join(f"{v:.9g}" for v in row) for row in rows]
    write_text(path, "\n".join(lines) + "\n")
