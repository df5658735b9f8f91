"""Benchmark of the influence phase, on one model and one dataset in one run.

    .venv/bin/python benchmarks/bench_influence.py --quick

Trains the six-conv net briefly on a subset, then measures seconds per step of:
training; the Ours and Hara retraces (Hara including reading its stored step
parameters); an influence-functions solver step; an evaluation retraining step;
the exact double-backward retrace step; and the retrace computed the way the
published code does (`naive_retrace_step`, this file only). The Ours and Hara
retraces run in child processes at two training-set sizes, which also gives the
peak resident memory (ru_maxrss) of the influence phase at each size. Replay (Hara's
scores, theta[t] replayed from the checkpoint instead of read) runs twice more at the
larger size, as whole retraces in child processes like Hara's: in memory, and forced to
checkpoint with the smallest budget its scheme accepts (core/replay.py: minimum_copies);
`replay_over_hara` is each one's whole retrace over Hara's (same clock). Replay_all (every
epoch retraced, theta[t] replayed from params_epoch_0.h5, in memory) and one training of the
same settings (without Hara's store) run in child processes too: `replay_all_over_training`
is Replay_all's whole call (replay + retrace) over that training (same clock).
`--accuracy` adds full exact and finite-difference retraces and their agreement.
The training recipe options of the drivers (--momentum, --weight-decay, --lr-schedule,
--optimizer) train every run of the benchmark that way: e.g. `replay_over_hara` under momentum,
where Replay also replays and holds the optimizer state.

Writes benchmarks/results/<label>.json and prints a table; the last lines are
    retrace_over_train_step=<x> naive_over_fast=<y> ...
    replay_over_hara=<in memory> replay_over_hara_checkpointed=<checkpointed>
    replay_all_over_training=<x>
On a CPU context the figures are process CPU seconds (other processes sharing the
cores then slow the wall clock but hardly the figures); wall seconds and the load
average are recorded too. On a GPU context the figures are wall seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sgd_influence.config.settings import HelpFormatter, build_parser, device, set_context  # noqa: E402
from sgd_influence.core import optimizer  # noqa: E402

_DRIVER = build_parser("", "", ())
IF_DEFAULTS = {k: _DRIVER.get_default(f"if_{k}") for k in ("alpha", "lr", "momentum")}  # the drivers' solver


# --------------------------------------------------------------------- timing
class Clock:
    """Per-step (wall, cpu) seconds; `figure` is cpu on a CPU context, wall on a GPU."""

    def __init__(self, use_cpu: bool):
        self.use_cpu = use_cpu

    @staticmethod
    def now():
        return time.perf_counter(), time.process_time()

    def stats(self, samples: List[tuple]) -> Dict[str, float]:
        wall, cpu = np.median(np.array(samples), axis=0)
        return {"figure": float(cpu if self.use_cpu else wall), "wall": float(wall), "cpu": float(cpu),
                "n": len(samples)}


def timed(fn: Callable, n: int) -> List[tuple]:
    out = []
    for _ in range(n):
        a = Clock.now()
        fn()
        b = Clock.now()
        out.append((b[0] - a[0], b[1] - a[1]))
    return out


# ----------------------------------------------------------------- the phases
def load(args, n_train: int):
    from datasets import load_dataset
    return load_dataset(args.dataset, 0, args.data_dir, n_train, args.n_val, args.n_test)


def recipe_of(settings: dict):
    """(optimizer.Recipe, schedule) of the benchmark's recipe options (a dict of them)."""
    import argparse as _argparse
    return optimizer.from_args(_argparse.Namespace(**settings)), settings.get("lr_schedule", "constant")


def train_run(args, data, run_dir: str) -> float:
    from sgd_influence.core.train import train
    recipe, schedule = recipe_of(args.recipe)
    a = time.perf_counter()
    train(data, run_dir, seed=0, epochs=args.n_epochs, batch_size=args.batch_size, lr=args.lr,
          keep_step_params=True, progress=False, recipe=recipe, lr_schedule=schedule)
    return time.perf_counter() - a


