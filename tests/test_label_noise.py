"""Label noise, the Loss and TracIn_last control methods, and the noise-detection metrics."""
import csv
import os

import numpy as np
import nnabla as nn
import nnabla.parametric_functions as PF
import pytest

from conftest import TINY, tiny_data
from sgd_influence.core.controls import negated_training_loss
from sgd_influence.base.errors import UserError
from sgd_influence.core.graphs import LossGraph, trainable_params
from sgd_influence.core.infl import load_final_model, retrace, val_gradient
from sgd_influence.config.noise import detection, flip_labels, with_label_noise, write_flipped_csv, write_noise_detection
from sgd_influence.base.layout import influence_path, noise_path, step_record_path, write_influence_csv
from sgd_influence.core.step_record import StepRecord
from sgd_influence.core.train import train
from test_end_to_end import TINY_RUN, run


# ------------------------------------------------------------------- flipping
@pytest.mark.parametrize("n,c,p", [(2000, 10, 0.1), (48, 3, 0.25), (7, 2, 0.5), (10, 10, 0.05)])
def test_flip_exact_count_never_same_class_validation_untouched(n, c, p):
    y = np.random.default_rng(1).integers(0, c, n)
    noisy, idx = flip_labels(y, c, p, seed=4)
    assert len(idx) == round(p * n) == len(set(idx.tolist()))
    changed = np.flatnonzero(noisy != y)
    assert np.array_equal(changed, idx)  # exactly the listed ones changed, each to another class
    assert noisy.min() >= 0 and noisy.max() < c
    assert np.array_equal(y, np.random.default_rng(1).integers(0, c, n))  # input not modified


def test_flip_is_seeded_and_uniform_over_other_classes():
    y = np.zeros(20000, np.int64)
    a, ia = flip_labels(y, 10, 0.3, seed=0)
    b, ib = flip_labels(y, 10, 0.3, seed=0)
    c, ic = flip_labels(y, 10, 0.3, seed=1)
    assert np.array_equal(a, b) and np.array_equal(ia, ib)
    assert not np.array_equal(ia, ic)
    counts = np.bincount(a[ia], minlength=10)
    assert counts[0] == 0 and np.all(np.abs(counts[1:] - 6000 / 9) < 5 * np.sqrt(6000 / 9))
    with pytest.raises(UserError):
        flip_labels(y, 1, 0.1, seed=0)


def test_only_training_labels_flip_and_the_record_lists_them(tmp_path):
    clean = tiny_data(n_train=40)
    noisy = with_label_noise(clean, 0.25, seed=7)
    assert np.array_equal(noisy.val.y, clean.val.y) and np.array_equal(noisy.test.y, clean.test.y)
    assert np.array_equal(noisy.train.x, clean.train.x) and (noisy.train.y != clean.train.y).sum() == 10
    path = str(tmp_path / "flipped_7.csv")
    write_flipped_csv(path, noisy, 0.25, seed=7)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["datasource_index"]) for r in rows] == np.flatnonzero(noisy.train.y != clean.train.y).tolist()
    for r in rows:
        i = int(r["datasource_index"])
        assert r["x:image"] == clean.train.ids[i]
        assert int(r["original_label"]) == clean.train.y[i] and int(r["noisy_label"]) == noisy.train.y[i]


# ------------------------------------------------------------------ detection
def test_detection_metrics_on_a_hand_made_example():
    # 4 instances, 1 and 3 flipped; removal order 1, 0, 3, 2.
    rows, auc = detection(np.array([1, 0, 3, 2]), np.array([1, 3]), [1, 2, 3, 4, 9])
    assert rows == [(1, 1, 1.0, 0.5), (2, 1, 0.5, 0.5), (3, 2, 2 / 3, 1.0), (4, 2, 0.5, 1.0)]
    # Trapezoids through (0,0) (.25,.5) (.5,.5) (.75,1) (1,1).
    assert auc == pytest.approx(0.625, abs=1e-12)
    _, perfect = detection(np.array([1, 3, 0, 2]), np.array([1, 3]), [])
    _, worst = detection(np.array([0, 2, 1, 3]), np.array([1, 3]), [])
    assert perfect == pytest.approx(1 - 2 / 8) and worst == pytest.approx(2 / 8)


