"""Neural Network Console dataset CSVs of every kind, parsed by nnabla's own CsvDataSource.

NNC names each column NAME[__INDEX][:LABEL] (CsvDataSource's header parsing); a column whose
name starts with '#' is a comment and is ignored; indexed columns NAME__0, NAME__1, ... of one
NAME form one vector, in the order of the columns. Of the variables, this tool reads two:

    x   the input, one of
        - numbers: columns x__0, x__1, ..., x__{D-1} (what NNC's Simple Tabular Dataset plugin
          writes), or one column x of numbers (D = 1): a vector per row;
        - a file per row in one column x (x:image, x, ...), relative to the CSV's folder (absolute
          paths work too): an image (PNG, JPEG or anything else Pillow reads with 8 bits per
          channel: nnc_csv.read_image), or an array, `.npy` (read without pickles) or `.csv`
          (numbers, read by nnabla's own load_csv);
    y   the class index 0, 1, 2, ... (one column y or y:label; a number without fraction).

Other variables are ignored and never loaded. Rows are numbered as lines of the file, the
header being row 1, as in every error message; blank lines are skipped. An instance keeps the
position of its row among the file's data rows (`Table.cells[k]`), so its row can be written
back as the user wrote it (analyze --export-clean). Every problem is one UserError naming the
file, the row and the column. Header names are stripped of surrounding spaces, and a row may
end in empty fields beyond the header's (both as the image reader before it did).
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
from nnabla.utils.data_source_implements import CsvDataSource
from nnabla.utils.data_source_loader import load_csv

from sgd_influence.base.errors import UserError
from .nnc_csv import image_path

INPUT, TARGET = "x", "y"
ARRAY_EXTENSIONS = (".npy", ".csv")  # any other file is read as an image
VECTOR, IMAGE, ARRAY = "vector", "image", "array"  # Table.kind
HEADER_HELP = ("the input x (x:image, x, or x__0,x__1,... for numbers) and the class index y (y or y:label)")


class FileCell(str):
    """The text of a cell that is not a number: a file to be read later (or an error)."""


class _Source(CsvDataSource):
    """CsvDataSource as NNC runs it, except that nothing is loaded while parsing: a cell that is not
    a number stays its text (`FileCell`), so that files are read once, by this module, and only for
    x; header names are stripped; comment columns are dropped from rows of any length."""

    def _get_value(self, value, is_vector=False):
        try:
            v = float(value)
        except ValueError:
            return FileCell(value.strip())
        return [v] if is_vector else v

    def _process_header(self, row):
        super()._process_header([c.strip() for c in row])

    def _remove_comment_cols(self, header, rows):
        keep = [k for k, name in enumerate(header) if not name.strip().startswith("#")]
        header[:] = [header[k] for k in keep]
        for row in rows:
            row[:] = [row[k] for k in keep if k < len(row)]

    def parse_row(self, cells: List[str]) -> dict:
        """{variable: value} of one data row (its cells without the comment columns)."""
        return dict(zip(self.variables, self._process_row(cells)))


@dataclass
class Table:
    """One NNC dataset CSV, checked, files not yet read.

    `header` and `cells` are as written (comment columns included; `cells` without blank lines),
    `lines[k]` is the row number of cells[k]. `kind`: VECTOR (x holds numbers: `x` is then an
    (N, D) float64 array), IMAGE or ARRAY (x names files: `x` their absolute paths). `columns`:
    the positions of x's columns in the header, `label_column` y's.
    """
    path: str
    header: List[str]
    cells: List[List[str]]
    lines: List[int]
    kind: str
    x: object
    y: np.ndarray
    columns: List[int]
    label_column: int

    def where(self, k: int, column: Optional[int] = None) -> str:
        """'<file>: row <n>[, column <name>]' of data row k."""
        text = f"{self.path}: row {self.lines[k]}"
        return text if column is None else f"{text}, column {self.header[column].strip()}"

    def ids(self) -> np.ndarray:
        """Stable ids of the rows: a file's absolute path, or `<CSV path>:<row>` for numbers."""
        if self.kind == VECTOR:
            return np.array([f"{self.path}:{line}" for line in self.lines])
        return np.array(self.x)


