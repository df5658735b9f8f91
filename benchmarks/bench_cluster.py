"""Wall time of the tests' tiny experiment with --workers 2 against a 2-worker Dask cluster.

Runs eval_sgd_influence.py on a synthetic Fashion-MNIST-format dataset (tests/conftest.py's
generator; test_end_to_end's TINY_RUN with -nt TRIALS), three times: --workers 2; --scheduler
on a LocalCluster of two single-threaded worker processes just started (its workers import
nnabla at their first unit); and again on the same, now warm, workers. Checks that the CSVs
of the three are byte-identical and writes benchmarks/results/cluster-<label>.json:

    overhead per unit = (wall with the cluster - wall with --workers 2) / units

(one driver start-up each; the cluster's own start is timed apart). With --project it only
simulates `make paper` on N workers from per-step seconds (docs/paper.md, "Regenerating the paper").
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)


def make_data(folder: str) -> str:
    """The tests' synthetic Fashion-MNIST (10,080 + 40 images of 28x28); returns --data-dir."""
    import numpy as np
    from conftest import write_idx
    d = os.path.join(folder, "fashion-mnist")
    os.makedirs(d)
    rng = np.random.default_rng(0)
    for part, n in (("train", 10080), ("t10k", 40)):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 40, (n, 28, 28))
        for i, c in enumerate(y):
            x[i, 2 * c + 4:2 * c + 7, 4:24] += 200
        write_idx(os.path.join(d, f"{part}-images-idx3-ubyte"), x)
        write_idx(os.path.join(d, f"{part}-labels-idx1-ubyte"), y)
    return folder


def timed_run(out: str, data_dir: str, trials: int, extra) -> float:
    """Seconds of one driver run (exit status checked)."""
    from test_end_to_end import TINY_RUN
    run = [a if prev != "-nt" else str(trials) for prev, a in zip([""] + TINY_RUN, TINY_RUN)]
    cmd = [sys.executable, os.path.join(ROOT, "eval_sgd_influence.py"), "-ds", "fashion_mnist",
           "--data-dir", data_dir, "-o", out] + run + list(extra)
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - t


def csvs(out: str) -> dict:
    return {os.path.relpath(os.path.join(d, f), out): open(os.path.join(d, f), "rb").read()
            for d, _, fs in os.walk(out) for f in fs if f.endswith(".csv")}