def test_noise_detection_csv_per_seed_and_mean(tmp_path):
    out = str(tmp_path)
    ids, y = np.array([f"i{k}" for k in range(4)]), np.zeros(4, np.int64)
    flipped = {0: [1, 3], 1: [0]}
    scores = {0: [-2.0, 0.0, -1.0, 1.0],  # order 0, 2, 1, 3
              1: [-3.0, 0.0, 1.0, 2.0]}  # order 0, 1, 2, 3
    for s in (0, 1):
        os.makedirs(os.path.dirname(noise_path(out, s)), exist_ok=True)
        with open(noise_path(out, s), "w") as f:
            f.write("datasource_index,x:image,original_label,noisy_label\n")
            f.writelines(f"{i},i{i},0,1\n" for i in flipped[s])
        write_influence_csv(influence_path(out, "Loss", s), ids, y, np.array(scores[s]))
    write_influence_csv(influence_path(out, "Loss", 2), ids, y, np.zeros(4))  # no flipped_2.csv: left out
    written = write_noise_detection(out, {"Loss": {s: influence_path(out, "Loss", s) for s in (0, 1, 2)}}, out, [1, 2])
    assert written == ["summary/noise_detection.csv", "fig/noise_detection.png"]
    with open(os.path.join(out, "summary", "noise_detection.csv"), newline="") as f:
        rows = [(r["method"], r["seed"], int(r["n_removed"]), float(r["precision"]), float(r["recall"]),
                 float(r["auc"])) for r in csv.DictReader(f)]
    # seed 0: hits 0,0,1,1 -> recall 0,0,.5,.5 then 1; AUC (0+0+.5+1+1.5... ) by trapezoids:
    # points 0,0,0,.5,1 at x=0,.25,.5,.75,1 -> .25*(0+0+.25+.75) = .25
    # seed 1: hits 1,1,1,1 -> recall 0,1,1,1,1 -> .25*(.5+1+1+1) = .875
    assert rows == [("Loss", "0", 1, 0.0, 0.0, 0.25), ("Loss", "0", 2, 0.0, 0.0, 0.25),
                    ("Loss", "1", 1, 1.0, 1.0, 0.875), ("Loss", "1", 2, 0.5, 1.0, 0.875),
                    ("Loss", "mean", 1, 0.5, 0.5, 0.5625), ("Loss", "mean", 2, 0.25, 0.5, 0.5625)]
    assert os.path.getsize(os.path.join(out, "fig", "noise_detection.png")) > 0


# ------------------------------------------------------------- control methods
def test_tracin_last_is_the_fixed_u_sum_over_the_last_epoch(tmp_path):
    data, run_dir = tiny_data(), str(tmp_path)
    train(data, run_dir, seed=0, epochs=2, batch_size=8, lr=0.1, keep_step_params=False, progress=False, net=TINY)
    tracin = retrace(data, run_dir, "Ours", 8, progress=False, net=TINY, retrace_u=False, mode="exact")
    ours = retrace(data, run_dir, "Ours", 8, progress=False, net=TINY)
    # By hand: per-sample gradients (batch of one; no batch norm, so no batch coupling) at theta[T].
    load_final_model(data, run_dir, 2, 8, TINY)
    u = np.concatenate([g.ravel() for g in val_gradient(data, net=TINY)]).astype(np.float64)
    params = list(trainable_params().values())
    g1 = LossGraph(1, data.image_shape, data.n_classes, test=False, net=TINY)
    record = StepRecord.load(step_record_path(run_dir))
    expected = np.zeros(len(data.train))
    for t in record.steps_of_epoch(1):
        idx, seeds = record.batch(t)
        for j, s in zip(idx, seeds):
            x, y = data.train_batch(np.array([j]), np.array([s]))
            g1.feed(x, y, 1.0)
            for p in params:
                p.grad.zero()
            g1.loss.forward()
            g1.loss.backward()
            gj = np.concatenate([p.g.ravel() for p in params]).astype(np.float64)
            expected[j] += record.lr[t] / len(idx) * (u @ gj)
    assert np.allclose(tracin, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    assert not np.allclose(ours, expected, rtol=1e-3)  # the u retrace does change the scores


def softmax_regression(x, n_classes, test=False):
    return PF.affine(x, n_classes, name="fc")


def test_loss_scores_are_the_negated_per_sample_losses():
    data = tiny_data()
    nn.clear_parameters()
    nn.random.prng = np.random.RandomState(0)
    scores = negated_training_loss(data, batch_size=13, net=softmax_regression)  # chunks of 13, 13, 6
    W, b = [p.d.astype(np.float64) for p in trainable_params().values()]
    logits = data.normalize(data.train.x).reshape(len(data.train), -1).astype(np.float64) @ W + b
    m = logits.max(1, keepdims=True)
    log_p = logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))
    assert np.allclose(scores, log_p[np.arange(len(data.train)), data.train.y], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ end to end
def test_label_noise_end_to_end(idx_dir, tmp_path):
    out = str(tmp_path / "o")
    r = run(["-o", out, "--label-noise", "0.25", "--methods", "Loss", "TracIn_last", "Random"] + TINY_RUN, idx_dir)
    assert r.returncode == 0, r.stderr
    with open(noise_path(out, 0), newline="") as f:
        flipped = {int(row["datasource_index"]): row for row in csv.DictReader(f)}
    assert len(flipped) == 12  # round(0.25 * 48)
    with open(influence_path(out, "Loss", 0), newline="") as f:
        labels = {int(row["datasource_index"]): int(row["y:label"]) for row in csv.DictReader(f)}
    assert len(labels) == 48
    for i, row in flipped.items():  # the influence CSV shows the noisy label
        assert labels[i] == int(row["noisy_label"]) != int(row["original_label"])
    with open(os.path.join(out, "summary", "noise_detection.csv")) as f:
        lines = f.read().splitlines()
    assert lines[0] == "method,seed,n_removed,n_flipped,flipped_removed,precision,recall,auc"
    assert {line.split(",")[0] for line in lines[1:]} == {"Loss", "TracIn_last", "Random"}
    assert os.path.exists(os.path.join(out, "fig", "noise_detection.png"))
    for m in ("Loss", "TracIn_last"):
        assert os.path.exists(os.path.join(out, "score", m, "score_delete_worst_4_seed_0.csv"))
    # Another noise level into the same folder is refused.
    r = run(["-o", out, "--label-noise", "0.1", "--methods", "Loss"] + TINY_RUN, idx_dir)
    assert r.returncode == 2 and "label_noise 0.25 -> 0.1" in r.stderr
