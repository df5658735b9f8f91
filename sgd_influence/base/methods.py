"""The methods: one table, pure data, at the bottom of the import graph.

A method turns a training run into one score per training instance (the
`influence` column of OUT/influence/<Method>/influence_<stem>_<seed>.csv; most
negative = most harmful, removed first). Everything else that depends on the
method's name (file names, plot order, which phases it needs, which options its
results depend on, how validate_influence.py computes it) is looked up here.
`experiment.METHOD_UNITS` maps the driver methods to the functions that run them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

# Options that change the scores of every retrace-based method, and of influence functions.
RETRACE_SETTINGS = ("retrace", "bn_coupling")
IF_SETTINGS = ("if_alpha", "if_lr", "if_momentum", "if_epochs", "if_last_iterate")


@dataclass(frozen=True)
class Method:
    name: str
    stem: str  # influence_<stem>_<seed>.csv
    retrace: Optional[Dict[str, object]] = None  # keyword arguments of infl.retrace; None: not a retrace
    settings: Tuple[str, ...] = ()  # options its scores depend on beyond the training's
    seeded: bool = False  # draws random numbers with the trial seed
    control: bool = False  # a random sort key: no agreement, no harmful/helpful grids
    driver: bool = True  # the drivers can run it (False: an ablation of validate_influence.py only)
    plot_rank: Optional[int] = None  # position in tables and figures; None: after the ranked, alphabetically
    scores_of: Optional[str] = None  # computes that method's scores (on the CPU byte for byte) another way

    @property
    def step_params(self) -> bool:
        """Needs the per-step parameter store theta[t] of the last epoch (Hara's storage); Replay
        recomputes theta[t] from params_epoch_<K-1>.h5 and the step record instead."""
        return bool(self.retrace) and self.retrace.get("method") == "Hara" \
            and self.retrace.get("trajectory", "stored") == "stored"

    @property
    def replays(self) -> bool:
        """Recomputes the last epoch's theta[t] by replaying it (core/replay.py)."""
        return bool(self.retrace) and self.retrace.get("trajectory") == "replay"

    @property
    def as_published(self) -> bool:
        """The published code's computation, its departures from the papers kept (core/published.py):
        opt-in everywhere (in no default method list)."""
        return bool(self.retrace) and bool(self.retrace.get("as_published"))

    @property
    def twin(self) -> Optional[str]:
        """A published method's corrected counterpart (Hara_published: Hara), else None."""
        return self.retrace["method"] if self.as_published else None

    @property
    def samples_alone(self) -> bool:
        """Takes each sample's gradient from a forward of that sample alone (batch size 1, batch norm in
        training mode): the published code's per-sample step (the published methods, Ours_sample_alone)."""
        return self.as_published or bool((self.retrace or {}).get("sample_grads_alone"))

    @property
    def window(self) -> str:
        """The steps its retrace walks back through: "last" (the last epoch), or "all" (every epoch,
        theta[T] back to theta[0]); its counterfactual is then retraining from theta[0] (-ra)."""
        return (self.retrace or {}).get("window", "last")


METHODS: Dict[str, Method] = {m.name: m for m in (
    Method("Hara", "hara", retrace=dict(method="Hara"), settings=RETRACE_SETTINGS, plot_rank=0),
    Method("Ours", "ours", retrace=dict(method="Ours"), settings=RETRACE_SETTINGS, plot_rank=1),
    # Hara's scores at Ours' storage: theta[t] replayed from params_epoch_<K-1>.h5 (beyond both papers).
    Method("Replay", "replay", retrace=dict(method="Hara", trajectory="replay"), settings=RETRACE_SETTINGS,
           scores_of="Hara"),
    # The retrace through every step of every epoch, theta[t] replayed from params_epoch_0.h5: the exact
    # first-order effect of removing an instance from the whole training (its counterfactual is -ra).
    Method("Replay_all", "replay_all", retrace=dict(method="Hara", trajectory="replay", window="all"),
           settings=RETRACE_SETTINGS),
    Method("Influence_functions", "influence_functions", settings=IF_SETTINGS, seeded=True, plot_rank=2),
    Method("TracIn_last", "tracin_last", retrace=dict(method="Ours", retrace_u=False), settings=RETRACE_SETTINGS),
    Method("Loss", "loss"),
    Method("Random", "random", seeded=True, control=True, plot_rank=3),
    # The published scripts' computation of Hara and Ours (core/published.py): the u update divided by |S_t|
    # twice, per-sample gradients at batch size 1, double backward; Hara's theta[t] from its bundled cache.
    Method("Hara_published", "hara_published", retrace=dict(method="Hara", as_published=True),
           settings=("published_bundle_size",)),
    Method("Ours_published", "ours_published", retrace=dict(method="Ours", as_published=True)),
    # One departure of the published code each (Ours_published has both), at the run's --retrace and
    # --bn-coupling: what each departure alone changes (validate_influence.py only; infl.retrace).
    Method("Ours_hu_over_batch", "ours_hu_over_batch", retrace=dict(method="Ours", hu_over_batch=True),
           settings=RETRACE_SETTINGS, driver=False),
    Method("Ours_sample_alone", "ours_sample_alone", retrace=dict(method="Ours", sample_grads_alone=True),
           settings=RETRACE_SETTINGS, driver=False),
)}
DRIVER_METHODS = tuple(n for n, m in METHODS.items() if m.driver)
CONTROL = "Random"  # the baseline of the paired differences (analyze)
N_RANKED = sum(m.plot_rank is not None for m in METHODS.values())


def stem(name: str) -> str:
    return METHODS[name].stem


def sort_key(name: str) -> tuple:
    """Tables and figures: the ranked methods first, then the rest (also unknown names) alphabetically."""
    m = METHODS.get(name)
    return (m.plot_rank if m is not None and m.plot_rank is not None else N_RANKED), name


def is_control(name: str) -> bool:
    return name in METHODS and METHODS[name].control


def retrains_all(names) -> bool:
    """Whether any of these methods estimates the effect of retraining from theta[0] (window "all")."""
    return any(METHODS[n].window == "all" for n in names if n in METHODS)


def needs_step_params(names) -> bool:
    """Whether training must keep the last epoch's per-step parameters for these methods."""
    return any(METHODS[n].step_params for n in names)
