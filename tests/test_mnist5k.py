"""-ds mnist5k: the real MNIST subset of `make data` as a dataset (datasets/mnist5k.py)."""
import gzip
import os

import numpy as np
import pytest

from datasets import default_data_dir, load_dataset
from datasets import mnist5k as m5
from sgd_influence.base.errors import UserError
from sgd_influence.base.layout import file_digest


def write_subset(path, per_class=30, classes=10, seed=0):
    """A file in mnist_5k.csv.gz's format (784 pixels then the label, sorted by class); its rows."""
    rng = np.random.RandomState(seed)
    rows = np.concatenate([np.c_[rng.randint(0, 256, (per_class, 784)), np.full(per_class, c)]
                           for c in range(classes)])
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with gzip.open(str(path), "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    return rows


def test_split_rows_fixed_disjoint_balanced_interleaved():
    y = np.repeat(np.arange(3), 5)  # 3 classes x 5 rows, sorted by class as the file is
    pool, test = m5.split_rows(y, test_per_class=2)
    assert list(test) == [3, 8, 13, 4, 9, 14]  # each class's last two, round-robin over the classes
    assert list(pool) == [0, 5, 10, 1, 6, 11, 2, 7, 12]
    assert list(y[test]) == [0, 1, 2] * 2 and list(y[pool]) == [0, 1, 2] * 3
    with pytest.raises(UserError, match="too few images of class 0"):
        m5.split_rows(y, test_per_class=5)


def test_dataset_from_a_synthetic_subset(tmp_path, monkeypatch):
    path = str(tmp_path / m5.MNIST5K_FILE)
    rows = write_subset(path, per_class=350)  # 3,500 rows: pool 150 per class, test 200 per class
    with pytest.raises(UserError, match=f"has sha256 {file_digest(path)}, not {m5.MNIST5K_SHA256}"):
        load_dataset("mnist5k", 0, str(tmp_path))  # the checksum is always checked
    monkeypatch.setattr(m5, "MNIST5K_SHA256", file_digest(path))  # this synthetic file stands in for the real one
    d0 = load_dataset("mnist5k", 0, str(tmp_path), n_val=100)  # 1,000 drawn for validation, the first 100 kept
    d1 = load_dataset("mnist5k", 1, str(tmp_path), n_val=100)
    assert (len(d0.train), len(d0.val), len(d0.test)) == (500, 100, 2000)
    assert d0.image_shape == (1, 32, 32) and d0.n_classes == 10
    # the test split is fixed; validation and training are drawn by the trial seed from the pool
    assert np.array_equal(d0.test.ids, d1.test.ids) and not np.array_equal(d0.val.ids, d1.val.ids)
    file_rows = lambda s: np.array([int(i.rsplit("/", 1)[1]) for i in s.ids])  # noqa: E731
    tr, va, te = (file_rows(s) for s in (d0.train, d0.val, d0.test))
    assert len(set(tr) | set(va) | set(te)) == 2600 and not (set(tr) | set(va)) & set(te)
    assert all(r % 350 >= 150 for r in te) and all(r % 350 < 150 for r in tr)  # test: each class's last 200 rows
    for split, r in ((d0.train, tr), (d0.test, te)):  # ids point at the file's rows: their labels agree
        assert np.array_equal(split.y, rows[r, -1])
    assert list(np.bincount(d0.test.y[:20])) == [2] * 10  # any prefix of the test split is class-balanced
    with pytest.raises(UserError, match="--n-test=2001 is larger than the 2000"):
        load_dataset("mnist5k", 0, str(tmp_path), n_test=2001)


def test_missing_subset_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="-ds mnist5k needs .*mnist_5k.csv.gz.*run 'make data'"):
        load_dataset("mnist5k", 0, str(tmp_path))


def test_real_subset_as_the_demo_split():
    """The file `make data` fetches (skipped where it is not there): 2,000 train / 1,000 val / 2,000 test."""
    if m5.mnist5k_path(default_data_dir()) is None:
        pytest.skip("no data/mnist5k/mnist_5k.csv.gz (make data fetches it)")
    d = load_dataset("mnist5k", 0)
    assert (len(d.train), len(d.val), len(d.test)) == (2000, 1000, 2000)
    assert list(np.bincount(d.test.y)) == [200] * 10
    assert np.bincount(d.train.y).min() > 150  # a random 2,000 of the 300-per-class pool
