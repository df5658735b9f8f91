"""One home for the plotting: a headless pyplot, an atomic PNG save used by every figure, the
methods' colours, and the analysis figures (accuracy vs number removed, method agreement).

matplotlib is imported on first use (`pyplot()`): drivers that never plot do not pay its import
time. `rows` are analyze.Row (batch_size, method, n_removed, mean, std, n_trials)."""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

from . import layout
from .methods import N_RANKED, sort_key


def pyplot():
    """matplotlib.pyplot on the headless Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, path: str, dpi: int = 110) -> None:
    """Write `fig` as a PNG to `path` atomically and close it."""
    with layout.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)


def zero_lines(ax, vertical: bool = False) -> None:
    """The light grey line at y = 0 (and at x = 0 when `vertical`) behind a scatter or a curve."""
    ax.axhline(0, c="0.7", lw=0.5)
    if vertical:
        ax.axvline(0, c="0.7", lw=0.5)


def color(method: str):
    import matplotlib
    rank, _ = sort_key(method)
    k = rank if rank < N_RANKED else N_RANKED + sum(map(ord, method)) % 6  # the others: a stable colour each
    return matplotlib.colormaps["tab10"](k % 10)


def accuracy_panel(ax, rows: Sequence, base, errorbars: bool, title: str) -> None:
    """Test accuracy vs number removed (log x) per method, the No Removal accuracy as a line."""
    if base:
        mean, std, _ = base
        ax.axhline(mean, color="gray", ls="--", label="No Removal")
        if errorbars and std > 0:
            ax.axhspan(mean - std, mean + std, color="gray", alpha=0.15)
    for method in dict.fromkeys(r.method for r in rows):
        rs = [r for r in rows if r.method == method and r.n_removed > 0]
        if rs:
            ax.errorbar([r.n_removed for r in rs], [r.mean for r in rs],
                        yerr=[r.std for r in rs] if errorbars else None, marker="o", ms=4, capsize=3,
                        color=color(method), label=method)
    ns = sorted({r.n_removed for r in rows if r.n_removed > 0})
    if ns:  # log x with the removal sizes themselves as ticks
        import matplotlib.ticker as mticker
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(mticker.NullLocator())
        ax.set_xticks(ns)
        ax.set_xticklabels([str(n) for n in ns], rotation=45 if len(ns) > 6 else 0, fontsize=8)
    ax.set_xlabel("number of instances removed")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def trials_text(rows: Sequence) -> str:
    k = sorted({r.n_trials for r in rows})
    return f"{k[0]} trial{'s' if k[0] > 1 else ''}" if len(k) == 1 else f"{k[0]}-{k[-1]} trials"


def plot_result(rows: Sequence, base, path: str, errorbars: bool, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    accuracy_panel(ax, rows, base, errorbars, title + (", ±1 std over trials" if errorbars else ", mean over trials"))
    fig.tight_layout()
    save(fig, path, dpi=100)


def plot_batch_sizes(by_bs: Dict[int, Tuple[list, tuple]], path: str, dataset: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(by_bs), figsize=(4.2 * len(by_bs), 3.8), sharey=True, squeeze=False)
    for ax, bs in zip(axes[0], sorted(by_bs)):
        rows, base = by_bs[bs]
        accuracy_panel(ax, rows, base, True, f"{dataset} batch size {bs} ({trials_text(rows)})")
    fig.tight_layout()
    save(fig, path, dpi=100)


def plot_agreement(rows: Sequence[dict], path: str, seed: int) -> None:
    pairs = list(dict.fromkeys((r["method_a"], r["method_b"]) for r in rows))
    plt = pyplot()
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 4), squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs):
        r = next(r for r in rows if (r["method_a"], r["method_b"]) == (a, b))
        ax.scatter(r["a"], r["b"], s=4, alpha=0.4, color=color(b), rasterized=True)
        ax.axhline(0, color="gray", lw=0.5)
        ax.axvline(0, color="gray", lw=0.5)
        ax.set_xlabel(f"{a} influence")
        ax.set_ylabel(f"{b} influence")
        ax.set_title(f"{a} vs {b}, seed {seed} ({r['n_instances']} instances)\n"
                     f"Spearman {r['spearman']:.3f}, Kendall tau-b {r['kendall_tau_b']:.3f}", fontsize=9)
        ax.ticklabel_format(style="sci", scilimits=(-2, 3))
    fig.tight_layout()
    save(fig, path, dpi=100)
