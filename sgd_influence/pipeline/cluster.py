"""Scale-out with Dask: run the units of a driver on the workers of a running Dask scheduler.

`--scheduler tcp://host:8786` (both drivers and validate_influence.py) hands every unit
to the scheduler at once, each with the units it depends on (a trial's training before
its influence units, those before its retrainings), so one trial's influence may run
while another trial trains. Units are the same functions as with --workers; each writes
its own file atomically (layout.atomic_path), so results are byte-identical to --workers 1,
a unit killed with its worker leaves no finished file (the scheduler re-runs it on
another worker: distributed's `allowed-failures`), and a file that exists is a finished
unit that is not submitted again.

Workers must see the output folder and the dataset at the same paths as the driver
(a shared filesystem) and import this repository (start them from its root with
PYTHONPATH set). A worker that cannot fails its unit with one line naming the path and
the worker; the driver cancels the rest, prints it and exits 2.

`python -m sgd_influence.cluster slurm --jobs 10 --gpus-per-job 1 --walltime 04:00:00`
starts workers as batch jobs with dask-jobqueue and prints the scheduler's address
(docs/cluster.md); `python -m sgd_influence.cluster scheduler` and `... worker ADDRESS` are
`dask scheduler` and `dask worker` with the repository on PYTHONPATH (the scheduler unpickles
the task graph, which names the project's functions: without it a run ends with one line
saying so).
"""
from __future__ import annotations

import argparse
import copy
import os
import socket
import sys
import threading
import time
import uuid
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from ..base.environment import ROOT
from ..base.errors import UserError, run_command
from ..base.layout import remove_stale_temporaries
from ..base.progress import StepBars, report_to
from ..config.settings import set_context

# Modules a worker must import to run a unit (the repository's own packages).
PROJECT_MODULES = ("sgd_influence", "datasets", "models", "influence_functions")
# Options that hold paths: made absolute on the driver, so every worker sees the same path.
PATH_OPTIONS = ("output_dir", "data_dir")

Unit = tuple  # (fn, *rest): fn(args, *rest, progress=False) runs one unit
Phase = Tuple[str, List[Unit]]  # (progress-bar label, units)


# --------------------------------------------------------------------- worker side
_UNIT_LOCK = threading.Lock()  # nnabla's graph and parameters are per process: one unit at a time
_CONTEXT: Dict[str, str] = {}  # device id -> the nnabla context this worker set


def worker_name() -> str:
    """The Dask worker running this code, as `tcp://addr (host)`; the host alone outside a worker."""
    try:
        from distributed import get_worker
        return f"{get_worker().address} ({socket.gethostname()})"
    except (ImportError, ValueError):
        return socket.gethostname()


def check_shared(args: argparse.Namespace, marker: Optional[str]) -> None:
    """Refuse to run where the output folder is not the driver's: it must exist, be writable and
    hold `marker` (an entry the driver saw in it). Without this a worker on another filesystem
    would write its results into a folder of its own and report success."""
    out = args.output_dir
    seen = os.path.isdir(out) and (marker is None or os.path.exists(os.path.join(out, marker)))
    if not seen or not os.access(out, os.W_OK | os.X_OK):
        what = "cannot see" if not seen else "cannot write to"
        raise UserError(f"worker {worker_name()} {what} the output folder {out}; every worker needs it at the "
                        f"same path as the driver (a shared filesystem, docs/cluster.md)")


def run_unit(args: argparse.Namespace, fn: Callable, rest: list, marker: Optional[str], *done,
             steps_topic: Optional[str] = None) -> object:
    """On a worker: the value of fn(args, *rest) after checking the shared folder. `done` are the
    results of the units it depends on (only their completion matters). The unit comes apart
    as fn and a list: older Dask runs a tuple whose first element is callable as a task.
    With `steps_topic` its loops' progress goes to the driver as events of that topic."""
    with _UNIT_LOCK:
        check_shared(args, marker)
        send = event_sender(steps_topic) if steps_topic else None
        report_to(send)
        try:
            if _CONTEXT.get("device") != args.device_id:
                set_context(args.device_id)
                _CONTEXT["device"] = args.device_id
            return fn(args, *rest, progress=send is not None)
        except UserError as e:  # e.g. the dataset missing on this worker: say which worker
            raise UserError(f"worker {worker_name()}: {e}") from None
        finally:
            report_to(None)


