"""kill -9 at several points, re-run the same command: outputs equal an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time

import pytest

from test_end_to_end import ROOT, TINY_RUN, layout, run


def compare(a, b):
    files = [f for f in layout(a) if f.startswith(("influence/", "score/", "summary/"))]
    assert files and files == [f for f in layout(b) if f.startswith(("influence/", "score/", "summary/"))]
    for f in files:
        with open(os.path.join(a, f), "rb") as fa, open(os.path.join(b, f), "rb") as fb:
            assert fa.read() == fb.read(), f


@pytest.fixture
def reference(finished_tiny_run):
    return finished_tiny_run


@pytest.mark.parametrize("kill_after", [
    "train/seed_0/params_epoch_1.h5",               # during training
    "influence/Hara/influence_hara_0.csv",          # during the Ours retrace
    "score/Hara/score_delete_worst_4_seed_0.csv",   # during retraining
])
def test_killed_run_resumes_to_identical_outputs(kill_after, reference, idx_dir, tmp_path):
    out = str(tmp_path / "out")
    cmd = [sys.executable, os.path.join(ROOT, "eval_sgd_influence.py"), "-ds", "fashion_mnist",
           "--data-dir", idx_dir, "-o", out] + TINY_RUN
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(out, kill_after)) and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(out, "summary", "summary.csv"))
    r = run(["-o", out] + TINY_RUN, idx_dir)
    assert r.returncode == 0, r.stderr
    compare(reference, out)
    assert not [f for f in layout(out) if ".tmp" in f]
