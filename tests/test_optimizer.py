"""Training recipes beyond plain SGD (core/optimizer.py): nnabla's update rules reproduced bit for bit,
the schedules' closed forms, every retrace through the optimizer state against central differences of
weighted retrainings (the oracle, as tests/test_replay_all.py does for plain SGD), Replay = Hara byte for
byte under each recipe, and the defaults unchanged."""
import os

import numpy as np
import nnabla as nn
import nnabla.functions as F
import nnabla.parametric_functions as PF
import nnabla.solvers as S
import pytest

from conftest import TINY_BN, tiny_data
from test_replay_all import SMOOTH_BN
from models import Ops
from sgd_influence.base import layout
from sgd_influence.base.methods import METHODS
from sgd_influence.core import optimizer
from sgd_influence.core.graphs import GraphCache, trainable_params
from sgd_influence.core.infl import retrace
from sgd_influence.core.optimizer import Recipe, learning_rates
from sgd_influence.core.params import load_checkpoint
from sgd_influence.core.step_record import StepRecord
from sgd_influence.core.train import load_state_at, replay_steps, train, trainer_at


# ------------------------------------------------------------ the update rules
def reference_steps(kind: str, theta, grads, lrs, decay, mu=0.9, b1=0.9, b2=0.999, eps=1e-8):
    """The documented rules (optimizer.py) in numpy float32, operation by operation as nnabla's C++:
    weight decay g + lambda theta; Sgd theta - lr g; Momentum v = mu v + lr g, theta - v; Adam with the
    bias correction sqrt(1 - b2^k) / (1 - b1^k) in double, then float."""
    f = np.float32
    th, v, m, s = theta.copy(), np.zeros_like(theta), np.zeros_like(theta), np.zeros_like(theta)
    out = []
    for k, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = g + f(decay) * th
        if kind == "sgd":
            th = th - f(lr) * g
        elif kind == "momentum":
            v = f(mu) * v + f(lr) * g
            th = th - v
        else:
            alpha = f(lr) * f(np.sqrt(1 - np.float64(f(b2)) ** k) / (1 - np.float64(f(b1)) ** k))
            m = f(b1) * m + (f(1) - f(b1)) * g
            s = f(b2) * s + (f(1) - f(b2)) * g * g
            th = th - alpha * m / (np.sqrt(s) + f(eps))
        out.append(th.copy())
    return out


@pytest.mark.parametrize("recipe", [Recipe(weight_decay=5e-4), Recipe(momentum=0.9, weight_decay=5e-4),
                                    Recipe("adam", weight_decay=5e-4)], ids=["sgd", "momentum", "adam"])
def test_nnabla_solvers_apply_the_documented_rules_bit_for_bit(recipe):
    """Recipe.solver() with weight decay, on random gradients and varying rates: every step's theta equals
    the numpy float32 rules of the module docstring bit for bit; set_solver_state (state and counter)
    restarts a solver so that it continues exactly as the uninterrupted one."""
    rng = np.random.default_rng(0)
    theta = rng.standard_normal(7).astype(np.float32)
    grads = [rng.standard_normal(7).astype(np.float32) for _ in range(6)]
    lrs = [0.1, 0.1, 0.05, 0.02, 0.02, 0.01] if recipe.optimizer == "sgd" else [1e-2, 1e-2, 5e-3, 5e-3, 1e-3, 1e-3]
    expected = reference_steps(recipe.solver_kind, theta, grads, lrs, recipe.weight_decay)

    def run(steps, start=None):
        nn.clear_parameters()
        p = nn.parameter.get_parameter_or_create("w", (7,), need_grad=True)
        p.d = theta if start is None else start[0]
        solver = recipe.solver()
        solver.set_parameters({"w": p})
        if start is not None:
            optimizer.set_solver_state(solver, recipe, start[1], steps[0])
        got = []
        for k in steps:
            p.g = grads[k]
            solver.weight_decay(recipe.weight_decay)
            solver.set_learning_rate(lrs[k])
            solver.update()
            got.append(p.d.copy())
        return got, (p.d.copy(), optimizer.solver_state(solver, recipe))

    got, _ = run(range(6))
    for a, b in zip(got, expected):
        assert np.array_equal(a, b)
    _, midway = run(range(3))
    resumed, _ = run(range(3, 6), start=midway)
    for a, b in zip(resumed, expected[3:]):
        assert np.array_equal(a, b)
    assert recipe.state_keys == optimizer.STATE_KEYS.get(recipe.solver_kind, ())


