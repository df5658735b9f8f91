"""The training recipe beyond plain SGD: momentum, weight decay, learning-rate schedules and Adam,
and the adjoint of each through the retrace (design notes, section 12).

Training applies nnabla 1.39's solvers exactly as they compute (checked bit for bit against a
float32 re-implementation; tests/test_optimizer.py). With G = g + lambda theta the step's
gradient, g = grad_theta of sum_{i in S_t} w_i l_i / |S_t| (w_i = 1 in training; retraining drops
removed instances, the divisor stays |S_t|), and `solver.weight_decay(lambda)` adding
lambda theta to the gradient before the update:

    sgd       theta' = theta - eta_t G                                     (nnabla Sgd)
    momentum  v' = mu v + eta_t G,  theta' = theta - v'                    (nnabla Momentum, v holds the rate)
    adam      m' = b1 m + (1-b1) G,  s' = b2 s + (1-b2) G*G,
              theta' = theta - alpha_k m' / (sqrt(s') + eps),
              alpha_k = eta_t sqrt(1 - b2^k) / (1 - b1^k),  k = t + 1        (nnabla Adam; t: 0-based step)

eta_t is the step's recorded rate (`learning_rates`: constant, step or cosine schedule). The
solver's state before step t (v; or m, s) is the "optimizer state" kept beside theta where a
method needs it: rows of the trajectory and epoch checkpoints hold it as arrays named
`state_name(key, param)`; Adam's step counter is t itself (every recorded step updates once,
an empty batch included), so it is not stored.

The adjoint. Removing j (weight w_j: 1 -> 0) perturbs step t's gradient by
q = -(1/|S_t|) dG/dw_j (= -(1/|S_t|) grad l_j without batch-norm coupling), and every later
step propagates the perturbation linearly. The score L_{-j} = <u, d theta[T]> is read off
backwards: with a_x the adjoint of each state variable x after step t (a_theta = u and the
others 0 after the last step), each step contributes <c, q> and maps the adjoints to those
before it. One H p per step (H: the batch-mean Hessian at the step's theta; p the vector
below), exactly as plain SGD's u <- u - eta_t H u:

- sgd / momentum (mu = 0: no v). Linearised, dv' = mu dv + eta_t ((H + lambda I) dtheta + q),
  dtheta' = dtheta - dv'. Hence, with p = a_theta' - a_v':
      L_{-j} += eta_t / |S_t| <p, g_j>               (the graphs' dQ/dw_j along p)
      a_theta = a_theta' - eta_t (H p + lambda p),   a_v = -mu p
  For mu = lambda = 0 this is u <- u - eta_t H u, the same arithmetic as before this module.
- adam. Linearised (r = sqrt(s'), D = r + eps, all elementwise):
      dm' = b1 dm + (1-b1) dG,  ds' = b2 ds + 2 (1-b2) G dG,
      dtheta' = dtheta - alpha_k (dm' / D - m' ds' / (2 r D^2)),  dG = (H + lambda I) dtheta + q.
  With c_m = a_m' - alpha_k a_theta' / D, c_s = a_s' + alpha_k a_theta' m' / (2 r D^2) and
  p = -((1-b1) c_m + 2 (1-b2) G c_s):
      L_{-j} += 1 / |S_t| <p, g_j>
      a_theta = a_theta' - (H p + lambda p),  a_m = b1 c_m,  a_s = b2 c_s
  It needs G_t, m_{t+1} and s_{t+1} along the trajectory: m and s are the states after the
  step (the next row, or the final state after the last step), and G_t = (m_{t+1} - b1 m_t) /
  (1-b1) from the states before and after (float64 from float32 values: about 1e-6 of |m|).
  Where s' = 0 (a parameter whose gradient was always 0) sqrt is not differentiable and its
  term is taken as 0. Adam's adjoint is kept in float64 on the host: c_m and the s' term
  nearly cancel (to eps / r) at the first steps.

Hara evaluates H, G, m, s at each step's values; Ours at the final ones (theta[T] and the final
state: then G_t = m[T]), as the paper replaces theta[t] by theta[T]; TracIn_last drops the
Hessian terms (H and lambda), so u stays the validation gradient while the state adjoints still
carry it (with momentum, p sums mu^k u: the effective step of a gradient).
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import nnabla as nn
import nnabla.functions as F
import nnabla.solvers as S

from ..base.argtypes import fraction, nonneg_float, positive_float
from ..base.errors import UserError, warn
from ..base.methods import METHODS

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine")
STEP_DECAY = 0.1  # --lr-schedule step: the factor at each milestone
# The optimizer settings of a run (run.json); a run that predates them used these values. Adam's
# settings stay None unless --optimizer adam (then the nnabla/Kingma-Ba defaults fill them).
SETTING_DEFAULTS = {"optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0, "lr_schedule": "constant",
                    "adam_beta1": None, "adam_beta2": None, "adam_eps": None}
ADAM_DEFAULTS = {"adam_beta1": 0.9, "adam_beta2": 0.999, "adam_eps": 1e-8}
STATE_KEYS = {"momentum": ("m",), "adam": ("mean", "var")}  # nnabla's names of each solver's state arrays


# ------------------------------------------------------------------ the recipe
@dataclass(frozen=True)
class Recipe:
    """How each recorded step updates theta (the module docstring's rules); the rates are the
    step record's. Plain SGD (the default) keeps no state."""
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    @property
    def plain(self) -> bool:
        """Plain SGD without weight decay: the published code's training, and this tool's before the option."""
        return self.optimizer == "sgd" and self.momentum == 0 and self.weight_decay == 0

    @property
    def solver_kind(self) -> str:
        return "adam" if self.optimizer == "adam" else ("momentum" if self.momentum else "sgd")

    @property
    def state_keys(self) -> Tuple[str, ...]:
        """The solver's state arrays per parameter: () for SGD, v for momentum, m and s for Adam."""
        return STATE_KEYS.get(self.solver_kind, ())

    @property
    def stateful(self) -> bool:
        return bool(self.state_keys)

    @property
    def retrace_reads_state(self) -> bool:
        """Whether the adjoint reads the state along the trajectory (Adam: m, s); momentum's step is linear
        in v, so its adjoint needs the rate and mu only, and Hara's per-step rows keep theta alone."""
        return self.optimizer == "adam"

    def solver(self):
        """A fresh nnabla solver of this recipe (rates set per step)."""
        if self.optimizer == "adam":
            return S.Adam(alpha=0.0, beta1=self.beta1, beta2=self.beta2, eps=self.eps)
        return S.Momentum(lr=0.0, momentum=self.momentum) if self.momentum else S.Sgd(lr=0.0)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items()
                           if self.optimizer == "adam" or k not in ("beta1", "beta2", "eps")}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        return cls(**json.loads(text))

    def describe(self) -> str:
        if self.optimizer == "adam":
            core = f"Adam (beta1 {self.beta1:g}, beta2 {self.beta2:g}, eps {self.eps:g})"
        else:
            core = f"SGD with momentum {self.momentum:g}" if self.momentum else "SGD"
        return core + (f", weight decay {self.weight_decay:g}" if self.weight_decay else "")


