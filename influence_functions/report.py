"""The solver's trace, kept so that convergence can be inspected.

OUT/influence/Influence_functions/solver_trace_<seed>.csv: one row per
solver step (columns `TRACE_COLUMNS`, see `infl.solve`);
OUT/fig/if_solver_seed<seed>.png plots the objective, the residual and the
curvature against the step; solver_<seed>.json holds the settings and the
same quantities for the final v on the whole training set.
"""
from __future__ import annotations

import os

import numpy as np

from sgd_influence.base.figures import pyplot, save
from sgd_influence.base.layout import solver_figure_path, solver_trace_path, write_json, write_text
from .infl import TRACE_COLUMNS






def write_solver_summary(out: str, seed: int, settings: dict, check: dict) -> None:
    write_json(os.path.join(os.path.dirname(solver_trace_path(out, seed)), f"solver_{seed}.json"),
               {"settings": settings, "final_v_on_full_training_set": {k: float(v) for k, v in check.items()}})


def write_solver_trace(out: str, seed: int, trace: np.ndarray) -> None:
    lines = [",".join(TRACE_COLUMNS)]
    lines += [f"{int(row[0])},{int(row[1])}," + ",".join(f"{x:.9g}" for x in row[2:]) for row in trace]
    write_text(solver_trace_path(out, seed), "\n".join(lines) + "\n")
    plot_solver_trace(solver_figure_path(out, seed), trace, f"influence functions solve, seed {seed}")


def plot_solver_trace(path: str, trace: np.ndarray, title: str) -> None:
    step = trace[:, 1]
    fig, axes = pyplot().subplots(3, 1, figsize=(5, 6), sharex=True)
    for ax, col, label in zip(axes, (2, 5, 4), ("objective f(v)", "residual |grad f| / |u|",
                                                "curvature v'Hv / |v|^2")):
        ax.plot(step, trace[:, col], lw=0.8)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[2].axhline(0, color="k", lw=0.5)
    axes[-1].set_xlabel("solver step (values on the step's mini-batch)")
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    save(fig, path, dpi=100)
