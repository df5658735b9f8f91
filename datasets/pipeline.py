"""Data pipeline shared by every phase: load, split, resize, normalise, augment.

Images live in memory as uint8 NCHW arrays at model resolution. A training
batch is a function of (training indices, per-sample augmentation seeds)
only, so the retrace and every retraining see exactly the image that
training saw. Any other input (vectors and arrays of users' CSVs,
nnc_dataset.py) lives as float32 and is fed to the network as read: no
resizing, normalisation or augmentation.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import numpy as np

from sgd_influence.base.errors import UserError
from .download import ARCHIVES, download, extract, local_or_download, verify
from .idx import find_idx, read_idx
from .mnist5k import load_raw_mnist5k
from .nnc_csv import read_image
from .nnc_dataset import IMAGE, Table, arrays, read_table

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS = ("fashion_mnist", "mnist", "mnist5k", "cifar10", "stl10", "csv")
# Validation instances drawn from the official training set (README, Datasets); for user CSVs
# without --val-csv: CSV_VAL_FRACTION of the training CSV.
VAL_SIZE = {"fashion_mnist": 10000, "mnist": 10000, "mnist5k": 1000, "cifar10": 10000, "stl10": 1000}
CSV_VAL_FRACTION = 0.1
# Class names by label index, for figures (MNIST and user CSVs: the index is the name).
CLASS_NAMES = {
    "fashion_mnist": ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "stl10": ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"),
}
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
PAD = 4  # random-crop padding in pixels
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
CIFAR_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
STL10_FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")


def default_data_dir() -> str:
    """`$SGD_INFLUENCE_DATA`, else `<repo>/data`."""
    return os.environ.get("SGD_INFLUENCE_DATA", os.path.join(REPO_ROOT, "data"))


@dataclass
class Split:
    """One split: images (N, C, H, W) uint8 or other inputs (N, ...) float32, labels (N,) int64,
    stable ids (N,); for a CSV's split, `rows` (N,): the position of each instance's row among its
    CSV's data rows (nnc_dataset.Table.cells), else None."""
    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Data:
    name: str
    train: Split
    val: Split
    test: Split
    n_classes: int
    mean: np.ndarray  # (C,) in [0, 1] units
    std: np.ndarray
    _padded: np.ndarray | None = field(default=None, repr=False)

    @property
    def image_shape(self) -> tuple:
        """The shape of one input: (C, H, W) for images, e.g. (D,) for vectors."""
        return self.train.x.shape[1:]

    @property
    def images(self) -> bool:
        """Whether the inputs are images (uint8, normalised and augmented); else they are fed as read."""
        return self.train.x.dtype == np.uint8

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """uint8 NCHW -> float32, (x / 255 - mean) / std per channel; other inputs as they are."""
        if x.dtype != np.uint8:
            return np.ascontiguousarray(x, np.float32)
        m = self.mean.reshape(1, -1, 1, 1)
        s = self.std.reshape(1, -1, 1, 1)
        return ((x.astype(np.float32) / 255.0 - m) / s).astype(np.float32)

    def train_batch(self, indices: np.ndarray, aug_seeds: np.ndarray):
        """Augmented, normalised training batch and labels of shape (B, 1); inputs that are not
        images are never augmented (their seeds are ignored)."""
        if not self.images:
            return self.normalize(self.train.x[indices]), self.train.y[indices].reshape(-1, 1)
        if self._padded is None:
            p = PAD
            self._padded = np.pad(self.train.x, ((0, 0), (0, 0), (p, p), (p, p)))
        x = augment(self._padded, indices, aug_seeds, self.image_shape[1:])
        return self.normalize(x), self.train.y[indices].reshape(-1, 1)


