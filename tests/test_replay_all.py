"""Replay_all (infl.retrace with window="all"): u carried back through every step of every epoch, theta[t]
replayed from params_epoch_0.h5 -- checked against finite differences of full retrainings from theta[0]
(the oracle), against Replay and Hara on one epoch (the windows coincide), and for its memory scheme."""
import json
import os
import shutil

import numpy as np
import nnabla.functions as F
import pytest

from conftest import TINY_BN, tiny_data
from test_end_to_end import TINY_RUN, run
from models import Ops, cnn
from sgd_influence.base import layout
from sgd_influence.base.methods import DRIVER_METHODS, METHODS, needs_step_params, retrains_all
from sgd_influence.core.graphs import GraphCache, trainable_params
from sgd_influence.core.infl import retrace
from sgd_influence.core.params import load_checkpoint, row_bytes
from sgd_influence.core.replay import minimum_copies
from sgd_influence.core.step_record import StepRecord
from sgd_influence.core.train import SGD, load_model, replay_steps, train


class SmoothOps(Ops):
    """tanh for ReLU and average pooling for max-pooling; batch norm as `base` has it (the training's,
    or the retrace's weighted one). A smooth network: finite differences of whole trainings have a
    limit (with ReLU/max-pool, weight changes of 1e-2 switch branches and the quotients scatter by
    orders of magnitude; measured on TINY_BN)."""

    def __init__(self, base: Ops):
        self.base = base

    def relu(self, h):
        return F.tanh(h)

    def max_pool(self, h, kernel):
        return F.average_pooling(h, kernel)

    def batch_norm(self, h, test, name):
        return self.base.batch_norm(h, test, name)


def SMOOTH_BN(x, n_classes, test=False, ops=None):
    """TINY_BN (two blocks, widths 4 and 8, batch norm) made smooth (SmoothOps)."""
    return cnn(x, n_classes, test, widths=(4, 8), batch_norm=True, ops=SmoothOps(ops if ops is not None else Ops()))


ORACLE = dict(epochs=3, batch_size=8, lr=0.05)  # 32 instances: 4 steps per epoch, 12 in all


def val_loss_after(data, run_dir, record, net, weights):
    """Mean validation loss (float64 from the logits) after retraining every step from theta[0] with
    instance i's loss, and its share of the batch statistics, weighted by weights[i] in every step
    (SGD.replay with weights); the running statistics those of the training (the retrace tracks
    the trainable parameters only, infl.py)."""
    sgd = SGD(load_model(data, run_dir, 0, ORACLE["batch_size"], net), data)
    replay_steps(sgd, record, np.arange(record.n_steps), weights=weights)
    trained = {k: v.d.copy() for k, v in trainable_params().items()}
    load_checkpoint(layout.checkpoint_path(run_dir, record.n_epochs))
    for k, v in trainable_params().items():
        v.d = trained[k]
    g = GraphCache(data.image_shape, data.n_classes, test=True, net=net).get(len(data.val))
    g.feed(data.normalize(data.val.x), data.val.y, 1.0)
    g.logits.forward()
    z = g.logits.d.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(z)), data.val.y]))


