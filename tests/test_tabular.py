"""Neural Network Console CSVs of every kind (datasets/nnc_dataset.py): vectors (x__0..x__N), per-row
.npy/.csv arrays and images, the MLP for vectors, every method, validate, export and analyze on
tabular data, and the breast cancer conversion."""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import nnabla as nn
import nnabla.functions as F
import pytest
from PIL import Image

from conftest import ROOT
from datasets import Data, Split, load_dataset
from datasets import breast_cancer
from datasets.nnc_dataset import read_table
from models import dense
from sgd_influence.base import layout
from sgd_influence.base.errors import UserError
from sgd_influence.base.metrics import spearman
from sgd_influence.config import settings
from sgd_influence.core import network
from sgd_influence.core.batch_norm import EPS, weighted_batch_norm
from sgd_influence.core.graphs import flat, flat_trainable
from sgd_influence.core.infl import retrace, val_gradient
from sgd_influence.core.params import StepParamsReader, load_checkpoint
from sgd_influence.core.step_record import StepRecord
from sgd_influence.core.train import SGD, init_model, train

TINY_MLP = functools.partial(dense, widths=(8, 6), batch_norm=False)
TINY_MLP_BN = functools.partial(dense, widths=(8, 6), batch_norm=True)


# ----------------------------------------------------------------------------- files
def write(path, header, rows):
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def tabular(rng, n, d=5, n_classes=2):
    """Rows of d standard-normal features whose class is a noisy linear function of them."""
    x = rng.normal(size=(n, d))
    score = x[:, 0] + 0.5 * x[:, 1] + 0.3 * rng.normal(size=n)
    y = (np.digitize(score, np.quantile(score, np.linspace(0, 1, n_classes + 1)[1:-1]))).astype(int)
    return x, y


def tabular_csvs(root, n=(48, 16, 16), d=5, n_classes=2, seed=0):
    """train/val/test.csv: x__0..x__{d-1}, a comment column #id between them, then y:label."""
    rng = np.random.default_rng(seed)
    out = {}
    for part, m in zip(("train", "val", "test"), n):
        x, y = tabular(rng, m, d, n_classes)
        header = [f"x__{i}" for i in range(2)] + ["#id"] + [f"x__{i}" for i in range(2, d)] + ["y:label"]
        rows = [[f"{v:.6f}" for v in x[k, :2]] + [f"{part}-{k}"] + [f"{v:.6f}" for v in x[k, 2:]] + [y[k]]
                for k in range(m)]
        out[part] = write(os.path.join(root, f"{part}.csv"), header, rows)
    return out


# ----------------------------------------------------------------------------- reading
def test_vector_rows_read_as_nnc_does(tmp_path):
    """x__i columns in header order (a comment column between them ignored), y or y:label, blank lines
    and empty trailing fields skipped, row numbers as lines of the file, ids <CSV>:<row>."""
    p = tmp_path / "t.csv"
    p.write_text("x__0,#note,x__1,y\n1.5,a,-2,0\n\n3,b,4e-1,1,\n5,c,6,1\n")
    t = read_table(str(p))
    assert t.kind == "vector" and t.lines == [2, 4, 5] and t.y.tolist() == [0, 1, 1]
    assert np.array_equal(t.x, [[1.5, -2], [3, 0.4], [5, 6]])
    assert t.ids().tolist() == [f"{p}:2", f"{p}:4", f"{p}:5"]
    assert t.header == ["x__0", "#note", "x__1", "y"] and t.cells[1][:4] == ["3", "b", "4e-1", "1"]
    test = write(tmp_path / "test.csv", ["x__0", "x__1", "y:label"], [[0, 0, 2]])
    d = load_dataset("csv", 0, train_csv=str(p), val_csv=str(p), test_csv=test)
    assert not d.images and d.image_shape == (2,) and d.n_classes == 3
    assert d.train.x.dtype == np.float32 and np.array_equal(d.train.rows, [0, 1, 2])
    # Fed as read: no normalisation, no augmentation (the seeds are ignored).
    x, y = d.train_batch(np.array([2, 0]), np.array([5, 77]))
    assert np.array_equal(x, np.float32([[5, 6], [1.5, -2]])) and y.ravel().tolist() == [1, 0]
    assert np.array_equal(d.normalize(d.val.x), d.val.x)


