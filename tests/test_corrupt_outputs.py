"""A damaged file in an output folder: one error line naming it and the fix, exit 2, nothing
else touched -- for run.json, the step record, checkpoints, Hara's per-step store, and the
influence and score CSVs (tried as a user would: hand-edited, truncated, overwritten)."""
import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from test_end_to_end import ROOT, TINY_RUN, run


@pytest.fixture
def out(finished_tiny_run, tmp_path):
    """A copy of the finished tiny run (conftest), for one test to damage."""
    dst = str(tmp_path / "out")
    shutil.copytree(finished_tiny_run, dst)
    return dst


def digests(out, skip=()):
    """sha256 of every file but `skip` (relative paths) and run.json, which the driver rewrites."""
    found = {}
    for d, _, fs in os.walk(out):
        for f in fs:
            rel = os.path.relpath(os.path.join(d, f), out)
            if rel not in skip and rel != "run.json":
                found[rel] = hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
    return found


def analyze(out):
    return subprocess.run([sys.executable, "-m", "sgd_influence.analyze", out, "--no-images"],
                          capture_output=True, text=True, cwd=ROOT)


def check_one_line(r, path):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and path in lines[0] and "delete it" in lines[0], r.stderr[-2000:]


def test_hand_edited_run_json(out, idx_dir):
    path = os.path.join(out, "run.json")
    with open(path, "a") as f:
        f.write("}, oops")  # a stray edit
    before = digests(out)
    check_one_line(analyze(out), path)
    check_one_line(run(["-o", out] + TINY_RUN, idx_dir), path)
    assert digests(out) == before and open(path).read().endswith("}, oops")


@pytest.mark.parametrize("name,consumer", [
    ("train/seed_0/step_record.npz", "Ours"),
    ("train/seed_0/params_epoch_2.h5", "Ours"),
    ("train/seed_0/step_params_epoch_1.f32.layout.json", "Hara"),
])
def test_damaged_training_file(out, idx_dir, name, consumer):
    """The retrace of `consumer` (its influence file deleted, so the driver redoes it) reads the file."""
    path = os.path.join(out, name)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])  # cut short, as by a full disk or a killed copy
    os.remove(os.path.join(out, "influence", consumer, f"influence_{consumer.lower()}_0.csv"))
    before = digests(out)
    check_one_line(run(["-o", out] + TINY_RUN, idx_dir), path)
    assert digests(out) == before


@pytest.mark.parametrize("name", ["influence/Ours/influence_ours_0.csv", "score/Hara/score_delete_worst_4_seed_0.csv"])
def test_truncated_result_csv(out, name):
    path = os.path.join(out, name)
    text = open(path).read()
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])
    before = digests(out)
    check_one_line(analyze(out), path)
    assert digests(out) == before