def test_learning_rate_schedules():
    """constant; step: x0.1 from epoch K//2 and again from 3K//4 (milestones > 0 only); cosine over all
    steps, lr at the first, (1 + cos(pi t / N)) / 2 after."""
    epochs = [e for e in range(4) for _ in range(3)]
    assert learning_rates(0.1, "constant", epochs, 4) == [0.1] * 12
    assert np.allclose(learning_rates(0.1, "step", epochs, 4), [0.1] * 6 + [0.01] * 3 + [0.001] * 3, rtol=1e-12)
    assert learning_rates(0.1, "step", [0, 0], 1) == [0.1, 0.1]
    assert np.allclose(learning_rates(0.1, "step", [0, 1], 2), [0.1, 0.01], rtol=1e-12)
    cos = learning_rates(0.1, "cosine", epochs, 4)
    assert cos[0] == 0.1 and abs(cos[6] - 0.05) < 1e-15 and all(a > b > 0 for a, b in zip(cos, cos[1:]))
    assert abs(cos[3] - 0.05 * (1 + np.cos(np.pi / 4))) < 1e-15


# --------------------------------------------------------------------- the oracle
def SMOOTH_BN_NO_PRE_BN_BIAS(x, n_classes, test=False, ops=None):
    """SMOOTH_BN's two blocks without the bias of the convolution before batch norm. That bias has no
    effect on the training loss (batch norm subtracts it), so its gradient is float32 rounding noise,
    which Adam normalises into steps of about alpha: a random walk that makes the weighted retrainings'
    validation loss noisy at the oracle's precision (measured on SMOOTH_BN: median relative error 1e-2).
    Momentum and plain SGD do not amplify it (their oracles use SMOOTH_BN)."""
    ops = ops if ops is not None else Ops()
    h = x
    for i, width in enumerate((4, 8)):
        with nn.parameter_scope(f"block{i + 1}"):
            h = PF.convolution(h, width, (3, 3), pad=(1, 1), with_bias=False, name="conv1")
            h = F.tanh(ops.batch_norm(h, test, "bn1"))
            h = F.tanh(PF.convolution(h, width, (3, 3), pad=(1, 1), name="conv2"))
            h = F.average_pooling(h, (2, 2))
    return PF.affine(h, n_classes, name="fc")


BATCH = 8  # 32 instances: 4 steps per epoch


class WeightedRetraining:
    """The validation loss (mean over the validation set, float64 from the logits) after retraining the
    window -- every step from theta[0] ("all") or the last epoch from theta[K-1] and its optimizer state
    ("last") -- with instance i's loss and its share of the batch statistics weighted by w[i] in every
    step (SGD.replay with weights); the running statistics are the training's."""

    def __init__(self, data, run_dir, net, window):
        self.data, self.run_dir, self.window = data, run_dir, window
        self.record = StepRecord.load(layout.step_record_path(run_dir))
        self.first = 0 if window == "all" else self.record.n_epochs - 1
        self.steps = np.arange(self.record.first_step(self.first), self.record.n_steps)
        self.sgd = trainer_at(data, run_dir, self.record, self.first, BATCH, net)
        self.graph = GraphCache(data.image_shape, data.n_classes, test=True, net=net).get(len(data.val))

    def loss(self, w):
        load_checkpoint(layout.checkpoint_path(self.run_dir, self.first))
        load_state_at(self.sgd, self.run_dir, self.record, self.first)
        replay_steps(self.sgd, self.record, self.steps, weights=w)
        trained = {k: v.d.copy() for k, v in trainable_params().items()}
        load_checkpoint(layout.checkpoint_path(self.run_dir, self.record.n_epochs))  # the running statistics
        for k, v in trainable_params().items():
            v.d = trained[k]
        self.graph.feed(self.data.normalize(self.data.val.x), self.data.val.y, 1.0)
        self.graph.logits.forward()
        z = self.graph.logits.d.astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(z)), self.data.val.y]))

    def derivative(self, h=0.1):
        """dL/dw_j of every instance at w = 1: central differences at 1 +- h and 1 +- h/2,
        Richardson-extrapolated (error O(h^4))."""
        n = len(self.data.train)
        quotients = []
        for step in (h, h / 2):
            d = np.zeros(n)
            for j in range(n):
                w = np.ones(n)
                w[j] = 1 + step
                plus = self.loss(w)
                w[j] = 1 - step
                d[j] = (plus - self.loss(w)) / (2 * step)
            quotients.append(d)
        return (4 * quotients[1] - quotients[0]) / 3