def replay_steps(data, run_dir: str, n: int, drop: float) -> List[tuple]:
    """Training steps (drop=0) or evaluation retraining steps (a fraction removed) of the last epoch."""
    from sgd_influence.core.params import load_checkpoint
    from sgd_influence.base.layout import checkpoint_path
    from sgd_influence.core.step_record import StepRecord
    from sgd_influence.base.layout import step_record_path
    from sgd_influence.core.train import trainer_at
    record = StepRecord.load(step_record_path(run_dir))
    bs = len(record.batch(0)[0])
    sgd = trainer_at(data, run_dir, record, record.n_epochs - 1, bs)
    keep = np.random.default_rng(0).random(len(data.train)) >= drop
    steps = list(record.steps_of_epoch(record.n_epochs - 1))
    it = iter(steps[:n + 1])
    sgd.replay(record, next(it), keep)  # warm-up: builds the graph
    return timed(lambda: sgd.replay(record, next(it), keep), min(n, len(steps) - 1))


def at_final_params(data, run_dir: str):
    """Model at theta[T], u = validation gradient, the step record."""
    from sgd_influence.core.graphs import trainable_params
    from sgd_influence.core.infl import load_final_model, val_gradient
    from sgd_influence.core.step_record import StepRecord
    from sgd_influence.base.layout import step_record_path
    record = StepRecord.load(step_record_path(run_dir))
    load_final_model(data, run_dir, record.n_epochs, len(record.batch(0)[0]))
    return list(trainable_params().values()), val_gradient(data), record


def graph_steps(data, state, mode: str, n: int, resident: bool = False) -> List[tuple]:
    """Retrace steps of one graph type at theta[T] (first call, building the graph, untimed);
    `resident`: u as device arrays, the step's vectors and pins kept on the device."""
    from sgd_influence.core.graphs import RETRACE_GRAPHS, to_device
    params, u, record = state
    u = to_device(u) if resident else u
    epoch = record.steps_of_epoch(record.n_epochs - 1)
    full = len(record.batch(epoch[0])[0])  # one graph, one batch size: a short last batch is left out
    steps = [t for t in epoch[::-1] if len(record.batch(t)[0]) == full]
    idx, seeds = record.batch(steps[0])
    graph = RETRACE_GRAPHS[mode](len(idx), data.image_shape, data.n_classes, params, bn_coupling=True)  # retrace's default
    x, y = data.train_batch(idx, seeds)
    graph.run(x, y, u)
    batches = iter([data.train_batch(*record.batch(t)) for t in steps[1:n + 1]])
    return timed(lambda: graph.run(*next(batches), u), min(n, len(steps) - 1))


def solver_steps(data, state, n: int, alpha: float, lr: float, momentum: float) -> List[tuple]:
    """Steps of the influence-functions solve as `influence_functions.infl.solve` takes them:
    H_B v on a training mini-batch at theta[T] (batch norm in test mode, double backward),
    the objective and residual of the trace, and the heavy-ball update."""
    from influence_functions.infl import Hessian, dot, heavy_ball_update, objective_gradient
    params, u, record = state
    hessian = Hessian(data)
    v, m = [a.copy() for a in u], [np.zeros_like(a) for a in u]
    batches = iter([record.batch(t)[0] for t in range(n + 1)])

    def step():
        grad, _, _, _ = objective_gradient(hessian, next(batches), v, u, alpha)
        np.sqrt(dot(grad, grad))  # the trace's residual
        heavy_ball_update(v, m, grad, lr, momentum)
    step()
    return timed(step, n)


