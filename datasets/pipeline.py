"""Data pipeline shared by every phase: load, split, resize, normalise, augment.

Images live in memory as uint8 NCHW arrays at model resolution. A training
batch is a function of (training indices, per-sample augmentation seeds)
only, so the retrace and every retraining see exactly the image that
training saw.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from sgd_influence.errors import UserError
from .idx import find_idx, read_idx

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS = ("fashion_mnist", "mnist", "cifar10", "stl10")
# Validation instances drawn from the official training set (design.md §3).
VAL_SIZE = {"fashion_mnist": 10000, "mnist": 10000, "cifar10": 10000, "stl10": 1000}
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
PAD = 4  # random-crop padding in pixels
URLS = {
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    "stl10": "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
}
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def default_data_dir() -> str:
    """`$SGD_INFLUENCE_DATA`, else `<repo>/data`."""
    return os.environ.get("SGD_INFLUENCE_DATA", os.path.join(REPO_ROOT, "data"))


@dataclass
class Split:
    """One split: images (N, C, H, W) uint8, labels (N,) int64, stable ids (N,)."""
    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray

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
        return self.train.x.shape[1:]

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """uint8 NCHW -> float32, (x / 255 - mean) / std per channel."""
        m = self.mean.reshape(1, -1, 1, 1)
        s = self.std.reshape(1, -1, 1, 1)
        return ((x.astype(np.float32) / 255.0 - m) / s).astype(np.float32)

    def train_batch(self, indices: np.ndarray, aug_seeds: np.ndarray):
        """Augmented, normalised training batch and labels of shape (B, 1)."""
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


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear interpolation matrix, half-pixel centres."""
    m = np.zeros((n_out, n_in), np.float64)
    for o in range(n_out):
        c = (o + 0.5) * n_in / n_out - 0.5
        lo = int(np.floor(c))
        t = c - lo
        for k, wgt in ((lo, 1 - t), (lo + 1, t)):
            m[o, min(max(k, 0), n_in - 1)] += wgt
    return m


def resize_short_edge(x: np.ndarray) -> np.ndarray:
    """Resize NCHW uint8 so the short edge lies in [32, 128] (MNIST 28 -> 32)."""
    h, w = x.shape[2:]
    short = min(h, w)
    target = min(max(short, 32), 128)
    if target == short:
        return x
    nh, nw = round(h * target / short), round(w * target / short)
    rh, rw = resize_matrix(h, nh), resize_matrix(w, nw)
    y = np.einsum("oh,nchw,pw->ncop", rh, x.astype(np.float64), rw, optimize=True)
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def _missing(name: str, data_dir: str, expected: str) -> UserError:
    return UserError(
        f"{name} files not found: expected {expected} under {data_dir} "
        f"(download from {URLS[name]} and place them there, or pass --data-dir)")


def _load_idx_dataset(name: str, dirs: list) -> tuple | None:
    for d in dirs:
        paths = [find_idx(d, s) for s in IDX_STEMS]
        if all(paths):
            xs = [read_idx(p) for p in paths]
            return xs[0][:, None], xs[1].astype(np.int64), xs[2][:, None], xs[3].astype(np.int64)
    return None


def _read_cifar10(folder: str) -> tuple:
    def read(fname):
        path = os.path.join(folder, fname)
        raw = np.fromfile(path, np.uint8)
        if raw.size % 3073:
            raise UserError(f"{path} is truncated (size {raw.size} is not a multiple of 3073)")
        rec = raw.reshape(-1, 3073)
        return rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0].astype(np.int64)
    parts = [read(f"data_batch_{i}.bin") for i in range(1, 6)]
    tx, ty = read("test_batch.bin")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), tx, ty


def _read_stl10(folder: str) -> tuple:
    def images(fname):
        raw = np.fromfile(os.path.join(folder, fname), np.uint8)
        # Stored column-major: (N, C, W, H) in C order -> transpose to NCHW.
        return raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)
    def labels(fname):
        return np.fromfile(os.path.join(folder, fname), np.uint8).astype(np.int64) - 1
    return images("train_X.bin"), labels("train_y.bin"), images("test_X.bin"), labels("test_y.bin")


def load_raw(name: str, data_dir: str) -> tuple:
    """Official (train_x, train_y, test_x, test_y), images uint8 NCHW."""
    if name in ("fashion_mnist", "mnist"):
        folder = name.replace("_", "-")
        dirs = [os.path.join(data_dir, folder), data_dir]
        if name == "fashion_mnist":
            dirs.append(DEBIAN_FASHION_MNIST)
        raw = _load_idx_dataset(name, dirs)
        if raw is None:
            hint = " (or run tools/fetch_fashion_mnist.sh)" if name == "fashion_mnist" else ""
            raise UserError(
                f"{name} files not found: expected {', '.join(s + '.gz' for s in IDX_STEMS)} "
                f"in {dirs[0]}{hint}; download from {URLS[name]} or pass --data-dir")
        return raw
    if name == "cifar10":
        folder = os.path.join(data_dir, "cifar-10-batches-bin")
        if not os.path.isfile(os.path.join(folder, "test_batch.bin")):
            raise _missing(name, data_dir, "cifar-10-batches-bin/ (extracted cifar-10-binary.tar.gz)")
        return _read_cifar10(folder)
    if name == "stl10":
        folder = os.path.join(data_dir, "stl10_binary")
        if not os.path.isfile(os.path.join(folder, "test_X.bin")):
            raise _missing(name, data_dir, "stl10_binary/ (extracted stl10_binary.tar.gz)")
        return _read_stl10(folder)
    raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def _take(n: int | None, available: int, what: str) -> int:
    if n is None:
        return available
    if n > available:
        raise UserError(f"{what}={n} is larger than the {available} instances available; lower it")
    return n


def load_dataset(name: str, seed: int, data_dir: str | None = None, n_train: int | None = None,
                 n_val: int | None = None, n_test: int | None = None) -> Data:
    """Load `name`, split validation from the official training set with `seed`.

    The validation split holds VAL_SIZE[name] instances drawn by a permutation
    seeded with the trial seed; `n_train`/`n_val`/`n_test` then keep the first
    N of each split (test: the official order).
    """
    data_dir = data_dir or default_data_dir()
    tx, ty, sx, sy = load_raw(name, data_dir)
    perm = np.random.RandomState(seed).permutation(len(ty))
    n_val_all = VAL_SIZE[name]
    val_idx, train_idx = perm[:n_val_all], perm[n_val_all:]
    train_idx = train_idx[:_take(n_train, len(train_idx), "--n-train")]
    val_idx = val_idx[:_take(n_val, len(val_idx), "--n-val")]
    test_idx = np.arange(_take(n_test, len(sy), "--n-test"))

    def split(x, y, idx, part):
        ids = np.array([f"{name}/{part}/{i:05d}" for i in idx])
        return Split(resize_short_edge(x[idx]), y[idx].astype(np.int64), ids)

    channels = tx.shape[1]
    mean = np.full(1, 0.5) if channels == 1 else np.array(CIFAR_MEAN)
    std = np.full(1, 0.5) if channels == 1 else np.array(CIFAR_STD)
    return Data(name, split(tx, ty, train_idx, "train"), split(tx, ty, val_idx, "train"),
                split(sx, sy, test_idx, "test"), int(max(ty.max(), sy.max())) + 1,
                mean.astype(np.float32), std.astype(np.float32))
