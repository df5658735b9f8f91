"""Hara_published and Ours_published against the published code's own output (tools/published_oracle.py).

tests/data/published_oracle/ holds a tiny training of this project (48 Fashion-MNIST images, 2
epochs of 6 steps of 8 with augmentation, the six-conv layout at widths 4/8/8) and what the
published `infl_sgd` wrote for it, with its `save_all_params` cache in bundles of 4 steps
(oracle.json says how it was made; docs/method.md how to regenerate it).
"""
import functools
import json
import os
import shutil

import numpy as np
import pytest

from conftest import TINY_BN, tiny_data
from datasets import Data, Split
from models import cnn
from sgd_influence.base.methods import DRIVER_METHODS, METHODS, needs_step_params
from sgd_influence.core.infl import retrace
from sgd_influence.core.published import BUNDLE_SIZE, BundledStepParams, bundle_end
from sgd_influence.core.train import train

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "published_oracle")
# The published CSV's influence values against ours: float32 arithmetic in both, summed in other orders
# (the published code: float32 sums per parameter, its validation gradient in chunks of 64 of a summed loss).
# Measured: 1.5e-6 (Hara_published) and 4.1e-7 (Ours_published) of the largest |score|.
RTOL = 1e-5
STEMS = {"Hara_published": "hara", "Ours_published": "ours"}


def oracle():
    with open(os.path.join(HERE, "oracle.json")) as f:
        return json.load(f)


def oracle_data() -> Data:
    z = np.load(os.path.join(HERE, "data.npz"), allow_pickle=False)
    val = Split(z["val_x"], z["val_y"], z["val_ids"])
    return Data("fashion_mnist", Split(z["train_x"], z["train_y"], z["train_ids"]), val, val,
                int(z["n_classes"]), z["mean"], z["std"])


def published_csv(stem: str, n: int):
    """(scores by training index, the CSV's order of training indices)."""
    rows = [line.strip().rsplit(",", 2) for line in open(os.path.join(HERE, f"influence_{stem}.csv"))]
    assert rows[0] == ["x:image,y:label", "influence", "datasource_index"]
    scores = np.full(n, np.nan)
    order = [int(r[2]) for r in rows[1:]]
    scores[order] = [float(r[1]) for r in rows[1:]]
    assert sorted(order) == list(range(n))
    return scores, np.array(order)


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    """A copy of the committed run folder (nothing is written into the repository)."""
    run = str(tmp_path_factory.mktemp("published") / "seed_0")
    shutil.copytree(os.path.join(HERE, "run"), run)
    return run


def scores_of(method: str, run: str, **options) -> np.ndarray:
    settings = oracle()["settings"]
    net = functools.partial(cnn, widths=tuple(settings["widths"]))
    options.setdefault("bundle_size", settings["bundle_size"])
    return retrace(oracle_data(), run, batch_size=settings["batch_size"], progress=False, net=net,
                   **{**METHODS[method].retrace, **options})


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("method", list(STEMS))
def test_reproduces_the_published_output(oracle_run, method):
    """Same ascending order as the published CSV, every value within RTOL of its largest |score|; the
    drivers' --retrace and --bn-coupling do not change the published computation."""
    published, order = published_csv(STEMS[method], len(oracle_data().train))
    for options in ({}, {"mode": "fd", "bn_coupling": True}, {"mode": "exact", "bn_coupling": False}):
        ours = scores_of(method, oracle_run, **options)
        assert relative_difference(ours, published) <= RTOL, options
        assert np.array_equal(np.argsort(ours, kind="stable"), order), options
    # Every neighbour gap of the published order is wider than the tolerance: the order is not a tie-break.
    assert np.diff(np.sort(published)).min() > 2 * RTOL * np.abs(published).max()


@pytest.mark.parametrize("method,change", [
    ("Hara_published", {"bundle_size": 1}),  # the real theta[t] at every step: the cache quirk matters here
    ("Hara_published", {"bundle_size": 200}),  # theta[T-1] at every step (the demo's case, T <= 200)
    ("Ours_published", {"as_published": False, "mode": "exact", "bn_coupling": False}),  # the papers' retrace
    ("Ours_published", {"as_published": False, "mode": "exact", "bn_coupling": False, "hu_over_batch": True}),
    ("Ours_published", {"as_published": False, "mode": "exact", "bn_coupling": False, "sample_grads_alone": True}),
])
def test_each_departure_changes_the_output(oracle_run, method, change):
    """The test data tells the departures apart: without any one of them the published output is missed
    by far more than RTOL (so the test above checks each of them)."""
    published, _ = published_csv(STEMS[method], len(oracle_data().train))
    assert relative_difference(scores_of(method, oracle_run, **change), published) > 100 * RTOL


def test_the_oracle_ran_the_published_cache_in_bundles():
    o = oracle()
    assert o["settings"]["bundle_size"] < o["settings"]["n_train"] // o["settings"]["batch_size"]
    assert all(r["same_order"] and r["max_relative_difference"] <= RTOL for r in o["results"].values())


def test_bundle_end():
    """Steps 0..T-1 in bundles of b: every step reads its bundle's last step, the epoch's last at most."""
    assert [bundle_end(i, 6, 4) for i in range(6)] == [3, 3, 3, 3, 5, 5]
    assert [bundle_end(i, 6, 1) for i in range(6)] == list(range(6))
    assert [bundle_end(i, 5, 200) for i in range(5)] == [4] * 5
    assert [bundle_end(i, 6, 3) for i in range(6)] == [2, 2, 2, 5, 5, 5]
    with pytest.raises(ValueError):
        bundle_end(0, 5, 0)

    class Rows:
        def __init__(self):
            self.read = []

        def load(self, i):
            self.read.append(i)

    rows = Rows()
    bundled = BundledStepParams(rows, 7, 3)
    for i in reversed(range(7)):
        bundled.load(i)
    assert rows.read == [6, 5, 5, 5, 2, 2, 2]