def test_replay_all_is_minus_the_derivative_of_the_validation_loss_in_each_instances_weight(tmp_path):
    """The oracle. On 32 instances, 3 epochs of 4 steps (augmentation on: each appearance has its own
    recorded seed), a smooth two-block net with batch norm and --bn-coupling on, Replay_all's score of
    every instance j equals -dL/dw_j, w_j the weight of j's loss and of its share of the batch
    statistics in every step (w = 1: the training; w_j = 0: retraining from theta[0] without j),
    within 1e-3 relative. The derivative: central differences of whole retrainings at w_j = 1 +- h,
    h = 0.1 and 0.05, Richardson-extrapolated (error O(h^4)); float32 noise of a retraining's loss is
    about 1e-8 here, so larger steps and the extrapolation beat smaller steps. Measured on this CPU:
    largest relative error 6.9e-4 (at the smallest |score|, 5.1e-4; absolute 3.5e-7 against scores
    up to 1.2e-2), median 7.8e-5. The sign: the score is the predicted change of the loss when j is
    removed (infl.py), i.e. -dL/dw_j. With --retrace fd: within 2e-3 (measured 1.0e-3). Replay's
    last-epoch scores are not this derivative."""
    data = tiny_data()
    run_dir = str(tmp_path / "train" / "seed_0")
    train(data, run_dir, seed=0, epochs=ORACLE["epochs"], batch_size=ORACLE["batch_size"], lr=ORACLE["lr"],
          keep_step_params=False, progress=False, net=SMOOTH_BN)
    record = StepRecord.load(layout.step_record_path(run_dir))
    assert record.n_steps == 12 and (record.aug_seeds >= 0).all()
    reports = []
    scores = retrace(data, run_dir, "Hara", ORACLE["batch_size"], progress=False, net=SMOOTH_BN, mode="exact",
                     bn_coupling=True, trajectory="replay", window="all", on_replay=reports.append)
    assert reports[0]["window"] == "all" and reports[0]["steps"] == 12 and reports[0]["final_check"]["equal"]

    n = len(data.train)
    quotients = {}
    for h in (0.1, 0.05):
        d = np.zeros(n)
        for j in range(n):
            w = np.ones(n)
            w[j] = 1 + h
            plus = val_loss_after(data, run_dir, record, SMOOTH_BN, w)
            w[j] = 1 - h
            minus = val_loss_after(data, run_dir, record, SMOOTH_BN, w)
            d[j] = (plus - minus) / (2 * h)
        quotients[h] = d
    derivative = (4 * quotients[0.05] - quotients[0.1]) / 3
    rel = np.abs(scores - -derivative) / np.abs(derivative)
    assert rel.max() < 1e-3, (rel.max(), np.median(rel), scores[rel.argmax()], -derivative[rel.argmax()])
    assert np.all(np.sign(scores) == -np.sign(derivative))
    # --retrace fd: its own central differences along u (float32) add about as much again at the
    # smallest scores -- measured: largest relative error 1.0e-3, median 7.5e-5; bound 2e-3.
    fd = retrace(data, run_dir, "Hara", ORACLE["batch_size"], progress=False, net=SMOOTH_BN, mode="fd",
                 bn_coupling=True, trajectory="replay", window="all")
    assert (np.abs(fd - -derivative) / np.abs(derivative)).max() < 2e-3

    last = retrace(data, run_dir, "Hara", ORACLE["batch_size"], progress=False, net=SMOOTH_BN, mode="exact",
                   bn_coupling=True, trajectory="replay")
    assert (np.abs(last - -derivative) / np.abs(derivative)).max() > 0.1  # the other epochs matter


def csv_bytes(path, data, scores):
    layout.write_influence_csv(path, data.train.ids, data.train.y, scores)
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("mode", ["fd", "exact"])
def test_one_epoch_replay_all_is_replay_and_hara_byte_for_byte(data, tmp_path, mode):
    """With one epoch the windows coincide: Replay_all's influence CSV is Replay's and Hara's, byte for
    byte (batch norm coupled, a short last batch)."""
    run_dir = str(tmp_path / "train" / "seed_0")
    train(data, run_dir, seed=0, epochs=1, batch_size=5, lr=0.1, keep_step_params=True, progress=False, net=TINY_BN)
    out = {}
    for name in ("Hara", "Replay", "Replay_all"):
        scores = retrace(data, run_dir, batch_size=5, progress=False, net=TINY_BN, mode=mode, bn_coupling=True,
                         **METHODS[name].retrace)
        out[name] = csv_bytes(str(tmp_path / f"{name}.csv"), data, scores)
    assert out["Replay_all"] == out["Replay"] == out["Hara"]
    from sgd_influence.checks import validate  # validate_influence.py's estimator: the same scores, its check
    vargs = validate.build_parser().parse_args(["-o", str(tmp_path), "-bs", "5", "--retrace", mode])
    check = str(tmp_path / "check.json")
    scores = validate.estimate("Replay_all", data, run_dir, vargs, TINY_BN, progress=False, replay_check=check)
    assert csv_bytes(str(tmp_path / "validate.csv"), data, scores) == out["Hara"]
    assert layout.read_json(check)["window"] == "all"