def _raw_rows(path: str) -> Tuple[List[str], List[Tuple[int, List[str]]]]:
    """The header and the (row number, cells) of every non-blank row, as csv.reader splits them."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = [(reader.line_num, cells) for cells in reader if any(c.strip() for c in cells)]
    return header or [], rows


def _source(path: str) -> _Source:
    """nnabla's CsvDataSource on the file (its INFO line about shuffling silenced)."""
    log = logging.getLogger("nnabla")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        return _Source(path, shuffle=False)
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot be read as a CSV file ({e})") from None
    finally:
        log.setLevel(level)


def read_table(path: str) -> Table:
    """Parse an NNC dataset CSV (module docstring); files are checked to exist, not read."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    header, rows = _raw_rows(path)
    if not header and not rows:
        raise UserError(f"{path}: empty file; expected a header naming {HEADER_HELP}, then one row per instance")
    names = [c.strip() for c in header]
    if any(not n for n in names):
        raise UserError(f"{path}: row 1: column {names.index('') + 1} of the header is empty; "
                        f"expected a header naming {HEADER_HELP}")
    _check_variables(path, names)
    variables = {v: [k for k, n in enumerate(names) if not n.startswith("#") and _variable(n) == v]
                 for v in (INPUT, TARGET)}
    if not variables[INPUT] or not variables[TARGET]:
        raise UserError(f"{path}: row 1: expected a header naming {HEADER_HELP}, found {','.join(names)!r}")
    columns, (label_column, *extra) = variables[INPUT], variables[TARGET]
    if extra or "__" in names[label_column].split(":")[0]:
        raise UserError(f"{path}: row 1: the class index y must be one column (y or y:label), found "
                        f"{', '.join(names[k] for k in variables[TARGET])}")
    indexed = ["__" in names[k].split(":")[0] for k in columns]
    if not rows:
        raise UserError(f"{path}: no data rows after the header")
    source = _source(path)
    keep = [k for k, n in enumerate(names) if not n.startswith("#")]
    table = Table(path, header, [], [], "", None, np.zeros(0, np.int64), columns, label_column)
    folder = os.path.dirname(path)
    xs, ys = [], []
    for line, cells in rows:
        k = len(table.cells)
        table.cells.append(cells)
        table.lines.append(line)
        if len(cells) < len(names) or any(c.strip() for c in cells[len(names):]):
            raise UserError(f"{table.where(k)}: {len(cells)} field(s), the header has {len(names)}")
        values = source.parse_row([cells[j] for j in keep])
        ys.append(_label(table, k, values[TARGET]))
        x, kind = _input(table, k, values[INPUT], folder, indexed[0])
        if table.kind and kind != table.kind:
            raise UserError(f"{table.where(k, columns[0])}: {_kind_text(kind)}, but row {table.lines[0]} "
                            f"holds {_kind_text(table.kind)}; every row must hold the same kind of input")
        table.kind = kind
        xs.append(x)
    table.y = np.array(ys, np.int64)
    table.x = np.array(xs, np.float64) if table.kind == VECTOR else xs
    return table


def _variable(name: str) -> str:
    """NAME of a column NAME[__INDEX][:LABEL] (as CsvDataSource splits it)."""
    return name.split(":", 1)[0].split("__", 1)[0]


def _check_variables(path: str, names: List[str]) -> None:
    """A variable is columns NAME__0, NAME__1, ... or a column NAME, not both (CsvDataSource cannot mix
    them); x and y are not repeated."""
    seen: dict = {}
    for n in names:
        if not n.startswith("#"):
            seen.setdefault(_variable(n), []).append(n)
    for v, cols in seen.items():
        plain = [c for c in cols if "__" not in c.split(":", 1)[0]]
        if plain and (len(plain) < len(cols) or (v in (INPUT, TARGET) and len(plain) > 1)):
            raise UserError(f"{path}: row 1: variable {v} is either one column {v} or columns {v}__0, {v}__1, ...; "
                            f"found {', '.join(cols)}")


def _kind_text(kind: str) -> str:
    return {VECTOR: "numbers", IMAGE: "an image file", ARRAY: "an array file (.npy, .csv)"}[kind]


def _label(table: Table, k: int, value) -> int:
    """The class index of data row k: a non-negative number without fraction."""
    v = value[0] if isinstance(value, list) else None
    if v is None or not (np.isfinite(v) and v >= 0 and float(v).is_integer()):
        text = table.cells[k][table.label_column].strip()
        raise UserError(f"{table.where(k, table.label_column)}: label {text!r} is not a non-negative integer "
                        f"class index")
    return int(v)


def _input(table: Table, k: int, value, folder: str, indexed: bool) -> Tuple[object, str]:
    """(the input of data row k, its kind): a vector of numbers, or a file's absolute path."""
    if indexed or not isinstance(value, FileCell):
        values = value if isinstance(value, list) else [value]
        for j, v in zip(table.columns, values):
            if isinstance(v, FileCell) or not np.isfinite(v):
                raise UserError(f"{table.where(k, j)}: {table.cells[k][j].strip()!r} is not a finite number "
                                f"(columns x__0, x__1, ... hold numbers)")
        return [float(v) for v in values], VECTOR
    column = table.columns[0]
    if not value:
        raise UserError(f"{table.where(k, column)}: empty; expected a number or a file")
    path = image_path(folder, value)
    kind = ARRAY if os.path.splitext(path)[1].lower() in ARRAY_EXTENSIONS else IMAGE
    if not os.path.isfile(path):
        what = "image" if kind == IMAGE else "file"
        raise UserError(f"{table.where(k, column)}: {what} {path} not found (paths are relative to the CSV's folder)")
    return path, kind


