"""The driver as a user runs it, on a synthetic dataset in the Fashion-MNIST IDX format."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args, data_dir):
    cmd = [sys.executable, os.path.join(ROOT, "eval_sgd_influence.py"), "-ds", "fashion_mnist",
           "--data-dir", data_dir] + args
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)


TINY_RUN = ["--n-train", "48", "--n-val", "16", "--n-test", "16", "-e", "2", "-bs", "16", "-nt", "1",
            "-r", "0", "4", "100"]


def layout(out):
    return sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)


def test_full_layout_determinism_and_resume(idx_dir, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    r = run(["-o", a] + TINY_RUN, idx_dir)
    assert r.returncode == 0, r.stderr
    assert "skipping removal sizes" in r.stderr and "100" in r.stderr
    files = layout(a)
    for m, f in (("Hara", "hara"), ("Ours", "ours"), ("Random", "random")):
        assert f"influence/{m}/influence_{f}_0.csv" in files
        for n in (0, 4):
            assert f"score/{m}/score_delete_worst_{n}_seed_0.csv" in files
        assert f"score/{m}/score_delete_worst_100_seed_0.csv" not in files
    for f in ("summary/summary.csv", "summary/table1_cache.csv", "summary/table1_cache.md", "summary/agreement.csv",
              "fig/result.png", "fig/result_errorbars.png", "fig/agreement_seed0.png", "fig/harmful_Hara_seed0.png",
              "fig/helpful_Ours_seed0.png", "run.json", "train/seed_0/step_record.npz",
              "train/seed_0/cache_size.json", "train/seed_0/step_params_epoch_1.f32"):
        assert f in files, f
    assert not [f for f in files if ".tmp" in f]

    with open(os.path.join(a, "influence", "Hara", "influence_hara_0.csv")) as f:
        lines = f.read().splitlines()
    assert lines[0] == "x:image,y:label,influence,datasource_index"
    values = [float(line.split(",")[2]) for line in lines[1:]]
    assert len(values) == 48 and values == sorted(values)
    assert lines[1].startswith("fashion_mnist/train/")

    # Same command into a second folder: byte-identical influence and score files.
    r = run(["-o", b, "--workers", "2"] + TINY_RUN, idx_dir)
    assert r.returncode == 0, r.stderr
    for f in files:
        if f.startswith(("influence/", "score/")):
            with open(os.path.join(a, f), "rb") as fa, open(os.path.join(b, f), "rb") as fb:
                assert fa.read() == fb.read(), f

    # Re-running into a finished folder redoes nothing.
    stamp = {f: os.path.getmtime(os.path.join(a, f)) for f in files if not f.startswith(("summary", "fig", "run.json"))}
    r = run(["-o", a] + TINY_RUN, idx_dir)
    assert r.returncode == 0, r.stderr
    assert all(os.path.getmtime(os.path.join(a, f)) == t for f, t in stamp.items())

    # Different result-changing settings into the same folder: refused, nothing touched.
    changed = [v if v != "2" or TINY_RUN[i - 1] != "-e" else "3" for i, v in enumerate(TINY_RUN)]
    r = run(["-o", a] + changed, idx_dir)
    assert r.returncode == 2 and "n_epochs 2 -> 3" in r.stderr and "--overwrite" in r.stderr
    assert "Traceback" not in r.stderr
    assert all(os.path.getmtime(os.path.join(a, f)) == t for f, t in stamp.items())


def test_missing_dataset_is_one_clear_line(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "eval_sgd_influence.py"), "-ds", "cifar10",
                        "--data-dir", str(tmp_path), "-o", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    err = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(err) == 1 and "cifar-10" in err[0] and str(tmp_path) in err[0]


def test_more_random_orders_add_only_their_own_units(finished_tiny_run, idx_dir, tmp_path):
    """--random-orders 3 on a finished run (made with the default, one order): each trial gains orders 1 and 2
    of Random, drawn independently, and their retrainings at every n > 0; no earlier file changes."""
    import shutil
    import numpy as np
    from sgd_influence.base import layout as L
    out = str(tmp_path / "o")
    shutil.copytree(finished_tiny_run, out)
    before = {f: open(os.path.join(out, f), "rb").read() for f in layout(out)
              if f.startswith(("influence/", "score/", "train/"))}
    r = run(["-o", out, "--random-orders", "3", "--methods", "Random"] + TINY_RUN, idx_dir)
    assert r.returncode == 0, r.stderr
    after = layout(out)
    assert all(open(os.path.join(out, f), "rb").read() == b for f, b in before.items())
    new = sorted(f for f in after if f.startswith(("influence/", "score/")) and f not in before)
    assert new == ["influence/Random/influence_random_0_order1.csv", "influence/Random/influence_random_0_order2.csv",
                   "score/Random/score_delete_worst_4_seed_0_order1.csv",
                   "score/Random/score_delete_worst_4_seed_0_order2.csv"]
    orders = [L.read_removal_order(L.influence_path(out, "Random", 0, k)) for k in range(3)]
    assert all(sorted(o) == list(range(48)) for o in orders)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])


def test_run_json_names_no_path_of_the_machine(finished_tiny_run, tmp_path):
    """run.json keeps the output folder, the data folder and the command's paths relative to the output folder
    (a folder copied into docs/ names nothing of the machine that made it); reading resolves them, also
    after the folder moved."""
    import json
    import shutil
    from sgd_influence.base import layout as L
    with open(os.path.join(finished_tiny_run, "run.json")) as f:
        info = json.load(f)
    text = json.dumps(info)
    assert ROOT not in text and str(tmp_path.parent.parent) not in text and "/tmp" not in text, text
    assert info["settings"]["output_dir"] == "." and info["command"].startswith("eval_sgd_influence.py ")
    assert " -o . " in f" {info['command']} "
    moved = str(tmp_path / "elsewhere" / "out")
    shutil.copytree(finished_tiny_run, moved)
    assert L.read_settings(moved)["output_dir"] == moved
    assert L.read_settings(moved)["data_dir"] == os.path.normpath(os.path.join(moved, info["settings"]["data_dir"]))


def test_portable_command_rewrites_path_flags_only(tmp_path):
    from sgd_influence.base.layout import portable_command
    out = str(tmp_path / "runs" / "a")
    argv = ["/x/y/eval_sgd_influence.py", "-o", out, "--data-dir=" + str(tmp_path / "data"), "-nt", "3",
            "--train-csv", str(tmp_path / "runs" / "a" / "t.csv"), "--lr", "0.02"]
    assert portable_command(out, argv) == ("eval_sgd_influence.py -o . --data-dir=../../data -nt 3 --train-csv t.csv "
                                           "--lr 0.02")
