"""--scheduler: the drivers' units on a Dask cluster (sgd_influence/pipeline/cluster.py).

One LocalCluster of two single-threaded worker processes serves the tests; the tiny
experiment is test_end_to_end's."""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

distributed = pytest.importorskip("distributed")

from sgd_influence.pipeline import cluster  # noqa: E402
from sgd_influence.pipeline.experiment import main as driver_main  # noqa: E402
from test_end_to_end import ROOT, TINY_RUN, layout  # noqa: E402


def drive(out, data_dir, *extra):
    """The SGD driver in this process; its exit status."""
    argv = ["-ds", "fashion_mnist", "--data-dir", data_dir, "-o", str(out)] + TINY_RUN + list(extra)
    return driver_main(argv, "test", "unused", ("Hara", "Ours", "Random"))


def csvs(out):
    return {f: open(os.path.join(out, f), "rb").read() for f in layout(out) if f.endswith(".csv")}


@pytest.fixture(scope="module")
def local_cluster():
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        with Client(c, set_as_default=False) as client:
            yield c, client


@pytest.fixture(scope="module")
def reference(idx_dir, tmp_path_factory):
    """The tiny run with --workers 1: its CSVs."""
    out = tmp_path_factory.mktemp("ref") / "out"
    assert drive(out, idx_dir) == 0
    return csvs(out)


def executed(stream) -> set:
    return {t["key"] for t in stream.data}


def test_cluster_run_is_byte_identical_and_resumes_only_missing_units(local_cluster, reference, idx_dir, tmp_path):
    c, client = local_cluster
    out = tmp_path / "out"
    with distributed.get_task_stream(client) as ts:
        assert drive(out, idx_dir, "--scheduler", c.scheduler_address) == 0
    # 1 training, 3 influence files, n = 0 shared + n = 4 for each method
    assert len(executed(ts)) == 1 + 3 + 1 + 3
    got = csvs(out)
    assert set(got) == set(reference) and any(f.startswith("score/") for f in got)
    for f in reference:
        assert got[f] == reference[f], f
    assert not [f for f in layout(out) if ".tmp" in f]

    # Two results removed: exactly their two units run again, with the same bytes.
    os.remove(out / "influence" / "Ours" / "influence_ours_0.csv")
    os.remove(out / "score" / "Random" / "score_delete_worst_4_seed_0.csv")
    with distributed.get_task_stream(client) as ts:
        assert drive(out, idx_dir, "--scheduler", c.scheduler_address) == 0
    keys = sorted(executed(ts))
    assert len(keys) == 2 and keys[0].startswith("influence-retrace_unit-Ours-0-")
    assert keys[1].startswith("retrain-eval_unit-Random-4-0-")
    assert csvs(out) == reference


def test_killed_worker_unit_is_rerun_with_the_same_result(local_cluster, reference, idx_dir, tmp_path):
    c, client = local_cluster
    marker = str(tmp_path / "killed")

    class KillOnce(distributed.WorkerPlugin):
        """Kills its worker process shortly after it starts the training unit, once."""
        name = "kill-once"

        def transition(self, key, start, finish, **kwargs):
            if finish == "executing" and str(key).startswith("train-") and not os.path.exists(marker):
                open(marker, "w").close()
                threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGKILL)).start()

    register = getattr(client, "register_plugin", None) or client.register_worker_plugin
    register(KillOnce())
    try:
        out = tmp_path / "out"
        assert drive(out, idx_dir, "--scheduler", c.scheduler_address) == 0
    finally:
        client.unregister_worker_plugin("kill-once")
    assert os.path.exists(marker)  # a worker was killed in the training unit
    assert csvs(out) == reference
    assert not [f for f in layout(out) if ".tmp" in f]
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it, for the tests after


