"""The last step of data cleansing: the training set without the N most harmful instances,
as Neural Network Console dataset CSVs (`python -m sgd_influence.analyze OUT --export-clean
METHOD N [--seed K]`).

Writes OUT/export/<METHOD>_without_<N>_seed<K>/:
  train.csv    the run's training split (seed K) in its order, without the N first instances of
               METHOD's removal order (OUT/influence/<METHOD>/..._<K>.csv);
  removed.csv  those N, most harmful first, with two more columns: influence,datasource_index;
  images/      built-in datasets only: one PNG per training instance, as the run trained on it
               (resized to the model resolution), named after its id.
-ds csv: the rows of the user's training CSV as written, every column in its order (comment
columns included), a file named in x (image, .npy, .csv) made an absolute path. Built-in
datasets: columns x:image,y:label, the PNGs relative to the CSVs' folder. Labels are the ones the
run trained on (with --label-noise, the flipped ones). The CSVs load back with `-ds csv
--train-csv .../train.csv`. Nothing is read from OUT but run.json and the influence CSV; nothing
else in OUT is touched.
"""
from __future__ import annotations

import csv
import os
from io import StringIO
from typing import List, Sequence, Tuple

import numpy as np

from datasets import Split
from datasets.nnc_dataset import read_table
from ..base import layout
from ..base.errors import UserError
from ..base.methods import DRIVER_METHODS
from ..config.settings import args_from_settings, data_for


def export_dir(out: str, method: str, n: int, seed: int) -> str:
    return os.path.join(out, "export", f"{method}_without_{n}_seed{seed}")


def _csv_text(header: Sequence[str], rows: List[Sequence]) -> str:
    buf = StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _write_png(path: str, image: np.ndarray) -> None:
    """A (C, H, W) uint8 image as PNG (grayscale for C = 1, else RGB)."""
    from PIL import Image
    a = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    with layout.atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(a)).save(tmp, format="PNG")


def user_rows(train_csv: str, train: Split) -> Tuple[List[str], List[List[str]], List[int]]:
    """The header of the user's training CSV and, for every instance of `train` (a split of it), its
    row as written: fields beyond the header dropped, a file named in x made an absolute path, and
    the label replaced by the one trained on where they differ (--label-noise); and the row numbers
    (the lines of the file, header = row 1)."""
    table = read_table(train_csv)
    rows = []
    for j, k in enumerate(train.rows):
        cells = list(table.cells[k][:len(table.header)])
        if table.kind != "vector":
            cells[table.columns[0]] = table.x[k]
        if int(train.y[j]) != int(table.y[k]):
            cells[table.label_column] = str(int(train.y[j]))
        rows.append(cells)
    return list(table.header), rows, [table.lines[k] for k in train.rows]


def export_clean(out: str, method: str, n_text: str, seed: int) -> str:
    """Write the cleansed training CSV, the removed instances' CSV (and the PNGs of a built-in
    dataset) of run folder `out`; returns the export folder."""
    if method not in DRIVER_METHODS:
        raise UserError(f"--export-clean: unknown method {method!r}; one of {', '.join(DRIVER_METHODS)}")
    if not n_text.isdigit():
        raise UserError(f"--export-clean: N must be a non-negative integer, got {n_text!r}")
    n = int(n_text)
    run_json = os.path.join(out, "run.json")
    if not os.path.isfile(run_json):
        raise UserError(f"{out} has no run.json; pass an output folder of eval_sgd_influence.py or "
                        f"eval_influence_functions.py")
    settings = layout.read_settings(out)
    if not isinstance(settings, dict) or "dataset" not in settings:
        raise UserError(f"{run_json} is not a run.json written by a driver")
    path = layout.influence_path(out, method, seed)
    if not os.path.isfile(path):
        have = sorted(m for m in DRIVER_METHODS if os.path.isfile(layout.influence_path(out, m, seed)))
        raise UserError(f"{out} has no influence of {method} for seed {seed} ({path}); "
                        f"methods with seed {seed} there: {', '.join(have) or 'none'}")
    try:
        scores = layout.read_influence_csv(path)
    except ValueError as e:
        raise UserError(str(e)) from None
    train = data_for(args_from_settings(settings), seed).train
    order = scores["index"]
    if (len(order) != len(train) or not np.array_equal(np.sort(order), np.arange(len(train)))
            or not np.array_equal(train.ids[order], scores["ids"])
            or not np.array_equal(train.y[order], scores["labels"])):
        raise UserError(f"{path} does not match the training split of {run_json} (seed {seed}); "
                        f"the dataset changed since the run")
    if n > len(train):
        raise UserError(f"--export-clean: N = {n} is more than the {len(train)} training instances")
    removed = order[:n]
    keep = np.setdiff1d(np.arange(len(train)), removed)  # the training split's order
    dest = export_dir(out, method, n, seed)
    if settings["dataset"] == "csv":
        header, rows, _ = user_rows(settings["train_csv"], train)
    else:
        header = ["x:image", "y:label"]
        names = [os.path.join("images", f"{i.replace('/', '_')}.png") for i in train.ids]
        for i in range(len(train)):
            _write_png(os.path.join(dest, names[i]), train.x[i])
        rows = [[names[j], int(train.y[j])] for j in range(len(train))]
    rank = {int(j): k for k, j in enumerate(order)}
    layout.write_text(os.path.join(dest, "removed.csv"), _csv_text(
        header + ["influence", "datasource_index"],
        [rows[j] + [f"{scores['influence'][rank[int(j)]]:.9e}", int(j)] for j in removed]))
    layout.write_text(os.path.join(dest, "train.csv"), _csv_text(header, [rows[j] for j in keep]))
    return dest