PLAIN = Recipe()


# ------------------------------------------------------------------- options
def add_arguments(p: argparse.ArgumentParser) -> None:
    """--optimizer, --momentum, --weight-decay, --lr-schedule and Adam's --adam-beta1/-beta2/-eps
    (the drivers, validate_influence.py, the benchmark)."""
    g = p.add_argument_group("training recipe (default: plain SGD at a constant rate, as published; "
                             "docs/method.md#momentum-weight-decay-schedules-adam)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd",
                   help="sgd (nnabla Sgd, or Momentum with --momentum) or adam (nnabla Adam; --lr is its alpha)")
    g.add_argument("--momentum", type=fraction, default=0.0, metavar="MU",
                   help="--optimizer sgd: heavy-ball momentum as nnabla's Momentum (v = MU v + lr g, theta -= v); "
                        "default 0: plain SGD")
    g.add_argument("--weight-decay", type=nonneg_float, default=0.0, metavar="LAMBDA",
                   help="LAMBDA theta added to every step's gradient (nnabla's solver.weight_decay); default 0")
    g.add_argument("--lr-schedule", choices=SCHEDULES, default="constant",
                   help=f"each step's rate: constant; step (x{STEP_DECAY:g} after half and after three quarters of the "
                        f"epochs); cosine (lr (1 + cos(pi t / steps)) / 2 over all steps); recorded per step")
    g.add_argument("--adam-beta1", type=fraction, default=None, metavar="B1",
                   help=f"--optimizer adam: first-moment decay (default {ADAM_DEFAULTS['adam_beta1']:g})")
    g.add_argument("--adam-beta2", type=fraction, default=None, metavar="B2",
                   help=f"--optimizer adam: second-moment decay (default {ADAM_DEFAULTS['adam_beta2']:g})")
    g.add_argument("--adam-eps", type=positive_float, default=None, metavar="EPS",
                   help=f"--optimizer adam: epsilon (default {ADAM_DEFAULTS['adam_eps']:g})")