def test_worker_without_the_output_folder_is_one_clear_error(idx_dir, tmp_path, capsys):
    """A scheduler whose only worker runs in a mount namespace where a tmpfs hides the output
    folder, as on a machine that does not share it."""
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("needs unshare -m (root) to start a worker that cannot see the output folder")
    from distributed import Client, LocalCluster
    out = tmp_path / "out"
    with LocalCluster(n_workers=0, processes=True, dashboard_address=":0") as sched:
        script = (f"mount -t tmpfs none {tmp_path} && exec {sys.executable} -m distributed.cli.dask_worker "
                  f"{sched.scheduler_address} --nthreads 1 --no-nanny")
        worker = subprocess.Popen(["unshare", "-m", "sh", "-c", script], env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with Client(sched, set_as_default=False) as client:
                client.wait_for_workers(1, timeout=60)
            assert drive(out, idx_dir, "--scheduler", sched.scheduler_address) == 2
        finally:
            worker.terminate()
            worker.wait(30)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "cannot see the output folder" in lines[0] and str(out) in lines[0] and "tcp://" in lines[0]
    assert "Traceback" not in err
    assert os.path.exists(out / "run.json") and not os.path.exists(out / "train" / "seed_0" / "step_record.npz")


def test_bad_scheduler_address_and_workers_together_are_refused(tmp_path, idx_dir, capsys):
    import dask
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        assert drive(tmp_path / "o", idx_dir, "--scheduler", "tcp://127.0.0.1:1") == 2
    assert drive(tmp_path / "o", idx_dir, "--scheduler", "tcp://127.0.0.1:1", "--workers", "2") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "cannot reach a Dask scheduler at tcp://127.0.0.1:1" in err[0]
    assert "exclude each other" in err[1]


def test_unit_needs_orders_training_influence_retraining():
    from sgd_influence.pipeline.experiment import eval_unit, retrace_unit, train_unit, unit_needs
    assert unit_needs((retrace_unit, "Hara", 1), (train_unit, 1))
    assert not unit_needs((retrace_unit, "Hara", 1), (train_unit, 0))  # other trial
    assert unit_needs((eval_unit, ("Hara",), 10, 1), (retrace_unit, "Hara", 1))
    assert not unit_needs((eval_unit, ("Ours",), 10, 1), (retrace_unit, "Hara", 1))
    assert not unit_needs((eval_unit, ("Hara", "Ours"), 0, 1), (retrace_unit, "Hara", 1))  # n = 0 reads none
    assert unit_needs((eval_unit, ("Hara", "Ours"), 0, 1), (train_unit, 1))


def test_slurm_job_script(capsys):
    pytest.importorskip("dask_jobqueue")
    code = cluster.jobs_main(["slurm", "--jobs", "3", "--gpus-per-job", "1", "--walltime", "02:00:00",
                              "--queue", "gpu", "--port", "0", "--dashboard", "", "--print-script"])
    script = capsys.readouterr().out
    assert code == 0
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH -t 02:00:00" in script and "#SBATCH -p gpu" in script
    assert f"cd {ROOT}" in script and f"export PYTHONPATH={ROOT}" in script
    assert sys.executable in script and "--resources GPU=1" in script and "--nthreads 1" in script


@pytest.mark.slow  # about a minute here: two LDS runs
def test_lds_replays_on_the_cluster_match_one_process(local_cluster, idx_dir, tmp_path):
    """validate_influence.py --lds: the replays' values come back to the driver (on_result)."""
    from sgd_influence.checks.validate import main as validate_main
    c, client = local_cluster
    base = ["-ds", "fashion_mnist", "--data-dir", idx_dir, "--n-train", "48", "--n-val", "16", "-e", "2",
            "-bs", "16", "--lds", "--lds-fraction", "0.25", "--lds-subsets", "5", "--noise-replays", "2",
            "--methods", "Ours", "Random"]
    assert validate_main(["-o", str(tmp_path / "one")] + base) == 0
    with distributed.get_task_stream(client) as ts:
        assert validate_main(["-o", str(tmp_path / "dask"), "--scheduler", c.scheduler_address] + base) == 0
    assert len(executed(ts)) == 1 + 2 + 2 + 5 * 2  # training, scores, baseline replays, subsets x replays
    for f in ("lds.csv", "lds.json"):
        a = open(tmp_path / "one" / "validation" / f).read()
        b = open(tmp_path / "dask" / "validation" / f).read()
        if f == "lds.json":  # identical but for the timings
            import json
            a, b = ({k: v for k, v in json.loads(x).items() if k != "seconds_this_run"} for x in (a, b))
        assert a == b, f


def test_make_paper_passes_the_scheduler():
    """make paper SCHEDULER=...: both drivers get --scheduler and not --workers (dry run)."""
    if not shutil.which("make"):
        pytest.skip("no make")
    r = subprocess.run(["make", "-n", "paper", "SCHEDULER=tcp://head:8786"], capture_output=True, text=True, cwd=ROOT)
    drivers = [line for line in r.stdout.splitlines() if "eval_" in line]
    assert r.returncode == 0 and len(drivers) == 2, r.stdout + r.stderr
    assert all("--scheduler tcp://head:8786" in line and "--workers" not in line for line in drivers)


def test_cluster_workers_report_their_steps(local_cluster, monkeypatch):
    """A unit's loop on a Dask worker reports its steps to the driver (scheduler events)."""
    import argparse
    from sgd_influence.base import progress
    from test_progress import looping_unit
    c, _ = local_cluster
    seen = []
    show = progress.StepBars.show
    monkeypatch.setattr(progress.StepBars, "show", lambda self, msg: (seen.append(msg), show(self, msg)))
    args = argparse.Namespace(workers=1, device_id="cpu", scheduler=c.scheduler_address, output_dir=".",
                              data_dir=None)
    cluster.run_units([(looping_unit, k) for k in range(2)], args, "loops")
    deadline = time.time() + 10  # events travel through the scheduler: allow them a moment
    while {m["desc"] for m in seen} != {"loop 0", "loop 1"} and time.time() < deadline:
        time.sleep(0.1)
    assert {m["desc"] for m in seen} == {"loop 0", "loop 1"} and all(m["total"] == 5 for m in seen)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_scheduler_that_cannot_import_the_project_is_one_error_line(tmp_path, capsys):
    """`dask scheduler` started elsewhere without PYTHONPATH: the driver says so in one line, exit 2,
    and writes nothing (the scheduler unpickles the task graph, which names project functions)."""
    import argparse
    from sgd_influence.base.errors import run_command
    from sgd_influence.pipeline.experiment import train_unit
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    sched = subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                              "--dashboard-address", ":0", "--no-show"], cwd=str(tmp_path), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = tmp_path / "out"
        out.mkdir()
        args = argparse.Namespace(workers=1, device_id="cpu", scheduler=f"tcp://127.0.0.1:{port}",
                                  output_dir=str(out), data_dir=None)
        code = run_command(lambda: cluster.run_units([(train_unit, 0)], args, "training", progress=False))
    finally:
        sched.terminate()
        sched.wait(30)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and os.listdir(out) == []
    line = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and f"tcp://127.0.0.1:{port}" in line[0] and f"PYTHONPATH={ROOT}" in line[0], err


def test_cluster_scheduler_and_worker_commands_put_the_project_on_the_path():
    cmd, env = cluster.dask_command("worker", ["tcp://h:8786", "--nthreads", "1"], {"PYTHONPATH": "/x", "A": "b"})
    assert cmd == [sys.executable, "-m", "dask", "worker", "tcp://h:8786", "--nthreads", "1"]
    assert env["PYTHONPATH"] == ROOT + os.pathsep + "/x" and env["A"] == "b"
    assert cluster.dask_command("scheduler", [], {})[1]["PYTHONPATH"] == ROOT
    r = subprocess.run([sys.executable, "-m", "sgd_influence.cluster", "scheduler", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "scheduler" in r.stdout, r.stdout + r.stderr