# --------------------------------------------- the published code's approach
def naive_image(x: np.ndarray, seed: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """One image augmented and normalised through a fresh nnabla graph, as the published code does."""
    import nnabla as nn
    import nnabla.functions as F
    v = nn.Variable.from_numpy_array(x.astype(np.float32) / 255.0)
    v = F.image_augmentation(v, shape=v.shape, pad=(4, 4), seed=int(seed))
    v = F.image_augmentation(v, flip_lr=True, seed=int(seed))
    m = nn.Variable.from_numpy_array(np.broadcast_to(mean.reshape(-1, 1, 1), x.shape).astype(np.float32))
    s = nn.Variable.from_numpy_array(np.broadcast_to(std.reshape(-1, 1, 1), x.shape).astype(np.float32))
    v = F.div2(F.sub2(v, m), s)
    v.forward(clear_buffer=True)
    return v.d.copy()


def naive_retrace_step(data, record, t: int, params_file: str, u: Dict[str, np.ndarray],
                       influence: np.ndarray) -> None:
    """A retrace step with the published code's cost structure (timing only): parameters
    read from a per-step file, graphs rebuilt, per-sample gradients one image at a time at
    batch size 1 with a Python loop over the parameters, then one Hessian-vector product
    by double backward on the rebuilt batch graph."""
    import nnabla as nn
    import nnabla.functions as F
    from sgd_influence.core.graphs import LossGraph, trainable_params, zero_grads
    idx, seeds = record.batch(t)
    lr = float(record.lr[t])
    nn.load_parameters(params_file)
    params = trainable_params()
    one = LossGraph(1, data.image_shape, data.n_classes, test=False)
    xs = []
    for i, seed in zip(idx, seeds):
        x = naive_image(data.train.x[i], seed, data.mean, data.std)
        xs.append(x)
        one.feed(x[None], data.train.y[i:i + 1], 1.0)
        one.loss.forward()
        zero_grads(params.values())
        one.loss.backward(clear_buffer=True)
        influence[i] += sum(lr * float((u[k] * p.g).sum()) / len(idx) for k, p in params.items())
    batch = LossGraph(len(idx), data.image_shape, data.n_classes, test=False)
    batch.feed(np.stack(xs), data.train.y[idx], 1.0 / len(idx))
    grads = nn.grad([batch.loss], list(params.values()))
    q = F.sum(F.stack(*[F.sum(nn.Variable.from_numpy_array(u[k]) * g) for k, g in zip(params, grads)]))
    q.forward()
    zero_grads(params.values())
    q.backward(clear_buffer=True)
    for k, p in params.items():
        u[k] -= lr * p.g


def naive_steps(data, state, run_dir: str, n: int, workdir: str) -> List[tuple]:
    """Hara's naive retrace over the last n steps, its step parameters as per-step .h5 files."""
    import nnabla as nn
    from sgd_influence.core.graphs import trainable_params
    from sgd_influence.core.params import StepParamsReader
    from sgd_influence.base.layout import step_params_path
    _, u_list, record = state
    u = dict(zip(trainable_params(), [a.copy() for a in u_list]))
    steps = record.steps_of_epoch(record.n_epochs - 1)
    stored = StepParamsReader(step_params_path(run_dir, record.n_epochs - 1))
    files = []
    for k in range(len(steps) - 1, len(steps) - 1 - n, -1):  # the published layout: one .h5 per step
        stored.load(k)
        files.append(os.path.join(workdir, f"model_step{k:04d}.h5"))
        nn.save_parameters(files[-1], params=nn.get_parameters(grad_only=False))
    influence = np.zeros(len(data.train))
    work = iter(zip(steps[::-1], files))
    return timed(lambda: naive_retrace_step(data, record, *next(work), u, influence), n)


# ------------------------------------------------- child: one influence unit
def child(spec: dict) -> None:
    """Retrace one method in this process; write step times and peak RSS (KiB) as JSON."""
    from sgd_influence.core.infl import retrace
    set_context(spec["device_id"])
    args = argparse.Namespace(**spec["data"])
    data = load(args, spec["n_train"])
    marks, resident, reports = [Clock.now()], [], []
    if spec["method"] == "train":  # one training, as the drivers run it (no per-step store)
        from sgd_influence.core.train import train
        recipe, schedule = recipe_of(spec["recipe"])
        train(data, spec["run_dir"], seed=0, epochs=spec["n_epochs"], batch_size=spec["batch_size"], lr=spec["lr"],
              keep_step_params=False, progress=False, recipe=recipe, lr_schedule=schedule)
        end = Clock.now()
        with open(spec["out"], "w") as f:
            json.dump({"whole": [end[0] - marks[0][0], end[1] - marks[0][1]], "n_train": len(data.train)}, f)
        return

    def on_step(*_):
        marks.append(Clock.now())
        resident.append(resident_kib())
    replay = {"trajectory": "replay", "replay_memory": spec.get("replay_memory"), "on_replay": reports.append,
              "window": "all" if spec["method"] == "Replay_all" else "last"} \
        if spec["method"] in ("Replay", "Replay_all") else {}
    retrace(data, spec["run_dir"], "Hara" if replay else spec["method"], spec["batch_size"], progress=False,
            mode=spec["mode"], on_step=on_step, **replay)
    end = Clock.now()
    steps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks[1:-1], marks[2:])]  # first step builds graphs
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(spec["out"], "w") as f:
        json.dump({"steps": steps, "rss_kib": rss_kib, "n_train": len(data.train),
                   "whole": [end[0] - marks[0][0], end[1] - marks[0][1]],  # the whole retrace call (wall, cpu)
                   "replay_report": reports[0] if reports else None,
                   "resident_kib_after_first_and_last_step": [resident[0], resident[-1]]}, f)