FD_WITH_ADAM = ("--retrace fd with --optimizer adam: Adam's adjoint is about alpha/eps larger where the "
                "gradient is about 0 (e.g. a convolution's bias before batch norm), and central differences along "
                "it lose the other components (measured on the tests' tiny batch-norm nets: off by 4% to 28 times "
                "the largest score against exact); --retrace exact is recommended with Adam")


def checked(args) -> Recipe:
    """The recipe of a command's arguments, Adam's defaults filled in (so they are recorded); a
    combination that does not apply is one error line; Adam with the fd retrace is one warning."""
    for k in SETTING_DEFAULTS:  # a namespace from before these options (or a test's) counts at the defaults
        if not hasattr(args, k):
            setattr(args, k, SETTING_DEFAULTS[k])
    adam = args.optimizer == "adam"
    if adam and getattr(args, "retrace", None) == "fd":
        warn(FD_WITH_ADAM)
    if adam:
        if args.momentum:
            raise UserError("--momentum applies to --optimizer sgd; Adam's moment decays are --adam-beta1 and "
                            "--adam-beta2")
        for k, v in ADAM_DEFAULTS.items():
            if getattr(args, k) is None:
                setattr(args, k, v)
    else:
        given = [f"--{k.replace('_', '-')}" for k in ADAM_DEFAULTS if getattr(args, k) is not None]
        if given:
            raise UserError(f"{', '.join(given)} only apply with --optimizer adam; add --optimizer adam or drop them")
    recipe = from_args(args)
    asked = list(getattr(args, "methods", None) or []) + list(getattr(args, "estimators", None) or [])
    published = sorted({m for m in asked if m in METHODS and METHODS[m].as_published})
    if published and not recipe.plain:
        raise UserError(f"{' and '.join(published)}: the published code's retrace, which trains with plain SGD; "
                        "drop them or --momentum/--weight-decay/--optimizer adam")
    return recipe


def from_args(args) -> Recipe:
    """The recipe of resolved arguments (`checked` first)."""
    get = lambda k: getattr(args, k, SETTING_DEFAULTS[k])  # noqa: E731
    if get("optimizer") == "adam":
        return Recipe("adam", 0.0, float(get("weight_decay")), float(args.adam_beta1), float(args.adam_beta2),
                      float(args.adam_eps))
    return Recipe("sgd", float(get("momentum")), float(get("weight_decay")))