def augment(padded: np.ndarray, indices: np.ndarray, seeds: np.ndarray, hw) -> np.ndarray:
    """Random crop (from the 4-pixel zero padding) and horizontal flip.

    Each sample's crop offset and flip are a pure function of its seed, so the
    same (index, seed) always gives the same image:
    dx = s mod 9, dy = (s div 9) mod 9, flip = (s div 81) mod 2.
    A negative seed means no augmentation (the centred image).
    """
    h, w = hw
    seeds = np.asarray(seeds, dtype=np.int64)
    seeds = np.where(seeds < 0, PAD + PAD * (2 * PAD + 1), seeds)  # centre crop, no flip
    dx, dy, flip = seeds % (2 * PAD + 1), (seeds // (2 * PAD + 1)) % (2 * PAD + 1), (seeds // 81) % 2
    out = np.empty((len(indices),) + padded.shape[1:2] + (h, w), np.uint8)
    for k, i in enumerate(indices):
        crop = padded[i, :, dy[k]:dy[k] + h, dx[k]:dx[k] + w]
        out[k] = crop[:, :, ::-1] if flip[k] else crop
    return out


@functools.lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear interpolation matrix, half-pixel centres.

    Enlarging: the two nearest input pixels. Shrinking: a triangle filter
    widened to n_in / n_out input pixels (area-aware, so no aliasing); rows sum to 1.
    """
    m = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for o in range(n_out):
        c = (o + 0.5) * scale - 0.5
        if scale <= 1:
            lo = int(np.floor(c))
            t = c - lo
            taps = ((lo, 1 - t), (lo + 1, t))
        else:
            ks = np.arange(int(np.floor(c - scale)) + 1, int(np.ceil(c + scale)))
            taps = zip(ks, np.maximum(0.0, 1 - np.abs(ks - c) / scale))
        for k, wgt in taps:
            m[o, min(max(k, 0), n_in - 1)] += wgt
    m = m / m.sum(axis=1, keepdims=True) if scale > 1 else m
    m.setflags(write=False)  # cached: shared by every call
    return m


def short_edge_size(h: int, w: int) -> tuple:
    """Model resolution of an h x w image: the short edge clamped to [32, 128], aspect kept
    (MNIST 28 -> 32, CIFAR-10 32 and STL-10 96 unchanged)."""
    short = min(h, w)
    target = min(max(short, 32), 128)
    return round(h * target / short), round(w * target / short)


def resize(x: np.ndarray, hw: tuple) -> np.ndarray:
    """Resize NCHW uint8 images to hw = (height, width) with `resize_matrix`."""
    h, w = x.shape[2:]
    if (h, w) == tuple(hw):
        return x
    y = resize_matrix(h, hw[0]) @ x.astype(np.float64) @ resize_matrix(w, hw[1]).T
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def resize_short_edge(x: np.ndarray) -> np.ndarray:
    """Resize NCHW uint8 so the short edge lies in [32, 128] (`short_edge_size`)."""
    return resize(x, short_edge_size(*x.shape[2:]))


def _load_idx_dataset(name: str, data_dir: str) -> tuple:
    """Official (train_x, train_y, test_x, test_y) of an IDX dataset, downloaded if missing.

    Looked for in <data_dir>/<name with '-'>, <data_dir> (and, for Fashion-MNIST,
    the Debian package's folder): the first folder holding all four files
    (each `.gz` or decompressed) is used; else the missing ones are downloaded
    into the first folder.
    """
    archives = ARCHIVES[name]
    dirs = [os.path.join(data_dir, name.replace("_", "-")), data_dir]
    if name == "fashion_mnist":
        dirs.append(DEBIAN_FASHION_MNIST)
    found = [[find_idx(d, a.name[:-3]) for a in archives] for d in dirs]
    paths = next((ps for ps in found if all(ps)), found[0])
    for a, path in zip(archives, paths):
        if path and path.endswith(".gz"):
            verify(path, a)
    try:
        fetched = iter(download([a for a, p in zip(archives, paths) if p is None], dirs[0]))
    except UserError as e:
        if name != "fashion_mnist":
            raise
        raise UserError(f"{e}; offline, `make data` in the repository unpacks Debian's dataset-fashion-mnist "
                        f"package into data/fashion-mnist") from None
    tx, ty, sx, sy = [read_idx(p or next(fetched)) for p in paths]
    for x, y, part in ((tx, ty, "train"), (sx, sy, "t10k")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise UserError(f"{name}: {part} images {x.shape} and labels {y.shape} do not match; "
                            f"these are not the official files (delete them to download them again)")
    return tx[:, None], ty.astype(np.int64), sx[:, None], sy.astype(np.int64)


def _records(path: str, record: int) -> np.ndarray:
    """A file of fixed-size uint8 records as an (N, record) array."""
    raw = np.fromfile(path, np.uint8)
    if raw.size == 0 or raw.size % record:
        raise UserError(f"{path} is truncated (size {raw.size} is not a multiple of {record}); "
                        f"delete its folder to extract the archive again")
    return raw.reshape(-1, record)


def _read_cifar10(folder: str) -> tuple:
    """CIFAR-10 binary version: records of 1 label byte + 3072 pixel bytes (R, G, B planes, row-major)."""
    def read(fname):
        rec = _records(os.path.join(folder, fname), 3073)
        return rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0].astype(np.int64)
    parts = [read(f) for f in CIFAR_FILES[:-1]]
    tx, ty = read(CIFAR_FILES[-1])
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), tx, ty


def _read_stl10(folder: str) -> tuple:
    """STL-10 binary: 96x96x3 images stored column-major, labels 1..10 (returned as 0..9)."""
    def images(fname):
        # Column-major: (N, C, W, H) in C order -> transpose to NCHW.
        return _records(os.path.join(folder, fname), 3 * 96 * 96).reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)

    def labels(fname, n):
        y = np.fromfile(os.path.join(folder, fname), np.uint8).astype(np.int64) - 1
        if len(y) != n or y.min() < 0:
            raise UserError(f"{os.path.join(folder, fname)} holds {len(y)} labels for {n} images "
                            f"(or a label 0); delete its folder to extract the archive again")
        return y
    tx, sx = images("train_X.bin"), images("test_X.bin")
    return tx, labels("train_y.bin", len(tx)), sx, labels("test_y.bin", len(sx))


def _extracted(name: str, data_dir: str, folder: str, files: tuple) -> str:
    """<data_dir>/<folder> holding `files`, extracted from the official archive if needed."""
    path = os.path.join(data_dir, folder)
    missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
    if not missing:
        return path
    if os.path.isdir(path):
        raise UserError(f"{path} lacks {', '.join(missing)}; delete the folder (it is extracted again "
                        f"from {ARCHIVES[name][0].name}) or complete it")
    archive = local_or_download(ARCHIVES[name][0], [data_dir])
    extract(archive, [f"{folder}/{f}" for f in files], path)
    return path


def load_raw(name: str, data_dir: str) -> tuple:
    """Official (train_x, train_y, test_x, test_y), images uint8 NCHW."""
    if name in ("fashion_mnist", "mnist"):
        return _load_idx_dataset(name, data_dir)
    if name == "cifar10":
        return _read_cifar10(_extracted(name, data_dir, "cifar-10-batches-bin", CIFAR_FILES))
    if name == "stl10":
        return _read_stl10(_extracted(name, data_dir, "stl10_binary", STL10_FILES))
    raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def _take(n: int | None, available: int, what: str) -> int:
    if n is None:
        return available
    if n > available:
        raise UserError(f"{what}={n} is larger than the {available} instances available; lower it")
    return n


def _official_split(name: str, part: str, x: np.ndarray, y: np.ndarray, rows: np.ndarray | None = None) -> Split:
    """All instances of an official file; ids `<name>/<part>/<index in the file>` (`rows`: those indices,
    when the split is not the whole file in order)."""
    rows = np.arange(len(y)) if rows is None else rows
    return Split(x, y, np.array([f"{name}/{part}/{i:05d}" for i in rows]))


def _csv_split(table: Table, hw: tuple | None) -> Split:
    """The rows of a CSV: images at resolution hw (None: from the first image), ids their paths;
    other inputs as float32 (`nnc_dataset.arrays`), ids their files or `<CSV>:<row>`."""
    if table.kind != IMAGE:
        return Split(arrays(table, hw), table.y, table.ids(), np.arange(len(table.y)))
    images = []
    for k, path in enumerate(table.x):
        img = read_image(path, table.where(k, table.columns[0]))
        hw = hw or short_edge_size(*img.shape[1:])
        images.append(resize(img[None], hw)[0])
    channels = max(img.shape[0] for img in images)
    x = np.stack([np.repeat(img, channels // img.shape[0], axis=0) for img in images])
    return Split(x, table.y, table.ids(), np.arange(len(table.y)))


def _load_csv(train_csv: str | None, val_csv: str | None, test_csv: str | None, need_test: bool = True) -> tuple:
    """(train, val or None, test) Splits of the user's CSVs (test empty when `need_test` is False and
    there is no test CSV): images at one resolution and channel count, or inputs of one shape."""
    if not train_csv or (need_test and not test_csv):
        raise UserError("-ds csv needs --train-csv and --test-csv (and optionally --val-csv): "
                        "Neural Network Console dataset CSVs, e.g. with the header x:image,y:label or x__0,x__1,...,y")
    paths = [os.path.abspath(p) if p else None for p in (train_csv, val_csv, test_csv)]
    tables = [read_table(p) if p else None for p in paths]  # every CSV checked before any file is read
    for t in tables[1:]:
        if t is not None and t.kind != tables[0].kind:
            raise UserError(f"{t.path} holds inputs of another kind ({t.kind}) than the training CSV "
                            f"{tables[0].path} ({tables[0].kind}); every CSV must hold the same kind")
    train = _csv_split(tables[0], None)
    shape = train.x.shape[2:] if tables[0].kind == IMAGE else train.x.shape[1:]
    parts = [train] + [_csv_split(t, shape) if t else None for t in tables[1:]]
    if tables[0].kind == IMAGE:
        channels = max(s.x.shape[1] for s in parts if s is not None)
        for s in parts:
            if s is not None and s.x.shape[1] < channels:
                s.x = np.repeat(s.x, channels, axis=1)
    if parts[2] is None:
        parts[2] = Split(train.x[:0], train.y[:0], train.ids[:0], train.rows[:0])
    return tuple(parts)


def load_dataset(name: str, seed: int, data_dir: str | None = None, n_train: int | None = None,
                 n_val: int | None = None, n_test: int | None = None, train_csv: str | None = None,
                 val_csv: str | None = None, test_csv: str | None = None) -> Data:
    """Load `name` and split validation from the training set with `seed`.

    Built-in datasets: validation is VAL_SIZE[name] instances of the official
    training set drawn by a permutation seeded with the trial seed; the rest,
    in that permuted order, is the training split. `csv`: the same with
    CSV_VAL_FRACTION of the training CSV when `val_csv` is None, else the
    CSVs as given, in file order. `mnist5k`: the one file's fixed training pool
    and test rows (mnist5k.py) stand in for the official files. `n_train`/`n_val`/`n_test` then keep the
    first N of each split (test: file order; `n_test=0`: none, and then `csv` needs no
    test CSV). Split ids (the influence CSV's `x:image`): `<name>/<train|test>/<index in
    the official file>` for built-ins (mnist5k: the row of its file); for CSVs the absolute path of the
    row's file, or `<CSV path>:<row>` for a row of numbers (nnc_dataset.Table.ids).
    """
    if name == "csv":
        train, val, test = _load_csv(train_csv, val_csv, test_csv, need_test=n_test != 0)
    else:
        if train_csv or val_csv or test_csv:
            raise UserError(f"--train-csv/--val-csv/--test-csv are used only with -ds csv, not -ds {name}")
        folder = os.path.abspath(data_dir or default_data_dir())
        if name == "mnist5k":  # one file: its fixed test rows and training pool (mnist5k.py)
            tx, ty, sx, sy, train_rows, test_rows = load_raw_mnist5k(folder)
        else:
            (tx, ty, sx, sy), train_rows, test_rows = load_raw(name, folder), None, None
        train, val = _official_split(name, "train", tx, ty, train_rows), None
        test = _official_split(name, "test", sx, sy, test_rows)
    if val is None:
        n_val_all = VAL_SIZE[name] if name in VAL_SIZE else max(1, int(len(train) * CSV_VAL_FRACTION))
        if n_val_all >= len(train):
            raise UserError(f"the training set has {len(train)} instances, too few to split off "
                            f"{n_val_all} for validation")
        perm = np.random.RandomState(seed).permutation(len(train))
        val, val_idx, train_idx = train, perm[:n_val_all], perm[n_val_all:]
    else:
        train_idx, val_idx = np.arange(len(train)), np.arange(len(val))
    train_idx = train_idx[:_take(n_train, len(train_idx), "--n-train")]
    val_idx = val_idx[:_take(n_val, len(val_idx), "--n-val")]
    test_idx = np.arange(_take(n_test, len(test), "--n-test"))

    def take(s: Split, idx: np.ndarray) -> Split:
        x = resize_short_edge(s.x[idx]) if s.x.dtype == np.uint8 else s.x[idx]
        return Split(x, s.y[idx].astype(np.int64), s.ids[idx], None if s.rows is None else s.rows[idx])

    channels = train.x.shape[1] if train.x.dtype == np.uint8 else 1
    mean = np.full(1, 0.5) if channels == 1 else np.array(CIFAR_MEAN)
    std = np.full(1, 0.5) if channels == 1 else np.array(CIFAR_STD)
    n_classes = int(max(s.y.max() for s in (train, val, test) if len(s))) + 1
    return Data(name, take(train, train_idx), take(val, val_idx), take(test, test_idx), n_classes,
                mean.astype(np.float32), std.astype(np.float32))