def resident_kib():
    """Current resident set size (Linux), None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        return None


def run_child(spec: dict, workdir: str) -> dict:
    tag = "" if spec.get("replay_memory") is None else "_checkpointed"
    spec = dict(spec, out=os.path.join(workdir, f"child_{spec['method']}{tag}_{spec['n_train']}.json"))
    subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)], check=True)
    with open(spec["out"]) as f:
        return json.load(f)


def replay_runs(spec: dict, run_dir: str, n_train: int, workdir: str) -> Dict[str, dict]:
    """Replay's whole retrace in a child process: in memory (no budget), and checkpointed with the
    smallest budget its scheme accepts (minimum_copies(T) rows; a row: every parameter and the
    optimizer state, cache_size.json)."""
    from sgd_influence.core.replay import minimum_copies
    from sgd_influence.core.step_record import StepRecord
    from sgd_influence.base.layout import read_json, step_record_path
    record = StepRecord.load(step_record_path(run_dir))
    steps = len(record.steps_of_epoch(record.n_epochs - 1))
    cache = read_json(os.path.join(run_dir, "cache_size.json"))
    row = cache["param_bytes_float32"] + cache.get("optimizer_state_bytes_float32", 0)
    base = dict(spec, method="Replay", n_train=n_train, run_dir=run_dir)
    return {"in memory": run_child(base, workdir),
            "checkpointed": run_child(dict(base, replay_memory=minimum_copies(steps) * row), workdir)}


def replay_all_runs(spec: dict, args, run_dir: str, workdir: str) -> Dict[str, dict]:
    """Replay_all's whole retrace (in memory) and one training of the same settings, each in a child."""
    base = dict(spec, n_train=args.n_train)
    return {"Replay_all": run_child(dict(base, method="Replay_all", run_dir=run_dir), workdir),
            "training": run_child(dict(base, method="train", run_dir=os.path.join(workdir, "run_timed_training"),
                                       n_epochs=args.n_epochs, lr=args.lr), workdir)}