def test_one_number_column_and_array_files(tmp_path):
    """A column x of numbers is a vector of one; a column naming .npy or .csv files is an array per row
    (relative to the CSV's folder), read without pickles; ids are the files."""
    p = write(tmp_path / "one.csv", ["x", "y"], [[0.5, 1], [-1, 0]])
    assert read_table(p).x.tolist() == [[0.5], [-1.0]]
    rng = np.random.default_rng(1)
    arrays = [rng.normal(size=(2, 3)).astype(np.float32) for _ in range(4)]
    os.makedirs(tmp_path / "a")
    for k, a in enumerate(arrays[:2]):
        np.save(tmp_path / "a" / f"{k}.npy", a)
    for k, a in enumerate(arrays[2:], 2):
        np.savetxt(tmp_path / "a" / f"{k}.csv", a, delimiter=",", fmt="%.9g")
    p = write(tmp_path / "arr.csv", ["x:array", "y"], [[f"a/{k}.{'npy' if k < 2 else 'csv'}", k % 2] for k in range(4)])
    d = load_dataset("csv", 0, train_csv=p, val_csv=p, test_csv=p)
    assert d.image_shape == (2, 3) and not d.images
    assert np.allclose(d.train.x, np.stack(arrays), atol=1e-6)
    assert d.train.ids.tolist() == [str(tmp_path / "a" / f"{k}.{'npy' if k < 2 else 'csv'}") for k in range(4)]
    with open(tmp_path / "a" / "obj.npy", "wb") as f:  # an object array's header (its payload: pickled data)
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": (1,)})
        f.write(b"not read")
    bad = write(tmp_path / "bad.csv", ["x", "y"], [["a/0.npy", 0], ["a/obj.npy", 1]])
    with pytest.raises(UserError, match=r"bad.csv: row 3, column x: cannot read .*obj.npy as an array"):
        load_dataset("csv", 0, train_csv=bad, test_csv=bad)
    np.save(tmp_path / "a" / "big.npy", np.zeros((3, 3), np.float32))
    bad = write(tmp_path / "bad.csv", ["x", "y"], [["a/0.npy", 0], ["a/big.npy", 1]])
    with pytest.raises(UserError, match=r"row 3, column x: .*big.npy has shape \(3, 3\), the first array \(2, 3\)"):
        load_dataset("csv", 0, train_csv=bad, test_csv=bad)


@pytest.mark.parametrize("text,needle", [
    ("x__0,x__1,y\n1,abc,0\n", "row 2, column x__1: 'abc' is not a finite number"),
    ("x__0,x__1,y\n1,nan,0\n", "row 2, column x__1: 'nan' is not a finite number"),
    ("x__0,x__1,y:label\n1,2,0\n3,4,0.5\n", "row 3, column y:label: label '0.5' is not a non-negative integer"),
    ("x__0,x__1,y\n1,2,0\n3,4\n", "row 3: 2 field(s), the header has 3"),
    ("x__0,x__1,y\n1,2,0\n3,4,1,9\n", "row 3: 4 field(s), the header has 3"),
    ("x__0,x:image,y\n1,2,0\n", "row 1: variable x is either one column x or columns x__0, x__1"),
    ("x__0,y__0,y__1\n1,2,0\n", "row 1: the class index y must be one column"),
    ("a,b\n1,2\n", "row 1: expected a header naming the input x"),
    ("x__0,,y\n1,2,0\n", "row 1: column 2 of the header is empty"),
    ("x,y\n1,0\nmissing.npy,1\n", "row 3, column x: file"),
    ("x,y\nimg.png,0\n2,1\n", "row 3, column x: numbers, but row 2 holds an image file"),
])
def test_malformed_tabular_csv_is_one_line_naming_row_and_column(tmp_path, text, needle):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "img.png")
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(UserError) as e:
        load_dataset("csv", 0, train_csv=str(tmp_path / "bad.csv"), test_csv=str(tmp_path / "bad.csv"))
    assert needle in str(e.value) and str(tmp_path / "bad.csv") in str(e.value) and "\n" not in str(e.value)


def test_csvs_of_different_kinds_or_widths_are_refused(tmp_path):
    c = tabular_csvs(str(tmp_path / "a"))
    narrow = tabular_csvs(str(tmp_path / "b"), d=4)
    with pytest.raises(UserError, match=r"x has 4 value\(s\) per row, the training CSV 5"):
        load_dataset("csv", 0, train_csv=c["train"], test_csv=narrow["test"])
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "i.png")
    images = write(tmp_path / "img.csv", ["x:image", "y:label"], [["i.png", 0]])
    with pytest.raises(UserError, match="holds inputs of another kind"):
        load_dataset("csv", 0, train_csv=c["train"], test_csv=images)