# name: (recipe, schedule, lr, net, window, method, h: the weight step of the central differences).
# The truth's float32 noise is about 1e-6 absolute here (momentum 0.9 amplifies the chaos of training), so
# the settings keep the smallest |dL/dw_j| well above it: h = 0.2 where the quotients' truncation allows
# (measured at cosine: largest relative error 2.1e-3 at h = 0.1, 2.6e-4 at h = 0.2; 8e-3 at lr 0.05).
ORACLES = {
    "momentum_decay_step": (Recipe(momentum=0.9, weight_decay=0.01), "step", 0.05, SMOOTH_BN, "all", "Replay_all",
                            0.1),
    "momentum_decay_last_epoch": (Recipe(momentum=0.9, weight_decay=0.01), "constant", 0.05, SMOOTH_BN, "last",
                                  "Hara", 0.1),
    "cosine": (Recipe(momentum=0.9, weight_decay=5e-4), "cosine", 0.02, SMOOTH_BN, "all", "Replay_all", 0.2),
    "adam_last_epoch": (Recipe("adam", weight_decay=0.01), "constant", 0.02, SMOOTH_BN_NO_PRE_BN_BIAS, "last",
                        "Hara", 0.2),
}


@pytest.fixture(scope="module")
def oracle_runs(tmp_path_factory):
    """{name: run folder} of each oracle's training (3 epochs of 4 steps, augmentation on, Hara's store)."""
    data = tiny_data()
    out = {}
    for name, (recipe, schedule, lr, net, *_) in ORACLES.items():
        d = str(tmp_path_factory.mktemp(name) / "train" / "seed_0")
        train(data, d, seed=0, epochs=3, batch_size=BATCH, lr=lr, keep_step_params=True, progress=False, net=net,
              recipe=recipe, lr_schedule=schedule)
        out[name] = d
    return out


def check_oracle(name, run_dir, bound, fd_bound=None):
    recipe, schedule, lr, net, window, method, h = ORACLES[name]
    data = tiny_data()
    truth = -WeightedRetraining(data, run_dir, net, window).derivative(h)  # the score: minus dL/dw_j
    errors = {}
    for mode in ("exact", "fd"):
        scores = retrace(data, run_dir, batch_size=BATCH, progress=False, net=net, mode=mode, bn_coupling=True,
                         **METHODS[method].retrace)
        rel = np.abs(scores - truth) / np.abs(truth)
        errors[mode] = (rel.max(), np.median(rel))
        assert np.all(np.sign(scores) == np.sign(truth)), mode
    assert errors["exact"][0] < bound and errors["fd"][0] < (fd_bound or bound), errors
    print(name, {m: f"largest {a:.2g}, median {b:.2g}" for m, (a, b) in errors.items()})
    return truth


@pytest.mark.parametrize("name", ["momentum_decay_step", "momentum_decay_last_epoch", "cosine"])
def test_momentum_weight_decay_and_schedules_against_weighted_retrainings(oracle_runs, name):
    """The oracle. Momentum 0.9 with weight decay and a step schedule (Replay_all, every step from theta[0]),
    the same at a constant rate over the last epoch from theta[K-1] and its momentum (Hara, its stored
    theta[t]), and momentum with a cosine schedule (Replay_all): every instance's score equals -dL/dw_j of
    weighted retrainings of the window, within 2e-3 relative, in both retrace modes. Measured on this CPU
    (largest / median relative error, exact and fd): step 3.8e-4 / 4.9e-5 and 8.5e-4 / 7.2e-5."""
    check_oracle(name, oracle_runs[name], 2e-3)


