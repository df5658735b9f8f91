"""The most harmful and most helpful training instances of each method: image grids, or for
inputs that are not images (vectors of a tabular CSV) tables of their rows."""
from __future__ import annotations

import csv
import math
import os
from io import StringIO
from typing import Dict, List, Sequence

import numpy as np

from datasets import CLASS_NAMES
from ..base import layout
from ..base.errors import UserError, warn
from ..base.figures import pyplot, save
from ..base.layout import Folder
from ..base.methods import is_control, sort_key
from ..config.settings import args_from_settings, data_for
from .export import user_rows

GRID = 32  # instances per harmful/helpful grid


def mosaic(images: np.ndarray, cols: int, gap_x: int, gap_y: int) -> np.ndarray:
    """uint8 NCHW images -> one HWC uint8 picture, `cols` per row, white gaps (gap_y below each row)."""
    n, c, h, w = images.shape
    rows = max(1, math.ceil(n / cols))
    out = np.full((rows * (h + gap_y), cols * (w + gap_x) - gap_x, c), 255, np.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        out[r * (h + gap_y):r * (h + gap_y) + h, q * (w + gap_x):q * (w + gap_x) + w] = images[k].transpose(1, 2, 0)
    return out


def plot_grid(images: np.ndarray, labels: np.ndarray, values: np.ndarray, path: str, title: str,
              class_names: Sequence[str] = ()) -> None:
    """Up to 32 images (uint8 NCHW) in rows of 8, each captioned with label (its class
    name when known) and influence.

    One picture in one axes (32 small axes take seconds to lay out)."""
    plt = pyplot()
    cols, (h, w) = 8, images.shape[2:]
    gx, gy = max(2, w // 8), int(h * 0.6)
    m = mosaic(images, cols, gx, gy)
    rows = m.shape[0] // (h + gy)
    fig = plt.figure(figsize=(cols * 1.0, rows * 1.3 + 0.35))
    ax = fig.add_axes((0.005, 0.005, 0.99, 1 - 0.4 / (rows * 1.3 + 0.35)))
    ax.imshow(m[..., 0] if m.shape[2] == 1 else m, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    for k in range(len(images)):
        r, q = divmod(k, cols)
        y = int(labels[k])
        name = class_names[y] if y < len(class_names) else f"y={y}"
        ax.text(q * (w + gx) + w / 2, r * (h + gy) + h + 1, f"{name}  {values[k]:.2e}",
                ha="center", va="top", fontsize=6.5)
    ax.axis("off")
    fig.suptitle(title, fontsize=9, y=0.995, va="top")
    save(fig, path, dpi=100)


def write_table(path: str, train, picked: np.ndarray, influence: np.ndarray, train_csv: str | None) -> None:
    """The picked training instances, one row each: rank, influence, datasource_index, then the row
    number and the row of the user's training CSV as written (export.user_rows), or (no CSV) id,
    label and the inputs."""
    if train_csv:
        header, rows, lines = user_rows(train_csv, train)
        header = ["row"] + header
        rows = [[lines[j]] + rows[j] for j in picked]
    else:
        flat = train.x[picked].reshape(len(picked), -1)
        header = ["x:image", "y:label"] + [f"x__{i}" for i in range(flat.shape[1])]
        rows = [[train.ids[j], int(train.y[j])] + [f"{v:.7g}" for v in flat[k]] for k, j in enumerate(picked)]
    buf = StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["rank", "influence", "datasource_index"] + header)
    w.writerows([k + 1, f"{v:.9e}", int(j)] + r for k, (j, v, r) in enumerate(zip(picked, influence, rows)))
    layout.write_text(path, buf.getvalue())


def load_train_images(folder: Folder, seed: int):
    """The run's training split for `seed`, loaded exactly as the drivers load it."""
    return data_for(args_from_settings(folder.settings), seed).train


def write_grids(influence: Dict[str, Dict[int, str]], source: Dict[str, Folder], fig_dir: str,
                table_dir: str | None = None) -> List[str]:
    """harmful_/helpful_<method>_seed<k>.png in `fig_dir` for every scoring method and trial; for
    inputs that are not images, harmful_/helpful_<method>_seed<k>.csv tables (`write_table`) in
    `table_dir` (default: beside fig_dir, in summary/)."""
    table_dir = table_dir or os.path.join(os.path.dirname(fig_dir), "summary")
    written = []
    for method in sorted((m for m in influence if not is_control(m)), key=sort_key):
        for seed, path in sorted(influence[method].items()):
            try:
                train = load_train_images(source[method], seed)
            except (UserError, OSError, AttributeError, TypeError) as e:
                warn(f"image grids skipped: cannot load the training data of {source[method].path} ({e})")
                return written
            f = layout.read_influence_csv(path)
            if len(f["index"]) and (f["index"].max() >= len(train)
                                    or not np.array_equal(train.ids[f["index"]], f["ids"])
                                    or not np.array_equal(train.y[f["index"]], f["labels"])):
                warn(f"image grids skipped: {path} does not match the data its run.json settings load "
                     f"(ids or labels differ)")
                return written
            k = min(GRID, len(f["index"]))
            for kind, pick in (("harmful", np.arange(k)), ("helpful", np.arange(len(f["index"]))[::-1][:k])):
                idx = f["index"][pick]
                if train.x.dtype != np.uint8:  # not images: a table of the rows
                    out = os.path.join(table_dir, f"{kind}_{method}_seed{seed}.csv")
                    write_table(out, train, idx, f["influence"][pick],
                                source[method].settings.get("train_csv") if train.rows is not None else None)
                    written.append(out)
                    continue
                out = os.path.join(fig_dir, f"{kind}_{method}_seed{seed}.png")
                which = "most negative: removal lowers the validation loss" if kind == "harmful" \
                    else "most positive: removal raises the validation loss"
                plot_grid(train.x[idx], f["labels"][pick], f["influence"][pick], out,
                          f"{method}, seed {seed}: the {k} {which}",
                          CLASS_NAMES.get(source[method].settings.get("dataset"), ()))
                written.append(out)
    return written
