"""Numerical checks of the retrace against exact counterfactuals and finite differences."""
import os

import numpy as np
import nnabla as nn
import pytest

from conftest import TINY, TINY_BN
import functools

import nnabla.functions as F

from models import Ops
from sgd_influence.core.graphs import (BranchRecorder, BranchReplayer, FDRetraceGraph, LossGraph, RetraceGraph, flat,
                                  flat_trainable, trainable_params)
from sgd_influence.core.infl import retrace, val_gradient
from sgd_influence.base.errors import UserError
from sgd_influence.base.metrics import spearman
from sgd_influence.core.params import StepParamsReader, load_checkpoint
from sgd_influence.base.layout import checkpoint_path, step_params_path, step_record_path
from sgd_influence.core.step_record import StepRecord
from sgd_influence.core.train import SGD, init_model, train


def final_state(data, run_dir, epochs, net):
    """theta[T] and u (the validation gradient at theta[T]) as flat float64 vectors."""
    init_model(data, 0, 8, net)
    load_checkpoint(checkpoint_path(run_dir, epochs))
    u = flat(val_gradient(data, net=net))
    return flat_trainable(), u


@pytest.mark.parametrize("mode", ["exact", "fd"])
def test_last_step_estimate_equals_exact_leave_one_out(data, tmp_path, mode):
    """For j in the final batch, Hara's estimate is exact (no batch-norm coupling)."""
    run = str(tmp_path)
    train(data, run, seed=0, epochs=2, batch_size=8, lr=0.1, keep_step_params=True, progress=False, net=TINY)
    influence = retrace(data, run, "Hara", 8, progress=False, net=TINY, mode=mode)
    record = StepRecord.load(step_record_path(run))
    theta_T, u = final_state(data, run, 2, TINY)
    last = record.n_steps - 1
    stored = StepParamsReader(step_params_path(run, 1))
    cache = init_model(data, 0, 8, TINY)
    sgd = SGD(cache, data)
    for j in record.batch(last)[0]:
        stored.load(len(stored) - 1)  # theta[T-1]
        keep = np.ones(len(data.train), bool)
        keep[j] = False
        sgd.replay(record, last, keep)
        true = float(u @ (flat_trainable() - theta_T))
        assert abs(influence[j] - true) <= 1e-3 * abs(true), (j, influence[j], true)


def leave_one_out(data, run, record, net):
    """<u, theta_{-j}[T] - theta[T]> for every j, by retraining the last epoch without j."""
    theta_T, u = final_state(data, run, record.n_epochs, net)
    cache = init_model(data, 0, 8, net)
    sgd = SGD(cache, data)
    truth = np.zeros(len(data.train))
    for j in range(len(data.train)):
        load_checkpoint(checkpoint_path(run, record.n_epochs - 1))
        keep = np.ones(len(data.train), bool)
        keep[j] = False
        for t in record.steps_of_epoch(record.n_epochs - 1):
            sgd.replay(record, t, keep)
        truth[j] = u @ (flat_trainable() - theta_T)
    return truth


def test_hara_over_an_epoch_ranks_like_actual_leave_one_out(data, tmp_path):
    run = str(tmp_path)
    train(data, run, seed=1, epochs=2, batch_size=8, lr=0.002, keep_step_params=True, progress=False, net=TINY)
    record = StepRecord.load(step_record_path(run))
    truth = leave_one_out(data, run, record, TINY)
    hara = retrace(data, run, "Hara", 8, progress=False, net=TINY)
    ours = retrace(data, run, "Ours", 8, progress=False, net=TINY)
    assert len(truth) >= 20
    assert spearman(hara, truth) > 0.9
    assert spearman(ours, truth) > 0.8


def move(params, theta, u, eps):
    """Set the parameters to theta + eps * u."""
    for p, t, v in zip(params, theta, u):
        p.d = t + eps * v


def random_point(data, batch, net, seed=0):
    cache = init_model(data, seed, len(batch), net)
    params = list(trainable_params().values())
    rng = np.random.default_rng(seed)
    u = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
    x, y = data.train_batch(batch, np.arange(len(batch)))
    return cache, params, u, x, y