def test_in_the_method_table():
    from sgd_influence.checks import validate
    from sgd_influence.config.settings import METHOD_SETTINGS, build_parser
    from sgd_influence.pipeline.experiment import METHOD_UNITS, retrace_unit
    for m in STEMS:
        assert m in DRIVER_METHODS and METHOD_UNITS[m] is retrace_unit and METHODS[m].as_published
        assert m in validate.ESTIMATORS and m not in validate.LDS_DEFAULT and m not in validate.SINGLE_DEFAULT
    assert needs_step_params(["Hara_published"]) and not needs_step_params(["Ours_published", "Random"])
    assert METHOD_SETTINGS["Hara_published"] == ("published_bundle_size",) and "Ours_published" not in METHOD_SETTINGS
    assert build_parser("", "", ()).parse_args([]).published_bundle_size == BUNDLE_SIZE == 200
    assert validate.build_parser().parse_args([]).published_bundle_size == BUNDLE_SIZE
    assert not any(METHODS[m].as_published for m in ("Hara", "Ours", "Replay", "Ours_hu_over_batch"))


def test_lds_with_the_published_methods(tmp_path):
    """validate_influence.py --lds --methods Hara_published Ours_published: their scores (cached in the
    training's LDS cache) are retrace(as_published=True) at --published-bundle-size; lds.json has their
    blocks and records the bundle size; a changed bundle size recomputes Hara_published only."""
    from sgd_influence.checks import lds
    from sgd_influence.checks.validate import build_parser, check_args, run_lds
    from sgd_influence.base import layout

    def args_of(*extra):
        args = build_parser().parse_args(["-o", str(tmp_path), "--n-train", "32", "--n-val", "24", "-e", "2",
                                          "-bs", "8", "--lr", "0.05", "--lds", "--lds-fraction", "0.25",
                                          "--lds-subsets", "6", "--methods", "Hara_published", "Ours_published",
                                          "Random", *extra])
        args.dataset = "tiny"
        check_args(args)
        return args

    summary = run_lds(args_of("--published-bundle-size", "2"), lambda seed: tiny_data(seed=seed), net=TINY_BN,
                      progress=False)
    block = summary["trainings"][0]["blocks"][0]
    assert set(block["methods"]) == {"Hara_published", "Ours_published", "Random"}
    assert summary["settings"]["published_bundle_size"] == 2
    cache = lds.cache_dir(str(tmp_path), lds.Training(0))
    run = layout.train_dir(str(tmp_path), 0)
    data = tiny_data(seed=0)
    for m, bundle in (("Hara_published", 2), ("Ours_published", BUNDLE_SIZE)):
        saved = np.load(layout.estimate_path(cache, m), allow_pickle=False)
        direct = retrace(data, run, batch_size=8, progress=False, net=TINY_BN, bundle_size=bundle, **METHODS[m].retrace)
        assert np.array_equal(saved, direct), m
    ours_file = layout.estimate_path(cache, "Ours_published")
    before = {m: os.path.getmtime(layout.estimate_path(cache, m)) for m in STEMS}
    hara_2 = np.load(layout.estimate_path(cache, "Hara_published"))
    run_lds(args_of("--published-bundle-size", "1"), lambda seed: tiny_data(seed=seed), net=TINY_BN, progress=False)
    assert os.path.getmtime(ours_file) == before["Ours_published"]
    assert not np.array_equal(np.load(layout.estimate_path(cache, "Hara_published")), hara_2)


def test_driver_runs_the_published_methods_and_keeps_their_bundle_size(finished_tiny_run, idx_dir, tmp_path):
    """eval_sgd_influence.py --methods Hara_published Ours_published Random --workers 2 in a copy of a finished
    Hara/Ours/Random run: its training reused, influence files, retrainings, the agreement of the published
    methods with each other and with Hara and Ours; another --published-bundle-size in that folder is refused
    in one line once Hara_published has results."""
    from test_end_to_end import TINY_RUN, run
    out = str(tmp_path / "out")
    shutil.copytree(finished_tiny_run, out)
    trained = os.path.getmtime(os.path.join(out, "train", "seed_0", "step_record.npz"))
    r = run(["-o", out, "--methods", "Hara_published", "Ours_published", "Random", "--workers", "2"] + TINY_RUN,
            idx_dir)
    assert r.returncode == 0, r.stderr
    for m in STEMS:
        assert os.path.exists(os.path.join(out, "influence", m, f"influence_{m.lower()}_0.csv"))
        assert os.path.exists(os.path.join(out, "score", m, "score_delete_worst_4_seed_0.csv"))
    assert os.path.getmtime(os.path.join(out, "train", "seed_0", "step_record.npz")) == trained
    agreement = open(os.path.join(out, "summary", "agreement.csv")).read()
    assert all(m in agreement for m in ("Hara_published", "Ours_published", "Hara", "Ours")), agreement
    r = run(["-o", out, "--methods", "Hara_published", "Random", "--published-bundle-size", "1"] + TINY_RUN, idx_dir)
    errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "published_bundle_size" in errors[0], r.stderr
