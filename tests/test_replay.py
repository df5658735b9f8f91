"""Replay (core/replay.py): Hara's scores with theta[t] recomputed from params_epoch_<K-1>.h5 and the
step record instead of stored -- byte for byte Hara's on the CPU, within a memory budget whose copies
held and steps replayed follow the scheme's formula, with the replayed theta[T] checked."""
import json
import math
import os
import shutil

import numpy as np
import nnabla as nn
import pytest

from conftest import TINY, TINY_BN
from test_end_to_end import TINY_RUN, layout as files_of, run
from sgd_influence.base import layout
from sgd_influence.base.errors import UserError
from sgd_influence.base.methods import DRIVER_METHODS, METHODS, needs_step_params
from sgd_influence.core.infl import retrace
from sgd_influence.core.params import StepParamsReader, load_checkpoint, save_checkpoint
from sgd_influence.core.replay import ReplayedTrajectory, _best_segments, minimum_copies, plan
from sgd_influence.core.step_record import StepRecord
from sgd_influence.core.train import init_model, train

EPOCHS = 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny trainings with Hara's store: {(net, batch size): run folder}; batch 5 leaves a last batch of 2."""
    from conftest import tiny_data
    data = tiny_data()
    out = {}
    for name, net, bs in (("bn4", TINY_BN, 4), ("bn5", TINY_BN, 5), ("plain4", TINY, 4)):
        d = str(tmp_path_factory.mktemp(name) / "train" / "seed_0")
        train(data, d, seed=0, epochs=EPOCHS, batch_size=bs, lr=0.1, keep_step_params=True, progress=False, net=net)
        out[(name, bs)] = d
    return out


def steps_of(run_dir):
    record = StepRecord.load(layout.step_record_path(run_dir))
    return len(record.steps_of_epoch(record.n_epochs - 1))


def csv_bytes(path, data, scores):
    layout.write_influence_csv(path, data.train.ids, data.train.y, scores)
    with open(path, "rb") as f:
        return f.read()


