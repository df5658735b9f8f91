"""Shared fixtures: CPU context, a tiny learnable dataset and tiny networks."""
import functools
import os
import struct
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# Nothing is downloaded in tests (inherited by the drivers the tests start); download tests
# lift it and point the archive table at file:// URLs.
os.environ["SGD_INFLUENCE_NO_DOWNLOAD"] = "1"

from datasets import Data, Split  # noqa: E402
from models import cnn  # noqa: E402
from sgd_influence.config.settings import set_context  # noqa: E402

set_context("0")

# Tiny networks for 8x8 inputs: two blocks of widths 4 and 8 (a few hundred parameters).
TINY = functools.partial(cnn, widths=(4, 8), batch_norm=False)
TINY_BN = functools.partial(cnn, widths=(4, 8), batch_norm=True)


def lds_args(out, *extra):
    """validate_influence.py's checked arguments for an LDS on the tiny dataset (32 training
    instances, two epochs of batch 8, the exact retrace), `extra` options appended."""
    from sgd_influence.checks.validate import build_parser, check_args
    args = build_parser().parse_args(["-o", out, "--n-train", "32", "--n-val", "24", "-e", "2", "-bs", "8",
                                      "--lr", "0.01", "--lds", "--retrace", "exact", *extra])
    args.dataset = "tiny"
    check_args(args)
    return args


def make_split(rng, n, n_classes, name, part):
    """Class c lights up a 2x2 patch at a class-specific place, plus noise."""
    y = rng.integers(0, n_classes, n)
    x = rng.integers(0, 60, (n, 1, 8, 8)).astype(np.int64)
    for i, c in enumerate(y):
        r, q = divmod(int(c), 3)
        x[i, 0, 1 + 2 * r:3 + 2 * r, 1 + 2 * q:3 + 2 * q] += 180
    ids = np.array([f"{name}/{part}/{i:05d}" for i in range(n)])
    return Split(np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64), ids)


def tiny_data(n_train=32, n_val=24, n_test=24, n_classes=3, seed=0) -> Data:
    rng = np.random.default_rng(seed)
    return Data("tiny", make_split(rng, n_train, n_classes, "tiny", "train"),
                make_split(rng, n_val, n_classes, "tiny", "val"),
                make_split(rng, n_test, n_classes, "tiny", "test"), n_classes,
                np.full(1, 0.5, np.float32), np.full(1, 0.5, np.float32))


@pytest.fixture
def data():
    return tiny_data()


def idx_bytes(arr) -> bytes:
    """An IDX file: 0, 0, type 0x08 (uint8), ndim, big-endian uint32 dims, then the bytes."""
    arr = np.asarray(arr)
    return (bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
            + arr.astype(np.uint8).tobytes())


def write_idx(path, arr):
    with open(path, "wb") as f:
        f.write(idx_bytes(arr))


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory):
    """10,080 training + 40 test images of 28x28 (the split needs 10,000 for validation)."""
    d = tmp_path_factory.mktemp("data") / "fashion-mnist"
    d.mkdir()
    rng = np.random.default_rng(0)
    for part, n in (("train", 10080), ("t10k", 40)):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 40, (n, 28, 28))
        for i, c in enumerate(y):  # a class-dependent bright band, so there is something to learn
            x[i, 2 * c + 4:2 * c + 7, 4:24] += 200
        write_idx(d / f"{part}-images-idx3-ubyte", x)
        write_idx(d / f"{part}-labels-idx1-ubyte", y)
    return str(d.parent)


@pytest.fixture(scope="session")
def finished_tiny_run(idx_dir, tmp_path_factory):
    """test_end_to_end's TINY_RUN finished once (Hara, Ours, Random); read-only: copy it to change it."""
    from test_end_to_end import TINY_RUN, run
    out = str(tmp_path_factory.mktemp("tiny_run") / "out")
    r = run(["-o", out] + TINY_RUN, idx_dir)
    assert r.returncode == 0, r.stderr
    return out
