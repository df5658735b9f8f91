"""Users' own data in Neural Network Console CSV format: loading, errors, and a run of the driver."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from sgd_influence.base import layout
from datasets import load_dataset
from datasets.pipeline import resize, resize_matrix, short_edge_size
from sgd_influence.base import layout
from sgd_influence.base.errors import UserError


def save(path, array, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, fmt)


def gray(h, w, value=0, top=None):
    a = np.full((h, w), value, np.uint8)
    if top is not None:
        a[: h // 2] = top  # bright top half: orientation is checkable
    return a


def write_csv(path, rows, header=("x:image", "y:label")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return str(path)


def test_gray_and_rgb_of_any_size(tmp_path):
    save(tmp_path / "img" / "0.png", gray(20, 30, 10, top=250))      # first image: sets 20x30 -> 32x48
    save(tmp_path / "img" / "1.png", gray(20, 30, 77))
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 30
    save(tmp_path / "img" / "2.png", rgb)                             # RGB, other size: stretched to 32x48
    save(tmp_path / "img" / "3.jpg", gray(64, 64, 128), "JPEG")
    rows = [(f"img/{i}.png", i % 2) for i in range(3)] + [("img/3.jpg", 2)] + \
           [(f"img/{i}.png", 1) for i in (0, 1)] * 3
    train = write_csv(tmp_path / "train.csv", rows)
    test = write_csv(tmp_path / "test.csv", rows[:3])
    d = load_dataset("csv", 0, train_csv=train, test_csv=test)

    assert short_edge_size(20, 30) == (32, 48) and d.image_shape == (3, 32, 48)  # one RGB image: three channels
    assert len(d.train) == 9 and len(d.val) == 1 and len(d.test) == 3 and d.n_classes == 3
    assert list(d.test.ids) == [str(tmp_path / "img" / f"{i}.png") for i in range(3)]
    assert np.array_equal(d.test.y, [0, 1, 0])
    t = d.test.x
    assert (t[1] == 77).all()                                          # grayscale repeated over R, G, B
    assert (t[0][:, :15] > 200).all() and (t[0][:, 17:] < 30).all()     # top stays top
    assert (t[2][0] == 200).all() and (t[2][1] == 0).all() and (t[2][2] == 30).all()
    everything = {**dict(zip(d.train.ids, d.train.y)), **dict(zip(d.val.ids, d.val.y))}
    assert everything[str(tmp_path / "img" / "3.jpg")] == 2


def test_val_csv_keeps_file_order_and_one_channel(tmp_path):
    for i in range(6):
        save(tmp_path / "a" / f"{i}.png", gray(40, 40, 40 * i))
    train = write_csv(tmp_path / "train.csv", [(f"a/{i}.png", i % 3) for i in range(4)])
    val = write_csv(tmp_path / "val.csv", [("a/4.png", 1)])
    sub = tmp_path / "sub"
    sub.mkdir()
    test = write_csv(sub / "test.csv", [("../a/5.png", 0), (str(tmp_path / "a" / "0.png"), 2)])  # relative to its CSV
    d = load_dataset("csv", 7, train_csv=train, val_csv=val, test_csv=test)
    assert d.image_shape == (1, 40, 40)  # short edge in [32, 128]: not resized
    assert [int(os.path.basename(p)[0]) for p in d.train.ids] == [0, 1, 2, 3]
    assert np.array_equal(d.train.x[:, 0, 5, 5], [0, 40, 80, 120]) and d.val.x[0, 0, 0, 0] == 160
    assert list(d.test.ids) == [str(tmp_path / "a" / "5.png"), str(tmp_path / "a" / "0.png")]


def test_shrinking_does_not_alias():
    """Every 4th column bright, shrunk 4x: the mean brightness (64) survives instead of one phase (0 or 255)."""
    x = np.zeros((1, 1, 512, 512), np.uint8)
    x[..., ::4] = 255
    y = resize(x, short_edge_size(512, 512))
    assert y.shape == (1, 1, 128, 128) and np.abs(y[0, 0, 2:-2, 2:-2].astype(int) - 64).max() <= 1


def test_resize_is_the_separable_bilinear_map():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 3, 28, 20)).astype(np.uint8)
    rh, rw = resize_matrix(28, 45), resize_matrix(20, 32)
    want = np.einsum("oh,nchw,pw->ncop", rh, x.astype(np.float64), rw)
    assert np.abs(resize(x, (45, 32)) - want).max() <= 0.5 + 1e-9  # rounded to the nearest integer
    assert np.allclose(rh.sum(axis=1), 1) and np.allclose(resize_matrix(128, 32).sum(axis=1), 1)


def bad(tmp_path, text=None, rows=None):
    save(tmp_path / "ok.png", gray(8, 8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    path = tmp_path / "bad.csv"
    if text is not None:
        path.write_text(text)
        return str(path)
    return write_csv(path, rows)


@pytest.mark.parametrize("make,needle", [
    (lambda p: bad(p, text=""), "bad.csv: empty file"),
    (lambda p: bad(p, text="x:image,y:label\n"), "bad.csv: no data rows"),
    (lambda p: bad(p, text="ok.png,1\nok.png,2\n"), "bad.csv: row 1: expected a header naming the input x (x:image"),
    (lambda p: bad(p, rows=[("ok.png", 0), ("missing.png", 1)]), "bad.csv: row 3, column x:image: image "),
    (lambda p: bad(p, rows=[("ok.png", 0), ("broken.png", 1)]), "bad.csv: row 3, column x:image: cannot read image"),
    (lambda p: bad(p, rows=[("ok.png", "cat")]), "bad.csv: row 2, column y:label: label 'cat' is not a non-negative integer"),
    (lambda p: bad(p, rows=[("ok.png", "-1")]), "bad.csv: row 2, column y:label: label '-1'"),
    (lambda p: bad(p, rows=[("ok.png",)]), "bad.csv: row 2: 1 field(s)"),
])
def test_bad_csv_is_one_clear_error(tmp_path, make, needle):
    path = make(tmp_path)
    with pytest.raises(UserError) as e:
        load_dataset("csv", 0, train_csv=path, test_csv=path)
    assert needle in str(e.value) and str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_sixteen_bit_images_are_refused(tmp_path):
    Image.fromarray(np.full((8, 8), 1000, np.uint16)).save(tmp_path / "deep.png")
    path = write_csv(tmp_path / "t.csv", [("deep.png", 0)])
    with pytest.raises(UserError, match=r"t.csv: row 2, column x:image: image .*deep.png has pixel mode I"):
        load_dataset("csv", 0, train_csv=path, test_csv=path)


def test_csv_options_belong_to_ds_csv(tmp_path):
    with pytest.raises(UserError, match="-ds csv needs --train-csv and --test-csv"):
        load_dataset("csv", 0)
    with pytest.raises(UserError, match="used only with -ds csv"):
        load_dataset("mnist", 0, str(tmp_path), train_csv="t.csv")


def test_influence_csv_quotes_paths_with_commas(tmp_path):
    ids = np.array(["/data/a,b.png", '/data/say "hi".png', "/data/c.png"])
    path = str(tmp_path / "influence.csv")
    layout.write_influence_csv(path, ids, np.array([1, 2, 3]), np.array([0.5, -1.0, 0.0]))
    assert layout.read_removal_order(path).tolist() == [1, 2, 0]
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert [r[0] for r in rows[1:]] == [ids[1], ids[2], ids[0]] and rows[1][1] == "2"


def make_image_folder(root):
    """Two classes told apart by a bright left or right half, 10x12 grayscale and RGB PNGs."""
    rng = np.random.default_rng(0)

    def image(label, k):
        a = rng.integers(0, 60, (10, 12)).astype(np.uint8)
        a[:, :6] += 150 if label == 0 else 0
        a[:, 6:] += 150 if label == 1 else 0
        return np.repeat(a[..., None], 3, axis=2) if k % 4 == 3 else a

    out = {}
    for part, n in (("train", 20), ("val", 6), ("test", 6)):
        rows = []
        for k in range(n):
            label = k % 2
            rel = f"images/{part}/{label}/{k:03d}.png"
            save(os.path.join(root, rel), image(label, k))
            rows.append((rel, label))
        out[part] = write_csv(os.path.join(root, f"{part}.csv"), rows)
    return out


def test_driver_on_nnc_csv(tmp_path):
    make_image_folder(str(tmp_path / "mydata"))
    args = ["-o", "out", "-ds", "csv", "--train-csv", "mydata/train.csv", "--val-csv", "mydata/val.csv",
            "--test-csv", "mydata/test.csv", "-e", "1", "-bs", "8", "-nt", "1", "-r", "0", "2",
            "--methods", "Ours", "Random"]

    def run(a):
        return subprocess.run([sys.executable, os.path.join(ROOT, "eval_sgd_influence.py")] + a,
                              capture_output=True, text=True, cwd=str(tmp_path))

    r = run(args)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    with open(out / "influence" / "Ours" / "influence_ours_0.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["x:image", "y:label", "influence", "datasource_index"]
    with open(tmp_path / "mydata" / "train.csv", newline="") as f:
        want = {str(tmp_path / "mydata" / p): int(y) for p, y in list(csv.reader(f))[1:]}
    got = {p: int(y) for p, y, _, _ in rows[1:]}
    assert got == want and all(os.path.isfile(p) for p in got)  # paths users (and NNC) can open
    assert [float(r[2]) for r in rows[1:]] == sorted(float(r[2]) for r in rows[1:])
    for m, f in (("Ours", "ours"), ("Random", "random")):
        assert (out / "score" / m / "score_delete_worst_2_seed_0.csv").exists()
    stored = json.loads((out / "run.json").read_text())["settings"]
    assert stored["train_csv"] == "../mydata/train.csv"  # relative to the output folder: the folder can move
    settings = layout.read_settings(str(out))
    assert settings["train_csv"] == str(tmp_path / "mydata" / "train.csv")
    assert settings["val_csv"] == str(tmp_path / "mydata" / "val.csv")

    # Other CSVs into the same folder: refused, naming the difference.
    r = run([a for a in args if a not in ("--val-csv", "mydata/val.csv")])
    assert r.returncode == 2 and "val_csv" in r.stderr and "--overwrite" in r.stderr and "Traceback" not in r.stderr