# ----------------------------------------------------------------------------- image CSVs unchanged
def make_image_csvs(root):
    """Image CSVs that exercise the reader: grayscale and RGB of several sizes, JPEG, paths relative to
    the CSV (also from a subfolder), absolute and holding a comma, an extra column, a blank line."""
    rng = np.random.default_rng(34)
    os.makedirs(os.path.join(root, "img", "a,b"), exist_ok=True)
    rows = []
    for k in range(14):
        h, w = (20, 30) if k % 3 else (40, 36)
        a = rng.integers(0, 256, (h, w) if k % 4 else (h, w, 3)).astype(np.uint8)
        name = f"img/{k:02d}.png" if k % 5 else f"img/a,b/{k:02d}.jpg"
        Image.fromarray(a).save(os.path.join(root, name), "JPEG" if name.endswith("jpg") else "PNG")
        rows.append((name if k % 7 else os.path.join(root, name), str(k % 3), f"note {k}"))

    def put(path, part):
        with open(path, "w", newline="") as f:
            f.write("x:image,y:label,comment\n")
            for i, (p, y, c) in enumerate(part):
                q = '"' + p + '"' if "," in p else p
                f.write(f"{q},{y},{c}\n" + ("\n" if i == 2 else ""))
    put(os.path.join(root, "train.csv"), rows[:10])
    put(os.path.join(root, "test.csv"), rows[10:])
    os.makedirs(os.path.join(root, "sub"), exist_ok=True)
    put(os.path.join(root, "sub", "val.csv"),
        [("../" + p if not os.path.isabs(p) else p, y, c) for p, y, c in rows[10:13]])
    return {k: os.path.join(root, f) for k, f in (("train", "train.csv"), ("test", "test.csv"), ("val", "sub/val.csv"))}


def digest(d, root):
    h = hashlib.sha256()
    for s in (d.train, d.val, d.test):
        h.update(str(s.x.shape).encode())
        h.update(s.x.tobytes())
        h.update(s.y.astype(np.int64).tobytes())
        h.update("|".join(os.path.relpath(i, root) for i in s.ids).encode())
    h.update(f"{d.n_classes} {d.mean.tolist()} {d.std.tolist()}".encode())
    return h.hexdigest()


def test_image_csvs_load_byte_for_byte_as_before(tmp_path):
    """The digests of every split's pixels, labels, ids, class count and normalisation, computed with the
    hand-written image reader this module replaced (commit d595f00), on the same generated files."""
    root = str(tmp_path)
    c = make_image_csvs(root)
    assert digest(load_dataset("csv", 3, train_csv=c["train"], test_csv=c["test"]), root) == \
        "fcc2145b63d9b023056df9759a0b3404617945033e1c5c9808fbf1ba6d820506"
    assert digest(load_dataset("csv", 0, train_csv=c["train"], val_csv=c["val"], test_csv=c["test"], n_train=7),
                  root) == "f7a9a833c561ca92f9d63e1864791c84587d23cb17a03cf30745b44a086f3e9c"


# ----------------------------------------------------------------------------- network, settings
def test_mlp_is_the_default_for_vectors_and_augmentation_is_switched_off(tmp_path, capsys):
    c = tabular_csvs(str(tmp_path))
    args = settings.build_parser("", "", ()).parse_args(["-ds", "csv", "--train-csv", c["train"],
                                                         "--test-csv", c["test"]])
    assert args.net is None and not args.no_augment
    settings.fit_to_data(args, settings.data_for(args, 0))
    assert args.net == "mlp" and args.no_augment
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not images" in err[0] and "--no-augment" in err[0]
    args = settings.build_parser("", "", ()).parse_args([])
    settings.fit_to_data(args, Data("img", *(Split(np.zeros((2, 1, 8, 8), np.uint8), np.zeros(2, int),
                                                   np.array(["a", "b"])),) * 3, 2, np.ones(1), np.ones(1)))
    assert args.net == "cnn" and not args.no_augment
    # The six-conv network on vectors is one line pointing at mlp.
    with pytest.raises(UserError, match=r"--net cnn: cannot be built on inputs of shape \(5,\).*use --net mlp"):
        network.resolve("cnn").check((5,), 2, fd=True, coupling=True)


def test_mlp_parameter_count():
    nn.clear_parameters()
    dense(nn.Variable((4, 30)), 2)
    n = sum(v.size for v in nn.get_parameters(grad_only=False).values())
    trainable = sum(v.size for v in nn.get_parameters(grad_only=True).values())
    assert (n, trainable) == (30 * 64 + 64 + 64 * 4 + 64 * 64 + 64 + 64 * 2 + 2, 6402) == (6530, 6402)