def test_adam_against_weighted_retrainings(oracle_runs):
    """The oracle for Adam with weight decay: Hara's scores over the last epoch, from theta[K-1] and Adam's
    m, s and step counter there, equal -dL/dw_j of weighted retrainings within 2e-3 with the exact retrace
    (measured 6.2e-4, median 2.1e-5). The fd retrace's error is about 1e-4 of the largest score, so at the
    smallest score here (1/190 of the largest) it reaches 8.4e-3 (median 9.5e-5): bound 1e-2.
    The whole training is not checked this way: Adam's first steps are about alpha sign(G) per
    component (bias-corrected m / sqrt(s) = G / |G| at k = 1), so a finite change of an instance's
    weight is far outside the linear range there (measured: up to 10x off for instances of the first
    step, 2e-4 from the third step on)."""
    check_oracle("adam_last_epoch", oracle_runs["adam_last_epoch"], 2e-3, fd_bound=1e-2)


@pytest.mark.parametrize("name", list(ORACLES))
def test_replay_is_hara_byte_for_byte_under_each_recipe(oracle_runs, tmp_path, name):
    """Under every recipe Replay's influence CSV is Hara's byte for byte (both modes), in memory and
    checkpointed at the smallest budget (rows of theta and the optimizer state: the budget counts them),
    and the self-check compares the state too."""
    from sgd_influence.core.replay import minimum_copies
    from sgd_influence.core.params import row_bytes
    recipe, _, _, net, *_ = ORACLES[name]
    run_dir, data = oracle_runs[name], tiny_data()
    for mode in ("fd", "exact"):
        hara = retrace(data, run_dir, "Hara", BATCH, progress=False, net=net, mode=mode)
        expected = csv_bytes(str(tmp_path / "hara.csv"), data, hara)
        row = None
        for budget in (None, "min"):
            reports = []
            if budget == "min":
                budget = minimum_copies(4) * row
            scores = retrace(data, run_dir, "Hara", BATCH, progress=False, net=net, mode=mode, trajectory="replay",
                             replay_memory=budget, on_replay=reports.append)
            assert csv_bytes(str(tmp_path / "replay.csv"), data, scores) == expected, (mode, budget)
            r = reports[0]
            row = r["row_bytes"]
            assert r["final_check"]["equal"]
            state = 4 * sum(v.size for v in trainable_params().values()) * len(recipe.state_keys)
            assert row == row_bytes() + state
            assert r["final_check"]["values"] * 4 == row
        assert r["scheme"] == "checkpointed" and r["copies_held"] == minimum_copies(4) < 4


def csv_bytes(path, data, scores):
    layout.write_influence_csv(path, data.train.ids, data.train.y, scores)
    with open(path, "rb") as f:
        return f.read()


