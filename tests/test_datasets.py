import gzip

import numpy as np
import pytest

from datasets.idx import read_idx
from datasets.pipeline import (PAD, _read_cifar10, _read_stl10, augment, load_dataset,
                               resize_short_edge)
from sgd_influence.base.errors import UserError
from conftest import write_idx


def test_idx_roundtrip_plain_and_gzip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", arr)
    with open(tmp_path / "a", "rb") as f, gzip.open(tmp_path / "a.gz", "wb") as g:
        g.write(f.read())
    assert np.array_equal(read_idx(str(tmp_path / "a")), arr)
    assert np.array_equal(read_idx(str(tmp_path / "a.gz")), arr)


def test_truncated_idx_is_a_clear_error(tmp_path):
    write_idx(tmp_path / "a", np.zeros((5, 4, 4), np.uint8))
    data = (tmp_path / "a").read_bytes()
    (tmp_path / "a").write_bytes(data[:-3])
    with pytest.raises(UserError, match="truncated"):
        read_idx(str(tmp_path / "a"))


def test_resize_28_to_32_keeps_constants_and_orientation():
    x = np.full((1, 1, 28, 28), 77, np.uint8)
    assert np.array_equal(resize_short_edge(x), np.full((1, 1, 32, 32), 77, np.uint8))
    x = np.zeros((1, 1, 28, 28), np.uint8)
    x[0, 0, :14, :] = 255  # top half bright
    y = resize_short_edge(x)[0, 0]
    assert y[:15].mean() > 200 and y[17:].mean() < 50
    assert resize_short_edge(np.zeros((1, 3, 96, 96), np.uint8)).shape == (1, 3, 96, 96)


def test_augmentation_is_a_function_of_the_seed():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (3, 1, 8, 8)).astype(np.uint8)
    padded = np.pad(x, ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD)))
    a = augment(padded, np.array([0, 1, 2]), np.array([5, 81 + 4 * 9 + 4, 40]), (8, 8))
    b = augment(padded, np.array([0, 1, 2]), np.array([5, 81 + 4 * 9 + 4, 40]), (8, 8))
    assert np.array_equal(a, b)
    # seed 81 + 4*9 + 4: centre crop (dx = dy = 4), flipped.
    assert np.array_equal(a[1, 0], x[1, 0, :, ::-1])
    # Negative seed: no augmentation.
    assert np.array_equal(augment(padded, np.array([2]), np.array([-1]), (8, 8))[0], x[2])


def test_cifar10_binary_records(tmp_path):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, 2).astype(np.uint8)
        imgs = rng.integers(0, 255, (2, 3, 32, 32)).astype(np.uint8)
        rec = np.concatenate([labels[:, None], imgs.reshape(2, -1)], axis=1)
        rec.tofile(tmp_path / name)
        if name == "test_batch.bin":
            want = (imgs, labels)
    tx, ty, sx, sy = _read_cifar10(str(tmp_path))
    assert tx.shape == (10, 3, 32, 32) and np.array_equal(sx, want[0]) and np.array_equal(sy, want[1])


def test_stl10_is_read_column_major(tmp_path):
    img = np.zeros((1, 3, 96, 96), np.uint8)
    img[0, :, 0, 5] = 200  # row 0, column 5
    # The official file stores each channel column-major (transposed).
    for part in ("train", "test"):
        img.transpose(0, 1, 3, 2).tofile(tmp_path / f"{part}_X.bin")
        np.array([3], np.uint8).tofile(tmp_path / f"{part}_y.bin")
    tx, ty, _, _ = _read_stl10(str(tmp_path))
    assert tx[0, 0, 0, 5] == 200 and tx[0, 0, 5, 0] == 0 and ty[0] == 2


def test_split_is_seeded_disjoint_and_sized(tmp_path):
    d = tmp_path / "fashion-mnist"
    d.mkdir()
    rng = np.random.default_rng(0)
    for part, n in (("train", 10050), ("t10k", 20)):
        write_idx(d / f"{part}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        write_idx(d / f"{part}-labels-idx1-ubyte", rng.integers(0, 10, n))
    a = load_dataset("fashion_mnist", 0, str(tmp_path), n_train=30, n_val=20, n_test=10)
    b = load_dataset("fashion_mnist", 0, str(tmp_path), n_train=30, n_val=20, n_test=10)
    c = load_dataset("fashion_mnist", 1, str(tmp_path), n_train=30, n_val=20, n_test=10)
    assert np.array_equal(a.train.ids, b.train.ids) and not np.array_equal(a.train.ids, c.train.ids)
    assert not set(a.train.ids) & set(a.val.ids)
    assert a.train.x.shape == (30, 1, 32, 32) and len(a.val) == 20 and len(a.test) == 10
    with pytest.raises(UserError, match="--n-train"):
        load_dataset("fashion_mnist", 0, str(tmp_path), n_train=100)