# ----------------------------------------------------------------------------- numerical checks on vectors
def vector_data(n_train=32, n_val=24, d=6, n_classes=3, seed=0) -> Data:
    rng = np.random.default_rng(seed)

    def split(n, part):
        x, y = tabular(rng, n, d, n_classes)
        return Split(x.astype(np.float32), y.astype(np.int64), np.array([f"{part}:{k}" for k in range(n)]))
    return Data("vec", split(n_train, "train"), split(n_val, "val"), split(n_val, "test"), n_classes,
                np.full(1, 0.5, np.float32), np.full(1, 0.5, np.float32))


def test_weighted_batch_norm_on_vectors_is_the_removal():
    """(B, C) inputs: equal weights are nnabla's training-mode batch norm; w_j = 0 is batch norm over the
    others (closed form, float64 numpy)."""
    rng = np.random.default_rng(0)
    xv = rng.normal(1.0, 2.0, (6, 4)).astype(np.float32)
    x = nn.Variable.from_numpy_array(xv)
    beta = nn.Variable.from_numpy_array(rng.normal(size=(1, 4)).astype(np.float32))
    gamma = nn.Variable.from_numpy_array(rng.uniform(0.5, 2, (1, 4)).astype(np.float32))
    w = nn.Variable.from_numpy_array(np.full(6, 1 / 6, np.float32))
    y = weighted_batch_norm(x, w, beta, gamma)
    y.forward()
    ref = F.batch_normalization(x, beta, gamma, nn.Variable((1, 4)), nn.Variable((1, 4)), eps=EPS, batch_stat=True)
    ref.forward()
    assert np.abs(y.d - ref.d).max() < 1e-5
    w.d = np.array([1, 1, 0, 1, 1, 1], np.float32) / 5
    y.forward()
    others = np.delete(xv.astype(np.float64), 2, axis=0)
    want = gamma.d * (xv - others.mean(0)) / np.sqrt(others.var(0) + EPS) + beta.d
    assert np.abs(np.delete(y.d, 2, axis=0) - np.delete(want, 2, axis=0)).max() < 1e-5


@pytest.mark.parametrize("mode", ["exact", "fd"])
def test_last_step_on_vectors_equals_exact_leave_one_out(tmp_path, mode):
    """The MLP on vectors, no batch norm: for j in the final batch Hara's score is exactly
    <u, theta_{-j}[T] - theta[T]> (one SGD step is linear in the removed gradient)."""
    data, run = vector_data(), str(tmp_path)
    train(data, run, seed=0, epochs=2, batch_size=8, lr=0.1, keep_step_params=True, progress=False, net=TINY_MLP,
          augment=False)
    influence = retrace(data, run, "Hara", 8, progress=False, net=TINY_MLP, mode=mode)
    record = StepRecord.load(layout.step_record_path(run))
    init_model(data, 0, 8, TINY_MLP)
    load_checkpoint(layout.checkpoint_path(run, 2))
    theta_T, u = flat_trainable(), flat(val_gradient(data, net=TINY_MLP))
    stored = StepParamsReader(layout.step_params_path(run, 1))
    sgd = SGD(init_model(data, 0, 8, TINY_MLP), data)
    last = record.n_steps - 1
    for j in record.batch(last)[0]:
        stored.load(len(stored) - 1)
        keep = np.ones(len(data.train), bool)
        keep[j] = False
        sgd.replay(record, last, keep)
        true = float(u @ (flat_trainable() - theta_T))
        assert abs(influence[j] - true) <= 1e-3 * abs(true), (j, influence[j], true)


def test_fd_retrace_on_the_mlp_with_batch_norm_ranks_like_exact(tmp_path):
    """The MLP with batch norm, coupling on: the fd retrace's whole-epoch scores equal double backward's
    to 1% and rank the same."""
    data, run = vector_data(), str(tmp_path)
    train(data, run, seed=1, epochs=2, batch_size=8, lr=0.05, keep_step_params=True, progress=False, net=TINY_MLP_BN,
          augment=False)
    exact = retrace(data, run, "Hara", 8, progress=False, net=TINY_MLP_BN, mode="exact", bn_coupling=True)
    fd = retrace(data, run, "Hara", 8, progress=False, net=TINY_MLP_BN, mode="fd", bn_coupling=True)
    assert np.linalg.norm(fd - exact) <= 1e-2 * np.linalg.norm(exact)
    assert spearman(fd, exact) > 0.999


