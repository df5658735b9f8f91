"""The solver's trace, kept so that convergence can be inspected.

OUT/influence/Influence_functions/solver_trace_<seed>.csv: epoch, step,
objective f(v) on the step's batch, |v|; OUT/fig/if_solver_seed<seed>.png
plots both against the step.
"""
from __future__ import annotations

import os

import numpy as np

from sgd_influence.io import atomic_path, write_text


def solver_trace_path(out: str, seed: int) -> str:
    return os.path.join(out, "influence", "Influence_functions", f"solver_trace_{seed}.csv")


def solver_figure_path(out: str, seed: int) -> str:
    return os.path.join(out, "fig", f"if_solver_seed{seed}.png")


def write_solver_trace(out: str, seed: int, trace: np.ndarray) -> None:
    lines = ["epoch,step,objective,v_norm"]
    lines += [f"{int(e)},{int(s)},{f:.9g},{v:.9g}" for e, s, f, v in trace]
    write_text(solver_trace_path(out, seed), "\n".join(lines) + "\n")
    plot_solver_trace(solver_figure_path(out, seed), trace, f"influence functions solve, seed {seed}")


def plot_solver_trace(path: str, trace: np.ndarray, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(trace[:, 1], trace[:, 2], lw=0.8, color="C0")
    ax.set_xlabel("solver step")
    ax.set_ylabel("objective f(v) (mini-batch)", color="C0")
    ax2 = ax.twinx()
    ax2.plot(trace[:, 1], trace[:, 3], lw=1.2, color="C1")
    ax2.set_ylabel("|v|", color="C1")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
