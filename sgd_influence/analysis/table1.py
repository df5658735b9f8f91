"""The paper's Table 1: the cache each method keeps, measured in a run and projected to paper scale.

Hara keeps theta[t] of every step of the last epoch (|theta| x T float32), Ours only the final
theta; keeping every epoch's steps would be |theta| x T x K. Replay (beyond the paper) keeps
theta[K-1] and theta[T] and the last epoch's step record, and recomputes theta[t] (core/replay.py):
its row also gives its retrace compute relative to Hara's, measured in the run where its
influence/Replay/replay_check_<seed>.json is found. Replay_all keeps theta[0], theta[T] and every
epoch's step record, and retraces all K epochs. Written by analyze as
summary/table1_cache.csv and .md.

Beyond plain SGD (core/optimizer.py) the optimizer's state s (momentum: v, one copy of the
trainable parameters; Adam: m and s, two) adds to what a method keeps: Replay the state at K-1
(its replay starts there) and at K (its self-check), Replay_all the state at K (at 0 it is
zero), Ours the final state under Adam (its adjoint reads m and s), and Hara's rows the state of
every step under Adam (momentum's adjoint needs only the rate and mu, so its rows stay theta[t]).
A run's measured row follows its recipe (cache_size.json); the md adds the paper-scale bytes
under each recipe (`by_recipe`).
"""
from __future__ import annotations

import glob
import math
import os
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import nnabla as nn

from models import cnn
from ..base import layout
from ..base.layout import Folder
from ..base.methods import METHODS
from ..core.optimizer import PLAIN, Recipe
from ..core.step_record import record_bytes

# The paper's Table 1 (Suzuki et al., arXiv 2103.11807): batch 32, 20 epochs.
PAPER_BATCH, PAPER_EPOCHS = 32, 20
PAPER_TABLE1 = {  # dataset: (training images, input channels, {cache: bytes as printed in the paper})
    "mnist": (50000, 1, {"all": 38.64e9, "hara": 1.932e9, "ours": 1.236e6}),
    "cifar10": (40000, 3, {"all": 30.90e9, "hara": 1.545e9, "ours": 1.236e6}),
}
CACHES = (("all", "all parameters (θ×T×K)"), ("hara", "Hara (θ×T)"), ("ours", "Ours (θ)"),
          ("replay", "Replay (θ[K−1] + θ[T] + last epoch's step record; beyond the paper)"),
          ("replay_all", "Replay_all (θ[0] + θ[T] + every epoch's step record; beyond the paper)"))
# Retrace compute relative to Hara's (the md's last column; Replay's measured figure is added per run).
COMPUTE = {"all": "×K (every epoch retraced)", "hara": "1", "ours": "≈ 1 (no parameter reads)",
           "replay": "1 + (T in memory, else 2T − M) training steps per T retrace steps",
           "replay_all": "×K (every epoch retraced) + (KT in memory, else 2KT − M) training steps"}
RECORDS = ("replay", "replay_all")  # the rows whose cache includes a step record


def model_param_bytes(channels: int, n_classes: int = 10, trainable: bool = False) -> Tuple[int, int]:
    """(parameter count, size of the nnabla .h5 checkpoint) of the paper's network at 32x32;
    `trainable`: the count of the trainable parameters instead (what an optimizer's state copies)."""
    with nn.parameter_scope(f"_table1_{channels}"):
        nn.clear_parameters()
        cnn(nn.Variable((1, channels, 32, 32)), n_classes)
        params = nn.get_parameters(grad_only=False)
        count = int(sum(v.size for v in params.values()))
        if trainable:
            count = int(sum(v.size for v in nn.get_parameters(grad_only=True).values()))
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "params.h5")
            nn.save_parameters(path, params=params, extension=".h5")
            h5 = os.path.getsize(path)
        nn.clear_parameters()
    return count, h5