# ----------------------------------------------------------------------------- commands
def run(script, args, cwd):
    return subprocess.run([sys.executable, os.path.join(ROOT, script)] + args, capture_output=True, text=True,
                          cwd=str(cwd))


ALL = ["Hara", "Ours", "Replay", "Replay_all", "Influence_functions", "TracIn_last", "Loss", "Random"]


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory):
    """A tabular CSV through the SGD driver: every method, the default MLP (batch norm, coupling on), 10%
    flipped labels."""
    root = tmp_path_factory.mktemp("tab")
    c = tabular_csvs(str(root / "data"))
    args = ["-o", "out", "-ds", "csv", "--train-csv", c["train"], "--val-csv", c["val"], "--test-csv", c["test"],
            "-e", "2", "-bs", "8", "--lr", "0.05", "-nt", "1", "-r", "0", "4", "--label-noise", "0.1",
            "--methods", *ALL]
    r = run("eval_sgd_influence.py", args, root)
    assert r.returncode == 0, r.stderr[-3000:]
    return root, c, r


def test_every_method_runs_on_tabular_data(tabular_run):
    root, c, r = tabular_run
    out = root / "out"
    assert [line for line in r.stderr.splitlines() if line.startswith("note:")] == [
        "note: the inputs are not images (shape (5,)), so random crop and flip do not apply: training without "
        "them (as --no-augment)"]
    s = json.loads((out / "run.json").read_text())["settings"]
    assert s["net"] == "mlp" and s["no_augment"] and s["bn_coupling"] == "on" and s["label_noise"] == 0.1
    with open(c["train"]) as f:
        lines = f.read().splitlines()
    for m in ALL:
        scores = layout.read_influence_csv(str(layout.influence_path(str(out), m, 0)))
        assert len(scores["ids"]) == 48 and np.all(np.isfinite(scores["influence"]))
        # x:image names the row of the user's file: <CSV>:<row>, the header being row 1.
        row = int(scores["ids"][0].rsplit(":", 1)[1])
        assert scores["ids"][0] == f"{c['train']}:{row}" and lines[row - 1].split(",")[2].startswith("train-")
        assert (out / "score" / m / "score_delete_worst_4_seed_0.csv").exists()
    assert (out / "influence" / "Replay" / "influence_replay_0.csv").read_bytes() == \
        (out / "influence" / "Hara" / "influence_hara_0.csv").read_bytes()
    assert np.abs(layout.read_influence_csv(str(layout.influence_path(str(out), "Hara", 0)))["influence"]).max() > 0
    flipped = (out / "noise" / "flipped_0.csv").read_text().splitlines()
    assert len(flipped) == 1 + round(0.1 * 48)


def test_analyze_writes_tables_of_the_most_harmful_rows(tabular_run):
    root, c, _ = tabular_run
    out = root / "out"
    assert not list((out / "fig").glob("harmful_*.png"))
    with open(out / "summary" / "harmful_Hara_seed0.csv", newline="") as f:
        table = list(csv.reader(f))
    with open(c["train"], newline="") as f:
        user = list(csv.reader(f))
    assert table[0] == ["rank", "influence", "datasource_index", "row"] + user[0]
    order = layout.read_influence_csv(str(layout.influence_path(str(out), "Hara", 0)))
    assert len(table) == 1 + 32 and [int(r[2]) for r in table[1:]] == order["index"][:32].tolist()
    noisy = set(np.loadtxt(out / "noise" / "flipped_0.csv", delimiter=",", skiprows=1, usecols=0, dtype=int).tolist())
    for r in table[1:]:
        cells = user[int(r[3]) - 1]  # the row's line in the user's file
        j = int(r[2])
        assert r[4:-1] == cells[:-1] and (r[-1] == cells[-1]) == (j not in noisy)  # trained label where flipped
    with open(out / "summary" / "helpful_Hara_seed0.csv") as f:
        assert len(f.read().splitlines()) == 33