def test_replay_all_within_a_small_budget_holds_min_KT_M_copies_and_replays_2KT_minus_M_steps(data, tmp_path):
    """Two epochs of 7 steps as one window of KT = 14: at the smallest budget M the replay holds M copies
    and replays 2KT - M steps, at a middle one too; the scores are the in-memory ones byte for byte and
    the replayed theta[T] is the stored one."""
    run_dir = str(tmp_path / "train" / "seed_0")
    train(data, run_dir, seed=0, epochs=2, batch_size=5, lr=0.1, keep_step_params=False, progress=False, net=TINY_BN)
    kt = StepRecord.load(layout.step_record_path(run_dir)).n_steps
    assert kt == 14
    kw = dict(progress=False, net=TINY_BN, mode="fd", bn_coupling=True, **METHODS["Replay_all"].retrace)
    reports = []
    expected = retrace(data, run_dir, batch_size=5, on_replay=reports.append, **kw)
    assert reports[0]["scheme"] == "in memory" and reports[0]["copies_held"] == kt == reports[0]["steps_replayed"]
    row = row_bytes()
    for m in (minimum_copies(kt), (minimum_copies(kt) + kt) // 2):
        reports = []
        scores = retrace(data, run_dir, batch_size=5, replay_memory=m * row + row - 1, on_replay=reports.append, **kw)
        assert np.array_equal(scores, expected), m
        r = reports[0]
        assert r["window"] == "all" and r["scheme"] == "checkpointed" and r["steps"] == kt
        assert r["copies_held"] == m == r["copies_held_formula_min_T_M"], r
        assert r["steps_replayed"] == 2 * kt - m == r["steps_replayed_formula_2T_minus_min_T_M"], r
        assert r["final_check"]["equal"]
    assert minimum_copies(kt) < kt // 2


def test_replay_all_in_the_method_table_and_its_consumers():
    from sgd_influence.pipeline.experiment import METHOD_UNITS, retrace_unit
    from sgd_influence.checks import validate
    from sgd_influence.config.settings import METHOD_SETTINGS
    m = METHODS["Replay_all"]
    assert m.retrace == {"method": "Hara", "trajectory": "replay", "window": "all"} and m.replays
    assert m.window == "all" and not m.step_params and m.scores_of is None
    assert all(METHODS[n].window == "last" for n in METHODS if n != "Replay_all")
    assert retrains_all(["Random", "Replay_all"]) and not retrains_all(["Replay", "Hara"])
    assert not needs_step_params(["Replay_all"])
    assert "Replay_all" in DRIVER_METHODS and METHOD_UNITS["Replay_all"] is retrace_unit
    assert METHOD_SETTINGS["Replay_all"] == METHOD_SETTINGS["Hara"]
    assert "Replay_all" in validate.ESTIMATORS and "Replay_all" not in validate.LDS_DEFAULT


def test_driver_replay_all_warns_once_without_ra(idx_dir, tmp_path):
    """--methods Replay_all Random without -ra: one warning line, the influence file and its replay check
    (window all, every epoch's steps), no per-step store; with -ra no warning."""
    out = str(tmp_path / "out")
    r = run(["-o", out, "--methods", "Replay_all", "Random", "--workers", "2"] + TINY_RUN, idx_dir)
    assert r.returncode == 0, r.stderr
    warned = [l for l in r.stderr.splitlines() if "Replay_all" in l]
    assert len(warned) == 1 and warned[0].startswith("warning:") and "-ra" in warned[0], r.stderr
    assert os.path.exists(layout.influence_path(out, "Replay_all", 0))
    check = layout.read_json(layout.replay_check_path(out, "Replay_all", 0))
    assert check["window"] == "all" and check["steps"] == 6 and check["final_check"]["equal"]  # 48 / 16 x 2 epochs
    assert not [f for _, _, fs in os.walk(out) for f in fs if "step_params" in f]
    run_dir = layout.train_dir(out, 0)
    cache = layout.read_json(os.path.join(run_dir, "cache_size.json"))
    assert cache["replay_all_bytes"] == sum(os.path.getsize(layout.checkpoint_path(run_dir, e)) for e in (0, 2)) \
        + os.path.getsize(layout.step_record_path(run_dir))
    shutil.rmtree(out)
    r = run(["-o", out, "--methods", "Replay_all", "-ra", "-r", "0"] + TINY_RUN[:-4], idx_dir)
    assert r.returncode == 0, r.stderr
    assert not [l for l in r.stderr.splitlines() if "Replay_all" in l], r.stderr


# ------------------------------------------------------------ LDS, window all
def test_lds_window_all_is_retraining_from_theta0_cached_apart(tmp_path, data):
    """--lds --lds-window all: the truth retrains every epoch from theta[0] without S (paired replays
    perturbed at theta[0]; nothing removed gives 0 exactly), cached apart from the last window's; each
    block names its window and has the deterministic truth (replay 0 alone). On the tiny net without
    batch norm at lr 0.01 Replay_all's sums rank these removals (LDS near 1)."""
    from conftest import TINY, lds_args
    from sgd_influence.checks import lds
    from sgd_influence.checks.validate import run_lds
    from sgd_influence.core.params import StepParamsReader

    out = str(tmp_path / "v")
    args = lds_args(out, "--lds-window", "all", "--lds-fraction", "0.25", "--lds-subsets", "10",
                    "--methods", "Replay_all", "Replay", "Random")
    summary = run_lds(args, lambda seed: tiny_data(seed=seed), net=TINY, progress=False)
    block = summary["trainings"][0]["blocks"][0]
    assert block["window"] == "all" and summary["settings"]["lds_window"] == "all"
    ra = block["methods"]["Replay_all"]
    assert ra["lds"] > 0.9 and ra["lds_single_replay"] > 0.9, block  # replay 0 alone: the deterministic truth
    cache = lds.cache_dir(out, lds.Training(0))
    assert os.path.exists(lds.truths_path(cache, 0.25, "all")) and not os.path.exists(lds.truths_path(cache, 0.25))
    assert os.path.exists(lds.baseline_path(cache, 1, "all")) and not os.path.exists(lds.baseline_path(cache, 0))

    rep = lds.PairedReplays(tiny_data(seed=0), layout.train_dir(out, 0), cache, 8, seed=0, net=TINY, window="all")
    assert len(rep.steps) == rep.record.n_steps == 8
    assert rep.truth(np.array([], np.int64), 1) == 0.0
    first = rep.record.batch(0)[0][:1]
    assert rep.row[first][0] == 0 and (rep.row >= 0).all() and rep.row.max() < 4  # first appearance: epoch 0
    starts = [StepParamsReader(rep.store_path(r)).arrays(0) for r in (0, 1)]
    assert any(not np.array_equal(starts[0][k], starts[1][k]) for k in starts[0])  # replay 1: theta[0] perturbed
    assert all(np.all(np.abs(starts[0][k] - starts[1][k]) <= np.abs(np.spacing(starts[0][k])) * 1.0000001)
               for k in starts[0])

    vdir = os.path.join(out, "validation")
    with open(os.path.join(vdir, "lds_all.json"), "rb") as f:
        whole = f.read()
    last = run_lds(lds_args(out, "--lds-fraction", "0.25", "--lds-subsets", "10", "--methods", "Replay", "Random"),
                   lambda seed: tiny_data(seed=seed), net=TINY, progress=False)
    assert last["trainings"][0]["blocks"][0]["window"] == "last"
    assert os.path.exists(lds.truths_path(cache, 0.25)) and os.path.exists(lds.baseline_path(cache, 0))
    # each window has its own result files: measuring the last epoch leaves the whole training's intact
    with open(os.path.join(vdir, "lds_all.json"), "rb") as f:
        assert f.read() == whole
    assert json.loads(open(os.path.join(vdir, "lds.json")).read())["settings"]["lds_window"] == "last"
    for name in ("lds_all.csv", "lds_all_Replay_all.png", "lds_all_trainings.png", "lds.csv", "lds_Replay.png",
                 "lds_trainings.png"):
        assert os.path.exists(os.path.join(vdir, name)), name


def test_replay_all_on_a_dask_cluster_is_the_in_process_unit(idx_dir, tmp_path):
    """--scheduler: Replay_all's unit on a worker writes the bytes the in-process driver writes."""
    distributed = pytest.importorskip("distributed")
    from sgd_influence.pipeline.experiment import main as driver_main
    outs = {}
    for name in ("local", "cluster"):
        outs[name] = str(tmp_path / name)
        argv = ["-ds", "fashion_mnist", "--data-dir", idx_dir, "-o", outs[name], "--methods", "Replay_all", "-ra",
                "-r", "0"] + TINY_RUN[:-4]
        if name == "local":
            assert driver_main(argv, "test", "unused", ("Hara",)) == 0
            continue
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=":0") as c:
            assert driver_main(argv + ["--scheduler", c.scheduler_address], "test", "unused", ("Hara",)) == 0
    local, cluster = (open(layout.influence_path(outs[n], "Replay_all", 0), "rb").read() for n in outs)
    assert local == cluster