def event_sender(topic: str) -> Optional[Callable[[dict], None]]:
    """`send(message)` as an event of `topic` on the scheduler (the driver subscribes), or None
    where this worker cannot (outside a worker, or a distributed without events)."""
    try:
        from distributed import get_worker
        worker = get_worker()
        return lambda msg: worker.log_event(topic, msg)
    except (ImportError, ValueError, AttributeError):
        return None


# --------------------------------------------------------------------- driver side
def worker_args(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of `args` with its path options absolute (workers start in other folders)."""
    a = copy.copy(args)
    for k in PATH_OPTIONS:
        if getattr(a, k, None):
            setattr(a, k, os.path.abspath(getattr(a, k)))
    return a


def shared_marker(out: str) -> Optional[str]:
    """An entry of the output folder that every worker must see: run.json when the driver wrote
    one, else its first entry that is not hidden (NFS's transient .nfs* files are)."""
    names = sorted(n for n in os.listdir(out) if not n.startswith(".")) if os.path.isdir(out) else []
    return "run.json" if "run.json" in names else next(iter(names), None)


def connect(address: str):
    """A distributed.Client on the scheduler at `address`; one clear error when there is none.

    distributed is imported where it is used, here and below: runs without --scheduler never pay
    its import time, and a machine without it gets one error line."""
    try:
        from distributed import Client
    except ImportError:
        raise UserError("--scheduler needs dask and distributed (pip install -r requirements.txt)") from None
    import dask
    try:  # waits distributed.comm.timeouts.connect (30 s; DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT)
        return Client(address, timeout=dask.config.get("distributed.comm.timeouts.connect"), set_as_default=False)
    except (OSError, ValueError, TypeError) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot reach a Dask scheduler at {address} ({why}); start one with `dask scheduler` "
                        f"and give its address, e.g. --scheduler tcp://host:8786") from None


def subscribe_steps(client, topic: str, bars: StepBars) -> Optional[str]:
    """Show the steps the workers report under `topic` (`run_unit`); None where this distributed
    has no events (then units run without step reports)."""
    try:
        client.subscribe_topic(topic, lambda event: bars.show(event[1]))
    except AttributeError:
        return None
    return topic


def unit_label(unit: Unit) -> str:
    """A readable name of a unit: its function and arguments (`retrain_unit-Hara-10-0`)."""
    parts = [getattr(unit[0], "__name__", "unit")]
    for x in unit[1:]:
        parts.append("+".join(map(str, x)) if isinstance(x, (tuple, list)) else str(x))
    return "-".join(parts)


def cluster_resources(client, device_id: str) -> Optional[dict]:
    """{"GPU": 1} for every unit when the units use a device (-di not cpu) and some worker
    advertises a GPU resource (`dask worker --resources GPU=1`); else none. Warns about
    workers with several threads (they run one unit at a time all the same)."""
    workers = client.scheduler_info().get("workers", {})
    if not workers:
        print("note: no Dask worker is connected yet; units wait until workers join", file=sys.stderr)
    many = [a for a, w in workers.items() if w.get("nthreads", 1) > 1]
    if many:
        print(f"note: {len(many)} worker(s) have several threads; each runs one unit at a time "
              f"(start workers with --nthreads 1)", file=sys.stderr)
    gpus = any(w.get("resources", {}).get("GPU") for w in workers.values())
    return {"GPU": 1} if device_id != "cpu" and gpus else None


def explain(err: BaseException, unit: Unit, address: str = "the scheduler") -> BaseException:
    """The error to raise on the driver for a failed unit: a UserError for what a user fixes."""
    if isinstance(err, UserError):
        return err
    if isinstance(err, RuntimeError) and "deserialization of the task graph" in str(err):
        # distributed's scheduler unpickles the task graph, and the units name this project's functions
        return UserError(f"the Dask scheduler at {address} cannot import this project, so it cannot read the units; "
                         f"start the scheduler and the workers with PYTHONPATH={ROOT}, or as `python -m "
                         f"sgd_influence.cluster scheduler` and `... worker ADDRESS`, which set it (docs/cluster.md)")
    name = type(err).__name__
    if name == "KilledWorker":
        return UserError(f"unit {unit_label(unit)} ended its worker every time it ran (out of memory or a crash); "
                         f"see the workers' logs. Finished units are kept: re-run to resume")
    if isinstance(err, ImportError) and (getattr(err, "name", None) or "").split(".")[0] in PROJECT_MODULES:
        return UserError(f"a worker cannot import {err.name}: start workers from the repository root with "
                         f"PYTHONPATH=$PWD (docs/cluster.md)")
    return err


def run_phases(args: argparse.Namespace, phases: Sequence[Phase],
               needs: Optional[Callable[[Unit, Unit], bool]] = None,
               on_result: Optional[Callable[[Unit, object], None]] = None, progress: bool = True) -> Dict[str, int]:
    """Submit the units of every phase to the scheduler at `args.scheduler` and wait for all.
    A unit runs after the units of earlier phases it `needs` (needs(unit, earlier)); units of
    one phase are independent. on_result(unit, value) runs here as each unit finishes.
    Returns the number of units submitted per phase; on the first failure the rest are
    cancelled (units already running finish) and its error is raised."""
    from distributed import as_completed
    if getattr(args, "workers", 1) > 1:
        raise UserError("--workers and --scheduler exclude each other: the scheduler's workers run the units")
    phases = [(d, list(u)) for d, u in phases]
    counts = {d: len(u) for d, u in phases}
    if not any(counts.values()):
        return counts
    wargs = worker_args(args)
    out = wargs.output_dir
    marker = shared_marker(out)
    client = connect(args.scheduler)
    bars, futures = [], {}
    run_id = uuid.uuid4().hex[:8]
    step_bars = StepBars(progress)
    steps_topic = subscribe_steps(client, f"sgd_influence-steps-{run_id}", step_bars) if progress else None
    try:
        resources = cluster_resources(client, args.device_id)
        submitted: List[Tuple[Unit, object]] = []  # (unit, future) of earlier phases
        for i, (desc, units) in enumerate(phases):
            bar = tqdm(total=len(units), desc=desc, unit="unit", position=i, disable=not progress or not units)
            bars.append(bar)
            mine = []
            for u in units:
                deps = [f for e, f in submitted if needs is not None and needs(u, e)]
                f = client.submit(run_unit, wargs, u[0], list(u[1:]), marker, *deps, steps_topic=steps_topic,
                                  key=f"{desc}-{unit_label(u)}-{run_id}", resources=resources, pure=False)
                futures[f] = (bar, u)
                mine.append((u, f))
            submitted += mine
        for f in as_completed(list(futures), loop=client.loop):
            bar, u = futures[f]
            if f.status != "finished":
                err = f.exception()
                client.cancel(list(futures))
                raise explain(err, u, args.scheduler) from None
            value = f.result()
            bar.update(1)
            if on_result:
                on_result(u, value)
    except BaseException:
        if futures:
            client.cancel(list(futures))
        raise
    finally:
        if steps_topic:
            try:
                client.unsubscribe_topic(steps_topic)
            except Exception:  # the client may be closing after an error: nothing to show then
                pass
        step_bars.close()
        for bar in bars:
            bar.close()
        client.close()
    # A worker killed mid-unit leaves its temporary file (its unit was re-run elsewhere):
    # every unit is done now, so any temporary left is stale.
    remove_stale_temporaries(out)
    return counts


def run_units(units: List[Unit], args: argparse.Namespace, desc: str,
              on_result: Optional[Callable[[Unit, object], None]] = None, progress: bool = True) -> int:
    """runner.run_units on the cluster: independent units, one progress bar."""
    return run_phases(args, [(desc, units)], None, on_result, progress)[desc]


# ------------------------------------------------------------ batch-job workers
JOB_SYSTEMS = ("slurm", "pbs", "sge", "lsf")


def make_job_cluster(system: str, jobs_args: argparse.Namespace):
    """A dask-jobqueue cluster whose jobs each start one worker (one thread, one unit at a
    time) from this repository's interpreter, with a GPU=1 resource when a job has a GPU."""
    try:
        import dask_jobqueue
    except ImportError:
        raise UserError("starting workers as batch jobs needs dask-jobqueue (pip install -r requirements.txt)") from None
    cls = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster"}[system]
    root = ROOT
    extra = list(jobs_args.job_extra or [])
    worker_extra = []
    if jobs_args.gpus_per_job:
        worker_extra += ["--resources", "GPU=1"]
        if system == "slurm":
            extra.append("--gres=gpu:1")
    # cores=1: the worker runs one thread (one unit at a time); SLURM books --cores CPUs all the same.
    kwargs = dict(cores=1, processes=1, memory=jobs_args.memory, walltime=jobs_args.walltime,
                  python=sys.executable, job_extra_directives=extra, worker_extra_args=worker_extra,
                  job_script_prologue=[f"cd {root}", f"export PYTHONPATH={root}${{PYTHONPATH:+:$PYTHONPATH}}"],
                  scheduler_options={"dashboard_address": jobs_args.dashboard, "port": jobs_args.port})
    if system == "slurm":
        kwargs["job_cpu"] = jobs_args.cores
    if jobs_args.queue:
        kwargs["queue"] = jobs_args.queue
    if jobs_args.account:
        kwargs["account"] = jobs_args.account
    return getattr(dask_jobqueue, cls)(**kwargs)


def jobs_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sgd_influence.cluster",
                                description="Start Dask workers as batch jobs (dask-jobqueue) and print the scheduler "
                                            "address to give the drivers' --scheduler. Runs until Ctrl-C. "
                                            "`scheduler ...` and `worker ADDRESS ...` instead run `dask scheduler` "
                                            "and `dask worker` (same options) with this repository on PYTHONPATH.")
    p.add_argument("system", choices=JOB_SYSTEMS, help="the batch system")
    p.add_argument("--jobs", type=int, default=1, help="jobs to submit, one worker each")
    p.add_argument("--gpus-per-job", type=int, choices=(0, 1), default=1,
                   help="1: each job asks for one GPU (SLURM: --gres=gpu:1; others: add it with --job-extra) and its "
                        "worker advertises GPU=1; 0: CPU workers")
    p.add_argument("--walltime", default="04:00:00", help="job time limit")
    p.add_argument("--cores", type=int, default=2, help="CPU cores per job (SLURM; others: --job-extra)")
    p.add_argument("--memory", default="16GB", help="memory per job")
    p.add_argument("--queue", default=None, help="queue / partition")
    p.add_argument("--account", default=None, help="account / project to charge")
    p.add_argument("--job-extra", action="append", default=None, metavar="DIRECTIVE",
                   help="extra job directive, repeatable (e.g. --job-extra=--constraint=a100)")
    p.add_argument("--port", type=int, default=8786, help="scheduler port")
    p.add_argument("--dashboard", default=":8787", help="dashboard address")
    p.add_argument("--print-script", action="store_true", help="print the job script and exit (submits nothing)")
    return p