# ----------------------------------------------------------------------------- arrays
def read_array(path: str, where: str) -> np.ndarray:
    """A per-row array file as float64: `.npy` (plain numbers; no pickles) or `.csv` (nnabla's load_csv)."""
    try:
        if path.lower().endswith(".npy"):
            a = np.load(path, allow_pickle=False)
        else:
            with open(path, "rb") as f:
                a = load_csv(f)
        a = np.asarray(a, np.float64)
    except (OSError, ValueError, TypeError) as e:  # unreadable, pickled objects, not numbers, ragged rows
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{where}: cannot read {path} as an array of numbers ({why})") from None
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise UserError(f"{where}: {path} holds {'no numbers' if a.size == 0 else 'a value that is not finite'}")
    return a


def arrays(table: Table, shape: Optional[tuple] = None) -> np.ndarray:
    """The input of every row as float32 (N, ...): the vectors, or the array files read; every row
    (and, if given, `shape`, the training CSV's) of one shape."""
    if table.kind == VECTOR:
        out = table.x.astype(np.float32)
        got = out.shape[1:]
        if shape is not None and got != shape:
            raise UserError(f"{table.path}: x has {got[0]} value(s) per row, the training CSV {shape[0]}; "
                            f"every CSV must have the same columns x__0, x__1, ...")
        return out
    items = []
    for k, path in enumerate(table.x):
        a = read_array(path, table.where(k, table.columns[0]))
        shape = shape if shape is not None else a.shape
        if a.shape != shape:
            raise UserError(f"{table.where(k, table.columns[0])}: {path} has shape {a.shape}, the first array "
                            f"{shape}; every array must have the same shape")
        items.append(a.astype(np.float32))
    return np.stack(items)