def test_export_keeps_the_users_columns_and_loads_back(tabular_run):
    root, c, _ = tabular_run
    out = root / "out"
    from sgd_influence import analyze
    assert analyze.main([str(out), "--export-clean", "Ours", "6"]) == 0
    dest = out / "export" / "Ours_without_6_seed0"
    with open(dest / "train.csv", newline="") as f:
        kept = list(csv.reader(f))
    with open(dest / "removed.csv", newline="") as f:
        removed = list(csv.reader(f))
    with open(c["train"], newline="") as f:
        user = list(csv.reader(f))
    assert kept[0] == user[0] and removed[0] == user[0] + ["influence", "datasource_index"]
    order = layout.read_influence_csv(str(layout.influence_path(str(out), "Ours", 0)))
    assert [int(r[-1]) for r in removed[1:]] == order["index"][:6].tolist()
    ids = {r[2] for r in kept[1:]}  # the comment column #id names each row
    assert len(kept) == 1 + 42 and not ids & {r[2] for r in removed[1:]}
    back = load_dataset("csv", 0, train_csv=str(dest / "train.csv"), val_csv=c["val"], test_csv=c["test"])
    assert len(back.train) == 42 and back.image_shape == (5,)


def test_validate_on_tabular_data_single_and_lds(tmp_path):
    """validate_influence.py with the drivers' data options: -ds csv, the CSVs, --label-noise; no test CSV
    needed; the single-instance check and --lds (which prints its cost first)."""
    c = tabular_csvs(str(tmp_path / "data"), n=(40, 16, 16))
    common = ["-ds", "csv", "--train-csv", c["train"], "--val-csv", c["val"], "-e", "2", "-bs", "8", "--lr", "0.05",
              "--label-noise", "0.1", "--retrace", "exact"]
    r = run("validate_influence.py", ["-o", "v", *common, "--n-check", "6", "--methods", "Hara", "Ours", "Loss"],
            tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    saved = json.loads((tmp_path / "v" / "validation" / "validation.json").read_text())
    assert saved["n_checked"] == 6 and saved["settings"]["train_csv"] == c["train"]
    assert saved["settings"]["label_noise"] == 0.1 and saved["settings"]["net"] == "mlp"
    assert saved["settings"]["n_train"] is None  # -ds csv: all of it
    rows = list(csv.DictReader(open(tmp_path / "v" / "validation" / "validation.csv")))
    assert all(rw["x:image"].startswith(c["train"] + ":") for rw in rows)
    r = run("validate_influence.py", ["-o", "v", *common, "--lds", "--lds-fraction", "0.25", "--lds-subsets", "6",
                                      "--methods", "Hara", "Random"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    cost = [line for line in r.stdout.splitlines() if line.startswith("LDS: ")]
    assert len(cost) == 1 and "12 counterfactual retrainings" in cost[0] and "s per epoch (measured" in cost[0]
    lds = json.loads((tmp_path / "v" / "validation" / "lds.json").read_text())
    assert lds["trainings"][0]["blocks"][0]["subsets"] == 6
    # Another label noise into the same folder: refused, naming it.
    no_noise = [a for a in common if a not in ("--label-noise", "0.1")]
    r = run("validate_influence.py", ["-o", "v", *no_noise, "--n-check", "6"], tmp_path)
    assert r.returncode == 2 and "label_noise" in r.stderr and "Traceback" not in r.stderr


def test_validate_takes_the_drivers_data_option_definitions():
    from sgd_influence.checks.validate import build_parser as validate_parser
    driver = {a.dest: a for a in settings.build_parser("", "", ())._actions}
    mine = {a.dest: a for a in validate_parser()._actions}
    for dest in ("dataset", "train_csv", "val_csv", "test_csv", "label_noise", "data_dir", "n_train", "n_val"):
        assert mine[dest].option_strings == driver[dest].option_strings and mine[dest].type is driver[dest].type
        assert mine[dest].choices == driver[dest].choices
    assert "n_test" not in mine and validate_parser().parse_args([]).n_test == 0


# ----------------------------------------------------------------------------- breast cancer
def fake_source(path, n=50, seed=0):
    """A file in scikit-learn's breast_cancer.csv format: `n,30,malignant,benign`, then rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(10, 3, (n, 30)) * rng.uniform(0.1, 100, 30)
    y = rng.integers(0, 2, n)
    lines = [f"{n},30,malignant,benign"] + [",".join([f"{v:.6g}" for v in x[k]] + [str(y[k])]) for k in range(n)]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return np.array([[float(f"{v:.6g}") for v in row] for row in x]), y


def test_breast_cancer_conversion(tmp_path):
    x, y = fake_source(str(tmp_path / "src.csv"))
    paths = breast_cancer.convert(str(tmp_path / "src.csv"), str(tmp_path / "out"))
    tables = [read_table(p) for p in paths]
    assert [len(t.y) for t in tables] == [30, 10, 10]
    z = [t.x for t in tables]
    assert np.allclose(z[0].mean(0), 0, atol=1e-6) and np.allclose(z[0].std(0), 1, atol=1e-6)  # on the training part
    mean, std = x[[int(r[-2]) for r in tables[0].cells]].mean(0), x[[int(r[-2]) for r in tables[0].cells]].std(0)
    for t in tables:  # #source_row: the row of the source; the same standardisation everywhere; labels kept
        src = np.array([int(r[-2]) for r in t.cells])
        assert np.allclose(t.x, (x[src] - mean) / std, atol=1e-6) and np.array_equal(t.y, y[src])
    assert sorted(np.concatenate([[int(r[-2]) for r in t.cells] for t in tables]).tolist()) == list(range(50))
    assert tables[0].header[0] == "x__0:mean radius" and tables[0].header[-2:] == ["#source_row", "y:label"]
    d = load_dataset("csv", 0, train_csv=paths[0], val_csv=paths[1], test_csv=paths[2])
    assert d.image_shape == (30,) and d.n_classes == 2


def test_breast_cancer_extract_checks_the_sha256(tmp_path):
    import zipfile
    wheel = str(tmp_path / "fake.whl")
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(breast_cancer.MEMBER, "569,30,malignant,benign\n")
    with pytest.raises(UserError, match="has sha256 .* expected fed3eb72"):
        breast_cancer.extract(wheel, str(tmp_path / "bc.csv"))
    assert not os.path.exists(tmp_path / "bc.csv")
    with pytest.raises(UserError, match="cannot read sklearn/datasets/data/breast_cancer.csv"):
        breast_cancer.extract(str(tmp_path / "none.whl"), str(tmp_path / "bc.csv"))


def test_breast_cancer_files_where_fetched():
    """The real files, where `make data` fetched them: the pinned source, 569 rows split 341/114/114."""
    folder = os.path.join(os.environ.get("SGD_INFLUENCE_DATA", os.path.join(ROOT, "data")), "breast_cancer")
    if not breast_cancer.ready(folder):
        pytest.skip(f"no breast cancer data in {folder} (make data fetches it where pip reaches the index)")
    x, y, names = breast_cancer.read_source(os.path.join(folder, breast_cancer.SOURCE))
    assert x.shape == (569, 30) and np.bincount(y).tolist() == [212, 357] and names == ["malignant", "benign"]
    assert [len(read_table(os.path.join(folder, f"{p}.csv")).y) for p in breast_cancer.PARTS] == [341, 114, 114]


def test_a_batch_of_one_leaves_batch_norm_running_statistics_as_they_were(tmp_path):
    """nnabla's running variance after a training-mode batch of one is NaN (unbiased n/(n-1)); a step on one
    instance (a retraining that removed the rest of its batch, a training set of k * batch_size + 1) keeps
    the running statistics instead, and takes the same gradient step as before."""
    data = vector_data(n_train=33)  # 4 batches of 8 and one of 1
    run = str(tmp_path)
    train(data, run, seed=0, epochs=2, batch_size=8, lr=0.05, keep_step_params=False, progress=False, net=TINY_MLP_BN,
          augment=False)
    init_model(data, 0, 8, TINY_MLP_BN)
    load_checkpoint(layout.checkpoint_path(run, 2))
    running = {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items() if not v.need_grad}
    assert running and all(np.all(np.isfinite(v)) for v in running.values())
    record = StepRecord.load(layout.step_record_path(run))
    sgd = SGD(init_model(data, 0, 8, TINY_MLP_BN), data)
    t = record.steps_of_epoch(1)[0]
    idx = record.batch(t)[0]
    keep = np.zeros(len(data.train), bool)
    keep[idx[3]] = True  # all but one instance of the batch removed
    load_checkpoint(layout.checkpoint_path(run, 1))
    before = {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}
    sgd.replay(record, t, keep)
    after = nn.get_parameters(grad_only=False)
    assert all(np.array_equal(after[k].d, before[k]) for k in running)
    # The trainable parameters moved by -lr/|S_t| * the gradient of that one instance's loss (batch norm of
    # one sample outputs beta, so the layers below it get none).
    moved = [k for k in before if after[k].need_grad and not np.array_equal(after[k].d, before[k])]
    assert "layer2/fc/affine/W" in moved and "layer1/fc/affine/W" not in moved


def test_the_published_per_sample_step_refuses_batch_norm_on_vectors(tmp_path, capsys):
    """Hara_published, Ours_published (and the ablation Ours_sample_alone) forward each sample alone in
    training mode; the MLP's batch norm on vectors then normalises a sample by itself, so its output is the
    same for every input (checked here) and the scores would see only the labels: one error line, before
    anything is written. The six-conv network's batch norms average over an image's positions: accepted; so
    is the MLP for the other methods."""
    nn.clear_parameters()
    x = nn.Variable((1, 5))
    logits = dense(x, 3, test=False)
    with nn.parameter_scope("layer1/bn/bn"):  # a trained-looking beta, so the output is not all zero
        nn.get_parameters()["beta"].d = np.linspace(-1, 1, 64)
    outs = []
    for v in np.random.default_rng(0).normal(size=(2, 1, 5)):
        x.d = v
        logits.forward()
        outs.append(logits.d.copy())
    assert np.abs(outs[0]).max() > 0 and np.array_equal(outs[0], outs[1])
    nn.clear_parameters()

    def args(net, methods):
        return settings.args_from_settings({"net": net, "methods": methods})
    for methods in (["Hara", "Hara_published"], ["Ours_published"], ["Ours_sample_alone"]):
        with pytest.raises(UserError, match=r"take each sample's gradient alone .* --net mlp has a batch norm on "
                                            r"inputs of shape \(64,\)") as e:
            network.checked(args("mlp", methods), (5,), 3)
        assert ", ".join(m for m in methods if m != "Hara") in str(e.value)
    assert network.checked(args("mlp", ["Hara", "Ours", "Random"]), (5,), 3).lone_batch_norms((5,), 3) == [(1, 64)]
    assert network.checked(args("cnn", ["Hara_published", "Ours_published"]), (1, 8, 8), 3).lone_batch_norms(
        (1, 8, 8), 3) == []
    # The driver on a tabular CSV: one line, exit 2, no run.json.
    from sgd_influence.pipeline.experiment import main
    c = tabular_csvs(str(tmp_path / "data"), n=(24, 8, 8))
    code = main(["-o", str(tmp_path / "out"), "-ds", "csv", "--train-csv", c["train"], "--val-csv", c["val"],
                 "--test-csv", c["test"], "-bs", "8", "-di", "cpu", "--methods", "Ours", "Ours_published"], "test", "unused", ())
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and not os.path.exists(tmp_path / "out" / "run.json"), err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "error: Ours_published take each sample's gradient alone" in errors[0], err


def test_validate_leaves_the_sample_alone_ablation_out_of_its_defaults_on_vectors(tmp_path, capsys):
    """validate_influence.py's default single-instance estimators include Ours_sample_alone; on vectors (the
    MLP's batch norm) it is left out with a note, not an error; on images it stays."""
    from sgd_influence.checks.validate import SINGLE_DEFAULT, build_parser, check_args, fit_default_methods
    c = tabular_csvs(str(tmp_path / "data"), n=(24, 8, 8))
    args = build_parser().parse_args(["-ds", "csv", "--train-csv", c["train"], "--val-csv", c["val"]])
    check_args(args)
    data = settings.data_for(args, 0)
    settings.fit_to_data(args, data)
    fit_default_methods(args, data)
    assert "Ours_sample_alone" in SINGLE_DEFAULT
    assert args.methods == [m for m in SINGLE_DEFAULT if m != "Ours_sample_alone"]
    assert "Ours_sample_alone left out" in capsys.readouterr().err
    network.checked(args, data.image_shape, data.n_classes)  # no error left
    import types
    images = build_parser().parse_args(["--net", "cnn"])
    check_args(images)
    fit_default_methods(images, types.SimpleNamespace(image_shape=(1, 8, 8), n_classes=3))
    assert images.methods == list(SINGLE_DEFAULT) and "left out" not in capsys.readouterr().err


def test_probe_final_step_trains_as_validate_does(tmp_path, capsys):
    """tools/probe_final_step.py records validate's run.json in -o and shares its training: it trains with the
    options it records (--net's default for vectors, the recipe), so validate_influence.py may reuse it."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("probe_final_step", os.path.join(ROOT, "tools", "probe_final_step.py"))
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    c = tabular_csvs(str(tmp_path / "data"), n=(24, 8, 8))
    out = str(tmp_path / "v")
    probe.main(["-o", out, "-ds", "csv", "--train-csv", c["train"], "--val-csv", c["val"], "-e", "2", "-bs", "8",
                "--momentum", "0.9", "-di", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("8 instances of the final step") and len(lines) == 6
    recorded = layout.read_settings(out)
    assert recorded["net"] == "mlp" and recorded["momentum"] == 0.9
    record = StepRecord.load(layout.step_record_path(layout.train_dir(out, 0)))
    assert record.recipe.momentum == 0.9