# ------------------------------------------------------------------ the defaults
def test_defaults_are_todays_files_and_arithmetic(tmp_path):
    """The default recipe writes what training wrote before the options (a record of the five arrays, no
    optimizer-state file, Hara's rows of theta alone, cache_size.json's keys), and its training and retrace
    are plain SGD's arithmetic: a re-implementation of the loops as they were (nnabla Sgd, set the rate,
    update; u <- u - eta H u) gives the same parameters and the same scores bit for bit."""
    from sgd_influence.core.graphs import RETRACE_GRAPHS
    from sgd_influence.core.infl import load_final_model, val_gradient
    from sgd_influence.core.params import StepParamsReader
    from sgd_influence.core.train import init_model
    data = tiny_data()
    run_dir = str(tmp_path / "train" / "seed_0")
    train(data, run_dir, seed=0, epochs=2, batch_size=5, lr=0.1, keep_step_params=True, progress=False, net=TINY_BN)
    with np.load(layout.step_record_path(run_dir)) as z:
        assert sorted(z.files) == ["aug_seeds", "epoch", "indices", "lr", "offsets"]
    assert not [f for f in os.listdir(run_dir) if f.startswith("optimizer_state")]
    assert not StepParamsReader(layout.step_params_path(run_dir, 1)).has_state
    assert sorted(layout.read_json(os.path.join(run_dir, "cache_size.json"))) == sorted(
        ["param_count", "param_bytes_float32", "ours_bytes", "replay_bytes", "replay_parts", "step_record_file_bytes",
         "replay_all_bytes", "steps_per_epoch", "hara_bytes", "hara_steps"])
    record = StepRecord.load(layout.step_record_path(run_dir))
    assert record.recipe.plain and set(record.lr) == {0.1}

    # training as it was: plain nnabla Sgd on the recorded batches
    cache = init_model(data, 0, 5, TINY_BN)
    solver = S.Sgd(lr=0.0)
    solver.set_parameters(trainable_params())
    for t in range(record.n_steps):
        idx, seeds = record.batch(t)
        g = cache.get(len(idx))
        x, y = data.train_batch(idx, seeds)
        g.feed(x, y, 1.0 / len(idx))
        g.loss.forward(clear_no_need_grad=True)
        solver.zero_grad()
        g.loss.backward(clear_buffer=True)
        solver.set_learning_rate(float(record.lr[t]))
        solver.update()
    ours = {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}
    load_checkpoint(layout.checkpoint_path(run_dir, 2))
    assert all(np.array_equal(ours[k], v.d) for k, v in nn.get_parameters(grad_only=False).items())

    # the retrace as it was, for Hara (fd): u <- u - eta H u, L += eta / |S| dQ/dw
    scores = retrace(data, run_dir, "Hara", 5, progress=False, net=TINY_BN, mode="fd")
    load_final_model(data, run_dir, 2, 5, TINY_BN)
    u = val_gradient(data, net=TINY_BN)
    params = list(trainable_params().values())
    store = StepParamsReader(layout.step_params_path(run_dir, 1))
    expected, graphs = np.zeros(len(data.train)), {}
    steps = record.steps_of_epoch(1)
    for k, t in enumerate(steps[::-1]):
        store.load(len(steps) - 1 - k)
        idx, seeds = record.batch(t)
        if len(idx) not in graphs:
            graphs[len(idx)] = RETRACE_GRAPHS["fd"](len(idx), data.image_shape, data.n_classes, params, TINY_BN,
                                                    bn_coupling=True)
        hu, ug = graphs[len(idx)].run(*data.train_batch(idx, seeds), u)
        lr = float(record.lr[t])
        expected[idx] += lr / len(idx) * ug
        u = [ui - lr * h for ui, h in zip(u, hu)]
    assert np.array_equal(scores, expected)