def cache_bytes(param_bytes: int, steps_per_epoch: int, epochs: int, last_record: int,
                all_records: Optional[int], state_bytes: int = 0, recipe: Recipe = PLAIN) -> Dict[str, Optional[int]]:
    """float32 bytes each method keeps: all epochs' per-step parameters, the last epoch's, the final;
    Replay the parameters at the start of the last epoch and the final ones, and the last epoch's
    step record (`last_record` bytes); Replay_all those at the start of training and the final ones,
    and every epoch's record (`all_records`; None: unknown). With an optimizer state of `state_bytes`
    (one copy; module docstring): Replay adds it twice, Replay_all once, and under Adam Hara's rows
    and Ours add it too."""
    read = state_bytes if recipe.retrace_reads_state else 0  # the adjoint reads the state (Adam)
    row = param_bytes + read
    return {"all": row * steps_per_epoch * epochs, "hara": row * steps_per_epoch,
            "ours": param_bytes + read, "replay": 2 * param_bytes + 2 * state_bytes + last_record,
            "replay_all": 2 * param_bytes + state_bytes + all_records if all_records is not None else None}


# The recipes of the md's by-recipe table (the rates' schedule and weight decay add nothing kept).
BY_RECIPE = (("plain SGD (± weight decay, any schedule)", PLAIN), ("SGD + momentum", Recipe(momentum=0.9)),
             ("Adam", Recipe("adam")))


def by_recipe(dataset: str = "mnist") -> List[Tuple[str, Dict[str, Optional[int]]]]:
    """float32 bytes of each cache at the paper's scale of `dataset` under each recipe of BY_RECIPE."""
    n, channels, _ = PAPER_TABLE1[dataset]
    count, _ = model_param_bytes(channels)
    trainable, _ = model_param_bytes(channels, trainable=True)
    t = math.ceil(n / PAPER_BATCH)
    records = (record_bytes(n, PAPER_BATCH), record_bytes(n, PAPER_BATCH, PAPER_EPOCHS))
    return [(label, cache_bytes(4 * count, t, PAPER_EPOCHS, *records, 4 * trainable * len(r.state_keys), r))
            for label, r in BY_RECIPE]


def replay_compute(folders: Sequence[Folder]) -> Optional[dict]:
    """Replay's retrace wall time over the same retrace without its replayed steps (an estimate of
    Replay / Hara), from the first influence/Replay/replay_check_<seed>.json of the folders."""
    replaying = [n for n, m in METHODS.items() if m.replays and m.window == "last"]  # not Replay_all's epochs
    for f in folders:
        for path in sorted(p for n in replaying for p in glob.glob(layout.replay_check_path(f.path, n, "*"))):
            r = layout.read_json(path)
            total, replay = r.get("retrace_wall_s"), r.get("replay_wall_s")
            if total and replay is not None and total > replay:
                return {"ratio": total / (total - replay), "scheme": r.get("scheme"), "path": path}
    return None


def find_cache_size(folders: Sequence[Folder]) -> Optional[Tuple[Folder, dict]]:
    """The first cache_size.json that measured Hara's store, else the first at all (trials are alike)."""
    found = []
    for f in folders:
        for path in sorted(glob.glob(os.path.join(f.path, "train", "seed_*", "cache_size.json"))):
            found.append((f, layout.read_json(path)))
    return next((x for x in found if "hara_bytes" in x[1]), found[0] if found else None)