@pytest.mark.parametrize("net,rtol", [(TINY, 5e-3), (TINY_BN, 5e-2)])
def test_hessian_vector_product_matches_finite_difference(data, net, rtol):
    """H u from double backward vs a central difference of gradients.

    The step is tiny so that no ReLU mask or max-pool choice flips (a flip
    makes the gradient jump and the quotient meaningless); float32 noise then
    limits the agreement, more so through batch norm's division by the batch std.
    """
    batch = np.arange(8)
    cache, params, u, x, y = random_point(data, batch, net)
    hu, _ = RetraceGraph(8, data.image_shape, data.n_classes, params, net).run(x, y, u)
    g = cache.get(8)
    theta = [p.d.copy() for p in params]

    def grad_at(eps):
        move(params, theta, u, eps)
        for p in params:
            p.grad.zero()
        g.feed(x, y, 1.0 / 8)
        g.loss.forward()
        g.loss.backward()
        return np.concatenate([p.g.ravel() for p in params]).astype(np.float64)

    eps = 1e-5
    fd = (grad_at(eps) - grad_at(-eps)) / (2 * eps)
    hu = np.concatenate([h.ravel() for h in hu])
    assert np.linalg.norm(hu - fd) <= rtol * np.linalg.norm(fd)


def test_per_sample_products_match_directional_derivative(data):
    """w's gradient gives <u, grad l_j> for every j (batch statistics included)."""
    batch = np.arange(8)
    cache, params, u, x, y = random_point(data, batch, TINY_BN, seed=3)
    _, ug = RetraceGraph(8, data.image_shape, data.n_classes, params, TINY_BN).run(x, y, u)
    g = cache.get(8)
    theta = [p.d.copy() for p in params]

    def losses_at(eps):
        move(params, theta, u, eps)
        g.feed(x, y, 1.0 / 8)
        g.loss.forward()
        return g.per_sample.d.astype(np.float64).copy()

    eps = 1e-5  # small enough that no ReLU / max-pool choice flips
    fd = (losses_at(eps) - losses_at(-eps)) / (2 * eps)
    # float32 losses limit the quotient to about 1e-2 of the largest product.
    assert np.allclose(ug, fd, rtol=2e-2, atol=1e-2 * np.abs(fd).max())


def test_stored_step_parameters_are_the_ones_used_at_each_step(data, tmp_path):
    run = str(tmp_path)
    train(data, run, seed=0, epochs=2, batch_size=8, lr=0.1, keep_step_params=True, progress=False, net=TINY_BN)
    record = StepRecord.load(step_record_path(run))
    stored = StepParamsReader(step_params_path(run, 1))
    steps = record.steps_of_epoch(1)
    assert len(stored) == len(steps)
    cache = init_model(data, 0, 8, TINY_BN)
    load_checkpoint(checkpoint_path(run, 1))
    sgd = SGD(cache, data)
    all_params = nn.get_parameters(grad_only=False)
    for k, t in enumerate(steps):
        row = stored.arrays(k)
        for name, v in all_params.items():
            assert np.array_equal(row[name], v.d), (k, name)
        if k + 1 < len(steps):
            nxt = stored.arrays(k + 1)
            assert not np.array_equal(nxt["fc/affine/W"], row["fc/affine/W"])
        sgd.replay(record, t)
    # Cache size is exactly |theta| x T float32.
    n = sum(v.size for v in all_params.values())
    path = step_params_path(run, 1)
    assert os.path.getsize(path) == 4 * n * len(steps)
    with open(path, "r+b") as f:  # a damaged store is named, not half-read
        f.truncate(os.path.getsize(path) - 4)
    with pytest.raises(UserError, match="step_params_epoch_1.f32 is truncated"):
        StepParamsReader(path)


def test_retraining_with_nothing_removed_reproduces_training(data, tmp_path):
    from sgd_influence.core.eval import retrain
    run = str(tmp_path)
    train(data, run, seed=0, epochs=2, batch_size=8, lr=0.1, keep_step_params=False, progress=False, net=TINY_BN)
    init_model(data, 0, 8, TINY_BN)
    load_checkpoint(checkpoint_path(run, 2))
    trained = {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}
    for retrain_all in (False, True):
        rows = retrain(data, run, np.array([], np.int64), retrain_all, 8, net=TINY_BN)
        assert len(rows) == (2 if retrain_all else 1)
        for k, v in nn.get_parameters(grad_only=False).items():
            assert np.array_equal(v.d, trained[k]), k