# ------------------------------------------------------------ accuracy check
def accuracy(data, run_dir: str, method: str, batch_size: int) -> dict:
    """Full exact and finite-difference retraces: agreement of influence, H u and u."""
    from sgd_influence.core.infl import retrace
    from sgd_influence.base.metrics import spearman
    from sgd_influence.core.graphs import flat
    runs = {}
    for mode in ("exact", "fd"):
        hus, us = [], []
        infl = retrace(data, run_dir, method, batch_size, progress=False, mode=mode,
                       on_step=lambda hu, ug, u: (hus.append(flat(hu)), us.append(flat(u))))
        runs[mode] = (infl, np.array(hus), np.array(us))
    (ie, he, ue), (i_f, hf, uf) = runs["exact"], runs["fd"]
    rel = lambda a, b: np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)  # noqa: E731
    return {"spearman": float(spearman(i_f, ie)), "influence_rel_err": float(rel(i_f, ie)),
            "hu_rel_err_median": float(np.median(rel(hf, he))), "hu_rel_err_max": float(rel(hf, he).max()),
            "u_final_rel_err": float(rel(uf[-1], ue[-1])), "u_rel_err_max": float(rel(uf, ue).max()),
            "steps": len(he)}


# ----------------------------------------------------------------------- main
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes and few repetitions (under 5 minutes)")
    p.add_argument("-ds", "--dataset", default="fashion_mnist", help="dataset (as in the drivers)")
    p.add_argument("--n-train", type=int, default=None, help="training instances (default 1920; quick 768)")
    p.add_argument("-bs", "--batch-size", type=int, default=64, help="SGD mini-batch size")
    p.add_argument("-di", "--device-id", type=device, default="0", help="GPU id when nnabla-ext-cuda is installed, or cpu")
    p.add_argument("-e", "--n_epochs", type=int, default=None, help="training epochs (default 2; quick 1)")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate")
    p.add_argument("--n-val", type=int, default=128, help="validation instances (u; not timed)")
    p.add_argument("--n-test", type=int, default=100, help="test instances (loaded, not timed)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $SGD_INFLUENCE_DATA or <repo>/data)")
    p.add_argument("--label", default=socket.gethostname(), help="results file name")
    p.add_argument("--accuracy", action="store_true", help="also run full exact and fd retraces and compare")
    p.add_argument("--accuracy-on", metavar="RUN_DIR", default=None,
                   help="only compare exact and fd retraces on an existing run folder (OUT/train/seed_0), "
                        "trained with these -ds/--n-train/--n-val/-bs")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    optimizer.add_arguments(p)
    args = p.parse_args(argv)
    if not args.child:
        optimizer.checked(args)
        args.recipe = {k: getattr(args, k) for k in optimizer.SETTING_DEFAULTS}
    if args.n_train is None:
        args.n_train = 768 if args.quick else 1920
    if args.n_epochs is None:
        args.n_epochs = 1 if args.quick else 2
    return args


def table(res: dict) -> str:
    f = res["seconds_per_step"]
    unit = "cpu s" if res["clock"] == "cpu" else "wall s"
    rows = [("training step", "train_step"), ("Ours retrace step (fd)", "ours_step"),
            ("Hara retrace step (fd, incl. reading theta[t])", "hara_step"),
            ("exact double-backward retrace step", "exact_step"),
            ("fd retrace graph step, host vectors (as on the CPU)", "fd_graph_step"),
            ("fd retrace graph step, device-resident (GPU default)", "fd_resident_step"),
            ("influence-functions solver step (exact H v, batch norm in test mode)", "if_solver_step"),
            ("eval retraining step", "eval_step"), ("naive retrace step (published approach)", "naive_step")]
    lines = [f"{'per step':52s} {unit:>8s} {'wall s':>8s} {'x train':>8s}"]
    for name, key in rows:
        lines.append(f"{name:52s} {f[key]['figure']:8.3f} {f[key]['wall']:8.3f} "
                     f"{f[key]['figure'] / f['train_step']['figure']:8.2f}")
    lines.append("")
    for m, by_n in res["peak_rss_kib"].items():
        sizes = ", ".join(f"n={n}: {kib / 1024:.1f}" for n, kib in by_n.items())
        lines.append(f"peak RSS of the {m} influence process (MiB)  {sizes}")
        first_last = res["resident_kib_after_first_and_last_retrace_step"][m].get(str(res["rss_sizes"][-1]))
        if first_last and None not in first_last:
            lines.append(f"    resident after its first / last retrace step (MiB)  "
                         f"{first_last[0] / 1024:.1f} / {first_last[1] / 1024:.1f}")
    return "\n".join(lines)


