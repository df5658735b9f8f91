"""Output files: every file is written under a temporary name and renamed into
place, so a file that exists is complete. Paths of the output layout live here."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import re
from io import StringIO
from typing import Optional

import numpy as np

from .errors import UserError

METHOD_FILE = {"Hara": "hara", "Ours": "ours", "Random": "random",
               "Influence_functions": "influence_functions", "TracIn_last": "tracin_last", "Loss": "loss"}


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


def read_json(path: str):
    """A JSON file this tool wrote; a corrupt one stops with a line naming it and the fix."""
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is corrupt ({e}); delete it (or use --overwrite) and re-run") from None


def check_settings(folder: str, settings: dict, holder: str, what: str, fix: str,
                   defaults: Optional[dict] = None) -> None:
    """Reuse the results in `folder` only under the settings they were made with: compare with its
    settings.json (one error line naming each difference; a setting it predates counts at its value
    in `defaults`), or record `settings` there."""
    path = os.path.join(folder, "settings.json")
    if not os.path.exists(path):
        write_json(path, settings)
        return
    old = read_json(path)
    defaults = defaults or {}
    diff = [f"{k} {old.get(k, defaults.get(k))!r} -> {v!r}" for k, v in settings.items()
            if old.get(k, defaults.get(k)) != v]
    if diff:
        raise UserError(f"{holder} holds {what} of other settings ({'; '.join(diff)}); "
                        f"use another -o, or --overwrite to {fix}")


def train_dir(out: str, seed: int) -> str:
    return os.path.join(out, "train", f"seed_{seed}")


def influence_path(out: str, method: str, seed: int) -> str:
    return os.path.join(out, "influence", method, f"influence_{METHOD_FILE[method]}_{seed}.csv")


def score_path(out: str, method: str, n: int, seed: int) -> str:
    return os.path.join(out, "score", method, f"score_delete_worst_{n}_seed_{seed}.csv")


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
    with open(path, newline="") as f:
        rows = csv.reader(f)
        header = next(rows, [])
        if header != ["x:image", "y:label", "influence", "datasource_index"]:
            raise ValueError(f"{path}: not an influence file (header {','.join(header)!r})")
        rows = [r for r in rows if r]
    return {"ids": np.array([r[0] for r in rows]),
            "labels": np.array([int(r[1]) for r in rows], np.int64),
            "influence": np.array([float(r[2]) for r in rows], np.float64),
            "index": np.array([int(r[3]) for r in rows], np.int64)}


def read_removal_order(path: str) -> np.ndarray:
    """The datasource_index column of an influence CSV, in file order."""
    return read_influence_csv(path)["index"]


SCORE_COLUMNS = ("val_loss", "test_loss", "val_accuracy", "test_accuracy")


def write_score_csv(path: str, rows) -> None:
    lines = [",".join(SCORE_COLUMNS)] + [",".join(f"{v:.9g}" for v in row) for row in rows]
    write_text(path, "\n".join(lines) + "\n")