# ------------------------------------------------------------------ the drivers
def test_driver_under_momentum_weight_decay_and_cosine(idx_dir, tmp_path):
    """The driver as a user runs it with --momentum 0.9 --weight-decay 5e-4 --lr-schedule cosine: the
    record keeps the recipe and the cosine rates, the optimizer state is kept at K-1 and K and counted in
    Replay's bytes (not in Hara's or Ours'), Replay's CSV is Hara's, Table 1 names the recipe, retraining
    with nothing removed is the training; another --momentum in the same folder is refused in one line."""
    from test_end_to_end import TINY_RUN, run
    out = str(tmp_path / "out")
    recipe = ["--momentum", "0.9", "--weight-decay", "5e-4", "--lr-schedule", "cosine"]
    r = run(["-o", out, "--methods", "Hara", "Replay", "Ours", "Random", "--workers", "2"] + recipe + TINY_RUN, idx_dir)
    assert r.returncode == 0, r.stderr
    run_dir = layout.train_dir(out, 0)
    record = StepRecord.load(layout.step_record_path(run_dir))
    assert record.recipe == Recipe(momentum=0.9, weight_decay=5e-4)
    assert np.allclose(record.lr, learning_rates(0.05, "cosine", list(record.epoch), 2), rtol=0, atol=0)
    states = [layout.optimizer_state_path(run_dir, e) for e in (1, 2)]
    assert all(os.path.exists(p) for p in states) and not os.path.exists(layout.optimizer_state_path(run_dir, 0))
    cache = layout.read_json(os.path.join(run_dir, "cache_size.json"))
    sizes = [os.path.getsize(p) for p in states]
    assert cache["replay_bytes"] == sum(os.path.getsize(layout.checkpoint_path(run_dir, e)) for e in (1, 2)) \
        + cache["replay_parts"]["step_record_last_epoch"] + sum(sizes)
    assert cache["ours_bytes"] == os.path.getsize(layout.checkpoint_path(run_dir, 2))
    assert cache["hara_steps"] == 3 and cache["optimizer"] == {"optimizer": "sgd", "momentum": 0.9,
                                                               "weight_decay": 5e-4}
    hara, replay = (open(layout.influence_path(out, m, 0), "rb").read() for m in ("Hara", "Replay"))
    assert hara == replay
    assert layout.read_json(layout.replay_check_path(out, "Replay", 0))["final_check"]["equal"]
    md = open(os.path.join(out, "summary", "table1_cache.md")).read()
    assert "SGD with momentum 0.9, weight decay 0.0005" in md and "Under each training recipe" in md
    # n = 0: the last epoch retrained from theta[K-1] and its momentum is the training
    from sgd_influence.core.eval import retrain
    from sgd_influence.config.settings import build_parser, data_for
    args = build_parser("", "", ()).parse_args(["-ds", "fashion_mnist", "--data-dir", idx_dir] + TINY_RUN)
    rows = retrain(data_for(args, 0), run_dir, np.array([], np.int64), False, 16)
    trained = {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}
    load_checkpoint(layout.checkpoint_path(run_dir, 2))
    assert all(np.array_equal(trained[k], v.d) for k, v in nn.get_parameters(grad_only=False).items())
    assert len(rows) == 1
    r = run(["-o", out, "--methods", "Hara", "Replay", "Ours", "Random", "--momentum", "0.5", "--weight-decay", "5e-4",
             "--lr-schedule", "cosine"] + TINY_RUN, idx_dir)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "momentum 0.9 -> 0.5" in errors[0], r.stderr


@pytest.mark.parametrize("argv,message", [
    (["--optimizer", "adam", "--momentum", "0.9"], "--momentum applies to --optimizer sgd"),
    (["--adam-beta1", "0.8"], "--adam-beta1 only apply with --optimizer adam"),
    (["--momentum", "1.5"], "must be in [0, 1)"),
    (["--weight-decay", "-1"], "must be a non-negative number"),
    (["--momentum", "0.9", "--methods", "Ours", "Hara_published"], "Hara_published: the published code's retrace"),
])
def test_recipe_options_that_do_not_apply_are_one_error_line(tmp_path, capsys, argv, message):
    from sgd_influence.pipeline.experiment import main
    try:
        code = main(["-o", str(tmp_path / "out")] + argv, "test", "unused", ("Hara",))
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not os.path.exists(tmp_path / "out" / "run.json")


def test_adam_fills_its_defaults_and_warns_once_with_fd(capsys):
    import argparse
    ns = argparse.Namespace(optimizer="adam", momentum=0.0, weight_decay=0.0, lr_schedule="constant",
                            adam_beta1=None, adam_beta2=0.99, adam_eps=None, retrace="fd")
    assert optimizer.checked(ns) == Recipe("adam", beta1=0.9, beta2=0.99, eps=1e-8)
    assert (ns.adam_beta1, ns.adam_eps) == (0.9, 1e-8)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: --retrace fd with --optimizer adam")
    ns.retrace = "exact"
    optimizer.checked(ns)
    assert capsys.readouterr().err == ""