# ------------------------------------------------------------- paper-scale projection
def paper_units(n_train: int, batch: int, train_s: float, fd_s: float, dbl_s: float, trials: int = 10,
                sizes: int = 11) -> list:
    """The units of `make paper` as (name, seconds, dependencies, driver), in submission order:
    per trial the SGD driver's training (20 T steps), Hara and Ours retraces (T fd steps each),
    n = 0 plus `sizes` x 3 retrainings (T steps each); the influence-functions driver's own
    training, its solve + scores (3 T double-backward steps) and n = 0 plus `sizes` retrainings.
    T = ceil(n_train / batch); the same step counts as docs/paper.md."""
    t = -(-n_train // batch)
    units = []
    for driver, methods, infl_s in (("sgd", ("Hara", "Ours", "Random"), t * fd_s), ("if", ("IF",), 3 * t * dbl_s)):
        for s in range(trials):
            units.append((f"{driver}-train-{s}", 20 * t * train_s, [], driver))
        for s in range(trials):
            for m in methods:
                units.append((f"{driver}-infl-{m}-{s}", 0.0 if m == "Random" else infl_s, [f"{driver}-train-{s}"],
                              driver))
        for s in range(trials):
            units.append((f"{driver}-retrain-0-{s}", t * train_s, [f"{driver}-train-{s}"], driver))
            for m in methods:
                for k in range(sizes):
                    units.append((f"{driver}-retrain-{m}-{k}-{s}", t * train_s, [f"{driver}-infl-{m}-{s}"], driver))
    return units


def simulate(units: list, workers: int) -> float:
    """Wall seconds of `units` (one driver after the other, as `make paper` runs them) on
    `workers` identical workers: a free worker takes the earliest-submitted unit whose
    dependencies are done (no transfer or start-up costs)."""
    import heapq
    total = 0.0
    for driver in ("sgd", "if"):
        todo = [u for u in units if u[3] == driver]
        done_at, running, now, free = {}, [], 0.0, workers
        while todo or running:
            ready = [u for u in todo if all(d in done_at and done_at[d] <= now for d in u[2])]
            while free and ready:
                u = ready.pop(0)
                todo.remove(u)
                heapq.heappush(running, (now + u[1], u[0]))
                free -= 1
            end, name = heapq.heappop(running)
            now, free = end, free + 1
            done_at[name] = end
        total += now
    return total


def project(args) -> dict:
    units = paper_units(args.n_train, args.batch, args.train_step, args.fd_step, args.double_step)
    work = sum(u[1] for u in units)
    rows = {n: simulate(units, n) for n in args.workers_list}
    print(f"make paper, {args.n_train} training images, batch {args.batch}: {len(units)} units, "
          f"{work / 3600:.1f} h of work on one worker (steps: training {args.train_step} s, fd retrace "
          f"{args.fd_step} s, double backward {args.double_step} s)")
    print("workers  wall h  speed-up")
    for n, wall in rows.items():
        print(f"{n:7d}  {wall / 3600:6.1f}  {work / wall:8.1f}")
    return {"units": len(units), "work_h": round(work / 3600, 1),
            "wall_h": {str(n): round(w / 3600, 2) for n, w in rows.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=2, help="-nt of the tiny run (8 units per trial)")
    p.add_argument("--label", default=socket.gethostname(), help="results file: cluster-<label>.json")
    g = p.add_argument_group("--project: simulate make paper on N workers from per-step seconds (runs nothing)")
    g.add_argument("--project", action="store_true")
    g.add_argument("--n-train", type=int, default=50000, help="training images (MNIST 50,000; CIFAR-10 40,000)")
    g.add_argument("--batch", type=int, default=32)
    g.add_argument("--train-step", type=float, default=0.5, help="seconds per training step (this CPU, batch 32)")
    g.add_argument("--fd-step", type=float, default=1.6, help="seconds per fd retrace step")
    g.add_argument("--double-step", type=float, default=2.7, help="seconds per double-backward step")
    g.add_argument("--workers-list", type=int, nargs="+", default=[1, 2, 10, 20, 40, 80, 160])
    a = p.parse_args()
    if a.project:
        project(a)
        return
    os.environ["SGD_INFLUENCE_NO_DOWNLOAD"] = "1"
    from distributed import LocalCluster
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(os.path.join(tmp, "data"))
        res = {"trials": a.trials, "units": 8 * a.trials, "load_average_before": os.getloadavg()[0]}
        res["workers2_s"] = timed_run(os.path.join(tmp, "pool"), data, a.trials, ["--workers", "2"])
        t = time.perf_counter()
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
            res["cluster_start_s"] = time.perf_counter() - t
            res["dask_cold_s"] = timed_run(os.path.join(tmp, "cold"), data, a.trials, ["--scheduler", c.scheduler_address])
            res["dask_warm_s"] = timed_run(os.path.join(tmp, "warm"), data, a.trials, ["--scheduler", c.scheduler_address])
        ref = csvs(os.path.join(tmp, "pool"))
        res["csvs_identical"] = all(csvs(os.path.join(tmp, k)) == ref for k in ("cold", "warm"))
        res["load_average_after"] = os.getloadavg()[0]
    for k in ("cold", "warm"):
        res[f"overhead_per_unit_{k}_s"] = (res[f"dask_{k}_s"] - res["workers2_s"]) / res["units"]
    res = {k: round(v, 2) if isinstance(v, float) else v for k, v in res.items()}
    path = os.path.join(ROOT, "benchmarks", "results", f"cluster-{a.label}.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
