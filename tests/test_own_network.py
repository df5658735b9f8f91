"""--net (the built-in network, a Python function, a .nnp file) and --export-clean."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import nnabla as nn
import nnabla.functions as F
import nnabla.parametric_functions as PF
import pytest

from conftest import ROOT, TINY_BN
from datasets import load_dataset
from models import cnn
from sgd_influence.core import network
from sgd_influence.config import settings
from sgd_influence.core.eval import retrain
from sgd_influence.base import layout
from sgd_influence.base.errors import UserError
from sgd_influence.core.graphs import BranchRecorder, LossGraph
from sgd_influence.core.infl import retrace
from sgd_influence.base.metrics import spearman
from sgd_influence.core.train import train
from test_csv_dataset import make_image_folder


def save_nnp(path: str, net, image_shape: tuple, n_classes: int) -> str:
    """A .nnp of `net` (a one-network file as nnabla.utils.save writes it, test mode)."""
    import nnabla.utils.save as nnp_save
    nn.clear_parameters()
    x = nn.Variable((1,) + image_shape)
    y = net(x, n_classes, test=True)
    nnp_save.save(str(path), {"networks": [{"name": "net", "batch_size": 1, "outputs": {"y": y}, "names": {"x": x}}],
                              "executors": [{"name": "runtime", "network": "net", "data": ["x"], "output": ["y"]}]})
    return str(path)


# Python-function networks, written into the test's folder as a user's module.
USER_MODULE = '''
import nnabla.functions as F
import nnabla.parametric_functions as PF

N_CLASSES = {n}


def net(x, test):
    """conv - leaky ReLU - batch norm - ReLU - max-pool - affine."""
    h = F.leaky_relu(PF.convolution(x, 4, (3, 3), pad=(1, 1), name="c1"), 0.1)
    h = F.relu(PF.batch_normalization(h, batch_stat=not test, name="b1"))
    return PF.affine(F.max_pooling(h, (2, 2)), N_CLASSES, name="fc")


def elu_net(x, test):
    """ELU: no piecewise-linear branches for --retrace fd to pin."""
    return PF.affine(F.elu(PF.convolution(x, 2, (3, 3), name="c1")), N_CLASSES, name="fc")
'''


def user_module(folder, n_classes: int, name: str = "mynets") -> None:
    (folder / f"{name}.py").write_text(USER_MODULE.format(n=n_classes))


def leaky_bn(x, test):
    h = F.leaky_relu(PF.convolution(x, 4, (3, 3), pad=(1, 1), name="c1"), 0.1)
    h = F.relu(PF.batch_normalization(h, batch_stat=not test, name="b1"))
    return PF.affine(F.max_pooling(h, (2, 2)), 3, name="fc")


# ------------------------------------------------------------------ .nnp = the built-in network
def test_nnp_of_the_six_conv_network_is_the_network(tmp_path):
    """Full size: same parameter names, seeded values and logits (training and test mode)."""
    path = save_nnp(tmp_path / "cnn.nnp", cnn, (1, 32, 32), 10)
    x = np.random.default_rng(0).normal(size=(2, 1, 32, 32)).astype(np.float32)
    got = {}
    for name, net in (("cnn", network.resolve("cnn")), ("nnp", network.resolve(path))):
        nn.clear_parameters()
        nn.random.prng = np.random.RandomState(5)
        g = LossGraph(2, (1, 32, 32), 10, test=False, net=net)
        g.feed(x, np.array([1, 2]), 0.5)
        g.loss.forward()
        got[name] = ({k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}, g.logits.d.copy())
    (pa, la), (pb, lb) = got["cnn"], got["nnp"]
    assert list(pa) == list(pb) and all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert np.array_equal(la, lb)


@pytest.mark.parametrize("mode,coupling", [("fd", True), ("exact", False)])
def test_nnp_scores_identical_to_the_builtin_network(data, tmp_path, mode, coupling):
    """Training, Hara's and Ours' retraces and a retraining through the .nnp: bit for bit the built-in's."""
    path = save_nnp(tmp_path / "tiny.nnp", TINY_BN, data.image_shape, data.n_classes)
    results = []
    for k, net in enumerate((TINY_BN, network.resolve(path))):
        run = str(tmp_path / f"run{k}")
        train(data, run, seed=3, epochs=2, batch_size=8, lr=0.1, keep_step_params=True, progress=False, net=net)
        scores = [retrace(data, run, m, 8, progress=False, net=net, mode=mode, bn_coupling=coupling)
                  for m in ("Hara", "Ours")]
        results.append((scores, retrain(data, run, np.arange(3), False, 8, net=net)))
    (sa, ra), (sb, rb) = results
    assert all(np.array_equal(a, b) for a, b in zip(sa, sb)) and ra == rb
    assert np.abs(sa[1]).max() > 0