def print_accuracy(acc: dict) -> None:
    for m, a in acc.items():
        print(f"{m} fd vs exact over {a['steps']} steps: Spearman {a['spearman']:.6f}, influence rel. err "
              f"{a['influence_rel_err']:.2e}, H u rel. err median {a['hu_rel_err_median']:.2e} "
              f"(max {a['hu_rel_err_max']:.2e}), final u rel. err {a['u_final_rel_err']:.2e} "
              f"(max over steps {a['u_rel_err_max']:.2e})")


def accuracy_only(args) -> None:
    from sgd_influence.base.layout import write_json
    data = load(args, args.n_train)
    acc = {m: accuracy(data, args.accuracy_on, m, args.batch_size) for m in ("Ours", "Hara")}
    write_json(os.path.join(ROOT, "benchmarks", "results", f"{args.label}-accuracy.json"),
               {"run_dir": os.path.abspath(args.accuracy_on), "settings": {k: v for k, v in vars(args).items()
                                                                         if k != "child"}, "accuracy": acc})
    print_accuracy(acc)


def main(argv=None) -> None:
    args = parse(argv)
    if args.child:
        return child(json.loads(args.child))
    context = set_context(args.device_id)
    if args.accuracy_on:
        return accuracy_only(args)
    clock = Clock(use_cpu=context == "cpu")
    start, load_start = time.perf_counter(), os.getloadavg()
    reps = 3 if args.quick else 6
    small = max(args.batch_size * 2, args.n_train // 4)
    results_dir = os.path.join(ROOT, "benchmarks", "results")
    with tempfile.TemporaryDirectory() as work:
        runs = {n: os.path.join(work, f"run_{n}") for n in (args.n_train, small)}
        data = load(args, args.n_train)
        train_wall = train_run(args, data, runs[args.n_train])
        train_run(args, load(args, small), runs[small])
        run = runs[args.n_train]
        fig = {"train_step": replay_steps(data, run, reps + 2, drop=0.0),
               "eval_step": replay_steps(data, run, reps, drop=0.1)}
        state = at_final_params(data, run)  # theta[T], u, record; the naive steps move theta: last
        fig["exact_step"] = graph_steps(data, state, "exact", 2 if args.quick else 3)
        fig["fd_graph_step"] = graph_steps(data, state, "fd", reps)
        fig["fd_resident_step"] = graph_steps(data, state, "fd", reps, resident=True)
        fig["if_solver_step"] = solver_steps(data, state, reps, **IF_DEFAULTS)
        fig["naive_step"] = naive_steps(data, state, run, 2 if args.quick else 3, work)
        spec = {"device_id": args.device_id, "batch_size": args.batch_size, "mode": "fd", "recipe": args.recipe,
                "data": {k: getattr(args, k) for k in ("dataset", "data_dir", "n_val", "n_test")}}
        whole: Dict[str, list] = {}
        rss: Dict[str, Dict[str, int]] = {"Ours": {}, "Hara": {}}
        resident: Dict[str, Dict[str, list]] = {"Ours": {}, "Hara": {}}
        for n in (small, args.n_train):
            for method in ("Ours", "Hara"):
                out = run_child(dict(spec, method=method, n_train=n, run_dir=runs[n]), work)
                rss[method][str(n)] = out["rss_kib"]
                resident[method][str(n)] = out.get("resident_kib_after_first_and_last_step")
                if n == args.n_train:
                    fig[f"{method.lower()}_step"] = out["steps"]
                    whole[method] = out["whole"]
        replay = replay_runs(spec, runs[args.n_train], args.n_train, work)
        replay_all = replay_all_runs(spec, args, runs[args.n_train], work)
        acc = {m: accuracy(data, runs[args.n_train], m, args.batch_size) for m in ("Ours", "Hara")} \
            if args.accuracy else None
    fig = {k: clock.stats(v) for k, v in fig.items()}
    import nnabla
    res = {"label": args.label, "clock": "cpu" if clock.use_cpu else "wall", "context": context,
           "machine": {"host": socket.gethostname(), "cpus": os.cpu_count(), "platform": platform.platform(),
                       "python": platform.python_version(), "nnabla": nnabla.__version__},
           "settings": {k: v for k, v in vars(args).items() if k not in ("child", "label")},
           "load_average_start_end": [load_start[0], os.getloadavg()[0]],
           "seconds_per_step": fig, "rss_sizes": [small, args.n_train], "peak_rss_kib": rss,
           "resident_kib_after_first_and_last_retrace_step": resident,
           "training_wall_s_incl_hara_store": train_wall, "accuracy_fd_vs_exact": acc,
           "total_wall_s": time.perf_counter() - start,
           "retrace_over_train_step": fig["ours_step"]["figure"] / fig["train_step"]["figure"],
           "naive_over_fast": fig["naive_step"]["figure"] / fig["ours_step"]["figure"],
           "resident_over_host_fd_step": fig["fd_resident_step"]["figure"] / fig["fd_graph_step"]["figure"],
           "whole_retrace_s": {"Hara": clock.stats([whole["Hara"]]),
                               **{f"Replay {k}": clock.stats([r["whole"]]) for k, r in replay.items()},
                               "Replay_all": clock.stats([replay_all["Replay_all"]["whole"]]),
                               "one training": clock.stats([replay_all["training"]["whole"]])},
           "replay_reports": {k: r["replay_report"] for k, r in replay.items()},
           "replay_all_report": replay_all["Replay_all"]["replay_report"]}
    hara_s = res["whole_retrace_s"]["Hara"]["figure"]
    res["replay_over_hara"] = res["whole_retrace_s"]["Replay in memory"]["figure"] / hara_s
    res["replay_over_hara_checkpointed"] = res["whole_retrace_s"]["Replay checkpointed"]["figure"] / hara_s
    res["replay_all_over_training"] = (res["whole_retrace_s"]["Replay_all"]["figure"]
                                       / res["whole_retrace_s"]["one training"]["figure"])
    os.makedirs(results_dir, exist_ok=True)
    from sgd_influence.base.layout import write_json
    write_json(os.path.join(results_dir, f"{args.label}.json"), res)
    print(table(res))
    if acc:
        print_accuracy(acc)
    print(f"load average {res['load_average_start_end'][0]:.1f} -> {res['load_average_start_end'][1]:.1f} "
          f"on {os.cpu_count()} cores; total {res['total_wall_s']:.0f} s; {results_dir}/{args.label}.json")
    print(f"retrace_over_train_step={res['retrace_over_train_step']:.2f} naive_over_fast={res['naive_over_fast']:.2f} "
          f"resident_over_host_fd_step={res['resident_over_host_fd_step']:.2f}")
    cp = res["replay_reports"]["checkpointed"]
    print(f"replay_over_hara={res['replay_over_hara']:.2f} (in memory) "
          f"replay_over_hara_checkpointed={res['replay_over_hara_checkpointed']:.2f} "
          f"({cp['copies_held']} copies for T={cp['steps']}, {cp['steps_replayed']} steps replayed)")
    ra = res["replay_all_report"]
    print(f"replay_all_over_training={res['replay_all_over_training']:.2f} "
          f"(Replay_all's replay + retrace over one training; {ra['steps']} steps, {ra['scheme']})")


if __name__ == "__main__":
    main()