def rel_err(a, b):
    a, b = (np.concatenate([v.ravel() for v in x]) if isinstance(x, list) else x for x in (a, b))
    return np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)


@pytest.mark.parametrize("net,coupling", [(TINY, False), (TINY_BN, False), (TINY_BN, True)])
def test_finite_difference_step_matches_double_backward(data, net, coupling):
    """FDRetraceGraph's H u and dQ/dw_i against the exact double backward, and theta restored."""
    for seed in range(3):
        _, params, u, x, y = random_point(data, np.arange(8), net, seed)
        theta = [p.d.copy() for p in params]
        hu, ug = RetraceGraph(8, data.image_shape, data.n_classes, params, net, bn_coupling=coupling).run(x, y, u)
        hu_fd, ug_fd = FDRetraceGraph(8, data.image_shape, data.n_classes, params, net,
                                      bn_coupling=coupling).run(x, y, u)
        assert rel_err(hu_fd, hu) < 1e-2, seed
        assert rel_err(ug_fd, ug) < 1e-2, seed
        assert all(np.array_equal(p.d, t) for p, t in zip(params, theta))


class MaskOps(Ops):
    """Reference for pinned branches: ReLU = h * mask, max-pool = sum-pool(h * one-hot)."""

    def __init__(self):
        self.masks = []

    def relu(self, h):
        self.masks.append(nn.Variable(h.shape))
        return h * self.masks[-1]

    def max_pool(self, h, kernel):
        self.masks.append(nn.Variable(h.shape))
        return F.sum_pooling(h * self.masks[-1], kernel)

    def set_from(self, recorder):
        for (h, pooled), m in zip(recorder.kept, self.masks):
            if pooled is None:
                m.d = h.d > 0
                continue
            b, c, hh, ww = h.shape
            top = h.d.reshape(b, c, hh // 2, 2, ww // 2, 2) == pooled.d[:, :, :, None, :, None]
            m.d = (top / top.sum(axis=(3, 5), keepdims=True)).reshape(h.shape)


def test_pinned_network_stays_on_the_recorded_branches(data):
    """Offsets pin every ReLU and max-pool: far enough from theta that the ordinary
    network switches branches, the pinned one equals the masked reference."""
    _, params, u, x, y = random_point(data, np.arange(8), TINY_BN, seed=2)
    recorder, replayer, masks = BranchRecorder(), BranchReplayer(), MaskOps()
    graphs = [LossGraph(8, data.image_shape, data.n_classes, False, net=functools.partial(TINY_BN, ops=o))
              for o in (recorder, replayer, masks)]
    for g in graphs:
        g.feed(x, y, 1.0 / 8)
        g.per_sample.persistent = True
    graphs[0].loss.forward()
    replayer.pin_to(recorder)
    masks.set_from(recorder)
    signs_at_theta = [h.d > 0 for h, _ in recorder.kept]
    theta = [p.d.copy() for p in params]
    for step in (0.0, 3e-3):  # at 3e-3 dozens of ReLUs switch, |h - h_r| stays below k
        move(params, theta, u, step)
        losses = []
        for g in graphs:
            g.loss.forward()
            losses.append(g.per_sample.d.copy())
        pinned, reference = losses[1], losses[2]
        assert np.allclose(pinned, reference, rtol=1e-5, atol=1e-5), step
    flips = sum(int((s != (h.d > 0)).sum()) for s, (h, _) in zip(signs_at_theta, recorder.kept))
    assert flips > 0  # the ordinary network did switch branches at the moved point
    assert not np.allclose(losses[0], losses[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["Hara", "Ours"])
def test_finite_difference_retrace_ranks_like_exact(data, tmp_path, method):
    """The default retrace (finite differences) against the exact double backward, with the
    batch-norm coupling on and off."""
    run = str(tmp_path)
    train(data, run, seed=0, epochs=2, batch_size=8, lr=0.1, keep_step_params=True, progress=False, net=TINY_BN)
    scores = {}
    for coupling in (True, False):
        exact = retrace(data, run, method, 8, progress=False, net=TINY_BN, mode="exact", bn_coupling=coupling)
        fd = retrace(data, run, method, 8, progress=False, net=TINY_BN, mode="fd", bn_coupling=coupling)
        assert spearman(fd, exact) >= 0.999, coupling
        assert rel_err(fd, exact) < 1e-2, coupling
        scores[coupling] = exact
    assert rel_err(scores[False], scores[True]) > 1e-2  # the coupling changes the scores


def test_cli_retrace_choices_are_the_implemented_modes():
    from sgd_influence.config.settings import build_parser
    from sgd_influence.core.infl import RETRACE_MODES
    action = next(a for a in build_parser("", "out", ["Hara"])._actions if a.dest == "retrace")
    assert set(action.choices) == set(RETRACE_MODES) and action.default == "fd"


def test_bn_coupling_option_reaches_the_retrace(data, tmp_path, monkeypatch):
    """--bn-coupling on|off (default on) becomes retrace(bn_coupling=...) in the drivers and in
    validate_influence, and is a per-method setting like --retrace."""
    import inspect
    from sgd_influence.pipeline import experiment
    from sgd_influence.config import settings
    from sgd_influence.checks import validate
    seen = []
    fake = lambda *a, **k: seen.append(k["bn_coupling"]) or np.zeros(len(data.train))  # noqa: E731
    monkeypatch.setattr(experiment, "retrace", fake)
    monkeypatch.setattr(experiment, "data_for", lambda args, seed: data)
    monkeypatch.setattr(validate, "retrace", fake)
    parser = settings.build_parser("", "out", ["Hara"])
    assert parser.get_default("bn_coupling") == "on"
    assert inspect.signature(retrace).parameters["bn_coupling"].default is True  # the unpatched one
    for value in ("on", "off"):
        args = parser.parse_args(["-o", str(tmp_path / value), "--bn-coupling", value])
        settings.fit_to_data(args, data)  # as the commands do before any unit: --net's default for the data
        experiment.retrace_unit(args, "TracIn_last", 0, progress=False)
        vargs = validate.build_parser().parse_args(["-o", str(tmp_path), "--bn-coupling", value])
        settings.fit_to_data(vargs, data)
        validate.estimate("Hara", data, str(tmp_path), vargs, TINY, progress=False)
    assert seen == [True, True, False, False]
    assert validate.build_parser().get_default("bn_coupling") == "on"
    assert all("bn_coupling" in settings.METHOD_SETTINGS[m] for m in ("Hara", "Ours", "TracIn_last"))
    assert "bn_coupling" in validate.VALIDATION_SETTINGS


def test_pinned_max_pool_on_odd_sizes():
    """A 2x2 max-pool of a 7x5 map (the last row and column lie outside every window):
    pinned, a small move keeps the recorded picks where the ordinary pool switches."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 3, 7, 5)).astype(np.float32)
    recorder, replayer = BranchRecorder(), BranchReplayer()
    h_rec, h_rep = nn.Variable(z.shape), nn.Variable(z.shape)
    recorder.max_pool(h_rec, (2, 2))
    pinned = replayer.max_pool(h_rep, (2, 2))
    h_rec.d = z
    recorder.kept[0][1].forward()
    replayer.pin_to(recorder)
    windows = z[:, :, :6, :4].reshape(2, 3, 3, 2, 2, 2)
    pick = windows.reshape(2, 3, 3, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 3, 3, 2, 4).argmax(-1)
    delta = rng.normal(size=z.shape).astype(np.float32) * 0.3
    h_rep.d = z + delta
    pinned.forward()
    moved = (z + delta)[:, :, :6, :4].reshape(2, 3, 3, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 3, 3, 2, 4)
    expected = np.take_along_axis(moved, pick[..., None], -1)[..., 0]
    assert np.allclose(pinned.d, expected, atol=1e-5)
    assert (moved.argmax(-1) != pick).any()  # the ordinary pool would have switched somewhere


def test_changing_the_retrace_is_refused_only_once_retrace_results_exist(tmp_path):
    """--retrace changes Hara/Ours/TracIn_last scores only: a folder without them takes the
    new value (the training is reused); with them, the change is refused and named."""
    from sgd_influence.base import layout
    from sgd_influence.base.errors import UserError
    from sgd_influence.pipeline.experiment import check_or_reset_output
    from sgd_influence.config.settings import build_parser
    out = str(tmp_path / "out")
    parser = build_parser("", "out", ["Hara", "Ours", "Random"])
    old = parser.parse_args(["-o", out, "--retrace", "exact"])
    os.makedirs(os.path.join(out, "influence", "Random"))
    layout.write_json(os.path.join(out, "run.json"), {"settings": vars(old)})
    new = parser.parse_args(["-o", out])
    check_or_reset_output(new)  # only Random has results: allowed
    os.makedirs(os.path.join(out, "influence", "Ours"))
    open(os.path.join(out, "influence", "Ours", "influence_seed_0.csv"), "w").close()
    with pytest.raises(UserError, match="retrace 'exact' -> 'fd'"):
        check_or_reset_output(new)
    check_or_reset_output(old)  # the same settings resume


def test_results_from_before_bn_coupling_count_as_off(tmp_path):
    """A folder whose run.json predates --bn-coupling holds scores made without the coupling:
    resuming it with the default (on) is refused once retrace results exist; off resumes."""
    from sgd_influence.base import layout
    from sgd_influence.base.errors import UserError
    from sgd_influence.pipeline.experiment import check_or_reset_output
    from sgd_influence.config.settings import build_parser
    out = str(tmp_path / "out")
    parser = build_parser("", "out", ["Hara", "Ours", "Random"])
    settings = vars(parser.parse_args(["-o", out]))
    del settings["bn_coupling"]
    layout.write_json(os.path.join(out, "run.json"), {"settings": settings})
    check_or_reset_output(parser.parse_args(["-o", out]))  # no retrace results yet: allowed
    os.makedirs(os.path.join(out, "influence", "Hara"))
    open(os.path.join(out, "influence", "Hara", "influence_hara_0.csv"), "w").close()
    with pytest.raises(UserError, match="bn_coupling 'off' -> 'on'"):
        check_or_reset_output(parser.parse_args(["-o", out]))
    check_or_reset_output(parser.parse_args(["-o", out, "--bn-coupling", "off"]))


def test_device_pins_equal_the_host_pins(data):
    """graphs.DevicePins (the fd pins computed where the activations live, for GPUs) gives the
    offsets of BranchReplayer.pin_to: the same branch masks, k within float32 rounding."""
    from sgd_influence.core.graphs import DevicePins
    for net in (TINY, TINY_BN):
        init_model(data, 0, 8, net)
        rec, rep = BranchRecorder(), BranchReplayer()
        recorded = LossGraph(8, data.image_shape, data.n_classes, False, net=net, ops=rec)
        LossGraph(8, data.image_shape, data.n_classes, False, net=net, ops=rep)
        pins = DevicePins(rec, rep)
        x, y = data.train_batch(np.arange(8), np.full(8, -1))
        recorded.feed(x, y, 1 / 8)
        recorded.loss.forward(clear_buffer=True)
        pins.forward()
        device = [(c.d.copy(), e.d.copy()) for c, e in rep.offsets]
        rep.pin_to(rec)
        for (c1, e1), (c2, e2) in zip(device, [(c.d, e.d) for c, e in rep.offsets]):
            assert np.array_equal(np.sign(c1), np.sign(c2)) and np.array_equal(np.sign(e1), np.sign(e2))
            np.testing.assert_allclose(c1, c2, rtol=1e-6)
            np.testing.assert_allclose(e1, e2, rtol=1e-6)


@pytest.mark.parametrize("mode", ["exact", "fd"])
def test_resident_retrace_matches_the_host_path(data, tmp_path, mode):
    """retrace(resident=True) keeps u, H u, theta and the pins as device arrays (the GPU default);
    on the CPU it must give the host path's scores: exactly for exact, to fd's rounding for fd."""
    run = str(tmp_path)
    train(data, run, seed=0, epochs=2, batch_size=8, lr=0.05, keep_step_params=True, progress=False, net=TINY_BN)
    for method in ("Hara", "Ours"):
        host = retrace(data, run, method, 8, progress=False, net=TINY_BN, mode=mode, resident=False)
        device = retrace(data, run, method, 8, progress=False, net=TINY_BN, mode=mode, resident=True)
        if mode == "exact":
            assert np.array_equal(host, device)
        else:
            assert np.linalg.norm(device - host) <= 1e-3 * np.linalg.norm(host)
            assert spearman(device, host) > 0.9999