def test_nnp_file_values(data, tmp_path):
    """--net-init file starts from the file's parameters, seed from a seeded initialisation."""
    path = save_nnp(tmp_path / "tiny.nnp", TINY_BN, data.image_shape, data.n_classes)
    saved = {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}
    for init in ("file", "seed"):
        nn.clear_parameters()
        nn.random.prng = np.random.RandomState(11)
        LossGraph(2, data.image_shape, data.n_classes, test=False, net=network.resolve(path, init))
        now = nn.get_parameters(grad_only=False)
        same = all(np.array_equal(saved[k], now[k].d) for k in saved)
        assert same == (init == "file") and list(now) == list(saved)


# ---------------------------------------------------------------- Python function, pinning
def test_python_function_pinned_fd_matches_exact(data, tmp_path):
    """LeakyReLU (as two pinned ReLUs), batch norm and max-pool of a user's function: fd ~ exact."""
    net = network.PythonFunction("leaky_bn", leaky_bn, None)
    run = str(tmp_path)
    train(data, run, seed=0, epochs=2, batch_size=8, lr=0.1, keep_step_params=False, progress=False, net=net)
    fd, exact = (retrace(data, run, "Ours", 8, progress=False, net=net, mode=m) for m in ("fd", "exact"))
    assert spearman(fd, exact) > 0.999
    assert np.abs(fd - exact).max() < 3e-3 * np.abs(exact).max()  # pinned 2e-4; unpinned 2e-2
    recorder = BranchRecorder()
    LossGraph(8, data.image_shape, data.n_classes, test=False, net=net, ops=recorder)
    assert len(recorder.kept) == 4  # leaky ReLU (two), ReLU, max-pool


def test_unpinnable_function_is_one_line_naming_it(data):
    net = network.PythonFunction("mynets:elu_net", lambda x, test: PF.affine(F.elu(x), 3), None)
    with pytest.raises(UserError, match=r"fd cannot pin .*ELU.*--retrace exact works"):
        net.check(data.image_shape, data.n_classes, fd=True, coupling=True)
    net.check(data.image_shape, data.n_classes, fd=False, coupling=True)  # exact: fine
    drop = network.PythonFunction("x:y", lambda x, test: PF.affine(F.dropout(x, 0.5), 3), None)
    with pytest.raises(UserError, match=r"Dropout.*a random function"):
        drop.check(data.image_shape, data.n_classes, fd=False, coupling=False)  # refused in every mode
    bad = network.PythonFunction("x:y", lambda x, test: PF.affine(x, 5), None)
    with pytest.raises(UserError, match=r"shape \(2, 5\).*expected \(2, 3\)"):
        bad.check(data.image_shape, data.n_classes, fd=False, coupling=False)


# ------------------------------------------------------------------------ drivers, export
def driver(args, cwd, script="eval_sgd_influence.py"):
    return subprocess.run([sys.executable, os.path.join(ROOT, script)] + args, capture_output=True, text=True,
                          cwd=str(cwd))