def probe_module():
    """tools/probe_linearity.py as a module."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "probe", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "probe_linearity.py"))
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    return probe


def test_linearity_probe_at_small_eps_is_replay_alls_prediction(tmp_path):
    """tools/probe_linearity.py --window all: on a smooth net, lowering a subset's weight by a small
    eps in every step of a whole retraining changes the validation loss by eps times Replay_all's
    summed scores (its derivative), and eps = 1 moves it by more than the probe's float noise."""
    from sgd_influence.checks.validate import build_parser, check_args, run_lds
    probe = probe_module()
    out = str(tmp_path / "v")
    args = build_parser().parse_args(["-o", out, "--n-train", "32", "--n-val", "24", "-e", "2", "-bs", "8",
                                      "--lr", "0.05", "--lds", "--retrace", "exact", "--lds-window", "all",
                                      "--lds-fraction", "0.25", "--lds-subsets", "5", "--methods", "Replay_all"])
    args.dataset = "tiny"
    check_args(args)
    run_lds(args, lambda seed: tiny_data(seed=seed), net=SMOOTH_BN, progress=False)
    r = probe.linearity(tiny_data(seed=0), SMOOTH_BN, out, 0, 0.25, 4, (0.01, 1.0), 8, window="all")
    assert r["method"] == "Replay_all"
    g, small = r["g"], r["f_over_eps"][0.01]
    assert np.abs(g).min() > 1e-4
    np.testing.assert_allclose(small, g, rtol=0.05, atol=0.02 * np.abs(g).max())
    assert not np.allclose(r["f_over_eps"][1.0], 0.0)