# `python -m sgd_influence.cluster scheduler|worker ...`: Dask's own commands with the project importable.
DASK_COMMANDS = ("scheduler", "worker")


def dask_command(cmd: str, rest: Sequence[str], environ: Dict[str, str]) -> Tuple[List[str], Dict[str, str]]:
    """The command line and environment of `dask CMD REST...` with this repository first on PYTHONPATH:
    the scheduler unpickles the task graph (it names the project's functions) and workers run them,
    so both must import the project wherever they were started."""
    env = dict(environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return [sys.executable, "-m", "dask", cmd, *rest], env


def jobs_main(argv: Sequence[str]) -> int:
    """`python -m sgd_influence.cluster SYSTEM ...`: submit the worker jobs and serve the scheduler;
    `... scheduler|worker ...`: run Dask's command of that name (its options pass through) with the
    project importable."""
    if argv and argv[0] in DASK_COMMANDS:
        cmd, env = dask_command(argv[0], argv[1:], dict(os.environ))
        os.execve(cmd[0], cmd, env)  # replaces this process: Ctrl-C and exit codes are dask's own
    a = jobs_parser().parse_args(argv)

    def body() -> None:
        if a.jobs < 1:
            raise UserError(f"--jobs must be at least 1, got {a.jobs}")
        cluster = make_job_cluster(a.system, a)
        try:
            if a.print_script:
                print(cluster.job_script())
                return
            cluster.scale(jobs=a.jobs)
            print(f"scheduler: {cluster.scheduler_address}")
            print(f"run e.g.: {sys.executable} eval_sgd_influence.py ... --scheduler {cluster.scheduler_address}")
            print("Ctrl-C stops the scheduler and cancels the jobs", flush=True)
            while True:
                time.sleep(3600)
        finally:
            cluster.close()
    return run_command(body)


if __name__ == "__main__":
    sys.exit(jobs_main(sys.argv[1:]))