def error_lines(r):
    return [line for line in r.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A user's CSV dataset and a driver run with a Python-function network."""
    root = tmp_path_factory.mktemp("own")
    make_image_folder(str(root / "mydata"))
    user_module(root, 2)
    args = ["-o", "out", "-ds", "csv", "--train-csv", "mydata/train.csv", "--val-csv", "mydata/val.csv",
            "--test-csv", "mydata/test.csv", "-e", "2", "-bs", "4", "-nt", "1", "-r", "0", "3",
            "--methods", "Hara", "Ours", "Replay", "Random", "--net", "mynets:net"]
    r = driver(args, root)
    assert r.returncode == 0, r.stderr
    return root, args


def test_python_function_network_end_to_end(csv_run):
    root, args = csv_run
    out = root / "out"
    for m, f in (("Hara", "hara"), ("Ours", "ours")):
        scores = io_scores(out / "influence" / m / f"influence_{f}_0.csv")
        assert len(scores) == 20 and np.abs(scores).max() > 0
        assert (out / "score" / m / "score_delete_worst_3_seed_0.csv").exists()
    # Replay with the user's network: Hara's scores, byte for byte.
    assert (out / "influence" / "Replay" / "influence_replay_0.csv").read_bytes() == \
        (out / "influence" / "Hara" / "influence_hara_0.csv").read_bytes()
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert settings["net"] == "mynets:net" and settings["net_init"] == "seed"
    assert settings["net_sha256"] == layout.file_digest(str(root / "mynets.py"))

    # The network is a result setting: another one (or an edited module) into the same folder is refused.
    r = driver([a if a != "mynets:net" else "cnn" for a in args], root)
    assert r.returncode == 2 and "net 'mynets:net' -> 'cnn'" in r.stderr and "Traceback" not in r.stderr
    (root / "mynets2.py").write_text(USER_MODULE.format(n=2) + "\n# edited\n")
    os.replace(root / "mynets2.py", root / "mynets.py")
    r = driver(args, root)
    assert r.returncode == 2 and "net_sha256" in r.stderr and len(error_lines(r)) == 1


def io_scores(path):
    from sgd_influence.base import layout
    return layout.read_influence_csv(str(path))["influence"]


def test_export_clean_csv_dataset_loads_back(csv_run):
    root, _ = csv_run
    out = root / "out"
    r = subprocess.run([sys.executable, "-m", "sgd_influence.analyze", str(out), "--export-clean", "Ours", "5"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    dest = out / "export" / "Ours_without_5_seed0"
    from sgd_influence.base import layout
    order = layout.read_influence_csv(str(out / "influence" / "Ours" / "influence_ours_0.csv"))
    removed = set(order["ids"][:5])
    clean = load_dataset("csv", 0, train_csv=str(dest / "train.csv"), val_csv=str(root / "mydata" / "val.csv"),
                         test_csv=str(root / "mydata" / "test.csv"))
    assert len(clean.train) == 20 - 5 and not removed & set(clean.train.ids)
    with open(dest / "removed.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert [r[0] for r in rows] == list(order["ids"][:5])  # the user's own image paths, most harmful first
    assert all(p.startswith(str(root / "mydata")) for p in clean.train.ids)


def test_export_clean_builtin_dataset_writes_pngs(idx_dir, tmp_path):
    out = tmp_path / "out"
    r = driver(["-o", str(out), "-ds", "fashion_mnist", "--data-dir", idx_dir, "--n-train", "24", "--n-val", "8",
                "--n-test", "8", "-e", "1", "-bs", "8", "-nt", "1", "-r", "0", "--methods", "Random"], tmp_path)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "sgd_influence.analyze", str(out), "--export-clean", "Random", "7"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    dest = out / "export" / "Random_without_7_seed0"
    run = settings.data_for(settings.args_from_settings(layout.read_settings(str(out))), 0)
    clean = load_dataset("csv", 0, train_csv=str(dest / "train.csv"), test_csv=str(dest / "removed.csv"))
    with open(dest / "removed.csv", newline="") as f:
        removed = [int(r[3]) for r in list(csv.reader(f))[1:]]
    keep = [i for i in range(24) if i not in removed]
    assert len(removed) == 7 and len(clean.train) + len(clean.val) == 24 - 7
    assert np.array_equal(clean.test.x, run.train.x[removed])  # the very images, lossless
    kept = load_dataset("csv", 0, train_csv=str(dest / "train.csv"), val_csv=str(dest / "removed.csv"),
                        test_csv=str(dest / "removed.csv"))
    assert np.array_equal(kept.train.x, run.train.x[keep]) and np.array_equal(kept.train.y, run.train.y[keep])


@pytest.mark.parametrize("case", ["missing", "broken", "unknown", "noimport", "fd", "export"])
def test_bad_network_or_export_is_one_clear_line(idx_dir, tmp_path, case):
    (tmp_path / "broken.nnp").write_bytes(b"not a zip file")
    user_module(tmp_path, 10)
    spec, needle = {"missing": ("nothere.nnp", "no such file"), "broken": ("broken.nnp", "cannot read"),
                    "unknown": ("resnet", "unknown network"), "noimport": ("nomodule:net", "cannot import nomodule"),
                    "fd": ("mynets:elu_net", "--retrace exact works"), "export": ("cnn", "no influence of Ours")}[case]
    base = ["-o", str(tmp_path / "out"), "-ds", "fashion_mnist", "--data-dir", idx_dir, "--n-train", "24",
            "--n-val", "8", "--n-test", "8", "-e", "1", "-bs", "8", "-nt", "1", "-r", "0"]
    if case == "export":
        r = driver(base + ["--methods", "Random"], tmp_path)
        assert r.returncode == 0, r.stderr
        r = subprocess.run([sys.executable, "-m", "sgd_influence.analyze", str(tmp_path / "out"),
                            "--export-clean", "Ours", "3"], capture_output=True, text=True, cwd=ROOT)
    else:
        r = driver(base + ["--net", spec], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(error_lines(r)) == 1 and needle in error_lines(r)[0], r.stderr
    if case == "fd":  # the same network with --retrace exact runs
        r = driver(base + ["--net", spec, "--retrace", "exact", "--methods", "Ours"], tmp_path)
        assert r.returncode == 0, r.stderr


def test_validate_lds_with_a_python_network_in_workers(idx_dir, tmp_path):
    """validate_influence.py --lds with --net module:function, the replays in two worker
    processes (which resolve the network themselves): runs, records the network, and refuses
    another network into the same folder."""
    user_module(tmp_path, 10)
    args = ["-o", "out", "-ds", "fashion_mnist", "--data-dir", idx_dir, "--n-train", "48", "--n-val", "16",
            "-e", "2", "-bs", "16", "--lds", "--lds-subsets", "5", "--lds-fraction", "0.25", "--workers", "2",
            "--methods", "Ours", "Random", "--net", "mynets:net"]
    r = driver(args, tmp_path, "validate_influence.py")
    assert r.returncode == 0, r.stderr[-3000:]
    lds = json.loads((tmp_path / "out" / "validation" / "lds.json").read_text())
    block = lds["trainings"][0]["blocks"][0]
    assert set(block["methods"]) == {"Ours", "Random"} and block["subsets"] == 5
    assert json.loads((tmp_path / "out" / "run.json").read_text())["settings"]["net"] == "mynets:net"
    r = driver([a if a != "mynets:net" else "cnn" for a in args], tmp_path, "validate_influence.py")
    assert r.returncode == 2 and "net 'mynets:net' -> 'cnn'" in r.stderr and len(error_lines(r)) == 1


# ------------------------------------------------------------------ the smooth variant
def test_smooth_variant_has_the_networks_parameters_and_no_branches():
    """--net models.smooth:cnn_smooth: the six-conv network's 307,818 parameters under the same names,
    softplus and average pooling where the network has ReLU and max-pool, accepted by the fd retrace's
    rebuild (which rejects a branchy function it cannot pin) with nothing to pin."""
    from models.cnn import cnn as six_conv
    from sgd_influence.core.graphs import BranchRecorder
    x = nn.Variable((2, 1, 32, 32))
    shapes = {}
    for name, build in (("cnn", lambda: six_conv(x, 10)), ("smooth", lambda: network.resolve(
            "models.smooth:cnn_smooth")(x, 10, False, BranchRecorder()))):
        nn.clear_parameters()
        out = build()
        shapes[name] = ({k: v.shape for k, v in nn.get_parameters(grad_only=False).items()},
                        network.function_types(out))
    assert shapes["smooth"][0] == shapes["cnn"][0]
    assert sum(int(np.prod(s)) for s in shapes["smooth"][0].values()) == 307818
    kinds = shapes["smooth"][1]
    assert "ReLU" not in kinds and "MaxPooling" not in kinds
    assert kinds.count("SoftPlus") == shapes["cnn"][1].count("ReLU") and "AveragePooling" in kinds
    nn.clear_parameters()


def test_every_smooth_and_pinned_function_name_is_an_nnabla_function():
    """network.SMOOTH and RELU_FAMILY are matched against nnabla's type names: a misspelt name
    (it once said Softplus for SoftPlus) silently rejects that function under --retrace fd."""
    import nnabla.function as FN
    known = {n for n in dir(FN) if n[:1].isupper()}
    assert not (network.SMOOTH | network.RELU_FAMILY) - known