def learning_rates(lr: float, schedule: str, epochs: Sequence[int], n_epochs: int) -> List[float]:
    """The rate of every step, given each step's epoch: constant; step (x STEP_DECAY at each milestone
    epoch n_epochs // 2 and 3 n_epochs // 4 that is > 0: epoch e runs at lr x 0.1^(milestones <= e));
    cosine (step t of N: lr (1 + cos(pi t / N)) / 2, no warm-up, lr at t = 0, > 0 throughout)."""
    n = len(epochs)
    if schedule == "constant":
        return [lr] * n
    if schedule == "step":
        milestones = sorted({m for m in (n_epochs // 2, (3 * n_epochs) // 4) if m > 0})
        return [lr * STEP_DECAY ** sum(e >= m for m in milestones) for e in epochs]
    if schedule == "cosine":
        return [lr * 0.5 * (1.0 + math.cos(math.pi * t / n)) for t in range(n)]
    raise ValueError(schedule)


# ------------------------------------------------------------ solver state
def state_name(key: str, param: str) -> str:
    """A state array's name in rows and checkpoints ('@m/conv1/conv/W'): never a parameter's name."""
    return f"@{key}/{param}"


def is_state_name(name: str) -> bool:
    return name.startswith("@")


def solver_state(solver, recipe: Recipe) -> Dict[str, np.ndarray]:
    """Copies of the solver's state arrays by `state_name` ({} for plain SGD)."""
    if not recipe.stateful:
        return {}
    return {state_name(key, param): np.array(st.pstate[key].d, np.float32, copy=True)
            for param, st in solver.get_states().items() for key in recipe.state_keys}


def set_solver_state(solver, recipe: Recipe, arrays: Optional[Dict[str, np.ndarray]], step: int) -> None:
    """Put the state before recorded step `step` (0-based) into the solver: the arrays (None: the
    fresh state, zeros) and the update counter (Adam's bias correction counts the steps done)."""
    if not recipe.stateful:
        return
    states = solver.get_states()
    for param, st in states.items():
        for key in recipe.state_keys:
            st.pstate[key].d = 0.0 if arrays is None else arrays[state_name(key, param)]
        st.t = int(step)
    solver.set_states(states)


def state_floats(solver, recipe: Recipe) -> int:
    """Floats of the optimizer state (0 for plain SGD)."""
    return sum(int(st.pstate[k].size) for st in solver.get_states().values() for k in recipe.state_keys) \
        if recipe.stateful else 0


# ------------------------------------------------------------- the adjoint
def _is_device(v) -> bool:
    return isinstance(v, nn.NdArray)


def _axpy(y, a: float, x):
    """y + a x for one array (numpy, or an NdArray on the device)."""
    if _is_device(y):
        return F.add2(y, F.mul_scalar(x, a))
    return y + a * x


class SgdAdjoint:
    """The adjoint through SGD with momentum mu and weight decay lambda (module docstring):
    a_theta (`u`, the validation gradient at first) and a_v (None while mu = 0)."""

    reads_state = False

    def __init__(self, recipe: Recipe, u: List, hessian: bool = True, hu_over_batch: bool = False):
        self.mu, self.decay, self.hessian, self.hu_over_batch = recipe.momentum, recipe.weight_decay, hessian, \
            hu_over_batch
        self.u = u  # a_theta
        self.a_v: Optional[List] = None
        self.p: List = u
        self.lr = 0.0

    def direction(self, t: int, lr: float, before: Optional[dict], after: Optional[dict]) -> Tuple[List, float]:
        """(p, scale) of step t: the graphs take H p and dQ/dw_j along p; L_{-j} += scale / |S_t| dQ/dw_j."""
        self.lr = lr
        self.p = self.u if self.a_v is None else [
            (F.sub2(a, b) if _is_device(a) else a - b) for a, b in zip(self.u, self.a_v)]
        return self.p, lr

    def back(self, hu: List, batch: int) -> None:
        """The adjoints before the step, from H p."""
        if self.hessian:
            step = self.lr / batch if self.hu_over_batch else self.lr  # hu_over_batch: the published code's variant
            h = hu if not self.decay else [_axpy(a, self.decay, p) for a, p in zip(hu, self.p)]
            self.u = [F.sub2(ui, F.mul_scalar(x, step)) if _is_device(ui) else ui - step * x
                      for ui, x in zip(self.u, h)]
        if self.mu:
            self.a_v = [F.mul_scalar(p, -self.mu) if _is_device(p) else np.float32(-self.mu) * p for p in self.p]


class AdamAdjoint:
    """The adjoint through Adam (module docstring), in float64 on the host: a_theta (`u`), a_m, a_s.
    `direction` needs the state before the step and after it, as {state_name: array}."""

    reads_state = True

    def __init__(self, recipe: Recipe, u: List[np.ndarray], names: Sequence[str], hessian: bool = True):
        f32 = lambda x: float(np.float32(x))  # noqa: E731  nnabla keeps beta1, beta2, eps, alpha as float
        self.b1, self.b2, self.eps, self.decay = f32(recipe.beta1), f32(recipe.beta2), f32(recipe.eps), \
            recipe.weight_decay
        self.names, self.hessian = list(names), hessian
        self.u = [np.asarray(a, np.float64) for a in u]
        self.a_m = [np.zeros_like(a) for a in self.u]
        self.a_s = [np.zeros_like(a) for a in self.u]
        self.p: List[np.ndarray] = []
        self.c_m: List[np.ndarray] = []
        self.c_s: List[np.ndarray] = []

    def alpha(self, t: int, lr: float) -> float:
        """alpha_k of step t (k = t + 1), as nnabla computes it (bias correction in double, then float)."""
        k = t + 1
        bias = float(np.float32(math.sqrt(1.0 - self.b2 ** k) / (1.0 - self.b1 ** k)))
        return float(np.float32(np.float32(lr) * np.float32(bias)))

    def direction(self, t: int, lr: float, before: dict, after: dict) -> Tuple[List[np.ndarray], float]:
        alpha = self.alpha(t, lr)
        self.p, self.c_m, self.c_s = [], [], []
        for name, a_theta, a_m, a_s in zip(self.names, self.u, self.a_m, self.a_s):
            m1 = after[state_name("mean", name)].astype(np.float64)
            s1 = after[state_name("var", name)].astype(np.float64)
            m0 = before[state_name("mean", name)].astype(np.float64)
            g = (m1 - self.b1 * m0) / (1.0 - self.b1)
            r = np.sqrt(s1)
            d = r + self.eps
            c_m = a_m - alpha * a_theta / d
            with np.errstate(divide="ignore", invalid="ignore"):
                c_s = a_s + np.where(r > 0, alpha * a_theta * m1 / (2.0 * r * d * d), 0.0)
            self.c_m.append(c_m)
            self.c_s.append(c_s)
            self.p.append(-((1.0 - self.b1) * c_m + 2.0 * (1.0 - self.b2) * g * c_s))
        return [p.astype(np.float32) for p in self.p], 1.0

    def back(self, hu: List[np.ndarray], batch: int) -> None:
        if self.hessian:
            self.u = [a - (np.asarray(h, np.float64) + self.decay * p) for a, h, p in zip(self.u, hu, self.p)]
        self.a_m = [self.b1 * c for c in self.c_m]
        self.a_s = [self.b2 * c for c in self.c_s]


def adjoint(recipe: Recipe, u: List, names: Sequence[str], hessian: bool = True, hu_over_batch: bool = False):
    """The adjoint of this recipe's step, starting from a_theta = u (the validation gradient)."""
    if recipe.optimizer == "adam":
        assert not hu_over_batch, "the published code's variants are of plain SGD"
        return AdamAdjoint(recipe, u, names, hessian)
    return SgdAdjoint(recipe, u, hessian, hu_over_batch)