# ------------------------------------------------------------------ the plan
def test_plan_holds_min_T_M_copies_and_replays_2T_minus_min_T_M_steps():
    """For every T <= 80 and every budget M from the scheme's minimum up: copies held min(T, M),
    steps replayed 2T - min(T, M); the minimum is the brute-force one; below it a UserError."""
    for x in range(1, 200):  # the segment count minimising c + ceil(x / c), against brute force
        assert _best_segments(x)[1] == min(c + -(-x // c) for c in range(1, x + 1)), x
    for t in range(1, 81):
        brute = next(m for m in range(1, t + 1)
                     if m == t or any(c + -(-(t - m) // c) <= m for c in range(1, t + 1)))
        assert minimum_copies(t) == brute, t
        assert minimum_copies(t) <= math.ceil(2 * math.sqrt(t)), t  # about the sqrt(T) scheme's 2 sqrt(T)
        for m in range(minimum_copies(t), t + 3):
            p = plan(t, m)
            assert p.held == min(t, m) and p.steps_replayed == 2 * t - min(t, m), (t, m)
            assert p.in_memory == (m >= t)
            if not p.in_memory:
                assert p.checkpoints[0] == 0 and list(p.checkpoints) == sorted(set(p.checkpoints))
                assert p.checkpoints[-1] < t - p.tail
        if minimum_copies(t) > 1:
            with pytest.raises(UserError, match=r"--replay-memory \d+ or more"):
                plan(t, minimum_copies(t) - 1, 1000)


# ------------------------------------------------- the trajectory, the scores
def test_replayed_trajectory_is_the_stored_one_at_every_step(data, runs):
    """Walking back through a checkpointed replay gives every theta[t] (all parameters, batch-norm
    statistics included) exactly as Hara's store holds it, never holding more than M rows."""
    run_dir = runs[("bn5", 5)]
    record = StepRecord.load(layout.step_record_path(run_dir))
    t = steps_of(run_dir)
    stored = StepParamsReader(layout.step_params_path(run_dir, EPOCHS - 1))
    m = minimum_copies(t)
    traj = ReplayedTrajectory(data, run_dir, record, 5, TINY_BN, memory_bytes=m * 4 * stored.row_size,
                              progress=False)
    assert traj.plan.copies == m < t
    assert traj.replay_window()["equal"]
    params = nn.get_parameters(grad_only=False)
    for i in range(t - 1, -1, -1):
        traj.load(i)
        assert len(traj.rows) <= m
        for k, v in stored.arrays(i).items():
            assert np.array_equal(params[k].d, v), (i, k)
    assert traj.rows.peak == m and traj.steps_replayed == 2 * t - m


@pytest.mark.parametrize("key,net,mode,coupling", [
    (("bn4", 4), TINY_BN, "fd", True),
    (("bn5", 5), TINY_BN, "exact", True),
    (("bn5", 5), TINY_BN, "fd", False),
    (("plain4", 4), TINY, "fd", False),
])
def test_replay_scores_are_haras_byte_for_byte(data, runs, tmp_path, key, net, mode, coupling):
    """Replay's influence CSV equals Hara's byte for byte (--retrace fd|exact, --bn-coupling on|off,
    with and without batch norm, a short last batch), in memory and checkpointed at the smallest and a
    middle budget; the copies held and the steps replayed are the scheme's min(T, M) and 2T - min(T, M)."""
    run_dir, bs = runs[key], key[1]
    t = steps_of(run_dir)
    hara = retrace(data, run_dir, "Hara", bs, progress=False, net=net, mode=mode, bn_coupling=coupling)
    expected = csv_bytes(str(tmp_path / "hara.csv"), data, hara)
    row = 4 * StepParamsReader(layout.step_params_path(run_dir, EPOCHS - 1)).row_size
    for m in (None, minimum_copies(t), (minimum_copies(t) + t) // 2):
        reports = []
        scores = retrace(data, run_dir, "Hara", bs, progress=False, net=net, mode=mode, bn_coupling=coupling,
                         trajectory="replay", replay_memory=None if m is None else m * row + row - 1,
                         on_replay=reports.append)
        assert csv_bytes(str(tmp_path / f"replay_{m}.csv"), data, scores) == expected, m
        r, held = reports[0], t if m is None else min(t, m)
        assert r["scheme"] == ("in memory" if held == t else "checkpointed")
        assert r["copies_held"] == held == r["copies_held_formula_min_T_M"], r
        assert r["steps_replayed"] == 2 * t - held == r["steps_replayed_formula_2T_minus_min_T_M"], r
        assert r["final_check"]["equal"] and r["final_check"]["values_differing"] == 0


def test_budget_too_small_is_a_user_error_naming_the_option(data, runs):
    run_dir = runs[("bn4", 4)]
    with pytest.raises(UserError, match=r"^the Replay memory budget holds 1 copies .* give --replay-memory"):
        retrace(data, run_dir, "Hara", 4, progress=False, net=TINY_BN, trajectory="replay",
                replay_memory=4 * StepParamsReader(layout.step_params_path(run_dir, EPOCHS - 1)).row_size)


# --------------------------------------------------------------- self-check
def unit_args(out, *extra):
    from sgd_influence.config.settings import build_parser
    return build_parser("", "out", ["Hara"]).parse_args(["-o", out, "-bs", "4", *extra])


def test_replayed_final_parameters_differing_from_the_stored_are_one_warning_and_recorded(
        data, runs, tmp_path, monkeypatch, capsys):
    """A stored params_epoch_<K>.h5 perturbed in a copy of the run: one warning with the largest
    relative difference, the check recorded in influence/Replay/replay_check_0.json (equal false), and
    the scores those of the replayed trajectory (u at the replayed theta[T]): the unperturbed run's."""
    from sgd_influence.pipeline import experiment
    monkeypatch.setattr(experiment, "data_for", lambda args, seed: data)
    monkeypatch.setattr(experiment.network, "from_args", lambda args: TINY_BN)
    outs = {}
    for name in ("same", "perturbed"):
        outs[name] = str(tmp_path / name)
        shutil.copytree(runs[("bn4", 4)], layout.train_dir(outs[name], 0))
    final = layout.checkpoint_path(layout.train_dir(outs["perturbed"], 0), EPOCHS)
    init_model(data, 0, 4, TINY_BN)
    load_checkpoint(final)
    moved, w = next(iter(nn.get_parameters(grad_only=True).items()))
    d = w.d.copy()
    d.flat[3] *= np.float32(1.001)
    w.d = d
    save_checkpoint(final)

    for name in ("same", "perturbed"):
        capsys.readouterr()
        experiment.retrace_unit(unit_args(outs[name], "--replay-memory", "1000"), "Replay", 0, progress=False)
        warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
        check = json.load(open(layout.replay_check_path(outs[name], "Replay", 0)))
        assert check["memory_budget"] == "--replay-memory 1000" and check["memory_budget_bytes"] == 10 ** 9
        c = check["final_check"]
        if name == "same":
            assert not warnings and c["equal"] and c["largest_relative_difference"] == 0
            continue
        assert len(warnings) == 1 and "largest relative difference 0.000999" in warnings[0], warnings
        assert f"in {moved})" in warnings[0]
        assert not c["equal"] and c["values_differing"] == 1 and c["largest_relative_difference_in"] == moved
        assert c["largest_relative_difference"] == pytest.approx(0.001 / 1.001, rel=1e-3)
    same, perturbed = (open(layout.influence_path(outs[n], "Replay", 0), "rb").read() for n in ("same", "perturbed"))
    assert same == perturbed


# ---------------------------------------------------------- the method table
def test_replay_in_the_method_table_and_its_consumers():
    from sgd_influence.pipeline.experiment import METHOD_UNITS, retrace_unit
    from sgd_influence.checks import validate
    from sgd_influence.config.settings import METHOD_SETTINGS
    m = METHODS["Replay"]
    assert m.retrace == {"method": "Hara", "trajectory": "replay"} and m.replays and not m.step_params
    assert METHODS["Hara"].step_params and not METHODS["Hara"].replays
    assert not needs_step_params(["Replay", "Random"]) and needs_step_params(["Replay", "Hara"])
    assert "Replay" in DRIVER_METHODS and METHOD_UNITS["Replay"] is retrace_unit
    assert set(METHOD_UNITS) == set(DRIVER_METHODS)
    assert METHOD_SETTINGS["Replay"] == METHOD_SETTINGS["Hara"]
    assert "Replay" in validate.ESTIMATORS and "Replay" not in validate.LDS_DEFAULT  # its LDS is Hara's
    args = validate.build_parser().parse_args(["--lds", "--methods", "Replay", "Random", "--replay-memory", "50"])
    validate.check_args(args)
    assert args.methods == ["Replay", "Random"] and args.replay_memory == 50


def test_validate_estimates_replay_as_hara(data, runs, tmp_path):
    from sgd_influence.checks import validate
    run_dir = runs[("bn4", 4)]
    vargs = validate.build_parser().parse_args(["-o", str(tmp_path), "-bs", "4"])
    check = str(tmp_path / "check.json")
    replay = validate.estimate("Replay", data, run_dir, vargs, TINY_BN, progress=False, replay_check=check)
    hara = validate.estimate("Hara", data, run_dir, vargs, TINY_BN, progress=False)
    assert np.array_equal(replay, hara) and json.load(open(check))["final_check"]["equal"]


# ------------------------------------------------------------------ drivers
def test_driver_replay_equals_hara_keeps_no_step_store_and_resumes(finished_tiny_run, idx_dir, tmp_path):
    """--methods Replay Random --workers 2: no per-step store, Replay's CSV byte-identical to the Hara
    CSV of the same run trained with the store, its check and Table 1 row, analyze and --export-clean;
    a Replay unit that fails (a budget too small) leaves no result file and re-running completes it."""
    from sgd_influence import analyze
    out = str(tmp_path / "out")
    r = run(["-o", out, "--methods", "Replay", "Random", "--workers", "2"] + TINY_RUN, idx_dir)
    assert r.returncode == 0, r.stderr
    files = files_of(out)
    assert not [f for f in files if "step_params" in f or ".tmp" in f]
    replay_csv = os.path.join(out, "influence", "Replay", "influence_replay_0.csv")
    hara = open(os.path.join(finished_tiny_run, "influence", "Hara", "influence_hara_0.csv"), "rb").read()
    assert open(replay_csv, "rb").read() == hara
    check = json.load(open(os.path.join(out, "influence", "Replay", "replay_check_0.json")))
    assert check["final_check"]["equal"] and check["scheme"] == "in memory" and "available" in check["memory_budget"]
    for f in ("score/Replay/score_delete_worst_4_seed_0.csv", "fig/harmful_Replay_seed0.png"):
        assert f in files, f

    run_dir = layout.train_dir(out, 0)
    cache = json.load(open(os.path.join(run_dir, "cache_size.json")))
    h5 = [os.path.getsize(layout.checkpoint_path(run_dir, e)) for e in (1, 2)]
    assert cache["replay_bytes"] == sum(h5) + cache["replay_parts"]["step_record_last_epoch"]
    assert cache["replay_parts"]["step_record_last_epoch"] <= cache["step_record_file_bytes"]
    assert cache["replay_bytes"] <= 2 * max(h5) + cache["step_record_file_bytes"]  # <= 2 theta + the record
    table = open(os.path.join(out, "summary", "table1_cache.csv")).read().splitlines()
    header = table[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in table[1:]]
    mine = next(r for r in rows if r["scope"] == "this run" and r["cache"] == "replay")
    assert int(mine["saved_bytes"]) == cache["replay_bytes"] and float(mine["compute_vs_hara"]) > 1
    everything = next(r for r in rows if r["scope"] == "this run" and r["cache"] == "replay_all")
    files = [layout.checkpoint_path(run_dir, 0), layout.checkpoint_path(run_dir, 2), layout.step_record_path(run_dir)]
    assert int(everything["saved_bytes"]) == sum(os.path.getsize(f) for f in files)  # theta[0], theta[T], the record
    mnist = next(r for r in rows if r["scope"] == "paper scale" and r["dataset"] == "mnist" and r["cache"] == "replay")
    assert int(mnist["float32_bytes"]) == 2 * 307818 * 4 + int(mnist["record_bytes"])
    assert "Replay (θ[K−1] + θ[T]" in open(os.path.join(out, "summary", "table1_cache.md")).read()

    assert analyze.main([out, "--export-clean", "Replay", "4"]) == 0
    removed = open(os.path.join(out, "export", "Replay_without_4_seed0", "removed.csv")).read().splitlines()
    assert [l.split(",")[-1] for l in removed[1:]] == [l.split(",")[-1] for l in hara.decode().splitlines()[1:5]]

    # A Replay unit that fails: one error line, exit 2, no influence file; then the same command completes it.
    os.remove(replay_csv)
    before = set(files_of(out))
    r = run(["-o", out, "--methods", "Replay", "Random", "--replay-memory", "0.001"] + TINY_RUN, idx_dir)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "--replay-memory" in errors[0], r.stderr
    assert not os.path.exists(replay_csv) and not [f for f in files_of(out) if ".tmp" in f]
    assert set(files_of(out)) <= before
    r = run(["-o", out, "--methods", "Replay", "Random"] + TINY_RUN, idx_dir)
    assert r.returncode == 0, r.stderr
    assert open(replay_csv, "rb").read() == hara


def test_replay_on_a_dask_cluster_is_haras(idx_dir, tmp_path):
    """--scheduler: Hara and Replay of one training, each a unit on a worker: the same bytes."""
    distributed = pytest.importorskip("distributed")
    from sgd_influence.pipeline.experiment import main as driver_main
    out = str(tmp_path / "out")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        argv = ["-ds", "fashion_mnist", "--data-dir", idx_dir, "-o", out, "--scheduler", c.scheduler_address,
                "--methods", "Hara", "Replay"] + TINY_RUN
        assert driver_main(argv, "test", "unused", ("Hara",)) == 0
    hara, replay = (open(layout.influence_path(out, m, 0), "rb").read() for m in ("Hara", "Replay"))
    assert hara == replay