def table1_rows(groups: Dict[Optional[int], List[Folder]], n_train: Dict[Optional[int], Optional[int]]) -> List[dict]:
    """This run's measured cache sizes (per batch size), then the paper-scale projection.

    Measured: Ours = the final .h5 checkpoint, Hara = the per-step float32 store of the last epoch;
    'all' = that store times the epochs (projected: only the last epoch is kept); Replay = the .h5
    checkpoints after epochs K-1 and K and the last epoch's record as an .npz (a run written before
    Replay existed has no such row); Replay_all = the .h5 checkpoints after epochs 0 and K and the
    run's whole record file (likewise). Paper scale: float32 parameter count x 4 x T (x K),
    T = ceil(N / 32), K = 20; Ours and the Replays also as .h5 sizes; Replay's record: one epoch of N
    instances in batches of 32, Replay_all's: K such epochs. `compute_vs_hara`: Replay's measured retrace time over its time
    without the replayed steps (this run, where its replay_check file is found).
    """
    rows = []
    for bs, folders in groups.items():
        found = find_cache_size(folders)
        if not found:
            continue
        folder, c = found
        epochs = folder.settings.get("n_epochs")
        n = n_train.get(bs)
        t = c.get("hara_steps") or c.get("steps_per_epoch") or (math.ceil(n / bs) if n and bs else None)
        pb = int(c["param_bytes_float32"])
        records = {"replay": (c.get("replay_parts") or {}).get("step_record_last_epoch"),
                   "replay_all": c.get("step_record_file_bytes") if "replay_all_bytes" in c else None}
        recipe = Recipe(**c["optimizer"]) if "optimizer" in c else PLAIN
        f32 = (cache_bytes(pb, t, epochs, records["replay"] or 0, records["replay_all"],
                           int(c.get("optimizer_state_bytes_float32", 0)), recipe) if t and epochs
               else {"ours": pb + (int(c.get("optimizer_state_bytes_float32", 0))
                                   if recipe.retrace_reads_state else 0)})
        hara = c.get("hara_bytes")  # absent when the run did not keep Hara's store
        saved = {"ours": c["ours_bytes"], "hara": hara, "all": hara * epochs if hara and epochs else None,
                 "replay": c.get("replay_bytes"), "replay_all": c.get("replay_all_bytes")}
        measured = replay_compute(folders)
        for cache, _ in CACHES:
            if cache in RECORDS and records[cache] is None:  # a run written before the method existed
                continue
            rows.append({"scope": "this run", "dataset": folder.settings.get("dataset", ""), "n_train": n,
                         **({} if recipe.plain else {"recipe": recipe.describe()}),
                         "batch_size": bs, "epochs": epochs, "steps_per_epoch": t, "param_count": c["param_count"],
                         "cache": cache, "float32_bytes": f32.get(cache), "saved_bytes": saved[cache],
                         "paper_bytes": None, "record_bytes": records.get(cache),
                         "compute_vs_hara": measured["ratio"] if cache == "replay" and measured else None,
                         "compute_scheme": measured["scheme"] if cache == "replay" and measured else None})
    for dataset, (n, channels, paper) in PAPER_TABLE1.items():
        count, h5 = model_param_bytes(channels)
        t = math.ceil(n / PAPER_BATCH)
        records = {"replay": record_bytes(n, PAPER_BATCH), "replay_all": record_bytes(n, PAPER_BATCH, PAPER_EPOCHS)}
        f32 = cache_bytes(4 * count, t, PAPER_EPOCHS, records["replay"], records["replay_all"])
        # Hara's store here is raw float32: |theta| x T x 4
        saved = dict(f32, ours=h5, replay=2 * h5 + records["replay"], replay_all=2 * h5 + records["replay_all"])
        for cache, _ in CACHES:
            rows.append({"scope": "paper scale", "dataset": dataset, "n_train": n, "batch_size": PAPER_BATCH,
                         "epochs": PAPER_EPOCHS, "steps_per_epoch": t, "param_count": count, "cache": cache,
                         "float32_bytes": f32[cache], "saved_bytes": saved[cache], "paper_bytes": paper.get(cache),
                         "record_bytes": records.get(cache), "compute_vs_hara": None,
                         "compute_scheme": None})
    for r in rows:
        r["float32_vs_paper"] = r["float32_bytes"] / r["paper_bytes"] - 1 if r["paper_bytes"] else None
    return rows


TABLE1_COLUMNS = ("scope", "dataset", "n_train", "batch_size", "epochs", "steps_per_epoch", "param_count", "cache",
                  "float32_bytes", "saved_bytes", "paper_bytes", "float32_vs_paper", "record_bytes", "compute_vs_hara",
                  "compute_scheme")


def human(b: Optional[float]) -> str:
    """Decimal units, as the paper prints them."""
    if b is None:
        return "–"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:#.4g}".rstrip(".") + f" {unit}"  # 4 significant digits, trailing zeros kept
    return f"{b:.0f} B"