def test_a_folder_from_before_the_options_resumes_at_the_defaults(tmp_path):
    """run.json without the recipe settings counts as plain SGD: resumed with the defaults, refused with momentum."""
    from sgd_influence.base.errors import UserError
    from sgd_influence.config.settings import build_parser
    from sgd_influence.pipeline.experiment import check_or_reset_output
    out = str(tmp_path / "out")
    parser = build_parser("", "out", ["Hara", "Random"])
    settings = vars(parser.parse_args(["-o", out]))
    for k in optimizer.SETTING_DEFAULTS:
        del settings[k]
    layout.write_json(os.path.join(out, "run.json"), {"settings": settings})
    check_or_reset_output(parser.parse_args(["-o", out]))
    with pytest.raises(UserError, match="momentum 0.0 -> 0.9"):
        check_or_reset_output(parser.parse_args(["-o", out, "--momentum", "0.9"]))


# ---------------------------------------------------------- replays that restart
@pytest.mark.parametrize("recipe", [Recipe(momentum=0.9, weight_decay=5e-4), Recipe("adam", weight_decay=5e-4)],
                         ids=["momentum", "adam"])
def test_counterfactual_replays_restart_with_the_optimizer_state(tmp_path, recipe):
    """validate's single-instance counterfactuals and the LDS's paired replays start mid-epoch from stored
    rows: with the optimizer state (Adam's Hara rows; the LDS's own stores) or, where Hara's rows lack it
    (momentum), from the epoch's start and its stored state. Either way: nothing removed replays theta[T]
    bit for bit, and each removal equals the whole epoch replayed without it."""
    from sgd_influence.checks import lds
    from sgd_influence.checks.validate import Counterfactuals
    from sgd_influence.core.graphs import flat_trainable
    data = tiny_data()
    run_dir = str(tmp_path / "train" / "seed_0")
    train(data, run_dir, seed=0, epochs=2, batch_size=8, lr=0.01, keep_step_params=True, progress=False,
          net=TINY_BN, recipe=recipe, lr_schedule="cosine")
    load_checkpoint(layout.checkpoint_path(run_dir, 2))
    final = flat_trainable()
    cf = Counterfactuals(data, run_dir, 8, TINY_BN)
    assert np.array_equal(cf.theta, final)
    j = int(np.flatnonzero(cf.row == 3)[0])  # an instance of the epoch's last step
    cf.replay_without(j)
    shortcut = flat_trainable()
    sgd = trainer_at(data, run_dir, cf.record, 1, 8, TINY_BN)
    keep = np.ones(len(data.train), bool)
    keep[j] = False
    replay_steps(sgd, cf.record, cf.steps, keep)
    assert np.array_equal(shortcut, flat_trainable()) and not np.array_equal(shortcut, final)
    loss_without = cf.val_loss_now()

    store = str(tmp_path / "lds")
    rep = lds.PairedReplays(data, run_dir, store, 8, seed=0, net=TINY_BN)
    base = rep.baseline(0)
    assert base == cf.val_loss  # replay 0 is the training's last epoch
    assert rep.truth(np.array([], np.int64), 0) == 0.0
    assert rep.truth(np.array([j]), 0) == loss_without - cf.val_loss  # restarted at j's step from the LDS's store


def test_table1_by_recipe_counts_the_optimizer_state_where_each_method_keeps_it():
    """Paper scale (MNIST, T = 1,563, K = 20): momentum adds v to Replay twice (K-1 and K) and to Replay_all once,
    nothing to Hara or Ours; Adam adds m and s to every Hara row and to Ours, twice each to Replay."""
    from sgd_influence.analysis.table1 import BY_RECIPE, by_recipe, model_param_bytes
    got = dict(by_recipe())
    plain, mom, adam = (got[label] for label, _ in BY_RECIPE)
    v = 4 * model_param_bytes(1, trainable=True)[0]
    assert v == 4 * 307370
    assert mom["hara"] == plain["hara"] == 4 * 307818 * 1563 and mom["ours"] == plain["ours"]
    assert mom["replay"] == plain["replay"] + 2 * v and mom["replay_all"] == plain["replay_all"] + v
    assert adam["hara"] == plain["hara"] + 2 * v * 1563 and adam["all"] == 20 * adam["hara"]
    assert adam["ours"] == plain["ours"] + 2 * v and adam["replay"] == plain["replay"] + 4 * v
    assert adam["replay_all"] == plain["replay_all"] + 2 * v
