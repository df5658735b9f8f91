"""Official dataset files: archives synthesized byte for byte in each published format,
downloads from file:// URLs (nothing leaves the machine), checksums, truncation, offline errors."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import urllib.error

import numpy as np
import pytest

from conftest import ROOT, idx_bytes
from datasets import download as dl
from datasets import load_dataset, pipeline
from datasets.download import Archive
from sgd_influence.base.errors import UserError

IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def gz(data: bytes, name: str | None, mtime: int = 1504176606) -> bytes:
    """gzip as the official IDX archives are written: FNAME field set (name=None: none, as Debian's copy)."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename=name or "", mode="wb", fileobj=buf, mtime=mtime) as g:
        g.write(data)
    return buf.getvalue()


def targz(members: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def register(monkeypatch, dataset: str, files: dict, urls=None, content: dict | None = None):
    """Point the archive table of `dataset` at `files` (name -> bytes): md5 and size of these bytes."""
    table = tuple(Archive(name, tuple(urls[name]) if urls else (f"https://example.invalid/{name}",),
                          hashlib.md5(data).hexdigest(), len(data), (content or {}).get(name))
                  for name, data in files.items())
    monkeypatch.setitem(dl.ARCHIVES, dataset, table)


def mnist_like(n_train=8, n_test=4):
    """Images with one bright pixel at (row 2 + label, column 20): orientation and labels are checkable."""
    arrays = []
    for n in (n_train, n_test):
        y = np.arange(n) % 10
        x = np.zeros((n, 28, 28), np.uint8)
        x[np.arange(n), 2 + y, 20] = 255
        x[:, 27, 0] = np.arange(n)  # the instance's index in the file, bottom-left
        arrays += [x, y]
    return arrays


def idx_archives(arrays) -> dict:
    return {name: gz(idx_bytes(a), name[:-3]) for name, a in zip(IDX_NAMES, arrays)}


def test_idx_archives_are_downloaded_verified_and_read(tmp_path, monkeypatch):
    arrays = mnist_like()
    files = idx_archives(arrays)
    server = tmp_path / "server"
    server.mkdir()
    for name, data in files.items():
        (server / name).write_bytes(data)
    # First URL: a mirror that fails; the second serves the file.
    urls = {n: (f"file://{tmp_path}/down/{n}", f"file://{server}/{n}") for n in files}
    register(monkeypatch, "mnist", files, urls)
    monkeypatch.delenv(dl.NO_DOWNLOAD_ENV)
    data_dir = tmp_path / "data"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = data_dir / "mnist" / f"train-images-idx3-ubyte.tmp{int(dead.stdout)}.gz"  # left by a killed download
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a file")

    tx, ty, sx, sy = pipeline.load_raw("mnist", str(data_dir))
    for got, want in zip((tx[:, 0], ty, sx[:, 0], sy), arrays):
        assert np.array_equal(got, want)
    assert tx[3, 0, 2 + 3, 20] == 255 and tx[3, 0, 20, 2 + 3] == 0  # row, column as stored
    for name, data in files.items():
        assert (data_dir / "mnist" / name).read_bytes() == data
    assert sorted(os.listdir(data_dir / "mnist")) == sorted(files)  # no temporary left

    # Later loads use the verified local copies: no URL is needed any more.
    register(monkeypatch, "mnist", files)
    monkeypatch.setitem(pipeline.VAL_SIZE, "mnist", 3)
    d = load_dataset("mnist", 0, str(data_dir))
    assert len(d.train) == 5 and len(d.val) == 3 and len(d.test) == 4 and d.n_classes == 8
    for split, part, (x, y) in ((d.train, "train", arrays[:2]), (d.val, "train", arrays[:2]),
                                (d.test, "test", arrays[2:])):
        for k, ident in enumerate(split.ids):
            name, p, index = ident.split("/")
            assert (name, p) == ("mnist", part) and len(index) == 5
            assert split.y[k] == y[int(index)]
            assert np.array_equal(split.x[k], pipeline.resize_short_edge(x[int(index)][None, None])[0])


def test_wrong_checksum_on_download_keeps_nothing(tmp_path, monkeypatch):
    files = idx_archives(mnist_like())
    (tmp_path / "srv").mkdir()
    for name, data in files.items():
        (tmp_path / "srv" / name).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped
    register(monkeypatch, "mnist", files, {n: (f"file://{tmp_path}/srv/{n}",) for n in files})
    monkeypatch.delenv(dl.NO_DOWNLOAD_ENV)
    with pytest.raises(UserError) as e:
        pipeline.load_raw("mnist", str(tmp_path / "data"))
    msg = str(e.value)
    assert "md5" in msg and f"file://{tmp_path}/srv/train-images-idx3-ubyte.gz" in msg
    assert str(tmp_path / "data" / "mnist") in msg and "\n" not in msg
    assert os.listdir(tmp_path / "data" / "mnist") == []  # neither the file nor a temporary


def test_offline_error_names_url_files_and_folder(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(dl.urllib.request, "urlopen", offline)
    monkeypatch.delenv(dl.NO_DOWNLOAD_ENV)
    monkeypatch.setattr(pipeline, "DEBIAN_FASHION_MNIST", str(tmp_path / "none"))
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    real = dl.ARCHIVES["fashion_mnist"]
    (folder / real[1].name).write_bytes(b"")  # present files are checked first: an empty one is refused
    with pytest.raises(UserError, match="truncated"):
        pipeline.load_raw("fashion_mnist", str(tmp_path / "data"))
    (folder / real[1].name).unlink()
    with pytest.raises(UserError) as e:
        pipeline.load_raw("fashion_mnist", str(tmp_path / "data"))
    msg = str(e.value)
    assert "Name or service not known" in msg and real[0].urls[0] in msg
    assert all(a.name in msg for a in real) and f"put them in {folder}" in msg and "\n" not in msg


def test_missing_data_through_the_driver_is_one_line(tmp_path):
    """The test suite runs with downloads off: the driver says what to fetch and where to put it."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "eval_sgd_influence.py"), "-ds", "stl10",
                        "--data-dir", "d", "-o", "o"], capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "stl10_binary.tar.gz" in err[0]
    assert "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz" in err[0] and str(tmp_path / "d") in err[0]


def test_truncated_local_archive_is_reported_and_not_used(tmp_path, monkeypatch):
    files = idx_archives(mnist_like())
    register(monkeypatch, "mnist", files)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data[:-20] if name.startswith("t10k-images") else data)
    with pytest.raises(UserError) as e:
        pipeline.load_raw("mnist", str(tmp_path))
    path = folder / "t10k-images-idx3-ubyte.gz"
    want = len(files["t10k-images-idx3-ubyte.gz"])
    assert f"{path} is truncated ({want - 20:,} of {want:,} bytes)" in str(e.value)
    assert path.exists()  # the user's file is reported, not deleted


def test_recompressed_idx_copy_passes_on_its_content_checksum(tmp_path, monkeypatch):
    """Debian's Fashion-MNIST is the official data recompressed: accepted by the content md5 only."""
    arrays = mnist_like()
    official = idx_archives(arrays)
    content = {n: hashlib.md5(idx_bytes(a)).hexdigest() for n, a in zip(IDX_NAMES, arrays)}
    (tmp_path / "fashion-mnist").mkdir()
    for name, a in zip(IDX_NAMES, arrays):
        (tmp_path / "fashion-mnist" / name).write_bytes(gz(idx_bytes(a), None, mtime=1591347949))
    register(monkeypatch, "fashion_mnist", official, content=content)
    assert np.array_equal(pipeline.load_raw("fashion_mnist", str(tmp_path))[1], arrays[1])
    register(monkeypatch, "fashion_mnist", official)  # no content checksum known: refused
    with pytest.raises(UserError, match="not used"):
        pipeline.load_raw("fashion_mnist", str(tmp_path))


def cifar_records(labels, images) -> bytes:
    return np.concatenate([labels[:, None].astype(np.uint8), images.reshape(len(labels), -1)], axis=1).tobytes()


def test_cifar10_binary_archive(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    members, want = {"cifar-10-batches-bin/batches.meta.txt": b"airplane\n",
                     "cifar-10-batches-bin/readme.html": b"<html/>"}, {}
    for k, f in enumerate(pipeline.CIFAR_FILES):
        y = rng.integers(0, 10, 3).astype(np.uint8)
        x = rng.integers(0, 200, (3, 3, 32, 32)).astype(np.uint8)
        x[:, 0, 0, 5] = 255  # red plane, row 0, column 5
        x[:, 2, 31, 0] = 250  # blue plane, bottom-left
        members[f"cifar-10-batches-bin/{f}"] = cifar_records(y, x)
        want[f] = (x, y)
    archive = targz(members)
    register(monkeypatch, "cifar10", {"cifar-10-binary.tar.gz": archive})
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(archive)

    tx, ty, sx, sy = pipeline.load_raw("cifar10", str(tmp_path))
    assert np.array_equal(tx, np.concatenate([want[f][0] for f in pipeline.CIFAR_FILES[:5]]))
    assert np.array_equal(ty, np.concatenate([want[f][1] for f in pipeline.CIFAR_FILES[:5]]))
    assert np.array_equal(sx, want["test_batch.bin"][0]) and np.array_equal(sy, want["test_batch.bin"][1])
    assert (tx[:, 0, 0, 5] == 255).all() and (tx[:, 2, 31, 0] == 250).all()
    assert sorted(os.listdir(tmp_path / "cifar-10-batches-bin")) == sorted(pipeline.CIFAR_FILES)
    assert sorted(os.listdir(tmp_path)) == ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]

    (tmp_path / "cifar-10-binary.tar.gz").unlink()  # the extracted folder alone is enough
    monkeypatch.setitem(pipeline.VAL_SIZE, "cifar10", 5)
    d = load_dataset("cifar10", 3, str(tmp_path))
    assert d.image_shape == (3, 32, 32) and len(d.train) == 10 and len(d.test) == 3
    i = int(d.train.ids[0].split("/")[2])
    assert d.train.ids[0].startswith("cifar10/train/") and np.array_equal(d.train.x[0], tx[i])


def test_stl10_binary_archive_is_column_major(tmp_path, monkeypatch):
    img = np.zeros((2, 3, 96, 96), np.uint8)
    img[:, 0, 0, 5] = 200  # red, row 0, column 5
    img[1, 1, 90, 3] = 100  # green, row 90, column 3
    colmajor = img.transpose(0, 1, 3, 2).tobytes()  # each channel stored column by column
    members = {"stl10_binary/train_X.bin": colmajor, "stl10_binary/train_y.bin": bytes([1, 10]),
               "stl10_binary/test_X.bin": colmajor, "stl10_binary/test_y.bin": bytes([3, 4]),
               "stl10_binary/unlabeled_X.bin": colmajor, "stl10_binary/class_names.txt": b"airplane\n"}
    archive = targz(members)
    register(monkeypatch, "stl10", {"stl10_binary.tar.gz": archive})
    (tmp_path / "stl10_binary.tar.gz").write_bytes(archive)
    tx, ty, sx, sy = pipeline.load_raw("stl10", str(tmp_path))
    assert np.array_equal(tx, img) and np.array_equal(sx, img)
    assert tx[0, 0, 0, 5] == 200 and tx[0, 0, 5, 0] == 0 and tx[1, 1, 90, 3] == 100
    assert ty.tolist() == [0, 9] and sy.tolist() == [2, 3]  # labels 1..10 -> 0..9
    assert sorted(os.listdir(tmp_path / "stl10_binary")) == sorted(pipeline.STL10_FILES)  # no unlabeled_X.bin


def test_truncated_tar_archive(tmp_path, monkeypatch):
    members = {f"cifar-10-batches-bin/{f}": cifar_records(np.zeros(2, np.uint8), np.zeros((2, 3, 32, 32), np.uint8))
               for f in pipeline.CIFAR_FILES}
    archive = targz(members)
    cut = archive[:len(archive) // 2]
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(cut)
    register(monkeypatch, "cifar10", {"cifar-10-binary.tar.gz": archive})
    with pytest.raises(UserError, match=r"cifar-10-binary.tar.gz is truncated \("):
        pipeline.load_raw("cifar10", str(tmp_path))
    # Even an archive whose checksum were accepted is refused when it cannot be read to the end.
    register(monkeypatch, "cifar10", {"cifar-10-binary.tar.gz": cut})
    with pytest.raises(UserError, match="is corrupt or truncated"):
        pipeline.load_raw("cifar10", str(tmp_path))
    assert os.listdir(tmp_path) == ["cifar-10-binary.tar.gz"]  # no folder, no temporary


FASHION = os.path.join(ROOT, "data", "fashion-mnist")


@pytest.mark.skipif(not os.path.isdir(FASHION), reason="real Fashion-MNIST not present")
def test_real_fashion_mnist_files_pass_verification():
    """The copies in data/fashion-mnist are accepted; when they are Debian's repack (gzip header without
    the file name), restoring the official header reproduces the published archive md5."""
    for a in dl.ARCHIVES["fashion_mnist"]:
        path = os.path.join(FASHION, a.name)
        dl.verify(path, a)
        raw = open(path, "rb").read()
        if raw[3] == 0:  # no FNAME: rebuild the official header (mtime of the published files)
            mtime = 1504176606 if a.name.startswith("train") else 1504176627
            header = b"\x1f\x8b\x08\x08" + mtime.to_bytes(4, "little") + b"\x00\x03" + a.name[:-3].encode() + b"\0"
            assert hashlib.md5(header + raw[10:]).hexdigest() == a.md5