def write_table1(csv_path: str, md_path: str, rows: Sequence[dict]) -> None:
    def fmt(key, v):
        if v is None:
            return ""
        if key in ("float32_vs_paper", "compute_vs_hara"):
            return f"{v:.6f}"
        return f"{v:.0f}" if isinstance(v, float) else str(v)
    lines = [",".join(TABLE1_COLUMNS)] + [",".join(fmt(c, r[c]) for c in TABLE1_COLUMNS) for r in rows]
    layout.write_text(csv_path, "\n".join(lines) + "\n")

    cols = {}  # column title -> {cache: cell}
    compute = dict(COMPUTE)
    for r in rows:
        if r["scope"] == "this run":
            title = (f"this run ({r['dataset']}, N={r['n_train'] or '?'}, B={r['batch_size']}, "
                     f"K={r['epochs']}, T={r['steps_per_epoch']}"
                     + (f"; {r['recipe']}" if r.get("recipe") else "") + "), measured")
            cell = human(r["saved_bytes"]) if r["saved_bytes"] is not None else human(r["float32_bytes"])
            if r["cache"] == "ours":
                cell = f"{human(r['float32_bytes'])} float32; .h5 {human(r['saved_bytes'])}"
            elif r["cache"] == "all" and r["saved_bytes"] is not None:
                cell += " (projected ×K)"
            elif r["cache"] in RECORDS:
                cell = (f"{human(r['float32_bytes'])} float32; .h5 ×2 + record {human(r['saved_bytes'])} "
                        f"(record {human(r['record_bytes'])})")
                if r["compute_vs_hara"] is not None:
                    compute["replay"] = (f"×{r['compute_vs_hara']:.2f} measured in this run ({r['compute_scheme']}); "
                                         + COMPUTE["replay"])
            cols.setdefault(title, {})[r["cache"]] = cell
        else:
            name = {"mnist": "MNIST", "cifar10": "CIFAR-10"}[r["dataset"]]
            title = f"{name} (N={r['n_train']:,}, B={r['batch_size']}, K={r['epochs']}, T={r['steps_per_epoch']:,})"
            if r["float32_vs_paper"] is None:
                cell = human(r["float32_bytes"])
            else:
                cell = f"{human(r['float32_bytes'])} ({r['float32_vs_paper']:+.2%})"
            if r["cache"] in ("ours",) + RECORDS:
                cell += f"; .h5 {human(r['saved_bytes'])}"
            cols.setdefault(title + ", projected", {})[r["cache"]] = cell
            cols.setdefault(f"{name}, paper", {})[r["cache"]] = human(r["paper_bytes"])
    cols["retrace compute vs Hara's"] = compute
    md = ["| cache | " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1) + "---|"]
    md += [f"| {label} | " + " | ".join(c.get(cache, "–") for c in cols.values()) + " |"
           for cache, label in CACHES]
    md += ["", "θ: parameters as float32 (count × 4 bytes); T: steps per epoch = ⌈N/B⌉; K: epochs; M: the parameter "
           "copies Replay's --replay-memory holds. Percentages: projection vs the paper's Table 1 (which has no "
           "Replay rows). Replay's .h5 cell: two checkpoints and the last epoch's step record (.npz); Replay_all's: "
           "two checkpoints and every epoch's record. "
           "MB/GB are 10^6/10^9 bytes."]
    recipes = by_recipe()
    md += ["", "Under each training recipe (MNIST at the paper's scale, float32 + records; the optimizer state s: "
           "momentum's v, Adam's m and s, copies of the trainable parameters):", "",
           "| cache | " + " | ".join(label for label, _ in recipes) + " |", "|---|" + "---:|" * len(recipes)]
    md += [f"| {label} | " + " | ".join(human(b.get(cache)) for _, b in recipes) + " |" for cache, label in CACHES]
    md += ["", "Momentum: Replay adds s at K−1 (its replay starts there) and at K (its self-check), Replay_all s at K; "
           "Hara's rows stay θ[t] (momentum's step is linear in v: its adjoint needs the rate and μ only). Adam: "
           "Hara's rows add m[t] and s[t] and Ours adds the final m and s (the adjoint reads them); Replay and "
           "Replay_all as for momentum, with two state vectors. A schedule and weight decay add nothing kept "
           "(the rates are in the step record)."]
    layout.write_text(md_path, "\n".join(md) + "\n")
